//! Commands the MTA sends to a filter (`SMFIC_*`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::DecodeError;
use crate::flags::{Actions, Protocol};
use crate::frame::{Frame, decode_frame, encode_frame};
use crate::wire::{Reader, put_cstr};

/// The client address of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnAddr {
    /// Family `4`: IPv4 port and address text.
    Inet {
        /// Client port.
        port: u16,
        /// Address text, e.g. `192.0.2.1`.
        address: Bytes,
    },
    /// Family `6`: IPv6 port and address text (without `IPv6:`).
    Inet6 {
        /// Client port.
        port: u16,
        /// Address text, e.g. `2001:db8::1`.
        address: Bytes,
    },
    /// Family `L`: unix socket (port is 0 from Postfix).
    Unix {
        /// Port field as sent (0).
        port: u16,
        /// Socket path.
        path: Bytes,
    },
    /// Family `U`: unknown, no port and no address.
    Unknown,
}

/// One MTA → filter command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `O` OPTNEG: version and what the MTA offers.
    OptNeg {
        /// Protocol version (2..=6).
        version: u32,
        /// Actions offered (unknown bits kept).
        actions: Actions,
        /// Protocol options offered (unknown bits kept).
        protocol: Protocol,
    },
    /// `D` MACRO: macros for the event whose command code is `command` (`C`, `H`, `M`, ...).
    Macro {
        /// The command code of the event the macros belong to (not a [`MacroStage`](crate::MacroStage):
        /// the MTA may send macros for any event).
        command: u8,
        /// `(name, value)` pairs, possibly none.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `C` CONNECT.
    Connect {
        /// Client host name (`[address]` when unknown).
        hostname: Bytes,
        /// Client address.
        addr: ConnAddr,
    },
    /// `H` HELO with the HELO/EHLO argument.
    Helo(Bytes),
    /// `M` MAIL FROM.
    Mail {
        /// Sender as sent, usually `<addr>`.
        sender: Bytes,
        /// ESMTP arguments.
        args: Vec<Bytes>,
    },
    /// `R` RCPT TO.
    Rcpt {
        /// Recipient as sent, usually `<addr>`.
        rcpt: Bytes,
        /// ESMTP arguments.
        args: Vec<Bytes>,
    },
    /// `T` DATA.
    Data,
    /// `L` HEADER.
    Header {
        /// Field name.
        name: Bytes,
        /// Field value (folds joined with `\n`).
        value: Bytes,
    },
    /// `N` end of headers.
    Eoh,
    /// `B` one body chunk (raw bytes, CRLF line ends).
    Body(Bytes),
    /// `E` end of message, possibly with a last chunk (sendmail; empty from Postfix).
    BodyEob(Bytes),
    /// `A` ABORT: the message transaction ended; the connection lives on.
    Abort,
    /// `Q` QUIT.
    Quit,
    /// `K` QUIT_NC: a new SMTP connection follows on this socket.
    QuitNc,
    /// `U` UNKNOWN SMTP command.
    Unknown(Bytes),
}

fn strings(r: &mut Reader, what: &'static str) -> Result<Vec<Bytes>, DecodeError> {
    let mut v = Vec::new();
    while !r.is_empty() {
        v.push(r.cstr(what)?);
    }
    Ok(v)
}

fn no_payload(r: Reader, c: Command) -> Result<Command, DecodeError> {
    r.finish()?;
    Ok(c)
}

impl Command {
    /// Decode one command from the front of `buf` (see the crate's decoder contract).
    pub fn decode(buf: &mut BytesMut, max_len: u32) -> Result<Option<Self>, DecodeError> {
        match decode_frame(buf, max_len)? {
            None => Ok(None),
            Some(f) => Self::from_frame(f).map(Some),
        }
    }

    /// Parse a frame's payload; the whole payload must be consumed.
    pub fn from_frame(frame: Frame) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame.cmd, frame.payload);
        let cmd = match frame.cmd {
            b'O' => {
                let version = r.u32("version")?;
                let actions = Actions::from_bits_retain(r.u32("actions")?);
                let protocol = Protocol::from_bits_retain(r.u32("protocol")?);
                Self::OptNeg {
                    version,
                    actions,
                    protocol,
                }
            }
            b'D' => {
                let stage = r.u8("stage")?;
                let mut pairs = Vec::new();
                while !r.is_empty() {
                    let name = r.cstr("macro name")?;
                    let value = r.cstr("macro value")?;
                    pairs.push((name, value));
                }
                Self::Macro {
                    command: stage,
                    pairs,
                }
            }
            b'C' => {
                let hostname = r.cstr("hostname")?;
                let family = r.u8("family")?;
                let addr = match family {
                    b'U' => ConnAddr::Unknown,
                    b'4' | b'6' | b'L' => {
                        let port = r.u16("port")?;
                        let address = r.cstr("address")?;
                        match family {
                            b'4' => ConnAddr::Inet { port, address },
                            b'6' => ConnAddr::Inet6 { port, address },
                            _ => ConnAddr::Unix {
                                port,
                                path: address,
                            },
                        }
                    }
                    _ => return Err(r.invalid("unknown family")),
                };
                Self::Connect { hostname, addr }
            }
            b'H' => Self::Helo(r.cstr("helo")?),
            b'M' => {
                let sender = r.cstr("sender")?;
                Self::Mail {
                    sender,
                    args: strings(&mut r, "esmtp arg")?,
                }
            }
            b'R' => {
                let rcpt = r.cstr("recipient")?;
                Self::Rcpt {
                    rcpt,
                    args: strings(&mut r, "esmtp arg")?,
                }
            }
            b'T' => return no_payload(r, Self::Data),
            b'L' => {
                let name = r.cstr("header name")?;
                let value = r.cstr("header value")?;
                Self::Header { name, value }
            }
            b'N' => return no_payload(r, Self::Eoh),
            b'B' => Self::Body(r.rest()),
            b'E' => Self::BodyEob(r.rest()),
            b'A' => return no_payload(r, Self::Abort),
            b'Q' => return no_payload(r, Self::Quit),
            b'K' => return no_payload(r, Self::QuitNc),
            b'U' => Self::Unknown(r.cstr("command")?),
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        r.finish()?;
        Ok(cmd)
    }

    /// The command byte (`SMFIC_*`).
    pub fn code(&self) -> u8 {
        match self {
            Self::OptNeg { .. } => b'O',
            Self::Macro { .. } => b'D',
            Self::Connect { .. } => b'C',
            Self::Helo(_) => b'H',
            Self::Mail { .. } => b'M',
            Self::Rcpt { .. } => b'R',
            Self::Data => b'T',
            Self::Header { .. } => b'L',
            Self::Eoh => b'N',
            Self::Body(_) => b'B',
            Self::BodyEob(_) => b'E',
            Self::Abort => b'A',
            Self::Quit => b'Q',
            Self::QuitNc => b'K',
            Self::Unknown(_) => b'U',
        }
    }

    /// Append this command as one frame to `out`. Strings must not contain NUL (they would not
    /// decode back to the same value).
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = BytesMut::new();
        match self {
            Self::OptNeg {
                version,
                actions,
                protocol,
            } => {
                p.put_u32(*version);
                p.put_u32(actions.bits());
                p.put_u32(protocol.bits());
            }
            Self::Macro {
                command: stage,
                pairs,
            } => {
                p.put_u8(*stage);
                for (n, v) in pairs {
                    put_cstr(&mut p, n);
                    put_cstr(&mut p, v);
                }
            }
            Self::Connect { hostname, addr } => {
                put_cstr(&mut p, hostname);
                let (fam, port, a) = match addr {
                    ConnAddr::Inet { port, address } => (b'4', *port, address),
                    ConnAddr::Inet6 { port, address } => (b'6', *port, address),
                    ConnAddr::Unix { port, path } => (b'L', *port, path),
                    ConnAddr::Unknown => {
                        p.put_u8(b'U');
                        encode_frame(out, self.code(), &p);
                        return;
                    }
                };
                p.put_u8(fam);
                p.put_u16(port);
                put_cstr(&mut p, a);
            }
            Self::Helo(s) | Self::Unknown(s) => put_cstr(&mut p, s),
            Self::Mail {
                sender: first,
                args,
            }
            | Self::Rcpt { rcpt: first, args } => {
                put_cstr(&mut p, first);
                for a in args {
                    put_cstr(&mut p, a);
                }
            }
            Self::Header { name, value } => {
                put_cstr(&mut p, name);
                put_cstr(&mut p, value);
            }
            Self::Body(b) | Self::BodyEob(b) => {
                encode_frame(out, self.code(), b);
                return;
            }
            Self::Data | Self::Eoh | Self::Abort | Self::Quit | Self::QuitNc => {}
        }
        encode_frame(out, self.code(), &p);
    }
}
