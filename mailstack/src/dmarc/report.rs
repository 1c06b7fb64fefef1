//! DMARC aggregate reports (RFC 7489 §7.2 and appendix C; RFC 9990), built from
//! [`MessageRecord`]s.
//!
//! ```text
//!  RecordSource ──records──▶ Aggregator ──▶ AggregateReport ──▶ XML ──▶ gzip ──▶ mail
//!  (history files,           rows counted     one per (policy     7489 or        name and subject
//!   later the store)         per window       domain, rua, window) 9990          of the RFC
//! ```
//!
//! - Windows are UTC-aligned: a record received at `t` falls in `[t - t % w, t - t % w + w)`
//!   ([`DEFAULT_WINDOW`] is 24 h, so reports cover UTC days).
//! - Rows count messages with the same source address, evaluated policy, override reasons,
//!   identifiers and authentication results.
//! - Records of mail that was itself a report ([`MessageRecord::is_report`]) are skipped: no
//!   reports about reports (RFC 7489 §7.2).
//! - What is sent where (the `!size` limit, `_report._dmarc` verification, suppressed
//!   destinations) is decided by [`decide`]; the mail itself by [`report_message`]; [`run`] does it all.
//!
//! Everything is bounded: rows per report ([`MAX_ROWS`]), reports per run ([`MAX_REPORTS`]);
//! what goes past a bound is counted in [`AggregateStats`] and logged, never held.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::dns::{DnsError, Resolver};
use crate::spf::{Identity, SpfResult};

use super::history::{HistoryError, HistoryReader, MessageRecord, OverrideReason};
use super::psl::PublicSuffixList;
use super::record::DmarcRecord;

/// The default report window: 24 h (RFC 7489 §7.2: "at least once every 24 hours"; RFC 9990
/// §2.1 the same), aligned to UTC midnight.
pub const DEFAULT_WINDOW: u64 = 86_400;

/// Most distinct rows in one report (a busy domain sees a few thousand sources a day; Google's
/// largest reports hold some 10,000 rows). Records past it are counted as dropped.
pub const MAX_ROWS: usize = 100_000;

/// Most reports built in one run (distinct policy domain, `rua` and window).
pub const MAX_REPORTS: usize = 10_000;

/// How long a destination that refused or bounced a report is not sent to (RFC 7489 §7.2.1.1
/// leaves it to the receiver; a week stops hammering a dead mailbox without giving up).
pub const DEFAULT_SUPPRESS_SECS: u64 = 7 * 86_400;

/// Most destinations kept in the suppression state file.
pub const MAX_SUPPRESSED: usize = 10_000;

/// Which XML the report is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Format {
    /// RFC 7489 appendix C (no namespace, `version` 1.0): what every consumer reads.
    #[default]
    Rfc7489,
    /// RFC 9990 (namespace `urn:ietf:params:xml:ns:dmarc-2.0`, `np`, `testing`,
    /// `discovery_method`, `generator`).
    DmarcBis,
}

/// A source of records; the history files now, the shared store later.
pub trait RecordSource: std::fmt::Debug {
    /// Calls `sink` with every record whose `received` lies in `[begin, end)`. Malformed
    /// input is logged and counted in the returned [`SourceStats`], not fatal.
    fn records(
        &self,
        begin: u64,
        end: u64,
        sink: &mut dyn FnMut(MessageRecord),
    ) -> Result<SourceStats, SourceError>;
}

/// What a [`RecordSource`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceStats {
    /// Records handed to the sink.
    pub records: u64,
    /// Malformed blocks skipped.
    pub malformed: u64,
}

impl SourceStats {
    /// Hands `rec` to `sink` when it was received in `range`, counting it.
    fn offer(
        &mut self,
        rec: MessageRecord,
        range: std::ops::Range<u64>,
        sink: &mut dyn FnMut(MessageRecord),
    ) {
        if range.contains(&rec.received) {
            self.records += 1;
            sink(rec);
        }
    }
}

/// A record source failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The store could not be read.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The range holds more records than one run reads ([`MAX_STORE_RECORDS`]): ask for a
    /// shorter one.
    #[error("the store holds more than {MAX_STORE_RECORDS} records in the range")]
    TooMany,
    /// A history file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Most records [`StoreRecords::load`] reads for one run.
pub const MAX_STORE_RECORDS: usize = 1_000_000;

/// The DMARC records of a [`crate::store::Store`] (what mailstackd's `[store]` and
/// dmarc-milter's `MailstackStore` write: several nodes into one Redis give one report with
/// the sum), loaded for one range as a [`RecordSource`].
#[derive(Debug, Clone, Default)]
pub struct StoreRecords {
    blocks: Vec<Vec<u8>>,
}

impl StoreRecords {
    /// Reads every record of [`crate::store::DMARC_STREAM`] received in `[begin, end)` (Unix
    /// seconds), page by page, at most [`MAX_STORE_RECORDS`].
    pub async fn load(
        store: &dyn crate::store::Store,
        begin: u64,
        end: u64,
    ) -> Result<Self, SourceError> {
        use crate::store::{DMARC_STREAM, Scan};
        let mut scan = Scan::range(begin.saturating_mul(1000), end.saturating_mul(1000));
        let mut blocks = Vec::new();
        loop {
            let page = store.scan(DMARC_STREAM, &scan).await?;
            let full = page.len() >= scan.limit;
            let Some(last) = page.last().cloned() else {
                break;
            };
            blocks.extend(page.into_iter().map(|r| r.data));
            if blocks.len() > MAX_STORE_RECORDS {
                return Err(SourceError::TooMany);
            }
            if !full {
                break;
            }
            scan = scan.after(&last);
        }
        Ok(Self { blocks })
    }

    /// How many records were loaded.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

impl RecordSource for StoreRecords {
    fn records(
        &self,
        begin: u64,
        end: u64,
        sink: &mut dyn FnMut(MessageRecord),
    ) -> Result<SourceStats, SourceError> {
        let mut stats = SourceStats::default();
        for block in &self.blocks {
            match MessageRecord::from_history_block(&String::from_utf8_lossy(block)) {
                Ok(rec) => stats.offer(rec, begin..end, sink),
                Err(e) => {
                    tracing::warn!("store record skipped: {e}");
                    stats.malformed += 1;
                }
            }
        }
        Ok(stats)
    }
}

/// History files (ours or OpenDMARC's `HistoryFile`) as a [`RecordSource`].
#[derive(Debug, Clone)]
pub struct HistoryFiles {
    paths: Vec<PathBuf>,
}

impl HistoryFiles {
    /// The files, read in order.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            paths: paths.into_iter().collect(),
        }
    }
}

impl RecordSource for HistoryFiles {
    fn records(
        &self,
        begin: u64,
        end: u64,
        sink: &mut dyn FnMut(MessageRecord),
    ) -> Result<SourceStats, SourceError> {
        let mut stats = SourceStats::default();
        for path in &self.paths {
            let f = std::fs::File::open(path).map_err(|source| SourceError::Io {
                path: path.clone(),
                source,
            })?;
            for r in HistoryReader::new(std::io::BufReader::new(f)) {
                match r {
                    Ok(rec) => stats.offer(rec, begin..end, sink),
                    Err(HistoryError {
                        kind: super::history::HistoryErrorKind::Io(kind),
                        ..
                    }) => {
                        return Err(SourceError::Io {
                            path: path.clone(),
                            source: kind.into(),
                        });
                    }
                    Err(e) => {
                        stats.malformed += 1;
                        tracing::warn!("{}: {e}", path.display());
                    }
                }
            }
        }
        Ok(stats)
    }
}

/// A `rua` destination: `mailto:` address and optional `!size` limit (RFC 7489 §6.2).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rua {
    /// The address (the `mailto:` URI's path, percent-decoded).
    pub address: String,
    /// The `!size` limit in bytes.
    pub max_size: Option<u64>,
}

/// A `rua` URI we cannot send to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuaError {
    /// Not a `mailto:` URI (the only scheme RFC 7489 §7.1 requires, and RFC 9990's only one).
    #[error("not a mailto: URI")]
    NotMailto,
    /// No `local@domain` address.
    #[error("no address")]
    NoAddress,
    /// A `!size` that does not parse.
    #[error("bad !size")]
    BadSize,
}

impl Rua {
    /// Parses `mailto:addr[!size[k|m|g|t]]` (RFC 7489 §6.4 `dmarc-uri`).
    pub fn parse(uri: &str) -> Result<Self, RuaError> {
        let uri = uri.trim();
        let rest = uri
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("mailto:"))
            .map(|_| &uri[7..])
            .ok_or(RuaError::NotMailto)?;
        let (addr, size) = match rest.rsplit_once('!') {
            Some((a, s)) => (a, Some(s)),
            None => (rest, None),
        };
        let addr = addr.split('?').next().unwrap_or("");
        let address = percent_decode(addr);
        match address.rsplit_once('@') {
            Some((l, d)) if !l.is_empty() && !d.is_empty() && !address.contains(['\r', '\n']) => {}
            _ => return Err(RuaError::NoAddress),
        }
        let max_size = size.map(parse_size).transpose()?;
        Ok(Self { address, max_size })
    }

    /// The address's domain (lower case).
    pub fn domain(&self) -> String {
        self.address
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase()
    }
}

impl std::fmt::Display for Rua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mailto:{}", self.address)?;
        if let Some(s) = self.max_size {
            write!(f, "!{s}")?;
        }
        Ok(())
    }
}

fn parse_size(s: &str) -> Result<u64, RuaError> {
    let (digits, mult) = match s.as_bytes().last().map(u8::to_ascii_lowercase) {
        Some(b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g') => (&s[..s.len() - 1], 1 << 30),
        Some(b't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or(RuaError::BadSize)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (hex(b[i + 1]), b.get(i + 2).and_then(|&c| hex(c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One row: messages alike in everything a report says about them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    /// The SMTP client.
    pub source_ip: IpAddr,
    /// The disposition applied.
    pub disposition: &'static str,
    /// The DMARC-aligned DKIM result (`pass`/`fail`).
    pub dkim_aligned: bool,
    /// The DMARC-aligned SPF result.
    pub spf_aligned: bool,
    /// Override reasons.
    pub reasons: Vec<OverrideReason>,
    /// RFC5322.From domain.
    pub header_from: String,
    /// RFC5321.MailFrom domain (empty for the null sender).
    pub envelope_from: String,
    /// Each DKIM signature: domain, selector, result.
    pub dkim: Vec<(String, String, &'static str)>,
    /// SPF: domain, scope (`mfrom`/`helo`), result.
    pub spf: (String, &'static str, &'static str),
}

impl Row {
    fn of(r: &MessageRecord, ip: IpAddr) -> Self {
        let spf_result = r.spf.map_or("none", SpfResult::as_str);
        let spf_domain = if r.spf_domain.is_empty() {
            r.envelope_from.clone()
        } else {
            r.spf_domain.clone()
        };
        let scope = match r.spf_scope {
            Some(Identity::Helo) => "helo",
            _ => "mfrom",
        };
        let mut reasons = r.overrides.clone();
        reasons.sort();
        reasons.dedup();
        Self {
            source_ip: ip,
            disposition: r.disposition.as_str(),
            dkim_aligned: r.dkim_aligned,
            spf_aligned: r.spf_aligned,
            reasons,
            header_from: r.header_from.clone(),
            envelope_from: r.envelope_from.clone(),
            dkim: r
                .dkim
                .iter()
                .map(|d| (d.domain.clone(), d.selector.clone(), d.status.as_str()))
                .collect(),
            spf: (spf_domain, scope, spf_result),
        }
    }
}

/// One report: a policy domain, a destination, a window, and its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateReport {
    /// The domain where the DMARC record was found.
    pub policy_domain: String,
    /// The destination.
    pub rua: Rua,
    /// First second of the window (UTC, aligned).
    pub begin: u64,
    /// Last second of the window (`begin + window - 1`).
    pub end: u64,
    /// The record in force (the last one seen in the window).
    pub policy: DmarcRecord,
    /// Rows and their message counts, in a stable order.
    pub rows: Vec<(Row, u64)>,
}

impl AggregateReport {
    /// The number of messages in the report.
    pub fn messages(&self) -> u64 {
        self.rows.iter().map(|(_, n)| n).sum()
    }
}

/// Who sends the reports (RFC 7489 §7.2.2 `report_metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMeta {
    /// `org_name`.
    pub org_name: String,
    /// `email`: the contact address, also the report mail's `From`.
    pub email: String,
    /// `extra_contact_info`.
    pub extra_contact_info: Option<String>,
    /// The reporting domain (the file name's `receiver`, the subject's `Submitter`, the
    /// DKIM signing domain).
    pub receiver: String,
}

/// Counts of one aggregation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AggregateStats {
    /// Records counted in a report row.
    pub counted: u64,
    /// Records of mail that was itself a report (skipped).
    pub reports_skipped: u64,
    /// Records without a DMARC record or `rua` (nothing to report).
    pub no_rua: u64,
    /// Records without a source address (a report row needs one).
    pub no_source_ip: u64,
    /// `rua` URIs that are not usable `mailto:` addresses.
    pub bad_rua: u64,
    /// Records past [`MAX_ROWS`] or [`MAX_REPORTS`].
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    policy_domain: String,
    rua: Rua,
    begin: u64,
}

#[derive(Debug)]
struct Building {
    policy: DmarcRecord,
    policy_at: u64,
    rows: BTreeMap<Row, u64>,
}

/// Counts records into reports.
#[derive(Debug)]
pub struct Aggregator {
    window: u64,
    reports: BTreeMap<Key, Building>,
    stats: AggregateStats,
}

impl Aggregator {
    /// An aggregator with `window`-second windows (at least 1 s; [`DEFAULT_WINDOW`]).
    pub fn new(window: u64) -> Self {
        Self {
            window: window.max(1),
            reports: BTreeMap::new(),
            stats: AggregateStats::default(),
        }
    }

    /// Counts one record.
    pub fn add(&mut self, r: &MessageRecord) {
        if r.is_report {
            self.stats.reports_skipped += 1;
            return;
        }
        let Some((pdomain, rec)) = r.policy.as_ref().filter(|(_, rec)| !rec.rua.is_empty()) else {
            self.stats.no_rua += 1;
            return;
        };
        let Some(ip) = r.source_ip else {
            self.stats.no_source_ip += 1;
            return;
        };
        let begin = r.received - r.received % self.window;
        let row = Row::of(r, ip);
        for uri in &rec.rua {
            let Ok(rua) = Rua::parse(uri) else {
                self.stats.bad_rua += 1;
                continue;
            };
            let key = Key {
                policy_domain: pdomain.to_ascii_lowercase(),
                rua,
                begin,
            };
            let full = self.reports.len() >= MAX_REPORTS;
            let b = match self.reports.get_mut(&key) {
                Some(b) => b,
                None if full => {
                    self.stats.dropped += 1;
                    continue;
                }
                None => self.reports.entry(key).or_insert_with(|| Building {
                    policy: rec.clone(),
                    policy_at: r.received,
                    rows: BTreeMap::new(),
                }),
            };
            if r.received >= b.policy_at {
                b.policy = rec.clone();
                b.policy_at = r.received;
            }
            if let Some(n) = b.rows.get_mut(&row) {
                *n += 1;
            } else if b.rows.len() >= MAX_ROWS {
                self.stats.dropped += 1;
                continue;
            } else {
                b.rows.insert(row.clone(), 1);
            }
            self.stats.counted += 1;
        }
    }

    /// The reports, ordered by window, policy domain and destination, and the counts.
    pub fn finish(self) -> (Vec<AggregateReport>, AggregateStats) {
        let window = self.window;
        let mut out: Vec<AggregateReport> = self
            .reports
            .into_iter()
            .map(|(k, b)| AggregateReport {
                policy_domain: k.policy_domain,
                rua: k.rua,
                begin: k.begin,
                end: k.begin + window - 1,
                policy: b.policy,
                rows: b.rows.into_iter().collect(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.begin, &a.policy_domain, &a.rua).cmp(&(b.begin, &b.policy_domain, &b.rua))
        });
        (out, self.stats)
    }
}

/// FNV-1a, for short stable ids (not a security function).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// XML character data.
struct Esc<'a>(&'a str);

impl std::fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '&' => f.write_str("&amp;")?,
                '"' => f.write_str("&quot;")?,
                // Characters XML 1.0 does not allow.
                c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => f.write_char('?')?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// An address as the RFC 7489 schema's `IPAddress` pattern wants it: IPv6 in full, eight
/// groups (the pattern has no `::`).
fn ip_text(ip: IpAddr, format: Format) -> String {
    match (ip, format) {
        (IpAddr::V6(v6), Format::Rfc7489) => {
            let s = v6.segments();
            s.iter()
                .map(|g| format!("{g:x}"))
                .collect::<Vec<_>>()
                .join(":")
        }
        (ip, _) => ip.to_string(),
    }
}

impl AggregateReport {
    /// The report's unique id: `<begin>.<hash of reporter, policy domain, destination>`,
    /// stable for the same report so that a re-run sends the same id (receivers
    /// de-duplicate on it, RFC 7489 §7.2.1.1).
    pub fn report_id(&self, meta: &ReportMeta) -> String {
        let h = fnv(&[
            meta.receiver.as_bytes(),
            self.policy_domain.as_bytes(),
            self.rua.address.as_bytes(),
            &self.begin.to_be_bytes(),
            &self.end.to_be_bytes(),
        ]);
        format!("{}.{h:016x}", self.begin)
    }

    /// The file name (RFC 7489 §7.2.1.1, RFC 9990 §5.2.1):
    /// `receiver!policy-domain!begin!end!unique.xml.gz`.
    pub fn file_name(&self, meta: &ReportMeta) -> String {
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        format!(
            "{}!{}!{}!{}!{}.xml.gz",
            safe(&meta.receiver),
            safe(&self.policy_domain),
            self.begin,
            self.end,
            safe(&self.report_id(meta))
        )
    }

    /// The subject (RFC 7489 §7.2.1.1): `Report Domain: <d> Submitter: <r> Report-ID: <id>`.
    pub fn subject(&self, meta: &ReportMeta) -> String {
        format!(
            "Report Domain: {} Submitter: {} Report-ID: <{}>",
            self.policy_domain,
            meta.receiver,
            self.report_id(meta)
        )
    }

    /// The report's XML.
    pub fn to_xml(&self, meta: &ReportMeta, format: Format) -> String {
        let mut x = String::with_capacity(1024 + self.rows.len() * 700);
        let bis = format == Format::DmarcBis;
        x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        if bis {
            x.push_str("<feedback xmlns=\"urn:ietf:params:xml:ns:dmarc-2.0\">\n");
        } else {
            x.push_str("<feedback>\n");
        }
        x.push_str("  <version>1.0</version>\n  <report_metadata>\n");
        let _ = writeln!(x, "    <org_name>{}</org_name>", Esc(&meta.org_name));
        let _ = writeln!(x, "    <email>{}</email>", Esc(&meta.email));
        if let Some(e) = &meta.extra_contact_info {
            let _ = writeln!(x, "    <extra_contact_info>{}</extra_contact_info>", Esc(e));
        }
        let _ = writeln!(
            x,
            "    <report_id>{}</report_id>",
            Esc(&self.report_id(meta))
        );
        let _ = writeln!(
            x,
            "    <date_range>\n      <begin>{}</begin>\n      <end>{}</end>\n    </date_range>",
            self.begin, self.end
        );
        if bis {
            let _ = writeln!(
                x,
                "    <generator>mailstack {}</generator>",
                env!("CARGO_PKG_VERSION")
            );
        }
        x.push_str("  </report_metadata>\n  <policy_published>\n");
        let p = &self.policy;
        let _ = writeln!(x, "    <domain>{}</domain>", Esc(&self.policy_domain));
        if bis {
            let _ = writeln!(x, "    <p>{}</p>", p.p);
            let _ = writeln!(x, "    <sp>{}</sp>", p.sp.unwrap_or(p.p));
            if let Some(np) = p.np {
                let _ = writeln!(x, "    <np>{np}</np>");
            }
            let _ = writeln!(x, "    <adkim>{}</adkim>", p.adkim.as_char());
            let _ = writeln!(x, "    <aspf>{}</aspf>", p.aspf.as_char());
            x.push_str("    <discovery_method>treewalk</discovery_method>\n");
            let _ = writeln!(
                x,
                "    <testing>{}</testing>",
                if p.testing { 'y' } else { 'n' }
            );
        } else {
            let _ = writeln!(x, "    <adkim>{}</adkim>", p.adkim.as_char());
            let _ = writeln!(x, "    <aspf>{}</aspf>", p.aspf.as_char());
            let _ = writeln!(x, "    <p>{}</p>", p.p);
            let _ = writeln!(x, "    <sp>{}</sp>", p.sp.unwrap_or(p.p));
            let _ = writeln!(x, "    <pct>{}</pct>", p.pct);
            x.push_str("    <fo>0</fo>\n");
        }
        x.push_str("  </policy_published>\n");
        let word = |b: bool| if b { "pass" } else { "fail" };
        for (row, count) in &self.rows {
            x.push_str("  <record>\n    <row>\n");
            let _ = writeln!(
                x,
                "      <source_ip>{}</source_ip>",
                ip_text(row.source_ip, format)
            );
            let _ = writeln!(x, "      <count>{count}</count>");
            let _ = writeln!(
                x,
                "      <policy_evaluated>\n        <disposition>{}</disposition>\n        \
                 <dkim>{}</dkim>\n        <spf>{}</spf>",
                row.disposition,
                word(row.dkim_aligned),
                word(row.spf_aligned)
            );
            for r in &row.reasons {
                let _ = writeln!(
                    x,
                    "        <reason>\n          <type>{r}</type>\n        </reason>"
                );
            }
            x.push_str("      </policy_evaluated>\n    </row>\n    <identifiers>\n");
            let _ = writeln!(
                x,
                "      <envelope_from>{}</envelope_from>",
                Esc(&row.envelope_from)
            );
            let _ = writeln!(
                x,
                "      <header_from>{}</header_from>",
                Esc(&row.header_from)
            );
            x.push_str("    </identifiers>\n    <auth_results>\n");
            for (d, s, res) in &row.dkim {
                let _ = writeln!(x, "      <dkim>\n        <domain>{}</domain>", Esc(d));
                // RFC 9990 requires the selector; RFC 7489 makes it optional.
                if bis || !s.is_empty() {
                    let _ = writeln!(x, "        <selector>{}</selector>", Esc(s));
                }
                let _ = writeln!(x, "        <result>{res}</result>\n      </dkim>");
            }
            let (d, scope, res) = &row.spf;
            let _ = writeln!(
                x,
                "      <spf>\n        <domain>{}</domain>\n        <scope>{scope}</scope>\n        \
                 <result>{res}</result>\n      </spf>",
                Esc(d)
            );
            x.push_str("    </auth_results>\n  </record>\n");
        }
        x.push_str("</feedback>\n");
        x
    }
}

/// gzip of `data` (RFC 1952, via flate2).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// An RFC 5322 date for `unix` (UTC).
pub fn rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The report mail (RFC 7489 §7.2.1.1): `multipart/mixed` with a short text part and the
/// gzipped XML as `application/gzip`, `Auto-Submitted: auto-generated` (RFC 3834), ready to
/// be DKIM-signed. Lines end in CRLF.
pub fn report_message(
    report: &AggregateReport,
    meta: &ReportMeta,
    format: Format,
    now: u64,
) -> Vec<u8> {
    use base64::Engine as _;
    let xml = report.to_xml(meta, format);
    let gz = gzip(xml.as_bytes());
    let id = report.report_id(meta);
    let boundary = format!("=_mailstack_{:016x}", fnv(&[id.as_bytes(), b"boundary"]));
    let name = report.file_name(meta);
    let mut m = String::new();
    let _ = write!(
        m,
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{id}@{}>\r\n\
         Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         This is a DMARC aggregate report.\r\n\r\n--{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         DMARC aggregate report for {} from {} for {} to {} (UTC, Unix time).\r\n\r\n\
         --{boundary}\r\nContent-Type: application/gzip; name=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n",
        meta.email,
        report.rua.address,
        report.subject(meta),
        rfc5322_date(now),
        meta.receiver,
        report.policy_domain,
        meta.receiver,
        report.begin,
        report.end,
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&gz);
    for chunk in b64.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        m.push_str("\r\n");
    }
    let _ = write!(m, "\r\n--{boundary}--\r\n");
    m.into_bytes()
}

/// Whether a destination outside the policy domain's organization agreed to get its
/// reports (RFC 7489 §7.1): `<policy-domain>._report._dmarc.<rua-domain>` has a TXT record
/// starting `v=DMARC1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verification {
    /// Same organization: no check needed.
    Internal,
    /// The record exists.
    Verified,
    /// No such record: nothing may be sent there.
    Refused,
    /// DNS failed; try again later (nothing is sent now).
    TempError,
}

/// Whether `a` and `b` belong to one organization: the same Organizational Domain under the
/// public suffix list when one is given, else one is the other or a subdomain of it.
pub fn same_organization(a: &str, b: &str, psl: Option<&PublicSuffixList>) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if let Some(psl) = psl {
        return psl.organizational_domain(&a) == psl.organizational_domain(&b);
    }
    let sub = |x: &str, y: &str| x == y || x.ends_with(&format!(".{y}"));
    sub(&a, &b) || sub(&b, &a)
}

/// Checks a destination (RFC 7489 §7.1, RFC 9990 §3).
pub async fn verify_destination(
    resolver: &dyn Resolver,
    policy_domain: &str,
    rua: &Rua,
    psl: Option<&PublicSuffixList>,
) -> Verification {
    let rua_domain = rua.domain();
    if same_organization(policy_domain, &rua_domain, psl) {
        return Verification::Internal;
    }
    let name = format!("{policy_domain}._report._dmarc.{rua_domain}");
    match resolver.txt(&name).await {
        Ok(txts) => {
            let ok = txts.iter().any(|t| {
                let t = String::from_utf8_lossy(t);
                let t = t.trim_start();
                t.len() >= 8
                    && t[..8].eq_ignore_ascii_case("v=DMARC1")
                    && t[8..].trim_start().chars().next().is_none_or(|c| c == ';')
            });
            if ok {
                Verification::Verified
            } else {
                Verification::Refused
            }
        }
        Err(DnsError::NxDomain | DnsError::NoData | DnsError::InvalidName) => Verification::Refused,
        Err(_) => Verification::TempError,
    }
}

/// Destinations not to send to until a time: the bounce/refusal memory, kept in a small
/// text file (`<unix-until> <address>` per line), bounded by [`MAX_SUPPRESSED`].
#[derive(Debug, Clone, Default)]
pub struct Suppressions {
    until: BTreeMap<String, u64>,
}

impl Suppressions {
    /// Reads the file (a missing file is empty; unreadable lines are skipped).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut s = Self::default();
        for line in text.lines().take(MAX_SUPPRESSED) {
            if let Some((t, a)) = line.split_once(' ')
                && let Ok(t) = t.parse()
            {
                s.until.insert(a.to_ascii_lowercase(), t);
            }
        }
        Ok(s)
    }

    /// Writes the file (entries expired at `now` are dropped), atomically (write, rename).
    pub fn write(&self, path: &Path, now: u64) -> std::io::Result<()> {
        let mut text = String::new();
        for (a, t) in self
            .until
            .iter()
            .filter(|(_, t)| **t > now)
            .take(MAX_SUPPRESSED)
        {
            let _ = writeln!(text, "{t} {a}");
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// Whether `address` is suppressed at `now`.
    pub fn is_suppressed(&self, address: &str, now: u64) -> bool {
        self.until
            .get(&address.to_ascii_lowercase())
            .is_some_and(|t| *t > now)
    }

    /// Suppresses `address` until `until`.
    pub fn suppress(&mut self, address: &str, until: u64) {
        if self.until.len() >= MAX_SUPPRESSED {
            // Drop the entry that expires first.
            if let Some(k) = self
                .until
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                self.until.remove(&k);
            }
        }
        self.until.insert(address.to_ascii_lowercase(), until);
    }
}

/// What happens to one report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dispatch {
    /// Send it.
    Send,
    /// The message is larger than the destination's `!size`.
    TooLarge {
        /// The message size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The destination did not agree to receive reports for this domain.
    NotVerified,
    /// DNS failed while verifying; not sent this time.
    VerifyTempError,
    /// The destination bounced or refused earlier and is suppressed.
    Suppressed,
}

/// Decides for a report whose message is `size` bytes: suppression first (no DNS query for a
/// dead destination), then `!size`, then verification.
pub async fn decide(
    report: &AggregateReport,
    size: u64,
    suppressions: &Suppressions,
    resolver: &dyn Resolver,
    psl: Option<&PublicSuffixList>,
    now: u64,
) -> Dispatch {
    if suppressions.is_suppressed(&report.rua.address, now) {
        return Dispatch::Suppressed;
    }
    if let Some(limit) = report.rua.max_size
        && size > limit
    {
        return Dispatch::TooLarge { size, limit };
    }
    match verify_destination(resolver, &report.policy_domain, &report.rua, psl).await {
        Verification::Internal | Verification::Verified => Dispatch::Send,
        Verification::Refused => Dispatch::NotVerified,
        Verification::TempError => Dispatch::VerifyTempError,
    }
}

/// Reads every record of `[begin, end)` from `source` and aggregates it.
pub fn aggregate(
    source: &dyn RecordSource,
    begin: u64,
    end: u64,
    window: u64,
) -> Result<(Vec<AggregateReport>, AggregateStats, SourceStats), SourceError> {
    let mut agg = Aggregator::new(window);
    let read = source.records(begin, end, &mut |r| agg.add(&r))?;
    let (reports, stats) = agg.finish();
    Ok((reports, stats, read))
}

/// Where reports go.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Write `<file name>` (the gzipped XML) and `<file name>.eml` (the mail) to a
    /// directory instead of sending (`--dry-run DIR`). Decisions are still made (DNS
    /// verification, `!size`), so the directory shows what would be sent.
    DryRun(PathBuf),
    /// Submit by SMTP.
    Smtp(Box<crate::notify::Notifier>),
}

/// The DKIM key that signs report mail: the reporting domain's.
#[derive(Debug)]
pub struct ReportSigner {
    /// The key (its selector is `s=`).
    pub key: crate::dkim::sign::SigningKey,
    /// `d=`.
    pub domain: String,
}

/// How one run goes.
#[derive(Debug)]
pub struct RunOptions {
    /// First second of the range read (rounded down to a window start).
    pub begin: u64,
    /// End of the range read (exclusive; only whole windows ending at or before it).
    pub end: u64,
    /// The window length ([`DEFAULT_WINDOW`]).
    pub window: u64,
    /// The XML.
    pub format: Format,
    /// Who reports.
    pub meta: ReportMeta,
    /// Spread the sending over this long (a pause of `spread / reports` between two
    /// reports) instead of sending all at once.
    pub spread: std::time::Duration,
    /// The suppression state file (bounced or refusing destinations), if any.
    pub state: Option<PathBuf>,
    /// How long a refusing destination is suppressed ([`DEFAULT_SUPPRESS_SECS`]).
    pub suppress_secs: u64,
    /// The clock (Unix seconds) for `Date:`, `t=` and suppression.
    pub now: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// Reading.
    pub source: SourceStats,
    /// Aggregating.
    pub aggregate: AggregateStats,
    /// Reports sent (or written, for a dry run), with their file names.
    pub sent: Vec<String>,
    /// Reports not sent, with the reason.
    pub held: Vec<(String, Dispatch)>,
    /// Reports whose sending failed (transient: tried again next run).
    pub failed: Vec<(String, String)>,
}

/// A run failed before any report was decided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Reading the records.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The state file or the dry-run directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Signing.
    #[error("DKIM signing: {0}")]
    Sign(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Prepends a DKIM-Signature by `signer` to `msg`.
pub fn sign(msg: &[u8], signer: &ReportSigner, now: u64) -> Result<Vec<u8>, RunError> {
    let opts = crate::dkim::sign::SignOptions::from_config(&crate::dkim::DkimConfig::default());
    let values = crate::dkim::sign::sign_message(
        &[(&signer.key, signer.domain.as_str())],
        &opts,
        msg,
        false,
        now,
    )
    .map_err(|e| RunError::Sign(e.to_string()))?;
    let mut out = Vec::with_capacity(msg.len() + 600);
    for v in values {
        out.extend_from_slice(b"DKIM-Signature: ");
        out.extend_from_slice(v.replace('\n', "\r\n").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(msg);
    Ok(out)
}

/// Reads, aggregates, decides and sends (or writes) every report of the range.
pub async fn run(
    source: &dyn RecordSource,
    resolver: &dyn Resolver,
    psl: Option<&PublicSuffixList>,
    signer: Option<&ReportSigner>,
    output: &Output,
    opts: &RunOptions,
) -> Result<RunSummary, RunError> {
    let window = opts.window.max(1);
    let begin = opts.begin - opts.begin % window;
    let end = opts.end - opts.end % window;
    let mut summary = RunSummary::default();
    let (reports, agg, read) = aggregate(source, begin, end, window)?;
    summary.source = read;
    summary.aggregate = agg;
    let mut suppressions = match &opts.state {
        Some(p) => Suppressions::read(p).map_err(io_err(p))?,
        None => Suppressions::default(),
    };
    if let Output::DryRun(dir) = output {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let pause = opts
        .spread
        .checked_div(u32::try_from(reports.len()).unwrap_or(u32::MAX).max(1))
        .unwrap_or_default();
    for (i, report) in reports.iter().enumerate() {
        let name = report.file_name(&opts.meta);
        let mut msg = report_message(report, &opts.meta, opts.format, opts.now);
        if let Some(s) = signer {
            msg = sign(&msg, s, opts.now)?;
        }
        let decision = decide(
            report,
            msg.len() as u64,
            &suppressions,
            resolver,
            psl,
            opts.now,
        )
        .await;
        if decision != Dispatch::Send {
            tracing::warn!("{name}: not sent to {}: {decision:?}", report.rua);
            summary.held.push((name, decision));
            continue;
        }
        if i > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        match output {
            Output::DryRun(dir) => {
                let xml = report.to_xml(&opts.meta, opts.format);
                let gz_path = dir.join(&name);
                std::fs::write(&gz_path, gzip(xml.as_bytes())).map_err(io_err(&gz_path))?;
                let eml = dir.join(format!("{name}.eml"));
                std::fs::write(&eml, &msg).map_err(io_err(&eml))?;
                summary.sent.push(name);
            }
            Output::Smtp(n) => match n.send_raw(&report.rua.address, &msg).await {
                Ok(()) => {
                    tracing::info!(
                        "{name}: sent to {} ({} messages)",
                        report.rua,
                        report.messages()
                    );
                    summary.sent.push(name);
                }
                Err(crate::notify::SendRawError::Refused(e)) => {
                    tracing::warn!(
                        "{name}: {} refused ({e}); suppressed for {} s",
                        report.rua,
                        opts.suppress_secs
                    );
                    suppressions.suppress(
                        &report.rua.address,
                        opts.now.saturating_add(opts.suppress_secs),
                    );
                    summary.failed.push((name, e));
                }
                Err(e) => {
                    tracing::warn!("{name}: not sent to {}: {e}", report.rua);
                    summary.failed.push((name, e.to_string()));
                }
            },
        }
    }
    if let Some(p) = &opts.state {
        suppressions.write(p, opts.now).map_err(io_err(p))?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dmarc::eval::{DkimInput, DkimStatus, DmarcResult};

    fn rec(ip: &str, received: u64, rua: &str) -> MessageRecord {
        let mut r = crate::dmarc::history::tests_support::sample();
        r.source_ip = Some(ip.parse().unwrap());
        r.received = received;
        if let Some((_, p)) = &mut r.policy {
            p.rua = vec![rua.to_owned()];
        }
        r
    }

    /// Records several nodes wrote into one store come back as one source: those in the
    /// range, each once; a malformed one is counted, not fatal.
    #[tokio::test]
    async fn store_records_are_a_source() {
        use crate::store::{DMARC_STREAM, EmbeddedLimits, EmbeddedStore, Record, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db"), EmbeddedLimits::default()).unwrap();
        let day = 1_764_028_800;
        let mut records: Vec<Record> = (0..3u64)
            .map(|i| {
                let r = rec("192.0.2.1", day + i * 3600, "mailto:d@sender.example");
                Record::new(r.received * 1000, r.to_history_block())
            })
            .collect();
        let late = rec("192.0.2.9", day + 86_400 + 5, "mailto:d@sender.example");
        records.push(Record::new(late.received * 1000, late.to_history_block()));
        records.push(Record::new((day + 60) * 1000, "job\n"));
        assert_eq!(store.append(DMARC_STREAM, &records).await.unwrap(), 5);

        let src = StoreRecords::load(&store, day, day + 86_400).await.unwrap();
        assert_eq!(
            src.len(),
            4,
            "the day's four records, the late one left out"
        );
        let mut got = Vec::new();
        let stats = src
            .records(day, day + 86_400, &mut |r| got.push(r))
            .unwrap();
        assert_eq!((stats.records, stats.malformed), (3, 1));
        assert!(
            got.iter()
                .all(|r| r.source_ip == Some("192.0.2.1".parse().unwrap()))
        );
    }

    fn meta() -> ReportMeta {
        ReportMeta {
            org_name: "Receiver Inc.".into(),
            email: "dmarc-noreply@receiver.example".into(),
            extra_contact_info: None,
            receiver: "receiver.example".into(),
        }
    }

    #[test]
    fn rua_parses_size_and_percent() {
        let r = Rua::parse("mailto:dmarc%40x@sender.example!10m").unwrap();
        assert_eq!(r.address, "dmarc@x@sender.example");
        assert_eq!(r.max_size, Some(10 << 20));
        assert_eq!(Rua::parse("MAILTO:a@b.example").unwrap().max_size, None);
        assert_eq!(
            Rua::parse("mailto:a@b.example!500").unwrap().max_size,
            Some(500)
        );
        assert_eq!(Rua::parse("https://x.example/"), Err(RuaError::NotMailto));
        assert_eq!(Rua::parse("mailto:nobody"), Err(RuaError::NoAddress));
        assert_eq!(Rua::parse("mailto:a@b.example!1x"), Err(RuaError::BadSize));
        assert_eq!(
            Rua::parse("mailto:a@b.example!99999999999999t"),
            Err(RuaError::BadSize)
        );
    }

    #[test]
    fn rows_count_per_domain_rua_and_utc_window() {
        let day = 1_764_028_800; // 2025-11-25 00:00:00 UTC
        let mut agg = Aggregator::new(DEFAULT_WINDOW);
        for _ in 0..3 {
            agg.add(&rec("192.0.2.1", day + 10, "mailto:a@sender.example"));
        }
        agg.add(&rec("192.0.2.2", day + 86_399, "mailto:a@sender.example"));
        agg.add(&rec("192.0.2.1", day + 86_400, "mailto:a@sender.example"));
        agg.add(&rec("192.0.2.1", day + 20, "mailto:b@sender.example"));
        let mut report = rec("192.0.2.9", day + 30, "mailto:a@sender.example");
        report.is_report = true;
        agg.add(&report);
        let mut none = rec("192.0.2.9", day + 30, "mailto:a@sender.example");
        none.policy = None;
        agg.add(&none);
        let (reports, stats) = agg.finish();
        assert_eq!(stats.counted, 6);
        assert_eq!((stats.reports_skipped, stats.no_rua), (1, 1));
        assert_eq!(reports.len(), 3);
        let r0 = &reports[0];
        assert_eq!((r0.begin, r0.end), (day, day + 86_399));
        assert_eq!(r0.rua.address, "a@sender.example");
        assert_eq!(r0.rows.len(), 2);
        assert_eq!(r0.messages(), 4);
        assert_eq!(reports[1].rua.address, "b@sender.example");
        assert_eq!(reports[2].begin, day + 86_400);
    }

    #[test]
    fn xml_7489_has_the_schema_order_and_full_ipv6() {
        let mut agg = Aggregator::new(DEFAULT_WINDOW);
        let mut r = rec("2001:db8::1", 1_764_028_800, "mailto:a@sender.example");
        r.overrides = vec![OverrideReason::SampledOut];
        r.dkim.push(DkimInput {
            domain: "x<y>.example".into(),
            selector: String::new(),
            status: DkimStatus::Fail,
        });
        r.result = DmarcResult::Fail;
        agg.add(&r);
        let (reports, _) = agg.finish();
        let x = reports[0].to_xml(&meta(), Format::Rfc7489);
        assert!(
            x.contains("<source_ip>2001:db8:0:0:0:0:0:1</source_ip>"),
            "{x}"
        );
        assert!(
            x.contains("<reason>\n          <type>sampled_out</type>"),
            "{x}"
        );
        assert!(
            x.contains("<domain>x&lt;y&gt;.example</domain>\n        <result>fail</result>"),
            "{x}"
        );
        let order = [
            "<version>",
            "<report_metadata>",
            "<org_name>",
            "<email>",
            "<report_id>",
            "<date_range>",
            "<policy_published>",
            "<adkim>",
            "<aspf>",
            "<p>",
            "<sp>",
            "<pct>",
            "<fo>",
            "<record>",
            "<row>",
            "<source_ip>",
            "<count>",
            "<policy_evaluated>",
            "<identifiers>",
            "<envelope_from>",
            "<header_from>",
            "<auth_results>",
            "<dkim>",
            "<spf>",
        ];
        let mut at = 0;
        for tag in order {
            let i = x[at..]
                .find(tag)
                .unwrap_or_else(|| panic!("{tag} after {at} in {x}"));
            at += i;
        }
        let bis = reports[0].to_xml(&meta(), Format::DmarcBis);
        assert!(bis.contains("<feedback xmlns=\"urn:ietf:params:xml:ns:dmarc-2.0\">"));
        assert!(bis.contains("<source_ip>2001:db8::1</source_ip>"));
        assert!(bis.contains("<selector></selector>"));
        assert!(bis.contains("<testing>n</testing>") && !bis.contains("<pct>"));
    }

    #[test]
    fn name_subject_and_message() {
        let mut agg = Aggregator::new(DEFAULT_WINDOW);
        agg.add(&rec("192.0.2.1", 1_764_028_800, "mailto:a@sender.example"));
        let (reports, _) = agg.finish();
        let r = &reports[0];
        let id = r.report_id(&meta());
        assert_eq!(
            r.file_name(&meta()),
            format!("receiver.example!sender.example!1764028800!1764115199!{id}.xml.gz")
        );
        assert_eq!(
            r.subject(&meta()),
            format!("Report Domain: sender.example Submitter: receiver.example Report-ID: <{id}>")
        );
        let m =
            String::from_utf8(report_message(r, &meta(), Format::Rfc7489, 1_764_115_300)).unwrap();
        assert!(m.contains("\r\nAuto-Submitted: auto-generated\r\n"));
        assert!(
            m.contains("\r\nDate: Wed, 26 Nov 2025 00:01:40 +0000\r\n"),
            "{m}"
        );
        assert!(m.contains("Content-Type: application/gzip"));
        assert!(crate::dmarc::history::is_report(&[(
            "Subject".into(),
            r.subject(&meta())
        )]));
        // The attachment is the gzipped XML.
        use base64::Engine as _;
        let b64: String = m
            .split("Content-Disposition: attachment")
            .nth(1)
            .unwrap()
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .collect();
        let gz = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut xml = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut xml)
            .unwrap();
        assert_eq!(xml, r.to_xml(&meta(), Format::Rfc7489));
    }

    #[test]
    fn suppressions_expire_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let mut s = Suppressions::read(&p).unwrap();
        s.suppress("A@x.example", 200);
        s.suppress("b@x.example", 50);
        assert!(s.is_suppressed("a@X.example", 100));
        s.write(&p, 100).unwrap();
        let s = Suppressions::read(&p).unwrap();
        assert!(s.is_suppressed("a@x.example", 199));
        assert!(!s.is_suppressed("a@x.example", 200));
        assert!(
            !s.is_suppressed("b@x.example", 10),
            "expired entries are not written"
        );
    }

    #[test]
    fn same_organization_without_and_with_psl() {
        assert!(same_organization(
            "sender.example",
            "reports.sender.example",
            None
        ));
        assert!(!same_organization("sender.example", "other.example", None));
        let psl = PublicSuffixList::parse("example\nco.example\n");
        assert!(same_organization(
            "a.sender.example",
            "b.sender.example",
            Some(&psl)
        ));
        assert!(!same_organization(
            "a.co.example",
            "b.co.example",
            Some(&psl)
        ));
    }

    #[derive(Debug)]
    struct Zone(Vec<(&'static str, &'static str)>);

    #[async_trait::async_trait]
    impl Resolver for Zone {
        async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
            let v: Vec<Vec<u8>> = self
                .0
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, t)| t.as_bytes().to_vec())
                .collect();
            if v.is_empty() {
                Err(DnsError::NxDomain)
            } else {
                Ok(v)
            }
        }
        async fn a(&self, _: &str) -> Result<Vec<std::net::Ipv4Addr>, DnsError> {
            Err(DnsError::NxDomain)
        }
        async fn aaaa(&self, _: &str) -> Result<Vec<std::net::Ipv6Addr>, DnsError> {
            Err(DnsError::NxDomain)
        }
        async fn mx(&self, _: &str) -> Result<Vec<crate::dns::Mx>, DnsError> {
            Err(DnsError::NxDomain)
        }
        async fn ptr(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
            Err(DnsError::NxDomain)
        }
    }

    #[tokio::test]
    async fn decisions() {
        let zone = Zone(vec![(
            "sender.example._report._dmarc.thirdparty.example",
            "v=DMARC1",
        )]);
        let mut agg = Aggregator::new(DEFAULT_WINDOW);
        for rua in [
            "mailto:a@sender.example",
            "mailto:r@thirdparty.example!100k",
            "mailto:r@unverified.example",
            "mailto:small@sender.example!1k",
        ] {
            agg.add(&rec("192.0.2.1", 1_764_028_800, rua));
        }
        let (reports, _) = agg.finish();
        let mut s = Suppressions::default();
        async fn d_(r: &AggregateReport, s: &Suppressions, zone: &Zone) -> Dispatch {
            let size = report_message(r, &meta(), Format::Rfc7489, 0).len() as u64;
            decide(r, size, s, zone, None, 1000).await
        }
        let by = |a: &str| reports.iter().find(|r| r.rua.address == a).unwrap();
        assert_eq!(d_(by("a@sender.example"), &s, &zone).await, Dispatch::Send);
        assert_eq!(
            d_(by("r@thirdparty.example"), &s, &zone).await,
            Dispatch::Send
        );
        assert_eq!(
            d_(by("r@unverified.example"), &s, &zone).await,
            Dispatch::NotVerified
        );
        assert!(matches!(
            d_(by("small@sender.example"), &s, &zone).await,
            Dispatch::TooLarge { limit: 1024, .. }
        ));
        s.suppress("a@sender.example", 2000);
        assert_eq!(
            d_(by("a@sender.example"), &s, &zone).await,
            Dispatch::Suppressed
        );
    }

    #[test]
    fn history_files_source_reads_the_range_and_counts_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h");
        let block = |t: u64| rec("192.0.2.1", t, "mailto:a@sender.example").to_history_block();
        std::fs::write(
            &p,
            format!(
                "{}job X\nreceived zz\n{}{}",
                block(100),
                block(200),
                block(300)
            ),
        )
        .unwrap();
        let src = HistoryFiles::new([p]);
        let (reports, stats, read) = aggregate(&src, 100, 300, 1000).unwrap();
        assert_eq!((read.records, read.malformed), (2, 1));
        assert_eq!(stats.counted, 2);
        assert_eq!(reports[0].messages(), 2);
    }

    #[tokio::test]
    async fn dry_run_writes_what_would_be_sent() {
        let dir = tempfile::tempdir().unwrap();
        let hist = dir.path().join("h");
        let day = 1_764_028_800;
        let mut text = String::new();
        for (i, rua) in [
            "mailto:a@sender.example",
            "mailto:r@unverified.example",
            "mailto:s@sender.example!1k",
        ]
        .iter()
        .enumerate()
        {
            for n in 0..3u64 {
                text.push_str(
                    &rec(
                        &format!("192.0.2.{}", n + 1),
                        day + 3600 * (i as u64 + n),
                        rua,
                    )
                    .to_history_block(),
                );
            }
        }
        std::fs::write(&hist, text).unwrap();
        let out = dir.path().join("out");
        let state = dir.path().join("state");
        let opts = RunOptions {
            begin: day,
            end: day + DEFAULT_WINDOW,
            window: DEFAULT_WINDOW,
            format: Format::Rfc7489,
            meta: meta(),
            spread: std::time::Duration::ZERO,
            state: Some(state.clone()),
            suppress_secs: DEFAULT_SUPPRESS_SECS,
            now: day + DEFAULT_WINDOW + 60,
        };
        let zone = Zone(vec![]);
        let s = run(
            &HistoryFiles::new([hist]),
            &zone,
            None,
            None,
            &Output::DryRun(out.clone()),
            &opts,
        )
        .await
        .unwrap();
        assert_eq!(s.source.records, 9);
        assert_eq!(s.sent.len(), 1, "{s:?}");
        assert_eq!(s.held.len(), 2, "{s:?}");
        assert!(s.held.iter().any(|(_, d)| *d == Dispatch::NotVerified));
        assert!(
            s.held
                .iter()
                .any(|(_, d)| matches!(d, Dispatch::TooLarge { .. }))
        );
        let gz = std::fs::read(out.join(&s.sent[0])).unwrap();
        let mut xml = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut xml)
            .unwrap();
        assert_eq!(xml.matches("<count>1</count>").count(), 3, "{xml}");
        assert!(out.join(format!("{}.eml", s.sent[0])).exists());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
        // An empty range: nothing.
        let mut later = opts;
        later.begin = day + DEFAULT_WINDOW;
        later.end = day + 2 * DEFAULT_WINDOW;
        let s = run(
            &HistoryFiles::new([dir.path().join("h")]),
            &zone,
            None,
            None,
            &Output::DryRun(out),
            &later,
        )
        .await
        .unwrap();
        assert!(s.sent.is_empty() && s.held.is_empty());
    }
}
