//! A handler still working when the MTA hangs up (an AV filter waiting on a stalled clamd):
//! the server notices the end of stream, drops the handler's work at once, calls
//! [`Handler::close`] and frees the connection slot.
#![cfg(feature = "tokio")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milter_proto::Command;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::server::{
    ConnectionError, Context, Decision, Handler, ServerConfig, async_trait, serve, serve_connection,
};
use milter_proto::{Actions, Protocol};
use milter_proto::{Listener, SocketSpec, UnixOptions};
use tokio::io::AsyncWriteExt;

/// Sets its flag when dropped: proof the handler's future was dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Never answers the stage `stall_at` (`b'M'` MAIL or `b'E'` end of message).
#[derive(Clone)]
struct Stall {
    stall_at: u8,
    dropped: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
}

impl Stall {
    fn new(stall_at: u8) -> Self {
        Self {
            stall_at,
            dropped: Arc::default(),
            closed: Arc::default(),
        }
    }

    async fn forever(&self) -> Decision {
        let _guard = Dropped(self.dropped.clone());
        std::future::pending::<Decision>().await
    }
}

#[async_trait]
impl Handler for Stall {
    async fn mail(&mut self, _ctx: &mut Context, _sender: &[u8], _args: &[Bytes]) -> Decision {
        if self.stall_at == b'M' {
            return self.forever().await;
        }
        Decision::Continue
    }
    async fn eom(&mut self, _ctx: &mut Context) -> Decision {
        if self.stall_at == b'E' {
            return self.forever().await;
        }
        Decision::Continue
    }
    async fn close(&mut self, _ctx: &mut Context) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

fn encode(cmds: &[Command]) -> BytesMut {
    let mut out = BytesMut::new();
    for c in cmds {
        c.encode(&mut out);
    }
    out
}

#[tokio::test]
async fn mta_hanging_up_drops_the_pending_handler() {
    let optneg = Command::OptNeg {
        version: 6,
        actions: Actions::all(),
        protocol: Protocol::empty(),
    };
    let mail = Command::Mail {
        sender: Bytes::from_static(b"<a@example.org>"),
        args: vec![],
    };
    for (stall_at, cmds) in [
        (b'M', vec![optneg.clone(), mail.clone()]),
        (
            b'E',
            vec![optneg.clone(), mail, Command::BodyEob(Bytes::new())],
        ),
    ] {
        let handler = Stall::new(stall_at);
        let (dropped, closed) = (handler.dropped.clone(), handler.closed.clone());
        let (mut mta, milter) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            serve_connection(milter, handler, &ServerConfig::default()).await
        });
        mta.write_all(&encode(&cmds)).await.unwrap();
        // Let the handler start waiting, then hang up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!server.is_finished(), "the handler never answers");
        assert!(!dropped.load(Ordering::SeqCst));
        drop(mta);
        let end = tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("the connection ends promptly once the MTA hangs up")
            .unwrap();
        match end {
            Err(ConnectionError::HungUp { cmd }) => assert_eq!(cmd, char::from(stall_at)),
            other => panic!("{other:?}"),
        }
        assert!(dropped.load(Ordering::SeqCst), "handler's work dropped");
        assert_eq!(closed.load(Ordering::SeqCst), 1, "close called once");
    }
}

#[tokio::test]
async fn hung_up_connection_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SocketSpec::Unix(dir.path().join("m.sock"));
    let listener = Listener::bind(&spec, &UnixOptions::default())
        .await
        .unwrap();
    let mut config = ServerConfig::default();
    config.max_connections = 1;
    let handler = Stall::new(b'E');
    let dropped = handler.dropped.clone();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let make = move || handler.clone();
    let done = tokio::spawn(serve(listener, make, config, async move {
        let _ = rx.await;
    }));

    let mut first = Client::connect(&spec, ClientConfig::default())
        .await
        .unwrap();
    first.connection(&Connection::default()).await.unwrap();
    let msg = Message::parse(
        b"<a@example.org>",
        &[b"<b@example.net>"],
        b"S: x\r\n\r\nbody\r\n",
    );
    let sending = tokio::spawn(async move { first.message(&msg).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sending.is_finished(), "end of message never answered");
    // The MTA gives up (its content timeout) and closes the connection.
    sending.abort();
    let _ = sending.await;
    // The only slot is free again: a new MTA connection is served at once.
    let second = tokio::time::timeout(
        Duration::from_secs(2),
        Client::connect(&spec, ClientConfig::default()),
    )
    .await
    .expect("the slot was freed")
    .unwrap();
    assert!(dropped.load(Ordering::SeqCst));
    second.quit().await.unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
}
