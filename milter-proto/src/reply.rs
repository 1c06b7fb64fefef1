//! Replies a filter sends to the MTA (`SMFIR_*`), including OPTNEG's answer.

use bytes::{BufMut, Bytes, BytesMut};

use crate::DecodeError;
use crate::flags::{Actions, Protocol};
use crate::frame::{Frame, decode_frame, encode_frame};
use crate::macros::MacroStage;
use crate::wire::{Reader, put_cstr};

/// Largest REPLBODY chunk a filter sends (the MTA's default packet limit).
pub const MAX_REPLBODY_CHUNK: usize = 65535;

/// One filter → MTA reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `O` answer to OPTNEG, with optional macro lists `(stage, "names")`.
    OptNeg {
        /// Version the filter speaks (<= the MTA's).
        version: u32,
        /// Actions wanted.
        actions: Actions,
        /// Protocol options wanted.
        protocol: Protocol,
        /// Macro lists: stage and space-separated names.
        macros: Vec<(MacroStage, Bytes)>,
    },
    /// `c` continue.
    Continue,
    /// `a` accept (stop filtering this message / connection).
    Accept,
    /// `r` reject.
    Reject,
    /// `t` temporary failure.
    Tempfail,
    /// `d` discard the message.
    Discard,
    /// `y` explicit SMTP reply, e.g. `550 5.7.1 text`.
    ReplyCode(Bytes),
    /// `s` skip the remaining body chunks.
    Skip,
    /// `p` progress (keep-alive during a slow end of message).
    Progress,
    /// `f` connection failure.
    ConnFail,
    /// `4` shutdown (421).
    Shutdown,
    /// `h` add a header at the end.
    AddHeader {
        /// Field name.
        name: Bytes,
        /// Field value.
        value: Bytes,
    },
    /// `i` insert a header at `index`.
    InsHeader {
        /// Position (0 or 1 = top for Postfix).
        index: u32,
        /// Field name.
        name: Bytes,
        /// Field value.
        value: Bytes,
    },
    /// `m` change the `index`-th (1-based) header named `name`; empty value deletes.
    ChgHeader {
        /// 1-based occurrence.
        index: u32,
        /// Field name.
        name: Bytes,
        /// New value (empty: delete).
        value: Bytes,
    },
    /// `+` add a recipient.
    AddRcpt(Bytes),
    /// `2` add a recipient with ESMTP args.
    AddRcptPar {
        /// Recipient.
        rcpt: Bytes,
        /// ESMTP args, if sent.
        args: Option<Bytes>,
    },
    /// `-` delete a recipient.
    DelRcpt(Bytes),
    /// `e` change the envelope sender.
    ChgFrom {
        /// New sender.
        from: Bytes,
        /// ESMTP args, if sent.
        args: Option<Bytes>,
    },
    /// `b` one chunk of the replacement body (chunks concatenate).
    ReplBody(Bytes),
    /// `q` quarantine with a reason.
    Quarantine(Bytes),
    /// `l` set the macro list of a stage.
    SetSymList {
        /// The stage whose macro list this sets.
        stage: MacroStage,
        /// Space-separated macro names.
        names: Bytes,
    },
}

impl Reply {
    /// The action (`SMFIF_*`) negotiation must have agreed before this modification may be
    /// sent; `None` for a reply that is not a modification. The one table of it: the filter
    /// side refuses to queue ([`crate::session::Session::check_modification`]) and the MTA
    /// side refuses to accept ([`crate::session::MtaSession::receive`]) by it.
    pub fn required_action(&self) -> Option<Actions> {
        Some(match self {
            Self::AddHeader { .. } | Self::InsHeader { .. } => Actions::ADDHDRS,
            Self::ChgHeader { .. } => Actions::CHGHDRS,
            Self::AddRcpt(_) => Actions::ADDRCPT,
            Self::AddRcptPar { .. } => Actions::ADDRCPT_PAR,
            Self::DelRcpt(_) => Actions::DELRCPT,
            Self::ChgFrom { .. } => Actions::CHGFROM,
            Self::ReplBody(_) => Actions::CHGBODY,
            Self::Quarantine(_) => Actions::QUARANTINE,
            Self::OptNeg { .. }
            | Self::Continue
            | Self::Accept
            | Self::Reject
            | Self::Tempfail
            | Self::Discard
            | Self::ReplyCode(_)
            | Self::Skip
            | Self::Progress
            | Self::ConnFail
            | Self::Shutdown
            | Self::SetSymList { .. } => return None,
        })
    }

    /// Whether this is an end-of-message modification (it has a [`Reply::required_action`]).
    pub fn is_modification(&self) -> bool {
        self.required_action().is_some()
    }

    /// Decode one reply from the front of `buf` (see the crate's decoder contract).
    pub fn decode(buf: &mut BytesMut, max_len: u32) -> Result<Option<Self>, DecodeError> {
        match decode_frame(buf, max_len)? {
            None => Ok(None),
            Some(f) => Self::from_frame(f).map(Some),
        }
    }

    /// Parse a frame's payload; the whole payload must be consumed.
    pub fn from_frame(frame: Frame) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame.cmd, frame.payload);
        let reply = match frame.cmd {
            b'O' => {
                let version = r.u32("version")?;
                let actions = Actions::from_bits_retain(r.u32("actions")?);
                let protocol = Protocol::from_bits_retain(r.u32("protocol")?);
                let mut macros = Vec::new();
                while !r.is_empty() {
                    let stage = r.macro_stage()?;
                    macros.push((stage, r.cstr("macro names")?));
                }
                Self::OptNeg {
                    version,
                    actions,
                    protocol,
                    macros,
                }
            }
            b'c' => Self::Continue,
            b'a' => Self::Accept,
            b'r' => Self::Reject,
            b't' => Self::Tempfail,
            b'd' => Self::Discard,
            b'y' => Self::ReplyCode(r.cstr("reply text")?),
            b's' => Self::Skip,
            b'p' => Self::Progress,
            b'f' => Self::ConnFail,
            b'4' => Self::Shutdown,
            b'h' => {
                let name = r.cstr("header name")?;
                Self::AddHeader {
                    name,
                    value: r.cstr("header value")?,
                }
            }
            b'i' | b'm' => {
                let index = r.u32("index")?;
                let name = r.cstr("header name")?;
                let value = r.cstr("header value")?;
                if frame.cmd == b'i' {
                    Self::InsHeader { index, name, value }
                } else {
                    Self::ChgHeader { index, name, value }
                }
            }
            b'+' => Self::AddRcpt(r.cstr("recipient")?),
            b'2' | b'e' => {
                let first = r.cstr("address")?;
                let args = if r.is_empty() {
                    None
                } else {
                    Some(r.cstr("esmtp args")?)
                };
                if frame.cmd == b'2' {
                    Self::AddRcptPar { rcpt: first, args }
                } else {
                    Self::ChgFrom { from: first, args }
                }
            }
            b'-' => Self::DelRcpt(r.cstr("recipient")?),
            b'b' => Self::ReplBody(r.rest()),
            b'q' => Self::Quarantine(r.cstr("reason")?),
            b'l' => {
                let stage = r.macro_stage()?;
                Self::SetSymList {
                    stage,
                    names: r.cstr("macro names")?,
                }
            }
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        r.finish()?;
        Ok(reply)
    }

    /// The reply byte (`SMFIR_*`).
    pub fn code(&self) -> u8 {
        match self {
            Self::OptNeg { .. } => b'O',
            Self::Continue => b'c',
            Self::Accept => b'a',
            Self::Reject => b'r',
            Self::Tempfail => b't',
            Self::Discard => b'd',
            Self::ReplyCode(_) => b'y',
            Self::Skip => b's',
            Self::Progress => b'p',
            Self::ConnFail => b'f',
            Self::Shutdown => b'4',
            Self::AddHeader { .. } => b'h',
            Self::InsHeader { .. } => b'i',
            Self::ChgHeader { .. } => b'm',
            Self::AddRcpt(_) => b'+',
            Self::AddRcptPar { .. } => b'2',
            Self::DelRcpt(_) => b'-',
            Self::ChgFrom { .. } => b'e',
            Self::ReplBody(_) => b'b',
            Self::Quarantine(_) => b'q',
            Self::SetSymList { .. } => b'l',
        }
    }

    /// Append this reply as one frame to `out`. Strings must not contain NUL.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = BytesMut::new();
        match self {
            Self::OptNeg {
                version,
                actions,
                protocol,
                macros,
            } => {
                p.put_u32(*version);
                p.put_u32(actions.bits());
                p.put_u32(protocol.bits());
                for (stage, names) in macros {
                    p.put_u32(stage.number());
                    put_cstr(&mut p, names);
                }
            }
            Self::Continue
            | Self::Accept
            | Self::Reject
            | Self::Tempfail
            | Self::Discard
            | Self::Skip
            | Self::Progress
            | Self::ConnFail
            | Self::Shutdown => {}
            Self::ReplyCode(s) | Self::AddRcpt(s) | Self::DelRcpt(s) | Self::Quarantine(s) => {
                put_cstr(&mut p, s);
            }
            Self::AddHeader { name, value } => {
                put_cstr(&mut p, name);
                put_cstr(&mut p, value);
            }
            Self::InsHeader { index, name, value } | Self::ChgHeader { index, name, value } => {
                p.put_u32(*index);
                put_cstr(&mut p, name);
                put_cstr(&mut p, value);
            }
            Self::AddRcptPar { rcpt: first, args } | Self::ChgFrom { from: first, args } => {
                put_cstr(&mut p, first);
                if let Some(a) = args {
                    put_cstr(&mut p, a);
                }
            }
            Self::ReplBody(b) => {
                encode_frame(out, self.code(), b);
                return;
            }
            Self::SetSymList { stage, names } => {
                p.put_u32(stage.number());
                put_cstr(&mut p, names);
            }
        }
        encode_frame(out, self.code(), &p);
    }
}
