//! A small stand-in for `milter-proto`'s tokio server and MTA-side client.
//!
//! `milter-proto` (sans-IO codec, session, and the `tokio` server and client) had not landed
//! when these examples were written, so the example binaries, the interop tests and the bench
//! run over this module instead. It speaks milter protocol version 6 as described in
//! `docs/spec/` and `/work/shared/reference/milter-protocol.md`: length-prefixed frames,
//! option negotiation with the `NO*`/`NR_*` masks, and the end-of-message modifications. It is
//! meant to be replaced by `milter_proto::server` / `milter_proto::client` once they exist;
//! the public shape (a [`Filter`] with one method per decision, [`serve`], [`Client`]) was
//! kept small so that swap is mechanical.
//!
//! Layout: framing ([`read_frame`], [`encode_frame`]), negotiation masks ([`action`],
//! [`proto`]), the server ([`Filter`], [`serve`], [`SocketSpec`]) and the client ([`Client`]).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Largest frame we accept: milter-proto's default, libmilter's 64 KiB of data plus the
/// command byte (a 65,535-byte body chunk fits). Checked before any allocation.
pub const MAX_FRAME_LEN: u32 = milter_proto::frame::DEFAULT_MAX_FRAME_LEN;

/// The protocol version we speak (Postfix 3.x default `milter_protocol = 6`).
pub const VERSION: u32 = milter_proto::negotiate::VERSION;

/// Largest body chunk sent by the client: libmilter's `MILTER_CHUNK_SIZE`.
pub const MAX_BODY_CHUNK: usize = 65_535;

/// `SMFIF_*` action flags as plain masks, taken from [`milter_proto::flags::Actions`].
pub mod action {
    use milter_proto::flags::Actions;
    /// SMFIF_ADDHDRS: add headers.
    pub const ADDHDRS: u32 = Actions::ADDHDRS.bits();
    /// SMFIF_CHGBODY: replace the body.
    pub const CHGBODY: u32 = Actions::CHGBODY.bits();
    /// SMFIF_ADDRCPT: add recipients.
    pub const ADDRCPT: u32 = Actions::ADDRCPT.bits();
    /// SMFIF_DELRCPT: delete recipients.
    pub const DELRCPT: u32 = Actions::DELRCPT.bits();
    /// SMFIF_CHGHDRS: change or delete headers.
    pub const CHGHDRS: u32 = Actions::CHGHDRS.bits();
    /// SMFIF_QUARANTINE: quarantine the message.
    pub const QUARANTINE: u32 = Actions::QUARANTINE.bits();
}

/// `SMFIP_*` protocol flags as plain masks, taken from [`milter_proto::flags::Protocol`].
pub mod proto {
    use milter_proto::flags::Protocol;
    /// SMFIP_NR_HDR: no reply to HEADER.
    pub const NR_HDR: u32 = Protocol::NR_HDR.bits();
    /// SMFIP_NR_CONN: no reply to CONNECT.
    pub const NR_CONN: u32 = Protocol::NR_CONN.bits();
    /// SMFIP_NR_HELO: no reply to HELO.
    pub const NR_HELO: u32 = Protocol::NR_HELO.bits();
    /// SMFIP_NR_MAIL: no reply to MAIL.
    pub const NR_MAIL: u32 = Protocol::NR_MAIL.bits();
    /// SMFIP_NR_RCPT: no reply to RCPT.
    pub const NR_RCPT: u32 = Protocol::NR_RCPT.bits();
    /// SMFIP_NR_DATA: no reply to DATA.
    pub const NR_DATA: u32 = Protocol::NR_DATA.bits();
    /// SMFIP_NR_UNKN: no reply to UNKNOWN.
    pub const NR_UNKN: u32 = Protocol::NR_UNKN.bits();
    /// SMFIP_NR_EOH: no reply to EOH.
    pub const NR_EOH: u32 = Protocol::NR_EOH.bits();
    /// SMFIP_NR_BODY: no reply to BODY chunks.
    pub const NR_BODY: u32 = Protocol::NR_BODY.bits();
    /// Every `NR_*` flag.
    pub const ALL_NR: u32 =
        NR_HDR | NR_CONN | NR_HELO | NR_MAIL | NR_RCPT | NR_DATA | NR_UNKN | NR_EOH | NR_BODY;
}

/// The `NR_*` flag that silences the reply to command byte `cmd` (0 if none).
fn no_reply_flag(cmd: u8) -> u32 {
    match cmd {
        b'C' => proto::NR_CONN,
        b'H' => proto::NR_HELO,
        b'M' => proto::NR_MAIL,
        b'R' => proto::NR_RCPT,
        b'T' => proto::NR_DATA,
        b'L' => proto::NR_HDR,
        b'N' => proto::NR_EOH,
        b'B' => proto::NR_BODY,
        b'U' => proto::NR_UNKN,
        _ => 0,
    }
}

/// Appends one frame (`u32` length, command byte, data) to `out`.
pub fn encode_frame(cmd: u8, data: &[u8], out: &mut Vec<u8>) {
    // Frames we build are bounded by MAX_BODY_CHUNK or short strings, far below u32::MAX.
    let len = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(data);
}

/// Reads one frame into `buf` (cleared first) and returns its command byte, or `None` at a
/// clean end of stream. A length of 0 or above [`MAX_FRAME_LEN`] is an `InvalidData` error.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<u8>> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(head);
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("milter frame length {len} outside 1..={MAX_FRAME_LEN}"),
        ));
    }
    let mut cmd = [0u8; 1];
    r.read_exact(&mut cmd).await?;
    buf.clear();
    buf.resize(len as usize - 1, 0);
    r.read_exact(buf).await?;
    Ok(Some(cmd[0]))
}

/// Splits NUL-terminated strings.
fn cstrings(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn cstr(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A reply to a stage, or the final decision on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `c` SMFIR_CONTINUE.
    Continue,
    /// `a` SMFIR_ACCEPT.
    Accept,
    /// `r` SMFIR_REJECT.
    Reject,
    /// `t` SMFIR_TEMPFAIL.
    Tempfail,
    /// `d` SMFIR_DISCARD.
    Discard,
    /// `y` SMFIR_REPLYCODE with the full SMTP reply, e.g. `550 5.7.1 no thanks`.
    Code(String),
}

impl Reply {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Continue => encode_frame(b'c', &[], out),
            Self::Accept => encode_frame(b'a', &[], out),
            Self::Reject => encode_frame(b'r', &[], out),
            Self::Tempfail => encode_frame(b't', &[], out),
            Self::Discard => encode_frame(b'd', &[], out),
            Self::Code(text) => {
                let mut d = Vec::new();
                cstr(text, &mut d);
                encode_frame(b'y', &d, out);
            }
        }
    }

    fn decode(cmd: u8, data: &[u8]) -> Option<Self> {
        Some(match cmd {
            b'c' => Self::Continue,
            b'a' => Self::Accept,
            b'r' => Self::Reject,
            b't' => Self::Tempfail,
            b'd' => Self::Discard,
            b'y' => Self::Code(cstrings(data).into_iter().next().unwrap_or_default()),
            _ => return None,
        })
    }
}

/// A modification sent before the final reply to end-of-message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Modification {
    /// `h` SMFIR_ADDHEADER (needs [`action::ADDHDRS`]).
    AddHeader(String, String),
    /// `+` SMFIR_ADDRCPT (needs [`action::ADDRCPT`]).
    AddRcpt(String),
    /// `-` SMFIR_DELRCPT (needs [`action::DELRCPT`]).
    DelRcpt(String),
    /// `b` SMFIR_REPLBODY, the whole new body (needs [`action::CHGBODY`]); sent in chunks.
    ReplaceBody(Vec<u8>),
}

impl Modification {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut d = Vec::new();
        match self {
            Self::AddHeader(name, value) => {
                cstr(name, &mut d);
                cstr(value, &mut d);
                encode_frame(b'h', &d, out);
            }
            Self::AddRcpt(rcpt) => {
                cstr(rcpt, &mut d);
                encode_frame(b'+', &d, out);
            }
            Self::DelRcpt(rcpt) => {
                cstr(rcpt, &mut d);
                encode_frame(b'-', &d, out);
            }
            Self::ReplaceBody(body) => {
                for chunk in body.chunks(MAX_BODY_CHUNK) {
                    encode_frame(b'b', chunk, out);
                }
            }
        }
    }

    fn decode(cmd: u8, data: &[u8]) -> Option<Self> {
        let mut s = cstrings(data).into_iter();
        Some(match cmd {
            b'h' => Self::AddHeader(s.next()?, s.next()?),
            b'+' | b'2' => Self::AddRcpt(s.next()?),
            b'-' => Self::DelRcpt(s.next()?),
            b'b' => Self::ReplaceBody(data.to_vec()),
            _ => return None,
        })
    }
}

/// What the server collected about the current message.
#[derive(Debug, Default, Clone)]
pub struct Message {
    /// The envelope sender as sent in MAIL (usually with angle brackets).
    pub mail_from: String,
    /// The envelope recipients as sent in RCPT.
    pub rcpts: Vec<String>,
    /// The headers in order (name, value).
    pub headers: Vec<(String, String)>,
    /// The body with CRLF line ends (empty unless [`Filter::wants_body`]).
    pub body: Vec<u8>,
    /// Macros seen so far on this connection.
    pub macros: HashMap<String, String>,
}

impl Message {
    /// The values of every header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A milter's decisions. Every stage not covered here is answered with CONTINUE (or not at
/// all when its `NR_*` flag was negotiated).
pub trait Filter: Send + Sync + 'static {
    /// The actions (`SMFIF_*`) this filter needs.
    fn actions(&self) -> u32;
    /// The protocol flags (`SMFIP_*`) this filter asks for; only those the MTA offered are
    /// kept.
    fn protocol(&self) -> u32;
    /// Whether to keep the body in [`Message::body`].
    fn wants_body(&self) -> bool {
        true
    }
    /// The modifications and the final reply at end of message.
    fn end_of_message(&self, msg: &Message) -> (Vec<Modification>, Reply);
}

/// Where a milter listens: `unix:/path`, `local:/path`, a bare path, `inet:host:port`,
/// `inet:[::1]:port`, `inet:port@host` or `inet6:port@host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// A unix-domain socket path.
    Unix(PathBuf),
    /// A TCP address `host:port`.
    Tcp(String),
}

impl std::str::FromStr for SocketSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad socket spec {s:?} (want unix:/path or inet:host:port)");
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            return Ok(Self::Unix(path.into()));
        }
        if s.starts_with('/') {
            return Ok(Self::Unix(s.into()));
        }
        let (v6, rest) = match (s.strip_prefix("inet6:"), s.strip_prefix("inet:")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => return Err(bad()),
        };
        if let Some((port, host)) = rest.split_once('@') {
            port.parse::<u16>().map_err(|_| bad())?;
            let host = if v6 && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            return Ok(Self::Tcp(format!("{host}:{port}")));
        }
        let (_, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        Ok(Self::Tcp(rest.to_owned()))
    }
}

/// Listens on `spec` and serves `filter` on every connection until the task is dropped.
/// A stale unix socket file is removed first; a new one gets mode 0666.
pub async fn serve<F: Filter>(spec: &SocketSpec, filter: Arc<F>) -> io::Result<()> {
    match spec {
        SocketSpec::Unix(path) => {
            if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
                std::fs::remove_file(path)?;
            }
            let listener = UnixListener::bind(path)?;
            // Postfix's smtpd runs as `postfix`, not as the user that started us: let it
            // connect. Operators restrict access with the directory's permissions.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            tracing::info!(socket = %path.display(), "listening");
            loop {
                let (stream, _) = listener.accept().await?;
                spawn_conn(stream, Arc::clone(&filter));
            }
        }
        SocketSpec::Tcp(addr) => {
            let listener = TcpListener::bind(addr.as_str()).await?;
            tracing::info!(socket = %addr, "listening");
            loop {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tracing::trace!(%peer, "connection");
                spawn_conn(stream, Arc::clone(&filter));
            }
        }
    }
}

fn spawn_conn<S, F>(stream: S, filter: Arc<F>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Filter,
{
    tokio::spawn(async move {
        if let Err(e) = serve_conn(stream, &*filter).await {
            tracing::warn!(error = %e, "milter connection ended with an error");
        }
    });
}

/// Serves one MTA connection with `filter`: answers every stage and writes the end-of-message
/// modifications and final reply in one write.
pub async fn serve_conn<S, F>(stream: S, filter: &F) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Filter + ?Sized,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut no_reply = 0u32;
    let mut msg = Message::default();
    while let Some(cmd) = read_frame(&mut r, &mut buf).await? {
        out.clear();
        match cmd {
            b'O' => no_reply = negotiate(&buf, filter, &mut out)?,
            b'D' => record_macros(&buf, &mut msg.macros),
            b'M' => msg.mail_from = cstrings(&buf).into_iter().next().unwrap_or_default(),
            b'R' => msg.rcpts.extend(cstrings(&buf).into_iter().next()),
            b'L' => {
                let mut s = cstrings(&buf).into_iter();
                msg.headers
                    .push((s.next().unwrap_or_default(), s.next().unwrap_or_default()));
            }
            b'B' if filter.wants_body() => msg.body.extend_from_slice(&buf),
            b'E' => {
                msg.body.extend_from_slice(&buf);
                let (mods, reply) = filter.end_of_message(&msg);
                mods.iter().for_each(|m| m.encode(&mut out));
                reply.encode(&mut out);
                msg = Message {
                    macros: std::mem::take(&mut msg.macros),
                    ..Message::default()
                };
            }
            b'A' => {
                msg = Message {
                    macros: std::mem::take(&mut msg.macros),
                    ..Message::default()
                }
            }
            b'K' => msg = Message::default(),
            b'Q' => break,
            _ => {}
        }
        let flag = no_reply_flag(cmd);
        if flag != 0 && no_reply & flag == 0 {
            Reply::Continue.encode(&mut out);
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
        }
    }
    Ok(())
}

/// Answers OPTNEG and returns the negotiated `NR_*` flags.
fn negotiate<F: Filter + ?Sized>(data: &[u8], filter: &F, out: &mut Vec<u8>) -> io::Result<u32> {
    let word = |i: usize| -> io::Result<u32> {
        data.get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short OPTNEG"))
    };
    let (version, actions, protocol) = (word(0)?, word(1)?, word(2)?);
    if version < 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "milter version below 2",
        ));
    }
    let want_actions = filter.actions();
    if want_actions & !actions != 0 {
        tracing::warn!(
            offered = actions,
            wanted = want_actions,
            "MTA lacks some actions"
        );
    }
    let proto = filter.protocol() & protocol;
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&version.min(VERSION).to_be_bytes());
    d.extend_from_slice(&(want_actions & actions).to_be_bytes());
    d.extend_from_slice(&proto.to_be_bytes());
    encode_frame(b'O', &d, out);
    Ok(proto & proto::ALL_NR)
}

fn record_macros(data: &[u8], macros: &mut HashMap<String, String>) {
    let Some((_, pairs)) = data.split_first() else {
        return;
    };
    let mut s = cstrings(pairs).into_iter();
    while let (Some(k), Some(v)) = (s.next(), s.next()) {
        macros.insert(k.trim_matches(['{', '}']).to_owned(), v);
    }
}

/// What the MTA side tells the milter about the SMTP client and the message.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The client host name (CONNECT).
    pub hostname: String,
    /// The client IPv4 address (CONNECT).
    pub addr: String,
    /// The client port (CONNECT).
    pub port: u16,
    /// The HELO name.
    pub helo: String,
    /// The envelope sender, without angle brackets.
    pub from: String,
    /// The envelope recipients, without angle brackets.
    pub rcpts: Vec<String>,
    /// Macros sent before CONNECT (`j`, `{daemon_name}`...) and before MAIL (`i`...).
    pub macros: Vec<(String, String)>,
}

impl Default for Envelope {
    fn default() -> Self {
        Self {
            hostname: "client.example".into(),
            addr: "192.0.2.1".into(),
            port: 40000,
            helo: "client.example".into(),
            from: "sender@src.example".into(),
            rcpts: vec!["rcpt@dest.example".into()],
            macros: vec![
                ("j".into(), "mx.dest.example".into()),
                ("i".into(), "4ABCDEF".into()),
            ],
        }
    }
}

/// What a milter answered to one message.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Each stage's reply, as (stage name, reply); stages with no reply are not listed.
    pub replies: Vec<(&'static str, Reply)>,
    /// The end-of-message modifications in the order received.
    pub modifications: Vec<Modification>,
    /// The final decision (the first non-CONTINUE reply, or the end-of-message reply).
    pub decision: Option<Reply>,
}

/// The MTA side: connects to a milter, negotiates, sends whole messages.
#[derive(Debug)]
pub struct Client<S> {
    stream: BufReader<S>,
    /// The negotiated (version, actions, protocol) after [`Client::negotiate`].
    pub negotiated: (u32, u32, u32),
    buf: Vec<u8>,
    out: Vec<u8>,
    greeted: bool,
}

/// A client over either socket type.
pub type AnyClient = Client<Box<dyn AsyncStream>>;

/// A byte stream the client can run over.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

impl AnyClient {
    /// Connects to `spec` (TCP with `TCP_NODELAY`).
    pub async fn connect(spec: &SocketSpec) -> io::Result<Self> {
        let stream: Box<dyn AsyncStream> = match spec {
            SocketSpec::Unix(p) => Box::new(UnixStream::connect(p).await?),
            SocketSpec::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        Ok(Client::new(stream))
    }
}

/// The `NO*` flag that tells the client to skip each command.
const STAGE_NO_FLAGS: [(u8, u32); 8] = [
    (b'C', 0x1),
    (b'H', 0x2),
    (b'M', 0x4),
    (b'R', 0x8),
    (b'B', 0x10),
    (b'L', 0x20),
    (b'N', 0x40),
    (b'T', 0x200),
];

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream: BufReader::new(stream),
            negotiated: (0, 0, 0),
            buf: Vec::new(),
            out: Vec::new(),
            greeted: false,
        }
    }

    /// Sends OPTNEG offering `actions` and `protocol`; returns and stores the milter's answer.
    pub async fn negotiate(&mut self, actions: u32, protocol: u32) -> io::Result<(u32, u32, u32)> {
        let mut d = Vec::with_capacity(12);
        for w in [VERSION, actions, protocol] {
            d.extend_from_slice(&w.to_be_bytes());
        }
        self.out.clear();
        encode_frame(b'O', &d, &mut self.out);
        self.stream.get_mut().write_all(&self.out).await?;
        let cmd = self.read().await?;
        let w = |i: usize| {
            self.buf
                .get(i * 4..i * 4 + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
        };
        match (cmd, w(0), w(1), w(2)) {
            (b'O', Some(v), Some(a), Some(p)) => {
                if a & !actions != 0 || v > VERSION {
                    return Err(invalid("milter asked for more than was offered"));
                }
                self.negotiated = (v, a, p);
                Ok(self.negotiated)
            }
            _ => Err(invalid("bad OPTNEG reply")),
        }
    }

    async fn read(&mut self) -> io::Result<u8> {
        read_frame(&mut self.stream, &mut self.buf)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "milter closed"))
    }

    fn skipped(&self, cmd: u8) -> bool {
        STAGE_NO_FLAGS
            .iter()
            .any(|&(c, f)| c == cmd && self.negotiated.2 & f != 0)
    }

    /// Queues a command (and the empty macro packet before it) unless negotiated away.
    /// Returns whether a reply is expected.
    fn queue(&mut self, cmd: u8, data: &[u8]) -> bool {
        if self.skipped(cmd) {
            return false;
        }
        encode_frame(cmd, data, &mut self.out);
        let flag = no_reply_flag(cmd);
        flag == 0 || self.negotiated.2 & flag == 0
    }

    /// Sends one event and, unless it is a no-reply stage, reads its reply.
    async fn event(
        &mut self,
        name: &'static str,
        cmd: u8,
        data: &[u8],
        outcome: &mut Outcome,
    ) -> io::Result<bool> {
        let wants = self.queue(cmd, data);
        if !wants {
            return Ok(true);
        }
        self.stream.get_mut().write_all(&self.out).await?;
        self.out.clear();
        let rcmd = self.read().await?;
        let reply = Reply::decode(rcmd, &self.buf).ok_or_else(|| invalid("unexpected reply"))?;
        let go_on = reply == Reply::Continue;
        if !go_on {
            outcome.decision = Some(reply.clone());
        }
        outcome.replies.push((name, reply));
        Ok(go_on)
    }

    /// Sends the connect macros, CONNECT and HELO; returns whether the milter continued.
    async fn greet(&mut self, env: &Envelope, o: &mut Outcome) -> io::Result<bool> {
        let mut d = vec![b'C'];
        for (k, v) in &env.macros {
            cstr(k, &mut d);
            cstr(v, &mut d);
        }
        encode_frame(b'D', &d, &mut self.out);
        d.clear();
        cstr(&env.hostname, &mut d);
        d.push(b'4');
        d.extend_from_slice(&env.port.to_be_bytes());
        cstr(&env.addr, &mut d);
        if !self.event("connect", b'C', &d, o).await? {
            return Ok(false);
        }
        self.event("helo", b'H', &z(&env.helo), o).await
    }

    /// Sends (CONNECT and HELO with the first message only) MAIL, RCPTs, DATA, headers, body and
    /// end-of-message, collecting replies and modifications; then ABORT to end the
    /// transaction (the connection can carry another message). `raw` is the message with
    /// CRLF or LF line ends.
    pub async fn send_message(&mut self, env: &Envelope, raw: &[u8]) -> io::Result<Outcome> {
        let mut o = Outcome::default();
        self.out.clear();
        let mut go = true;
        if !self.greeted {
            self.greeted = true;
            go = self.greet(env, &mut o).await?;
        }
        let steps: Vec<(&'static str, u8, Vec<u8>)> = {
            let mut v = vec![("mail", b'M', z(&format!("<{}>", env.from)))];
            v.extend(
                env.rcpts
                    .iter()
                    .map(|r| ("rcpt", b'R', z(&format!("<{r}>")))),
            );
            v.push(("data", b'T', Vec::new()));
            v
        };
        for (name, cmd, data) in steps {
            if go {
                go = self.event(name, cmd, &data, &mut o).await?;
            }
        }
        let (headers, body) = split_message(raw);
        for (n, v) in &headers {
            if go {
                let mut d = z(n);
                cstr(v, &mut d);
                go = self.event("header", b'L', &d, &mut o).await?;
            }
        }
        if go {
            go = self.event("eoh", b'N', &[], &mut o).await?;
        }
        for chunk in body.chunks(MAX_BODY_CHUNK) {
            if go {
                go = self.event("body", b'B', chunk, &mut o).await?;
            }
        }
        if go {
            self.end_of_message(&mut o).await?;
        }
        self.out.clear();
        encode_frame(b'A', &[], &mut self.out);
        self.stream.get_mut().write_all(&self.out).await?;
        self.out.clear();
        Ok(o)
    }

    async fn end_of_message(&mut self, o: &mut Outcome) -> io::Result<()> {
        encode_frame(b'E', &[], &mut self.out);
        self.stream.get_mut().write_all(&self.out).await?;
        self.out.clear();
        loop {
            let cmd = self.read().await?;
            if cmd == b'p' {
                continue;
            }
            if let Some(reply) = Reply::decode(cmd, &self.buf) {
                o.replies.push(("eom", reply.clone()));
                o.decision = Some(reply);
                return Ok(());
            }
            match Modification::decode(cmd, &self.buf) {
                Some(Modification::ReplaceBody(chunk)) => match o.modifications.last_mut() {
                    Some(Modification::ReplaceBody(b)) => b.extend_from_slice(&chunk),
                    _ => o.modifications.push(Modification::ReplaceBody(chunk)),
                },
                Some(m) => o.modifications.push(m),
                None => return Err(invalid("unknown end-of-message packet")),
            }
        }
    }

    /// Sends QUIT.
    pub async fn quit(mut self) -> io::Result<()> {
        self.out.clear();
        encode_frame(b'Q', &[], &mut self.out);
        self.stream.get_mut().write_all(&self.out).await?;
        self.stream.get_mut().shutdown().await
    }
}

fn z(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    cstr(s, &mut v);
    v
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Splits a raw message into headers (folded lines joined with `\n`, one leading space
/// dropped as Postfix does) and the body with CRLF line ends.
pub fn split_message(raw: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h.to_owned(), b.to_owned()),
        None => (text.clone(), String::new()),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = headers.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()));
        }
    }
    (headers, body.replace('\n', "\r\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_specs_in_postfix_and_libmilter_styles() {
        let p = |s: &str| s.parse::<SocketSpec>();
        assert_eq!(
            p("unix:/run/m.sock"),
            Ok(SocketSpec::Unix("/run/m.sock".into()))
        );
        assert_eq!(
            p("local:/run/m.sock"),
            Ok(SocketSpec::Unix("/run/m.sock".into()))
        );
        assert_eq!(p("/run/m.sock"), Ok(SocketSpec::Unix("/run/m.sock".into())));
        assert_eq!(
            p("inet:127.0.0.1:8891"),
            Ok(SocketSpec::Tcp("127.0.0.1:8891".into()))
        );
        assert_eq!(
            p("inet:[::1]:8891"),
            Ok(SocketSpec::Tcp("[::1]:8891".into()))
        );
        assert_eq!(
            p("inet:8891@localhost"),
            Ok(SocketSpec::Tcp("localhost:8891".into()))
        );
        assert_eq!(
            p("inet6:8891@::1"),
            Ok(SocketSpec::Tcp("[::1]:8891".into()))
        );
        assert!(p("inet:nope").is_err());
        assert!(p("inet:host:99999").is_err());
        assert!(p("tcp:1.2.3.4:25").is_err());
    }

    #[tokio::test]
    async fn frame_length_is_checked_before_allocating() {
        let mut buf = Vec::new();
        // "UNKN" read as a length: 1431194446, far above the limit.
        let mut r: &[u8] = b"UNKNOWN command\r\n";
        let err = read_frame(&mut r, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(buf.capacity(), 0);
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(read_frame(&mut r, &mut buf).await.is_err());
        let mut r: &[u8] = &[];
        assert_eq!(read_frame(&mut r, &mut buf).await.unwrap(), None);
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut out = Vec::new();
        encode_frame(b'L', b"Subject\0hi\0", &mut out);
        encode_frame(b'N', b"", &mut out);
        let (mut r, mut buf) = (&out[..], Vec::new());
        assert_eq!(read_frame(&mut r, &mut buf).await.unwrap(), Some(b'L'));
        assert_eq!(buf, b"Subject\0hi\0");
        assert_eq!(read_frame(&mut r, &mut buf).await.unwrap(), Some(b'N'));
        assert!(buf.is_empty());
    }

    #[test]
    fn split_message_folds_with_lf_and_drops_one_space() {
        let (h, b) = split_message(b"Subject: a\r\n\tb\r\nX-Y:  two\r\n\r\nline\nnext\n");
        assert_eq!(
            h,
            [
                ("Subject".into(), "a\n\tb".into()),
                ("X-Y".into(), " two".into())
            ]
        );
        assert_eq!(b, b"line\r\nnext\r\n");
    }
}
