//! DMARC (RFC 7489, or RFC 9989 when configured) as a drop-in for OpenDMARC 1.4.
//!
//! [`DmarcFilter`] is a [`crate::filter::Filter`]: the `dmarc-milter` example binary serves
//! it alone through [`crate::filter::Milter`], and `mailstackd` runs it in a
//! [`crate::filter::Chain`] after SPF and DKIM. [`DmarcFilter::check`] is the same
//! evaluation on what is known about one message ([`MessageFacts`]); it returns an
//! [`DmarcOutcome`]: the [`crate::filter::Verdict`] (accept, reject with OpenDMARC's `550 5.7.1
//! rejected by DMARC policy for <policy domain>`, tempfail, quarantine; the
//! `Authentication-Results` OpenDMARC writes, `dmarc=<result> (p=<policy>
//! dis=<disposition>) header.from=<domain>`, as a field and as a clause) and the
//! evaluation for logs and reports. [`DmarcConfig`] reads `opendmarc.conf`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::sync::Arc;
//! use mailstack::dmarc::{DmarcConfig, DmarcFilter, MessageFacts};
//! use mailstack::dns::HickoryResolver;
//! use mailstack::filter::Action;
//!
//! let cfg = DmarcConfig::read(Path::new("/etc/opendmarc.conf"))?;
//! let filter = DmarcFilter::new(cfg, Arc::new(HickoryResolver::system()?));
//! let headers = vec![("From".to_owned(), "Alice <alice@example.com>".to_owned())];
//! let outcome = filter
//!     .check(&MessageFacts {
//!         client_ip: Some("192.0.2.1".parse()?),
//!         envelope_from: "alice@example.com",
//!         helo: "mail.example.com",
//!         rcpts: &[],
//!         headers: &headers,
//!         dkim_results: None,
//!         raw_message: None,
//!         job_id: None,
//!         mta_name: Some("mx.example.net"),
//!         prior: None,
//!     })
//!     .await;
//! if let Action::Reject(Some(reply)) = &outcome.verdict.action {
//!     println!("{reply}"); // 550 5.7.1 rejected by DMARC policy for example.com
//! }
//! for (name, value) in outcome.headers() {
//!     println!("{name}: {value}"); // Authentication-Results: mx.example.net; dmarc=...
//! }
//! # Ok(()) }
//! ```
//!
//! # Which DMARC
//!
//! `DMARCSpecification` chooses, and the default is OpenDMARC's:
//!
//! - `rfc7489` (default): policy discovery queries `_dmarc.<From domain>`, then
//!   `_dmarc.<Organizational Domain>` taken from the public suffix list (`PublicSuffixList`;
//!   without one, only the From domain is queried and relaxed alignment needs equal domains);
//!   `pct=` samples which failing messages get the policy, the others one step less.
//! - `dmarcbis` (RFC 9989): the DNS tree walk (at most [`MAX_TREE_WALK`] queries per
//!   domain, `psd=` for the Organizational Domain), no `pct=`, `t=y` lowers the policy one step,
//!   `np=` for a subdomain that does not exist (A query NXDOMAIN).
//!
//! # Where SPF and DKIM results come from
//!
//! In a chain, from the SPF and DKIM filters that ran before ([`MessageFacts::prior`],
//! [`crate::filter::AuthFacts`]): a result found there is used, and that result is then
//! never read from the message's header fields (a sender can forge them) nor computed again.
//! Alone (or for a result no earlier filter gave), as OpenDMARC: from trusted `Authentication-Results` (authserv-id equal to ours or listed in
//! `TrustedAuthservIDs`), then from a `Received-SPF` for this envelope's MAIL FROM
//! ([`read_upstream`] lists the rules and the CVE fixes kept). With
//! `SPFSelfValidate`, when no usable SPF result was found (or `SPFIgnoreResults` is set), our
//! [`crate::spf`] evaluator checks the MAIL FROM (HELO for the null sender) and its result is
//! added as its own `Authentication-Results`. With `DKIMSelfValidate` (mailstack only),
//! signatures are verified here ([`InProcessDkim`], over [`crate::dkim`]'s streaming verifier: only the
//! header block is kept) and upstream `dkim=` results are not used.
//!
//! # Enforcement (OpenDMARC's rules)
//!
//! | result | `RejectFailures no` | `RejectFailures yes` |
//! |---|---|---|
//! | pass, none | AR, accept | AR, accept |
//! | fail, disposition reject | AR `dis=none`, accept | `550 5.7.1 <RejectString>`, no AR |
//! | fail, disposition quarantine | AR `dis=none`, accept | with `HoldQuarantinedMessages`: milter quarantine (Postfix hold), AR `dis=quarantine`; else as without |
//! | temperror | AR, accept | tempfail, no AR |
//! | permerror | AR `dmarc=permerror header.from=<d>`, accept | same |
//!
//! As a [`crate::filter::Action`]: `Reject(Some(text))` for the policy reject,
//! `Reject(None)` (the MTA's own reply, libmilter `SMFIS_REJECT`) for `RequiredHeaders`
//! and `RejectMultiValueFrom`, `Tempfail(None)`, and `Quarantine` with
//! [`crate::filter::Fallback::Accept`] (as OpenDMARC, delivered when the MTA did not grant
//! quarantine). Fields are inserted at the top ([`DmarcOutcome::headers`] lists them top first):
//! `DMARC-Filter` (`SoftwareHeader`), the `dmarc=` field, then our own SPF field.
//!
//! # ARC (RFC 8617)
//!
//! With `ARCVerify`, a trusted-sealer list (`DomainWhitelist`, `DomainWhitelistFile`:
//! OpenDMARC's option names) or `ARCSeal`, the filter validates the message's ARC chain as it
//! streams by ([`crate::arc`], on the DKIM core) and writes `arc=<none|pass|fail>` (with
//! `header.oldest-pass` and `smtp.remote-ip`) as its own `Authentication-Results` field and
//! clause. A DMARC `fail` whose policy asks for quarantine or reject is accepted when the
//! chain passes and its newest seal is by a listed sealer: disposition `none` (`dis=none`),
//! and [`DmarcOutcome::overrides`] holds [`PolicyOverride::TrustedForwarder`] for the aggregate
//! report. Off by default: ARC is experimental and on its way to historic status.
//!
//! Each evaluated message becomes a [`MessageRecord`] in the configured
//! [`HistoryStore`] (default: `HistoryFile` in OpenDMARC's format), for messages from
//! domains with a record (all messages with `RecordAllMessages`).
//!
//! # Compared with OpenDMARC 1.4.2
//!
//! `examples/tests/dmarc_vs_opendmarc.rs` runs Debian's OpenDMARC and `dmarc-milter` with the
//! same configuration, DNS zone and messages: replies, `Authentication-Results` fields (text
//! and order) and HistoryFile lines are identical, except where we deliberately differ:
//!
//! - strict alignment (`adkim=s`/`aspf=s`) needs the exact domain (RFC 7489 §3.1.1); OpenDMARC
//!   lets a subdomain signature pass;
//! - a trusted `spf=pass smtp.mailfrom=local@domain` is used (RFC 8601 allows the address);
//!   OpenDMARC only matches a bare domain. Both require the envelope domain;
//! - a TLD missing from the public suffix list is a public suffix (the list's implicit `*`
//!   rule), so `sub.org.example` falls back to `org.example`'s policy; OpenDMARC finds none;
//! - a DNS timeout on the policy query is `temperror` (tempfail with `RejectFailures`);
//!   OpenDMARC treats it as no policy and accepts, which lets slow DNS bypass `p=reject`;
//! - the HistoryFile's `spf` line holds the SPF result the evaluation used (`-1` for none);
//!   OpenDMARC also records trusted results it did not use.
//!
//! # Layout
//! Everything below is re-exported here; only [`report`] and [`failure`] are namespaces of
//! their own.
//! - [`DmarcConfig`]: reading `opendmarc.conf`.
//! - [`DmarcRecord`]: DMARC record syntax, parsed and written.
//! - [`PublicSuffixList`]: the public suffix list.
//! - [`DmarcEvaluator`]: policy discovery, alignment, the policy in force.
//! - [`author_domain`], [`parse_auth_results`], [`read_upstream`]: From, upstream
//!   `Authentication-Results` and `Received-SPF`.
//! - [`InProcessDkim`]: in-process DKIM verification.
//! - [`MessageRecord`], [`HistoryStore`]: aggregate-report records and their store.
//! - [`report`]: aggregate reports built from the records.
//! - [`failure`]: failure reports (RFC 6591 AFRF), off unless a sink is given.
//! - [`DmarcFilter`]: the [`crate::filter::Filter`] implementation ([`DmarcMessage`] is its
//!   per-message state).

pub(crate) mod config;
pub(crate) mod dkim;
pub(crate) mod eval;
pub mod failure;
mod filter;
pub(crate) mod headers;
pub(crate) mod history;
pub(crate) mod psl;
pub(crate) mod record;
pub mod report;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth_results::{AuthResults, MethodResult};
use crate::dns::Resolver;
use crate::filter::{Action, AuthFacts, Fallback, Modification, Verdict};
use crate::spf::{Identity, LookupLimits, SpfEvaluator};

pub use config::{
    ArcSealConfig, DmarcConfig, FailureReports, HostPattern, Specification, local_hostname,
};
pub use dkim::{DkimStream, InProcessDkim, MAX_SIGNATURES};
pub use eval::{
    DkimInput, DkimStatus, DmarcEvaluator, DmarcResult, Evaluation, MAX_TREE_WALK, SpfInput,
};
pub use filter::DmarcMessage;
pub use headers::{
    FromError, ResInfo, Upstream, UpstreamContext, author_domain, is_valid_domain,
    parse_auth_results, read_upstream,
};
pub use history::{
    DEFAULT_HISTORY_MAX_BYTES, HistoryError, HistoryErrorKind, HistoryFile, HistoryReader,
    HistoryStore, MAX_BLOCK_DKIM, MAX_BLOCK_LINES, MAX_BLOCK_RUA, MAX_HISTORY_LINE, MessageRecord,
    OverrideReason,
};
pub use psl::PublicSuffixList;
pub use record::{Alignment, DmarcRecord, Policy, RecordError};

/// Header bytes kept per message (Postfix's `header_size_limit` default, 102,400, times the
/// fields we may need); beyond it further header fields are not kept.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// RFC 5322 §3.6 field counts checked with `RequiredHeaders`: (name, minimum, maximum).
pub const RFC5322_COUNTS: &[(&str, usize, usize)] = &[
    ("Date", 1, 1),
    ("From", 1, 1),
    ("Sender", 0, 1),
    ("Reply-To", 0, 1),
    ("To", 0, 1),
    ("Cc", 0, 1),
    ("Bcc", 0, 1),
    ("Message-ID", 0, 1),
    ("In-Reply-To", 0, 1),
    ("References", 0, 1),
    ("Subject", 0, 1),
];

/// What the filter needs to know about one message.
#[derive(Debug, Clone, Copy)]
pub struct MessageFacts<'a> {
    /// The SMTP client's address (`None` for a local submission).
    pub client_ip: Option<IpAddr>,
    /// The MAIL FROM address without brackets (empty for the null sender).
    pub envelope_from: &'a str,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// The recipients (RCPT TO, without brackets).
    pub rcpts: &'a [String],
    /// The header fields `(name, value)` in order, folds joined with `\n`.
    pub headers: &'a [(String, String)],
    /// With in-process DKIM: results already computed by the caller while the message
    /// streamed by ([`DmarcFilter::start_dkim`], [`DmarcFilter::finish_dkim`]).
    pub dkim_results: Option<&'a [DkimInput]>,
    /// With in-process DKIM and no `dkim_results`: the whole message (headers and body,
    /// CRLF) to verify.
    pub raw_message: Option<&'a [u8]>,
    /// The MTA's queue id (`i` macro).
    pub job_id: Option<&'a str>,
    /// The MTA's name (`j` macro), the default authserv-id.
    pub mta_name: Option<&'a str>,
    /// Results of the SPF and DKIM filters that ran before this one in the same pass
    /// ([`crate::filter::Chain`]). A result present here is the one used: that result is
    /// then never read from the message's header fields (a sender can forge them), nor
    /// computed again (`SPFSelfValidate`, `DKIMSelfValidate`). `None`, or a field left
    /// `None`, keeps OpenDMARC's sources (see the module docs).
    pub prior: Option<&'a AuthFacts>,
}

/// What DMARC made of one message: the [`Verdict`] to apply, and for logging and aggregate
/// reports the evaluation (or why there was none).
///
/// The verdict's action is [`Action::Accept`], [`Action::Reject`] with OpenDMARC's reply
/// text (`Some`) or the MTA's own (`None`, for `RequiredHeaders` and
/// `RejectMultiValueFrom`, as libmilter's `SMFIS_REJECT`), [`Action::Tempfail`]`(None)`
/// when evaluation could not complete, or [`Action::Quarantine`] with
/// [`Fallback::Accept`] (OpenDMARC delivers when the MTA did not grant quarantine). Its
/// modifications are the fields OpenDMARC inserts at the top, in the order the adapter
/// applies them (see [`DmarcOutcome::headers`] for the order they end up in).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the verdict must be applied (see filter::apply)"]
#[non_exhaustive]
pub struct DmarcOutcome {
    /// What to do, the fields to write, the `Authentication-Results` clauses.
    pub verdict: Verdict,
    /// The evaluation, when one ran.
    pub evaluation: Option<Evaluation>,
    /// Why the message was not evaluated, when it was not.
    pub skipped: Option<String>,
    /// Why the disposition differs from the policy (RFC 7489 appendix C
    /// `PolicyOverrideType`), for aggregate reports.
    pub overrides: Vec<PolicyOverride>,
}

/// Why a disposition differs from the domain's policy (RFC 7489 appendix C
/// `PolicyOverrideType`, RFC 9990's `PolicyOverrideType`): the ones this filter decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyOverride {
    /// A DMARC failure accepted because its ARC chain passes and its newest seal is by a
    /// sealer in `DomainWhitelist` ([`crate::arc::ArcOutcome::trusted_pass`]).
    TrustedForwarder,
}

impl PolicyOverride {
    /// The report's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrustedForwarder => "trusted_forwarder",
        }
    }
}

impl DmarcOutcome {
    fn skip(why: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::accept(),
            evaluation: None,
            skipped: Some(why.into()),
            overrides: Vec::new(),
        }
    }

    fn refuse(why: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::action(Action::Reject(None)),
            ..Self::skip(why)
        }
    }

    /// The fields the verdict writes, `(name, value)`, top first as they end up in the
    /// message (each modification is inserted at the top, so this is their reverse order).
    pub fn headers(&self) -> Vec<(String, String)> {
        self.verdict
            .modifications
            .iter()
            .rev()
            .filter_map(|m| match m {
                Modification::AuthResults(v) => {
                    Some(("Authentication-Results".to_owned(), v.clone()))
                }
                Modification::Insert { name, value, .. } => Some((name.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }
}

/// The DMARC filter: configuration, evaluators and the history store.
#[derive(Debug)]
pub struct DmarcFilter {
    cfg: Arc<DmarcConfig>,
    evaluator: DmarcEvaluator,
    spf: SpfEvaluator,
    dkim: Option<InProcessDkim>,
    history: Option<Arc<dyn HistoryStore>>,
    failure: Option<Arc<dyn failure::FailureSink>>,
    /// For ARC key lookups.
    resolver: ArcKeys,
}

/// The resolver ARC keys are looked up with.
struct ArcKeys(Arc<dyn Resolver>);

impl std::fmt::Debug for ArcKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArcKeys")
    }
}

impl DmarcFilter {
    /// A filter for `cfg` doing its DNS through `resolver`; `HistoryFile`, when set, becomes a
    /// [`HistoryFile`] store.
    pub fn new(cfg: DmarcConfig, resolver: Arc<dyn Resolver>) -> Self {
        let mut evaluator =
            DmarcEvaluator::new(resolver.clone(), cfg.specification, cfg.dns_timeout);
        if let Some(psl) = &cfg.public_suffix_list {
            evaluator = evaluator.with_public_suffix_list(Arc::new(psl.clone()));
        }
        let spf = SpfEvaluator::new(resolver.clone(), LookupLimits::default());
        let dkim = cfg
            .dkim_self_validate
            .then(|| InProcessDkim::new(resolver.clone()));
        let history = cfg
            .history_file
            .as_ref()
            .map(|p| Arc::new(HistoryFile::new(p.clone())) as Arc<dyn HistoryStore>);
        Self {
            cfg: Arc::new(cfg),
            evaluator,
            spf,
            dkim,
            history,
            failure: None,
            resolver: ArcKeys(resolver),
        }
    }

    /// Offers each DMARC failure of a domain publishing `ruf=` to `sink` (failure reports,
    /// RFC 7489 §7.3; off unless called: RFC 9991 §7 advises against them for privacy).
    pub fn with_failure_reports(mut self, sink: Arc<dyn failure::FailureSink>) -> Self {
        self.failure = Some(sink);
        self
    }

    /// Uses `store` for aggregate-report records instead of the configured `HistoryFile`.
    pub fn with_history(mut self, store: Arc<dyn HistoryStore>) -> Self {
        self.history = Some(store);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DmarcConfig {
        &self.cfg
    }

    /// Whether DKIM is verified here (`DKIMSelfValidate`): the caller passes the message
    /// through [`Self::start_dkim`] or [`MessageFacts::raw_message`].
    pub fn wants_message(&self) -> bool {
        self.dkim.is_some()
    }

    /// Starts in-process DKIM verification of a message from its header block; `None` when
    /// `DKIMSelfValidate` is off.
    pub fn start_dkim(&self, headers: Vec<crate::dkim::canon::Header>) -> Option<DkimStream> {
        self.dkim.as_ref().map(|d| d.start(headers))
    }

    /// Finishes what [`Self::start_dkim`] started (its body fed with
    /// [`DkimStream::body`]).
    pub async fn finish_dkim(&self, stream: DkimStream) -> Vec<DkimInput> {
        match &self.dkim {
            Some(d) => stream.finish(d).await,
            None => Vec::new(),
        }
    }

    /// Whether mail from this client is not evaluated (`IgnoreHosts`, or
    /// `IgnoreAuthenticatedClients` with an SMTP AUTH login).
    pub fn skips_client(&self, ip: Option<IpAddr>, host: &str, auth_login: Option<&str>) -> bool {
        self.cfg.ignores_host(ip, host)
            || (self.cfg.ignore_authenticated_clients && auth_login.is_some_and(|l| !l.is_empty()))
    }

    /// Evaluates one message. The [`crate::filter::Filter`] implementation runs this too, so
    /// a message through `dmarc-milter`, `mailstackd` or a direct call gets the same answer.
    pub async fn check(&self, m: &MessageFacts<'_>) -> DmarcOutcome {
        let cfg = &self.cfg;
        let from = match self.author(m) {
            Ok(d) => d,
            Err(v) => return *v,
        };
        let base_id = cfg.authserv_id(m.mta_name);
        let ar_id = match (cfg.authserv_id_with_job_id, m.job_id) {
            (true, Some(job)) => format!("{base_id}/{job}"),
            _ => base_id.clone(),
        };
        // Top first, as they end up in the message.
        let mut fields = Vec::new();
        let mut clauses = Vec::new();
        let (spf, dkim) = self.inputs(m, &ar_id, &mut fields, &mut clauses).await;
        let ev = self.evaluator.evaluate(&from, spf.as_ref(), &dkim).await;
        let arc = m.prior.and_then(|p| p.arc.as_ref());
        let mut overrides = Vec::new();
        let (action, dis) = if arc.is_some_and(|a| self.trusted_forwarder(&ev, a)) {
            overrides.push(PolicyOverride::TrustedForwarder);
            (Action::Accept, Policy::None)
        } else {
            self.enforce(&ev)
        };
        if action.delivers() {
            if let Some(a) = arc {
                let clause = a.clause(m.client_ip);
                let mut ar = AuthResults::new(ar_id.as_str());
                ar.push(clause.clone());
                fields.insert(0, Modification::AuthResults(ar.to_single_line()));
                clauses.insert(0, clause);
            }
            let clause = dmarc_clause(&ev, dis);
            let mut ar = AuthResults::new(ar_id.as_str());
            ar.push(clause.clone());
            fields.insert(0, Modification::AuthResults(ar.to_single_line()));
            clauses.insert(0, clause);
        }
        if cfg.software_header {
            let job = m.job_id.unwrap_or("NOQUEUE");
            let sw = format!(
                "mailstack dmarc-milter v{} {base_id} {job}",
                env!("CARGO_PKG_VERSION")
            );
            fields.insert(0, top_field("DMARC-Filter", sw));
        }
        self.record_history(m, &base_id, &ev, spf.as_ref(), &dkim, (dis, &overrides));
        // Each modification goes to the top in turn: the last applied ends up first.
        fields.reverse();
        let facts = AuthFacts {
            arc: arc.cloned(),
            ..AuthFacts::default()
        };
        DmarcOutcome {
            verdict: Verdict {
                action,
                modifications: fields,
                auth_results: clauses,
                facts,
            },
            evaluation: Some(ev),
            skipped: None,
            overrides,
        }
    }

    /// Whether a DMARC failure whose policy asks for more than `none` is accepted as
    /// forwarded by a trusted ARC sealer: the chain passes and its newest seal is by a
    /// `DomainWhitelist` domain (as rspamd and OpenDMARC's ARC override do).
    fn trusted_forwarder(&self, ev: &Evaluation, arc: &crate::arc::ArcOutcome) -> bool {
        ev.result == DmarcResult::Fail
            && ev.requested_disposition() != Policy::None
            && arc.trusted_pass(&self.cfg.trusted_arc_sealers)
    }

    /// Whether ARC chains are validated here ([`DmarcConfig::validates_arc`]).
    pub fn validates_arc(&self) -> bool {
        self.cfg.validates_arc()
    }

    /// Starts ARC chain validation of a message from its header block.
    pub fn start_arc(&self, headers: &[crate::dkim::canon::Header]) -> crate::arc::ArcVerifier {
        crate::arc::ArcVerifier::new(headers).with_key_timeout(self.cfg.dns_timeout)
    }

    /// Finishes what [`Self::start_arc`] started (its body fed).
    pub async fn finish_arc(
        &self,
        v: crate::arc::ArcVerifier,
        headers: &[crate::dkim::canon::Header],
    ) -> crate::arc::ArcOutcome {
        v.finish(headers, self.resolver.0.as_ref()).await
    }

    /// The author domain, or the verdict for a message that is not evaluated:
    /// `RequiredHeaders`, `RejectMultiValueFrom`, an unusable From, `IgnoreMailFrom`.
    fn author(&self, m: &MessageFacts<'_>) -> Result<String, Box<DmarcOutcome>> {
        let cfg = &self.cfg;
        if cfg.required_headers
            && let Some(problem) = rfc5322_problem(m.headers)
        {
            return Err(Box::new(DmarcOutcome::refuse(format!(
                "RFC5322 requirement error: {problem}"
            ))));
        }
        let froms: Vec<&str> = m
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("From"))
            .map(|(_, v)| v.as_str())
            .collect();
        let from = match author_domain(&froms) {
            Ok(d) => d,
            Err(FromError::MultipleDomains) if cfg.reject_multi_value_from => {
                return Err(Box::new(DmarcOutcome::refuse(
                    "multi-valued From field detected",
                )));
            }
            Err(e) if cfg.required_headers => {
                return Err(Box::new(DmarcOutcome::refuse(e.to_string())));
            }
            Err(e) => return Err(Box::new(DmarcOutcome::skip(e.to_string()))),
        };
        if cfg.ignore_mail_from.contains(&from) {
            return Err(Box::new(DmarcOutcome::skip(format!(
                "{from} is in IgnoreMailFrom"
            ))));
        }
        Ok(from)
    }

    /// The SPF and DKIM results to evaluate: those of earlier filters
    /// ([`MessageFacts::prior`]), else trusted upstream fields, our own SPF check (its
    /// `Authentication-Results` pushed to `fields`, its clause to `clauses`), in-process DKIM.
    async fn inputs(
        &self,
        m: &MessageFacts<'_>,
        ar_id: &str,
        fields: &mut Vec<Modification>,
        clauses: &mut Vec<MethodResult>,
    ) -> (Option<SpfInput>, Vec<DkimInput>) {
        let prior_spf = m.prior.and_then(|p| p.spf.clone());
        let prior_dkim = m.prior.and_then(|p| p.dkim.clone());
        if let (Some(spf), Some(dkim)) = (&prior_spf, &prior_dkim) {
            return (Some(spf.clone()), dkim.clone());
        }
        let cfg = &self.cfg;
        let base_id = cfg.authserv_id(m.mta_name);
        let ctx = UpstreamContext {
            envelope_from: m.envelope_from,
            spf_ignore_results: cfg.spf_ignore_results,
        };
        let upstream = read_upstream(m.headers, ctx, |id| cfg.is_trusted(id, &base_id, m.job_id));
        let spf = match (prior_spf, upstream.spf) {
            (Some(s), _) | (None, Some(s)) => Some(s),
            (None, None) if cfg.spf_self_validate => {
                let (s, clause) = self.self_spf(m).await;
                let mut ar = AuthResults::new(ar_id);
                ar.push(clause.clone());
                fields.push(Modification::AuthResults(ar.to_single_line()));
                clauses.push(clause);
                Some(s)
            }
            (None, None) => None,
        };
        let dkim = match (prior_dkim, &self.dkim, m.dkim_results, m.raw_message) {
            (Some(d), ..) => d,
            (None, Some(_), Some(done), _) => done.to_vec(),
            (None, Some(v), None, Some(raw)) => v.verify(raw).await,
            (None, Some(_), None, None) => Vec::new(),
            (None, None, ..) => upstream.dkim,
        };
        (spf, dkim)
    }

    /// SPF by our evaluator: MAIL FROM, or HELO for the null sender. Returns the input and its
    /// `Authentication-Results` clause (OpenDMARC: `spf=<res> smtp.mailfrom=<domain>`).
    async fn self_spf(&self, m: &MessageFacts<'_>) -> (SpfInput, MethodResult) {
        let ip = m.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let out = if m.envelope_from.is_empty() {
            self.spf.check_helo(ip, m.helo).await
        } else {
            self.spf.check_mail_from(ip, m.helo, m.envelope_from).await
        };
        let prop = match out.identity {
            Identity::MailFrom => "smtp.mailfrom",
            Identity::Helo => "smtp.helo",
        };
        let clause =
            MethodResult::new("spf", out.result.as_str()).property(prop, out.domain.clone());
        let input = SpfInput {
            domain: out.domain.to_ascii_lowercase(),
            identity: out.identity,
            result: out.result,
        };
        (input, clause)
    }

    /// The action and the disposition taken (see the table in the module docs).
    /// The reply names the domain whose policy was applied (for a subdomain, the
    /// Organizational Domain), as OpenDMARC does.
    fn enforce(&self, ev: &Evaluation) -> (Action, Policy) {
        let cfg = &self.cfg;
        let policy_domain = ev.policy_domain.as_deref().unwrap_or(&ev.from_domain);
        match ev.result {
            DmarcResult::TempError if cfg.reject_failures => (Action::Tempfail(None), Policy::None),
            DmarcResult::Fail if cfg.reject_failures => match ev.requested_disposition() {
                Policy::Reject => {
                    let text = cfg.reject_string.replacen("%s", policy_domain, 1);
                    (
                        Action::Reject(Some(format!("550 5.7.1 {text}"))),
                        Policy::Reject,
                    )
                }
                Policy::Quarantine if cfg.hold_quarantined_messages => {
                    let text = config::QUARANTINE_STRING.replacen("%s", policy_domain, 1);
                    (
                        Action::Quarantine {
                            reason: text,
                            fallback: Fallback::Accept,
                        },
                        Policy::Quarantine,
                    )
                }
                // OpenDMARC 1.4.2 writes dis=none here: the disposition is what was done.
                Policy::Quarantine => (Action::Accept, Policy::None),
                Policy::None => (Action::Accept, Policy::None),
            },
            _ => (Action::Accept, Policy::None),
        }
    }

    fn record_history(
        &self,
        m: &MessageFacts<'_>,
        reporter: &str,
        ev: &Evaluation,
        spf: Option<&SpfInput>,
        dkim: &[DkimInput],
        (dis, applied): (Policy, &[PolicyOverride]),
    ) {
        let failure_sink = self
            .failure
            .as_ref()
            .filter(|_| ev.result == DmarcResult::Fail)
            .filter(|_| ev.record.as_ref().is_some_and(|r| !r.ruf.is_empty()))
            // FailureReportsOnNone: p=none domains only when asked for.
            .filter(|_| {
                ev.policy != Policy::None
                    || self.cfg.failure_reports.as_ref().is_none_or(|f| f.on_none)
            });
        if self.history.is_none() && failure_sink.is_none() {
            return;
        }
        if ev.record.is_none() && !self.cfg.record_all_messages {
            return;
        }
        let ignored_to = &self.cfg.ignore_mail_to;
        if !m.rcpts.is_empty()
            && m.rcpts
                .iter()
                .all(|r| ignored_to.contains(&r.to_ascii_lowercase()))
        {
            return;
        }
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let rec = MessageRecord {
            job_id: m.job_id.unwrap_or("NOQUEUE").to_owned(),
            reporter: reporter.to_owned(),
            received,
            source_ip: m.client_ip,
            header_from: ev.from_domain.clone(),
            envelope_from: m
                .envelope_from
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase(),
            dkim: dkim.to_vec(),
            spf: spf.map(|s| s.result),
            policy: ev.policy_domain.clone().zip(ev.record.clone()),
            result: ev.result,
            policy_in_force: ev.policy,
            dkim_aligned: ev.dkim_aligned,
            spf_aligned: ev.spf_aligned,
            disposition: dis,
            spf_domain: spf.map(|s| s.domain.clone()).unwrap_or_default(),
            spf_scope: spf.map(|s| s.identity),
            overrides: override_reasons(ev, dis, applied),
            is_report: history::is_report(m.headers),
        };
        if let Some(sink) = failure_sink
            && !rec.is_report
        {
            sink.offer(&rec, m.headers);
        }
        if let Some(store) = &self.history
            && let Err(e) = store.record(&rec)
        {
            tracing::warn!("DMARC history store: {e}");
        }
    }
}

/// Why the disposition applied differs from the one requested (RFC 7489 appendix C): a
/// failure outside `pct` is `sampled_out` (§6.6.4); any other failure whose requested
/// disposition was not applied (`RejectFailures false`, quarantine not held) is
/// `local_policy`.
fn override_reasons(
    ev: &Evaluation,
    dis: Policy,
    applied: &[PolicyOverride],
) -> Vec<OverrideReason> {
    let mut out = Vec::new();
    if ev.result != DmarcResult::Fail {
        return out;
    }
    if !ev.sampled {
        out.push(OverrideReason::SampledOut);
    }
    let trusted = applied.contains(&PolicyOverride::TrustedForwarder);
    if trusted {
        out.push(OverrideReason::TrustedForwarder);
    }
    // A trusted forwarder explains the changed disposition by itself.
    if dis != ev.requested_disposition() && !trusted {
        out.push(OverrideReason::LocalPolicy);
    }
    out
}

/// The first RFC 5322 §3.6 count violated, if any.
fn rfc5322_problem(fields: &[(String, String)]) -> Option<String> {
    RFC5322_COUNTS.iter().find_map(|(name, min, max)| {
        let n = fields
            .iter()
            .filter(|(f, _)| f.eq_ignore_ascii_case(name))
            .count();
        (n < *min || n > *max).then(|| format!("{n} {name} fields"))
    })
}

/// A field inserted at the top of the message.
fn top_field(name: &str, value: String) -> Modification {
    Modification::Insert {
        index: 0,
        name: name.to_owned(),
        value,
    }
}

/// The `dmarc=` clause OpenDMARC writes for an evaluation; its field is on one line, as
/// OpenDMARC writes it (it fits well within 998 octets).
fn dmarc_clause(ev: &Evaluation, dis: Policy) -> MethodResult {
    let clause = match ev.result {
        DmarcResult::PermError => MethodResult::new("dmarc", "permerror"),
        r => MethodResult::new("dmarc", r.as_str()).comment(format!(
            "p={} dis={}",
            ev.policy.as_str(),
            dis.as_str()
        )),
    };
    clause.property("header.from", ev.from_domain.clone())
}

#[cfg(test)]
mod override_tests {
    use super::*;

    fn failing(policy: Policy) -> Evaluation {
        Evaluation {
            result: DmarcResult::Fail,
            from_domain: "sender.example".into(),
            policy_domain: Some("sender.example".into()),
            record: None,
            policy,
            sampled: true,
            spf_aligned: false,
            dkim_aligned: false,
            problem: None,
        }
    }

    /// The report says why a failing message was not rejected: a trusted ARC forwarder (and
    /// then not also local_policy), or the admin's own policy.
    #[test]
    fn a_trusted_forwarder_is_the_recorded_override() {
        let ev = failing(Policy::Reject);
        assert_eq!(
            override_reasons(&ev, Policy::None, &[PolicyOverride::TrustedForwarder]),
            vec![OverrideReason::TrustedForwarder]
        );
        assert_eq!(
            override_reasons(&ev, Policy::None, &[]),
            vec![OverrideReason::LocalPolicy]
        );
        assert!(override_reasons(&ev, Policy::Reject, &[]).is_empty());
    }
}
