//! Errors, by who is at fault:
//! - [`DecodeError`]: the peer sent bytes the protocol does not allow (a request to a server, a
//!   reply to a client);
//! - [`ActionError`] and [`AttributeError`]: our caller asked for a reply or a request that
//!   Postfix (or a policy server) would misread; refused when the value is built.
//!
//! The one consequence on the wire of a [`DecodeError`] in a server is written in
//! [`DecodeError::server_response`].

/// The peer sent bytes the protocol does not allow.
///
/// For a server the answer to every variant is the same (`docs/spec/policy-delegation.md`
/// §1.1, from `SMTPD_POLICY_README`, "Protocol description"): send nothing, log a warning,
/// close; Postfix then retries and, after `smtpd_policy_service_try_limit` attempts, applies
/// `smtpd_policy_service_default_action`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A line was longer than the decoder's line limit.
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// More attributes than the decoder's attribute limit.
    #[error("more than {limit} attributes in one request")]
    TooManyAttributes {
        /// The limit in force.
        limit: usize,
    },
    /// The request grew past the decoder's request size limit.
    #[error("request larger than {limit} bytes")]
    RequestTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The reply grew past the reply decoder's size limit.
    #[error("reply larger than {limit} bytes")]
    ReplyTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// A line without `=`.
    #[error("attribute line without '='")]
    MissingEquals,
    /// A line starting with `=` (no attribute name).
    #[error("attribute with an empty name")]
    EmptyName,
    /// A NUL byte, which Postfix never sends.
    #[error("NUL byte in an attribute")]
    Nul,
    /// A reply ended (empty line) without an `action` attribute; Postfix counts this as a
    /// failed request (`missing attribute action`).
    #[error("reply has no action attribute")]
    MissingAction,
    /// A reply's `action` is not UTF-8; Postfix (with `smtputf8_enable`, the default since
    /// 3.0) fails the request.
    #[error("reply action is not UTF-8")]
    NotUtf8,
    /// A reply's `action` is one Postfix would misread or refuse.
    #[error("bad reply action")]
    BadAction(#[source] ActionError),
}

/// What a server does on the wire after a [`DecodeError`]: the single place that maps peer
/// errors to a consequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerResponse {
    /// Send nothing, log a warning naming the peer and the error, close the connection.
    CloseWithoutReply,
}

impl DecodeError {
    /// The consequence of this error for a policy server: always
    /// [`ServerResponse::CloseWithoutReply`] (`SMTPD_POLICY_README`: "in case of trouble the
    /// server must not send a reply", and Postfix retries).
    pub fn server_response(&self) -> ServerResponse {
        ServerResponse::CloseWithoutReply
    }
}

/// A reply action that Postfix would misread, refused when it is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// A control character (CR, LF, NUL, TAB...) inside text: a line break would end the
    /// reply early, the others end up in SMTP replies and logs.
    #[error("{0} contains a control character")]
    ControlChar(&'static str),
    /// Text that must not be empty is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Text that starts with white space: Postfix skips it, so it would not round-trip.
    #[error("{0} starts with white space")]
    LeadingSpace(&'static str),
    /// An SMTP code outside 4NN/5NN, or one without text (Postfix reads a bare number as
    /// OK).
    #[error("SMTP code must be 4NN or 5NN followed by text")]
    BadCode,
    /// An enhanced status code that is not `class.subject.detail` with the class of the
    /// SMTP code.
    #[error("enhanced status code must be X.Y.Z with the class of the SMTP code")]
    BadEnhancedCode,
    /// A header for PREPEND that is not `name: value` with a printable name.
    #[error("PREPEND needs `Name: value` with a printable header name")]
    BadHeader,
    /// A FILTER, REDIRECT or BCC argument that is empty, holds white space, or lacks the
    /// `:` (FILTER) or `@` (REDIRECT, BCC) that Postfix requires.
    #[error("bad {0}")]
    BadArgument(&'static str),
    /// A reply whose first word is not an action Postfix knows (Postfix would evaluate it as
    /// a restriction name and answer `451 4.3.5 Server configuration error`).
    #[error("unknown action word")]
    UnknownAction,
}

/// A request attribute Postfix would never send, refused when it is added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttributeError {
    /// An empty name, or a name holding `=`, LF or NUL.
    #[error("attribute name is empty or holds '=', LF or NUL")]
    BadName,
    /// A value holding LF or NUL.
    #[error("attribute value holds LF or NUL")]
    BadValue,
}
