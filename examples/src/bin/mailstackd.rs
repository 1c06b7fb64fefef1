//! `mailstackd`: SPF, DKIM (sign and verify), DMARC and antivirus in one milter, one pass
//! over the message. Postfix lists only this milter (`smtpd_milters =
//! unix:/run/mailstack/mailstackd.sock`); the admin's existing `opendkim.conf`,
//! `opendmarc.conf`, `clamav-milter.conf` and `policyd-spf.conf` are named from one
//! `mailstackd.toml` (see `mailstack::stack`), or it runs on an embedded default.
//!
//! Run: `mailstackd --socket inet:127.0.0.1:8891` (embedded default: verify SPF, DKIM and
//! DMARC, never reject, no AV), or `mailstackd --config /etc/mailstack/mailstackd.toml`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mailstack::filter::Milter;
use mailstack::stack::StackConfig;
use mailstack_examples::daemon::{self, DaemonArgs};
use milter_proto::server::ServerConfig;

/// Every mail filter in one milter: SPF, DKIM, DMARC and AV, one pass, one
/// Authentication-Results field.
#[derive(Debug, Parser)]
#[command(version, after_help = CONFIG_HELP)]
struct Args {
    /// mailstackd.toml; without it, the embedded default (verify SPF, DKIM and DMARC, never
    /// reject, AV only with --clamd).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Also scan with the clamd at this socket (unix:/path or tcp:host:port) when the
    /// configuration has no `[av]` section.
    #[arg(long, value_name = "SOCKET")]
    clamd: Option<String>,
    /// The authserv-id to write and defend (overrides the file; default: the MTA's name).
    #[arg(long, value_name = "NAME")]
    authserv_id: Option<String>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

const CONFIG_HELP: &str = "\
mailstackd.toml (TOML; every section optional):
  [mailstackd]  socket, socket_group, socket_mode (\"0660\"), user, authserv_id,
                nameservers = [\"IP:PORT\", ...], dns_timeout (s), received_spf (bool)
  [spf]         config = \"policyd-spf.conf\" | options = { HELO_reject = \"False\", ... }
  [dkim]        config = \"opendkim.conf\"     | options = { Mode = \"sv\", KeyTable = ..., ... }
  [dmarc]       config = \"opendmarc.conf\"    | options = { RejectFailures = true, ... }
  [av]          config = \"clamav-milter.conf\" | options = { ClamdSocket = \"unix:/p\", ... }
  Each section also takes enabled = false. A missing section is the embedded default
  (SPF checked, never rejecting; DKIM verify; DMARC without RejectFailures; no AV).
  Options are the tool's own keys with its own meaning (see dkim-milter, dmarc-milter,
  av-milter and spf-policyd --help). Errors name the file and the line.
Signals: SIGTERM/SIGINT stop accepting, finish messages in flight, exit.";

/// How often the store writer's counters are logged (when they changed).
const STORE_STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How long buffered store records may take to be written at shutdown.
const STORE_FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> ExitCode {
    mailstack_examples::logging::stderr("info");
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(p) => StackConfig::read(p),
        None => StackConfig::embedded(),
    }
    .unwrap_or_else(|e| daemon::fail("mailstackd", e));
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if let Some(c) = &args.clamd {
        cfg.with_clamd(c)
            .unwrap_or_else(|e| daemon::fail("mailstackd", e));
    }
    if let Some(id) = &args.authserv_id {
        cfg.daemon.authserv_id = Some(id.clone());
    }
    let opts = args
        .daemon
        .resolve(&cfg.daemon)
        .unwrap_or_else(|e| daemon::fail("mailstackd", e));
    if args.daemon.check_config {
        // What is in force after the flags.
        cfg.daemon.socket = Some(opts.socket.to_string());
        cfg.daemon.user.clone_from(&opts.user);
        cfg.daemon.nameservers.clone_from(&opts.nameservers);
        print!("{}", cfg.describe());
        println!("OK");
        return ExitCode::SUCCESS;
    }
    opts.check_root()
        .unwrap_or_else(|e| daemon::fail("mailstackd", e));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| daemon::fail("mailstackd", e));
    let result = rt.block_on(async move {
        let resolver = daemon::resolver(&opts.nameservers, cfg.daemon.dns_timeout)?;
        let (stack, store) = cfg.build_with_store(resolver, None, &daemon::hostname())?;
        if let Some(w) = &store {
            w.log_stats_every(STORE_STATS_EVERY);
        }
        let stack = Arc::new(stack);
        let served =
            daemon::serve_milter(&opts, ServerConfig::default(), Milter::factory(stack)).await;
        if let Some(w) = &store {
            // What is still buffered gets a moment to reach the store, then the totals.
            w.flush(STORE_FLUSH_AT_EXIT).await;
            let st = w.stats();
            tracing::info!(
                "store at exit: {} submitted, {} stored ({} already there), {} dropped, {} pending, {} failed attempts",
                st.submitted, st.stored, st.duplicates, st.dropped, st.pending, st.failures
            );
        }
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => daemon::fail("mailstackd", e),
    }
}
