//! `mailstack dkim rotate` end to end, with dnsmasq serving the test zone on 127.0.0.1 as the
//! domain's (only) authoritative server, and `mailstack check` signing and verifying with a
//! mailstackd.toml that names the KeyTable being rotated:
//! - mail is signed with the old selector; `rotate` stages a new key and writes its record
//!   (`SELECTOR.txt`, `SELECTOR.zone`);
//! - before the record is published, `rotate --check` refuses to switch (exit 1), the KeyTable
//!   is unchanged and mail is still signed with the old selector;
//! - once dnsmasq serves the record, `rotate --check` switches: mail is signed with the new
//!   selector and verifies, with OpenDKIM (`opendkim -t`) and through the DNS;
//! - mail signed just before the switch still verifies (the old record stays published for the
//!   retirement period), and `dkim status` says until when it must stay.
//!
//! Needs dnsmasq and opendkim (`.ci/packages`). Run:
//! `cargo test -p mailstack-examples --features interop --test dkim_rotate -- --nocapture`.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_mailstack");
const DKIM_BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// dnsmasq answering only for the given TXT records; killed on drop.
struct Dns {
    child: Child,
    addr: SocketAddr,
}

impl Dns {
    fn start(port: u16, records: &[(&str, &str)]) -> Self {
        assert!(
            Path::new(DNSMASQ).exists(),
            "{DNSMASQ} missing: install the Debian package dnsmasq (.ci/packages)"
        );
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--user=root",
        ])
        .arg(format!("--port={port}"))
        .arg("--auth-server=ns.example.com,127.0.0.1")
        .arg("--auth-zone=example.com");
        for (name, value) in records {
            // One character-string per 255 bytes (the RSA record is longer).
            let strings: Vec<String> = value
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            cmd.arg(format!("--txt-record={name},{}", strings.join(",")));
        }
        let child = cmd.stdin(Stdio::null()).spawn().expect("start dnsmasq");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dns = Self { child, addr };
        dns.wait_ready();
        dns
    }

    /// Waits until the server answers a query (any answer).
    fn wait_ready(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["example", "com"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 16, 0, 1]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            let _ = sock.send_to(&q, self.addr);
            if sock.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!("dnsmasq did not answer on {} within 10 s", self.addr);
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> (i32, String) {
    let out: Output = Command::new(CLI)
        .args(args)
        .output()
        .expect("run mailstack");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn message(subject: &str) -> String {
    format!(
        "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\nSubject: {subject}\r\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nHello Bob, {subject}\r\n"
    )
}

/// `mailstack check` as an internal client: the message with the DKIM-Signature it adds,
/// and that signature's selector.
fn sign(d: &Path, conf: &Path, subject: &str) -> (String, String) {
    let msg = message(subject);
    let eml = d.join(format!("{}.eml", subject.replace(' ', "-")));
    std::fs::write(&eml, &msg).unwrap();
    let args = [
        "--client-ip",
        "127.0.0.1",
        "--from",
        "alice@example.com",
        "--rcpt",
        "bob@dest.example",
    ];
    let (status, json) = support::milters::mailstack_check(Path::new(CLI), conf, &eml, &args);
    assert_eq!(status, 0, "{json}");
    let sigs: Vec<&str> = json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str()?.strip_prefix("+ DKIM-Signature: "))
        .collect();
    assert_eq!(sigs.len(), 1, "one signature: {json}");
    let flat: String = sigs[0].split_whitespace().collect();
    let selector = flat
        .split(';')
        .find_map(|t| t.strip_prefix("s="))
        .unwrap()
        .to_owned();
    (format!("DKIM-Signature: {}\r\n{msg}", sigs[0]), selector)
}

/// `mailstack check` as an outside client, verifying through the DNS: the DKIM result.
fn verify_via_dns(d: &Path, conf: &Path, signed: &str) -> Vec<String> {
    let eml = d.join("incoming.eml");
    std::fs::write(&eml, signed).unwrap();
    let args = ["--client-ip", "192.0.2.9", "--from", "alice@example.com"];
    let (_, json) = support::milters::mailstack_check(Path::new(CLI), conf, &eml, &args);
    support::milters::check_clauses(&json)
        .into_iter()
        .filter(|c| c.starts_with("dkim="))
        .collect()
}

fn opendkim(d: &Path, keys: &[(&str, &str)], signed: &str) -> String {
    let v = d.join("opendkim");
    std::fs::create_dir_all(&v).unwrap();
    support::milters::opendkim_verify(&v, keys, signed)
}

#[test]
fn rotate_switches_only_after_the_record_is_served() {
    let dir = tempfile::Builder::new()
        .prefix("dkim-rotate")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let old_rec = support::milters::dkim_genkey(Path::new(DKIM_BIN), d, "old");
    let kt = d.join("keytable");
    let table = format!("key example.com:old:{}/old.private\n", d.display());
    std::fs::write(&kt, &table).unwrap();
    std::fs::write(d.join("signingtable"), "*@example.com key\n").unwrap();
    let port = support::postfix::free_port();
    let ns = format!("127.0.0.1:{port}");
    let conf = d.join("mailstackd.toml");
    std::fs::write(
        &conf,
        format!(
            "[mailstackd]\nauthserv_id = \"mx.example\"\nnameservers = [\"{ns}\"]\n\n[dkim]\n\
             options = {{ Mode = \"sv\", KeyTable = \"file:{0}\", \
             SigningTable = \"refile:{1}/signingtable\" }}\n\n\
             [spf]\nenabled = false\n\n[dmarc]\nenabled = false\n",
            kt.display(),
            d.display()
        ),
    )
    .unwrap();
    let old_name = "old._domainkey.example.com";
    let dns = Dns::start(port, &[(old_name, &old_rec)]);

    // Before: the old selector signs, and verifies through the DNS.
    let (before, sel) = sign(d, &conf, "before");
    assert_eq!(sel, "old");
    assert_eq!(verify_via_dns(d, &conf, &before), ["dkim=pass"]);

    // Stage.
    let kt_arg = format!("file:{}", kt.display());
    let domain = ["--domain", "example.com", "--key-table", &kt_arg];
    let (st, out) = run(&[
        &["dkim", "rotate"][..],
        &domain,
        &["--selector-format", "new%Y"],
    ]
    .concat());
    assert_eq!(st, 0, "{out}");
    let new = out
        .split_whitespace()
        .skip_while(|w| *w != "selector")
        .nth(1)
        .unwrap_or_else(|| panic!("no selector in {out}"))
        .to_owned();
    assert!(new.starts_with("new20"), "{out}");
    let txt = std::fs::read_to_string(d.join(format!("{new}.txt"))).unwrap();
    let new_rec = mailstack::dkim::txt_record_value(&txt);
    let zone = std::fs::read_to_string(d.join(format!("{new}.zone"))).unwrap();
    assert!(
        zone.starts_with(&format!("{new}._domainkey.example.com.\tIN\tTXT\t")),
        "{zone}"
    );
    assert!(
        out.contains(zone.trim_end()),
        "the record is printed: {out}"
    );

    // Not yet published: refused, nothing changes, the old key keeps signing.
    let check = [
        &["dkim", "rotate", "--check", "--nameserver", &ns][..],
        &domain,
    ]
    .concat();
    let (st, out) = run(&check);
    assert_eq!(st, 1, "{out}");
    assert!(out.contains("not switched"), "{out}");
    assert_eq!(std::fs::read_to_string(&kt).unwrap(), table);
    let (just_before, sel) = sign(d, &conf, "just before");
    assert_eq!(sel, "old", "signing continues with the old key");
    let (st, out) = run(&[&["dkim", "status"][..], &domain].concat());
    assert_eq!(st, 0, "{out}");
    assert!(out.contains("signing with: old"), "{out}");
    assert!(out.contains(&format!("staged: {new}")), "{out}");

    // Published: switched.
    drop(dns);
    let new_name = format!("{new}._domainkey.example.com");
    let _dns = Dns::start(port, &[(old_name, &old_rec), (&new_name, &new_rec)]);
    let (st, out) = run(&[&check[..], &["--wait", "20"]].concat());
    assert_eq!(st, 0, "{out}");
    assert!(
        out.contains(&format!("now signs with selector {new}")),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&kt).unwrap(),
        format!("key example.com:{new}:{}/{new}.private\n", d.display())
    );
    let (after, sel) = sign(d, &conf, "after");
    assert_eq!(sel, new);
    let keys = [("old", old_rec.as_str()), (new.as_str(), new_rec.as_str())];
    let odk = opendkim(d, &keys, &after);
    assert_eq!(odk.matches("dkim=pass").count(), 1, "{odk}");
    assert_eq!(verify_via_dns(d, &conf, &after), ["dkim=pass"]);

    // Mail signed just before the switch still verifies during the retirement period.
    for signed in [&before, &just_before] {
        let odk = opendkim(d, &keys, signed);
        assert_eq!(odk.matches("dkim=pass").count(), 1, "{odk}");
        assert_eq!(verify_via_dns(d, &conf, signed), ["dkim=pass"]);
    }
    let (st, out) = run(&[&["dkim", "status"][..], &domain].concat());
    assert_eq!(st, 0, "{out}");
    assert!(out.contains(&format!("signing with: {new}")), "{out}");
    assert!(out.contains("staged: none"), "{out}");
    assert!(
        out.contains("retired: old since") && out.contains("keep published until"),
        "{out}"
    );
}
