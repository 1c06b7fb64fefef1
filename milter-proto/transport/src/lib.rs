//! The transport both protocol crates share: one socket-spec grammar ([`SocketSpec`]) and,
//! with feature `tokio`, one [`Listener`] and one accept loop ([`serve`]).
//!
//! `milter-proto` and `policy-proto` re-export what they need behind their own `tokio`
//! feature; a third party depends on the protocol crate, not on this one. The grammar needs no
//! tokio, so the protocol crates' default builds stay free of it.
//!
//! # Socket specs
//!
//! | spec | meaning |
//! |---|---|
//! | `unix:/path`, `local:/path` | unix-domain socket (Postfix, libmilter) |
//! | `/path`, `./path`, `private/name` | a bare path: unix-domain socket too |
//! | `inet:host:port`, `inet:[::1]:port` | TCP, Postfix style |
//! | `inet:port@host`, `inet6:port@host`, `inet6:port@[::1]` | TCP, libmilter style |
//! | `inet:port` | TCP on every IPv4 address (`0.0.0.0`), as libmilter does |
//! | `inet6:port` | TCP on every IPv6 address (`::`) |
//!
//! A relative unix path is relative to the current directory (Postfix takes it relative to its
//! queue directory, so `unix:private/NAME` in `main.cf` is `$queue_directory/private/NAME`).
//! `port@host` is read only when what precedes the `@` is all digits. Anything else with a
//! `type:` prefix is [`SpecError::UnknownType`]. [`SocketSpec`]'s `Display` writes Postfix
//! syntax, which parses back to the same value.
#![cfg_attr(not(feature = "tokio"), allow(rustdoc::broken_intra_doc_links))]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

#[cfg(feature = "tokio")]
mod io;

#[cfg(feature = "tokio")]
pub use io::{
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_UNIX_MODE, Listener, Peer, ServeLimits, Stop, Stream,
    UnixOptions, connect, group_id, serve,
};

/// A socket address: where a server listens or a client connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SocketSpec {
    /// A unix-domain stream socket at this path.
    Unix(PathBuf),
    /// TCP to `host:port`; `host` is a name or an address, IPv6 without brackets.
    Inet {
        /// Host name or address text.
        host: String,
        /// TCP port.
        port: u16,
    },
}

/// Why a socket spec could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The spec, or the path after `unix:`/`local:`, is empty.
    #[error("socket spec has an empty path")]
    Empty,
    /// A `type:` prefix other than `unix`, `local`, `inet`, `inet6`.
    #[error(
        "unknown socket type (use unix:PATH, local:PATH, inet:HOST:PORT, inet:PORT@HOST, inet6:PORT@HOST, inet:PORT or a path)"
    )]
    UnknownType,
    /// The port is missing or not a number in 0..=65535.
    #[error("socket spec has a missing or invalid port")]
    BadPort,
    /// The host is empty, or an IPv6 bracket is not closed.
    #[error("socket spec has an empty or malformed host")]
    BadHost,
}

impl FromStr for SocketSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        let Some((kind, rest)) = s.split_once(':') else {
            return Ok(Self::Unix(PathBuf::from(s)));
        };
        match kind {
            "unix" | "local" if rest.is_empty() => Err(SpecError::Empty),
            "unix" | "local" => Ok(Self::Unix(PathBuf::from(rest))),
            "inet" => inet(rest, "0.0.0.0"),
            "inet6" => inet(rest, "::"),
            _ => Err(SpecError::UnknownType),
        }
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn inet(rest: &str, any: &str) -> Result<SocketSpec, SpecError> {
    let (host, port) = match rest.split_once('@') {
        Some((port, host)) if all_digits(port) => (host, port),
        _ => match rest.rsplit_once(':') {
            Some(hp) => hp,
            None if !rest.contains('@') => (any, rest),
            None => return Err(SpecError::BadPort),
        },
    };
    let port = port.parse().map_err(|_| SpecError::BadPort)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or(SpecError::BadHost)?,
        None => host,
    };
    if host.is_empty() || host.contains(['[', ']']) {
        return Err(SpecError::BadHost);
    }
    Ok(SocketSpec::Inet {
        host: host.to_owned(),
        port,
    })
}

impl fmt::Display for SocketSpec {
    /// Postfix syntax: `unix:PATH`, `inet:HOST:PORT`, `inet:[::1]:PORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Inet { host, port } if host.contains(':') => write!(f, "inet:[{host}]:{port}"),
            Self::Inet { host, port } => write!(f, "inet:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parses_back() {
        for spec in [
            SocketSpec::Unix("/run/m.sock".into()),
            SocketSpec::Unix("private/policy".into()),
            SocketSpec::Inet {
                host: "::1".into(),
                port: 25,
            },
            SocketSpec::Inet {
                host: "mx.example".into(),
                port: 0,
            },
        ] {
            assert_eq!(spec.to_string().parse::<SocketSpec>(), Ok(spec));
        }
    }
}
