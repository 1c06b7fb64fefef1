//! The Postfix SMTPD access policy delegation protocol, sans-IO.
//!
//! Postfix's smtpd sends a policy server a request of `name=value` lines ended by an empty
//! line, and reads back `action=<access(5) action>` and an empty line, many times over one
//! connection (`docs/spec/policy-delegation.md`, from `SMTPD_POLICY_README`). This crate holds
//! the wire types and the codec, and does no I/O: the caller reads bytes into a
//! [`bytes::BytesMut`], asks a [`RequestDecoder`] for requests, and writes what
//! [`Action::encode`] appends.
//!
//! Protocol rules the crate keeps:
//! - unknown attributes are kept, in order ([`PolicyRequest::unknown`]);
//! - a duplicated attribute: accessors return the last value;
//! - only the first `=` of a line splits name from value;
//! - on a malformed request a server sends **nothing**, logs, and closes ([`DecodeError`]);
//!   Postfix then retries;
//! - a reply can only hold what Postfix reads as meant ([`Action`]'s constructors).
//!
//! # Layout
//! - [`RequestDecoder`]: incremental, bounded request decoding ([`MAX_LINE`], [`MAX_ATTRS`],
//!   [`MAX_REQUEST`]).
//! - [`PolicyRequest`]: the attributes, typed accessors for every one smtpd sends (2.1 to
//!   3.12), and `encode` for clients.
//! - [`Action`]: the reply, its encoder, and [`decode_reply`] for clients.
//!
//! ```
//! use bytes::BytesMut;
//! use policy_proto::{Action, RequestDecoder};
//!
//! let mut buf = BytesMut::from(&b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.com\n\n"[..]);
//! let req = RequestDecoder::new().decode(&mut buf).unwrap().unwrap();
//! assert_eq!(req.sender(), Some("a@example.com"));
//! let mut out = BytesMut::new();
//! Action::smtp(550, Some("5.7.1"), "no thanks").unwrap().encode(&mut out);
//! assert_eq!(&out[..], b"action=550 5.7.1 no thanks\n\n");
//! ```
//!
//! Not yet here: the tokio server and client (unix socket, TCP, spawn(8) stdin/stdout);
//! `mailstack`'s `spf-policyd` still serves the protocol with its own loop.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod action;
mod decoder;
mod error;
mod request;

pub use action::{Action, Text, decode_reply};
pub use decoder::{MAX_ATTRS, MAX_LINE, MAX_REQUEST, RequestDecoder};
pub use error::{ActionError, DecodeError};
pub use request::{KNOWN, PolicyRequest};

/// Entry points for the cargo-fuzz targets in `fuzz/` and the stable corpus-replay test.
/// Not a public API.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::BytesMut;

    use crate::{Action, PolicyRequest, RequestDecoder, decode_reply};

    /// Decodes every request in `data` (small limits, so limit paths are reached), checks
    /// that each re-encodes to something that decodes to the same request, and runs the
    /// reply decoder over the same bytes.
    pub fn policy_request(data: &[u8]) {
        let mut buf = BytesMut::from(data);
        let mut dec = RequestDecoder::with_limits(256, 64, 4096);
        while let Ok(Some(req)) = dec.decode(&mut buf) {
            let mut wire = BytesMut::new();
            req.encode(&mut wire);
            let again: Option<PolicyRequest> =
                RequestDecoder::new().decode(&mut wire).ok().flatten();
            assert_eq!(again.as_ref(), Some(&req), "re-encoded request changed");
        }
        let mut buf = BytesMut::from(data);
        if let Ok(Some(action)) = decode_reply(&mut buf) {
            let mut wire = BytesMut::new();
            action.encode(&mut wire);
            assert_eq!(decode_reply(&mut wire).ok().flatten(), Some(action));
        }
        let _ = Action::parse(&String::from_utf8_lossy(data));
    }
}
