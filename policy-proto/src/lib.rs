//! The Postfix SMTPD access policy delegation protocol: a sans-IO codec, and (feature
//! `tokio`) a server and a client.
//!
//! # The protocol
//!
//! Postfix's smtpd (`check_policy_service`, since 2.1) sends a policy server a request of
//! `name=value` lines ended by an empty line, and reads back `action=<access(5) action>` and
//! an empty line, many times over one connection (`docs/spec/policy-delegation.md`, from
//! `SMTPD_POLICY_README`):
//!
//! ```text
//!  smtpd                                   policy server
//!    | request=smtpd_access_policy\n            |
//!    | protocol_state=RCPT\n                    |
//!    | sender=a@example.com\n ... \n             |
//!    |----------------------------------------->|  decode: RequestDecoder
//!    |                                          |  decide: Handler
//!    |<-----------------------------------------|  encode: Action::encode
//!    |          action=DEFER_IF_PERMIT later\n\n |
//!    |  ... next request on the same connection |
//!    |  on trouble: no reply, close ----------->|  Postfix retries, then default_action
//! ```
//!
//! Rules the crate keeps:
//! - unknown attributes are kept, in order ([`PolicyRequest::unknown`]), never dropped;
//! - a duplicated attribute is kept twice; the accessors return the last value;
//! - only the first `=` of a line splits name from value (values may hold `=`);
//! - limits are named ([`MAX_LINE`], [`MAX_ATTRS`] = Postfix's 1024, [`MAX_REQUEST`]) and
//!   checked before the buffer grows further;
//! - on a malformed request a server sends **nothing**, logs a warning and closes
//!   ([`DecodeError::server_response`]); Postfix then retries and finally applies
//!   `smtpd_policy_service_default_action`;
//! - a reply can only hold what Postfix reads as meant: no bare `550` (read as OK), no
//!   unknown word (read as a restriction name), no line break ([`Action`]'s argument types
//!   check at construction).
//!
//! # Who does the I/O
//!
//! Without features this crate does no I/O and depends on `bytes` and `thiserror` only: the
//! caller reads bytes into a [`bytes::BytesMut`], asks a [`RequestDecoder`] for requests, and
//! writes what [`Action::encode`] appends (or, as a client, [`PolicyRequest::encode`] and
//! [`ReplyDecoder`]).
//!
//! ```
//! use bytes::BytesMut;
//! use policy_proto::{Action, ProtocolState, RequestDecoder};
//!
//! let mut dec = RequestDecoder::new();
//! let mut buf = BytesMut::from(&b"request=smtpd_access_policy\nprotocol_state=RCPT\n"[..]);
//! assert_eq!(dec.decode(&mut buf), Ok(None)); // need more
//! buf.extend_from_slice(b"sender=a@example.com\n\n");
//! let req = dec.decode(&mut buf).unwrap().unwrap();
//! assert_eq!(req.protocol_state(), Some(ProtocolState::Rcpt));
//! assert_eq!(req.sender(), Some("a@example.com"));
//! let mut out = BytesMut::new();
//! Action::smtp(550, Some("5.7.1"), "no thanks").unwrap().encode(&mut out);
//! assert_eq!(&out[..], b"action=550 5.7.1 no thanks\n\n");
//! ```
//!
//! With the `tokio` feature the crate also runs the I/O: implement [`Handler`] (one async
//! method, request in, `Option<Action>` out; `None` closes without a reply; override
//! [`Handler::respond`] to send a [`Reply`] in another server's spelling or a restriction class
//! name) and hand it to a [`Server`], which serves
//! - a [`Listener`] bound from a Postfix-style [`SocketSpec`] (`unix:/path`, `local:/path`, a
//!   bare path, `inet:host:port`, `inet:port@host`, `inet:port` for every address: the grammar
//!   `milter-proto` reads too): [`Server::serve`] with a shutdown future; UNIX sockets get
//!   mode 0660 and a group ([`UnixOptions`]), a stale socket file is replaced only when nothing
//!   listens on it, and the file is removed on drop;
//! - stdin/stdout under Postfix spawn(8): [`Server::serve_stdio`] (stderr is the connection
//!   too there: log to a file or syslog);
//! - any stream: [`Server::serve_connection`].
//!
//! Connections are reused for many requests, closed after [`Limits::idle_timeout`] of
//! silence or [`Limits::max_requests`], and a graceful shutdown finishes the request in
//! progress. [`Client`] is the other side (what smtpd does), for tests, benches and tools.
//!
//! A complete policy server: it defers mail from real senders once ("greylisting" without the
//! memory) and lets bounces through; here it listens on a loopback port and a [`Client`]
//! plays smtpd. Under Postfix it would bind `unix:/var/spool/postfix/private/greylist` with
//! `UnixOptions::new(Some(0o660), Some("postfix".into()))` and stop on a signal.
//!
#![cfg_attr(feature = "tokio", doc = "```")]
#![cfg_attr(not(feature = "tokio"), doc = "```ignore")]
//! use policy_proto::{Action, Client, ConnInfo, Handler, Listener, PolicyRequest, Server};
//! use policy_proto::UnixOptions;
//!
//! struct Greylist;
//!
//! impl Handler for Greylist {
//!     async fn handle(&self, req: PolicyRequest, _conn: &ConnInfo) -> Option<Action> {
//!         match req.sender_address() {
//!             None => Some(Action::Dunno), // null sender: a bounce
//!             Some(_) => Action::defer_if_permit(Some("4.7.1 try again later")).ok(),
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let listener = Listener::bind_spec("inet:127.0.0.1:0", &UnixOptions::default()).await?;
//!     let spec = listener.local_spec()?;
//!     let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//!     let server = tokio::spawn(async move {
//!         Server::new(Greylist)
//!             .serve(listener, async { let _ = stopped.await; })
//!             .await
//!     });
//!
//!     // smtpd's side: several requests over one connection.
//!     let mut smtpd = Client::connect(&spec).await?;
//!     let rcpt = PolicyRequest::new()
//!         .with("request", "smtpd_access_policy")?
//!         .with("protocol_state", "RCPT")?
//!         .with("recipient", "b@example.net")?;
//!     let from_someone = rcpt.clone().with("sender", "a@example.org")?;
//!     let bounce = rcpt.with("sender", "")?;
//!     let deferred = Action::defer_if_permit(Some("4.7.1 try again later"))?;
//!     assert_eq!(smtpd.request(&from_someone).await?, deferred);
//!     assert_eq!(smtpd.request(&bounce).await?, Action::Dunno);
//!     smtpd.close().await?;
//!
//!     let _ = stop.send(());
//!     server.await??;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # Layout
//! - `decoder`: [`RequestDecoder`] and [`ReplyDecoder`], incremental and bounded
//!   ([`MAX_LINE`], [`MAX_ATTRS`], [`MAX_REQUEST`], [`MAX_REPLY`]).
//! - `request`: [`PolicyRequest`], typed accessors for every attribute smtpd sends from 2.1
//!   to 3.12 ([`KNOWN`]), [`ProtocolState`], and `encode` for clients.
//! - `action`: [`Action`] and its checked arguments ([`Text`], [`SmtpReply`], [`Header`],
//!   [`FilterTarget`], [`Address`]), encode and parse; [`Reply`], what a server sends (an
//!   action, an action in another server's spelling, or a restriction class name).
//! - `error`: [`DecodeError`] (the peer's fault, and the one wire consequence),
//!   [`ActionError`] and [`AttributeError`] (our caller's).
//! - `spec`: [`SocketSpec`], Postfix socket notation.
//! - `server` (feature `tokio`): [`Handler`], [`Server`], [`Listener`], [`Limits`] and the
//!   timeouts, the logging policy.
//! - `client` (feature `tokio`): [`Client`].
//! - `fuzzing` (hidden, feature `fuzzing`): entry points for `fuzz/fuzz_targets/policy_request.rs` and the
//!   corpus replay test.
//!
//! Tests: `tests/codec.rs` (proptests), `tests/vectors/` (one request per Postfix version and
//! its decoded form, runner `tests/vectors.rs`), `tests/corpus.rs` (fuzz seeds on stable),
//! `tests/server.rs` (server and client). The interop tests against real Postfix are in
//! `examples/tests/policy_postfix.rs`.

// The crate doc names the `tokio` feature's items; without the feature they do not exist.
#![cfg_attr(not(feature = "tokio"), allow(rustdoc::broken_intra_doc_links))]
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
mod spec;

#[cfg(feature = "tokio")]
mod client;
#[cfg(feature = "tokio")]
mod server;

pub use action::{Action, Address, FilterTarget, Header, Reply, SmtpReply, Text};
pub use decoder::{MAX_ATTRS, MAX_LINE, MAX_REPLY, MAX_REQUEST, ReplyDecoder, RequestDecoder};
pub use error::{ActionError, AttributeError, DecodeError, ServerResponse};
pub use request::{KNOWN, PolicyRequest, ProtocolState};
pub use spec::{SocketSpec, SpecError};

#[cfg(feature = "tokio")]
pub use client::{CLIENT_TIMEOUT, Client, ClientError};
#[cfg(feature = "tokio")]
pub use server::{
    ConnEnd, ConnError, ConnInfo, FnHandler, Handler, IDLE_TIMEOUT, IO_TIMEOUT, Limits, Listener,
    MAX_CONNECTIONS, MAX_REQUESTS_PER_CONNECTION, Peer, SHUTDOWN_GRACE, Server, UnixOptions,
    handler_fn, log_error,
};

/// Entry points for the cargo-fuzz targets in `fuzz/` and the stable corpus-replay test
/// (feature `fuzzing`). Not a public API.
#[cfg(feature = "fuzzing")]
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
