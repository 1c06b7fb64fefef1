//! mailstack-init's configuration: the seed's layout as it is, plus an optional
//! `mailstack-init.toml`.
//!
//! The seed keeps every tool's configuration under `/usr/local/etc`: `postfix/` (main.cf,
//! master.cf), `opendkim/opendkim.conf`, `opendmarc/opendmarc.conf`, `clamav/clamd.conf` and
//! `clamav/clamav-milter.conf`, `python-policyd-spf/policyd-spf.conf`, and `users.txt`. The
//! environment adds `MAIL_LOG_HOST` (forward the mail log there) and `MAILDIR_BACKUP=TRUE`.
//!
//! `mailstack-init.toml` (every key optional):
//!
//! ```toml
//! root = "/"                  # prefix of every path below and of the run directories
//! etc = "/usr/local/etc"      # the seed's configuration tree
//! users = "/usr/local/etc/users.txt"
//! passwd_root = "/"           # the system whose /etc/passwd users are added to
//! filters = ["mailstackd"]    # or any of dkim-milter, dmarc-milter, av-milter, spf-policyd
//! clamd = "auto"              # "yes", "no"; auto: AV is on (av-milter, or clamav/clamd.conf
//!                             #   exists and mailstackd runs)
//! saslauthd = "auto"          # auto: postfix/main.cf has smtpd_sasl_auth_enable = yes
//! saslauthd_mech = "shadow"
//! smtp = "127.0.0.1:25"       # where Postfix's banner is expected (readiness, health)
//! bin_dir = "/usr/local/bin"  # our daemons
//! grace_seconds = 30          # SIGTERM to SIGKILL, per stage
//! ready_timeout_seconds = 30  # per service (clamd: clamd_ready_timeout_seconds, 300)
//! restart_backoff_ms = 1000   # first restart delay, doubling up to 30 s
//!
//! [programs]                  # override a program's path (postfix, clamd, saslauthd, ...)
//! [args]                      # extra arguments per service, e.g. mailstackd = ["--nameserver", "..."]
//! [sockets]                   # override a filter's socket, e.g. dkim-milter = "unix:/p"
//!                             #   (as given, not under root; its directory is made as the
//!                             #   default one would be)
//!
//! [log]                       # the syslog receiver and the mail log
//! dev_log = "/dev/log"        # where Postfix and saslauthd log (as given; "" = none)
//! file = "/var/log/mail.log"  # when MAIL_LOG_HOST is unset; rotated by size
//! max_bytes = 10485760
//! keep = 4
//! queue = 10000               # lines waiting for the disk or the log host, then dropped
//!
//! [backup]                    # the Maildir backup, when MAILDIR_BACKUP=TRUE
//! schedule = "daily 03:00"    # UTC; or "every 6h"
//! homes = "/home/mail_users"
//! dest = "/dest"
//!
//! [reports]                   # DMARC aggregate reports on a schedule (off unless given)
//! schedule = "daily 00:30"    # or every = "24h"
//! command = "/usr/local/bin/mailstack"       # the default: BIN_DIR/mailstack
//! args = ["dmarc-report", "--store", "/var/lib/mailstack/store.redb"]
//! timeout_seconds = 3600
//! jitter_seconds = 0
//! ```
//!
//! [`InitConfig::plan`] validates everything (directories, files, programs, owners) before
//! anything starts; every error names the file and, for the TOML, the line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::clamd::ClamdAddr;
use crate::init::schedule::Schedule;
use milter_proto::SocketSpec;

/// Where the seed's layout is looked for by default.
pub const DEFAULT_TOML: &str = "/usr/local/etc/mailstack-init.toml";

/// What is wrong with the container's setup: its `mailstack-init.toml` (file and line), or a
/// directory, file, program or owner the plan needs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A file could not be read (the error names it).
    #[error(transparent)]
    Read(#[from] crate::config::ConfigError),
    /// A value in a file is wrong.
    #[error("{path}:{line}: {message}")]
    At {
        /// The file.
        path: PathBuf,
        /// Its line (1-based; 0 when unknown).
        line: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A directory the configuration needs is missing.
    #[error("{path}: missing configuration directory ({what})")]
    MissingDir {
        /// The directory.
        path: PathBuf,
        /// Who needs it.
        what: String,
    },
    /// A file a service needs is missing.
    #[error("{path}: missing file ({what})")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// Who needs it.
        what: String,
    },
    /// A service's program is missing or not executable.
    #[error("{path}: service binary of {service} is missing or not executable")]
    MissingProgram {
        /// The program.
        path: PathBuf,
        /// The service.
        service: String,
    },
    /// A user or group a run directory belongs to does not exist.
    #[error("{dir}: owner {name} does not exist ({file})")]
    NoOwner {
        /// The directory.
        dir: PathBuf,
        /// The user or group.
        name: String,
        /// The file looked in.
        file: PathBuf,
    },
}

/// How `clamd`/`saslauthd` are switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Decided from the seed's files.
    #[default]
    Auto,
    /// Always.
    Yes,
    /// Never.
    No,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    root: Option<PathBuf>,
    etc: Option<PathBuf>,
    users: Option<PathBuf>,
    passwd_root: Option<PathBuf>,
    filters: Option<toml::Spanned<Vec<String>>>,
    clamd: Option<Switch>,
    saslauthd: Option<Switch>,
    saslauthd_mech: Option<String>,
    smtp: Option<toml::Spanned<String>>,
    bin_dir: Option<PathBuf>,
    grace_seconds: Option<u64>,
    ready_timeout_seconds: Option<u64>,
    clamd_ready_timeout_seconds: Option<u64>,
    restart_backoff_ms: Option<u64>,
    #[serde(default)]
    programs: BTreeMap<String, PathBuf>,
    #[serde(default)]
    args: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    sockets: BTreeMap<String, toml::Spanned<String>>,
    #[serde(default)]
    log: LogToml,
    #[serde(default)]
    backup: BackupToml,
    reports: Option<toml::Spanned<ReportsToml>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogToml {
    dev_log: Option<PathBuf>,
    file: Option<PathBuf>,
    max_bytes: Option<u64>,
    keep: Option<usize>,
    queue: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupToml {
    schedule: Option<toml::Spanned<String>>,
    homes: Option<PathBuf>,
    dest: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportsToml {
    schedule: Option<toml::Spanned<String>>,
    /// `every = "24h"`: the same as `schedule = "every 24h"`.
    every: Option<toml::Spanned<String>>,
    command: Option<PathBuf>,
    #[serde(default)]
    args: Vec<String>,
    timeout_seconds: Option<u64>,
    jitter_seconds: Option<u64>,
}

/// The container's log: the `/dev/log` receiver and where its lines go.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// The syslog socket Postfix and saslauthd write to (`[log] dev_log`, default
    /// `/dev/log`, taken as given, not under `root`); `None` (`dev_log = ""`): no receiver.
    pub dev_log: Option<PathBuf>,
    /// The mail log when `MAIL_LOG_HOST` is unset (under `root`; default
    /// `/var/log/mail.log`).
    pub file: PathBuf,
    /// Size at which the mail log is rotated.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
    /// Lines waiting for the disk or the log host before new ones are dropped (counted).
    pub queue: usize,
}

/// The Maildir backup's schedule and places (it runs when `MAILDIR_BACKUP=TRUE`).
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// When (`[backup] schedule`, default `daily 03:00`, UTC).
    pub schedule: Schedule,
    /// The mail users' homes (under `root`; default `/home/mail_users`).
    pub homes: PathBuf,
    /// Where the archives go (under `root`; default `/dest`).
    pub dest: PathBuf,
}

/// The scheduled DMARC aggregate report run (`[reports]`).
#[derive(Debug, Clone)]
pub struct ReportJob {
    /// When (`daily HH:MM` UTC or `every N[smhd]`).
    pub schedule: Schedule,
    /// The program (default `BIN_DIR/mailstack`).
    pub program: PathBuf,
    /// Its arguments (default `dmarc-report`; the admin's `args` replace them).
    pub args: Vec<OsString>,
    /// A run that takes longer is killed (default one hour).
    pub timeout: Duration,
    /// Each run starts up to this much later than its slot.
    pub jitter: Duration,
}

/// The filters mailstack-init can run.
pub const FILTERS: [&str; 5] = [
    "mailstackd",
    "dkim-milter",
    "dmarc-milter",
    "av-milter",
    "spf-policyd",
];

/// Everything mailstack-init was told, before validation.
#[derive(Debug, Clone)]
pub struct InitConfig {
    /// The TOML read, if any.
    pub source: Option<PathBuf>,
    /// Prefix of every seed path and run directory.
    pub root: PathBuf,
    /// The seed's configuration tree (already under `root`).
    pub etc: PathBuf,
    /// `users.txt` (already under `root`).
    pub users: PathBuf,
    /// The system users are added to (`useradd --root` when not `/`).
    pub passwd_root: PathBuf,
    /// The filters to run, in start order.
    pub filters: Vec<String>,
    /// clamd.
    pub clamd: Switch,
    /// saslauthd.
    pub saslauthd: Switch,
    /// saslauthd's `-a` mechanism.
    pub saslauthd_mech: String,
    /// Postfix's SMTP listener (readiness and health).
    pub smtp: SocketAddr,
    /// Where our daemons are.
    pub bin_dir: PathBuf,
    /// Per-stage stop grace.
    pub grace: Duration,
    /// Readiness bound per service.
    pub ready_timeout: Duration,
    /// Readiness bound for clamd (it loads its databases first).
    pub clamd_ready_timeout: Duration,
    /// First restart delay.
    pub restart_backoff: Duration,
    /// Program overrides.
    pub programs: BTreeMap<String, PathBuf>,
    /// Extra arguments per service.
    pub args: BTreeMap<String, Vec<String>>,
    /// Socket overrides per filter.
    pub sockets: BTreeMap<String, SocketSpec>,
    /// `MAIL_LOG_HOST`: forward the mail log to this host's port 514.
    pub mail_log_host: Option<String>,
    /// `MAILDIR_BACKUP=TRUE`.
    pub maildir_backup: bool,
    /// The `/dev/log` receiver and the mail log.
    pub log: LogSettings,
    /// The Maildir backup's schedule and places.
    pub backup: BackupSettings,
    /// The scheduled report command, when `[reports]` is given.
    pub reports: Option<ReportJob>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

/// `path` under `root` (an absolute `path` loses its leading `/`).
pub fn under(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(path),
    }
}

impl InitConfig {
    /// The seed's defaults with the environment, no TOML.
    pub fn seed() -> Self {
        Self::from_toml(None, TomlFile::default(), "", &env_lookup)
            .unwrap_or_else(|_| unreachable!("the defaults parse"))
    }

    /// Reads `path` (TOML) over the seed's defaults and the environment.
    pub fn read(path: &Path) -> Result<Self, SetupError> {
        let text = crate::config::read_bounded(path)?;
        Self::parse(path, &text, &env_lookup)
    }

    /// [`read`](Self::read) when `path` exists, the seed's defaults otherwise.
    pub fn read_optional(path: &Path) -> Result<Self, SetupError> {
        if path.exists() {
            Self::read(path)
        } else {
            Ok(Self::seed())
        }
    }

    /// Parses TOML `text` (read from `path`) with `env` for the environment.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SetupError> {
        let file: TomlFile = toml::from_str(text).map_err(|e| SetupError::At {
            path: path.to_owned(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
        Self::from_toml(Some(path), file, text, env)
    }

    fn from_toml(
        path: Option<&Path>,
        f: TomlFile,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SetupError> {
        let at = |offset: usize, message: String| SetupError::At {
            path: path.map(Path::to_owned).unwrap_or_default(),
            line: line_of(text, offset),
            message,
        };
        let root = f.root.unwrap_or_else(|| PathBuf::from("/"));
        let etc = under(
            &root,
            &f.etc.unwrap_or_else(|| PathBuf::from("/usr/local/etc")),
        );
        let users = match f.users {
            Some(u) => under(&root, &u),
            None => etc.join("users.txt"),
        };
        let filters = match f.filters {
            None => vec!["mailstackd".to_owned()],
            Some(s) => {
                let start = s.span().start;
                let list = s.into_inner();
                for name in &list {
                    if !FILTERS.contains(&name.as_str()) {
                        return Err(at(
                            start,
                            format!("filters: unknown {name:?} (expected any of {FILTERS:?})"),
                        ));
                    }
                }
                if list.is_empty() {
                    return Err(at(start, "filters: empty (name at least one)".into()));
                }
                list
            }
        };
        let smtp = match f.smtp {
            None => SocketAddr::from(([127, 0, 0, 1], 25)),
            Some(s) => {
                let start = s.span().start;
                s.get_ref()
                    .parse()
                    .map_err(|_| at(start, format!("smtp: {:?} is not IP:PORT", s.get_ref())))?
            }
        };
        let mut sockets = BTreeMap::new();
        for (name, spec) in f.sockets {
            let start = spec.span().start;
            if !FILTERS.contains(&name.as_str()) {
                return Err(at(start, format!("sockets: unknown filter {name:?}")));
            }
            let parsed: SocketSpec = spec
                .get_ref()
                .parse()
                .map_err(|e| at(start, format!("sockets.{name}: {e}")))?;
            sockets.insert(name, parsed);
        }
        let schedule = |spanned: &toml::Spanned<String>, key: &str| {
            spanned
                .get_ref()
                .parse::<Schedule>()
                .map_err(|e| at(spanned.span().start, format!("{key}: {e}")))
        };
        let mail_log_host = env("MAIL_LOG_HOST").filter(|h| !h.trim().is_empty());
        if let Some(h) = &mail_log_host {
            crate::init::forward::ForwardConfig::from_log_host(h).map_err(|e| SetupError::At {
                path: PathBuf::from("<environment MAIL_LOG_HOST>"),
                line: 0,
                message: e.to_string(),
            })?;
        }
        let bin_dir = f.bin_dir.unwrap_or_else(|| PathBuf::from("/usr/local/bin"));
        let log = LogSettings {
            dev_log: match f.log.dev_log {
                None => Some(PathBuf::from("/dev/log")),
                Some(p) if p.as_os_str().is_empty() => None,
                Some(p) => Some(p),
            },
            file: under(
                &root,
                &f.log
                    .file
                    .unwrap_or_else(|| PathBuf::from("/var/log/mail.log")),
            ),
            max_bytes: f
                .log
                .max_bytes
                .unwrap_or(crate::init::logfile::DEFAULT_MAX_BYTES)
                .max(4096),
            keep: f
                .log
                .keep
                .unwrap_or(crate::init::logfile::DEFAULT_KEEP)
                .min(crate::init::logfile::MAX_KEEP),
            queue: f
                .log
                .queue
                .unwrap_or(crate::init::syslog::DEFAULT_QUEUE)
                .clamp(16, 1_000_000),
        };
        let backup = BackupSettings {
            schedule: match &f.backup.schedule {
                Some(s) => schedule(s, "backup.schedule")?,
                None => Schedule::daily(3, 0).unwrap_or_else(|_| unreachable!("a valid time")),
            },
            homes: under(
                &root,
                &f.backup
                    .homes
                    .unwrap_or_else(|| PathBuf::from(crate::init::backup::DEFAULT_HOMES)),
            ),
            dest: under(
                &root,
                &f.backup
                    .dest
                    .unwrap_or_else(|| PathBuf::from(crate::init::backup::DEFAULT_DEST)),
            ),
        };
        let reports = match &f.reports {
            None => None,
            Some(spanned) => Some({
                let r = spanned.get_ref();
                ReportJob {
                    schedule: match (&r.schedule, &r.every) {
                        (Some(s), None) => schedule(s, "reports.schedule")?,
                        (None, Some(e)) => {
                            let every = toml::Spanned::new(
                                e.span(),
                                format!("every {}", e.get_ref().trim()),
                            );
                            schedule(&every, "reports.every")?
                        }
                        (Some(s), Some(_)) => {
                            return Err(at(
                                s.span().start,
                                "[reports]: give schedule or every, not both".into(),
                            ));
                        }
                        (None, None) => {
                            return Err(at(
                                spanned.span().start,
                                "[reports]: expected schedule = \"daily HH:MM\" or every = \"24h\""
                                    .into(),
                            ));
                        }
                    },
                    program: r
                        .command
                        .clone()
                        .unwrap_or_else(|| bin_dir.join("mailstack")),
                    args: if r.args.is_empty() {
                        vec![OsString::from("dmarc-report")]
                    } else {
                        r.args.iter().map(OsString::from).collect()
                    },
                    timeout: Duration::from_secs(r.timeout_seconds.unwrap_or(3600).max(1)),
                    jitter: Duration::from_secs(r.jitter_seconds.unwrap_or(0)),
                }
            }),
        };
        Ok(Self {
            source: path.map(Path::to_owned),
            root,
            etc,
            users,
            passwd_root: f.passwd_root.unwrap_or_else(|| PathBuf::from("/")),
            filters,
            clamd: f.clamd.unwrap_or_default(),
            saslauthd: f.saslauthd.unwrap_or_default(),
            saslauthd_mech: f.saslauthd_mech.unwrap_or_else(|| "shadow".into()),
            smtp,
            bin_dir,
            grace: Duration::from_secs(f.grace_seconds.unwrap_or(30)),
            ready_timeout: Duration::from_secs(f.ready_timeout_seconds.unwrap_or(30)),
            clamd_ready_timeout: Duration::from_secs(f.clamd_ready_timeout_seconds.unwrap_or(300)),
            restart_backoff: Duration::from_millis(f.restart_backoff_ms.unwrap_or(1000).max(10)),
            programs: f.programs,
            args: f.args,
            sockets,
            mail_log_host,
            maildir_backup: env("MAILDIR_BACKUP").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            log,
            backup,
            reports,
        })
    }

    /// A run directory (e.g. `/var/run/opendkim`) under `root`.
    pub fn run_path(&self, p: &str) -> PathBuf {
        under(&self.root, Path::new(p))
    }

    /// The seed's Postfix configuration directory.
    pub fn postfix_dir(&self) -> PathBuf {
        self.etc.join("postfix")
    }

    fn program(&self, name: &str, default: PathBuf) -> PathBuf {
        self.programs.get(name).cloned().unwrap_or(default)
    }

    fn extra(&self, name: &str) -> impl Iterator<Item = OsString> + '_ {
        self.args
            .get(name)
            .into_iter()
            .flatten()
            .map(OsString::from)
    }

    /// Validates everything and builds the start plan. Nothing is started.
    pub fn plan(&self) -> Result<Plan, SetupError> {
        need_dir(&self.etc, "the seed's configuration tree")?;
        let pf_dir = self.postfix_dir();
        need_dir(&pf_dir, "Postfix (postfix -c)")?;
        need_file(&pf_dir.join("main.cf"), "Postfix")?;
        let main_cf = crate::config::read_bounded(&pf_dir.join("main.cf"))?;
        let mut services = Vec::new();
        let mut dirs = Vec::new();

        // saslauthd.
        let sasl_on = match self.saslauthd {
            Switch::Yes => true,
            Switch::No => false,
            Switch::Auto => main_cf_param(&main_cf, "smtpd_sasl_auth_enable")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        };
        if sasl_on {
            let run = self.run_path("/var/run/saslauthd");
            dirs.push(RunDir::new(&run, 0o710, "root", "sasl"));
            services.push(ServiceSpec {
                name: "saslauthd".into(),
                role: Role::Support,
                program: self.program("saslauthd", "/usr/sbin/saslauthd".into()),
                args: ["-d", "-a", self.saslauthd_mech.as_str(), "-n", "2", "-m"]
                    .into_iter()
                    .map(OsString::from)
                    .chain([run.clone().into_os_string()])
                    .chain(self.extra("saslauthd"))
                    .collect(),
                probe: Probe::Accepts(run.join("mux")),
                ready_timeout: self.ready_timeout,
                stop: Stop::Signal,
                reload: Reload::None,
            });
        }

        // clamd.
        let clamav = self.etc.join("clamav");
        let av_on = match self.clamd {
            Switch::Yes => true,
            Switch::No => false,
            Switch::Auto => {
                self.filters.iter().any(|f| f == "av-milter")
                    || (self.filters.iter().any(|f| f == "mailstackd")
                        && clamav.join("clamd.conf").exists())
            }
        };
        let mut clamd_addr = None;
        if av_on {
            need_dir(&clamav, "clamd")?;
            let conf = clamav.join("clamd.conf");
            need_file(&conf, "clamd")?;
            let addr = clamd_socket(&conf)?;
            dirs.push(RunDir::new(
                &self.run_path("/var/run/clamav"),
                0o3770,
                "clamav",
                "postfix",
            ));
            let mut args = vec![OsString::from("--foreground")];
            let mut c = OsString::from("--config-file=");
            c.push(&conf);
            args.push(c);
            args.extend(self.extra("clamd"));
            services.push(ServiceSpec {
                name: "clamd".into(),
                role: Role::Support,
                program: self.program("clamd", "/usr/sbin/clamd".into()),
                args,
                probe: Probe::ClamdPing(addr.clone()),
                ready_timeout: self.clamd_ready_timeout,
                stop: Stop::Signal,
                reload: Reload::None,
            });
            clamd_addr = Some(addr);
        }

        // The filters.
        for name in &self.filters {
            let (dir_path, sock, user, conf): (&str, &str, Option<&str>, Option<PathBuf>) =
                match name.as_str() {
                    "mailstackd" => (
                        "/var/run/mailstack",
                        "mailstackd.sock",
                        Some("opendkim"),
                        None,
                    ),
                    "dkim-milter" => (
                        "/var/run/opendkim",
                        "opendkim.sock",
                        None,
                        Some(self.etc.join("opendkim/opendkim.conf")),
                    ),
                    "dmarc-milter" => (
                        "/var/run/opendmarc",
                        "opendmarc.sock",
                        None,
                        Some(self.etc.join("opendmarc/opendmarc.conf")),
                    ),
                    "av-milter" => (
                        "/var/run/clamav",
                        "clamav-milter.sock",
                        None,
                        Some(clamav.join("clamav-milter.conf")),
                    ),
                    "spf-policyd" => (
                        "/var/run/policyd-spf",
                        "policyd-spf.sock",
                        Some("policyd-spf"),
                        Some(self.etc.join("python-policyd-spf/policyd-spf.conf")),
                    ),
                    _ => unreachable!("names were checked against FILTERS"),
                };
            if let Some(c) = &conf {
                if let Some(parent) = c.parent() {
                    need_dir(parent, name)?;
                }
                need_file(c, name)?;
            }
            let default_run = self.run_path(dir_path);
            let spec = self
                .sockets
                .get(name)
                .cloned()
                .unwrap_or_else(|| SocketSpec::Unix(default_run.join(sock)));
            // A unix socket elsewhere (inside Postfix's chroot, say) gets its directory made
            // the same way.
            let run = match &spec {
                SocketSpec::Unix(p) => p.parent().map_or(default_run.clone(), Path::to_owned),
                _ => default_run,
            };
            let owner = match name.as_str() {
                "mailstackd" | "dkim-milter" => "opendkim",
                "dmarc-milter" => "opendmarc",
                "av-milter" => "clamav",
                _ => "policyd-spf",
            };
            if !dirs.iter().any(|d: &RunDir| d.path == run) {
                dirs.push(RunDir::new(&run, 0o3770, owner, "postfix"));
            }
            let mut args: Vec<OsString> = Vec::new();
            if let Some(c) = &conf {
                args.push("--config".into());
                args.push(c.clone().into_os_string());
            } else if name == "mailstackd" {
                let toml = self.etc.join("mailstack/mailstackd.toml");
                if toml.exists() {
                    args.push("--config".into());
                    args.push(toml.into_os_string());
                } else if let Some(a) = &clamd_addr {
                    args.push("--clamd".into());
                    args.push(a.to_string().into());
                }
            }
            args.push("--socket".into());
            args.push(spec.to_string().into());
            if let Some(u) = user {
                args.push("--user".into());
                args.push(u.into());
            }
            if name == "spf-policyd" {
                args.push("--log".into());
                args.push("stderr".into());
            }
            args.extend(self.extra(name));
            let probe = if name == "spf-policyd" {
                match &spec {
                    SocketSpec::Unix(p) => Probe::Accepts(p.clone()),
                    other => Probe::AcceptsSpec(other.clone()),
                }
            } else {
                Probe::Milter(spec.clone())
            };
            services.push(ServiceSpec {
                name: name.clone(),
                role: Role::Filter,
                program: self.program(name, self.bin_dir.join(name)),
                args,
                probe,
                ready_timeout: self.ready_timeout,
                stop: Stop::Signal,
                // spf-policyd reads its file at start only; the milters reload on SIGHUP.
                reload: if name == "spf-policyd" {
                    Reload::Restart
                } else {
                    Reload::Hangup
                },
            });
        }

        // Postfix last.
        let postfix = self.program("postfix", "/usr/sbin/postfix".into());
        services.push(ServiceSpec {
            name: "postfix".into(),
            role: Role::Mta,
            program: postfix.clone(),
            args: vec![
                "-c".into(),
                pf_dir.clone().into_os_string(),
                "start-fg".into(),
            ]
            .into_iter()
            .chain(self.extra("postfix"))
            .collect(),
            probe: Probe::SmtpBanner(self.smtp),
            ready_timeout: self.ready_timeout,
            stop: Stop::Command(vec![
                postfix.into_os_string(),
                "-c".into(),
                pf_dir.into_os_string(),
                "stop".into(),
            ]),
            reload: Reload::None,
        });

        for s in &services {
            if !is_executable(&s.program) {
                return Err(SetupError::MissingProgram {
                    path: s.program.clone(),
                    service: s.name.clone(),
                });
            }
        }
        let passwd = under(&self.passwd_root, Path::new("/etc/passwd"));
        let group = under(&self.passwd_root, Path::new("/etc/group"));
        for d in &dirs {
            if crate::init::users::lookup_id(&passwd, &d.user).is_none() {
                return Err(SetupError::NoOwner {
                    dir: d.path.clone(),
                    name: d.user.clone(),
                    file: passwd,
                });
            }
            if crate::init::users::lookup_id(&group, &d.group).is_none() {
                return Err(SetupError::NoOwner {
                    dir: d.path.clone(),
                    name: d.group.clone(),
                    file: group,
                });
            }
        }
        Ok(Plan {
            services,
            dirs,
            grace: self.grace,
            restart_backoff: self.restart_backoff,
        })
    }
}

fn env_lookup(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn need_dir(p: &Path, what: &str) -> Result<(), SetupError> {
    if p.is_dir() {
        Ok(())
    } else {
        Err(SetupError::MissingDir {
            path: p.to_owned(),
            what: what.to_owned(),
        })
    }
}

fn need_file(p: &Path, what: &str) -> Result<(), SetupError> {
    if p.is_file() {
        Ok(())
    } else {
        Err(SetupError::MissingFile {
            path: p.to_owned(),
            what: what.to_owned(),
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A `main.cf` parameter's value (last assignment wins, continuation lines joined).
pub fn main_cf_param(text: &str, name: &str) -> Option<String> {
    let mut value = None;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = current.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some(v) = current.take() {
            value = Some(v);
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == name
        {
            current = Some(v.trim().to_owned());
        }
    }
    current.or(value).map(|v| v.trim().to_owned())
}

/// clamd's socket from `clamd.conf`: `LocalSocket PATH` or `TCPSocket PORT` (+`TCPAddr`).
pub fn clamd_socket(conf: &Path) -> Result<ClamdAddr, SetupError> {
    let text = crate::config::read_bounded(conf)?;
    let mut local = None;
    let mut port = None;
    let mut addr = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("LocalSocket"), Some(p)) => local = Some((i + 1, p.to_owned())),
            (Some("TCPSocket"), Some(p)) => port = Some((i + 1, p.to_owned())),
            (Some("TCPAddr"), Some(a)) => addr = Some(a.to_owned()),
            _ => {}
        }
    }
    let bad = |line: usize, message: String| SetupError::At {
        path: conf.to_owned(),
        line,
        message,
    };
    if let Some((line, p)) = local {
        if !p.starts_with('/') {
            return Err(bad(
                line,
                format!("LocalSocket {p:?}: expected an absolute path"),
            ));
        }
        return Ok(ClamdAddr::Unix(p.into()));
    }
    if let Some((line, p)) = port {
        let n: u16 = p
            .parse()
            .map_err(|_| bad(line, format!("TCPSocket {p:?}: expected a port")))?;
        return Ok(ClamdAddr::Tcp(format!(
            "{}:{n}",
            addr.unwrap_or_else(|| "127.0.0.1".into())
        )));
    }
    Err(bad(
        0,
        "neither LocalSocket nor TCPSocket: mailstack-init cannot tell where clamd listens".into(),
    ))
}

/// What a service is to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// saslauthd, clamd: started first, stopped last.
    Support,
    /// A milter or policy server: Postfix needs it.
    Filter,
    /// Postfix: started last, stopped first.
    Mta,
}

/// How readiness (and health) is checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Probe {
    /// A unix socket accepts a connection.
    Accepts(PathBuf),
    /// A socket (any kind) accepts a connection.
    AcceptsSpec(SocketSpec),
    /// A milter answers OPTNEG.
    Milter(SocketSpec),
    /// clamd answers PING.
    ClamdPing(ClamdAddr),
    /// An SMTP server sends a 220 banner.
    SmtpBanner(SocketAddr),
}

/// How a service is stopped.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Stop {
    /// SIGTERM to its process.
    Signal,
    /// Run this command (e.g. `postfix stop`), falling back to SIGTERM if it fails.
    Command(Vec<OsString>),
}

/// One service to run.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Its name in logs and errors.
    pub name: String,
    /// Its place in the order.
    pub role: Role,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// When it is ready.
    pub probe: Probe,
    /// How long it may take to be ready.
    pub ready_timeout: Duration,
    /// How it is stopped.
    pub stop: Stop,
    /// What SIGHUP to mailstack-init does to it.
    pub reload: Reload,
}

/// What SIGHUP to mailstack-init does to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reload {
    /// Nothing (saslauthd, clamd, Postfix).
    None,
    /// SIGHUP is passed on: the daemon re-reads its configuration in place (our milters).
    Hangup,
    /// Restarted and waited for (a daemon that reads its configuration only at start).
    Restart,
}

/// A run directory to create (the seed's tmpfiles rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
    /// Its mode (with setgid/sticky bits).
    pub mode: u32,
    /// Owner user.
    pub user: String,
    /// Owner group.
    pub group: String,
}

impl RunDir {
    fn new(path: &Path, mode: u32, user: &str, group: &str) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            user: user.into(),
            group: group.into(),
        }
    }
}

/// What to start, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Services in start order.
    pub services: Vec<ServiceSpec>,
    /// Run directories to create first.
    pub dirs: Vec<RunDir>,
    /// Per-stage stop grace.
    pub grace: Duration,
    /// First restart delay.
    pub restart_backoff: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("usr/local/etc");
        std::fs::create_dir_all(etc.join("postfix")).unwrap();
        std::fs::write(etc.join("postfix/main.cf"), "smtpd_sasl_auth_enable = no\n").unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for b in ["mailstackd", "dkim-milter", "postfix", "saslauthd"] {
            let p = bin.join(b);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        t
    }

    fn cfg(t: &Path, extra: &str) -> Result<InitConfig, SetupError> {
        let bin = t.join("bin");
        let text = format!(
            "root = {:?}\nbin_dir = {:?}\n{extra}[programs]\npostfix = {:?}\nsaslauthd = {:?}\n",
            t,
            bin,
            bin.join("postfix"),
            bin.join("saslauthd")
        );
        InitConfig::parse(Path::new("/x/mailstack-init.toml"), &text, &|k| {
            (k == "MAILDIR_BACKUP").then(|| "TRUE".into())
        })
    }

    #[test]
    fn default_plan_is_mailstackd_then_postfix() {
        let t = tree();
        let c = cfg(t.path(), "").unwrap();
        assert!(c.maildir_backup);
        let p = c.plan().unwrap();
        let names: Vec<_> = p.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["mailstackd", "postfix"]);
        assert_eq!(p.dirs[0].path, t.path().join("var/run/mailstack"));
        assert_eq!(p.dirs[0].mode, 0o3770);
    }

    #[test]
    fn socket_override_moves_the_run_directory() {
        let t = tree();
        let text = format!(
            "root = {:?}\nbin_dir = {:?}\n[programs]\npostfix = {:?}\n[sockets]\nmailstackd = \"unix:/var/spool/postfix/mailstack/m.sock\"\n",
            t.path(),
            t.path().join("bin"),
            t.path().join("bin/postfix")
        );
        let p = InitConfig::parse(Path::new("i.toml"), &text, &|_| None)
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(p.dirs[0].path, Path::new("/var/spool/postfix/mailstack"));
        let args: Vec<_> = p.services[0]
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--socket" && w[1] == "unix:/var/spool/postfix/mailstack/m.sock"),
            "{args:?}"
        );
    }

    #[test]
    fn sasl_on_from_main_cf_goes_first() {
        let t = tree();
        std::fs::write(
            t.path().join("usr/local/etc/postfix/main.cf"),
            "smtpd_sasl_auth_enable =\n  yes\n",
        )
        .unwrap();
        let p = cfg(t.path(), "").unwrap().plan().unwrap();
        assert_eq!(p.services[0].name, "saslauthd");
    }

    #[test]
    fn unknown_filter_names_the_line() {
        let t = tree();
        let e = cfg(t.path(), "").and_then(|_| {
            InitConfig::parse(
                Path::new("/x/i.toml"),
                "\n\nfilters = [\"opendkim\"]\n",
                &|_| None,
            )
        });
        let msg = e.unwrap_err().to_string();
        assert!(
            msg.starts_with("/x/i.toml:3: filters: unknown \"opendkim\""),
            "{msg}"
        );
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let e = InitConfig::parse(
            Path::new("/x/i.toml"),
            "grace_seconds = 1\nbogus = 2\n",
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/x/i.toml:2:"), "{e}");
    }

    #[test]
    fn reports_every_is_a_schedule_and_one_is_required() {
        let c = InitConfig::parse(
            Path::new("/x/i.toml"),
            "[reports]\nevery = \"24h\"\nargs = [\"dmarc-report\", \"--send\"]\n",
            &|_| None,
        )
        .unwrap();
        let r = c.reports.unwrap();
        assert_eq!(
            r.schedule,
            Schedule::every(Duration::from_secs(24 * 3600)).unwrap()
        );
        assert_eq!(r.args, ["dmarc-report", "--send"]);
        let e = InitConfig::parse(
            Path::new("/x/i.toml"),
            "grace_seconds = 1\n[reports]\nevery = \"soon\"\n",
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/x/i.toml:3: reports.every:"), "{e}");
        let e = InitConfig::parse(
            Path::new("/x/i.toml"),
            "grace_seconds = 1\n[reports]\nargs = []\n",
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/x/i.toml:2: [reports]: expected schedule"),
            "{e}"
        );
        let e = InitConfig::parse(
            Path::new("/x/i.toml"),
            "[reports]\nschedule = \"every 1h\"\nevery = \"1h\"\n",
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/x/i.toml:2: [reports]: give schedule or every"),
            "{e}"
        );
    }

    #[test]
    fn log_backup_and_reports_sections() {
        let c = InitConfig::parse(
            Path::new("/x/i.toml"),
            "root = \"/r\"\nbin_dir = \"/b\"\n[log]\ndev_log = \"\"\nkeep = 2\n\
             [backup]\nschedule = \"every 6h\"\n[reports]\nschedule = \"daily 00:30\"\n\
             args = [\"dmarc-report\", \"--store\", \"/s\"]\n",
            &|k| (k == "MAILDIR_BACKUP").then(|| "TRUE".to_owned()),
        )
        .unwrap();
        assert_eq!(c.log.dev_log, None);
        assert_eq!(c.log.file, Path::new("/r/var/log/mail.log"));
        assert_eq!(c.log.keep, 2);
        assert!(c.maildir_backup);
        assert_eq!(
            c.backup.schedule,
            Schedule::every(Duration::from_secs(6 * 3600)).unwrap()
        );
        assert_eq!(c.backup.dest, Path::new("/r/dest"));
        let r = c.reports.unwrap();
        assert_eq!(r.program, Path::new("/b/mailstack"));
        assert_eq!(r.schedule, Schedule::daily(0, 30).unwrap());
        assert_eq!(r.args, ["dmarc-report", "--store", "/s"]);
        // Without [reports], no report job; the receiver is on /dev/log.
        let c = InitConfig::parse(Path::new("/x/i.toml"), "", &|_| None).unwrap();
        assert!(c.reports.is_none());
        assert_eq!(c.log.dev_log.as_deref(), Some(Path::new("/dev/log")));
    }

    #[test]
    fn bad_schedule_and_log_host_are_named() {
        let e = InitConfig::parse(
            Path::new("/x/i.toml"),
            "grace_seconds = 1\n[reports]\nschedule = \"weekly\"\n",
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/x/i.toml:3: reports.schedule:"), "{e}");
        let e = InitConfig::parse(Path::new("/x/i.toml"), "", &|k| {
            (k == "MAIL_LOG_HOST").then(|| "logs.example:notaport".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("<environment MAIL_LOG_HOST>:0:"), "{e}");
    }

    #[test]
    fn missing_config_directory_is_named() {
        let t = tree();
        let e = cfg(t.path(), "filters = [\"dkim-milter\"]\n")
            .unwrap()
            .plan()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: missing configuration directory (dkim-milter)",
                t.path().join("usr/local/etc/opendkim").display()
            )
        );
    }

    #[test]
    fn missing_binary_is_named() {
        let t = tree();
        std::fs::create_dir_all(t.path().join("usr/local/etc/opendmarc")).unwrap();
        std::fs::write(t.path().join("usr/local/etc/opendmarc/opendmarc.conf"), "").unwrap();
        let e = cfg(t.path(), "filters = [\"dmarc-milter\"]\n")
            .unwrap()
            .plan()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: service binary of dmarc-milter is missing or not executable",
                t.path().join("bin/dmarc-milter").display()
            )
        );
    }

    #[test]
    fn clamd_socket_from_conf() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("clamd.conf");
        std::fs::write(&p, "# x\nLocalSocket /run/clamav/clamd.ctl\n").unwrap();
        assert_eq!(
            clamd_socket(&p).unwrap().to_string(),
            "unix:/run/clamav/clamd.ctl"
        );
        std::fs::write(&p, "TCPSocket nope\n").unwrap();
        let e = clamd_socket(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("clamd.conf:1: TCPSocket \"nope\": expected a port"),
            "{e}"
        );
    }
}
