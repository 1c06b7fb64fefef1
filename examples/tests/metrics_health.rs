//! `mailstackd --metrics` behind a real, private Postfix (the shared fixture in
//! `support/postfix.rs`), with a private clamd and DNS from a server this test runs.
//!
//! Shown:
//! - after mail went through, `promtool check metrics` passes on `/metrics`;
//! - a real Prometheus server (`/usr/bin/prometheus`, scrape interval 1 s, loopback, its
//!   TSDB in a tempdir) scrapes mailstackd and its HTTP API answers
//!   `mailstack_auth_results_total{method="spf"}` with exactly the number of messages this
//!   test sent through Postfix, by result;
//! - `/healthz/ready` is 200 with clamd up, turns 503 naming clamd within a second of clamd
//!   being stopped (text and JSON), and 200 again once clamd is back; `/healthz/live` stays
//!   200 throughout.
//!
//! Needs root, Postfix, clamd and Prometheus (Debian's `prometheus`; `.ci/packages` has
//! them). Run: `cargo test -p mailstack-examples --features interop --test metrics_health`.

mod spf_support;
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spf_support::Zone;
use support::clamd::Clamd;
use support::http::get;
use support::milters::Daemon;
use support::postfix::{Postfix, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of an instant query whose result is one sample, if there is one.
fn query(api: SocketAddr, q: &str) -> Option<f64> {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = get(api, &format!("/api/v1/query?query={enc}"), "");
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let r = v["data"]["result"].as_array()?;
    let [one] = r.as_slice() else { return None };
    one["value"][1].as_str()?.parse().ok()
}

fn send(pf: &Postfix, ip: &str, n: usize) {
    for i in 0..n {
        let body = format!(
            "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\n\
             Subject: metrics {ip} {i}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n"
        );
        let mut c = pf.smtp();
        c.xclient(ip, "mail.example.com");
        let reply = c.send("alice@example.com", &["bob@dest.example"], &body);
        assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    }
}

#[test]
fn prometheus_scrapes_and_readiness_follows_clamd() {
    support::postfix::require_postfix();
    for tool in [PROMETHEUS, PROMTOOL] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install Debian's prometheus to run this test"
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("metrics-health")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let mut zone = Zone::default();
    zone.txt("example.com", "v=spf1 ip4:192.0.2.1 -all");
    let dns = spf_support::start_dns_local(zone).unwrap();
    let clamd = Clamd::start(&d.join("clamd"), "");
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let clamd_arg = format!("unix:{}", clamd.socket.display());
    let ns = dns.to_string();
    let metrics = http.to_string();
    let args = [
        "--clamd",
        &clamd_arg,
        "--nameserver",
        &ns,
        "--metrics",
        &metrics,
        "--group",
        "postfix",
        "--allow-root",
    ];
    let _milter = Daemon::start(Path::new(BIN), d, "mailstackd", &args);
    let pf = Postfix::builder()
        .main("smtpd_milters", _milter.spec())
        .main("milter_default_action", "tempfail")
        .start();

    // Ready with everything up; live.
    let (status, body) = get(http, "/healthz/ready", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready"), "{body}");
    assert!(
        body.contains("clamd=up") && body.contains("dns=up"),
        "{body}"
    );
    assert_eq!(get(http, "/healthz/live", "").0, 200);

    // Mail: 3 from the SPF-permitted address, 2 from another (spf=fail; the embedded
    // default never rejects).
    send(&pf, "192.0.2.1", 3);
    send(&pf, "192.0.2.9", 2);
    pf.wait_for_messages(5, Duration::from_secs(30));

    // promtool on what we serve.
    let (status, text) = get(http, "/metrics", "");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("mailstack_auth_results_total{method=\"spf\",result=\"pass\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("mailstack_av_results_total{result=\"clean\"} 5\n"),
        "{text}"
    );
    assert!(text.contains("mailstack_messages_total 5\n"), "{text}");
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenMetrics when asked for.
    let (_, om) = get(http, "/metrics", "Accept: application/openmetrics-text\r\n");
    assert!(om.ends_with("# EOF\n"), "{om}");

    // A real Prometheus scrapes it.
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pconf = d.join("prometheus.yml");
    std::fs::write(
        &pconf,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: mailstackd\n    static_configs:\n      \
             - targets: ['{http}']\n"
        ),
    )
    .unwrap();
    let tsdb = d.join("tsdb");
    let _prom = Prometheus(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", pconf.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address={api}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("start {PROMETHEUS}: {e}")),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut pass, mut fail) = (None, None);
    while Instant::now() < deadline {
        if TcpStream::connect(api).is_ok() {
            pass = query(
                api,
                "sum by (result) (mailstack_auth_results_total{job=\"mailstackd\",method=\"spf\",result=\"pass\"})",
            );
            fail = query(
                api,
                "sum by (result) (mailstack_auth_results_total{job=\"mailstackd\",method=\"spf\",result=\"fail\"})",
            );
            if pass.is_some() && fail.is_some() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = || std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default();
    assert_eq!(pass, Some(3.0), "spf=pass as Prometheus has it\n{}", log());
    assert_eq!(fail, Some(2.0), "spf=fail as Prometheus has it\n{}", log());
    assert_eq!(
        query(api, "mailstack_messages_total{job=\"mailstackd\"}"),
        Some(5.0)
    );

    // clamd stopped: not ready within a second, naming clamd.
    let clamd_dir = d.join("clamd");
    drop(clamd);
    let stopped = Instant::now();
    let body = loop {
        let (status, body) = get(http, "/healthz/ready", "");
        if status == 503 {
            break body;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "still ready 1 s after clamd stopped: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(body.starts_with("not ready: clamd down"), "{body}");
    assert!(!body.contains("dns down"), "{body}");
    let (status, json) = get(http, "/healthz/ready?format=json", "");
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ready"], false, "{json}");
    assert_eq!(v["checks"]["clamd"]["up"], false, "{json}");
    assert_eq!(v["checks"]["dns"]["up"], true, "{json}");
    let (_, json) = get(http, "/healthz/ready", "Accept: application/json\r\n");
    assert!(json.starts_with("{\"ready\":false"), "{json}");
    assert_eq!(get(http, "/healthz/live", "").0, 200);
    eprintln!("not ready {took:?} after clamd stopped");

    // clamd back: ready again.
    let _clamd = Clamd::start(&clamd_dir, "");
    let back = Instant::now();
    loop {
        let (status, body) = get(http, "/healthz/ready", "");
        if status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "not ready 1 s after clamd answered PING again: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("ready {:?} after clamd answered again", back.elapsed());
}
