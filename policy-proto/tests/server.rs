//! The tokio server and client against each other: unix socket and TCP, many requests per
//! connection, the error path (no reply, close), limits, timeouts, stale sockets, shutdown.
#![cfg(feature = "tokio")]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use policy_proto::{
    Action, Client, ClientError, ConnEnd, ConnError, ConnInfo, DecodeError, Handler, Limits,
    Listener, Peer, PolicyRequest, Server, SocketSpec, UnixOptions, handler_fn,
};

/// Answers `REJECT <sender>` for senders starting with `bad`, `None` (close) for the sender
/// `close@x`, DUNNO otherwise; counts requests.
#[derive(Default)]
struct Echo {
    seen: AtomicUsize,
}

impl Handler for Echo {
    async fn handle(&self, req: PolicyRequest, conn: &ConnInfo) -> Option<Action> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        let sender = req.sender().unwrap_or("");
        if sender == "close@x" {
            return None;
        }
        if sender.starts_with("bad") {
            return Action::reject(Some(&format!("{sender} #{}", conn.served()))).ok();
        }
        Some(Action::Dunno)
    }
}

fn request(sender: &str) -> PolicyRequest {
    PolicyRequest::new()
        .with("request", "smtpd_access_policy")
        .and_then(|r| r.with("protocol_state", "RCPT"))
        .and_then(|r| r.with("sender", sender))
        .and_then(|r| r.with("recipient", "b@dest.example"))
        .unwrap()
}

async fn start(
    spec: &SocketSpec,
    limits: Limits,
) -> (
    SocketSpec,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = Listener::bind(spec).await.unwrap();
    let local = listener.local_spec().unwrap();
    let server = Server::new(Echo::default()).with_limits(limits);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (local, tx, task)
}

async fn many_requests_on_one_connection(spec: SocketSpec) {
    let (local, stop, task) = start(&spec, Limits::default()).await;
    let mut c = Client::connect(&local).await.unwrap();
    for i in 0..50 {
        let sender = if i % 2 == 0 { "good@x" } else { "bad@x" };
        let got = c.request(&request(sender)).await.unwrap();
        let want = if i % 2 == 0 {
            Action::Dunno
        } else {
            Action::reject(Some(&format!("bad@x #{i}"))).unwrap()
        };
        assert_eq!(got, want, "request {i}");
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn tcp_serves_many_requests_per_connection() {
    many_requests_on_one_connection("inet:127.0.0.1:0".parse().unwrap()).await;
}

#[tokio::test]
async fn unix_serves_many_requests_per_connection_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.sock");
    many_requests_on_one_connection(SocketSpec::Unix(path.clone())).await;
    assert!(!path.exists(), "socket file left behind after shutdown");
}

#[tokio::test]
async fn malformed_request_gets_no_reply_and_the_connection_closes() {
    let (local, _stop, _task) =
        start(&"inet:127.0.0.1:0".parse().unwrap(), Limits::default()).await;
    for bad in [&b"no equals sign\n\n"[..], b"=empty name\n\n", b"a=\0\n\n"] {
        let mut c = Client::connect(&local).await.unwrap();
        assert_eq!(c.request(&request("good@x")).await.unwrap(), Action::Dunno);
        let err = c.request_raw(bad).await.unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{bad:?}: {err:?}");
    }
}

#[tokio::test]
async fn oversized_request_is_refused_before_it_is_buffered() {
    let mut limits = Limits::default();
    limits.max_request = 1024;
    limits.max_line = 10_000;
    let server = Server::new(Echo::default()).with_limits(limits);
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let srv = tokio::spawn(async move { server.serve_connection(a, Peer::Stream).await });
    let line = format!("x={}\n", "y".repeat(5000));
    tokio::io::AsyncWriteExt::write_all(&mut b, line.as_bytes())
        .await
        .unwrap();
    let res = srv.await.unwrap();
    assert!(
        matches!(
            res,
            Err(ConnError::Malformed(DecodeError::RequestTooLarge {
                limit: 1024
            }))
        ),
        "{res:?}"
    );
}

#[tokio::test]
async fn handler_none_closes_without_reply() {
    let (local, _stop, _task) =
        start(&"inet:127.0.0.1:0".parse().unwrap(), Limits::default()).await;
    let mut c = Client::connect(&local).await.unwrap();
    let err = c.request(&request("close@x")).await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
}

#[tokio::test]
async fn request_limit_closes_after_the_reply() {
    let mut limits = Limits::default();
    limits.max_requests = 3;
    let (local, _stop, _task) = start(&"inet:127.0.0.1:0".parse().unwrap(), limits).await;
    let mut c = Client::connect(&local).await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.request(&request("good@x")).await.unwrap(), Action::Dunno);
    }
    let err = c.request(&request("good@x")).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Closed | ClientError::Io(_)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_and_mid_request_timeouts() {
    let server = Server::new(Echo::default());
    let (a, _b) = tokio::io::duplex(1024);
    let end = server.serve_connection(a, Peer::Stream).await;
    assert!(matches!(end, Ok(ConnEnd::Idle)), "{end:?}");

    let (a, mut b) = tokio::io::duplex(1024);
    tokio::io::AsyncWriteExt::write_all(&mut b, b"request=smtpd_access_policy\n")
        .await
        .unwrap();
    let end = server.serve_connection(a, Peer::Stream).await;
    assert!(matches!(end, Err(ConnError::ReadTimeout)), "{end:?}");
}

#[tokio::test]
async fn eof_between_requests_is_normal_and_inside_one_is_truncated() {
    let server = Server::new(Echo::default());
    let (a, b) = tokio::io::duplex(1024);
    drop(b);
    let end = server.serve_connection(a, Peer::Stream).await;
    assert!(matches!(end, Ok(ConnEnd::Eof)), "{end:?}");

    let (a, mut b) = tokio::io::duplex(1024);
    tokio::io::AsyncWriteExt::write_all(&mut b, b"request=smtpd_access_policy\n")
        .await
        .unwrap();
    drop(b);
    let end = server.serve_connection(a, Peer::Stream).await;
    assert!(matches!(end, Err(ConnError::Truncated)), "{end:?}");
}

#[tokio::test]
async fn stale_socket_is_replaced_live_one_and_plain_files_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    let spec = SocketSpec::Unix(path.clone());
    // A stale socket: bound, then the listener dropped without unlinking.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    // Our own group: a group a normal user may give its socket (root's 0 is not).
    // SAFETY: getgid has no preconditions.
    let gid = unsafe { libc::getgid() };
    let opts = UnixOptions::new(Some(0o660), Some(gid.to_string()));
    let live = Listener::bind_with(&spec, &opts).await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid);
    let err = Listener::bind(&spec).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    drop(live);
    assert!(!path.exists());

    std::fs::write(&path, b"not a socket").unwrap();
    let err = Listener::bind(&spec).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    let err = Listener::bind_with(
        &SocketSpec::Unix(dir.path().join("g.sock")),
        &UnixOptions::new(None, Some("no-such-group-xyz".into())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_progress() {
    let started = Arc::new(tokio::sync::Notify::new());
    let s2 = started.clone();
    let server = Server::new(handler_fn(move |_req| {
        let s = s2.clone();
        async move {
            s.notify_one();
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some(Action::Ok)
        }
    }));
    let listener = Listener::bind(&"inet:127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let local = listener.local_spec().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
    });
    let mut busy = Client::connect(&local).await.unwrap();
    let mut idle = Client::connect(&local).await.unwrap();
    let pending = tokio::spawn(async move {
        let r = busy.request(&request("x@y")).await;
        (r, busy)
    });
    started.notified().await;
    tx.send(()).unwrap();
    let (r, mut busy) = pending.await.unwrap();
    assert_eq!(
        r.unwrap(),
        Action::Ok,
        "request in progress must be answered"
    );
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(busy.request(&request("x@y")).await.is_err());
    assert!(idle.request(&request("x@y")).await.is_err());
    assert!(Client::connect(&local).await.is_err(), "still accepting");
}

/// A handler that overrides `respond`: python-policyd-spf's lower-case spelling goes out as
/// written, and a restriction class name is sent as is.
struct Spelled;

impl Handler for Spelled {
    async fn handle(&self, req: PolicyRequest, conn: &ConnInfo) -> Option<Action> {
        self.respond(req, conn).await?.action().cloned()
    }

    async fn respond(&self, req: PolicyRequest, _conn: &ConnInfo) -> Option<policy_proto::Reply> {
        match req.sender() {
            Some("class@x") => policy_proto::Reply::restriction_class("spf_passed").ok(),
            _ => policy_proto::Reply::spelled("prepend X-Spelled: yes").ok(),
        }
    }
}

#[tokio::test]
async fn respond_sends_the_handlers_spelling() {
    let server = Server::new(Spelled);
    let (ours, theirs) = tokio::io::duplex(4096);
    let task = tokio::spawn(async move { server.serve_connection(theirs, Peer::Stream).await });
    let mut raw = ours;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut wire = bytes::BytesMut::new();
    request("a@x").encode(&mut wire);
    request("class@x").encode(&mut wire);
    raw.write_all(&wire).await.unwrap();
    raw.shutdown().await.unwrap();
    let mut out = String::new();
    raw.read_to_string(&mut out).await.unwrap();
    assert_eq!(
        out,
        "action=prepend X-Spelled: yes\n\naction=spf_passed\n\n"
    );
    assert_eq!(task.await.unwrap().unwrap(), ConnEnd::Eof);
}
