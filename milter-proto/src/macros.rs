//! Macros (`SMFIC_MACRO`) kept per stage, and the stage numbers of macro lists.
//!
//! The MTA sends a MACRO packet before each event, tagged with that event's command byte. A new
//! packet for a stage replaces that stage's previous values. Lifetime, as in libmilter
//! (`mi_clr_macros`): the message stages (MAIL, RCPT, DATA, HEADER, EOH, BODY, BODYEOB) are
//! cleared when the message ends (end of message answered, or ABORT); everything is cleared on
//! QUIT_NC (a new SMTP connection follows).

use bytes::Bytes;

/// Stage numbers used in macro lists (OPTNEG reply and `SMFIR_SETSYMLIST`), libmilter
/// `SMFIM_*`.
pub mod stage {
    /// `SMFIM_CONNECT`: macros sent with CONNECT.
    pub const CONNECT: u32 = 0;
    /// `SMFIM_HELO`: macros sent with HELO.
    pub const HELO: u32 = 1;
    /// `SMFIM_ENVFROM`: macros sent with MAIL.
    pub const ENVFROM: u32 = 2;
    /// `SMFIM_ENVRCPT`: macros sent with RCPT.
    pub const ENVRCPT: u32 = 3;
    /// `SMFIM_DATA`: macros sent with DATA.
    pub const DATA: u32 = 4;
    /// `SMFIM_EOM`: macros sent with end of message.
    pub const EOM: u32 = 5;
    /// `SMFIM_EOH`: macros sent with end of headers.
    pub const EOH: u32 = 6;
}

/// Command bytes of the events an MTA sends macros for (CONNECT, HELO, MAIL, RCPT, DATA,
/// HEADER, EOH, BODY, BODYEOB, UNKNOWN). A MACRO packet for any other stage byte is ignored,
/// as libmilter ignores stages outside its table, so a session keeps at most this many.
pub const STAGES: &[u8] = b"CHMRTLNBEU";

/// Default for the bytes of macro names and values one connection keeps at once
/// ([`crate::session::SessionLimits::max_macro_bytes`]): 256 KiB. Postfix sends a few hundred bytes per
/// stage; sendmail's `Milter.macros.*` lists are of the same order.
pub const DEFAULT_MAX_MACRO_BYTES: usize = 256 * 1024;

/// Command bytes of the stages whose macros belong to the connection (kept until QUIT_NC).
const CONNECTION_STAGES: &[u8] = b"CHU";

/// The macros received so far on one connection, per stage command byte.
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

    /// Replace the macros of `stage` (a command byte such as `b'C'`).
    pub fn set(&mut self, stage: u8, pairs: Vec<(Bytes, Bytes)>) {
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

    /// The pairs received for `stage`, if any.
    pub fn stage(&self, stage: u8) -> Option<&[(Bytes, Bytes)]> {
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
        assert_eq!(m.stage(b'C'), None);
    }
}
