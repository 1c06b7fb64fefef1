//! `dkim-milter`: a DKIM signing and verifying milter reading `opendkim.conf`, a drop-in for
//! OpenDKIM behind Postfix (`smtpd_milters = unix:/run/opendkim/opendkim.sock`).
//!
//! Mail from `InternalHosts` (default 127.0.0.1 and ::1) or authenticated clients whose From
//! domain has a key is signed (RSA and/or Ed25519); everything else is verified and gets
//! OpenDKIM's `Authentication-Results`. The filter is `mailstack::dkim`; this file is only the
//! command line.
//!
//! Run: `dkim-milter --config /etc/opendkim.conf --socket unix:/run/opendkim/opendkim.sock`.
//! Keys: `dkim-milter genkey -d example.com -s mail` writes `mail.private` and `mail.txt` as
//! opendkim-genkey does (`--type ed25519` for an Ed25519 key).

use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mailstack::dkim::{DkimConfig, DkimFilter};
use mailstack::dkim::{GenKeyOptions, KeyType};
use mailstack::dns::Resolver;
use mailstack::filter::LiveFilter;
use mailstack::stack::DaemonSettings;
use mailstack_examples::daemon::{self, ControlArgs, DaemonArgs, DaemonError};
use milter_proto::server::ServerConfig;

/// DKIM milter: signs mail from internal hosts for your domains and verifies the rest, with
/// OpenDKIM's configuration file and Authentication-Results.
#[derive(Debug, Parser)]
#[command(version, after_help = CONFIG_HELP, args_conflicts_with_subcommands = true)]
struct Args {
    /// The OpenDKIM configuration file.
    #[arg(
        long,
        short = 'x',
        value_name = "FILE",
        default_value = "/etc/opendkim.conf"
    )]
    config: PathBuf,
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(flatten)]
    control: ControlArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate a key pair: SELECTOR.private (PKCS#8 PEM, mode 600) and SELECTOR.txt (the
    /// DNS record in opendkim-genkey's layout).
    Genkey(GenKey),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyKind {
    Rsa,
    Ed25519,
}

#[derive(Debug, clap::Args)]
struct GenKey {
    /// Key type.
    #[arg(long = "type", short = 'k', value_enum, default_value = "rsa")]
    kind: KeyKind,
    /// RSA key size in bits (2048, 3072, 4096, 8192).
    #[arg(long, short = 'b', default_value_t = 2048)]
    bits: usize,
    /// Domain (for the comment, and the owner name with --append-domain).
    #[arg(long, short = 'd', default_value = "localhost")]
    domain: String,
    /// Selector: names the files and the record.
    #[arg(long, short = 's', default_value = "default")]
    selector: String,
    /// Output directory.
    #[arg(long, short = 'D', default_value = ".")]
    directory: PathBuf,
    /// Owner name `<selector>._domainkey.<domain>.` instead of `<selector>._domainkey`.
    #[arg(long, short = 'a')]
    append_domain: bool,
    /// Restrict the key to e-mail (`s=email`).
    #[arg(long, short = 'r')]
    restrict: bool,
    /// Forbid subdomains in i= (`t=s`).
    #[arg(long = "nosubdomains", short = 'S')]
    no_subdomains: bool,
    /// Testing mode (`t=y`).
    #[arg(long = "testmode", short = 't')]
    testing: bool,
    /// A note (`n=`).
    #[arg(long, short = 'n')]
    note: Option<String>,
}

const CONFIG_HELP: &str = "\
Configuration file (opendkim.conf syntax, `Option value`, `#` comments; names case-insensitive):
  Mode sv|s|v                  sign, verify or both (default sv)
  Domain, Selector, KeyFile    single-key signing (Domain is a data set)
  KeyTable, SigningTable       name -> domain:selector:keyfile and sender -> name tables
                               (file:/path, refile:/path for wildcards, csl:a=b,...)
  MultipleSignatures yes       apply every SigningTable match (RSA + Ed25519 on one message)
  SubDomains yes               also sign for subdomains of Domain
  InternalHosts, ExternalIgnoreList, PeerList   peer lists (default InternalHosts 127.0.0.1,::1)
  ExemptDomains                From domains left alone
  Canonicalization h/b         simple or relaxed (default simple/simple)
  SignHeaders, OmitHeaders, OversignHeaders     header lists (`*,+x,-y` edits the default)
  MinimumKeyBits N (1024)  RequireSafeKeys yes|no (yes)  MaximumSignaturesToVerify N (3)
  MaximumHeaders BYTES (65536)  SignatureTTL SECS  ClockDrift SECS (300)  DNSTimeout SECS (5)
  On-Default, On-BadSignature, On-NoSignature, On-KeyNotFound, On-DNSError,
  On-InternalError, On-Security, On-SignatureError   accept|discard|quarantine|reject|tempfail
  AuthservID ID|HOSTNAME       authserv-id (default: the MTA's j macro)
  AlwaysAddARHeader, KeepAuthResults, RemoveOldSignatures, SoftwareHeader   yes|no
  BodyLengthDB DATASET         recipients whose mail is signed with l=
  Nameservers IP,IP            DNS servers; TestPublicKeys FILE replaces DNS (testing)
  Socket SPEC                  where to listen (local:/path, inet:port[@host], inet6:port@host)
  UMask OCTAL                  unix socket mode 0777 & !UMask (default 0660, group postfix
                               when it exists, or --group)
  UserID USER[:GROUP]          run as USER (primary group GROUP) after binding and loading
                               keys; started as root without it: refused unless --allow-root
Accepted without effect (warned): Syslog* LogWhy LogResults Background AutoRestart* PidFile
TrustAnchorFile ResolverConfiguration MilterDebug Quarantine ChangeRootDirectory
FixCRLF. LDAP, SQL/DB data sets, Lua, VBR, ATPS, reputation, statistics and other features
not implemented are refused with file and line.
Signals: SIGTERM/SIGINT stop accepting, finish messages in flight, exit. SIGHUP re-reads the
file, its tables and the keys (new connections get them; open ones finish on the old; a file
that does not load is refused, logged with file and line, and the old one stays in force;
Socket, UserID, UMask and the resolver take effect at a restart). SIGUSR1 reopens --log-file.";

fn main() {
    let args = Args::parse();
    if args.command.is_some() {
        mailstack_examples::logging::stderr("info");
    } else {
        args.control
            .init_logging("info")
            .unwrap_or_else(|e| fail(e));
    }
    if let Some(Cmd::Genkey(g)) = &args.command {
        if let Err(e) = genkey(g) {
            eprintln!("dkim-milter genkey: {e}");
            std::process::exit(1);
        }
        return;
    }
    let cfg = DkimConfig::read(&args.config).unwrap_or_else(|e| fail(e));
    for (line, name) in &cfg.ignored {
        tracing::warn!(
            "{}:{line}: {name} has no effect in dkim-milter",
            args.config.display()
        );
    }
    let resolver = resolver(&args, &cfg).unwrap_or_else(|e| fail(e));
    let mut file = DaemonSettings::default();
    file.socket.clone_from(&cfg.socket);
    file.socket_mode = cfg.umask.map(|u| 0o777 & !u);
    // A Socket that is given must parse; only serving needs one (`opendkim -n` checks a
    // file without Socket too).
    let opts = match args
        .daemon
        .resolve_tool(file, cfg.user.as_ref(), "UserID in opendkim.conf")
    {
        Ok(o) => Some(o),
        Err(DaemonError::NoSocket) => None,
        Err(e) => fail(format!("{}: {e}", args.config.display())),
    };
    let filter = DkimFilter::new(cfg, resolver.clone()).unwrap_or_else(|e| fail(e));
    if args.daemon.check_config {
        println!("{}: OK", args.config.display());
        return;
    }
    let opts = opts.unwrap_or_else(|| {
        fail(format!(
            "{}: Socket is mandatory (or pass --socket)",
            args.config.display()
        ))
    });
    opts.check_root().unwrap_or_else(|e| fail(e));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(e));
    let mut config = ServerConfig::default();
    // Key lookups can take DNSTimeout each; keep Postfix's content timeout at bay.
    config.progress_interval = Some(Duration::from_secs(10));
    let live = Arc::new(LiveFilter::new(Arc::new(filter)));
    let path = args.config.clone();
    let rebuild = move || reload(&path, &resolver);
    if let Err(e) = rt.block_on(daemon::serve_milter_live(
        &opts,
        config,
        live,
        rebuild,
        &args.control,
    )) {
        fail(e);
    }
}

/// What SIGHUP does: the file, its tables and keys read again, over the resolver of the start.
fn reload(path: &std::path::Path, resolver: &Arc<dyn Resolver>) -> Result<DkimFilter, ReloadError> {
    let cfg = DkimConfig::read(path)?;
    Ok(DkimFilter::new(cfg, resolver.clone())?)
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(#[from] mailstack::config::ConfigError),
    #[error(transparent)]
    Keys(#[from] mailstack::dkim::DkimError),
}

fn fail(e: impl std::fmt::Display) -> ! {
    daemon::fail("dkim-milter", e)
}

/// TestPublicKeys replaces DNS; else every --nameserver, or Nameservers (port 53), or
/// /etc/resolv.conf, DNSTimeout per query.
fn resolver(args: &Args, cfg: &DkimConfig) -> Result<Arc<dyn Resolver>, DaemonError> {
    if let Some(path) = &cfg.test_public_keys {
        let keys = mailstack::dkim::test_public_keys(path)
            .map_err(|e| DaemonError::Resolver(e.to_string()))?;
        return Ok(Arc::new(keys));
    }
    let servers: Vec<SocketAddr> = if args.daemon.nameserver.is_empty() {
        cfg.nameservers
            .iter()
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect()
    } else {
        args.daemon.nameserver.clone()
    };
    daemon::resolver(&servers, cfg.dns_timeout)
}

fn genkey(g: &GenKey) -> Result<(), String> {
    let opts = GenKeyOptions {
        key_type: match g.kind {
            KeyKind::Rsa => KeyType::Rsa,
            KeyKind::Ed25519 => KeyType::Ed25519,
        },
        bits: g.bits,
        domain: g.domain.clone(),
        selector: g.selector.clone(),
        append_domain: g.append_domain,
        restrict: g.restrict,
        no_subdomains: g.no_subdomains,
        testing: g.testing,
        note: g.note.clone(),
    };
    let out = mailstack::dkim::generate_key(&opts).map_err(|e| e.to_string())?;
    let private = g.directory.join(format!("{}.private", g.selector));
    let txt = g.directory.join(format!("{}.txt", g.selector));
    for (path, data) in [(&private, &out.private_pem), (&txt, &out.txt)] {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(data.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
