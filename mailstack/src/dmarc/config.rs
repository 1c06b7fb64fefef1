//! Reading `opendmarc.conf` (OpenDMARC 1.4.2 option names and defaults).
//!
//! Supported with OpenDMARC's meaning and default:
//!
//! | option | default | |
//! |---|---|---|
//! | `AuthservID` | the MTA's `j` macro, else this host's name; `HOSTNAME` means this host | authserv-id we write and trust |
//! | `AuthservIDWithJobID` | no | write `id/jobid` |
//! | `TrustedAuthservIDs` | the `AuthservID` | comma list of upstream authserv-ids believed |
//! | `IgnoreAuthenticatedClients` | no | skip mail whose `{auth_authen}` is set |
//! | `IgnoreHosts` | `127.0.0.1` only | file of host names, `.domain` suffixes, addresses and CIDRs to skip |
//! | `IgnoreMailFrom` | empty | comma list of From: domains to skip |
//! | `IgnoreMailTo` | empty | comma list of recipients kept out of the history |
//! | `RejectFailures` | no | reject `p=reject` failures (subject to `pct`), tempfail on errors |
//! | `RejectString` | `rejected by DMARC policy for %s` | reply text; `%s` is the From domain |
//! | `HoldQuarantinedMessages` | no | with `RejectFailures`, `p=quarantine` failures are quarantined (Postfix: hold) |
//! | `SPFIgnoreResults` | no | ignore SPF results found in headers |
//! | `SPFSelfValidate` | no | run our SPF evaluator when no usable SPF result was found |
//! | `RequiredHeaders` | no | reject mail breaking RFC 5322 §3.6 field counts (one From, one Date, at most one Subject, ...) or whose From has no usable domain |
//! | `RejectMultiValueFrom` | no | reject a From with several addresses of different domains (else skip) |
//! | `HistoryFile` | none | where per-message records for aggregate reports go ([`super::history`]) |
//! | `RecordAllMessages` | no | also record mail from domains without a DMARC record |
//! | `PublicSuffixList` | none | Organizational Domains (RFC 7489 §3.2); without it only the exact domain is queried |
//! | `Socket` | none | where the milter listens |
//! | `UMask` | none | octal; `dmarc-milter` gives its unix socket mode `0666 & !UMask` (without it the shared daemon default, 0660) |
//! | `UserID` | none | `user` or `user:group`: `dmarc-milter` switches to it after binding |
//! | `DNSTimeout` | 5 | seconds per DNS query |
//! | `SoftwareHeader` | no | add `DMARC-Filter: <product> <host> <jobid>` |
//! | `DKIMSelfValidate` | no | **mailstack only**: verify DKIM signatures in this process ([`super::dkim`]) instead of reading upstream `dkim=` results |
//! | `MailstackStore` | none | **mailstack only**: also store each record in [`crate::store`]: a Redis URL (`redis://HOST:PORT/DB`, `redis+unix:///PATH`) shared by several nodes, or the absolute path of an embedded database; written through a bounded buffer, never holding up mail |
//! | `DMARCSpecification` | `rfc7489` | **mailstack only**: `rfc7489` (pct, public suffix list, as OpenDMARC) or `dmarcbis` (RFC 9989 DNS tree walk, `t=`, `np=`, no `pct`) |
//! | `DomainWhitelist` | empty | OpenDMARC's name: comma or space list of ARC sealers (`ARC-Seal` `d=`) trusted to vouch for forwarded mail ([`crate::arc`]); a DMARC failure whose ARC chain passes with the newest seal by one of them is accepted (disposition none, override reason `trusted_forwarder`) |
//! | `DomainWhitelistFile` | none | the same, one domain per line (`#` comments); added to `DomainWhitelist` |
//! | `DomainWhitelistSize` | 3000 | most entries the two may hold together (more is a configuration error) |
//! | `ARCVerify` | no | **mailstack only**: validate ARC chains and write `arc=` (on by itself with a `DomainWhitelist` or `ARCSeal`) |
//! | `ARCSeal` | no | **mailstack only**: `mailstackd` adds an ARC set as the last hop of the ADMD (needs the three below); `dmarc-milter` refuses it |
//! | `ARCSealDomain`, `ARCSealSelector`, `ARCSealKeyFile` | none | **mailstack only**: the seal's `d=`, `s=` and RSA key file (PEM; checked as OpenDKIM's `RequireSafeKeys` does) |
//! | `FailureReports` | no | send a failure report (RFC 6591 / RFC 9991: the header block only, never the body) for each DMARC failure of a domain publishing `ruf=` ([`super::failure`]); off by default, as privacy guidance advises |
//! | `FailureReportsOnNone` | no | also for domains publishing `p=none` |
//! | `FailureReportsSentBy` | `postmaster@`host | the reports' `From` |
//! | `MailstackFailureSMTP` | none | **mailstack only**, required with `FailureReports yes`: the msmtp-style submission file (host, port, tls, auth, ...) the reports are sent with |
//! | `MailstackFailureRate` | `10/3600` | **mailstack only**: at most N reports per destination per window of SECONDS |
//!
//! Accepted without effect (listed in [`DmarcConfig::ignored`] so the daemon can warn): process
//! and logging options (`AutoRestart`, `AutoRestartCount`, `AutoRestartRate`, `Background`,
//! `BaseDirectory`, `ChangeRootDirectory`, `PidFile`, `Syslog`, `SyslogFacility`,
//! `SyslogSuccess`, `MilterDebug`, `LogWhy`).
//!
//! Refused by name with file and line: `FailureReportsBcc`, `ReportCommand` (reports are
//! submitted by SMTP) and `CopyFailuresTo`, which this filter does not implement; anything
//! unknown.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigError, ConfigFile, Entry, Syntax};

use super::psl::PublicSuffixList;

/// OpenDMARC's `RejectString` default; `%s` becomes the From domain.
pub(crate) const DEFAULT_REJECT_STRING: &str = "rejected by DMARC policy for %s";
/// The reply text used when `HoldQuarantinedMessages` quarantines (OpenDMARC's, fixed).
pub(crate) const QUARANTINE_STRING: &str = "quarantined by DMARC policy for %s";
/// OpenDMARC's `DNSTimeout` default (5 s).
pub(crate) const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// `AuthservID` / `TrustedAuthservIDs` value that stands for this host's name.
pub(crate) const HOSTNAME_KEYWORD: &str = "HOSTNAME";

/// Which DMARC specification the evaluation follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Specification {
    /// RFC 7489 (what OpenDMARC 1.4 implements): the Organizational Domain comes from the
    /// public suffix list (`PublicSuffixList`), `pct=` samples which failures get the policy.
    #[default]
    Rfc7489,
    /// RFC 9989 ("DMARCbis"): policy discovery and the Organizational Domain by the DNS tree
    /// walk (`psd=`), `pct=` ignored, `t=y` lowers the policy one step, `np=` for
    /// non-existent subdomains. `PublicSuffixList` has no effect.
    DmarcBis,
}

/// One `IgnoreHosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostPattern {
    /// An address with a prefix length (a plain address is a /32 or /128).
    Net(IpAddr, u8),
    /// A host name, compared case-insensitively.
    Name(String),
    /// `.example.com`: any name below that domain.
    Suffix(String),
}

impl HostPattern {
    /// Parses one entry: `addr`, `addr/bits`, `[addr]`, `host` or `.domain`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().trim_start_matches('[').trim_end_matches(']');
        if s.is_empty() {
            return None;
        }
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        if let Ok(ip) = addr.parse::<IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max)?,
                None => max,
            };
            return Some(Self::Net(ip, bits));
        }
        if bits.is_some() {
            return None;
        }
        let name = s.to_ascii_lowercase();
        Some(match name.strip_prefix('.') {
            Some(d) => Self::Suffix(d.to_owned()),
            None => Self::Name(name),
        })
    }

    /// Whether a client with address `ip` and host name `host` matches.
    pub fn matches(&self, ip: Option<IpAddr>, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self {
            Self::Net(net, bits) => ip.is_some_and(|ip| crate::ipnet::contains(*net, *bits, ip)),
            Self::Name(n) => *n == host,
            Self::Suffix(d) => host
                .strip_suffix(d.as_str())
                .is_some_and(|rest| rest.ends_with('.')),
        }
    }
}

/// A parsed `opendmarc.conf`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DmarcConfig {
    /// `AuthservID`; `None`: the MTA's `j` macro, else [`local_hostname`].
    pub authserv_id: Option<String>,
    /// `AuthservIDWithJobID`.
    pub authserv_id_with_job_id: bool,
    /// `TrustedAuthservIDs` (lower-cased); empty: only the authserv-id in force.
    pub trusted_authserv_ids: Vec<String>,
    /// `IgnoreAuthenticatedClients`.
    pub ignore_authenticated_clients: bool,
    /// `IgnoreHosts` entries (default: `127.0.0.1`).
    pub ignore_hosts: Vec<HostPattern>,
    /// `IgnoreMailFrom` domains (lower-cased).
    pub ignore_mail_from: Vec<String>,
    /// `IgnoreMailTo` recipients (lower-cased).
    pub ignore_mail_to: Vec<String>,
    /// `RejectFailures`.
    pub reject_failures: bool,
    /// `RejectString` (one `%s`).
    pub reject_string: String,
    /// `HoldQuarantinedMessages`.
    pub hold_quarantined_messages: bool,
    /// `SPFIgnoreResults`.
    pub spf_ignore_results: bool,
    /// `SPFSelfValidate`.
    pub spf_self_validate: bool,
    /// `RequiredHeaders`.
    pub required_headers: bool,
    /// `RejectMultiValueFrom`.
    pub reject_multi_value_from: bool,
    /// `HistoryFile`.
    pub history_file: Option<PathBuf>,
    /// `RecordAllMessages`.
    pub record_all_messages: bool,
    /// `PublicSuffixList`, loaded.
    pub public_suffix_list: Option<PublicSuffixList>,
    /// `Socket` as written.
    pub socket: Option<String>,
    /// `UMask` (octal).
    pub umask: Option<u32>,
    /// `UserID`: `user` or `user:group` to run as after binding.
    pub user: Option<crate::privs::RunAs>,
    /// `DNSTimeout`.
    pub dns_timeout: Duration,
    /// `SoftwareHeader`.
    pub software_header: bool,
    /// `DKIMSelfValidate` (mailstack only).
    pub dkim_self_validate: bool,
    /// `DMARCSpecification`.
    pub specification: Specification,
    /// `DomainWhitelist` and `DomainWhitelistFile`: trusted ARC sealers (lower case).
    pub trusted_arc_sealers: Vec<String>,
    /// `DomainWhitelistSize`.
    pub trusted_arc_sealers_max: usize,
    /// `ARCVerify` (mailstack only).
    pub arc_verify: bool,
    /// `ARCSeal` with its domain, selector and key (mailstack only).
    pub arc_seal: Option<ArcSealConfig>,
    /// `MailstackStore` (mailstack only).
    pub store: Option<crate::store::StoreConfig>,
    /// Failure reports (`FailureReports yes`, off by default), when on.
    pub failure_reports: Option<FailureReports>,
    /// Options accepted without effect: (line, name).
    pub ignored: Vec<(usize, String)>,
}

/// Failure reports (RFC 6591 / RFC 9991) as `FailureReports yes` turns them on; off by
/// default, since privacy guidance advises against them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureReports {
    /// `FailureReportsOnNone`: also for domains publishing `p=none`.
    pub on_none: bool,
    /// `FailureReportsSentBy`: the reports' `From` (default `postmaster@` this host).
    pub sent_by: String,
    /// `MailstackFailureSMTP` (mailstack only, required): the msmtp-style submission
    /// settings the reports are sent with (OpenDMARC's `ReportCommand` runs sendmail
    /// instead).
    pub smtp: PathBuf,
    /// `MailstackFailureRate N/SECONDS` (mailstack only): at most N reports per destination
    /// per window (default 10 an hour).
    pub rate: (u32, u64),
}

/// OpenDMARC's `DomainWhitelistSize` default.
pub(crate) const DEFAULT_DOMAIN_WHITELIST_SIZE: usize = 3000;

/// `ARCSeal yes` with `ARCSealDomain`, `ARCSealSelector` and `ARCSealKeyFile`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ArcSealConfig {
    /// The sealer, ready to seal.
    pub sealer: crate::arc::ArcSealer,
}

impl DmarcConfig {
    /// Whether ARC chains are validated: `ARCVerify`, or what needs it (a trusted-sealer
    /// list, sealing).
    pub fn validates_arc(&self) -> bool {
        self.arc_verify || !self.trusted_arc_sealers.is_empty() || self.arc_seal.is_some()
    }
}

impl Default for DmarcConfig {
    /// OpenDMARC's defaults.
    fn default() -> Self {
        Self {
            authserv_id: None,
            authserv_id_with_job_id: false,
            trusted_authserv_ids: Vec::new(),
            ignore_authenticated_clients: false,
            ignore_hosts: vec![HostPattern::Net(IpAddr::from([127, 0, 0, 1]), 32)],
            ignore_mail_from: Vec::new(),
            ignore_mail_to: Vec::new(),
            reject_failures: false,
            reject_string: DEFAULT_REJECT_STRING.into(),
            hold_quarantined_messages: false,
            spf_ignore_results: false,
            spf_self_validate: false,
            required_headers: false,
            reject_multi_value_from: false,
            history_file: None,
            record_all_messages: false,
            public_suffix_list: None,
            socket: None,
            umask: None,
            user: None,
            dns_timeout: DEFAULT_DNS_TIMEOUT,
            software_header: false,
            dkim_self_validate: false,
            specification: Specification::Rfc7489,
            trusted_arc_sealers: Vec::new(),
            trusted_arc_sealers_max: DEFAULT_DOMAIN_WHITELIST_SIZE,
            arc_verify: false,
            arc_seal: None,
            store: None,
            failure_reports: None,
            ignored: Vec::new(),
        }
    }
}

/// Options accepted and ignored: process management and logging.
const IGNORED: &[&str] = &[
    "AutoRestart",
    "AutoRestartCount",
    "AutoRestartRate",
    "Background",
    "BaseDirectory",
    "ChangeRootDirectory",
    "PidFile",
    "Syslog",
    "SyslogFacility",
    "SyslogSuccess",
    "MilterDebug",
    "LogWhy",
];

/// Options refused (not implemented), with why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "FailureReportsBcc",
        "failure reports go to the ruf= destinations only",
    ),
    (
        "ReportCommand",
        "failure reports are sent by SMTP submission (MailstackFailureSMTP), not a command",
    ),
    ("CopyFailuresTo", "copying failing mail is not implemented"),
];

/// This host's name ([`crate::config::hostname`]).
pub fn local_hostname() -> String {
    crate::config::hostname()
}

fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

impl DmarcConfig {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(&ConfigFile::read(path, Syntax::Whitespace)?)
    }

    /// Parses `text` as if read from `path` (files it names, such as `IgnoreHosts`, are read).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_file(&ConfigFile::parse(path, text, Syntax::Whitespace)?)
    }

    fn from_file(file: &ConfigFile) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        let mut seal = SealKeys::default();
        let mut failure = FailureKeys::default();
        for e in &file.entries {
            if !seal.apply(file, e)? && !failure.apply(file, e)? {
                cfg.apply(file, e)?;
            }
        }
        cfg.arc_seal = seal.finish(file)?;
        cfg.failure_reports = failure.finish(file)?;
        if cfg.trusted_arc_sealers.len() > cfg.trusted_arc_sealers_max {
            let line = line_of(file, "DomainWhitelistSize")
                .max(line_of(file, "DomainWhitelistFile"))
                .max(line_of(file, "DomainWhitelist"));
            return Err(ConfigError::at(
                &file.path,
                line,
                format_args!(
                    "DomainWhitelist: {} domains, more than DomainWhitelistSize {}",
                    cfg.trusted_arc_sealers.len(),
                    cfg.trusted_arc_sealers_max
                ),
            ));
        }
        if cfg.reject_string.matches("%s").count() != 1 || cfg.reject_string.contains('\n') {
            let line = line_of(file, "RejectString");
            return Err(ConfigError::at(
                &file.path,
                line,
                "RejectString: expected one line with exactly one %s (the From domain)",
            ));
        }
        Ok(cfg)
    }

    fn apply(&mut self, f: &ConfigFile, e: &Entry) -> Result<(), ConfigError> {
        let v = e.value.as_str();
        let key = e.key.as_str();
        match key {
            "AuthservID" => self.authserv_id = Some(non_empty(f, e)?.to_owned()),
            "AuthservIDWithJobID" => self.authserv_id_with_job_id = f.bool(e)?,
            "TrustedAuthservIDs" => self.trusted_authserv_ids = comma_list(v),
            "IgnoreAuthenticatedClients" => self.ignore_authenticated_clients = f.bool(e)?,
            "IgnoreHosts" => self.ignore_hosts = read_hosts(f, e)?,
            "IgnoreMailFrom" => self.ignore_mail_from = comma_list(v),
            "IgnoreMailTo" => self.ignore_mail_to = comma_list(v),
            "RejectFailures" => self.reject_failures = f.bool(e)?,
            "RejectString" => self.reject_string = non_empty(f, e)?.to_owned(),
            "HoldQuarantinedMessages" => self.hold_quarantined_messages = f.bool(e)?,
            "SPFIgnoreResults" => self.spf_ignore_results = f.bool(e)?,
            "SPFSelfValidate" => self.spf_self_validate = f.bool(e)?,
            "RequiredHeaders" => self.required_headers = f.bool(e)?,
            "RejectMultiValueFrom" => self.reject_multi_value_from = f.bool(e)?,
            "HistoryFile" => self.history_file = Some(PathBuf::from(non_empty(f, e)?)),
            "MailstackStore" => {
                let spec = crate::store::StoreConfig::from_spec(non_empty(f, e)?)
                    .map_err(|err| f.error(e, format_args!("MailstackStore: {err}")))?;
                self.store = Some(spec);
            }
            "RecordAllMessages" => self.record_all_messages = f.bool(e)?,
            "PublicSuffixList" => {
                let path = Path::new(non_empty(f, e)?);
                let psl = PublicSuffixList::read(path).map_err(|err| {
                    f.error(
                        e,
                        format_args!("PublicSuffixList: {}: {err}", path.display()),
                    )
                })?;
                self.public_suffix_list = Some(psl);
            }
            "Socket" => self.socket = Some(non_empty(f, e)?.to_owned()),
            "UMask" => {
                let mask = u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o777);
                self.umask = Some(mask.ok_or_else(|| {
                    f.error(
                        e,
                        format_args!("UMask: expected an octal mask, found {v:?}"),
                    )
                })?);
            }
            "UserID" => {
                self.user = Some(
                    v.parse()
                        .map_err(|err| f.error(e, format_args!("UserID: {err}")))?,
                );
            }
            "DNSTimeout" => self.dns_timeout = Duration::from_secs(f.number::<u64>(e)?.max(1)),
            "SoftwareHeader" => self.software_header = f.bool(e)?,
            "DKIMSelfValidate" => self.dkim_self_validate = f.bool(e)?,
            "DMARCSpecification" => {
                self.specification = match v.to_ascii_lowercase().as_str() {
                    "rfc7489" => Specification::Rfc7489,
                    "dmarcbis" | "rfc9989" => Specification::DmarcBis,
                    _ => {
                        return Err(f.error(
                            e,
                            format_args!(
                                "DMARCSpecification: expected rfc7489 or dmarcbis, found {v:?}"
                            ),
                        ));
                    }
                }
            }
            "DomainWhitelist" => self.trusted_arc_sealers.extend(
                v.split([',', ' ', '\t'])
                    .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
                    .filter(|d| !d.is_empty()),
            ),
            "DomainWhitelistFile" => {
                let path = Path::new(non_empty(f, e)?);
                let list = ConfigFile::read(path, Syntax::Whitespace)
                    .map_err(|err| f.error(e, format_args!("DomainWhitelistFile: {err}")))?;
                self.trusted_arc_sealers.extend(
                    list.entries
                        .iter()
                        .map(|d| d.key.trim_end_matches('.').to_ascii_lowercase()),
                );
            }
            "DomainWhitelistSize" => self.trusted_arc_sealers_max = f.number::<usize>(e)?,
            "ARCVerify" => self.arc_verify = f.bool(e)?,
            _ if IGNORED.contains(&key) => self.ignored.push((e.line, key.to_owned())),
            _ => {
                if let Some((_, why)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
                    return Err(f.error(e, format_args!("{key} is not supported: {why}")));
                }
                return Err(f.unknown(e));
            }
        }
        Ok(())
    }

    /// The authserv-id in force: `AuthservID` (`HOSTNAME` = this host), else the MTA's `j`
    /// macro, else this host's name.
    pub fn authserv_id(&self, mta_name: Option<&str>) -> String {
        match self.authserv_id.as_deref() {
            Some(HOSTNAME_KEYWORD) => local_hostname(),
            Some(id) => id.to_owned(),
            None => mta_name
                .filter(|s| !s.is_empty())
                .map_or_else(local_hostname, str::to_owned),
        }
    }

    /// Whether an upstream authserv-id is trusted: equal (case-insensitively) to `ours` or in
    /// `TrustedAuthservIDs` (where `hostname` stands for this host); with
    /// `AuthservIDWithJobID`, `trusted/<job_id>` is accepted too.
    pub fn is_trusted(&self, id: &str, ours: &str, job_id: Option<&str>) -> bool {
        let id = id.to_ascii_lowercase();
        let base = match (self.authserv_id_with_job_id, job_id) {
            (true, Some(job)) => id
                .strip_suffix(&format!("/{}", job.to_ascii_lowercase()))
                .map_or(id.clone(), str::to_owned),
            _ => id.clone(),
        };
        let ours = ours.to_ascii_lowercase();
        [id, base].iter().any(|cand| {
            *cand == ours
                || self.trusted_authserv_ids.iter().any(|t| {
                    t == cand || (t == "hostname" && *cand == local_hostname().to_ascii_lowercase())
                })
        })
    }

    /// Whether the client is in `IgnoreHosts`.
    pub fn ignores_host(&self, ip: Option<IpAddr>, host: &str) -> bool {
        self.ignore_hosts.iter().any(|p| p.matches(ip, host))
    }
}

/// `FailureReports` and its settings, read in any order and checked together.
#[derive(Default)]
struct FailureKeys {
    on: Option<usize>,
    on_none: bool,
    sent_by: Option<String>,
    smtp: Option<PathBuf>,
    rate: Option<(u32, u64)>,
}

impl FailureKeys {
    fn apply(&mut self, f: &ConfigFile, e: &Entry) -> Result<bool, ConfigError> {
        match e.key.as_str() {
            "FailureReports" => self.on = f.bool(e)?.then_some(e.line),
            "FailureReportsOnNone" => self.on_none = f.bool(e)?,
            "FailureReportsSentBy" => {
                let v = non_empty(f, e)?;
                if !v.contains('@') {
                    return Err(f.error(e, "FailureReportsSentBy: expected an address"));
                }
                self.sent_by = Some(v.to_owned());
            }
            "MailstackFailureSMTP" => self.smtp = Some(PathBuf::from(non_empty(f, e)?)),
            "MailstackFailureRate" => {
                let v = non_empty(f, e)?;
                let parsed = v.split_once('/').and_then(|(n, w)| {
                    Some((n.trim().parse::<u32>().ok()?, w.trim().parse::<u64>().ok()?))
                });
                match parsed {
                    Some((n, w)) if n > 0 && w > 0 => self.rate = Some((n, w)),
                    _ => {
                        return Err(f.error(
                            e,
                            "MailstackFailureRate: expected N/SECONDS (e.g. 10/3600), both above 0",
                        ));
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn finish(self, f: &ConfigFile) -> Result<Option<FailureReports>, ConfigError> {
        let Some(line) = self.on else {
            return Ok(None);
        };
        let Some(smtp) = self.smtp else {
            return Err(ConfigError::at(
                &f.path,
                line,
                "FailureReports yes: expected MailstackFailureSMTP (the msmtp-style file the \
                 reports are submitted with)",
            ));
        };
        Ok(Some(FailureReports {
            on_none: self.on_none,
            sent_by: self
                .sent_by
                .unwrap_or_else(|| format!("postmaster@{}", local_hostname())),
            smtp,
            rate: self.rate.unwrap_or((
                super::failure::DEFAULT_RATE_MAX,
                super::failure::DEFAULT_RATE_WINDOW_SECS,
            )),
        }))
    }
}

/// `ARCSeal` and its three settings, read in any order and checked together.
#[derive(Default)]
struct SealKeys {
    on: Option<usize>,
    domain: Option<String>,
    selector: Option<String>,
    key: Option<(usize, PathBuf)>,
}

impl SealKeys {
    /// Takes the entry if it is one of ours.
    fn apply(&mut self, f: &ConfigFile, e: &Entry) -> Result<bool, ConfigError> {
        match e.key.as_str() {
            "ARCSeal" => self.on = f.bool(e)?.then_some(e.line),
            "ARCSealDomain" => self.domain = Some(non_empty(f, e)?.to_owned()),
            "ARCSealSelector" => self.selector = Some(non_empty(f, e)?.to_owned()),
            "ARCSealKeyFile" => self.key = Some((e.line, PathBuf::from(non_empty(f, e)?))),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn finish(self, f: &ConfigFile) -> Result<Option<ArcSealConfig>, ConfigError> {
        let Some(line) = self.on else {
            return Ok(None);
        };
        let (Some(domain), Some(selector), Some((key_line, path))) =
            (self.domain, self.selector, self.key)
        else {
            return Err(ConfigError::at(
                &f.path,
                line,
                "ARCSeal yes: expected ARCSealDomain, ARCSealSelector and ARCSealKeyFile",
            ));
        };
        let at = |msg: String| ConfigError::at(&f.path, key_line, msg);
        let key = crate::dkim::key::PrivateKey::read(&path, true)
            .map_err(|err| at(format!("ARCSealKeyFile: {err}")))?;
        let sealer = crate::arc::ArcSealer::new(&domain, &selector, std::sync::Arc::new(key))
            .map_err(|err| at(format!("ARCSealKeyFile: {}: {err}", path.display())))?;
        Ok(Some(ArcSealConfig { sealer }))
    }
}

fn non_empty<'a>(f: &ConfigFile, e: &'a Entry) -> Result<&'a str, ConfigError> {
    if e.value.is_empty() {
        return Err(f.error(e, format_args!("{}: expected a value", e.key)));
    }
    Ok(&e.value)
}

fn line_of(f: &ConfigFile, key: &str) -> usize {
    f.entries
        .iter()
        .rev()
        .find(|e| e.key == key)
        .map_or(0, |e| e.line)
}

/// Reads an `IgnoreHosts` file: one pattern per line, `#` comments.
fn read_hosts(f: &ConfigFile, e: &Entry) -> Result<Vec<HostPattern>, ConfigError> {
    let path = Path::new(non_empty(f, e)?);
    let file = ConfigFile::read(path, Syntax::Whitespace)
        .map_err(|err| f.error(e, format_args!("IgnoreHosts: {err}")))?;
    file.entries
        .iter()
        .map(|h| {
            let text = format!("{} {}", h.key, h.value);
            HostPattern::parse(&h.key).ok_or_else(|| {
                f.error(
                    e,
                    format_args!(
                        "IgnoreHosts: {}:{}: expected a host name, .domain, address or \
                         address/bits, found {:?}",
                        path.display(),
                        h.line,
                        text.trim()
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DmarcConfig, ConfigError> {
        DmarcConfig::parse(Path::new("/etc/opendmarc.conf"), text)
    }

    #[test]
    fn mailstack_store_takes_a_url_or_a_path() {
        assert!(parse("").unwrap().store.is_none());
        let c = parse("MailstackStore redis+unix:///run/redis/redis.sock\n").unwrap();
        assert_eq!(
            c.store.unwrap().kind,
            crate::store::StoreKind::Redis {
                url: "redis+unix:///run/redis/redis.sock".into()
            }
        );
        let c = parse("MailstackStore /var/lib/mailstack/store.redb\n").unwrap();
        assert!(matches!(
            c.store.unwrap().kind,
            crate::store::StoreKind::Embedded { .. }
        ));
        let e = parse("Socket inet:1@localhost\nMailstackStore store.redb\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("opendmarc.conf") && e.contains(":2") && e.contains("MailstackStore"),
            "{e}"
        );
    }

    #[test]
    fn defaults_are_opendmarcs() {
        let c = parse("").unwrap();
        assert!(!c.reject_failures && !c.spf_self_validate && !c.ignore_authenticated_clients);
        assert_eq!(c.reject_string, "rejected by DMARC policy for %s");
        assert_eq!(c.dns_timeout, Duration::from_secs(5));
        assert_eq!(c.specification, Specification::Rfc7489);
        assert!(c.ignores_host(Some("127.0.0.1".parse().unwrap()), "x"));
        assert!(!c.ignores_host(Some("127.0.0.2".parse().unwrap()), "localhost"));
        assert_eq!(c.authserv_id(Some("mx.example")), "mx.example");
    }

    #[test]
    fn ipv4_mapped_ignore_hosts_match_both_spellings() {
        // Found by fuzzing: a `::ffff:a.b.c.d` entry never matched (the client is compared
        // as IPv4); both spellings are one address now.
        let ip = |s: &str| Some(s.parse().unwrap());
        let p = HostPattern::parse("::ffff:192.0.2.1").unwrap();
        assert!(p.matches(ip("192.0.2.1"), ""));
        assert!(p.matches(ip("::ffff:192.0.2.1"), ""));
        assert!(!p.matches(ip("192.0.2.2"), ""));
        let p = HostPattern::parse("192.0.2.0/24").unwrap();
        assert!(p.matches(ip("::ffff:192.0.2.200"), ""));
    }

    #[test]
    fn debian_sample_config_reads() {
        let c = parse("PidFile /run/opendmarc/opendmarc.pid\nPublicSuffixList /nonexistent\n")
            .unwrap_err();
        assert!(
            c.to_string()
                .starts_with("/etc/opendmarc.conf:2: PublicSuffixList: /nonexistent: "),
            "{c}"
        );
        let c = parse(
            "PidFile /run/opendmarc/opendmarc.pid\nSocket local:/run/opendmarc/opendmarc.sock\n\
             Syslog true\nUMask 0002\nUserID opendmarc\nAuthservID mx.example\n\
             TrustedAuthservIDs mx.example, Upstream.Example\nRejectFailures true\n\
             SPFSelfValidate yes\nDMARCSpecification dmarcbis\nFailureReports false\n",
        )
        .unwrap();
        assert!(c.reject_failures && c.spf_self_validate);
        assert_eq!(
            c.socket.as_deref(),
            Some("local:/run/opendmarc/opendmarc.sock")
        );
        assert_eq!(c.specification, Specification::DmarcBis);
        assert!(c.is_trusted("UPSTREAM.example", "mx.example", None));
        assert!(c.is_trusted("mx.example", "mx.example", None));
        assert!(!c.is_trusted("evil.example", "mx.example", None));
        // PidFile and Syslog; FailureReports false is understood (off).
        assert_eq!(c.ignored.len(), 2);
        assert_eq!(c.failure_reports, None);
        assert_eq!(c.umask, Some(0o002));
        assert_eq!(c.user, Some("opendmarc".parse().unwrap()));
        assert_eq!(c.ignored[0], (1, "PidFile".into()));
    }

    #[test]
    fn failure_reports_are_off_unless_turned_on() {
        assert_eq!(parse("").unwrap().failure_reports, None);
        let c = parse(
            "MailstackFailureSMTP /etc/mailstack/msmtprc\nFailureReports yes\n\
             FailureReportsSentBy dmarc-failures@mx.example\nMailstackFailureRate 3/60\n",
        )
        .unwrap();
        assert_eq!(
            c.failure_reports,
            Some(FailureReports {
                on_none: false,
                sent_by: "dmarc-failures@mx.example".into(),
                smtp: "/etc/mailstack/msmtprc".into(),
                rate: (3, 60),
            })
        );
    }

    #[test]
    fn unsupported_and_unknown_are_refused_by_name_and_line() {
        let e = parse("RejectFailures yes\nFailureReports yes\n").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "/etc/opendmarc.conf:2: FailureReports yes: expected MailstackFailureSMTP"
            ),
            "{e}"
        );
        let e = parse("MailstackFailureRate 10\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/opendmarc.conf:1: MailstackFailureRate: expected N/SECONDS"),
            "{e}"
        );
        let e = parse("FailureReportsBcc a@b.example\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/opendmarc.conf:1: FailureReportsBcc is not supported"),
            "{e}"
        );
        let e = parse("UserID :opendmarc\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/opendmarc.conf:1: UserID: expected user"),
            "{e}"
        );
        let e = parse("Bogus 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/opendmarc.conf:1: unknown option \"Bogus\""
        );
        let e = parse("RejectString no domain here\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/opendmarc.conf:1: RejectString")
        );
        let e = parse("DMARCSpecification rfc1\n").unwrap_err();
        assert!(e.to_string().contains("expected rfc7489 or dmarcbis"));
        let e = parse("SPFSelfValidate perhaps\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/opendmarc.conf:1: SPFSelfValidate: expected yes or no, found \"perhaps\""
        );
    }

    #[test]
    fn ignore_hosts_file_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("ignore.hosts");
        std::fs::write(
            &hosts,
            "# local\n127.0.0.1\n10.0.0.0/8\n::1\n.internal.example\nrelay.example\n",
        )
        .unwrap();
        let c = parse(&format!("IgnoreHosts {}\n", hosts.display())).unwrap();
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(c.ignores_host(ip("10.1.2.3"), "unknown"));
        assert!(c.ignores_host(ip("::1"), ""));
        assert!(c.ignores_host(ip("::ffff:10.0.0.1"), ""));
        assert!(c.ignores_host(ip("192.0.2.1"), "a.internal.example"));
        assert!(!c.ignores_host(ip("192.0.2.1"), "internal.example"));
        assert!(c.ignores_host(ip("192.0.2.1"), "RELAY.example."));
        assert!(!c.ignores_host(ip("192.0.2.1"), "other.example"));
        std::fs::write(&hosts, "10.0.0.0/99\n").unwrap();
        let e = parse(&format!("\nIgnoreHosts {}\n", hosts.display())).unwrap_err();
        assert!(e.to_string().contains(":2: IgnoreHosts: "), "{e}");
        assert!(
            e.to_string()
                .contains("ignore.hosts:1: expected a host name"),
            "{e}"
        );
    }

    #[test]
    fn job_id_suffix_is_trusted_only_when_configured() {
        let c = parse("AuthservID mx.example\nAuthservIDWithJobID yes\n").unwrap();
        assert!(c.is_trusted("mx.example/ABC123", "mx.example", Some("ABC123")));
        assert!(!c.is_trusted("mx.example/OTHER", "mx.example", Some("ABC123")));
        let c = parse("AuthservID mx.example\n").unwrap();
        assert!(!c.is_trusted("mx.example/ABC123", "mx.example", Some("ABC123")));
    }

    #[test]
    fn arc_options() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("sealers");
        std::fs::write(&list, "# forwarders\nLists.Example.\nfwd.example\n").unwrap();
        let c = parse(&format!(
            "DomainWhitelist a.example, B.example\nDomainWhitelistFile {}\n",
            list.display()
        ))
        .unwrap();
        assert_eq!(
            c.trusted_arc_sealers,
            ["a.example", "b.example", "lists.example", "fwd.example"]
        );
        assert!(c.validates_arc() && c.arc_seal.is_none());
        assert!(!parse("").unwrap().validates_arc(), "ARC is off by default");
        assert!(parse("ARCVerify yes\n").unwrap().validates_arc());
        assert!(parse("ARCSeal no\n").unwrap().arc_seal.is_none());
        let e = parse("DomainWhitelistSize 1\nDomainWhitelist a.example b.example\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/opendmarc.conf:2: DomainWhitelist: 2 domains, more than DomainWhitelistSize 1"
        );
        let e = parse("\nARCSeal yes\nARCSealDomain a.example\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/opendmarc.conf:2: ARCSeal yes: expected ARCSealDomain, ARCSealSelector and \
             ARCSealKeyFile"
        );
        let seal = |key: &Path| {
            parse(&format!(
                "ARCSeal yes\nARCSealDomain A.example\nARCSealSelector arc\nARCSealKeyFile {}\n",
                key.display()
            ))
        };
        let e = seal(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/opendmarc.conf:4: ARCSealKeyFile: "),
            "{e}"
        );
        let write = |name: &str, kind| {
            let g = crate::dkim::key::generate(&crate::dkim::key::GenKeyOptions {
                key_type: kind,
                ..Default::default()
            })
            .unwrap();
            let path = dir.path().join(name);
            std::fs::write(&path, g.private_pem).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        let ed = write("ed.pem", crate::dkim::key::KeyType::Ed25519);
        let e = seal(&ed).unwrap_err();
        assert!(e.to_string().contains("needs an RSA key"), "{e}");
        let rsa = write("rsa.pem", crate::dkim::key::KeyType::Rsa);
        let c = seal(&rsa).unwrap();
        assert_eq!(c.arc_seal.as_ref().unwrap().sealer.domain(), "a.example");
        assert!(c.validates_arc(), "sealing validates the chain it seals on");
        // A key file others may read is refused, as OpenDKIM's RequireSafeKeys does.
        std::fs::set_permissions(&rsa, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(seal(&rsa).is_err());
    }
}
