//! A Postfix SPF policy service that decides like python-policyd-spf 3.0.4.
//!
//! [`SpfPolicy::decide`] takes the attributes of one policy request ([`SpfRequest`]) and returns
//! the [`SpfAction`] to send back. It reads the same `policyd-spf.conf` ([`PolicydConfig`]) with
//! the same keys and defaults, checks HELO then MAIL FROM, and answers with the same texts:
//! `550 5.7.23 Message rejected due to: ...` for a rejected `fail`, `550 5.7.24` for a rejected
//! `permerror`, `defer_if_permit 4.7.24 ...` for a deferred `temperror`, otherwise
//! `prepend Received-SPF: ...` once per message (`instance`), `dunno` for the other recipients.
//!
//! [`SpfService`] is the policy as a [`policy_proto::Handler`]: [`SpfService::server`] gives a
//! [`policy_proto::Server`] that serves it under spawn(8) on stdin/stdout or on a unix or TCP
//! socket, and [`reply`] spells each answer as python-policyd-spf does.
//!
//! # Differences from python-policyd-spf (on purpose)
//!
//! - **CVE-2019-20790**: when the MAIL FROM domain has no SPF record but HELO had a result,
//!   python-policyd-spf prepends the HELO result (`identity=helo`), which DMARC verifiers took
//!   for the MAIL FROM result. We prepend the MAIL FROM result (`None (mailfrom)
//!   identity=mailfrom`), so the header always describes the identity DMARC uses.
//! - The `instance` cache is bounded ([`PolicydConfig::instance_cache_size`]); python's grows
//!   for the life of the process.
//! - SPF results are cached per (client, HELO) and (client, MAIL FROM domain) for
//!   `Result_Cache_TTL` seconds (our keys `Result_Cache_Size`, `Result_Cache_TTL`); results of
//!   records whose macros use the sender or HELO are not reused across senders.
//! - Sender local parts keep their case (python lower-cases every value, which changes `%{l}`).
//! - A repeated `instance` after a `permerror` reject answers `550 5.7.24` again (python
//!   answers `5.7.23` from its cache).
//! - Booleans accept `yes/no/true/false/1/0` (python honours only the exact word `True`);
//!   unknown keys and bad values are errors naming the file and line (python logs and goes on).
//!   `Mock = False` means false (python's `bool("False")` is true). `Per_User` is not
//!   supported (a warning); the milter-only keys are ignored with a warning.
//! - `Reject_Not_Pass_Domains` applies to a listed domain and its subdomains. python passes
//!   the arguments of pyspf's `domainmatch` the other way round, so there a listed
//!   `mail.example.com` also catches the sender domain `example.com`.
//! - Our own SPF evaluator replaces pyspf; explanation texts of `permerror`/`temperror` name
//!   the same problems but not always in the same words.
//! - A request line without `=`, or one over the limits of [`policy_proto::RequestDecoder`],
//!   closes the connection without an answer, as `SMTPD_POLICY_README` asks (python skips
//!   the line and answers). Postfix never sends such a line.

mod cache;
mod config;
mod serve;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use config::{
    DEFAULT_CONFIG_PATH, DEFAULT_INSTANCE_CACHE_SIZE, DEFAULT_REASON_MESSAGE,
    DEFAULT_RESULT_CACHE_SIZE, DEFAULT_RESULT_CACHE_TTL, DEFAULT_SKIP_ADDRESSES, HeaderType, IpNet,
    PolicydConfig, RejectPolicy, hostname,
};

pub use serve::{MAX_CONNECTIONS, SpfService, reply};

use self::cache::BoundedCache;
use super::header::{clean_comment, kv_value_compat};
use super::{LookupLimits, SpfEvaluator, SpfOutput, SpfResult};
use crate::auth_results::{AuthResults, MethodResult};
use crate::dns::Resolver;

/// The request attributes the SPF policy looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpfRequest {
    /// `client_address`.
    pub client_address: String,
    /// `helo_name`.
    pub helo_name: String,
    /// `sender` (empty for the null sender).
    pub sender: String,
    /// `recipient` (empty when not known yet).
    pub recipient: String,
    /// `instance`: the same for all recipients of one message.
    pub instance: String,
    /// `queue_id`, for logs.
    pub queue_id: String,
}

impl SpfRequest {
    /// Collects the attributes from `name=value` pairs; unknown names are ignored. The HELO
    /// name, the sender's domain and the recipient are lower-cased (DNS names).
    pub fn from_attrs<'a>(attrs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut r = Self::default();
        for (name, value) in attrs {
            let slot = match name {
                "client_address" => &mut r.client_address,
                "helo_name" => &mut r.helo_name,
                "sender" => &mut r.sender,
                "recipient" => &mut r.recipient,
                "instance" => &mut r.instance,
                "queue_id" => &mut r.queue_id,
                _ => continue,
            };
            *slot = value.trim().to_owned();
        }
        r.client_address.make_ascii_lowercase();
        r.helo_name.make_ascii_lowercase();
        r.recipient.make_ascii_lowercase();
        if let Some((local, domain)) = r.sender.rsplit_once('@') {
            r.sender = format!("{local}@{}", domain.to_ascii_lowercase());
        }
        r
    }
}

/// What to answer (the value of `action=`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpfAction {
    /// `dunno`.
    Dunno,
    /// `dunno` with a text (python's `Mock` answer).
    DunnoText(String),
    /// `prepend <header>`; the string is the whole header line.
    Prepend(String),
    /// A reject: `code` is `550 5.7.23`, `550 5.7.24` or `550`; `text` the reason.
    Reject {
        /// Reply code and enhanced status code.
        code: &'static str,
        /// The reason message.
        text: String,
    },
    /// `defer_if_permit [4.7.24] <text>`.
    DeferIfPermit {
        /// `defer_if_permit 4.7.24` or `defer_if_permit`.
        code: &'static str,
        /// The reason message.
        text: String,
    },
    /// A restriction class name (`HELO_pass_restriction`, `Mail_From_pass_restriction`).
    Restriction(String),
}

impl SpfAction {
    /// The `action=` value exactly as python-policyd-spf writes it.
    pub fn to_action_value(&self) -> String {
        match self {
            Self::Dunno => "dunno".into(),
            Self::DunnoText(t) => format!("dunno {t}"),
            Self::Prepend(h) => format!("prepend {h}"),
            Self::Reject { code, text } | Self::DeferIfPermit { code, text } => {
                format!("{code} {text}")
            }
            Self::Restriction(r) => r.clone(),
        }
    }
}

/// The SPF checks one decision ran (none for a bypassed client: skip list, whitelists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checks {
    /// The HELO identity's output, when it was checked.
    pub helo: Option<SpfOutput>,
    /// The MAIL FROM identity's output, when it was checked.
    pub mail_from: Option<SpfOutput>,
}

/// The local-policy consequence of one result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Prepend,
    Reject,
    Defer,
    Dunno,
}

/// python-policyd-spf's capitalised result word (`Pass`, `Softfail`, `Permerror`, ...).
fn result_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::None => "None",
        SpfResult::Neutral => "Neutral",
        SpfResult::Pass => "Pass",
        SpfResult::Fail => "Fail",
        SpfResult::SoftFail => "Softfail",
        SpfResult::TempError => "Temperror",
        SpfResult::PermError => "Permerror",
    }
}

/// pyspf's explanation for a result (what python-policyd-spf calls the reason).
fn reason(out: &SpfOutput) -> String {
    let problem = out.problem.as_deref().unwrap_or("");
    match out.result {
        SpfResult::Pass => "sender SPF authorized".into(),
        SpfResult::Fail => out
            .explanation
            .clone()
            .unwrap_or_else(|| "SPF fail - not authorized".into()),
        SpfResult::SoftFail => "domain owner discourages use of this host".into(),
        SpfResult::Neutral => "access neither permitted nor denied".into(),
        SpfResult::None => "no SPF record".into(),
        SpfResult::PermError => format!("SPF Permanent Error: {problem}"),
        SpfResult::TempError => format!("SPF Temporary Error: {problem}"),
    }
}

/// `domain` equals or is a subdomain of one of `list`.
fn domain_listed(list: &[String], domain: &str) -> bool {
    list.iter()
        .any(|d| domain == d || domain.ends_with(&format!(".{d}")))
}

/// One identity's evaluation, as python-policyd-spf keeps it.
struct Checked {
    out: SpfOutput,
    act: Act,
    reason: String,
    header: String,
}

type ResultKey = (bool, IpAddr, String);

/// The SPF policy service (shared by all connections; cheap to clone via `Arc`).
pub struct SpfPolicy {
    config: PolicydConfig,
    authserv_id: String,
    resolver: Arc<dyn Resolver>,
    spf: SpfEvaluator,
    whitelist_spf: SpfEvaluator,
    instances: Mutex<BoundedCache<String, SpfAction>>,
    results: Mutex<BoundedCache<ResultKey, SpfOutput>>,
}

impl std::fmt::Debug for SpfPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpfPolicy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How long an `instance` is remembered (a message's recipients arrive within seconds;
/// Postfix's `smtpd_timeout` is 300 s per command).
const INSTANCE_TTL: Duration = Duration::from_secs(3600);

impl SpfPolicy {
    /// A policy with `config`, resolving through `resolver`.
    pub fn new(config: PolicydConfig, resolver: Arc<dyn Resolver>) -> Self {
        let limits = LookupLimits::default().with_void_lookups(config.void_limit);
        let spf = SpfEvaluator::new(
            resolver.clone(),
            limits.clone().with_time_budget(config.lookup_time),
        )
        .with_receiver(hostname());
        let whitelist_spf = SpfEvaluator::new(
            resolver.clone(),
            limits.with_time_budget(config.whitelist_lookup_time),
        );
        Self {
            authserv_id: config.resolved_authserv_id(),
            instances: Mutex::new(BoundedCache::new(config.instance_cache_size, INSTANCE_TTL)),
            results: Mutex::new(BoundedCache::new(
                config.result_cache_size,
                config.result_cache_ttl,
            )),
            resolver,
            spf,
            whitelist_spf,
            config,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &PolicydConfig {
        &self.config
    }

    /// Decides one request.
    pub async fn decide(&self, req: &SpfRequest) -> SpfAction {
        if self.config.mock {
            return SpfAction::DunnoText("mock header field that should be ignored".into());
        }
        let cached = (!req.instance.is_empty())
            .then(|| {
                self.instances
                    .lock()
                    .ok()
                    .and_then(|mut c| c.get(&req.instance, Instant::now()))
            })
            .flatten();
        let action = match cached {
            Some(SpfAction::Prepend(_)) => SpfAction::Dunno,
            Some(other) => other,
            None => {
                let action = self.evaluate(req, &mut Checks::default(), None).await;
                if !req.instance.is_empty()
                    && let Ok(mut c) = self.instances.lock()
                {
                    c.insert(req.instance.clone(), action.clone(), Instant::now());
                }
                action
            }
        };
        self.finish(action)
    }

    /// Decides one message's SPF without the `instance` cache (a milter asks once per
    /// message) and returns the outputs of the checks that ran with the action, for
    /// `Authentication-Results` and DMARC.
    pub async fn decide_checked(&self, req: &SpfRequest) -> (SpfAction, Checks) {
        self.decide_checked_within(req, None).await
    }

    /// [`Self::decide_checked`] with every DNS lookup of the decision (bypass lists, HELO and
    /// MAIL FROM checks) done within `budget` in all: a check that runs out gives `temperror`
    /// (judged as `Lookup_Time` running out is), a bypass lookup that runs out bypasses
    /// nothing. A milter passes a budget under the MTA's command timeout (Postfix's
    /// `milter_command_timeout` is 30 s; HELO and MAIL FROM at `Lookup_Time = 20` each would
    /// otherwise take up to 40 s).
    pub async fn decide_checked_within(
        &self,
        req: &SpfRequest,
        budget: Option<Duration>,
    ) -> (SpfAction, Checks) {
        if self.config.mock {
            return (self.decide(req).await, Checks::default());
        }
        let mut seen = Checks::default();
        let deadline = budget.map(|b| tokio::time::Instant::now() + b);
        let action = self.evaluate(req, &mut seen, deadline).await;
        (self.finish(action), seen)
    }

    /// `TestOnly = 0`, `Prospective` and `Header_Type = None` turn some actions into `dunno`.
    fn finish(&self, action: SpfAction) -> SpfAction {
        match action {
            SpfAction::Prepend(_)
                if self.config.prospective.is_some()
                    || self.config.header_type == HeaderType::None =>
            {
                SpfAction::Dunno
            }
            SpfAction::Prepend(h) => SpfAction::Prepend(h),
            _ if self.config.test_only == 0 => SpfAction::Dunno,
            other => other,
        }
    }

    /// `recipient` as shown in headers and URLs: its domain, `none` or `<UNKNOWN>`.
    fn receiver(&self, req: &SpfRequest) -> String {
        if self.config.hide_receiver {
            "<UNKNOWN>".into()
        } else if req.recipient.is_empty() {
            "none".into()
        } else {
            req.recipient
                .split_once('@')
                .map_or(req.recipient.as_str(), |(_, d)| d)
                .to_owned()
        }
    }

    async fn evaluate(
        &self,
        req: &SpfRequest,
        seen: &mut Checks,
        deadline: Option<tokio::time::Instant>,
    ) -> SpfAction {
        let ip_text = self
            .config
            .prospective
            .map_or_else(|| req.client_address.clone(), |ip| ip.to_string());
        let Ok(ip) = ip_text.parse::<IpAddr>() else {
            return SpfAction::Dunno;
        };
        let receiver = self.receiver(req);
        let bypassed = match deadline {
            None => self.bypass(req, ip, &receiver).await,
            Some(d) => tokio::time::timeout_at(d, self.bypass(req, ip, &receiver))
                .await
                .ok()
                .flatten(),
        };
        if let Some(header) = bypassed {
            return SpfAction::Prepend(header);
        }
        if req.sender.is_empty() && req.helo_name.is_empty() {
            return SpfAction::Dunno;
        }
        let sender_domain = req.sender.rsplit_once('@').map(|(_, d)| d.to_owned());
        let helo = match (&req.helo_name, &sender_domain) {
            (h, _) if !h.is_empty() => h.clone(),
            (_, Some(d)) => d.clone(),
            _ => "unknown".into(),
        };
        let header_sender = if req.sender.is_empty() {
            "<>"
        } else {
            req.sender.as_str()
        };

        let mut helo_checked = None;
        if self.config.helo_reject != RejectPolicy::NoCheck {
            let out = self.check(false, ip, &helo, "", deadline).await;
            seen.helo = Some(out.clone());
            let null_only = self.config.helo_reject == RejectPolicy::Null && !req.sender.is_empty();
            let c = self.judge(out, false, &helo, null_only, |out, reason| {
                self.header_helo(out, reason, &ip_text, &helo, header_sender, &receiver)
            });
            if matches!(c.act, Act::Reject | Act::Defer) {
                return self.refuse(&c, "helo", &helo, &ip_text, &receiver);
            }
            if req.sender.is_empty() {
                return match (&self.config.helo_pass_restriction, c.out.result) {
                    (Some(r), SpfResult::Pass) => SpfAction::Restriction(r.clone()),
                    _ if c.act == Act::Dunno => SpfAction::Dunno,
                    _ => SpfAction::Prepend(c.header),
                };
            }
            helo_checked = Some(c);
        }
        if req.sender.is_empty() {
            return SpfAction::Dunno;
        }
        if self.config.mail_from_reject == RejectPolicy::NoCheck {
            return match helo_checked {
                Some(c) if c.act != Act::Dunno => SpfAction::Prepend(c.header),
                _ => SpfAction::Dunno,
            };
        }
        let out = self.check(true, ip, &helo, &req.sender, deadline).await;
        seen.mail_from = Some(out.clone());
        let domain = sender_domain.unwrap_or_default();
        let c = self.judge(out, true, &domain, false, |out, _| {
            self.header_mail_from(out, &ip_text, &helo, &req.sender, &receiver)
        });
        let helo_pass = helo_checked
            .as_ref()
            .is_some_and(|h| h.out.result == SpfResult::Pass);
        match (
            &self.config.mail_from_pass_restriction,
            &self.config.helo_pass_restriction,
        ) {
            (Some(r), _) if c.out.result == SpfResult::Pass => {
                return SpfAction::Restriction(r.clone());
            }
            (_, Some(r)) if helo_pass => return SpfAction::Restriction(r.clone()),
            _ => {}
        }
        match c.act {
            Act::Reject | Act::Defer => self.refuse(&c, "mfrom", &req.sender, &ip_text, &receiver),
            _ => SpfAction::Prepend(c.header),
        }
    }

    /// Applies the local policy to one result and builds its header.
    fn judge(
        &self,
        out: SpfOutput,
        mail_from: bool,
        domain: &str,
        dunno: bool,
        header: impl Fn(&SpfOutput, &str) -> String,
    ) -> Checked {
        let configured = if mail_from {
            self.config.mail_from_reject
        } else {
            self.config.helo_reject
        };
        let local = domain_listed(&self.config.reject_not_pass_domains, domain);
        let policy = if local {
            RejectPolicy::SpfNotPass
        } else {
            configured
        };
        let mut act = if dunno {
            Act::Dunno
        } else {
            self.act(policy, out.result)
        };
        let mut reason = reason(&out);
        if local && out.result != SpfResult::None {
            reason = format!("Receiver policy for SPF {}", result_word(out.result));
        }
        if act == Act::Reject && self.config.no_mail && out.record.as_deref() != Some("v=spf1 -all")
        {
            act = Act::Prepend;
        }
        let header = header(&out, &reason);
        Checked {
            out,
            act,
            reason,
            header,
        }
    }

    /// python-policyd-spf's `_get_resultcodes` table.
    fn act(&self, policy: RejectPolicy, result: SpfResult) -> Act {
        use SpfResult as R;
        let rejected: &[SpfResult] = match policy {
            RejectPolicy::False | RejectPolicy::NoCheck => return Act::Prepend,
            RejectPolicy::Fail | RejectPolicy::Null => &[R::Fail],
            RejectPolicy::Softfail => &[R::Fail, R::SoftFail],
            RejectPolicy::SpfNotPass => &[R::Fail, R::SoftFail, R::Neutral],
        };
        if result == R::TempError && self.config.temperror_defer {
            Act::Defer
        } else if (result == R::PermError && self.config.permerror_reject)
            || rejected.contains(&result)
        {
            Act::Reject
        } else {
            Act::Prepend
        }
    }

    /// The reject or defer answer (`_rejectmessage` and the codes of `policyd_spf.py`).
    fn refuse(&self, c: &Checked, scope: &str, id: &str, ip: &str, receiver: &str) -> SpfAction {
        let error = matches!(c.out.result, SpfResult::PermError | SpfResult::TempError);
        let defer = c.act == Act::Defer;
        let url = format!("http://www.openspf.net/Why?s={scope};id={id};ip={ip};r={receiver}");
        let text = self
            .config
            .reason_message
            .replace("{rejectdefer}", if defer { "deferred" } else { "rejected" })
            .replace("{spf}", &c.reason)
            .replace("{url}", &url);
        let enhanced = self.config.enhanced_status_codes;
        if defer {
            let code = if enhanced {
                "defer_if_permit 4.7.24"
            } else {
                "defer_if_permit"
            };
            SpfAction::DeferIfPermit { code, text }
        } else {
            let code = match (enhanced, error) {
                (false, _) => "550",
                (true, true) => "550 5.7.24",
                (true, false) => "550 5.7.23",
            };
            SpfAction::Reject { code, text }
        }
    }

    /// One identity's SPF output, through the (ip, name) cache.
    async fn check(
        &self,
        mail_from: bool,
        ip: IpAddr,
        helo: &str,
        sender: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> SpfOutput {
        let name = if mail_from {
            sender.rsplit_once('@').map_or(sender, |(_, d)| d)
        } else {
            helo
        };
        let key = (mail_from, ip, name.to_owned());
        if let Some(hit) = self
            .results
            .lock()
            .ok()
            .and_then(|mut c| c.get(&key, Instant::now()))
            && !hit.sender_dependent
        {
            return hit;
        }
        let budget = deadline.map_or(self.spf.limits().time_budget, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        });
        let out = if mail_from {
            self.spf
                .check_mail_from_within(ip, helo, sender, budget)
                .await
        } else {
            self.spf.check_helo_within(ip, helo, budget).await
        };
        if !out.sender_dependent
            && out.result != SpfResult::TempError
            && let Ok(mut c) = self.results.lock()
        {
            c.insert(key, out.clone(), Instant::now());
        }
        out
    }

    /// The `client-ip=...; helo=...; envelope-from=...; receiver=...` list, every value
    /// written by [`kv_value_compat`] (bare as python-policyd-spf writes it when it is a plain
    /// host name, address or IP; quoted per RFC 7208 §9.1 otherwise), so a HELO name or sender
    /// such as `x identity=mailfrom` can never add a key.
    fn detail(ip: &str, helo: &str, from: &str, receiver: &str) -> String {
        format!(
            "client-ip={}; helo={}; envelope-from={}; receiver={}",
            kv_value_compat(ip),
            kv_value_compat(helo),
            kv_value_compat(from),
            kv_value_compat(receiver)
        )
    }

    fn header_helo(
        &self,
        out: &SpfOutput,
        reason: &str,
        ip: &str,
        helo: &str,
        from: &str,
        rcv: &str,
    ) -> String {
        let detail = Self::detail(ip, helo, from, rcv);
        match self.config.header_type {
            HeaderType::AuthResults => self.ar(out, reason, "smtp.helo", helo, &detail),
            _ => format!(
                "Received-SPF: {} ({}) identity=helo; {detail} ",
                result_word(out.result),
                clean_comment(reason)
            ),
        }
    }

    fn header_mail_from(
        &self,
        out: &SpfOutput,
        ip: &str,
        helo: &str,
        from: &str,
        rcv: &str,
    ) -> String {
        let detail = Self::detail(ip, helo, from, rcv);
        match self.config.header_type {
            HeaderType::AuthResults => {
                self.ar(out, &reason(out), "smtp.mailfrom", &out.domain, &detail)
            }
            _ => format!(
                "Received-SPF: {} (mailfrom) identity=mailfrom; {detail} ",
                result_word(out.result)
            ),
        }
    }

    fn ar(&self, out: &SpfOutput, reason: &str, ptype: &str, value: &str, detail: &str) -> String {
        let mut ar = AuthResults::new(&self.authserv_id);
        ar.push(
            MethodResult::new("spf", out.result.as_str())
                .comment(reason)
                .property(ptype, value),
        );
        format!(
            "Authentication-Results: {} ({})",
            ar.to_single_line(),
            clean_comment(detail)
        )
    }

    /// The bypass chain: skip_addresses, Whitelist, Domain_Whitelist, HELO_Whitelist,
    /// Domain_Whitelist_PTR. Returns the trace header of the first that applies.
    async fn bypass(&self, req: &SpfRequest, ip: IpAddr, receiver: &str) -> Option<String> {
        let c = &self.config;
        let comment = if c.skip_addresses.iter().any(|n| n.contains(ip)) {
            "SPF check N/A for local connections - "
        } else if c.whitelist.iter().any(|n| n.contains(ip)) {
            "SPF skipped for whitelisted relay - "
        } else if self.domain_whitelisted(ip).await {
            "SPF skipped for whitelisted relay domain - "
        } else if self.helo_whitelisted(req, ip).await {
            "SPF skipped for whitelisted HELO domain - "
        } else if self.ptr_whitelisted(ip).await {
            "SPF skipped for PTR whitelisted relay domain - "
        } else {
            return None;
        };
        let detail = Self::detail(&req.client_address, &req.helo_name, &req.sender, receiver);
        Some(match c.header_type {
            HeaderType::AuthResults => {
                let ar = AuthResults::new(&self.authserv_id);
                format!(
                    "Authentication-Results: {} ({comment} {})",
                    ar.to_single_line(),
                    clean_comment(&detail)
                )
            }
            _ => format!("X-Comment: {comment}{detail} "),
        })
    }

    async fn domain_whitelisted(&self, ip: IpAddr) -> bool {
        for domain in &self.config.domain_whitelist {
            let out = self
                .whitelist_spf
                .check_host(ip, domain, domain, domain)
                .await;
            if out.result == SpfResult::Pass {
                return true;
            }
        }
        false
    }

    async fn helo_whitelisted(&self, req: &SpfRequest, ip: IpAddr) -> bool {
        if !self.config.helo_whitelist.contains(&req.helo_name) {
            return false;
        }
        let lookup = async {
            match ip {
                IpAddr::V4(v4) => self
                    .resolver
                    .a(&req.helo_name)
                    .await
                    .is_ok_and(|a| a.contains(&v4)),
                IpAddr::V6(v6) => self
                    .resolver
                    .aaaa(&req.helo_name)
                    .await
                    .is_ok_and(|a| a.contains(&v6)),
            }
        };
        tokio::time::timeout(self.config.whitelist_lookup_time, lookup)
            .await
            .unwrap_or(false)
    }

    async fn ptr_whitelisted(&self, ip: IpAddr) -> bool {
        if self.config.domain_whitelist_ptr.is_empty() {
            return false;
        }
        let lookup =
            tokio::time::timeout(self.config.whitelist_lookup_time, self.resolver.ptr(ip)).await;
        let Ok(Ok(names)) = lookup else { return false };
        // python-policyd-spf looks at the first name only, with a plain suffix match.
        names.first().is_some_and(|name| {
            self.config
                .domain_whitelist_ptr
                .iter()
                .any(|d| name.ends_with(d.as_str()))
        })
    }
}
