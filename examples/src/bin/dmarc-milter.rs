//! `dmarc-milter`: a DMARC milter reading `opendmarc.conf`, a drop-in for OpenDMARC.
//!
//! All the logic is `mailstack::dmarc` (evaluation, enforcement, the `Filter`) served by the
//! generic `mailstack::filter::Milter` adapter, the same code `mailstackd` runs; this binary
//! reads the configuration, builds the resolver and serves the socket.
//!
//! Run: `dmarc-milter --config /etc/opendmarc.conf --socket inet:8893@localhost` and point
//! Postfix at it after the DKIM milter (`smtpd_milters = ..., inet:localhost:8893`), so the
//! DKIM `Authentication-Results` it adds are visible here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mailstack::dmarc::{DmarcConfig, DmarcFilter, Specification};
use mailstack::dns::Resolver;
use mailstack::filter::LiveFilter;
use mailstack::stack::DaemonSettings;
use mailstack::store::HistoryTee;
use mailstack_examples::daemon::{self, ControlArgs, DaemonArgs};
use milter_proto::server::ServerConfig;

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
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(flatten)]
    control: ControlArgs,
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
  UMask OCTAL                   unix socket mode is 0666 & !UMask (default 0660, group
                                postfix when it exists, or --group)
  UserID USER[:GROUP]           run as USER (primary group GROUP) after binding; started as
                                root without it: refused unless --allow-root
  DNSTimeout SECONDS            per DNS query (default 5)
  SoftwareHeader yes|no         add DMARC-Filter: (default no)
  DKIMSelfValidate yes|no       mailstack: verify DKIM here instead of reading upstream results
  DMARCSpecification rfc7489|dmarcbis   mailstack: which DMARC (default rfc7489, as OpenDMARC)
  DomainWhitelist D1,D2         trusted ARC sealers: a DMARC failure whose ARC chain passes,
                                sealed last by one of them, is accepted (trusted_forwarder)
  DomainWhitelistFile FILE      the same, one domain per line; DomainWhitelistSize N (3000)
  ARCVerify yes|no              mailstack: validate ARC chains, write arc= (default no)
  MailstackStore URL|PATH       mailstack: also store each record (besides HistoryFile) in Redis
                                (redis://HOST:PORT/DB, redis+unix:///PATH: shared by several
                                nodes) or an embedded database (absolute PATH); buffered, a
                                store that is down never holds up mail
  FailureReports yes|no         failure reports (RFC 6591/9991, header block only) to ruf=;
                                off by default; FailureReportsOnNone (p=none too),
                                FailureReportsSentBy ADDR (From, default postmaster@host)
  MailstackFailureSMTP FILE     mailstack, required with FailureReports yes: msmtp-style
                                submission file (mode 0600) the reports are sent with
  MailstackFailureRate N/SECS   mailstack: per destination (default 10/3600)
Accepted without effect (warned): AutoRestart AutoRestartCount AutoRestartRate Background
BaseDirectory ChangeRootDirectory PidFile Syslog SyslogFacility SyslogSuccess MilterDebug LogWhy.
Refused: FailureReportsBcc, ReportCommand (reports go by SMTP submission), CopyFailuresTo;
anything else unknown. ARC: DomainWhitelist(File) lists
the trusted ARC sealers (a passing chain sealed last by one of them overrides a DMARC
failure), ARCVerify writes arc=; ARCSeal only seals in mailstackd (warned about here).
Errors name the file and line.
Signals: SIGTERM/SIGINT stop accepting, finish messages in flight, exit. SIGHUP re-reads the
file (new connections get it; open ones finish on the old; a file that does not load is
refused, logged with file and line, and the old one stays in force; the socket, the user and
the resolver take effect at a restart). SIGUSR1 reopens --log-file.";

/// How often the store writer's counters are logged (when they changed).
const STORE_STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

fn main() -> ExitCode {
    let args = Args::parse();
    args.control
        .init_logging("info")
        .unwrap_or_else(|e| fail(e));
    let cfg = DmarcConfig::read(&args.config).unwrap_or_else(|e| fail(e));
    for (line, name) in &cfg.ignored {
        tracing::warn!(
            "{}:{line}: {name} has no effect in dmarc-milter",
            args.config.display()
        );
    }
    if cfg.arc_seal.is_some() {
        tracing::warn!(
            "{}: ARCSeal has no effect in dmarc-milter (mailstackd seals as the last hop); \
             ARC chains are validated",
            args.config.display()
        );
    }
    if cfg.specification == Specification::DmarcBis && cfg.public_suffix_list.is_some() {
        tracing::warn!("PublicSuffixList has no effect with DMARCSpecification dmarcbis");
    }
    let mut file = DaemonSettings::default();
    file.socket.clone_from(&cfg.socket);
    file.socket_mode = cfg.umask.map(|u| 0o666 & !u);
    let opts = args
        .daemon
        .resolve_tool(file, cfg.user.as_ref(), "UserID in opendmarc.conf")
        .unwrap_or_else(|e| fail(format!("{}: {e}", args.config.display())));
    if args.daemon.check_config {
        println!("{}: OK", args.config.display());
        return ExitCode::SUCCESS;
    }
    opts.check_root().unwrap_or_else(|e| fail(e));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(e));
    let result = rt.block_on(async move {
        let resolver = daemon::resolver(&opts.nameservers, cfg.dns_timeout)?;
        // The store is opened once; a reload keeps writing through the same writer (a changed
        // MailstackStore takes effect at a restart).
        let writer = match cfg.store.clone() {
            Some(store) => {
                let writer = store
                    .spawn_writer()
                    .map_err(mailstack::stack::BuildError::from)?;
                writer.log_stats_every(STORE_STATS_EVERY);
                tracing::info!("DMARC records also go to the store: {store}");
                Some(writer)
            }
            None => None,
        };
        let at_exit = writer.clone();
        let make = move |cfg: DmarcConfig, resolver: Arc<dyn Resolver>| {
            let tee_cfg = cfg.clone();
            let failure = mailstack::dmarc::failure::from_config(
                &cfg,
                resolver.clone(),
                &cfg.authserv_id(None),
            )?;
            let mut filter = DmarcFilter::new(cfg, resolver);
            if let Some(r) = failure {
                filter = filter.with_failure_reports(Arc::new(r));
            }
            Ok::<_, mailstack::dmarc::failure::FailureSetupError>(match &writer {
                Some(w) => {
                    filter.with_history(Arc::new(HistoryTee::for_config(&tee_cfg, w.clone())))
                }
                None => filter,
            })
        };
        let filter =
            Arc::new(make(cfg, resolver.clone()).map_err(mailstack::stack::BuildError::from)?);
        let live = Arc::new(LiveFilter::new(filter));
        let path = args.config.clone();
        let rebuild = move || {
            let c = DmarcConfig::read(&path).map_err(|e| e.to_string())?;
            make(c, resolver.clone()).map_err(|e| e.to_string())
        };
        let served =
            daemon::serve_milter_live(&opts, ServerConfig::default(), live, rebuild, &args.control)
                .await;
        if let Some(w) = &at_exit {
            daemon::flush_store_at_exit(w).await;
        }
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ! {
    daemon::fail("dmarc-milter", e)
}
