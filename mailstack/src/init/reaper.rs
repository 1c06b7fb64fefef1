//! Child processes of scheduled jobs (the Maildir backup's `tar`, the report command) under
//! a PID 1 that reaps every exit.
//!
//! The [`Supervisor`](super::supervise::Supervisor) collects every exit with `waitpid(-1)`
//! (it must: orphans are re-parented to PID 1). A job that waited for its own child in the
//! usual way (`tokio::process`, `std::process::Child::wait`) would then find it already
//! reaped. So jobs start their children with [`spawn`], which registers the pid before any
//! exit can be collected, and the supervisor hands the exit status to the waiting job
//! (`claim`). Without a running supervisor (a job run by hand, a test), a thread waits for
//! the child instead.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, ExitStatus};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::oneshot;

static WAITERS: Mutex<Option<HashMap<i32, oneshot::Sender<ExitStatus>>>> = Mutex::new(None);
static SUPERVISING: AtomicBool = AtomicBool::new(false);

/// Called by the supervisor once it collects every exit itself.
pub(crate) fn supervising() {
    SUPERVISING.store(true, Ordering::SeqCst);
}

/// The supervisor's part: `pid` exited with `status`; `true` when a job was waiting for it.
pub(crate) fn claim(pid: i32, status: libc::c_int) -> bool {
    let waiter = WAITERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()
        .and_then(|m| m.remove(&pid));
    match waiter {
        Some(tx) => {
            use std::os::unix::process::ExitStatusExt;
            let _ = tx.send(ExitStatus::from_raw(status));
            true
        }
        None => false,
    }
}

/// A child started by [`spawn`]: its pipes (as async halves) and its exit.
#[derive(Debug)]
pub struct Spawned {
    pid: i32,
    exit: Option<oneshot::Receiver<ExitStatus>>,
    /// Its stdin, when piped.
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    /// Its stdout, when piped.
    pub stdout: Option<tokio::net::unix::pipe::Receiver>,
    /// Its stderr, when piped.
    pub stderr: Option<tokio::net::unix::pipe::Receiver>,
}

/// Starts `cmd` (its stdio as the caller set it; `Stdio::piped()` ones become the async
/// halves of [`Spawned`]). The child is killed if the [`Spawned`] is dropped before it exits
/// (a job cancelled at its timeout or at shutdown).
///
/// # Errors
/// When the program cannot be started, or a pipe cannot be made non-blocking.
pub fn spawn(cmd: &mut Command) -> io::Result<Spawned> {
    // The lock is held from the fork until the pid is registered, and `claim` takes it
    // before looking: the exit cannot be collected in between.
    let mut guard = WAITERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut child = cmd.spawn()?;
    // Linux pids are at most 2^22.
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let (tx, rx) = oneshot::channel();
    if SUPERVISING.load(Ordering::SeqCst) {
        guard.get_or_insert_with(HashMap::new).insert(pid, tx);
    } else {
        drop(guard);
        let _ = std::thread::Builder::new()
            .name("job-wait".into())
            .spawn(move || {
                let mut status: libc::c_int = 0;
                // SAFETY: waitpid on our own child with a valid pointer.
                if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
                    use std::os::unix::process::ExitStatusExt;
                    let _ = tx.send(ExitStatus::from_raw(status));
                }
            });
    }
    let stdin = child
        .stdin
        .take()
        .map(|p| tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(p)))
        .transpose()?;
    let stdout = child
        .stdout
        .take()
        .map(|p| tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(p)))
        .transpose()?;
    let stderr = child
        .stderr
        .take()
        .map(|p| tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(p)))
        .transpose()?;
    // Dropping a std Child neither kills nor waits; the exit is collected as above.
    drop(child);
    Ok(Spawned {
        pid,
        exit: Some(rx),
        stdin,
        stdout,
        stderr,
    })
}

impl Spawned {
    /// Its process id.
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits for its exit.
    ///
    /// # Errors
    /// When the exit was lost (collected by someone else): an [`io::ErrorKind::Other`].
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let rx = self
            .exit
            .as_mut()
            .ok_or_else(|| io::Error::other("already waited for"))?;
        let status = rx
            .await
            .map_err(|_| io::Error::other("the child's exit status was lost"))?;
        self.exit = None;
        Ok(status)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let running = self
            .exit
            .as_mut()
            .is_some_and(|rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        if running {
            // SAFETY: kill has no memory preconditions; the pid is ours until collected.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn output_and_exit_without_a_supervisor() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd).unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        assert_eq!(status.code(), Some(3));
    }
}
