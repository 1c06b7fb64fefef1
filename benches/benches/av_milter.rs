//! The AV milter against the tool it replaces: our `mailstack::av::milter` (this binary
//! re-executed as the server, the same library code `av-milter` serves) and Debian's
//! `clamav-milter` 1.4.6, both in front of the same private clamd (signature database written
//! here: EICAR; `DisableCache yes` so repeated messages are really scanned), with the same
//! clamav-milter.conf options, driven by our milter client over unix sockets: 4 concurrent
//! connections (`AV_BENCH_CONNECTIONS`), one milter connection per message (as Postfix does for one message per SMTP
//! session), clean 5 KB and 100 KB messages. Prints messages per second, the milter's CPU per
//! message and clamd's, the ratios, and each milter's peak RSS.
//!
//! clamav-milter hands clamd the message as a temp file over the unix socket (FILDES); ours
//! runs twice: streaming it with INSTREAM while it arrives (the default) and with
//! `ClamdTransfer Fildes` (the same method as clamav-milter).
//!
//! Run: `cargo bench -p mailstack-benches --bench av_milter` (root; needs clamav-daemon and
//! clamav-milter; `AV_BENCH_MESSAGES` changes the count, default 1000).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mailstack::av::AvConfig;
use mailstack::av::AvFilter;
use mailstack::filter::Milter;
use mailstack_benches::{Server, cpu_seconds, vm_hwm_kb};
use milter_proto::Reply;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::server::{ServerConfig, serve};
use milter_proto::{Listener, SocketSpec, UnixOptions};

/// Concurrent client connections (`AV_BENCH_CONNECTIONS`, default 4).
fn connections() -> usize {
    std::env::var("AV_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4)
}
const CHILD_ENV: &str = "AV_BENCH_SERVE";
const CLAMD: &str = "/usr/sbin/clamd";
const CLAMAV_MILTER: &str = "/usr/sbin/clamav-milter";
/// The EICAR test string, hex-encoded so that this file is not itself a detection.
const EICAR_HEX: &str = "58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a";

fn main() {
    if let Ok(conf) = std::env::var(CHILD_ENV) {
        serve_child(Path::new(&conf));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for exe in [CLAMD, CLAMAV_MILTER] {
        assert!(
            Path::new(exe).exists(),
            "{exe} is missing: install clamav-daemon and clamav-milter"
        );
    }
    let n: usize = std::env::var("AV_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let clamd = start_clamd(dir);
    let clamd_sock = dir.join("clamd.sock");
    let common = format!(
        "ClamdSocket unix:{}\nOnInfected Reject\nRejectMsg Virus %v found, rejected\n\
         AddHeader Replace\nReportHostname mx.bench\nReadTimeout 60\n",
        clamd_sock.display()
    );
    // clamav-milter
    let cm_sock = dir.join("cm.sock");
    std::fs::write(
        dir.join("cm.conf"),
        format!(
            "MilterSocket unix:{}\nForeground yes\nLogFile {d}/cm.log\nTemporaryDirectory {d}\n{common}",
            cm_sock.display(),
            d = dir.display()
        ),
    )
    .expect("write cm.conf");
    let cm = Server::wait_unix(
        Command::new(CLAMAV_MILTER)
            .arg("-c")
            .arg(dir.join("cm.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn clamav-milter"),
        &cm_sock,
        "clamav-milter",
    );
    // ours: this binary re-executed, serving mailstack::av::AvFilter, once with each
    // ClamdTransfer.
    let spawn_ours = |name: &str, extra: &str| {
        let sock = dir.join(format!("{name}.sock"));
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "MilterSocket unix:{}\nTemporaryDirectory {}\n{extra}{common}",
                sock.display(),
                dir.display()
            ),
        )
        .expect("write our conf");
        Server::wait_unix(
            Command::new(std::env::current_exe().expect("current exe"))
                .env(CHILD_ENV, &conf)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn our server"),
            &sock,
            "av milter",
        )
    };
    let ours = [
        (
            "instream",
            spawn_ours("instream", "ClamdTransfer Instream\n"),
        ),
        ("fildes", spawn_ours("fildes", "ClamdTransfer Fildes\n")),
    ];

    println!(
        "AV milter throughput: {} connections, unix sockets, same clamd (cache off), {n} messages per run",
        connections()
    );
    println!(
        "{:<16} {:>10} {:>10} {:>7} {:>11} {:>11} {:>7} {:>11} {:>11}",
        "size, ours by",
        "ours msg/s",
        "cm msg/s",
        "ratio",
        "ours ms CPU",
        "cm ms CPU",
        "ratio",
        "clamd/ours",
        "clamd/cm"
    );
    for size in [5 * 1024, 100 * 1024] {
        let msg = message(size);
        let count = if size > 10_000 { n / 2 } else { n };
        let c = measure(&cm, clamd.child.id(), &msg, count);
        for (how, server) in &ours {
            let o = measure(server, clamd.child.id(), &msg, count);
            println!(
                "{:<16} {:>10.0} {:>10.0} {:>7.2} {:>11.3} {:>11.3} {:>7.2} {:>11.3} {:>11.3}",
                format!("{} KB {how}", size / 1024),
                o.rate,
                c.rate,
                o.rate / c.rate,
                o.cpu_ms,
                c.cpu_ms,
                o.cpu_ms / c.cpu_ms,
                o.clamd_ms,
                c.clamd_ms
            );
        }
    }
    println!(
        "(ms CPU = utime+stime per message of the milter process, and of clamd; ratio = ours / clamav-milter)"
    );
    println!(
        "peak RSS: ours {} kB (instream), {} kB (fildes); clamav-milter {} kB",
        vm_hwm_kb(ours[0].1.child.id()),
        vm_hwm_kb(ours[1].1.child.id()),
        vm_hwm_kb(cm.child.id())
    );
}

/// The server child: reads the configuration and serves the library filter.
fn serve_child(conf: &Path) {
    let cfg = AvConfig::read(conf).unwrap_or_else(|e| panic!("{e}"));
    let socket: SocketSpec = cfg
        .milter_socket
        .as_deref()
        .expect("MilterSocket")
        .parse()
        .expect("socket spec");
    let filter = Arc::new(AvFilter::new(cfg, None));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let listener = Listener::bind(&socket, &UnixOptions::default()).await?;
        serve(
            listener,
            Milter::factory(filter),
            ServerConfig::default(),
            std::future::pending(),
        )
        .await
    });
    if let Err(e) = result {
        eprintln!("bench server: {e}");
    }
}

fn start_clamd(dir: &Path) -> Server {
    let db = dir.join("db");
    std::fs::create_dir(&db).expect("db dir");
    std::fs::write(
        db.join("bench.ndb"),
        format!("Mailstack.Bench.EICAR:0:*:{EICAR_HEX}\n"),
    )
    .expect("write signatures");
    let sock: PathBuf = dir.join("clamd.sock");
    std::fs::write(
        dir.join("clamd.conf"),
        format!(
            "LocalSocket {s}\nForeground yes\nDatabaseDirectory {d}/db\nTemporaryDirectory {d}\n\
             LogFile {d}/clamd.log\nStreamMaxLength 100M\nDisableCache yes\nMaxThreads 8\n",
            s = sock.display(),
            d = dir.display()
        ),
    )
    .expect("write clamd.conf");
    Server::wait_unix(
        Command::new(CLAMD)
            .arg("-c")
            .arg(dir.join("clamd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn clamd"),
        &sock,
        "clamd",
    )
}

/// A clean message of about `size` bytes: a few headers and 76-character body lines.
fn message(size: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: a@src.example\r\nTo: b@dest.example\r\nSubject: bench\r\nMessage-ID: <b@src.example>\r\n\r\n",
    );
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() < size {
        m.push_str(line);
    }
    m.into_bytes()
}

struct Figures {
    rate: f64,
    cpu_ms: f64,
    clamd_ms: f64,
}

fn measure(milter: &Server, clamd_pid: u32, msg: &[u8], count: usize) -> Figures {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let msg: Arc<[u8]> = msg.into();
    rt.block_on(run_clients(&milter.socket, &msg, connections() * 5));
    let (cpu0, clamd0) = (cpu_seconds(milter.child.id()), cpu_seconds(clamd_pid));
    let t0 = Instant::now();
    rt.block_on(run_clients(&milter.socket, &msg, count));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(milter.child.id()) - cpu0;
    let clamd = cpu_seconds(clamd_pid) - clamd0;
    Figures {
        rate: count as f64 / secs,
        cpu_ms: cpu * 1000.0 / count as f64,
        clamd_ms: clamd * 1000.0 / count as f64,
    }
}

async fn run_clients(socket: &SocketSpec, msg: &Arc<[u8]>, count: usize) {
    let mut tasks = Vec::new();
    let conns = connections();
    for i in 0..conns {
        let share = count / conns + usize::from(i < count % conns);
        let (socket, msg) = (socket.clone(), Arc::clone(msg));
        tasks.push(tokio::spawn(async move {
            let conn = Connection::default();
            for j in 0..share {
                let mut m = Message::parse(b"<a@src.example>", &[b"<b@dest.example>"], &msg);
                m.macros = vec![(b'M', vec![(Bytes::from("i"), Bytes::from(format!("Q{i}x{j}")))])];
                let mut c = Client::connect(&socket, ClientConfig::default())
                    .await
                    .expect("connect and negotiate");
                c.connection(&conn).await.expect("connect stage");
                let o = c.message(&m).await.expect("send");
                let clean = o.modifications.iter().any(|r| {
                    matches!(r, Reply::AddHeader { name, value } if name == "X-Virus-Status" && value == "Clean")
                });
                assert!(clean, "not scanned clean: {o:?}");
                c.quit().await.expect("quit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}
