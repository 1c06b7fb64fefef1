//! [`SocketSpec`]: where a policy server listens or a client connects, written the way
//! Postfix writes `check_policy_service` endpoints (`docs/spec/policy-delegation.md` §1.1).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A socket address in Postfix's notation.
///
/// | written | means |
/// |---|---|
/// | `unix:/run/policy.sock`, `local:/run/policy.sock` | a UNIX-domain stream socket |
/// | `/run/policy.sock`, `private/policy` | a bare path: a UNIX-domain socket too |
/// | `inet:127.0.0.1:10023`, `inet:localhost:10023`, `inet:[::1]:10023` | TCP |
/// | `inet:10023@127.0.0.1` | TCP, in the `port@host` form libmilter and our daemons also take |
///
/// A relative UNIX path is relative to the current directory (Postfix takes it relative to
/// its queue directory, so `unix:private/NAME` in `main.cf` is `$queue_directory/private/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SocketSpec {
    /// A UNIX-domain stream socket at this path.
    Unix(PathBuf),
    /// TCP to `host:port`; `host` is a name or an address, without IPv6 brackets.
    Inet {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

/// A socket spec that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Empty, or an empty path.
    #[error("empty socket spec")]
    Empty,
    /// A `type:` prefix other than `unix:`, `local:` or `inet:`.
    #[error(
        "unknown socket type (use unix:PATH, local:PATH, inet:HOST:PORT, inet:PORT@HOST or a path)"
    )]
    UnknownType,
    /// `inet:` without `host:port` (or `port@host`), with an empty host, or with a port that is not 0-65535.
    #[error("inet socket needs HOST:PORT")]
    BadInet,
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
            "inet" => parse_inet(rest),
            _ => Err(SpecError::UnknownType),
        }
    }
}

fn parse_inet(rest: &str) -> Result<SocketSpec, SpecError> {
    // `port@host` (libmilter's form) when what precedes the first `@` is a number.
    let (host, port) = match rest.split_once('@') {
        Some((port, host)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port)
        }
        _ => rest.rsplit_once(':').ok_or(SpecError::BadInet)?,
    };
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or(SpecError::BadInet)?,
        None => host,
    };
    if host.is_empty() {
        return Err(SpecError::BadInet);
    }
    let port = port.parse().map_err(|_| SpecError::BadInet)?;
    Ok(SocketSpec::Inet {
        host: host.to_owned(),
        port,
    })
}

impl fmt::Display for SocketSpec {
    /// Postfix notation: `unix:PATH` or `inet:HOST:PORT` (IPv6 hosts in brackets).
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
    fn postfix_notations() {
        let unix = |p: &str| SocketSpec::Unix(PathBuf::from(p));
        let inet = |h: &str, port| SocketSpec::Inet {
            host: h.into(),
            port,
        };
        for (s, want) in [
            ("unix:/run/p.sock", unix("/run/p.sock")),
            ("local:/run/p.sock", unix("/run/p.sock")),
            ("unix:private/policy", unix("private/policy")),
            ("/run/p.sock", unix("/run/p.sock")),
            ("./p.sock", unix("./p.sock")),
            ("private/policy", unix("private/policy")),
            ("inet:127.0.0.1:10023", inet("127.0.0.1", 10023)),
            ("inet:localhost:0", inet("localhost", 0)),
            ("inet:[::1]:9998", inet("::1", 9998)),
            ("inet:10023@127.0.0.1", inet("127.0.0.1", 10023)),
            ("inet:9998@[::1]", inet("::1", 9998)),
        ] {
            assert_eq!(s.parse::<SocketSpec>(), Ok(want.clone()), "{s}");
            assert_eq!(want.to_string().parse::<SocketSpec>(), Ok(want));
        }
        for (s, err) in [
            ("", SpecError::Empty),
            ("unix:", SpecError::Empty),
            ("tcp:1.2.3.4:5", SpecError::UnknownType),
            ("inet:1.2.3.4", SpecError::BadInet),
            ("inet::25", SpecError::BadInet),
            ("inet:host:70000", SpecError::BadInet),
            ("inet:[::1:25", SpecError::BadInet),
            ("inet:25@", SpecError::BadInet),
            ("inet:99999@localhost", SpecError::BadInet),
        ] {
            assert_eq!(s.parse::<SocketSpec>(), Err(err), "{s}");
        }
    }
}
