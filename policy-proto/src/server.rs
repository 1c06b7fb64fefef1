//! The tokio policy server (feature `tokio`): a [`Handler`] answers requests; a [`Server`]
//! drives connections over a [`Listener`] (unix or TCP socket) or over stdin/stdout under
//! Postfix spawn(8).
//!
//! Logging policy (through `tracing`; the binary chooses where it goes, and under spawn(8)
//! that must not be stderr, which is the Postfix connection too):
//! - `trace` for routine per-connection events (accepted, closed at EOF, request served);
//! - `debug` when an idle connection times out or the request limit closes it;
//! - `warn` naming the peer when a peer breaks the protocol or a timeout hits in the middle of
//!   a request; the connection is closed without a reply ([`crate::ServerResponse`]);
//! - `error` only when the server itself fails (accept errors).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use mailstack_transport::{ServeLimits, Stop, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    Action, DecodeError, MAX_ATTRS, MAX_LINE, MAX_REQUEST, PolicyRequest, Reply, RequestDecoder,
};
use crate::{SocketSpec, SpecError};

/// How long an idle connection (no request in progress) may stay silent: 330 s. Postfix
/// closes unused policy connections after `smtpd_policy_service_max_idle` (300 s), so a
/// well-behaved client always closes first, and a stuck one cannot hold a slot forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(330);
/// How long a request may take to arrive once its first byte came, and how long writing a
/// reply may take: 100 s, Postfix's own `smtpd_policy_service_timeout`.
pub const IO_TIMEOUT: Duration = Duration::from_secs(100);
/// Requests served on one connection before the server closes it (after replying): 100,000.
/// Postfix reconnects by itself after `smtpd_policy_service_max_ttl` (1000 s), so this only
/// bounds a client that never lets go; closing after a reply is harmless, Postfix reconnects.
pub const MAX_REQUESTS_PER_CONNECTION: u64 = 100_000;
/// Connections served at once: 1024. Each smtpd process keeps at most one connection per
/// policy endpoint, and Postfix's `default_process_limit` is 100.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a graceful shutdown waits for requests in progress: 10 s, then the rest are
/// dropped (Postfix retries them). The same default as the milter server's.
pub const SHUTDOWN_GRACE: Duration = mailstack_transport::DEFAULT_SHUTDOWN_GRACE;
/// How much one read asks for.
const READ_CHUNK: usize = 8 * 1024;

/// Answers policy requests. Implement it for your policy, or wrap a closure with
/// [`handler_fn`].
///
/// The server calls [`Handler::respond`], which by default sends [`Handler::handle`]'s
/// [`Action`]. Override `respond` to send a [`Reply`] of another form (an action in another
/// server's spelling, a restriction class name); `handle` then only serves direct callers.
///
/// ```
/// use policy_proto::{Action, PolicyRequest};
/// use policy_proto::{ConnInfo, Handler};
///
/// struct RejectFoo;
///
/// impl Handler for RejectFoo {
///     async fn handle(&self, req: PolicyRequest, _conn: &ConnInfo) -> Option<Action> {
///         if req.sender() == Some("foo@example.com") {
///             return Action::reject(Some("no foo")).ok();
///         }
///         Some(Action::Dunno)
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. `None` sends nothing and closes the connection: Postfix logs a
    /// warning, retries, and after `smtpd_policy_service_try_limit` attempts applies
    /// `smtpd_policy_service_default_action` (use it when the policy itself failed).
    fn handle(
        &self,
        request: PolicyRequest,
        conn: &ConnInfo,
    ) -> impl Future<Output = Option<Action>> + Send;

    /// What the server sends for one request; `None` closes without a reply, as for
    /// [`Handler::handle`]. The default sends `handle`'s action.
    fn respond(
        &self,
        request: PolicyRequest,
        conn: &ConnInfo,
    ) -> impl Future<Output = Option<Reply>> + Send {
        async move { self.handle(request, conn).await.map(Reply::from) }
    }
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

/// Wraps `f(request) -> impl Future<Output = Option<Action>>` as a [`Handler`].
///
/// ```
/// use policy_proto::Action;
/// use policy_proto::{Server, handler_fn};
///
/// let server = Server::new(handler_fn(|_req| async { Some(Action::Dunno) }));
/// # drop(server);
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(PolicyRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Action>> + Send,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(PolicyRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Action>> + Send,
{
    fn handle(
        &self,
        request: PolicyRequest,
        _conn: &ConnInfo,
    ) -> impl Future<Output = Option<Action>> + Send {
        (self.0)(request)
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A UNIX-domain socket client (Postfix does not bind its end).
    Unix,
    /// A TCP client.
    Tcp(SocketAddr),
    /// stdin/stdout: the connection spawn(8) handed us.
    Stdio,
    /// A stream given to [`Server::serve_connection`].
    Stream,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix => f.write_str("unix"),
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Stdio => f.write_str("stdio"),
            Self::Stream => f.write_str("stream"),
        }
    }
}

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    id: u64,
    peer: Peer,
    served: u64,
}

impl ConnInfo {
    /// A number for this connection, unique within the process (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Requests answered on this connection before this one.
    pub fn served(&self) -> u64 {
        self.served
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Server limits; [`Limits::default`] gives the documented constants. Operators may change
/// each field; none can be turned off.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Longest request line ([`MAX_LINE`]).
    pub max_line: usize,
    /// Most attributes per request ([`MAX_ATTRS`]).
    pub max_attrs: usize,
    /// Largest request ([`MAX_REQUEST`]).
    pub max_request: usize,
    /// Silence allowed between requests ([`IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Time allowed to finish reading a request once it started, and to write a reply
    /// ([`IO_TIMEOUT`]).
    pub io_timeout: Duration,
    /// Requests per connection ([`MAX_REQUESTS_PER_CONNECTION`]).
    pub max_requests: u64,
    /// Connections at once ([`MAX_CONNECTIONS`]); more wait in the listen queue.
    pub max_connections: usize,
    /// Graceful shutdown wait ([`SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: MAX_LINE,
            max_attrs: MAX_ATTRS,
            max_request: MAX_REQUEST,
            idle_timeout: IDLE_TIMEOUT,
            io_timeout: IO_TIMEOUT,
            max_requests: MAX_REQUESTS_PER_CONNECTION,
            max_connections: MAX_CONNECTIONS,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// How a connection ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnEnd {
    /// The client closed between requests.
    Eof,
    /// Nothing arrived for [`Limits::idle_timeout`].
    Idle,
    /// [`Limits::max_requests`] were served.
    RequestLimit,
    /// The handler returned `None`: closed without a reply.
    HandlerClosed,
    /// The server is shutting down.
    Shutdown,
}

/// Why a connection was closed without a reply to a request in progress.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The peer broke the protocol or a limit.
    #[error("malformed request")]
    Malformed(#[from] DecodeError),
    /// The peer closed in the middle of a request.
    #[error("connection closed in the middle of a request")]
    Truncated,
    /// A started request did not complete within [`Limits::io_timeout`].
    #[error("request not complete within the I/O timeout")]
    ReadTimeout,
    /// Writing a reply took longer than [`Limits::io_timeout`].
    #[error("reply not written within the I/O timeout")]
    WriteTimeout,
    /// Reading or writing failed.
    #[error("I/O error")]
    Io(#[from] io::Error),
}

/// Serves a [`Handler`] over listeners, stdio or any stream.
#[derive(Debug)]
pub struct Server<H> {
    handler: Arc<H>,
    limits: Limits,
}

impl<H> Clone for Server<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            limits: self.limits.clone(),
        }
    }
}

impl<H: Handler> Server<H> {
    /// A server with [`Limits::default`].
    pub fn new(handler: H) -> Self {
        Self {
            handler: Arc::new(handler),
            limits: Limits::default(),
        }
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Accepts connections until `shutdown` completes, one task per connection, at most
    /// [`Limits::max_connections`] at once. On shutdown it stops accepting (and removes its
    /// UNIX socket), closes idle connections, lets each connection finish the request in
    /// progress (at most [`Limits::shutdown_grace`]), closes the rest, and returns. It also
    /// returns, after the same grace period, when accepting fails for a reason that is not
    /// about one connection (logged at `error` level). A handler that panics is logged at
    /// `error` level naming the peer, and its connection is closed without a reply.
    ///
    /// # Errors
    ///
    /// The accept error that ended the loop, when accepting failed for a reason that is not
    /// about one connection or a passing shortage of descriptors or memory (for example the
    /// listening socket was shut down). Binding fails earlier, in [`Listener::bind_spec`].
    pub async fn serve(
        &self,
        listener: Listener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let limits = ServeLimits {
            max_connections: self.limits.max_connections,
            shutdown_grace: self.limits.shutdown_grace,
        };
        mailstack_transport::serve(listener.0, limits, shutdown, |stream, peer, stop| {
            let this = self.clone();
            let peer = match peer {
                mailstack_transport::Peer::Tcp(a) => Peer::Tcp(a),
                _ => Peer::Unix,
            };
            async move { this.run(stream, peer, stop).await }
        })
        .await
    }

    /// Serves the one connection spawn(8) hands a child: stdin and stdout. Returns when
    /// Postfix closes it (or on idle timeout, request limit, error).
    ///
    /// Under spawn(8) stdin, stdout **and stderr** are the connection: install a `tracing`
    /// subscriber that writes to a file or syslog, never to stderr. When stdin and stdout are
    /// one socket (spawn) or pipes they are driven by tokio's reactor; anything else goes
    /// through tokio's `stdin()`/`stdout()`, whose blocking reader thread can outlive this
    /// call, so end the process (`std::process::exit`) after it returns.
    pub async fn serve_stdio(&self) -> Result<ConnEnd, ConnError> {
        let stop_rx = Stop::never();
        match stdio_fds()? {
            Stdio::Socket(s) => {
                let s = tokio::net::UnixStream::from_std(s)?;
                let (r, w) = s.into_split();
                self.drive(r, w, Peer::Stdio, stop_rx).await
            }
            Stdio::Pipes(r, w) => {
                let r = tokio::net::unix::pipe::Receiver::from_owned_fd(r)?;
                let w = tokio::net::unix::pipe::Sender::from_owned_fd(w)?;
                self.drive(r, w, Peer::Stdio, stop_rx).await
            }
            Stdio::Other => {
                let (r, w) = (tokio::io::stdin(), tokio::io::stdout());
                self.drive(r, w, Peer::Stdio, stop_rx).await
            }
        }
    }

    /// Serves one already-connected stream (tests, or a transport of your own).
    pub async fn serve_connection<S>(&self, stream: S, peer: Peer) -> Result<ConnEnd, ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let (r, w) = tokio::io::split(stream);
        let stop_rx = Stop::never();
        self.drive(r, w, peer, stop_rx).await
    }

    /// One accepted connection: serve it and log how it ended.
    async fn run(&self, stream: Stream, peer: Peer, stop: Stop) {
        let res = match stream {
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                self.drive(r, w, peer.clone(), stop).await
            }
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                self.drive(r, w, peer.clone(), stop).await
            }
            // `Stream` is the shared transport's; a new kind would come with its own arm.
            #[allow(unreachable_patterns)]
            _ => return,
        };
        log_end(&peer, &res);
    }

    /// The request loop: decode, answer, repeat; closes without a reply on any error. Once a
    /// request's first byte is in, the whole request must arrive by one deadline
    /// ([`Limits::io_timeout`] from then), not within a timeout per read.
    async fn drive<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        peer: Peer,
        mut stop: Stop,
    ) -> Result<ConnEnd, ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let l = &self.limits;
        let mut decoder = RequestDecoder::with_limits(l.max_line, l.max_attrs, l.max_request);
        let mut info = ConnInfo {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            peer,
            served: 0,
        };
        tracing::trace!(conn = info.id, peer = %info.peer, "policy connection");
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = BytesMut::with_capacity(256);
        let mut deadline = None;
        loop {
            while let Some(req) = decoder.decode(&mut buf)? {
                deadline = None;
                let Some(reply) = self.handler.respond(req, &info).await else {
                    return Ok(ConnEnd::HandlerClosed);
                };
                out.clear();
                reply.encode(&mut out);
                write_reply(&mut writer, &out, l.io_timeout).await?;
                info.served += 1;
                if info.served >= l.max_requests {
                    return Ok(ConnEnd::RequestLimit);
                }
            }
            let in_request = decoder.in_request() || !buf.is_empty();
            if !in_request && stop.is_stopped() {
                return Ok(ConnEnd::Shutdown);
            }
            // Read at most what the request limit still allows (plus one byte, so going over
            // is seen): the buffer never grows past the limit by more than a byte.
            let room = decoder.max_request().saturating_sub(buf.len()) + 1;
            let want = room.min(READ_CHUNK);
            buf.reserve(want);
            let mut limited = (&mut reader).take(want as u64);
            let read = limited.read_buf(&mut buf);
            let n = if in_request {
                let at =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + l.io_timeout);
                tokio::time::timeout_at(at, read)
                    .await
                    .map_err(|_| ConnError::ReadTimeout)??
            } else {
                tokio::select! {
                    r = tokio::time::timeout(l.idle_timeout, read) => match r {
                        Ok(n) => n?,
                        Err(_) => return Ok(ConnEnd::Idle),
                    },
                    () = stop.stopped() => return Ok(ConnEnd::Shutdown),
                }
            };
            if n == 0 {
                return match buf.is_empty() {
                    true => Ok(ConnEnd::Eof),
                    false => Err(ConnError::Truncated),
                };
            }
        }
    }
}

async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), ConnError> {
    let write = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    tokio::time::timeout(limit, write)
        .await
        .map_err(|_| ConnError::WriteTimeout)?
        .map_err(ConnError::Io)
}

fn log_end(peer: &Peer, res: &Result<ConnEnd, ConnError>) {
    match res {
        Ok(ConnEnd::Eof) => tracing::trace!(%peer, "policy connection closed by client"),
        Ok(end) => tracing::debug!(%peer, "policy connection closed: {end:?}"),
        Err(e) => log_error(peer, e),
    }
}

/// Logs a connection error the way the module doc says: a warning naming the peer, with the
/// error chain (untrusted bytes never appear in it: `DecodeError` holds only limits).
pub fn log_error(peer: &Peer, e: &ConnError) {
    let cause = std::error::Error::source(e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    tracing::warn!(%peer, "policy connection closed without a reply: {e}{cause}");
}

enum Stdio {
    Socket(std::os::unix::net::UnixStream),
    Pipes(std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    Other,
}

/// What stdin and stdout are: one socket (spawn(8)), two pipes, or something else.
fn stdio_fds() -> io::Result<Stdio> {
    use std::os::fd::AsFd;
    let dup = |fd: std::os::fd::BorrowedFd<'_>| -> io::Result<(std::fs::File, std::fs::Metadata)> {
        let file = std::fs::File::from(fd.try_clone_to_owned()?);
        let meta = file.metadata()?;
        Ok((file, meta))
    };
    let (Ok((inf, inm)), Ok((outf, outm))) = (dup(io::stdin().as_fd()), dup(io::stdout().as_fd()))
    else {
        return Ok(Stdio::Other);
    };
    let same = inm.dev() == outm.dev() && inm.ino() == outm.ino();
    if inm.file_type().is_socket() && same {
        let s = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(inf));
        s.set_nonblocking(true)?;
        return Ok(Stdio::Socket(s));
    }
    if inm.file_type().is_fifo() && outm.file_type().is_fifo() {
        return Ok(Stdio::Pipes(inf.into(), outf.into()));
    }
    Ok(Stdio::Other)
}

/// How a UNIX socket is created: its permission bits and group. Postfix's smtpd runs as
/// `postfix` (chrooted or not) and must be able to connect. Applied by the transport shared
/// with `milter-proto` (the group name is looked up with the system's group database).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UnixOptions {
    /// Permission bits; default `0o660` (owner and group). `None` keeps what the umask gives.
    pub mode: Option<u32>,
    /// Group owner, a name or a number; `None` keeps ours.
    pub group: Option<String>,
}

impl Default for UnixOptions {
    fn default() -> Self {
        Self {
            mode: Some(mailstack_transport::DEFAULT_UNIX_MODE),
            group: None,
        }
    }
}

impl UnixOptions {
    /// Options with a mode and group.
    pub fn new(mode: Option<u32>, group: Option<String>) -> Self {
        Self { mode, group }
    }
}

/// A bound listening socket (the transport shared with `milter-proto`): a stale UNIX socket
/// file is replaced only when nothing listens on it, and the file is removed on drop.
#[derive(Debug)]
pub struct Listener(mailstack_transport::Listener);

impl Listener {
    /// Binds `spec` with default [`UnixOptions`].
    pub async fn bind(spec: &SocketSpec) -> io::Result<Self> {
        Self::bind_with(spec, &UnixOptions::default()).await
    }

    /// Binds `spec`. For a UNIX socket: a stale socket file (nothing accepts on it) is
    /// removed first; a live one is `AddrInUse`, and a path that is not a socket is
    /// `AlreadyExists` (never removed). Then `opts` are applied.
    pub async fn bind_with(spec: &SocketSpec, opts: &UnixOptions) -> io::Result<Self> {
        let group = opts
            .group
            .as_deref()
            .map(mailstack_transport::group_id)
            .transpose()?;
        let opts = mailstack_transport::UnixOptions::new(opts.mode, group);
        mailstack_transport::Listener::bind(spec, &opts)
            .await
            .map(Self)
    }

    /// Parses a Postfix-style spec ([`SocketSpec`]) and binds it.
    pub async fn bind_spec(spec: &str, opts: &UnixOptions) -> io::Result<Self> {
        let spec: SocketSpec = spec.parse().map_err(|e: SpecError| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{spec:?}: {e}"))
        })?;
        Self::bind_with(&spec, opts).await
    }

    /// Where this listener accepts, as a spec a client can connect to (the real port when
    /// bound to port 0).
    pub fn local_spec(&self) -> io::Result<SocketSpec> {
        self.0.local_spec()
    }
}
