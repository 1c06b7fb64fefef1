//! Real Postfix (the private instance in `support/postfix.rs`) sends mail through our
//! `stamp-milter` over `smtpd_milters`: the header, recipient and body the milter changes show
//! up at the sink, its rejection reaches the SMTP client, and a milter that is down gets
//! Postfix's `milter_default_action`.
//!
//! Run: `cargo test -p mailstack-examples --test milter_postfix` (as root, with postfix).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::milters::Daemon;
use support::postfix::{Delivered, Postfix};

const STAMP: &str = env!("CARGO_BIN_EXE_stamp-milter");

fn stamp(dir: &Path) -> Daemon {
    Daemon::start(
        Path::new(STAMP),
        dir,
        "stamp",
        &[
            "--add-header",
            "X-Stamp: yes",
            "--add-rcpt",
            "added@dest.example",
            "--replace-body",
            "replaced by the milter\\n",
            "--reject-pattern",
            "reject-me",
            "--reject-reply",
            "550 5.7.1 no thanks",
        ],
    )
}

fn with_milter(spec: &str, default_action: &str) -> Postfix {
    Postfix::builder()
        .main("smtpd_milters", spec)
        .main("milter_default_action", default_action)
        .start()
}

/// Waits until every recipient in `want` has been delivered and returns what arrived.
fn wait_for_rcpts(pf: &Postfix, want: &[&str]) -> Vec<Delivered> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msgs = pf.delivered();
        let got: Vec<&str> = msgs
            .iter()
            .flat_map(|m| m.rcpts.iter().map(String::as_str))
            .collect();
        if want.iter().all(|w| got.contains(w)) {
            return msgs;
        }
        assert!(
            Instant::now() < deadline,
            "only {got:?} of {want:?} arrived; log:\n{}",
            pf.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stamp_milter_adds_header_and_recipient_and_replaces_body() {
    let tmp = tempfile::tempdir().unwrap();
    let milter = stamp(tmp.path());
    let pf = with_milter(&milter.spec(), "tempfail");
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: hello\r\nFrom: alice@src.example\r\nX-Replace-Body: please\r\n\r\noriginal body\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = wait_for_rcpts(&pf, &["bob@dest.example", "added@dest.example"]);
    for m in &msgs {
        assert_eq!(m.header("X-Stamp"), ["yes"], "{}", m.text());
        assert_eq!(m.header("Subject"), ["hello"]);
        assert_eq!(m.body(), "replaced by the milter\r\n");
    }
}

#[test]
fn untriggered_message_keeps_its_body() {
    let tmp = tempfile::tempdir().unwrap();
    let milter = stamp(tmp.path());
    let pf = with_milter(&milter.spec(), "tempfail");
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: plain\r\n\r\nkeep me\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = wait_for_rcpts(&pf, &["bob@dest.example"]);
    assert_eq!(msgs[0].body(), "keep me\r\n");
    assert_eq!(msgs[0].header("X-Stamp"), ["yes"]);
}

#[test]
fn rejection_reaches_the_smtp_client() {
    let tmp = tempfile::tempdir().unwrap();
    let milter = stamp(tmp.path());
    let pf = with_milter(&milter.spec(), "tempfail");
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: please reject-me\r\n\r\nbody\r\n",
    );
    assert_eq!(reply.code, 550, "{reply}");
    assert_eq!(reply.text, "5.7.1 no thanks");
    // Nothing was delivered: a second, clean message is the only one at the sink.
    let ok = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: fine\r\n\r\nx\r\n",
    );
    assert_eq!(ok.code, 250, "{ok}");
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pf.delivered().len(), 1);
    assert_eq!(msgs[0].header("Subject"), ["fine"]);
}

#[test]
fn milter_down_with_tempfail_defers_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("unix:{}/nobody-listens.sock", tmp.path().display());
    let pf = with_milter(&missing, "tempfail");
    let mut smtp = pf.smtp();
    let reply = smtp.cmd("MAIL FROM:<alice@src.example>");
    assert_eq!(reply.code, 451, "{reply}");
    assert!(reply.text.starts_with("4.7.1"), "{reply}");
}

#[test]
fn milter_down_with_accept_delivers_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("unix:{}/nobody-listens.sock", tmp.path().display());
    let pf = with_milter(&missing, "accept");
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: no milter\r\n\r\nbody\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    assert!(msgs[0].header("X-Stamp").is_empty());
    assert_eq!(msgs[0].body(), "body\r\n");
}
