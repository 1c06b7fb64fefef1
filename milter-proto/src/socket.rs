//! Where a milter listens: socket specs in Postfix and libmilter syntax, and (feature `tokio`)
//! binding and connecting them.
//!
//! Accepted forms ([`SocketSpec::from_str`](std::str::FromStr)):
//!
//! | spec | meaning |
//! |---|---|
//! | `unix:/path`, `local:/path`, `/path`, `./path` | unix-domain socket (Postfix, libmilter, bare path) |
//! | `inet:host:port`, `inet:[::1]:port` | TCP, Postfix style |
//! | `inet:port@host`, `inet6:port@host` | TCP, libmilter style |
//! | `inet:port`, `inet6:port` | TCP on every IPv4 (`0.0.0.0`) / IPv6 (`::`) address |

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A milter socket address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SocketSpec {
    /// A unix-domain socket path.
    Unix(PathBuf),
    /// A TCP host (name or address, IPv6 without brackets) and port.
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
pub enum SocketSpecError {
    /// `unix:`/`local:` with nothing after it.
    #[error("milter socket spec has an empty path")]
    EmptyPath,
    /// A `proto:` prefix other than `unix`, `local`, `inet`, `inet6`.
    #[error("milter socket spec has an unknown type (want unix:, local:, inet: or inet6:)")]
    UnknownType,
    /// The port is missing or not a number in 0..=65535.
    #[error("milter socket spec has a missing or invalid port")]
    BadPort,
    /// The host part is empty.
    #[error("milter socket spec has an empty host")]
    EmptyHost,
}

impl FromStr for SocketSpec {
    type Err = SocketSpecError;

    fn from_str(s: &str) -> Result<Self, SocketSpecError> {
        let Some((kind, rest)) = s.split_once(':') else {
            return unix(s);
        };
        match kind {
            "unix" | "local" => unix(rest),
            "inet" => inet(rest, "0.0.0.0"),
            "inet6" => inet(rest, "::"),
            _ if s.starts_with('/') || s.starts_with('.') => unix(s),
            _ => Err(SocketSpecError::UnknownType),
        }
    }
}

fn unix(path: &str) -> Result<SocketSpec, SocketSpecError> {
    if path.is_empty() {
        return Err(SocketSpecError::EmptyPath);
    }
    Ok(SocketSpec::Unix(PathBuf::from(path)))
}

fn port(p: &str) -> Result<u16, SocketSpecError> {
    p.parse().map_err(|_| SocketSpecError::BadPort)
}

fn inet(rest: &str, any: &str) -> Result<SocketSpec, SocketSpecError> {
    let (host, port) = if let Some((p, host)) = rest.split_once('@') {
        (host, port(p)?)
    } else if let Some((host, p)) = rest.rsplit_once(':') {
        (host, port(p)?)
    } else {
        (any, port(rest)?)
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(SocketSpecError::EmptyHost);
    }
    Ok(SocketSpec::Inet {
        host: host.to_owned(),
        port,
    })
}

impl fmt::Display for SocketSpec {
    /// Postfix syntax: `unix:/path`, `inet:host:port`, `inet:[::1]:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Inet { host, port } if host.contains(':') => write!(f, "inet:[{host}]:{port}"),
            Self::Inet { host, port } => write!(f, "inet:{host}:{port}"),
        }
    }
}

#[cfg(feature = "tokio")]
pub use self::io::{Listener, MilterStream, UnixSocketOptions, connect, group_id};

#[cfg(feature = "tokio")]
mod io {
    use std::io;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::path::Path;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

    use super::SocketSpec;

    /// How to create a unix socket file.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct UnixSocketOptions {
        /// Permission bits set on the socket file after binding (e.g. `0o660`). `None` keeps
        /// what the umask gave. Postfix's `smtpd` runs as `postfix`: it needs write access.
        pub mode: Option<u32>,
        /// Group id given to the socket file (see [`group_id`]). `None` keeps ours.
        pub group: Option<u32>,
    }

    /// A bound milter listener (unix or TCP).
    #[derive(Debug)]
    pub enum Listener {
        /// A unix-domain listener.
        Unix(UnixListener),
        /// A TCP listener; accepted streams get `TCP_NODELAY`.
        Tcp(TcpListener),
    }

    impl Listener {
        /// Bind `spec`. For a unix path, an existing socket file is removed first only if
        /// nothing listens on it (a connect is refused); a file that is not a socket, or a
        /// socket somebody serves, is an `AddrInUse` error. `unix` applies to unix sockets.
        pub async fn bind(spec: &SocketSpec, unix: &UnixSocketOptions) -> io::Result<Self> {
            match spec {
                SocketSpec::Unix(path) => bind_unix(path, unix).map(Self::Unix),
                SocketSpec::Inet { host, port } => TcpListener::bind((host.as_str(), *port))
                    .await
                    .map(Self::Tcp),
            }
        }

        /// Accept one connection.
        pub async fn accept(&self) -> io::Result<MilterStream> {
            match self {
                Self::Unix(l) => Ok(MilterStream::Unix(l.accept().await?.0)),
                Self::Tcp(l) => {
                    let (s, _) = l.accept().await?;
                    s.set_nodelay(true)?;
                    Ok(MilterStream::Tcp(s))
                }
            }
        }

        /// Where this listener is bound, as a spec a client can connect to (a TCP port 0 is
        /// resolved to the real port).
        pub fn local_spec(&self) -> io::Result<SocketSpec> {
            match self {
                Self::Unix(l) => {
                    let addr = l.local_addr()?;
                    let path = addr.as_pathname().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "unnamed unix socket")
                    })?;
                    Ok(SocketSpec::Unix(path.to_path_buf()))
                }
                Self::Tcp(l) => {
                    let a = l.local_addr()?;
                    Ok(SocketSpec::Inet {
                        host: a.ip().to_string(),
                        port: a.port(),
                    })
                }
            }
        }
    }

    fn bind_unix(path: &Path, opts: &UnixSocketOptions) -> io::Result<UnixListener> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} is in use by a running server", path.display()),
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(path)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        if let Some(gid) = opts.group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        if let Some(mode) = opts.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(listener)
    }

    /// The id of group `name` (or a number given as text), from `/etc/group` (NSS sources
    /// such as LDAP are not consulted).
    pub fn group_id(name: &str) -> io::Result<u32> {
        if let Ok(gid) = name.parse() {
            return Ok(gid);
        }
        let groups = std::fs::read_to_string("/etc/group")?;
        groups
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let n = f.next()?;
                let gid = f.nth(1)?;
                (n == name).then(|| gid.parse().ok()).flatten()
            })
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no group {name}")))
    }

    /// Connect to a milter (TCP with `TCP_NODELAY`).
    pub async fn connect(spec: &SocketSpec) -> io::Result<MilterStream> {
        match spec {
            SocketSpec::Unix(p) => Ok(MilterStream::Unix(UnixStream::connect(p).await?)),
            SocketSpec::Inet { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Ok(MilterStream::Tcp(s))
            }
        }
    }

    /// A connected unix or TCP stream.
    #[derive(Debug)]
    pub enum MilterStream {
        /// Unix-domain stream.
        Unix(UnixStream),
        /// TCP stream.
        Tcp(TcpStream),
    }

    impl AsyncRead for MilterStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
                Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            }
        }
    }

    impl AsyncWrite for MilterStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut() {
                Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
                Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            }
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Self::Unix(s) => Pin::new(s).poll_flush(cx),
                Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
                Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(host: &str, port: u16) -> SocketSpec {
        SocketSpec::Inet {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn postfix_and_libmilter_forms() {
        let cases = [
            ("unix:/run/m.sock", SocketSpec::Unix("/run/m.sock".into())),
            ("local:/run/m.sock", SocketSpec::Unix("/run/m.sock".into())),
            ("/run/m.sock", SocketSpec::Unix("/run/m.sock".into())),
            ("m.sock", SocketSpec::Unix("m.sock".into())),
            ("./a:b", SocketSpec::Unix("./a:b".into())),
            ("inet:127.0.0.1:8891", inet("127.0.0.1", 8891)),
            ("inet:[::1]:8891", inet("::1", 8891)),
            ("inet:localhost:8891", inet("localhost", 8891)),
            ("inet:8891@127.0.0.1", inet("127.0.0.1", 8891)),
            ("inet6:8891@::1", inet("::1", 8891)),
            ("inet6:8891@[::1]", inet("::1", 8891)),
            ("inet:8891", inet("0.0.0.0", 8891)),
            ("inet6:8891", inet("::", 8891)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<SocketSpec>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_specs() {
        let cases = [
            ("unix:", SocketSpecError::EmptyPath),
            ("tcp:1.2.3.4:5", SocketSpecError::UnknownType),
            ("inet:host:x", SocketSpecError::BadPort),
            ("inet:host:70000", SocketSpecError::BadPort),
            ("inet::25", SocketSpecError::EmptyHost),
            ("inet:25@", SocketSpecError::EmptyHost),
            ("", SocketSpecError::EmptyPath),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<SocketSpec>(), Err(want), "{text}");
        }
    }

    #[test]
    fn display_is_postfix_syntax_and_parses_back() {
        for spec in [
            SocketSpec::Unix("/run/m.sock".into()),
            inet("::1", 25),
            inet("mx.example", 25),
        ] {
            assert_eq!(spec.to_string().parse::<SocketSpec>(), Ok(spec));
        }
        assert_eq!(inet("::1", 25).to_string(), "inet:[::1]:25");
    }
}
