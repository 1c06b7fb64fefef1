//! The sans-IO claim, proved without tokio: a whole connection both ways with
//! [`Session`] (filter side) and [`MtaSession`] (MTA side) driven over a blocking
//! `std::os::unix::net::UnixStream` pair, one thread per side. Negotiation, macros, headers
//! (negotiated `NR_HDR`: no replies), body chunks (the filter SKIPs the rest), end of message
//! with modifications, ABORT and QUIT; then the MTA side refusing a filter that breaks its
//! rules.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milter_proto::DecodeError;
use milter_proto::Needs;
use milter_proto::Reply;
use milter_proto::{Actions, Protocol};
use milter_proto::{Command, ConnAddr};
use milter_proto::{Expect, MtaError, MtaSession, Received, Session, SessionLimits, Step};

const CHUNK: usize = 65535;

/// Blocking reads of whole packets.
struct Wire {
    sock: UnixStream,
    buf: BytesMut,
}

impl Wire {
    fn new(sock: UnixStream) -> Self {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            sock,
            buf: BytesMut::new(),
        }
    }

    /// The next packet, `None` at end of stream.
    fn next<T>(
        &mut self,
        mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, DecodeError>,
    ) -> Option<T> {
        loop {
            if let Some(t) = decode(&mut self.buf).unwrap() {
                return Some(t);
            }
            let mut tmp = [0u8; 16 * 1024];
            let n = self.sock.read(&mut tmp).unwrap();
            if n == 0 {
                assert!(self.buf.is_empty(), "peer closed mid-packet");
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    fn send(&mut self, out: &BytesMut) {
        self.sock.write_all(out).unwrap();
    }
}

/// What the filter saw.
#[derive(Debug, Default)]
struct Seen {
    queue_id_at_mail: Option<Bytes>,
    helo: Option<Bytes>,
    headers: Vec<(Bytes, Bytes)>,
    body_chunks: usize,
    body_bytes: usize,
    unnegotiated_refused: bool,
    quit: bool,
}

/// The filter: a plain loop around [`Session`].
fn filter(sock: UnixStream) -> Seen {
    let needs = Needs {
        actions: Actions::ADDHDRS | Actions::ADDRCPT | Actions::CHGBODY,
        protocol: Protocol::NR_HDR | Protocol::SKIP | Protocol::NOUNKNOWN,
        ..Needs::default()
    };
    let mut session = Session::new(needs, SessionLimits::default());
    let mut wire = Wire::new(sock);
    let mut seen = Seen::default();
    loop {
        let limit = session.max_frame_len();
        let Some(cmd) = wire.next(|b| Command::decode(b, limit)) else {
            return seen;
        };
        let mut out = BytesMut::new();
        match session.handle(&cmd).unwrap() {
            Step::Negotiated { reply, .. } => reply.encode(&mut out),
            Step::Close => {
                seen.quit = true;
                return seen;
            }
            Step::NoReply => {
                if let Command::Header { name, value } = &cmd {
                    seen.headers.push((name.clone(), value.clone()));
                }
            }
            Step::Reply => {
                let reply = match &cmd {
                    Command::Helo(h) => {
                        seen.helo = Some(h.clone());
                        Reply::Continue
                    }
                    Command::Mail { .. } => {
                        seen.queue_id_at_mail = session.macros().get("i").cloned();
                        Reply::Continue
                    }
                    Command::Body(chunk) => {
                        seen.body_chunks += 1;
                        seen.body_bytes += chunk.len();
                        // Enough after two chunks (SKIP was agreed).
                        if seen.body_chunks == 2 {
                            Reply::Skip
                        } else {
                            Reply::Continue
                        }
                    }
                    Command::BodyEob(_) => {
                        let chgfrom = Reply::ChgFrom {
                            from: Bytes::from_static(b"<x@example.org>"),
                            args: None,
                        };
                        seen.unnegotiated_refused = session.check_modification(&chgfrom).is_err();
                        for m in [
                            Reply::AddHeader {
                                name: Bytes::from_static(b"X-Scanned"),
                                value: Bytes::from_static(b"yes"),
                            },
                            Reply::AddRcpt(Bytes::from_static(b"<archive@example.net>")),
                            Reply::ReplBody(Bytes::from_static(b"Replaced.\r\n")),
                        ] {
                            session.check_modification(&m).unwrap();
                            m.encode(&mut out);
                        }
                        Reply::Accept
                    }
                    _ => Reply::Continue,
                };
                reply.encode(&mut out);
            }
            other => panic!("unexpected step {other:?}"),
        }
        if !out.is_empty() {
            wire.send(&out);
        }
    }
}

/// The MTA side: send `cmd` if the filter wants it, collect what it is owed.
fn exchange(mta: &mut MtaSession, wire: &mut Wire, cmd: &Command) -> Result<Vec<Reply>, MtaError> {
    if !mta.sends(cmd) {
        return Ok(Vec::new());
    }
    let expect = mta.send(cmd)?;
    let mut out = BytesMut::new();
    cmd.encode(&mut out);
    wire.send(&out);
    let mut got = Vec::new();
    if expect == Expect::Nothing {
        return Ok(got);
    }
    loop {
        let r = wire
            .next(|b| Reply::decode(b, 1 << 20))
            .expect("filter closed while a reply was owed");
        let done = mta.receive(&r)? == Received::Final;
        got.push(r);
        if done {
            return Ok(got);
        }
    }
}

fn negotiate(wire: &mut Wire) -> MtaSession {
    let mut mta = MtaSession::new(6, Actions::all(), Protocol::from_bits_retain(0x1F_FFFF));
    let mut out = BytesMut::new();
    mta.offer().encode(&mut out);
    wire.send(&out);
    let answer = wire.next(|b| Reply::decode(b, 1 << 20)).unwrap();
    assert_eq!(mta.receive(&answer), Ok(Received::Negotiated));
    mta
}

#[test]
fn whole_connection_both_ways_over_blocking_sockets() {
    let (a, b) = UnixStream::pair().unwrap();
    let filter = thread::spawn(move || filter(b));
    let mut wire = Wire::new(a);
    let mut mta = negotiate(&mut wire);
    let n = mta.negotiated().clone();
    assert_eq!(n.version, 6);
    assert_eq!(
        n.actions,
        Actions::ADDHDRS | Actions::ADDRCPT | Actions::CHGBODY
    );
    assert!(mta.may_skip());
    assert!(!mta.sends(&Command::Unknown(Bytes::from_static(b"HELP"))));

    let b = Bytes::from_static;
    let macro_cmd = |stage, name: &'static [u8], value: &'static [u8]| Command::Macro {
        command: stage,
        pairs: vec![(b(name), b(value))],
    };
    let mut replies = Vec::new();
    let body = Bytes::from(vec![b'x'; 3 * CHUNK]);
    let mut script = vec![
        macro_cmd(b'C', b"j", b"mx.example"),
        Command::Connect {
            hostname: b(b"client.example"),
            addr: ConnAddr::Inet {
                port: 40000,
                address: b(b"192.0.2.1"),
            },
        },
        Command::Helo(b(b"client.example")),
        Command::Unknown(b(b"HELP")),
        macro_cmd(b'M', b"i", b"4ABCDEF"),
        Command::Mail {
            sender: b(b"<a@example.org>"),
            args: vec![],
        },
        Command::Rcpt {
            rcpt: b(b"<b@example.net>"),
            args: vec![],
        },
        Command::Data,
        Command::Header {
            name: b(b"Subject"),
            value: b(b"hi"),
        },
        Command::Header {
            name: b(b"From"),
            value: b(b"<a@example.org>"),
        },
        Command::Eoh,
    ];
    for c in script.drain(..) {
        let got = exchange(&mut mta, &mut wire, &c).unwrap();
        replies.push((char::from(c.code()), got));
    }
    let mut rest = body.clone();
    while !rest.is_empty() {
        let chunk = Command::Body(rest.split_to(rest.len().min(CHUNK)));
        let got = exchange(&mut mta, &mut wire, &chunk).unwrap();
        let skip = got == [Reply::Skip];
        replies.push(('B', got));
        if skip {
            break;
        }
    }
    let eom = exchange(&mut mta, &mut wire, &Command::BodyEob(Bytes::new())).unwrap();
    for c in [Command::Abort, Command::Quit] {
        assert_eq!(exchange(&mut mta, &mut wire, &c), Ok(vec![]));
    }
    let seen = filter.join().unwrap();

    let codes: Vec<(char, usize)> = replies.iter().map(|(c, r)| (*c, r.len())).collect();
    // MACRO and the NR_HDR headers get nothing; UNKNOWN was negotiated away (not sent).
    assert_eq!(
        codes,
        [
            ('D', 0),
            ('C', 1),
            ('H', 1),
            ('U', 0),
            ('D', 0),
            ('M', 1),
            ('R', 1),
            ('T', 1),
            ('L', 0),
            ('L', 0),
            ('N', 1),
            ('B', 1),
            ('B', 1),
        ]
    );
    assert_eq!(replies.last().unwrap().1, [Reply::Skip]);
    assert_eq!(
        eom,
        [
            Reply::AddHeader {
                name: b(b"X-Scanned"),
                value: b(b"yes")
            },
            Reply::AddRcpt(b(b"<archive@example.net>")),
            Reply::ReplBody(b(b"Replaced.\r\n")),
            Reply::Accept,
        ]
    );
    assert_eq!(seen.helo, Some(b(b"client.example")));
    assert_eq!(seen.queue_id_at_mail, Some(b(b"4ABCDEF")));
    assert_eq!(
        seen.headers,
        [
            (b(b"Subject"), b(b"hi")),
            (b(b"From"), b(b"<a@example.org>"))
        ]
    );
    assert_eq!((seen.body_chunks, seen.body_bytes), (2, 2 * CHUNK));
    assert!(seen.unnegotiated_refused);
    assert!(seen.quit);
}

/// A filter that breaks the MTA side's rules: a modification before end of message, and one
/// whose action was not agreed at end of message. [`MtaSession`] refuses both.
#[test]
fn mta_session_refuses_a_rogue_filter_over_blocking_sockets() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let rogue = thread::spawn(move || {
        let mut wire = Wire::new(b.try_clone().unwrap());
        let mut out = BytesMut::new();
        let Some(Command::OptNeg { .. }) = wire.next(|x| Command::decode(x, 1 << 20)) else {
            panic!("no OPTNEG");
        };
        Reply::OptNeg {
            version: 6,
            actions: Actions::ADDHDRS,
            protocol: Protocol::empty(),
            macros: vec![],
        }
        .encode(&mut out);
        wire.send(&out);
        // Answer MAIL with a header addition, then end of message with a CHGFROM.
        for r in [
            Reply::AddHeader {
                name: Bytes::from_static(b"X"),
                value: Bytes::from_static(b"y"),
            },
            Reply::ChgFrom {
                from: Bytes::from_static(b"<x@example.org>"),
                args: None,
            },
        ] {
            let _ = wire.next(|x| Command::decode(x, 1 << 20));
            let mut out = BytesMut::new();
            r.encode(&mut out);
            b.write_all(&out).unwrap();
        }
    });
    let mut wire = Wire::new(a);
    let mut mta = negotiate(&mut wire);
    let mail = Command::Mail {
        sender: Bytes::new(),
        args: vec![],
    };
    assert_eq!(
        exchange(&mut mta, &mut wire, &mail),
        Err(MtaError::UnexpectedReply {
            cmd: 'M',
            reply: 'h'
        })
    );
    let mut mta = {
        // A fresh session state at the same point (the last one stays awaiting MAIL's answer).
        let mut m = MtaSession::new(6, Actions::all(), Protocol::all());
        let _ = m.offer();
        let _ = m
            .receive(&Reply::OptNeg {
                version: 6,
                actions: Actions::ADDHDRS,
                protocol: Protocol::empty(),
                macros: vec![],
            })
            .unwrap();
        m
    };
    assert_eq!(
        exchange(&mut mta, &mut wire, &Command::BodyEob(Bytes::new())),
        Err(MtaError::UnexpectedReply {
            cmd: 'E',
            reply: 'e'
        })
    );
    rogue.join().unwrap();
}
