//! [`PolicyRequest`]: the attributes of one request, in order, with typed accessors.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

use crate::AttributeError;

/// One policy request: every `name=value` attribute in the order received.
///
/// Attributes Postfix may add in future versions are kept, not dropped, and re-encoded in
/// place. Duplicates are kept too; the typed accessors return the **last** value, as
/// Postfix's own attribute scanner does when it fills a hash (`SMTPD_POLICY_README` lets a
/// server keep either). A value may contain `=`: only the first `=` of a line splits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    attrs: Vec<(String, String)>,
}

macro_rules! accessors {
    ($($(#[$doc:meta])* $fn:ident => $name:literal;)*) => {
        $(
            $(#[$doc])*
            pub fn $fn(&self) -> Option<&str> {
                self.get($name)
            }
        )*
    };
}

impl PolicyRequest {
    /// An empty request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an attribute (builder style, for clients and tests).
    pub fn with(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, AttributeError> {
        self.push(name, value)?;
        Ok(self)
    }

    /// Appends an attribute, refusing what Postfix would never send and the decoder would not
    /// read back: an empty name, `=` in the name, LF or NUL anywhere.
    pub fn push(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), AttributeError> {
        let (name, value) = (name.into(), value.into());
        if name.is_empty() || name.contains(['=', '\n', '\0']) {
            return Err(AttributeError::BadName);
        }
        if value.contains(['\n', '\0']) {
            return Err(AttributeError::BadValue);
        }
        self.attrs.push((name, value));
        Ok(())
    }

    /// Appends an attribute the decoder has already checked.
    pub(crate) fn push_decoded(&mut self, name: String, value: String) {
        self.attrs.push((name, value));
    }

    /// Every attribute, in the order received (duplicates included).
    pub fn attributes(&self) -> &[(String, String)] {
        &self.attrs
    }

    /// The last value of `name`, if present (the raw text of any attribute).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Attributes this crate has no accessor for (kept in order).
    pub fn unknown(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs
            .iter()
            .filter(|(n, _)| !KNOWN.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    accessors! {
        /// `request` (2.1): always `smtpd_access_policy` from smtpd.
        request => "request";
        /// `protocol_name` (2.1): SMTP or ESMTP.
        protocol_name => "protocol_name";
        /// `helo_name` (2.1).
        helo_name => "helo_name";
        /// `queue_id` (2.1), empty before the queue file exists.
        queue_id => "queue_id";
        /// `sender` (2.1), empty for the null sender.
        sender => "sender";
        /// `recipient` (2.1).
        recipient => "recipient";
        /// `client_name` (2.1), `unknown` when not verified.
        client_name => "client_name";
        /// `reverse_client_name` (2.1).
        reverse_client_name => "reverse_client_name";
        /// `instance` (2.1): the same for every request of one message.
        instance => "instance";
        /// `sasl_method` (2.2).
        sasl_method => "sasl_method";
        /// `sasl_username` (2.2).
        sasl_username => "sasl_username";
        /// `sasl_sender` (2.2).
        sasl_sender => "sasl_sender";
        /// `ccert_subject` (2.2).
        ccert_subject => "ccert_subject";
        /// `ccert_issuer` (2.2).
        ccert_issuer => "ccert_issuer";
        /// `ccert_fingerprint` (2.2).
        ccert_fingerprint => "ccert_fingerprint";
        /// `ccert_pubkey_fingerprint` (2.9).
        ccert_pubkey_fingerprint => "ccert_pubkey_fingerprint";
        /// `encryption_protocol` (2.3).
        encryption_protocol => "encryption_protocol";
        /// `encryption_cipher` (2.3).
        encryption_cipher => "encryption_cipher";
        /// `etrn_domain` (2.3).
        etrn_domain => "etrn_domain";
        /// `policy_context` (3.1).
        policy_context => "policy_context";
        /// `compatibility_level` (3.8).
        compatibility_level => "compatibility_level";
        /// `mail_version` (3.8).
        mail_version => "mail_version";
        /// `tls_sni` (3.12).
        tls_sni => "tls_sni";
    }

    /// `recipient_count` (2.3); `None` when absent or not a number.
    pub fn recipient_count(&self) -> Option<u64> {
        self.get("recipient_count")?.parse().ok()
    }

    /// `size` (2.1; the real size at END-OF-MESSAGE since 2.2).
    pub fn size(&self) -> Option<u64> {
        self.get("size")?.parse().ok()
    }

    /// `encryption_keysize` (2.3).
    pub fn encryption_keysize(&self) -> Option<u32> {
        self.get("encryption_keysize")?.parse().ok()
    }

    /// `client_port` (3.0).
    pub fn client_port(&self) -> Option<u16> {
        self.get("client_port")?.parse().ok()
    }

    /// `server_port` (3.2).
    pub fn server_port(&self) -> Option<u16> {
        self.get("server_port")?.parse().ok()
    }

    /// `protocol_state` (2.1): the SMTP stage of this request.
    pub fn protocol_state(&self) -> Option<ProtocolState> {
        self.get("protocol_state").map(ProtocolState::from_wire)
    }

    /// `client_address` (2.1) as an address; `None` when absent or not an IP address
    /// (Postfix sends `unknown` for a client it could not identify).
    pub fn client_address(&self) -> Option<IpAddr> {
        self.get("client_address")?.parse().ok()
    }

    /// `server_address` (3.2) as an address.
    pub fn server_address(&self) -> Option<IpAddr> {
        self.get("server_address")?.parse().ok()
    }

    /// `stress` (2.5): true when smtpd runs in stress mode (`stress=yes`).
    pub fn stress(&self) -> bool {
        self.get("stress") == Some("yes")
    }

    /// `sender` (2.1) as `Some(address)`, or `None` for the null sender (`<>`, sent as an
    /// empty value) and when absent.
    pub fn sender_address(&self) -> Option<&str> {
        self.sender().filter(|s| !s.is_empty())
    }

    /// Appends the wire form (`name=value\n` lines, then an empty line) to `out`.
    ///
    /// Re-encoding a decoded request gives back its bytes (for UTF-8 input).
    pub fn encode(&self, out: &mut BytesMut) {
        for (name, value) in &self.attrs {
            out.reserve(name.len() + value.len() + 2);
            out.put_slice(name.as_bytes());
            out.put_u8(b'=');
            out.put_slice(value.as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
    }
}

/// Every attribute name smtpd sends, 2.1 to 3.12.
pub const KNOWN: &[&str] = &[
    "request",
    "protocol_state",
    "protocol_name",
    "helo_name",
    "queue_id",
    "sender",
    "recipient",
    "recipient_count",
    "client_address",
    "client_name",
    "reverse_client_name",
    "instance",
    "sasl_method",
    "sasl_username",
    "sasl_sender",
    "size",
    "ccert_subject",
    "ccert_issuer",
    "ccert_fingerprint",
    "ccert_pubkey_fingerprint",
    "encryption_protocol",
    "encryption_cipher",
    "encryption_keysize",
    "etrn_domain",
    "stress",
    "client_port",
    "policy_context",
    "server_address",
    "server_port",
    "compatibility_level",
    "mail_version",
    "tls_sni",
];

/// The SMTP stage a request is about (`protocol_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtocolState {
    /// `CONNECT`: `smtpd_client_restrictions`.
    Connect,
    /// `EHLO`.
    Ehlo,
    /// `HELO`.
    Helo,
    /// `MAIL`: MAIL FROM.
    Mail,
    /// `RCPT`: RCPT TO.
    Rcpt,
    /// `DATA` (also BDAT since 3.4).
    Data,
    /// `END-OF-MESSAGE`.
    EndOfMessage,
    /// `VRFY`.
    Vrfy,
    /// `ETRN`.
    Etrn,
    /// A value this crate does not know (the raw text is in [`PolicyRequest::get`]).
    Other,
}

impl ProtocolState {
    /// Reads the wire value (exact, upper case, as smtpd sends it).
    pub fn from_wire(s: &str) -> Self {
        match s {
            "CONNECT" => Self::Connect,
            "EHLO" => Self::Ehlo,
            "HELO" => Self::Helo,
            "MAIL" => Self::Mail,
            "RCPT" => Self::Rcpt,
            "DATA" => Self::Data,
            "END-OF-MESSAGE" => Self::EndOfMessage,
            "VRFY" => Self::Vrfy,
            "ETRN" => Self::Etrn,
            _ => Self::Other,
        }
    }

    /// The wire value (`None` for [`ProtocolState::Other`]).
    pub fn as_wire(self) -> Option<&'static str> {
        Some(match self {
            Self::Connect => "CONNECT",
            Self::Ehlo => "EHLO",
            Self::Helo => "HELO",
            Self::Mail => "MAIL",
            Self::Rcpt => "RCPT",
            Self::Data => "DATA",
            Self::EndOfMessage => "END-OF-MESSAGE",
            Self::Vrfy => "VRFY",
            Self::Etrn => "ETRN",
            Self::Other => return None,
        })
    }
}
