//! DMARC evaluation: policy discovery, identifier alignment and the policy in force.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::dns::{DnsError, Resolver};
use crate::spf::{Identity, SpfResult};

use super::config::Specification;
use super::psl::PublicSuffixList;
use super::record::{Alignment, DmarcRecord, Policy, RecordError};

/// RFC 9989 §4.10: the tree walk queries at most this many names (the author domain, then at
/// most 7 labels, then one label fewer at a time).
pub const MAX_TREE_WALK: usize = 8;

/// The DMARC result written as `dmarc=` (RFC 8601 §2.7.7 plus RFC 7489 §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DmarcResult {
    /// An aligned identifier passed.
    Pass,
    /// A policy exists and nothing aligned passed.
    Fail,
    /// No policy was published (or the From domain was not evaluated).
    None,
    /// A DNS error prevented the evaluation.
    TempError,
    /// The published policy could not be parsed.
    PermError,
}

impl DmarcResult {
    /// The result keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::None => "none",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        }
    }
}

impl fmt::Display for DmarcResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A DKIM result as RFC 8601 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DkimStatus {
    /// `pass`.
    Pass,
    /// `fail`.
    Fail,
    /// `neutral`.
    Neutral,
    /// `none`.
    None,
    /// `temperror`.
    TempError,
    /// `permerror`.
    PermError,
    /// `policy`.
    Policy,
}

impl DkimStatus {
    /// The result keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Neutral => "neutral",
            Self::None => "none",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
            Self::Policy => "policy",
        }
    }

    /// Parses an RFC 8601 keyword (`hardfail` is `fail`, unknown words are `None`).
    pub fn parse(word: &str) -> Self {
        match word.to_ascii_lowercase().as_str() {
            "pass" => Self::Pass,
            "fail" | "hardfail" => Self::Fail,
            "neutral" => Self::Neutral,
            "temperror" => Self::TempError,
            "permerror" => Self::PermError,
            "policy" => Self::Policy,
            _ => Self::None,
        }
    }
}

/// The SPF result DMARC considers: the MAIL FROM identity, or HELO for a null MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfInput {
    /// The domain checked.
    pub domain: String,
    /// Which identity it was.
    pub identity: Identity,
    /// The result.
    pub result: SpfResult,
}

/// One DKIM signature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimInput {
    /// The signing domain (`d=`, `header.d`).
    pub domain: String,
    /// The selector (`s=`, `header.s`), empty if unknown.
    pub selector: String,
    /// The result.
    pub status: DkimStatus,
}

/// The outcome of evaluating one message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Evaluation {
    /// The result.
    pub result: DmarcResult,
    /// The RFC5322.From domain (lower case).
    pub from_domain: String,
    /// The domain whose `_dmarc` record was used.
    pub policy_domain: Option<String>,
    /// The record used.
    pub record: Option<DmarcRecord>,
    /// The policy in force: `p`, `sp` (subdomain) or `np` (non-existent subdomain), lowered
    /// one step under RFC 9989 when `t=y`.
    pub policy: Policy,
    /// RFC 7489 `pct=`: whether this message is in the sampled percentage (always true under
    /// RFC 9989 and when nothing failed).
    pub sampled: bool,
    /// An aligned SPF pass.
    pub spf_aligned: bool,
    /// An aligned DKIM pass.
    pub dkim_aligned: bool,
    /// For `temperror` / `permerror`: what went wrong.
    pub problem: Option<String>,
}

impl Evaluation {
    /// The disposition the domain owner asks for: the policy in force when the message
    /// fails and is sampled, one step weaker when it fails outside `pct` (RFC 7489 §6.6.4),
    /// `none` otherwise.
    pub fn requested_disposition(&self) -> Policy {
        match (self.result, self.sampled) {
            (DmarcResult::Fail, true) => self.policy,
            (DmarcResult::Fail, false) => self.policy.weaker(),
            _ => Policy::None,
        }
    }

    fn without_policy(from: &str, result: DmarcResult, problem: Option<String>) -> Self {
        Self {
            result,
            from_domain: from.to_owned(),
            policy_domain: None,
            record: None,
            policy: Policy::None,
            sampled: true,
            spf_aligned: false,
            dkim_aligned: false,
            problem,
        }
    }
}

/// What one `_dmarc` query found.
#[derive(Debug, Clone)]
enum Found {
    Record(DmarcRecord),
    Absent,
    TempError(String),
    PermError(String),
}

/// The DMARC evaluator: a resolver, the specification followed and (RFC 7489) the public
/// suffix list.
#[derive(Clone)]
pub struct DmarcEvaluator {
    resolver: Arc<dyn Resolver>,
    spec: Specification,
    psl: Option<Arc<PublicSuffixList>>,
    timeout: Duration,
}

impl fmt::Debug for DmarcEvaluator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmarcEvaluator")
            .field("spec", &self.spec)
            .field("psl", &self.psl.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A uniformly spread number in 0..100 for `pct=` sampling (not for cryptography).
fn random_percent() -> u8 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = std::collections::hash_map::RandomState::new().hash_one(n);
    u8::try_from(h % 100).unwrap_or(0)
}

impl DmarcEvaluator {
    /// An evaluator over `resolver` following `spec`; each DNS query may take `timeout`.
    pub fn new(resolver: Arc<dyn Resolver>, spec: Specification, timeout: Duration) -> Self {
        Self {
            resolver,
            spec,
            psl: None,
            timeout,
        }
    }

    /// Uses `psl` for Organizational Domains (RFC 7489). Without it the Organizational Domain
    /// of a name is the name itself (OpenDMARC without `PublicSuffixList`): no fallback to a
    /// parent's record, and relaxed alignment needs equal domains.
    pub fn with_public_suffix_list(mut self, psl: Arc<PublicSuffixList>) -> Self {
        self.psl = Some(psl);
        self
    }

    /// The specification followed.
    pub fn specification(&self) -> Specification {
        self.spec
    }

    /// Evaluates `from_domain` against the SPF and DKIM results; `pct=` is sampled at random.
    pub async fn evaluate(
        &self,
        from_domain: &str,
        spf: Option<&SpfInput>,
        dkim: &[DkimInput],
    ) -> Evaluation {
        self.evaluate_sampled(from_domain, spf, dkim, random_percent())
            .await
    }

    /// [`Self::evaluate`] with the `pct=` sample given (0..100; the message is in the
    /// percentage when `sample < pct`), for reproducible tests.
    pub async fn evaluate_sampled(
        &self,
        from_domain: &str,
        spf: Option<&SpfInput>,
        dkim: &[DkimInput],
        sample: u8,
    ) -> Evaluation {
        let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
        let mut walk = Walk {
            ev: self,
            cache: HashMap::new(),
        };
        let (policy_domain, record) = match walk.discover(&from).await {
            Ok(Some(found)) => found,
            Ok(None) => return Evaluation::without_policy(&from, DmarcResult::None, None),
            Err((result, problem)) => {
                return Evaluation::without_policy(&from, result, Some(problem));
            }
        };
        let spf_aligned = match spf {
            Some(s) if s.result == SpfResult::Pass => {
                walk.aligned(&s.domain, &from, record.aspf).await
            }
            _ => false,
        };
        let mut dkim_aligned = false;
        for d in dkim.iter().filter(|d| d.status == DkimStatus::Pass) {
            if walk.aligned(&d.domain, &from, record.adkim).await {
                dkim_aligned = true;
                break;
            }
        }
        let mut temp = spf.is_some_and(|s| s.result == SpfResult::TempError);
        temp |= dkim.iter().any(|d| d.status == DkimStatus::TempError);
        let result = if spf_aligned || dkim_aligned {
            DmarcResult::Pass
        } else if temp {
            DmarcResult::TempError
        } else {
            DmarcResult::Fail
        };
        let policy = self.policy_in_force(&from, &policy_domain, &record).await;
        let sampled = match self.spec {
            Specification::Rfc7489 => sample < record.pct,
            Specification::DmarcBis => true,
        };
        Evaluation {
            result,
            from_domain: from,
            policy_domain: Some(policy_domain),
            record: Some(record),
            policy,
            sampled,
            spf_aligned,
            dkim_aligned,
            problem: temp
                .then(|| "temporary error in an authentication result".to_owned())
                .filter(|_| result == DmarcResult::TempError),
        }
    }

    /// `p`, `sp` for a subdomain, `np` (RFC 9989) for a subdomain that does not exist; `t=y`
    /// lowers it one step under RFC 9989.
    async fn policy_in_force(&self, from: &str, policy_domain: &str, rec: &DmarcRecord) -> Policy {
        if from == policy_domain {
            return self.testing(rec, rec.p);
        }
        let mut policy = rec.sp.unwrap_or(rec.p);
        if self.spec == Specification::DmarcBis
            && let Some(np) = rec.np
        {
            let lookup = tokio::time::timeout(self.timeout, self.resolver.a(from)).await;
            if matches!(lookup, Ok(Err(DnsError::NxDomain))) {
                policy = np;
            }
        }
        self.testing(rec, policy)
    }

    fn testing(&self, rec: &DmarcRecord, p: Policy) -> Policy {
        if self.spec == Specification::DmarcBis && rec.testing {
            p.weaker()
        } else {
            p
        }
    }

    async fn query(&self, domain: &str) -> Found {
        let name = format!("_dmarc.{domain}");
        let answer = match tokio::time::timeout(self.timeout, self.resolver.txt(&name)).await {
            Ok(a) => a,
            Err(_) => return Found::TempError(format!("{name}: DNS timeout")),
        };
        let txts = match answer {
            Ok(t) => t,
            Err(e) if e.is_void() => return Found::Absent,
            Err(e) => return Found::TempError(format!("{name}: {e}")),
        };
        // RFC 7489 §6.6.3: keep the records starting with v=DMARC1; several is no policy.
        let mut records: Vec<Result<DmarcRecord, RecordError>> = txts
            .iter()
            .map(|t| DmarcRecord::parse(t))
            .filter(|r| *r != Err(RecordError::NotDmarc))
            .collect();
        match (records.pop(), records.is_empty()) {
            (Some(Ok(r)), true) => Found::Record(r),
            (Some(Err(e)), true) => Found::PermError(format!("{name}: {e}")),
            _ => Found::Absent,
        }
    }
}

/// One evaluation's DNS state: `_dmarc` answers are memoised so the tree walks of several
/// domains share queries.
struct Walk<'a> {
    ev: &'a DmarcEvaluator,
    cache: HashMap<String, Found>,
}

type Discovered = Result<Option<(String, DmarcRecord)>, (DmarcResult, String)>;

impl Walk<'_> {
    async fn found(&mut self, domain: &str) -> Found {
        if let Some(f) = self.cache.get(domain) {
            return f.clone();
        }
        let f = self.ev.query(domain).await;
        self.cache.insert(domain.to_owned(), f.clone());
        f
    }

    /// Names the RFC 9989 tree walk queries for `domain`, longest first.
    fn tree(domain: &str) -> Vec<String> {
        let labels: Vec<&str> = domain.split('.').collect();
        let mut out = vec![domain.to_owned()];
        let start = (labels.len().saturating_sub(1)).min(MAX_TREE_WALK - 1);
        for k in (1..=start).rev() {
            out.push(labels[labels.len() - k..].join("."));
        }
        out
    }

    /// The policy record for `from`: RFC 7489 §6.6.3 (the domain, then its Organizational
    /// Domain) or the RFC 9989 tree walk.
    async fn discover(&mut self, from: &str) -> Discovered {
        let names = match self.ev.spec {
            Specification::Rfc7489 => {
                let org = self.org_7489(from);
                if org == from {
                    vec![from.to_owned()]
                } else {
                    vec![from.to_owned(), org]
                }
            }
            Specification::DmarcBis => Self::tree(from),
        };
        for name in names {
            match self.found(&name).await {
                Found::Record(r) => return Ok(Some((name, r))),
                Found::Absent => {}
                Found::TempError(e) => return Err((DmarcResult::TempError, e)),
                Found::PermError(e) => return Err((DmarcResult::PermError, e)),
            }
        }
        Ok(None)
    }

    fn org_7489(&self, domain: &str) -> String {
        match &self.ev.psl {
            Some(psl) => psl.organizational_domain(domain),
            None => domain.to_owned(),
        }
    }

    /// RFC 9989 §4.10.2: the first `psd=n` record's domain, the domain below the first
    /// `psd=y` record, else the record with the fewest labels; the domain itself if none.
    async fn org_bis(&mut self, domain: &str) -> String {
        let names = Self::tree(domain);
        let mut org = domain.to_owned();
        for (i, name) in names.iter().enumerate() {
            if let Found::Record(r) = self.found(name).await {
                match r.psd {
                    Some(false) => return name.clone(),
                    Some(true) => return names[i.saturating_sub(1)].clone(),
                    None => org.clone_from(name),
                }
            }
        }
        org
    }

    async fn org(&mut self, domain: &str) -> String {
        match self.ev.spec {
            Specification::Rfc7489 => self.org_7489(domain),
            Specification::DmarcBis => self.org_bis(domain).await,
        }
    }

    /// Identifier alignment (RFC 7489 §3.1).
    async fn aligned(&mut self, id: &str, from: &str, mode: Alignment) -> bool {
        let id = id.trim_end_matches('.').to_ascii_lowercase();
        if id == from {
            return true;
        }
        match mode {
            Alignment::Strict => false,
            Alignment::Relaxed => self.org(&id).await == self.org(from).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_walk_names() {
        assert_eq!(
            Walk::tree("a.b.example.com"),
            ["a.b.example.com", "b.example.com", "example.com", "com"]
        );
        let long = "1.2.3.4.5.6.7.8.9.example";
        let t = Walk::tree(long);
        assert_eq!(t.len(), 8);
        assert_eq!(t[1], "4.5.6.7.8.9.example");
        assert_eq!(t[7], "example");
    }

    #[test]
    fn random_percent_covers_the_range() {
        let mut seen = [false; 100];
        for _ in 0..20_000 {
            seen[usize::from(random_percent())] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
