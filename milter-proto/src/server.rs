//! A milter server on tokio (feature `tokio`): accept loop, one task per MTA connection, a
//! [`Handler`] with one async method per stage.
//!
//! ```no_run
//! use milter_proto::server::{Context, Decision, Handler, ServerConfig, serve};
//! use milter_proto::{Listener, UnixOptions};
//! use milter_proto::Actions;
//! use milter_proto::Needs;
//!
//! /// Adds `X-Stamp: yes` to every message.
//! struct Stamp;
//!
//! #[async_trait::async_trait]
//! impl Handler for Stamp {
//!     fn needs(&self) -> Needs {
//!         Needs { actions: Actions::ADDHDRS, ..Needs::default() }
//!     }
//!     async fn eom(&mut self, ctx: &mut Context) -> Decision {
//!         match ctx.add_header("X-Stamp", "yes") {
//!             Ok(()) => Decision::Continue,
//!             Err(_) => Decision::Tempfail,
//!         }
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let spec = "inet:127.0.0.1:8891".parse().expect("valid spec");
//! let listener = Listener::bind(&spec, &UnixOptions::default()).await?;
//! serve(listener, || Stamp, ServerConfig::default(), std::future::pending()).await
//! # }
//! ```
//!
//! How a connection runs: read a command (the length is checked before anything is
//! reserved), feed it to [`Session::handle`], call the handler's method for that stage, then
//! write what is due (nothing for a stage negotiated `NR_*`; at end of message every queued
//! modification and the final reply) in **one** write. A malformed packet, an out-of-order
//! command, a refused negotiation or a timeout ends the connection after
//! [`ServerConfig::error_reply`] (tempfail) is sent.
//!
//! Time limits: between commands the MTA may stay silent for [`ServerConfig::idle_timeout`];
//! once a command's first byte arrived the whole command must arrive within
//! [`ServerConfig::io_timeout`] (a deadline, not a per-read timeout, so a peer dribbling one
//! byte at a time cannot hold the connection), and each write must complete within it too.
//!
//! Shutdown: [`serve`] stops accepting, closes connections that are between messages, lets
//! the others go on for [`ServerConfig::shutdown_grace`] and then closes them.
//!
//! Logging (crate `tracing`): `debug` for routine per-connection events and peers that hang
//! up; `warn` for peer errors (malformed packets, out-of-order commands, timeouts) naming the
//! peer and the error; `error` only for our own failures (a handler that panicked, naming the
//! peer; accept failing).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mailstack_transport::{ServeLimits, Stop};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::command::{Command, ConnAddr};
use crate::flags::Protocol;
use crate::macros::Macros;
use crate::negotiate::{Needs, NegotiateError, Negotiated};
use crate::reply::{MAX_REPLBODY_CHUNK, Reply};
use crate::session::{HeaderLimits, ProtocolError, Session, SessionLimits, Step};
use crate::socket::Listener;
use crate::{ApiMisuse, DecodeError};

/// The attribute [`Handler`] implementations carry (`#[async_trait]`), re-exported so a
/// filter needs no dependency of its own on `async-trait`.
pub use async_trait::async_trait;

/// Longest wait for the next command between commands: libmilter's default `timeout`
/// (7210 s, longer than Postfix's 300 s `milter_content_timeout` plus its SMTP timeouts).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(7210);
/// Longest wait for the rest of a command once its first byte arrived, and for one write:
/// Postfix's `milter_command_timeout` (30 s).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`serve`] lets connections in flight go on after shutdown before closing them
/// (10 s, the same default as the policy server's).
pub use mailstack_transport::DEFAULT_SHUTDOWN_GRACE;
/// Connections served at once; further MTA connections wait in the listen queue. Postfix opens
/// one milter connection per SMTP connection, so this bounds concurrent SMTP sessions filtered.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Server limits and defaults; [`ServerConfig::default`] gives the documented constants.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`DEFAULT_IO_TIMEOUT`].
    pub io_timeout: Duration,
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`DEFAULT_SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// Sent before closing on a peer error or timeout (default [`Reply::Tempfail`], what
    /// Postfix's `milter_default_action = tempfail` would do anyway).
    pub error_reply: Reply,
    /// While [`Handler::eom`] runs, send PROGRESS this often (resets the MTA's timeout).
    /// `None` (default): only when the handler calls [`Context::progress`].
    pub progress_interval: Option<Duration>,
    /// Header fields per message (defaults [`crate::session::DEFAULT_MAX_HEADERS`] and
    /// [`crate::session::DEFAULT_MAX_HEADER_BYTES`]); a message beyond them is a
    /// [`ConnectionError::Protocol`]: [`ServerConfig::error_reply`], then the connection closes.
    pub header_limits: HeaderLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            error_reply: Reply::Tempfail,
            progress_interval: None,
            header_limits: HeaderLimits::default(),
        }
    }
}

/// A handler's answer to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// `SMFIR_CONTINUE`: go on.
    Continue,
    /// `SMFIR_ACCEPT`: accept; no more events for this message (at CONNECT/HELO: for the
    /// connection).
    Accept,
    /// `SMFIR_REJECT`: reject (at RCPT: this recipient).
    Reject,
    /// `SMFIR_TEMPFAIL`: temporary failure.
    Tempfail,
    /// `SMFIR_DISCARD`: accept and silently drop the message.
    Discard,
    /// `SMFIR_REPLYCODE`: an explicit SMTP reply such as `550 5.7.1 Spam`.
    ReplyCode(Bytes),
    /// `SMFIR_SKIP`: no more body chunks (only from [`Handler::body`] and only if the MTA
    /// offered `SMFIP_SKIP`; otherwise sent as CONTINUE).
    Skip,
    /// `SMFIR_SHUTDOWN`: 421, close the SMTP session.
    Shutdown,
    /// `SMFIR_CONN_FAIL`: connection failure.
    ConnFail,
}

impl Decision {
    /// The reply for this decision; SKIP is only valid for body chunks, where the caller
    /// handles it, so here it becomes CONTINUE.
    fn into_reply(self) -> Reply {
        match self {
            Self::Continue => Reply::Continue,
            Self::Accept => Reply::Accept,
            Self::Reject => Reply::Reject,
            Self::Tempfail => Reply::Tempfail,
            Self::Discard => Reply::Discard,
            Self::ReplyCode(t) => Reply::ReplyCode(t),
            Self::Skip => Reply::Continue,
            Self::Shutdown => Reply::Shutdown,
            Self::ConnFail => Reply::ConnFail,
        }
    }
}

/// What a filter does at each stage. One value per MTA connection (see [`serve`]'s factory),
/// so `&mut self` can hold per-connection and per-message state. Every method has a default
/// that continues; a stage negotiated away (`NO*`) is never called, and the decision of a
/// stage negotiated `NR_*` is not sent.
#[async_trait::async_trait]
pub trait Handler: Send + 'static {
    /// What to ask for in negotiation (actions, `NO*`/`NR_*` options, macro lists, required
    /// features). Default: nothing, every event with a reply.
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// `SMFIC_CONNECT`: client host name and address.
    async fn connect(
        &mut self,
        _ctx: &mut Context,
        _hostname: &[u8],
        _addr: &ConnAddr,
    ) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_HELO`: the HELO/EHLO argument.
    async fn helo(&mut self, _ctx: &mut Context, _helo: &[u8]) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_MAIL`: sender (usually `<addr>`) and ESMTP arguments. Starts a message.
    async fn mail(&mut self, _ctx: &mut Context, _sender: &[u8], _args: &[Bytes]) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_RCPT`: one recipient and its ESMTP arguments.
    async fn rcpt(&mut self, _ctx: &mut Context, _rcpt: &[u8], _args: &[Bytes]) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_DATA`.
    async fn data(&mut self, _ctx: &mut Context) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_HEADER`: one header (folds joined with `\n`).
    async fn header(&mut self, _ctx: &mut Context, _name: &[u8], _value: &[u8]) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_EOH`: end of headers.
    async fn eoh(&mut self, _ctx: &mut Context) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_BODY`: one body chunk (CRLF line ends, at most the negotiated frame size).
    async fn body(&mut self, _ctx: &mut Context, _chunk: &Bytes) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_BODYEOB`: end of message. Queue modifications with [`Context`]'s methods
    /// ([`Context::add_header`], ...); they are sent before the returned decision, all in one
    /// write. For a long run call [`Context::progress`] (or clone [`Context::progress_handle`]
    /// into a task) to keep the MTA waiting.
    async fn eom(&mut self, _ctx: &mut Context) -> Decision {
        Decision::Continue
    }

    /// `SMFIC_ABORT`: the current message (if any) is over; the connection goes on.
    async fn abort(&mut self, _ctx: &mut Context) {}

    /// The MTA connection ends (QUIT, QUIT_NC, the peer hung up, or an error). After QUIT_NC a
    /// new SMTP connection (CONNECT...) follows on the same handler.
    async fn close(&mut self, _ctx: &mut Context) {}

    /// `SMFIC_UNKNOWN`: an SMTP command the MTA did not recognise.
    async fn unknown(&mut self, _ctx: &mut Context, _command: &[u8]) -> Decision {
        Decision::Continue
    }
}

/// Asks the connection to send one PROGRESS now; `Clone + Send`, so a task spawned during
/// [`Handler::eom`] can keep the MTA waiting. Ignored outside end of message.
#[derive(Debug, Clone)]
pub struct ProgressHandle(Arc<Notify>);

impl ProgressHandle {
    /// Request one PROGRESS (several requests before it is sent count as one).
    pub fn progress(&self) {
        self.0.notify_one();
    }
}

/// Per-connection state a handler sees: negotiated options, macros, the modification queue.
#[derive(Debug)]
pub struct Context {
    session: Session,
    mods: Vec<Reply>,
    in_eom: bool,
    progress: ProgressHandle,
}

impl Context {
    fn new(needs: Needs, limits: HeaderLimits) -> Self {
        let limits = SessionLimits {
            headers: limits,
            ..SessionLimits::default()
        };
        Self {
            session: Session::new(needs, limits),
            mods: Vec::new(),
            in_eom: false,
            progress: ProgressHandle(Arc::new(Notify::new())),
        }
    }

    /// What was agreed in OPTNEG (every handler method runs after it).
    pub fn negotiated(&self) -> &Negotiated {
        self.session.negotiated()
    }

    /// The connection's protocol state (negotiation, macros, limits).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The value of macro `name` (`i` or `{i}`), latest stage first.
    pub fn macro_value(&self, name: &str) -> Option<&Bytes> {
        self.session.macros().get(name)
    }

    /// All macros received and still valid (see [`crate::Macros`] for when they are cleared).
    pub fn macros(&self) -> &Macros {
        self.session.macros()
    }

    /// Send one PROGRESS as soon as possible (during [`Handler::eom`] only).
    pub fn progress(&self) {
        self.progress.progress();
    }

    /// A handle to request PROGRESS from another task.
    pub fn progress_handle(&self) -> ProgressHandle {
        self.progress.clone()
    }

    /// Queue a modification if the action it needs ([`Reply::required_action`]) was agreed.
    fn queue(&mut self, reply: Reply) -> Result<(), ApiMisuse> {
        if !self.in_eom {
            return Err(ApiMisuse::NotAtEndOfMessage);
        }
        self.session.check_modification(&reply)?;
        self.mods.push(reply);
        Ok(())
    }

    /// `SMFIR_ADDHEADER` (needs `ADDHDRS`): append a header. Fold lines with `\n\t`, not
    /// `\r\n`.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), ApiMisuse> {
        let (name, value) = (text(name)?, text(value)?);
        self.queue(Reply::AddHeader { name, value })
    }

    /// `SMFIR_INSHEADER` (needs `ADDHDRS`): insert at `index` (0 = top).
    pub fn insert_header(&mut self, index: u32, name: &str, value: &str) -> Result<(), ApiMisuse> {
        let (name, value) = (text(name)?, text(value)?);
        let r = Reply::InsHeader { index, name, value };
        self.queue(r)
    }

    /// `SMFIR_CHGHEADER` (needs `CHGHDRS`): set the `index`-th (1-based) header `name`.
    pub fn change_header(&mut self, name: &str, index: u32, value: &str) -> Result<(), ApiMisuse> {
        let (name, value) = (text(name)?, text(value)?);
        let r = Reply::ChgHeader { index, name, value };
        self.queue(r)
    }

    /// `SMFIR_CHGHEADER` with an empty value (needs `CHGHDRS`): delete the `index`-th
    /// (1-based) header `name`.
    pub fn delete_header(&mut self, name: &str, index: u32) -> Result<(), ApiMisuse> {
        self.change_header(name, index, "")
    }

    /// `SMFIR_ADDRCPT` (needs `ADDRCPT`).
    pub fn add_rcpt(&mut self, rcpt: &str) -> Result<(), ApiMisuse> {
        let r = Reply::AddRcpt(text(rcpt)?);
        self.queue(r)
    }

    /// `SMFIR_ADDRCPT_PAR` (needs `ADDRCPT_PAR`): add a recipient with ESMTP arguments.
    pub fn add_rcpt_with_args(&mut self, rcpt: &str, args: &str) -> Result<(), ApiMisuse> {
        let r = Reply::AddRcptPar {
            rcpt: text(rcpt)?,
            args: Some(text(args)?),
        };
        self.queue(r)
    }

    /// `SMFIR_DELRCPT` (needs `DELRCPT`): the recipient as the MTA sent it.
    pub fn delete_rcpt(&mut self, rcpt: &str) -> Result<(), ApiMisuse> {
        let r = Reply::DelRcpt(text(rcpt)?);
        self.queue(r)
    }

    /// `SMFIR_CHGFROM` (needs `CHGFROM`): new envelope sender and optional ESMTP arguments.
    pub fn change_from(&mut self, from: &str, args: Option<&str>) -> Result<(), ApiMisuse> {
        let r = Reply::ChgFrom {
            from: text(from)?,
            args: args.map(text).transpose()?,
        };
        self.queue(r)
    }

    /// `SMFIR_REPLBODY` (needs `CHGBODY`): append `body` to the replacement body; sent in
    /// chunks of at most [`MAX_REPLBODY_CHUNK`] bytes. CRLF line ends.
    pub fn replace_body(&mut self, body: Bytes) -> Result<(), ApiMisuse> {
        let mut rest = body;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MAX_REPLBODY_CHUNK));
            self.queue(Reply::ReplBody(chunk))?;
        }
        Ok(())
    }

    /// `SMFIR_QUARANTINE` (needs `QUARANTINE`): Postfix puts the message on hold.
    pub fn quarantine(&mut self, reason: &str) -> Result<(), ApiMisuse> {
        let r = Reply::Quarantine(text(reason)?);
        self.queue(r)
    }
}

/// A string field: must not contain NUL (it ends fields on the wire).
fn text(s: &str) -> Result<Bytes, ApiMisuse> {
    if s.as_bytes().contains(&0) {
        return Err(ApiMisuse::ContainsNul);
    }
    Ok(Bytes::copy_from_slice(s.as_bytes()))
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Reading or writing the socket failed.
    #[error("milter connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The MTA sent bytes that do not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The MTA sent a command out of order.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The MTA does not offer what the handler requires.
    #[error(transparent)]
    Negotiate(#[from] NegotiateError),
    /// No command within [`ServerConfig::idle_timeout`].
    #[error("milter connection idle for longer than {0:?}")]
    IdleTimeout(Duration),
    /// A command was not completed, or a write not accepted, within
    /// [`ServerConfig::io_timeout`].
    #[error("milter connection stalled for longer than {0:?}")]
    IoTimeout(Duration),
    /// The peer closed in the middle of a packet.
    #[error("MTA closed the milter connection in the middle of a packet")]
    Truncated,
    /// The MTA closed the connection while a handler was working on a command it awaited an
    /// answer to; the handler's work was dropped.
    #[error("MTA hung up while the milter was working on {cmd:?}")]
    HungUp {
        /// The command byte being worked on.
        cmd: char,
    },
}

impl ConnectionError {
    fn from_protocol(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Negotiate(e) => Self::Negotiate(e),
            e => Self::Protocol(e),
        }
    }
}

/// Serve `listener` until `shutdown` completes, with one handler from `make_handler` per MTA
/// connection, at most [`ServerConfig::max_connections`] at once. On shutdown: stop accepting
/// (a unix socket file is removed), close connections between messages at once, let those
/// with a message open go on for [`ServerConfig::shutdown_grace`], then close them and return.
/// A handler that panics is logged at `error` level naming the peer, and its connection is
/// closed.
///
/// # Errors
///
/// When accepting fails for a reason that is not about one connection or a passing shortage
/// of descriptors or memory (for example the listening socket was shut down): the loop stops,
/// connections in flight get the grace period, and that error is returned.
pub async fn serve<H, F, S>(
    listener: Listener,
    make_handler: F,
    config: ServerConfig,
    shutdown: S,
) -> std::io::Result<()>
where
    H: Handler,
    F: Fn() -> H,
    S: Future<Output = ()>,
{
    let limits = ServeLimits {
        max_connections: config.max_connections,
        shutdown_grace: config.shutdown_grace,
    };
    let config = Arc::new(config);
    mailstack_transport::serve(listener, limits, shutdown, move |stream, peer, stop| {
        let handler = make_handler();
        let config = config.clone();
        async move {
            match run(stream, handler, &config, stop).await {
                Ok(()) => {}
                Err(e @ ConnectionError::HungUp { .. }) => {
                    tracing::debug!(%peer, "milter connection ended: {e}");
                }
                Err(e) => tracing::warn!(%peer, "milter connection ended: {e}"),
            }
        }
    })
    .await
}

/// Serve one MTA connection (already accepted) with `handler` until QUIT, the peer closes, or
/// an error. For custom accept loops and tests; [`serve`] uses the same code.
pub async fn serve_connection<S, H>(
    stream: S,
    handler: H,
    config: &ServerConfig,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    run(stream, handler, config, Stop::never()).await
}

struct Conn<'a, S, H> {
    stream: S,
    handler: H,
    config: &'a ServerConfig,
    ctx: Context,
    rbuf: BytesMut,
    wbuf: BytesMut,
    stop: Stop,
}

async fn run<S, H>(
    stream: S,
    handler: H,
    config: &ServerConfig,
    stop: Stop,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    let ctx = Context::new(handler.needs(), config.header_limits);
    let mut conn = Conn {
        stream,
        handler,
        config,
        ctx,
        rbuf: BytesMut::with_capacity(8 * 1024),
        wbuf: BytesMut::new(),
        stop,
    };
    let result = conn.run().await;
    if let Err(e) = &result {
        // A negotiation refusal is answered by closing: the MTA awaits an OPTNEG, not a verdict.
        let reply_possible = !matches!(
            e,
            ConnectionError::Io(_)
                | ConnectionError::Truncated
                | ConnectionError::Negotiate(_)
                | ConnectionError::HungUp { .. }
        );
        if reply_possible {
            conn.wbuf.clear();
            conn.config.error_reply.encode(&mut conn.wbuf);
            let _ = conn.flush().await;
        }
    }
    conn.handler.close(&mut conn.ctx).await;
    let _ = conn.stream.shutdown().await;
    result
}

impl<S, H> Conn<'_, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    async fn run(&mut self) -> Result<(), ConnectionError> {
        loop {
            let Some(cmd) = self.read_command().await? else {
                return Ok(());
            };
            let step = (self.ctx.session.handle(&cmd)).map_err(ConnectionError::from_protocol)?;
            match step {
                Step::Negotiated { reply, .. } => reply.encode(&mut self.wbuf),
                Step::Close => {
                    self.flush().await?;
                    return Ok(());
                }
                Step::Reply => {
                    if let Some(d) = self.dispatch(cmd, true).await? {
                        d.encode(&mut self.wbuf);
                    }
                }
                // A future step kind is answered like one without a reply.
                _ => {
                    self.dispatch(cmd, false).await?;
                }
            }
            self.flush().await?;
        }
    }

    /// Read one command; `None` at a clean end (peer closed between packets, or shutdown
    /// while no message is open). Between commands the wait is the idle timeout; once a
    /// command's first byte is in, the rest must arrive by one deadline counted from then.
    async fn read_command(&mut self) -> Result<Option<Command>, ConnectionError> {
        let mut deadline = None;
        loop {
            if let Some(cmd) = Command::decode(&mut self.rbuf, self.ctx.session.max_frame_len())? {
                return Ok(Some(cmd));
            }
            let idle = self.rbuf.is_empty();
            let may_stop = idle && !self.ctx.session.in_message();
            if may_stop && self.stop.is_stopped() {
                return Ok(None);
            }
            let read = if idle {
                let wait = self.config.idle_timeout;
                tokio::select! {
                    r = tokio::time::timeout(wait, self.stream.read_buf(&mut self.rbuf)) => {
                        r.map_err(|_| ConnectionError::IdleTimeout(wait))?
                    }
                    () = self.stop.stopped(), if may_stop => return Ok(None),
                }
            } else {
                let wait = self.config.io_timeout;
                let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + wait);
                tokio::time::timeout_at(at, self.stream.read_buf(&mut self.rbuf))
                    .await
                    .map_err(|_| ConnectionError::IoTimeout(wait))?
            };
            match read {
                Ok(0) if idle => return Ok(None),
                Ok(0) => return Err(ConnectionError::Truncated),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Write everything due in one write.
    async fn flush(&mut self) -> Result<(), ConnectionError> {
        flush_to(&mut self.stream, &mut self.wbuf, self.config.io_timeout).await
    }

    /// Run the handler for `cmd`; returns the reply to send if one is due. With `watch` (the
    /// MTA awaits the answer) the socket is watched meanwhile: if the MTA hangs up, the
    /// handler's work is dropped and [`ConnectionError::HungUp`] returned.
    async fn dispatch(
        &mut self,
        cmd: Command,
        watch: bool,
    ) -> Result<Option<Reply>, ConnectionError> {
        let Self {
            stream,
            handler: h,
            ctx,
            rbuf,
            ..
        } = self;
        let code = cmd.code();
        let work: HandlerFuture<'_> = match &cmd {
            Command::OptNeg { .. } | Command::Macro { .. } | Command::Quit => return Ok(None),
            Command::BodyEob(_) => {
                let Command::BodyEob(tail) = cmd else {
                    return Ok(None);
                };
                return self.end_of_message(tail).await.map(Some);
            }
            Command::Connect { hostname, addr } => h.connect(ctx, hostname, addr),
            Command::Helo(helo) => h.helo(ctx, helo),
            Command::Mail { sender, args } => h.mail(ctx, sender, args),
            Command::Rcpt { rcpt, args } => h.rcpt(ctx, rcpt, args),
            Command::Data => h.data(ctx),
            Command::Header { name, value } => h.header(ctx, name, value),
            Command::Eoh => h.eoh(ctx),
            Command::Body(chunk) => h.body(ctx, chunk),
            Command::Abort => {
                h.abort(ctx).await;
                return Ok(None);
            }
            Command::QuitNc => {
                h.close(ctx).await;
                return Ok(None);
            }
            Command::Unknown(c) => h.unknown(ctx, c),
        };
        let d = if watch {
            watch_peer(stream, rbuf, code, work).await?
        } else {
            work.await
        };
        if matches!(cmd, Command::Body(_))
            && d == Decision::Skip
            && self.ctx.negotiated().protocol.contains(Protocol::SKIP)
        {
            return Ok(Some(Reply::Skip));
        }
        Ok(Some(d.into_reply()))
    }

    /// BODYEOB: a last chunk (sendmail) goes to `body` first; then `eom` runs while PROGRESS
    /// requests are served and the socket is watched for the MTA hanging up; the
    /// modifications go into the write buffer before the final reply.
    async fn end_of_message(&mut self, tail: Bytes) -> Result<Reply, ConnectionError> {
        let Self {
            stream,
            handler,
            ctx,
            rbuf,
            wbuf,
            config,
            ..
        } = self;
        if !tail.is_empty() {
            let work = handler.body(ctx, &tail);
            match watch_peer(stream, rbuf, b'E', work).await? {
                Decision::Continue | Decision::Skip => {}
                other => return Ok(other.into_reply()),
            }
        }
        ctx.in_eom = true;
        ctx.mods.clear();
        let notify = ctx.progress.0.clone();
        let every = config.progress_interval;
        let decision = {
            let mut eom = handler.eom(ctx);
            let mut tick =
                every.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
            let mut open = true;
            loop {
                tokio::select! {
                    biased;
                    d = &mut eom => break d,
                    r = stream.read_buf(rbuf), if open => {
                        open = still_open(r, rbuf, b'E')?;
                        continue;
                    }
                    () = notify.notified() => {}
                    _ = tick_or_never(&mut tick) => {}
                }
                Reply::Progress.encode(wbuf);
                flush_to(stream, wbuf, config.io_timeout).await?;
            }
        };
        ctx.in_eom = false;
        for m in ctx.mods.drain(..) {
            m.encode(wbuf);
        }
        Ok(decision.into_reply())
    }
}

/// What an `#[async_trait]` handler method returns.
type HandlerFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Decision> + Send + 'a>>;

/// Bytes read ahead while a handler works (the MTA normally sends nothing until answered);
/// past this the socket is no longer watched, so a chatty peer cannot grow the buffer.
const WATCH_READ_LIMIT: usize = 64 * 1024;

/// Await `work` (a handler answering command `cmd`) while reading the socket: bytes that come
/// meanwhile stay in `rbuf` for the next command; end of stream or a reset means the MTA hung
/// up, and `work` is dropped.
async fn watch_peer<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    cmd: u8,
    work: HandlerFuture<'_>,
) -> Result<Decision, ConnectionError> {
    let mut work = work;
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            d = &mut work => return Ok(d),
            r = stream.read_buf(rbuf), if open => open = still_open(r, rbuf, cmd)?,
        }
    }
}

/// The outcome of one watching read: `Ok(true)` to keep watching, `Ok(false)` when the
/// read-ahead limit is reached, an error when the MTA hung up.
fn still_open(
    r: std::io::Result<usize>,
    rbuf: &BytesMut,
    cmd: u8,
) -> Result<bool, ConnectionError> {
    match r {
        Ok(0) => Err(ConnectionError::HungUp {
            cmd: char::from(cmd),
        }),
        Ok(_) => Ok(rbuf.len() < WATCH_READ_LIMIT),
        Err(e) if is_hangup(&e) => Err(ConnectionError::HungUp {
            cmd: char::from(cmd),
        }),
        Err(e) => Err(e.into()),
    }
}

fn is_hangup(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

async fn flush_to<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    wait: Duration,
) -> Result<(), ConnectionError> {
    if buf.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(wait, stream.write_all(buf)).await {
        Ok(r) => r?,
        Err(_) => return Err(ConnectionError::IoTimeout(wait)),
    }
    buf.clear();
    Ok(())
}

async fn tick_or_never(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
