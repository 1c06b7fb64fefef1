//! `mailstack::notify` against a real SMTP server: the private Postfix instance (relaying to
//! the in-process sink) receives the infected-mail notification over plain SMTP and over
//! STARTTLS (Postfix with a certificate made here by `openssl`, trusted through msmtp's
//! `tls_trust_file`; `smtpd_tls_security_level = encrypt`, so Postfix refuses MAIL before
//! STARTTLS), and the seed's setup: a submission server that requires SMTP AUTH over TLS
//! (Postfix with Cyrus SASL against a sasldb made here by `saslpasswd2`, relaying only for
//! authenticated clients, `smtpd_tls_auth_only`), over STARTTLS and over implicit TLS
//! (`smtpd_tls_wrappermode`); a wrong password is refused and nothing is delivered.
//!
//! Run: `cargo test -p mailstack-examples --test av_notify` (as root, with postfix, openssl,
//! sasl2-bin and libsasl2-modules).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mailstack::notify::{MsmtpConfig, Notifier, infected_text};
use support::postfix::{Postfix, PostfixBuilder, free_port};

fn notifier(rc: &str) -> Notifier {
    let cfg = MsmtpConfig::parse(Path::new("msmtprc"), rc).unwrap();
    Notifier::new(&cfg)
        .unwrap()
        .retries(2, Duration::from_millis(200))
}

/// Sends the notification; on failure panics with the error and Postfix's log.
fn send(n: &Notifier, pf: &Postfix) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Err(e) = rt.block_on(try_send(n)) {
        panic!(
            "notification not delivered to Postfix: {e}\nPostfix log:\n{}",
            pf.log()
        );
    }
}

async fn try_send(n: &Notifier) -> Result<(), String> {
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
        .map_err(|e| format!("{e:?}"))
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
    send(&n, &pf);
    check(&pf);
}

/// A self-signed certificate for `localhost` in `dir`: (cert, key).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
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
    (cert, key)
}

/// Postfix's TLS server settings for the certificate.
fn tls(b: PostfixBuilder, cert: &Path, key: &Path) -> PostfixBuilder {
    b.main("smtpd_tls_cert_file", cert.display().to_string())
        .main("smtpd_tls_key_file", key.display().to_string())
        .main("smtpd_tls_loglevel", "1")
        .master("tlsmgr unix - - n 1000? 1 tlsmgr")
}

#[test]
fn notification_over_starttls() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(tmp.path());
    let pf = tls(Postfix::builder(), &cert, &key)
        .main("smtpd_tls_security_level", "encrypt")
        .start();
    let n = notifier(&format!(
        "host localhost\nport {}\nfrom av@src.example\ntls on\ntls_starttls on\ntls_trust_file {}\n",
        pf.smtp_port(),
        cert.display()
    ));
    send(&n, &pf);
    check(&pf);
    assert!(
        pf.wait_for_log("TLS connection established", Duration::from_secs(10)),
        "no TLS in the Postfix log:\n{}",
        pf.log()
    );
}

const SASL_USER: &str = "avnotify@dest.example";
const SASL_PASSWORD: &str = "s3cret-Pa55";

/// A Postfix that relays only for clients that authenticated (Cyrus SASL, sasldb with one
/// user) and offers AUTH only over TLS: on its SMTP port with STARTTLS, and with implicit TLS
/// on `smtps_port`. `dir` must outlive it (it holds the sasldb smtpd reads as user postfix).
fn auth_postfix(dir: &Path, smtps_port: u16) -> (Postfix, PathBuf) {
    let (cert, key) = certificate(dir);
    let sasl = dir.join("sasl");
    std::fs::create_dir(&sasl).unwrap();
    let db = sasl.join("sasldb2");
    let smtpd_conf = format!(
        "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
        db.display()
    );
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
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(SASL_PASSWORD.as_bytes()).unwrap();
    }
    assert!(child.wait().unwrap().success(), "saslpasswd2 failed");
    // smtpd opens the sasldb as user postfix, through these directories.
    for d in [dir, sasl.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let st = Command::new("chown")
        .arg("postfix")
        .arg(&db)
        .status()
        .unwrap();
    assert!(st.success(), "chown postfix {}", db.display());
    let pf = tls(Postfix::builder(), &cert, &key)
        .main("smtpd_tls_security_level", "may")
        .main("smtpd_tls_auth_only", "yes")
        .main("smtpd_sasl_auth_enable", "yes")
        .main("smtpd_sasl_type", "cyrus")
        .main("smtpd_sasl_path", "smtpd")
        .conf_file("sasl/smtpd.conf", smtpd_conf)
        .main("smtpd_sasl_security_options", "noanonymous")
        // Loopback is not a trusted network here: only AUTH lets mail through.
        .main("mynetworks", "192.0.2.1/32")
        .main("smtpd_relay_restrictions", "permit_sasl_authenticated, reject")
        .main(
            "smtpd_recipient_restrictions",
            "permit_sasl_authenticated, reject",
        )
        .master(format!(
            "127.0.0.1:{smtps_port} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt"
        ))
        .start();
    (pf, cert)
}

/// Sends the notification with AUTH, over STARTTLS on the SMTP port or over implicit TLS on
/// the smtps port, and checks that it arrived and that Postfix logged the login.
fn notification_with_auth(implicit_tls: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let smtps = free_port();
    let (pf, cert) = auth_postfix(tmp.path(), smtps);
    let (port, starttls) = match implicit_tls {
        true => (smtps, "off"),
        false => (pf.smtp_port(), "on"),
    };
    let n = notifier(&format!(
        "host localhost\nport {port}\nfrom av@src.example\ntls on\ntls_starttls {starttls}\ntls_trust_file {}\nauth on\nuser {SASL_USER}\npassword {SASL_PASSWORD}\n",
        cert.display()
    ));
    send(&n, &pf);
    check(&pf);
    let login = format!("sasl_username={SASL_USER}");
    assert!(
        pf.wait_for_log(&login, Duration::from_secs(10)),
        "Postfix did not log the SASL login:\n{}",
        pf.log()
    );
}

/// The seed's msmtp setup: AUTH over STARTTLS on the submission port.
#[test]
fn notification_with_auth_over_starttls() {
    notification_with_auth(false);
}

/// AUTH over implicit TLS (`tls_starttls off`, smtps).
#[test]
fn notification_with_auth_over_implicit_tls() {
    notification_with_auth(true);
}

/// Without AUTH, and with a wrong password, the server refuses the notification: the notifier
/// reports the failure after its bounded retries and nothing is delivered.
#[test]
fn notification_refused_without_valid_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let (pf, cert) = auth_postfix(tmp.path(), free_port());
    let rt = tokio::runtime::Runtime::new().unwrap();
    for auth in [
        String::from("auth off\n"),
        format!("auth on\nuser {SASL_USER}\npassword wrong-password\n"),
    ] {
        let n = notifier(&format!(
            "host localhost\nport {}\nfrom av@src.example\ntls on\ntls_starttls on\ntls_trust_file {}\n{auth}",
            pf.smtp_port(),
            cert.display()
        ));
        let (subject, body) = infected_text([
            "Eicar-Test",
            "Q1",
            "a@src.example",
            "b@dest.example",
            "s",
            "<m@x>",
        ]);
        let result = rt
            .block_on(async { n.send("admin@dest.example", &subject, &body).unwrap().await })
            .unwrap();
        assert!(
            result.is_err(),
            "{auth}: the notification went through without a valid login"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(pf.delivered().is_empty(), "mail was delivered without AUTH");
    assert!(
        pf.log().contains("authentication failed"),
        "no failed login in the Postfix log:\n{}",
        pf.log()
    );
}
