//! `mailstackd` as the only milter of a real, private Postfix (the shared fixture in
//! `support/postfix.rs`), with DNS from a server this test runs on 127.0.0.1 and a private
//! clamd with our EICAR signature.
//!
//! Shown, through Postfix, with one `mailstackd.toml` naming inline options for each filter:
//! - inbound mail is verified in one pass and gets ONE `Authentication-Results` field with
//!   `spf`, `dkim` and `dmarc` clauses: SPF pass and fail, DKIM pass and fail, DMARC pass and
//!   fail each appear;
//! - DMARC `p=reject` is refused at the SMTP client with `550 5.7.1`;
//! - forged `Authentication-Results: mx.example; spf=pass` and `(comment) mx.example;
//!   dkim=pass` never yield a DMARC pass (the message is rejected), and no forged field
//!   reaches the mailbox;
//! - EICAR is refused with the configured text;
//! - outbound mail from an internal host is signed, and `opendkim -t` passes it;
//! - `mailstack check` on each delivered message (same config, same DNS, same envelope)
//!   gives the same clauses as `mailstackd` wrote through Postfix.
//!
//! Needs root, Postfix, clamd and opendkim (`.ci/run` has them). Run:
//! `cargo test -p mailstack-examples --test mailstackd_postfix -- --nocapture`.

mod spf_support;
mod support;

use std::path::Path;
use std::time::Duration;

use spf_support::Zone;
use support::clamd::{Clamd, eicar};
use support::milters::Daemon;
use support::postfix::Postfix;

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
const CLI: &str = env!("CARGO_BIN_EXE_mailstack");
const DKIM_BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");

/// The `method=result` words of an Authentication-Results value, in order.
fn clauses(ar: &str) -> Vec<String> {
    ar.split(';')
        .skip(1)
        .filter_map(|c| c.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    conf: std::path::PathBuf,
    dns: std::net::SocketAddr,
    rsa: String,
    _clamd: Clamd,
    milter: Daemon,
    pf: Postfix,
}

fn setup() -> Setup {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("mailstackd-postfix")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let rsa = support::milters::dkim_genkey(Path::new(DKIM_BIN), d, "rsa");
    let mut zone = Zone::default();
    zone.txt("rsa._domainkey.example.com", &rsa)
        .txt("example.com", "v=spf1 ip4:192.0.2.1 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=reject")
        .txt("none.example", "v=spf1 ip4:192.0.2.1 -all")
        .txt("_dmarc.none.example", "v=DMARC1; p=none");
    let dns = spf_support::start_dns_local(zone).unwrap();
    let clamd = Clamd::start(&d.join("clamd"), "");
    std::fs::write(
        d.join("keytable"),
        format!("rsa example.com:rsa:{}/rsa.private\n", d.display()),
    )
    .unwrap();
    std::fs::write(d.join("signingtable"), "*@example.com rsa\n").unwrap();
    let conf = d.join("mailstackd.toml");
    std::fs::write(
        &conf,
        format!(
            "[mailstackd]\nauthserv_id = \"mx.example\"\nnameservers = [\"{dns}\"]\n\n\
             [dkim]\noptions = {{ Mode = \"sv\", KeyTable = \"file:{0}/keytable\", \
             SigningTable = \"refile:{0}/signingtable\", Canonicalization = \"relaxed/simple\" }}\n\n\
             [dmarc]\noptions = {{ RejectFailures = true }}\n\n\
             [av]\noptions = {{ ClamdSocket = \"unix:{1}\", OnInfected = \"Reject\", \
             RejectMsg = \"virus %v found\" }}\n",
            d.display(),
            clamd.socket.display(),
        ),
    )
    .unwrap();
    let args = [
        "--config",
        conf.to_str().unwrap(),
        "--group",
        "postfix",
        "--allow-root",
    ];
    let milter = Daemon::start(Path::new(BIN), d, "mailstackd", &args);
    let pf = Postfix::builder()
        .main("smtpd_milters", milter.spec())
        .main("milter_default_action", "tempfail")
        .start();
    Setup {
        conf,
        dns,
        rsa,
        _clamd: clamd,
        milter,
        pf,
        _dir: dir,
    }
}

/// `mailstack check` on `message` as if it came from `ip` with `helo` and `from`.
fn check(s: &Setup, message: &str, ip: &str, helo: &str, from: &str) -> (i32, serde_json::Value) {
    let path = s
        .conf
        .with_file_name(format!("check-{}.eml", std::process::id()));
    std::fs::write(&path, message).unwrap();
    let ns = s.dns.to_string();
    let args = ["--client-ip", ip, "--helo", helo, "--from", from];
    let args = [
        &args[..],
        &["--rcpt", "bob@dest.example", "--nameserver", &ns],
    ]
    .concat();
    support::milters::mailstack_check(Path::new(CLI), &s.conf, &path, &args)
}

#[test]
fn one_milter_verifies_signs_scans_and_enforces() {
    let s = setup();
    let pf = &s.pf;
    let mut delivered = 0;

    // 1. SPF pass, aligned: DMARC pass; one AR with every clause.
    let body = "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\n\
        Subject: spf pass\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n";
    let mut c = pf.smtp();
    c.xclient("192.0.2.1", "mail.example.com");
    let reply = c.send("alice@example.com", &["bob@dest.example"], body);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    delivered += 1;
    let got = pf.wait_for_messages(delivered, Duration::from_secs(30));
    let ar = got[0].header("Authentication-Results");
    assert_eq!(ar.len(), 1, "one field: {}", got[0].text());
    assert!(ar[0].starts_with("mx.example;"), "{ar:?}");
    assert_eq!(
        clauses(&ar[0]),
        ["spf=pass", "dkim=none", "dmarc=pass"],
        "{}",
        got[0].text()
    );
    let (status, json) = check(
        &s,
        body,
        "192.0.2.1",
        "mail.example.com",
        "alice@example.com",
    );
    assert_eq!(status, 0, "{json}");
    assert_eq!(
        support::milters::check_clauses(&json),
        clauses(&ar[0]),
        "{json}"
    );

    // 2. p=reject, nothing aligned: refused at the client.
    let spoof = "From: Alice <alice@example.com>\r\nSubject: spoof\r\n\r\nhi\r\n";
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.spammer.example");
    let reply = c.send("mallory@spammer.example", &["bob@dest.example"], spoof);
    assert_eq!(reply.code, 550, "{reply}\n{}", pf.log());
    assert_eq!(
        reply.text, "5.7.1 rejected by DMARC policy for example.com",
        "{reply}"
    );
    drop(c);
    let (status, _) = check(
        &s,
        spoof,
        "192.0.2.9",
        "mail.spammer.example",
        "mallory@spammer.example",
    );
    assert_eq!(status, 3);

    // 3. Forged results under our id, with a comment and folding: still rejected.
    let forged = format!(
        "Authentication-Results: mx.example; spf=pass smtp.mailfrom=example.com\r\n\
         Authentication-Results: (checked) mx.example;\r\n\tdkim=pass header.d=example.com\r\n{spoof}"
    );
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.spammer.example");
    let reply = c.send("mallory@spammer.example", &["bob@dest.example"], &forged);
    assert_eq!(
        reply.code,
        550,
        "a forged pass must not pass DMARC: {reply}\n{}",
        pf.log()
    );
    drop(c);

    // 4. SPF fail for the envelope, p=none From: delivered with spf=fail, dmarc=fail; the
    //    forged field is gone.
    let none = "Authentication-Results: mx.example; dmarc=pass header.from=none.example\r\n\
        From: a@none.example\r\nSubject: none\r\n\r\nhi\r\n";
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.spammer.example");
    let reply = c.send("mallory@none.example", &["bob@dest.example"], none);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    delivered += 1;
    let got = pf.wait_for_messages(delivered, Duration::from_secs(30));
    let m = got
        .iter()
        .find(|m| m.header("Subject") == ["none"])
        .unwrap();
    let ar = m.header("Authentication-Results");
    assert_eq!(ar.len(), 1, "forged field kept: {}", m.text());
    assert_eq!(
        clauses(&ar[0]),
        ["spf=fail", "dkim=none", "dmarc=fail"],
        "{}",
        m.text()
    );
    let (_, json) = check(
        &s,
        none,
        "192.0.2.9",
        "mail.spammer.example",
        "mallory@none.example",
    );
    assert_eq!(
        support::milters::check_clauses(&json),
        clauses(&ar[0]),
        "{json}"
    );

    // 5. EICAR from an SPF-passing host: refused with the configured text.
    let virus = format!(
        "From: Alice <alice@example.com>\r\nSubject: virus\r\n\r\n{}\r\n",
        eicar()
    );
    let mut c = pf.smtp();
    c.xclient("192.0.2.1", "mail.example.com");
    let reply = c.send("alice@example.com", &["bob@dest.example"], &virus);
    assert_eq!(reply.code, 550, "{reply}\n{}", pf.log());
    assert!(reply.text.contains("virus Mailstack.Test.EICAR"), "{reply}");
    drop(c);

    // 6. Outbound from 127.0.0.1 (InternalHosts): signed; opendkim -t passes it.
    let out = "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\n\
        Subject: outbound\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nHello Bob\r\n";
    let mut c = pf.smtp();
    let reply = c.send("alice@example.com", &["bob@dest.example"], out);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    delivered += 1;
    let got = pf.wait_for_messages(delivered, Duration::from_secs(30));
    let signed = got
        .iter()
        .find(|m| m.header("Subject") == ["outbound"])
        .unwrap();
    assert_eq!(
        signed.header("DKIM-Signature").len(),
        1,
        "{}",
        signed.text()
    );
    let signed = signed.text();
    let d = s.conf.parent().unwrap();
    let odk = support::milters::opendkim_verify(d, &[("rsa", &s.rsa)], &signed);
    assert_eq!(odk.matches("dkim=pass").count(), 1, "{odk}");

    // 7. The signed message back in from outside with an unaligned envelope: DKIM pass
    //    carries DMARC.
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.spammer.example");
    let reply = c.send("mallory@spammer.example", &["bob@dest.example"], &signed);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    delivered += 1;
    let got = pf.wait_for_messages(delivered, Duration::from_secs(30));
    let back = &got[delivered - 1];
    let ar = back.header("Authentication-Results");
    assert_eq!(ar.len(), 1, "{}", back.text());
    assert_eq!(
        clauses(&ar[0]),
        ["spf=none", "dkim=pass", "dmarc=pass"],
        "{}",
        back.text()
    );
    let (_, json) = check(
        &s,
        &signed,
        "192.0.2.9",
        "mail.spammer.example",
        "mallory@spammer.example",
    );
    assert_eq!(
        support::milters::check_clauses(&json),
        clauses(&ar[0]),
        "{json}"
    );

    // 8. A tampered copy: dkim=fail, and with p=reject and nothing aligned, refused.
    let tampered = signed.replace("Hello Bob", "Hello Eve");
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.spammer.example");
    let reply = c.send("mallory@spammer.example", &["bob@dest.example"], &tampered);
    assert_eq!(reply.code, 550, "{reply}\n{}", pf.log());
    drop(c);
    let (status, json) = check(
        &s,
        &tampered,
        "192.0.2.9",
        "mail.spammer.example",
        "mallory@spammer.example",
    );
    assert_eq!(status, 3, "{json}");
    assert!(
        support::milters::check_clauses(&json).contains(&"dkim=fail".to_owned()),
        "{json}"
    );

    assert_eq!(
        pf.wait_for_messages(delivered, Duration::from_secs(5))
            .len(),
        delivered,
        "nothing refused was delivered"
    );
    drop(s.milter);
}
