//! Option negotiation: what a filter needs, reduced to what the MTA offers and its version has.

use bytes::Bytes;

use crate::command::Command;
use crate::flags::{Actions, Protocol};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, MAX_FRAME_LEN_1M, MAX_FRAME_LEN_256K};
use crate::macros::MacroStage;
use crate::reply::Reply;

/// Highest protocol version spoken (Postfix 3.x default `milter_protocol = 6`).
pub const PROTOCOL_VERSION: u32 = 6;

/// Lowest protocol version accepted (libmilter `SMFI_PROT_VERSION_MIN`): an MTA offering
/// less is refused ([`NegotiateError::UnsupportedVersion`]) and the connection closed.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// Actions an MTA speaking versions 2 to 5 knows (libmilter `SMFI_V2_ACTS`).
const V2_ACTIONS: u32 = 0x3F;
/// Protocol bits an MTA speaking versions 2 to 5 knows (libmilter `SMFI_V2_PROT`).
const V2_PROTOCOL: u32 = 0x7F;

/// What a filter asks for in OPTNEG.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Needs {
    /// Modifications it may make.
    pub actions: Actions,
    /// Events it does not want (`NO*`), events it won't answer (`NR_*`), format options.
    pub protocol: Protocol,
    /// Macro lists per stage, space-separated names; sent only when the MTA offers
    /// `SETSYMLIST`.
    pub macros: Vec<(MacroStage, Bytes)>,
    /// Actions the filter cannot work without: [`Negotiated::negotiate`] refuses an MTA that
    /// does not offer them (the others in `actions` are dropped silently when not offered).
    pub required_actions: Actions,
    /// Protocol options the filter cannot work without (e.g. `HDR_LEADSPC` for a verifier that
    /// needs exact header bytes).
    pub required_protocol: Protocol,
}

/// Why negotiation failed: the MTA does not offer something the filter requires. The server
/// closes the connection (the MTA then applies its default action, `milter_default_action`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateError {
    /// The MTA offered a protocol version below [`MIN_PROTOCOL_VERSION`]; libmilter refuses it too.
    #[error(
        "MTA offered milter protocol version {version}, below the minimum {MIN_PROTOCOL_VERSION}"
    )]
    UnsupportedVersion {
        /// The version the MTA offered.
        version: u32,
    },
    /// Required actions (`SMFIF_*`) missing from the offer or from the agreed version.
    #[error("MTA (protocol version {version}) does not offer required milter actions {missing:?}")]
    MissingActions {
        /// Agreed version.
        version: u32,
        /// The required actions not agreed.
        missing: Actions,
    },
    /// Required protocol options (`SMFIP_*`) missing from the offer or the agreed version.
    #[error(
        "MTA (protocol version {version}) does not offer required milter protocol options {missing:?}"
    )]
    MissingProtocol {
        /// Agreed version.
        version: u32,
        /// The required options not agreed.
        missing: Protocol,
    },
}

/// The result of negotiation: what both sides will do on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Agreed version: min(MTA's, [`PROTOCOL_VERSION`]).
    pub version: u32,
    /// Agreed actions: asked ∩ offered ∩ known to the version.
    pub actions: Actions,
    /// Agreed protocol options: asked ∩ offered ∩ known to the version.
    pub protocol: Protocol,
    /// Macro lists requested (empty when the MTA does not offer `SETSYMLIST`).
    pub macros: Vec<(MacroStage, Bytes)>,
}

impl Negotiated {
    /// Reduce `needs` to what the MTA's OPTNEG offers. Versions below 2 are answered as 2.
    pub fn new(mta_version: u32, offered: Actions, offered_proto: Protocol, needs: &Needs) -> Self {
        let version = mta_version.clamp(2, PROTOCOL_VERSION);
        let (act_mask, proto_mask) = if version < 6 {
            (V2_ACTIONS, V2_PROTOCOL)
        } else {
            (u32::MAX, u32::MAX)
        };
        let actions = needs.actions & offered & Actions::from_bits_retain(act_mask);
        let protocol = needs.protocol & offered_proto & Protocol::from_bits_retain(proto_mask);
        let macros = if version >= 6 && offered.contains(Actions::SETSYMLIST) {
            needs.macros.clone()
        } else {
            Vec::new()
        };
        Self {
            version,
            actions,
            protocol,
            macros,
        }
    }

    /// Like [`Negotiated::new`], but refuse an MTA version below [`MIN_PROTOCOL_VERSION`], and refuse when a required action or protocol option of
    /// `needs` is not agreed (not offered, or unknown to the MTA's version).
    pub fn negotiate(
        mta_version: u32,
        offered: Actions,
        offered_proto: Protocol,
        needs: &Needs,
    ) -> Result<Self, NegotiateError> {
        if mta_version < MIN_PROTOCOL_VERSION {
            return Err(NegotiateError::UnsupportedVersion {
                version: mta_version,
            });
        }
        let n = Self::new(mta_version, offered, offered_proto, needs);
        let missing = needs.required_actions - n.actions;
        if !missing.is_empty() {
            return Err(NegotiateError::MissingActions {
                version: n.version,
                missing,
            });
        }
        let missing = needs.required_protocol - n.protocol;
        if !missing.is_empty() {
            return Err(NegotiateError::MissingProtocol {
                version: n.version,
                missing,
            });
        }
        Ok(n)
    }

    /// The OPTNEG answer to send.
    pub fn reply(&self) -> Reply {
        Reply::OptNeg {
            version: self.version,
            actions: self.actions,
            protocol: self.protocol,
            macros: self.macros.clone(),
        }
    }

    /// Largest length field to accept from the MTA under the agreed `MDS_*` option.
    pub fn max_frame_len(&self) -> u32 {
        if self.protocol.contains(Protocol::MDS_1M) {
            MAX_FRAME_LEN_1M
        } else if self.protocol.contains(Protocol::MDS_256K) {
            MAX_FRAME_LEN_256K
        } else {
            DEFAULT_MAX_FRAME_LEN
        }
    }

    /// Whether the MTA sends this command under the agreed `NO*` options (MACRO, ABORT, QUIT,
    /// QUIT_NC, BODYEOB and OPTNEG are always sent).
    pub fn sends(&self, cmd: &Command) -> bool {
        let no = match cmd {
            Command::Connect { .. } => Protocol::NOCONNECT,
            Command::Helo(_) => Protocol::NOHELO,
            Command::Mail { .. } => Protocol::NOMAIL,
            Command::Rcpt { .. } => Protocol::NORCPT,
            Command::Data => Protocol::NODATA,
            Command::Header { .. } => Protocol::NOHDRS,
            Command::Eoh => Protocol::NOEOH,
            Command::Body(_) => Protocol::NOBODY,
            Command::Unknown(_) => Protocol::NOUNKNOWN,
            _ => return true,
        };
        !self.protocol.contains(no)
    }

    /// Whether the filter must answer this command (false for `NR_*` stages, MACRO, ABORT,
    /// QUIT and QUIT_NC).
    pub fn expects_reply(&self, cmd: &Command) -> bool {
        let nr = match cmd {
            Command::Connect { .. } => Protocol::NR_CONN,
            Command::Helo(_) => Protocol::NR_HELO,
            Command::Mail { .. } => Protocol::NR_MAIL,
            Command::Rcpt { .. } => Protocol::NR_RCPT,
            Command::Data => Protocol::NR_DATA,
            Command::Header { .. } => Protocol::NR_HDR,
            Command::Eoh => Protocol::NR_EOH,
            Command::Body(_) => Protocol::NR_BODY,
            Command::Unknown(_) => Protocol::NR_UNKN,
            Command::Macro { .. } | Command::Abort | Command::Quit | Command::QuitNc => {
                return false;
            }
            Command::OptNeg { .. } | Command::BodyEob(_) => return true,
        };
        !self.protocol.contains(nr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs() -> Needs {
        Needs {
            actions: Actions::ADDHDRS | Actions::CHGFROM | Actions::SETSYMLIST,
            protocol: Protocol::NOCONNECT | Protocol::NR_HDR | Protocol::HDR_LEADSPC,
            macros: vec![(MacroStage::Eom, Bytes::from_static(b"i {auth_type}"))],
            ..Needs::default()
        }
    }

    #[test]
    fn postfix_v6_gets_everything_asked() {
        let n = Negotiated::new(
            6,
            Actions::all(),
            Protocol::from_bits_retain(0x1F_FFFF),
            &needs(),
        );
        assert_eq!(n.version, 6);
        assert_eq!(n.actions, needs().actions);
        assert_eq!(n.protocol, needs().protocol);
        assert_eq!(n.macros.len(), 1);
        assert!(!n.sends(&Command::Connect {
            hostname: Bytes::new(),
            addr: crate::command::ConnAddr::Unknown
        }));
        assert!(!n.expects_reply(&Command::Header {
            name: Bytes::new(),
            value: Bytes::new()
        }));
        assert!(n.expects_reply(&Command::Eoh));
        assert_eq!(n.max_frame_len(), DEFAULT_MAX_FRAME_LEN);
    }

    #[test]
    fn v2_mta_gets_v2_features_only() {
        let n = Negotiated::new(2, Actions::all(), Protocol::all(), &needs());
        assert_eq!(n.version, 2);
        assert_eq!(n.actions, Actions::ADDHDRS);
        assert_eq!(n.protocol, Protocol::NOCONNECT);
        assert!(n.macros.is_empty());
        assert!(n.expects_reply(&Command::Header {
            name: Bytes::new(),
            value: Bytes::new()
        }));
    }

    #[test]
    fn required_but_not_offered_is_refused() {
        let strict = Needs {
            required_actions: Actions::CHGFROM,
            ..needs()
        };
        assert_eq!(
            Negotiated::negotiate(2, Actions::all(), Protocol::all(), &strict),
            Err(NegotiateError::MissingActions {
                version: 2,
                missing: Actions::CHGFROM
            })
        );
        let strict = Needs {
            required_protocol: Protocol::HDR_LEADSPC,
            ..needs()
        };
        assert!(matches!(
            Negotiated::negotiate(6, Actions::all(), Protocol::NOCONNECT, &strict),
            Err(NegotiateError::MissingProtocol { .. })
        ));
        assert!(Negotiated::negotiate(6, Actions::all(), Protocol::all(), &strict).is_ok());
    }

    #[test]
    fn requests_reduced_to_offer() {
        let n = Negotiated::new(6, Actions::ADDHDRS, Protocol::NOCONNECT, &needs());
        assert_eq!(n.actions, Actions::ADDHDRS);
        assert_eq!(n.protocol, Protocol::NOCONNECT);
        assert!(n.macros.is_empty());
    }
}
