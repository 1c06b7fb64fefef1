//! [`SpfService`]: [`SpfPolicy`] as a [`policy_proto::Handler`], so that
//! [`policy_proto::Server`] serves it on every transport: stdin/stdout under spawn(8)
//! ([`Server::serve_stdio`](policy_proto::Server::serve_stdio)), a unix or TCP socket
//! ([`Server::serve`](policy_proto::Server::serve)), or any stream.
//!
//! The server does the protocol (`SMTPD_POLICY_README`, "Protocol description"): bounded,
//! incremental decoding; one write per reply; a malformed or oversized request gets **no**
//! answer, a warning, and the connection is closed, and Postfix retries; idle and I/O
//! timeouts; a cap on connections ([`MAX_CONNECTIONS`]). This module turns each request into
//! an [`SpfRequest`], asks [`SpfPolicy::decide`], and sends the answer spelled exactly as
//! python-policyd-spf spells it ([`reply`]).

use std::sync::Arc;

use policy_proto::{Action, ConnInfo, Handler, Limits, PolicyRequest, Reply, Server};

use super::{SpfAction, SpfPolicy, SpfRequest};

/// Most connections served at once on a socket: 512. Each Postfix smtpd process holds one
/// policy connection (`default_process_limit` is 100), so this leaves room for several
/// Postfix instances; beyond it, new connections wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 512;

/// The SPF policy as a policy server handler.
#[derive(Debug, Clone)]
pub struct SpfService {
    policy: Arc<SpfPolicy>,
}

impl SpfService {
    /// Serves `policy`.
    pub fn new(policy: Arc<SpfPolicy>) -> Self {
        Self { policy }
    }

    /// The policy.
    pub fn policy(&self) -> &SpfPolicy {
        &self.policy
    }

    /// A [`Server`] for this service with the daemon's limits: policy-proto's defaults, and
    /// at most [`MAX_CONNECTIONS`] connections.
    pub fn server(policy: Arc<SpfPolicy>) -> Server<Self> {
        let mut limits = Limits::default();
        limits.max_connections = MAX_CONNECTIONS;
        Server::new(Self::new(policy)).with_limits(limits)
    }
}

/// The reply for `action`, spelled as python-policyd-spf writes it (`dunno`,
/// `prepend Received-SPF: ...`, `550 5.7.23 ...`, `defer_if_permit 4.7.24 ...`, a
/// restriction class name). Control characters (a line break in an `exp=` explanation) become
/// spaces. `None` when the result is still not something Postfix reads as meant (an empty
/// `Reason_Message`, a pass restriction that is not a restriction name): the caller then
/// closes without a reply, Postfix logs it and applies its default action.
pub fn reply(action: &SpfAction) -> Option<Reply> {
    let value = action
        .to_action_value()
        .replace(|c: char| c.is_control(), " ");
    match action {
        SpfAction::Restriction(name) => Reply::spelled(name)
            .or_else(|_| Reply::restriction_class(name))
            .ok(),
        _ => Reply::spelled(&value).ok(),
    }
}

/// Logs like python-policyd-spf at `debugLevel = 1`: rejects, defers and prepends, with the
/// queue id; `dunno` only at debug level.
fn log_decision(req: &SpfRequest, action: &SpfAction) {
    let qid = if req.queue_id.is_empty() {
        String::new()
    } else {
        format!("{}: ", req.queue_id)
    };
    match action {
        SpfAction::Dunno | SpfAction::DunnoText(_) => {
            tracing::debug!("{qid}dunno (instance {})", req.instance);
        }
        other => tracing::info!("{qid}{}", other.to_action_value()),
    }
}

impl Handler for SpfService {
    /// The decision as an [`Action`] (`None` for a restriction class, which is not one).
    async fn handle(&self, request: PolicyRequest, conn: &ConnInfo) -> Option<Action> {
        self.respond(request, conn).await?.action().cloned()
    }

    async fn respond(&self, request: PolicyRequest, _conn: &ConnInfo) -> Option<Reply> {
        let req = SpfRequest::from_attrs(
            request
                .attributes()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let action = self.policy.decide(&req).await;
        log_decision(&req, &action);
        crate::metrics::with(|m| {
            m.stage(crate::metrics::Stage::Policy);
            let value = action.to_action_value();
            m.policy_action(value.split_whitespace().next().unwrap_or(""));
        });
        let reply = reply(&action);
        if reply.is_none() {
            tracing::error!(
                "not answering {:?}: Postfix would misread it (check Reason_Message and the pass restrictions)",
                action.to_action_value()
            );
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use policy_proto::{ConnEnd, ConnError, DecodeError, MAX_LINE, Peer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::dns::MemoryResolver;
    use crate::spf::policyd::PolicydConfig;

    /// Writes `input` to a server over an in-memory stream, then EOF; returns what came back
    /// and how the connection ended.
    async fn exchange(input: &[u8]) -> (String, Result<ConnEnd, ConnError>) {
        let policy = Arc::new(SpfPolicy::new(
            PolicydConfig::default(),
            Arc::new(MemoryResolver::new()),
        ));
        let server = SpfService::server(policy);
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move { server.serve_connection(theirs, Peer::Stream).await });
        ours.write_all(input).await.unwrap();
        ours.shutdown().await.unwrap();
        let mut out = String::new();
        ours.read_to_string(&mut out).await.unwrap();
        (out, task.await.unwrap())
    }

    #[tokio::test]
    async fn answers_each_request_and_skips_localhost() {
        let input = b"request=smtpd_access_policy\nclient_address=127.0.0.1\nhelo_name=h.example\nsender=u@example.com\nrecipient=r@dest.example\ninstance=1\n\nclient_address=127.0.0.1\ninstance=1\nsender=u@example.com\n\n";
        let (out, end) = exchange(input).await;
        assert_eq!(
            out,
            "action=prepend X-Comment: SPF check N/A for local connections - client-ip=127.0.0.1; helo=h.example; envelope-from=u@example.com; receiver=dest.example \n\naction=dunno\n\n"
        );
        assert_eq!(end.unwrap(), ConnEnd::Eof);
    }

    #[tokio::test]
    async fn oversized_line_gets_no_answer() {
        let mut input = b"sender=".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        input.extend(b"\n\n");
        let (out, end) = exchange(&input).await;
        assert!(
            matches!(
                end,
                Err(ConnError::Malformed(DecodeError::LineTooLong { .. }))
            ),
            "{end:?}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn replies_keep_python_spelling() {
        let r = |a: SpfAction| reply(&a).map(|r| r.to_string());
        assert_eq!(r(SpfAction::Dunno).as_deref(), Some("dunno"));
        assert_eq!(
            r(SpfAction::DunnoText("mock header".into())).as_deref(),
            Some("dunno mock header")
        );
        assert_eq!(
            r(SpfAction::Reject {
                code: "550 5.7.23",
                text: "line\nbreak".into()
            })
            .as_deref(),
            Some("550 5.7.23 line break")
        );
        assert_eq!(
            r(SpfAction::DeferIfPermit {
                code: "defer_if_permit 4.7.24",
                text: "later".into()
            })
            .as_deref(),
            Some("defer_if_permit 4.7.24 later")
        );
        assert_eq!(
            r(SpfAction::Restriction("spf_passed".into())).as_deref(),
            Some("spf_passed")
        );
        assert_eq!(
            r(SpfAction::Restriction("permit".into())).as_deref(),
            Some("permit")
        );
        assert_eq!(
            r(SpfAction::Restriction("OK".into())).as_deref(),
            Some("OK")
        );
        // An empty Reason_Message: `550 5.7.23` alone would be read as all-numeric OK-ish.
        assert_eq!(
            r(SpfAction::Reject {
                code: "550 5.7.23",
                text: String::new()
            }),
            None
        );
        assert_eq!(r(SpfAction::Restriction("hash:/etc/x".into())), None);
    }
}
