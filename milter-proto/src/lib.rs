//! The Sendmail milter protocol (versions 2 to 6) as Postfix speaks it, sans-IO.
//!
//! A milter ("mail filter") is a process the MTA (Postfix, sendmail) talks to over a unix or TCP
//! socket while it receives a message: the MTA sends one command per SMTP event (connect, HELO,
//! MAIL, RCPT, headers, body chunks, end of message) and the filter answers with a decision
//! (continue, accept, reject, ...) and, at end of message, modifications (add a header, replace
//! the body, ...).
//!
//! ```text
//!  MTA                                        filter
//!   | -- OPTNEG (version, actions, protocol) --> |
//!   | <- OPTNEG (wanted subset, macro lists) --- |
//!   | -- MACRO C, CONNECT ---------------------> | c
//!   | -- MACRO H, HELO ------------------------> | c
//!   | -- MACRO M, MAIL; MACRO R, RCPT... ------> | c
//!   | -- DATA, HEADER..., EOH, BODY... --------> | c   (no reply for NR_* stages)
//!   | -- MACRO E, BODYEOB ---------------------> | h/i/m/+/-/e/b/q..., then a/c/r/t/d/y
//!   | -- ABORT (next message: MAIL ...) -------> |
//!   | -- QUIT (or QUIT_NC: new connection) ----> |
//! ```
//!
//! This crate does no I/O: callers read bytes into a [`bytes::BytesMut`], call a decoder, and
//! write what an encoder appends. Every decoder follows one contract:
//! `decode(&mut BytesMut, max_len) -> Result<Option<T>, DecodeError>`, where `Ok(None)` means
//! "need more bytes" and consumes nothing; the announced length is checked (>= 1, <= the
//! maximum) before anything is reserved; payload parsers consume the whole payload or fail; a
//! body chunk is split off the input without copying.
//!
//! # What is where
//!
//! The sans-IO core is at the crate root:
//!
//! - the codec: [`Command`] (every `SMFIC_*` the MTA sends, with [`ConnAddr`]) and [`Reply`]
//!   (every `SMFIR_*` a filter sends, and the OPTNEG answer), each with `decode`,
//!   `from_frame`, `encode` and `code`; the framing below them, [`Frame`], [`decode_frame`],
//!   [`encode_frame`]; [`DecodeError`].
//! - negotiation: [`Actions`] (`SMFIF_*`), [`Protocol`] (`SMFIP_*`), [`Needs`] (what a filter
//!   asks), [`Negotiated`] (what was agreed: `sends`, `expects_reply`, `max_frame_len`),
//!   [`NegotiateError`], [`PROTOCOL_VERSION`], [`MIN_PROTOCOL_VERSION`]; [`MacroStage`], the
//!   stages of macro lists.
//! - the filter side: [`Session`] (`new(needs, limits)`, `handle(&Command) -> Result<Step,
//!   ProtocolError>` which also negotiates OPTNEG, `negotiated`, `max_frame_len`,
//!   `check_modification`, `macros`, `in_message`), [`Step`], [`ProtocolError`],
//!   [`SessionLimits`], [`HeaderLimits`], [`Macros`] (the macros received, per stage, and
//!   their lifetime); [`ApiMisuse`].
//! - the MTA side: [`MtaSession`] (`offer`, `send` says what is owed, `receive` checks the
//!   OPTNEG answer and every reply), [`Expect`], [`Received`], [`MtaError`]. The tokio
//!   `server` and `client` are drivers of these two sessions.
//! - sockets: [`SocketSpec`] and [`SpecError`], the Postfix forms `unix:/path` and
//!   `inet:host:port` and the libmilter forms `local:/path`, `inet:port@host`, `inet6:port@host`
//!   (`inet:port` means every address; `policy-proto` reads the same grammar); with `tokio`,
//!   `Listener` (unix socket mode 0660 and a group through `UnixOptions`, a stale file
//!   replaced only when nothing listens on it, removal on drop; `TCP_NODELAY`), `connect`,
//!   `Stream`, `Peer`.
//!
//! With the feature `tokio`, two modules run it on sockets:
//!
//! - `server`: `Handler` (one async method per stage), `Context` (macros, modifications,
//!   progress), `Decision`, `serve` (accept loop, connection limit, idle timeout and a
//!   deadline per command, graceful shutdown with a grace period), `serve_connection`,
//!   `ServerConfig`.
//! - `client`: the MTA side, `Client` (connect, negotiate, send a whole message stage by stage
//!   as Postfix does), `Connection`, `Message`, `Outcome`.
//!
//! # Limits
//!
//! Every limit is a named constant with its reason: [`DEFAULT_MAX_FRAME_LEN`] (checked before
//! anything is reserved), [`MAX_REPLBODY_CHUNK`] (65535, libmilter's chunk),
//! [`DEFAULT_MAX_HEADERS`] and [`DEFAULT_MAX_HEADER_BYTES`] per message,
//! [`DEFAULT_MAX_MACRO_BYTES`] per connection; with `tokio`, the server's timeouts and
//! connection limit (`server::DEFAULT_*`) and the client's (`client::DEFAULT_*`, Postfix's
//! `milter_*_timeout`). Beyond a limit the server sends its configured default reply
//! (tempfail) and closes, as Postfix's own side does.
//!
//! # Feature `tokio`
//!
//! Off by default (the codec above needs no runtime). With it, a filter is a [`Handler`]
//! value per MTA connection; `serve` runs it on a socket, and the `client` plays the MTA.
//! Here both ends meet over an in-memory pipe:
//!
#![cfg_attr(feature = "tokio", doc = "[`Handler`]: server::Handler")]
#![cfg_attr(not(feature = "tokio"), doc = "[`Handler`]: self#feature-tokio")]
//!
//! ```
//! # #[cfg(feature = "tokio")] {
//! use bytes::Bytes;
//! use milter_proto::client::{Client, ClientConfig, Connection, Message};
//! use milter_proto::{Actions, Needs, Reply};
//! use milter_proto::server::{Context, Decision, Handler, ServerConfig, async_trait};
//!
//! /// Adds `X-Stamp: yes` to every message.
//! struct Stamp;
//!
//! #[async_trait]
//! impl Handler for Stamp {
//!     fn needs(&self) -> Needs {
//!         Needs { actions: Actions::ADDHDRS, ..Needs::default() }
//!     }
//!     async fn eom(&mut self, ctx: &mut Context) -> Decision {
//!         match ctx.add_header("X-Stamp", "yes") {
//!             Ok(()) => Decision::Accept,
//!             Err(_) => Decision::Tempfail,
//!         }
//!     }
//! }
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! rt.block_on(async {
//!     let (mta, milter) = tokio::io::duplex(64 * 1024);
//!     // A real filter calls `serve(Listener::bind(&spec, ..).await?, || Stamp, ..)`.
//!     let config = ServerConfig::default();
//!     let server = tokio::spawn(async move {
//!         milter_proto::server::serve_connection(milter, Stamp, &config).await
//!     });
//!     let mut client = Client::negotiate(mta, ClientConfig::default()).await.unwrap();
//!     client.connection(&Connection::default()).await.unwrap();
//!     let raw = b"Subject: hi\r\n\r\nHello\r\n";
//!     let msg = Message::parse(b"<a@example.org>", &[b"<b@example.net>"], raw);
//!     let outcome = client.message(&msg).await.unwrap();
//!     assert_eq!(outcome.decision, Reply::Accept);
//!     let stamp = Reply::AddHeader { name: Bytes::from("X-Stamp"), value: Bytes::from("yes") };
//!     assert_eq!(outcome.modifications, [stamp]);
//!     client.quit().await.unwrap();
//!     server.await.unwrap().unwrap();
//! });
//! # }
//! ```
//!
//! # Driving a milter from the MTA side, without a runtime
//!
//! The same rules the tokio `client` follows are in [`MtaSession`]: it makes the OPTNEG offer,
//! checks the milter's answer against it, says for each command whether a reply is owed
//! ([`Expect`]) and checks every reply against the command it answers ([`Received`]). Here it
//! drives a milter over a blocking socket pair, the milter being a plain loop around
//! [`Session`] on a thread:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::os::unix::net::UnixStream;
//!
//! use bytes::{Bytes, BytesMut};
//! use milter_proto::{Actions, Command, ConnAddr, DEFAULT_MAX_FRAME_LEN, DecodeError, Expect};
//! use milter_proto::{MtaSession, Needs, PROTOCOL_VERSION, Protocol, Received, Reply, Session};
//! use milter_proto::{SessionLimits, Step};
//!
//! /// Read until `decode` has a whole packet; `None` when the peer closed.
//! fn read<T>(
//!     sock: &mut UnixStream,
//!     buf: &mut BytesMut,
//!     decode: impl Fn(&mut BytesMut) -> Result<Option<T>, DecodeError>,
//! ) -> std::io::Result<Option<T>> {
//!     loop {
//!         if let Some(t) = decode(buf).map_err(std::io::Error::other)? {
//!             return Ok(Some(t));
//!         }
//!         let mut chunk = [0; 4096];
//!         match sock.read(&mut chunk)? {
//!             0 => return Ok(None),
//!             n => buf.extend_from_slice(&chunk[..n]),
//!         }
//!     }
//! }
//!
//! let (mut mta_sock, mut milter_sock) = UnixStream::pair()?;
//!
//! // The milter: `Session` negotiates and says when a decision is due. It stamps each message.
//! let milter = std::thread::spawn(move || -> std::io::Result<()> {
//!     let needs = Needs { actions: Actions::ADDHDRS, ..Needs::default() };
//!     let mut session = Session::new(needs, SessionLimits::default());
//!     let mut buf = BytesMut::new();
//!     loop {
//!         let max = session.max_frame_len();
//!         let Some(cmd) = read(&mut milter_sock, &mut buf, |b| Command::decode(b, max))? else {
//!             return Ok(());
//!         };
//!         let mut out = BytesMut::new();
//!         match session.handle(&cmd).map_err(std::io::Error::other)? {
//!             Step::Negotiated { reply, .. } => reply.encode(&mut out),
//!             Step::Reply if matches!(cmd, Command::BodyEob(_)) => {
//!                 let stamp = Reply::AddHeader { name: "X-Stamp".into(), value: "yes".into() };
//!                 session.check_modification(&stamp).map_err(std::io::Error::other)?;
//!                 stamp.encode(&mut out);
//!                 Reply::Accept.encode(&mut out);
//!             }
//!             Step::Reply => Reply::Continue.encode(&mut out),
//!             Step::NoReply => {}
//!             Step::Close => return Ok(()),
//!             other => return Err(std::io::Error::other(format!("unhandled {other:?}"))),
//!         }
//!         milter_sock.write_all(&out)?;
//!     }
//! });
//!
//! // The MTA: offer everything, as Postfix does, and check what the milter asks for.
//! let mut mta = MtaSession::new(PROTOCOL_VERSION, Actions::all(), Protocol::all());
//! let mut buf = BytesMut::new();
//! let mut out = BytesMut::new();
//! mta.offer().encode(&mut out);
//! mta_sock.write_all(&out)?;
//! let answer = read(&mut mta_sock, &mut buf, |b| Reply::decode(b, DEFAULT_MAX_FRAME_LEN))?;
//! assert_eq!(mta.receive(&answer.ok_or("milter closed")?)?, Received::Negotiated);
//! assert_eq!(mta.negotiated().actions, Actions::ADDHDRS);
//!
//! let message = [
//!     Command::Connect {
//!         hostname: "client.example".into(),
//!         addr: ConnAddr::Inet { port: 40000, address: "192.0.2.1".into() },
//!     },
//!     Command::Helo("client.example".into()),
//!     Command::Mail { sender: "<a@example.org>".into(), args: vec![] },
//!     Command::Rcpt { rcpt: "<b@example.net>".into(), args: vec![] },
//!     Command::Header { name: "Subject".into(), value: " hi".into() },
//!     Command::Eoh,
//!     Command::Body("Hello\r\n".into()),
//!     Command::BodyEob(Bytes::new()),
//! ];
//! let (mut decisions, mut modifications) = (Vec::new(), Vec::new());
//! for cmd in message {
//!     if !mta.sends(&cmd) {
//!         continue; // negotiated away (`NO*`)
//!     }
//!     let expect = mta.send(&cmd)?;
//!     out.clear();
//!     cmd.encode(&mut out);
//!     mta_sock.write_all(&out)?;
//!     if expect == Expect::Nothing {
//!         continue; // a no-reply (`NR_*`) stage
//!     }
//!     loop {
//!         let reply = read(&mut mta_sock, &mut buf, |b| Reply::decode(b, DEFAULT_MAX_FRAME_LEN))?
//!             .ok_or("milter closed while a reply was owed")?;
//!         // An error here is a milter breaking the rules: an MTA applies its default
//!         // action (tempfail) and closes.
//!         match mta.receive(&reply)? {
//!             Received::Final => break decisions.push(reply),
//!             Received::Modification => modifications.push(reply),
//!             _ => {} // PROGRESS: keep waiting
//!         }
//!     }
//!     // A real MTA stops the transaction at a decision other than CONTINUE.
//! }
//! assert_eq!(decisions.last(), Some(&Reply::Accept));
//! let stamp = Reply::AddHeader { name: "X-Stamp".into(), value: "yes".into() };
//! assert_eq!(modifications, [stamp]);
//!
//! assert_eq!(mta.send(&Command::Quit)?, Expect::Nothing);
//! out.clear();
//! Command::Quit.encode(&mut out);
//! mta_sock.write_all(&out)?;
//! milter.join().expect("the milter thread panicked")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The codec alone
//!
//! ```
//! use bytes::BytesMut;
//! use milter_proto::{Command, DEFAULT_MAX_FRAME_LEN, Reply};
//!
//! let mut buf = BytesMut::new();
//! Command::Helo("mx.example".into()).encode(&mut buf);
//! let cmd = Command::decode(&mut buf, DEFAULT_MAX_FRAME_LEN);
//! assert_eq!(cmd, Ok(Some(Command::Helo("mx.example".into()))));
//! assert!(buf.is_empty());
//!
//! let mut out = BytesMut::new();
//! Reply::Continue.encode(&mut out);
//! assert_eq!(&out[..], b"\0\0\0\x01c");
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

#[cfg(feature = "tokio")]
pub mod client;
mod command;
mod flags;
mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[allow(clippy::panic)]
pub mod fuzzing;
mod macros;
mod negotiate;
mod reply;
#[cfg(feature = "tokio")]
pub mod server;
mod session;
mod socket;
mod wire;

pub use command::{Command, ConnAddr};
pub use flags::{Actions, Protocol};
pub use frame::{
    DEFAULT_MAX_FRAME_LEN, Frame, MAX_FRAME_LEN_1M, MAX_FRAME_LEN_256K, decode_frame, encode_frame,
};
pub use macros::{DEFAULT_MAX_MACRO_BYTES, MacroStage, Macros, UnknownMacroStage};
pub use negotiate::{MIN_PROTOCOL_VERSION, Needs, NegotiateError, Negotiated, PROTOCOL_VERSION};
pub use reply::{MAX_REPLBODY_CHUNK, Reply};
pub use session::{
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS, Expect, HeaderLimits, MtaError, MtaSession,
    ProtocolError, Received, Session, SessionLimits, Step,
};
#[cfg(feature = "tokio")]
pub use socket::{DEFAULT_UNIX_MODE, Listener, Peer, Stream, UnixOptions, connect, group_id};
pub use socket::{SocketSpec, SpecError};

/// A mistake by the code using this crate (not by the peer), e.g. queueing a modification
/// that was not negotiated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// The modification needs an action (`SMFIF_*`) that negotiation did not agree.
    #[error("milter action {0:?} was not negotiated")]
    NotNegotiated(Actions),
    /// Modifications can only be made at end of message.
    #[error("milter modifications are only possible at end of message")]
    NotAtEndOfMessage,
    /// A string field contains NUL, which ends fields on the wire.
    #[error("milter string field contains NUL")]
    ContainsNul,
}

/// Why bytes from the peer could not be decoded. Once returned, the stream is out of sync:
/// answer with the configured default (tempfail) if possible, and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length field was 0 (a packet holds at least its command byte).
    #[error("milter packet with length 0")]
    ZeroLength,
    /// The length field exceeds the configured maximum (e.g. text read as a length).
    #[error("milter packet length {len} exceeds the maximum {max}")]
    TooLong {
        /// The announced length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The command byte is not one this decoder knows.
    #[error("unknown milter command byte {0:#04x}")]
    UnknownCommand(u8),
    /// The payload ended before a field was complete (missing NUL, short integer).
    #[error("truncated milter payload for command {cmd:?}: {what}")]
    Truncated {
        /// The command byte as a char.
        cmd: char,
        /// Which field was incomplete.
        what: &'static str,
    },
    /// Bytes remained after the last field of the payload.
    #[error("trailing bytes in milter payload for command {0:?}")]
    Trailing(char),
    /// A field held a value outside its domain (e.g. an unknown connect family).
    #[error("invalid milter payload for command {cmd:?}: {what}")]
    Invalid {
        /// The command byte as a char.
        cmd: char,
        /// What was wrong.
        what: &'static str,
    },
}
