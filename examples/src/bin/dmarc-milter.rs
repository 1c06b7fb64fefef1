//! `dmarc-milter`: a DMARC milter reading `opendmarc.conf`, a drop-in for OpenDMARC.
//!
//! All the logic is `mailstack::dmarc` (evaluation, enforcement, the `Filter`) served by the
//! generic `mailstack::filter::Milter` adapter, the same code `mailstackd` runs; this binary
//! reads the configuration, builds the resolver and serves the socket.
//!
//! Run: `dmarc-milter --config /etc/opendmarc.conf --socket inet:8893@localhost` and point
//! Postfix at it after the DKIM milter (`smtpd_milters = ..., inet:localhost:8893`), so the
//! DKIM `Authentication-Results` it adds are visible here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mailstack::dmarc::{DmarcConfig, DmarcFilter, Specification};
use mailstack::dns::{HickoryResolver, Resolver};
use mailstack::filter::Milter;
use mailstack_examples::shutdown_signal;
use milter_proto::server::{ServerConfig, serve};
use milter_proto::socket::{Listener, SocketSpec, UnixSocketOptions};

/// DMARC milter: evaluates the From domain against SPF and DKIM results, writes OpenDMARC's
/// Authentication-Results, and rejects or quarantines as opendmarc.conf says.
#[derive(Debug, Parser)]
#[command(version, after_help = CONFIG_HELP)]
struct Args {
    /// The OpenDMARC configuration file.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/opendmarc.conf"
    )]
    config: PathBuf,
    /// Where to listen, overriding the file's Socket: unix:/path, local:/path, a bare path,
    /// inet:host:port, inet:port@host or inet6:port@host.
    #[arg(long, value_name = "SPEC")]
    socket: Option<SocketSpec>,
    /// DNS server to ask (IP:PORT) instead of the ones in /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Option<SocketAddr>,
    /// Check the configuration file and exit.
    #[arg(long)]
    check_config: bool,
}

const CONFIG_HELP: &str = "\
Configuration file options (opendmarc.conf syntax, `Option value`, `#` comments; OpenDMARC's
defaults):
  AuthservID NAME|HOSTNAME      authserv-id written and trusted (default: the MTA's j macro)
  AuthservIDWithJobID yes|no    write NAME/jobid (default no)
  TrustedAuthservIDs a,b,...    upstream authserv-ids whose results are used (default: AuthservID)
  IgnoreAuthenticatedClients yes|no   skip SMTP AUTH clients (default no)
  IgnoreHosts FILE              hosts, .domains, addresses, CIDRs to skip (default 127.0.0.1)
  IgnoreMailFrom d1,d2          From domains to skip
  IgnoreMailTo a1,a2            recipients kept out of the history
  RejectFailures yes|no         reject p=reject failures, tempfail on DNS errors (default no)
  RejectString TEXT             reply text with one %s (default `rejected by DMARC policy for %s`)
  HoldQuarantinedMessages yes|no  quarantine (Postfix hold) p=quarantine failures (default no)
  SPFIgnoreResults yes|no       ignore SPF results in headers (default no)
  SPFSelfValidate yes|no        check SPF here when no usable result was found (default no)
  RequiredHeaders yes|no        reject mail without exactly one usable From (default no)
  RejectMultiValueFrom yes|no   reject a From with addresses in several domains (default no)
  HistoryFile FILE              append per-message records for aggregate reports
  RecordAllMessages yes|no      also record mail from domains without DMARC (default no)
  PublicSuffixList FILE         Organizational Domains (RFC 7489); without it, exact domains only
  Socket SPEC                   where to listen (or --socket)
  UMask OCTAL                   unix socket mode is 0666 & !UMask (default 0666)
  DNSTimeout SECONDS            per DNS query (default 5)
  SoftwareHeader yes|no         add DMARC-Filter: (default no)
  DKIMSelfValidate yes|no       mailstack: verify DKIM here instead of reading upstream results
  DMARCSpecification rfc7489|dmarcbis   mailstack: which DMARC (default rfc7489, as OpenDMARC)
Accepted without effect (warned): AutoRestart AutoRestartCount AutoRestartRate Background
BaseDirectory ChangeRootDirectory PidFile Syslog SyslogFacility SyslogSuccess UserID MilterDebug
LogWhy, FailureReports no, FailureReportsOnNone no.
Refused: failure reports (FailureReports yes, FailureReportsBcc, FailureReportsSentBy,
ReportCommand, CopyFailuresTo), ARC whitelists (DomainWhitelist*); anything else unknown.
Errors name the file and line.";

fn main() -> ExitCode {
    mailstack_examples::logging::stderr("info");
    let args = Args::parse();
    let cfg = match DmarcConfig::read(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmarc-milter: {e}");
            return ExitCode::from(2);
        }
    };
    for (line, name) in &cfg.ignored {
        tracing::warn!(
            "{}:{line}: {name} has no effect in dmarc-milter",
            args.config.display()
        );
    }
    if cfg.specification == Specification::DmarcBis && cfg.public_suffix_list.is_some() {
        tracing::warn!("PublicSuffixList has no effect with DMARCSpecification dmarcbis");
    }
    let spec = match (&args.socket, &cfg.socket) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => match s.parse::<SocketSpec>() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("dmarc-milter: {}: Socket {s:?}: {e}", args.config.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!(
                "dmarc-milter: no socket: set Socket in {} or pass --socket",
                args.config.display()
            );
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: OK", args.config.display());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dmarc-milter: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args.nameserver, cfg, spec)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmarc-milter: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    nameserver: Option<SocketAddr>,
    cfg: DmarcConfig,
    spec: SocketSpec,
) -> Result<(), String> {
    let resolver = match nameserver {
        Some(ns) => HickoryResolver::with_nameserver(ns, cfg.dns_timeout),
        None => HickoryResolver::system(),
    }
    .map_err(|e| format!("resolver: {e}"))?;
    let resolver: Arc<dyn Resolver> = Arc::new(resolver);
    let unix = UnixSocketOptions {
        // Without UMask: 0666, so Postfix's smtpd (user postfix) can connect (as the other
        // example milters).
        mode: Some(0o666 & !cfg.umask.unwrap_or(0)),
        ..UnixSocketOptions::default()
    };
    let filter = Arc::new(DmarcFilter::new(cfg, resolver));
    let listener = Listener::bind(&spec, &unix)
        .await
        .map_err(|e| format!("{spec}: {e}"))?;
    tracing::info!(socket = %spec, "listening");
    serve(
        listener,
        Milter::factory(filter),
        ServerConfig::default(),
        shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}
