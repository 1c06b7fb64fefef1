//! Milter throughput: our MTA-side client against our null milter and against a libmilter C
//! null milter (`examples/tests/c/c_milter.c`, built here with `cc ... -lmilter`), side by
//! side in one run, over unix sockets, 4 concurrent client connections, one milter connection
//! per message (as Postfix does for one message per SMTP session). For 5 KB and 100 KB
//! messages, with replies to every stage and again with the `NR_*` no-reply options. Prints
//! messages per second, the server process's CPU per message (utime+stime from
//! `/proc/<pid>/stat`) and the ratios; then the command decoder alone (frames/s, bytes/s).
//!
//! Run: `cargo bench -p mailstack-benches --bench milter_throughput` (needs libmilter-dev and
//! cc; set `MILTER_BENCH_MESSAGES` to change the message count, `MILTER_BENCH_SERVER_THREADS`
//! to give our server that many tokio workers, 0 for a current-thread runtime; default: one
//! per core).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mailstack_benches::{Figures, Server, alternate, cpu_seconds};
use milter_proto::Command as MilterCommand;
use milter_proto::DEFAULT_MAX_FRAME_LEN;
use milter_proto::Needs;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::server::{Context, Decision, Handler, ServerConfig, async_trait, serve};
use milter_proto::{Actions, Protocol};
use milter_proto::{Listener, SocketSpec, UnixOptions};

const CONNECTIONS: usize = 4;
/// Runs per server and case; the median is printed.
const ROUNDS: usize = 3;
/// The actions the C milter registers (ADDHDRS | ADDRCPT); our server asks for the same.
const ACTIONS: Actions = Actions::ADDHDRS.union(Actions::ADDRCPT);
const CHILD_ENV: &str = "MILTER_BENCH_SERVE";

/// Like the C null milter: CONTINUE to every stage and at end of message.
struct Null {
    protocol: Protocol,
}

#[async_trait]
impl Handler for Null {
    fn needs(&self) -> Needs {
        Needs {
            actions: ACTIONS,
            protocol: self.protocol,
            ..Needs::default()
        }
    }
    async fn eom(&mut self, _ctx: &mut Context) -> Decision {
        Decision::Continue
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        serve_child(&spec);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("MILTER_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let c_exe = build_c_milter(tmp.path());
    println!(
        "milter throughput: {CONNECTIONS} connections, unix sockets, {n} messages per run \
         (half for 100 KB), median of {ROUNDS} alternating runs"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>7} {:>12} {:>12} {:>7}",
        "case", "ours msg/s", "C msg/s", "ratio", "ours ms CPU", "C ms CPU", "ratio"
    );
    for size in [5 * 1024, 100 * 1024] {
        let msg = message(size);
        for no_reply in [false, true] {
            let count = if size > 10_000 { n / 2 } else { n };
            let ours_srv = spawn_ours(tmp.path(), no_reply);
            let c_srv = spawn_c(&c_exe, tmp.path(), no_reply);
            // Alternate the two servers and keep the median of each: the machine is shared,
            // and load that comes and goes should not favour whichever ran first.
            let (ours, c) = alternate(
                ROUNDS,
                || measure(&ours_srv, &msg, count),
                || measure(&c_srv, &msg, count),
            );
            println!(
                "{:<22} {:>10.0} {:>10.0} {:>7.2} {:>12.3} {:>12.3} {:>7.2}",
                format!("{} KB{}", size / 1024, if no_reply { " NR_*" } else { "" }),
                ours.rate,
                c.rate,
                ours.rate / c.rate,
                ours.cpu_ms,
                c.cpu_ms,
                ours.cpu_ms / c.cpu_ms,
            );
        }
    }
    println!("(ms CPU = server process utime+stime per message; ratio = ours / C)");
    codec_alone();
}

fn serve_child(spec: &str) {
    let protocol = if std::env::var("MILTER_BENCH_NR").is_ok() {
        Protocol::ALL_NR
    } else {
        Protocol::empty()
    };
    let socket: SocketSpec = spec.parse().expect("socket spec");
    let rt = match std::env::var("MILTER_BENCH_SERVER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .expect("runtime");
    let result = rt.block_on(async {
        let listener = Listener::bind(&socket, &UnixOptions::default()).await?;
        let make = move || Null { protocol };
        serve(
            listener,
            make,
            ServerConfig::default(),
            std::future::pending(),
        )
        .await
    });
    if let Err(e) = result {
        eprintln!("bench server: {e}");
    }
}

fn spawn_ours(dir: &Path, no_reply: bool) -> Server {
    let path = dir.join(format!("ours-{no_reply}.sock"));
    let _ = std::fs::remove_file(&path);
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.env(CHILD_ENV, format!("unix:{}", path.display()))
        .stdin(Stdio::null());
    if no_reply {
        cmd.env("MILTER_BENCH_NR", "1");
    }
    Server::wait_unix(
        cmd.spawn().expect("spawn bench server"),
        &path,
        "bench server",
    )
}

fn spawn_c(exe: &Path, dir: &Path, no_reply: bool) -> Server {
    let path = dir.join(format!("c-{no_reply}.sock"));
    let _ = std::fs::remove_file(&path);
    let mut cmd = Command::new(exe);
    cmd.arg("-p")
        .arg(format!("unix:{}", path.display()))
        .stdin(Stdio::null());
    if no_reply {
        cmd.arg("-n");
    }
    Server::wait_unix(cmd.spawn().expect("spawn c_milter"), &path, "bench server")
}

fn build_c_milter(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tests/c/c_milter.c");
    let out = dir.join("c_milter");
    let ok = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-lmilter", "-lpthread"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "cc {} -lmilter failed: install gcc and libmilter-dev",
        src.display()
    );
    out
}

/// A message of about `size` bytes: 10 headers and a body of 76-character lines.
fn message(size: usize) -> Vec<u8> {
    let mut m = String::new();
    for i in 0..10 {
        m.push_str(&format!(
            "X-Header-{i}: value number {i} for the benchmark\r\n"
        ));
    }
    m.push_str("\r\n");
    let line = format!("{}\r\n", "x".repeat(76));
    while m.len() < size {
        m.push_str(&line);
    }
    m.into_bytes()
}

fn measure(server: &Server, msg: &[u8], count: usize) -> Figures {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let msg: Arc<[u8]> = msg.into();
    // Warm up (thread pools, page cache) before measuring.
    rt.block_on(run_clients(&server.socket, &msg, CONNECTIONS * 10));
    let cpu0 = cpu_seconds(server.child.id());
    let t0 = Instant::now();
    rt.block_on(run_clients(&server.socket, &msg, count));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id()) - cpu0;
    Figures {
        rate: count as f64 / secs,
        cpu_ms: cpu * 1000.0 / count as f64,
    }
}

async fn run_clients(socket: &SocketSpec, msg: &Arc<[u8]>, count: usize) {
    let message = Arc::new(Message::parse(
        b"<sender@src.example>",
        &[b"<rcpt@dest.example>"],
        msg,
    ));
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let share = count / CONNECTIONS + usize::from(i < count % CONNECTIONS);
        let (socket, message) = (socket.clone(), Arc::clone(&message));
        tasks.push(tokio::spawn(async move {
            let conn = Connection::default();
            for _ in 0..share {
                let mut c = Client::connect(&socket, ClientConfig::default())
                    .await
                    .expect("connect and negotiate");
                c.connection(&conn).await.expect("connect stage");
                let o = c.message(&message).await.expect("send");
                assert_eq!(o.replies.last().map(|r| r.0), Some(b'E'), "{o:?}");
                c.quit().await.expect("quit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

/// The decoder alone over an in-memory stream of body chunks and headers: body chunks are
/// split off the buffer without copying their payload.
fn codec_alone() {
    let mut stream = BytesMut::new();
    let chunk = Bytes::from(vec![b'x'; 8192]);
    for i in 0..20_000 {
        if i % 4 == 0 {
            MilterCommand::Header {
                name: Bytes::from_static(b"Subject"),
                value: Bytes::from_static(b"hello world"),
            }
            .encode(&mut stream);
        } else {
            MilterCommand::Body(chunk.clone()).encode(&mut stream);
        }
    }
    let stream = stream.freeze();
    let rounds = 10;
    // Copies made before the clock starts: decoding splits frames off each one.
    let inputs: Vec<BytesMut> = (0..rounds).map(|_| BytesMut::from(&stream[..])).collect();
    let t0 = Instant::now();
    let mut frames = 0u64;
    for mut buf in inputs {
        while let Some(cmd) =
            MilterCommand::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).expect("decode")
        {
            frames += u64::from(cmd.code() != 0);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let bytes = (stream.len() * rounds) as f64;
    println!(
        "command decoder alone: {:.0} frames/s, {:.0} MB/s ({} frames, 3/4 of them 8 KiB body chunks)",
        frames as f64 / secs,
        bytes / secs / 1e6,
        frames
    );
}
