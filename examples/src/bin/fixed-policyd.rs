//! `fixed-policyd`: the smallest Postfix policy server. It answers every request with the
//! same action (`--action`, default `DUNNO`) and logs each request it saw (state, client,
//! sender, recipient). It shows `policy_proto`'s [`Server`] on all three transports and is the
//! policy server of the Postfix interop tests (`tests/policy_postfix.rs`).
//!
//! Standalone on a socket (logs to stderr):
//!
//! ```text
//! cargo run -p mailstack-examples --bin fixed-policyd -- --socket inet:127.0.0.1:10040 --action "DEFER_IF_PERMIT try later"
//! ```
//!
//! with `check_policy_service inet:127.0.0.1:10040` in `main.cf`. Under spawn(8), in
//! `master.cf` (no `--socket`: it serves stdin/stdout, and logs to syslog or `--log-file`,
//! because stderr is the Postfix connection too):
//!
//! ```text
//! fixed-policy  unix  -  n  n  -  0  spawn  user=nobody argv=/usr/local/bin/fixed-policyd --action DUNNO
//! ```
//!
//! with `check_policy_service unix:private/fixed-policy` and `fixed-policy_time_limit = 3600`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mailstack_examples::logging::{self, LogTarget};
use mailstack_examples::shutdown_signal;
use policy_proto::{
    Action, ConnInfo, Handler, Limits, Listener, PolicyRequest, Server, SocketSpec, UnixOptions,
};

/// A Postfix policy server that answers every request with the same action.
#[derive(Debug, Parser)]
#[command(version, after_help = AFTER_HELP)]
struct Args {
    /// The action to answer with, as it goes after `action=`: OK, DUNNO, REJECT, DEFER,
    /// DEFER_IF_REJECT, DEFER_IF_PERMIT, WARN, INFO, HOLD, DISCARD (each with optional text),
    /// 4NN or 5NN with text (an enhanced code x.y.z may come first), PREPEND Name: value,
    /// FILTER transport:destination, REDIRECT user@domain, BCC user@domain. Refused when
    /// Postfix would misread it (a bare `550` is read as OK, an unknown word as a restriction
    /// name).
    #[arg(long, default_value = "DUNNO", value_parser = parse_action)]
    action: Action,
    /// Listen on this socket: unix:/path, local:/path, inet:host:port, inet:port@host, or a
    /// bare path. Without it, serve the one connection on stdin/stdout that Postfix spawn(8)
    /// hands over.
    #[arg(long)]
    socket: Option<SocketSpec>,
    /// Mode of a unix socket file, octal. The default lets Postfix's smtpd (user postfix)
    /// connect; narrow it (660 with --socket-group) where that matters.
    #[arg(long, value_parser = octal, default_value = "666")]
    socket_mode: u32,
    /// Group owner of a unix socket file (name or number).
    #[arg(long)]
    socket_group: Option<String>,
    /// Append logs to this file. The default is stderr with --socket, syslog (facility mail)
    /// on stdin/stdout, where stderr is the Postfix connection.
    #[arg(long, conflicts_with = "syslog")]
    log_file: Option<PathBuf>,
    /// Log to syslog (facility mail) even with --socket.
    #[arg(long)]
    syslog: bool,
    /// Close a connection after this many requests (Postfix reconnects).
    #[arg(long, default_value_t = policy_proto::MAX_REQUESTS_PER_CONNECTION)]
    max_requests: u64,
    /// Close a connection idle for this many seconds (Postfix closes its own after
    /// smtpd_policy_service_max_idle, 300 s).
    #[arg(long, default_value_t = policy_proto::IDLE_TIMEOUT.as_secs())]
    idle_timeout: u64,
    /// Switch to this user (with its groups from /etc/group) once the socket is bound and
    /// the log file open.
    #[arg(long)]
    user: Option<String>,
    /// With --socket and no --user: run as root anyway (refused otherwise).
    #[arg(long)]
    allow_root: bool,
}

/// Switches to --user, if given (after binding and opening the log).
fn drop_privileges(user: Option<&str>) -> Result<(), mailstack::privs::PrivError> {
    if let Some(user) = user {
        let d = mailstack::privs::drop_privileges(user, None)?;
        tracing::info!("running as {user} (uid {}, gid {})", d.uid, d.gid);
    }
    Ok(())
}

const AFTER_HELP: &str = "\
Each request is logged at level info as one line: protocol state, client address and name,
sender (<> for the null sender) and recipient, then the action sent. RUST_LOG=debug adds
connection events.

Examples:
  fixed-policyd --socket inet:127.0.0.1:10040 --action 'REJECT 5.7.1 go away'
  fixed-policyd --socket unix:/var/spool/postfix/private/fixed --socket-group postfix --socket-mode 660 --user nobody
Started as root with --socket, it needs --user USER (switched to after binding) or --allow-root.
  master.cf: fixed  unix  -  n  n  -  0  spawn  user=nobody argv=/usr/local/bin/fixed-policyd --log-file /var/log/fixed-policyd.log
In master.cf an action with spaces goes in braces (Postfix 3.0+ passes it as one argument):
  argv=/usr/local/bin/fixed-policyd --action { PREPEND X-Policy: checked }";

fn parse_action(s: &str) -> Result<Action, String> {
    Action::parse(s).map_err(|e| {
        let why = match e {
            policy_proto::ActionError::BadCode => {
                " (Postfix reads a bare number as OK: give 4NN or 5NN with text, e.g. \"550 5.7.1 no\")"
            }
            policy_proto::ActionError::UnknownAction => {
                " (Postfix would evaluate it as a restriction name and answer 451 4.3.5 if it is not one)"
            }
            _ => "",
        };
        format!("{s:?} is not an action Postfix reads as meant: {e}{why}")
    })
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?}: not an octal mode: {e}"))
}

/// Answers every request with `action` and logs the request.
struct Fixed {
    action: Action,
}

impl Handler for Fixed {
    async fn handle(&self, req: PolicyRequest, conn: &ConnInfo) -> Option<Action> {
        let state = req.get("protocol_state").unwrap_or("-");
        let client = match (req.get("client_address"), req.client_name()) {
            (Some(a), Some(n)) => format!("{n}[{a}]"),
            (Some(a), None) => format!("[{a}]"),
            _ => "-".into(),
        };
        let sender = req.sender().unwrap_or("");
        let rcpt = req.recipient().unwrap_or("");
        tracing::info!(
            "conn {} state={state} client={client} sender=<{sender}> recipient=<{rcpt}> action={}",
            conn.id(),
            self.action
        );
        Some(self.action.clone())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let target = match (&args.log_file, args.syslog, &args.socket) {
        (Some(path), _, _) => LogTarget::File(path.clone()),
        (None, true, _) | (None, false, None) => LogTarget::Syslog,
        (None, false, Some(_)) => LogTarget::Stderr,
    };
    if let Err(e) = logging::init(&target, "info", "fixed-policyd") {
        // Under spawn(8) there is nowhere to say it: stderr is the Postfix connection, and a
        // line there would be read as a broken reply. Exiting makes Postfix log the failure.
        if args.socket.is_some() {
            eprintln!("fixed-policyd: log file: {e}");
        }
        return ExitCode::from(1);
    }
    // Under spawn(8) Postfix has already switched to master.cf's `user=` (never root).
    if args.socket.is_some()
        && args.user.is_none()
        && let Err(e) = mailstack::privs::refuse_root_without_user(args.allow_root)
    {
        tracing::error!("{e}");
        return ExitCode::from(1);
    }
    let mut limits = Limits::default();
    limits.max_requests = args.max_requests.max(1);
    limits.idle_timeout = Duration::from_secs(args.idle_timeout.max(1));
    let server = Server::new(Fixed {
        action: args.action.clone(),
    })
    .with_limits(limits);
    // One connection per process under spawn(8): a single thread answers fastest there.
    let mut builder = match args.socket {
        Some(_) => tokio::runtime::Builder::new_multi_thread(),
        None => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        match &args.socket {
            Some(spec) => {
                let opts = UnixOptions::new(Some(args.socket_mode), args.socket_group.clone());
                let listener = match Listener::bind_with(spec, &opts).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("{spec}: {e}");
                        return ExitCode::from(1);
                    }
                };
                if let Err(e) = drop_privileges(args.user.as_deref()) {
                    tracing::error!("{e}");
                    return ExitCode::from(1);
                }
                let shown = listener
                    .local_spec()
                    .map_or(spec.to_string(), |s| s.to_string());
                tracing::info!("listening on {shown}, answering {}", args.action);
                if let Err(e) = server.serve(listener, shutdown_signal()).await {
                    tracing::error!("accepting connections: {e}");
                    return ExitCode::from(1);
                }
                ExitCode::SUCCESS
            }
            None if drop_privileges(args.user.as_deref())
                .inspect_err(|e| tracing::error!("{e}"))
                .is_err() =>
            {
                ExitCode::from(1)
            }
            None => match server.serve_stdio().await {
                Ok(end) => {
                    tracing::debug!("spawn connection ended: {end:?}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    policy_proto::log_error(&policy_proto::Peer::Stdio, &e);
                    ExitCode::from(1)
                }
            },
        }
    });
    // tokio's stdin fallback may leave a blocked reader thread behind (see serve_stdio).
    std::process::exit(match code == ExitCode::SUCCESS {
        true => 0,
        false => 1,
    })
}
