//! `mailstack dmarc-report` against the consumers and servers a report meets:
//!
//! - a simulated day of records (several senders, IPv4 and IPv6, pass, reject, overrides, a
//!   record of a report, a record of the next day) in a history file;
//! - the RFC 7489 reports validate with `xmllint --schema` against RFC 7489 appendix C's XSD
//!   (`tests/data/rfc7489-appendix-c.xsd`, the RFC's text as Debian's libmail-dmarc-perl
//!   ships it; RFC 7489's schema declares a target namespace but names its own types
//!   unqualified, which no validator accepts, so the test validates against a copy without
//!   the `targetNamespace` attribute, the known erratum's fix);
//! - parsedmarc (PyPI, in /opt/parsedmarc, see .ci/run) parses every report, RFC 7489 and
//!   RFC 9990, into the rows and counts put in;
//! - a third-party destination gets its report only when
//!   `<domain>._report._dmarc.<rua-domain>` says `v=DMARC1` (a local DNS server, `--nameserver`),
//!   and a destination whose `!size` is too small gets nothing while the others get theirs;
//! - sent for real: the report mail reaches a Postfix requiring SMTP AUTH over TLS
//!   (STARTTLS), carries `Auto-Submitted: auto-generated`, OpenDKIM verifies its signature
//!   and the attachment holds the counts.
//!
//! Run: `cargo test -p mailstack-examples --features interop --test dmarc_report` (as root,
//! with libxml2-utils, postfix, openssl, sasl2-bin, libsasl2-modules, opendkim, and
//! parsedmarc in /opt/parsedmarc).

mod spf_support;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::postfix::{Postfix, PostfixBuilder};
use support::reports::{gz_files, parsedmarc};

/// 2025-11-25 00:00:00 UTC.
const DAY: u64 = 1_764_028_800;

/// One history block as `dmarc-milter` writes it.
#[allow(clippy::too_many_arguments)]
fn block(
    job: &str,
    at: u64,
    ip: &str,
    from: &str,
    pdomain: &str,
    ruas: &[&str],
    pass: bool,
    action: u8,
    tail: &str,
) -> String {
    let (dkim, spf, policy, align) = if pass {
        (format!("dkim {from} s1 0\n"), "spf 0", "15 result=pass", 4)
    } else {
        (format!("dkim {from} s1 7\n"), "spf 7", "16 result=fail", 5)
    };
    let rua: String = ruas.iter().map(|r| format!("rua {r}\n")).collect();
    format!(
        "job {job}\nreporter mx.receiver.example\nreceived {at}\nipaddr {ip}\nfrom {from}\n\
         mfrom {from}\n{dkim}{spf} domain={from} scope=mfrom\npdomain {pdomain}\n\
         policy {policy} in_force=114\n{rua}pct 100\nadkim 114\naspf 114\np 114 np=0 t=n\nsp 0\n\
         align_dkim {align}\nalign_spf {align}\narc 7\narc_policy 2 json:[]\naction {action}{tail}\n"
    )
}

/// (domain, source address, disposition, override reasons) -> count.
type Expected = support::reports::Rows;

/// The day's records, and the rows every report for each domain must hold.
fn day(dir: &Path) -> (PathBuf, Expected) {
    let mut h = String::new();
    let mut exp = Expected::new();
    let mut n = 0;
    let mut add = |h: &mut String,
                   at: u64,
                   ip: &str,
                   d: &str,
                   ruas: &[&str],
                   pass: bool,
                   action: u8,
                   tail: &str,
                   counted: bool| {
        n += 1;
        h.push_str(&block(
            &format!("Q{n}"),
            at,
            ip,
            d,
            d,
            ruas,
            pass,
            action,
            tail,
        ));
        if counted {
            let dis = match action {
                0 => "reject",
                4 => "quarantine",
                _ => "none",
            };
            let reasons = tail
                .strip_prefix(" reason=")
                .map(|r| r.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            *exp.entry((d.to_owned(), ip.to_owned(), dis.to_owned(), reasons))
                .or_default() += 1;
        }
    };
    let sender = ["mailto:dmarc@sender.example"];
    // The sender's own server, all day.
    for hour in 0..6 {
        add(
            &mut h,
            DAY + hour * 3600 + 17,
            "192.0.2.10",
            "sender.example",
            &sender,
            true,
            2,
            "",
            true,
        );
    }
    // A spoofer, rejected.
    for i in 0..3 {
        add(
            &mut h,
            DAY + 40_000 + i,
            "198.51.100.20",
            "sender.example",
            &sender,
            false,
            0,
            "",
            true,
        );
    }
    // IPv6, passing.
    for i in 0..2 {
        add(
            &mut h,
            DAY + 50_000 + i,
            "2001:db8::25",
            "sender.example",
            &sender,
            true,
            2,
            "",
            true,
        );
    }
    // Sampled out: failed, delivered.
    add(
        &mut h,
        DAY + 60_000,
        "203.0.113.5",
        "sender.example",
        &sender,
        false,
        2,
        " reason=sampled_out",
        true,
    );
    // A report that came in: never reported on.
    add(
        &mut h,
        DAY + 61_000,
        "203.0.113.9",
        "sender.example",
        &sender,
        true,
        2,
        " report=y",
        false,
    );
    // The next day: not in this day's report.
    add(
        &mut h,
        DAY + 86_400 + 5,
        "192.0.2.10",
        "sender.example",
        &sender,
        true,
        2,
        "",
        false,
    );
    // A second domain, its rua outside its organization: verified by DNS, and a second
    // external rua that is not.
    let other = ["mailto:r@thirdparty.example", "mailto:r@unverified.example"];
    for i in 0..4 {
        add(
            &mut h,
            DAY + 70_000 + i,
            "192.0.2.77",
            "other.example",
            &other,
            true,
            2,
            "",
            true,
        );
    }
    // A third domain whose only rua takes nothing over 100 bytes.
    for i in 0..2 {
        add(
            &mut h,
            DAY + 80_000 + i,
            "192.0.2.88",
            "small.example",
            &["mailto:d@small.example!100"],
            true,
            2,
            "",
            false,
        );
    }
    let p = dir.join("history");
    std::fs::write(&p, h).unwrap();
    (p, exp)
}

fn require(program: &str, hint: &str) {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    assert!(ok, "{program} is needed for this test ({hint})");
}

/// Runs `mailstack dmarc-report` with the day's range and `args`; returns stdout.
fn dmarc_report(history: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mailstack"))
        .arg("dmarc-report")
        .arg("--history")
        .arg(history)
        .args(["--begin", "2025-11-25", "--end", "2025-11-26"])
        .args([
            "--org-name",
            "Receiver Inc.",
            "--email",
            "dmarc-reports@example.com",
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dmarc-report failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn only(exp: &Expected, domain: &str) -> Expected {
    exp.iter()
        .filter(|(k, _)| k.0 == domain)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn zone() -> std::net::SocketAddr {
    let mut z = spf_support::Zone::default();
    z.txt(
        "other.example._report._dmarc.thirdparty.example",
        "v=DMARC1",
    );
    spf_support::start_dns_local(z).unwrap()
}

#[test]
fn reports_validate_and_parse_to_the_counts_put_in() {
    require("xmllint", "Debian package libxml2-utils");
    let tmp = tempfile::tempdir().unwrap();
    let (history, expected) = day(tmp.path());
    let dns = zone().to_string();
    // The schema as RFC 7489 prints it, minus the targetNamespace it cannot work with.
    let xsd = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc7489-appendix-c.xsd"),
    )
    .unwrap();
    let fixed = tmp.path().join("rua.xsd");
    std::fs::write(
        &fixed,
        xsd.replace("targetNamespace=\"http://dmarc.org/dmarc-xml/0.1\"", ""),
    )
    .unwrap();
    for format in ["rfc7489", "dmarcbis"] {
        let out = tmp.path().join(format);
        let stdout = dmarc_report(
            &history,
            &[
                "--format",
                format,
                "--dry-run",
                out.to_str().unwrap(),
                "--nameserver",
                &dns,
            ],
        );
        let files = gz_files(&out);
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        // sender.example, and other.example to the verified third party only; nothing to
        // the unverified one, nothing over small.example's !size.
        assert_eq!(names.len(), 2, "{names:?}\n{stdout}");
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("example.com!") && n.contains("!1764028800!1764115199!")),
            "{names:?}"
        );
        assert!(
            stdout.contains("held example.com!other.example!"),
            "{stdout}"
        );
        assert!(stdout.contains("NotVerified"), "{stdout}");
        assert!(
            stdout.contains("held example.com!small.example!"),
            "{stdout}"
        );
        assert!(stdout.contains("TooLarge"), "{stdout}");
        assert!(stdout.contains("reports skipped 1"), "{stdout}");
        let emls: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert_eq!(emls.len(), 2);
        assert!(
            emls.iter()
                .any(|m| m.contains("\r\nTo: r@thirdparty.example\r\n")),
            "the verified third party gets other.example's report"
        );
        if format == "rfc7489" {
            for f in &files {
                let xml = tmp.path().join("report.xml");
                let mut s = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(std::fs::File::open(f).unwrap()),
                    &mut s,
                )
                .unwrap();
                std::fs::write(&xml, &s).unwrap();
                let v = Command::new("xmllint")
                    .args(["--noout", "--schema"])
                    .arg(&fixed)
                    .arg(&xml)
                    .output()
                    .unwrap();
                assert!(
                    v.status.success(),
                    "xmllint: {}\n{s}",
                    String::from_utf8_lossy(&v.stderr)
                );
            }
        }
        let parsed = parsedmarc(&files);
        assert_eq!(parsed.len(), 2);
        for (domain, rows) in parsed {
            assert_eq!(
                rows,
                only(&expected, &domain),
                "{format} report for {domain}"
            );
        }
    }
}

const SASL_USER: &str = "reports@example.com";
const SASL_PASSWORD: &str = "r3ports-Pa55";

/// A self-signed certificate for `localhost` in `dir`: (cert, key).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
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
    (cert, key)
}

/// A Postfix relaying only for SASL-authenticated clients, AUTH offered only over TLS (as
/// `examples/tests/av_notify.rs` sets it up).
fn auth_postfix(dir: &Path) -> (Postfix, PathBuf) {
    let (cert, key) = certificate(dir);
    let sasl = dir.join("sasl");
    std::fs::create_dir(&sasl).unwrap();
    let db = sasl.join("sasldb2");
    let (user, realm) = SASL_USER.split_once('@').unwrap();
    let mut child = Command::new("saslpasswd2")
        .args(["-p", "-c", "-f"])
        .arg(&db)
        .args(["-u", realm, user])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("saslpasswd2 (Debian package sasl2-bin) is needed for this test");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(SASL_PASSWORD.as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success(), "saslpasswd2 failed");
    for d in [dir, sasl.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert!(
        Command::new("chown")
            .arg("postfix")
            .arg(&db)
            .status()
            .unwrap()
            .success()
    );
    let b: PostfixBuilder = Postfix::builder()
        .main("smtpd_tls_cert_file", cert.display().to_string())
        .main("smtpd_tls_key_file", key.display().to_string())
        .main("smtpd_tls_loglevel", "1")
        .master("tlsmgr unix - - n 1000? 1 tlsmgr");
    let pf = b
        .main("smtpd_tls_security_level", "may")
        .main("smtpd_tls_auth_only", "yes")
        .main("smtpd_sasl_auth_enable", "yes")
        .main("smtpd_sasl_type", "cyrus")
        .main("smtpd_sasl_path", "smtpd")
        .conf_file(
            "sasl/smtpd.conf",
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
                db.display()
            ),
        )
        .main("smtpd_sasl_security_options", "noanonymous")
        .main("mynetworks", "192.0.2.1/32")
        .main("smtpd_relay_restrictions", "permit_sasl_authenticated, reject")
        .main("smtpd_recipient_restrictions", "permit_sasl_authenticated, reject")
        .start();
    (pf, cert)
}

/// The reporter's side of [`auth_postfix`]: its DKIM key (`DIR/keys/rep.private`, selector
/// `rep`, the TXT record returned) and an msmtp-style file (mode 0600) submitting with
/// STARTTLS and AUTH to `port`.
fn reporter(dir: &Path, port: u16, cert: &Path) -> (String, PathBuf, PathBuf) {
    let keydir = dir.join("keys");
    std::fs::create_dir(&keydir).unwrap();
    let txt =
        support::milters::dkim_genkey(Path::new(env!("CARGO_BIN_EXE_dkim-milter")), &keydir, "rep");
    let rc = dir.join("msmtprc");
    std::fs::write(
        &rc,
        format!(
            "host localhost\nport {port}\nfrom x@example.com\ntls on\ntls_starttls on\n\
             tls_trust_file {}\nauth on\nuser {SASL_USER}\npassword {SASL_PASSWORD}\n",
            cert.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    (txt, keydir.join("rep.private"), rc)
}

/// Each delivered report mail as a receiver handles it: `Auto-Submitted`, OpenDKIM's
/// verdict on its signature (one dkim=pass with `txt` as the key), and the gzipped
/// attachment saved under `dir`; returns the saved files.
fn received_reports(dir: &Path, msgs: &[support::postfix::Delivered], txt: &str) -> Vec<PathBuf> {
    use base64::Engine as _;
    let mut files = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.header("Auto-Submitted"), ["auto-generated"]);
        let vdir = dir.join(format!("v{i}"));
        std::fs::create_dir(&vdir).unwrap();
        let odk = support::milters::opendkim_verify(&vdir, &[("rep", txt)], &m.text());
        assert_eq!(odk.matches("dkim=pass").count(), 1, "{odk}");
        let text = m.text();
        let b64: String = text
            .split("Content-Disposition: attachment")
            .nth(1)
            .unwrap()
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .collect();
        let f = dir.join(format!("r{i}.xml.gz"));
        std::fs::write(
            &f,
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap();
        files.push(f);
    }
    files
}

#[test]
fn report_mail_goes_over_auth_tls_dkim_signed() {
    support::postfix::require_postfix();
    let tmp = tempfile::tempdir().unwrap();
    let (history, expected) = day(tmp.path());
    let dns = zone().to_string();
    let pfdir = tmp.path().join("pf");
    std::fs::create_dir(&pfdir).unwrap();
    let (pf, cert) = auth_postfix(&pfdir);
    let (txt, key, rc) = reporter(tmp.path(), pf.smtp_port(), &cert);
    let stdout = dmarc_report(
        &history,
        &[
            "--smtp",
            rc.to_str().unwrap(),
            "--dkim-key",
            key.to_str().unwrap(),
            "--dkim-selector",
            "rep",
            "--nameserver",
            &dns,
        ],
    );
    assert_eq!(
        stdout.matches("\nsent ").count() + usize::from(stdout.starts_with("sent ")),
        2,
        "{stdout}"
    );
    let msgs = pf.wait_for_messages(2, Duration::from_secs(60));
    assert_eq!(msgs.len(), 2, "{stdout}\n{}", pf.log());
    assert!(
        pf.wait_for_log("TLS connection established", Duration::from_secs(10)),
        "no TLS:\n{}",
        pf.log()
    );
    for m in &msgs {
        assert_eq!(m.mail_from, "dmarc-reports@example.com");
        assert!(m.header("Subject")[0].starts_with("Report Domain: "));
    }
    let files = received_reports(tmp.path(), &msgs, &txt);
    let mut rcpts: Vec<String> = msgs.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["dmarc@sender.example", "r@thirdparty.example"]);
    for (domain, rows) in parsedmarc(&files) {
        assert_eq!(rows, only(&expected, &domain), "report for {domain}");
    }
}

/// End to end: mail from several senders through Postfix and mailstackd (records into the
/// embedded store), then `mailstack dmarc-report --store` over the day's UTC window sends
/// the reports over SMTP AUTH + STARTTLS to a second Postfix; OpenDKIM verifies each report
/// mail and parsedmarc's counts are what was sent.
#[test]
fn mail_through_postfix_and_mailstackd_reported_over_auth_tls() {
    support::postfix::require_postfix();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut z = spf_support::Zone::default();
    z.txt("sender.example", "v=spf1 ip4:192.0.2.10 -all")
        .txt(
            "_dmarc.sender.example",
            "v=DMARC1; p=quarantine; rua=mailto:dmarc@sender.example",
        )
        .txt("other.example", "v=spf1 ip4:192.0.2.20 -all")
        .txt(
            "_dmarc.other.example",
            "v=DMARC1; p=reject; rua=mailto:dmarc@other.example",
        )
        // The spoofer's own envelope domain passes SPF, unaligned with the From domain.
        .txt("evil.example", "v=spf1 ip4:192.0.2.99 -all");
    let dns = spf_support::start_dns_local(z).unwrap();
    let store = d.join("store.redb");
    let conf = d.join("mailstackd.toml");
    std::fs::write(
        &conf,
        format!(
            "[mailstackd]\nauthserv_id = \"mx.dest.example\"\nnameservers = [\"{dns}\"]\n\n\
             [dmarc]\noptions = {{ RejectFailures = true }}\n\n\
             [store]\nkind = \"embedded\"\npath = {store:?}\n"
        ),
    )
    .unwrap();
    let mut milter = support::milters::Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_mailstackd")),
        d,
        "mailstackd",
        &[
            "--config",
            conf.to_str().unwrap(),
            "--group",
            "postfix",
            "--allow-root",
        ],
    );
    let inbound = Postfix::builder()
        .main("smtpd_milters", milter.spec())
        .main("milter_default_action", "tempfail")
        .start();
    // (client ip, envelope from, header From, messages, SMTP code, the report's disposition
    // and override). p=quarantine failures are delivered, as OpenDMARC does with
    // RejectFailures but without HoldQuarantinedMessages: the report says so, "none" with
    // the local_policy override, not the "quarantine" that was asked for.
    type Sender = (
        &'static str,
        &'static str,
        &'static str,
        u64,
        u16,
        &'static str,
        Option<&'static str>,
    );
    let senders: [Sender; 4] = [
        (
            "192.0.2.10",
            "alice@sender.example",
            "sender.example",
            4,
            250,
            "none",
            None,
        ),
        (
            "192.0.2.99",
            "mallory@evil.example",
            "sender.example",
            3,
            250,
            "none",
            Some("local_policy"),
        ),
        (
            "192.0.2.20",
            "bob@other.example",
            "other.example",
            2,
            250,
            "none",
            None,
        ),
        (
            "192.0.2.99",
            "eve@evil.example",
            "other.example",
            2,
            550,
            "reject",
            None,
        ),
    ];
    let mut expected = Expected::new();
    for (ip, from, domain, n, code, disposition, reason) in senders {
        for i in 0..n {
            let mut c = inbound.smtp();
            c.xclient(ip, "mail.client.example");
            let reply = c.send(
                from,
                &["someone@dest.example"],
                &format!(
                    "From: <user@{domain}>\r\nTo: someone@dest.example\r\n\
                     Subject: {domain} {i}\r\n\r\nhello\r\n"
                ),
            );
            assert_eq!(
                reply.code,
                code,
                "{ip} {from} {domain}: {reply}\n{}",
                inbound.log()
            );
        }
        *expected
            .entry((
                domain.to_owned(),
                ip.to_owned(),
                disposition.to_owned(),
                reason.into_iter().map(str::to_owned).collect(),
            ))
            .or_default() += n;
    }
    // What the report will say was done is what was done: 9 delivered, 2 refused.
    let delivered = inbound.wait_for_messages(9, Duration::from_secs(30));
    assert_eq!(delivered.len(), 9, "{}", inbound.log());
    // mailstackd stops (its buffer flushed into the store), then the reporter opens it.
    milter.terminate();
    assert!(milter.wait_exit(Duration::from_secs(20)).is_some());

    let pfdir = d.join("pf");
    std::fs::create_dir(&pfdir).unwrap();
    let (reports_pf, cert) = auth_postfix(&pfdir);
    let (txt, key, rc) = reporter(d, reports_pf.smtp_port(), &cert);
    let (begin, end) = support::reports::today_utc();
    let out = Command::new(env!("CARGO_BIN_EXE_mailstack"))
        .arg("dmarc-report")
        .arg("--store")
        .arg(&store)
        .args(["--begin", &begin.to_string(), "--end", &end.to_string()])
        .args([
            "--org-name",
            "Receiver Inc.",
            "--email",
            "dmarc-reports@example.com",
        ])
        .args(["--smtp", rc.to_str().unwrap()])
        .args(["--dkim-key", key.to_str().unwrap()])
        .args(["--dkim-selector", "rep", "--nameserver", &dns.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dmarc-report: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = reports_pf.wait_for_messages(2, Duration::from_secs(60));
    assert_eq!(msgs.len(), 2, "{stdout}\n{}", reports_pf.log());
    assert!(
        reports_pf.wait_for_log("TLS connection established", Duration::from_secs(10)),
        "no TLS:\n{}",
        reports_pf.log()
    );
    let files = received_reports(d, &msgs, &txt);
    let mut rcpts: Vec<String> = msgs.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["dmarc@other.example", "dmarc@sender.example"]);
    let parsed = parsedmarc(&files);
    assert_eq!(parsed.len(), 2);
    for (domain, rows) in parsed {
        assert_eq!(rows, only(&expected, &domain), "report for {domain}");
    }
}
