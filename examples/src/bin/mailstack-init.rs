//! `mailstack-init`: PID 1 of the mail container, instead of the seed's systemd, its shell
//! scripts and its tmpfiles rule (see `mailstack::init`).
//!
//! `mailstack-init` (no subcommand): validates the seed's layout and the optional
//! `mailstack-init.toml`, adds the users of `users.txt`, creates the run directories, starts
//! saslauthd, clamd, the filters and Postfix in order (each once the one before is ready),
//! restarts what dies, reaps orphans, and on SIGTERM stops Postfix, then the filters, then the
//! rest. `mailstack-init health` probes every service; `mailstack-init add-user NAME UID`
//! adds one mail user, its password read from stdin.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailstack::init::config::{DEFAULT_TOML, InitConfig};
use mailstack::init::users::{Outcome, UserLine, Users, check_name};
use mailstack::init::{health, supervise::Supervisor};

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
[sockets]. Errors name the file and line; nothing starts unless everything validates.
Signals: SIGTERM/SIGINT stop Postfix, then the filters, then the rest; SIGHUP restarts the
filters in turn. Exit: 0 after a stop, 1 when a service failed to start, 2 on a
configuration error.";

fn main() -> ExitCode {
    mailstack_examples::logging::stderr("info");
    let args = Args::parse();
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
        println!("OK");
        return ExitCode::SUCCESS;
    }
    // Users first: a bad line is reported and the others go in; it stops nothing.
    if cfg.users.exists() {
        let report = Users::new(&cfg.passwd_root).apply_file(&cfg.users);
        for o in &report.done {
            match o {
                Outcome::Created(n) => tracing::info!("user {n}: created"),
                Outcome::Exists(n) => tracing::info!("user {n}: exists, left alone"),
                other => tracing::info!("user: {other:?}"),
            }
        }
        for e in &report.errors {
            tracing::error!("{e}");
        }
    } else {
        tracing::info!("{}: absent, no users to add", cfg.users.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    let passwd_root = cfg.passwd_root.clone();
    match rt.block_on(Supervisor::new(plan, &passwd_root).run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailstack-init: {e}");
            ExitCode::from(1)
        }
    }
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
        Ok(Outcome::Created(n)) => println!("user {n}: created"),
        Ok(Outcome::Exists(n)) => println!("user {n}: exists, left alone"),
        Ok(other) => println!("{other:?}"),
        Err(e) => fail(e),
    }
    ExitCode::SUCCESS
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("mailstack-init: {e}");
    std::process::exit(2);
}
