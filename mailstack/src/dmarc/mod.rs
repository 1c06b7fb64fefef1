//! DMARC (RFC 7489, or RFC 9989 when configured) as a drop-in for OpenDMARC 1.4.
//!
//! [`DmarcFilter::check`] takes what the MTA told us about one message ([`MessageFacts`]) and
//! returns a [`Verdict`]: the action (accept, reject with OpenDMARC's `550 5.7.1 rejected by
//! DMARC policy for <policy domain>`, tempfail, quarantine) and the header fields to insert (the
//! `Authentication-Results` OpenDMARC writes, `dmarc=<result> (p=<policy> dis=<disposition>)
//! header.from=<domain>`). [`milter::DmarcMilter`] wraps it as a
//! [`milter_proto::server::Handler`]; the `dmarc-milter` example binary is a thin `main`
//! around that. [`config`] reads `opendmarc.conf`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::sync::Arc;
//! use mailstack::dmarc::{Action, DmarcConfig, DmarcFilter, MessageFacts};
//! use mailstack::dns::HickoryResolver;
//!
//! let cfg = DmarcConfig::read(Path::new("/etc/opendmarc.conf"))?;
//! let filter = DmarcFilter::new(cfg, Arc::new(HickoryResolver::system()?));
//! let headers = vec![("From".to_owned(), "Alice <alice@example.com>".to_owned())];
//! let verdict = filter
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
//!     })
//!     .await;
//! if let Action::Reject(reply) = &verdict.action {
//!     println!("{reply}"); // 550 5.7.1 rejected by DMARC policy for example.com
//! }
//! for (name, value) in &verdict.headers {
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
//! - `dmarcbis` (RFC 9989): the DNS tree walk (at most [`eval::MAX_TREE_WALK`] queries per
//!   domain, `psd=` for the Organizational Domain), no `pct=`, `t=y` lowers the policy one step,
//!   `np=` for a subdomain that does not exist (A query NXDOMAIN).
//!
//! # Where SPF and DKIM results come from
//!
//! As OpenDMARC: from trusted `Authentication-Results` (authserv-id equal to ours or listed in
//! `TrustedAuthservIDs`), then from a `Received-SPF` for this envelope's MAIL FROM
//! ([`headers::read_upstream`] lists the rules and the CVE fixes kept). With
//! `SPFSelfValidate`, when no usable SPF result was found (or `SPFIgnoreResults` is set), our
//! [`crate::spf`] evaluator checks the MAIL FROM (HELO for the null sender) and its result is
//! added as its own `Authentication-Results`. With `DKIMSelfValidate` (mailstack only),
//! signatures are verified here ([`dkim`], over [`crate::dkim`]'s streaming verifier: only the
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
//! Each evaluated message becomes a [`history::MessageRecord`] in the configured
//! [`history::HistoryStore`] (default: `HistoryFile` in OpenDMARC's format), for messages from
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
//! - [`config`]: reading `opendmarc.conf`.
//! - [`record`]: DMARC record syntax.
//! - [`psl`]: the public suffix list.
//! - [`eval`]: policy discovery, alignment, the policy in force.
//! - [`headers`]: From, upstream `Authentication-Results` and `Received-SPF`.
//! - [`dkim`]: in-process DKIM verification.
//! - [`history`]: aggregate-report records and their store.
//! - [`milter`]: the milter handler.

pub mod config;
pub mod dkim;
pub mod eval;
pub mod headers;
pub mod history;
pub mod milter;
pub mod psl;
pub mod record;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth_results::{AuthResults, MethodResult};
use crate::dns::Resolver;
use crate::spf::{Identity, Limits, SpfEvaluator};

pub use config::{DmarcConfig, Specification};
pub use eval::{DkimInput, DkimStatus, DmarcEvaluator, DmarcResult, Evaluation, SpfInput};
pub use headers::FromError;
pub use history::{HistoryFile, HistoryStore, MessageRecord};
pub use record::{Alignment, DmarcRecord, Policy};

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
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Let it through.
    Accept,
    /// Refuse it with this SMTP reply (`550 5.7.1 ...`).
    Reject(String),
    /// Refuse it with the MTA's own reply (libmilter `SMFIS_REJECT`; Postfix answers
    /// `550 5.7.1 Command rejected`), as OpenDMARC does for `RequiredHeaders` and
    /// `RejectMultiValueFrom`.
    RejectDefault,
    /// Refuse it temporarily (evaluation could not complete).
    Tempfail,
    /// Accept it into quarantine (Postfix: the hold queue) with this reason.
    Quarantine(String),
}

/// The filter's answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct Verdict {
    /// The action.
    pub action: Action,
    /// Header fields to insert at the top, `(name, value folded with "\n\t")`, in order.
    pub headers: Vec<(String, String)>,
    /// The evaluation, when one ran.
    pub evaluation: Option<Evaluation>,
    /// Why the message was not evaluated, when it was not.
    pub skipped: Option<String>,
}

impl Verdict {
    fn skip(why: impl Into<String>) -> Self {
        Self {
            action: Action::Accept,
            headers: Vec::new(),
            evaluation: None,
            skipped: Some(why.into()),
        }
    }

    fn refuse(why: impl Into<String>) -> Self {
        Self {
            action: Action::RejectDefault,
            ..Self::skip(why)
        }
    }
}

/// The DMARC filter: configuration, evaluators and the history store.
#[derive(Debug)]
pub struct DmarcFilter {
    cfg: Arc<DmarcConfig>,
    evaluator: DmarcEvaluator,
    spf: SpfEvaluator,
    dkim: Option<dkim::InProcessDkim>,
    history: Option<Arc<dyn HistoryStore>>,
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
        let spf = SpfEvaluator::new(resolver.clone(), Limits::default());
        let dkim = cfg
            .dkim_self_validate
            .then(|| dkim::InProcessDkim::new(resolver));
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
        }
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
    pub fn start_dkim(&self, headers: Vec<crate::dkim::canon::Header>) -> Option<dkim::DkimStream> {
        self.dkim.as_ref().map(|d| d.start(headers))
    }

    /// Finishes what [`Self::start_dkim`] started (its body fed with
    /// [`dkim::DkimStream::body`]).
    pub async fn finish_dkim(&self, stream: dkim::DkimStream) -> Vec<DkimInput> {
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

    /// Evaluates one message.
    pub async fn check(&self, m: &MessageFacts<'_>) -> Verdict {
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
        let mut out_headers = Vec::new();
        let (spf, dkim) = self.inputs(m, &base_id, &ar_id, &mut out_headers).await;
        let ev = self.evaluator.evaluate(&from, spf.as_ref(), &dkim).await;
        let (action, dis) = self.enforce(&ev);
        if !matches!(
            action,
            Action::Reject(_) | Action::RejectDefault | Action::Tempfail
        ) {
            let ar = dmarc_ar(&ar_id, &ev, dis);
            out_headers.insert(0, ("Authentication-Results".to_owned(), ar));
        }
        if cfg.software_header {
            let job = m.job_id.unwrap_or("NOQUEUE");
            let sw = format!(
                "mailstack dmarc-milter v{} {base_id} {job}",
                env!("CARGO_PKG_VERSION")
            );
            out_headers.insert(0, ("DMARC-Filter".to_owned(), sw));
        }
        self.record_history(m, &base_id, &ev, spf.as_ref(), &dkim, dis);
        Verdict {
            action,
            headers: out_headers,
            evaluation: Some(ev),
            skipped: None,
        }
    }

    /// The author domain, or the verdict for a message that is not evaluated:
    /// `RequiredHeaders`, `RejectMultiValueFrom`, an unusable From, `IgnoreMailFrom`.
    fn author(&self, m: &MessageFacts<'_>) -> Result<String, Box<Verdict>> {
        let cfg = &self.cfg;
        if cfg.required_headers
            && let Some(problem) = rfc5322_problem(m.headers)
        {
            return Err(Box::new(Verdict::refuse(format!(
                "RFC5322 requirement error: {problem}"
            ))));
        }
        let froms: Vec<&str> = m
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("From"))
            .map(|(_, v)| v.as_str())
            .collect();
        let from = match headers::author_domain(&froms) {
            Ok(d) => d,
            Err(FromError::MultipleDomains) if cfg.reject_multi_value_from => {
                return Err(Box::new(Verdict::refuse(
                    "multi-valued From field detected",
                )));
            }
            Err(e) if cfg.required_headers => return Err(Box::new(Verdict::refuse(e.to_string()))),
            Err(e) => return Err(Box::new(Verdict::skip(e.to_string()))),
        };
        if cfg.ignore_mail_from.contains(&from) {
            return Err(Box::new(Verdict::skip(format!(
                "{from} is in IgnoreMailFrom"
            ))));
        }
        Ok(from)
    }

    /// The SPF and DKIM results to evaluate: trusted upstream fields, our own SPF check
    /// (its `Authentication-Results` pushed to `out`), in-process DKIM.
    async fn inputs(
        &self,
        m: &MessageFacts<'_>,
        base_id: &str,
        ar_id: &str,
        out: &mut Vec<(String, String)>,
    ) -> (Option<SpfInput>, Vec<DkimInput>) {
        let cfg = &self.cfg;
        let ctx = headers::UpstreamContext {
            envelope_from: m.envelope_from,
            spf_ignore_results: cfg.spf_ignore_results,
        };
        let upstream =
            headers::read_upstream(m.headers, ctx, |id| cfg.is_trusted(id, base_id, m.job_id));
        let spf = match upstream.spf {
            Some(s) => Some(s),
            None if cfg.spf_self_validate => {
                let (s, ar) = self.self_spf(m, ar_id).await;
                out.push(("Authentication-Results".to_owned(), ar));
                Some(s)
            }
            None => None,
        };
        let dkim = match (&self.dkim, m.dkim_results, m.raw_message) {
            (Some(_), Some(done), _) => done.to_vec(),
            (Some(v), None, Some(raw)) => v.verify(raw).await,
            (Some(_), None, None) => Vec::new(),
            (None, ..) => upstream.dkim,
        };
        (spf, dkim)
    }

    /// SPF by our evaluator: MAIL FROM, or HELO for the null sender. Returns the input and its
    /// `Authentication-Results` value (OpenDMARC: `spf=<res> smtp.mailfrom=<domain>`).
    async fn self_spf(&self, m: &MessageFacts<'_>, ar_id: &str) -> (SpfInput, String) {
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
        let mut ar = AuthResults::new(ar_id);
        ar.push(MethodResult::new("spf", out.result.as_str()).property(prop, out.domain.clone()));
        let input = SpfInput {
            domain: out.domain.to_ascii_lowercase(),
            identity: out.identity,
            result: out.result,
        };
        (input, ar.to_single_line())
    }

    /// The action and the disposition taken (see the table in the module docs).
    /// The reply names the domain whose policy was applied (for a subdomain, the
    /// Organizational Domain), as OpenDMARC does.
    fn enforce(&self, ev: &Evaluation) -> (Action, Policy) {
        let cfg = &self.cfg;
        let policy_domain = ev.policy_domain.as_deref().unwrap_or(&ev.from_domain);
        match ev.result {
            DmarcResult::TempError if cfg.reject_failures => (Action::Tempfail, Policy::None),
            DmarcResult::Fail if cfg.reject_failures => match ev.requested_disposition() {
                Policy::Reject => {
                    let text = cfg.reject_string.replacen("%s", policy_domain, 1);
                    (Action::Reject(format!("550 5.7.1 {text}")), Policy::Reject)
                }
                Policy::Quarantine if cfg.hold_quarantined_messages => {
                    let text = config::QUARANTINE_STRING.replacen("%s", policy_domain, 1);
                    (Action::Quarantine(text), Policy::Quarantine)
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
        dis: Policy,
    ) {
        let Some(store) = &self.history else {
            return;
        };
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
        };
        if let Err(e) = store.record(&rec) {
            tracing::warn!("DMARC history store: {e}");
        }
    }
}

/// The `Authentication-Results` value OpenDMARC writes for an evaluation.
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

/// On one line, as OpenDMARC writes it (it fits well within 998 octets).
fn dmarc_ar(id: &str, ev: &Evaluation, dis: Policy) -> String {
    let mut ar = AuthResults::new(id);
    let clause = match ev.result {
        DmarcResult::PermError => MethodResult::new("dmarc", "permerror"),
        r => MethodResult::new("dmarc", r.as_str()).comment(format!(
            "p={} dis={}",
            ev.policy.as_str(),
            dis.as_str()
        )),
    };
    ar.push(clause.property("header.from", ev.from_domain.clone()));
    ar.to_single_line()
}
