//! Macros (`SMFIC_MACRO`) kept per stage, and the stages of macro lists ([`MacroStage`]).
//!
//! The MTA sends a MACRO packet before each event, tagged with that event's command byte. A new
//! packet for a stage replaces that stage's previous values. Lifetime, as in libmilter
//! (`mi_clr_macros`): the message stages (MAIL, RCPT, DATA, HEADER, EOH, BODY, BODYEOB) are
//! cleared when the message ends (end of message answered, or ABORT); everything is cleared on
//! QUIT_NC (a new SMTP connection follows).

use bytes::Bytes;

/// A stage a filter asks macros for (libmilter `SMFIM_*`): the stage of each macro list in the
/// OPTNEG answer ([`Reply::OptNeg`](crate::reply::Reply::OptNeg), [`Needs::macros`]) and of
/// `SMFIR_SETSYMLIST` ([`Reply::SetSymList`](crate::reply::Reply::SetSymList)). On the wire it
/// is a number (`u32`, [`MacroStage::number`]); the MTA then sends those macros in the MACRO
/// packet tagged with [`MacroStage::command_code`].
///
/// The order is that of the numbers (connect, helo, envfrom, envrcpt, data, eom, eoh), so
/// `stage <= MacroStage::EnvFrom` means "known by MAIL FROM".
///
/// [`Needs::macros`]: crate::negotiate::Needs::macros
///
/// ```
/// use milter_proto::MacroStage;
///
/// assert_eq!(u32::from(MacroStage::EnvFrom), 2);
/// assert_eq!(MacroStage::try_from(5), Ok(MacroStage::Eom));
/// assert!(MacroStage::try_from(7).is_err());
/// assert_eq!(MacroStage::Eoh.command_code(), b'N');
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MacroStage {
    /// `SMFIM_CONNECT` (0): macros sent with CONNECT.
    Connect,
    /// `SMFIM_HELO` (1): macros sent with HELO.
    Helo,
    /// `SMFIM_ENVFROM` (2): macros sent with MAIL.
    EnvFrom,
    /// `SMFIM_ENVRCPT` (3): macros sent with RCPT.
    EnvRcpt,
    /// `SMFIM_DATA` (4): macros sent with DATA.
    Data,
    /// `SMFIM_EOM` (5): macros sent with end of message.
    Eom,
    /// `SMFIM_EOH` (6): macros sent with end of headers.
    Eoh,
}

impl MacroStage {
    /// Every stage, in the order of their numbers.
    pub const ALL: [Self; 7] = [
        Self::Connect,
        Self::Helo,
        Self::EnvFrom,
        Self::EnvRcpt,
        Self::Data,
        Self::Eom,
        Self::Eoh,
    ];

    /// The stage's number on the wire (`SMFIM_*`, 0 connect .. 6 eoh).
    pub const fn number(self) -> u32 {
        match self {
            Self::Connect => 0,
            Self::Helo => 1,
            Self::EnvFrom => 2,
            Self::EnvRcpt => 3,
            Self::Data => 4,
            Self::Eom => 5,
            Self::Eoh => 6,
        }
    }

    /// The stage with wire number `n`, if there is one.
    pub const fn from_number(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Connect,
            1 => Self::Helo,
            2 => Self::EnvFrom,
            3 => Self::EnvRcpt,
            4 => Self::Data,
            5 => Self::Eom,
            6 => Self::Eoh,
            _ => return None,
        })
    }

    /// The command byte of the event whose MACRO packet carries this stage's macros
    /// ([`Command::Macro`](crate::command::Command::Macro)'s `stage`, the key of
    /// [`Macros::for_command`]): `C`, `H`, `M`, `R`, `T`, `E`, `N`.
    pub const fn command_code(self) -> u8 {
        match self {
            Self::Connect => b'C',
            Self::Helo => b'H',
            Self::EnvFrom => b'M',
            Self::EnvRcpt => b'R',
            Self::Data => b'T',
            Self::Eom => b'E',
            Self::Eoh => b'N',
        }
    }
}

impl From<MacroStage> for u32 {
    fn from(s: MacroStage) -> Self {
        s.number()
    }
}

impl TryFrom<u32> for MacroStage {
    type Error = UnknownMacroStage;

    /// # Errors
    ///
    /// [`UnknownMacroStage`] for a number above 6.
    fn try_from(n: u32) -> Result<Self, Self::Error> {
        Self::from_number(n).ok_or(UnknownMacroStage(n))
    }
}

/// A macro-list stage number no [`MacroStage`] has (above 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown milter macro stage {0} (stages are 0 connect .. 6 eoh)")]
pub struct UnknownMacroStage(pub u32);

/// Command bytes of the events an MTA sends macros for (CONNECT, HELO, MAIL, RCPT, DATA,
/// HEADER, EOH, BODY, BODYEOB, UNKNOWN). A MACRO packet for any other stage byte is ignored,
/// as libmilter ignores stages outside its table, so a session keeps at most this many.
pub(crate) const STAGES: &[u8] = b"CHMRTLNBEU";

/// Default for the bytes of macro names and values one connection keeps at once
/// ([`crate::session::SessionLimits::max_macro_bytes`]): 256 KiB. Postfix sends a few hundred bytes per
/// stage; sendmail's `Milter.macros.*` lists are of the same order.
pub const DEFAULT_MAX_MACRO_BYTES: usize = 256 * 1024;

/// Command bytes of the stages whose macros belong to the connection (kept until QUIT_NC).
const CONNECTION_STAGES: &[u8] = b"CHU";

/// The macros received so far on one connection, per stage command byte.
///
/// The MTA sends a MACRO packet before each event, tagged with that event's command byte. A new
/// packet for a stage replaces that stage's previous values. Lifetime, as in libmilter
/// (`mi_clr_macros`): the message stages (MAIL, RCPT, DATA, HEADER, EOH, BODY, BODYEOB) are
/// cleared when the message ends (end of message answered, or ABORT); everything is cleared on
/// QUIT_NC (a new SMTP connection follows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Macros {
    /// `(stage command byte, pairs)`, most recently received stage last.
    stages: Vec<(u8, Vec<(Bytes, Bytes)>)>,
}

impl Macros {
    /// Bytes of names and values kept, over every stage.
    pub fn byte_len(&self) -> usize {
        self.stages.iter().map(|(_, p)| pair_bytes(p)).sum()
    }

    /// Bytes kept once `stage` is replaced (and, with `message_over`, the message stages
    /// cleared): what stays besides the new packet.
    pub(crate) fn bytes_besides(&self, stage: u8, message_over: bool) -> usize {
        self.stages
            .iter()
            .filter(|(s, _)| *s != stage && (!message_over || CONNECTION_STAGES.contains(s)))
            .map(|(_, p)| pair_bytes(p))
            .sum()
    }

    /// Replace the macros for command code `command` (such as `b'C'`).
    pub fn set(&mut self, command: u8, pairs: Vec<(Bytes, Bytes)>) {
        let stage = command;
        self.stages.retain(|(s, _)| *s != stage);
        self.stages.push((stage, pairs));
    }

    /// The value of macro `name`, searching the most recent stage first. `i` and `{i}` name
    /// the same macro (libmilter's `smfi_getsymval` accepts both).
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        let bare = strip_braces(name.as_bytes());
        self.stages.iter().rev().find_map(|(_, pairs)| {
            pairs
                .iter()
                .find(|(n, _)| strip_braces(n) == bare)
                .map(|(_, v)| v)
        })
    }

    /// The pairs received in the MACRO packet for command code `command` (`b'C'`, `b'M'`,
    /// ...), if any.
    pub fn for_command(&self, command: u8) -> Option<&[(Bytes, Bytes)]> {
        let stage = command;
        self.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, p)| p.as_slice())
    }

    /// Forget the message stages (end of message, ABORT).
    pub fn clear_message(&mut self) {
        self.stages.retain(|(s, _)| CONNECTION_STAGES.contains(s));
    }

    /// Forget everything (QUIT_NC).
    pub fn clear(&mut self) {
        self.stages.clear();
    }
}

/// Bytes of names and values in `pairs`.
pub(crate) fn pair_bytes(pairs: &[(Bytes, Bytes)]) -> usize {
    pairs.iter().map(|(n, v)| n.len() + v.len()).sum()
}

fn strip_braces(n: &[u8]) -> &[u8] {
    n.strip_prefix(b"{")
        .and_then(|n| n.strip_suffix(b"}"))
        .unwrap_or(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn braces_optional_latest_stage_wins_and_clearing() {
        let mut m = Macros::default();
        m.set(
            b'C',
            vec![(b("j"), b("mx")), (b("{daemon_name}"), b("smtpd"))],
        );
        m.set(b'M', vec![(b("i"), b("ABC")), (b("j"), b("override"))]);
        assert_eq!(m.get("daemon_name"), Some(&b("smtpd")));
        assert_eq!(m.get("{i}"), Some(&b("ABC")));
        assert_eq!(m.get("j"), Some(&b("override")));
        m.set(b'M', vec![]);
        assert_eq!(m.get("i"), None);
        m.set(b'M', vec![(b("i"), b("DEF"))]);
        m.clear_message();
        assert_eq!(m.get("i"), None);
        assert_eq!(m.get("j"), Some(&b("mx")));
        m.clear();
        assert_eq!(m.for_command(b'C'), None);
    }

    #[test]
    fn stage_numbers_round_trip_and_unknown_numbers_are_refused() {
        for (n, s) in MacroStage::ALL.into_iter().enumerate() {
            let n = u32::try_from(n).unwrap();
            assert_eq!(u32::from(s), n);
            assert_eq!(MacroStage::try_from(n), Ok(s));
        }
        assert_eq!(MacroStage::try_from(7), Err(UnknownMacroStage(7)));
        let codes: Vec<u8> = MacroStage::ALL.map(MacroStage::command_code).to_vec();
        assert!(codes.iter().all(|c| STAGES.contains(c)), "{codes:?}");
    }

    #[test]
    fn a_reply_naming_an_unknown_stage_does_not_decode() {
        use crate::reply::Reply;
        use bytes::BytesMut;
        // SETSYMLIST for stage 7, names "i".
        let mut buf = BytesMut::from(&b"\0\0\0\x07l\0\0\0\x07i\0"[..]);
        assert!(matches!(
            Reply::decode(&mut buf, crate::frame::DEFAULT_MAX_FRAME_LEN),
            Err(crate::DecodeError::Invalid { cmd: 'l', .. })
        ));
        let mut buf = BytesMut::new();
        Reply::SetSymList {
            stage: MacroStage::Eoh,
            names: b("i"),
        }
        .encode(&mut buf);
        assert_eq!(&buf[..], b"\0\0\0\x07l\0\0\0\x06i\0");
    }
}
