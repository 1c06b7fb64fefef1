//! `spf-policyd`: a drop-in replacement for python-policyd-spf (`/usr/bin/policyd-spf`).
//!
//! Demonstrates [`mailstack::spf::policyd`]: the same `policyd-spf.conf`, the same decisions
//! and reply texts, served under Postfix spawn(8) on stdin/stdout or standalone on a socket.
//!
//! Under spawn(8), in `master.cf` (as for python-policyd-spf):
//!
//! ```text
//! policy-spf  unix  -  n  n  -  0  spawn  user=policyd-spf argv=/usr/bin/spf-policyd
//! ```
//!
//! and in `main.cf`: `policy-spf_time_limit = 3600` plus
//! `smtpd_recipient_restrictions = ... reject_unauth_destination, check_policy_service
//! unix:private/policy-spf`. Logs then go to syslog (facility mail), never to stderr, which
//! spawn(8) connects to the Postfix socket.
//!
//! Standalone: `cargo run -p mailstack-examples --bin spf-policyd -- --socket
//! inet:127.0.0.1:10023 --config /etc/postfix-policyd-spf-python/policyd-spf.conf` and
//! `check_policy_service inet:127.0.0.1:10023` in `main.cf`.
//!
//! Options: `--config FILE` (or python's positional `policyd-spf [configfile]`),
//! `--nameserver IP:PORT` (default: `/etc/resolv.conf`), `--socket unix:PATH|inet:HOST:PORT`,
//! `--log syslog|stderr|none`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mailstack::dns::{HickoryResolver, Resolver};
use mailstack::spf::policyd::{
    DEFAULT_CONFIG_PATH, PolicydConfig, SpfPolicy, serve_stdio, serve_stream,
};

#[derive(Parser, Debug)]
#[command(
    name = "spf-policyd",
    about = "SPF policy server for Postfix (python-policyd-spf compatible)"
)]
struct Args {
    /// Configuration file (python-policyd-spf's policyd-spf.conf format).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Configuration file, positional as in `policyd-spf [configfile]`.
    #[arg(conflicts_with = "config")]
    config_file: Option<PathBuf>,
    /// DNS server to ask instead of /etc/resolv.conf's, as IP:PORT.
    #[arg(long)]
    nameserver: Option<SocketAddr>,
    /// Listen on `unix:PATH` or `inet:HOST:PORT` instead of serving stdin/stdout.
    #[arg(long)]
    socket: Option<String>,
    /// Where logs go; default: syslog on stdin/stdout (spawn), stderr with --socket.
    #[arg(long)]
    log: Option<LogTarget>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogTarget {
    Syslog,
    Stderr,
    None,
}

/// One syslog datagram per log line (RFC 3164 framing, facility mail).
struct SyslogLine {
    socket: Option<Arc<UnixDatagram>>,
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
                "<22>spf-policyd[{}]: {}",
                std::process::id(),
                text.trim_end()
            );
            let _ = sock.send(msg.as_bytes());
        }
    }
}

/// `debugLevel` to a log level (`RUST_LOG` overrides): -1 nothing, 0 errors, 1 decisions
/// (python-policyd-spf logs each reject and prepend at 1), 2 and more everything.
fn level(debug_level: i32) -> &'static str {
    match debug_level {
        i32::MIN..=-1 => "off",
        0 => "error",
        1 => "info",
        _ => "debug",
    }
}

fn init_logging(target: LogTarget, debug_level: i32) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level(debug_level)));
    match target {
        LogTarget::None => {}
        LogTarget::Stderr => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
        }
        LogTarget::Syslog => {
            let socket = UnixDatagram::unbound()
                .ok()
                .filter(|s| s.connect("/dev/log").is_ok())
                .map(Arc::new);
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_writer(move || SyslogLine {
                    socket: socket.clone(),
                    buf: Vec::new(),
                })
                .init();
        }
    }
}

fn load_config(args: &Args) -> Result<(PolicydConfig, Vec<String>), String> {
    let path = args.config.clone().or_else(|| args.config_file.clone());
    let path = match path {
        Some(p) => p,
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            PathBuf::from(DEFAULT_CONFIG_PATH)
        }
        None => return Ok((PolicydConfig::default(), Vec::new())),
    };
    PolicydConfig::read(&path).map_err(|e| e.to_string())
}

fn resolver(args: &Args) -> Result<Arc<dyn Resolver>, String> {
    let r = match args.nameserver {
        Some(ns) => HickoryResolver::with_nameserver(ns, Duration::from_secs(5)),
        None => HickoryResolver::system(),
    };
    r.map(|r| Arc::new(r) as Arc<dyn Resolver>)
        .map_err(|e| format!("DNS resolver: {e}"))
}

/// Most connections served at once in socket mode. Each Postfix smtpd process holds one
/// policy connection (`default_process_limit` is 100), so this leaves room for several
/// Postfix instances; beyond it, new connections wait in the listen queue.
const MAX_CONNECTIONS: usize = 512;

async fn serve_socket(policy: Arc<SpfPolicy>, spec: &str) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let unix = spec
        .strip_prefix("unix:")
        .or_else(|| spec.starts_with('/').then_some(spec));
    let (unix, tcp) = match unix {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            tracing::info!("listening on unix:{path}");
            (Some(tokio::net::UnixListener::bind(path)?), None)
        }
        None => {
            let listener =
                tokio::net::TcpListener::bind(spec.strip_prefix("inet:").unwrap_or(spec)).await?;
            tracing::info!("listening on inet:{}", listener.local_addr()?);
            (None, Some(listener))
        }
    };
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let policy = policy.clone();
        let served = match (&unix, &tcp) {
            (Some(l), _) => {
                let (r, w) = l.accept().await?.0.into_split();
                tokio::spawn(async move { (serve_stream(policy, r, w).await, permit) })
            }
            (_, Some(l)) => {
                let (stream, _) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                tokio::spawn(async move { (serve_stream(policy, r, w).await, permit) })
            }
            (None, None) => return Ok(()),
        };
        tokio::spawn(async move {
            if let Ok((Err(e), _)) = served.await {
                tracing::warn!("policy connection closed: {e}");
            }
        });
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let log = args.log.unwrap_or(if args.socket.is_some() {
        LogTarget::Stderr
    } else {
        LogTarget::Syslog
    });
    if log != LogTarget::Stderr {
        // Under spawn(8) stderr is the Postfix socket: a panic message there would be read as
        // a (broken) policy reply. Send it to the log instead.
        std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    }
    let config = match load_config(&args) {
        Ok((c, warnings)) => {
            init_logging(log, c.debug_level);
            for w in warnings {
                tracing::warn!("{w}");
            }
            c
        }
        Err(e) => {
            init_logging(log, 0);
            tracing::error!("{e}");
            if log != LogTarget::Stderr && args.socket.is_some() {
                let _ = writeln!(std::io::stderr(), "spf-policyd: {e}");
            }
            return std::process::ExitCode::from(1);
        }
    };
    // One connection per process under spawn(8): a single-threaded runtime answers fastest.
    let mut builder = if args.socket.is_some() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("tokio runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let resolver = resolver(&args)?;
        let policy = Arc::new(SpfPolicy::new(config, resolver));
        match &args.socket {
            Some(spec) => serve_socket(policy, spec)
                .await
                .map_err(|e| format!("{spec}: {e}")),
            None => serve_stdio(policy).await.map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::from(1)
        }
    }
}
