//! The MTA side on tokio (feature `tokio`): connect to any milter (ours or libmilter-based such
//! as OpenDKIM), negotiate, send whole messages stage by stage as Postfix does, and collect
//! replies and modifications.
//!
//! ```no_run
//! use milter_proto::client::{Client, ClientConfig, Connection, Message};
//!
//! # async fn run() -> Result<(), milter_proto::client::ClientError> {
//! let spec = "inet:127.0.0.1:8891".parse().expect("valid spec");
//! let mut client = Client::connect(&spec, ClientConfig::default()).await?;
//! client.connection(&Connection::default()).await?;
//! let msg = Message::parse(b"<a@example.org>", &[b"<b@example.net>"], b"Subject: hi\r\n\r\nbody\r\n");
//! let outcome = client.message(&msg).await?;
//! println!("{:?} after {:?}", outcome.decision, outcome.modifications);
//! client.quit().await?;
//! # Ok(())
//! # }
//! ```
//!
//! What is sent, per [`Client::message`]: for each stage its MACRO packet (if the message
//! has macros for it, even when the event itself is negotiated away, as Postfix does), then the
//! event unless negotiated `NO*`; a reply is awaited unless negotiated `NR_*`. Events without
//! a reply are written together with the next one that has one. PROGRESS is counted and
//! restarts the timeout. A recipient rejection drops that recipient; any other non-CONTINUE
//! reply ends the message (SKIP ends the body). ABORT follows every message, as Postfix does;
//! it is written together with the next command.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::DecodeError;
use crate::command::{Command, ConnAddr};
use crate::flags::{Actions, Protocol};
use crate::frame::MAX_FRAME_LEN_1M;
use crate::negotiate::{Negotiated, PROTOCOL_VERSION};
use crate::reply::{MAX_REPLBODY_CHUNK, Reply};
use crate::session::{Expect, MtaError, MtaSession, Received};
use crate::socket::{SocketSpec, Stream, connect};

/// Protocol options Postfix 3.x offers (every bit up to `HDR_LEADSPC`, no `MDS_*`).
pub const POSTFIX_PROTOCOL: Protocol = Protocol::from_bits_retain(0x1F_FFFF);
/// Postfix's `milter_connect_timeout` (30 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Postfix's `milter_command_timeout` (30 s): wait for one reply.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Postfix's `milter_content_timeout` (300 s): wait for each end-of-message reply.
pub const DEFAULT_EOM_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest body chunk sent: 65535 bytes, as Postfix and libmilter's `MILTER_CHUNK_SIZE`.
pub const MAX_BODY_CHUNK: usize = MAX_REPLBODY_CHUNK;
/// Unanswered commands (NR_*) are buffered up to this many bytes before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// What the client offers and how long it waits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Protocol version offered (2..=6; default [`PROTOCOL_VERSION`]).
    pub version: u32,
    /// Actions offered (default: all, as Postfix).
    pub actions: Actions,
    /// Protocol options offered (default [`POSTFIX_PROTOCOL`]).
    pub protocol: Protocol,
    /// Largest reply packet accepted (default [`MAX_FRAME_LEN_1M`]; Postfix accepts more,
    /// but no milter sends replies near that).
    pub max_reply_len: u32,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_COMMAND_TIMEOUT`].
    pub command_timeout: Duration,
    /// See [`DEFAULT_EOM_TIMEOUT`].
    pub eom_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            version: PROTOCOL_VERSION,
            actions: Actions::all(),
            protocol: POSTFIX_PROTOCOL,
            max_reply_len: MAX_FRAME_LEN_1M,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            eom_timeout: DEFAULT_EOM_TIMEOUT,
        }
    }
}

impl ClientConfig {
    /// Offer `version`, `actions` and `protocol` (other settings default).
    pub fn offer(version: u32, actions: Actions, protocol: Protocol) -> Self {
        Self {
            version,
            actions,
            protocol,
            ..Self::default()
        }
    }
}

/// Why the client failed. After any error the connection is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing failed.
    #[error("milter I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The milter sent bytes that do not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// No reply within the timeout.
    #[error("milter did not answer {cmd:?} within {after:?}")]
    Timeout {
        /// The command byte awaiting an answer.
        cmd: char,
        /// The timeout.
        after: Duration,
    },
    /// The milter closed the connection.
    #[error("milter closed the connection")]
    Closed,
    /// The milter broke the MTA side's rules ([`MtaSession`]): an OPTNEG answer beyond the
    /// offer ([`MtaError::Negotiation`]; Postfix drops such a milter), a reply the command does
    /// not allow ([`MtaError::UnexpectedReply`], e.g. a modification before end of message,
    /// SKIP when not offered, a modification whose action was not negotiated); or this client
    /// was asked to send a command out of turn ([`MtaError::OutOfTurn`]).
    #[error(transparent)]
    Session(#[from] MtaError),
}

/// Macros per event, each `(command code, pairs)`, sent before the command with that code.
pub type CommandMacros = Vec<(u8, Vec<(Bytes, Bytes)>)>;

/// The SMTP connection described to the milter (CONNECT and HELO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Client host name (`[address]` when unknown, as Postfix sends).
    pub hostname: Bytes,
    /// Client address.
    pub addr: ConnAddr,
    /// HELO argument (`None`: no HELO sent).
    pub helo: Option<Bytes>,
    /// Macros for `C` and `H`.
    pub macros: CommandMacros,
}

impl Default for Connection {
    /// `client.example [192.0.2.1]:40000`, HELO `client.example`, macro `j` = `mx.example`.
    fn default() -> Self {
        let b = Bytes::from_static;
        Self {
            hostname: b(b"client.example"),
            addr: ConnAddr::Inet {
                port: 40000,
                address: b(b"192.0.2.1"),
            },
            helo: Some(b(b"client.example")),
            macros: vec![(b'C', vec![(b(b"j"), b(b"mx.example"))])],
        }
    }
}

/// One message: envelope, headers, body, macros.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Sender as in MAIL FROM, usually `<addr>`.
    pub sender: Bytes,
    /// ESMTP arguments of MAIL FROM.
    pub sender_args: Vec<Bytes>,
    /// Recipients as in RCPT TO, with their ESMTP arguments.
    pub rcpts: Vec<(Bytes, Vec<Bytes>)>,
    /// Headers `(name, value)`, the value as after the colon (leading space included, folds
    /// joined with `\n`). Without `HDR_LEADSPC` one leading space is removed when sent, as
    /// Postfix does.
    pub headers: Vec<(Bytes, Bytes)>,
    /// The body with CRLF line ends, sent in chunks of [`MAX_BODY_CHUNK`].
    pub body: Bytes,
    /// Macros for `M`, `R`, `T`, `N`, `E`.
    pub macros: CommandMacros,
}

impl Message {
    /// A message from raw RFC 5322 text (CRLF or LF line ends): headers are split off at the
    /// first empty line, folded lines joined with `\n`, the body normalised to CRLF.
    pub fn parse(sender: &[u8], rcpts: &[&[u8]], raw: &[u8]) -> Self {
        let (headers, body) = split_message(raw);
        Self {
            sender: Bytes::copy_from_slice(sender),
            rcpts: rcpts
                .iter()
                .map(|r| (Bytes::copy_from_slice(r), Vec::new()))
                .collect(),
            headers,
            body,
            ..Self::default()
        }
    }
}

/// Header fields and CRLF body of a raw message.
fn split_message(raw: &[u8]) -> (Vec<(Bytes, Bytes)>, Bytes) {
    let mut headers: Vec<(Bytes, Bytes)> = Vec::new();
    let mut rest = raw;
    loop {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i + 1..).unwrap_or_default(),
            ),
            None => (rest, &[][..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            rest = next;
            break;
        }
        let fold = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        match (fold, headers.last_mut()) {
            (true, Some((_, value))) => {
                let mut v = BytesMut::from(&value[..]);
                v.extend_from_slice(b"\n");
                v.extend_from_slice(line);
                *value = v.freeze();
            }
            _ => {
                let (n, v) = match line.iter().position(|&b| b == b':') {
                    Some(i) => (
                        line.get(..i).unwrap_or_default(),
                        line.get(i + 1..).unwrap_or_default(),
                    ),
                    None => (line, &[][..]),
                };
                headers.push((Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)));
            }
        }
        rest = next;
        if rest.is_empty() {
            break;
        }
    }
    let mut body = BytesMut::with_capacity(rest.len() + rest.len() / 32);
    let mut prev = 0u8;
    for &b in rest {
        if b == b'\n' && prev != b'\r' {
            body.extend_from_slice(b"\r");
        }
        body.extend_from_slice(&[b]);
        prev = b;
    }
    (headers, body.freeze())
}

/// What a milter answered to one connection or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Every decision reply in order, with the command byte it answered (PROGRESS and
    /// modifications are not listed here).
    pub replies: Vec<(u8, Reply)>,
    /// End-of-message modifications in the order received.
    pub modifications: Vec<Reply>,
    /// PROGRESS packets received.
    pub progress: u32,
    /// The result: the reply that ended the message early, or the end-of-message reply
    /// ([`Reply::Continue`] when everything continued and no end of message was sent).
    pub decision: Reply,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            replies: Vec::new(),
            modifications: Vec::new(),
            progress: 0,
            decision: Reply::Continue,
        }
    }
}

impl Outcome {
    /// The replacement body (REPLBODY chunks joined), if the milter sent one.
    pub fn replaced_body(&self) -> Option<Bytes> {
        let mut body: Option<BytesMut> = None;
        for m in &self.modifications {
            if let Reply::ReplBody(chunk) = m {
                body.get_or_insert_with(BytesMut::new)
                    .extend_from_slice(chunk);
            }
        }
        body.map(BytesMut::freeze)
    }
}

/// The MTA side of one milter connection: a tokio driver of [`MtaSession`], which owns the
/// rules (the offer, the check of the answer, which reply may follow which command).
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    config: ClientConfig,
    session: MtaSession,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// A non-CONTINUE reply to CONNECT/HELO: the milter is done with this connection.
    connection_decision: Option<Reply>,
}

impl Client<Stream> {
    /// Connect to `spec` (within `config.connect_timeout`) and negotiate.
    ///
    /// # Errors
    ///
    /// [`ClientError::Io`] when connecting fails, [`ClientError::Timeout`] (command `O`) when
    /// it takes longer than `config.connect_timeout`; then those of [`Client::negotiate`].
    pub async fn connect(spec: &SocketSpec, config: ClientConfig) -> Result<Self, ClientError> {
        let stream = match tokio::time::timeout(config.connect_timeout, connect(spec)).await {
            Ok(s) => s?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    cmd: 'O',
                    after: config.connect_timeout,
                });
            }
        };
        Self::negotiate(stream, config).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Client<S> {
    /// Send OPTNEG on a connected `stream` and check the answer against the offer.
    ///
    /// # Errors
    ///
    /// [`ClientError::Io`], [`ClientError::Timeout`] (no answer within
    /// `config.command_timeout`), [`ClientError::Closed`], [`ClientError::Decode`];
    /// [`ClientError::Session`] for an answer beyond the offer ([`MtaError::Negotiation`]) or a
    /// reply that is not OPTNEG ([`MtaError::UnexpectedReply`]).
    pub async fn negotiate(stream: S, config: ClientConfig) -> Result<Self, ClientError> {
        let mut session = MtaSession::new(config.version, config.actions, config.protocol);
        let mut wbuf = BytesMut::new();
        session.offer().encode(&mut wbuf);
        let mut client = Self {
            stream,
            config,
            session,
            rbuf: BytesMut::with_capacity(4096),
            wbuf,
            connection_decision: None,
        };
        client.flush().await?;
        let timeout = client.config.command_timeout;
        let answer = client.read_reply('O', timeout).await?;
        match client.session.receive(&answer)? {
            Received::Negotiated => Ok(client),
            _ => Err(MtaError::UnexpectedReply {
                cmd: 'O',
                reply: char::from(answer.code()),
            }
            .into()),
        }
    }

    /// What the milter asked for (version, actions, protocol options, macro lists).
    pub fn negotiated(&self) -> &Negotiated {
        self.session.negotiated()
    }

    /// The MTA-side protocol state this client drives.
    pub fn session(&self) -> &MtaSession {
        &self.session
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    async fn read_reply(&mut self, cmd: char, wait: Duration) -> Result<Reply, ClientError> {
        loop {
            if let Some(r) = Reply::decode(&mut self.rbuf, self.config.max_reply_len)? {
                return Ok(r);
            }
            match tokio::time::timeout(wait, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(ClientError::Timeout { cmd, after: wait }),
                Ok(Ok(0)) => return Err(ClientError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Send one command as is (no `NO*` check) and read what it is owed: nothing for MACRO,
    /// ABORT, QUIT, QUIT_NC and `NR_*` stages; for BODYEOB every modification and PROGRESS up
    /// to the final reply; otherwise one reply (after any PROGRESS). Returned in order.
    ///
    /// # Errors
    ///
    /// Those of the I/O ([`ClientError::Io`], [`ClientError::Timeout`],
    /// [`ClientError::Closed`], [`ClientError::Decode`]); [`ClientError::Session`] for a reply
    /// the command does not allow ([`MtaError::UnexpectedReply`]) or a command sent out of turn
    /// (OPTNEG again, anything after QUIT: [`MtaError::OutOfTurn`]).
    pub async fn command(&mut self, cmd: &Command) -> Result<Vec<Reply>, ClientError> {
        let expect = self.session.send(cmd)?;
        cmd.encode(&mut self.wbuf);
        let wait = match expect {
            Expect::Nothing => {
                if self.wbuf.len() >= WRITE_BATCH {
                    self.flush().await?;
                }
                return Ok(Vec::new());
            }
            Expect::EndOfMessage => self.config.eom_timeout,
            _ => self.config.command_timeout,
        };
        self.flush().await?;
        let code = char::from(cmd.code());
        let mut got = Vec::new();
        loop {
            let r = self.read_reply(code, wait).await?;
            let done = self.session.receive(&r)? == Received::Final;
            got.push(r);
            if done {
                return Ok(got);
            }
        }
    }

    /// Send `stage`'s macros from `macros` (if any), then `cmd` unless negotiated away;
    /// record the answer in `out`. Returns the final reply, if one was due.
    async fn event(
        &mut self,
        macros: &CommandMacros,
        cmd: Command,
        out: &mut Outcome,
    ) -> Result<Option<Reply>, ClientError> {
        let stage = cmd.code();
        for (_, pairs) in macros.iter().filter(|(s, _)| *s == stage) {
            let m = Command::Macro {
                command: stage,
                pairs: pairs.clone(),
            };
            self.queue_unanswered(&m)?;
        }
        if !self.session.sends(&cmd) {
            return Ok(None);
        }
        let mut last = None;
        for r in self.command(&cmd).await? {
            match r {
                Reply::Progress => out.progress += 1,
                r if r.is_modification() => out.modifications.push(r),
                r => {
                    out.replies.push((stage, r.clone()));
                    last = Some(r);
                }
            }
        }
        Ok(last)
    }

    /// Send the connection's CONNECT and HELO (with their macros). A non-CONTINUE answer is
    /// the milter's verdict on the whole connection: later messages are not sent and get it as
    /// their decision.
    pub async fn connection(&mut self, conn: &Connection) -> Result<Outcome, ClientError> {
        let mut out = Outcome::default();
        let connect = Command::Connect {
            hostname: conn.hostname.clone(),
            addr: conn.addr.clone(),
        };
        let mut verdict = self.event(&conn.macros, connect, &mut out).await?;
        if let (Some(Reply::Continue) | None, Some(helo)) = (&verdict, &conn.helo) {
            verdict = self
                .event(&conn.macros, Command::Helo(helo.clone()), &mut out)
                .await?;
        }
        self.flush().await?;
        if let Some(v) = verdict.filter(|v| *v != Reply::Continue) {
            self.connection_decision = Some(v.clone());
            out.decision = v;
        }
        Ok(out)
    }

    /// Send one message (MAIL .. BODYEOB, then ABORT) and collect the milter's answers.
    pub async fn message(&mut self, msg: &Message) -> Result<Outcome, ClientError> {
        let mut out = Outcome::default();
        if let Some(v) = &self.connection_decision {
            out.decision = v.clone();
            return Ok(out);
        }
        if let Some(stop) = self.envelope(msg, &mut out).await? {
            out.decision = stop;
        } else if let Some(stop) = self.content(msg, &mut out).await? {
            out.decision = stop;
        }
        // ABORT is queued, not written: it leaves with the next command (MAIL, QUIT, QUIT_NC),
        // saving a write per message, and a milter that closes after answering the end of
        // message (a graceful shutdown) does not turn a complete outcome into an error.
        self.queue_unanswered(&Command::Abort)?;
        Ok(out)
    }

    /// Queue a command that has no answer (MACRO, ABORT) for the next write.
    fn queue_unanswered(&mut self, cmd: &Command) -> Result<(), ClientError> {
        match self.session.send(cmd)? {
            Expect::Nothing => {
                cmd.encode(&mut self.wbuf);
                Ok(())
            }
            _ => Err(MtaError::OutOfTurn {
                cmd: char::from(cmd.code()),
            }
            .into()),
        }
    }

    /// MAIL, RCPTs, DATA; `Some(reply)` if the message ends there.
    async fn envelope(
        &mut self,
        msg: &Message,
        out: &mut Outcome,
    ) -> Result<Option<Reply>, ClientError> {
        let m = &msg.macros;
        let mail = Command::Mail {
            sender: msg.sender.clone(),
            args: msg.sender_args.clone(),
        };
        if let Some(stop) = stops(self.event(m, mail, out).await?) {
            return Ok(Some(stop));
        }
        let mut last_rejection = None;
        let mut accepted = 0;
        for (rcpt, args) in &msg.rcpts {
            let cmd = Command::Rcpt {
                rcpt: rcpt.clone(),
                args: args.clone(),
            };
            match self.event(m, cmd, out).await? {
                None | Some(Reply::Continue) => accepted += 1,
                Some(Reply::Accept) => return Ok(Some(Reply::Accept)),
                Some(r) => last_rejection = Some(r),
            }
        }
        if accepted == 0
            && let Some(r) = last_rejection
        {
            return Ok(Some(r));
        }
        Ok(stops(self.event(m, Command::Data, out).await?))
    }

    /// Headers, EOH, body chunks, BODYEOB; `Some(reply)` for the final answer.
    async fn content(
        &mut self,
        msg: &Message,
        out: &mut Outcome,
    ) -> Result<Option<Reply>, ClientError> {
        let m = &msg.macros;
        let leadspc = self.negotiated().protocol.contains(Protocol::HDR_LEADSPC);
        for (name, value) in &msg.headers {
            let value = match value.strip_prefix(b" ") {
                Some(v) if !leadspc => value.slice_ref(v),
                _ => value.clone(),
            };
            let h = Command::Header {
                name: name.clone(),
                value,
            };
            if let Some(stop) = stops(self.event(m, h, out).await?) {
                return Ok(Some(stop));
            }
        }
        if let Some(stop) = stops(self.event(m, Command::Eoh, out).await?) {
            return Ok(Some(stop));
        }
        let mut rest = msg.body.clone();
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MAX_BODY_CHUNK));
            match self.event(m, Command::Body(chunk), out).await? {
                Some(Reply::Skip) => break,
                r => {
                    if let Some(stop) = stops(r) {
                        return Ok(Some(stop));
                    }
                }
            }
        }
        let eom = self.event(m, Command::BodyEob(Bytes::new()), out).await?;
        Ok(Some(eom.unwrap_or(Reply::Continue)))
    }

    /// Send ABORT (end the message transaction; the connection goes on).
    pub async fn abort(&mut self) -> Result<(), ClientError> {
        self.command(&Command::Abort).await?;
        self.flush().await
    }

    /// Send QUIT_NC: forget this SMTP connection; call [`Client::connection`] for the next.
    pub async fn quit_nc(&mut self) -> Result<(), ClientError> {
        self.connection_decision = None;
        self.command(&Command::QuitNc).await?;
        self.flush().await
    }

    /// Send QUIT and close.
    pub async fn quit(mut self) -> Result<(), ClientError> {
        self.command(&Command::Quit).await?;
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// The reply if it ends the message (anything but CONTINUE or no reply).
fn stops(r: Option<Reply>) -> Option<Reply> {
    r.filter(|r| *r != Reply::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_message_folds_and_crlf() {
        let (h, body) = split_message(b"Subject: a\n\tb\r\nX:y\n\nline1\nline2\r\n");
        assert_eq!(
            h,
            vec![
                (
                    Bytes::from_static(b"Subject"),
                    Bytes::from_static(b" a\n\tb")
                ),
                (Bytes::from_static(b"X"), Bytes::from_static(b"y")),
            ]
        );
        assert_eq!(body, Bytes::from_static(b"line1\r\nline2\r\n"));
    }

    #[test]
    fn headers_only_message_has_empty_body() {
        let (h, body) = split_message(b"A: 1\r\n");
        assert_eq!(h.len(), 1);
        assert!(body.is_empty());
    }
}
