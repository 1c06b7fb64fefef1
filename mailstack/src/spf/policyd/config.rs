//! `policyd-spf.conf`: python-policyd-spf's configuration keys, defaults and value rules.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::config::{ConfigError, ConfigFile, Entry, Syntax};

/// Where python-policyd-spf (Debian) keeps its configuration; also our default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/postfix-policyd-spf-python/policyd-spf.conf";

/// python-policyd-spf's `Reason_Message` default.
pub const DEFAULT_REASON_MESSAGE: &str = "Message {rejectdefer} due to: {spf}. Please see {url}";

/// python-policyd-spf's `skip_addresses` default: loopback in all its spellings.
pub const DEFAULT_SKIP_ADDRESSES: &str = "127.0.0.0/8,::ffff:127.0.0.0/104,::1";

/// Entries of the (ip, helo) and (ip, sender domain) result caches. Each entry is a few hundred
/// bytes, so the default costs a few MiB at most. `Result_Cache_Size = 0` disables the caches.
pub const DEFAULT_RESULT_CACHE_SIZE: usize = 10_000;
/// How long a cached SPF result is reused. Short, because we do not see DNS TTLs through the
/// resolver trait; a burst of messages from one client (the common case) still hits.
pub const DEFAULT_RESULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Remembered `instance` values (one per message in flight); python-policyd-spf never forgets
/// them. Postfix keeps at most `smtpd_policy_service_max_idle`/`max_ttl` per connection, and a
/// message's recipients arrive within seconds, so the oldest ones can safely go.
pub const DEFAULT_INSTANCE_CACHE_SIZE: usize = 10_000;

/// `HELO_reject` / `Mail_From_reject`: which results reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectPolicy {
    /// `Fail`: reject `fail` (the default).
    Fail,
    /// `SPF_Not_Pass`: reject `fail`, `softfail` and `neutral`.
    SpfNotPass,
    /// `Softfail`: reject `fail` and `softfail`.
    Softfail,
    /// `Null` (HELO only): reject HELO `fail` only for the null sender.
    Null,
    /// `False`: never reject; header only (also no defer/permerror reject).
    False,
    /// `No_Check`: skip this identity.
    NoCheck,
}

impl RejectPolicy {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Fail" => Self::Fail,
            "SPF_Not_Pass" => Self::SpfNotPass,
            "Softfail" => Self::Softfail,
            "Null" => Self::Null,
            "False" => Self::False,
            "No_Check" => Self::NoCheck,
            _ => return None,
        })
    }
}

/// `Header_Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderType {
    /// `Received-SPF` (the default).
    ReceivedSpf,
    /// `Authentication-Results`.
    AuthResults,
    /// No header (`dunno` instead of `prepend`).
    None,
}

/// An IP network of a skip list or whitelist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Parses `addr` or `addr/len`.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.trim().parse().ok()?, Some(p.trim().parse::<u8>().ok()?)),
            None => (s.trim().parse().ok()?, None),
        };
        let max = if matches!(addr, IpAddr::V4(_)) {
            32
        } else {
            128
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is in this network (families never mix, as in Python's `ipaddress`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

/// The policy server's configuration: python-policyd-spf's keys with its code defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PolicydConfig {
    /// `debugLevel` (−1 silent … 4 raw input); default 1.
    pub debug_level: i32,
    /// `TestOnly`: `1` enforces (default), `0` only prepends headers (inverted name, kept).
    pub test_only: i32,
    /// `HELO_reject`; default `Fail`.
    pub helo_reject: RejectPolicy,
    /// `Mail_From_reject`; default `Fail`.
    pub mail_from_reject: RejectPolicy,
    /// `HELO_pass_restriction`: a restriction class returned when HELO passes.
    pub helo_pass_restriction: Option<String>,
    /// `Mail_From_pass_restriction`: a restriction class returned when MAIL FROM passes.
    pub mail_from_pass_restriction: Option<String>,
    /// `No_Mail`: only reject when the record is literally `v=spf1 -all`.
    pub no_mail: bool,
    /// `Reject_Not_Pass_Domains`: domains whose policy becomes `SPF_Not_Pass`.
    pub reject_not_pass_domains: Vec<String>,
    /// `PermError_reject`; default false.
    pub permerror_reject: bool,
    /// `TempError_Defer`; default false.
    pub temperror_defer: bool,
    /// `Prospective`: check as if the client were this address; never prepends.
    pub prospective: Option<IpAddr>,
    /// `skip_addresses`; default loopback.
    pub skip_addresses: Vec<IpNet>,
    /// `Whitelist`: client networks not checked.
    pub whitelist: Vec<IpNet>,
    /// `HELO_Whitelist`: HELO names not checked when they resolve to the client.
    pub helo_whitelist: Vec<String>,
    /// `Domain_Whitelist`: domains whose SPF pass for the client skips the checks.
    pub domain_whitelist: Vec<String>,
    /// `Domain_Whitelist_PTR`: client PTR name suffixes that skip the checks.
    pub domain_whitelist_ptr: Vec<String>,
    /// `SPF_Enhanced_Status_Codes`; default yes (RFC 7372 codes).
    pub enhanced_status_codes: bool,
    /// `Header_Type`; default `SPF`.
    pub header_type: HeaderType,
    /// `Hide_Receiver`; default no (`receiver=` shows the recipient domain).
    pub hide_receiver: bool,
    /// `Authserv_Id`; `HOSTNAME` (default) means this host's name.
    pub authserv_id: String,
    /// `Lookup_Time` per identity; default 20 s.
    pub lookup_time: Duration,
    /// `Whitelist_Lookup_Time` per whitelist method; default 10 s.
    pub whitelist_lookup_time: Duration,
    /// `Void_Limit`; default 2.
    pub void_limit: u32,
    /// `Reason_Message`, with `{rejectdefer}`, `{spf}` and `{url}`.
    pub reason_message: String,
    /// `Mock`: always answer `dunno` with a mock comment.
    pub mock: bool,
    /// `QueueID`: put the queue id in log lines; default true.
    pub queue_id: bool,
    /// Ours: `Result_Cache_Size` (0 disables the (ip, helo)/(ip, sender domain) caches).
    pub result_cache_size: usize,
    /// Ours: `Result_Cache_TTL` in seconds.
    pub result_cache_ttl: Duration,
    /// Ours: `Instance_Cache_Size`.
    pub instance_cache_size: usize,
}

impl Default for PolicydConfig {
    fn default() -> Self {
        Self {
            debug_level: 1,
            test_only: 1,
            helo_reject: RejectPolicy::Fail,
            mail_from_reject: RejectPolicy::Fail,
            helo_pass_restriction: None,
            mail_from_pass_restriction: None,
            no_mail: false,
            reject_not_pass_domains: Vec::new(),
            permerror_reject: false,
            temperror_defer: false,
            prospective: None,
            skip_addresses: DEFAULT_SKIP_ADDRESSES
                .split(',')
                .filter_map(IpNet::parse)
                .collect(),
            whitelist: Vec::new(),
            helo_whitelist: Vec::new(),
            domain_whitelist: Vec::new(),
            domain_whitelist_ptr: Vec::new(),
            enhanced_status_codes: true,
            header_type: HeaderType::ReceivedSpf,
            hide_receiver: false,
            authserv_id: "HOSTNAME".into(),
            lookup_time: Duration::from_secs(20),
            whitelist_lookup_time: Duration::from_secs(10),
            void_limit: 2,
            reason_message: DEFAULT_REASON_MESSAGE.into(),
            mock: false,
            queue_id: true,
            result_cache_size: DEFAULT_RESULT_CACHE_SIZE,
            result_cache_ttl: DEFAULT_RESULT_CACHE_TTL,
            instance_cache_size: DEFAULT_INSTANCE_CACHE_SIZE,
        }
    }
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Keys python-policyd-spf reads that only its milter front end uses; accepted and ignored so
/// one file can serve both.
const MILTER_ONLY_KEYS: &[&str] = &[
    "Socket",
    "PidFile",
    "UserID",
    "UMask",
    "InternalHosts",
    "MacroList",
];

impl PolicydConfig {
    /// Reads `path`; returns the configuration and warnings (ignored keys) to log.
    pub fn read(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        Self::from_file(&ConfigFile::read(path, Syntax::Equals)?)
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<(Self, Vec<String>), ConfigError> {
        Self::from_file(&ConfigFile::parse(path, text, Syntax::Equals)?)
    }

    fn from_file(file: &ConfigFile) -> Result<(Self, Vec<String>), ConfigError> {
        let mut config = Self::default();
        let mut warnings = Vec::new();
        for entry in &file.entries {
            // python-policyd-spf strips `# comments` anywhere on a line.
            let mut entry = entry.clone();
            if let Some((v, _)) = entry.value.split_once('#') {
                entry.value = v.trim().to_owned();
            }
            if let Some(w) = config.apply(file, &entry)? {
                warnings.push(format!("{}:{}: {w}", file.path.display(), entry.line));
            }
        }
        if config.header_type == HeaderType::AuthResults && config.authserv_id.is_empty() {
            return Err(ConfigError::at(
                &file.path,
                0,
                "Header_Type = AR needs Authserv_Id",
            ));
        }
        Ok((config, warnings))
    }

    fn apply(&mut self, file: &ConfigFile, e: &Entry) -> Result<Option<String>, ConfigError> {
        let v = e.value.as_str();
        let bad =
            |what: &str| file.error(e, format_args!("{}: expected {what}, found {v:?}", e.key));
        match e.key.as_str() {
            "debugLevel" => self.debug_level = file.number(e)?,
            "TestOnly" => self.test_only = file.number(e)?,
            "defaultSeedOnly" => {
                self.test_only = file.number(e)?;
                return Ok(Some("defaultSeedOnly is deprecated; use TestOnly".into()));
            }
            "HELO_reject" | "Mail_From_reject" => {
                let p = RejectPolicy::parse(v)
                    .ok_or_else(|| bad("Fail, SPF_Not_Pass, Softfail, Null, False or No_Check"))?;
                if e.key == "HELO_reject" {
                    self.helo_reject = p;
                } else if p == RejectPolicy::Null {
                    return Err(bad("Fail, SPF_Not_Pass, Softfail, False or No_Check"));
                } else {
                    self.mail_from_reject = p;
                }
            }
            "HELO_pass_restriction" => self.helo_pass_restriction = Some(v.to_owned()),
            "Mail_From_pass_restriction" => self.mail_from_pass_restriction = Some(v.to_owned()),
            "No_Mail" => self.no_mail = file.bool(e)?,
            "Reject_Not_Pass_Domains" => self.reject_not_pass_domains = list(v),
            "PermError_reject" => self.permerror_reject = file.bool(e)?,
            "TempError_Defer" => self.temperror_defer = file.bool(e)?,
            "Prospective" => self.prospective = Some(v.parse().map_err(|_| bad("an IP address"))?),
            "skip_addresses" | "Whitelist" => {
                let nets = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        IpNet::parse(s).ok_or_else(|| bad("a comma-separated list of IP networks"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if e.key == "Whitelist" {
                    self.whitelist = nets;
                } else {
                    self.skip_addresses = nets;
                }
            }
            "HELO_Whitelist" => self.helo_whitelist = list(v),
            "Domain_Whitelist" => self.domain_whitelist = list(v),
            "Domain_Whitelist_PTR" => self.domain_whitelist_ptr = list(v),
            "SPF_Enhanced_Status_Codes" => self.enhanced_status_codes = file.bool(e)?,
            "Header_Type" => {
                self.header_type = match v {
                    "SPF" => HeaderType::ReceivedSpf,
                    "AR" => HeaderType::AuthResults,
                    "None" => HeaderType::None,
                    _ => return Err(bad("SPF, AR or None")),
                }
            }
            "Hide_Receiver" => self.hide_receiver = file.bool(e)?,
            "Authserv_Id" => self.authserv_id = v.to_owned(),
            "Lookup_Time" => self.lookup_time = Duration::from_secs(file.number(e)?),
            "Whitelist_Lookup_Time" => {
                self.whitelist_lookup_time = Duration::from_secs(file.number(e)?)
            }
            "Void_Limit" => self.void_limit = file.number(e)?,
            "Reason_Message" => self.reason_message = v.to_owned(),
            "Mock" => self.mock = file.bool(e)?,
            "QueueID" => self.queue_id = file.bool(e)?,
            "Result_Cache_Size" => self.result_cache_size = file.number(e)?,
            "Result_Cache_TTL" => self.result_cache_ttl = Duration::from_secs(file.number(e)?),
            "Instance_Cache_Size" => self.instance_cache_size = file.number(e)?,
            "Per_User" => return Ok(Some("Per_User is not supported; ignored".into())),
            k if MILTER_ONLY_KEYS.contains(&k) => {
                return Ok(Some(format!("{k} is a milter option; ignored")));
            }
            _ => return Err(file.unknown(e)),
        }
        Ok(None)
    }

    /// The authserv-id to write: `HOSTNAME` means this host's name.
    pub fn resolved_authserv_id(&self) -> String {
        if self.authserv_id == "HOSTNAME" {
            hostname()
        } else {
            self.authserv_id.clone()
        }
    }
}

/// This host's name ([`crate::config::hostname`]).
pub fn hostname() -> String {
    crate::config::hostname()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_debian_file_and_locates_errors() {
        let p = Path::new("/etc/policyd-spf.conf");
        let text = "debugLevel = 1 \nTestOnly = 1\n\nHELO_reject = Fail\nMail_From_reject = Fail\n\nPermError_reject = False\nTempError_Defer = False # comment\n\nskip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1\n";
        let (c, w) = PolicydConfig::parse(p, text).unwrap();
        assert!(w.is_empty());
        assert_eq!(c.helo_reject, RejectPolicy::Fail);
        assert!(!c.temperror_defer);
        assert_eq!(c.skip_addresses.len(), 3);

        let err = PolicydConfig::parse(p, "HELO_reject = Fail\nNo_Such_Key = 1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/policyd-spf.conf:2: unknown option \"No_Such_Key\""
        );
        let err = PolicydConfig::parse(p, "Lookup_Time = soon\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/policyd-spf.conf:1: Lookup_Time"),
            "{err}"
        );
        let err = PolicydConfig::parse(p, "skip_addresses = 127.0.0.0/99\n").unwrap_err();
        assert!(err.to_string().contains(":1: skip_addresses"), "{err}");
    }

    #[test]
    fn networks() {
        let n = IpNet::parse("::ffff:127.0.0.0/104").unwrap();
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("127.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("127.0.0.0/8")
                .unwrap()
                .contains("127.1.2.3".parse().unwrap())
        );
        assert!(
            IpNet::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
    }
}
