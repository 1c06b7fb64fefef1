//! One authserv-id over a chain of filters: forged fields out, one `Authentication-Results` in.

use milter_proto::Actions;

use crate::arc::ArcSealer;
use crate::auth_results::{AuthResults, claims_authserv_id};
use crate::dkim::canon::{BodyHasher, Header};
use crate::dkim::config::Canon;
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
/// - `Received-SPF` is kept only when asked for ([`Pipeline::received_spf`]);
/// - with an ARC sealer ([`Pipeline::arc_sealer`]), a delivered message gets a new ARC set
///   on top of the chain the DMARC filter validated ([`crate::filter::AuthFacts::arc`]),
///   its `ARC-Authentication-Results` being the one field written here.
#[derive(Debug, Clone)]
pub struct Pipeline<F> {
    inner: F,
    authserv_id: Option<String>,
    hostname: String,
    received_spf: bool,
    sealer: Option<ArcSealer>,
}

/// Per-message state of a [`Pipeline`].
#[derive(Debug)]
pub struct PipelineMessage<M> {
    inner: M,
    id: String,
    seen: u32,
    forged: Vec<u32>,
    seal: Option<SealInput>,
}

/// What sealing needs of a message: its header block as received and its relaxed body
/// hash (the seal's `ARC-Message-Signature` is always `relaxed/relaxed`).
#[derive(Debug)]
struct SealInput {
    headers: Vec<Header>,
    bytes: usize,
    body: Option<BodyHasher>,
}

impl<F> Pipeline<F> {
    /// `inner` behind `authserv_id` (`None`: the MTA's name, macro `j`, else `hostname`).
    pub fn new(inner: F, authserv_id: Option<String>, hostname: impl Into<String>) -> Self {
        Self {
            inner,
            authserv_id,
            hostname: hostname.into(),
            received_spf: false,
            sealer: None,
        }
    }

    /// Seal delivered messages with `sealer` (RFC 8617 §5.1, as the last hop of the ADMD).
    /// Sealing needs the chain validated by a DMARC filter inside (`ARCSeal` turns that on):
    /// without it, nothing is sealed.
    pub fn arc_sealer(mut self, sealer: Option<ArcSealer>) -> Self {
        self.sealer = sealer;
        self
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

    /// Adds our ARC set to a delivered verdict (see [`Pipeline::arc_sealer`]).
    fn seal(&self, mut v: Verdict, id: &str, input: Option<SealInput>) -> Verdict {
        let (Some(sealer), Some(input)) = (&self.sealer, input) else {
            return v;
        };
        let (Some(chain), Some(body), true) = (&v.facts.arc, input.body, v.action.delivers())
        else {
            tracing::debug!("ARC: not sealed (no validated chain, or not delivered)");
            return v;
        };
        let mut ar = AuthResults::new(id);
        for clause in &v.auth_results {
            ar.push(clause.clone());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match sealer.seal(
            &input.headers,
            &body.finish().0,
            chain,
            &ar.to_milter_value(),
            now,
        ) {
            Ok(set) => {
                for (name, value) in set.fields() {
                    v.modifications.push(Modification::Insert {
                        index: 0,
                        name: name.to_owned(),
                        value: value.to_owned(),
                    });
                }
            }
            Err(e) => tracing::info!("ARC: not sealed: {e}"),
        }
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
        n.body |= self.sealer.is_some();
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
                seal: self.sealer.as_ref().map(|_| SealInput {
                    headers: Vec::new(),
                    bytes: 0,
                    body: None,
                }),
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
        if let Some(s) = &mut msg.seal {
            s.bytes += header.name.len() + header.value.len();
            s.headers.push(header.clone());
        }
        if msg
            .seal
            .as_ref()
            .is_some_and(|s| s.bytes > crate::dmarc::MAX_HEADER_BYTES)
        {
            // The DMARC filter stops keeping headers at the same bound: no chain, no seal.
            msg.seal = None;
        }
        self.inner.header(&mut msg.inner, header).await;
    }

    async fn end_of_headers(
        &self,
        msg: &mut Self::Message,
        conn: &Connection,
        env: &Envelope,
    ) -> Flow {
        if let Some(s) = &mut msg.seal {
            s.body = Some(BodyHasher::new(
                Canon::Relaxed,
                &aws_lc_rs::digest::SHA256,
                None,
            ));
        }
        self.inner.end_of_headers(&mut msg.inner, conn, env).await
    }

    async fn body(&self, msg: &mut Self::Message, chunk: &[u8]) {
        if let Some(b) = msg.seal.as_mut().and_then(|s| s.body.as_mut()) {
            b.update(chunk);
        }
        self.inner.body(&mut msg.inner, chunk).await;
    }

    async fn end_of_message(&self, msg: Self::Message, eom: &EndOfMessage<'_>) -> Verdict {
        let v = self.inner.end_of_message(msg.inner, eom).await;
        let v = self.finish(v, &msg.id, &msg.forged);
        self.seal(v, &msg.id, msg.seal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth_results::MethodResult;
    use crate::filter::{Action, ClientAddr};
    use crate::filter::{OfflineOutcome, run_offline};

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
        let OfflineOutcome::Verdict(v) = run_offline(&p, &conn, &env, msg).await else {
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
        let OfflineOutcome::Verdict(v) = run_offline(&p, &conn, &env, b"From: a@b\r\n\r\n").await
        else {
            panic!("no verdict");
        };
        assert!(
            matches!(&v.modifications[0], Modification::Insert { name, .. } if name == "Received-SPF")
        );
    }
}
