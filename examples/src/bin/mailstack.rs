//! `mailstack`: the command-line tool next to `mailstackd`.
//!
//! `mailstack check FILE.eml --client-ip IP --helo NAME --from ADDR [--rcpt ADDR]...` runs
//! mailstackd's pipeline on one message without an MTA (same configuration, same DNS) and
//! prints each filter's result, the header changes it would make and the final decision;
//! `--json` for scripts. The exit status says the decision (see `--help`), as `rspamc` and
//! `opendkim-testmsg` users expect.
//!
//! `mailstack dmarc-report --history FILE... --org-name NAME --email ADDR (--smtp FILE |
//! --dry-run DIR)` sends the DMARC aggregate reports of the last complete window (or
//! `--begin`/`--end`), see `mailstack::dmarc::report` and `--help`.
//!
//! `mailstack dkim rotate --domain D --key-table FILE` stages the next DKIM key (record files
//! beside the current key); `mailstack dkim rotate --check ...` switches the KeyTable to it
//! once the domain's authoritative servers serve its record; `mailstack dkim status` tells
//! where a domain stands (see `mailstack::dkim::rotate`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use mailstack::dkim::KeyType;
use mailstack::dkim::rotate as dkim_rotate;
use mailstack::dns::{HickoryResolver, Resolver};
use mailstack::filter::{Action, ClientAddr, Connection, Envelope, Modification, Verdict};
use mailstack::filter::{OfflineOutcome, run_offline};
use mailstack::stack::StackConfig;
use mailstack_examples::daemon;

/// mailstack tools.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the mailstackd pipeline on one message, offline.
    #[command(after_help = CHECK_HELP)]
    Check(Check),
    /// Send DMARC aggregate reports (RFC 7489 §7.2, RFC 9990) from recorded evaluations.
    #[command(name = "dmarc-report", after_help = REPORT_HELP)]
    DmarcReport(Box<DmarcReport>),
    /// DKIM key management.
    #[command(subcommand)]
    Dkim(DkimCmd),
}

const REPORT_HELP: &str = "\
Reads the records (our history files or OpenDMARC's HistoryFile), counts them per policy
domain, rua and UTC-aligned window, and sends one gzipped report per destination: a rua
outside the policy domain's organization only when <domain>._report._dmarc.<rua-domain>
publishes v=DMARC1, nothing over a rua's !size, nothing to a destination that refused
within --suppress-days (kept in --state). Records of mail that was itself a report are
skipped. Exit status: 0 every report sent or deliberately held, 1 some sending failed,
2 usage, configuration or input error.";

#[derive(Debug, clap::Args)]
struct DmarcReport {
    /// History files to read (repeat or list several).
    #[arg(long, value_name = "FILE", num_args = 1.., required_unless_present = "store")]
    history: Vec<PathBuf>,
    /// Read the records from this store instead (what mailstackd's [store] or dmarc-milter's
    /// MailstackStore names: redis://HOST:PORT/DB, redis+unix:///PATH, or an absolute path).
    #[arg(long, value_name = "URL|PATH", conflicts_with = "history")]
    store: Option<String>,
    /// Start of the range: Unix seconds or YYYY-MM-DD (UTC). Default: the start of the last
    /// complete window.
    #[arg(long, value_name = "TIME")]
    begin: Option<String>,
    /// End of the range (exclusive), as --begin. Default: the end of the last complete window.
    #[arg(long, value_name = "TIME")]
    end: Option<String>,
    /// Window length in seconds (reports cover one window each).
    #[arg(long, value_name = "SECS", default_value_t = mailstack::dmarc::report::DEFAULT_WINDOW)]
    window: u64,
    /// rfc7489 (appendix C XML) or dmarcbis (RFC 9990). Default: dmarcbis when the
    /// configuration's DMARCSpecification is dmarcbis, else rfc7489.
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// mailstackd.toml, for the DMARC specification and public suffix list.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// opendmarc.conf (DMARCSpecification, PublicSuffixList), instead of --config.
    #[arg(long, value_name = "FILE")]
    dmarc_config: Option<PathBuf>,
    /// report_metadata org_name.
    #[arg(long, value_name = "NAME")]
    org_name: String,
    /// report_metadata email, and the report mail's From.
    #[arg(long, value_name = "ADDR")]
    email: String,
    /// The reporting domain (file name, subject, DKIM d=). Default: --email's domain.
    #[arg(long, value_name = "DOMAIN")]
    receiver: Option<String>,
    /// report_metadata extra_contact_info.
    #[arg(long, value_name = "TEXT")]
    extra_contact_info: Option<String>,
    /// msmtp-style SMTP submission settings (host, port, tls, tls_starttls, auth, user,
    /// password, tls_trust_file; from is replaced by --email).
    #[arg(long, value_name = "FILE", required_unless_present = "dry_run")]
    smtp: Option<PathBuf>,
    /// Write the .xml.gz and .eml files to DIR instead of sending.
    #[arg(long, value_name = "DIR")]
    dry_run: Option<PathBuf>,
    /// The reporting domain's DKIM private key (PEM); report mail is signed with it.
    #[arg(long, value_name = "FILE", requires = "dkim_selector")]
    dkim_key: Option<PathBuf>,
    /// The key's selector.
    #[arg(long, value_name = "NAME")]
    dkim_selector: Option<String>,
    /// The signing domain (default: the reporting domain).
    #[arg(long, value_name = "DOMAIN")]
    dkim_domain: Option<String>,
    /// State file of destinations that refused reports.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Days a refusing destination is left alone.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    suppress_days: u64,
    /// Spread the sending over this many seconds instead of sending all at once.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    spread: u64,
    /// DNS server to ask (IP:PORT) instead of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Vec<SocketAddr>,
}

/// Unix seconds or YYYY-MM-DD (UTC midnight).
fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    let bad = || format!("{s}: expected Unix seconds or YYYY-MM-DD");
    let mut it = s
        .splitn(3, '-')
        .map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (y, m, d) = (
        it.next().ok_or_else(bad)??,
        it.next().ok_or_else(bad)??,
        it.next().ok_or_else(bad)??,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400).map_err(|_| bad())
}

fn dmarc_report(c: DmarcReport) -> ExitCode {
    use mailstack::dmarc::report::{self, Format, Output, ReportMeta, ReportSigner, RunOptions};
    use mailstack::dmarc::{DmarcConfig, Specification};
    const NAME: &str = "mailstack dmarc-report";
    let dmarc_cfg: Option<DmarcConfig> = match (&c.dmarc_config, &c.config) {
        (Some(p), _) => Some(DmarcConfig::read(p).unwrap_or_else(|e| daemon::fail(NAME, e))),
        (None, Some(p)) => {
            StackConfig::read(p)
                .unwrap_or_else(|e| daemon::fail(NAME, e))
                .dmarc
        }
        (None, None) => None,
    };
    let format = match c.format.as_deref() {
        Some("rfc7489") => Format::Rfc7489,
        Some("dmarcbis" | "rfc9990") => Format::DmarcBis,
        Some(f) => daemon::fail(NAME, format!("--format {f}: expected rfc7489 or dmarcbis")),
        None => match dmarc_cfg.as_ref().map(|d| d.specification) {
            Some(Specification::DmarcBis) => Format::DmarcBis,
            _ => Format::Rfc7489,
        },
    };
    let receiver = c.receiver.clone().unwrap_or_else(|| {
        c.email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_else(|| daemon::fail(NAME, format!("--email {}: no domain", c.email)))
    });
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let window = c.window.max(1);
    let last_end = now - now % window;
    let time = |s: &Option<String>, default: u64| {
        s.as_deref()
            .map_or(Ok(default), parse_time)
            .unwrap_or_else(|e| daemon::fail(NAME, e))
    };
    let (begin, end) = (
        time(&c.begin, last_end.saturating_sub(window)),
        time(&c.end, last_end),
    );
    let signer = c.dkim_key.as_ref().map(|k| ReportSigner {
        key: mailstack::dkim::SigningKey {
            domain: None,
            selector: c.dkim_selector.clone().unwrap_or_default(),
            key: mailstack::dkim::PrivateKey::read(k, false)
                .unwrap_or_else(|e| daemon::fail(NAME, format!("{}: {e}", k.display()))),
        },
        domain: c.dkim_domain.clone().unwrap_or_else(|| receiver.clone()),
    });
    let output = match (&c.dry_run, &c.smtp) {
        (Some(d), _) => Output::DryRun(d.clone()),
        (None, Some(p)) => {
            let mut cfg =
                mailstack::notify::MsmtpConfig::read(p).unwrap_or_else(|e| daemon::fail(NAME, e));
            cfg.from = c.email.clone();
            Output::Smtp(Box::new(
                mailstack::notify::Notifier::new(&cfg).unwrap_or_else(|e| daemon::fail(NAME, e)),
            ))
        }
        (None, None) => daemon::fail(NAME, "--smtp FILE or --dry-run DIR is required"),
    };
    let opts = RunOptions {
        begin,
        end,
        window,
        format,
        meta: ReportMeta {
            org_name: c.org_name.clone(),
            email: c.email.clone(),
            extra_contact_info: c.extra_contact_info.clone(),
            receiver,
        },
        spread: Duration::from_secs(c.spread),
        state: c.state.clone(),
        suppress_secs: c.suppress_days.saturating_mul(86_400),
        now,
    };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| daemon::fail(NAME, e));
    let summary = rt.block_on(async {
        let resolver = daemon::resolver(&c.nameserver, Duration::from_secs(10))
            .unwrap_or_else(|e| daemon::fail(NAME, e));
        let psl = dmarc_cfg
            .as_ref()
            .and_then(|d| d.public_suffix_list.as_ref());
        let source: Box<dyn report::RecordSource> = match &c.store {
            Some(spec) => {
                let store = mailstack::store::StoreConfig::from_spec(spec)
                    .map_err(|e| e.to_string())
                    .and_then(|cfg| cfg.open().map_err(|e| e.to_string()))
                    .unwrap_or_else(|e| daemon::fail(NAME, format!("--store {spec}: {e}")));
                let records = report::StoreRecords::load(store.as_ref(), begin, end)
                    .await
                    .unwrap_or_else(|e| daemon::fail(NAME, e));
                Box::new(records)
            }
            None => Box::new(report::HistoryFiles::new(c.history.clone())),
        };
        report::run(
            source.as_ref(),
            resolver.as_ref(),
            psl,
            signer.as_ref(),
            &output,
            &opts,
        )
        .await
    });
    let summary = summary.unwrap_or_else(|e| daemon::fail(NAME, e));
    for name in &summary.sent {
        println!("sent {name}");
    }
    for (name, why) in &summary.held {
        println!("held {name}: {why:?}");
    }
    for (name, why) in &summary.failed {
        println!("failed {name}: {why}");
    }
    let a = &summary.aggregate;
    println!(
        "records {} (malformed {}), counted {}, reports skipped {}, without rua {}, without source address {}, bad rua {}, dropped {}",
        summary.source.records,
        summary.source.malformed,
        a.counted,
        a.reports_skipped,
        a.no_rua,
        a.no_source_ip,
        a.bad_rua,
        a.dropped
    );
    if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[derive(Debug, Subcommand)]
enum DkimCmd {
    /// Rotate a domain's signing key in stages: without --check, generate the next key and
    /// selector and write its DNS record (SELECTOR.txt, SELECTOR.zone) beside the current
    /// key; with --check, switch the KeyTable to it once every authoritative server serves
    /// the record with that key (exit 0), else change nothing (exit 1).
    #[command(after_help = ROTATE_HELP)]
    Rotate(Rotate),
    /// Print a domain's rotation state: the selector signing, the one staged, the retired
    /// ones and when their records may be removed.
    Status(Domain),
}

const ROTATE_HELP: &str = "\
Steps: 1. mailstack dkim rotate --domain D --key-table FILE   (stage; prints the record)
       2. publish SELECTOR._domainkey.D (SELECTOR.zone holds it as one zone-file line)
       3. mailstack dkim rotate --check --domain D --key-table FILE [--wait SECS]
          [--pid-file mailstackd.pid]   (switch and reload the daemon)
       4. after the retirement period (dkim status says when), remove the old record.
Exit status: 0 done (staged, or switched), 1 --check found the record missing or
different (nothing switched), 2 usage, file or state error.";

#[derive(Debug, clap::Args)]
struct Domain {
    /// The signing domain (d=).
    #[arg(long, value_name = "DOMAIN")]
    domain: String,
    /// The KeyTable (`file:` prefix allowed) whose entries for the domain are rotated.
    #[arg(long, value_name = "FILE")]
    key_table: PathBuf,
    /// Where the keys and the state file are (default: the current key's directory).
    #[arg(long, value_name = "DIR")]
    key_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeyKind {
    Rsa,
    Ed25519,
}

#[derive(Debug, clap::Args)]
struct Rotate {
    #[command(flatten)]
    domain: Domain,
    /// Selector of the new key: %Y %m %d %H %M %S (UTC), %s (Unix seconds), %%.
    #[arg(long, value_name = "FMT", default_value = mailstack::dkim::rotate::DEFAULT_SELECTOR_FORMAT)]
    selector_format: String,
    /// Key type of the new key.
    #[arg(long = "type", value_enum, default_value = "rsa")]
    kind: KeyKind,
    /// RSA key size in bits.
    #[arg(long, default_value_t = 2048)]
    bits: usize,
    /// Switch to the staged key if its record is served (see above).
    #[arg(long)]
    check: bool,
    /// Ask this server (IP:PORT, repeat for several) instead of the domain's NS.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Vec<SocketAddr>,
    /// Keep asking up to SECS seconds (every 5 s) until every server serves the record.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait: u64,
    /// How long the old selector's record stays published after the switch, in days.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    retire_days: u64,
    /// After switching, send SIGHUP to the daemon in this pid file (mailstackd --pid-file).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
}

const CHECK_HELP: &str = "\
Exit status: 0 delivered (accept), 1 quarantined, 3 rejected, 4 tempfailed, 5 discarded,
2 usage or configuration error.";

#[derive(Debug, clap::Args)]
struct Check {
    /// The message (CRLF or LF line ends).
    message: PathBuf,
    /// The SMTP client's address (omit for a local submission).
    #[arg(long, value_name = "IP")]
    client_ip: Option<IpAddr>,
    /// The client's host name as the MTA resolved it.
    #[arg(long, value_name = "NAME", default_value = "unknown")]
    client_name: String,
    /// The HELO/EHLO name.
    #[arg(long, value_name = "NAME", default_value = "")]
    helo: String,
    /// MAIL FROM (empty for the null sender).
    #[arg(long, value_name = "ADDR", default_value = "")]
    from: String,
    /// RCPT TO (repeat for several).
    #[arg(long, value_name = "ADDR")]
    rcpt: Vec<String>,
    /// The SMTP AUTH login, as if the client had authenticated (signing instead of
    /// verifying where DKIM has a key).
    #[arg(long, value_name = "LOGIN")]
    auth: Option<String>,
    /// mailstackd.toml (default: the embedded default).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// DNS server to ask (IP:PORT) instead of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Vec<SocketAddr>,
    /// The MTA's name (macro j), the default authserv-id.
    #[arg(long, value_name = "NAME")]
    mta_name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    mailstack_examples::logging::stderr("warn");
    match Args::parse().command {
        Cmd::Check(c) => check(&c),
        Cmd::DmarcReport(r) => dmarc_report(*r),
        Cmd::Dkim(DkimCmd::Rotate(r)) => rotate(&r),
        Cmd::Dkim(DkimCmd::Status(d)) => match dkim_rotate::status(&d.rotation()) {
            Ok(s) => {
                print!("{}", s.describe(SystemTime::now()));
                ExitCode::SUCCESS
            }
            Err(e) => daemon::fail("mailstack dkim status", e),
        },
    }
}

impl Domain {
    fn rotation(&self) -> dkim_rotate::Rotation {
        dkim_rotate::Rotation {
            domain: self.domain.clone(),
            key_table: self.key_table.clone(),
            key_dir: self.key_dir.clone(),
        }
    }
}

fn rotate(r: &Rotate) -> ExitCode {
    let rot = r.domain.rotation();
    if !r.check {
        let opts = dkim_rotate::StageOptions {
            key_type: match r.kind {
                KeyKind::Rsa => KeyType::Rsa,
                KeyKind::Ed25519 => KeyType::Ed25519,
            },
            bits: r.bits,
            selector_format: r.selector_format.clone(),
        };
        let s = dkim_rotate::stage(&rot, &opts, SystemTime::now())
            .unwrap_or_else(|e| daemon::fail("mailstack dkim rotate", e));
        println!(
            "staged selector {} ({}); publish this record, then run rotate --check:",
            s.selector,
            s.private.display()
        );
        print!("{}", std::fs::read_to_string(&s.zone).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let rt =
        tokio::runtime::Runtime::new().unwrap_or_else(|e| daemon::fail("mailstack dkim rotate", e));
    let report = rt.block_on(async {
        let servers = authoritative(&r.domain.domain, &r.nameserver).await?;
        let opts = dkim_rotate::CheckOptions {
            wait: Duration::from_secs(r.wait),
            retirement: Duration::from_secs(r.retire_days.saturating_mul(86_400)),
            ..dkim_rotate::CheckOptions::default()
        };
        dkim_rotate::check(&rot, &servers, opts, SystemTime::now())
            .await
            .map_err(RotateCliError::from)
    });
    let report = report.unwrap_or_else(|e| daemon::fail("mailstack dkim rotate --check", e));
    for (server, a) in &report.answers {
        let what = match a {
            dkim_rotate::Answer::Matches => "serves the new key".to_owned(),
            dkim_rotate::Answer::Missing(e) => format!("no record ({e})"),
            dkim_rotate::Answer::Mismatch(why) => format!("serves {why}"),
            _ => "unknown answer".to_owned(),
        };
        println!(
            "{server}: {}._domainkey.{} {what}",
            report.selector, r.domain.domain
        );
    }
    if !report.switched {
        println!("not switched: signing continues with the current key");
        return ExitCode::from(1);
    }
    println!(
        "switched: {} now signs with selector {}",
        r.domain.domain, report.selector
    );
    if let Some(old) = &report.retired {
        println!(
            "retired selector {}: keep its record published for {} days; `mailstack dkim \
             status` tells when it may be removed",
            old.selector, r.retire_days
        );
    }
    if let Some(pid) = &r.pid_file {
        match daemon::signal_pid_file(pid, libc::SIGHUP) {
            Ok(p) => println!("asked the daemon (pid {p}) to reload"),
            Err(e) => daemon::fail("mailstack dkim rotate: switched, but", e),
        }
    }
    ExitCode::SUCCESS
}

/// Why `rotate --check` could not ask or switch.
#[derive(Debug, thiserror::Error)]
enum RotateCliError {
    #[error(transparent)]
    Rotate(#[from] dkim_rotate::RotateError),
    #[error("{0}: {1}")]
    Dns(String, mailstack::dns::DnsError),
}

/// One resolver per server to ask: `given`, else each address of each NS of `domain`
/// (port 53).
async fn authoritative(
    domain: &str,
    given: &[SocketAddr],
) -> Result<Vec<(String, Arc<dyn Resolver>)>, RotateCliError> {
    let one = |a: SocketAddr| -> Result<(String, Arc<dyn Resolver>), RotateCliError> {
        let r = HickoryResolver::with_nameserver(a, ROTATE_DNS_TIMEOUT)
            .map_err(|e| RotateCliError::Dns(a.to_string(), e))?;
        Ok((a.to_string(), Arc::new(r)))
    };
    if !given.is_empty() {
        return given.iter().map(|a| one(*a)).collect();
    }
    let system =
        HickoryResolver::system().map_err(|e| RotateCliError::Dns("resolver".into(), e))?;
    let names = system
        .ns(domain)
        .await
        .map_err(|e| RotateCliError::Dns(format!("NS {domain}"), e))?;
    let mut out = Vec::new();
    for ns in names {
        let v4 = system.a(&ns).await.unwrap_or_default();
        let v6 = system.aaaa(&ns).await.unwrap_or_default();
        let ips = v4
            .into_iter()
            .map(IpAddr::V4)
            .chain(v6.into_iter().map(IpAddr::V6));
        for ip in ips {
            let (label, r) = one(SocketAddr::new(ip, 53))?;
            out.push((format!("{ns} ({label})"), r));
        }
    }
    if out.is_empty() {
        return Err(RotateCliError::Dns(
            format!("NS {domain}"),
            mailstack::dns::DnsError::NoData,
        ));
    }
    Ok(out)
}

/// Per-query timeout of `rotate --check`.
const ROTATE_DNS_TIMEOUT: Duration = Duration::from_secs(5);

fn check(c: &Check) -> ExitCode {
    let message = read_message(&c.message).unwrap_or_else(|e| daemon::fail("mailstack check", e));
    let cfg = match &c.config {
        Some(p) => StackConfig::read(p),
        None => StackConfig::embedded(),
    }
    .unwrap_or_else(|e| daemon::fail("mailstack check", e));
    let nameservers = if c.nameserver.is_empty() {
        cfg.daemon.nameservers.clone()
    } else {
        c.nameserver.clone()
    };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| daemon::fail("mailstack check", e));
    let outcome = rt.block_on(async {
        let resolver = daemon::resolver(&nameservers, cfg.daemon.dns_timeout)?;
        let stack = cfg.build(resolver, None, &daemon::hostname())?;
        let addr = c.client_ip.map_or(ClientAddr::Local, ClientAddr::Ip);
        let mut conn = Connection::new(c.client_name.clone(), addr);
        conn.helo = c.helo.clone();
        conn.mta_name = c.mta_name.clone();
        let mut env = Envelope::new(&c.from);
        env.auth_login = c.auth.clone();
        for r in &c.rcpt {
            env.add_rcpt(r);
        }
        Ok::<_, daemon::DaemonError>(run_offline(&stack, &conn, &env, &message).await)
    });
    let outcome = outcome.unwrap_or_else(|e| daemon::fail("mailstack check", e));
    let report = Report::of(&outcome);
    if c.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    ExitCode::from(report.status)
}

/// Largest message `check` reads (into memory, as a whole): far beyond Postfix's
/// `message_size_limit` (10 MB by default), so a real message always fits, while a wrong path
/// (a disk image, a log) is refused instead of filling memory.
const MAX_CHECK_MESSAGE: u64 = 1 << 30;

fn read_message(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .len();
    if len > MAX_CHECK_MESSAGE {
        return Err(format!(
            "{shown}: {len} bytes, larger than the {MAX_CHECK_MESSAGE} a message may have here"
        ));
    }
    std::fs::read(path).map_err(|e| format!("{shown}: {e}"))
}

/// What `check` prints.
struct Report {
    stage: &'static str,
    decision: &'static str,
    reply: Option<String>,
    results: Vec<(String, String)>,
    headers: Vec<String>,
    status: u8,
}

fn decision(a: &Action) -> (&'static str, Option<String>, u8) {
    match a {
        Action::Accept => ("accept", None, 0),
        Action::Quarantine { reason, .. } => ("quarantine", Some(reason.clone()), 1),
        Action::Reject(r) => ("reject", r.clone(), 3),
        Action::Tempfail(r) => ("tempfail", r.clone(), 4),
        Action::Discard => ("discard", None, 5),
        _ => ("unknown", None, 2),
    }
}

fn header_line(m: &Modification) -> String {
    match m {
        Modification::Insert { name, value, .. } | Modification::Append { name, value } => {
            format!("+ {name}: {value}")
        }
        Modification::AuthResults(v) => format!("+ Authentication-Results: {v}"),
        Modification::Delete { name, index } => format!("- {name} #{index}"),
        other => format!("{other:?}"),
    }
}

impl Report {
    fn of(o: &OfflineOutcome) -> Self {
        let (stage, v) = match o {
            OfflineOutcome::Verdict(v) => ("end of message", v.clone()),
            OfflineOutcome::Stopped(stage, a) => (*stage, Verdict::action(a.clone())),
            OfflineOutcome::Skipped(stage) => (*stage, Verdict::accept()),
            // An ending this binary does not know is not an accept: report it as unknown.
            _ => {
                return Self {
                    stage: "unknown",
                    decision: "unknown",
                    reply: None,
                    results: Vec::new(),
                    headers: Vec::new(),
                    status: 2,
                };
            }
        };
        let (decision, reply, status) = decision(&v.action);
        Self {
            stage,
            decision,
            reply,
            results: v
                .auth_results
                .iter()
                .map(|r| (r.method.clone(), r.result.clone()))
                .collect(),
            headers: v.modifications.iter().map(header_line).collect(),
            status,
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (m, r) in &self.results {
            out.push_str(&format!("{m}: {r}\n"));
        }
        for h in &self.headers {
            out.push_str(&format!("{h}\n"));
        }
        out.push_str(&format!("decision: {} (at {})", self.decision, self.stage));
        if let Some(r) = &self.reply {
            out.push_str(&format!(": {r}"));
        }
        out.push('\n');
        out
    }

    fn json(&self) -> String {
        let results: Vec<serde_json::Value> = self
            .results
            .iter()
            .map(|(m, r)| serde_json::json!({ "method": m, "result": r }))
            .collect();
        serde_json::json!({
            "decision": self.decision,
            "stage": self.stage,
            "reply": self.reply,
            "results": results,
            "headers": self.headers,
        })
        .to_string()
    }
}
