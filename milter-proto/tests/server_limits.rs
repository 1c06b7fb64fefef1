//! The server's limits and lifecycle, driven byte by byte or by our client: one write per
//! batch of replies, header limits, malformed and oversized frames, idle and per-read
//! timeouts (on tokio's paused clock), the connection limit, graceful shutdown with a message
//! in flight, and unix socket files (mode, group, stale socket removal).
#![cfg(feature = "tokio")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milter_proto::Command;
use milter_proto::Needs;
use milter_proto::Reply;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::server::{
    ConnectionError, Context, Decision, Handler, ServerConfig, async_trait, serve, serve_connection,
};
use milter_proto::{Actions, Protocol};
use milter_proto::{HeaderLimits, ProtocolError};
use milter_proto::{Listener, SocketSpec, UnixOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;

/// Adds two headers and a recipient at end of message; sleeps there when the body says SLOW.
#[derive(Default)]
struct Mods {
    slow: bool,
}

#[async_trait]
impl Handler for Mods {
    fn needs(&self) -> Needs {
        Needs {
            actions: Actions::ADDHDRS | Actions::ADDRCPT,
            ..Needs::default()
        }
    }
    async fn body(&mut self, _ctx: &mut Context, chunk: &Bytes) -> Decision {
        self.slow |= chunk.windows(4).any(|w| w == b"SLOW");
        Decision::Continue
    }
    async fn eom(&mut self, ctx: &mut Context) -> Decision {
        if std::mem::take(&mut self.slow) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let ok = ctx.add_header("X-A", "1").is_ok()
            && ctx.add_header("X-B", "2").is_ok()
            && ctx.add_rcpt("<c@example.net>").is_ok();
        if ok {
            Decision::Accept
        } else {
            Decision::Tempfail
        }
    }
}

/// A duplex end that counts the writes the server makes.
struct Counting {
    inner: DuplexStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn msg(body: &[u8]) -> Message {
    let mut raw = b"Subject: hi\r\n\r\n".to_vec();
    raw.extend_from_slice(body);
    Message::parse(b"<a@example.org>", &[b"<b@example.net>"], &raw)
}

#[tokio::test]
async fn end_of_message_modifications_and_reply_leave_in_one_write() {
    let (mta, milter) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let stream = Counting {
        inner: milter,
        writes: writes.clone(),
    };
    let server = tokio::spawn(async move {
        serve_connection(stream, Mods::default(), &ServerConfig::default()).await
    });
    let mut c = Client::negotiate(mta, ClientConfig::default())
        .await
        .unwrap();
    c.connection(&Connection::default()).await.unwrap();
    let before = writes.load(Ordering::SeqCst);
    let o = c.message(&msg(b"x\r\n")).await.unwrap();
    assert_eq!(o.decision, Reply::Accept);
    assert_eq!(o.modifications.len(), 3);
    // MAIL, RCPT, DATA, HEADER, EOH, BODY: one reply each; EOM: one write for 4 packets.
    assert_eq!(writes.load(Ordering::SeqCst) - before, 6 + 1);
    c.quit().await.unwrap();
    server.await.unwrap().unwrap();
}

/// Writes `input` to a server connection with `config` and returns every reply it sent
/// before closing, and how the connection ended.
async fn exchange(input: &[u8], config: ServerConfig) -> (Vec<Reply>, Result<(), ConnectionError>) {
    let (mut mta, milter) = tokio::io::duplex(1 << 20);
    let server =
        tokio::spawn(async move { serve_connection(milter, Mods::default(), &config).await });
    mta.write_all(input).await.unwrap();
    let mut out = Vec::new();
    mta.read_to_end(&mut out).await.unwrap();
    let mut buf = BytesMut::from(&out[..]);
    let mut replies = Vec::new();
    while let Some(r) = Reply::decode(&mut buf, 1 << 20).unwrap() {
        replies.push(r);
    }
    assert!(buf.is_empty(), "trailing reply bytes {buf:?}");
    (replies, server.await.unwrap())
}

fn commands(cmds: &[Command]) -> BytesMut {
    let mut b = BytesMut::new();
    for c in cmds {
        c.encode(&mut b);
    }
    b
}

fn optneg() -> Command {
    Command::OptNeg {
        version: 6,
        actions: Actions::all(),
        protocol: Protocol::empty(),
    }
}

fn header(n: usize) -> Command {
    Command::Header {
        name: Bytes::from(format!("X-H{n}")),
        value: Bytes::from_static(b"0123456789"),
    }
}

#[tokio::test]
async fn too_many_headers_get_the_default_reply_and_close() {
    let mut config = ServerConfig::default();
    config.header_limits = HeaderLimits::new(3, 1000);
    let mail = Command::Mail {
        sender: Bytes::from_static(b"<a@b>"),
        args: vec![],
    };
    let input = commands(&[optneg(), mail, header(1), header(2), header(3), header(4)]);
    let (replies, end) = exchange(&input, config).await;
    assert!(matches!(replies.first(), Some(Reply::OptNeg { .. })));
    assert_eq!(replies.get(1..5), Some(&vec![Reply::Continue; 4][..]));
    // The 4th header: the configured default reply, then the connection is closed.
    assert_eq!(replies.get(5..), Some(&[Reply::Tempfail][..]));
    assert!(
        matches!(
            end,
            Err(ConnectionError::Protocol(ProtocolError::TooManyHeaders {
                max: 3
            }))
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn header_bytes_limit_uses_the_configured_reply() {
    let mut config = ServerConfig::default();
    config.header_limits = HeaderLimits::new(100, 40);
    config.error_reply = Reply::ReplyCode(Bytes::from_static(b"451 4.3.0 headers too big"));
    let mail = Command::Mail {
        sender: Bytes::from_static(b"<a@b>"),
        args: vec![],
    };
    // 14 bytes each: the third passes 40.
    let input = commands(&[optneg(), mail, header(1), header(2), header(3)]);
    let (replies, end) = exchange(&input, config).await;
    assert_eq!(
        replies.last(),
        Some(&Reply::ReplyCode(Bytes::from_static(
            b"451 4.3.0 headers too big"
        )))
    );
    assert_eq!(replies.len(), 1 + 3 + 1);
    assert!(
        matches!(
            end,
            Err(ConnectionError::Protocol(ProtocolError::HeadersTooLarge {
                max: 40
            }))
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn oversized_and_zero_length_frames_close_after_tempfail() {
    for bad in [
        &b"\xff\xff\xff\xffO"[..],
        b"\0\0\0\0",
        b"UNKNOWN command\r\n",
    ] {
        let mut input = commands(&[optneg()]);
        input.extend_from_slice(bad);
        let (replies, end) = exchange(&input, ServerConfig::default()).await;
        assert_eq!(replies.get(1..), Some(&[Reply::Tempfail][..]), "{bad:?}");
        assert!(matches!(end, Err(ConnectionError::Decode(_))), "{end:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn idle_connection_times_out() {
    let (mut mta, milter) = tokio::io::duplex(1 << 16);
    let mut config = ServerConfig::default();
    config.idle_timeout = Duration::from_secs(60);
    let server =
        tokio::spawn(async move { serve_connection(milter, Mods::default(), &config).await });
    mta.write_all(&commands(&[optneg()])).await.unwrap();
    let mut out = Vec::new();
    mta.read_to_end(&mut out).await.unwrap();
    let end = server.await.unwrap();
    assert!(
        matches!(end, Err(ConnectionError::IdleTimeout(d)) if d == Duration::from_secs(60)),
        "{end:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn half_a_command_times_out_after_the_io_timeout() {
    let (mut mta, milter) = tokio::io::duplex(1 << 16);
    let mut config = ServerConfig::default();
    config.io_timeout = Duration::from_secs(5);
    let server =
        tokio::spawn(async move { serve_connection(milter, Mods::default(), &config).await });
    let mut input = commands(&[optneg()]);
    input.extend_from_slice(b"\0\0\0\x10M<a@");
    mta.write_all(&input).await.unwrap();
    let start = tokio::time::Instant::now();
    let mut out = Vec::new();
    mta.read_to_end(&mut out).await.unwrap();
    let end = server.await.unwrap();
    assert!(
        matches!(end, Err(ConnectionError::IoTimeout(d)) if d == Duration::from_secs(5)),
        "{end:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(60));
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
    let done = tokio::spawn(serve(listener, Mods::default, config, async move {
        let _ = rx.await;
    }));
    Running { spec, stop, done }
}

#[tokio::test]
async fn connection_limit_queues_the_next_mta_connection() {
    let mut config = ServerConfig::default();
    config.max_connections = 1;
    let srv = start("inet:127.0.0.1:0".parse().unwrap(), config).await;
    let first = Client::connect(&srv.spec, ClientConfig::default())
        .await
        .unwrap();
    let spec = srv.spec.clone();
    let mut second =
        tokio::spawn(async move { Client::connect(&spec, ClientConfig::default()).await });
    // While the first is served, the second is not answered.
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(waited.is_err(), "second connection served beyond the limit");
    first.quit().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served once the first closed")
        .unwrap()
        .unwrap();
    second.quit().await.unwrap();
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_finishes_the_message_in_flight_and_closes_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(
        SocketSpec::Unix(dir.path().join("m.sock")),
        ServerConfig::default(),
    )
    .await;
    let mut busy = Client::connect(&srv.spec, ClientConfig::default())
        .await
        .unwrap();
    busy.connection(&Connection::default()).await.unwrap();
    let mut idle = Client::connect(&srv.spec, ClientConfig::default())
        .await
        .unwrap();
    idle.connection(&Connection::default()).await.unwrap();
    // The message's end takes 300 ms; shutdown is requested while it runs.
    let sending = tokio::spawn(async move {
        let o = busy.message(&msg(b"SLOW\r\n")).await;
        (busy, o)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.stop.send(()).unwrap();
    let (_busy, o) = sending.await.unwrap();
    let o = o.unwrap();
    assert_eq!(o.decision, Reply::Accept);
    assert_eq!(o.modifications.len(), 3);
    tokio::time::timeout(Duration::from_secs(5), srv.done)
        .await
        .expect("serve returns once the message is done")
        .unwrap()
        .unwrap();
    // Both connections were closed by the server.
    let err = idle.message(&msg(b"x\r\n")).await.unwrap_err();
    assert!(
        matches!(
            err,
            milter_proto::client::ClientError::Closed | milter_proto::client::ClientError::Io(_)
        ),
        "{err:?}"
    );
    // The listener is gone: new connections are refused.
    assert!(
        Client::connect(&srv.spec, ClientConfig::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn unix_socket_mode_group_and_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let spec = SocketSpec::Unix(path.clone());
    let gid = std::fs::metadata(dir.path()).unwrap().gid();
    let opts = UnixOptions {
        mode: Some(0o640),
        group: Some(gid),
    };
    let live = Listener::bind(&spec, &opts).await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), gid);
    // A socket somebody serves is not taken over.
    let err = Listener::bind(&spec, &opts).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // Our listener removes its socket file when dropped.
    drop(live);
    assert!(!path.exists());
    // A stale socket file (its server gone without removing it) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let again = Listener::bind(&spec, &UnixOptions::default())
        .await
        .unwrap();
    drop(again);
    assert!(!path.exists());
    // A file that is not a socket is left alone.
    std::fs::write(&path, b"not a socket").unwrap();
    // (AlreadyExists, as the policy server always said; it was AddrInUse here.)
    let err = Listener::bind(&spec, &opts).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[tokio::test]
async fn tcp_streams_have_nodelay_on_both_sides() {
    use milter_proto::{Stream, connect};
    let listener = Listener::bind(
        &"inet:127.0.0.1:0".parse().unwrap(),
        &UnixOptions::default(),
    )
    .await
    .unwrap();
    let spec = listener.local_spec().unwrap();
    let (accepted, connected) = tokio::join!(listener.accept(), connect(&spec));
    for s in [accepted.unwrap().0, connected.unwrap()] {
        match s {
            // Small replies must not wait for the peer's delayed ACK (Nagle).
            Stream::Tcp(t) => assert!(t.nodelay().unwrap()),
            Stream::Unix(_) => panic!("inet spec gave a unix stream"),
            other => panic!("inet spec gave a stream that is not TCP: {other:?}"),
        }
    }
}
