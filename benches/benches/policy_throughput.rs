//! Policy delegation throughput: `policy_proto::Client` against `policy_proto::Server` with a
//! trivial handler (every request gets `DUNNO`), over a unix socket and over TCP on loopback,
//! with 1, 4 and 16 concurrent connections. Each connection sends its requests one after the
//! other and waits for each reply, as smtpd does. The request is Postfix 3.12's full set
//! (`policy-proto/tests/vectors/3.12.txt`, 32 attributes). The server runs in a child process
//! (this binary again), as a policy daemon runs apart from Postfix.
//!
//! Prints, per transport and connection count: requests per second, and the latency of one
//! request (write to reply read) at p50, p90 and p99.
//!
//! Run: `cargo bench -p mailstack-benches --bench policy_throughput` (set
//! `POLICY_BENCH_REQUESTS` to change the requests per row, default 40,000).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use policy_proto::{
    Action, Client, Listener, PolicyRequest, RequestDecoder, Server, SocketSpec, UnixOptions,
    handler_fn,
};

/// Set in the child: the socket spec to serve.
const CHILD_ENV: &str = "POLICY_BENCH_SERVE";
const CONNECTIONS: &[usize] = &[1, 4, 16];
const WARMUP: usize = 200;

fn serve(spec: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = Listener::bind_spec(spec, &UnixOptions::default())
            .await
            .expect("bind");
        let server = Server::new(handler_fn(|_req| async { Some(Action::Dunno) }));
        server
            .serve(listener, std::future::pending())
            .await
            .expect("policy server accept loop");
    });
}

fn request() -> PolicyRequest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-proto/tests/vectors/3.12.txt");
    let wire = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    RequestDecoder::new()
        .decode(&mut BytesMut::from(&wire[..]))
        .expect("vector decodes")
        .expect("vector is complete")
}

struct Row {
    transport: &'static str,
    connections: usize,
    requests: usize,
    per_second: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
}

async fn connect(spec: &SocketSpec) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(spec).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("connect {spec}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn run(spec: &SocketSpec, transport: &'static str, conns: usize, total: usize) -> Row {
    let req = request();
    let per_conn = total.div_ceil(conns);
    let mut clients = Vec::new();
    for _ in 0..conns {
        let mut c = connect(spec).await;
        for _ in 0..WARMUP {
            assert_eq!(c.request(&req).await.expect("reply"), Action::Dunno);
        }
        clients.push(c);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut c in clients {
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let t = Instant::now();
                let action = c.request(&req).await.expect("reply");
                lat.push(t.elapsed());
                assert_eq!(action, Action::Dunno);
            }
            let _ = c.close().await;
            lat
        }));
    }
    let mut lat = Vec::with_capacity(per_conn * conns);
    for t in tasks {
        lat.extend(t.await.expect("client task"));
    }
    let wall = start.elapsed();
    lat.sort_unstable();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
    Row {
        transport,
        connections: conns,
        requests: lat.len(),
        per_second: lat.len() as f64 / wall.as_secs_f64(),
        p50: pct(50),
        p90: pct(90),
        p99: pct(99),
    }
}

struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(spec: &str) -> ServerChild {
    let exe = std::env::current_exe().expect("current exe");
    ServerChild(
        Command::new(exe)
            .env(CHILD_ENV, spec)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn server"),
    )
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        serve(&spec);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let total: usize = std::env::var("POLICY_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 40_000 });
    let dir = tempfile::tempdir().expect("temp dir");
    let unix = format!("unix:{}", dir.path().join("policy.sock").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let tcp = format!("inet:127.0.0.1:{port}");
    let _servers = [spawn_server(&unix), spawn_server(&tcp)];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    runtime.block_on(async {
        for (name, spec) in [("unix", &unix), ("tcp", &tcp)] {
            let spec: SocketSpec = spec.parse().expect("spec");
            for &conns in CONNECTIONS {
                rows.push(run(&spec, name, conns, total).await);
            }
        }
    });

    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "\npolicy_proto Client -> Server (DUNNO handler), Postfix 3.12 request (32 attributes), {cpus} CPUs, client and server processes on one host"
    );
    println!(
        "{:<9} {:>5} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "transport", "conns", "requests", "requests/s", "p50", "p90", "p99"
    );
    for r in &rows {
        println!(
            "{:<9} {:>5} {:>9} {:>12.0} {:>10} {:>10} {:>10}",
            r.transport,
            r.connections,
            r.requests,
            r.per_second,
            format!("{:.1}us", r.p50.as_secs_f64() * 1e6),
            format!("{:.1}us", r.p90.as_secs_f64() * 1e6),
            format!("{:.1}us", r.p99.as_secs_f64() * 1e6),
        );
    }
}
