//! Per-message records for DMARC aggregate reports (RFC 7489 §7.2), and the default store.
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
//! spf 0
//! pdomain sender.example
//! policy 15
//! rua mailto:dmarc@sender.example
//! pct 100
//! adkim 114
//! aspf 114
//! p 114
//! sp 0
//! align_dkim 4
//! align_spf 5
//! arc 7
//! arc_policy 2 json:[]
//! action 2
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

use crate::spf::SpfResult;

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
        let _ = writeln!(s, "spf {}", spf_code(self.spf));
        let (pdomain, rec) = match &self.policy {
            Some((d, r)) => (d.as_str(), Some(r)),
            None => (self.header_from.as_str(), None),
        };
        let _ = writeln!(s, "pdomain {}", Clean(pdomain));
        let outcome = outcome_code(self.result, self.policy_in_force, rec.is_some());
        let _ = writeln!(s, "policy {outcome}");
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
            let _ = writeln!(s, "p {}", policy_code(r.p));
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
        let _ = writeln!(s, "action {action}");
        s
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MessageRecord {
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
        }
    }

    #[test]
    fn block_matches_opendmarc_keys() {
        let b = sample().to_history_block();
        assert_eq!(
            b,
            "job 4XyZ1k2Abc\nreporter mx.example\nreceived 1764000000\nipaddr 192.0.2.1\n\
             from sender.example\nmfrom sender.example\ndkim sender.example mail 0\nspf 0\n\
             pdomain sender.example\npolicy 15\nrua mailto:dmarc@sender.example\npct 100\n\
             adkim 114\naspf 114\np 114\nsp 0\nalign_dkim 4\nalign_spf 5\narc 7\n\
             arc_policy 2 json:[]\naction 2\n"
        );
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
