//! Any [`Filter`] as a milter handler, and the one verdict-to-reply table.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use milter_proto::ConnAddr;
use milter_proto::MacroStage;
use milter_proto::Protocol;
use milter_proto::server::{Context, Decision, Handler};

use super::{
    Action, ClientAddr, Connection, EndOfMessage, Envelope, Fallback, Filter, Flow, Modification,
    Needs, Start, Verdict,
};
use crate::dkim::canon::Header;
use crate::metrics::{self, Stage};

/// Macros the adapter itself reads: `j` (the MTA's name) at CONNECT, `i` (queue id) and
/// `{auth_authen}` (SMTP AUTH login) at MAIL, `i` again at end of message (Postfix assigns
/// the queue id late with `smtpd_delay_open_until_valid_rcpt`).
const OWN_MACROS: [(MacroStage, &str); 3] = [
    (MacroStage::Connect, "j"),
    (MacroStage::EnvFrom, "i {auth_authen}"),
    (MacroStage::Eom, "i"),
];

/// One MTA connection served by filter `F` (see [`Milter::factory`] for
/// `milter_proto::server::serve`).
pub struct Milter<F: Filter> {
    filter: Arc<F>,
    prepared: Arc<Prepared>,
    conn: Connection,
    env: Envelope,
    msg: Option<F::Message>,
    /// When MAIL FROM arrived (only with metrics on), for the message duration.
    started: Option<std::time::Instant>,
}

impl<F: Filter> std::fmt::Debug for Milter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Milter")
            .field("conn", &self.conn)
            .field("env", &self.env)
            .field("in_message", &self.msg.is_some())
            .finish()
    }
}

/// What a filter's [`Needs`] come to, worked out once per filter rather than per connection.
#[derive(Debug)]
struct Prepared {
    /// The milter negotiation.
    needs: milter_proto::Needs,
    /// The macro names the filter asked for up to MAIL (handed over in the envelope).
    wanted: Vec<String>,
}

impl Prepared {
    fn of<F: Filter>(filter: &F) -> Arc<Self> {
        let n = filter.needs();
        let wanted = n
            .macros
            .iter()
            .filter(|(st, _)| *st <= MacroStage::EnvFrom)
            .flat_map(|(_, names)| names.split_whitespace().map(str::to_owned))
            .collect();
        Arc::new(Self {
            needs: milter_needs(&n),
            wanted,
        })
    }
}

impl<F: Filter> Milter<F> {
    /// A handler for one connection over the shared `filter`.
    pub fn new(filter: Arc<F>) -> Self {
        let prepared = Prepared::of(filter.as_ref());
        Self::with(filter, prepared)
    }

    fn with(filter: Arc<F>, prepared: Arc<Prepared>) -> Self {
        Self {
            filter,
            prepared,
            conn: Connection::default(),
            env: Envelope::default(),
            msg: None,
            started: None,
        }
    }

    /// A handler factory for `milter_proto::server::serve` (the filter's needs are worked out
    /// once, here).
    pub fn factory(filter: Arc<F>) -> impl Fn() -> Self + Send + Sync + 'static {
        let prepared = Prepared::of(filter.as_ref());
        move || Self::with(filter.clone(), prepared.clone())
    }
}

/// The filter a daemon serves, replaceable while it runs (a configuration reload): each MTA
/// connection takes the filter in force when it starts ([`Milter::live_factory`]) and keeps it
/// to its end, so connections and messages in flight finish on the old configuration while new
/// connections get the new one. The old filter is dropped when its last connection ends.
pub struct LiveFilter<F: Filter> {
    current: std::sync::RwLock<(Arc<F>, Arc<Prepared>)>,
}

impl<F: Filter> std::fmt::Debug for LiveFilter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFilter").finish_non_exhaustive()
    }
}

impl<F: Filter> LiveFilter<F> {
    /// Serves `filter` until [`replace`](Self::replace).
    pub fn new(filter: Arc<F>) -> Self {
        let prepared = Prepared::of(filter.as_ref());
        Self {
            current: std::sync::RwLock::new((filter, prepared)),
        }
    }

    /// Puts `filter` in force for the connections that start from now on.
    pub fn replace(&self, filter: Arc<F>) {
        let prepared = Prepared::of(filter.as_ref());
        // A poisoned lock only means a panic elsewhere while holding it; the pair is
        // replaced whole, so it is never half-written.
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = (filter, prepared);
    }

    /// The filter in force.
    pub fn current(&self) -> Arc<F> {
        self.pair().0
    }

    fn pair(&self) -> (Arc<F>, Arc<Prepared>) {
        let slot = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (slot.0.clone(), slot.1.clone())
    }
}

impl<F: Filter> Milter<F> {
    /// A handler factory for `milter_proto::server::serve` over a [`LiveFilter`]: each new
    /// connection gets the filter in force at that moment.
    pub fn live_factory(live: Arc<LiveFilter<F>>) -> impl Fn() -> Self + Send + Sync + 'static {
        move || {
            let (filter, prepared) = live.pair();
            Self::with(filter, prepared)
        }
    }
}

/// The milter negotiation for a filter's [`Needs`]: exact header bytes (`HDR_LEADSPC`), no
/// UNKNOWN or DATA events, header, end-of-header and body events without a reply, and the
/// stages the filter does not read switched off.
pub(crate) fn milter_needs(n: &Needs) -> milter_proto::Needs {
    let mut protocol = Protocol::HDR_LEADSPC
        | Protocol::NOUNKNOWN
        | Protocol::NODATA
        | Protocol::NR_HDR
        | Protocol::NR_BODY;
    if !n.headers {
        protocol |= Protocol::NOHDRS;
    }
    if !n.body {
        protocol |= Protocol::NOBODY;
    }
    if !n.early_reply {
        protocol |= Protocol::NR_EOH;
        if !n.rcpts {
            protocol |= Protocol::NR_RCPT;
        }
    }
    let mut per_stage: Vec<(MacroStage, Vec<&str>)> = Vec::new();
    let own = OWN_MACROS.iter().map(|&(st, names)| (st, names));
    let theirs = n.macros.iter().map(|(st, names)| (*st, names.as_str()));
    for (st, names) in own.chain(theirs) {
        let at = match per_stage.iter().position(|(s, _)| *s == st) {
            Some(i) => i,
            None => {
                per_stage.push((st, Vec::new()));
                per_stage.len() - 1
            }
        };
        if let Some((_, list)) = per_stage.get_mut(at) {
            for name in names.split_whitespace() {
                if !list.contains(&name) {
                    list.push(name);
                }
            }
        }
    }
    milter_proto::Needs {
        actions: n.actions,
        protocol,
        macros: per_stage
            .into_iter()
            .map(|(s, l)| (s, Bytes::from(l.join(" "))))
            .collect(),
        required_actions: n.required_actions,
        ..milter_proto::Needs::default()
    }
}

/// Counts `stage` and the reply `d` (metrics on only), and hands `d` back.
fn counted(stage: Stage, d: Decision) -> Decision {
    metrics::with(|m| {
        m.stage(stage);
        m.reply(reply_name(&d));
    });
    d
}

/// [`counted`] for a stage whose reply the MTA may have switched off (`no_reply`
/// negotiated): then only the stage is counted.
fn counted_if(ctx: &Context, no_reply: Protocol, stage: Stage, d: Decision) -> Decision {
    if ctx.negotiated().protocol.contains(no_reply) {
        metrics::with(|m| m.stage(stage));
        d
    } else {
        counted(stage, d)
    }
}

/// The `reply` label of a decision.
fn reply_name(d: &Decision) -> &'static str {
    match d {
        Decision::Continue => "continue",
        Decision::Accept => "accept",
        Decision::Reject => "reject",
        Decision::Tempfail => "tempfail",
        Decision::Discard => "discard",
        Decision::ReplyCode(r) if r.first() == Some(&b'4') => "replycode_4xx",
        Decision::ReplyCode(_) => "replycode_5xx",
        _ => "other",
    }
}

/// The `action` label of an action.
fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Accept => "accept",
        Action::Reject(_) => "reject",
        Action::Tempfail(_) => "tempfail",
        Action::Discard => "discard",
        Action::Quarantine { .. } => "quarantine",
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn macro_text(ctx: &Context, name: &str) -> Option<String> {
    ctx.macro_value(name)
        .map(|v| lossy(v))
        .filter(|v| !v.is_empty())
}

/// The client address from CONNECT: an Inet address that does not parse is
/// [`ClientAddr::Unparsed`], never local.
pub(crate) fn client_addr(addr: &ConnAddr) -> ClientAddr {
    match addr {
        ConnAddr::Inet { address, .. } | ConnAddr::Inet6 { address, .. } => {
            let text = lossy(address);
            match text.trim_start_matches("IPv6:").parse::<IpAddr>() {
                Ok(ip) => ClientAddr::Ip(ip.to_canonical()),
                Err(_) => ClientAddr::Unparsed(text),
            }
        }
        _ => ClientAddr::Local,
    }
}

/// Counts a message's action, its `Authentication-Results` clauses and, when it is
/// delivered, the header modifications it asks for.
fn count_verdict(m: &metrics::Metrics, v: &Verdict) {
    m.action(action_name(&v.action));
    for c in &v.auth_results {
        m.auth_result(&c.method, &c.result);
    }
    if v.action.delivers() {
        for md in &v.modifications {
            m.modification(match md {
                Modification::Insert { .. } => "insert",
                Modification::Append { .. } => "append",
                Modification::Delete { .. } => "delete",
                Modification::AuthResults(_) => "auth_results",
            });
        }
    }
}

/// An action as the reply to a stage before end of message. Quarantine is only possible
/// at end of message: earlier it continues.
fn early_decision(action: Action) -> Decision {
    match action {
        Action::Accept => Decision::Accept,
        Action::Reject(Some(r)) => Decision::ReplyCode(Bytes::from(r)),
        Action::Reject(None) => Decision::Reject,
        Action::Tempfail(Some(r)) => Decision::ReplyCode(Bytes::from(r)),
        Action::Tempfail(None) => Decision::Tempfail,
        Action::Discard => Decision::Discard,
        Action::Quarantine { .. } => Decision::Continue,
    }
}

fn flow_decision(flow: Flow) -> Decision {
    match flow {
        Flow::Continue => Decision::Continue,
        Flow::Skip => Decision::Accept,
        Flow::Stop(a) => early_decision(a),
    }
}

/// The verdict-to-milter table, used by every daemon:
///
/// | action | reply | modifications |
/// |---|---|---|
/// | accept | ACCEPT | applied in order |
/// | quarantine | QUARANTINE, then ACCEPT | applied; without the QUARANTINE action granted, [`Fallback`] decides (AV: tempfail, never delivered unchecked) |
/// | reject | REPLYCODE with the text, or REJECT | none |
/// | tempfail | REPLYCODE with the text, or TEMPFAIL | none |
/// | discard | DISCARD | none |
///
/// Values get their leading space when `SMFIP_HDR_LEADSPC` was negotiated; an
/// [`Modification::AuthResults`] is inserted at the top.
pub fn apply(ctx: &mut Context, verdict: Verdict) -> Decision {
    let Verdict {
        action,
        modifications,
        ..
    } = verdict;
    match action {
        Action::Quarantine { reason, fallback } => {
            if let Err(e) = ctx.quarantine(&reason) {
                match fallback {
                    Fallback::Accept => tracing::warn!("cannot quarantine ({e}); delivering"),
                    Fallback::Tempfail => {
                        tracing::warn!("cannot quarantine ({e}); tempfail instead");
                        return Decision::ReplyCode(Bytes::from_static(
                            b"451 4.7.1 message held for review could not be quarantined",
                        ));
                    }
                    Fallback::Reject => {
                        tracing::warn!("cannot quarantine ({e}); rejecting instead");
                        return Decision::Reject;
                    }
                }
            }
        }
        Action::Accept => {}
        other => return early_decision(other),
    }
    let lead = if ctx.negotiated().protocol.contains(Protocol::HDR_LEADSPC) {
        " "
    } else {
        ""
    };
    for m in modifications {
        let r = match &m {
            Modification::Insert { index, name, value } => {
                ctx.insert_header(*index, name, &format!("{lead}{value}"))
            }
            Modification::Append { name, value } => ctx.add_header(name, &format!("{lead}{value}")),
            Modification::Delete { name, index } => ctx.delete_header(name, *index),
            Modification::AuthResults(value) => {
                ctx.insert_header(0, "Authentication-Results", &format!("{lead}{value}"))
            }
        };
        if let Err(e) = r {
            tracing::warn!("cannot apply {m:?}: {e}");
        }
    }
    Decision::Accept
}

#[async_trait::async_trait]
impl<F: Filter> Handler for Milter<F> {
    fn needs(&self) -> milter_proto::Needs {
        self.prepared.needs.clone()
    }

    async fn connect(&mut self, ctx: &mut Context, hostname: &[u8], addr: &ConnAddr) -> Decision {
        self.conn = Connection::new(lossy(hostname), client_addr(addr));
        self.conn.mta_name = macro_text(ctx, "j");
        counted(
            Stage::Connect,
            flow_decision(self.filter.connect(&self.conn)),
        )
    }

    async fn helo(&mut self, _ctx: &mut Context, helo: &[u8]) -> Decision {
        self.conn.helo = lossy(helo);
        counted(
            Stage::Helo,
            flow_decision(self.filter.helo(&self.conn).await),
        )
    }

    async fn mail(&mut self, ctx: &mut Context, sender: &[u8], _args: &[Bytes]) -> Decision {
        self.env = Envelope::new(&lossy(sender));
        self.env.auth_login = macro_text(ctx, "{auth_authen}");
        self.env.queue_id = macro_text(ctx, "i");
        self.env.macros = self
            .prepared
            .wanted
            .iter()
            .filter_map(|n| macro_text(ctx, n).map(|v| (n.clone(), v)))
            .collect();
        if self.conn.mta_name.is_none() {
            self.conn.mta_name = macro_text(ctx, "j");
        }
        self.started = metrics::get().map(|_| std::time::Instant::now());
        let d = match self.filter.mail(&self.conn, &self.env).await {
            Start::Message(m) => {
                self.msg = Some(m);
                Decision::Continue
            }
            Start::Skip => {
                self.msg = None;
                Decision::Accept
            }
            Start::Stop(a) => {
                self.msg = None;
                metrics::with(|m| m.action(action_name(&a)));
                early_decision(a)
            }
        };
        counted(Stage::Mail, d)
    }

    async fn rcpt(&mut self, ctx: &mut Context, rcpt: &[u8], _args: &[Bytes]) -> Decision {
        let rcpt = lossy(rcpt);
        self.env.add_rcpt(&rcpt);
        let d = match &mut self.msg {
            Some(m) => flow_decision(self.filter.rcpt(m, super::unbracket(&rcpt))),
            None => Decision::Continue,
        };
        counted_if(ctx, Protocol::NR_RCPT, Stage::Rcpt, d)
    }

    async fn header(&mut self, ctx: &mut Context, name: &[u8], value: &[u8]) -> Decision {
        if let Some(m) = &mut self.msg {
            let leadspc = ctx.negotiated().protocol.contains(Protocol::HDR_LEADSPC);
            let h = Header::from_milter(name, value, leadspc);
            self.filter.header(m, &h).await;
        }
        metrics::with(|m| m.stage(Stage::Header));
        Decision::Continue
    }

    async fn eoh(&mut self, ctx: &mut Context) -> Decision {
        let d = match &mut self.msg {
            Some(m) => match self.filter.end_of_headers(m, &self.conn, &self.env).await {
                Flow::Skip => Decision::Continue,
                Flow::Stop(a) => {
                    self.msg = None;
                    metrics::with(|m| m.action(action_name(&a)));
                    early_decision(a)
                }
                Flow::Continue => Decision::Continue,
            },
            None => Decision::Continue,
        };
        counted_if(ctx, Protocol::NR_EOH, Stage::Eoh, d)
    }

    async fn body(&mut self, _ctx: &mut Context, chunk: &Bytes) -> Decision {
        if let Some(m) = &mut self.msg {
            self.filter.body(m, chunk).await;
        }
        metrics::with(|m| m.stage(Stage::Body));
        Decision::Continue
    }

    async fn eom(&mut self, ctx: &mut Context) -> Decision {
        let Some(m) = self.msg.take() else {
            return counted(Stage::Eom, Decision::Accept);
        };
        if let Some(q) = macro_text(ctx, "i") {
            self.env.queue_id = Some(q);
        }
        let facts = super::AuthFacts::default();
        let eom = EndOfMessage {
            conn: &self.conn,
            env: &self.env,
            facts: &facts,
            leadspc: ctx.negotiated().protocol.contains(Protocol::HDR_LEADSPC),
        };
        let verdict = self.filter.end_of_message(m, &eom).await;
        if let Some(mx) = metrics::get() {
            count_verdict(mx, &verdict);
        }
        let d = counted(Stage::Eom, apply(ctx, verdict));
        if let (Some(mx), Some(t)) = (metrics::get(), self.started.take()) {
            mx.message_duration(t.elapsed());
        }
        d
    }

    async fn abort(&mut self, _ctx: &mut Context) {
        metrics::with(|m| m.stage(Stage::Abort));
        self.started = None;
        self.msg = None;
        self.env = Envelope::default();
    }

    async fn close(&mut self, _ctx: &mut Context) {
        metrics::with(|m| m.stage(Stage::Close));
        self.started = None;
        self.msg = None;
        self.env = Envelope::default();
        self.conn = Connection::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparsed_inet_addresses_are_not_local() {
        let a = ConnAddr::Inet {
            port: 25,
            address: Bytes::from_static(b"not-an-ip"),
        };
        assert_eq!(client_addr(&a), ClientAddr::Unparsed("not-an-ip".into()));
        let a = ConnAddr::Inet6 {
            port: 25,
            address: Bytes::from_static(b"IPv6:::ffff:192.0.2.1"),
        };
        assert_eq!(
            client_addr(&a),
            ClientAddr::Ip("192.0.2.1".parse().unwrap())
        );
        assert_eq!(client_addr(&ConnAddr::Unknown), ClientAddr::Local);
    }

    /// A connection keeps the filter it started with; the next one gets the replacement,
    /// and the old filter is freed once its last connection ends.
    #[test]
    fn live_filter_connections_keep_theirs_new_ones_get_the_replacement() {
        let build = || {
            let cfg = crate::stack::StackConfig::embedded().unwrap();
            Arc::new(
                cfg.build(Arc::new(crate::dns::MemoryResolver::new()), None, "mx")
                    .unwrap(),
            )
        };
        let (old, new) = (build(), build());
        let live = Arc::new(LiveFilter::new(old.clone()));
        let make = Milter::live_factory(live.clone());
        let first = make();
        live.replace(new.clone());
        let second = make();
        assert!(Arc::ptr_eq(&first.filter, &old));
        assert!(Arc::ptr_eq(&second.filter, &new));
        assert!(Arc::ptr_eq(&live.current(), &new));
        let weak = Arc::downgrade(&old);
        drop((old, first));
        assert!(
            weak.upgrade().is_none(),
            "the old filter outlived its connections"
        );
    }

    #[test]
    fn needs_merge_macros_per_stage_and_switch_off_unread_stages() {
        let n = Needs {
            macros: vec![
                (MacroStage::EnvFrom, "{auth_type} i".into()),
                (MacroStage::Eom, "i".into()),
            ],
            headers: true,
            ..Needs::default()
        };
        let m = milter_needs(&n);
        assert!(m.protocol.contains(Protocol::NOBODY));
        assert!(!m.protocol.contains(Protocol::NOHDRS));
        let envfrom = m
            .macros
            .iter()
            .find(|(s, _)| *s == MacroStage::EnvFrom)
            .unwrap();
        assert_eq!(&envfrom.1[..], b"i {auth_authen} {auth_type}");
        let eom = m
            .macros
            .iter()
            .find(|(s, _)| *s == MacroStage::Eom)
            .unwrap();
        assert_eq!(&eom.1[..], b"i");
    }
}
