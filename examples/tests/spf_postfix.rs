//! `spf-policyd` behind a real, private Postfix (the shared fixture in `support/postfix.rs`),
//! started under spawn(8) exactly as python-policyd-spf is:
//!
//! ```text
//! policy-spf  unix  -  n  n  -  0  spawn  user=policyd-spf argv=.../spf-policyd --config ...
//! ```
//!
//! with `check_policy_service unix:private/policy-spf` after `reject_unauth_destination` and
//! `policy-spf_time_limit = 3600`. The client address comes from XCLIENT (loopback would be
//! skipped by `skip_addresses`); DNS is a test server on 127.0.0.1 given to the daemon with
//! `--nameserver`. Accepted mail reaches the fixture's SMTP sink.
//!
//! Shown: a `-all` sender from a disallowed address is rejected `550 5.7.23`; a pass gets
//! exactly one `Received-SPF` header for a two-recipient message; a DNS timeout defers with
//! `TempError_Defer = True` (`450 4.7.24`) and is accepted with a `Temperror` header otherwise.
//!
//! Needs root and Postfix (`.ci/run` has both). Run:
//! `cargo test -p mailstack-examples --test spf_postfix -- --nocapture`.

mod spf_support;
mod support;

use std::path::Path;
use std::time::Duration;

use support::postfix::Postfix;

const BIN: &str = env!("CARGO_BIN_EXE_spf-policyd");

/// Writes a policyd-spf.conf readable by the `policyd-spf` user that spawn(8) runs us as.
fn spf_conf(dir: &Path, name: &str, extra: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("debugLevel = 1\nLookup_Time = 3\n{extra}")).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn postfix_rejects_prepends_once_and_defers() {
    support::postfix::require_postfix();
    let dns = spf_support::start_dns_local(spf_support::golden_zone()).unwrap();
    let conf_dir = tempfile::Builder::new()
        .prefix("spf-postfix")
        .tempdir()
        .unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(conf_dir.path(), mode).unwrap();
    let normal = spf_conf(conf_dir.path(), "policyd-spf.conf", "");
    let defer = spf_conf(
        conf_dir.path(),
        "policyd-spf-defer.conf",
        "TempError_Defer = True\n",
    );
    let service = |name: &str, conf: &str| {
        format!(
            "{name}  unix  -  n  n  -  0  spawn  user=policyd-spf argv={BIN} --config {conf} --nameserver {dns}"
        )
    };
    let pf = Postfix::builder()
        .master(service("policy-spf", &normal))
        .master(service("policy-spf-defer", &defer))
        .main("policy-spf_time_limit", "3600")
        .main("policy-spf-defer_time_limit", "3600")
        .main("smtpd_restriction_classes", "spf_defer")
        .main("spf_defer", "check_policy_service unix:private/policy-spf-defer, permit")
        .main(
            "smtpd_recipient_restrictions",
            "reject_unauth_destination, check_client_access inline:{192.0.2.77=spf_defer}, check_policy_service unix:private/policy-spf",
        )
        .start();

    // 1. A `-all` domain through a disallowed address.
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "helo.none.example");
    c.expect("MAIL FROM:<u@fail.example>", "250");
    let reply = c.cmd("RCPT TO:<a@dest.example>");
    assert_eq!(reply.code, 550, "{reply}\n{}", pf.log());
    assert!(
        reply.text.starts_with("5.7.23 ") && reply.text.contains("SPF fail - not authorized"),
        "{reply}"
    );
    drop(c);

    // 2. A pass, two recipients: one Received-SPF header.
    let mut c = pf.smtp();
    c.xclient("192.0.2.1", "mail.pass.example");
    let msg = "Subject: pass\r\n\r\nhello\r\n";
    let reply = c.send("u@pass.example", &["a@dest.example", "b@dest.example"], msg);
    assert_eq!(reply.code, 250, "{reply}");
    drop(c);
    let got = pf.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(got[0].rcpts, ["a@dest.example", "b@dest.example"]);
    assert_eq!(
        got[0].header("Received-SPF"),
        [
            "Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.1; helo=mail.pass.example; envelope-from=u@pass.example; receiver=dest.example "
        ],
        "{}",
        got[0].text()
    );

    // 3a. DNS timeout with TempError_Defer = True: deferred.
    let mut c = pf.smtp();
    c.xclient("192.0.2.77", "helo.none.example");
    c.expect("MAIL FROM:<u@temp.example>", "250");
    let reply = c.cmd("RCPT TO:<a@dest.example>");
    assert_eq!(reply.code, 450, "{reply}\n{}", pf.log());
    assert!(
        reply.text.starts_with("4.7.24 ") && reply.text.contains("SPF Temporary Error: DNS"),
        "{reply}"
    );
    drop(c);

    // 3b. The same with the default TempError_Defer = False: accepted with a Temperror header.
    let mut c = pf.smtp();
    c.xclient("192.0.2.78", "helo.none.example");
    let reply = c.send(
        "u@temp.example",
        &["a@dest.example"],
        "Subject: temp\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    drop(c);
    let got = pf.wait_for_messages(2, Duration::from_secs(30));
    let temp = got
        .iter()
        .find(|m| m.mail_from == "u@temp.example")
        .expect("temp message");
    let spf = temp.header("Received-SPF");
    assert_eq!(spf.len(), 1, "{}", temp.text());
    assert!(
        spf[0].starts_with("Temperror (mailfrom) identity=mailfrom; client-ip=192.0.2.78;"),
        "{spf:?}"
    );
}
