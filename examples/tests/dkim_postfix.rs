//! `dkim-milter` behind a real, private Postfix (the shared fixture in `support/postfix.rs`)
//! as `smtpd_milters`, with the DKIM keys published by a DNS server this test runs on
//! 127.0.0.1 and given to the milter with `--nameserver`; keys come from `dkim-milter
//! genkey`.
//!
//! Shown: outbound mail from an internal host (127.0.0.1) is delivered with two
//! DKIM-Signature fields (RSA and Ed25519), which Debian's `opendkim -t` passes; the same
//! message coming back in from an outside address (XCLIENT) is delivered with our
//! `Authentication-Results: mx.example; dkim=pass ... dkim=pass`, and a forged
//! Authentication-Results with our authserv-id is gone; a tampered copy gets `dkim=fail`.
//!
//! Needs root, Postfix and opendkim (`.ci/run` has them). Run:
//! `cargo test -p mailstack-examples --test dkim_postfix -- --nocapture`.

mod spf_support;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use spf_support::Zone;
use support::milters::Daemon;
use support::postfix::Postfix;

const BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");

fn genkey(dir: &Path, args: &[&str]) -> String {
    let st = Command::new(BIN)
        .args(["genkey", "-d", "example.com", "-D"])
        .arg(dir)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success());
    let sel = args[1];
    let t = std::fs::read_to_string(dir.join(format!("{sel}.txt"))).unwrap();
    t.split('"').skip(1).step_by(2).collect()
}

#[test]
fn outbound_is_signed_and_inbound_gets_authentication_results() {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("dkim-postfix")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let rsa = genkey(d, &["-s", "rsa"]);
    let ed = genkey(d, &["-s", "ed", "--type", "ed25519"]);
    let mut zone = Zone::default();
    zone.txt("rsa._domainkey.example.com", &rsa)
        .txt("ed._domainkey.example.com", &ed);
    let dns = spf_support::start_dns_local(zone).unwrap();
    std::fs::write(
        d.join("keytable"),
        format!(
            "rsa example.com:rsa:{0}/rsa.private\ned example.com:ed:{0}/ed.private\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("signingtable"),
        "*@example.com rsa\n*@example.com ed\n",
    )
    .unwrap();
    let conf = d.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode sv\nKeyTable file:{0}/keytable\nSigningTable refile:{0}/signingtable\n\
             MultipleSignatures yes\nCanonicalization relaxed/simple\nOversignHeaders From\n\
             AuthservID mx.example\nUMask 0000\nUserID nobody\n",
            d.display()
        ),
    )
    .unwrap();
    let args = [
        "--config",
        conf.to_str().unwrap(),
        "--nameserver",
        &dns.to_string(),
    ];
    let milter = Daemon::start(Path::new(BIN), d, "dkim", &args);
    let pf = Postfix::builder()
        .main("smtpd_milters", milter.spec())
        .main("milter_default_action", "tempfail")
        .start();

    // 1. Outbound from 127.0.0.1 (InternalHosts): signed with both keys.
    let original = "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\n\
        Subject: signed by dkim-milter\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n\
        Hello Bob,\r\n  \r\n.leading dot\r\n\r\n";
    let mut c = pf.smtp();
    let reply = c.send("alice@example.com", &["bob@dest.example"], original);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let msgs = pf.wait_for_messages(1, Duration::from_secs(20));
    let sigs = msgs[0].header("DKIM-Signature");
    assert_eq!(sigs.len(), 2, "{}", msgs[0].text());
    assert!(sigs.iter().any(|s| s.contains("a=rsa-sha256")));
    assert!(sigs.iter().any(|s| s.contains("a=ed25519-sha256")));
    let signed = msgs[0].text();

    // OpenDKIM, independently, passes both signatures of what Postfix delivered.
    let odk = support::milters::opendkim_verify(d, &[("rsa", &rsa), ("ed", &ed)], &signed);
    assert_eq!(odk.matches("dkim=pass").count(), 2, "{odk}");

    // 2. The signed message comes back in from outside, with a forged AR under our id.
    let inbound =
        format!("Authentication-Results: mx.example; dkim=pass header.d=example.com\r\n{signed}");
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.example.com");
    let reply = c.send("alice@example.com", &["bob@dest.example"], &inbound);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let msgs = pf.wait_for_messages(2, Duration::from_secs(20));
    let ar = msgs[1].header("Authentication-Results");
    assert_eq!(ar.len(), 1, "forged AR not removed: {}", msgs[1].text());
    assert!(ar[0].starts_with("mx.example;"), "{ar:?}");
    assert_eq!(ar[0].matches("dkim=pass").count(), 2, "{ar:?}");
    assert!(
        ar[0].contains(
            "header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=rsa"
        )
    );
    assert!(
        msgs[1].header("DKIM-Signature").len() == 2,
        "inbound mail is not re-signed"
    );

    // 3. A tampered copy fails (On-BadSignature accept: delivered with dkim=fail).
    let tampered = signed.replace("Hello Bob", "Hello Eve");
    let mut c = pf.smtp();
    c.xclient("192.0.2.9", "mail.example.com");
    let reply = c.send("alice@example.com", &["bob@dest.example"], &tampered);
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let msgs = pf.wait_for_messages(3, Duration::from_secs(20));
    let ar = msgs[2].header("Authentication-Results");
    assert_eq!(
        ar[0]
            .matches("dkim=fail reason=\"body hash did not verify\"")
            .count(),
        2,
        "{ar:?}"
    );
}
