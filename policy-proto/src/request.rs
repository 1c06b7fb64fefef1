//! [`PolicyRequest`]: the attributes of one request, in order, with typed accessors.

use bytes::{BufMut, BytesMut};

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
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(name, value);
        self
    }

    /// Appends an attribute.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.attrs.push((name.into(), value.into()));
    }

    /// Every attribute, in the order received (duplicates included).
    pub fn attributes(&self) -> &[(String, String)] {
        &self.attrs
    }

    /// The last value of `name`, if present.
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
        /// `protocol_state` (2.1): CONNECT, EHLO, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE, VRFY, ETRN.
        protocol_state => "protocol_state";
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
        /// `client_address` (2.1), without brackets or `IPv6:`.
        client_address => "client_address";
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
        /// `stress` (2.5): `yes` under stress.
        stress => "stress";
        /// `policy_context` (3.1).
        policy_context => "policy_context";
        /// `server_address` (3.2).
        server_address => "server_address";
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

    /// Appends the wire form (`name=value\n` lines, then an empty line) to `out`.
    ///
    /// Names and values are written as given: build requests from decoded ones or from
    /// values without `\n` or NUL (a client sending Postfix-like requests), as the decoder
    /// would refuse the rest.
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
