//! `av-milter`: an antivirus milter over clamd, reading `clamav-milter.conf`.
//!
//! Each message is streamed to clamd while it arrives (headers, then every body chunk as the
//! MTA sends it), so memory per message is bounded by the milter chunk size (64 KiB). The
//! verdict is mapped to `OnClean` / `OnInfected` / `OnFail`, `RejectMsg`, `AddHeader`
//! (`X-Virus-Scanned`, `X-Virus-Status`) and `VirusAction` as clamav-milter does; see
//! `mailstack::av::AvConfig` for the options.
//!
//! Run: `av-milter --config /etc/clamav/clamav-milter.conf` and point Postfix at the
//! `MilterSocket` (`smtpd_milters = unix:/run/clamav/clamav-milter.ctl`).
//!
//! The filter is library code, `mailstack::av::AvFilter`, served by the generic
//! `mailstack::filter::Milter` adapter (one handler per MTA connection on `milter-proto`'s
//! server), the same code `mailstackd` runs; this binary reads the configuration and serves it.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use mailstack::av::AvConfig;
use mailstack::av::AvFilter;
use mailstack::filter::LiveFilter;
use mailstack::notify::{MsmtpConfig, Notifier};
use mailstack::privs::RunAs;
use mailstack::stack::DaemonSettings;
use mailstack_examples::daemon::{self, ControlArgs, DaemonArgs};
use milter_proto::SocketSpec;
use milter_proto::server::ServerConfig;

/// Antivirus milter: scans each message with clamd while it arrives and accepts, rejects,
/// defers, discards or quarantines it as clamav-milter.conf says.
#[derive(Debug, Parser)]
#[command(version, after_help = CONFIG_HELP)]
struct Args {
    /// The clamav-milter configuration file (ClamdSocket is mandatory; see
    /// mailstack::av::AvConfig for the supported options and their defaults).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/clamav/clamav-milter.conf"
    )]
    config: PathBuf,
    /// Send a notification mail for every infected message, with the SMTP settings of this
    /// msmtp-style file (host, port, from, auth, user, password, tls, tls_starttls,
    /// tls_trust_file; refused if group or others can read it). Needs --notify-to.
    #[arg(long, value_name = "FILE", requires = "notify_to")]
    notify_msmtp: Option<PathBuf>,
    /// Where notifications go.
    #[arg(long, value_name = "ADDR", requires = "notify_msmtp")]
    notify_to: Option<String>,
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(flatten)]
    control: ControlArgs,
}

const CONFIG_HELP: &str = "\
Configuration file options (clamav-milter.conf syntax, `Option value`, `#` comments):
  MilterSocket SPEC            where to listen (mandatory unless --socket)
  MilterSocketMode MODE        octal mode of the unix socket (default 0660)
  MilterSocketGroup GROUP      group of the unix socket (default postfix when it exists;
                               --group overrides)
  User NAME                    run as NAME after binding; started as root without it:
                               refused unless --allow-root
  FixStaleSocket yes|no        remove a leftover socket file (default yes)
  ClamdSocket unix:/p|tcp:h[:port]
                               clamd to use; repeat for several, tried in turn (mandatory)
  ReadTimeout SECONDS          wait for clamd (default 120; 0 = none)
  OnClean ACTION               Accept|Reject|Defer|Blackhole|Quarantine (default Accept)
  OnInfected ACTION            same set (default Quarantine)
  OnFail ACTION                Accept|Reject|Defer (default Defer)
  RejectMsg TEXT               reply text for OnInfected Reject; %v = virus name
  AddHeader No|Yes|Replace|Add X-Virus-Scanned / X-Virus-Status (default No)
  ReportHostname NAME          host name in X-Virus-Scanned (default: this host)
  VirusAction /path            program run in the background for infected mail with
                               virus, queue id, sender, recipient, subject, message-id, date
  MaxFileSize SIZE             scan only the first SIZE bytes (default 100M)
  SkipAuthenticated NAME|^NAME$|file:/path
                               do not scan mail from these SMTP AUTH logins
  LocalNet local|ADDR[/BITS]   do not scan mail from these clients (repeatable)
  LogInfected / LogClean Off|Basic|Full   (default Off)
  SupportMultipleRecipients yes|no        VirusAction once per recipient (default no)
  ClamdTransfer Instream|Fildes           (mailstack) stream to clamd while the message
                               arrives (default), or spool it to an unlinked file and pass
                               the descriptor with FILDES, as clamav-milter does on a unix
                               socket (less CPU in clamd)
  TemporaryDirectory DIR       where Fildes spools (default /tmp)
Accepted without effect (warned): Foreground Chroot PidFile LogFile
LogFileUnlock LogFileMaxSize LogTime LogSyslog LogFacility LogVerbose MaxScanSize MaxFiles
MaxRecursion StreamMaxLength TCPSocket. Anything else is an error with file and line.
Signals: SIGTERM/SIGINT stop accepting, finish messages in flight, exit. SIGHUP re-reads the
file (new connections get it; open ones finish on the old; a file that does not load is
refused, logged with file and line, and the old one stays in force; the socket, the user and
the resolver take effect at a restart). SIGUSR1 reopens --log-file.";

fn main() {
    let args = Args::parse();
    args.control
        .init_logging("info")
        .unwrap_or_else(|e| fail(e));
    let cfg = AvConfig::read(&args.config).unwrap_or_else(|e| fail(e));
    for (line, name) in &cfg.ignored {
        tracing::warn!(
            "{}:{line}: {name} has no effect in av-milter",
            args.config.display()
        );
    }
    let mut file = DaemonSettings::default();
    file.socket.clone_from(&cfg.milter_socket);
    file.socket_mode = cfg.milter_socket_mode;
    file.socket_group.clone_from(&cfg.milter_socket_group);
    let run_as = cfg.user.as_deref().map(RunAs::new);
    let opts = args
        .daemon
        .resolve_tool(file, run_as.as_ref(), "User in clamav-milter.conf")
        .unwrap_or_else(|e| fail(format!("{}: {e}", args.config.display())));
    let notify = match (&args.notify_msmtp, &args.notify_to) {
        (Some(rc), Some(to)) => {
            match MsmtpConfig::read(rc)
                .map_err(|e| e.to_string())
                .and_then(|c| Notifier::new(&c).map_err(|e| e.to_string()))
            {
                Ok(n) => Some((n, to.clone())),
                Err(e) => fail(e),
            }
        }
        _ => None,
    };
    if args.daemon.check_config {
        println!("{}: OK", args.config.display());
        return;
    }
    opts.check_root().unwrap_or_else(|e| fail(e));
    if let SocketSpec::Unix(path) = &opts.socket
        && !cfg.fix_stale_socket
        && std::fs::symlink_metadata(path).is_ok()
    {
        fail(format!(
            "{} exists and FixStaleSocket is no",
            path.display()
        ));
    }
    let filter = Arc::new(AvFilter::new(cfg, notify.clone()));
    let live = Arc::new(LiveFilter::new(filter));
    let path = args.config.clone();
    let rebuild = move || AvConfig::read(&path).map(|c| AvFilter::new(c, notify.clone()));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(e));
    if let Err(e) = rt.block_on(daemon::serve_milter_live(
        &opts,
        ServerConfig::default(),
        live,
        rebuild,
        &args.control,
    )) {
        fail(e);
    }
}

fn fail(e: impl std::fmt::Display) -> ! {
    daemon::fail("av-milter", e)
}
