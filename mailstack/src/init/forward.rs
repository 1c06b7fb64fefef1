//! Forwarding the log to `MAIL_LOG_HOST` over TCP, as rsyslog's `*.* @@host:514` does:
//! one RFC 3164 line per message in `RSYSLOG_TraditionalForwardFormat`
//! (`<PRI>Mmm dd hh:mm:ss HOST TAG: MSG`), LF-framed (RFC 6587 §3.4.2, "non-transparent
//! framing", rsyslog's default for plain TCP).
//!
//! The connection is made again with exponential backoff when it fails or the receiver
//! closes it. Meanwhile lines wait in the [`Sink`](super::syslog::Sink)'s bounded queue;
//! what does not fit is dropped and counted, and once the connection is back the first line
//! sent says how many were lost (`mailstack-log: N log lines dropped (...)`). The total is
//! [`Sink::dropped`](super::syslog::Sink::dropped) / [`LogTask::dropped`] for metrics.
//!
//! Before each write the socket is checked for the receiver's FIN (a syslog receiver never
//! sends anything, so readable means closed), so a receiver restart costs no lines once
//! the old connection's close has reached us; the line being written when a write fails is
//! kept and sent first on the next connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mailstack::init::forward::{ForwardConfig, Forwarder};
//! use mailstack::init::syslog::{DEFAULT_QUEUE, Sink};
//! let host = std::env::var("MAIL_LOG_HOST")?;
//! let (sink, queue) = Sink::channel(DEFAULT_QUEUE);
//! let task = Forwarder::spawn(ForwardConfig::from_log_host(&host)?, queue);
//! // ... hand `sink` to the receiver and the children's stderr pipes ...
//! # drop(sink);
//! task.finish(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::syslog::{Item, LogTask, Queue, local_hostname};

/// rsyslog's port for `@@host` without a port (the syslog port, 514).
pub const DEFAULT_PORT: u16 = 514;

/// The first wait before connecting again.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);

/// The longest wait between attempts: rsyslog's `action.resumeInterval` is 30 s.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long one connection attempt may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one write may block before the connection is given up (a receiver that stops
/// reading would otherwise hold the queue forever).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes sent in one write (lines taken from the queue until this is reached).
const BATCH_BYTES: usize = 64 << 10;

/// Where to and how persistently.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardConfig {
    /// The receiver's host name or address.
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// First wait after a failure; doubled after each further failure.
    pub backoff_initial: Duration,
    /// Cap of the wait.
    pub backoff_max: Duration,
    /// Bound of one connection attempt.
    pub connect_timeout: Duration,
    /// Bound of one write.
    pub write_timeout: Duration,
    /// The HOSTNAME written for local lines; [`local_hostname`] by default.
    pub hostname: String,
}

/// Why a `MAIL_LOG_HOST` value is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardConfigError {
    /// Empty (or only blanks).
    #[error("MAIL_LOG_HOST is empty")]
    Empty,
    /// `host:PORT` with a port that is not 1..=65535.
    #[error("MAIL_LOG_HOST: {port:?} is not a TCP port (1..=65535)")]
    BadPort {
        /// The text after the colon.
        port: String,
    },
}

impl ForwardConfig {
    /// `host` on `port`, default timings.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            hostname: local_hostname(),
        }
    }

    /// From the value of `MAIL_LOG_HOST`: `host`, `host:port`, `[v6]` or `[v6]:port`
    /// (a bare IPv6 address is taken whole). Port [`DEFAULT_PORT`] when none is given.
    pub fn from_log_host(value: &str) -> Result<Self, ForwardConfigError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ForwardConfigError::Empty);
        }
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| ForwardConfigError::BadPort { port: p.into() })
        };
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            match rest.split_once(']') {
                Some((h, "")) => (h, DEFAULT_PORT),
                Some((h, p)) => match p.strip_prefix(':') {
                    Some(p) => (h, port(p)?),
                    None => return Err(ForwardConfigError::BadPort { port: p.into() }),
                },
                None => (value, DEFAULT_PORT),
            }
        } else {
            match value.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, port(p)?),
                _ => (value, DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(ForwardConfigError::Empty);
        }
        Ok(Self::new(host, port))
    }
}

/// The forwarding task.
#[derive(Debug)]
pub struct Forwarder;

impl Forwarder {
    /// Starts forwarding what `queue` receives. Must be called within a tokio runtime.
    pub fn spawn(config: ForwardConfig, queue: Queue) -> LogTask {
        let (done_tx, done_rx) = oneshot::channel();
        let task = queue.task(done_rx);
        tokio::spawn(async move {
            run(config, queue).await;
            let _ = done_tx.send(());
        });
        task
    }
}

/// Whether the receiver has closed (or reset) the connection, without blocking.
fn closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            // A receiver has nothing to say; ignore whatever it said.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

async fn connect(config: &ForwardConfig) -> io::Result<TcpStream> {
    let attempt = TcpStream::connect((config.host.as_str(), config.port));
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

async fn send(config: &ForwardConfig, stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    if closed(stream) {
        return Err(io::ErrorKind::ConnectionReset.into());
    }
    match tokio::time::timeout(config.write_timeout, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

async fn run(config: ForwardConfig, mut queue: Queue) {
    let mut backoff = config.backoff_initial;
    // Bytes taken from the queue but not yet written (a failed batch is sent again first).
    let mut pending: Vec<u8> = Vec::new();
    let mut failures = 0u64;
    loop {
        let mut stream = match connect(&config).await {
            Ok(s) => s,
            Err(e) => {
                if queue.stopping() {
                    eprintln!(
                        "mailstack-init: log host {}:{}: {e}; stopping with lines unsent",
                        config.host, config.port
                    );
                    return;
                }
                failures += 1;
                if failures == 1 {
                    eprintln!(
                        "mailstack-init: log host {}:{}: {e}; retrying",
                        config.host, config.port
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.backoff_max);
                continue;
            }
        };
        if failures > 0 {
            eprintln!(
                "mailstack-init: log host {}:{} reachable again",
                config.host, config.port
            );
        }
        failures = 0;
        backoff = config.backoff_initial;
        match session(&config, &mut queue, &mut stream, &mut pending).await {
            Ok(()) => {
                let _ = stream.shutdown().await;
                return;
            }
            Err(_) => {
                // The receiver went away: connect again at once (it may have restarted),
                // then back off.
            }
        }
    }
}

/// Sends until the queue says stop (`Ok`) or the connection fails (`Err`, with what was not
/// written left in `pending`).
async fn session(
    config: &ForwardConfig,
    queue: &mut Queue,
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        let dropped = queue.take_unreported();
        if dropped > 0 {
            let report = Queue::drop_report(dropped, "log host unreachable or queue full");
            pending.extend_from_slice(report.forward_line(&config.hostname).as_bytes());
        }
        if !pending.is_empty() {
            send(config, stream, pending).await?;
            pending.clear();
        }
        let item = tokio::select! {
            item = queue.rx.recv() => item,
            r = stream.readable() => {
                r?;
                if closed(stream) {
                    return Err(io::ErrorKind::ConnectionReset.into());
                }
                continue;
            }
        };
        let mut stop = false;
        let mut next = item;
        while let Some(item) = next.take() {
            match item {
                Item::Line(msg) => {
                    pending.extend_from_slice(msg.forward_line(&config.hostname).as_bytes())
                }
                Item::Stop => {
                    stop = true;
                    break;
                }
            }
            if pending.len() < BATCH_BYTES {
                next = queue.rx.try_recv().ok();
            }
        }
        if stop || queue.rx.is_closed() && queue.rx.is_empty() {
            if !pending.is_empty() {
                send(config, stream, pending).await?;
                pending.clear();
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::syslog::{Facility, Severity, Sink};
    use tokio::io::AsyncBufReadExt as _;
    use tokio::net::TcpListener;

    #[test]
    fn log_host_values() {
        let c = ForwardConfig::from_log_host("logs.example").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("logs.example", 514));
        let c = ForwardConfig::from_log_host(" 192.0.2.9:1514 ").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("192.0.2.9", 1514));
        let c = ForwardConfig::from_log_host("[2001:db8::1]:601").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("2001:db8::1", 601));
        let c = ForwardConfig::from_log_host("2001:db8::1").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("2001:db8::1", 514));
        assert_eq!(
            ForwardConfig::from_log_host(""),
            Err(ForwardConfigError::Empty)
        );
        assert_eq!(
            ForwardConfig::from_log_host("h:0"),
            Err(ForwardConfigError::BadPort { port: "0".into() })
        );
        assert!(ForwardConfig::from_log_host("h:x").is_err());
        assert!(ForwardConfig::from_log_host(":514").is_err());
    }

    async fn read_lines(listener: &TcpListener, n: usize) -> (Vec<String>, TcpStream) {
        let (stream, _) = listener.accept().await.unwrap();
        let mut reader = tokio::io::BufReader::new(stream);
        let mut lines = Vec::new();
        while lines.len() < n {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).await.unwrap() > 0, "{lines:?}");
            lines.push(line);
        }
        (lines, reader.into_inner())
    }

    #[tokio::test]
    async fn forwards_reconnects_and_reports_drops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut config = ForwardConfig::new("127.0.0.1", port);
        config.hostname = "mx".into();
        config.backoff_initial = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(100);
        let (sink, queue) = Sink::channel(3);
        let task = Forwarder::spawn(config, queue);
        sink.log(Facility::Mail, Severity::Informational, "t", "first");
        let (lines, conn) = read_lines(&listener, 1).await;
        assert!(lines[0].starts_with("<22>"), "{lines:?}");
        assert!(lines[0].ends_with(" mx t: first\n"), "{lines:?}");
        // The receiver goes away; lines pile up, the queue overflows.
        drop(conn);
        drop(listener);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut accepted = 0;
        for i in 0..10 {
            if sink.log(
                Facility::Mail,
                Severity::Informational,
                "t",
                &format!("q{i}"),
            ) {
                accepted += 1;
            }
        }
        let dropped = sink.dropped();
        assert!(dropped >= 6, "dropped {dropped}");
        // The receiver is back on the same port: first the report, then the queued lines.
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (lines, conn) = read_lines(&listener, accepted + 1).await;
        let report = &lines[0];
        assert!(
            report.ends_with(&format!(
                " mx mailstack-log: {dropped} log lines dropped (log host unreachable or queue full)\n"
            )),
            "{lines:?}"
        );
        assert!(report.starts_with("<44>"), "syslog.warning: {report}");
        assert!(lines[1].ends_with(" t: q0\n"), "{lines:?}");
        assert!(
            lines[accepted].ends_with(&format!(" t: q{}\n", accepted - 1)),
            "{lines:?}"
        );
        sink.log(Facility::Mail, Severity::Informational, "t", "last");
        let mut reader = tokio::io::BufReader::new(conn);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert!(line.ends_with(" t: last\n"), "{line}");
        assert_eq!(task.dropped(), dropped);
        assert!(task.finish(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn finish_returns_while_the_log_host_is_down() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut config = ForwardConfig::new("127.0.0.1", port);
        config.backoff_initial = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(50);
        let (sink, queue) = Sink::channel(2);
        let task = Forwarder::spawn(config, queue);
        for _ in 0..5 {
            sink.log(Facility::Mail, Severity::Informational, "t", "x");
        }
        assert_eq!(sink.dropped(), 3);
        assert!(task.finish(Duration::from_secs(5)).await);
    }
}
