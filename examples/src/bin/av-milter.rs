//! `av-milter`: an antivirus milter over clamd, reading `clamav-milter.conf`.
//!
//! Each message is streamed to clamd while it arrives (headers, then every body chunk as the
//! MTA sends it), so memory per message is bounded by the milter chunk size (64 KiB). The
//! verdict is mapped to `OnClean` / `OnInfected` / `OnFail`, `RejectMsg`, `AddHeader`
//! (`X-Virus-Scanned`, `X-Virus-Status`) and `VirusAction` as clamav-milter does; see
//! `mailstack::av::config` for the options.
//!
//! Run: `av-milter --config /etc/clamav/clamav-milter.conf` and point Postfix at the
//! `MilterSocket` (`smtpd_milters = unix:/run/clamav/clamav-milter.ctl`).
//!
//! It runs on `milter-proto`'s server: one `Av` handler per MTA connection streams each
//! header and body chunk to clamd from its stage method and decides in `eom`.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use mailstack::av::{self, Action, AddHeader, AvConfig, LogLevel, MessageScan, Outcome};
use mailstack::notify::{MsmtpConfig, Notifier};
use mailstack_examples::shutdown_signal;
use milter_proto::command::ConnAddr;
use milter_proto::flags::Actions;
use milter_proto::negotiate::Needs;
use milter_proto::server::{self, Context, Decision, Handler, ServerConfig, async_trait};
use milter_proto::socket::{Listener, SocketSpec, UnixSocketOptions, group_id};

/// Antivirus milter: scans each message with clamd while it arrives and accepts, rejects,
/// defers, discards or quarantines it as clamav-milter.conf says.
#[derive(Debug, Parser)]
#[command(version, after_help = CONFIG_HELP)]
struct Args {
    /// The clamav-milter configuration file (ClamdSocket is mandatory; see
    /// mailstack::av::config for the supported options and their defaults).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/clamav/clamav-milter.conf"
    )]
    config: PathBuf,
    /// Where to listen, overriding MilterSocket: unix:/path, local:/path, a bare path,
    /// inet:host:port, inet:port@host or inet6:port@host.
    #[arg(long, value_name = "SPEC")]
    socket: Option<SocketSpec>,
    /// Send a notification mail for every infected message, with the SMTP settings of this
    /// msmtp-style file (host, port, from, auth, user, password, tls, tls_starttls,
    /// tls_trust_file; refused if group or others can read it). Needs --notify-to.
    #[arg(long, value_name = "FILE", requires = "notify_to")]
    notify_msmtp: Option<PathBuf>,
    /// Where notifications go.
    #[arg(long, value_name = "ADDR", requires = "notify_msmtp")]
    notify_to: Option<String>,
    /// Check the configuration file and exit.
    #[arg(long)]
    check_config: bool,
}

const CONFIG_HELP: &str = "\
Configuration file options (clamav-milter.conf syntax, `Option value`, `#` comments):
  MilterSocket SPEC            where to listen (mandatory unless --socket)
  MilterSocketMode MODE        octal mode of the unix socket (default: umask)
  MilterSocketGroup GROUP      group of the unix socket
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
Accepted without effect (warned): User Foreground Chroot PidFile TemporaryDirectory LogFile
LogFileUnlock LogFileMaxSize LogTime LogSyslog LogFacility LogVerbose MaxScanSize MaxFiles
MaxRecursion StreamMaxLength TCPSocket. Anything else is an error with file and line.";

const PRODUCT: &str = concat!("mailstack av-milter ", env!("CARGO_PKG_VERSION"));
const QUARANTINE_REASON: &str = "quarantined by av-milter";

struct Ctx {
    cfg: AvConfig,
    hostname: Option<String>,
    notify: Option<(Notifier, String)>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(io::stderr)
        .init();
    let args = Args::parse();
    let cfg = match AvConfig::read(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("av-milter: {e}");
            std::process::exit(2);
        }
    };
    for (line, name) in &cfg.ignored {
        tracing::warn!(
            "{}:{line}: {name} has no effect in av-milter",
            args.config.display()
        );
    }
    let spec = match (&args.socket, &cfg.milter_socket) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => match s.parse::<SocketSpec>() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("av-milter: {}: MilterSocket: {e}", args.config.display());
                std::process::exit(2);
            }
        },
        (None, None) => {
            eprintln!(
                "av-milter: {}: MilterSocket is mandatory (or pass --socket)",
                args.config.display()
            );
            std::process::exit(2);
        }
    };
    let notify = match (&args.notify_msmtp, &args.notify_to) {
        (Some(rc), Some(to)) => {
            match MsmtpConfig::read(rc)
                .map_err(|e| e.to_string())
                .and_then(|c| Notifier::new(&c).map_err(|e| e.to_string()))
            {
                Ok(n) => Some((n, to.clone())),
                Err(e) => {
                    eprintln!("av-milter: {e}");
                    std::process::exit(2);
                }
            }
        }
        _ => None,
    };
    if args.check_config {
        println!("{}: OK", args.config.display());
        return;
    }
    let hostname = cfg.report_hostname.clone().or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
    });
    let ctx = Arc::new(Ctx {
        cfg,
        hostname,
        notify,
    });
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = rt.block_on(serve(&spec, ctx)) {
        eprintln!("av-milter: {e}");
        std::process::exit(1);
    }
}

async fn serve(spec: &SocketSpec, ctx: Arc<Ctx>) -> io::Result<()> {
    let cfg = &ctx.cfg;
    if let SocketSpec::Unix(path) = spec
        && !cfg.fix_stale_socket
        && std::fs::symlink_metadata(path).is_ok()
    {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} exists and FixStaleSocket is no", path.display()),
        ));
    }
    let group = match &cfg.milter_socket_group {
        Some(g) => Some(
            group_id(g)
                .map_err(|e| io::Error::new(e.kind(), format!("MilterSocketGroup {g}: {e}")))?,
        ),
        None => None,
    };
    let unix = UnixSocketOptions {
        mode: cfg.milter_socket_mode,
        group,
    };
    let listener = Listener::bind(spec, &unix).await?;
    tracing::info!(socket = %spec, "listening");
    let make = move || Av::new(Arc::clone(&ctx));
    server::serve(listener, make, ServerConfig::default(), shutdown_signal()).await
}

/// Per-message state.
#[derive(Default)]
struct Msg {
    scan: Option<MessageScan>,
    sender: String,
    rcpts: Vec<String>,
    /// How many X-Virus-Scanned / X-Virus-Status fields the message already has.
    old_scanned: u32,
    old_status: u32,
    subject: Option<String>,
    message_id: Option<String>,
    date: Option<String>,
}

/// One MTA connection.
struct Av {
    ctx: Arc<Ctx>,
    /// The client is in `LocalNet`: accept without scanning.
    local: bool,
    msg: Msg,
}

impl Av {
    fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            local: false,
            msg: Msg::default(),
        }
    }
}

/// Whether the connecting client is in `LocalNet` (family `L`/`U` = local, non-SMTP).
fn client_is_local(cfg: &AvConfig, addr: &ConnAddr) -> bool {
    let ip = match addr {
        ConnAddr::Inet { address, .. } | ConnAddr::Inet6 { address, .. } => {
            std::str::from_utf8(address)
                .ok()
                .and_then(|a| a.trim_start_matches("IPv6:").parse().ok())
        }
        _ => None,
    };
    cfg.local_net.iter().any(|n| match (n, ip) {
        (av::config::LocalNet::Local, None) => true,
        (_, Some(ip)) => n.contains(ip),
        _ => false,
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[async_trait]
impl Handler for Av {
    fn needs(&self) -> Needs {
        Needs {
            actions: Actions::ADDHDRS | Actions::CHGHDRS | Actions::QUARANTINE,
            ..Needs::default()
        }
    }

    async fn connect(&mut self, _ctx: &mut Context, _host: &[u8], addr: &ConnAddr) -> Decision {
        self.local = client_is_local(&self.ctx.cfg, addr);
        if self.local {
            Decision::Accept
        } else {
            Decision::Continue
        }
    }

    async fn mail(&mut self, ctx: &mut Context, sender: &[u8], _args: &[Bytes]) -> Decision {
        let cfg = &self.ctx.cfg;
        self.msg = Msg {
            sender: lossy(sender),
            ..Msg::default()
        };
        let authed = ctx.macro_value("auth_authen").filter(|a| !a.is_empty());
        let skip = self.local
            || matches!((&cfg.skip_authenticated, authed),
                (Some(s), Some(a)) if s.matches(&String::from_utf8_lossy(a)));
        if skip {
            return Decision::Accept;
        }
        self.msg.scan = Some(MessageScan::new(cfg));
        Decision::Continue
    }

    async fn rcpt(&mut self, _ctx: &mut Context, rcpt: &[u8], _args: &[Bytes]) -> Decision {
        self.msg.rcpts.push(lossy(rcpt));
        Decision::Continue
    }

    async fn header(&mut self, _ctx: &mut Context, name: &[u8], value: &[u8]) -> Decision {
        let (name, value) = (lossy(name), lossy(value));
        let m = &mut self.msg;
        let first = |slot: &mut Option<String>| {
            if slot.is_none() {
                *slot = Some(value.clone());
            }
        };
        if name.eq_ignore_ascii_case("X-Virus-Scanned") {
            m.old_scanned += 1;
        } else if name.eq_ignore_ascii_case("X-Virus-Status") {
            m.old_status += 1;
        } else if name.eq_ignore_ascii_case("Subject") {
            first(&mut m.subject);
        } else if name.eq_ignore_ascii_case("Message-ID") {
            first(&mut m.message_id);
        } else if name.eq_ignore_ascii_case("Date") {
            first(&mut m.date);
        }
        if let Some(scan) = m.scan.as_mut() {
            scan.header(&name, &value).await;
        }
        Decision::Continue
    }

    async fn eoh(&mut self, _ctx: &mut Context) -> Decision {
        if let Some(scan) = self.msg.scan.as_mut() {
            scan.end_of_headers().await;
        }
        Decision::Continue
    }

    async fn body(&mut self, _ctx: &mut Context, chunk: &Bytes) -> Decision {
        if let Some(scan) = self.msg.scan.as_mut() {
            scan.body(chunk).await;
        }
        Decision::Continue
    }

    async fn eom(&mut self, ctx: &mut Context) -> Decision {
        let mut m = std::mem::take(&mut self.msg);
        let Some(scan) = m.scan.take() else {
            return Decision::Accept;
        };
        let outcome = scan.finish().await;
        end_of_message(&self.ctx, ctx, &m, &outcome)
    }

    async fn abort(&mut self, _ctx: &mut Context) {
        self.msg = Msg::default();
    }

    async fn close(&mut self, _ctx: &mut Context) {
        self.msg = Msg::default();
        self.local = false;
    }
}

/// Addresses are passed without angle brackets (clamav-milter uses the `{mail_addr}` and
/// `{rcpt_addr}` macros). Replaces quotes, tabs, CR, LF and non-printables with spaces, as clamav-milter does for
/// VirusAction arguments.
fn clean_arg(v: Option<&str>) -> String {
    match v {
        Some(v) => v
            .chars()
            .map(|c| {
                if c == '\'' || c == '"' || c.is_control() {
                    ' '
                } else {
                    c
                }
            })
            .collect(),
        None => "<unknown>".to_owned(),
    }
}

/// Logs the scan as `LogInfected` / `LogClean` ask.
fn log_scan(cfg: &AvConfig, qid: &str, m: &Msg, outcome: &Outcome, action: Action) {
    let level = match outcome {
        Outcome::Infected(_) => cfg.log_infected,
        Outcome::Clean => cfg.log_clean,
        Outcome::Failed(_) => LogLevel::Basic,
    };
    match level {
        LogLevel::Off => {}
        LogLevel::Basic => tracing::info!(queue_id = qid, ?outcome, ?action, "scanned"),
        LogLevel::Full => tracing::info!(
            queue_id = qid,
            ?outcome,
            ?action,
            sender = %m.sender,
            rcpts = ?m.rcpts,
            subject = m.subject.as_deref().unwrap_or(""),
            message_id = m.message_id.as_deref().unwrap_or(""),
            "scanned"
        ),
    }
}

/// Queues the `AddHeader` fields (clamav-milter adds them for infected mail too, before the
/// action).
fn queue_headers(
    cfg: &AvConfig,
    ctx: &mut Context,
    m: &Msg,
    headers: &[(String, String)],
) -> Result<(), milter_proto::ApiMisuse> {
    if headers.is_empty() {
        return Ok(());
    }
    if cfg.add_header == AddHeader::Replace {
        for (name, n) in [
            ("X-Virus-Scanned", m.old_scanned),
            ("X-Virus-Status", m.old_status),
        ] {
            for i in (1..=n).rev() {
                ctx.delete_header(name, i)?;
            }
        }
    }
    for (name, value) in headers {
        if cfg.add_header == AddHeader::Add {
            ctx.insert_header(1, name, value)?;
        } else {
            ctx.add_header(name, value)?;
        }
    }
    Ok(())
}

/// Runs `VirusAction` in the background (the verdict never waits for the program).
fn virus_action(cfg: &AvConfig, prog: &std::path::Path, virus: &str, qid: &str, m: &Msg) {
    let rcpts: Vec<String> = if cfg.support_multiple_recipients {
        m.rcpts.clone()
    } else {
        m.rcpts.last().cloned().into_iter().collect()
    };
    for rcpt in rcpts {
        let argv = [
            virus.to_owned(),
            qid.to_owned(),
            clean_arg(Some(m.sender.trim_start_matches('<').trim_end_matches('>'))),
            clean_arg(Some(rcpt.trim_start_matches('<').trim_end_matches('>'))),
            clean_arg(m.subject.as_deref()),
            clean_arg(m.message_id.as_deref()),
            clean_arg(m.date.as_deref()),
        ];
        let prog = prog.to_owned();
        tokio::spawn(async move {
            match tokio::process::Command::new(&prog)
                .args(&argv)
                .status()
                .await
            {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::warn!(program = %prog.display(), %s, "VirusAction failed"),
                Err(e) => tracing::warn!(program = %prog.display(), error = %e, "VirusAction"),
            }
        });
    }
}

/// Sends the infected-mail notification in the background (with its retries).
fn notify(n: &Notifier, to: &str, virus: &str, qid: &str, m: &Msg) {
    let (subject, body) = mailstack::notify::infected_text([
        virus,
        qid,
        &m.sender,
        &m.rcpts.join(", "),
        m.subject.as_deref().unwrap_or(""),
        m.message_id.as_deref().unwrap_or(""),
    ]);
    match n.send(to, &subject, &body) {
        Ok(h) => {
            tokio::spawn(async move {
                match h.await {
                    Ok(Ok(())) => tracing::info!("notification sent"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "notification"),
                    Err(e) => tracing::warn!(error = %e, "notification task"),
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "notification"),
    }
}

fn end_of_message(app: &Ctx, ctx: &mut Context, m: &Msg, outcome: &Outcome) -> Decision {
    let cfg = &app.cfg;
    let qid = ctx
        .macro_value("i")
        .map_or_else(|| "NOQUEUE".to_owned(), |q| lossy(q));
    let d = av::decide(cfg, outcome, PRODUCT, app.hostname.as_deref());
    log_scan(cfg, &qid, m, outcome, d.action);
    if let Err(e) = queue_headers(cfg, ctx, m, &d.headers) {
        tracing::warn!(queue_id = qid, "cannot write the AddHeader fields: {e}");
    }
    if let Outcome::Infected(virus) = outcome {
        if let Some(prog) = &cfg.virus_action {
            virus_action(cfg, prog, virus, &qid, m);
        }
        if let Some((n, to)) = &app.notify {
            notify(n, to, virus, &qid, m);
        }
    }
    match (d.action, d.reply) {
        (Action::Accept, _) => Decision::Accept,
        (Action::Reject, Some(reply)) => Decision::ReplyCode(reply.into()),
        (Action::Reject, None) => Decision::Reject,
        (Action::Defer, _) => Decision::Tempfail,
        (Action::Blackhole, _) => Decision::Discard,
        (Action::Quarantine, _) => {
            if let Err(e) = ctx.quarantine(QUARANTINE_REASON) {
                tracing::warn!(queue_id = qid, "cannot quarantine: {e}");
            }
            Decision::Accept
        }
    }
}
