//! Reading `clamav-milter.conf` (ClamAV 1.4.6 option names and defaults).
//!
//! Supported with their clamav-milter meaning: `MilterSocket`, `MilterSocketMode`,
//! `MilterSocketGroup`, `User` (the daemon switches to it after binding), `FixStaleSocket`, `ClamdSocket` (repeatable, tried in turn),
//! `ReadTimeout`, `OnClean`, `OnInfected`, `OnFail`, `RejectMsg`, `AddHeader`,
//! `ReportHostname`, `VirusAction`, `MaxFileSize`, `SkipAuthenticated` (a plain login name,
//! `^name$`, or `file:/path`; other regular expressions are refused), `LocalNet`,
//! `LogInfected`, `LogClean`, `SupportMultipleRecipients`, `TemporaryDirectory` (used by
//! `ClamdTransfer Fildes`).
//!
//! A mailstack option: `ClamdTransfer Instream|Fildes` ([`Transfer`]; default Instream,
//! clamav-milter itself uses FILDES on a unix socket).
//!
//! Accepted without effect (listed in [`AvConfig::ignored`] so the daemon can warn): the
//! process and logging options (`Foreground`, `Chroot`, `PidFile`, `LogFile`, `LogFileUnlock`, `LogFileMaxSize`, `LogTime`, `LogSyslog`,
//! `LogFacility`, `LogVerbose`) and the options clamav-milter itself ignores (`MaxScanSize`,
//! `MaxFiles`, `MaxRecursion`, `StreamMaxLength`, `TCPSocket`). Anything else, `AllowList`
//! included (not implemented), and the `Example` line are errors with file and line.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clamd::ClamdAddr;
use crate::config::{ConfigError, ConfigFile, Entry, Syntax};
use crate::filter::OnAction;

/// `AddHeader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddHeader {
    /// `No`: add nothing.
    No,
    /// `Yes`/`Replace`: remove existing `X-Virus-*` fields, append ours.
    Replace,
    /// `Add`: insert ours at the top, keep the others.
    Add,
}

/// `LogInfected` / `LogClean`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// One line with the queue id and verdict.
    Basic,
    /// Also sender, recipients, subject, Message-ID.
    Full,
}

/// One `LocalNet` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalNet {
    /// `local`: mail submitted without SMTP (unix-socket or unknown client).
    Local,
    /// `addr[/bits]`.
    Net(IpAddr, u8),
}

impl LocalNet {
    /// Whether `ip` is inside this network (an IPv4 network also holds the IPv4-mapped IPv6
    /// forms of its addresses).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Self::Local => false,
            Self::Net(net, bits) => crate::ipnet::contains(*net, *bits, ip),
        }
    }
}

/// `SkipAuthenticated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipAuth {
    /// One login name.
    Name(String),
    /// Login names, one per line, from `file:/path`.
    Names(Vec<String>),
}

impl SkipAuth {
    /// Whether the SMTP AUTH login `login` is skipped.
    pub fn matches(&self, login: &str) -> bool {
        match self {
            Self::Name(n) => n == login,
            Self::Names(ns) => ns.iter().any(|n| n == login),
        }
    }
}

/// A parsed `clamav-milter.conf`.
#[derive(Debug, Clone)]
pub struct AvConfig {
    /// `MilterSocket` (mandatory unless given on the command line).
    pub milter_socket: Option<String>,
    /// `MilterSocketMode` (octal); `None`: the daemon's default (0660).
    pub milter_socket_mode: Option<u32>,
    /// `MilterSocketGroup`.
    pub milter_socket_group: Option<String>,
    /// `User`: who to run as after binding.
    pub user: Option<String>,
    /// `FixStaleSocket` (default yes).
    pub fix_stale_socket: bool,
    /// `ClamdSocket` entries, tried in turn.
    pub clamd_sockets: Vec<ClamdAddr>,
    /// `ReadTimeout` (default 120 s; 0 = none, kept as a very long timeout).
    pub read_timeout: Duration,
    /// `OnClean` (default Accept).
    pub on_clean: OnAction,
    /// `OnInfected` (default Quarantine).
    pub on_infected: OnAction,
    /// `OnFail` (default Defer; Accept, Reject or Defer only).
    pub on_fail: OnAction,
    /// `RejectMsg` (`%v` → virus name).
    pub reject_msg: Option<String>,
    /// `AddHeader` (default No).
    pub add_header: AddHeader,
    /// `ReportHostname` (default: the host name).
    pub report_hostname: Option<String>,
    /// `VirusAction`.
    pub virus_action: Option<PathBuf>,
    /// `MaxFileSize` (default 100M): only this many bytes are scanned; 0 means no limit.
    pub max_file_size: u64,
    /// `SkipAuthenticated`.
    pub skip_authenticated: Option<SkipAuth>,
    /// `LocalNet` entries: matching clients are not scanned.
    pub local_net: Vec<LocalNet>,
    /// `LogInfected` (default Off).
    pub log_infected: LogLevel,
    /// `LogClean` (default Off).
    pub log_clean: LogLevel,
    /// `SupportMultipleRecipients` (default no).
    pub support_multiple_recipients: bool,
    /// `ClamdTransfer` (a mailstack option; default Instream): how the message reaches a
    /// clamd on a unix socket.
    pub clamd_transfer: Transfer,
    /// `TemporaryDirectory` (default `/tmp`): where `ClamdTransfer Fildes` spools messages.
    pub temporary_directory: PathBuf,
    /// Options accepted without effect: (line, name).
    pub ignored: Vec<(usize, String)>,
}

/// How a message reaches clamd (`ClamdTransfer`, a mailstack option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transfer {
    /// `Instream` (default): streamed with INSTREAM while it arrives from the MTA; nothing is
    /// written to disk by the milter (clamd spools the stream itself).
    #[default]
    Instream,
    /// `Fildes`: written to an unlinked file in `TemporaryDirectory` while it arrives, and
    /// the descriptor passed to clamd with FILDES at end of message, as clamav-milter does on
    /// a unix socket; clamd then reads the file directly instead of copying a stream, which
    /// costs it less CPU. A clamd on TCP still gets INSTREAM (from the file).
    Fildes,
}

impl Default for AvConfig {
    fn default() -> Self {
        Self {
            milter_socket: None,
            milter_socket_mode: None,
            milter_socket_group: None,
            user: None,
            fix_stale_socket: true,
            clamd_sockets: Vec::new(),
            read_timeout: Duration::from_secs(120),
            on_clean: OnAction::Accept,
            on_infected: OnAction::Quarantine,
            on_fail: OnAction::Tempfail,
            reject_msg: None,
            add_header: AddHeader::No,
            report_hostname: None,
            virus_action: None,
            max_file_size: 100 * 1024 * 1024,
            skip_authenticated: None,
            local_net: Vec::new(),
            log_infected: LogLevel::Off,
            log_clean: LogLevel::Off,
            support_multiple_recipients: false,
            clamd_transfer: Transfer::Instream,
            temporary_directory: PathBuf::from("/tmp"),
            ignored: Vec::new(),
        }
    }
}

const IGNORED: &[&str] = &[
    "Foreground",
    "Chroot",
    "PidFile",
    "LogFile",
    "LogFileUnlock",
    "LogFileMaxSize",
    "LogTime",
    "LogSyslog",
    "LogFacility",
    "LogVerbose",
    "MaxScanSize",
    "MaxFiles",
    "MaxRecursion",
    "StreamMaxLength",
    "TCPSocket",
];

/// Parses a clamav SIZE: a number with an optional `K`/`k` or `M`/`m` suffix, at most 4 GB.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let (num, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(mul).filter(|&v| v <= 4 * 1024 * 1024 * 1024)
}

impl AvConfig {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(&ConfigFile::read(path, Syntax::Whitespace)?)
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_file(&ConfigFile::parse(path, text, Syntax::Whitespace)?)
    }

    fn from_file(f: &ConfigFile) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        for e in &f.entries {
            c.apply(f, e)?;
        }
        if c.clamd_sockets.is_empty() {
            return Err(ConfigError::at(&f.path, 0, "ClamdSocket is mandatory"));
        }
        Ok(c)
    }

    fn apply(&mut self, f: &ConfigFile, e: &Entry) -> Result<(), ConfigError> {
        let v = e.value.as_str();
        let bad = |what: &str| f.error(e, format_args!("{}: {what}, found {v:?}", e.key));
        match e.key.as_str() {
            "Example" => {
                return Err(f.error(e, "remove the \"Example\" line to use this file"));
            }
            "MilterSocket" => self.milter_socket = Some(v.to_owned()),
            "MilterSocketMode" => {
                self.milter_socket_mode = Some(
                    u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| bad("expected an octal mode such as 660"))?,
                )
            }
            "MilterSocketGroup" => self.milter_socket_group = Some(v.to_owned()),
            "User" => {
                if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == ':') {
                    return Err(bad("expected a user name"));
                }
                self.user = Some(v.to_owned());
            }
            "FixStaleSocket" => self.fix_stale_socket = f.bool(e)?,
            "ClamdSocket" => self.clamd_sockets.push(
                v.parse()
                    .map_err(|_| bad("expected unix:/path or tcp:host[:port]"))?,
            ),
            "ReadTimeout" => {
                let s: u64 = f.number(e)?;
                self.read_timeout = if s == 0 {
                    Duration::from_secs(365 * 86400)
                } else {
                    Duration::from_secs(s)
                };
            }
            "OnClean" => self.on_clean = action(v, true).ok_or_else(|| bad(ACTIONS))?,
            "OnInfected" => self.on_infected = action(v, true).ok_or_else(|| bad(ACTIONS))?,
            "OnFail" => {
                self.on_fail =
                    action(v, false).ok_or_else(|| bad("expected Accept, Reject or Defer"))?
            }
            "RejectMsg" => {
                if v.matches("%v").count() > 1 || v.replace("%v", "").contains('%') {
                    return Err(bad("at most one %v and no other % sequence"));
                }
                if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return Err(bad("must be printable ASCII"));
                }
                self.reject_msg = Some(v.to_owned());
            }
            "AddHeader" => {
                self.add_header = match v.to_ascii_lowercase().as_str() {
                    "no" | "false" | "0" | "off" => AddHeader::No,
                    "yes" | "true" | "1" | "on" | "replace" => AddHeader::Replace,
                    "add" => AddHeader::Add,
                    _ => return Err(bad("expected Yes, No, Replace or Add")),
                }
            }
            "ReportHostname" => self.report_hostname = Some(v.to_owned()),
            "VirusAction" => {
                if !v.starts_with('/') {
                    return Err(bad("expected an absolute path"));
                }
                self.virus_action = Some(v.into());
            }
            "MaxFileSize" => {
                self.max_file_size =
                    parse_size(v).ok_or_else(|| bad("expected a size such as 25M"))?
            }
            "SkipAuthenticated" => {
                self.skip_authenticated = Some(if let Some(p) = v.strip_prefix("file:") {
                    let text = std::fs::read_to_string(p)
                        .map_err(|err| f.error(e, format_args!("SkipAuthenticated: {p}: {err}")))?;
                    SkipAuth::Names(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(str::to_owned)
                            .collect(),
                    )
                } else {
                    let lit = v
                        .strip_prefix('^')
                        .and_then(|s| s.strip_suffix('$'))
                        .unwrap_or(v);
                    if lit.is_empty() || lit.contains(|c: char| "^$.[]()*+?{}|\\".contains(c)) {
                        return Err(bad(
                            "only a literal login name, ^name$ or file:/path is supported \
                             (regular expressions are not)",
                        ));
                    }
                    SkipAuth::Name(lit.to_owned())
                })
            }
            "LocalNet" => self.local_net.push(
                local_net(v)
                    .ok_or_else(|| bad("expected local or an address with an optional /bits"))?,
            ),
            "LogInfected" => self.log_infected = log_level(v).ok_or_else(|| bad(LEVELS))?,
            "LogClean" => self.log_clean = log_level(v).ok_or_else(|| bad(LEVELS))?,
            "SupportMultipleRecipients" => self.support_multiple_recipients = f.bool(e)?,
            "ClamdTransfer" => {
                self.clamd_transfer = match v.to_ascii_lowercase().as_str() {
                    "instream" => Transfer::Instream,
                    "fildes" => Transfer::Fildes,
                    _ => return Err(bad("expected Instream or Fildes")),
                }
            }
            "TemporaryDirectory" => self.temporary_directory = PathBuf::from(v),
            k if IGNORED.contains(&k) => self.ignored.push((e.line, k.to_owned())),
            _ => return Err(f.unknown(e)),
        }
        Ok(())
    }
}

const ACTIONS: &str = "expected Accept, Reject, Defer, Blackhole or Quarantine";
const LEVELS: &str = "expected Off, Basic or Full";

fn action(v: &str, all: bool) -> Option<OnAction> {
    Some(match v.to_ascii_lowercase().as_str() {
        "accept" => OnAction::Accept,
        "reject" => OnAction::Reject,
        "defer" => OnAction::Tempfail,
        "blackhole" if all => OnAction::Discard,
        "quarantine" if all => OnAction::Quarantine,
        _ => return None,
    })
}

fn log_level(v: &str) -> Option<LogLevel> {
    Some(match v.to_ascii_lowercase().as_str() {
        "off" | "no" => LogLevel::Off,
        "basic" | "yes" => LogLevel::Basic,
        "full" => LogLevel::Full,
        _ => return None,
    })
}

fn local_net(v: &str) -> Option<LocalNet> {
    if v.eq_ignore_ascii_case("local") {
        return Some(LocalNet::Local);
    }
    let (a, bits) = match v.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (v, None),
    };
    let ip: IpAddr = a.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some(LocalNet::Net(ip, bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<AvConfig, ConfigError> {
        AvConfig::parse(Path::new("/etc/clamav-milter.conf"), t)
    }

    #[test]
    fn defaults_are_clamav_milters() {
        let c = parse("ClamdSocket unix:/run/clamav/clamd.ctl\n").unwrap();
        assert_eq!(c.on_clean, OnAction::Accept);
        assert_eq!(c.on_infected, OnAction::Quarantine);
        assert_eq!(c.on_fail, OnAction::Tempfail);
        assert_eq!(c.add_header, AddHeader::No);
        assert_eq!(c.max_file_size, 100 * 1024 * 1024);
        assert_eq!(c.read_timeout, Duration::from_secs(120));
        assert!(c.fix_stale_socket);
        assert!(!c.support_multiple_recipients);
        assert_eq!(c.log_infected, LogLevel::Off);
    }

    #[test]
    fn full_file() {
        let c = parse(
            "# comment\nMilterSocket /run/clamav/milter.ctl\nMilterSocketMode 660\n\
             MilterSocketGroup postfix\nFixStaleSocket no\nClamdSocket tcp:127.0.0.1\n\
             ClamdSocket unix:/run/clamav/clamd.ctl\nOnClean Accept\nOnInfected Reject\n\
             OnFail Accept\nRejectMsg Virus %v found\nAddHeader Add\nReportHostname mx1\n\
             VirusAction /usr/local/bin/notify\nMaxFileSize 25M\nSkipAuthenticated ^alice$\n\
             LocalNet 10.0.0.0/8\nLocalNet local\nLocalNet ::1\nLogInfected Full\nLogClean Basic\n\
             SupportMultipleRecipients yes\nUser clamav\nLogSyslog yes\n",
        )
        .unwrap();
        assert_eq!(c.milter_socket.as_deref(), Some("/run/clamav/milter.ctl"));
        assert_eq!(c.milter_socket_mode, Some(0o660));
        assert!(!c.fix_stale_socket);
        assert_eq!(c.clamd_sockets[0], ClamdAddr::Tcp("127.0.0.1:3310".into()));
        assert_eq!(c.clamd_sockets.len(), 2);
        assert_eq!(c.on_infected, OnAction::Reject);
        assert_eq!(c.on_fail, OnAction::Accept);
        assert_eq!(c.reject_msg.as_deref(), Some("Virus %v found"));
        assert_eq!(c.add_header, AddHeader::Add);
        assert_eq!(c.max_file_size, 25 * 1024 * 1024);
        assert!(c.skip_authenticated.as_ref().unwrap().matches("alice"));
        assert!(!c.skip_authenticated.as_ref().unwrap().matches("bob"));
        assert!(c.local_net[0].contains("10.1.2.3".parse().unwrap()));
        assert!(!c.local_net[0].contains("11.1.2.3".parse().unwrap()));
        assert!(c.local_net[2].contains("::1".parse().unwrap()));
        assert_eq!(c.log_infected, LogLevel::Full);
        assert!(c.support_multiple_recipients);
        assert_eq!(c.user.as_deref(), Some("clamav"));
        assert_eq!(c.ignored, vec![(24, "LogSyslog".to_owned())]);
    }

    #[test]
    fn errors_are_located() {
        let cases = [
            ("ClamdSocket /x\nOnFail Quarantine\n", ":2: OnFail"),
            ("ClamdSocket /x\nBogus 1\n", ":2: unknown option \"Bogus\""),
            ("Example\n", ":1: remove"),
            ("ClamdSocket nowhere\n", ":1: ClamdSocket"),
            ("ClamdSocket /x\nMaxFileSize 5G\n", ":2: MaxFileSize"),
            ("ClamdSocket /x\nRejectMsg %v %v\n", ":2: RejectMsg"),
            (
                "ClamdSocket /x\nSkipAuthenticated ^a.*\n",
                ":2: SkipAuthenticated",
            ),
            ("ClamdSocket /x\nLocalNet 10.0.0.0/33\n", ":2: LocalNet"),
            ("ClamdSocket /x\nAddHeader maybe\n", ":2: AddHeader"),
            ("ClamdSocket /x\nUser clamav:clamav\n", ":2: User"),
            (
                "ClamdSocket /x\nMilterSocketMode 999\n",
                ":2: MilterSocketMode",
            ),
            ("MilterSocket /m\n", ":0: ClamdSocket is mandatory"),
            (
                "ClamdSocket /x\nAllowList /etc/x\n",
                ":2: unknown option \"AllowList\"",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/clamav-milter.conf"), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("100M"), Some(100 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("4096M"), Some(4 << 30));
        assert_eq!(parse_size("4097M"), None);
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }
}
