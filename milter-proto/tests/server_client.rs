//! Our server and our MTA-side client talking over real sockets (unix and TCP on 127.0.0.1:0).
#![cfg(feature = "tokio")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use milter_proto::ConnAddr;
use milter_proto::MacroStage;
use milter_proto::Needs;
use milter_proto::Reply;
use milter_proto::client::{Client, ClientConfig, ClientError, Connection, Message};
use milter_proto::server::{Context, Decision, Handler, ServerConfig, serve};
use milter_proto::{Actions, Protocol};
use milter_proto::{Listener, SocketSpec, UnixOptions};
use tokio::sync::oneshot;

/// Records what it saw; stamps a header, rejects `<bad@...>`, replaces the body when the body
/// contains "REPLACE", asks for progress on "SLOW".
#[derive(Default)]
struct Stamp {
    seen: Arc<Mutex<Vec<String>>>,
    body: Vec<u8>,
    needs: Needs,
}

impl Stamp {
    fn log(&self, s: String) {
        self.seen.lock().unwrap().push(s);
    }
}

#[async_trait::async_trait]
impl Handler for Stamp {
    fn needs(&self) -> Needs {
        self.needs.clone()
    }
    async fn connect(&mut self, ctx: &mut Context, host: &[u8], addr: &ConnAddr) -> Decision {
        let j = ctx.macro_value("j").cloned().unwrap_or_default();
        self.log(format!(
            "connect {} {addr:?} j={}",
            String::from_utf8_lossy(host),
            String::from_utf8_lossy(&j)
        ));
        Decision::Continue
    }
    async fn rcpt(&mut self, _ctx: &mut Context, rcpt: &[u8], _args: &[Bytes]) -> Decision {
        if rcpt.starts_with(b"<bad@") {
            Decision::ReplyCode(Bytes::from_static(b"550 5.7.1 bad recipient"))
        } else {
            Decision::Continue
        }
    }
    async fn header(&mut self, _ctx: &mut Context, name: &[u8], value: &[u8]) -> Decision {
        self.log(format!(
            "header {}:{}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value)
        ));
        Decision::Continue
    }
    async fn body(&mut self, _ctx: &mut Context, chunk: &Bytes) -> Decision {
        self.body.extend_from_slice(chunk);
        Decision::Continue
    }
    async fn eom(&mut self, ctx: &mut Context) -> Decision {
        let id = ctx.macro_value("i").cloned().unwrap_or_default();
        let len = self.body.len().to_string();
        let stamped = ctx
            .add_header(
                "X-Stamp",
                &format!("{} {len}", String::from_utf8_lossy(&id)),
            )
            .is_ok();
        if self.body.windows(4).any(|w| w == b"SLOW") {
            ctx.progress();
            tokio::time::sleep(Duration::from_millis(20)).await;
            ctx.progress();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.body.windows(7).any(|w| w == b"REPLACE")
            && ctx.replace_body(Bytes::from(vec![b'x'; 70_000])).is_err()
        {
            return Decision::Tempfail;
        }
        if stamped {
            Decision::Continue
        } else {
            Decision::Accept
        }
    }
    async fn abort(&mut self, _ctx: &mut Context) {
        self.body.clear();
    }
    async fn close(&mut self, _ctx: &mut Context) {
        self.log("close".into());
    }
}

struct Running {
    spec: SocketSpec,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn start(spec: SocketSpec, needs: Needs, config: ServerConfig) -> Running {
    let listener = Listener::bind(&spec, &UnixOptions::default())
        .await
        .unwrap();
    let spec = listener.local_spec().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, rx) = oneshot::channel::<()>();
    let s2 = seen.clone();
    let done = tokio::spawn(serve(
        listener,
        move || Stamp {
            seen: s2.clone(),
            needs: needs.clone(),
            ..Stamp::default()
        },
        config,
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        spec,
        stop,
        done,
        seen,
    }
}

fn stamp_needs() -> Needs {
    Needs {
        actions: Actions::ADDHDRS | Actions::CHGBODY,
        macros: vec![(MacroStage::Eom, Bytes::from_static(b"i"))],
        ..Needs::default()
    }
}

fn message(body: &[u8], rcpts: &[&[u8]]) -> Message {
    let mut raw = b"Subject: hello\r\nX-Fold: a\r\n\tb\r\n\r\n".to_vec();
    raw.extend_from_slice(body);
    let mut m = Message::parse(b"<a@example.org>", rcpts, &raw);
    m.macros = vec![(
        b'E',
        vec![(Bytes::from_static(b"i"), Bytes::from_static(b"Q1"))],
    )];
    m
}

async fn conversation(spec: SocketSpec) {
    let srv = start(spec, stamp_needs(), ServerConfig::default()).await;
    let mut c = Client::connect(&srv.spec, ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(c.negotiated().actions, Actions::ADDHDRS | Actions::CHGBODY);
    assert_eq!(c.negotiated().macros, stamp_needs().macros);
    let conn = c.connection(&Connection::default()).await.unwrap();
    assert_eq!(conn.decision, Reply::Continue);

    let o = c
        .message(&message(b"hi\r\n", &[b"<b@example.net>"]))
        .await
        .unwrap();
    assert_eq!(o.decision, Reply::Continue);
    assert_eq!(
        o.modifications,
        vec![Reply::AddHeader {
            name: Bytes::from_static(b"X-Stamp"),
            value: Bytes::from_static(b"Q1 4"),
        }]
    );

    // A second message on the same connection: one bad recipient is dropped, the body is
    // replaced in two REPLBODY chunks, progress arrives.
    let o = c
        .message(&message(
            b"REPLACE SLOW\r\n",
            &[b"<bad@example.net>", b"<b@example.net>"],
        ))
        .await
        .unwrap();
    assert_eq!(
        o.replies.get(1),
        Some(&(
            b'R',
            Reply::ReplyCode(Bytes::from_static(b"550 5.7.1 bad recipient"))
        ))
    );
    assert_eq!(o.decision, Reply::Continue);
    assert_eq!(o.replaced_body().map(|b| b.len()), Some(70_000));
    assert_eq!(o.modifications.len(), 3);
    assert!(o.progress >= 1, "progress {}", o.progress);

    // Only bad recipients: the message ends at RCPT.
    let o = c.message(&message(b"x\r\n", &[b"<bad@x>"])).await.unwrap();
    assert_eq!(
        o.decision,
        Reply::ReplyCode(Bytes::from_static(b"550 5.7.1 bad recipient"))
    );
    c.quit().await.unwrap();

    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
    let seen = srv.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s.starts_with("connect client.example Inet") && s.ends_with("j=mx.example")),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"header Subject:hello".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"header X-Fold:a\n\tb".to_owned()),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("close"));
}

#[tokio::test]
async fn unix_socket_conversation() {
    let dir = tempfile::tempdir().unwrap();
    conversation(SocketSpec::Unix(dir.path().join("m.sock"))).await;
}

#[tokio::test]
async fn tcp_conversation() {
    conversation("inet:127.0.0.1:0".parse().unwrap()).await;
}

#[tokio::test]
async fn nr_and_no_options_are_honoured_both_ways() {
    let needs = Needs {
        actions: Actions::ADDHDRS,
        protocol: Protocol::NOCONNECT
            | Protocol::NOHELO
            | Protocol::NR_MAIL
            | Protocol::NR_RCPT
            | Protocol::NR_DATA
            | Protocol::NR_HDR
            | Protocol::NR_EOH
            | Protocol::NR_BODY
            | Protocol::HDR_LEADSPC,
        ..Needs::default()
    };
    let srv = start(
        "inet:127.0.0.1:0".parse().unwrap(),
        needs,
        ServerConfig::default(),
    )
    .await;
    let mut c = Client::connect(&srv.spec, ClientConfig::default())
        .await
        .unwrap();
    let conn = c.connection(&Connection::default()).await.unwrap();
    assert!(conn.replies.is_empty());
    let o = c
        .message(&message(b"hi\r\n", &[b"<b@example.net>"]))
        .await
        .unwrap();
    // Only the end of message answered.
    assert_eq!(o.replies, vec![(b'E', Reply::Continue)]);
    assert_eq!(o.modifications.len(), 1);
    c.quit().await.unwrap();
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
    let seen = srv.seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|s| s.starts_with("connect")), "{seen:?}");
    // HDR_LEADSPC: the leading space arrives.
    assert!(
        seen.contains(&"header Subject: hello".to_owned()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn v2_mta_gets_only_v2_features() {
    let srv = start(
        "inet:127.0.0.1:0".parse().unwrap(),
        Needs {
            actions: Actions::ADDHDRS | Actions::CHGFROM,
            protocol: Protocol::NR_HDR | Protocol::NOCONNECT,
            ..Needs::default()
        },
        ServerConfig::default(),
    )
    .await;
    let cfg = ClientConfig::offer(
        2,
        Actions::from_bits_retain(0x3F),
        Protocol::from_bits_retain(0x7F),
    );
    let c = Client::connect(&srv.spec, cfg).await.unwrap();
    assert_eq!(c.negotiated().version, 2);
    assert_eq!(c.negotiated().actions, Actions::ADDHDRS);
    assert_eq!(c.negotiated().protocol, Protocol::NOCONNECT);
    c.quit().await.unwrap();
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn required_action_not_offered_closes_the_connection() {
    let srv = start(
        "inet:127.0.0.1:0".parse().unwrap(),
        Needs {
            actions: Actions::CHGFROM,
            required_actions: Actions::CHGFROM,
            ..Needs::default()
        },
        ServerConfig::default(),
    )
    .await;
    let cfg = ClientConfig::offer(6, Actions::ADDHDRS, Protocol::empty());
    let err = Client::connect(&srv.spec, cfg).await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}
