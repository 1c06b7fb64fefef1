//! `mailstackd`: SPF, DKIM (sign and verify), DMARC and antivirus in one milter, one pass
//! over the message. Postfix lists only this milter (`smtpd_milters =
//! unix:/run/mailstack/mailstackd.sock`); the admin's existing `opendkim.conf`,
//! `opendmarc.conf`, `clamav-milter.conf` and `policyd-spf.conf` are named from one
//! `mailstackd.toml` (see `mailstack::stack`), or it runs on an embedded default.
//!
//! Run: `mailstackd --socket inet:127.0.0.1:8891` (embedded default: verify SPF, DKIM and
//! DMARC, never reject, no AV), or `mailstackd --config /etc/mailstack/mailstackd.toml`.
//! Live reload: `mailstackd reload --pid-file FILE [--config FILE]` (or SIGHUP) re-reads the
//! configuration and keys; SIGUSR1 reopens `--log-file`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mailstack::config::ConfigError;
use mailstack::dns::Resolver;
use mailstack::filter::LiveFilter;
use mailstack::stack::{BuildError, DaemonSettings, Mailstack, StackConfig};
use mailstack::store::BufferedWriter;
use mailstack_examples::daemon::{self, ControlArgs, DaemonArgs};
use milter_proto::server::ServerConfig;

/// Every mail filter in one milter: SPF, DKIM, DMARC and AV, one pass, one
/// Authentication-Results field.
#[derive(Debug, Parser)]
#[command(version, after_help = CONFIG_HELP, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(flatten)]
    load: Load,
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(flatten)]
    control: ControlArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// What the filters are built from (read again on reload).
#[derive(Debug, Clone, clap::Args)]
struct Load {
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
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ask the running mailstackd to reload: with --config, first check that the file and
    /// its keys load (exit 2 with file and line if not, without signalling); then send SIGHUP
    /// to the process in --pid-file. Exit 0: the daemon was signalled (its log says whether
    /// the reload took; a refused one keeps the old configuration).
    Reload(Reload),
}

#[derive(Debug, clap::Args)]
struct Reload {
    /// The pid file the daemon was started with (`--pid-file`).
    #[arg(long, value_name = "FILE")]
    pid_file: PathBuf,
    #[command(flatten)]
    load: Load,
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
Signals: SIGTERM/SIGINT stop accepting, finish messages in flight, exit.
  SIGHUP (or `mailstackd reload --pid-file FILE`) re-reads mailstackd.toml, the files it
  names and the DKIM keys: connections already open finish on the old configuration, new
  ones get the new one; a configuration that does not load is refused (logged with file
  and line) and the old one stays in force. socket, socket_group, socket_mode, user,
  nameservers and dns_timeout take effect only at a restart.
  SIGUSR1 reopens --log-file (after logrotate moved it).";

/// Why a configuration did not load.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl Load {
    /// The configuration with the flags applied.
    fn read(&self) -> Result<StackConfig, ConfigError> {
        let mut cfg = match &self.config {
            Some(p) => StackConfig::read(p),
            None => StackConfig::embedded(),
        }?;
        if let Some(c) = &self.clamd {
            cfg.with_clamd(c)?;
        }
        if let Some(id) = &self.authserv_id {
            cfg.daemon.authserv_id = Some(id.clone());
        }
        Ok(cfg)
    }

    /// Reads and builds the filters (loading the keys): what SIGHUP does.
    fn build(
        &self,
        resolver: &Arc<dyn Resolver>,
        started: &DaemonSettings,
        writer: Option<&BufferedWriter>,
    ) -> Result<Mailstack, LoadError> {
        let cfg = self.read()?;
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        let d = &cfg.daemon;
        if (&d.socket, &d.socket_group, d.socket_mode, &d.user)
            != (
                &started.socket,
                &started.socket_group,
                started.socket_mode,
                &started.user,
            )
            || (&d.nameservers, d.dns_timeout) != (&started.nameservers, started.dns_timeout)
        {
            tracing::warn!(
                "socket, user or DNS settings changed: they take effect at the next restart"
            );
        }
        let (stack, _) = cfg.build_sharing(resolver.clone(), None, &daemon::hostname(), writer)?;
        Ok(stack)
    }
}

/// How often the store writer's counters are logged (when they changed).
const STORE_STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Reload(r)) = &args.command {
        mailstack_examples::logging::stderr("warn");
        return reload(r);
    }
    args.control
        .init_logging("info")
        .unwrap_or_else(|e| daemon::fail("mailstackd", e));
    let mut cfg = args
        .load
        .read()
        .unwrap_or_else(|e| daemon::fail("mailstackd", e));
    for w in &cfg.warnings {
        tracing::warn!("{w}");
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
        let (stack, store) = cfg.build_with_store(resolver.clone(), None, &daemon::hostname())?;
        if let Some(w) = &store {
            w.log_stats_every(STORE_STATS_EVERY);
        }
        let live = Arc::new(LiveFilter::new(Arc::new(stack)));
        let load = args.load.clone();
        let started = cfg.daemon.clone();
        let writer = store.clone();
        let rebuild = move || load.build(&resolver, &started, writer.as_ref());
        let served =
            daemon::serve_milter_live(&opts, ServerConfig::default(), live, rebuild, &args.control)
                .await;
        if let Some(w) = &store {
            daemon::flush_store_at_exit(w).await;
        }
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => daemon::fail("mailstackd", e),
    }
}

/// `mailstackd reload`: check the configuration (when named), then SIGHUP the daemon.
fn reload(r: &Reload) -> ExitCode {
    if r.load.config.is_some() {
        let checked = r.load.read().map_err(LoadError::from).and_then(|mut cfg| {
            // The running daemon holds the store (an embedded one admits one opener): the
            // check builds the filters and loads the keys without opening it.
            cfg.store = None;
            if let Some(d) = cfg.dmarc.as_mut() {
                d.store = None;
            }
            let rt = tokio::runtime::Runtime::new()
                .unwrap_or_else(|e| daemon::fail("mailstackd reload", e));
            rt.block_on(async {
                let resolver = daemon::resolver(&cfg.daemon.nameservers, cfg.daemon.dns_timeout)
                    .unwrap_or_else(|e| daemon::fail("mailstackd reload", e));
                Ok(cfg.build(resolver, None, &daemon::hostname()).map(drop)?)
            })
        });
        if let Err(e) = checked {
            daemon::fail("mailstackd reload: not signalled", e);
        }
    }
    match daemon::signal_pid_file(&r.pid_file, libc::SIGHUP) {
        Ok(pid) => {
            println!("mailstackd (pid {pid}) asked to reload");
            ExitCode::SUCCESS
        }
        Err(e) => daemon::fail("mailstackd reload", e),
    }
}
