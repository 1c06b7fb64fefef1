//! `mailstackd.toml`: one file with a section per filter, each of which may name the tool's
//! own file instead (so `/usr/local/etc/{opendkim,opendmarc,clamav,python-policyd-spf}` keep
//! working) or hold that tool's options inline.
//!
//! ```toml
//! [mailstackd]
//! socket = "unix:/run/mailstack/mailstackd.sock"   # --socket overrides
//! socket_group = "postfix"          # socket file 0660, owner the daemon, this group
//! user = "mailstack"                # drop to this user after binding and loading keys
//! authserv_id = "mx.example.org"    # default: the MTA's name (macro j), else the host name
//! nameservers = ["127.0.0.1:53"]    # default: /etc/resolv.conf
//! dns_timeout = 5                   # seconds per query
//! received_spf = false              # also write Received-SPF (Authentication-Results always)
//!
//! [spf]
//! config = "/usr/local/etc/python-policyd-spf/policyd-spf.conf"
//!
//! [dkim]
//! config = "/usr/local/etc/opendkim/opendkim.conf"
//!
//! [dmarc]
//! options = { RejectFailures = true }      # opendmarc.conf keys, inline
//!
//! [av]
//! enabled = true
//! options = { ClamdSocket = "unix:/run/clamav/clamd.ctl", OnInfected = "Reject" }
//!
//! [store]                           # where DMARC records go (besides any HistoryFile)
//! kind = "embedded"                 # on local disk (crate::store::EmbeddedStore)
//! path = "/var/lib/mailstack/store.redb"
//! # kind = "redis"                  # shared by several nodes (crate::store::RedisStore)
//! # url = "redis://127.0.0.1:6379/0"   # or redis+unix:///run/redis/redis.sock
//! retention_days = 31               # records older than this are removed
//! max_records = 2000000             # per stream, the oldest go first
//! buffer = 10000                    # records held while the store is down, then dropped
//! ```
//!
//! A section that is absent takes the embedded default: SPF, DKIM (verify) and DMARC on, never
//! rejecting; AV only when a section (or `--clamd`) names a clamd socket. Every error names the
//! file, the line and what was expected; an inline option's error names the TOML line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::av::AvConfig;
use crate::config::ConfigError;
use crate::dkim::DkimConfig;
use crate::dmarc::DmarcConfig;
use crate::spf::policyd::PolicydConfig;
use crate::store::{StoreConfig, StoreKind};

/// The embedded SPF default: check HELO and MAIL FROM, never reject or defer (results go to
/// `Authentication-Results` and to DMARC).
pub const DEFAULT_SPF: &str = "HELO_reject = False\nMail_From_reject = False\n\
PermError_reject = False\nTempError_Defer = False\n";
/// The embedded DKIM default: verify only (signing needs keys).
pub const DEFAULT_DKIM: &str = "Mode v\n";
/// The embedded DMARC default: OpenDMARC's defaults, which never reject (`RejectFailures no`).
pub const DEFAULT_DMARC: &str = "";
/// Default DNS timeout per query (OpenDMARC's `DNSTimeout` default).
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    mailstackd: DaemonForm,
    spf: Option<SectionForm>,
    dkim: Option<SectionForm>,
    dmarc: Option<SectionForm>,
    av: Option<SectionForm>,
    store: Option<Spanned<StoreForm>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreForm {
    kind: String,
    path: Option<PathBuf>,
    url: Option<String>,
    retention_days: Option<u64>,
    max_records: Option<u64>,
    buffer: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonForm {
    socket: Option<String>,
    socket_group: Option<String>,
    socket_mode: Option<Spanned<String>>,
    user: Option<String>,
    authserv_id: Option<String>,
    #[serde(default)]
    nameservers: Vec<Spanned<String>>,
    dns_timeout: Option<u64>,
    #[serde(default)]
    received_spf: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionForm {
    enabled: Option<bool>,
    config: Option<Spanned<PathBuf>>,
    options: Option<BTreeMap<String, Spanned<toml::Value>>>,
}

/// Where a filter's configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The embedded default.
    Default,
    /// The tool's own file.
    File(PathBuf),
    /// Options inline in `mailstackd.toml`.
    Inline(PathBuf),
    /// Switched off.
    Off,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("embedded default"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Inline(p) => write!(f, "inline in {}", p.display()),
            Self::Off => f.write_str("off"),
        }
    }
}

/// The daemon's own settings (`[mailstackd]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonSettings {
    /// Where to listen.
    pub socket: Option<String>,
    /// Group of the unix socket file.
    pub socket_group: Option<String>,
    /// Mode of the unix socket file (default 0660).
    pub socket_mode: Option<u32>,
    /// User to run as after binding.
    pub user: Option<String>,
    /// The authserv-id.
    pub authserv_id: Option<String>,
    /// DNS servers (`IP:PORT`); empty: the system's.
    pub nameservers: Vec<std::net::SocketAddr>,
    /// Per-query DNS timeout.
    pub dns_timeout: Duration,
    /// Write `Received-SPF` too.
    pub received_spf: bool,
}

/// Everything `mailstackd` runs with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StackConfig {
    /// The file read (`None`: the embedded default).
    pub path: Option<PathBuf>,
    /// `[mailstackd]`.
    pub daemon: DaemonSettings,
    /// SPF (`policyd-spf.conf` keys), `None` when off.
    pub spf: Option<PolicydConfig>,
    /// DKIM (`opendkim.conf`).
    pub dkim: Option<DkimConfig>,
    /// DMARC (`opendmarc.conf`).
    pub dmarc: Option<DmarcConfig>,
    /// AV (`clamav-milter.conf`).
    pub av: Option<AvConfig>,
    /// `[store]`: where DMARC records go (`None`: only the `HistoryFile`, if any; DMARC's own
    /// `MailstackStore` applies then).
    pub store: Option<StoreConfig>,
    /// Where each came from, in the order spf, dkim, dmarc, av.
    pub sources: [(&'static str, Source); 4],
    /// Warnings while reading (options accepted without effect).
    pub warnings: Vec<String>,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

/// How each tool writes `key value`.
#[derive(Clone, Copy)]
enum Style {
    Spf,
    Milter,
}

/// A section resolved to the text of the tool's own syntax, with the TOML line of each
/// generated line (for inline options) and where it came from.
struct Resolved {
    path: PathBuf,
    text: String,
    lines: Option<Vec<usize>>,
    source: Source,
}

struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Reader<'_> {
    fn err(&self, offset: usize, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::at(self.path, line_of(self.text, offset), message)
    }

    fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// A section to the tool's text: its file, its inline options, or `default`.
    fn section(
        &self,
        name: &str,
        form: Option<SectionForm>,
        default: Option<&str>,
        style: Style,
    ) -> Result<Option<Resolved>, ConfigError> {
        let Some(form) = form else {
            return Ok(default.map(|d| Resolved {
                path: PathBuf::from(format!("<embedded {name} default>")),
                text: d.to_owned(),
                lines: None,
                source: Source::Default,
            }));
        };
        if form.enabled == Some(false) {
            return Ok(None);
        }
        match (form.config, form.options) {
            (Some(c), Some(_)) => Err(self.err(
                c.span().start,
                format!("[{name}]: give either `config` (the tool's file) or `options`, not both"),
            )),
            (Some(c), None) => {
                let span = c.span().start;
                let p = c.into_inner();
                let p = if p.is_relative() {
                    self.base_dir().join(p)
                } else {
                    p
                };
                let text = crate::config::read_bounded(&p)
                    .map_err(|e| self.err(span, format!("[{name}] config: {e}")))?;
                Ok(Some(Resolved {
                    source: Source::File(p.clone()),
                    path: p,
                    text,
                    lines: None,
                }))
            }
            (None, Some(opts)) => self.inline(name, opts, style).map(Some),
            (None, None) => Ok(default.map(|d| Resolved {
                path: PathBuf::from(format!("<embedded {name} default>")),
                text: d.to_owned(),
                lines: None,
                source: Source::Default,
            })),
        }
    }

    fn inline(
        &self,
        name: &str,
        opts: BTreeMap<String, Spanned<toml::Value>>,
        style: Style,
    ) -> Result<Resolved, ConfigError> {
        let mut text = String::new();
        let mut lines = Vec::new();
        for (key, value) in opts {
            let at = value.span().start;
            let v = match value.into_inner() {
                toml::Value::String(s) if !s.contains('\n') => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => match (style, b) {
                    (Style::Spf, true) => "True".into(),
                    (Style::Spf, false) => "False".into(),
                    (Style::Milter, true) => "yes".into(),
                    (Style::Milter, false) => "no".into(),
                },
                _ => {
                    return Err(self.err(
                        at,
                        format!(
                            "[{name}.options] {key}: expected a one-line string, number or boolean"
                        ),
                    ));
                }
            };
            match style {
                Style::Spf => text.push_str(&format!("{key} = {v}\n")),
                Style::Milter => text.push_str(&format!("{key} {v}\n")),
            }
            lines.push(line_of(self.text, at));
        }
        Ok(Resolved {
            path: self.path.to_owned(),
            text,
            lines: Some(lines),
            source: Source::Inline(self.path.to_owned()),
        })
    }
}

/// `[store]` to a [`StoreConfig`]; a relative `path` is taken from the file's directory.
fn store_config(rd: &Reader<'_>, form: Spanned<StoreForm>) -> Result<StoreConfig, ConfigError> {
    let at = form.span().start;
    let f = form.into_inner();
    let kind = match (f.kind.as_str(), f.path, f.url) {
        ("embedded", Some(p), None) => StoreKind::Embedded {
            path: if p.is_relative() {
                rd.base_dir().join(p)
            } else {
                p
            },
        },
        ("redis", None, Some(url)) => {
            if !["redis://", "redis+unix://", "unix://"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return Err(rd.err(
                    at,
                    format!("[store] url: expected redis://HOST[:PORT][/DB] or redis+unix:///PATH, found {url:?}"),
                ));
            }
            StoreKind::Redis { url }
        }
        ("embedded", _, _) => {
            return Err(rd.err(
                at,
                "[store] kind = \"embedded\" needs `path` (and no `url`)",
            ));
        }
        ("redis", _, _) => {
            return Err(rd.err(at, "[store] kind = \"redis\" needs `url` (and no `path`)"));
        }
        (k, _, _) => {
            return Err(rd.err(
                at,
                format!("[store] kind: expected \"embedded\" or \"redis\", found {k:?}"),
            ));
        }
    };
    let mut cfg = StoreConfig::new(kind);
    if let Some(d) = f.retention_days {
        if d == 0 || d > 3660 {
            return Err(rd.err(at, "[store] retention_days: expected 1..=3660"));
        }
        cfg.retention = Duration::from_secs(d * 24 * 3600);
    }
    if let Some(m) = f.max_records {
        if m == 0 {
            return Err(rd.err(at, "[store] max_records: expected at least 1"));
        }
        cfg.max_records = m;
    }
    if let Some(b) = f.buffer {
        if !(1..=10_000_000).contains(&b) {
            return Err(rd.err(at, "[store] buffer: expected 1..=10000000 records"));
        }
        cfg.writer.capacity = b;
    }
    Ok(cfg)
}

/// Parses `r` with the tool's parser; an inline option's error is moved to its TOML line.
fn parse_with<T>(
    r: &Resolved,
    name: &str,
    parse: impl FnOnce(&Path, &str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    parse(&r.path, &r.text).map_err(|e| match (&r.lines, e) {
        (Some(lines), ConfigError::Invalid { line, message, .. }) => {
            let at = lines.get(line.wrapping_sub(1)).copied().unwrap_or(0);
            ConfigError::at(&r.path, at, format!("[{name}.options] {message}"))
        }
        (_, e) => e,
    })
}

impl StackConfig {
    /// The embedded default (no file).
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::assemble(None, "", FileForm::default())
    }

    /// Reads `mailstackd.toml`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::config::read_bounded(path)?;
        Self::parse(path, &text)
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let form: FileForm = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| line_of(text, s.start));
            ConfigError::at(path, at, e.message())
        })?;
        Self::assemble(Some(path), text, form)
    }

    fn assemble(path: Option<&Path>, text: &str, form: FileForm) -> Result<Self, ConfigError> {
        let shown = path.unwrap_or(Path::new("<embedded default>"));
        let rd = Reader { path: shown, text };
        let daemon = daemon_settings(&rd, form.mailstackd)?;
        let store = form.store.map(|f| store_config(&rd, f)).transpose()?;
        let mut warnings = Vec::new();
        let spf = match rd.section("spf", form.spf, Some(DEFAULT_SPF), Style::Spf)? {
            Some(r) => {
                let (c, w) = parse_with(&r, "spf", PolicydConfig::parse)?;
                warnings.extend(w);
                Some((c, r.source))
            }
            None => None,
        };
        let dkim = match rd.section("dkim", form.dkim, Some(DEFAULT_DKIM), Style::Milter)? {
            Some(r) => Some((parse_with(&r, "dkim", DkimConfig::parse)?, r.source)),
            None => None,
        };
        let dmarc = match rd.section("dmarc", form.dmarc, Some(DEFAULT_DMARC), Style::Milter)? {
            Some(r) => Some((parse_with(&r, "dmarc", DmarcConfig::parse)?, r.source)),
            None => None,
        };
        let av = match rd.section("av", form.av, None, Style::Milter)? {
            Some(r) => Some((parse_with(&r, "av", AvConfig::parse)?, r.source)),
            None => None,
        };
        let src = |s: Option<&Source>| s.cloned().unwrap_or(Source::Off);
        let sources = [
            ("spf", src(spf.as_ref().map(|x| &x.1))),
            ("dkim", src(dkim.as_ref().map(|x| &x.1))),
            ("dmarc", src(dmarc.as_ref().map(|x| &x.1))),
            ("av", src(av.as_ref().map(|x| &x.1))),
        ];
        Ok(Self {
            path: path.map(Path::to_owned),
            daemon,
            spf: spf.map(|x| x.0),
            dkim: dkim.map(|x| x.0),
            dmarc: dmarc.map(|x| x.0),
            av: av.map(|x| x.0),
            store,
            sources,
            warnings,
        })
    }

    /// Switches AV on with `ClamdSocket socket` and clamav-milter's other defaults, unless a
    /// section configured it already (`--clamd`).
    pub fn with_clamd(&mut self, socket: &str) -> Result<(), ConfigError> {
        if self.av.is_none() {
            let text = format!("ClamdSocket {socket}\n");
            self.av = Some(AvConfig::parse(Path::new("--clamd"), &text)?);
            self.sources[3] = ("av", Source::Inline(PathBuf::from("--clamd")));
        }
        Ok(())
    }

    /// The effective configuration, as `--check-config` prints it.
    pub fn describe(&self) -> String {
        let d = &self.daemon;
        let mut out = format!(
            "config: {}\nsocket: {}\nsocket mode: {:04o}, group: {}\nuser: {}\nauthserv-id: {}\n\
             nameservers: {}\ndns timeout: {} s\nreceived-spf: {}\n",
            self.path
                .as_ref()
                .map_or("embedded default".into(), |p| p.display().to_string()),
            d.socket.as_deref().unwrap_or("(none: --socket needed)"),
            d.socket_mode.unwrap_or(0o660),
            d.socket_group.as_deref().unwrap_or("(the daemon's)"),
            d.user.as_deref().unwrap_or("(not set)"),
            d.authserv_id
                .as_deref()
                .unwrap_or("(the MTA's name, macro j)"),
            if d.nameservers.is_empty() {
                "system (/etc/resolv.conf)".to_owned()
            } else {
                d.nameservers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            d.dns_timeout.as_secs(),
            if d.received_spf { "yes" } else { "no" },
        );
        for (name, src) in &self.sources {
            out.push_str(&format!("{name}: {src}\n"));
        }
        let store = self
            .store
            .as_ref()
            .or_else(|| self.dmarc.as_ref().and_then(|d| d.store.as_ref()));
        match store {
            Some(s) => out.push_str(&format!("store: {s}\n")),
            None => out.push_str("store: none (DMARC HistoryFile only, if set)\n"),
        }
        if let Some(s) = &self.spf {
            out.push_str(&format!(
                "  spf: HELO_reject {:?}, Mail_From_reject {:?}, PermError_reject {}, TempError_Defer {}\n",
                s.helo_reject, s.mail_from_reject, s.permerror_reject, s.temperror_defer
            ));
        }
        if let Some(k) = &self.dkim {
            out.push_str(&format!(
                "  dkim: sign {}, verify {}\n",
                if k.sign { "yes" } else { "no" },
                if k.verify { "yes" } else { "no" },
            ));
        }
        if let Some(m) = &self.dmarc {
            out.push_str(&format!(
                "  dmarc: RejectFailures {}, spec {:?}\n",
                if m.reject_failures { "yes" } else { "no" },
                m.specification
            ));
        }
        if let Some(a) = &self.av {
            out.push_str(&format!(
                "  av: clamd {:?}, OnInfected {:?}, OnFail {:?}\n",
                a.clamd_sockets, a.on_infected, a.on_fail
            ));
        }
        out
    }
}

fn daemon_settings(rd: &Reader<'_>, f: DaemonForm) -> Result<DaemonSettings, ConfigError> {
    let socket_mode = match f.socket_mode {
        Some(m) => {
            let at = m.span().start;
            Some(
                u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        rd.err(at, "socket_mode: expected an octal mode like \"0660\"")
                    })?,
            )
        }
        None => None,
    };
    let mut nameservers = Vec::new();
    for ns in f.nameservers {
        let at = ns.span().start;
        let text = ns.into_inner();
        let addr = text
            .parse()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
            .map_err(|_| rd.err(at, format!("nameservers: {text:?}: expected IP or IP:PORT")))?;
        nameservers.push(addr);
    }
    Ok(DaemonSettings {
        socket: f.socket,
        socket_group: f.socket_group,
        socket_mode,
        user: f.user,
        authserv_id: f.authserv_id,
        nameservers,
        dns_timeout: f
            .dns_timeout
            .map_or(DEFAULT_DNS_TIMEOUT, Duration::from_secs),
        received_spf: f.received_spf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_section_selects_the_store_and_errors_name_the_line() {
        let p = Path::new("/etc/mailstack/mailstackd.toml");
        let c = StackConfig::parse(
            p,
            "[store]\nkind = \"embedded\"\npath = \"store.redb\"\nretention_days = 7\nbuffer = 50\n",
        )
        .unwrap();
        let s = c.store.as_ref().unwrap();
        assert_eq!(
            s.kind,
            StoreKind::Embedded {
                path: "/etc/mailstack/store.redb".into()
            }
        );
        assert_eq!(s.retention, Duration::from_secs(7 * 86400));
        assert_eq!(s.writer.capacity, 50);
        assert!(
            c.describe()
                .contains("store: embedded /etc/mailstack/store.redb")
        );
        let c = StackConfig::parse(
            p,
            "[store]\nkind = \"redis\"\nurl = \"redis://10.0.0.1:6379/2\"\n",
        )
        .unwrap();
        assert_eq!(
            c.store.unwrap().kind,
            StoreKind::Redis {
                url: "redis://10.0.0.1:6379/2".into()
            }
        );
        for (text, want) in [
            (
                "\n[store]\nkind = \"redis\"\npath = \"/x\"\n",
                "needs `url`",
            ),
            (
                "\n[store]\nkind = \"sql\"\npath = \"/x\"\n",
                "expected \"embedded\" or \"redis\"",
            ),
            (
                "\n[store]\nkind = \"redis\"\nurl = \"http://x\"\n",
                "expected redis://",
            ),
        ] {
            let e = StackConfig::parse(p, text).unwrap_err().to_string();
            assert!(
                e.contains("mailstackd.toml") && e.contains(":2") && e.contains(want),
                "{e}"
            );
        }
        // Without [store], DMARC's MailstackStore applies.
        let c = StackConfig::parse(
            p,
            "[dmarc]\noptions = { MailstackStore = \"redis://127.0.0.1/0\" }\n",
        )
        .unwrap();
        assert!(c.store.is_none());
        assert!(
            c.describe().contains("store: redis redis://127.0.0.1/0"),
            "{}",
            c.describe()
        );
    }

    #[test]
    fn embedded_default_verifies_and_never_rejects() {
        let c = StackConfig::embedded().unwrap();
        let k = c.dkim.as_ref().unwrap();
        assert!(k.verify && !k.sign);
        assert!(!c.dmarc.as_ref().unwrap().reject_failures);
        assert!(c.av.is_none());
        let s = c.spf.as_ref().unwrap();
        assert!(!s.permerror_reject && !s.temperror_defer);
        assert_eq!(c.sources[3].1, Source::Off);
    }

    #[test]
    fn inline_options_and_errors_name_the_toml_line() {
        let p = Path::new("/etc/mailstackd.toml");
        let text = "[mailstackd]\nauthserv_id = \"mx\"\n\n[dmarc]\noptions = { RejectFailures = true }\n\
[av]\noptions = { ClamdSocket = \"unix:/run/c.sock\" }\n";
        let c = StackConfig::parse(p, text).unwrap();
        assert!(c.dmarc.as_ref().unwrap().reject_failures);
        assert!(c.av.is_some());
        assert_eq!(c.daemon.authserv_id.as_deref(), Some("mx"));

        let bad = "[dkim]\noptions = { Mode = \"sv\", Canonicalization = \"bogus\" }\n";
        let e = StackConfig::parse(p, bad).unwrap_err().to_string();
        assert!(e.starts_with("/etc/mailstackd.toml:2:"), "{e}");
        assert!(e.contains("[dkim.options]"), "{e}");

        let e = StackConfig::parse(p, "[mailstackd]\n\nsockett = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/mailstackd.toml:3:"), "{e}");
        assert!(e.contains("sockett"), "{e}");

        let e = StackConfig::parse(p, "[spf]\nconfig = \"missing.conf\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/missing.conf"), "{e}");
        assert!(e.starts_with("/etc/mailstackd.toml:2:"), "{e}");
    }

    #[test]
    fn a_section_can_be_switched_off() {
        let c = StackConfig::parse(Path::new("m.toml"), "[dkim]\nenabled = false\n").unwrap();
        assert!(c.dkim.is_none());
        assert_eq!(c.sources[1].1, Source::Off);
        assert!(c.spf.is_some() && c.dmarc.is_some());
    }
}
