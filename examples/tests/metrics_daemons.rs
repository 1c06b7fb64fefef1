//! `--metrics` on the single-purpose daemons, on the same library code as `mailstackd`:
//! - `dkim-milter --metrics`: after one message over the milter protocol, `/metrics` counts
//!   the connection, the message, its `dkim=none` result and the Authentication-Results
//!   field written; `/healthz/ready` is 200 (DNS answers);
//! - `spf-policyd --metrics`: after two policy requests (SPF pass and fail) `/metrics` counts
//!   both, by action, with the DNS queries they made; `/healthz/ready` is 200 and names
//!   `dns`, and turns 503 naming `dns` once the DNS server stops answering.
//!
//! Run: `cargo test -p mailstack-examples --features interop --test metrics_daemons`.

mod spf_support;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use milter_proto::SocketSpec;
use milter_proto::client::Message;
use spf_support::Zone;
use support::http::{get, sample, wait_http};
use support::milters::Daemon;
use support::postfix::free_port;

#[test]
fn dkim_milter_counts_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dns = spf_support::start_dns_local(Zone::default()).unwrap();
    let conf = d.join("opendkim.conf");
    std::fs::write(
        &conf,
        "Mode v\nAuthservID mx.example\nAlwaysAddARHeader yes\n",
    )
    .unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (ns, metrics) = (dns.to_string(), http.to_string());
    let exe = Path::new(env!("CARGO_BIN_EXE_dkim-milter"));
    let daemon = Daemon::start(
        exe,
        d,
        "dkim",
        &[
            "--config",
            conf.to_str().unwrap(),
            "--nameserver",
            &ns,
            "--metrics",
            &metrics,
            "--allow-root",
        ],
    );
    wait_http(http);
    let raw =
        b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n";
    let msg = Message::parse(b"<alice@example.com>", &[b"<bob@example.org>"], raw);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt
        .block_on(support::milters::one_message(&daemon.socket, &msg))
        .unwrap();
    assert!(
        support::milters::added_headers(&out)
            .iter()
            .any(|h| h.contains("dkim=none")),
        "{out:?}"
    );
    let (status, text) = get(http, "/metrics", "");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sample(&text, "mailstack_connections_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "mailstack_messages_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "mailstack_auth_results_total{method=\"dkim\",result=\"none\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "mailstack_header_modifications_total{kind=\"auth_results\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "mailstack_actions_total{action=\"accept\"}"),
        Some(1.0),
        "{text}"
    );
    let (status, body) = get(http, "/healthz/ready", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("dns=up"), "{body}");
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn spf_policyd_counts_requests_and_readiness_follows_dns() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("policyd-spf.conf");
    std::fs::write(&conf, "debugLevel = 1\n").unwrap();
    let mut zone = Zone::default();
    zone.txt("example.com", "v=spf1 ip4:192.0.2.1 -all");
    // A DNS server this test can stop: a child process would do, but the in-process one
    // cannot be stopped; so readiness is shown against a server that never answers
    // (a bound UDP socket nobody reads) in a second daemon below.
    let dns = spf_support::start_dns_local(zone).unwrap();
    let port = free_port();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let spec = format!("inet:127.0.0.1:{port}");
    let start = |ns: &str| {
        Kill(
            Command::new(env!("CARGO_BIN_EXE_spf-policyd"))
                .args([
                    "--config",
                    conf.to_str().unwrap(),
                    "--log",
                    "stderr",
                    "--allow-root",
                    "--socket",
                    &spec,
                    "--nameserver",
                    ns,
                    "--metrics",
                    &http.to_string(),
                ])
                .spawn()
                .unwrap(),
        )
    };
    let child = start(&dns.to_string());
    wait_http(http);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec: SocketSpec = spec.parse().unwrap();
    let pass = rt.block_on(support::chain::spf_policy(
        &spec,
        "192.0.2.1",
        "mail.example.com",
        "alice@example.com",
    ));
    let fail = rt.block_on(support::chain::spf_policy(
        &spec,
        "192.0.2.9",
        "mail.example.com",
        "alice@example.com",
    ));
    assert!(
        format!("{fail:?}").to_ascii_lowercase().contains("reject"),
        "{fail:?}"
    );
    let (status, text) = get(http, "/metrics", "");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sample(&text, "mailstack_stage_events_total{stage=\"policy\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "mailstack_policy_actions_total{action=\"reject\"}"),
        Some(1.0),
        "{pass:?} {fail:?}\n{text}"
    );
    let answers: f64 = text
        .lines()
        .filter(|l| l.starts_with("mailstack_policy_actions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(answers, 2.0, "{text}");
    assert!(
        sample(
            &text,
            "mailstack_dns_queries_total{type=\"txt\",outcome=\"ok\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "mailstack_operation_duration_seconds_count{operation=\"dns\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    let (status, body) = get(http, "/healthz/ready", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("dns=up"), "{body}");
    drop(child);

    // The same daemon with a DNS server that never answers: not ready, naming dns.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let _child = start(&silent.local_addr().unwrap().to_string());
    wait_http(http);
    let t = Instant::now();
    let (status, body) = get(http, "/healthz/ready", "");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: dns down"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(get(http, "/healthz/live", "").0, 200);
}
