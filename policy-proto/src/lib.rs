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
//! - [`Action`]: the reply, its encoder, and [`ReplyDecoder`] for clients.
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

pub use action::{Action, Address, FilterTarget, Header, SmtpReply, Text};
pub use decoder::{MAX_ATTRS, MAX_LINE, MAX_REPLY, MAX_REQUEST, ReplyDecoder, RequestDecoder};
pub use error::{ActionError, AttributeError, DecodeError, ServerResponse};
pub use request::{KNOWN, PolicyRequest, ProtocolState};

/// Entry points for the cargo-fuzz targets in `fuzz/` and the stable corpus-replay test.
/// Not a public API.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::BytesMut;

    use crate::{Action, ReplyDecoder, RequestDecoder};

    /// Maps arbitrary bytes onto the protocol's alphabet (as mail-auth's fuzz target does), so
    /// the fuzzer spends its time on `name=value` structure rather than on random bytes.
    pub fn to_alphabet(data: &[u8]) -> Vec<u8> {
        const ALPHABET: &[u8] = b"\n\n\n===abcdeqrstuy_.@:0123456789 -ACDEKLOPRTUX";
        data.iter()
            .map(|b| {
                let i = usize::from(*b) % ALPHABET.len();
                ALPHABET.get(i).copied().unwrap_or(b'\n')
            })
            .collect()
    }

    /// Runs [`decode_all`] over the input as is and mapped onto the protocol alphabet.
    pub fn policy_request(data: &[u8]) {
        decode_all(data);
        decode_all(&to_alphabet(data));
    }

    /// Decodes every request in `data` (small limits, so the limit paths are reached), checks
    /// that each re-encodes to something that decodes to the same request, and that re-encoding
    /// a request reproduces its bytes when they were UTF-8; then runs the reply decoder over
    /// the same bytes and checks that each reply re-encodes to the same action.
    pub fn decode_all(data: &[u8]) {
        let mut buf = BytesMut::from(data);
        let mut dec = RequestDecoder::with_limits(256, 64, 4096);
        loop {
            let before = buf.clone();
            let Ok(Some(req)) = dec.decode(&mut buf) else {
                break;
            };
            let mut wire = BytesMut::new();
            req.encode(&mut wire);
            let consumed = before.len() - buf.len();
            if let Some(orig) = before.get(..consumed)
                && std::str::from_utf8(orig).is_ok()
            {
                assert_eq!(&wire[..], orig, "re-encoding changed the bytes");
            }
            let again = RequestDecoder::new().decode(&mut wire).ok().flatten();
            assert_eq!(again.as_ref(), Some(&req), "re-encoded request changed");
        }
        let mut buf = BytesMut::from(data);
        let mut replies = ReplyDecoder::new();
        while let Ok(Some(action)) = replies.decode(&mut buf) {
            let mut wire = BytesMut::new();
            action.encode(&mut wire);
            let again = ReplyDecoder::new().decode(&mut wire).ok().flatten();
            assert_eq!(again, Some(action), "re-encoded reply changed");
        }
        let _ = Action::parse(&String::from_utf8_lossy(data));
    }
}
