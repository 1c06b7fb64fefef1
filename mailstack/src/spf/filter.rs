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

use milter_proto::flags::Actions;

use super::SpfOutput;
use super::policyd::{Checks, SpfAction, SpfPolicy, SpfRequest};
use crate::dmarc::SpfInput;
use crate::filter::{
    Action, AuthFacts, Connection, EndOfMessage, Envelope, Filter, Modification, Needs, Start,
    Verdict,
};

/// The SPF filter (shared by all connections).
#[derive(Debug, Clone)]
pub struct SpfFilter {
    policy: Arc<SpfPolicy>,
}

impl SpfFilter {
    /// A filter deciding with `policy`.
    pub fn new(policy: Arc<SpfPolicy>) -> Self {
        Self { policy }
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
        let (action, checks) = self.policy.decide_checked(&req).await;
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
