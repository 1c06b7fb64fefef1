//! The DMARC filter in the common shape ([`crate::filter::Filter`]): `dmarc-milter` serves it
//! alone through [`crate::filter::Milter`], `mailstackd` runs it in a [`crate::filter::Chain`]
//! behind SPF and DKIM.
//!
//! It skips clients in `IgnoreHosts` (at CONNECT, and again at MAIL: in a chain CONNECT is
//! only advisory) and SMTP AUTH clients at MAIL (`IgnoreAuthenticatedClients`), keeps up to
//! [`super::MAX_HEADER_BYTES`] of header fields; with in-process DKIM it streams the body
//! through the DKIM body hashes (nothing of the body is kept); at end of message it runs
//! [`DmarcFilter::check`] with the results earlier filters handed on
//! ([`crate::filter::EndOfMessage::facts`]).

use super::dkim::DkimStream;
use super::{DmarcFilter, DmarcOutcome, MAX_HEADER_BYTES, MessageFacts};
use crate::arc::ArcVerifier;
use crate::dkim::canon::Header;
use crate::filter::{Connection, EndOfMessage, Envelope, Filter, Flow, Needs, Start, Verdict};
use milter_proto::Actions;

/// What DMARC keeps of one message.
#[derive(Debug, Default)]
pub struct DmarcMessage {
    /// The header fields `(name, value)`, folds joined with `\n`, no leading space.
    headers: Vec<(String, String)>,
    header_bytes: usize,
    /// In-process DKIM: the header block (until end of headers), then the stream.
    dkim_headers: Option<Vec<Header>>,
    dkim: Option<DkimStream>,
    /// ARC validation: the header block (kept to the end: the seals cover ARC fields, the
    /// message signatures any field) and the validator once the headers are complete.
    arc_headers: Option<Vec<Header>>,
    arc: Option<ArcVerifier>,
}

/// A header value as OpenDMARC sees it: folds as bare `\n`, no leading white space.
fn plain_value(h: &Header) -> String {
    String::from_utf8_lossy(&h.value)
        .replace("\r\n", "\n")
        .trim_start()
        .to_owned()
}

impl DmarcFilter {
    fn ignores_connection(&self, conn: &Connection) -> bool {
        self.config().ignores_host(conn.ip(), &conn.hostname)
    }
}

#[async_trait::async_trait]
impl Filter for DmarcFilter {
    type Message = DmarcMessage;

    /// Header fields always; the body only for `DKIMSelfValidate`. It answers only at end
    /// of message, and needs to add fields (quarantine when the MTA grants it).
    fn needs(&self) -> Needs {
        Needs {
            actions: Actions::ADDHDRS | Actions::QUARANTINE,
            required_actions: Actions::ADDHDRS,
            headers: true,
            body: self.wants_message() || self.validates_arc(),
            ..Needs::default()
        }
    }

    fn connect(&self, conn: &Connection) -> Flow {
        if self.ignores_connection(conn) {
            tracing::debug!("DMARC: client {} in IgnoreHosts", conn.hostname);
            return Flow::Skip;
        }
        Flow::Continue
    }

    async fn mail(&self, conn: &Connection, env: &Envelope) -> Start<DmarcMessage> {
        if self.ignores_connection(conn)
            || (self.config().ignore_authenticated_clients && env.authenticated())
        {
            return Start::Skip;
        }
        Start::Message(DmarcMessage {
            dkim_headers: self.wants_message().then(Vec::new),
            arc_headers: self.validates_arc().then(Vec::new),
            ..DmarcMessage::default()
        })
    }

    async fn header(&self, m: &mut DmarcMessage, h: &Header) {
        m.header_bytes += h.name.len() + h.value.len();
        if m.header_bytes > MAX_HEADER_BYTES {
            // An incomplete header block cannot be verified: no DKIM or ARC results then.
            m.dkim_headers = None;
            m.arc_headers = None;
            return;
        }
        if let Some(hs) = &mut m.dkim_headers {
            hs.push(h.clone());
        }
        if let Some(hs) = &mut m.arc_headers {
            hs.push(h.clone());
        }
        m.headers.push((h.name.clone(), plain_value(h)));
    }

    async fn end_of_headers(&self, m: &mut DmarcMessage, _: &Connection, _: &Envelope) -> Flow {
        if let Some(headers) = m.dkim_headers.take() {
            m.dkim = self.start_dkim(headers);
        }
        if let Some(headers) = &m.arc_headers {
            m.arc = Some(self.start_arc(headers));
        }
        Flow::Continue
    }

    async fn body(&self, m: &mut DmarcMessage, chunk: &[u8]) {
        if let Some(d) = m.dkim.as_mut() {
            d.body(chunk);
        }
        if let Some(a) = m.arc.as_mut() {
            a.body(chunk);
        }
    }

    async fn end_of_message(&self, mut m: DmarcMessage, eom: &EndOfMessage<'_>) -> Verdict {
        // A DKIM filter before us already verified: our own stream is not needed.
        let dkim = match m.dkim.take() {
            Some(stream) if eom.facts.dkim.is_none() => Some(self.finish_dkim(stream).await),
            _ => None,
        };
        // ARC: validated here unless a filter before us did.
        let mut prior = eom.facts.clone();
        if let (Some(v), Some(headers), None) = (m.arc.take(), &m.arc_headers, &prior.arc) {
            prior.arc = Some(self.finish_arc(v, headers).await);
        }
        let facts = MessageFacts {
            client_ip: eom.conn.ip(),
            envelope_from: &eom.env.sender,
            helo: &eom.conn.helo,
            rcpts: &eom.env.rcpts,
            headers: &m.headers,
            dkim_results: dkim.as_deref(),
            raw_message: None,
            job_id: eom.env.queue_id.as_deref(),
            mta_name: eom.conn.mta_name.as_deref(),
            prior: Some(&prior),
        };
        let outcome = self.check(&facts).await;
        log_outcome(eom.env.queue_id(), &outcome);
        outcome.verdict
    }
}

fn log_outcome(job: &str, o: &DmarcOutcome) {
    let action = &o.verdict.action;
    match (&o.evaluation, &o.skipped) {
        (Some(e), _) => tracing::info!(
            "{job}: DMARC {} for {} (p={} spf_aligned={} dkim_aligned={}) -> {action:?}",
            e.result,
            e.from_domain,
            e.policy,
            e.spf_aligned,
            e.dkim_aligned,
        ),
        (None, Some(why)) => tracing::info!("{job}: DMARC not evaluated: {why} -> {action:?}"),
        (None, None) => {}
    }
}
