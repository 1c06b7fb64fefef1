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
//! The milter server loop is written here over the stand-in framing in
//! `mailstack_examples::milter` (`milter-proto` has not landed); it needs per-chunk streaming
//! and an async end of message, which the stand-in `Filter` does not offer.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use mailstack::av::{self, Action, AddHeader, AvConfig, LogLevel, MessageScan, Outcome};
use mailstack::notify::{MsmtpConfig, Notifier};
use mailstack_examples::milter::{self, SocketSpec, action, encode_frame, read_frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

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

/// The gid of `group` from /etc/group.
fn group_id(group: &str) -> Option<u32> {
    if let Ok(n) = group.parse() {
        return Some(n);
    }
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == group).then(|| f.nth(1)?.parse().ok())?
    })
}

async fn serve(spec: &SocketSpec, ctx: Arc<Ctx>) -> io::Result<()> {
    match spec {
        SocketSpec::Unix(path) => {
            if ctx.cfg.fix_stale_socket
                && path.exists()
                && std::os::unix::net::UnixStream::connect(path).is_err()
            {
                std::fs::remove_file(path)?;
            }
            let listener = UnixListener::bind(path)?;
            if let Some(mode) = ctx.cfg.milter_socket_mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            if let Some(g) = &ctx.cfg.milter_socket_group {
                let gid = group_id(g).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("MilterSocketGroup {g}: no such group"),
                    )
                })?;
                std::os::unix::fs::chown(path, None, Some(gid))?;
            }
            tracing::info!(socket = %path.display(), "listening");
            loop {
                let (s, _) = listener.accept().await?;
                spawn(s, Arc::clone(&ctx));
            }
        }
        SocketSpec::Tcp(addr) => {
            let listener = TcpListener::bind(addr.as_str()).await?;
            tracing::info!(socket = %addr, "listening");
            loop {
                let (s, _) = listener.accept().await?;
                s.set_nodelay(true)?;
                spawn(s, Arc::clone(&ctx));
            }
        }
    }
}

fn spawn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(s: S, ctx: Arc<Ctx>) {
    tokio::spawn(async move {
        if let Err(e) = serve_conn(s, &ctx).await {
            tracing::warn!(error = %e, "milter connection ended with an error");
        }
    });
}

fn cstrings(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn frame_strs(cmd: u8, prefix: &[u8], strs: &[&str], out: &mut Vec<u8>) {
    let mut d = prefix.to_vec();
    for s in strs {
        d.extend_from_slice(s.as_bytes());
        d.push(0);
    }
    encode_frame(cmd, &d, out);
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

/// Whether the connecting client is in `LocalNet` (family `L`/`U` = local, non-SMTP).
fn client_is_local(cfg: &AvConfig, data: &[u8]) -> bool {
    let Some(nul) = data.iter().position(|&b| b == 0) else {
        return false;
    };
    let rest = &data[nul + 1..];
    let Some((&family, rest)) = rest.split_first() else {
        return false;
    };
    let ip = match family {
        b'4' | b'6' => rest.get(2..).map(cstrings).and_then(|s| {
            s.into_iter()
                .next()
                .and_then(|a| a.trim_start_matches("IPv6:").parse().ok())
        }),
        _ => None,
    };
    cfg.local_net.iter().any(|n| match (n, ip) {
        (av::config::LocalNet::Local, None) => true,
        (_, Some(ip)) => n.contains(ip),
        _ => false,
    })
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(stream: S, ctx: &Ctx) -> io::Result<()> {
    let cfg = &ctx.cfg;
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut macros: HashMap<String, String> = HashMap::new();
    let mut msg = Msg::default();
    let mut skip = false;
    while let Some(cmd) = read_frame(&mut r, &mut buf).await? {
        out.clear();
        match cmd {
            b'O' => {
                let word = |i: usize| {
                    buf.get(i * 4..i * 4 + 4)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_be_bytes)
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short OPTNEG"))
                };
                let (version, actions) = (word(0)?, word(1)?);
                let want = action::ADDHDRS | action::CHGHDRS | action::QUARANTINE;
                let mut d = Vec::with_capacity(12);
                d.extend_from_slice(&version.min(milter::VERSION).to_be_bytes());
                d.extend_from_slice(&(want & actions).to_be_bytes());
                d.extend_from_slice(&0u32.to_be_bytes());
                encode_frame(b'O', &d, &mut out);
            }
            b'D' => {
                if let Some((_, pairs)) = buf.split_first() {
                    let mut s = cstrings(pairs).into_iter();
                    while let (Some(k), Some(v)) = (s.next(), s.next()) {
                        macros.insert(k.trim_matches(['{', '}']).to_owned(), v);
                    }
                }
            }
            b'C' => {
                skip = client_is_local(cfg, &buf);
                encode_frame(if skip { b'a' } else { b'c' }, &[], &mut out);
            }
            b'M' => {
                msg = Msg::default();
                msg.sender = cstrings(&buf).into_iter().next().unwrap_or_default();
                let authed = macros.get("auth_authen").filter(|a| !a.is_empty());
                let skip_msg = skip
                    || matches!((&cfg.skip_authenticated, authed), (Some(s), Some(a)) if s.matches(a));
                if skip_msg {
                    encode_frame(b'a', &[], &mut out);
                } else {
                    msg.scan = Some(MessageScan::new(cfg));
                    encode_frame(b'c', &[], &mut out);
                }
            }
            b'R' => {
                msg.rcpts.extend(cstrings(&buf).into_iter().next());
                encode_frame(b'c', &[], &mut out);
            }
            b'L' => {
                let mut s = cstrings(&buf).into_iter();
                let (name, value) = (s.next().unwrap_or_default(), s.next().unwrap_or_default());
                let first = |slot: &mut Option<String>| {
                    if slot.is_none() {
                        *slot = Some(value.clone());
                    }
                };
                if name.eq_ignore_ascii_case("X-Virus-Scanned") {
                    msg.old_scanned += 1;
                } else if name.eq_ignore_ascii_case("X-Virus-Status") {
                    msg.old_status += 1;
                } else if name.eq_ignore_ascii_case("Subject") {
                    first(&mut msg.subject);
                } else if name.eq_ignore_ascii_case("Message-ID") {
                    first(&mut msg.message_id);
                } else if name.eq_ignore_ascii_case("Date") {
                    first(&mut msg.date);
                }
                if let Some(scan) = msg.scan.as_mut() {
                    scan.header(&name, &value).await;
                }
                encode_frame(b'c', &[], &mut out);
            }
            b'N' => {
                if let Some(scan) = msg.scan.as_mut() {
                    scan.end_of_headers().await;
                }
                encode_frame(b'c', &[], &mut out);
            }
            b'B' => {
                if let Some(scan) = msg.scan.as_mut() {
                    scan.body(&buf).await;
                }
                encode_frame(b'c', &[], &mut out);
            }
            b'E' => {
                let mut m = std::mem::take(&mut msg);
                match m.scan.take() {
                    Some(mut scan) => {
                        scan.body(&buf).await;
                        let outcome = scan.finish().await;
                        end_of_message(ctx, &macros, &m, &outcome, &mut out);
                    }
                    None => encode_frame(b'a', &[], &mut out),
                }
            }
            b'A' => msg = Msg::default(),
            b'Q' => break,
            b'K' => {
                msg = Msg::default();
                macros.clear();
                skip = false;
            }
            // HELO, DATA, unknown command: we negotiated no NR_* flags, so every stage gets
            // an answer.
            b'H' | b'T' | b'U' => encode_frame(b'c', &[], &mut out),
            _ => {}
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
        }
    }
    Ok(())
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

fn end_of_message(
    ctx: &Ctx,
    macros: &HashMap<String, String>,
    m: &Msg,
    outcome: &Outcome,
    out: &mut Vec<u8>,
) {
    let cfg = &ctx.cfg;
    let qid = macros.get("i").map_or("NOQUEUE", String::as_str);
    let d = av::decide(cfg, outcome, PRODUCT, ctx.hostname.as_deref());
    let level = match outcome {
        Outcome::Infected(_) => cfg.log_infected,
        Outcome::Clean => cfg.log_clean,
        Outcome::Failed(_) => LogLevel::Basic,
    };
    match level {
        LogLevel::Off => {}
        LogLevel::Basic => tracing::info!(queue_id = qid, ?outcome, action = ?d.action, "scanned"),
        LogLevel::Full => tracing::info!(
            queue_id = qid,
            ?outcome,
            action = ?d.action,
            sender = %m.sender,
            rcpts = ?m.rcpts,
            subject = m.subject.as_deref().unwrap_or(""),
            message_id = m.message_id.as_deref().unwrap_or(""),
            "scanned"
        ),
    }
    // Header fields first (clamav-milter adds them for infected mail too, before the action).
    if !d.headers.is_empty() {
        if cfg.add_header == AddHeader::Replace {
            for (name, n) in [
                ("X-Virus-Scanned", m.old_scanned),
                ("X-Virus-Status", m.old_status),
            ] {
                for i in (1..=n).rev() {
                    frame_strs(b'm', &i.to_be_bytes(), &[name, ""], out);
                }
            }
        }
        for (name, value) in &d.headers {
            if cfg.add_header == AddHeader::Add {
                frame_strs(b'i', &1u32.to_be_bytes(), &[name, value], out);
            } else {
                frame_strs(b'h', &[], &[name, value], out);
            }
        }
    }
    if let (Outcome::Infected(virus), Some(prog)) = (outcome, &cfg.virus_action) {
        let rcpts: Vec<String> = if cfg.support_multiple_recipients {
            m.rcpts.clone()
        } else {
            m.rcpts.last().cloned().into_iter().collect()
        };
        for rcpt in rcpts {
            let argv = [
                virus.clone(),
                qid.to_owned(),
                clean_arg(Some(m.sender.trim_start_matches('<').trim_end_matches('>'))),
                clean_arg(Some(rcpt.trim_start_matches('<').trim_end_matches('>'))),
                clean_arg(m.subject.as_deref()),
                clean_arg(m.message_id.as_deref()),
                clean_arg(m.date.as_deref()),
            ];
            let prog = prog.clone();
            // Run in the background: the verdict never waits for the program.
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
    if let (Outcome::Infected(virus), Some((n, to))) = (outcome, &ctx.notify) {
        let (subject, body) = mailstack::notify::infected_text([
            virus,
            qid,
            &m.sender,
            &m.rcpts.join(", "),
            m.subject.as_deref().unwrap_or(""),
            m.message_id.as_deref().unwrap_or(""),
        ]);
        // Delivery (with its retries) runs in the background; the verdict does not wait.
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
    match (d.action, d.reply) {
        (Action::Accept, _) => encode_frame(b'a', &[], out),
        (Action::Reject, Some(reply)) => frame_strs(b'y', &[], &[&reply], out),
        (Action::Reject, None) => encode_frame(b'r', &[], out),
        (Action::Defer, _) => encode_frame(b't', &[], out),
        (Action::Blackhole, _) => encode_frame(b'd', &[], out),
        (Action::Quarantine, _) => {
            frame_strs(b'q', &[], &[QUARANTINE_REASON], out);
            encode_frame(b'a', &[], out);
        }
    }
}
