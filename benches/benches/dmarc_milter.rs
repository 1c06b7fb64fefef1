//! DMARC milter throughput: our `mailstack::dmarc` milter (served in a child process of this
//! bench, the same `DmarcFilter` and handler the `dmarc-milter` binary runs) against Debian's
//! OpenDMARC 1.4.2 milter (`opendmarc -f`), with the same `opendmarc.conf` (AuthservID,
//! TrustedAuthservIDs, RejectFailures, the public suffix list), both resolving through the
//! same in-memory DNS server on 127.0.0.1:53 inside a network namespace (no resolver cache on
//! either side: every message queries `_dmarc`). Driven by `milter_proto::client::Client`
//! over unix sockets, 4 concurrent connections, one milter connection per message, as Postfix
//! does. Cases: a message whose trusted upstream `Authentication-Results` carries an aligned
//! SPF pass (accepted, `dmarc=pass`), and a `p=reject` failure (`550 5.7.1`). Prints
//! messages per second, the milter process's CPU per message (utime+stime from
//! `/proc/<pid>/stat`), messages per CPU second and the ratios.
//!
//! Run: `cargo bench -p mailstack-benches --bench dmarc_milter` (needs root, iproute2 and
//! Debian's opendmarc; `DMARC_BENCH_MESSAGES` sets the messages per run, default 1000).

#[path = "../../examples/tests/spf_support/mod.rs"]
#[allow(missing_docs)]
mod spf_support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use mailstack::dmarc::{DmarcConfig, DmarcFilter};
use mailstack::dns::HickoryResolver;
use mailstack::filter::Milter;
use mailstack_benches::{Figures, Server, alternate, cpu_seconds, print_header, print_row};
use milter_proto::Reply;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::server::{ServerConfig, serve};
use milter_proto::{Listener, SocketSpec, UnixOptions};

const CONNECTIONS: usize = 4;
const ROUNDS: usize = 3;
const CHILD_ENV: &str = "DMARC_BENCH_SERVE";
const OPENDMARC: &str = "/usr/sbin/opendmarc";
const CONF: &str = "AuthservID mx.example\nTrustedAuthservIDs mx.example\nRejectFailures true\n\
                    PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat\n";

fn main() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        serve_child(&args);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the DMARC bench needs root (network namespace)"
    );
    assert!(
        Path::new(OPENDMARC).exists(),
        "{OPENDMARC} missing: install opendmarc"
    );
    let n: usize = std::env::var("DMARC_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let ns = spf_support::Netns::create(&format!("dmarcbench{}", std::process::id()))
        .expect("network namespace");
    let mut zone = spf_support::Zone::default();
    zone.txt("_dmarc.example.com", "v=DMARC1; p=reject");
    ns.start_dns(zone).expect("dns server");
    let tmp = tempfile::tempdir().expect("temp dir");
    let ours = spawn_ours(&ns, tmp.path());
    let odm = spawn_opendmarc(&ns, tmp.path());
    let pass = message(
        "alice@example.com",
        "Authentication-Results: mx.example; spf=pass smtp.mailfrom=example.com\r\n",
    );
    let fail = message("mallory@elsewhere.example", "");
    println!(
        "DMARC milter: {CONNECTIONS} connections, unix sockets, {n} messages of 2 KB per run, \
         DNS in a netns (no cache), median of {ROUNDS} alternating runs"
    );
    print_header("ODM");
    for (case, msg, accepted) in [("pass", &pass, true), ("reject", &fail, false)] {
        let (a, b) = alternate(
            ROUNDS,
            || measure(&ours, msg, accepted, n),
            || measure(&odm, msg, accepted, n),
        );
        print_row(case, a, b);
    }
    println!("(msCPU = milter process utime+stime per message; ratio = ours / OpenDMARC)");
}

/// A 2 KB message from example.com with `extra` header fields on top.
fn message(sender: &str, extra: &str) -> Message {
    let mut m = format!(
        "{extra}From: Alice Example <alice@example.com>\r\nTo: Bob <bob@example.org>\r\n\
         Subject: quarterly figures\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <bench.1@example.com>\r\n\r\n"
    );
    while m.len() < 2048 {
        m.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    Message::parse(
        format!("<{sender}>").as_bytes(),
        &[b"<bob@example.org>"],
        m.as_bytes(),
    )
}

fn serve_child(socket: &str) {
    let socket: SocketSpec = socket.parse().expect("socket spec");
    let cfg = DmarcConfig::parse(Path::new("bench.conf"), CONF).expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let resolver = HickoryResolver::system().expect("resolver");
        let filter = Arc::new(DmarcFilter::new(cfg, Arc::new(resolver)));
        let listener = Listener::bind(&socket, &UnixOptions::default()).await?;
        serve(
            listener,
            move || Milter::new(filter.clone()),
            ServerConfig::default(),
            std::future::pending(),
        )
        .await
    });
    if let Err(e) = result {
        eprintln!("bench server: {e}");
    }
}

fn spawn_ours(ns: &spf_support::Netns, dir: &Path) -> Server {
    let path = dir.join("ours.sock");
    let me = std::env::current_exe().expect("current exe");
    let child = ns
        .command(&me.to_string_lossy())
        .env(CHILD_ENV, format!("unix:{}", path.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bench server");
    Server::wait_unix(child, &path, "bench server")
}

fn spawn_opendmarc(ns: &spf_support::Netns, dir: &Path) -> Server {
    let path = dir.join("opendmarc.sock");
    let file = dir.join("opendmarc.conf");
    std::fs::write(&file, CONF).expect("write conf");
    let child = ns
        .command(OPENDMARC)
        .arg("-f")
        .arg("-c")
        .arg(&file)
        .arg("-p")
        .arg(format!("local:{}", path.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn opendmarc");
    Server::wait_unix(child, &path, "bench server")
}

/// The milter's pid: `ip netns exec` execs the program, so the child is the milter itself.
fn measure(server: &Server, msg: &Message, accepted: bool, count: usize) -> Figures {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let msg = Arc::new(msg.clone());
    rt.block_on(run_clients(
        &server.socket,
        &msg,
        accepted,
        CONNECTIONS * 10,
    ));
    let cpu0 = cpu_seconds(server.child.id());
    let t0 = Instant::now();
    rt.block_on(run_clients(&server.socket, &msg, accepted, count));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id()) - cpu0;
    Figures {
        rate: count as f64 / secs,
        cpu_ms: cpu * 1000.0 / count as f64,
    }
}

async fn run_clients(socket: &SocketSpec, msg: &Arc<Message>, accepted: bool, count: usize) {
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let share = count / CONNECTIONS + usize::from(i < count % CONNECTIONS);
        let (socket, message) = (socket.clone(), Arc::clone(msg));
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let mut c = Client::connect(&socket, ClientConfig::default())
                    .await
                    .expect("connect");
                c.connection(&Connection::default())
                    .await
                    .expect("connect stage");
                let o = c.message(&message).await.expect("send");
                if accepted {
                    let pass = o.modifications.iter().any(|m| {
                        matches!(m, Reply::InsHeader { value, .. }
                            if value.windows(10).any(|w| w == b"dmarc=pass"))
                    });
                    assert!(pass, "no dmarc=pass in {o:?}");
                } else {
                    assert!(matches!(o.decision, Reply::ReplyCode(_)), "{o:?}");
                }
                c.quit().await.expect("quit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}
