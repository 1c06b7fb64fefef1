//! Where a milter listens: socket specs in Postfix and libmilter syntax, and (feature `tokio`)
//! binding and connecting them. Re-exported at the crate root.
//!
//! The grammar, the listener and the accept loop are the ones `policy-proto` uses too (crate
//! `mailstack-transport`): the same string means the same socket to both.
//!
//! | spec | meaning |
//! |---|---|
//! | `unix:/path`, `local:/path`, `/path`, `./path`, `name` | unix-domain socket (Postfix, libmilter, bare path) |
//! | `inet:host:port`, `inet:[::1]:port` | TCP, Postfix style |
//! | `inet:port@host`, `inet6:port@host` | TCP, libmilter style |
//! | `inet:port`, `inet6:port` | TCP on every IPv4 (`0.0.0.0`) / IPv6 (`::`) address, as libmilter |
//!
//! Unix socket files get mode `0o660` by default (`UnixOptions`, feature `tokio`), with a group you choose;
//! a stale one is replaced only when nothing listens on it, and the listener removes its file
//! when dropped.

pub use mailstack_transport::{SocketSpec, SpecError};

#[cfg(feature = "tokio")]
pub use mailstack_transport::{
    DEFAULT_UNIX_MODE, Listener, Peer, Stream, UnixOptions, connect, group_id,
};
