//! The one shape every mailstack filter has, and the one milter adapter over it.
//!
//! A filter (SPF, DKIM, DMARC, AV, or one of yours) is a shared value built once with
//! `Filter::new(config, deps) -> Result<_, TypedError>` and a per-message state
//! ([`Filter::Message`]). The MTA-facing code calls it on *facts*, never on milter frames:
//!
//! ```text
//!  connect(&Connection) -> Flow          (client address, host name; HELO filled in later)
//!  mail(&Connection, &Envelope) -> Start  (sender, SMTP AUTH login) -> per-message state
//!  rcpt(&mut Message, rcpt)               (recipients, bounded by MAX_RECIPIENTS)
//!  header(&mut Message, &Header)          (each header field, exact bytes)
//!  end_of_headers(&mut Message, ..)
//!  body(&mut Message, chunk)              (body chunks as they stream by)
//!  end_of_message(Message, &EndOfMessage) -> Verdict   (#[must_use])
//! ```
//!
//! A [`Verdict`] is the action ([`Action`]), the header modifications ([`Modification`]),
//! the filter's `Authentication-Results` clauses ([`crate::auth_results::MethodResult`]) and
//! the authentication facts later filters use ([`AuthFacts`]: DMARC reads SPF and DKIM results
//! from there, never from headers a sender can forge).
//!
//! [`Milter`] turns any filter into a [`milter_proto::server::Handler`]; [`apply`] is the one
//! table from verdict to milter reply that every daemon uses. [`Chain`] runs two filters in
//! one pass (the first one's facts reach the second), which is how `mailstackd` composes SPF,
//! DKIM, DMARC and AV.

mod adapter;
mod chain;
mod offline;

use std::net::IpAddr;

use milter_proto::Actions;

use crate::auth_results::MethodResult;
use crate::dkim::canon::Header;
use crate::dmarc::{DkimInput, SpfInput};

pub use adapter::{LiveFilter, Milter, apply};
pub use chain::Chain;
pub use offline::{OFFLINE_CHUNK, OfflineOutcome, apply_to_message, run_offline};

/// Recipients kept per message: Postfix's `smtpd_recipient_limit` default. Further
/// recipients are counted in [`Envelope::rcpts_dropped`] but not kept.
pub const MAX_RECIPIENTS: usize = 1000;

/// Where the SMTP client connected from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAddr {
    /// An IPv4 or IPv6 client.
    Ip(IpAddr),
    /// A local submission (the MTA said family `L` or `U`: sendmail, pickup).
    #[default]
    Local,
    /// The MTA sent an Inet address that does not parse: never treated as local.
    Unparsed(String),
}

/// What is known about the SMTP connection.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Connection {
    /// The client's host name as the MTA resolved it (`[192.0.2.1]` when it did not).
    pub hostname: String,
    /// The client's address.
    pub addr: ClientAddr,
    /// The HELO/EHLO argument (empty before HELO).
    pub helo: String,
    /// The MTA's name (macro `j`), the default authserv-id.
    pub mta_name: Option<String>,
}

impl Connection {
    /// A connection from `addr` with host name `hostname`.
    pub fn new(hostname: impl Into<String>, addr: ClientAddr) -> Self {
        Self {
            hostname: hostname.into(),
            addr,
            ..Self::default()
        }
    }

    /// The client's IP address, if it has one that parsed.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.addr {
            ClientAddr::Ip(ip) => Some(ip),
            _ => None,
        }
    }
}

/// What is known about the message's envelope.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Envelope {
    /// MAIL FROM without angle brackets (empty for the null sender).
    pub sender: String,
    /// The SMTP AUTH login (macro `{auth_authen}`), when the client authenticated.
    pub auth_login: Option<String>,
    /// RCPT TO addresses without angle brackets, at most [`MAX_RECIPIENTS`].
    pub rcpts: Vec<String>,
    /// Recipients beyond [`MAX_RECIPIENTS`], counted only.
    pub rcpts_dropped: usize,
    /// The MTA's queue id (macro `i`), once known.
    pub queue_id: Option<String>,
    /// The macros a filter asked for in [`Needs::macros`] up to MAIL, `(name as asked,
    /// value)`, for those the MTA sent.
    pub macros: Vec<(String, String)>,
}

impl Envelope {
    /// An envelope from `sender` (angle brackets are removed).
    pub fn new(sender: &str) -> Self {
        Self {
            sender: unbracket(sender).to_owned(),
            ..Self::default()
        }
    }

    /// Adds a recipient (angle brackets removed), within [`MAX_RECIPIENTS`].
    pub fn add_rcpt(&mut self, rcpt: &str) {
        if self.rcpts.len() < MAX_RECIPIENTS {
            self.rcpts.push(unbracket(rcpt).to_owned());
        } else {
            self.rcpts_dropped += 1;
        }
    }

    /// Whether the client authenticated with SMTP AUTH.
    pub fn authenticated(&self) -> bool {
        self.auth_login.as_deref().is_some_and(|l| !l.is_empty())
    }

    /// The value of macro `name` (with or without braces), if the MTA sent it.
    pub fn macro_value(&self, name: &str) -> Option<&str> {
        find_macro(&self.macros, name)
    }

    /// The queue id, or `NOQUEUE` as Postfix logs it before one exists.
    pub fn queue_id(&self) -> &str {
        self.queue_id.as_deref().unwrap_or("NOQUEUE")
    }
}

/// The value of macro `name` in `(name, value)` pairs, braces ignored on both sides.
pub fn find_macro<'a>(macros: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let bare = |n: &'a str| n.trim_start_matches('{').trim_end_matches('}');
    let want = name.trim_start_matches('{').trim_end_matches('}');
    macros
        .iter()
        .find(|(n, _)| bare(n) == want)
        .map(|(_, v)| v.as_str())
}

/// `<addr>` → `addr` (and surrounding white space removed).
pub fn unbracket(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(s)
}

/// What a filter asks of the MTA. The adapter turns it into milter negotiation: stages not
/// wanted are switched off (`SMFIP_NO*`), and stages a filter never answers early are
/// negotiated no-reply (`SMFIP_NR_*`) so they cost one write less.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Needs {
    /// Modifications the filter may make.
    pub actions: Actions,
    /// Modifications without which it cannot work (the MTA is refused otherwise).
    pub required_actions: Actions,
    /// Macros per stage, space-separated names. Those asked
    /// for at CONNECT, HELO or MAIL are handed over in [`Envelope::macros`].
    pub macros: Vec<(milter_proto::MacroStage, String)>,
    /// Whether it reads header fields.
    pub headers: bool,
    /// Whether it reads the body.
    pub body: bool,
    /// Whether it reads recipients.
    pub rcpts: bool,
    /// Whether it may stop a message before end of message (at MAIL, RCPT or end of headers).
    pub early_reply: bool,
}

impl Needs {
    /// What two filters run together need.
    pub fn union(mut self, other: Self) -> Self {
        self.actions |= other.actions;
        self.required_actions |= other.required_actions;
        for (stage, names) in other.macros {
            self.macros.push((stage, names));
        }
        self.headers |= other.headers;
        self.body |= other.body;
        self.rcpts |= other.rcpts;
        self.early_reply |= other.early_reply;
        self
    }
}

/// A filter's answer before end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flow {
    /// Go on.
    Continue,
    /// This filter has nothing to do for the rest of the connection (or message): it is not
    /// called again until the next connection (message). Alone, the adapter answers ACCEPT.
    Skip,
    /// Stop here with this action (e.g. SPF `-all` rejected at MAIL FROM).
    Stop(Action),
}

/// What [`Filter::mail`] answers: the per-message state, or no message work.
#[derive(Debug)]
#[non_exhaustive]
pub enum Start<M> {
    /// Follow the message with this state.
    Message(M),
    /// Nothing to do for this message (its verdict is an empty accept).
    Skip,
    /// Stop the message here with this action.
    Stop(Action),
}

/// Where `quarantine` goes when the MTA did not grant `SMFIF_QUARANTINE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// Deliver it anyway (for a policy that only asked; DMARC `p=quarantine`).
    Accept,
    /// Temporary failure: the sender retries, nothing is delivered unchecked (AV's choice).
    Tempfail,
    /// Refuse it.
    Reject,
}

/// What a configured `On-*` option says to do with a message: OpenDKIM's `On-BadSignature`,
/// `On-DNSError`, ... and clamav-milter's `OnClean`, `OnInfected`, `OnFail`, whatever each
/// tool calls the value. Each filter turns it into an [`Action`] with its own reply text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnAction {
    /// Deliver (with the result recorded). OpenDKIM `accept`, clamav-milter `Accept`.
    Accept,
    /// Refuse permanently (5xx). OpenDKIM `reject`, clamav-milter `Reject`.
    Reject,
    /// Refuse temporarily (4xx). OpenDKIM `tempfail`, clamav-milter `Defer`.
    Tempfail,
    /// Accept and drop silently. OpenDKIM `discard`, clamav-milter `Blackhole`.
    Discard,
    /// Accept into the MTA's hold queue. OpenDKIM `quarantine`, clamav-milter `Quarantine`.
    Quarantine,
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Action {
    /// Deliver it (with the verdict's modifications).
    #[default]
    Accept,
    /// Refuse it: with this SMTP reply (`550 5.7.1 ...`), or the MTA's own (`None`).
    Reject(Option<String>),
    /// Refuse it temporarily: with this reply (`451 4.7.0 ...`), or the MTA's own.
    Tempfail(Option<String>),
    /// Accept it and drop it silently.
    Discard,
    /// Accept it into quarantine (Postfix: the hold queue) with this reason.
    Quarantine {
        /// Why (Postfix logs it).
        reason: String,
        /// What to do if the MTA did not grant quarantine.
        fallback: Fallback,
    },
}

impl Action {
    /// How strongly the action stops the message: a combined verdict takes the strongest
    /// (reject over discard over tempfail over quarantine over accept).
    pub fn severity(&self) -> u8 {
        match self {
            Self::Accept => 0,
            Self::Quarantine { .. } => 1,
            Self::Tempfail(_) => 2,
            Self::Discard => 3,
            Self::Reject(_) => 4,
        }
    }

    /// Whether the message is delivered (so header modifications matter).
    pub fn delivers(&self) -> bool {
        matches!(self, Self::Accept | Self::Quarantine { .. })
    }
}

/// One header change. Values are folded with `"\n\t"` and carry no leading space: the adapter
/// adds it when `SMFIP_HDR_LEADSPC` was negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Modification {
    /// Insert a field at `index` (0 = top).
    Insert {
        /// Position among the fields (0 = first).
        index: u32,
        /// Field name.
        name: String,
        /// Field value.
        value: String,
    },
    /// Append a field at the end of the header block.
    Append {
        /// Field name.
        name: String,
        /// Field value.
        value: String,
    },
    /// Delete the `index`-th (1-based) field called `name`. Give several in descending
    /// `index` order so earlier indices stay valid.
    Delete {
        /// Field name.
        name: String,
        /// 1-based occurrence among the fields with this name.
        index: u32,
    },
    /// This filter's own `Authentication-Results` value, inserted at the top when the filter
    /// runs alone (the drop-in's exact text). Run in a [`Chain`] behind one authserv-id, the
    /// clauses of every filter ([`Verdict::auth_results`]) become one field instead.
    AuthResults(String),
}

/// Authentication results one filter hands to the next (DMARC takes its inputs here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthFacts {
    /// SPF for the MAIL FROM identity (for the null sender, `postmaster@HELO`).
    pub spf: Option<SpfInput>,
    /// SPF for the HELO identity.
    pub spf_helo: Option<SpfInput>,
    /// One result per DKIM signature verified, in header order (`Some(vec![])`: verified,
    /// no signature).
    pub dkim: Option<Vec<DkimInput>>,
    /// The ARC chain as validated (by the DMARC filter, [`crate::arc`]); `mailstackd`'s
    /// pipeline seals on it.
    pub arc: Option<crate::arc::ArcOutcome>,
}

impl AuthFacts {
    /// Fills what `self` lacks from `other`.
    pub fn merge(&mut self, other: Self) {
        if self.spf.is_none() {
            self.spf = other.spf;
        }
        if self.spf_helo.is_none() {
            self.spf_helo = other.spf_helo;
        }
        if self.dkim.is_none() {
            self.dkim = other.dkim;
        }
        if self.arc.is_none() {
            self.arc = other.arc;
        }
    }
}

/// A filter's decision for one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a verdict must be applied (see filter::apply)"]
#[non_exhaustive]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// Header changes, applied in order when the message is delivered.
    pub modifications: Vec<Modification>,
    /// `Authentication-Results` clauses (`spf=pass smtp.mailfrom=...`).
    pub auth_results: Vec<MethodResult>,
    /// Results later filters may use.
    pub facts: AuthFacts,
}

impl Verdict {
    /// Accept with no changes.
    pub fn accept() -> Self {
        Self::default()
    }

    /// Only an action, no changes.
    pub fn action(action: Action) -> Self {
        Self {
            action,
            ..Self::default()
        }
    }

    /// Combines two verdicts of one message: the stronger action wins (the first on a tie),
    /// modifications, clauses and facts are kept from both.
    pub fn combine(mut self, other: Self) -> Self {
        if other.action.severity() > self.action.severity() {
            self.action = other.action;
        }
        self.modifications.extend(other.modifications);
        self.auth_results.extend(other.auth_results);
        self.facts.merge(other.facts);
        self
    }
}

/// What [`Filter::end_of_message`] sees besides its own state.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct EndOfMessage<'a> {
    /// The connection.
    pub conn: &'a Connection,
    /// The envelope (queue id filled in).
    pub env: &'a Envelope,
    /// Results of the filters that ran before this one in the same pass.
    pub facts: &'a AuthFacts,
    /// Whether the MTA sends header values with their leading space (`SMFIP_HDR_LEADSPC`).
    pub leadspc: bool,
}

/// The shape every filter has. The value is shared by all connections (`&self`); per-message
/// state lives in [`Filter::Message`]. Every method but [`Filter::end_of_message`] has a
/// default that does nothing.
#[async_trait::async_trait]
pub trait Filter: Send + Sync + 'static {
    /// Per-message state.
    type Message: Send + 'static;

    /// What the filter needs from the MTA.
    fn needs(&self) -> Needs;

    /// A new SMTP connection.
    fn connect(&self, _conn: &Connection) -> Flow {
        Flow::Continue
    }

    /// HELO/EHLO ([`Connection::helo`] is set).
    async fn helo(&self, _conn: &Connection) -> Flow {
        Flow::Continue
    }

    /// MAIL FROM: starts a message.
    async fn mail(&self, conn: &Connection, env: &Envelope) -> Start<Self::Message>;

    /// One recipient (already added to the envelope).
    fn rcpt(&self, _msg: &mut Self::Message, _rcpt: &str) -> Flow {
        Flow::Continue
    }

    /// One header field.
    async fn header(&self, _msg: &mut Self::Message, _header: &Header) {}

    /// The end of the header block. A filter that may answer here (OpenDKIM rejects a
    /// malformed signature at end of headers) says so with [`Needs::early_reply`].
    async fn end_of_headers(
        &self,
        _msg: &mut Self::Message,
        _conn: &Connection,
        _env: &Envelope,
    ) -> Flow {
        Flow::Continue
    }

    /// One body chunk (CRLF line ends).
    async fn body(&self, _msg: &mut Self::Message, _chunk: &[u8]) {}

    /// The end of the message: the verdict.
    async fn end_of_message(&self, msg: Self::Message, eom: &EndOfMessage<'_>) -> Verdict;
}

/// A filter switched off (`None`) does nothing and needs nothing.
#[async_trait::async_trait]
impl<F: Filter> Filter for Option<F> {
    type Message = F::Message;

    fn needs(&self) -> Needs {
        self.as_ref().map(F::needs).unwrap_or_default()
    }

    fn connect(&self, conn: &Connection) -> Flow {
        self.as_ref().map_or(Flow::Skip, |f| f.connect(conn))
    }

    async fn helo(&self, conn: &Connection) -> Flow {
        match self {
            Some(f) => f.helo(conn).await,
            None => Flow::Skip,
        }
    }

    async fn mail(&self, conn: &Connection, env: &Envelope) -> Start<Self::Message> {
        match self {
            Some(f) => f.mail(conn, env).await,
            None => Start::Skip,
        }
    }

    fn rcpt(&self, msg: &mut Self::Message, rcpt: &str) -> Flow {
        self.as_ref().map_or(Flow::Continue, |f| f.rcpt(msg, rcpt))
    }

    async fn header(&self, msg: &mut Self::Message, header: &Header) {
        if let Some(f) = self {
            f.header(msg, header).await;
        }
    }

    async fn end_of_headers(
        &self,
        msg: &mut Self::Message,
        conn: &Connection,
        env: &Envelope,
    ) -> Flow {
        match self {
            Some(f) => f.end_of_headers(msg, conn, env).await,
            None => Flow::Continue,
        }
    }

    async fn body(&self, msg: &mut Self::Message, chunk: &[u8]) {
        if let Some(f) = self {
            f.body(msg, chunk).await;
        }
    }

    async fn end_of_message(&self, msg: Self::Message, eom: &EndOfMessage<'_>) -> Verdict {
        match self {
            Some(f) => f.end_of_message(msg, eom).await,
            None => Verdict::accept(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stronger_action_wins_and_everything_else_is_kept() {
        let q = Action::Quarantine {
            reason: "r".into(),
            fallback: Fallback::Tempfail,
        };
        let a = Verdict {
            action: q.clone(),
            auth_results: vec![MethodResult::new("spf", "pass")],
            ..Verdict::default()
        };
        let b = Verdict {
            action: Action::Accept,
            auth_results: vec![MethodResult::new("dkim", "fail")],
            ..Verdict::default()
        };
        let c = a.clone().combine(b);
        assert_eq!(c.action, q);
        assert_eq!(c.auth_results.len(), 2);
        let r = c.combine(Verdict::action(Action::Reject(Some("550 x".into()))));
        assert_eq!(r.action, Action::Reject(Some("550 x".into())));
        let t = Verdict::action(Action::Tempfail(None)).combine(Verdict::action(Action::Discard));
        assert_eq!(t.action, Action::Discard);
    }

    #[test]
    fn recipients_are_bounded() {
        let mut env = Envelope::new("<a@b.example>");
        assert_eq!(env.sender, "a@b.example");
        for i in 0..MAX_RECIPIENTS + 5 {
            env.add_rcpt(&format!("<r{i}@x.example>"));
        }
        assert_eq!(env.rcpts.len(), MAX_RECIPIENTS);
        assert_eq!(env.rcpts_dropped, 5);
        assert_eq!(env.rcpts[0], "r0@x.example");
    }
}
