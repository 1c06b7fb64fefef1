//! `mailstack-init`: PID 1 of the mail container, instead of the seed's systemd, its shell
//! scripts and its tmpfiles rule (see `mailstack::init`).
//!
//! `mailstack-init` (no subcommand): validates the seed's layout and the optional
//! `mailstack-init.toml`, adds the users of `users.txt`, creates the run directories, starts
//! saslauthd, clamd, the filters and Postfix in order (each once the one before is ready),
//! restarts what dies, reaps orphans, and on SIGTERM stops Postfix, then the filters, then the
//! rest. `mailstack-init health` probes every service; `mailstack-init add-user NAME UID`
//! adds one mail user, its password read from stdin.
//!
//! Logs: a syslog receiver on `/dev/log` (Postfix and saslauthd log there), the children's
//! stdout and stderr, and init's own lines all go to `/var/log/mail.log` (rotated by size),
//! or over TCP to `MAIL_LOG_HOST` as rsyslog's `@@` does; init's own lines also go to its
//! stderr. Scheduled jobs: the Maildir backup (`MAILDIR_BACKUP=TRUE`) and the DMARC report
//! run of `[reports]`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mailstack::init::backup::{BackupConfig, MaildirBackup};
use mailstack::init::config::{DEFAULT_TOML, InitConfig};
use mailstack::init::forward::{ForwardConfig, Forwarder};
use mailstack::init::logfile::{FileConfig, FileLog};
use mailstack::init::schedule::{CommandJob, JobSpec, Scheduler};
use mailstack::init::syslog::{Facility, Receiver, Severity, Sink};
use mailstack::init::users::{UserLine, UserOutcome, Users, check_name};
use mailstack::init::{health, supervise::Supervisor};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// PID 1 of the mail container: users, run directories, saslauthd, clamd, the filters and
/// Postfix, supervised, without systemd.
#[derive(Debug, Parser)]
#[command(version, after_help = HELP)]
struct Args {
    /// mailstack-init.toml (optional: without it, the seed's layout under /usr/local/etc).
    #[arg(long, short = 'c', value_name = "FILE", default_value = DEFAULT_TOML)]
    config: PathBuf,
    /// Check the configuration, print the plan, exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Probe every service (SMTP banner, milter OPTNEG, clamd PING, sockets); exit 1 naming
    /// what is down.
    Health,
    /// Add one mail user as users.txt does; the password is the first line of stdin.
    AddUser {
        /// The user name.
        name: String,
        /// The uid.
        uid: u32,
    },
}

const HELP: &str = "\
Seed layout: /usr/local/etc/{postfix,opendkim,opendmarc,clamav,python-policyd-spf},
/usr/local/etc/users.txt (name:password:uid), env MAIL_LOG_HOST, MAILDIR_BACKUP=TRUE.
mailstack-init.toml keys (all optional): root, etc, users, passwd_root, filters
([\"mailstackd\"] or dkim-milter, dmarc-milter, av-milter, spf-policyd), clamd and saslauthd
(\"auto\" | \"yes\" | \"no\"), saslauthd_mech, smtp (IP:PORT), bin_dir, grace_seconds,
ready_timeout_seconds, clamd_ready_timeout_seconds, restart_backoff_ms, [programs], [args],
[sockets], [log] (dev_log, file, max_bytes, keep, queue), [backup] (schedule, homes, dest),
[reports] (schedule or every, command, args, timeout_seconds, jitter_seconds). Errors name the file
and line; nothing starts unless everything validates.
Logs: /dev/log (Postfix, saslauthd), the services' stdout/stderr and init's own lines go to
/var/log/mail.log (size-rotated), or to MAIL_LOG_HOST[:PORT] over TCP (default port 514).
Signals: SIGTERM/SIGINT stop Postfix, then the filters, then the rest; SIGHUP is passed on
to the milters (they re-read their configuration in place; spf-policyd is restarted).
Exit: 0 after a stop, 1 when a service failed to start, 2 on a configuration error.";

/// Where init's own tracing lines go besides stderr, once the log is up.
static LOG: OnceLock<Sink> = OnceLock::new();

/// One tracing event, formatted, handed to [`LOG`] when the line is complete.
struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if let Some(sink) = LOG.get() {
            let line = self.0.strip_suffix(b"\n").unwrap_or(&self.0);
            sink.line(
                Facility::Mail,
                Severity::Informational,
                "mailstack-init",
                line,
            );
        }
    }
}

/// stderr, and the mail log once [`LOG`] is set.
fn install_logging() {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_writer(|| LogLine(Vec::with_capacity(128)))
                .with_filter(filter()),
        )
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.command.is_some() || args.check_config {
        mailstack_examples::logging::stderr("info");
    } else {
        install_logging();
    }
    let cfg = InitConfig::read_optional(&args.config).unwrap_or_else(|e| fail(e));
    match args.command {
        Some(Cmd::Health) => return health_cmd(&cfg),
        Some(Cmd::AddUser { name, uid }) => return add_user(&cfg, name, uid),
        None => {}
    }
    let plan = cfg.plan().unwrap_or_else(|e| fail(e));
    if args.check_config {
        for d in &plan.dirs {
            println!(
                "dir {} {:o} {}:{}",
                d.path.display(),
                d.mode,
                d.user,
                d.group
            );
        }
        for s in &plan.services {
            let argv: Vec<String> = s
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            println!(
                "{} ({:?}): {} {}",
                s.name,
                s.role,
                s.program.display(),
                argv.join(" ")
            );
        }
        match &cfg.log.dev_log {
            Some(p) => println!("syslog {}", p.display()),
            None => println!("syslog off"),
        }
        match &cfg.mail_log_host {
            Some(h) => println!("log forwarded to {h} (TCP)"),
            None => println!(
                "log {} (rotated at {} bytes, {} kept)",
                cfg.log.file.display(),
                cfg.log.max_bytes,
                cfg.log.keep
            ),
        }
        if cfg.maildir_backup {
            println!(
                "job maildir-backup {:?}: {} -> {}",
                cfg.backup.schedule,
                cfg.backup.homes.display(),
                cfg.backup.dest.display()
            );
        }
        if let Some(r) = &cfg.reports {
            let argv: Vec<String> = r
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            println!(
                "job dmarc-reports {:?}: {} {}",
                r.schedule,
                r.program.display(),
                argv.join(" ")
            );
        }
        println!("OK");
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    match rt.block_on(run(cfg, plan)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailstack-init: {e}");
            ExitCode::from(1)
        }
    }
}

/// The container's life: the log first, then users, the jobs, the services.
async fn run(
    cfg: InitConfig,
    plan: mailstack::init::config::Plan,
) -> Result<(), Box<dyn std::error::Error>> {
    let (sink, queue) = Sink::channel(cfg.log.queue);
    let log_task = match &cfg.mail_log_host {
        Some(host) => {
            let fc = ForwardConfig::from_log_host(host)?;
            tracing::info!("log: forwarding to {}:{} over TCP", fc.host, fc.port);
            Forwarder::spawn(fc, queue)
        }
        None => {
            if let Some(dir) = cfg.log.file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let mut fc = FileConfig::new(&cfg.log.file);
            fc.max_bytes = cfg.log.max_bytes;
            fc.keep = cfg.log.keep;
            tracing::info!("log: {}", cfg.log.file.display());
            FileLog::spawn(fc, queue).map_err(|e| format!("{}: {e}", cfg.log.file.display()))?
        }
    };
    let _ = LOG.set(sink.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&s| s).await;
    };
    let receiver = match &cfg.log.dev_log {
        Some(path) => {
            let r = Receiver::bind(path, sink.clone())?;
            tracing::info!("syslog: receiving on {}", path.display());
            Some(tokio::spawn(r.run(stopped(stop_rx.clone()))))
        }
        None => None,
    };

    // Users: a bad line is reported and the others go in; it stops nothing.
    if cfg.users.exists() {
        let report = Users::new(&cfg.passwd_root).apply_file(&cfg.users);
        for o in &report.done {
            match o {
                UserOutcome::Created(n) => tracing::info!("user {n}: created"),
                UserOutcome::Exists(n) => tracing::info!("user {n}: exists, left alone"),
                other => tracing::info!("user: {other:?}"),
            }
        }
        for e in &report.errors {
            tracing::error!("{e}");
        }
    } else {
        tracing::info!("{}: absent, no users to add", cfg.users.display());
    }

    // Scheduled jobs.
    let mut scheduler = Scheduler::new(sink.clone());
    if cfg.maildir_backup {
        let bc = BackupConfig::new(&cfg.backup.homes, &cfg.backup.dest);
        scheduler.register(
            JobSpec::new("maildir-backup", cfg.backup.schedule)
                .timeout(mailstack::init::backup::DEFAULT_TIMEOUT),
            MaildirBackup::new(bc),
        )?;
    }
    if let Some(r) = &cfg.reports {
        scheduler.register(
            JobSpec::new("dmarc-reports", r.schedule)
                .timeout(r.timeout)
                .jitter(r.jitter),
            CommandJob::new(&r.program, r.args.clone(), sink.clone(), "dmarc-report"),
        )?;
    }
    for name in scheduler.names() {
        tracing::info!("job {name}: scheduled");
    }
    let jobs = tokio::spawn(scheduler.run(stopped(stop_rx.clone()), cfg.grace));

    let result = Supervisor::new(plan, &cfg.passwd_root)
        .with_log(sink.clone())
        .run()
        .await;
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    let _ = stop_tx.send(true);
    let _ = jobs.await;
    if let Some(r) = receiver
        && let Ok(Err(e)) = r.await
    {
        tracing::warn!("syslog receiver: {e}");
    }
    let dropped = sink.dropped();
    if dropped > 0 {
        tracing::warn!("log: {dropped} lines dropped in all");
    }
    drop(sink);
    if !log_task.finish(Duration::from_secs(5)).await {
        eprintln!("mailstack-init: the log did not drain within 5 s");
    }
    result.map_err(Into::into)
}

fn health_cmd(cfg: &InitConfig) -> ExitCode {
    let plan = cfg.plan().unwrap_or_else(|e| fail(e));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    let h = rt.block_on(health::check(&plan));
    for x in &h {
        if x.result.is_ok() {
            println!("{}: up", x.name);
        }
    }
    let down = health::down(&h);
    if down.is_empty() {
        return ExitCode::SUCCESS;
    }
    for d in &down {
        println!("DOWN {d}");
    }
    ExitCode::from(1)
}

fn add_user(cfg: &InitConfig, name: String, uid: u32) -> ExitCode {
    if let Err(e) = check_name(&name) {
        fail(e);
    }
    let mut password = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut password) {
        fail(format!("reading the password from stdin: {e}"));
    }
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        fail("no password on stdin (give it as the first line)");
    }
    let u = UserLine {
        line: 1,
        name,
        password,
        uid,
    };
    match Users::new(&cfg.passwd_root).add(std::path::Path::new("<command line>"), &u) {
        Ok(UserOutcome::Created(n)) => println!("user {n}: created"),
        Ok(UserOutcome::Exists(n)) => println!("user {n}: exists, left alone"),
        Ok(other) => println!("{other:?}"),
        Err(e) => fail(e),
    }
    ExitCode::SUCCESS
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("mailstack-init: {e}");
    std::process::exit(2);
}
