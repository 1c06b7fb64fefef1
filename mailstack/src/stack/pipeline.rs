//! One authserv-id over a chain of filters: forged fields out, one `Authentication-Results` in.

use milter_proto::flags::Actions;

use crate::auth_results::{AuthResults, claims_authserv_id};
use crate::dkim::canon::Header;
use crate::filter::{
    Connection, EndOfMessage, Envelope, Filter, Flow, Modification, Needs, Start, Verdict,
};

/// Runs `inner` (usually a [`crate::filter::Chain`] of SPF, DKIM, DMARC and AV) behind one
/// authserv-id:
///
/// - every incoming `Authentication-Results` that claims our authserv-id is removed, whatever
///   its method, comments or folding ([`claims_authserv_id`]); nothing downstream can then take
///   a sender's forged `spf=pass` for ours (and DMARC inside the chain reads SPF and DKIM from
///   the filters' [`crate::filter::AuthFacts`], never from headers);
/// - the filters' own `Authentication-Results` fields are replaced by one field holding every
///   filter's clauses (RFC 8601), inserted at the top;
/// - `Received-SPF` is kept only when asked for ([`Pipeline::received_spf`]).
#[derive(Debug, Clone)]
pub struct Pipeline<F> {
    inner: F,
    authserv_id: Option<String>,
    hostname: String,
    received_spf: bool,
}

/// Per-message state of a [`Pipeline`].
#[derive(Debug)]
pub struct PipelineMessage<M> {
    inner: M,
    id: String,
    seen: u32,
    forged: Vec<u32>,
}

impl<F> Pipeline<F> {
    /// `inner` behind `authserv_id` (`None`: the MTA's name, macro `j`, else `hostname`).
    pub fn new(inner: F, authserv_id: Option<String>, hostname: impl Into<String>) -> Self {
        Self {
            inner,
            authserv_id,
            hostname: hostname.into(),
            received_spf: false,
        }
    }

    /// Keep the SPF filter's `Received-SPF` field (default: only `Authentication-Results`).
    pub fn received_spf(mut self, on: bool) -> Self {
        self.received_spf = on;
        self
    }

    /// The filters inside.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// The authserv-id written and defended for a connection.
    pub fn authserv_id(&self, conn: &Connection) -> String {
        self.authserv_id
            .clone()
            .or_else(|| conn.mta_name.clone())
            .unwrap_or_else(|| self.hostname.clone())
    }

    fn finish(&self, mut v: Verdict, id: &str, forged: &[u32]) -> Verdict {
        if !v.action.delivers() {
            v.modifications.clear();
            return v;
        }
        let keep_spf = self.received_spf;
        let mut mods: Vec<Modification> = forged
            .iter()
            .rev()
            .map(|&index| Modification::Delete {
                name: "Authentication-Results".into(),
                index,
            })
            .collect();
        mods.extend(v.modifications.drain(..).filter(|m| match m {
            Modification::AuthResults(_) => false,
            Modification::Delete { name, .. } => {
                !name.eq_ignore_ascii_case("Authentication-Results")
            }
            Modification::Insert { name, .. } | Modification::Append { name, .. } => {
                keep_spf || !name.eq_ignore_ascii_case("Received-SPF")
            }
        }));
        if !v.auth_results.is_empty() {
            let mut ar = AuthResults::new(id);
            for clause in &v.auth_results {
                ar.push(clause.clone());
            }
            mods.push(Modification::AuthResults(ar.to_milter_value()));
        }
        v.modifications = mods;
        v
    }
}

#[async_trait::async_trait]
impl<F: Filter> Filter for Pipeline<F> {
    type Message = PipelineMessage<F::Message>;

    fn needs(&self) -> Needs {
        let mut n = self.inner.needs();
        // Without them forged results could not be removed nor ours written: an MTA that
        // does not offer both is refused at negotiation (its milter_default_action applies)
        // rather than served half.
        n.actions |= Actions::ADDHDRS | Actions::CHGHDRS;
        n.required_actions |= Actions::ADDHDRS | Actions::CHGHDRS;
        n.headers = true;
        n
    }

    fn connect(&self, conn: &Connection) -> Flow {
        self.inner.connect(conn)
    }

    async fn helo(&self, conn: &Connection) -> Flow {
        self.inner.helo(conn).await
    }

    async fn mail(&self, conn: &Connection, env: &Envelope) -> Start<Self::Message> {
        match self.inner.mail(conn, env).await {
            Start::Message(inner) => Start::Message(PipelineMessage {
                inner,
                id: self.authserv_id(conn),
                seen: 0,
                forged: Vec::new(),
            }),
            Start::Skip => Start::Skip,
            Start::Stop(a) => Start::Stop(a),
        }
    }

    fn rcpt(&self, msg: &mut Self::Message, rcpt: &str) -> Flow {
        self.inner.rcpt(&mut msg.inner, rcpt)
    }

    async fn header(&self, msg: &mut Self::Message, header: &Header) {
        if header
            .name
            .trim()
            .eq_ignore_ascii_case("Authentication-Results")
        {
            msg.seen += 1;
            if claims_authserv_id(&header.value, &msg.id) {
                msg.forged.push(msg.seen);
            }
        }
        self.inner.header(&mut msg.inner, header).await;
    }

    async fn end_of_headers(
        &self,
        msg: &mut Self::Message,
        conn: &Connection,
        env: &Envelope,
    ) -> Flow {
        self.inner.end_of_headers(&mut msg.inner, conn, env).await
    }

    async fn body(&self, msg: &mut Self::Message, chunk: &[u8]) {
        self.inner.body(&mut msg.inner, chunk).await;
    }

    async fn end_of_message(&self, msg: Self::Message, eom: &EndOfMessage<'_>) -> Verdict {
        let v = self.inner.end_of_message(msg.inner, eom).await;
        self.finish(v, &msg.id, &msg.forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth_results::MethodResult;
    use crate::filter::offline::{Outcome, run};
    use crate::filter::{Action, ClientAddr};

    /// A filter that reports a fixed clause and its own AR field, as the drop-ins do.
    struct Fixed;

    #[async_trait::async_trait]
    impl Filter for Fixed {
        type Message = ();
        fn needs(&self) -> Needs {
            Needs::default()
        }
        async fn mail(&self, _: &Connection, _: &Envelope) -> Start<()> {
            Start::Message(())
        }
        async fn end_of_message(&self, _: (), _: &EndOfMessage<'_>) -> Verdict {
            let mut v = Verdict::accept();
            v.auth_results.push(MethodResult::new("spf", "pass"));
            v.modifications
                .push(Modification::AuthResults("own; spf=pass".into()));
            v.modifications.push(Modification::Insert {
                index: 0,
                name: "Received-SPF".into(),
                value: "pass".into(),
            });
            v
        }
    }

    #[tokio::test]
    async fn forged_fields_go_and_one_field_is_written() {
        let p = Pipeline::new(Fixed, Some("mx.example.org".into()), "host");
        let conn = Connection::new("c", ClientAddr::Ip("192.0.2.1".parse().unwrap()));
        let env = Envelope::new("<a@b.example>");
        let msg = b"Authentication-Results: other.example; spf=pass\r\n\
Authentication-Results: (sneaky) MX.example.org;\r\n\tdkim=pass\r\n\
Authentication-Results: mx.example.org; spf=pass\r\n\
From: a@b.example\r\n\r\nbody\r\n";
        let Outcome::Verdict(v) = run(&p, &conn, &env, msg).await else {
            panic!("no verdict");
        };
        assert_eq!(v.action, Action::Accept);
        assert_eq!(
            v.modifications,
            [
                Modification::Delete {
                    name: "Authentication-Results".into(),
                    index: 3
                },
                Modification::Delete {
                    name: "Authentication-Results".into(),
                    index: 2
                },
                Modification::AuthResults("mx.example.org;\n\tspf=pass".into()),
            ]
        );
        let p = p.received_spf(true);
        let Outcome::Verdict(v) = run(&p, &conn, &env, b"From: a@b\r\n\r\n").await else {
            panic!("no verdict");
        };
        assert!(
            matches!(&v.modifications[0], Modification::Insert { name, .. } if name == "Received-SPF")
        );
    }
}
