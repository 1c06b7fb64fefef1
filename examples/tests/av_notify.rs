//! `mailstack::notify` against a real SMTP server: the private Postfix instance (relaying to
//! the in-process sink) receives the infected-mail notification over plain SMTP and over
//! STARTTLS (Postfix with a certificate made here by `openssl`, trusted through msmtp's
//! `tls_trust_file`; `smtpd_tls_security_level = encrypt`, so Postfix refuses MAIL before
//! STARTTLS). SMTP AUTH is not covered here: the fixture has no SASL backend.
//!
//! Run: `cargo test -p mailstack-examples --test av_notify` (as root, with postfix, openssl).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailstack::notify::{MsmtpConfig, Notifier, infected_text};
use support::postfix::Postfix;

fn notifier(rc: &str) -> Notifier {
    let cfg = MsmtpConfig::parse(Path::new("msmtprc"), rc).unwrap();
    Notifier::new(&cfg)
        .unwrap()
        .retries(2, Duration::from_millis(200))
}

async fn send(n: &Notifier) {
    let (subject, body) = infected_text([
        "Eicar-Test",
        "ABC123",
        "alice@src.example",
        "bob@dest.example",
        "hello",
        "<m1@src.example>",
    ]);
    n.send("admin@dest.example", &subject, &body)
        .unwrap()
        .await
        .unwrap()
        .expect("notification delivered to Postfix");
}

fn check(pf: &Postfix) {
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(msgs[0].rcpts, ["admin@dest.example"]);
    assert_eq!(msgs[0].mail_from, "av@src.example");
    assert_eq!(msgs[0].header("Subject"), ["Virus found: Eicar-Test"]);
    assert!(
        msgs[0].body().contains("Queue id: ABC123"),
        "{}",
        msgs[0].text()
    );
}

#[test]
fn notification_over_plain_smtp() {
    let pf = Postfix::builder().start();
    let n = notifier(&format!(
        "host 127.0.0.1\nport {}\nfrom av@src.example\ntls off\n",
        pf.smtp_port()
    ));
    tokio::runtime::Runtime::new().unwrap().block_on(send(&n));
    check(&pf);
}

#[test]
fn notification_over_starttls() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed for this test");
    assert!(
        st.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let pf = Postfix::builder()
        .main("smtpd_tls_cert_file", cert.display().to_string())
        .main("smtpd_tls_key_file", key.display().to_string())
        .main("smtpd_tls_security_level", "encrypt")
        .main("smtpd_tls_loglevel", "1")
        .master("tlsmgr unix - - n 1000? 1 tlsmgr")
        .start();
    let n = notifier(&format!(
        "host localhost\nport {}\nfrom av@src.example\ntls on\ntls_starttls on\ntls_trust_file {}\n",
        pf.smtp_port(),
        cert.display()
    ));
    tokio::runtime::Runtime::new().unwrap().block_on(send(&n));
    check(&pf);
    assert!(
        pf.wait_for_log("TLS connection established", Duration::from_secs(10)),
        "no TLS in the Postfix log:\n{}",
        pf.log()
    );
}
