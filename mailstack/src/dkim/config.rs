//! Reading `opendkim.conf` (OpenDKIM 2.11 option names, defaults and data sets).
//!
//! Option names are case-insensitive, as in OpenDKIM. Supported with OpenDKIM's meaning:
//! `Mode`, `Domain`, `SubDomains`, `Selector`, `KeyFile`, `KeyTable`, `SigningTable`,
//! `MultipleSignatures`, `InternalHosts` (default `127.0.0.1`, `::1`), `ExternalIgnoreList`,
//! `PeerList`, `ExemptDomains`, `Canonicalization` (default `simple/simple`),
//! `SignatureAlgorithm`, `SignHeaders` (with `*,+x` / `*,-x` edits), `OmitHeaders`,
//! `OversignHeaders`, `MinimumKeyBits` (1024), `RequireSafeKeys` (yes),
//! `MaximumSignaturesToVerify` (3), `MaximumHeaders` (65536), `On-Default`,
//! `On-BadSignature` (accept), `On-NoSignature` (accept), `On-KeyNotFound` (accept),
//! `On-DNSError` (tempfail), `On-InternalError` (tempfail), `On-Security` (tempfail),
//! `On-SignatureError` (reject), `AuthservID` (default: the MTA's `j` macro; `HOSTNAME` = this
//! host), `AlwaysAddARHeader`, `KeepAuthResults`, `RemoveOldSignatures`, `SignatureTTL`,
//! `ClockDrift` (300), `DNSTimeout` (5), `Nameservers`, `BodyLengthDB`, `TestPublicKeys`,
//! `Socket`, `UMask`, `UserID` (`user[:group]`: the daemon switches to it after binding and
//! loading keys), `SoftwareHeader`, `Include` (5 levels), `DontSignMailTo`,
//! `MacroList` (`name[=value1|value2]`), `StrictHeaders`, `RequiredHeaders`,
//! `RequestReports`, `SendReports no`.
//!
//! Accepted without effect (listed in [`DkimConfig::ignored`] for a warning): process and
//! logging options (`Syslog`, `SyslogSuccess`, `SyslogFacility`, `SyslogName`, `LogWhy`,
//! `LogResults`, `Background`, `AutoRestart*`, `PidFile`, `TrustAnchorFile`,
//! `ResolverConfiguration`, `MilterDebug`, `Quarantine`, `ChangeRootDirectory`, `FixCRLF`,
//! `TemporaryDirectory`, `KeepTemporaryFiles`, `ResolverTracing`, `DisableCryptoInit`,
//! `EnableCoredumps`, and `ReportAddress`/`ReportBccAddress`, used only by reports).
//!
//! Refused by name with file and line: LDAP (`LDAP*`), SQL and other databases (`dsn:`,
//! `db:`... data sets, `QueryCache`), Lua (`*PolicyScript`), VBR (`VBR-*`), reputation and
//! statistics (`Reputation*`, `Statistics*`), ATPS, RBL, `ReplaceRules`/`ReplaceHeaders`,
//! `POPDBFile`, `ResignAll`/`ResignMailTo`, DNSSEC policy (`BogusKey`, `UnprotectedKey`),
//! `SetupPolicyScript`, `SenderHeaders`, `MTA`, `RemoveARAll`/`RemoveARFrom`,
//! `AuthservIDWithJobID`, `SendReports yes` (reports would need us to submit mail),
//! `ConditionalSignatures` (not an OpenDKIM 2.11 option), `MustBeSigned`,
//! `TrustSignaturesFrom`, `BaseDirectory` and a few more, each named in the error. Any other
//! unknown name is an error too.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::dataset::{Dataset, PeerList};
use crate::config::{ConfigError, ConfigFile, Entry, Syntax};
use crate::filter::OnAction;

/// OpenDKIM's default `MaximumSignaturesToVerify` (opendkim.conf(5)).
pub(crate) const DEFAULT_MAX_SIGNATURES: usize = 3;
/// OpenDKIM's default `MaximumHeaders`: largest header block accepted, in bytes.
pub(crate) const DEFAULT_MAX_HEADERS: usize = 65536;
/// OpenDKIM's default `MinimumKeyBits`.
pub(crate) const DEFAULT_MIN_KEY_BITS: usize = 1024;
/// OpenDKIM's default `ClockDrift` (seconds of tolerance for `t=` and `x=`).
pub(crate) const DEFAULT_CLOCK_DRIFT: u64 = 300;
/// OpenDKIM's default `DNSTimeout`.
pub(crate) const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// How deep `Include` may nest (opendkim.conf(5)).
pub(crate) const MAX_INCLUDE_DEPTH: usize = 5;

/// RFC 6376 §5.4.1's "SHOULD be signed" list, OpenDKIM's default `SignHeaders`.
pub(crate) const DEFAULT_SIGN_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
];

/// An `On-*` value, full or one-letter (`accept`/`a`, `discard`/`d`, `quarantine`/`q`,
/// `reject`/`r`, `tempfail`/`t`).
fn on_action(v: &str) -> Option<OnAction> {
    Some(match v.to_ascii_lowercase().as_str() {
        "accept" | "a" => OnAction::Accept,
        "discard" | "d" => OnAction::Discard,
        "quarantine" | "q" => OnAction::Quarantine,
        "reject" | "r" => OnAction::Reject,
        "tempfail" | "t" => OnAction::Tempfail,
        _ => return None,
    })
}

/// The `On-*` actions with OpenDKIM's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnActions {
    /// `On-BadSignature` (accept): a signature failed.
    pub bad_signature: OnAction,
    /// `On-NoSignature` (accept): the message carries no signature.
    pub no_signature: OnAction,
    /// `On-KeyNotFound` (accept): no key record.
    pub key_not_found: OnAction,
    /// `On-DNSError` (tempfail): a transient DNS failure.
    pub dns_error: OnAction,
    /// `On-InternalError` (tempfail): our own failure, or a message over the bounds.
    pub internal_error: OnAction,
    /// `On-Security` (tempfail): a message we refuse to process (e.g. too many headers).
    pub security: OnAction,
    /// `On-SignatureError` (reject): a message we should sign but cannot.
    pub signature_error: OnAction,
}

impl Default for OnActions {
    fn default() -> Self {
        Self {
            bad_signature: OnAction::Accept,
            no_signature: OnAction::Accept,
            key_not_found: OnAction::Accept,
            dns_error: OnAction::Tempfail,
            internal_error: OnAction::Tempfail,
            security: OnAction::Tempfail,
            signature_error: OnAction::Reject,
        }
    }
}

/// A canonicalization algorithm (RFC 6376 §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    /// `simple`.
    Simple,
    /// `relaxed`.
    Relaxed,
}

impl Canon {
    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Relaxed => "relaxed",
        }
    }

    /// Parses `simple`/`relaxed` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "simple" => Some(Self::Simple),
            "relaxed" => Some(Self::Relaxed),
            _ => None,
        }
    }

    /// Parses `header[/body]` (body defaults to simple, RFC 6376 §3.5 `c=`).
    pub fn parse_pair(s: &str) -> Option<(Self, Self)> {
        let (h, b) = s.split_once('/').unwrap_or((s, "simple"));
        Some((Self::parse(h.trim())?, Self::parse(b.trim())?))
    }
}

/// The parsed configuration. [`DkimConfig::default`] is OpenDKIM with an empty file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DkimConfig {
    /// The file read (for messages).
    pub path: PathBuf,
    /// `Mode` contains `s`.
    pub sign: bool,
    /// `Mode` contains `v`.
    pub verify: bool,
    /// `Domain`: domains to sign for in single-key mode.
    pub domains: Dataset,
    /// `SubDomains`.
    pub sub_domains: bool,
    /// `Selector`.
    pub selector: Option<String>,
    /// `KeyFile`.
    pub key_file: Option<PathBuf>,
    /// `KeyTable`.
    pub key_table: Option<Dataset>,
    /// `SigningTable`.
    pub signing_table: Option<Dataset>,
    /// `MultipleSignatures`.
    pub multiple_signatures: bool,
    /// `InternalHosts`.
    pub internal_hosts: PeerList,
    /// `ExternalIgnoreList` (only silences a log line, as in OpenDKIM).
    pub external_ignore: PeerList,
    /// `PeerList`: clients whose mail is neither signed nor verified.
    pub peer_list: PeerList,
    /// `ExemptDomains`: From domains neither signed nor verified.
    pub exempt_domains: Dataset,
    /// `Canonicalization` (header, body) for signing.
    pub canonicalization: (Canon, Canon),
    /// `SignHeaders` (lower case, From included).
    pub sign_headers: Vec<String>,
    /// `OversignHeaders` (lower case).
    pub oversign_headers: Vec<String>,
    /// `MinimumKeyBits`.
    pub minimum_key_bits: usize,
    /// `RequireSafeKeys`.
    pub require_safe_keys: bool,
    /// `MaximumSignaturesToVerify`.
    pub max_signatures: usize,
    /// `MaximumHeaders` (bytes; 0 = OpenDKIM's "no limit", which we turn into the default).
    pub max_headers: usize,
    /// The `On-*` actions.
    pub actions: OnActions,
    /// `AuthservID` (`None`: the MTA's `j` macro, else this host name).
    pub authserv_id: Option<String>,
    /// `AlwaysAddARHeader`.
    pub always_add_ar: bool,
    /// `KeepAuthResults`.
    pub keep_auth_results: bool,
    /// `RemoveOldSignatures`.
    pub remove_old_signatures: bool,
    /// `SoftwareHeader`.
    pub software_header: bool,
    /// `SignatureTTL` (seconds; 0 = no `x=`).
    pub signature_ttl: u64,
    /// `ClockDrift`.
    pub clock_drift: u64,
    /// `DNSTimeout`.
    pub dns_timeout: Duration,
    /// `Nameservers`.
    pub nameservers: Vec<IpAddr>,
    /// `BodyLengthDB`: recipients for which `l=` is added.
    pub body_length_db: Option<Dataset>,
    /// `DontSignMailTo`: a message with any of these recipients is not signed.
    pub dont_sign_mail_to: Option<Dataset>,
    /// `MacroList`: (macro name without braces, allowed values; empty = any value).
    pub macro_list: Vec<(String, Vec<String>)>,
    /// `StrictHeaders`: refuse to process a message whose header counts break RFC 5322
    /// §3.6 ([`super::sign::strict_headers_problem`]).
    pub strict_headers: bool,
    /// `RequiredHeaders`: reject such messages.
    pub required_headers: bool,
    /// `RequestReports`: add `r=y` (RFC 6651) to our signatures.
    pub request_reports: bool,
    /// `TestPublicKeys`: a file of `name record` lines used instead of DNS.
    pub test_public_keys: Option<PathBuf>,
    /// `Socket`.
    pub socket: Option<String>,
    /// `UMask`.
    pub umask: Option<u32>,
    /// `UserID`: `user` or `user:group` to run as after binding and loading keys.
    pub user: Option<crate::privs::RunAs>,
    /// Options accepted without effect: (line, name).
    pub ignored: Vec<(usize, String)>,
}

impl Default for DkimConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            sign: true,
            verify: true,
            domains: Dataset::default(),
            sub_domains: false,
            selector: None,
            key_file: None,
            key_table: None,
            signing_table: None,
            multiple_signatures: false,
            internal_hosts: PeerList::loopback(),
            external_ignore: PeerList::default(),
            peer_list: PeerList::default(),
            exempt_domains: Dataset::default(),
            canonicalization: (Canon::Simple, Canon::Simple),
            sign_headers: DEFAULT_SIGN_HEADERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            oversign_headers: Vec::new(),
            minimum_key_bits: DEFAULT_MIN_KEY_BITS,
            require_safe_keys: true,
            max_signatures: DEFAULT_MAX_SIGNATURES,
            max_headers: DEFAULT_MAX_HEADERS,
            actions: OnActions::default(),
            authserv_id: None,
            always_add_ar: false,
            keep_auth_results: false,
            remove_old_signatures: false,
            software_header: false,
            signature_ttl: 0,
            clock_drift: DEFAULT_CLOCK_DRIFT,
            dns_timeout: DEFAULT_DNS_TIMEOUT,
            nameservers: Vec::new(),
            body_length_db: None,
            dont_sign_mail_to: None,
            macro_list: Vec::new(),
            strict_headers: false,
            required_headers: false,
            request_reports: false,
            test_public_keys: None,
            socket: None,
            umask: None,
            user: None,
            ignored: Vec::new(),
        }
    }
}

/// Accepted, no effect (process management, logging, DNSSEC trust anchors).
const IGNORED: &[&str] = &[
    "syslog",
    "syslogsuccess",
    "syslogfacility",
    "syslogname",
    "logwhy",
    "logresults",
    "background",
    "autorestart",
    "autorestartrate",
    "autorestartcount",
    "pidfile",
    "trustanchorfile",
    "resolverconfiguration",
    "milterdebug",
    "quarantine",
    "dnsconnect",
    "fixcrlf",
    "changerootdirectory",
    "temporarydirectory",
    "keeptemporaryfiles",
    "resolvertracing",
    "disablecryptoinit",
    "enablecoredumps",
];

/// Refused by name: features not implemented, which must not be ignored silently.
const REFUSED_PREFIXES: &[(&str, &str)] = &[
    ("ldap", "LDAP"),
    ("vbr-", "VBR"),
    ("reputation", "reputation"),
    ("statistics", "statistics"),
    ("atps", "ATPS"),
    ("rbl", "RBL"),
];
const REFUSED: &[(&str, &str)] = &[
    ("screenpolicyscript", "Lua"),
    ("setuppolicyscript", "Lua"),
    ("signerpolicyscript", "Lua"),
    ("finalpolicyscript", "Lua"),
    ("querycache", "the query cache"),
    (
        "replacerules",
        "ReplaceRules (experimental in OpenDKIM: POSIX regular-expression rewriting of \
         header fields before signing, which needs a regex engine this crate does not carry)",
    ),
    ("replaceheaders", "header rewriting"),
    ("popdbfile", "POP-before-SMTP"),
    ("resignall", "re-signing"),
    ("resignmailto", "re-signing"),
    ("boguskey", "DNSSEC policy"),
    ("unprotectedkey", "DNSSEC policy"),
    ("senderheaders", "SenderHeaders"),
    ("mta", "MTA (daemon_name) matching"),
    ("signingdomain", "SigningDomain"),
    ("identityheader", "IdentityHeader"),
    ("diagnostics", "z= diagnostics"),
    ("diagnosticdirectory", "z= diagnostics"),
    (
        "conditionalsignatures",
        "ConditionalSignatures (not an OpenDKIM 2.11 option: it is absent from its \
         opendkim.conf(5) and binary; RFC-draft conditional signatures)",
    ),
    ("lowercasesignerdomain", "LowerCaseSignerDomain"),
    ("removearall", "widening Authentication-Results removal"),
    ("removearfrom", "widening Authentication-Results removal"),
    ("authservidwithjobid", "AuthservIDWithJobID"),
    ("allowsha1only", "SHA-1-only operation"),
    ("weaksyntaxchecks", "WeakSyntaxChecks"),
    ("domainkeyscompat", "DomainKeys"),
    ("mustbesigned", "MustBeSigned"),
    ("addallsignatureresults", "AddAllSignatureResults"),
    ("singleauthresult", "SingleAuthResult"),
    ("smtpuri", "failure reports"),
    ("redirectfailuresto", "RedirectFailuresTo"),
    ("mtacommand", "MTACommand"),
    ("basedirectory", "BaseDirectory"),
    ("trustsignaturesfrom", "TrustSignaturesFrom"),
    ("testdnsdata", "TestDNSData (use TestPublicKeys)"),
    ("ignoremalformedmail", "IgnoreMalformedMail"),
    ("identityheaderremove", "IdentityHeader"),
];

impl DkimConfig {
    /// Reads `opendkim.conf` at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg = Self {
            path: path.to_owned(),
            ..Self::default()
        };
        cfg.load(path, 0)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Parses `text` as if read from `path` (`Include` still reads files).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut cfg = Self {
            path: path.to_owned(),
            ..Self::default()
        };
        let file = ConfigFile::parse(path, text, Syntax::Whitespace)?;
        cfg.apply(&file, 0)?;
        cfg.check()?;
        Ok(cfg)
    }

    fn load(&mut self, path: &Path, depth: usize) -> Result<(), ConfigError> {
        let file = ConfigFile::read(path, Syntax::Whitespace)?;
        self.apply(&file, depth)
    }

    fn apply(&mut self, f: &ConfigFile, depth: usize) -> Result<(), ConfigError> {
        let mut on_default = None;
        let mut specific = Vec::new();
        for e in &f.entries {
            let key = e.key.to_ascii_lowercase();
            if let Some(which) = key.strip_prefix("on-") {
                let action = on_action(&e.value).ok_or_else(|| {
                    f.error(
                        e,
                        format_args!(
                            "{}: expected accept, discard, quarantine, reject or tempfail, \
                             found {:?}",
                            e.key, e.value
                        ),
                    )
                })?;
                if which == "default" {
                    on_default = Some(action);
                } else {
                    specific.push((e, which.to_owned(), action));
                }
                continue;
            }
            self.option(f, e, &key, depth)?;
        }
        if let Some(a) = on_default {
            self.actions = OnActions {
                bad_signature: a,
                no_signature: a,
                key_not_found: a,
                dns_error: a,
                internal_error: a,
                security: a,
                signature_error: a,
            };
        }
        for (e, which, a) in specific {
            let slot = match which.as_str() {
                "badsignature" => &mut self.actions.bad_signature,
                "nosignature" => &mut self.actions.no_signature,
                "keynotfound" => &mut self.actions.key_not_found,
                "dnserror" => &mut self.actions.dns_error,
                "internalerror" => &mut self.actions.internal_error,
                "security" => &mut self.actions.security,
                "signatureerror" => &mut self.actions.signature_error,
                _ => return Err(f.unknown(e)),
            };
            *slot = a;
        }
        Ok(())
    }

    fn option(
        &mut self,
        f: &ConfigFile,
        e: &Entry,
        key: &str,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let ds = |e: &Entry| Dataset::parse(&e.value).map_err(|m| f.error(e, m));
        let peers =
            |e: &Entry| ds(e).and_then(|d| PeerList::from_dataset(&d).map_err(|m| f.error(e, m)));
        let list =
            |e: &Entry| ds(e).map(|d| d.keys().map(str::to_ascii_lowercase).collect::<Vec<_>>());
        match key {
            "mode" => {
                let v = e.value.to_ascii_lowercase();
                if v.is_empty() || !v.chars().all(|c| c == 's' || c == 'v') {
                    return Err(f.error(e, format_args!("Mode: expected s, v or sv, found {v:?}")));
                }
                self.sign = v.contains('s');
                self.verify = v.contains('v');
            }
            "domain" => self.domains = ds(e)?,
            "subdomains" => self.sub_domains = f.bool(e)?,
            "selector" => self.selector = Some(e.value.clone()),
            "keyfile" => self.key_file = Some(PathBuf::from(&e.value)),
            "keytable" => self.key_table = Some(ds(e)?),
            "signingtable" => self.signing_table = Some(ds(e)?),
            "multiplesignatures" => self.multiple_signatures = f.bool(e)?,
            "internalhosts" => self.internal_hosts = peers(e)?,
            "externalignorelist" => self.external_ignore = peers(e)?,
            "peerlist" => self.peer_list = peers(e)?,
            "exemptdomains" => self.exempt_domains = ds(e)?,
            "canonicalization" => {
                self.canonicalization = Canon::parse_pair(&e.value).ok_or_else(|| {
                    f.error(
                        e,
                        format_args!(
                            "Canonicalization: expected simple or relaxed, optionally \
                             header/body, found {:?}",
                            e.value
                        ),
                    )
                })?;
            }
            "signaturealgorithm" => match e.value.to_ascii_lowercase().as_str() {
                "rsa-sha256" | "ed25519-sha256" => {}
                other => {
                    return Err(f.error(
                        e,
                        format_args!(
                            "SignatureAlgorithm: expected rsa-sha256 or ed25519-sha256 \
                             (rsa-sha1 signing is not offered, RFC 8301), found {other:?}"
                        ),
                    ));
                }
            },
            "signheaders" => self.sign_headers = edit_header_list(&list(e)?),
            "omitheaders" => {
                let omit = list(e)?;
                self.sign_headers
                    .retain(|h| h == "from" || !omit.contains(h));
            }
            "oversignheaders" => self.oversign_headers = list(e)?,
            "minimumkeybits" => self.minimum_key_bits = f.number(e)?,
            "requiresafekeys" => self.require_safe_keys = f.bool(e)?,
            "maximumsignaturestoverify" => self.max_signatures = f.number(e)?,
            "maximumheaders" => {
                self.max_headers = match f.number(e)? {
                    0 => DEFAULT_MAX_HEADERS,
                    n => n,
                };
            }
            "authservid" => self.authserv_id = Some(e.value.clone()),
            "alwaysaddarheader" => self.always_add_ar = f.bool(e)?,
            "keepauthresults" => self.keep_auth_results = f.bool(e)?,
            "removeoldsignatures" => self.remove_old_signatures = f.bool(e)?,
            "softwareheader" => self.software_header = f.bool(e)?,
            "signaturettl" => self.signature_ttl = f.number(e)?,
            "clockdrift" => self.clock_drift = f.number(e)?,
            "dnstimeout" => self.dns_timeout = Duration::from_secs(f.number(e)?),
            "nameservers" => {
                self.nameservers = e
                    .value
                    .split(',')
                    .map(|s| {
                        s.trim().parse().map_err(|_| {
                            f.error(e, format_args!("Nameservers: {s:?} is not an IP address"))
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "bodylengthdb" => self.body_length_db = Some(ds(e)?),
            "dontsignmailto" => self.dont_sign_mail_to = Some(ds(e)?),
            "macrolist" => {
                self.macro_list = ds(e)?
                    .entries
                    .into_iter()
                    .map(|(name, values)| {
                        let name = name
                            .trim_start_matches('{')
                            .trim_end_matches('}')
                            .to_owned();
                        let values = values
                            .split('|')
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(str::to_owned)
                            .collect();
                        (name, values)
                    })
                    .collect();
            }
            "strictheaders" => self.strict_headers = f.bool(e)?,
            "requiredheaders" => self.required_headers = f.bool(e)?,
            "requestreports" => self.request_reports = f.bool(e)?,
            // Reports (RFC 6651) are not sent: this filter submits no mail of its own. `no`
            // is accepted; `yes` is refused, as is any other feature we lack.
            "sendreports" => {
                if f.bool(e)? {
                    return Err(f.error(
                        e,
                        "SendReports: failure reports (RFC 6651) are not sent by this filter, \
                         which submits no mail of its own; set SendReports no",
                    ));
                }
            }
            // Only used by SendReports, which is off.
            "reportaddress" | "reportbccaddress" => self.ignored.push((e.line, e.key.clone())),
            "testpublickeys" => self.test_public_keys = Some(PathBuf::from(&e.value)),
            "socket" => self.socket = Some(e.value.clone()),
            "umask" => {
                self.umask = Some(u32::from_str_radix(&e.value, 8).map_err(|_| {
                    f.error(
                        e,
                        format_args!("UMask: expected an octal number, found {:?}", e.value),
                    )
                })?);
            }
            "userid" => {
                self.user = Some(
                    e.value
                        .parse()
                        .map_err(|err| f.error(e, format_args!("UserID: {err}")))?,
                );
            }
            "include" => {
                if depth + 1 >= MAX_INCLUDE_DEPTH {
                    return Err(f.error(
                        e,
                        format_args!("Include: nested deeper than {MAX_INCLUDE_DEPTH} levels"),
                    ));
                }
                self.load(Path::new(&e.value), depth + 1)?;
            }
            k if IGNORED.contains(&k) => self.ignored.push((e.line, e.key.clone())),
            k => {
                let what = REFUSED
                    .iter()
                    .find(|(n, _)| *n == k)
                    .or_else(|| REFUSED_PREFIXES.iter().find(|(p, _)| k.starts_with(p)))
                    .map(|(_, what)| *what);
                return Err(match what {
                    Some(what) => f.error(
                        e,
                        format_args!("{}: {what} is not supported by this filter", e.key),
                    ),
                    None => f.unknown(e),
                });
            }
        }
        Ok(())
    }

    /// OpenDKIM's consistency rules for the signing setup.
    fn check(&self) -> Result<(), ConfigError> {
        let err = |m: &str| ConfigError::at(&self.path, 0, m);
        let single = self.key_file.is_some() || self.selector.is_some();
        if self.key_table.is_some() != self.signing_table.is_some() {
            return Err(err("KeyTable and SigningTable must be used together"));
        }
        if self.key_table.is_some() && self.key_file.is_some() {
            return Err(err(
                "KeyFile is ignored with KeyTable in OpenDKIM; use one or the other",
            ));
        }
        if single
            && self.key_table.is_none()
            && (self.key_file.is_none() || self.selector.is_none())
        {
            return Err(err("single-key signing needs Domain, Selector and KeyFile"));
        }
        Ok(())
    }

    /// `BodyLengthDB`: whether `l=` is added for a message to `rcpts` (any recipient listed,
    /// looked up in OpenDKIM's order, [`Dataset::lookup_address`]).
    pub fn body_length_for<S: AsRef<str>>(&self, rcpts: &[S]) -> bool {
        self.body_length_db.as_ref().is_some_and(|db| {
            rcpts
                .iter()
                .any(|r| db.lookup_address(r.as_ref()).is_some())
        })
    }

    /// `DontSignMailTo`: true if any recipient is listed (OpenDKIM: "an any feature"), looked
    /// up like `BodyLengthDB` ([`Dataset::lookup_address`]).
    pub fn dont_sign_to<S: AsRef<str>>(&self, rcpts: &[S]) -> bool {
        self.dont_sign_mail_to.as_ref().is_some_and(|db| {
            rcpts
                .iter()
                .any(|r| db.lookup_address(r.as_ref()).is_some())
        })
    }

    /// `MacroList`: whether the MTA's macros mark the sender as local (one more reason to
    /// sign, like an authenticated client or `InternalHosts`). True if any listed macro is
    /// set, and, when values are listed, set to one of them (case-sensitive, as
    /// opendkim.conf(5) says). `get` returns a macro's value by name without braces
    /// (`daemon_name`). An empty list is false.
    pub fn macro_list_allows<F: Fn(&str) -> Option<String>>(&self, get: F) -> bool {
        self.macro_list.iter().any(|(name, values)| {
            get(name).is_some_and(|v| values.is_empty() || values.contains(&v))
        })
    }

    /// Whether this configuration can sign at all.
    pub fn has_signing_keys(&self) -> bool {
        self.sign && (self.key_table.is_some() || self.key_file.is_some())
    }
}

/// `SignHeaders`: a plain list replaces the default; `*` followed by `+x`/`-x` edits it. From
/// is always signed (RFC 6376 §5.4).
fn edit_header_list(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if item == "*" {
            out.extend(DEFAULT_SIGN_HEADERS.iter().map(|s| (*s).to_owned()));
        } else if let Some(add) = item.strip_prefix('+') {
            out.push(add.to_owned());
        } else if let Some(del) = item.strip_prefix('-') {
            out.retain(|h| h != del);
        } else {
            out.push(item.clone());
        }
    }
    if !out.iter().any(|h| h == "from") {
        out.insert(0, "from".into());
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<DkimConfig, ConfigError> {
        DkimConfig::parse(Path::new("/etc/opendkim.conf"), t)
    }

    #[test]
    fn defaults_are_opendkims() {
        let c = parse("").unwrap();
        assert!(c.sign && c.verify);
        assert_eq!(c.max_signatures, 3);
        assert_eq!(c.minimum_key_bits, 1024);
        assert!(c.require_safe_keys);
        assert_eq!(c.canonicalization, (Canon::Simple, Canon::Simple));
        assert_eq!(c.actions.bad_signature, OnAction::Accept);
        assert_eq!(c.actions.dns_error, OnAction::Tempfail);
        assert_eq!(c.actions.signature_error, OnAction::Reject);
        assert!(c.internal_hosts.contains(Some("::1".parse().unwrap()), ""));
        assert_eq!(c.sign_headers.len(), DEFAULT_SIGN_HEADERS.len());
    }

    #[test]
    fn debian_style_file() {
        let c = parse(
            "Syslog yes\nUMask 007\nMode sv\nCanonicalization relaxed/simple\n\
             OversignHeaders From\nDomain csl:example.com,example.org\nSelector mail\n\
             KeyFile /etc/dkimkeys/mail.private\nSocket local:/run/opendkim/opendkim.sock\n\
             On-Default reject\nOn-NoSignature accept\nMaximumSignaturesToVerify 5\n\
             InternalHosts 10.0.0.0/8, ::1\nAuthservID mx.example.com\n\
             SignHeaders *,+x-mailer,-cc\n",
        )
        .unwrap();
        assert_eq!(c.canonicalization, (Canon::Relaxed, Canon::Simple));
        assert_eq!(c.oversign_headers, ["from"]);
        assert!(c.domains.contains("EXAMPLE.org"));
        assert_eq!(c.umask, Some(0o007));
        assert_eq!(c.actions.bad_signature, OnAction::Reject);
        assert_eq!(c.actions.no_signature, OnAction::Accept);
        assert_eq!(c.max_signatures, 5);
        assert!(
            !c.internal_hosts
                .contains(Some("127.0.0.1".parse().unwrap()), "")
        );
        assert!(
            c.internal_hosts
                .contains(Some("10.1.2.3".parse().unwrap()), "")
        );
        assert!(c.sign_headers.contains(&"x-mailer".to_owned()));
        assert!(!c.sign_headers.contains(&"cc".to_owned()));
        assert_eq!(c.ignored, [(1, "Syslog".to_owned())]);
        assert_eq!(c.authserv_id.as_deref(), Some("mx.example.com"));
    }

    #[test]
    fn userid_is_user_or_user_group() {
        let c = parse("UserID opendkim:opendkim\n").unwrap();
        let r = c.user.unwrap();
        assert_eq!(
            (r.user.as_str(), r.group.as_deref()),
            ("opendkim", Some("opendkim"))
        );
        assert!(c.ignored.is_empty());
        assert_eq!(
            parse("userid nobody\n").unwrap().user.unwrap().user,
            "nobody"
        );
        let e = parse("Mode sv\nUserID a:b:c\n").unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/opendkim.conf:2: UserID: expected user"),
            "{e}"
        );
    }

    #[test]
    fn refusals_name_file_line_and_option() {
        let e = parse("Mode sv\nLDAPBindUser x\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/opendkim.conf:2: LDAPBindUser: LDAP is not supported by this filter"
        );
        let e = parse("\nVBR-Type x\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/opendkim.conf:2: VBR-Type: VBR"), "{e}");
        let e = parse("SigningTable dsn:mysql://u@h/db\nKeyTable csl:a=b\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/opendkim.conf:1: data set type \"dsn\""),
            "{e}"
        );
        let e = parse("SetupPolicyScript /x.lua\n").unwrap_err().to_string();
        assert!(e.contains(":1: SetupPolicyScript: Lua"), "{e}");
        let e = parse("Bogus 1\n").unwrap_err().to_string();
        assert_eq!(e, "/etc/opendkim.conf:1: unknown option \"Bogus\"");
        let e = parse("On-BadSignature maybe\n").unwrap_err().to_string();
        assert!(e.contains(":1: On-BadSignature: expected accept"), "{e}");
        let e = parse("Canonicalization loose\n").unwrap_err().to_string();
        assert!(e.contains(":1: Canonicalization: expected"), "{e}");
        let e = parse("SignatureAlgorithm rsa-sha1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1: SignatureAlgorithm"), "{e}");
    }

    #[test]
    fn body_length_db_uses_opendkims_lookup_order() {
        let c = parse("BodyLengthDB csl:*@lists.example, .mlm.example\n").unwrap();
        assert!(c.body_length_for(&["<a@example.org>", "<dev@lists.example>"]));
        assert!(c.body_length_for(&["x@a.mlm.example"]));
        assert!(!c.body_length_for(&["x@example.org"]));
        assert!(!parse("").unwrap().body_length_for(&["x@lists.example"]));
    }

    #[test]
    fn macro_list_from_a_file_data_set() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("macros");
        std::fs::write(
            &list,
            "# local senders\ndaemon_name MTA-out|submission\n{auth_type}\n",
        )
        .unwrap();
        let c = parse(&format!("MacroList file:{}\n", list.display())).unwrap();
        let get = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(c.macro_list_allows(get(&[("daemon_name", "submission")])));
        assert!(!c.macro_list_allows(get(&[("daemon_name", "smtpd")])));
        assert!(c.macro_list_allows(get(&[("auth_type", "PLAIN")])));
    }

    #[test]
    fn dont_sign_mail_to_and_macro_list() {
        let c = parse(
            "DontSignMailTo csl:*@partner.example, boss@example.com\n\
             MacroList daemon_name=MTA-out|submission,{auth_authen}\n",
        )
        .unwrap();
        assert!(c.dont_sign_to(&["<a@example.org>", "<x@partner.example>"]));
        assert!(c.dont_sign_to(&["Boss@example.com"]));
        assert!(!c.dont_sign_to(&["a@example.org"]));
        let macros = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(c.macro_list_allows(macros(&[("daemon_name", "MTA-out")])));
        assert!(c.macro_list_allows(macros(&[("daemon_name", "submission")])));
        // Values are case-sensitive; a listed value must match.
        assert!(!c.macro_list_allows(macros(&[("daemon_name", "mta-out")])));
        assert!(!c.macro_list_allows(macros(&[("daemon_name", "smtpd")])));
        // A macro listed without values only has to be set.
        assert!(c.macro_list_allows(macros(&[("auth_authen", "alice")])));
        assert!(!c.macro_list_allows(macros(&[])));
        assert!(
            !parse("")
                .unwrap()
                .macro_list_allows(macros(&[("daemon_name", "x")]))
        );
    }

    #[test]
    fn reporting_and_header_options() {
        let c = parse(
            "StrictHeaders yes\nRequiredHeaders yes\nRequestReports yes\nSendReports no\n\
             ReportAddress dkim@example.com\nReportBccAddress a@example.com\n",
        )
        .unwrap();
        assert!(c.strict_headers && c.required_headers && c.request_reports);
        assert_eq!(c.ignored.len(), 2);
        let e = parse("SendReports yes\n").unwrap_err().to_string();
        assert!(
            e.contains(":1: SendReports: failure reports (RFC 6651) are not sent"),
            "{e}"
        );
        let e = parse("ReplaceRules /etc/x\n").unwrap_err().to_string();
        assert!(e.contains("needs a regex engine"), "{e}");
        let e = parse("ConditionalSignatures yes\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an OpenDKIM 2.11 option"), "{e}");
    }

    #[test]
    fn signing_setup_rules() {
        assert!(parse("Selector s\n").is_err());
        assert!(parse("KeyTable csl:k=a:b:/x\n").is_err());
        let c = parse("KeyTable csl:k=a:b:/x\nSigningTable csl:*=k\n").unwrap();
        assert!(c.has_signing_keys());
        assert_eq!(c.key_table.unwrap().lookup("k"), Some("a:b:/x"));
    }

    #[test]
    fn include_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("signing.table");
        std::fs::write(&st, "*@example.com  rsa\n# c\n*@*.example.com ed\n").unwrap();
        let inc = dir.path().join("inc.conf");
        std::fs::write(&inc, format!("SigningTable refile:{}\n", st.display())).unwrap();
        let c = parse(&format!(
            "KeyTable csl:rsa=example.com:a:/k\nInclude {}\n",
            inc.display()
        ))
        .unwrap();
        let t = c.signing_table.unwrap();
        assert!(t.wildcard);
        assert_eq!(t.lookup("bob@example.com"), Some("rsa"));
        assert_eq!(t.lookup("bob@x.example.com"), Some("ed"));
        let bad = dir.path().join("bad.conf");
        std::fs::write(&bad, "Mode sv\nStatistics /x\n").unwrap();
        let e = parse(&format!("Include {}\n", bad.display()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}:2: Statistics: statistics is not supported by this filter",
                bad.display()
            )
        );
    }
}
