//! The transport the policy server shares with the milter server: `inet:PORT` binds every
//! interface, unix sockets get mode 0660, a request must arrive by one deadline from its
//! first byte (slow-loris peers closed while others are served), shutdown closes a quiet
//! request after the grace period, 1,000 connections at once.
#![cfg(feature = "tokio")]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use policy_proto::{
    Action, Client, ConnError, Limits, Listener, Peer, PolicyRequest, Server, SocketSpec,
    handler_fn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

fn request() -> PolicyRequest {
    PolicyRequest::new()
        .with("request", "smtpd_access_policy")
        .and_then(|r| r.with("protocol_state", "RCPT"))
        .and_then(|r| r.with("sender", "a@x"))
        .unwrap()
}

type Stop = tokio::sync::oneshot::Sender<()>;

async fn start(
    spec: &SocketSpec,
    limits: Limits,
) -> (SocketSpec, Stop, tokio::task::JoinHandle<()>) {
    let listener = Listener::bind(spec).await.unwrap();
    let local = listener.local_spec().unwrap();
    let server = Server::new(handler_fn(|_req| async { Some(Action::Dunno) })).with_limits(limits);
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

#[tokio::test]
async fn inet_port_alone_binds_every_ipv4_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec: SocketSpec = format!("inet:{port}").parse().unwrap();
    let (local, stop, task) = start(&spec, Limits::default()).await;
    assert_eq!(
        local,
        SocketSpec::Inet {
            host: "0.0.0.0".into(),
            port
        }
    );
    let mut c = Client::connect(&format!("inet:127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(c.request(&request()).await.unwrap(), Action::Dunno);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn unix_socket_files_default_to_mode_0660() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    let l = Listener::bind(&SocketSpec::Unix(path.clone()))
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    drop(l);
    assert!(!path.exists());
}

/// A request dribbled one byte every 200 ms gets no more than the I/O timeout from its first
/// byte, however punctual each byte is.
#[tokio::test(start_paused = true)]
async fn a_dribbled_request_hits_its_deadline() {
    let (mut mta, theirs) = tokio::io::duplex(1 << 16);
    let mut limits = Limits::default();
    limits.io_timeout = Duration::from_secs(5);
    let server = Server::new(handler_fn(|_req| async { Some(Action::Dunno) })).with_limits(limits);
    let task = tokio::spawn(async move { server.serve_connection(theirs, Peer::Stream).await });
    let start = Instant::now();
    let dribble = tokio::spawn(async move {
        for b in b"request=smtpd_access_policy\nsender=a@x\n\n" {
            if mta.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        mta
    });
    let end = task.await.unwrap();
    assert!(matches!(end, Err(ConnError::ReadTimeout)), "{end:?}");
    let took = start.elapsed();
    assert!(took <= Duration::from_secs(6), "closed after {took:?}");
    drop(dribble.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_peers_are_closed_while_others_are_served() {
    let mut limits = Limits::default();
    limits.io_timeout = Duration::from_millis(600);
    let (local, stop, task) = start(&"inet:127.0.0.1:0".parse().unwrap(), limits).await;
    let mut lorises = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let spec = local.clone();
        lorises.spawn(async move {
            let SocketSpec::Inet { host, port } = spec else {
                unreachable!("bound to TCP")
            };
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 64];
            for b in b"request=smtpd_access_policy\n\n" {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => break,
                    Ok(Ok(_)) => panic!("answered a dribbled request"),
                    Err(_) => {}
                }
            }
            started.elapsed()
        });
    }
    let mut c = Client::connect(&local).await.unwrap();
    for _ in 0..20 {
        assert_eq!(c.request(&request()).await.unwrap(), Action::Dunno);
    }
    while let Some(took) = lorises.join_next().await {
        let took = took.unwrap();
        // 29 bytes at 200 ms would take 5.8 s; the deadline closes at 0.6 s.
        assert!(took < Duration::from_millis(1500), "loris held {took:?}");
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_a_quiet_request_after_the_grace_period() {
    let mut limits = Limits::default();
    limits.shutdown_grace = Duration::from_secs(1);
    let (local, stop, task) = start(&"inet:127.0.0.1:0".parse().unwrap(), limits).await;
    let SocketSpec::Inet { host, port } = local else {
        unreachable!("bound to TCP")
    };
    let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap();
    s.write_all(b"request=smtpd_access_policy\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("serve returns within grace + 1 s")
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut rest))
        .await
        .expect("connection closed");
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_at_once() {
    allow_open_files(4096);
    let (local, stop, task) = start(&"inet:127.0.0.1:0".parse().unwrap(), Limits::default()).await;
    let run = async {
        let mut open = Vec::new();
        for _ in 0..1000 {
            let mut c = Client::connect(&local).await.unwrap();
            assert_eq!(c.request(&request()).await.unwrap(), Action::Dunno);
            open.push(c);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for mut c in open {
            tasks.spawn(async move { c.request(&request()).await.unwrap() });
        }
        let mut served = 0;
        while let Some(a) = tasks.join_next().await {
            assert_eq!(a.unwrap(), Action::Dunno);
            served += 1;
        }
        served
    };
    let served = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("1,000 connections served in time");
    assert_eq!(served, 1000);
    stop.send(()).unwrap();
    task.await.unwrap();
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
