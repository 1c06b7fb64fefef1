//! Binding, accepting and connecting on tokio, and the accept loop both servers run.
//!
//! Logging policy (crate `tracing`):
//! - `trace` for routine per-connection events (accepted);
//! - `warn` naming the peer when connections are still open at the end of the grace period;
//! - `error` only when the server itself fails: accept failing, a connection task that
//!   panicked (our bug, or the handler's), naming the peer.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::SocketSpec;

/// Permission bits a unix socket file gets by default: `0o660`, owner and group (give the
/// group with [`UnixOptions::group`], e.g. `postfix`) may connect, nobody else.
pub const DEFAULT_UNIX_MODE: u32 = 0o660;

/// How long a graceful shutdown waits for connections in flight before closing them: 10 s.
/// Postfix's `milter_command_timeout` is 30 s and its policy client retries, so closing a
/// connection mid-command costs a tempfail or a retry, never a lost message.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How to create a unix socket file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixOptions {
    /// Permission bits set on the socket file after binding; default [`DEFAULT_UNIX_MODE`].
    /// `None` keeps what the umask gave.
    pub mode: Option<u32>,
    /// Group id given to the socket file (see [`group_id`]); `None` keeps ours.
    pub group: Option<u32>,
}

impl Default for UnixOptions {
    fn default() -> Self {
        Self {
            mode: Some(DEFAULT_UNIX_MODE),
            group: None,
        }
    }
}

impl UnixOptions {
    /// Options with a mode and a group id.
    pub fn new(mode: Option<u32>, group: Option<u32>) -> Self {
        Self { mode, group }
    }
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A unix-domain client, with its process id when the kernel tells it.
    Unix {
        /// `SO_PEERCRED` process id.
        pid: Option<i32>,
    },
    /// A TCP client.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix { pid: Some(pid) } => write!(f, "unix (pid {pid})"),
            Self::Unix { pid: None } => f.write_str("unix"),
            Self::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// A bound listening socket. A unix socket file it created is removed when it is dropped
/// (if the file at that path is still the one it created).
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
    /// Our unix socket file (path, device, inode).
    owned: Option<(PathBuf, u64, u64)>,
}

#[derive(Debug)]
enum Inner {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Bind `spec`. For a unix path: an existing socket file is removed first only if nothing
    /// listens on it (a connect is refused); a socket somebody serves is `AddrInUse`, a path
    /// that is not a socket is `AlreadyExists` (never removed). Then `unix`'s mode and group
    /// are applied. `unix` is ignored for TCP.
    pub async fn bind(spec: &SocketSpec, unix: &UnixOptions) -> io::Result<Self> {
        match spec {
            SocketSpec::Unix(path) => bind_unix(path, unix),
            SocketSpec::Inet { host, port } => {
                let l = TcpListener::bind((host.as_str(), *port)).await?;
                Ok(Self {
                    inner: Inner::Tcp(l),
                    owned: None,
                })
            }
        }
    }

    /// Accept one connection (TCP streams get `TCP_NODELAY`).
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match &self.inner {
            Inner::Unix(l) => {
                let (s, _) = l.accept().await?;
                let pid = s.peer_cred().ok().and_then(|c| c.pid());
                Ok((Stream::Unix(s), Peer::Unix { pid }))
            }
            Inner::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), Peer::Tcp(a)))
            }
        }
    }

    /// Where this listener accepts, as a spec a client can connect to (the real port when
    /// bound to port 0).
    pub fn local_spec(&self) -> io::Result<SocketSpec> {
        match &self.inner {
            Inner::Tcp(l) => {
                let a = l.local_addr()?;
                Ok(SocketSpec::Inet {
                    host: a.ip().to_string(),
                    port: a.port(),
                })
            }
            Inner::Unix(l) => {
                let a = l.local_addr()?;
                let p = a.as_pathname().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "unnamed unix socket")
                })?;
                Ok(SocketSpec::Unix(p.to_owned()))
            }
        }
    }
}

impl std::os::fd::AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match &self.inner {
            Inner::Unix(l) => l.as_raw_fd(),
            Inner::Tcp(l) => l.as_raw_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.owned
            && let Ok(m) = std::fs::symlink_metadata(path)
            && m.dev() == *dev
            && m.ino() == *ino
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind_unix(path: &Path, opts: &UnixOptions) -> io::Result<Listener> {
    remove_stale(path)?;
    let l = UnixListener::bind(path)?;
    let m = std::fs::symlink_metadata(path)?;
    // From here on the file is ours: dropping `listener` on an error below removes it.
    let listener = Listener {
        inner: Inner::Unix(l),
        owned: Some((path.to_owned(), m.dev(), m.ino())),
    };
    if let Some(gid) = opts.group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    if let Some(mode) = opts.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}

/// Removes `path` if it is a socket nobody accepts on.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("a server already listens on {}", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// The id of group `name` through the system's group database (`getgrnam_r`, so NSS sources
/// count), or a number given as text.
pub fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name holds NUL"))?;
    let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `cname` is NUL-terminated, `grp` and
    // `result` are writable, and `buf` is writable for `buf.len()` bytes.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            grp.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group {name:?}"),
        ));
    }
    // SAFETY: getgrnam_r returned 0 with a non-null result, so it initialised `grp`.
    Ok(unsafe { grp.assume_init() }.gr_gid)
}

/// Connect to `spec` (TCP with `TCP_NODELAY`).
pub async fn connect(spec: &SocketSpec) -> io::Result<Stream> {
    match spec {
        SocketSpec::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p).await?)),
        SocketSpec::Inet { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
    }
}

/// A connected unix or TCP stream.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// Unix-domain stream.
    Unix(UnixStream),
    /// TCP stream.
    Tcp(TcpStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Accept-loop limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// After shutdown, how long connections in flight may go on before they are closed.
    pub shutdown_grace: Duration,
}

/// Tells a connection that the server is shutting down.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A signal that never fires (for a connection served outside [`serve`]).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // The receiver sees the channel closed, which `stopped` treats as "never".
        drop(tx);
        Self(rx)
    }

    /// Whether shutdown was requested.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown was requested (never, if it never is).
    pub async fn stopped(&mut self) {
        if self.0.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether an accept error is about one connection or a passing shortage (go on accepting)
/// rather than the listening socket itself (give up).
fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) {
        return true;
    }
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
                | libc::ETIMEDOUT
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EOPNOTSUPP
        )
    )
}

/// The accept loop: accept on `listener` until `shutdown` completes, at most
/// `limits.max_connections` at once, and run `conn(stream, peer, stop)` as one task per
/// connection. On shutdown (or a fatal accept error) it stops accepting, drops the listener
/// (removing its unix socket file), signals [`Stop`] to every connection, gives them
/// `limits.shutdown_grace` to finish, then aborts (closes) the rest and returns.
///
/// A connection task that panics is logged at `error` level naming its peer; its socket is
/// closed when the task unwinds.
///
/// # Errors
///
/// The accept error that ended the loop, when accepting failed for a reason that is not about
/// one connection or a passing shortage of descriptors or memory (those are logged, and
/// accepting goes on after a short pause). Connections in flight still get the grace period.
pub async fn serve<F, Fut>(
    listener: Listener,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
    mut conn: F,
) -> io::Result<()>
where
    F: FnMut(Stream, Peer, Stop) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    let mut peers: HashMap<tokio::task::Id, Peer> = HashMap::new();
    let mut result = Ok(());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                reap(done, &mut peers);
                continue;
            }
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => tokio::select! {
                    () = &mut shutdown => break,
                    a = listener.accept() => a.map(|c| (c, p)),
                },
                // The semaphore is never closed; treat it as shutdown all the same.
                Err(_) => break,
            },
        };
        match accepted {
            Ok(((stream, peer), permit)) => {
                tracing::trace!(%peer, "connection accepted");
                let fut = conn(stream, peer.clone(), Stop(stop_rx.clone()));
                let handle = tasks.spawn(async move {
                    let _permit = permit;
                    fut.await;
                });
                peers.insert(handle.id(), peer);
            }
            Err(e) if transient(&e) => {
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::error!("accept failed, no longer accepting: {e}");
                result = Err(e);
                break;
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = limits.shutdown_grace;
    let drain = async {
        while let Some(done) = tasks.join_next_with_id().await {
            reap(done, &mut peers);
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        for peer in peers.values() {
            tracing::warn!(%peer, "connection still open {grace:?} after shutdown: closed");
        }
        tasks.abort_all();
        while let Some(done) = tasks.join_next_with_id().await {
            match done {
                Err(e) if e.is_panic() => reap(Err(e), &mut peers),
                _ => {}
            }
        }
    }
    result
}

fn reap(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    peers: &mut HashMap<tokio::task::Id, Peer>,
) {
    match done {
        Ok((id, ())) => {
            peers.remove(&id);
        }
        Err(e) => {
            let peer = peers.remove(&e.id());
            let peer = peer.map_or_else(|| "unknown peer".to_owned(), |p| p.to_string());
            if e.is_panic() {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned());
                tracing::error!(%peer, "connection task panicked: {msg}");
            }
        }
    }
}
