//! Fault campaign, item 3: DNS down (nothing listens), slow (answers after 3 s, real time,
//! with `dns_timeout = 1`), truncated (TC bit, no TCP side), garbage, and a huge TXT answer
//! (~50 KB in one UDP datagram), through `mailstack check --json` (the offline CLI) and
//! through `mailstackd` driven as the MTA.
//!
//! Shown, for each fault: `spf=temperror` and `dmarc=temperror` where RFC 7208 §2.6.6 / RFC
//! 7489 §6.6.3 say so (a transient DNS error), within a deadline measured here; a late answer
//! inside the timeout still gives `pass`; peak memory stays bounded (VmHWM of mailstackd,
//! the largest child RSS for the CLI), printed.
//!
//! Run: `cargo test -p mailstack-examples --test faults_dns -- --nocapture`.

mod spf_support;
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use milter_proto::client::Message;
use spf_support::{Rec, Zone};
use support::milters::{Daemon, added_headers, one_message};

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
const CLI: &str = env!("CARGO_BIN_EXE_mailstack");
/// `dns_timeout` in the configuration (seconds per attempt).
const DNS_TIMEOUT: u64 = 1;
/// What one message may take at most under any DNS fault: a few lookups, each at most
/// `DEFAULT_QUERY_ATTEMPTS` (2) x `DNS_TIMEOUT`.
const DEADLINE: Duration = Duration::from_secs(12);
/// Peak RSS allowed (kB).
const MAX_RSS_KB: u64 = 64 * 1024;

/// (domain, expected spf, expected dmarc).
const CASES: &[(&str, &str, &str)] = &[
    ("slow.example", "temperror", "temperror"),
    ("late-ok.example", "pass", "pass"),
    ("tc.example", "temperror", "temperror"),
    ("garbage.example", "temperror", "temperror"),
    ("huge.example", "temperror", "temperror"),
];

fn zone() -> Zone {
    let spf = "v=spf1 ip4:192.0.2.1 -all";
    let dmarc = "v=DMARC1; p=reject";
    let mut z = Zone::default();
    for (name, fault) in [
        ("slow.example", Rec::Delay(Duration::from_secs(3))),
        ("late-ok.example", Rec::Delay(Duration::from_millis(300))),
        ("tc.example", Rec::Truncated),
        ("garbage.example", Rec::Garbage),
    ] {
        z.add(name, fault.clone()).txt(name, spf);
        let d = format!("_dmarc.{name}");
        z.add(&d, fault).txt(&d, dmarc);
    }
    let filler: Vec<String> = (0..200)
        .map(|i| format!("{i:03}{}", "x".repeat(252)))
        .collect();
    for name in ["huge.example", "_dmarc.huge.example"] {
        z.txt(name, if name.starts_with('_') { dmarc } else { spf })
            .add(name, Rec::Txt(filler.clone()));
    }
    z
}

fn mail(domain: &str) -> String {
    format!("From: a@{domain}\r\nSubject: dns {domain}\r\n\r\nhi\r\n")
}

/// `method=result` words of the AR value (after the authserv-id).
fn clauses(ar: &str) -> Vec<String> {
    ar.split(';')
        .skip(1)
        .filter_map(|c| c.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `mailstack check --json`: (exit status, decision, `method=result` list, elapsed).
fn check(conf: &Path, ns: SocketAddr, domain: &str) -> (i32, String, Vec<String>, Duration) {
    let eml = conf.with_file_name(format!("{domain}.eml"));
    std::fs::write(&eml, mail(domain)).unwrap();
    let t = Instant::now();
    let from = format!("a@{domain}");
    let ns = ns.to_string();
    let args = [
        "--client-ip",
        "192.0.2.1",
        "--helo",
        "client.example",
        "--from",
        &from,
    ];
    let args = [
        &args[..],
        &["--rcpt", "b@dest.example", "--nameserver", &ns],
    ]
    .concat();
    let (status, json) = support::milters::mailstack_check(Path::new(CLI), conf, &eml, &args);
    let took = t.elapsed();
    let got = support::milters::check_clauses(&json);
    let decision = json["decision"].as_str().unwrap_or_default().to_owned();
    (status, decision, got, took)
}

/// The configuration; `enforce`: DMARC `RejectFailures` (a DMARC temperror then tempfails
/// the message, without Authentication-Results, as OpenDMARC does).
fn setup(d: &Path, ns: SocketAddr, enforce: bool) -> std::path::PathBuf {
    let conf = d.join(format!("mailstackd-{enforce}.toml"));
    std::fs::write(
        &conf,
        format!(
            "[mailstackd]\nauthserv_id = \"mx.example\"\nnameservers = [\"{ns}\"]\n\
             dns_timeout = {DNS_TIMEOUT}\n\n[dmarc]\noptions = {{ RejectFailures = {enforce} }}\n"
        ),
    )
    .unwrap();
    conf
}

#[test]
fn mailstack_check_gives_temperror_in_time_for_each_dns_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let dns = spf_support::start_dns_local(zone()).unwrap();
    let conf = setup(tmp.path(), dns, false);
    let enforcing = setup(tmp.path(), dns, true);
    // Down: a port nothing listens on.
    let down = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut rows = vec![(
        "down (no server)",
        down,
        "example.com",
        "temperror",
        "temperror",
    )];
    rows.extend(CASES.iter().map(|(d, s, m)| (*d, dns, *d, *s, *m)));
    for (label, ns, domain, spf, dmarc) in rows {
        let (status, decision, got, took) = check(&conf, ns, domain);
        println!("mailstack check, {label}: {decision} {got:?} in {took:?}");
        assert_eq!(
            (status, decision.as_str()),
            (0, "accept"),
            "{label}: {got:?}"
        );
        assert_eq!(got[0], format!("spf={spf}"), "{label}: {got:?}");
        assert_eq!(got[2], format!("dmarc={dmarc}"), "{label}: {got:?}");
        assert!(took < DEADLINE, "{label}: {took:?} (deadline {DEADLINE:?})");
    }
    // Enforcing p=reject: a DMARC temperror is a tempfail (exit 4), never a reject or pass.
    for (label, ns, domain) in [("down", down, "example.com"), ("slow", dns, "slow.example")] {
        let (status, decision, got, took) = check(&enforcing, ns, domain);
        println!("mailstack check, RejectFailures, {label}: {decision} {got:?} in {took:?}");
        assert_eq!(
            (status, decision.as_str()),
            (4, "tempfail"),
            "{label}: {got:?}"
        );
        assert!(took < DEADLINE, "{label}: {took:?}");
    }
    let rss = support::procfs::children_max_rss_kb();
    println!("mailstack check: largest peak RSS {rss} kB");
    assert!(rss < MAX_RSS_KB, "peak RSS {rss} kB");
}

#[test]
fn mailstackd_gives_temperror_in_time_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dns = spf_support::start_dns_local(zone()).unwrap();
    let conf = setup(tmp.path(), dns, false);
    let milter = Daemon::start(
        Path::new(BIN),
        tmp.path(),
        "mailstackd",
        &["--config", conf.to_str().unwrap(), "--allow-root"],
    );
    let idle = support::procfs::status_kb(milter.pid(), "VmHWM:");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (domain, spf, dmarc) in CASES {
        let from = format!("<a@{domain}>");
        let msg = Message::parse(
            from.as_bytes(),
            &[b"<b@dest.example>"],
            mail(domain).as_bytes(),
        );
        let t = Instant::now();
        let out = rt.block_on(one_message(&milter.socket, &msg)).unwrap();
        let took = t.elapsed();
        let ar: Vec<String> = added_headers(&out)
            .into_iter()
            .filter_map(|h| {
                h.strip_prefix("Authentication-Results: ")
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(ar.len(), 1, "{domain}: {out:?}");
        let got = clauses(&ar[0]);
        println!("mailstackd, {domain}: {got:?} in {took:?}");
        assert_eq!(got[0], format!("spf={spf}"), "{domain}: {ar:?}");
        assert_eq!(got[2], format!("dmarc={dmarc}"), "{domain}: {ar:?}");
        assert!(took < DEADLINE, "{domain}: {took:?}");
    }
    let peak = support::procfs::status_kb(milter.pid(), "VmHWM:");
    println!("mailstackd VmHWM: idle {idle} kB, after the DNS faults {peak} kB");
    assert!(peak < MAX_RSS_KB, "VmHWM {peak} kB");
}
