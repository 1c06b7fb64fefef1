//! The filter-side session state machine as a plain value: feed it each decoded command, it
//! says whether a reply is due, or that the command is out of order.
//!
//! ```text
//!  AwaitOptNeg --OPTNEG--> Connection --CONNECT/HELO/UNKNOWN--> Connection
//!                              |   ^                                  
//!                            MAIL  | BODYEOB answered / ABORT
//!                              v   |                                  
//!                  Message: RCPT* DATA? HEADER* EOH? BODY* BODYEOB
//!  QUIT --> Closed        QUIT_NC --> Connection (new SMTP connection, no new OPTNEG)
//! ```
//!
//! Out-of-order rule (one rule): inside a message the stages MAIL < RCPT < DATA < HEADER < EOH
//! < BODY never go backwards, MAIL only starts a message, DATA and EOH come at most once;
//! CONNECT and HELO only outside a message; OPTNEG only first. Anything else is
//! [`ProtocolError::OutOfOrder`]: answer with the configured default (tempfail) and close.
//! MACRO, ABORT and UNKNOWN are accepted anywhere after OPTNEG.
//!
//! Header limits: at most [`HeaderLimits::max_count`] HEADER commands and
//! [`HeaderLimits::max_bytes`] bytes of names and values per message (defaults
//! [`DEFAULT_MAX_HEADERS`], [`DEFAULT_MAX_HEADER_BYTES`]); the command that exceeds one is
//! [`ProtocolError::TooManyHeaders`] or [`ProtocolError::HeadersTooLarge`], handled like an
//! out-of-order command. The counters restart at MAIL.
//!
//! Macros are kept per stage in [`Session::macros`] (see [`Macros`] for their lifetime):
//! a message's macros stay readable while its end of message is answered and are dropped at the
//! next command.

use crate::ApiMisuse;
use crate::command::Command;
use crate::flags::{Actions, Protocol};
use crate::frame::DEFAULT_MAX_FRAME_LEN;
use crate::macros::{DEFAULT_MAX_MACRO_BYTES, Macros, STAGES, pair_bytes};
use crate::negotiate::{Needs, NegotiateError, Negotiated};
use crate::reply::Reply;

/// Why a command was refused by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The command is not allowed in the current state (see the module's rule).
    #[error("milter command {cmd:?} out of order")]
    OutOfOrder {
        /// The command byte.
        cmd: char,
    },
    /// A command arrived after QUIT.
    #[error("milter command after QUIT")]
    Closed,
    /// The message has more header fields than [`HeaderLimits::max_count`].
    #[error("milter message has more than {max} header fields")]
    TooManyHeaders {
        /// The configured limit.
        max: u32,
    },
    /// The message's header names and values add up to more than [`HeaderLimits::max_bytes`].
    #[error("milter message has more than {max} bytes of header fields")]
    HeadersTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// The macros kept on the connection would add up to more than the session's cap
    /// ([`crate::macros::DEFAULT_MAX_MACRO_BYTES`] by default).
    #[error("milter macros exceed {max} bytes on this connection")]
    MacrosTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// OPTNEG could not be agreed (the MTA lacks something the filter requires): close
    /// without an answer, the MTA awaits an OPTNEG, not a verdict.
    #[error(transparent)]
    Negotiate(#[from] NegotiateError),
}

/// Default for [`HeaderLimits::max_count`]: 1,000 header fields per message. Real mail carries
/// tens; Postfix itself has no count limit but stops forwarding loops at `hopcount_limit` (50
/// `Received:` fields), so 1,000 leaves room for long trace, ARC and DKIM chains while
/// bounding the work a handler does per message.
pub const DEFAULT_MAX_HEADERS: u32 = 1_000;

/// Default for [`HeaderLimits::max_bytes`]: 1 MiB of header names and values per message, ten
/// times Postfix's `header_size_limit` (102,400 bytes, the most it keeps of one header field).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 1024 * 1024;

/// How many header fields, and how many bytes of them, one message may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeaderLimits {
    /// Most HEADER commands per message.
    pub max_count: u32,
    /// Most bytes of header names plus values per message.
    pub max_bytes: usize,
}

impl Default for HeaderLimits {
    /// [`DEFAULT_MAX_HEADERS`] and [`DEFAULT_MAX_HEADER_BYTES`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES)
    }
}

impl HeaderLimits {
    /// At most `max_count` fields and `max_bytes` bytes of names and values per message.
    pub fn new(max_count: u32, max_bytes: usize) -> Self {
        Self {
            max_count,
            max_bytes,
        }
    }
}

/// Every limit a [`Session`] enforces on what the MTA sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionLimits {
    /// Header fields and their bytes per message.
    pub headers: HeaderLimits,
    /// Bytes of macro names and values kept at once (default
    /// [`crate::macros::DEFAULT_MAX_MACRO_BYTES`]); a MACRO packet over it is
    /// [`ProtocolError::MacrosTooLarge`].
    pub max_macro_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self::new(HeaderLimits::default(), DEFAULT_MAX_MACRO_BYTES)
    }
}

impl SessionLimits {
    /// `headers` per message and `max_macro_bytes` of macros kept at once.
    pub fn new(headers: HeaderLimits, max_macro_bytes: usize) -> Self {
        Self {
            headers,
            max_macro_bytes,
        }
    }
}

/// What the caller must do after a command (see [`Session::handle`]).
#[must_use = "a step says what to send and whether to close"]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// OPTNEG was accepted: send `reply` now, and from now on accept frames of up to
    /// `max_frame_len` bytes (the agreed `MDS_*` size; also [`Session::max_frame_len`]).
    Negotiated {
        /// The OPTNEG answer.
        reply: Reply,
        /// Largest length field to accept from the MTA from now on.
        max_frame_len: u32,
    },
    /// The filter must answer this command (the handler's decision).
    Reply,
    /// No answer is due (`NR_*` stages, MACRO, ABORT, QUIT_NC).
    NoReply,
    /// QUIT: send nothing and close the connection.
    Close,
}

impl Step {
    /// Whether a reply must be sent for the command (the OPTNEG answer or a decision).
    pub fn reply_due(&self) -> bool {
        matches!(self, Self::Negotiated { .. } | Self::Reply)
    }

    /// Whether the session is over and the connection must be closed.
    pub fn close(&self) -> bool {
        matches!(self, Self::Close)
    }
}

/// A stage inside a message, in the order the MTA sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum MessageStage {
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
}

impl MessageStage {
    /// The stage of a message command and whether it may repeat.
    fn of(cmd: &Command) -> Option<(Self, bool)> {
        Some(match cmd {
            Command::Mail { .. } => (Self::Mail, false),
            Command::Rcpt { .. } => (Self::Rcpt, true),
            Command::Data => (Self::Data, false),
            Command::Header { .. } => (Self::Header, true),
            Command::Eoh => (Self::Eoh, false),
            Command::Body(_) => (Self::Body, true),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitOptNeg,
    Connection,
    /// In a message; the last stage seen.
    Message(MessageStage),
    Closed,
}

/// What [`Session::negotiated`] lends before OPTNEG: version 2, nothing agreed.
static NOT_NEGOTIATED: Negotiated = Negotiated {
    version: crate::negotiate::MIN_PROTOCOL_VERSION,
    actions: Actions::empty(),
    protocol: Protocol::empty(),
    macros: Vec::new(),
};

/// One milter connection's position in the protocol, filter side: negotiation, command order,
/// limits, macros. The one place the negotiated options live; drivers borrow them.
#[derive(Debug, Clone)]
pub struct Session {
    state: State,
    needs: Needs,
    negotiated: Option<Negotiated>,
    macros: Macros,
    /// The last command ended a message: drop its macros at the next command.
    message_done: bool,
    limits: SessionLimits,
    /// Header fields and their bytes in the current message.
    headers: u32,
    header_bytes: usize,
}

impl Default for Session {
    /// A session asking for nothing ([`Needs::default`]) with the default limits.
    fn default() -> Self {
        Self::new(Needs::default(), SessionLimits::default())
    }
}

impl Session {
    /// A session awaiting OPTNEG that will negotiate `needs` and refuse input beyond `limits`.
    pub fn new(needs: Needs, limits: SessionLimits) -> Self {
        Self {
            state: State::AwaitOptNeg,
            needs,
            negotiated: None,
            macros: Macros::default(),
            message_done: false,
            limits,
            headers: 0,
            header_bytes: 0,
        }
    }

    /// Count a header field against the limits (`MAIL` restarts the counts).
    fn count_header(&mut self, cmd: &Command) -> Result<(), ProtocolError> {
        let limits = self.limits.headers;
        match cmd {
            Command::Mail { .. } => (self.headers, self.header_bytes) = (0, 0),
            Command::Header { name, value } => {
                let count = self.headers.saturating_add(1);
                if count > limits.max_count {
                    let max = limits.max_count;
                    return Err(ProtocolError::TooManyHeaders { max });
                }
                let bytes = (self.header_bytes)
                    .saturating_add(name.len())
                    .saturating_add(value.len());
                if bytes > limits.max_bytes {
                    let max = limits.max_bytes;
                    return Err(ProtocolError::HeadersTooLarge { max });
                }
                (self.headers, self.header_bytes) = (count, bytes);
            }
            _ => {}
        }
        Ok(())
    }

    /// What this session asks for in negotiation.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// What was agreed in OPTNEG; before it, version 2 with no actions and no options.
    pub fn negotiated(&self) -> &Negotiated {
        self.negotiated.as_ref().unwrap_or(&NOT_NEGOTIATED)
    }

    /// Whether OPTNEG was answered.
    pub fn is_negotiated(&self) -> bool {
        self.negotiated.is_some()
    }

    /// Largest length field to accept from the MTA now ([`DEFAULT_MAX_FRAME_LEN`] until
    /// OPTNEG agrees an `MDS_*` size).
    pub fn max_frame_len(&self) -> u32 {
        self.negotiated
            .as_ref()
            .map_or(DEFAULT_MAX_FRAME_LEN, Negotiated::max_frame_len)
    }

    /// Whether a modification may be sent: the action it needs
    /// ([`Reply::required_action`]) was agreed. Not a modification: `Ok`.
    ///
    /// # Errors
    ///
    /// [`ApiMisuse::NotNegotiated`] naming the missing action.
    pub fn check_modification(&self, reply: &Reply) -> Result<(), ApiMisuse> {
        match reply.required_action() {
            Some(a) if !self.negotiated().actions.contains(a) => Err(ApiMisuse::NotNegotiated(a)),
            _ => Ok(()),
        }
    }

    /// The macros received so far (see the module doc for when they are cleared).
    pub fn macros(&self) -> &Macros {
        &self.macros
    }

    /// Whether a message transaction is open.
    pub fn in_message(&self) -> bool {
        matches!(self.state, State::Message(_))
    }

    /// Refuse a MACRO packet that would take the macros kept past the byte cap (checked
    /// before the state changes, so a refused packet leaves the session as it was).
    fn check_macros(&self, cmd: &Command) -> Result<(), ProtocolError> {
        let Command::Macro {
            command: stage,
            pairs,
        } = cmd
        else {
            return Ok(());
        };
        if !STAGES.contains(stage) {
            return Ok(());
        }
        let others = self.macros.bytes_besides(*stage, self.message_done);
        let new = pair_bytes(pairs);
        let max = self.limits.max_macro_bytes;
        if others.saturating_add(new) > max {
            return Err(ProtocolError::MacrosTooLarge { max });
        }
        Ok(())
    }

    fn keep_macros(&mut self, cmd: &Command) {
        if std::mem::take(&mut self.message_done) {
            self.macros.clear_message();
        }
        match cmd {
            // A stage no event has is ignored, as libmilter does.
            Command::Macro { command: stage, .. } if !STAGES.contains(stage) => {}
            Command::Macro {
                command: stage,
                pairs,
            } => self.macros.set(*stage, pairs.clone()),
            Command::Abort => self.macros.clear_message(),
            Command::QuitNc => self.macros.clear(),
            Command::BodyEob(_) => self.message_done = true,
            _ => {}
        }
    }

    /// Advance on `cmd`. OPTNEG is negotiated here against the session's [`Needs`]: the step
    /// carries the answer to send and the new frame limit.
    ///
    /// # Errors
    ///
    /// [`ProtocolError`] for a command out of order, after QUIT, beyond a limit, or an OPTNEG
    /// that cannot be agreed ([`ProtocolError::Negotiate`], to be answered by closing). The
    /// session is unchanged by a refused command except after a refused OPTNEG (then closed).
    pub fn handle(&mut self, cmd: &Command) -> Result<Step, ProtocolError> {
        let out_of_order = || ProtocolError::OutOfOrder {
            cmd: char::from(cmd.code()),
        };
        let next = match (self.state, cmd) {
            (State::Closed, _) => return Err(ProtocolError::Closed),
            (
                State::AwaitOptNeg,
                Command::OptNeg {
                    version,
                    actions,
                    protocol,
                },
            ) => {
                return match Negotiated::negotiate(*version, *actions, *protocol, &self.needs) {
                    Ok(n) => {
                        let step = Step::Negotiated {
                            reply: n.reply(),
                            max_frame_len: n.max_frame_len(),
                        };
                        self.negotiated = Some(n);
                        self.state = State::Connection;
                        Ok(step)
                    }
                    Err(e) => {
                        self.state = State::Closed;
                        Err(ProtocolError::Negotiate(e))
                    }
                };
            }
            (State::AwaitOptNeg, _) | (_, Command::OptNeg { .. }) => return Err(out_of_order()),
            (s, Command::Macro { .. } | Command::Unknown(_)) => s,
            (_, Command::Abort) => State::Connection,
            (_, Command::Quit) => State::Closed,
            (_, Command::QuitNc) => State::Connection,
            (State::Connection, Command::Connect { .. } | Command::Helo(_)) => State::Connection,
            (State::Connection, Command::Mail { .. }) => State::Message(MessageStage::Mail),
            (State::Message(_), Command::BodyEob(_)) => State::Connection,
            (State::Message(last), c) => match MessageStage::of(c) {
                Some((stage, repeatable)) if stage > last || (repeatable && stage == last) => {
                    State::Message(stage)
                }
                _ => return Err(out_of_order()),
            },
            _ => return Err(out_of_order()),
        };
        self.count_header(cmd)?;
        self.check_macros(cmd)?;
        self.state = next;
        self.keep_macros(cmd);
        Ok(if next == State::Closed {
            Step::Close
        } else if self.negotiated().expects_reply(cmd) {
            Step::Reply
        } else {
            Step::NoReply
        })
    }
}

/// Why the MTA side refused what the filter sent, or a command it was asked to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MtaError {
    /// The OPTNEG answer asks for more than was offered, or a version below
    /// [`crate::negotiate::MIN_PROTOCOL_VERSION`] (Postfix drops such a milter).
    #[error("milter negotiation: {what} (offered {offered:#x}, asked {asked:#x})")]
    Negotiation {
        /// What exceeded the offer: "version", "actions" or "protocol".
        what: &'static str,
        /// What we offered.
        offered: u32,
        /// What the milter asked.
        asked: u32,
    },
    /// A reply that is not valid for the command it answers (e.g. a modification before end
    /// of message, SKIP when not negotiated, a modification whose action was not negotiated).
    #[error("milter sent reply {reply:?} to command {cmd:?}, which does not allow it")]
    UnexpectedReply {
        /// The command byte answered.
        cmd: char,
        /// The reply byte.
        reply: char,
    },
    /// A reply arrived while no command awaited one.
    #[error("milter sent reply {reply:?} while no command awaited one")]
    Unsolicited {
        /// The reply byte.
        reply: char,
    },
    /// The caller asked to send a command out of turn: before OPTNEG was answered, OPTNEG
    /// twice, anything while a reply is still owed, or anything after QUIT.
    #[error("milter command {cmd:?} cannot be sent now")]
    OutOfTurn {
        /// The command byte.
        cmd: char,
    },
}

/// What the MTA side waits for after sending a command (see [`MtaSession::send`]).
#[must_use = "the expectation says whether to read replies"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expect {
    /// Nothing: MACRO, ABORT, QUIT, QUIT_NC, an `NR_*` stage.
    Nothing,
    /// One decision reply (after any PROGRESS).
    Reply,
    /// End of message: modifications and PROGRESS, then one decision reply.
    EndOfMessage,
}

/// A reply as the MTA side classifies it (see [`MtaSession::receive`]).
#[must_use = "a final reply ends the wait"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// OPTNEG accepted: [`MtaSession::negotiated`] holds the agreement.
    Negotiated,
    /// PROGRESS: restart the timeout and keep waiting.
    Progress,
    /// A modification (end of message only): keep waiting for the decision.
    Modification,
    /// The decision: the command is answered.
    Final,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MtaState {
    /// OPTNEG not sent yet.
    Start,
    /// OPTNEG sent, its answer awaited.
    Offered,
    /// Negotiated, no reply owed.
    Ready,
    /// A reply to this command (its byte) is owed.
    Awaiting(u8),
    Closed,
}

/// The MTA side of one milter connection as a plain value: the offer, the check of the
/// filter's OPTNEG answer, and which reply may follow which command under the agreement.
/// Drivers (the tokio `client` of feature `tokio`, a test over blocking sockets) send what it
/// says and feed it every reply.
#[derive(Debug, Clone)]
pub struct MtaSession {
    version: u32,
    actions: Actions,
    protocol: Protocol,
    negotiated: Option<Negotiated>,
    state: MtaState,
}

impl MtaSession {
    /// A session that will offer `version`, `actions` and `protocol`.
    pub fn new(version: u32, actions: Actions, protocol: Protocol) -> Self {
        Self {
            version,
            actions,
            protocol,
            negotiated: None,
            state: MtaState::Start,
        }
    }

    /// The OPTNEG to send first; its answer is then awaited.
    pub fn offer(&mut self) -> Command {
        self.state = MtaState::Offered;
        Command::OptNeg {
            version: self.version,
            actions: self.actions,
            protocol: self.protocol,
        }
    }

    /// What the filter asked for, once its OPTNEG answer was accepted; before, version 2 with
    /// nothing agreed.
    pub fn negotiated(&self) -> &Negotiated {
        self.negotiated.as_ref().unwrap_or(&NOT_NEGOTIATED)
    }

    /// Whether the filter wants this event (not negotiated away with `NO*`).
    pub fn sends(&self, cmd: &Command) -> bool {
        self.negotiated().sends(cmd)
    }

    /// Whether a SKIP reply to a body chunk is allowed (`SMFIP_SKIP` agreed).
    pub fn may_skip(&self) -> bool {
        self.negotiated().protocol.contains(Protocol::SKIP)
    }

    /// Whether a reply is owed for a command sent.
    pub fn awaiting(&self) -> bool {
        matches!(self.state, MtaState::Awaiting(_) | MtaState::Offered)
    }

    /// Record that `cmd` is being sent (after OPTNEG's answer; one at a time while a reply is
    /// owed) and say what to wait for.
    ///
    /// # Errors
    ///
    /// [`MtaError::OutOfTurn`] for OPTNEG (use [`MtaSession::offer`]), a command before
    /// negotiation, while a reply is owed, or after QUIT.
    pub fn send(&mut self, cmd: &Command) -> Result<Expect, MtaError> {
        let code = cmd.code();
        if self.state != MtaState::Ready || matches!(cmd, Command::OptNeg { .. }) {
            return Err(MtaError::OutOfTurn {
                cmd: char::from(code),
            });
        }
        if matches!(cmd, Command::Quit) {
            self.state = MtaState::Closed;
            return Ok(Expect::Nothing);
        }
        if !self.negotiated().expects_reply(cmd) {
            return Ok(Expect::Nothing);
        }
        self.state = MtaState::Awaiting(code);
        Ok(if matches!(cmd, Command::BodyEob(_)) {
            Expect::EndOfMessage
        } else {
            Expect::Reply
        })
    }

    /// Check a reply from the filter against the command awaiting it.
    ///
    /// # Errors
    ///
    /// [`MtaError::Negotiation`] for an OPTNEG answer beyond the offer (or below version 2),
    /// [`MtaError::UnexpectedReply`] for a reply the awaited command does not allow,
    /// [`MtaError::Unsolicited`] when no reply is owed.
    pub fn receive(&mut self, r: &Reply) -> Result<Received, MtaError> {
        let cmd = match self.state {
            MtaState::Offered => return self.accept_optneg(r),
            MtaState::Awaiting(cmd) => cmd,
            _ => {
                return Err(MtaError::Unsolicited {
                    reply: char::from(r.code()),
                });
            }
        };
        let bad = || MtaError::UnexpectedReply {
            cmd: char::from(cmd),
            reply: char::from(r.code()),
        };
        let received = match r {
            Reply::Progress => Received::Progress,
            Reply::Continue
            | Reply::Accept
            | Reply::Reject
            | Reply::Tempfail
            | Reply::Discard
            | Reply::ReplyCode(_)
            | Reply::Shutdown
            | Reply::ConnFail => Received::Final,
            Reply::Skip if cmd == b'B' && self.may_skip() => Received::Final,
            Reply::Skip | Reply::OptNeg { .. } | Reply::SetSymList { .. } => return Err(bad()),
            m => match m.required_action() {
                Some(a) if cmd == b'E' && self.negotiated().actions.contains(a) => {
                    Received::Modification
                }
                _ => return Err(bad()),
            },
        };
        if received == Received::Final {
            self.state = MtaState::Ready;
        }
        Ok(received)
    }

    fn accept_optneg(&mut self, r: &Reply) -> Result<Received, MtaError> {
        let Reply::OptNeg {
            version,
            actions,
            protocol,
            macros,
        } = r
        else {
            return Err(MtaError::UnexpectedReply {
                cmd: 'O',
                reply: char::from(r.code()),
            });
        };
        let check = |what, offered: u32, asked: u32, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(MtaError::Negotiation {
                    what,
                    offered,
                    asked,
                })
            }
        };
        let ok = (crate::negotiate::MIN_PROTOCOL_VERSION..=self.version).contains(version);
        check("version", self.version, *version, ok)?;
        let ok = self.actions.contains(*actions);
        check("actions", self.actions.bits(), actions.bits(), ok)?;
        let ok = self.protocol.contains(*protocol);
        check("protocol", self.protocol.bits(), protocol.bits(), ok)?;
        self.negotiated = Some(Negotiated {
            version: *version,
            actions: *actions,
            protocol: *protocol,
            macros: macros.clone(),
        });
        self.state = MtaState::Ready;
        Ok(Received::Negotiated)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::command::ConnAddr;
    use crate::negotiate::MIN_PROTOCOL_VERSION;

    fn optneg() -> Command {
        Command::OptNeg {
            version: 6,
            actions: Actions::all(),
            protocol: Protocol::all(),
        }
    }
    fn message() -> Vec<Command> {
        let e = Bytes::new;
        vec![
            Command::Macro {
                command: b'M',
                pairs: vec![],
            },
            Command::Mail {
                sender: e(),
                args: vec![],
            },
            Command::Rcpt {
                rcpt: e(),
                args: vec![],
            },
            Command::Rcpt {
                rcpt: e(),
                args: vec![],
            },
            Command::Data,
            Command::Header {
                name: e(),
                value: e(),
            },
            Command::Header {
                name: e(),
                value: e(),
            },
            Command::Eoh,
            Command::Body(e()),
            Command::Body(e()),
            Command::BodyEob(e()),
        ]
    }

    #[test]
    fn two_messages_abort_quit_nc_and_quit() {
        let mut s = Session::default();
        assert!(s.handle(&optneg()).unwrap().reply_due());
        let connect = Command::Connect {
            hostname: Bytes::new(),
            addr: ConnAddr::Unknown,
        };
        assert!(s.handle(&connect).unwrap().reply_due());
        for c in message() {
            let _ = s.handle(&c).unwrap();
        }
        assert!(!s.in_message());
        assert!(!s.handle(&Command::Abort).unwrap().reply_due());
        for c in message().iter().take(4) {
            let _ = s.handle(c).unwrap();
        }
        assert!(s.in_message());
        let _ = s.handle(&Command::Abort).unwrap();
        assert!(!s.in_message());
        let _ = s.handle(&Command::QuitNc).unwrap();
        let _ = s.handle(&connect).unwrap();
        assert!(s.handle(&Command::Quit).unwrap().close());
        assert_eq!(s.handle(&Command::Abort), Err(ProtocolError::Closed));
    }

    #[test]
    fn out_of_order_commands_are_refused() {
        let mut s = Session::default();
        assert!(s.handle(&Command::Data).is_err());
        let _ = s.handle(&optneg()).unwrap();
        assert!(s.handle(&Command::Data).is_err());
        assert!(s.handle(&optneg()).is_err());
        let _ = s
            .handle(&Command::Mail {
                sender: Bytes::new(),
                args: vec![],
            })
            .unwrap();
        let _ = s.handle(&Command::Eoh).unwrap();
        assert_eq!(
            s.handle(&Command::Data),
            Err(ProtocolError::OutOfOrder { cmd: 'T' })
        );
        assert!(s.handle(&Command::Eoh).is_err());
        assert!(s.handle(&Command::Helo(Bytes::new())).is_err());
    }

    #[test]
    fn nr_stages_expect_no_reply() {
        let needs = Needs {
            protocol: Protocol::NR_MAIL,
            ..Needs::default()
        };
        let mut s = Session::new(needs, SessionLimits::default());
        let Step::Negotiated { reply, .. } = s.handle(&optneg()).unwrap() else {
            panic!("OPTNEG must negotiate");
        };
        assert!(matches!(
            reply,
            Reply::OptNeg {
                protocol: Protocol::NR_MAIL,
                ..
            }
        ));
        assert_eq!(s.negotiated().protocol, Protocol::NR_MAIL);
        let step = s
            .handle(&Command::Mail {
                sender: Bytes::new(),
                args: vec![],
            })
            .unwrap();
        assert!(!step.reply_due());
        assert!(
            s.handle(&Command::BodyEob(Bytes::new()))
                .unwrap()
                .reply_due()
        );
    }

    #[test]
    fn header_limits_count_per_message() {
        let header = |v: &'static [u8]| Command::Header {
            name: Bytes::from_static(b"X"),
            value: Bytes::from_static(v),
        };
        let mail = Command::Mail {
            sender: Bytes::new(),
            args: vec![],
        };
        let mut s = Session::new(
            Needs::default(),
            SessionLimits::new(HeaderLimits::new(2, 10), DEFAULT_MAX_MACRO_BYTES),
        );
        let _ = s.handle(&optneg()).unwrap();
        for _ in 0..2 {
            // Two messages: the counts restart at MAIL.
            let _ = s.handle(&mail).unwrap();
            let _ = s.handle(&header(b"1234")).unwrap();
            let _ = s.handle(&header(b"1234")).unwrap();
            assert_eq!(
                s.handle(&header(b"")),
                Err(ProtocolError::TooManyHeaders { max: 2 })
            );
            let _ = s.handle(&Command::Abort).unwrap();
        }
        let _ = s.handle(&mail).unwrap();
        let _ = s.handle(&header(b"12345678")).unwrap();
        assert_eq!(
            s.handle(&header(b"1")),
            Err(ProtocolError::HeadersTooLarge { max: 10 })
        );
    }

    #[test]
    fn refused_negotiation_closes_the_session() {
        let needs = Needs {
            required_actions: Actions::CHGFROM,
            ..Needs::default()
        };
        let mut s = Session::new(needs, SessionLimits::default());
        let offer = Command::OptNeg {
            version: 6,
            actions: Actions::ADDHDRS,
            protocol: Protocol::all(),
        };
        assert!(matches!(
            s.handle(&offer),
            Err(ProtocolError::Negotiate(
                NegotiateError::MissingActions { .. }
            ))
        ));
        assert!(!s.is_negotiated());
        assert_eq!(s.handle(&Command::Abort), Err(ProtocolError::Closed));
    }

    #[test]
    fn negotiated_frame_limit_follows_mds() {
        let needs = Needs {
            protocol: Protocol::MDS_1M,
            ..Needs::default()
        };
        let mut s = Session::new(needs, SessionLimits::default());
        assert_eq!(s.max_frame_len(), DEFAULT_MAX_FRAME_LEN);
        match s.handle(&optneg()).unwrap() {
            Step::Negotiated { max_frame_len, .. } => {
                assert_eq!(max_frame_len, crate::frame::MAX_FRAME_LEN_1M);
                assert_eq!(s.max_frame_len(), max_frame_len);
            }
            other => panic!("{other:?}"),
        }
        // The modification table: a header change needs CHGHDRS, not agreed here.
        let chg = Reply::ChgHeader {
            index: 1,
            name: Bytes::new(),
            value: Bytes::new(),
        };
        assert_eq!(
            s.check_modification(&chg),
            Err(ApiMisuse::NotNegotiated(Actions::CHGHDRS))
        );
        assert_eq!(s.check_modification(&Reply::Continue), Ok(()));
    }

    fn answer(version: u32, actions: Actions, protocol: Protocol) -> Reply {
        Reply::OptNeg {
            version,
            actions,
            protocol,
            macros: vec![],
        }
    }

    fn mta(answer: &Reply) -> Result<MtaSession, MtaError> {
        let mut m = MtaSession::new(6, Actions::ADDHDRS | Actions::CHGBODY, Protocol::all());
        assert!(matches!(m.offer(), Command::OptNeg { version: 6, .. }));
        assert!(m.awaiting());
        assert_eq!(m.receive(answer)?, Received::Negotiated);
        Ok(m)
    }

    #[test]
    fn mta_refuses_answers_beyond_the_offer() {
        for (r, what) in [
            (answer(1, Actions::empty(), Protocol::empty()), "version"),
            (answer(7, Actions::empty(), Protocol::empty()), "version"),
            (answer(6, Actions::CHGFROM, Protocol::empty()), "actions"),
        ] {
            match mta(&r) {
                Err(MtaError::Negotiation { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{r:?}: {other:?}"),
            }
        }
        assert!(matches!(
            mta(&Reply::Continue),
            Err(MtaError::UnexpectedReply {
                cmd: 'O',
                reply: 'c'
            })
        ));
        let mut m = MtaSession::new(MIN_PROTOCOL_VERSION, Actions::empty(), Protocol::NR_HDR);
        let _ = m.offer();
        let r = answer(2, Actions::empty(), Protocol::NR_HDR | Protocol::NR_BODY);
        assert!(matches!(
            m.receive(&r),
            Err(MtaError::Negotiation {
                what: "protocol",
                ..
            })
        ));
    }

    #[test]
    fn mta_tracks_which_reply_may_follow_which_command() {
        let agreed = answer(6, Actions::ADDHDRS, Protocol::NR_HDR | Protocol::NOHELO);
        let mut m = mta(&agreed).unwrap();
        assert!(!m.sends(&Command::Helo(Bytes::new())));
        assert!(!m.may_skip());
        let header = Command::Header {
            name: Bytes::new(),
            value: Bytes::new(),
        };
        assert_eq!(m.send(&header), Ok(Expect::Nothing));
        let add = Reply::AddHeader {
            name: Bytes::new(),
            value: Bytes::new(),
        };
        // Nothing is owed: any reply is unsolicited.
        assert_eq!(
            m.receive(&Reply::Continue),
            Err(MtaError::Unsolicited { reply: 'c' })
        );
        assert_eq!(m.send(&Command::Eoh), Ok(Expect::Reply));
        // One command at a time while a reply is owed.
        assert_eq!(
            m.send(&Command::Data),
            Err(MtaError::OutOfTurn { cmd: 'T' })
        );
        assert_eq!(m.receive(&Reply::Progress), Ok(Received::Progress));
        // A modification before end of message is refused.
        assert_eq!(
            m.receive(&add),
            Err(MtaError::UnexpectedReply {
                cmd: 'N',
                reply: 'h'
            })
        );
        assert_eq!(m.receive(&Reply::Continue), Ok(Received::Final));
        // SKIP needs SMFIP_SKIP.
        assert_eq!(m.send(&Command::Body(Bytes::new())), Ok(Expect::Reply));
        assert!(m.receive(&Reply::Skip).is_err());
        let mut m = mta(&agreed).unwrap();
        assert_eq!(
            m.send(&Command::BodyEob(Bytes::new())),
            Ok(Expect::EndOfMessage)
        );
        assert_eq!(m.receive(&add), Ok(Received::Modification));
        // CHGBODY was offered but not asked for: not agreed.
        assert!(m.receive(&Reply::ReplBody(Bytes::new())).is_err());
        let mut m = mta(&agreed).unwrap();
        let _ = m.send(&Command::BodyEob(Bytes::new()));
        assert_eq!(m.receive(&Reply::Accept), Ok(Received::Final));
        assert_eq!(m.send(&Command::Quit), Ok(Expect::Nothing));
        assert!(m.send(&Command::Abort).is_err());
    }

    #[test]
    fn mta_allows_skip_when_agreed() {
        let mut m = mta(&answer(6, Actions::empty(), Protocol::SKIP)).unwrap();
        assert!(m.may_skip());
        assert_eq!(m.send(&Command::Body(Bytes::new())), Ok(Expect::Reply));
        assert_eq!(m.receive(&Reply::Skip), Ok(Received::Final));
        assert_eq!(m.send(&Command::Eoh), Ok(Expect::Reply));
        assert!(m.receive(&Reply::Skip).is_err());
    }
}
