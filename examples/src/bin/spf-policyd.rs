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
//! `--nameserver IP:PORT` (repeatable; default: `/etc/resolv.conf`), `--socket unix:PATH|inet:HOST:PORT`,
//! `--log syslog|stderr|none`, `--user USER` (switch to it after binding; started as root
//! with `--socket`, `--user` or `--allow-root` is required), `--group GROUP` and
//! `--socket-mode MODE` for a unix socket (default `postfix` if that group exists, `660`, so
//! Postfix can connect).
//!
//! The protocol side (decoding, limits, timeouts, the three transports, graceful shutdown on
//! SIGTERM in socket mode) is `policy_proto::Server`, serving
//! [`mailstack::spf::policyd::SpfService`].

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use mailstack::dns::{HickoryResolver, Resolver};
use mailstack::spf::policyd::{DEFAULT_CONFIG_PATH, PolicydConfig, SpfPolicy, SpfService};
use mailstack_examples::logging::{self, LogTarget};
use mailstack_examples::shutdown_signal;
use policy_proto::{Listener, Peer, SocketSpec, UnixOptions};

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
    /// DNS server to ask instead of /etc/resolv.conf's, as IP:PORT; repeat it for several
    /// (all are used).
    #[arg(long)]
    nameserver: Vec<SocketAddr>,
    /// Listen on `unix:PATH` or `inet:HOST:PORT` instead of serving stdin/stdout.
    #[arg(long)]
    socket: Option<String>,
    /// Where logs go; default: syslog on stdin/stdout (spawn), stderr with --socket.
    #[arg(long)]
    log: Option<LogArg>,
    /// Switch to this user (its groups from /etc/group) once the socket is bound.
    /// python-policyd-spf has no such option: under spawn(8) master.cf's `user=` does it.
    #[arg(long)]
    user: Option<String>,
    /// With --socket and no --user: run as root anyway (refused otherwise).
    #[arg(long)]
    allow_root: bool,
    /// Group owner of a unix socket (default: `postfix` if that group exists), so that
    /// Postfix can connect.
    #[arg(long)]
    group: Option<String>,
    /// Permission bits of a unix socket, octal.
    #[arg(long, value_parser = octal, default_value = "660")]
    socket_mode: u32,
    /// With --socket: serve Prometheus metrics (/metrics) and health (/healthz/live,
    /// /healthz/ready) over HTTP on HOST:PORT or inet:HOST:PORT (off by default).
    #[arg(long, value_name = "SPEC", requires = "socket")]
    metrics: Option<mailstack::health::HttpSpec>,
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?}: not an octal mode: {e}"))
}

/// The unix socket's group: `--group`, else `postfix` when the group exists.
fn socket_group(args: &Args) -> Option<String> {
    args.group.clone().or_else(|| {
        mailstack::privs::lookup_group("postfix")
            .ok()
            .flatten()
            .map(|_| "postfix".to_owned())
    })
}

/// Before binding: a daemon on a socket started as root with no --user refuses to run
/// unless --allow-root. Under spawn(8) (stdin/stdout) Postfix has already switched to
/// master.cf's `user=`, which it never lets be root.
fn check_root(args: &Args) -> Result<(), String> {
    if args.socket.is_some() && args.user.is_none() {
        mailstack::privs::refuse_root_without_user(args.allow_root).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// After binding and loading everything: switch to --user, if given.
fn drop_privileges(args: &Args) -> Result<(), String> {
    if let Some(user) = &args.user {
        let d = mailstack::privs::drop_privileges(user, None).map_err(|e| e.to_string())?;
        tracing::info!(
            "running as {user} (uid {}, gid {}, groups {:?})",
            d.uid,
            d.gid,
            d.groups
        );
    }
    Ok(())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogArg {
    Syslog,
    Stderr,
    None,
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

fn init_logging(target: LogArg, debug_level: i32) {
    let target = match target {
        LogArg::Syslog => LogTarget::Syslog,
        LogArg::Stderr => LogTarget::Stderr,
        LogArg::None => LogTarget::None,
    };
    // Only a log file can fail to open, and none is used here.
    let _ = logging::init(&target, level(debug_level), "spf-policyd");
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
    // Every --nameserver, else /etc/resolv.conf's servers; 5 s per query either way.
    HickoryResolver::from_config(&args.nameserver, mailstack::dns::DEFAULT_QUERY_TIMEOUT)
        .map(|r| Arc::new(r) as Arc<dyn Resolver>)
        .inspect(|r| {
            mailstack::health::register(Arc::new(mailstack::health::DnsCheck::new(r.clone())));
        })
        .map_err(|e| format!("DNS resolver: {e}"))
}

/// `--socket` in Postfix notation; a bare `HOST:PORT` (which earlier versions took) is TCP.
fn socket_spec(spec: &str) -> Result<SocketSpec, String> {
    spec.parse::<SocketSpec>()
        .or_else(|e| match spec.parse::<SocketAddr>() {
            Ok(a) => Ok(SocketSpec::Inet {
                host: a.ip().to_string(),
                port: a.port(),
            }),
            Err(_) => Err(format!("{spec}: {e}")),
        })
}

async fn serve_socket(policy: Arc<SpfPolicy>, spec: &str, args: &Args) -> Result<(), String> {
    let parsed = socket_spec(spec)?;
    let opts = UnixOptions::new(Some(args.socket_mode), socket_group(args));
    let listener = Listener::bind_with(&parsed, &opts)
        .await
        .map_err(|e| format!("{spec}: {e}"))?;
    if let Some(m) = &args.metrics {
        mailstack::health::start(m)
            .await
            .map_err(|e| format!("--metrics {m}: {e}"))?;
    }
    drop_privileges(args)?;
    let shown = listener
        .local_spec()
        .map_or_else(|_| parsed.to_string(), |s| s.to_string());
    tracing::info!("listening on {shown}");
    SpfService::server(policy)
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| format!("accepting connections: {e}"))
}

async fn serve_stdio(policy: Arc<SpfPolicy>) -> Result<(), String> {
    match SpfService::server(policy).serve_stdio().await {
        Ok(end) => {
            tracing::debug!("connection ended: {end:?}");
            Ok(())
        }
        Err(e) => {
            policy_proto::log_error(&Peer::Stdio, &e);
            Err(e.to_string())
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let log = args.log.unwrap_or(if args.socket.is_some() {
        LogArg::Stderr
    } else {
        LogArg::Syslog
    });
    let config = match check_root(&args).and_then(|()| load_config(&args)) {
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
            if log != LogArg::Stderr && args.socket.is_some() {
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
            Some(spec) => serve_socket(policy, spec, &args).await,
            None => {
                drop_privileges(&args)?;
                serve_stdio(policy).await
            }
        }
    });
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    };
    // tokio's stdin fallback (neither a socket nor pipes) may leave a blocked reader thread
    // behind: end the process here rather than wait for it.
    std::process::exit(code)
}
