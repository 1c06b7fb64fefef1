//! The transport the milter server shares with the policy server, and the server's resource
//! bounds: one socket grammar for both crates, shutdown with a grace period, a deadline per
//! command, the macro cap, protocol version 1 refused, handler panics logged with the peer,
//! fatal accept errors returned, 1,000 connections at once, slow-loris peers closed.
#![cfg(feature = "tokio")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milter_proto::Command;
use milter_proto::NegotiateError;
use milter_proto::ProtocolError;
use milter_proto::Reply;
use milter_proto::SocketSpec as MilterSpec;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::server::{
    ConnectionError, Context, Decision, Handler, ServerConfig, async_trait, serve, serve_connection,
};
use milter_proto::{Actions, Protocol};
use milter_proto::{Listener, SocketSpec, SpecError, UnixOptions, connect};
use policy_proto::SocketSpec as PolicySpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// One table, run through both protocol crates' parsers: the same text is the same socket (or
/// the same error) to the milter and to the policy server.
#[test]
fn one_socket_grammar_for_milter_and_policy() {
    let unix = |p: &str| Ok(SocketSpec::Unix(p.into()));
    let inet = |h: &str, port| {
        Ok(SocketSpec::Inet {
            host: h.into(),
            port,
        })
    };
    let table: &[(&str, Result<SocketSpec, SpecError>)] = &[
        // Postfix
        ("unix:/run/m.sock", unix("/run/m.sock")),
        ("unix:private/policy", unix("private/policy")),
        ("inet:127.0.0.1:8891", inet("127.0.0.1", 8891)),
        ("inet:localhost:0", inet("localhost", 0)),
        ("inet:[::1]:8891", inet("::1", 8891)),
        // libmilter
        ("local:/run/m.sock", unix("/run/m.sock")),
        ("inet:8891@127.0.0.1", inet("127.0.0.1", 8891)),
        ("inet:8891@localhost", inet("localhost", 8891)),
        ("inet6:8891@::1", inet("::1", 8891)),
        ("inet6:8891@[::1]", inet("::1", 8891)),
        // a port alone: every interface, as libmilter does
        ("inet:8891", inet("0.0.0.0", 8891)),
        ("inet6:8891", inet("::", 8891)),
        // bare paths
        ("/run/m.sock", unix("/run/m.sock")),
        ("./a:b", unix("./a:b")),
        ("m.sock", unix("m.sock")),
        ("private/policy", unix("private/policy")),
        // errors
        ("", Err(SpecError::Empty)),
        ("unix:", Err(SpecError::Empty)),
        ("local:", Err(SpecError::Empty)),
        ("tcp:1.2.3.4:5", Err(SpecError::UnknownType)),
        ("inet:", Err(SpecError::BadPort)),
        ("inet:host:x", Err(SpecError::BadPort)),
        ("inet:host:70000", Err(SpecError::BadPort)),
        ("inet:1.2.3.4", Err(SpecError::BadPort)),
        ("inet:99999@localhost", Err(SpecError::BadPort)),
        ("inet:x@localhost", Err(SpecError::BadPort)),
        ("inet::25", Err(SpecError::BadHost)),
        ("inet:25@", Err(SpecError::BadHost)),
        ("inet:[::1:25", Err(SpecError::BadHost)),
    ];
    for (text, want) in table {
        let milter = text.parse::<MilterSpec>();
        let policy = text.parse::<PolicySpec>();
        assert_eq!(&milter, want, "milter-proto: {text:?}");
        assert_eq!(&policy, want, "policy-proto: {text:?}");
        if let Ok(spec) = want {
            assert_eq!(spec.to_string().parse::<SocketSpec>().as_ref(), Ok(spec));
        }
    }
}

/// Accepts everything; panics at HELO `panic`.
#[derive(Default)]
struct Plain;

#[async_trait]
impl Handler for Plain {
    async fn helo(&mut self, _ctx: &mut Context, helo: &[u8]) -> Decision {
        assert!(helo != b"panic", "handler bug on purpose");
        Decision::Continue
    }
    async fn eom(&mut self, _ctx: &mut Context) -> Decision {
        Decision::Accept
    }
}

fn optneg(version: u32) -> Command {
    Command::OptNeg {
        version,
        actions: Actions::all(),
        protocol: Protocol::empty(),
    }
}

fn encode(cmds: &[Command]) -> BytesMut {
    let mut b = BytesMut::new();
    for c in cmds {
        c.encode(&mut b);
    }
    b
}

/// Writes `input` to a connection served with `config`; every reply and how it ended.
async fn exchange(input: &[u8], config: ServerConfig) -> (Vec<Reply>, Result<(), ConnectionError>) {
    let (mut mta, milter) = tokio::io::duplex(1 << 22);
    let server = tokio::spawn(async move { serve_connection(milter, Plain, &config).await });
    // The server may close before it has read everything (that is what some tests check).
    let _ = mta.write_all(input).await;
    let mut out = Vec::new();
    mta.read_to_end(&mut out).await.unwrap();
    let mut buf = BytesMut::from(&out[..]);
    let mut replies = Vec::new();
    while let Some(r) = Reply::decode(&mut buf, 1 << 20).unwrap() {
        replies.push(r);
    }
    (replies, server.await.unwrap())
}

#[tokio::test]
async fn protocol_version_1_is_refused_without_an_answer() {
    let (replies, end) = exchange(&encode(&[optneg(1)]), ServerConfig::default()).await;
    assert_eq!(replies, []);
    assert!(
        matches!(
            end,
            Err(ConnectionError::Negotiate(
                NegotiateError::UnsupportedVersion { version: 1 }
            ))
        ),
        "{end:?}"
    );
    // Version 2 is still spoken.
    let (replies, end) = exchange(
        &encode(&[optneg(2), Command::Quit]),
        ServerConfig::default(),
    )
    .await;
    assert!(matches!(replies[..], [Reply::OptNeg { version: 2, .. }]));
    assert!(end.is_ok(), "{end:?}");
}

#[tokio::test]
async fn macros_for_every_stage_byte_are_capped() {
    // 256 stage bytes x 60 KiB: 15 MiB a connection would keep before the cap.
    let value = Bytes::from(vec![b'v'; 60 * 1024]);
    let mut cmds = vec![optneg(6)];
    for stage in 0..=255u8 {
        cmds.push(Command::Macro {
            command: stage,
            pairs: vec![(Bytes::from_static(b"{x}"), value.clone())],
        });
    }
    let (replies, end) = exchange(&encode(&cmds), ServerConfig::default()).await;
    assert!(
        matches!(
            end,
            Err(ConnectionError::Protocol(
                ProtocolError::MacrosTooLarge { .. }
            ))
        ),
        "{end:?}"
    );
    assert!(matches!(
        replies[..],
        [Reply::OptNeg { .. }, Reply::Tempfail]
    ));
}

#[tokio::test]
async fn macros_of_stages_no_event_has_are_ignored() {
    use milter_proto::Session;
    let mut s = Session::default();
    let _ = s.handle(&optneg(6)).unwrap();
    let pairs = vec![(Bytes::from_static(b"i"), Bytes::from_static(b"Q1"))];
    for stage in [b'Z', b'O', 0, 255] {
        let _ = s
            .handle(&Command::Macro {
                command: stage,
                pairs: pairs.clone(),
            })
            .unwrap();
        assert_eq!(s.macros().for_command(stage), None);
    }
    let _ = s
        .handle(&Command::Macro {
            command: b'C',
            pairs: pairs.clone(),
        })
        .unwrap();
    assert_eq!(s.macros().get("i"), Some(&Bytes::from_static(b"Q1")));
}

#[tokio::test]
async fn macro_byte_cap_is_configurable_and_typed() {
    use milter_proto::Needs;
    use milter_proto::{HeaderLimits, Session, SessionLimits};
    let limits = SessionLimits::new(HeaderLimits::default(), 100);
    let mut s = Session::new(Needs::default(), limits);
    let _ = s.handle(&optneg(6)).unwrap();
    let pairs = |n| vec![(Bytes::from_static(b"j"), Bytes::from(vec![b'x'; n]))];
    let _ = s
        .handle(&Command::Macro {
            command: b'C',
            pairs: pairs(90),
        })
        .unwrap();
    // Replacing a stage counts the new packet, not both.
    let _ = s
        .handle(&Command::Macro {
            command: b'C',
            pairs: pairs(95),
        })
        .unwrap();
    let err = s.handle(&Command::Macro {
        command: b'H',
        pairs: pairs(20),
    });
    assert_eq!(err, Err(ProtocolError::MacrosTooLarge { max: 100 }));
}

/// A peer that sends a command one byte every 4 s is closed at the command's deadline (5 s
/// after its first byte), not kept because every single read came in time.
#[tokio::test(start_paused = true)]
async fn a_command_dribbled_byte_by_byte_hits_its_deadline() {
    let (mut mta, milter) = tokio::io::duplex(1 << 16);
    let mut config = ServerConfig::default();
    config.io_timeout = Duration::from_secs(5);
    let server = tokio::spawn(async move { serve_connection(milter, Plain, &config).await });
    mta.write_all(&encode(&[optneg(6)])).await.unwrap();
    let mut helo = encode(&[Command::Helo(Bytes::from_static(b"mx.example.org"))]);
    let start = Instant::now();
    let dribble = tokio::spawn(async move {
        while !helo.is_empty() {
            let b = helo.split_to(1);
            if mta.write_all(&b).await.is_err() {
                return mta;
            }
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        mta
    });
    let end = server.await.unwrap();
    assert!(
        matches!(end, Err(ConnectionError::IoTimeout(d)) if d == Duration::from_secs(5)),
        "{end:?}"
    );
    let took = start.elapsed();
    assert!(took <= Duration::from_secs(6), "closed after {took:?}");
    drop(dribble.await.unwrap());
}

struct Running {
    spec: SocketSpec,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(spec: SocketSpec, config: ServerConfig) -> Running {
    let listener = Listener::bind(&spec, &UnixOptions::default())
        .await
        .unwrap();
    let spec = listener.local_spec().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(listener, Plain::default, config, async move {
        let _ = rx.await;
    }));
    Running { spec, stop, done }
}

/// Reads one reply from a raw milter stream.
async fn read_reply(s: &mut milter_proto::Stream) -> Reply {
    let mut buf = BytesMut::new();
    loop {
        if let Some(r) = Reply::decode(&mut buf, 1 << 20).unwrap() {
            return r;
        }
        assert_ne!(s.read_buf(&mut buf).await.unwrap(), 0, "closed");
    }
}

/// SIGTERM with a message open and the MTA gone quiet: serve returns within the grace period
/// (plus a second), having closed the connection.
#[tokio::test]
async fn shutdown_closes_a_quiet_message_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::default();
    config.shutdown_grace = Duration::from_secs(1);
    let srv = start(SocketSpec::Unix(dir.path().join("m.sock")), config).await;
    let mut s = connect(&srv.spec).await.unwrap();
    let addr = milter_proto::ConnAddr::Unknown;
    for cmd in [
        optneg(6),
        Command::Connect {
            hostname: Bytes::from_static(b"mx"),
            addr,
        },
        Command::Helo(Bytes::from_static(b"mx")),
        Command::Mail {
            sender: Bytes::from_static(b"<a@example.org>"),
            args: vec![],
        },
        Command::Rcpt {
            rcpt: Bytes::from_static(b"<b@example.net>"),
            args: vec![],
        },
        Command::Data,
        Command::Header {
            name: Bytes::from_static(b"Subject"),
            value: Bytes::from_static(b"hi"),
        },
    ] {
        s.write_all(&encode(&[cmd])).await.unwrap();
        let r = read_reply(&mut s).await;
        assert!(matches!(r, Reply::OptNeg { .. } | Reply::Continue), "{r:?}");
    }
    // Quiet now, in the middle of the message.
    let asked = Instant::now();
    srv.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), srv.done)
        .await
        .expect("serve returns within grace + 1 s")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(900));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut rest))
        .await
        .expect("connection closed");
    assert!(n.is_err() || rest.is_empty(), "{rest:?}");
    // The socket file went with the listener.
    assert!(!dir.path().join("m.sock").exists());
}

/// A writer the test reads back: what the `tracing` subscriber logged.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_panic_is_logged_at_error_naming_the_peer_and_closes() {
    let log = Log::default();
    let w = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_max_level(tracing::Level::ERROR)
        .with_ansi(false)
        .finish();
    // Current-thread runtime: the connection tasks run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let srv = start("inet:127.0.0.1:0".parse().unwrap(), ServerConfig::default()).await;
    let mut c = Client::connect(&srv.spec, ClientConfig::default())
        .await
        .unwrap();
    let conn = Connection {
        helo: Some(Bytes::from_static(b"panic")),
        ..Connection::default()
    };
    assert!(c.connection(&conn).await.is_err(), "connection not closed");
    // The server goes on serving others.
    let mut ok = Client::connect(&srv.spec, ClientConfig::default())
        .await
        .unwrap();
    ok.connection(&Connection::default()).await.unwrap();
    ok.quit().await.unwrap();
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("panicked"))
        .unwrap_or_else(|| panic!("no panic logged: {text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("handler bug on purpose"), "{line}");
    assert!(line.contains("127.0.0.1:"), "peer not named: {line}");
}

#[tokio::test]
async fn serve_returns_the_error_when_accepting_fails_for_good() {
    use std::os::fd::AsRawFd;
    let listener = Listener::bind(
        &"inet:127.0.0.1:0".parse().unwrap(),
        &UnixOptions::default(),
    )
    .await
    .unwrap();
    // SAFETY: the descriptor is the listener's own, open for the whole call.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    assert_eq!(rc, 0);
    let served = serve(
        listener,
        Plain::default,
        ServerConfig::default(),
        std::future::pending(),
    );
    let end = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("serve gave up on a dead listener");
    assert!(end.is_err(), "{end:?}");
}

fn message() -> Message {
    Message::parse(
        b"<a@example.org>",
        &[b"<b@example.net>"],
        b"Subject: hi\r\n\r\nbody\r\n",
    )
}

/// 1,000 MTA connections open at once, every one served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_at_once() {
    allow_open_files(4096);
    let srv = start("inet:127.0.0.1:0".parse().unwrap(), ServerConfig::default()).await;
    let run = async {
        let mut open = Vec::new();
        for _ in 0..1000 {
            let mut c = Client::connect(&srv.spec, ClientConfig::default())
                .await
                .unwrap();
            c.connection(&Connection::default()).await.unwrap();
            open.push(c);
        }
        // All 1,000 held open; now each one carries a message.
        let mut tasks = tokio::task::JoinSet::new();
        for mut c in open {
            tasks.spawn(async move {
                let o = c.message(&message()).await.unwrap();
                c.quit().await.unwrap();
                o.decision
            });
        }
        let mut accepted = 0;
        while let Some(d) = tasks.join_next().await {
            assert_eq!(d.unwrap(), Reply::Accept);
            accepted += 1;
        }
        accepted
    };
    let accepted = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("1,000 connections served in time");
    assert_eq!(accepted, 1000);
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

/// Slow-loris peers are closed at the per-command deadline while a well-behaved MTA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_peers_are_closed_while_others_are_served() {
    let mut config = ServerConfig::default();
    config.io_timeout = Duration::from_millis(600);
    let srv = start("inet:127.0.0.1:0".parse().unwrap(), config).await;
    let mut lorises = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let spec = srv.spec.clone();
        lorises.spawn(async move {
            let mut s = connect(&spec).await.unwrap();
            let mut cmd = encode(&[optneg(6)]);
            let started = Instant::now();
            let mut buf = [0u8; 64];
            while !cmd.is_empty() {
                if s.write_all(&cmd.split_to(1)).await.is_err() {
                    break;
                }
                // Each byte well within the timeout, the command far beyond it.
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => break,
                    // The error reply (tempfail) before the close, never an OPTNEG answer.
                    Ok(Ok(n)) => {
                        assert_eq!(&buf[..n], b"\0\0\0\x01t", "answered a dribbled command");
                        break;
                    }
                    Err(_) => {}
                }
            }
            started.elapsed()
        });
    }
    // Meanwhile a real MTA gets its messages through.
    let mut c = Client::connect(&srv.spec, ClientConfig::default())
        .await
        .unwrap();
    c.connection(&Connection::default()).await.unwrap();
    for _ in 0..5 {
        assert_eq!(c.message(&message()).await.unwrap().decision, Reply::Accept);
    }
    c.quit().await.unwrap();
    while let Some(took) = lorises.join_next().await {
        let took = took.unwrap();
        // 13 bytes at 200 ms would take 2.6 s; the deadline closes at 0.6 s.
        assert!(took < Duration::from_millis(1500), "loris held {took:?}");
    }
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

/// Raises this process's soft open-file limit to `n` when it is lower: 1,000 connections at
/// once are 2,000 descriptors here (client and server ends), and a normal user's soft limit
/// is often 1,024. Fails, naming the limit, when the hard limit does not allow it.
fn allow_open_files(n: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other preconditions.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= n {
        return;
    }
    assert!(
        lim.rlim_max >= n,
        "1,000 connections at once need {n} open files; the hard limit (ulimit -Hn) is {}",
        lim.rlim_max
    );
    lim.rlim_cur = n;
    // SAFETY: as above; the new soft limit is within the hard one.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}
