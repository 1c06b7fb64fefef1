//! DKIM milter throughput: our `mailstack::dkim` milter (served in a child process of this
//! bench, the same `DkimFilter` the `dkim-milter` binary runs) against Debian's OpenDKIM
//! 2.11 milter (`opendkim -f`), on the same RSA-2048 key, the same `opendkim.conf` options
//! (`Canonicalization relaxed/simple`, `OversignHeaders From`, keys from `TestPublicKeys`, no
//! DNS), driven by `milter_proto::client::Client` over unix sockets with 4 concurrent
//! connections and one milter connection per message, as Postfix does. Signing: the client
//! connects from 127.0.0.1 (InternalHosts). Verifying: a signed message from 192.0.2.1.
//! Prints messages per second, the milter process's CPU per message (utime+stime from
//! `/proc/<pid>/stat`), messages per CPU second and the ratios; then the crypto primitives
//! alone for aws-lc-rs (what `mailstack::dkim` uses) and ring.
//!
//! Run: `cargo bench -p mailstack-benches --bench dkim_milter` (needs Debian's opendkim;
//! `DKIM_BENCH_MESSAGES` sets the messages per run, default 1000).
//!
//! `DKIM_BENCH_METRICS=1` instead measures what `--metrics` costs: our milter without
//! metrics against the same milter with metrics on and its HTTP listener up (what
//! `--metrics 127.0.0.1:PORT` does; scraped once per run), side by side, alternating runs
//! (`DKIM_BENCH_ROUNDS`, default 5).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mailstack::dkim::{DkimConfig, DkimFilter};
use mailstack::dkim::{GenKeyOptions, KeyType, PrivateKey};
use mailstack::dkim::{SignOptions, SigningKey, sign_message};
use mailstack::filter::Milter;
use mailstack_benches::{Figures, Server, alternate, cpu_seconds, print_header, print_row};
use milter_proto::ConnAddr;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::server::{ServerConfig, serve};
use milter_proto::{Listener, SocketSpec, UnixOptions};

const CONNECTIONS: usize = 4;
const ROUNDS: usize = 3;
const CHILD_ENV: &str = "DKIM_BENCH_SERVE";
/// Set in the child: switch metrics on and serve them on this address.
const CHILD_METRICS_ENV: &str = "DKIM_BENCH_SERVE_METRICS";
const OPENDKIM: &str = "/usr/sbin/opendkim";

fn main() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        serve_child(&args);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        Path::new(OPENDKIM).exists(),
        "{OPENDKIM} missing: install opendkim"
    );
    let n: usize = std::env::var("DKIM_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let conf = write_setup(tmp.path());
    if std::env::var_os("DKIM_BENCH_METRICS").is_some() {
        metrics_cost(tmp.path(), &conf, n);
        return;
    }
    let ours = spawn_ours(tmp.path(), &conf);
    let odk = spawn_opendkim(tmp.path(), &conf);
    let plain = message(5 * 1024);
    let signed = presign(tmp.path(), &plain);
    println!(
        "DKIM milter: {CONNECTIONS} connections, unix sockets, {n} messages of 5 KB per run, \
         RSA-2048 relaxed/simple, median of {ROUNDS} alternating runs"
    );
    print_header("ODK");
    for (case, msg, ip) in [
        ("sign", &plain, "127.0.0.1"),
        ("verify", &signed, "192.0.2.1"),
    ] {
        let (a, b) = alternate(
            ROUNDS,
            || measure(&ours, msg, ip, n),
            || measure(&odk, msg, ip, n),
        );
        print_row(case, a, b);
    }
    println!("(msCPU = milter process utime+stime per message; ratio = ours / OpenDKIM)");
    crypto_alone();
}

/// Our milter without and with metrics (`--metrics`), alternating runs.
fn metrics_cost(dir: &Path, conf: &str, n: usize) {
    let rounds: usize = std::env::var("DKIM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let off = spawn_ours(dir, conf);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let http = format!("127.0.0.1:{port}");
    let on = spawn_with(dir, conf, "metrics.sock", Some(&http));
    let plain = message(5 * 1024);
    let signed = presign(dir, &plain);
    println!(
        "--metrics cost: {CONNECTIONS} connections, unix sockets, {n} messages of 5 KB per \
         run, RSA-2048 relaxed/simple, median of {rounds} alternating runs"
    );
    print_header("metrics");
    for (case, msg, ip) in [
        ("sign", &plain, "127.0.0.1"),
        ("verify", &signed, "192.0.2.1"),
    ] {
        let (a, b) = alternate(
            rounds,
            || measure(&off, msg, ip, n),
            || {
                let f = measure(&on, msg, ip, n);
                scrape(&http);
                f
            },
        );
        print_row(case, a, b);
    }
    println!(
        "(ours = no metrics, metrics = --metrics on; the last ratio is metrics msCPU / ours \
         msCPU: 1.02 is 2% more CPU per message with metrics)"
    );
    let text = scrape(&http);
    let messages = text
        .lines()
        .find(|l| l.starts_with("mailstack_messages_total "))
        .unwrap_or("mailstack_messages_total missing");
    println!("scraped: {messages}");
}

/// `GET /metrics` from the bench server; the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Keys, TestPublicKeys and the shared options; returns the config text (without Socket).
fn write_setup(dir: &Path) -> String {
    let g = mailstack::dkim::generate_key(&GenKeyOptions {
        key_type: KeyType::Rsa,
        selector: "bench".into(),
        domain: "example.com".into(),
        ..GenKeyOptions::default()
    })
    .expect("genkey");
    let key = dir.join("bench.private");
    std::fs::write(&key, g.private_pem).expect("write key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        format!(
            "bench._domainkey.example.com {}\n",
            mailstack::dkim::txt_record_value(&g.txt)
        ),
    )
    .expect("write keys");
    format!(
        "Mode sv\nDomain example.com\nSelector bench\nKeyFile {}\nCanonicalization relaxed/simple\n\
         OversignHeaders From\nTestPublicKeys {}\nAuthservID bench.example\n\
         InternalHosts 127.0.0.1\nRequireSafeKeys no\n",
        key.display(),
        keys.display()
    )
}

fn presign(dir: &Path, msg: &[u8]) -> Vec<u8> {
    let pem = std::fs::read(dir.join("bench.private")).expect("key");
    let k = SigningKey {
        domain: Some("example.com".into()),
        selector: "bench".into(),
        key: PrivateKey::parse(&pem).expect("key"),
    };
    let cfg = DkimConfig::parse(
        Path::new("b"),
        "Canonicalization relaxed/simple\nOversignHeaders From\n",
    )
    .expect("cfg");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let v = sign_message(
        &[(&k, "example.com")],
        &SignOptions::from_config(&cfg),
        msg,
        false,
        now,
    )
    .expect("sign");
    let mut out = format!("DKIM-Signature: {}\r\n", v[0].replace('\n', "\r\n")).into_bytes();
    out.extend_from_slice(msg);
    out
}

/// A 5 KB-ish message from example.com with the usual headers.
fn message(size: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: Alice Example <alice@example.com>\r\nTo: Bob <bob@example.org>\r\n\
         Subject: quarterly figures and the plan for next week\r\n\
         Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench.1@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() < size {
        m.push_str(line);
    }
    m.into_bytes()
}

fn serve_child(conf: &str) {
    let (socket, conf) = conf.split_once('\n').expect("spec and config");
    let socket: SocketSpec = socket.parse().expect("socket spec");
    let cfg = DkimConfig::parse(Path::new("bench.conf"), conf).expect("config");
    let resolver = mailstack::dkim::test_public_keys(cfg.test_public_keys.as_ref().expect("keys"))
        .expect("keys");
    let filter = DkimFilter::new(cfg, Arc::new(resolver)).expect("filter");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        if let Ok(spec) = std::env::var(CHILD_METRICS_ENV) {
            let spec: mailstack::health::HttpSpec = spec.parse().expect("metrics spec");
            mailstack::health::start(&spec).await?;
        }
        let listener = Listener::bind(&socket, &UnixOptions::default()).await?;
        serve(
            listener,
            Milter::factory(Arc::new(filter)),
            ServerConfig::default(),
            std::future::pending(),
        )
        .await
    });
    if let Err(e) = result {
        eprintln!("bench server: {e}");
    }
}

fn spawn_ours(dir: &Path, conf: &str) -> Server {
    spawn_with(dir, conf, "ours.sock", None)
}

/// Our milter on `dir/sock`, with metrics served on `metrics` when given.
fn spawn_with(dir: &Path, conf: &str, sock: &str, metrics: Option<&str>) -> Server {
    let path = dir.join(sock);
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.env(CHILD_ENV, format!("unix:{}\n{conf}", path.display()));
    if let Some(m) = metrics {
        cmd.env(CHILD_METRICS_ENV, m);
    }
    let child = cmd
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn bench server");
    Server::wait_unix(child, &path, "bench server")
}

fn spawn_opendkim(dir: &Path, conf: &str) -> Server {
    let path = dir.join("opendkim.sock");
    let file = dir.join("opendkim.conf");
    std::fs::write(
        &file,
        format!("{conf}Socket local:{}\nBackground no\n", path.display()),
    )
    .expect("write conf");
    let child = Command::new(OPENDKIM)
        .arg("-f")
        .arg("-x")
        .arg(&file)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn opendkim");
    Server::wait_unix(child, &path, "bench server")
}

fn measure(server: &Server, msg: &[u8], ip: &'static str, count: usize) -> Figures {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let msg: Arc<[u8]> = msg.into();
    rt.block_on(run_clients(&server.socket, &msg, ip, CONNECTIONS * 10));
    let cpu0 = cpu_seconds(server.child.id());
    let t0 = Instant::now();
    rt.block_on(run_clients(&server.socket, &msg, ip, count));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id()) - cpu0;
    Figures {
        rate: count as f64 / secs,
        cpu_ms: cpu * 1000.0 / count as f64,
    }
}

async fn run_clients(socket: &SocketSpec, msg: &Arc<[u8]>, ip: &'static str, count: usize) {
    let message = Arc::new(Message::parse(
        b"<alice@example.com>",
        &[b"<bob@example.org>"],
        msg,
    ));
    let expect = if ip == "127.0.0.1" {
        "DKIM-Signature"
    } else {
        "Authentication-Results"
    };
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let share = count / CONNECTIONS + usize::from(i < count % CONNECTIONS);
        let (socket, message) = (socket.clone(), Arc::clone(&message));
        tasks.push(tokio::spawn(async move {
            let conn = Connection {
                addr: ConnAddr::Inet {
                    port: 40000,
                    address: Bytes::from_static(ip.as_bytes()),
                },
                ..Connection::default()
            };
            for _ in 0..share {
                let mut c = Client::connect(&socket, ClientConfig::default())
                    .await
                    .expect("connect");
                c.connection(&conn).await.expect("connect stage");
                let o = c.message(&message).await.expect("send");
                let added = o.modifications.iter().any(|m| {
                    matches!(m, milter_proto::Reply::InsHeader { name, value, .. }
                        if name.as_ref() == expect.as_bytes()
                            && (expect == "DKIM-Signature" || value.windows(9).any(|w| w == b"dkim=pass")))
                });
                assert!(added, "no {expect} (pass) in {o:?}");
                c.quit().await.expect("quit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

/// RSA-2048 PKCS#1 SHA-256 and Ed25519 sign/verify of a 32-byte digest, per operation.
fn crypto_alone() {
    use aws_lc_rs::signature::KeyPair as _;
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
        aws_lc_rs::encoding::AsDer::as_der(&rsa).expect("der");
    let ring_rsa = ring::signature::RsaKeyPair::from_pkcs8(der.as_ref()).expect("ring rsa");
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().expect("ed");
    let ed_der = ed.to_pkcs8().expect("ed der");
    let ring_ed = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(ed_der.as_ref())
        .expect("ring ed");
    let data = [7u8; 32];
    let rng = ring::rand::SystemRandom::new();
    let mut sig = vec![0u8; 256];
    let n = 300;
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    let aws_sign = time(&mut || {
        rsa.sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            &data,
            &mut sig,
        )
        .expect("sign");
    });
    let aws_sig = sig.clone();
    let ring_sign = time(&mut || {
        ring_rsa
            .sign(&ring::signature::RSA_PKCS1_SHA256, &rng, &data, &mut sig)
            .expect("sign");
    });
    let pk = rsa.public_key().as_ref().to_vec();
    let aws_verify = time(&mut || {
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &pk,
        )
        .verify(&data, &aws_sig)
        .expect("verify");
    });
    let ring_verify = time(&mut || {
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &pk)
            .verify(&data, &aws_sig)
            .expect("verify");
    });
    let ed_sig = ed.sign(&data);
    let ed_pk = ed.public_key().as_ref().to_vec();
    let aws_ed_sign = time(&mut || {
        let _ = ed.sign(&data);
    });
    let ring_ed_sign = time(&mut || {
        let _ = ring_ed.sign(&data);
    });
    let aws_ed_verify = time(&mut || {
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &ed_pk)
            .verify(&data, ed_sig.as_ref())
            .expect("verify");
    });
    let ring_ed_verify = time(&mut || {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &ed_pk)
            .verify(&data, ed_sig.as_ref())
            .expect("verify");
    });
    println!("crypto alone (µs per operation, {n} each): aws-lc-rs vs ring");
    println!("  RSA-2048 sign    {aws_sign:>8.1} {ring_sign:>8.1}");
    println!("  RSA-2048 verify  {aws_verify:>8.1} {ring_verify:>8.1}");
    println!("  Ed25519 sign     {aws_ed_sign:>8.1} {ring_ed_sign:>8.1}");
    println!("  Ed25519 verify   {aws_ed_verify:>8.1} {ring_ed_verify:>8.1}");
}
