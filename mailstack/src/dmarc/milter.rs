//! The DMARC filter as a [`milter_proto::server::Handler`].
//!
//! One [`DmarcMilter`] per MTA connection (build them from a shared [`DmarcFilter`] in
//! [`milter_proto::server::serve`]'s factory). It skips clients in `IgnoreHosts` at CONNECT
//! and SMTP AUTH clients at MAIL (`IgnoreAuthenticatedClients`), keeps the envelope and up to
//! [`super::MAX_HEADER_BYTES`] of header fields; with in-process DKIM it streams the body
//! through the DKIM body hashes (nothing of the body is kept); at end of message it runs
//! [`DmarcFilter::check`].
//!
//! Verdict to milter reply (the one table): `Accept` → ACCEPT after inserting the header
//! fields at the top (OpenDMARC answers SMFIS_ACCEPT at end of message); `Reject(text)` → REPLYCODE `text` (`550 5.7.1 ...`);
//! `RejectDefault` → REJECT; `Tempfail` →
//! TEMPFAIL; `Quarantine(reason)` → QUARANTINE `reason`, header fields, CONTINUE.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use milter_proto::command::ConnAddr;
use milter_proto::flags::{Actions, Protocol};
use milter_proto::macros::stage;
use milter_proto::negotiate::Needs;
use milter_proto::server::{Context, Decision, Handler};

use super::dkim::DkimStream;
use super::{Action, DmarcFilter, MAX_HEADER_BYTES, MessageFacts, Verdict};
use crate::dkim::canon::Header;

/// Per-message state.
#[derive(Debug, Default)]
struct Message {
    envelope_from: String,
    rcpts: Vec<String>,
    headers: Vec<(String, String)>,
    header_bytes: usize,
    /// In-process DKIM: the header block (until end of headers), then the stream.
    dkim_headers: Option<Vec<Header>>,
    dkim: Option<DkimStream>,
}

/// The DMARC milter handler for one MTA connection.
#[derive(Debug)]
pub struct DmarcMilter {
    filter: Arc<DmarcFilter>,
    client_ip: Option<IpAddr>,
    helo: String,
    msg: Option<Message>,
}

impl DmarcMilter {
    /// A handler over `filter`.
    pub fn new(filter: Arc<DmarcFilter>) -> Self {
        Self {
            filter,
            client_ip: None,
            helo: String::new(),
            msg: None,
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `<addr>` → `addr`.
fn unbracket(b: &[u8]) -> String {
    let s = text(b);
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(s)
        .to_owned()
}

#[async_trait::async_trait]
impl Handler for DmarcMilter {
    fn needs(&self) -> Needs {
        let mut protocol = Protocol::NOUNKNOWN;
        if self.filter.wants_message() {
            // Exact header bytes for simple header canonicalization.
            protocol |= Protocol::HDR_LEADSPC;
        }
        Needs {
            actions: Actions::ADDHDRS | Actions::QUARANTINE,
            protocol,
            macros: vec![
                (stage::CONNECT, Bytes::from_static(b"j")),
                (stage::ENVFROM, Bytes::from_static(b"i {auth_authen}")),
                (stage::EOM, Bytes::from_static(b"i")),
            ],
            required_actions: Actions::ADDHDRS,
            ..Needs::default()
        }
    }

    async fn connect(&mut self, _ctx: &mut Context, hostname: &[u8], addr: &ConnAddr) -> Decision {
        self.client_ip = match addr {
            ConnAddr::Inet { address, .. } | ConnAddr::Inet6 { address, .. } => {
                text(address).parse().ok()
            }
            _ => None,
        };
        if self
            .filter
            .skips_client(self.client_ip, &text(hostname), None)
        {
            tracing::debug!("DMARC: client {} in IgnoreHosts", text(hostname));
            return Decision::Accept;
        }
        Decision::Continue
    }

    async fn helo(&mut self, _ctx: &mut Context, helo: &[u8]) -> Decision {
        self.helo = text(helo);
        Decision::Continue
    }

    async fn mail(&mut self, ctx: &mut Context, sender: &[u8], _args: &[Bytes]) -> Decision {
        let login = ctx.macro_value("{auth_authen}").map(|b| text(b));
        if self.filter.config().ignore_authenticated_clients
            && login.as_deref().is_some_and(|l| !l.is_empty())
        {
            self.msg = None;
            return Decision::Accept;
        }
        self.msg = Some(Message {
            envelope_from: unbracket(sender),
            dkim_headers: self.filter.wants_message().then(Vec::new),
            ..Message::default()
        });
        Decision::Continue
    }

    async fn rcpt(&mut self, _ctx: &mut Context, rcpt: &[u8], _args: &[Bytes]) -> Decision {
        if let Some(m) = &mut self.msg {
            m.rcpts.push(unbracket(rcpt));
        }
        Decision::Continue
    }

    async fn header(&mut self, ctx: &mut Context, name: &[u8], value: &[u8]) -> Decision {
        let Some(m) = &mut self.msg else {
            return Decision::Continue;
        };
        m.header_bytes += name.len() + value.len();
        if m.header_bytes > MAX_HEADER_BYTES {
            // An incomplete header block cannot be verified: no DKIM results then.
            m.dkim_headers = None;
            return Decision::Continue;
        }
        if let Some(h) = &mut m.dkim_headers {
            let leadspc = ctx.negotiated().protocol.contains(Protocol::HDR_LEADSPC);
            h.push(Header::from_milter(name, value, leadspc));
        }
        m.headers
            .push((text(name), text(value).trim_start().to_owned()));
        Decision::Continue
    }

    async fn eoh(&mut self, _ctx: &mut Context) -> Decision {
        if let Some(m) = &mut self.msg
            && let Some(headers) = m.dkim_headers.take()
        {
            m.dkim = self.filter.start_dkim(headers);
        }
        Decision::Continue
    }

    async fn body(&mut self, _ctx: &mut Context, chunk: &Bytes) -> Decision {
        if let Some(d) = self.msg.as_mut().and_then(|m| m.dkim.as_mut()) {
            d.body(chunk);
        }
        Decision::Continue
    }

    async fn eom(&mut self, ctx: &mut Context) -> Decision {
        let Some(mut m) = self.msg.take() else {
            return Decision::Continue;
        };
        let dkim = match m.dkim.take() {
            Some(stream) => Some(self.filter.finish_dkim(stream).await),
            None => None,
        };
        let job = ctx.macro_value("i").map(|b| text(b));
        let mta = ctx.macro_value("j").map(|b| text(b));
        let facts = MessageFacts {
            client_ip: self.client_ip,
            envelope_from: &m.envelope_from,
            helo: &self.helo,
            rcpts: &m.rcpts,
            headers: &m.headers,
            dkim_results: dkim.as_deref(),
            raw_message: None,
            job_id: job.as_deref(),
            mta_name: mta.as_deref(),
        };
        let verdict = self.filter.check(&facts).await;
        log_verdict(job.as_deref().unwrap_or("NOQUEUE"), &verdict);
        apply(ctx, verdict)
    }

    async fn abort(&mut self, _ctx: &mut Context) {
        self.msg = None;
    }
}

fn log_verdict(job: &str, v: &Verdict) {
    match (&v.evaluation, &v.skipped) {
        (Some(e), _) => tracing::info!(
            "{job}: DMARC {} for {} (p={} spf_aligned={} dkim_aligned={}) -> {:?}",
            e.result,
            e.from_domain,
            e.policy,
            e.spf_aligned,
            e.dkim_aligned,
            v.action
        ),
        (None, Some(why)) => tracing::info!("{job}: DMARC not evaluated: {why} -> {:?}", v.action),
        (None, None) => {}
    }
}

/// The verdict-to-reply table (see the module docs).
fn apply(ctx: &mut Context, v: Verdict) -> Decision {
    let lead = if ctx.negotiated().protocol.contains(Protocol::HDR_LEADSPC) {
        " "
    } else {
        ""
    };
    let add_headers = |ctx: &mut Context| {
        for (name, value) in v.headers.iter().rev() {
            if let Err(e) = ctx.insert_header(0, name, &format!("{lead}{value}")) {
                tracing::warn!("DMARC: cannot add {name}: {e}");
            }
        }
    };
    match v.action {
        Action::Accept => {
            add_headers(ctx);
            Decision::Accept
        }
        Action::Reject(reply) => Decision::ReplyCode(Bytes::from(reply)),
        Action::RejectDefault => Decision::Reject,
        Action::Tempfail => Decision::Tempfail,
        Action::Quarantine(reason) => {
            if let Err(e) = ctx.quarantine(&reason) {
                tracing::warn!("DMARC: cannot quarantine ({e}); accepting");
            }
            add_headers(ctx);
            Decision::Continue
        }
    }
}
