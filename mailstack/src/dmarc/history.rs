//! Per-message records for DMARC aggregate reports (RFC 7489 §7.2, RFC 9990), the default
//! store, and the reader of history files.
//!
//! A [`MessageRecord`] holds what an aggregate report row needs: source address, header
//! From, envelope From, the policy domain and its published policy, every DKIM result, the SPF
//! result, the alignment outcomes and the disposition applied. [`HistoryStore`] is the seam
//! for other stores; [`HistoryFile`] is the embedded default.
//!
//! # The history file format
//!
//! [`HistoryFile`] appends one block per message in OpenDMARC 1.4's `HistoryFile` format, so
//! sites that already run `opendmarc-import` (MySQL) and `opendmarc-reports` keep working:
//! one `key value` line per fact, a block starting at `job`:
//!
//! ```text
//! job 4XyZ1k2Abc
//! reporter mx.example
//! received 1764000000
//! ipaddr 192.0.2.1
//! from sender.example
//! mfrom sender.example
//! dkim sender.example mail 0
//! spf 0 domain=sender.example scope=mfrom
//! pdomain sender.example
//! policy 15 result=pass in_force=114
//! rua mailto:dmarc@sender.example
//! pct 100
//! adkim 114
//! aspf 114
//! p 114 np=0 t=n
//! sp 0
//! align_dkim 4
//! align_spf 5
//! arc 7
//! arc_policy 2 json:[]
//! action 2 reason=sampled_out
//! ```
//!
//! Numbers are OpenDMARC's, as `opendmarc-reports` decodes them and as OpenDMARC 1.4.2
//! writes them (compared line by line in `examples/tests/dmarc_vs_opendmarc.rs`): results `0`
//! pass, `2` softfail, `3` neutral, `4` temperror, `5` permerror, `6` none, `7` fail, `8`
//! policy, `spf -1` when no SPF result was used; `policy` the outcome (`14` no record, `15`
//! pass, `16` reject, `17` quarantine, `18` none); `align_*` `4` pass, `5` fail; `p`, `sp`,
//! `adkim`, `aspf` the ASCII code of `n`/`q`/`r`/`s` (`0` for an absent `sp`); `action` `0`
//! reject, `2` none, `4` quarantine; `arc 7` / `arc_policy 2 json:[]` (no ARC evaluation).
//!
//! What aggregate reports need beyond OpenDMARC's lines rides as `name=value` tokens after a
//! line's value, where `opendmarc-import` (`split / /, $_, 3`, then only `dkim` and
//! `arc_policy` read the rest) never looks: `spf ... domain= scope=mfrom|helo`, `policy ...
//! result=<dmarc result> in_force=<code>`, `p ... np=<code> t=y|n`, `action ...
//! reason=<override>,...` and `report=y` (the mail was itself a report). Every token is
//! optional: [`MessageRecord::from_history_block`] and [`HistoryReader`] read OpenDMARC's
//! own files too (the import of a seed's `HistoryFile`), deriving what a token would say
//! from OpenDMARC's codes.
//!
//! The file is bounded: when a record would grow it past [`HistoryFile::max_bytes`]
//! (default [`DEFAULT_HISTORY_MAX_BYTES`]), it is renamed to `<path>.1` (replacing an older
//! one) and a new file is started, so at most twice the bound is kept on disk. The importer
//! is expected to consume the file in between (as with OpenDMARC, where the importer
//! truncates it).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::spf::{Identity, SpfResult};

use super::eval::{DkimInput, DkimStatus, DmarcResult};
use super::record::{Alignment, DmarcRecord, Policy};

/// Default bound of a [`HistoryFile`] (64 MiB, about 200,000 messages) before it rotates.
pub const DEFAULT_HISTORY_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What an aggregate report needs to know about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageRecord {
    /// The MTA's queue id (`i` macro), or a generated id.
    pub job_id: String,
    /// Our authserv-id (the reporting host).
    pub reporter: String,
    /// Unix time the message was evaluated.
    pub received: u64,
    /// The SMTP client's address.
    pub source_ip: Option<IpAddr>,
    /// The RFC5322.From domain.
    pub header_from: String,
    /// The envelope sender's domain (empty for the null sender).
    pub envelope_from: String,
    /// Every DKIM result considered.
    pub dkim: Vec<DkimInput>,
    /// The SPF result considered (`None` when there was none).
    pub spf: Option<SpfResult>,
    /// The domain whose policy was applied, and its record.
    pub policy: Option<(String, DmarcRecord)>,
    /// The DMARC result.
    pub result: DmarcResult,
    /// The policy in force (`p`, `sp` or `np`).
    pub policy_in_force: Policy,
    /// An aligned DKIM pass.
    pub dkim_aligned: bool,
    /// An aligned SPF pass.
    pub spf_aligned: bool,
    /// The disposition applied.
    pub disposition: Policy,
    /// The domain SPF checked (the MAIL FROM domain, or the HELO name for the null sender);
    /// empty when unknown.
    pub spf_domain: String,
    /// Which identity SPF checked (`None` when there was no SPF result).
    pub spf_scope: Option<Identity>,
    /// Why the disposition differs from what the policy asks for (RFC 7489 appendix C
    /// `PolicyOverrideType`), in the order found.
    pub overrides: Vec<OverrideReason>,
    /// The message was itself a DMARC report (aggregate or failure): it is never reported on
    /// (RFC 7489 §7.2: no reports about reports).
    pub is_report: bool,
}

/// A reason the applied disposition differs from the requested one (RFC 7489 appendix C,
/// RFC 9990 `PolicyOverrideType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum OverrideReason {
    /// Relayed by a known forwarder, or local heuristics say it was forwarded.
    Forwarded,
    /// Exempted by `pct` sampling (RFC 7489 §6.6.4).
    SampledOut,
    /// A trusted forwarder vouched for the message (here: a passing ARC chain sealed by a
    /// sealer the admin trusts).
    TrustedForwarder,
    /// Arrived through a mailing list.
    MailingList,
    /// The receiver's local policy exempted it (for instance `RejectFailures false`).
    LocalPolicy,
    /// Anything else.
    Other,
}

impl OverrideReason {
    /// Every reason, in the schema's order.
    pub const ALL: [Self; 6] = [
        Self::Forwarded,
        Self::SampledOut,
        Self::TrustedForwarder,
        Self::MailingList,
        Self::LocalPolicy,
        Self::Other,
    ];

    /// The schema keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::SampledOut => "sampled_out",
            Self::TrustedForwarder => "trusted_forwarder",
            Self::MailingList => "mailing_list",
            Self::LocalPolicy => "local_policy",
            Self::Other => "other",
        }
    }

    /// The reason named by a schema keyword.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == word)
    }
}

impl std::fmt::Display for OverrideReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn spf_code(r: Option<SpfResult>) -> i8 {
    match r {
        Some(SpfResult::Pass) => 0,
        Some(SpfResult::SoftFail) => 2,
        Some(SpfResult::Neutral) => 3,
        Some(SpfResult::TempError) => 4,
        Some(SpfResult::PermError) => 5,
        Some(SpfResult::None) => 6,
        Some(SpfResult::Fail) => 7,
        None => -1,
    }
}

/// libopendmarc's `DMARC_POLICY_*` outcome: 14 absent, 15 pass, 16 reject, 17 quarantine,
/// 18 none.
fn outcome_code(result: DmarcResult, policy: Policy, has_record: bool) -> u8 {
    match (result, policy) {
        _ if !has_record => 14,
        (DmarcResult::Pass, _) => 15,
        (_, Policy::Reject) => 16,
        (_, Policy::Quarantine) => 17,
        (_, Policy::None) => 18,
    }
}

fn dkim_code(s: DkimStatus) -> u8 {
    match s {
        DkimStatus::Pass => 0,
        DkimStatus::Neutral => 3,
        DkimStatus::TempError => 4,
        DkimStatus::PermError => 5,
        DkimStatus::None => 6,
        DkimStatus::Fail => 7,
        DkimStatus::Policy => 8,
    }
}

fn policy_code(p: Policy) -> u8 {
    match p {
        Policy::None => b'n',
        Policy::Quarantine => b'q',
        Policy::Reject => b'r',
    }
}

fn scope_word(i: Identity) -> &'static str {
    match i {
        Identity::MailFrom => "mfrom",
        Identity::Helo => "helo",
    }
}

fn align_code(a: Alignment) -> u8 {
    a.as_char() as u8
}

/// A value written into a history line: every character that could end the line or shift
/// the space-separated columns `opendmarc-import` reads (control characters, CR, LF, any
/// white space, U+2028/U+2029) becomes `?`. The values come from peers (DNS records, header
/// fields, the queue id macro), so a `rua` holding a newline must never start a forged line.
struct Clean<'a>(&'a str);

impl std::fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            f.write_char(if c.is_control() || c.is_whitespace() {
                '?'
            } else {
                c
            })?;
        }
        Ok(())
    }
}

impl MessageRecord {
    /// The record as an OpenDMARC `HistoryFile` block (see the module docs).
    pub fn to_history_block(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "job {}", Clean(&self.job_id));
        let _ = writeln!(s, "reporter {}", Clean(&self.reporter));
        let _ = writeln!(s, "received {}", self.received);
        let ip = self
            .source_ip
            .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        let _ = writeln!(s, "ipaddr {ip}");
        let _ = writeln!(s, "from {}", Clean(&self.header_from));
        let _ = writeln!(s, "mfrom {}", Clean(&self.envelope_from));
        for d in &self.dkim {
            let sel = if d.selector.is_empty() {
                "-"
            } else {
                &d.selector
            };
            let _ = writeln!(
                s,
                "dkim {} {} {}",
                Clean(&d.domain),
                Clean(sel),
                dkim_code(d.status)
            );
        }
        let _ = write!(s, "spf {}", spf_code(self.spf));
        if !self.spf_domain.is_empty() {
            let _ = write!(s, " domain={}", Clean(&self.spf_domain));
        }
        if let Some(scope) = self.spf_scope {
            let _ = write!(s, " scope={}", scope_word(scope));
        }
        s.push('\n');
        let (pdomain, rec) = match &self.policy {
            Some((d, r)) => (d.as_str(), Some(r)),
            None => (self.header_from.as_str(), None),
        };
        let _ = writeln!(s, "pdomain {}", Clean(pdomain));
        let outcome = outcome_code(self.result, self.policy_in_force, rec.is_some());
        let _ = writeln!(
            s,
            "policy {outcome} result={} in_force={}",
            self.result,
            policy_code(self.policy_in_force)
        );
        match rec {
            Some(r) if !r.rua.is_empty() => r.rua.iter().for_each(|u| {
                let _ = writeln!(s, "rua {}", Clean(u));
            }),
            _ => s.push_str("rua -\n"),
        }
        if let Some(r) = rec {
            let _ = writeln!(s, "pct {}", r.pct);
            let _ = writeln!(s, "adkim {}", align_code(r.adkim));
            let _ = writeln!(s, "aspf {}", align_code(r.aspf));
            let _ = writeln!(
                s,
                "p {} np={} t={}",
                policy_code(r.p),
                r.np.map_or(0, policy_code),
                if r.testing { 'y' } else { 'n' }
            );
            let _ = writeln!(s, "sp {}", r.sp.map_or(0, policy_code));
        }
        let _ = writeln!(s, "align_dkim {}", if self.dkim_aligned { 4 } else { 5 });
        let _ = writeln!(s, "align_spf {}", if self.spf_aligned { 4 } else { 5 });
        // No ARC evaluation: what OpenDMARC 1.4.2 writes for a message without ARC sets.
        s.push_str("arc 7\narc_policy 2 json:[]\n");
        let action = match self.disposition {
            Policy::Reject => 0,
            Policy::None => 2,
            Policy::Quarantine => 4,
        };
        let _ = write!(s, "action {action}");
        let mut sep = " reason=";
        for r in &self.overrides {
            let _ = write!(s, "{sep}{r}");
            sep = ",";
        }
        if self.is_report {
            s.push_str(" report=y");
        }
        s.push('\n');
        s
    }
}

/// Longest history line read (bytes, without the line end): OpenDMARC writes domains, a
/// selector and a URI per line, each well under 300 bytes; 4 KiB leaves room for long `rua`s.
pub const MAX_HISTORY_LINE: usize = 4096;

/// Most lines in one block: OpenDMARC writes about 21 plus one per DKIM signature and `rua`.
pub const MAX_BLOCK_LINES: usize = 256;

/// Most `dkim` lines kept per block (RFC 6376 puts no limit on signatures; our verifier
/// checks at most this many, see `crate::dkim`).
pub const MAX_BLOCK_DKIM: usize = 32;

/// Most `rua` URIs kept per block (RFC 7489 §6.2 allows a list; receivers send to at most
/// two, per §6.4's advice; 16 is generous).
pub const MAX_BLOCK_RUA: usize = 16;

/// What is wrong with a history block; [`HistoryError::line`] says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryErrorKind {
    /// A line longer than [`MAX_HISTORY_LINE`].
    #[error("line longer than {MAX_HISTORY_LINE} bytes")]
    LineTooLong,
    /// Bytes that are not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// A block longer than [`MAX_BLOCK_LINES`].
    #[error("block longer than {MAX_BLOCK_LINES} lines")]
    BlockTooLong,
    /// A line before the first `job` line.
    #[error("data before the first `job` line")]
    NoJob,
    /// A key without its value.
    #[error("`{0}` without a value")]
    MissingValue(&'static str),
    /// A value that does not parse.
    #[error("bad `{0}` value")]
    BadValue(&'static str),
    /// A key that must appear once appeared again.
    #[error("`{0}` repeated")]
    Repeated(&'static str),
    /// A block without a key it needs.
    #[error("block without `{0}`")]
    Missing(&'static str),
    /// More `dkim` or `rua` lines than [`MAX_BLOCK_DKIM`] / [`MAX_BLOCK_RUA`].
    #[error("more than the allowed `{0}` lines")]
    TooMany(&'static str),
    /// Reading the file failed.
    #[error("read error: {0}")]
    Io(std::io::ErrorKind),
}

/// A malformed history block: the 1-based line in the input and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct HistoryError {
    /// The line (1-based, counted from the start of the input).
    pub line: usize,
    /// What is wrong.
    pub kind: HistoryErrorKind,
}

/// The keys that occur once per block.
const SINGLE_KEYS: &[&str] = &[
    "reporter",
    "received",
    "ipaddr",
    "from",
    "mfrom",
    "spf",
    "pdomain",
    "policy",
    "pct",
    "adkim",
    "aspf",
    "p",
    "sp",
    "align_dkim",
    "align_spf",
    "arc",
    "arc_policy",
    "action",
];

fn spf_from_code(c: i8) -> Option<Option<SpfResult>> {
    Some(match c {
        0 => Some(SpfResult::Pass),
        2 => Some(SpfResult::SoftFail),
        3 => Some(SpfResult::Neutral),
        4 => Some(SpfResult::TempError),
        5 => Some(SpfResult::PermError),
        6 => Some(SpfResult::None),
        7 => Some(SpfResult::Fail),
        -1 => None,
        _ => return None,
    })
}

fn dkim_from_code(c: u8) -> Option<DkimStatus> {
    Some(match c {
        0 => DkimStatus::Pass,
        // libopendmarc's DMARC_POLICY_DKIM_OUTCOME_* has no softfail; 2 never occurs.
        3 => DkimStatus::Neutral,
        4 => DkimStatus::TempError,
        5 => DkimStatus::PermError,
        6 => DkimStatus::None,
        7 => DkimStatus::Fail,
        8 => DkimStatus::Policy,
        _ => return None,
    })
}

fn policy_from_code(c: u8) -> Option<Policy> {
    match c {
        b'n' => Some(Policy::None),
        b'q' => Some(Policy::Quarantine),
        b'r' => Some(Policy::Reject),
        _ => None,
    }
}

fn align_from_code(c: u8) -> Option<Alignment> {
    match c {
        b'r' => Some(Alignment::Relaxed),
        b's' => Some(Alignment::Strict),
        _ => None,
    }
}

fn result_from_word(w: &str) -> Option<DmarcResult> {
    Some(match w {
        "pass" => DmarcResult::Pass,
        "fail" => DmarcResult::Fail,
        "none" => DmarcResult::None,
        "temperror" => DmarcResult::TempError,
        "permerror" => DmarcResult::PermError,
        _ => return None,
    })
}

/// The values of one block as read, before they become a [`MessageRecord`].
#[derive(Default)]
struct Partial {
    job: String,
    seen: Vec<&'static str>,
    reporter: String,
    received: Option<u64>,
    ipaddr: Option<IpAddr>,
    from: Option<String>,
    mfrom: String,
    dkim: Vec<DkimInput>,
    spf: Option<SpfResult>,
    spf_domain: Option<String>,
    spf_scope: Option<Identity>,
    pdomain: Option<String>,
    policy: Option<u8>,
    result: Option<DmarcResult>,
    in_force: Option<Policy>,
    rua: Vec<String>,
    pct: Option<u8>,
    adkim: Option<Alignment>,
    aspf: Option<Alignment>,
    p: Option<Policy>,
    sp: Option<Policy>,
    np: Option<Policy>,
    testing: bool,
    align_dkim: bool,
    align_spf: bool,
    action: Option<Policy>,
    overrides: Vec<OverrideReason>,
    is_report: bool,
}

fn num<T: std::str::FromStr>(v: &str, key: &'static str) -> Result<T, HistoryErrorKind> {
    v.parse().map_err(|_| HistoryErrorKind::BadValue(key))
}

impl Partial {
    /// One `key value [extra]` line (already split at the first space).
    fn line(&mut self, key: &str, rest: &str) -> Result<(), HistoryErrorKind> {
        let mut words = rest.split(' ').filter(|w| !w.is_empty());
        let Some(key) = SINGLE_KEYS
            .iter()
            .copied()
            .chain(["dkim", "rua"])
            .find(|k| *k == key)
        else {
            // Keys of other OpenDMARC versions (and of later ones of ours): skipped, as
            // opendmarc-import skips them.
            return Ok(());
        };
        let value = match words.next() {
            Some(v) => v,
            // The null sender (a bounce): `mfrom` with nothing after it, as we write it; and
            // a reporter name we were given empty (or as only other whitespace).
            None if key == "mfrom" || key == "reporter" => "",
            None => return Err(HistoryErrorKind::MissingValue(key)),
        };
        if SINGLE_KEYS.contains(&key) {
            if self.seen.contains(&key) {
                return Err(HistoryErrorKind::Repeated(key));
            }
            self.seen.push(key);
        }
        // Our extension tokens: `name=value` after the value (opendmarc-import ignores them).
        let ext = |name: &str| {
            rest.split(' ')
                .skip(1)
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        };
        let code = |v: &str| -> Result<u8, HistoryErrorKind> { num(v, key) };
        match key {
            "reporter" => self.reporter = value.to_owned(),
            "received" => self.received = Some(num(value, key)?),
            "ipaddr" => {
                self.ipaddr = match value {
                    "-" => None,
                    v => Some(num(v, key)?),
                }
            }
            "from" => self.from = Some(value.to_ascii_lowercase()),
            "mfrom" => self.mfrom = value.to_ascii_lowercase(),
            "dkim" => {
                if self.dkim.len() >= MAX_BLOCK_DKIM {
                    return Err(HistoryErrorKind::TooMany(key));
                }
                let selector = words.next().ok_or(HistoryErrorKind::MissingValue(key))?;
                let status = words.next().ok_or(HistoryErrorKind::MissingValue(key))?;
                let status =
                    dkim_from_code(code(status)?).ok_or(HistoryErrorKind::BadValue(key))?;
                self.dkim.push(DkimInput {
                    domain: value.to_ascii_lowercase(),
                    selector: if selector == "-" { "" } else { selector }.to_owned(),
                    status,
                });
            }
            "spf" => {
                self.spf =
                    spf_from_code(num(value, key)?).ok_or(HistoryErrorKind::BadValue(key))?;
                self.spf_domain = ext("domain")
                    .filter(|d| !d.is_empty())
                    .map(str::to_ascii_lowercase);
                self.spf_scope = match ext("scope") {
                    None => None,
                    Some("mfrom") => Some(Identity::MailFrom),
                    Some("helo") => Some(Identity::Helo),
                    Some(_) => return Err(HistoryErrorKind::BadValue("spf scope")),
                };
            }
            "pdomain" => self.pdomain = Some(value.to_ascii_lowercase()),
            "policy" => {
                self.policy = Some(code(value)?);
                if let Some(r) = ext("result") {
                    self.result =
                        Some(result_from_word(r).ok_or(HistoryErrorKind::BadValue("result"))?);
                }
                if let Some(p) = ext("in_force") {
                    self.in_force = Some(
                        policy_from_code(num(p, "in_force")?)
                            .ok_or(HistoryErrorKind::BadValue("in_force"))?,
                    );
                }
            }
            "rua" if value != "-" => {
                if self.rua.len() >= MAX_BLOCK_RUA {
                    return Err(HistoryErrorKind::TooMany(key));
                }
                self.rua.push(value.to_owned());
            }
            "pct" => {
                let pct: u8 = code(value)?;
                if pct > 100 {
                    return Err(HistoryErrorKind::BadValue(key));
                }
                self.pct = Some(pct);
            }
            "adkim" => {
                self.adkim =
                    Some(align_from_code(code(value)?).ok_or(HistoryErrorKind::BadValue(key))?)
            }
            "aspf" => {
                self.aspf =
                    Some(align_from_code(code(value)?).ok_or(HistoryErrorKind::BadValue(key))?)
            }
            "p" => {
                self.p =
                    Some(policy_from_code(code(value)?).ok_or(HistoryErrorKind::BadValue(key))?);
                self.np = match ext("np") {
                    None | Some("0") => None,
                    Some(v) => Some(
                        policy_from_code(num(v, "np")?).ok_or(HistoryErrorKind::BadValue("np"))?,
                    ),
                };
                self.testing = ext("t") == Some("y");
            }
            "sp" => {
                self.sp = match code(value)? {
                    0 => None,
                    c => Some(policy_from_code(c).ok_or(HistoryErrorKind::BadValue(key))?),
                }
            }
            "align_dkim" => self.align_dkim = code(value)? == 4,
            "align_spf" => self.align_spf = code(value)? == 4,
            "action" => {
                self.action = Some(match code(value)? {
                    0 => Policy::Reject,
                    4 => Policy::Quarantine,
                    _ => Policy::None,
                });
                if let Some(list) = ext("reason") {
                    for w in list.split(',') {
                        let r =
                            OverrideReason::parse(w).ok_or(HistoryErrorKind::BadValue("reason"))?;
                        if !self.overrides.contains(&r) {
                            self.overrides.push(r);
                        }
                    }
                }
                self.is_report = ext("report") == Some("y");
            }
            // arc, arc_policy: no ARC facts are kept from the history (the `arc` helper's
            // override arrives as `reason=trusted_forwarder`).
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<MessageRecord, HistoryErrorKind> {
        let header_from = self.from.ok_or(HistoryErrorKind::Missing("from"))?;
        let outcome = self.policy.ok_or(HistoryErrorKind::Missing("policy"))?;
        let record = match (self.p, outcome) {
            (Some(p), o) if o != 14 => Some(DmarcRecord {
                p,
                sp: self.sp,
                np: self.np,
                adkim: self.adkim.unwrap_or(Alignment::Relaxed),
                aspf: self.aspf.unwrap_or(Alignment::Relaxed),
                pct: self.pct.unwrap_or(100),
                rua: self.rua,
                ruf: Vec::new(),
                psd: None,
                testing: self.testing,
            }),
            _ => None,
        };
        let pdomain = self.pdomain.unwrap_or_else(|| header_from.clone());
        // Blocks without our `result=` (OpenDMARC's own): the outcome code says it.
        let result = self.result.unwrap_or(match outcome {
            15 => DmarcResult::Pass,
            16..=18 => DmarcResult::Fail,
            _ => DmarcResult::None,
        });
        let in_force = self.in_force.unwrap_or(match (outcome, &record) {
            (16, _) => Policy::Reject,
            (17, _) => Policy::Quarantine,
            (18, _) => Policy::None,
            (_, Some(r)) if pdomain != header_from => r.sp.unwrap_or(r.p),
            (_, Some(r)) => r.p,
            (_, None) => Policy::None,
        });
        let spf_scope = self.spf_scope.or(self.spf.map(|_| Identity::MailFrom));
        let spf_domain = self.spf_domain.unwrap_or_else(|| match self.spf {
            Some(_) => self.mfrom.clone(),
            None => String::new(),
        });
        Ok(MessageRecord {
            job_id: self.job,
            reporter: self.reporter,
            received: self.received.ok_or(HistoryErrorKind::Missing("received"))?,
            source_ip: self.ipaddr,
            header_from,
            envelope_from: self.mfrom,
            dkim: self.dkim,
            spf: self.spf,
            policy: record.map(|r| (pdomain, r)),
            result,
            policy_in_force: in_force,
            dkim_aligned: self.align_dkim,
            spf_aligned: self.align_spf,
            disposition: self.action.unwrap_or(Policy::None),
            spf_domain,
            spf_scope,
            overrides: self.overrides,
            is_report: self.is_report,
        })
    }
}

impl MessageRecord {
    /// Parses one block as [`Self::to_history_block`] or OpenDMARC 1.4 writes it (OpenDMARC's
    /// own blocks lack our extension tokens: the DMARC result and policy in force then come
    /// from the `policy` outcome code, the SPF domain is the `mfrom` domain). Line numbers
    /// in errors count from 1 at the block's first line.
    pub fn from_history_block(block: &str) -> Result<Self, HistoryError> {
        let mut reader = HistoryReader::new(block.as_bytes());
        match reader.next() {
            Some(Ok(r)) => match reader.next() {
                None => Ok(r),
                Some(Err(e)) => Err(e),
                Some(Ok(_)) => Err(HistoryError {
                    line: reader.block_start,
                    kind: HistoryErrorKind::Repeated("job"),
                }),
            },
            Some(Err(e)) => Err(e),
            None => Err(HistoryError {
                line: 1,
                kind: HistoryErrorKind::Missing("job"),
            }),
        }
    }
}

/// Reads [`MessageRecord`]s from a history file (ours or OpenDMARC's `HistoryFile`), one
/// block at a time, bounded by [`MAX_HISTORY_LINE`] and [`MAX_BLOCK_LINES`]. A malformed
/// block yields one [`HistoryError`] naming its line, and reading goes on at the next `job`
/// line; an I/O error ends the iteration after it is reported.
#[derive(Debug)]
pub struct HistoryReader<R> {
    input: R,
    line_no: usize,
    /// The `job` line that starts the next block, when already read.
    pending_job: Option<(usize, String)>,
    block_start: usize,
    done: bool,
    buf: Vec<u8>,
}

impl<R: std::io::BufRead> HistoryReader<R> {
    /// A reader over `input`.
    pub fn new(input: R) -> Self {
        Self {
            input,
            line_no: 0,
            pending_job: None,
            block_start: 0,
            done: false,
            buf: Vec::new(),
        }
    }

    /// The next line: `Ok(None)` at end of input. A line over the bound is skipped to its
    /// end and reported.
    fn read_line(&mut self) -> Result<Option<String>, HistoryErrorKind> {
        self.buf.clear();
        let mut too_long = false;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HistoryErrorKind::Io(e.kind())),
            };
            if chunk.is_empty() {
                if self.buf.is_empty() && !too_long {
                    return Ok(None);
                }
                break;
            }
            let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = (MAX_HISTORY_LINE + 2).saturating_sub(self.buf.len());
            if take > room {
                too_long = true;
            } else {
                self.buf.extend_from_slice(&chunk[..take]);
            }
            self.input.consume(take);
            if end {
                break;
            }
        }
        self.line_no += 1;
        while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
            self.buf.pop();
        }
        if too_long || self.buf.len() > MAX_HISTORY_LINE {
            return Err(HistoryErrorKind::LineTooLong);
        }
        String::from_utf8(std::mem::take(&mut self.buf))
            .map(Some)
            .map_err(|_| HistoryErrorKind::NotUtf8)
    }

    /// Skips to the next `job` line after an error.
    fn resync(&mut self) {
        loop {
            match self.read_line() {
                Ok(Some(l)) => {
                    if let Some(id) = l.strip_prefix("job ") {
                        self.pending_job = Some((self.line_no, id.to_owned()));
                        return;
                    }
                }
                Ok(None) => {
                    self.done = true;
                    return;
                }
                Err(HistoryErrorKind::Io(_)) => {
                    self.done = true;
                    return;
                }
                Err(_) => {}
            }
        }
    }

    fn fail(&mut self, kind: HistoryErrorKind) -> Option<Result<MessageRecord, HistoryError>> {
        let line = self.line_no;
        if matches!(kind, HistoryErrorKind::Io(_)) {
            self.done = true;
        } else {
            self.resync();
        }
        Some(Err(HistoryError { line, kind }))
    }
}

impl<R: std::io::BufRead> Iterator for HistoryReader<R> {
    type Item = Result<MessageRecord, HistoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (start, job) = match self.pending_job.take() {
            Some(j) => j,
            None => loop {
                match self.read_line() {
                    Ok(None) => {
                        self.done = true;
                        return None;
                    }
                    Ok(Some(l)) if l.is_empty() => continue,
                    Ok(Some(l)) => match l.strip_prefix("job ") {
                        Some(id) => break (self.line_no, id.to_owned()),
                        None => return self.fail(HistoryErrorKind::NoJob),
                    },
                    Err(e) => return self.fail(e),
                }
            },
        };
        self.block_start = start;
        let mut part = Partial {
            job,
            ..Partial::default()
        };
        let mut lines = 1;
        loop {
            let line = match self.read_line() {
                Ok(Some(l)) => l,
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(e) => return self.fail(e),
            };
            if line.is_empty() {
                continue;
            }
            if let Some(id) = line.strip_prefix("job ") {
                self.pending_job = Some((self.line_no, id.to_owned()));
                break;
            }
            lines += 1;
            if lines > MAX_BLOCK_LINES {
                return self.fail(HistoryErrorKind::BlockTooLong);
            }
            let (key, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            if let Err(kind) = part.line(key, rest) {
                return self.fail(kind);
            }
        }
        Some(
            part.finish()
                .map_err(|kind| HistoryError { line: start, kind }),
        )
    }
}

/// Whether a message is itself a DMARC report, by its header fields (`name`, `value`): an
/// aggregate report's `Subject: Report Domain: ...` (RFC 7489 §7.2.1.1, RFC 9990 §5.2), or a
/// failure report's `Content-Type: multipart/report; report-type=feedback-report` (RFC 6591).
/// Such mail is recorded with [`MessageRecord::is_report`] and never reported on.
pub(crate) fn is_report(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(n, v)| {
        let v = v.trim_start();
        (n.eq_ignore_ascii_case("Subject")
            && v.len() >= 14
            && v.as_bytes()[..14].eq_ignore_ascii_case(b"report domain:"))
            || (n.eq_ignore_ascii_case("Content-Type") && {
                let l = v.to_ascii_lowercase();
                l.starts_with("multipart/report") && l.contains("feedback-report")
            })
    })
}

/// Somewhere to keep [`MessageRecord`]s until reports are sent.
pub trait HistoryStore: Send + Sync + std::fmt::Debug {
    /// Stores one record. An error is logged by the caller; mail is not held up by it.
    fn record(&self, record: &MessageRecord) -> std::io::Result<()>;
}

/// The default store: an append-only file in OpenDMARC's format, bounded by rotation.
#[derive(Debug)]
pub struct HistoryFile {
    path: PathBuf,
    max_bytes: u64,
    lock: Mutex<()>,
}

impl HistoryFile {
    /// A store appending to `path`, rotating at [`DEFAULT_HISTORY_MAX_BYTES`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            lock: Mutex::new(()),
        }
    }

    /// Sets the rotation bound.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The rotation bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".1");
        PathBuf::from(p)
    }
}

impl HistoryStore for HistoryFile {
    fn record(&self, record: &MessageRecord) -> std::io::Result<()> {
        let block = record.to_history_block();
        // A poisoned lock only means another writer panicked; the file is still consistent
        // at block granularity, so go on.
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if len > 0 && len + block.len() as u64 > self.max_bytes {
            std::fs::rename(&self.path, self.rotated())?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(block.as_bytes())
    }
}

/// A record for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn sample() -> super::MessageRecord {
        super::tests::sample()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bounce (null sender) is recorded with an empty `mfrom` and reads back the same:
    /// found by the `dmarc_history` fuzz target; before, the report skipped such records as
    /// malformed.
    #[test]
    fn a_null_sender_record_reads_back() {
        let mut rec = sample();
        rec.envelope_from = String::new();
        rec.reporter = String::new();
        let block = rec.to_history_block();
        let again = MessageRecord::from_history_block(&block).unwrap();
        assert_eq!(again.envelope_from, "");
        assert_eq!(again.to_history_block(), block);
    }

    pub(super) fn sample() -> MessageRecord {
        MessageRecord {
            job_id: "4XyZ1k2Abc".into(),
            reporter: "mx.example".into(),
            received: 1_764_000_000,
            source_ip: Some("192.0.2.1".parse().unwrap()),
            header_from: "sender.example".into(),
            envelope_from: "sender.example".into(),
            dkim: vec![DkimInput {
                domain: "sender.example".into(),
                selector: "mail".into(),
                status: DkimStatus::Pass,
            }],
            spf: Some(SpfResult::Pass),
            policy: Some((
                "sender.example".into(),
                DmarcRecord::parse(b"v=DMARC1; p=reject; rua=mailto:dmarc@sender.example").unwrap(),
            )),
            result: DmarcResult::Pass,
            policy_in_force: Policy::Reject,
            dkim_aligned: true,
            spf_aligned: false,
            disposition: Policy::None,
            spf_domain: "sender.example".into(),
            spf_scope: Some(Identity::MailFrom),
            overrides: Vec::new(),
            is_report: false,
        }
    }

    #[test]
    fn block_matches_opendmarc_keys() {
        let b = sample().to_history_block();
        assert_eq!(
            b,
            "job 4XyZ1k2Abc\nreporter mx.example\nreceived 1764000000\nipaddr 192.0.2.1\n\
             from sender.example\nmfrom sender.example\ndkim sender.example mail 0\n\
             spf 0 domain=sender.example scope=mfrom\n\
             pdomain sender.example\npolicy 15 result=pass in_force=114\n\
             rua mailto:dmarc@sender.example\npct 100\n\
             adkim 114\naspf 114\np 114 np=0 t=n\nsp 0\nalign_dkim 4\nalign_spf 5\narc 7\n\
             arc_policy 2 json:[]\naction 2\n"
        );
    }

    /// What opendmarc-import does with a line (`split / /, $_, 3`): key and value, the rest
    /// only read for `dkim` (selector, result) and `arc_policy` (`json:`). Our extension
    /// tokens must leave key and value, and the `dkim`/`arc_policy` data, as OpenDMARC's.
    #[test]
    fn extensions_leave_opendmarc_import_columns_alone() {
        let mut r = sample();
        r.overrides = vec![OverrideReason::SampledOut, OverrideReason::TrustedForwarder];
        r.is_report = true;
        let b = r.to_history_block();
        let known = [
            "action",
            "adkim",
            "align_dkim",
            "align_spf",
            "arc",
            "arc_policy",
            "aspf",
            "dkim",
            "from",
            "job",
            "ipaddr",
            "mfrom",
            "p",
            "pct",
            "pdomain",
            "policy",
            "received",
            "reporter",
            "rua",
            "sp",
            "spf",
        ];
        let perl_split = |l: &str| -> (String, String) {
            let mut it = l.splitn(3, ' ');
            (it.next().unwrap().into(), it.next().unwrap_or("").into())
        };
        let opendmarc_cols: Vec<(String, String)> = b.lines().map(perl_split).collect();
        for (k, v) in &opendmarc_cols {
            assert!(known.contains(&k.as_str()), "unknown key {k}");
            assert!(!v.contains('='), "{k} value {v}");
        }
        assert!(
            b.contains("\naction 2 reason=sampled_out,trusted_forwarder report=y\n"),
            "{b}"
        );
        assert!(b.contains("\ndkim sender.example mail 0\n"), "{b}");
        assert!(b.contains("\narc_policy 2 json:[]\n"), "{b}");
    }

    #[test]
    fn block_round_trips() {
        let mut r = sample();
        r.overrides = vec![OverrideReason::LocalPolicy, OverrideReason::SampledOut];
        r.is_report = true;
        r.result = DmarcResult::Fail;
        r.policy_in_force = Policy::Quarantine;
        r.spf_scope = Some(Identity::Helo);
        r.spf_domain = "helo.example".into();
        r.source_ip = Some("2001:db8::1".parse().unwrap());
        r.dkim.push(DkimInput {
            domain: "other.example".into(),
            selector: String::new(),
            status: DkimStatus::Fail,
        });
        if let Some((_, rec)) = &mut r.policy {
            *rec = DmarcRecord::parse(
                b"v=DMARC1; p=quarantine; sp=reject; np=none; adkim=s; aspf=r; pct=50; t=y; \
                  rua=mailto:a@sender.example,mailto:b@x.example!10m",
            )
            .unwrap();
            rec.ruf.clear();
        }
        let back = MessageRecord::from_history_block(&r.to_history_block()).unwrap();
        assert_eq!(back, r);
        let mut none = sample();
        none.policy = None;
        none.spf = None;
        none.spf_scope = None;
        none.spf_domain = String::new();
        none.source_ip = None;
        none.result = DmarcResult::None;
        none.policy_in_force = Policy::None;
        none.dkim.clear();
        let back = MessageRecord::from_history_block(&none.to_history_block()).unwrap();
        assert_eq!(back, none);
    }

    /// A block as OpenDMARC 1.4.2 writes it (no extension tokens): the result, policy in
    /// force and SPF domain come from its codes.
    #[test]
    fn reads_opendmarc_blocks() {
        let b = "job 4ABC\nreporter mx.example\nreceived 1764000000\nipaddr 198.51.100.7\n\
                 from Sub.Sender.example\nmfrom bounce.example\ndkim sender.example s1 7\n\
                 spf 2\npdomain sender.example\npolicy 17\nrua mailto:r@sender.example\n\
                 pct 100\nadkim 114\naspf 115\np 114\nsp 113\nalign_dkim 5\nalign_spf 5\n\
                 arc 7\narc_policy 2 json:[]\naction 4\n";
        let r = MessageRecord::from_history_block(b).unwrap();
        assert_eq!(r.header_from, "sub.sender.example");
        assert_eq!(r.result, DmarcResult::Fail);
        assert_eq!(r.policy_in_force, Policy::Quarantine);
        assert_eq!(r.disposition, Policy::Quarantine);
        assert_eq!(r.spf, Some(SpfResult::SoftFail));
        assert_eq!(
            (r.spf_domain.as_str(), r.spf_scope),
            ("bounce.example", Some(Identity::MailFrom))
        );
        let (pd, rec) = r.policy.unwrap();
        assert_eq!(pd, "sender.example");
        assert_eq!(
            (rec.p, rec.sp, rec.aspf),
            (Policy::Reject, Some(Policy::Quarantine), Alignment::Strict)
        );
        assert_eq!(rec.rua, ["mailto:r@sender.example"]);
        assert_eq!(r.dkim[0].status, DkimStatus::Fail);
    }

    #[test]
    fn malformed_blocks_name_their_line_and_reading_goes_on() {
        let good = sample().to_history_block();
        let input = format!(
            "from x.example\n{good}job B\nreceived soon\nfrom a.example\n\
             {good}job C\nreceived 1\npolicy 14\n{good}"
        );
        let out: Vec<_> = HistoryReader::new(input.as_bytes()).collect();
        let n = good.lines().count();
        assert_eq!(out.len(), 6, "{out:?}");
        assert_eq!(
            out[0].as_ref().unwrap_err(),
            &HistoryError {
                line: 1,
                kind: HistoryErrorKind::NoJob
            }
        );
        assert_eq!(out[1].as_ref().unwrap(), &sample());
        assert_eq!(
            out[2].as_ref().unwrap_err(),
            &HistoryError {
                line: n + 3,
                kind: HistoryErrorKind::BadValue("received")
            }
        );
        assert_eq!(out[3].as_ref().unwrap(), &sample());
        assert_eq!(
            out[4].as_ref().unwrap_err(),
            &HistoryError {
                line: 2 * n + 5,
                kind: HistoryErrorKind::Missing("from")
            }
        );
        // C's error ends at the next `job`: the block after it is read.
        assert_eq!(out[5].as_ref().unwrap(), &sample());
    }

    #[test]
    fn reader_is_bounded() {
        let long = format!(
            "job A\nfrom {}\n{}",
            "x".repeat(MAX_HISTORY_LINE + 1),
            sample().to_history_block()
        );
        let out: Vec<_> = HistoryReader::new(long.as_bytes()).collect();
        assert_eq!(
            out[0].as_ref().unwrap_err().kind,
            HistoryErrorKind::LineTooLong
        );
        assert_eq!(out[1].as_ref().unwrap(), &sample());
        let many = format!(
            "job A\nfrom a\npolicy 14\nreceived 1\n{}",
            "x y\n".repeat(MAX_BLOCK_LINES)
        );
        let out: Vec<_> = HistoryReader::new(many.as_bytes()).collect();
        assert_eq!(
            out[0].as_ref().unwrap_err().kind,
            HistoryErrorKind::BlockTooLong
        );
        let dkims = format!(
            "job A\nfrom a\npolicy 14\nreceived 1\n{}",
            "dkim a s 0\n".repeat(MAX_BLOCK_DKIM + 1)
        );
        let out: Vec<_> = HistoryReader::new(dkims.as_bytes()).collect();
        assert_eq!(
            out[0].as_ref().unwrap_err().kind,
            HistoryErrorKind::TooMany("dkim")
        );
        let two = format!(
            "{}{}",
            sample().to_history_block(),
            sample().to_history_block()
        );
        assert!(MessageRecord::from_history_block(&two).is_err());
    }

    #[test]
    fn reports_are_recognised() {
        let h = |n: &str, v: &str| vec![(n.to_owned(), v.to_owned())];
        assert!(is_report(&h(
            "Subject",
            "Report Domain: a.example Submitter: b Report-ID: <1>"
        )));
        assert!(is_report(&h(
            "Content-Type",
            "multipart/report; report-type=feedback-report;\n boundary=x"
        )));
        assert!(!is_report(&h("Subject", "Report")));
        assert!(!is_report(&h(
            "Content-Type",
            "multipart/report; report-type=delivery-status"
        )));
    }

    #[test]
    fn peer_values_never_start_a_line() {
        let mut r = sample();
        r.job_id = "Q1\naction 0".into();
        r.header_from = "a.example\r\npolicy 16".into();
        r.dkim[0].selector = "s1 x.example 0\ndkim evil.example".into();
        r.dkim[0].domain = "d.example\u{2028}x".into();
        if let Some((_, rec)) = &mut r.policy {
            rec.rua = vec!["mailto:a@x.example\naction 0\njob forged".into()];
        }
        let b = r.to_history_block();
        let keys: Vec<&str> = b.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "job",
                "reporter",
                "received",
                "ipaddr",
                "from",
                "mfrom",
                "dkim",
                "spf",
                "pdomain",
                "policy",
                "rua",
                "pct",
                "adkim",
                "aspf",
                "p",
                "sp",
                "align_dkim",
                "align_spf",
                "arc",
                "arc_policy",
                "action"
            ],
            "{b}"
        );
        assert!(
            b.contains("\nrua mailto:a@x.example?action?0?job?forged\n"),
            "{b}"
        );
        assert!(
            b.contains("\ndkim d.example?x s1?x.example?0?dkim?evil.example 0\n"),
            "{b}"
        );
        assert!(b.starts_with("job Q1?action?0\n"), "{b}");
    }

    #[test]
    fn file_appends_and_rotates_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history");
        let one = sample().to_history_block().len() as u64;
        let store = HistoryFile::new(&path).with_max_bytes(one * 2);
        for _ in 0..2 {
            store.record(&sample()).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), one * 2);
        store.record(&sample()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), one);
        assert_eq!(std::fs::metadata(store.rotated()).unwrap().len(), one * 2);
    }
}
