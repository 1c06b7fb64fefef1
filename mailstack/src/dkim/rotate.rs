//! Staged DKIM key rotation for one domain of a `KeyTable` (`mailstack dkim rotate`).
//!
//! 1. [`stage`]: generate the next key and selector (the `dkim-milter genkey` code,
//!    [`super::key::generate`]) beside the current key, as `SELECTOR.private` (mode 600, the
//!    current key's owner), `SELECTOR.txt` (opendkim-genkey's layout) and `SELECTOR.zone` (one
//!    zone-file line); signing does not change.
//! 2. The admin publishes the record.
//! 3. [`check`]: asks every given server (the domain's authoritative ones) for
//!    `SELECTOR._domainkey.DOMAIN` until each serves a record whose key is the staged private
//!    key's (bounded wait); only then rewrites the KeyTable entries of the domain to the new
//!    selector and key. The old selector is retired: its record must stay published for the
//!    retirement period (mail signed just before the switch is still being delivered and
//!    verified), after which the state says it may be removed.
//!
//! The state of a domain lives beside its keys in `DOMAIN.rotation.toml` ([`State`]);
//! [`status`] reads it. Signing never switches to a key whose record was not served and
//! matching.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::key::{self, GenKeyOptions, KeyError, KeyType, PrivateKey, PublicKeyRecord};
use crate::dns::{DnsError, Resolver};

/// The default selector format: the date of the rotation (`%Y%m%d`, e.g. `20261203`).
pub const DEFAULT_SELECTOR_FORMAT: &str = "%Y%m%d";
/// How long a retired selector's record stays published by default: a week, longer than
/// Postfix keeps a message in its queue (`maximal_queue_lifetime`, 5 days).
pub const DEFAULT_RETIREMENT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Pause between two rounds of queries while [`check`] waits for the record.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// Largest KeyTable or state file read (they hold a few lines per domain).
const MAX_FILE: u64 = 1 << 20;

/// Why a rotation step did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The KeyTable has no entry, or entries with several selectors, for the domain.
    #[error("{path}: {message}")]
    KeyTable {
        /// The KeyTable.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The state file does not parse.
    #[error("{path}: {message}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A key is already staged (finish it with `--check` first).
    #[error("{domain}: selector {selector} is staged already; run rotate --check")]
    AlreadyStaged {
        /// The domain.
        domain: String,
        /// The staged selector.
        selector: String,
    },
    /// Nothing is staged for `--check`.
    #[error("{0}: no key staged; run rotate first")]
    NothingStaged(String),
    /// The selector the format gives is in use (the current one, or its files exist).
    #[error("selector {0:?} is in use already; give another --selector-format")]
    SelectorInUse(String),
    /// The selector format gives no valid selector.
    #[error("selector format {format:?}: {message}")]
    SelectorFormat {
        /// The format.
        format: String,
        /// What is wrong.
        message: &'static str,
    },
    /// Key generation or the staged key failed.
    #[error("key: {0}")]
    Key(#[from] KeyError),
    /// The staged key's public part did not decode (it was just written: a broken install).
    #[error("key: public key of the staged key: {0}")]
    PublicKey(#[from] base64::DecodeError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RotateError + '_ {
    move |source| RotateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What to rotate: the domain, its KeyTable (`file:` prefix allowed), and where its keys and
/// state live (default: the directory of the current key).
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The KeyTable file.
    pub key_table: PathBuf,
    /// The key directory (`None`: the current key's directory).
    pub key_dir: Option<PathBuf>,
}

/// A retired selector whose record should stay published until `remove_after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Retired {
    /// The selector.
    pub selector: String,
    /// Its private key file (may be deleted after `remove_after`).
    pub key: PathBuf,
    /// When signing switched away from it (Unix seconds).
    pub retired_at: u64,
    /// From when its record may be removed (Unix seconds).
    pub remove_after: u64,
}

/// A domain's rotation state (`DOMAIN.rotation.toml` beside the keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct State {
    /// The domain.
    pub domain: String,
    /// The selector the KeyTable signs with.
    pub active: String,
    /// The staged selector, not signing until its record is served.
    pub pending: Option<String>,
    /// The staged key file.
    pub pending_key: Option<PathBuf>,
    /// Retired selectors.
    #[serde(default)]
    pub retired: Vec<Retired>,
}

impl State {
    /// What `mailstack dkim status` prints, with `now` for the retirement deadlines.
    pub fn describe(&self, now: SystemTime) -> String {
        let now = unix(now);
        let mut out = format!("domain: {}\nsigning with: {}\n", self.domain, self.active);
        match &self.pending {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "staged: {p} (publish {p}._domainkey.{}, then rotate --check)",
                    self.domain
                );
            }
            None => out.push_str("staged: none\n"),
        }
        for r in &self.retired {
            let when = if r.remove_after <= now {
                "may be removed now".to_owned()
            } else {
                format!(
                    "keep published until {} ({} s from now)",
                    date_time(r.remove_after),
                    r.remove_after - now
                )
            };
            let _ = writeln!(
                out,
                "retired: {} since {}: record {}._domainkey.{} {when}",
                r.selector,
                date_time(r.retired_at),
                r.selector,
                self.domain
            );
        }
        out
    }
}

/// What [`stage`] wrote.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Staged {
    /// The new selector.
    pub selector: String,
    /// `SELECTOR.private`.
    pub private: PathBuf,
    /// `SELECTOR.txt` (opendkim-genkey's layout).
    pub txt: PathBuf,
    /// `SELECTOR.zone`: the record as one zone-file line.
    pub zone: PathBuf,
    /// The record's value (`v=DKIM1; ... p=...`).
    pub record: String,
}

/// How [`stage`] makes the key.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// The algorithm.
    pub key_type: KeyType,
    /// RSA bits.
    pub bits: usize,
    /// `%Y %m %d %H %M %S` (UTC), `%s` (Unix seconds), `%%`; letters, digits and `-` else.
    pub selector_format: String,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            key_type: KeyType::Rsa,
            bits: 2048,
            selector_format: DEFAULT_SELECTOR_FORMAT.into(),
        }
    }
}

/// One server's answer in [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// It serves a record with the staged key.
    Matches,
    /// No usable answer (not published yet, timeout, ...).
    Missing(DnsError),
    /// It serves records, none with the staged key (or none that parses).
    Mismatch(String),
}

/// What [`check`] found and did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckReport {
    /// The staged selector.
    pub selector: String,
    /// Each server's last answer.
    pub answers: Vec<(String, Answer)>,
    /// Whether the KeyTable now signs with the new selector.
    pub switched: bool,
    /// The selector retired by the switch.
    pub retired: Option<Retired>,
}

/// How long [`check`] waits, and the retirement period it records.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Longest wait for every server to serve the record (zero: ask once).
    pub wait: Duration,
    /// Pause between rounds.
    pub poll: Duration,
    /// How long the old selector's record stays published.
    pub retirement: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            wait: Duration::ZERO,
            poll: DEFAULT_POLL,
            retirement: DEFAULT_RETIREMENT,
        }
    }
}

/// One KeyTable line: `NAME DOMAIN:SELECTOR:KEY`.
struct Entry {
    line: usize,
    selector: String,
    key: String,
}

fn table_path(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    PathBuf::from(s.strip_prefix("file:").unwrap_or(&s).to_owned())
}

fn read_small(path: &Path) -> Result<String, RotateError> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > MAX_FILE {
        return Err(RotateError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("larger than {MAX_FILE} bytes")),
        });
    }
    std::fs::read_to_string(path).map_err(io(path))
}

fn parse_entry(line: &str) -> Option<(&str, &str, &str, &str)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, value) = line.split_once(char::is_whitespace)?;
    let mut parts = value.trim().splitn(3, ':');
    Some((name, parts.next()?, parts.next()?, parts.next()?))
}

impl Rotation {
    fn entries(&self) -> Result<(PathBuf, String, Vec<Entry>), RotateError> {
        let path = table_path(&self.key_table);
        let text = read_small(&path)?;
        let entries = text
            .lines()
            .enumerate()
            .filter_map(|(i, l)| {
                let (_, d, s, k) = parse_entry(l)?;
                d.eq_ignore_ascii_case(&self.domain).then(|| Entry {
                    line: i + 1,
                    selector: s.to_owned(),
                    key: k.to_owned(),
                })
            })
            .collect();
        Ok((path, text, entries))
    }

    /// The selector and key file the KeyTable signs the domain with.
    fn current(&self) -> Result<(String, PathBuf), RotateError> {
        let (path, _, entries) = self.entries()?;
        let Some(first) = entries.first() else {
            return Err(RotateError::KeyTable {
                path,
                message: format!("no entry signs for {}", self.domain),
            });
        };
        if let Some(other) = entries.iter().find(|e| e.selector != first.selector) {
            return Err(RotateError::KeyTable {
                path,
                message: format!(
                    "lines {} and {} sign {} with selectors {} and {}; rotate one key per domain",
                    first.line, other.line, self.domain, first.selector, other.selector
                ),
            });
        }
        Ok((first.selector.clone(), PathBuf::from(&first.key)))
    }

    fn dir(&self, current_key: &Path) -> PathBuf {
        self.key_dir.clone().unwrap_or_else(|| {
            current_key
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_owned)
        })
    }

    fn state_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(
            "{}.rotation.toml",
            self.domain.to_ascii_lowercase()
        ))
    }

    /// The state file's contents, or a fresh state from the KeyTable.
    fn load(&self) -> Result<(PathBuf, State), RotateError> {
        let (selector, key) = self.current()?;
        let path = self.state_path(&self.dir(&key));
        let mut state = match std::fs::symlink_metadata(&path) {
            Ok(_) => toml::from_str(&read_small(&path)?).map_err(|e| RotateError::State {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(_) => State {
                domain: self.domain.to_ascii_lowercase(),
                ..State::default()
            },
        };
        // The KeyTable is what signs; an edit by hand wins over the state.
        state.active = selector;
        Ok((path, state))
    }
}

fn save(path: &Path, state: &State) -> Result<(), RotateError> {
    let text = toml::to_string(state).map_err(|e| RotateError::State {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes(), 0o644)
}

/// Writes `path` through a temporary file in its directory and a rename.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), RotateError> {
    use std::io::Write as _;
    let tmp = path.with_extension("rotate-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The domain's state (the KeyTable's selector as `active`).
pub fn status(rot: &Rotation) -> Result<State, RotateError> {
    rot.load().map(|(_, s)| s)
}

/// Step 1: generates the next key and its record files beside the current key, and records
/// it as staged. Signing is unchanged.
pub fn stage(rot: &Rotation, opts: &StageOptions, now: SystemTime) -> Result<Staged, RotateError> {
    let (state_path, mut state) = rot.load()?;
    if let Some(selector) = &state.pending {
        return Err(RotateError::AlreadyStaged {
            domain: rot.domain.clone(),
            selector: selector.clone(),
        });
    }
    let (_, current_key) = rot.current()?;
    let dir = rot.dir(&current_key);
    let selector = selector_from(&opts.selector_format, now)?;
    let private = dir.join(format!("{selector}.private"));
    let txt = dir.join(format!("{selector}.txt"));
    let zone = dir.join(format!("{selector}.zone"));
    if selector == state.active
        || state.retired.iter().any(|r| r.selector == selector)
        || [&private, &txt, &zone].iter().any(|p| p.exists())
    {
        return Err(RotateError::SelectorInUse(selector));
    }
    let gen_opts = GenKeyOptions {
        key_type: opts.key_type,
        bits: opts.bits,
        domain: rot.domain.clone(),
        selector: selector.clone(),
        ..GenKeyOptions::default()
    };
    let generated = key::generate(&gen_opts).map_err(RotateError::Key)?;
    let record = key::txt_record_value(&generated.txt);
    write_atomic(&private, generated.private_pem.as_bytes(), 0o600)?;
    // The daemon reads the new key as it read the old one (it may run as another user).
    if let Ok(meta) = std::fs::metadata(&current_key) {
        std::os::unix::fs::chown(&private, Some(meta.uid()), Some(meta.gid()))
            .map_err(io(&private))?;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&private))?;
    }
    write_atomic(&txt, generated.txt.as_bytes(), 0o644)?;
    let line = zone_line(&selector, &rot.domain, &record);
    write_atomic(&zone, line.as_bytes(), 0o644)?;
    state.pending = Some(selector.clone());
    state.pending_key = Some(private.clone());
    save(&state_path, &state)?;
    Ok(Staged {
        selector,
        private,
        txt,
        zone,
        record,
    })
}

/// `SEL._domainkey.DOMAIN. IN TXT ( "..." "..." )`: the record in character-strings of at
/// most 255 bytes (RFC 1035 §3.3.14), on one line.
pub fn zone_line(selector: &str, domain: &str, record: &str) -> String {
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{}.\tIN\tTXT\t( {} )\n",
        domain.trim_end_matches('.'),
        strings.join(" ")
    )
}

/// Whether one TXT answer holds the key `want` (the decoded `p=`) of type `ty`.
fn answer_of(records: Result<Vec<Vec<u8>>, DnsError>, ty: KeyType, want: &[u8]) -> Answer {
    let records = match records {
        Ok(r) => r,
        Err(e) => return Answer::Missing(e),
    };
    let mut why = String::from("no record");
    for r in &records {
        match PublicKeyRecord::parse(r) {
            Ok(rec) if rec.key_type == ty && rec.key == want => return Answer::Matches,
            Ok(_) => why = "a record with another key".into(),
            Err(e) => why = format!("a record that does not parse ({})", e.0),
        }
    }
    Answer::Mismatch(why)
}

/// Step 3: asks every server in `servers` (name, resolver asking only it) for the staged
/// selector's record until all serve the staged key or `opts.wait` ends; when all do,
/// switches the KeyTable's entries for the domain to the new selector and key and retires the
/// old selector. Otherwise nothing changes (`switched` false). `now` stamps the retirement.
pub async fn check(
    rot: &Rotation,
    servers: &[(String, Arc<dyn Resolver>)],
    opts: CheckOptions,
    now: SystemTime,
) -> Result<CheckReport, RotateError> {
    let (state_path, mut state) = rot.load()?;
    let (Some(selector), Some(new_key)) = (state.pending.clone(), state.pending_key.clone()) else {
        return Err(RotateError::NothingStaged(rot.domain.clone()));
    };
    let key = PrivateKey::read(&new_key, false).map_err(RotateError::Key)?;
    let want = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        key.public_record_value(),
    )
    .map_err(RotateError::PublicKey)?;
    let name = format!("{selector}._domainkey.{}", rot.domain);
    let deadline = Instant::now() + opts.wait;
    let answers = loop {
        let mut answers = Vec::with_capacity(servers.len());
        for (server, r) in servers {
            answers.push((
                server.clone(),
                answer_of(r.txt(&name).await, key.key_type(), &want),
            ));
        }
        let all = !answers.is_empty() && answers.iter().all(|(_, a)| *a == Answer::Matches);
        if all || Instant::now() + opts.poll > deadline {
            break answers;
        }
        tokio::time::sleep(opts.poll).await;
    };
    let mut report = CheckReport {
        selector: selector.clone(),
        switched: !answers.is_empty() && answers.iter().all(|(_, a)| *a == Answer::Matches),
        answers,
        retired: None,
    };
    if !report.switched {
        return Ok(report);
    }
    let (old_selector, old_key) = rot.current()?;
    switch_key_table(rot, &old_selector, &selector, &new_key)?;
    let at = unix(now);
    let retired = Retired {
        selector: old_selector,
        key: old_key,
        retired_at: at,
        remove_after: at.saturating_add(opts.retirement.as_secs()),
    };
    state.active = selector;
    state.pending = None;
    state.pending_key = None;
    state.retired.push(retired.clone());
    save(&state_path, &state)?;
    report.retired = Some(retired);
    Ok(report)
}

/// Rewrites the domain's KeyTable entries signing with `old` to `new` and `key`, keeping every
/// other line as it is.
fn switch_key_table(rot: &Rotation, old: &str, new: &str, key: &Path) -> Result<(), RotateError> {
    let (path, text, _) = rot.entries()?;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        match parse_entry(line) {
            Some((name, d, s, _)) if d.eq_ignore_ascii_case(&rot.domain) && s == old => {
                let _ = writeln!(out, "{name} {d}:{new}:{}", key.display());
            }
            _ => out.push_str(line),
        }
    }
    let mode = std::fs::metadata(&path).map_err(io(&path))?.mode() & 0o7777;
    write_atomic(&path, out.as_bytes(), mode)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn date_time(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (y, m, d) = civil(days);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The selector `format` gives at `now` (see [`StageOptions::selector_format`]).
pub fn selector_from(format: &str, now: SystemTime) -> Result<String, RotateError> {
    let bad = |message| RotateError::SelectorFormat {
        format: format.to_owned(),
        message,
    };
    let secs = unix(now);
    let (y, mo, d) = civil(i64::try_from(secs / 86_400).unwrap_or(0));
    let t = secs % 86_400;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y:04}"),
            Some('m') => write!(out, "{mo:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('H') => write!(out, "{:02}", t / 3600),
            Some('M') => write!(out, "{:02}", t / 60 % 60),
            Some('S') => write!(out, "{:02}", t % 60),
            Some('s') => write!(out, "{secs}"),
            Some('%') => write!(out, "%"),
            _ => return Err(bad("unknown % directive (use %Y %m %d %H %M %S %s %%)")),
        };
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !out.split('.').all(label_ok) {
        return Err(bad(
            "the selector must be DNS labels of letters, digits and '-'",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{MemoryRecord, MemoryResolver};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn selector_formats() {
        // 2026-12-03 17:45:06 UTC.
        let t = at(1_796_319_906);
        assert_eq!(selector_from("%Y%m%d", t).unwrap(), "20261203");
        assert_eq!(
            selector_from("mail-%Y%m-%H%M%S", t).unwrap(),
            "mail-202612-174506"
        );
        assert_eq!(selector_from("k%s", t).unwrap(), "k1796319906");
        assert_eq!(date_time(1_796_319_906), "2026-12-03 17:45:06 UTC");
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert!(selector_from("%q", t).is_err());
        assert!(selector_from("a_b", t).is_err());
        assert!(selector_from("-x", t).is_err());
    }

    #[test]
    fn zone_lines_split_long_records() {
        let rec = format!("v=DKIM1; k=rsa; p={}", "A".repeat(400));
        let line = zone_line("s1", "example.com", &rec);
        assert!(line.starts_with("s1._domainkey.example.com.\tIN\tTXT\t( \""));
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2);
        assert_eq!(strings[0].len(), 255);
        assert_eq!(strings.concat(), rec);
    }

    /// Stage, refuse while the record is missing or wrong, switch once it is served, and
    /// keep the other domains' lines and comments.
    #[tokio::test]
    async fn staged_key_switches_only_when_its_record_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old = key::generate(&GenKeyOptions {
            key_type: KeyType::Ed25519,
            domain: "example.com".into(),
            selector: "old".into(),
            ..GenKeyOptions::default()
        })
        .unwrap();
        std::fs::write(d.join("old.private"), &old.private_pem).unwrap();
        let kt = d.join("keytable");
        let table = format!(
            "# keys\nk example.com:old:{0}/old.private\nother other.example:x:{0}/x.private\n",
            d.display()
        );
        std::fs::write(&kt, &table).unwrap();
        let rot = Rotation {
            domain: "example.com".into(),
            key_table: PathBuf::from(format!("file:{}", kt.display())),
            key_dir: None,
        };
        let opts = StageOptions {
            key_type: KeyType::Ed25519,
            selector_format: "n%Y".into(),
            ..StageOptions::default()
        };
        let staged = stage(&rot, &opts, at(1_796_319_906)).unwrap();
        assert_eq!(staged.selector, "n2026");
        assert!(staged.private.exists() && staged.txt.exists() && staged.zone.exists());
        assert!(matches!(
            stage(&rot, &opts, at(1_796_319_906)),
            Err(RotateError::AlreadyStaged { .. })
        ));
        let st = status(&rot).unwrap();
        assert_eq!(
            (st.active.as_str(), st.pending.as_deref()),
            ("old", Some("n2026"))
        );

        let serve = |rec: Option<&str>| -> Vec<(String, Arc<dyn Resolver>)> {
            let mut z = MemoryResolver::new();
            if let Some(rec) = rec {
                z.add(
                    "n2026._domainkey.example.com",
                    MemoryRecord::Txt(rec.as_bytes().to_vec()),
                );
            }
            vec![("ns1".into(), Arc::new(z))]
        };
        let now = at(1_796_400_000);
        let r = check(&rot, &serve(None), CheckOptions::default(), now)
            .await
            .unwrap();
        assert!(!r.switched);
        assert!(
            matches!(r.answers[0].1, Answer::Missing(_)),
            "{:?}",
            r.answers
        );
        let wrong = key::txt_record_value(&old.txt);
        let r = check(&rot, &serve(Some(&wrong)), CheckOptions::default(), now)
            .await
            .unwrap();
        assert!(!r.switched);
        assert!(matches!(r.answers[0].1, Answer::Mismatch(_)));
        assert_eq!(std::fs::read_to_string(&kt).unwrap(), table, "unchanged");

        let r = check(
            &rot,
            &serve(Some(&staged.record)),
            CheckOptions::default(),
            now,
        )
        .await
        .unwrap();
        assert!(r.switched);
        let retired = r.retired.unwrap();
        assert_eq!(retired.selector, "old");
        assert_eq!(
            retired.remove_after,
            1_796_400_000 + DEFAULT_RETIREMENT.as_secs()
        );
        assert_eq!(
            std::fs::read_to_string(&kt).unwrap(),
            format!(
                "# keys\nk example.com:n2026:{0}/n2026.private\nother other.example:x:{0}/x.private\n",
                d.display()
            )
        );
        let st = status(&rot).unwrap();
        assert_eq!((st.active.as_str(), st.pending.as_deref()), ("n2026", None));
        let text = st.describe(now);
        assert!(text.contains("retired: old since 2026-12-04"), "{text}");
        assert!(text.contains("keep published until 2026-12-11"), "{text}");
        assert!(
            st.describe(at(retired.remove_after))
                .contains("may be removed now")
        );
        assert!(matches!(
            check(
                &rot,
                &serve(Some(&staged.record)),
                CheckOptions::default(),
                now
            )
            .await,
            Err(RotateError::NothingStaged(_))
        ));
    }
}
