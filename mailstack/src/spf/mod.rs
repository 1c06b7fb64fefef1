//! SPF (RFC 7208): the check_host() evaluator, result headers and a python-policyd-spf
//! compatible policy service.
//!
//! The evaluator is our own: mail-auth 0.13 (the newest that builds on our toolchain) passes only
//! 137 of the 203 cases of the RFC 7208 test suite, missing the void-lookup limit, multiple-record
//! permerror, time-budget temperror, `%{p}`, exact `ptr` matches and much record syntax. This one
//! passes the suite (see `mailstack/tests/spf_suite.rs`).
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), mailstack::dns::DnsError> {
//! use std::sync::Arc;
//! use mailstack::dns::HickoryResolver;
//! use mailstack::spf::{LookupLimits, SpfEvaluator, SpfResult};
//!
//! let spf = SpfEvaluator::new(Arc::new(HickoryResolver::system()?), LookupLimits::default())
//!     .with_receiver("mx.example.net");
//! let ip = "192.0.2.1".parse().unwrap();
//! let helo = spf.check_helo(ip, "mail.example.com").await;
//! let mail_from = spf.check_mail_from(ip, "mail.example.com", "user@example.com").await;
//! if mail_from.result == SpfResult::Fail {
//!     println!("reject: {}", mail_from.explanation.as_deref().unwrap_or("SPF fail"));
//! }
//! # let _ = helo; Ok(()) }
//! ```
//!
//! - [`SpfEvaluator::check_host`] is RFC 7208 §4's function: client address, the domain to
//!   check, the `MAIL FROM` (or `postmaster@helo`) and the HELO name.
//! - [`SpfEvaluator::check_mail_from`] and [`SpfEvaluator::check_helo`] derive the domain and
//!   sender as §2.3/§2.4 say and record which [`Identity`] was checked. DMARC (RFC 7489 §3.1.2)
//!   uses the MAIL FROM output: its [`SpfOutput::domain`] is the domain to align and its
//!   [`SpfOutput::result`] the SPF result.
//! - [`SpfOutput::received_spf`] and [`SpfOutput::auth_results`] build the `Received-SPF`
//!   (§9.1, with `identity=`) and `Authentication-Results` (RFC 8601, `smtp.mailfrom` or
//!   `smtp.helo`) headers.
//!
//! DNS goes through [`crate::dns::Resolver`], so tests run on an in-memory zone.
//!
//! # Limits (RFC 7208 §4.6.4), all in [`LookupLimits`]
//!
//! 10 DNS-querying terms, 2 void lookups, 10 MX names, 10 PTR names, a 20 s time budget whose
//! overrun is `temperror`; records longer than 4 KiB or with more than 256 terms are
//! `permerror`. IPv4-mapped IPv6 client addresses are evaluated as IPv4.
//!
//! # Layout
//! - `record`: record syntax (terms, macro-strings, CIDR lengths, domain-spec).
//! - `macros`: macro expansion.
//! - `eval`: check_host() with its limits.
//! - `header`: `Received-SPF` and `Authentication-Results`.
//! - `filter`: [`SpfFilter`], SPF in the common [`crate::filter::Filter`] shape (for
//!   `mailstackd`).
//! - [`policyd`]: the python-policyd-spf compatible policy service.

mod eval;
pub(crate) mod filter;
mod header;
mod macros;
pub mod policyd;
pub(crate) mod record;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use filter::{DEFAULT_BUDGET, SpfFilter, SpfMessage};

use crate::dns::Resolver;

/// An SPF result (RFC 7208 §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpfResult {
    /// No SPF record, or the domain could not be checked (§2.6.1).
    None,
    /// The domain makes no assertion about the client (§2.6.2).
    Neutral,
    /// The client is authorised (§2.6.3).
    Pass,
    /// The client is not authorised (§2.6.4).
    Fail,
    /// Probably not authorised (§2.6.5).
    SoftFail,
    /// A transient (DNS) error (§2.6.6).
    TempError,
    /// The record could not be interpreted (§2.6.7).
    PermError,
}

impl SpfResult {
    /// The lower-case result token of RFC 7208 / RFC 8601 (`pass`, `softfail`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Neutral => "neutral",
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::SoftFail => "softfail",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which identity was checked (RFC 7208 §2.3, §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The HELO/EHLO name.
    Helo,
    /// The MAIL FROM address (or `postmaster@helo` for the null sender).
    MailFrom,
}

impl Identity {
    /// `helo` or `mailfrom`, as in `Received-SPF: ... identity=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Helo => "helo",
            Self::MailFrom => "mailfrom",
        }
    }
}

/// Processing limits (RFC 7208 §4.6.4); the defaults are the RFC's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LookupLimits {
    /// DNS-querying terms (include, a, mx, ptr, exists, redirect) per evaluation; more is
    /// permerror. RFC 7208 §4.6.4: 10.
    pub dns_mechanisms: u32,
    /// Void lookups (NXDOMAIN or no data) per evaluation; more is permerror. RFC 7208 §4.6.4
    /// "SHOULD be limited to two"; python-policyd-spf's `Void_Limit`.
    pub void_lookups: u32,
    /// MX names per `mx` mechanism; more is permerror. RFC 7208 §4.6.4: 10.
    pub mx_names: usize,
    /// PTR names looked at per `ptr` mechanism or `%{p}`; the rest are ignored. §4.6.4: 10.
    pub ptr_names: usize,
    /// Wall-clock budget per check_host(); overrun is temperror. RFC 7208 §4.6.4 asks for at
    /// least 20 s; python-policyd-spf's `Lookup_Time` default is 20 s.
    pub time_budget: Duration,
}

impl Default for LookupLimits {
    fn default() -> Self {
        Self {
            dns_mechanisms: 10,
            void_lookups: 2,
            mx_names: 10,
            ptr_names: 10,
            time_budget: Duration::from_secs(20),
        }
    }
}

impl LookupLimits {
    /// Sets the void-lookup limit.
    pub fn with_void_lookups(mut self, n: u32) -> Self {
        self.void_lookups = n;
        self
    }

    /// Sets the time budget.
    pub fn with_time_budget(mut self, budget: Duration) -> Self {
        self.time_budget = budget;
        self
    }
}

/// The outcome of one SPF check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpfOutput {
    /// The result.
    pub result: SpfResult,
    /// The identity checked.
    pub identity: Identity,
    /// The domain checked (the MAIL FROM domain, or the HELO name); DMARC aligns on it.
    pub domain: String,
    /// The sender used for the check (`postmaster@helo` for the null sender and for HELO).
    pub sender: String,
    /// The client address as evaluated (IPv4-mapped addresses unmapped).
    pub ip: IpAddr,
    /// The HELO name given.
    pub helo: String,
    /// On `fail`, the domain's `exp=` text (§6.2), if it had a usable one.
    pub explanation: Option<String>,
    /// The directive that matched (`-all`, `include:...`), or `default` when none did.
    pub mechanism: Option<String>,
    /// For `permerror`/`temperror`/`none`: what went wrong.
    pub problem: Option<String>,
    /// The record used `%{s}`, `%{l}` or `%{h}`: the result may differ for another sender or
    /// HELO name with the same domain and client (do not cache it by domain alone).
    pub sender_dependent: bool,
    /// The literal text of the record that was evaluated at the top level, if one was found
    /// (python-policyd-spf's `No_Mail` compares it with `v=spf1 -all`).
    pub record: Option<String>,
}

/// The SPF evaluator: a resolver, limits and the receiver's name (`%{r}`).
#[derive(Clone)]
pub struct SpfEvaluator {
    resolver: Arc<dyn Resolver>,
    limits: LookupLimits,
    receiver: String,
}

impl fmt::Debug for SpfEvaluator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpfEvaluator")
            .field("limits", &self.limits)
            .field("receiver", &self.receiver)
            .finish()
    }
}

/// An IPv4-mapped IPv6 address is evaluated as IPv4 (RFC 7208 §5, "ip4-mapped").
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Splits a sender into (local part, domain); an empty local part is `postmaster` (§4.3).
fn split_sender(sender: &str, helo: &str) -> (String, String) {
    let (local, domain) = match sender.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None if sender.is_empty() => ("", helo),
        None => ("", sender),
    };
    let local = if local.is_empty() {
        "postmaster"
    } else {
        local
    };
    (local.to_owned(), domain.to_owned())
}

impl SpfEvaluator {
    /// An evaluator over `resolver` with `limits`; `%{r}` expands to `unknown` until
    /// [`Self::with_receiver`] sets it.
    pub fn new(resolver: Arc<dyn Resolver>, limits: LookupLimits) -> Self {
        Self {
            resolver,
            limits,
            receiver: "unknown".into(),
        }
    }

    /// Sets the receiver's host name (`%{r}` in explanations).
    pub fn with_receiver(mut self, receiver: impl Into<String>) -> Self {
        self.receiver = receiver.into();
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &LookupLimits {
        &self.limits
    }

    /// RFC 7208 check_host(ip, domain, sender) with `helo` for `%{h}`. The output's identity is
    /// [`Identity::MailFrom`]; use [`Self::check_helo`] for the HELO identity.
    pub async fn check_host(
        &self,
        ip: IpAddr,
        domain: &str,
        sender: &str,
        helo: &str,
    ) -> SpfOutput {
        self.run(
            Identity::MailFrom,
            unmap(ip),
            domain,
            sender,
            helo,
            self.limits.time_budget,
        )
        .await
    }

    /// Checks the MAIL FROM identity; an empty `sender` is checked as `postmaster@helo` (§2.4).
    pub async fn check_mail_from(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfOutput {
        self.check_mail_from_within(ip, helo, sender, self.limits.time_budget)
            .await
    }

    /// [`Self::check_mail_from`] within `budget` (or the configured time budget, if that is
    /// shorter): a caller with a deadline of its own (a milter answering before the MTA's
    /// command timeout) passes what is left of it; running out gives `temperror`, as the
    /// configured budget does.
    pub async fn check_mail_from_within(
        &self,
        ip: IpAddr,
        helo: &str,
        sender: &str,
        budget: Duration,
    ) -> SpfOutput {
        let (_, domain) = split_sender(sender, helo);
        self.run(Identity::MailFrom, unmap(ip), &domain, sender, helo, budget)
            .await
    }

    /// Checks the HELO identity as `postmaster@helo` (§2.3).
    pub async fn check_helo(&self, ip: IpAddr, helo: &str) -> SpfOutput {
        self.check_helo_within(ip, helo, self.limits.time_budget)
            .await
    }

    /// [`Self::check_helo`] within `budget` (as [`Self::check_mail_from_within`]).
    pub async fn check_helo_within(&self, ip: IpAddr, helo: &str, budget: Duration) -> SpfOutput {
        self.run(Identity::Helo, unmap(ip), helo, "", helo, budget)
            .await
    }

    async fn run(
        &self,
        identity: Identity,
        ip: IpAddr,
        domain: &str,
        sender: &str,
        helo: &str,
        budget: Duration,
    ) -> SpfOutput {
        let budget = budget.min(self.limits.time_budget);
        let (local, sender_domain) = split_sender(sender, helo);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut session = eval::Session {
            ev: self,
            ip,
            local: local.clone(),
            sender_domain: sender_domain.clone(),
            helo: helo.to_owned(),
            dns_terms: 0,
            void_lookups: 0,
            now,
            sender_dependent: false,
            top_record: None,
        };
        let started = tokio::time::Instant::now();
        let outcome =
            match tokio::time::timeout(budget, session.check_host(domain.to_owned())).await {
                Ok(o) => o,
                Err(_) => eval::Outcome {
                    result: SpfResult::TempError,
                    explain: None,
                    mechanism: None,
                    problem: Some("DNS Error: exceeded max query lookup time".into()),
                },
            };
        // §6.2: a failure to get the explanation (DNS error, no time left) leaves the result
        // `fail`, with no explanation; only what is left of the budget is spent on it.
        let explanation = match (&outcome.explain, outcome.result) {
            (Some((exp, exp_domain)), SpfResult::Fail) => {
                let left = budget.saturating_sub(started.elapsed());
                tokio::time::timeout(left, session.explain(exp, exp_domain))
                    .await
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        SpfOutput {
            result: outcome.result,
            identity,
            domain: domain.trim_end_matches('.').to_owned(),
            sender: format!("{local}@{sender_domain}"),
            ip,
            helo: helo.to_owned(),
            explanation,
            mechanism: outcome.mechanism,
            problem: outcome.problem,
            sender_dependent: session.sender_dependent,
            record: session.top_record,
        }
    }
}
