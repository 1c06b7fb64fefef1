//! Where a daemon's logs go: stderr ([`stderr`], the milters and tools), or for the policy
//! daemons ([`init`]) stderr, syslog, a file, or nowhere.
//!
//! Under Postfix spawn(8) stdin, stdout **and stderr** are the connection to smtpd
//! (`docs/spec/policy-delegation.md` §1.5), so anything written to stderr there would be read
//! as a (broken) policy reply. The policy daemons therefore log to syslog or a file in that
//! mode, and [`init`] also routes panic messages to the log instead of stderr.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
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

/// One syslog datagram per log line (RFC 3164 framing, facility mail).
struct SyslogLine {
    socket: Option<Arc<UnixDatagram>>,
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
        if let Some(sock) = &self.socket {
            let text = String::from_utf8_lossy(&self.buf);
            // <22> = facility mail (2) * 8 + severity info (6).
            let msg = format!(
                "<22>{}[{}]: {}",
                self.ident,
                std::process::id(),
                text.trim_end()
            );
            let _ = sock.send(msg.as_bytes());
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
            let socket = UnixDatagram::unbound()
                .ok()
                .filter(|s| s.connect(SYSLOG_SOCKET).is_ok())
                .map(Arc::new);
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_writer(move || SyslogLine {
                    socket: socket.clone(),
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
