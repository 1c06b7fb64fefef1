//! Starting the services in order, keeping them up, reaping orphans, stopping in order.
//!
//! - Start: the run directories first, then each service in the plan's order (saslauthd,
//!   clamd, the filters, Postfix), each only once the one before answers its readiness probe
//!   (bounded by its `ready_timeout`). A service that dies or never gets ready during start-up
//!   stops what was started and is the error: nothing stays half-started.
//! - Running: a child that exits is logged and restarted after a backoff (the plan's first
//!   delay, doubling to [`MAX_BACKOFF`], back to the first after [`STABLE_AFTER`] up). One that
//!   died [`GIVE_UP_DEATHS`] times within [`DEATH_WINDOW`] is reported as failing; it is still
//!   retried every [`MAX_BACKOFF`], and Postfix, which keeps running, applies its
//!   `milter_default_action` to the filter's mail meanwhile.
//! - Every exit is reaped (`waitpid(-1)`): our children and the orphans the kernel gives PID
//!   1 (or this process, made a child subreaper when it is not PID 1).
//! - SIGTERM or SIGINT: Postfix is stopped first (`postfix stop`, so no mail is accepted
//!   without its filters), then the filters (SIGTERM: they finish the messages in flight) and
//!   then the rest, each stage within the plan's grace period before SIGKILL.
//! - SIGHUP: passed on to each filter that reloads in place (our milters re-read their
//!   configuration and keys on SIGHUP, connections in flight finishing on the old one);
//!   a filter that reads its configuration only at start (spf-policyd) is restarted and
//!   waited for ([`Reload`]).
//! - Output: with [`Supervisor::with_log`], each child's stdout and stderr lines go to the
//!   log [`Sink`] (`/var/log/mail.log` or `MAIL_LOG_HOST`) tagged with the service's name;
//!   without it they are init's own stdout and stderr.
//!
//! Children are plain `std::process` children (no `tokio::process`, which would reap behind
//! our back); this module reaps them all.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::config::{Plan, Probe, Reload, Role, ServiceSpec, Stop};
use super::dirs::{self, DirError, Stale};
use super::syslog::{Facility, Severity, Sink};
use milter_proto::SocketSpec;

/// The longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Up this long, a service's next restart delay is the first again.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Deaths within [`DEATH_WINDOW`] after which a service is reported as failing.
pub const GIVE_UP_DEATHS: usize = 5;
/// See [`GIVE_UP_DEATHS`].
pub const DEATH_WINDOW: Duration = Duration::from_secs(120);
/// How often the supervisor looks at its children between signals.
pub const TICK: Duration = Duration::from_millis(200);

/// Why supervision ended in error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuperviseError {
    /// A run directory or socket could not be set up.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// A program could not be started.
    #[error("{service}: cannot start {program}: {source}")]
    Spawn {
        /// The service.
        service: String,
        /// Its program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A service did not get ready in time.
    #[error("{service}: not ready after {after:?} ({last})")]
    NotReady {
        /// The service.
        service: String,
        /// The bound.
        after: Duration,
        /// The last probe's error.
        last: String,
    },
    /// A service exited during start-up.
    #[error("{service}: exited during start-up ({status})")]
    Died {
        /// The service.
        service: String,
        /// Its exit.
        status: String,
    },
    /// Signal handlers could not be installed.
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
}

struct Slot {
    spec: ServiceSpec,
    pid: Option<i32>,
    ready: bool,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
    deaths: VecDeque<Instant>,
    failing: bool,
    /// Stopped on purpose (SIGHUP restart, shutdown): no backoff, no death counted.
    planned: bool,
    last_exit: Option<String>,
}

struct Signals {
    chld: Signal,
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// How an [`ExitStatus`](std::process::ExitStatus) reads in logs.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    describe_status(status.into_raw())
}

/// How an exit status reads in logs.
pub fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    }
}

/// The supervisor over one [`Plan`].
pub struct Supervisor {
    slots: Vec<Slot>,
    plan: Plan,
    passwd_root: PathBuf,
    helpers: Vec<i32>,
    log: Option<Sink>,
    /// Orphans reaped so far (exits of processes that were not our services).
    pub orphans_reaped: u64,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field(
                "services",
                &self.slots.iter().map(|s| &s.spec.name).collect::<Vec<_>>(),
            )
            .field("orphans_reaped", &self.orphans_reaped)
            .finish()
    }
}

/// The unix socket file a service's probe or socket names, if any.
fn socket_file(p: &Probe) -> Option<&Path> {
    match p {
        Probe::Accepts(path) => Some(path),
        Probe::Milter(SocketSpec::Unix(path)) | Probe::AcceptsSpec(SocketSpec::Unix(path)) => {
            Some(path)
        }
        Probe::ClamdPing(crate::clamd::ClamdAddr::Unix(path)) => Some(path),
        _ => None,
    }
}

impl Supervisor {
    /// A supervisor for `plan`; run directory owners are looked up under `passwd_root`.
    pub fn new(plan: Plan, passwd_root: &Path) -> Self {
        let slots = plan
            .services
            .iter()
            .map(|s| Slot {
                spec: s.clone(),
                pid: None,
                ready: false,
                started: Instant::now(),
                backoff: plan.restart_backoff,
                restart_at: None,
                deaths: VecDeque::new(),
                failing: false,
                planned: false,
                last_exit: None,
            })
            .collect();
        Self {
            slots,
            plan,
            passwd_root: passwd_root.to_owned(),
            helpers: Vec::new(),
            log: None,
            orphans_reaped: 0,
        }
    }

    /// Sends the children's stdout and stderr lines to `sink`, tagged with the service's
    /// name (instead of letting them write to init's own stdout and stderr).
    #[must_use]
    pub fn with_log(mut self, sink: Sink) -> Self {
        self.log = Some(sink);
        self
    }

    /// Runs until SIGTERM/SIGINT (then stops everything in order and returns `Ok`), or until
    /// start-up fails (then stops what was started and returns the error).
    pub async fn run(mut self) -> Result<(), SuperviseError> {
        become_subreaper();
        super::reaper::supervising();
        let mut sig = Signals {
            chld: signal(SignalKind::child()).map_err(SuperviseError::Signals)?,
            term: signal(SignalKind::terminate()).map_err(SuperviseError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(SuperviseError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(SuperviseError::Signals)?,
        };
        for d in &self.plan.dirs {
            dirs::ensure(d, &self.passwd_root)?;
            tracing::info!(
                "run directory {} {:o} {}:{}",
                d.path.display(),
                d.mode,
                d.user,
                d.group
            );
        }
        for i in 0..self.slots.len() {
            match self.start_and_wait(i, &mut sig).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!("signal during start-up: stopping what was started");
                    self.shutdown(&mut sig).await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!("{e}; stopping what was started");
                    self.shutdown(&mut sig).await;
                    return Err(e);
                }
            }
        }
        tracing::info!("all services ready");
        loop {
            tokio::select! {
                _ = sig.chld.recv() => self.reap(),
                _ = sig.term.recv() => break,
                _ = sig.int.recv() => break,
                _ = sig.hup.recv() => self.reload(&mut sig).await,
                () = tokio::time::sleep(TICK) => self.tick().await,
            }
        }
        tracing::info!("SIGTERM: stopping Postfix, then the filters, then the rest");
        self.shutdown(&mut sig).await;
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> Result<(), SuperviseError> {
        let log = self.log.clone();
        let slot = &mut self.slots[i];
        if let Some(path) = socket_file(&slot.spec.probe) {
            match dirs::remove_stale(path) {
                Ok(Stale::Removed) => {
                    tracing::info!(
                        "{}: removed stale socket {}",
                        slot.spec.name,
                        path.display()
                    );
                }
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let piped = || {
            if log.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            }
        };
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&slot.spec.program)
                .args(&slot.spec.args)
                .stdin(Stdio::null())
                .stdout(piped())
                .stderr(piped())
                .process_group(0)
                .spawn()
        }
        .map_err(|source| SuperviseError::Spawn {
            service: slot.spec.name.clone(),
            program: slot.spec.program.clone(),
            source,
        })?;
        // The pid fits: Linux pids are at most 2^22.
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        if let Some(sink) = &log {
            let mut child = child;
            let out = child.stdout.take().map(std::os::fd::OwnedFd::from);
            let err = child.stderr.take().map(std::os::fd::OwnedFd::from);
            for fd in out.into_iter().chain(err) {
                pipe_to_log(fd, sink.clone(), &slot.spec.name);
            }
        }
        // Dropping a std Child neither kills nor waits: reap() collects it.
        slot.pid = Some(pid);
        slot.ready = false;
        slot.started = Instant::now();
        slot.restart_at = None;
        slot.planned = false;
        tracing::info!("{}: started (pid {pid})", slot.spec.name);
        Ok(())
    }

    /// Starts slot `i` and waits until it is ready. `Ok(false)`: a stop signal came first.
    async fn start_and_wait(
        &mut self,
        i: usize,
        sig: &mut Signals,
    ) -> Result<bool, SuperviseError> {
        self.spawn(i)?;
        let deadline = Instant::now() + self.slots[i].spec.ready_timeout;
        loop {
            self.reap();
            if self.slots[i].pid.is_none() {
                return Err(SuperviseError::Died {
                    service: self.slots[i].spec.name.clone(),
                    status: self.slots[i].last_exit.clone().unwrap_or_default(),
                });
            }
            match super::ready::probe(&self.slots[i].spec.probe).await {
                Ok(()) => {
                    self.slots[i].ready = true;
                    self.slots[i].restart_at = None;
                    tracing::info!(
                        "{}: ready after {:?}",
                        self.slots[i].spec.name,
                        self.slots[i].started.elapsed()
                    );
                    return Ok(true);
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(SuperviseError::NotReady {
                        service: self.slots[i].spec.name.clone(),
                        after: self.slots[i].spec.ready_timeout,
                        last: e.to_string(),
                    });
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = sig.chld.recv() => {}
                _ = sig.term.recv() => return Ok(false),
                _ = sig.int.recv() => return Ok(false),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Collects every exit; schedules restarts of our services.
    fn reap(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid with a valid pointer to a c_int; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if super::reaper::claim(pid, status) {
                continue;
            }
            if let Some(h) = self.helpers.iter().position(|&p| p == pid) {
                self.helpers.swap_remove(h);
                continue;
            }
            let Some(slot) = self.slots.iter_mut().find(|s| s.pid == Some(pid)) else {
                self.orphans_reaped += 1;
                tracing::debug!("reaped orphan {pid} ({})", describe_status(status));
                continue;
            };
            let what = describe_status(status);
            slot.pid = None;
            slot.ready = false;
            slot.last_exit = Some(what.clone());
            let now = Instant::now();
            if slot.planned {
                tracing::info!("{}: stopped ({what})", slot.spec.name);
                continue;
            }
            if now.duration_since(slot.started) >= STABLE_AFTER {
                slot.backoff = self.plan.restart_backoff;
            }
            slot.deaths.push_back(now);
            while slot
                .deaths
                .front()
                .is_some_and(|t| now.duration_since(*t) > DEATH_WINDOW)
            {
                slot.deaths.pop_front();
            }
            let delay = slot.backoff;
            slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
            slot.restart_at = Some(now + delay);
            tracing::warn!(
                "{} (pid {pid}) died: {what}; restarting in {delay:?}",
                slot.spec.name
            );
            if slot.deaths.len() >= GIVE_UP_DEATHS && !slot.failing {
                slot.failing = true;
                let meanwhile = if slot.spec.role == Role::Filter {
                    "; Postfix applies its milter_default_action to mail meanwhile"
                } else {
                    ""
                };
                tracing::error!(
                    "{} keeps dying ({} exits within {:?}); retrying every {:?}{meanwhile}",
                    slot.spec.name,
                    slot.deaths.len(),
                    DEATH_WINDOW,
                    MAX_BACKOFF
                );
                slot.backoff = MAX_BACKOFF;
            }
        }
    }

    /// Restarts what is due, probes what was restarted.
    async fn tick(&mut self) {
        self.reap();
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.pid.is_none() && slot.restart_at.is_some_and(|t| t <= now) {
                if let Err(e) = self.spawn(i) {
                    tracing::error!("{e}");
                    let slot = &mut self.slots[i];
                    slot.restart_at = Some(now + slot.backoff);
                    slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
                }
            } else if slot.pid.is_some()
                && !slot.ready
                && super::ready::probe(&slot.spec.probe).await.is_ok()
            {
                let slot = &mut self.slots[i];
                slot.ready = true;
                tracing::info!(
                    "{}: ready again after {:?}",
                    slot.spec.name,
                    slot.started.elapsed()
                );
                if slot.failing && slot.deaths.len() < GIVE_UP_DEATHS {
                    slot.failing = false;
                }
            }
        }
    }

    /// SIGHUP: passed on to the filters that reload in place; the others are restarted in
    /// turn, each waited for.
    async fn reload(&mut self, sig: &mut Signals) {
        tracing::info!("SIGHUP: the filters re-read their configuration");
        for i in 0..self.slots.len() {
            match self.slots[i].spec.reload {
                Reload::Hangup => {
                    if let Some(pid) = self.slots[i].pid {
                        tracing::info!("{}: SIGHUP passed on (pid {pid})", self.slots[i].spec.name);
                        send(pid, libc::SIGHUP);
                    }
                    continue;
                }
                Reload::Restart => {
                    tracing::info!(
                        "{}: restarting to re-read its configuration",
                        self.slots[i].spec.name
                    );
                }
                _ => continue,
            }
            if let Some(pid) = self.slots[i].pid {
                self.slots[i].planned = true;
                send(pid, libc::SIGTERM);
                self.wait_exit(&[i], self.plan.grace, sig).await;
            }
            match self.start_and_wait(i, sig).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("reload: {e}; retrying with backoff");
                    let slot = &mut self.slots[i];
                    if slot.pid.is_none() {
                        slot.restart_at = Some(Instant::now() + slot.backoff);
                    }
                }
            }
        }
    }

    /// Waits until every slot of `idx` has exited, up to `grace`; then SIGKILLs the rest
    /// (their process groups) and waits for them.
    async fn wait_exit(&mut self, idx: &[usize], grace: Duration, sig: &mut Signals) {
        let deadline = Instant::now() + grace;
        loop {
            self.reap();
            let left: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| self.slots[i].pid.is_some())
                .collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for &i in &left {
                    if let Some(pid) = self.slots[i].pid {
                        tracing::warn!(
                            "{}: still running after {grace:?}: SIGKILL",
                            self.slots[i].spec.name
                        );
                        send(-pid, libc::SIGKILL);
                        send(pid, libc::SIGKILL);
                    }
                }
                // SIGKILL cannot be ignored: the exits come promptly.
                let hard = Instant::now() + Duration::from_secs(5);
                while idx.iter().any(|&i| self.slots[i].pid.is_some()) && Instant::now() < hard {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    self.reap();
                }
                return;
            }
            tokio::select! {
                _ = sig.chld.recv() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Stops everything: Postfix, then the filters, then the support services (in reverse).
    async fn shutdown(&mut self, sig: &mut Signals) {
        for s in &mut self.slots {
            s.planned = true;
            s.restart_at = None;
        }
        let stages: [Vec<usize>; 3] = [
            self.indices(Role::Mta),
            self.indices(Role::Filter),
            self.indices(Role::Support).into_iter().rev().collect(),
        ];
        for stage in stages {
            let running: Vec<usize> = stage
                .into_iter()
                .filter(|&i| self.slots[i].pid.is_some())
                .collect();
            if running.is_empty() {
                continue;
            }
            for &i in &running {
                let started = Instant::now();
                tracing::info!("stopping {}", self.slots[i].spec.name);
                self.stop_one(i);
                if self.slots[i].spec.role == Role::Support {
                    // One at a time, in reverse start order.
                    self.wait_exit(&[i], self.plan.grace, sig).await;
                    tracing::info!(
                        "{} stopped after {:?}",
                        self.slots[i].spec.name,
                        started.elapsed()
                    );
                }
            }
            if self.slots[running[0]].spec.role != Role::Support {
                let started = Instant::now();
                self.wait_exit(&running, self.plan.grace, sig).await;
                for &i in &running {
                    tracing::info!(
                        "{} stopped after {:?}",
                        self.slots[i].spec.name,
                        started.elapsed()
                    );
                }
            }
        }
        self.reap();
        tracing::info!("all services stopped");
    }

    fn indices(&self, role: Role) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].spec.role == role)
            .collect()
    }

    fn stop_one(&mut self, i: usize) {
        let Some(pid) = self.slots[i].pid else {
            return;
        };
        match &self.slots[i].spec.stop {
            Stop::Signal => send(pid, libc::SIGTERM),
            Stop::Command(argv) => match spawn_helper(argv) {
                Ok(h) => self.helpers.push(h),
                Err(e) => {
                    tracing::warn!(
                        "{}: stop command failed ({e}): SIGTERM",
                        self.slots[i].spec.name
                    );
                    send(pid, libc::SIGTERM);
                }
            },
        }
    }
}

/// Reads one of a child's output pipes into the log, line by line, until it closes.
fn pipe_to_log(fd: std::os::fd::OwnedFd, sink: Sink, name: &str) {
    let name = name.to_owned();
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => {
            tokio::spawn(async move {
                let _ = super::syslog::pipe_lines(
                    rx,
                    &sink,
                    Facility::Mail,
                    Severity::Informational,
                    &name,
                )
                .await;
            });
        }
        Err(e) => tracing::warn!("{name}: its output cannot be logged: {e}"),
    }
}

fn spawn_helper(argv: &[OsString]) -> std::io::Result<i32> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    // Linux pids fit an i32 (at most 2^22).
    Ok(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

fn send(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; a vanished pid gives ESRCH, ignored.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// When not PID 1, become the reaper of our descendants' orphans (PR_SET_CHILD_SUBREAPER).
fn become_subreaper() {
    if std::process::id() != 1 {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if r != 0 {
            tracing::warn!(
                "cannot become child subreaper: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_well() {
        assert_eq!(describe_status(0), "exit status 0");
        assert_eq!(describe_status(3 << 8), "exit status 3");
        assert_eq!(describe_status(9), "killed by signal 9");
    }
}
