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
//! Macros are kept per stage in [`Session::macros`] (see [`crate::macros`] for their lifetime):
//! a message's macros stay readable while its end of message is answered and are dropped at the
//! next command.

use crate::command::Command;
use crate::macros::{DEFAULT_MAX_MACRO_BYTES, Macros, STAGES, pair_bytes};
use crate::negotiate::Negotiated;

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

/// What the caller must do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The filter must send a reply (false for NR_* stages, MACRO, ABORT, QUIT, QUIT_NC).
    pub reply_due: bool,
    /// The session is over (QUIT): close the socket.
    pub close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitOptNeg,
    Connection,
    /// In a message; the value is the ordinal of the last stage seen.
    Message(u8),
    Closed,
}

/// One milter connection's position in the protocol.
#[derive(Debug, Clone)]
pub struct Session {
    state: State,
    negotiated: Option<Negotiated>,
    macros: Macros,
    /// The last command ended a message: drop its macros at the next command.
    message_done: bool,
    limits: HeaderLimits,
    max_macro_bytes: usize,
    /// Header fields and their bytes in the current message.
    headers: u32,
    header_bytes: usize,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session awaiting OPTNEG, with the default [`HeaderLimits`].
    pub fn new() -> Self {
        Self::with_header_limits(HeaderLimits::default())
    }

    /// A session awaiting OPTNEG that refuses messages beyond `limits`.
    pub fn with_header_limits(limits: HeaderLimits) -> Self {
        Self {
            state: State::AwaitOptNeg,
            negotiated: None,
            macros: Macros::default(),
            message_done: false,
            limits,
            max_macro_bytes: DEFAULT_MAX_MACRO_BYTES,
            headers: 0,
            header_bytes: 0,
        }
    }

    /// A session awaiting OPTNEG with header limits and a cap on the bytes of macros kept at
    /// once (a MACRO packet over it is [`ProtocolError::MacrosTooLarge`]).
    pub fn with_limits(limits: HeaderLimits, max_macro_bytes: usize) -> Self {
        Self {
            max_macro_bytes,
            ..Self::with_header_limits(limits)
        }
    }

    /// Count a header field against the limits (`MAIL` restarts the counts).
    fn count_header(&mut self, cmd: &Command) -> Result<(), ProtocolError> {
        match cmd {
            Command::Mail { .. } => (self.headers, self.header_bytes) = (0, 0),
            Command::Header { name, value } => {
                let count = self.headers.saturating_add(1);
                if count > self.limits.max_count {
                    let max = self.limits.max_count;
                    return Err(ProtocolError::TooManyHeaders { max });
                }
                let bytes = (self.header_bytes)
                    .saturating_add(name.len())
                    .saturating_add(value.len());
                if bytes > self.limits.max_bytes {
                    let max = self.limits.max_bytes;
                    return Err(ProtocolError::HeadersTooLarge { max });
                }
                (self.headers, self.header_bytes) = (count, bytes);
            }
            _ => {}
        }
        Ok(())
    }

    /// Record the negotiation result (call after answering OPTNEG); replies then follow its
    /// `NR_*` options. Without it every event expects a reply.
    pub fn set_negotiated(&mut self, n: Negotiated) {
        self.negotiated = Some(n);
    }

    /// The negotiation result, once [`Session::set_negotiated`] was called.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
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
        let Command::Macro { stage, pairs } = cmd else {
            return Ok(());
        };
        if !STAGES.contains(stage) {
            return Ok(());
        }
        let others = self.macros.bytes_besides(*stage, self.message_done);
        let new = pair_bytes(pairs);
        if others.saturating_add(new) > self.max_macro_bytes {
            return Err(ProtocolError::MacrosTooLarge {
                max: self.max_macro_bytes,
            });
        }
        Ok(())
    }

    fn keep_macros(&mut self, cmd: &Command) {
        if std::mem::take(&mut self.message_done) {
            self.macros.clear_message();
        }
        match cmd {
            // A stage no event has is ignored, as libmilter does.
            Command::Macro { stage, .. } if !STAGES.contains(stage) => {}
            Command::Macro { stage, pairs } => self.macros.set(*stage, pairs.clone()),
            Command::Abort => self.macros.clear_message(),
            Command::QuitNc => self.macros.clear(),
            Command::BodyEob(_) => self.message_done = true,
            _ => {}
        }
    }

    /// Advance on `cmd`.
    pub fn handle(&mut self, cmd: &Command) -> Result<Step, ProtocolError> {
        let out_of_order = || ProtocolError::OutOfOrder {
            cmd: char::from(cmd.code()),
        };
        let next = match (self.state, cmd) {
            (State::Closed, _) => return Err(ProtocolError::Closed),
            (State::AwaitOptNeg, Command::OptNeg { .. }) => State::Connection,
            (State::AwaitOptNeg, _) | (_, Command::OptNeg { .. }) => return Err(out_of_order()),
            (s, Command::Macro { .. } | Command::Unknown(_)) => s,
            (_, Command::Abort) => State::Connection,
            (_, Command::Quit) => State::Closed,
            (_, Command::QuitNc) => State::Connection,
            (State::Connection, Command::Connect { .. } | Command::Helo(_)) => State::Connection,
            (State::Connection, Command::Mail { .. }) => State::Message(1),
            (State::Message(_), Command::BodyEob(_)) => State::Connection,
            (State::Message(last), c) => {
                let (ord, repeatable) = match c {
                    Command::Rcpt { .. } => (2, true),
                    Command::Data => (3, false),
                    Command::Header { .. } => (4, true),
                    Command::Eoh => (5, false),
                    Command::Body(_) => (6, true),
                    _ => return Err(out_of_order()),
                };
                if ord > last || (repeatable && ord == last) {
                    State::Message(ord)
                } else {
                    return Err(out_of_order());
                }
            }
            _ => return Err(out_of_order()),
        };
        self.count_header(cmd)?;
        self.check_macros(cmd)?;
        self.state = next;
        self.keep_macros(cmd);
        let reply_due = match &self.negotiated {
            Some(n) => n.expects_reply(cmd),
            None => !matches!(
                cmd,
                Command::Macro { .. } | Command::Abort | Command::Quit | Command::QuitNc
            ),
        };
        Ok(Step {
            reply_due,
            close: next == State::Closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::command::ConnAddr;
    use crate::flags::{Actions, Protocol};
    use crate::negotiate::Needs;

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
                stage: b'M',
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
        let mut s = Session::new();
        assert!(s.handle(&optneg()).unwrap().reply_due);
        let connect = Command::Connect {
            hostname: Bytes::new(),
            addr: ConnAddr::Unknown,
        };
        assert!(s.handle(&connect).unwrap().reply_due);
        for c in message() {
            s.handle(&c).unwrap();
        }
        assert!(!s.in_message());
        assert!(!s.handle(&Command::Abort).unwrap().reply_due);
        for c in message().iter().take(4) {
            s.handle(c).unwrap();
        }
        assert!(s.in_message());
        s.handle(&Command::Abort).unwrap();
        assert!(!s.in_message());
        s.handle(&Command::QuitNc).unwrap();
        s.handle(&connect).unwrap();
        assert!(s.handle(&Command::Quit).unwrap().close);
        assert_eq!(s.handle(&Command::Abort), Err(ProtocolError::Closed));
    }

    #[test]
    fn out_of_order_commands_are_refused() {
        let mut s = Session::new();
        assert!(s.handle(&Command::Data).is_err());
        s.handle(&optneg()).unwrap();
        assert!(s.handle(&Command::Data).is_err());
        assert!(s.handle(&optneg()).is_err());
        s.handle(&Command::Mail {
            sender: Bytes::new(),
            args: vec![],
        })
        .unwrap();
        s.handle(&Command::Eoh).unwrap();
        assert_eq!(
            s.handle(&Command::Data),
            Err(ProtocolError::OutOfOrder { cmd: 'T' })
        );
        assert!(s.handle(&Command::Eoh).is_err());
        assert!(s.handle(&Command::Helo(Bytes::new())).is_err());
    }

    #[test]
    fn nr_stages_expect_no_reply() {
        let mut s = Session::new();
        s.handle(&optneg()).unwrap();
        let needs = Needs {
            protocol: Protocol::NR_MAIL,
            ..Needs::default()
        };
        s.set_negotiated(Negotiated::new(6, Actions::all(), Protocol::all(), &needs));
        let step = s
            .handle(&Command::Mail {
                sender: Bytes::new(),
                args: vec![],
            })
            .unwrap();
        assert!(!step.reply_due);
        assert!(s.handle(&Command::BodyEob(Bytes::new())).unwrap().reply_due);
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
        let mut s = Session::with_header_limits(HeaderLimits::new(2, 10));
        s.handle(&optneg()).unwrap();
        for _ in 0..2 {
            // Two messages: the counts restart at MAIL.
            s.handle(&mail).unwrap();
            s.handle(&header(b"1234")).unwrap();
            s.handle(&header(b"1234")).unwrap();
            assert_eq!(
                s.handle(&header(b"")),
                Err(ProtocolError::TooManyHeaders { max: 2 })
            );
            s.handle(&Command::Abort).unwrap();
        }
        s.handle(&mail).unwrap();
        s.handle(&header(b"12345678")).unwrap();
        assert_eq!(
            s.handle(&header(b"1")),
            Err(ProtocolError::HeadersTooLarge { max: 10 })
        );
    }
}
