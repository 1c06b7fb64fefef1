//! Errors: [`DecodeError`] when the peer sent bytes the protocol does not allow, and
//! [`ActionError`] when our caller asked for a reply Postfix would misread.

/// The peer sent a request the protocol does not allow. The server's answer to every variant
/// is the same (`SMTPD_POLICY_README`, "Protocol description"): send nothing, log, close;
/// Postfix then retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A line was longer than the decoder's line limit.
    #[error("request line longer than {limit} bytes")]
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
    /// A line without `=`.
    #[error("attribute line without '='")]
    MissingEquals,
    /// A line starting with `=` (no attribute name).
    #[error("attribute with an empty name")]
    EmptyName,
    /// A NUL byte, which Postfix never sends.
    #[error("NUL byte in a request")]
    Nul,
}

/// A reply that Postfix would misread, refused when it is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// A CR, LF or NUL inside text: it would end the reply early.
    #[error("{0} contains a line break or NUL")]
    LineBreak(&'static str),
    /// An SMTP code outside 4NN/5NN, or one without text (Postfix reads a bare number as OK).
    #[error("SMTP code must be 4NN or 5NN followed by text")]
    BadCode,
    /// An enhanced status code whose class does not match the SMTP code, or malformed.
    #[error("enhanced status code must be X.Y.Z with the class of the SMTP code")]
    BadEnhancedCode,
    /// A header for PREPEND that is not `name: value` with a printable name.
    #[error("PREPEND needs `Name: value` with a printable header name")]
    BadHeader,
    /// An argument that must not be empty (FILTER destination, REDIRECT/BCC address).
    #[error("{0} must not be empty or contain spaces")]
    BadArgument(&'static str),
    /// A reply whose first word is not an action Postfix knows.
    #[error("unknown action word")]
    UnknownAction,
    /// A reply without an `action=` attribute before its empty line.
    #[error("reply has no action attribute")]
    MissingAction,
}
