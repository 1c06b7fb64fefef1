//! `dmarc-milter` behind a real, private Postfix (the shared fixture in `support/postfix.rs`)
//! as `smtpd_milters`, with a DNS server this test runs on 127.0.0.1 given to the milter with
//! `--nameserver`. The client address comes from XCLIENT (127.0.0.1 is in the default
//! IgnoreHosts).
//!
//! Shown: a p=reject failure is refused at the end of DATA with `550 5.7.1 rejected by DMARC
//! policy for reject.example` at the SMTP client and not delivered; a p=none failure is
//! delivered with `dmarc=fail (p=none dis=none)`; an SPF-aligned message is delivered with
//! `dmarc=pass` and our `spf=pass`, the DMARC field above it.
//!
//! With `dkim-milter` in front (`smtpd_milters = dkim, dmarc`, as OpenDKIM then OpenDMARC):
//! mail signed by `dkim-milter` for `example.com` (p=reject) passes DMARC through the DKIM
//! result it adds (`header.d=example.com`, authserv-id `mx.example`) even with an unaligned
//! envelope, and a tampered copy is rejected `550 5.7.1`.
//!
//! Needs root and Postfix (`.ci/run` has both). Run:
//! `cargo test -p mailstack-examples --test dmarc_postfix -- --nocapture`.

mod spf_support;
mod support;

use std::path::Path;
use std::time::Duration;

use spf_support::Zone;
use support::milters::Daemon;
use support::postfix::Postfix;

const BIN: &str = env!("CARGO_BIN_EXE_dmarc-milter");
const DKIM_BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");

#[test]
fn postfix_rejects_p_reject_and_delivers_p_none_with_dmarc_fail() {
    support::postfix::require_postfix();
    let mut zone = Zone::default();
    zone.txt("_dmarc.reject.example", "v=DMARC1; p=reject")
        .txt("_dmarc.none.example", "v=DMARC1; p=none")
        .txt("reject.example", "v=spf1 ip4:192.0.2.1 -all");
    let dns = spf_support::start_dns_local(zone).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("dmarc-postfix")
        .tempdir()
        .unwrap();
    let conf = dir.path().join("opendmarc.conf");
    std::fs::write(
        &conf,
        "AuthservID mx.example\nRejectFailures yes\nSPFSelfValidate yes\nUMask 0000\n",
    )
    .unwrap();
    let args = [
        "--config",
        conf.to_str().unwrap(),
        "--nameserver",
        &dns.to_string(),
        "--allow-root",
    ];
    let milter = Daemon::start(Path::new(BIN), dir.path(), "dmarc", &args);
    let pf = Postfix::builder()
        .main("smtpd_milters", milter.spec())
        .main("milter_default_action", "tempfail")
        .start();

    // 1. p=reject, nothing aligned: 550 5.7.1 at the client.
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.spammer.example");
    let reply = c.send(
        "mallory@spammer.example",
        &["a@dest.example"],
        "From: Alice <alice@reject.example>\r\nSubject: spoof\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 550, "{reply}\n{}", pf.log());
    assert_eq!(
        reply.text, "5.7.1 rejected by DMARC policy for reject.example",
        "{reply}"
    );
    drop(c);

    // 2. p=none failure: delivered with dmarc=fail.
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.spammer.example");
    let reply = c.send(
        "mallory@spammer.example",
        &["a@dest.example"],
        "From: a@none.example\r\nSubject: none\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let got = pf.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(
        got[0].header("Authentication-Results"),
        [
            "mx.example; dmarc=fail (p=none dis=none) header.from=none.example",
            "mx.example; spf=none smtp.mailfrom=spammer.example",
        ],
        "{}",
        got[0].text()
    );

    // 3. SPF aligned: delivered with dmarc=pass.
    let mut c = pf.smtp();
    c.xclient("192.0.2.1", "mail.reject.example");
    let reply = c.send(
        "alice@reject.example",
        &["a@dest.example"],
        "From: Alice <alice@reject.example>\r\nSubject: real\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let got = pf.wait_for_messages(2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "the rejected message must not be delivered");
    let pass = got
        .iter()
        .find(|m| m.header("Subject") == ["real"])
        .expect("the aligned message");
    assert_eq!(
        pass.header("Authentication-Results"),
        [
            "mx.example; dmarc=pass (p=reject dis=none) header.from=reject.example",
            "mx.example; spf=pass smtp.mailfrom=reject.example",
        ],
        "{}",
        pass.text()
    );
    drop(milter);
}

/// `dkim-milter genkey` for `example.com`; returns the TXT record.
fn genkey(dir: &Path, selector: &str) -> String {
    let st = std::process::Command::new(DKIM_BIN)
        .args(["genkey", "-d", "example.com", "-s", selector, "-D"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
    let t = std::fs::read_to_string(dir.join(format!("{selector}.txt"))).unwrap();
    t.split('"').skip(1).step_by(2).collect()
}

#[test]
fn dkim_milter_results_feed_dmarc_behind_postfix() {
    dkim_then_dmarc(
        "AuthservID mx.example\nTrustedAuthservIDs mx.example\nRejectFailures yes\n",
        "mx.example",
    );
}

/// The same with `DKIMSelfValidate yes`: dmarc-milter verifies the signature itself from
/// what Postfix streams to it (and, with another authserv-id, trusts nothing upstream).
#[test]
fn dmarc_milter_verifies_dkim_itself_behind_postfix() {
    dkim_then_dmarc(
        "AuthservID dmarc.example\nRejectFailures yes\nDKIMSelfValidate yes\n",
        "dmarc.example",
    );
}

fn dkim_then_dmarc(dmarc_conf: &str, dmarc_id: &str) {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("dkim-dmarc-postfix")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let key = genkey(d, "sel");
    let mut zone = Zone::default();
    zone.txt("sel._domainkey.example.com", &key)
        .txt("_dmarc.example.com", "v=DMARC1; p=reject");
    let dns = spf_support::start_dns_local(zone).unwrap();
    let dns = dns.to_string();
    std::fs::write(
        d.join("opendkim.conf"),
        format!(
            "Mode sv\nDomain example.com\nSelector sel\nKeyFile {}/sel.private\n\
             AuthservID mx.example\nUMask 0000\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("opendmarc.conf"), dmarc_conf).unwrap();
    let conf = |n: &str| d.join(n).to_string_lossy().into_owned();
    let dkim = Daemon::start(
        Path::new(DKIM_BIN),
        d,
        "dkim",
        &[
            "--config",
            &conf("opendkim.conf"),
            "--nameserver",
            &dns,
            "--allow-root",
        ],
    );
    let dmarc = Daemon::start(
        Path::new(BIN),
        d,
        "dmarc",
        &[
            "--config",
            &conf("opendmarc.conf"),
            "--nameserver",
            &dns,
            "--allow-root",
        ],
    );
    let pf = Postfix::builder()
        .main(
            "smtpd_milters",
            format!("{}, {}", dkim.spec(), dmarc.spec()),
        )
        .main("milter_default_action", "tempfail")
        .start();

    // Outbound from 127.0.0.1: signed by dkim-milter, skipped by dmarc-milter (IgnoreHosts).
    let original = "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\n\
        Subject: signed\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nHello Bob\r\n";
    let mut c = pf.smtp();
    let reply = c.send("alice@example.com", &["bob@dest.example"], original);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(
        msgs[0].header("DKIM-Signature").len(),
        1,
        "{}",
        msgs[0].text()
    );
    assert!(msgs[0].header("Authentication-Results").is_empty());
    let signed = msgs[0].text();

    // Inbound, envelope from elsewhere: DKIM aligned, so DMARC passes.
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.elsewhere.example");
    let reply = c.send("bounce@elsewhere.example", &["bob@dest.example"], &signed);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let msgs = pf.wait_for_messages(2, Duration::from_secs(30));
    let ar = msgs[1].header("Authentication-Results");
    assert!(
        ar.iter()
            .any(|a| *a
                == format!("{dmarc_id}; dmarc=pass (p=reject dis=none) header.from=example.com")),
        "{}",
        msgs[1].text()
    );
    assert!(
        ar.iter()
            .any(|a| a.contains("dkim=pass") && a.contains("header.d=example.com"))
    );

    // A tampered copy: DKIM fails, DMARC rejects.
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.elsewhere.example");
    let reply = c.send(
        "bounce@elsewhere.example",
        &["bob@dest.example"],
        &signed.replace("Hello Bob", "Hello Eve"),
    );
    assert_eq!(reply.code, 550, "{reply}\n{}", pf.log());
    assert_eq!(reply.text, "5.7.1 rejected by DMARC policy for example.com");
    drop((dkim, dmarc));
}

/// dmarc-milter behind Postfix with `conf` (plus the DNS server) and a failure-report sink;
/// sends `failing` spoofed messages of a `p=reject; ruf=` domain and returns what reached
/// the sink within a few seconds.
fn failure_reports_with(extra_conf: &str, failing: usize) -> Vec<support::postfix::Delivered> {
    let mut zone = Zone::default();
    zone.txt(
        "_dmarc.ruf.example",
        "v=DMARC1; p=reject; ruf=mailto:ruf@ruf.example",
    )
    .txt("ruf.example", "v=spf1 ip4:192.0.2.1 -all");
    let dns = spf_support::start_dns_local(zone).unwrap();
    let reports = support::postfix::Sink::start();
    let dir = tempfile::Builder::new()
        .prefix("dmarc-ruf")
        .tempdir()
        .unwrap();
    let rc = dir.path().join("msmtprc");
    std::fs::write(
        &rc,
        format!(
            "host 127.0.0.1\nport {}\nfrom x@mx.example\ntls off\n",
            reports.port
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let conf = dir.path().join("opendmarc.conf");
    std::fs::write(
        &conf,
        format!(
            "AuthservID mx.example\nRejectFailures yes\nSPFSelfValidate yes\nUMask 0000\n\
             MailstackFailureSMTP {}\nFailureReportsSentBy dmarc-failures@mx.example\n{extra_conf}",
            rc.display()
        ),
    )
    .unwrap();
    let args = [
        "--config",
        conf.to_str().unwrap(),
        "--nameserver",
        &dns.to_string(),
        "--allow-root",
    ];
    let milter = Daemon::start(Path::new(BIN), dir.path(), "dmarc", &args);
    let pf = Postfix::builder()
        .main("smtpd_milters", milter.spec())
        .main("milter_default_action", "tempfail")
        .start();
    for i in 0..failing {
        let mut c = pf.smtp();
        c.xclient("192.0.2.9", "mail.spammer.example");
        let reply = c.send(
            "mallory@spammer.example",
            &["a@dest.example"],
            &format!("From: Boss <boss@ruf.example>\r\nSubject: spoof {i}\r\n\r\nsecret body\r\n"),
        );
        assert_eq!(reply.code, 550, "{reply}\n{}", pf.log());
    }
    // Reports go out in the background: give them a moment, then take what arrived.
    std::thread::sleep(Duration::from_secs(3));
    reports.messages()
}

#[test]
fn failure_reports_only_when_turned_on_and_rate_limited() {
    support::postfix::require_postfix();
    // Off (the default): nothing is sent.
    assert!(failure_reports_with("", 2).is_empty());
    // On, at most one per destination per hour: two failures, one report.
    let got = failure_reports_with("FailureReports yes\nMailstackFailureRate 1/3600\n", 2);
    assert_eq!(got.len(), 1, "one report (the second rate-limited)");
    let m = &got[0];
    assert_eq!(m.rcpts, ["ruf@ruf.example"]);
    assert_eq!(m.mail_from, "dmarc-failures@mx.example");
    let text = m.text();
    assert!(text.contains("report-type=feedback-report"), "{text}");
    assert!(text.contains("Feedback-Type: auth-failure"), "{text}");
    assert!(
        text.contains("Subject: spoof 0"),
        "the header block: {text}"
    );
    assert!(
        !text.contains("secret body"),
        "the body never goes out: {text}"
    );
}
