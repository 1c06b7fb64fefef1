//! An async clamd client: `PING`, `VERSION`, `STATS`, `RELOAD`, streamed `INSTREAM` scans and
//! `IDSESSION` for several scans on one connection, over a unix socket or TCP.
//!
//! Every network step is bounded: connecting, each write and each read have their own
//! timeout ([`Timeouts`]), and a reply longer than [`Client::max_reply`] bytes is an error,
//! so a dead, absent or confused peer yields a [`ClamdError`], never a hang or a panic.
//! The wire format is sans-IO code inside; [`parse_scan_reply`] and [`reply_text`] read a
//! scan reply that arrived some other way.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mailstack::clamd::ClamdError> {
//! use mailstack::clamd::{Client, ScanReply};
//! let client = Client::new("unix:/run/clamav/clamd.ctl".parse()?);
//! let mut scan = client.instream().await?;
//! scan.feed(b"Subject: hi\r\n\r\nhello\r\n").await?; // as chunks arrive
//! match scan.finish().await? {
//!     ScanReply::Clean => {}
//!     ScanReply::Infected(names) => println!("found {names:?}"),
//!     ScanReply::Error(e) => println!("{e}"),
//! }
//! # Ok(()) }
//! ```

pub(crate) mod proto;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

pub use proto::{Garbage, ScanError, ScanReply, Style, parse_scan_reply, reply_text};
use proto::{Pushed, ReplyBuffer};

/// Where clamd listens: `unix:/path` (or a bare absolute path) or `tcp:host[:port]`
/// (port 3310 by default; IPv6 as `tcp:[::1]:3310`), as in clamav-milter's `ClamdSocket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    /// A unix-domain socket.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

impl std::str::FromStr for ClamdAddr {
    type Err = ClamdError;

    fn from_str(s: &str) -> Result<Self, ClamdError> {
        let bad = || ClamdError::BadAddress(s.to_owned());
        if let Some(p) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            return if p.starts_with('/') {
                Ok(Self::Unix(p.into()))
            } else {
                Err(bad())
            };
        }
        if s.starts_with('/') {
            return Ok(Self::Unix(s.into()));
        }
        let rest = s.strip_prefix("tcp:").ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        let has_port = if rest.starts_with('[') {
            rest.contains("]:")
        } else {
            rest.matches(':').count() == 1
        };
        if has_port {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            Ok(Self::Tcp(rest.to_owned()))
        } else if rest.contains(':') && !rest.starts_with('[') {
            Ok(Self::Tcp(format!("[{rest}]:3310")))
        } else {
            Ok(Self::Tcp(format!("{rest}:3310")))
        }
    }
}

impl fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// The step that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Connecting to clamd.
    Connect,
    /// Sending a command or a chunk.
    Write,
    /// Waiting for (part of) a reply.
    Read,
}

/// Errors talking to clamd. Any of them means no verdict (never clean).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClamdError {
    /// The socket specification is not `unix:/path`, `/path` or `tcp:host[:port]`.
    #[error("bad clamd socket {0:?} (want unix:/path or tcp:host[:port])")]
    BadAddress(String),
    /// clamd is not there (no socket file, connection refused, ...).
    #[error("cannot connect to clamd at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: ClamdAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A step took longer than its timeout.
    #[error("clamd timed out ({0:?} after {1:?})")]
    Timeout(Phase, Duration),
    /// The connection failed while talking.
    #[error("clamd connection failed: {0}")]
    Io(#[from] io::Error),
    /// clamd closed the connection before replying.
    #[error("clamd closed the connection without a reply")]
    Closed,
    /// The reply was longer than the bound.
    #[error("clamd reply longer than {0} bytes")]
    ReplyTooLong(usize),
    /// The reply is not clamd's (wrong port, wrong protocol, or a version we don't know).
    #[error(transparent)]
    Garbage(#[from] Garbage),
    /// FILDES passes a descriptor over a unix-domain socket; this clamd is on TCP.
    #[error("FILDES needs clamd on a unix socket, not {0}")]
    NotUnix(ClamdAddr),
    /// An IDSESSION reply carried an id we did not expect.
    #[error("clamd session reply for request {got}, expected {expected}")]
    SessionId {
        /// The id we waited for.
        expected: u64,
        /// The id clamd sent.
        got: u64,
    },
}

/// Per-step time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting (clamav-milter: 30 s, compiled in).
    pub connect: Duration,
    /// Each write of a command or chunk.
    pub write: Duration,
    /// The whole wait for one reply, from the first read to its terminator (clamav-milter's
    /// `ReadTimeout`, 120 s). It bounds the reply as a whole, not each read: a peer sending
    /// one byte now and then, never the terminator, cannot hold a scan for longer.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            write: Duration::from_secs(120),
            read: Duration::from_secs(120),
        }
    }
}

/// Any bidirectional byte stream clamd can be reached over.
pub trait ClamdStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClamdStream for T {}

/// A connection to clamd over a unix socket or TCP: the transport's stream, the one the milter
/// and policy crates use too.
pub type Socket = milter_proto::Stream;

/// A clamd endpoint with its limits. Cheap to clone; each call opens its own connection
/// (clamd serves one command per connection outside IDSESSION).
#[derive(Debug, Clone)]
pub struct Client {
    addr: ClamdAddr,
    timeouts: Timeouts,
    max_reply: usize,
    max_stream: Option<u64>,
}

impl Client {
    /// A client for `addr` with default timeouts and a 4 KiB reply bound.
    pub fn new(addr: ClamdAddr) -> Self {
        Self {
            addr,
            timeouts: Timeouts::default(),
            max_reply: 4096,
            max_stream: None,
        }
    }

    /// Sets the timeouts.
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }

    /// Sets the longest reply accepted (`STATS` is read with 16 times this bound).
    pub fn max_reply(mut self, n: usize) -> Self {
        self.max_reply = n.max(64);
        self
    }

    /// Enforces clamd's `StreamMaxLength` on our side: an INSTREAM that would pass `n` bytes
    /// ends with [`ScanError::SizeLimitExceeded`] without sending the excess.
    pub fn max_stream(mut self, n: u64) -> Self {
        self.max_stream = Some(n);
        self
    }

    /// The address.
    pub fn addr(&self) -> &ClamdAddr {
        &self.addr
    }

    /// Opens a connection.
    pub async fn connect(&self) -> Result<ClamdConnection<Socket>, ClamdError> {
        let t = self.timeouts.connect;
        let sock = match &self.addr {
            ClamdAddr::Unix(p) => timeout(t, UnixStream::connect(p))
                .await
                .map(|r| r.map(Socket::Unix)),
            ClamdAddr::Tcp(a) => timeout(t, TcpStream::connect(a.as_str()))
                .await
                .map(|r| r.map(Socket::Tcp)),
        };
        let sock = sock
            .map_err(|_| ClamdError::Timeout(Phase::Connect, t))?
            .map_err(|source| ClamdError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        Ok(ClamdConnection::new(sock, self.timeouts, self.max_reply))
    }

    /// `PING` → `PONG`.
    pub async fn ping(&self) -> Result<(), ClamdError> {
        let r = self.connect().await?.command("PING").await?;
        Ok(proto::parse_pong(&r)?)
    }

    /// `VERSION`, e.g. `ClamAV 1.4.6` or `ClamAV 1.4.6/27000/Mon Nov 24 ...`.
    pub async fn version(&self) -> Result<String, ClamdError> {
        let r = self.connect().await?.command("VERSION").await?;
        Ok(proto::parse_version(&r)?)
    }

    /// `STATS`: the report without its final `END`.
    pub async fn stats(&self) -> Result<String, ClamdError> {
        let mut c = self.connect().await?;
        c.max_reply = self.max_reply.saturating_mul(16);
        // The reply spans several lines: only the `z` form ends it unambiguously.
        c.style = Style::Nul;
        let r = c.command("STATS").await?;
        Ok(proto::parse_stats(&r)?)
    }

    /// `RELOAD`: clamd reloads its databases.
    pub async fn reload(&self) -> Result<(), ClamdError> {
        let r = self.connect().await?.command("RELOAD").await?;
        Ok(proto::parse_reload(&r)?)
    }

    /// Starts an INSTREAM scan on a new connection; feed it with [`Instream::feed`].
    pub async fn instream(&self) -> Result<Instream<Socket>, ClamdError> {
        let conn = self.connect().await?;
        Instream::start(conn, None, self.max_stream).await
    }

    /// Scans a whole buffer.
    pub async fn scan_bytes(&self, data: &[u8]) -> Result<ScanReply, ClamdError> {
        let mut s = self.instream().await?;
        s.feed(data).await?;
        s.finish().await
    }

    /// `FILDES`: passes the open `file` to clamd over the unix socket (`SCM_RIGHTS`) and
    /// reads the verdict. clamd reads the file itself, from its start, so none of it crosses
    /// the socket: cheaper for clamd than INSTREAM, which copies the stream into a temporary
    /// file of its own before scanning. clamav-milter scans this way on a unix socket. Only
    /// for clamd on a unix socket ([`ClamdError::NotUnix`] otherwise).
    pub async fn scan_file(&self, file: &std::fs::File) -> Result<ScanReply, ClamdError> {
        let started = std::time::Instant::now();
        let r = self.fildes(file).await;
        count_scan(&r, started);
        r
    }

    async fn fildes(&self, file: &std::fs::File) -> Result<ScanReply, ClamdError> {
        use std::os::fd::AsRawFd;

        use sendfd::SendWithFd;

        if !matches!(self.addr, ClamdAddr::Unix(_)) {
            return Err(ClamdError::NotUnix(self.addr.clone()));
        }
        let mut conn = self.connect().await?;
        conn.write(&proto::encode_command("FILDES", conn.style))
            .await?;
        let Socket::Unix(stream) = &conn.stream else {
            return Err(ClamdError::NotUnix(self.addr.clone()));
        };
        let fd = file.as_raw_fd();
        // One dummy byte carries the descriptor, as clamd's protocol asks.
        let send = async {
            loop {
                stream.writable().await?;
                match stream.send_with_fd(&[0], &[fd]) {
                    Ok(_) => return Ok::<(), io::Error>(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        let t = self.timeouts.write;
        timeout(t, send)
            .await
            .map_err(|_| ClamdError::Timeout(Phase::Write, t))??;
        let reply = conn.read_reply().await?;
        Ok(parse_scan_reply(&reply)?)
    }

    /// Opens an IDSESSION for several commands on one connection.
    pub async fn session(&self) -> Result<IdSession<Socket>, ClamdError> {
        IdSession::start(self.connect().await?, self.max_stream).await
    }
}

/// One scan in the metrics: its latency, and an error of kind `clamd` (talking failed) or
/// `limit` (clamd's stream size limit).
fn count_scan(r: &Result<ScanReply, ClamdError>, started: std::time::Instant) {
    use crate::metrics::ErrorKind;
    crate::metrics::with(|m| {
        m.observe("clamd", started.elapsed());
        match r {
            Err(_) => m.error(ErrorKind::Clamd),
            Ok(ScanReply::Error(ScanError::SizeLimitExceeded)) => m.error(ErrorKind::Limit),
            Ok(ScanReply::Error(_)) => m.error(ErrorKind::Clamd),
            Ok(_) => {}
        }
    });
}

/// One connection to clamd over any stream, with its limits.
#[derive(Debug)]
pub struct ClamdConnection<S> {
    stream: S,
    timeouts: Timeouts,
    max_reply: usize,
    style: Style,
}

impl<S: ClamdStream> ClamdConnection<S> {
    /// Wraps a connected stream (tests and custom transports).
    pub fn new(stream: S, timeouts: Timeouts, max_reply: usize) -> Self {
        Self {
            stream,
            timeouts,
            max_reply,
            style: Style::default(),
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ClamdError> {
        let t = self.timeouts.write;
        timeout(t, self.stream.write_all(data))
            .await
            .map_err(|_| ClamdError::Timeout(Phase::Write, t))??;
        Ok(())
    }

    /// Reads one terminated reply, bounded in time as a whole by the read timeout and in
    /// size by the reply bound. A reply cut by EOF is returned as is; no bytes at all is
    /// [`ClamdError::Closed`].
    pub async fn read_reply(&mut self) -> Result<String, ClamdError> {
        let mut rb = ReplyBuffer::new(self.style, self.max_reply);
        let mut buf = [0u8; 512];
        let t = self.timeouts.read;
        let deadline = tokio::time::Instant::now() + t;
        loop {
            // Read one byte at a time past the first chunk would be slow; replies are short
            // and clamd sends nothing after the terminator outside a session, and inside a
            // session we ask for one reply at a time, so reading ahead is safe.
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .map_err(|_| ClamdError::Timeout(Phase::Read, t))??;
            if n == 0 {
                let partial = rb.take_partial();
                if partial.is_empty() {
                    return Err(ClamdError::Closed);
                }
                return Ok(reply_text(&partial));
            }
            match rb.push(&buf[..n]) {
                Pushed::NeedMore => {}
                Pushed::Reply(r, _) => return Ok(reply_text(&r)),
                Pushed::TooLong => return Err(ClamdError::ReplyTooLong(self.max_reply)),
            }
        }
    }

    /// Sends a command without argument and reads its reply.
    pub async fn command(&mut self, name: &str) -> Result<String, ClamdError> {
        self.write(&proto::encode_command(name, self.style)).await?;
        self.read_reply().await
    }
}

/// A streamed INSTREAM scan: feed chunks as they arrive, then [`finish`](Self::finish).
/// Memory use is bounded by the chunk the caller passes; nothing is buffered here.
#[derive(Debug)]
pub struct Instream<S> {
    conn: ClamdConnection<S>,
    session_id: Option<u64>,
    sent: u64,
    max: Option<u64>,
    /// Set once clamd refused more data (size limit) or the client limit was hit.
    early: Option<ScanReply>,
    framed: Vec<u8>,
    /// When the stream started (for the scan latency metric).
    started: std::time::Instant,
}

impl<S: ClamdStream> Instream<S> {
    async fn start(
        mut conn: ClamdConnection<S>,
        session_id: Option<u64>,
        max: Option<u64>,
    ) -> Result<Self, ClamdError> {
        conn.write(&proto::encode_command("INSTREAM", conn.style))
            .await?;
        Ok(Self {
            conn,
            session_id,
            sent: 0,
            max,
            early: None,
            framed: Vec::new(),
            started: std::time::Instant::now(),
        })
    }

    /// Starts an INSTREAM on an already connected stream.
    pub async fn on(conn: ClamdConnection<S>) -> Result<Self, ClamdError> {
        Self::start(conn, None, None).await
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends `data` as one chunk. After clamd refused the stream (size limit) further data
    /// is dropped and [`finish`](Self::finish) reports the refusal.
    pub async fn feed(&mut self, data: &[u8]) -> Result<(), ClamdError> {
        if self.early.is_some() || data.is_empty() {
            return Ok(());
        }
        if let Some(max) = self.max
            && self.sent + data.len() as u64 > max
        {
            self.early = Some(ScanReply::Error(ScanError::SizeLimitExceeded));
            return Ok(());
        }
        self.framed.clear();
        proto::frame_chunk(data, &mut self.framed);
        let framed = std::mem::take(&mut self.framed);
        let r = self.conn.write(&framed).await;
        self.framed = framed;
        match r {
            Ok(()) => {
                self.sent += data.len() as u64;
                Ok(())
            }
            // clamd closes after `INSTREAM size limit exceeded. ERROR`: the write fails but
            // the reply is waiting to be read.
            Err(ClamdError::Io(e)) => match self.conn.read_reply().await {
                Ok(reply) => {
                    self.early = Some(self.verdict(&reply)?);
                    Ok(())
                }
                Err(_) => Err(ClamdError::Io(e)),
            },
            Err(e) => Err(e),
        }
    }

    fn verdict(&self, reply: &str) -> Result<ScanReply, ClamdError> {
        if let Some(expected) = self.session_id
            && let Some((got, _)) = proto::split_session_id(reply)
            && got != expected
        {
            return Err(ClamdError::SessionId { expected, got });
        }
        Ok(parse_scan_reply(reply)?)
    }

    async fn end(&mut self) -> Result<ScanReply, ClamdError> {
        if let Some(v) = self.early.take() {
            return Ok(v);
        }
        match self.conn.write(&proto::END_OF_STREAM).await {
            Ok(()) | Err(ClamdError::Io(_)) => {}
            Err(e) => return Err(e),
        }
        let reply = self.conn.read_reply().await?;
        self.verdict(&reply)
    }

    /// Ends the stream and reads clamd's verdict.
    pub async fn finish(mut self) -> Result<ScanReply, ClamdError> {
        let r = self.end().await;
        count_scan(&r, self.started);
        r
    }
}

/// An IDSESSION: several commands on one connection, replies matched by request id.
/// Requests are sent one at a time (each reply read before the next request).
#[derive(Debug)]
pub struct IdSession<S> {
    conn: Option<ClamdConnection<S>>,
    next_id: u64,
    max_stream: Option<u64>,
}

impl<S: ClamdStream> IdSession<S> {
    /// Sends `IDSESSION` on `conn`.
    pub async fn start(
        mut conn: ClamdConnection<S>,
        max_stream: Option<u64>,
    ) -> Result<Self, ClamdError> {
        conn.write(&proto::encode_command("IDSESSION", conn.style))
            .await?;
        Ok(Self {
            conn: Some(conn),
            next_id: 1,
            max_stream,
        })
    }

    fn conn(&mut self) -> Result<&mut ClamdConnection<S>, ClamdError> {
        self.conn.as_mut().ok_or(ClamdError::Closed)
    }

    async fn request(&mut self, name: &str) -> Result<String, ClamdError> {
        let id = self.next_id;
        self.next_id += 1;
        let reply = self.conn()?.command(name).await?;
        match proto::split_session_id(&reply) {
            Some((got, rest)) if got == id => Ok(rest.to_owned()),
            Some((got, _)) => Err(ClamdError::SessionId { expected: id, got }),
            None => Err(Garbage(reply).into()),
        }
    }

    /// `PING` inside the session.
    pub async fn ping(&mut self) -> Result<(), ClamdError> {
        let r = self.request("PING").await?;
        Ok(proto::parse_pong(&r)?)
    }

    /// `VERSION` inside the session.
    pub async fn version(&mut self) -> Result<String, ClamdError> {
        let r = self.request("VERSION").await?;
        Ok(proto::parse_version(&r)?)
    }

    /// Scans `chunks` (fed in order) with INSTREAM inside the session. A size-limit error
    /// ends the session (clamd closes the connection).
    pub async fn scan<'a, I>(&mut self, chunks: I) -> Result<ScanReply, ClamdError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let id = self.next_id;
        self.next_id += 1;
        let conn = self.conn.take().ok_or(ClamdError::Closed)?;
        let mut s = Instream::start(conn, Some(id), self.max_stream).await?;
        for c in chunks {
            s.feed(c).await?;
        }
        let v = s.end().await?;
        if v != ScanReply::Error(ScanError::SizeLimitExceeded) {
            self.conn = Some(s.conn);
        }
        Ok(v)
    }

    /// Sends `END` and closes the session.
    pub async fn end(mut self) -> Result<(), ClamdError> {
        if let Some(mut c) = self.conn.take() {
            c.write(&proto::encode_command("END", c.style)).await?;
            let _ = timeout(c.timeouts.write, c.stream.shutdown()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn short() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(1),
            write: Duration::from_millis(300),
            read: Duration::from_millis(300),
        }
    }

    /// A peer that sends a byte every 50 ms and never the terminator: the read timeout
    /// bounds the whole reply, so this ends after it, not after 4 KiB × 50 ms.
    #[tokio::test]
    async fn a_trickling_reply_that_never_ends_times_out() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let peer = tokio::spawn(async move {
            while theirs.write_all(b"A").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut conn = ClamdConnection::new(ours, short(), 4096);
        let t = Instant::now();
        let r = timeout(Duration::from_secs(5), conn.read_reply()).await;
        peer.abort();
        assert!(
            matches!(r, Ok(Err(ClamdError::Timeout(Phase::Read, _)))),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    /// A clamd stand-in that accepts and then neither reads nor answers: every phase of a
    /// scan (command, chunks, reply) is bounded, so a handler never waits forever.
    #[tokio::test]
    async fn a_stand_in_that_accepts_and_never_answers_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stalled.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                keep.push(s);
            }
        });
        let c = Client::new(ClamdAddr::Unix(path)).timeouts(short());
        let t = Instant::now();
        let small = c.scan_bytes(b"hello").await;
        assert!(
            matches!(small, Err(ClamdError::Timeout(Phase::Read, _))),
            "{small:?}"
        );
        let big = vec![0u8; 16 << 20];
        let big = c.scan_bytes(&big).await;
        assert!(
            matches!(big, Err(ClamdError::Timeout(Phase::Write, _))),
            "{big:?}"
        );
        assert!(c.ping().await.is_err());
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        held.abort();
    }
}
