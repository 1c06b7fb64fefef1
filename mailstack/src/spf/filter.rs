//! SPF as a [`crate::filter::Filter`]: the python-policyd-spf decision
//! ([`SpfPolicy`]) taken inside the milter at MAIL FROM, so no policy daemon is needed.
//!
//! At MAIL FROM it checks HELO and MAIL FROM as `policyd-spf.conf` says (the same options,
//! texts and bypass lists as `spf-policyd`): a rejected `fail` answers `550 5.7.23 ...` there
//! and then, a deferred `temperror` `451 4.7.24 ...`. Otherwise, at end of message, the
//! verdict carries the `Received-SPF` field (`Header_Type = SPF`, the default), the `spf=`
//! clause for `Authentication-Results`, and the results as [`AuthFacts`] for DMARC: the MAIL
//! FROM identity, or HELO for the null sender (RFC 7489 §3.1.2).

use std::sync::Arc;
use std::time::Duration;

use milter_proto::Actions;

use super::SpfOutput;
use super::policyd::{Checks, SpfAction, SpfPolicy, SpfRequest};
use crate::dmarc::SpfInput;
use crate::filter::{
    Action, AuthFacts, Connection, EndOfMessage, Envelope, Filter, Modification, Needs, Start,
    Verdict,
};

/// How long the whole decision at MAIL FROM may take by default (bypass lookups, HELO and
/// MAIL FROM checks together): under Postfix's `milter_command_timeout` (30 s), so that a DNS
/// outage gives `temperror` for SPF instead of the MTA timing the milter out and applying
/// `milter_default_action` to the whole message.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(20);

/// The SPF filter (shared by all connections).
#[derive(Debug, Clone)]
pub struct SpfFilter {
    policy: Arc<SpfPolicy>,
    budget: Duration,
}

impl SpfFilter {
    /// A filter deciding with `policy`, within [`DEFAULT_BUDGET`] per message.
    pub fn new(policy: Arc<SpfPolicy>) -> Self {
        Self {
            policy,
            budget: DEFAULT_BUDGET,
        }
    }

    /// Sets the time the whole decision at MAIL FROM may take (keep it under the MTA's
    /// milter command timeout).
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// The policy it decides with.
    pub fn policy(&self) -> &SpfPolicy {
        &self.policy
    }
}

/// What one message's SPF check found.
#[derive(Debug, Clone, Default)]
pub struct SpfMessage {
    header: Option<(String, String)>,
    checks: Checks,
    null_sender: bool,
}

fn input(out: &SpfOutput) -> SpfInput {
    SpfInput {
        domain: out.domain.to_ascii_lowercase(),
        identity: out.identity,
        result: out.result,
    }
}

/// `Name: value` → (name, value).
fn split_field(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(':')?;
    Some((name.trim().to_owned(), value.trim().to_owned()))
}

#[async_trait::async_trait]
impl Filter for SpfFilter {
    type Message = SpfMessage;

    fn needs(&self) -> Needs {
        Needs {
            actions: Actions::ADDHDRS,
            early_reply: true,
            ..Needs::default()
        }
    }

    async fn mail(&self, conn: &Connection, env: &Envelope) -> Start<SpfMessage> {
        let Some(ip) = conn.ip() else {
            // A local submission has no client address to check: no SPF result at all.
            return Start::Skip;
        };
        let ip = ip.to_string();
        let req = SpfRequest::from_attrs([
            ("client_address", ip.as_str()),
            ("helo_name", conn.helo.as_str()),
            ("sender", env.sender.as_str()),
            ("queue_id", env.queue_id()),
        ]);
        let (action, checks) = self
            .policy
            .decide_checked_within(&req, Some(self.budget))
            .await;
        let header = match action {
            SpfAction::Reject { code, text } => {
                return Start::Stop(Action::Reject(Some(format!("{code} {text}"))));
            }
            SpfAction::DeferIfPermit { code, text } => {
                let code = if code.contains("4.7.24") {
                    "451 4.7.24"
                } else {
                    "451"
                };
                return Start::Stop(Action::Tempfail(Some(format!("{code} {text}"))));
            }
            SpfAction::Prepend(line) => split_field(&line),
            SpfAction::Dunno | SpfAction::DunnoText(_) | SpfAction::Restriction(_) => None,
        };
        Start::Message(SpfMessage {
            header,
            checks,
            null_sender: env.sender.is_empty(),
        })
    }

    async fn end_of_message(&self, msg: SpfMessage, _eom: &EndOfMessage<'_>) -> Verdict {
        let mut v = Verdict::accept();
        if let Some((name, value)) = msg.header {
            v.modifications
                .push(if name.eq_ignore_ascii_case("Authentication-Results") {
                    Modification::AuthResults(value)
                } else {
                    Modification::Insert {
                        index: 0,
                        name,
                        value,
                    }
                });
        }
        let used = match (&msg.checks.mail_from, &msg.checks.helo) {
            (Some(m), _) if !msg.null_sender => Some(m),
            (_, Some(h)) => Some(h),
            (m, None) => m.as_ref(),
        };
        if let Some(out) = used {
            v.auth_results.push(out.auth_results(None));
        }
        v.facts = AuthFacts {
            spf: used.map(input),
            spf_helo: msg.checks.helo.as_ref().map(input),
            ..AuthFacts::default()
        };
        v
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::dns::{DnsError, Mx, Resolver};
    use crate::filter::ClientAddr;
    use crate::spf::SpfResult;
    use crate::spf::policyd::PolicydConfig;

    /// A DNS that never answers (a firewalled resolver: every query waits for its timeout).
    #[derive(Debug)]
    struct Silent;

    #[async_trait::async_trait]
    impl Resolver for Silent {
        async fn txt(&self, _: &str) -> Result<Vec<Vec<u8>>, DnsError> {
            std::future::pending().await
        }
        async fn a(&self, _: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
            std::future::pending().await
        }
        async fn aaaa(&self, _: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
            std::future::pending().await
        }
        async fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
            std::future::pending().await
        }
        async fn ptr(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
            std::future::pending().await
        }
    }

    /// HELO and MAIL FROM checks at `Lookup_Time = 20` each would take 40 s against a dead
    /// DNS, past Postfix's 30 s `milter_command_timeout`: the filter answers within its budget,
    /// with `temperror` for SPF rather than the MTA timing the whole milter out.
    #[tokio::test(start_paused = true)]
    async fn a_dead_dns_answers_within_the_budget_with_temperror() {
        let policy = Arc::new(SpfPolicy::new(PolicydConfig::default(), Arc::new(Silent)));
        let conn = Connection {
            helo: "mail.example.com".into(),
            ..Connection::new(
                "mail.example.com",
                ClientAddr::Ip("192.0.2.1".parse().unwrap()),
            )
        };
        let env = Envelope::new("<a@example.com>");

        // The policy on its own (spf-policyd's path: Postfix's policy timeout is 100 s).
        let t0 = tokio::time::Instant::now();
        let (_, checks) = policy
            .decide_checked(&SpfRequest::from_attrs([
                ("client_address", "192.0.2.1"),
                ("helo_name", "mail.example.com"),
                ("sender", "a@example.com"),
            ]))
            .await;
        assert!(
            t0.elapsed() >= Duration::from_secs(40),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            checks.mail_from.map(|o| o.result),
            Some(SpfResult::TempError)
        );

        let filter = SpfFilter::new(policy.clone());
        let t0 = tokio::time::Instant::now();
        let Start::Message(msg) = filter.mail(&conn, &env).await else {
            panic!("a temperror is not refused under the default TempError_Defer");
        };
        let took = t0.elapsed();
        assert!(
            took <= DEFAULT_BUDGET + Duration::from_millis(10),
            "{took:?}"
        );
        assert!(took < Duration::from_secs(30), "{took:?}");
        assert_eq!(
            msg.checks.helo.as_ref().map(|o| o.result),
            Some(SpfResult::TempError)
        );
        assert_eq!(
            msg.checks.mail_from.as_ref().map(|o| o.result),
            Some(SpfResult::TempError)
        );
        let (_, value) = msg.header.expect("Received-SPF for the temperror");
        assert!(
            value.starts_with("TempError") || value.to_ascii_lowercase().starts_with("temperror"),
            "{value}"
        );

        let short = SpfFilter::new(policy).with_budget(Duration::from_secs(3));
        let t0 = tokio::time::Instant::now();
        let _ = short.mail(&conn, &env).await;
        assert!(t0.elapsed() <= Duration::from_secs(3) + Duration::from_millis(10));
    }
}
