//! Where a daemon's logs go: stderr ([`stderr`], the milters and tools), or for the policy
//! daemons ([`init`]) stderr, syslog, a file, or nowhere.
//!
//! Under Postfix spawn(8) stdin, stdout **and stderr** are the connection to smtpd
//! (`docs/spec/policy-delegation.md` §1.5), so anything written to stderr there would be read
//! as a (broken) policy reply. The policy daemons therefore log to syslog or a file in that
//! mode, and [`init`] also routes panic messages to the log instead of stderr.
//!
//! Syslog lines are handed to one dedicated thread through a bounded queue
//! ([`SYSLOG_QUEUE`]): a send on `/dev/log` blocks while syslogd is behind, and the writer
//! runs inside the async workers, so a full queue drops lines (counted, and the count is
//! logged once syslogd catches up) instead of stalling every connection.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogTarget {
    /// Standard error (socket mode only: under spawn(8) it is the Postfix connection).
    Stderr,
    /// The local syslog socket `/dev/log`, facility mail, one datagram per line.
    Syslog,
    /// Appended to this file.
    File(PathBuf),
    /// Nowhere.
    None,
}

/// The syslog socket.
const SYSLOG_SOCKET: &str = "/dev/log";

/// Log lines waiting for the syslog thread; more are dropped (and counted) rather than
/// block the task that logs. A datagram send to `/dev/log` blocks while syslogd's queue is
/// full, and the tracing writer runs inside the async workers that serve Postfix.
pub const SYSLOG_QUEUE: usize = 1024;

/// The non-blocking side of the syslog socket: lines go through a bounded channel to one
/// dedicated thread that does the (blocking) sends.
#[derive(Clone)]
struct SyslogSink {
    queue: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl SyslogSink {
    /// Starts the writer thread over `socket` (connected); `ident` names the program in the
    /// line reporting drops.
    fn new(socket: UnixDatagram, capacity: usize, ident: &'static str) -> std::io::Result<Self> {
        let (queue, lines) = sync_channel::<Vec<u8>>(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("syslog-writer".into())
            .spawn(move || {
                for line in lines {
                    let _ = socket.send(&line);
                    let lost = counter.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        // <20> = facility mail (2) * 8 + severity warning (4).
                        let note = format!(
                            "<20>{ident}[{}]: {lost} log lines dropped (syslog too slow)",
                            std::process::id()
                        );
                        let _ = socket.send(note.as_bytes());
                    }
                }
            })?;
        Ok(Self { queue, dropped })
    }

    /// Queues one datagram; never blocks. A full queue drops the line and counts it.
    fn send(&self, line: Vec<u8>) {
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One syslog datagram per log line (RFC 3164 framing, facility mail).
struct SyslogLine {
    sink: Option<SyslogSink>,
    ident: &'static str,
    buf: Vec<u8>,
}

impl std::io::Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        if let Some(sink) = &self.sink {
            let text = String::from_utf8_lossy(&self.buf);
            // <22> = facility mail (2) * 8 + severity info (6).
            let msg = format!(
                "<22>{}[{}]: {}",
                self.ident,
                std::process::id(),
                text.trim_end()
            );
            sink.send(msg.into_bytes());
        }
    }
}

/// Logs to stderr at `default_level` unless `RUST_LOG` says otherwise: what the milters and
/// tools do (they are never started by spawn(8)).
pub fn stderr(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Installs the global `tracing` subscriber for `target`, at `default_level` unless
/// `RUST_LOG` says otherwise; `ident` names the program in syslog lines. Unless the target is
/// stderr, a panic message goes to the log, never to stderr. A log file that cannot be opened
/// is an error (the caller decides how to report it: under spawn(8) there is nowhere to).
pub fn init(target: &LogTarget, default_level: &str, ident: &'static str) -> std::io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    match target {
        LogTarget::None => {}
        LogTarget::Stderr => stderr(default_level),
        LogTarget::Syslog => {
            let sink = UnixDatagram::unbound()
                .ok()
                .filter(|s| s.connect(SYSLOG_SOCKET).is_ok())
                .and_then(|s| SyslogSink::new(s, SYSLOG_QUEUE, ident).ok());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_writer(move || SyslogLine {
                    sink: sink.clone(),
                    ident,
                    buf: Vec::new(),
                })
                .init();
        }
        LogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_target(false)
                .with_writer(Mutex::new(file))
                .init();
        }
    }
    if *target != LogTarget::Stderr {
        std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    }
    Ok(())
}

/// A log file that SIGUSR1 reopens at the same path (after logrotate moved the old one).
#[derive(Debug)]
struct ReopenableFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl ReopenableFile {
    fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn new(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(Self::open(path)?),
        })
    }

    /// Opens the path anew and writes there from now on; on error the old file stays.
    fn reopen(&self) -> std::io::Result<()> {
        let fresh = Self::open(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// One log event's writes into the [`ReopenableFile`] (each `write` under its lock; the
/// formatter writes a whole line at once, and O_APPEND keeps lines whole).
struct ReopenableWriter(Arc<ReopenableFile>);

impl std::io::Write for ReopenableWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut f = self.0.file.lock().unwrap_or_else(|e| e.into_inner());
        std::io::Write::write(&mut *f, data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log file [`reopen`] reopens, once [`reopenable_file`] installed it.
static LOG_FILE: std::sync::OnceLock<Arc<ReopenableFile>> = std::sync::OnceLock::new();

/// Logs to `path` (appended, created if missing) at `default_level` unless `RUST_LOG` says
/// otherwise; [`reopen`] (the daemons call it on SIGUSR1) reopens it. Panic messages go to
/// the log too.
pub fn reopenable_file(path: &std::path::Path, default_level: &str) -> std::io::Result<()> {
    let file = Arc::new(ReopenableFile::new(path)?);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let writer = file.clone();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || ReopenableWriter(writer.clone()))
        .init();
    let _ = LOG_FILE.set(file);
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    Ok(())
}

/// Reopens the log file of [`reopenable_file`]; `Ok(false)` when the log is not a file.
pub fn reopen() -> std::io::Result<bool> {
    match LOG_FILE.get() {
        Some(f) => f.reopen().map(|()| true),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// logrotate's move-then-signal: lines before the reopen stay in the moved file, lines
    /// after it go to a new file at the path.
    #[test]
    fn reopen_after_a_move_writes_to_a_new_file_at_the_path() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let f = Arc::new(ReopenableFile::new(&path).unwrap());
        ReopenableWriter(f.clone()).write_all(b"before\n").unwrap();
        std::fs::rename(&path, dir.path().join("d.log.1")).unwrap();
        ReopenableWriter(f.clone())
            .write_all(b"still old\n")
            .unwrap();
        f.reopen().unwrap();
        ReopenableWriter(f.clone()).write_all(b"after\n").unwrap();
        let old = std::fs::read_to_string(dir.path().join("d.log.1")).unwrap();
        assert_eq!(old, "before\nstill old\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        // A path that cannot be opened keeps the old file.
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(f.reopen().is_err());
        ReopenableWriter(f).write_all(b"kept\n").unwrap();
    }

    /// A syslog socket nobody reads (syslogd stuck): logging never blocks, lines beyond the
    /// queue are counted, and once syslogd reads again the count is reported.
    #[test]
    fn a_stuck_syslog_never_blocks_the_logger() {
        let (ours, syslogd) = UnixDatagram::pair().unwrap();
        let sink = SyslogSink::new(ours, 8, "test").unwrap();
        let started = Instant::now();
        for n in 0..20_000 {
            let mut line = SyslogLine {
                sink: Some(sink.clone()),
                ident: "test",
                buf: Vec::new(),
            };
            std::io::Write::write_all(
                &mut line,
                format!("line {n} {}", "x".repeat(200)).as_bytes(),
            )
            .unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "logging blocked: {:?}",
            started.elapsed()
        );
        assert!(sink.dropped.load(Ordering::Relaxed) > 0);
        syslogd
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let mut saw_note = false;
        for _ in 0..20_000 {
            let Ok(n) = syslogd.recv(&mut buf) else { break };
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(
                text.starts_with("<22>test[") || text.starts_with("<20>test["),
                "{text}"
            );
            if text.contains("log lines dropped") {
                saw_note = true;
                break;
            }
        }
        assert!(saw_note, "the drop count is reported");
    }
}
