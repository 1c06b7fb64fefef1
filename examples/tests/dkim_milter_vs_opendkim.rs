//! `dkim-milter` and Debian's OpenDKIM 2.11 milter side by side, driven by
//! `milter_proto::client::Client` as Postfix drives them (HDR_LEADSPC offered, so header
//! bytes are exact and `simple/simple` canonicalization is meaningful):
//!
//! - keys come from `dkim-milter genkey` (RSA and Ed25519, opendkim-genkey's layout) and are
//!   loaded by both (TestPublicKeys for lookups, offline);
//! - over the shared corpus (`mailstack/tests/data/dkim/corpus.txt`), mail from 127.0.0.1 is
//!   signed by ours with RSA and Ed25519 at once, and OpenDKIM's milter passes both
//!   signatures; OpenDKIM's RSA signature passes ours; on the same messages both write the
//!   same Authentication-Results (less `dkim-atps`);
//! - a forged Authentication-Results carrying our authserv-id is deleted by both;
//! - a From without a domain (or no From) gets the same `dkim=permerror (bad
//!   message/signature format)` from both, signed for no one;
//! - a DKIM-Signature that is not a tag-list, or lacks one of v a b d h s, is refused by both
//!   at end of headers with `On-BadSignature reject` (`550 5.7.0 DKIM signature syntax
//!   error`), and delivered without a result by default;
//! - `--check-config` refuses a key file others can read, naming it, and (like `opendkim -n`)
//!   needs no `Socket`;
//! - a 1024-bit RSA key signs and OpenDKIM passes it; a revoked key is the same `dkim=fail`
//!   in both; `Domain *` signs every domain as itself in both.
//!
//! Needs `/usr/sbin/opendkim`; fails without it.

mod support;

#[path = "../../mailstack/tests/data/dkim/corpus.rs"]
mod dkim_corpus;

use dkim_corpus::corpus;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::command::ConnAddr;
use milter_proto::reply::Reply;
use milter_proto::socket::SocketSpec;
use support::milters::Daemon;

const OPENDKIM: &str = "/usr/sbin/opendkim";

struct OpenDkim(Child);

impl Drop for OpenDkim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_opendkim(conf: &Path, socket: &Path) -> OpenDkim {
    assert!(
        Path::new(OPENDKIM).exists(),
        "{OPENDKIM} missing: install opendkim"
    );
    let mut guard = OpenDkim(
        Command::new(OPENDKIM)
            .arg("-f")
            .arg("-x")
            .arg(conf)
            .stdin(Stdio::null())
            .spawn()
            .expect("start opendkim"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return guard;
        }
        if let Ok(Some(st)) = guard.0.try_wait() {
            panic!("opendkim exited: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("opendkim did not listen on {}", socket.display());
}

fn connection(ip: &'static str) -> Connection {
    Connection {
        hostname: Bytes::from_static(b"client.example"),
        addr: ConnAddr::Inet {
            port: 40000,
            address: Bytes::from_static(ip.as_bytes()),
        },
        helo: Some(Bytes::from_static(b"client.example")),
        macros: vec![(
            b'C',
            vec![(Bytes::from_static(b"j"), Bytes::from_static(b"mx.example"))],
        )],
    }
}

/// Runs `raw` through the milter at `spec` from client `ip`; returns the message as Postfix
/// would store it afterwards (inserted headers applied, deleted ones removed) and the
/// modifications.
async fn run(spec: &str, ip: &'static str, raw: &[u8]) -> (Vec<u8>, Vec<Reply>) {
    let spec: SocketSpec = spec.parse().unwrap();
    let mut c = Client::connect(&spec, ClientConfig::default())
        .await
        .unwrap();
    c.connection(&connection(ip)).await.unwrap();
    let msg = Message::parse(b"<alice@example.com>", &[b"<bob@example.org>"], raw);
    let out = c.message(&msg).await.unwrap();
    c.quit().await.unwrap();
    assert!(
        matches!(out.decision, Reply::Continue | Reply::Accept),
        "{:?}",
        out.decision
    );
    let mut headers: Vec<(Bytes, Bytes)> = msg.headers.clone();
    for m in &out.modifications {
        match m {
            Reply::InsHeader { index, name, value } => {
                let at = usize::try_from(*index).unwrap().min(headers.len());
                headers.insert(at, (name.clone(), value.clone()));
            }
            Reply::ChgHeader { index, name, value } if value.is_empty() => {
                let pos = headers
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                    .nth(usize::try_from(*index).unwrap() - 1)
                    .map(|(i, _)| i)
                    .unwrap();
                headers.remove(pos);
            }
            other => panic!("unexpected modification {other:?}"),
        }
    }
    let mut stored = Vec::new();
    for (n, v) in &headers {
        stored.extend_from_slice(n);
        stored.push(b':');
        let v = String::from_utf8_lossy(v).replace('\n', "\r\n");
        // With HDR_LEADSPC both milters give values with their leading space.
        stored.extend_from_slice(v.as_bytes());
        stored.extend_from_slice(b"\r\n");
    }
    stored.extend_from_slice(b"\r\n");
    stored.extend_from_slice(&msg.body);
    (stored, out.modifications)
}

fn inserted(mods: &[Reply], name: &str) -> Vec<String> {
    mods.iter()
        .filter_map(|m| match m {
            Reply::InsHeader { name: n, value, .. } if n.eq_ignore_ascii_case(name.as_bytes()) => {
                Some(String::from_utf8_lossy(value).trim_start().to_owned())
            }
            _ => None,
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    ours: Daemon,
    _opendkim: OpenDkim,
    odk_spec: String,
}

fn genkey(dir: &Path, args: &[&str]) {
    let st = Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
        .arg("genkey")
        .args(["-d", "example.com", "-D"])
        .arg(dir)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success());
}

fn txt_value(path: &Path) -> String {
    let t = std::fs::read_to_string(path).unwrap();
    t.split('"').skip(1).step_by(2).collect()
}

fn setup() -> Setup {
    setup_with("")
}

/// Both milters with `extra` appended to the options they share.
fn setup_with(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    genkey(d, &["-s", "rsa"]);
    genkey(d, &["-s", "ed", "--type", "ed25519"]);
    let mode = std::fs::metadata(d.join("rsa.private")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    std::fs::write(
        d.join("keys"),
        format!(
            "rsa._domainkey.example.com {}\ned._domainkey.example.com {}\n",
            txt_value(&d.join("rsa.txt")),
            txt_value(&d.join("ed.txt"))
        ),
    )
    .unwrap();
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
    let common = format!(
        "Mode sv\nCanonicalization simple/simple\nOversignHeaders From\nTestPublicKeys {0}/keys\n\
         AuthservID test.example\nInternalHosts 127.0.0.1\n{extra}",
        d.display()
    );
    let ours_conf = d.join("ours.conf");
    std::fs::write(
        &ours_conf,
        format!(
            "{common}KeyTable file:{0}/keytable\nSigningTable refile:{0}/signingtable\n\
             MultipleSignatures yes\n",
            d.display()
        ),
    )
    .unwrap();
    let odk_conf = d.join("opendkim.conf");
    let odk_sock = d.join("opendkim.sock");
    std::fs::write(
        &odk_conf,
        format!(
            "{common}Domain example.com\nSelector rsa\nKeyFile {0}/rsa.private\n\
             Socket local:{1}\nBackground no\nRequireSafeKeys no\n",
            d.display(),
            odk_sock.display()
        ),
    )
    .unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_dkim-milter"));
    let ours = Daemon::start(
        &exe,
        d,
        "ours",
        &["--config", ours_conf.to_str().unwrap(), "--allow-root"],
    );
    let opendkim = start_opendkim(&odk_conf, &odk_sock);
    Setup {
        odk_spec: format!("unix:{}", odk_sock.display()),
        dir,
        ours,
        _opendkim: opendkim,
    }
}

#[tokio::test]
async fn ours_and_opendkims_milters_verify_each_other() {
    let s = setup();
    let ours = s.ours.spec();
    let mut n = 0;
    for (name, raw) in corpus() {
        // Ours signs (RSA + Ed25519); OpenDKIM's milter verifies both.
        let (signed, mods) = run(&ours, "127.0.0.1", &raw).await;
        let sigs = inserted(&mods, "DKIM-Signature");
        assert_eq!(sigs.len(), 2, "{name}: {mods:?}");
        assert!(sigs.iter().any(|v| v.contains("a=rsa-sha256")), "{name}");
        assert!(
            sigs.iter().any(|v| v.contains("a=ed25519-sha256")),
            "{name}"
        );
        let (_, odk) = run(&s.odk_spec, "192.0.2.1", &signed).await;
        let odk_ar = inserted(&odk, "Authentication-Results");
        assert_eq!(odk_ar.len(), 1, "{name}: {odk:?}");
        assert_eq!(
            odk_ar[0].matches("dkim=pass").count(),
            2,
            "{name}: {}",
            odk_ar[0]
        );
        let (_, mine) = run(&ours, "192.0.2.1", &signed).await;
        let my_ar = inserted(&mine, "Authentication-Results");
        assert_eq!(
            my_ar,
            [odk_ar[0]
                .trim_end_matches(";\n\tdkim-atps=neutral")
                .to_owned()],
            "{name}"
        );

        // OpenDKIM signs (RSA); ours verifies.
        let (signed, mods) = run(&s.odk_spec, "127.0.0.1", &raw).await;
        assert_eq!(
            inserted(&mods, "DKIM-Signature").len(),
            1,
            "{name}: {mods:?}"
        );
        let (_, mine) = run(&ours, "192.0.2.1", &signed).await;
        let my_ar = inserted(&mine, "Authentication-Results");
        assert!(
            my_ar[0].contains("dkim=pass (2048-bit key)"),
            "{name}: {my_ar:?}"
        );
        let (_, odk) = run(&s.odk_spec, "192.0.2.1", &signed).await;
        assert_eq!(
            inserted(&odk, "Authentication-Results")[0].trim_end_matches(";\n\tdkim-atps=neutral"),
            my_ar[0],
            "{name}"
        );
        n += 1;
    }
    eprintln!("{n} messages signed and cross-verified through both milters");
}

#[tokio::test]
async fn forged_results_are_removed_like_opendkim() {
    let s = setup();
    let (signed, _) = run(&s.ours.spec(), "127.0.0.1", &corpus()[0].1).await;
    let mut forged = b"Authentication-Results: test.example; dkim=pass header.d=example.com\r\n\
Authentication-Results: other.example; dkim=fail\r\n"
        .to_vec();
    forged.extend_from_slice(&signed);
    for spec in [s.ours.spec(), s.odk_spec.clone()] {
        let (_, mods) = run(&spec, "192.0.2.1", &forged).await;
        let deleted: Vec<_> = mods
            .iter()
            .filter_map(|m| match m {
                Reply::ChgHeader { index, value, .. } if value.is_empty() => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, [1], "{spec}: {mods:?}");
    }
    let _ = s.dir.path();
}

#[tokio::test]
async fn a_from_without_a_domain_gets_opendkims_format_error() {
    let s = setup();
    let undisclosed = b"From: undisclosed\r\nTo: b@example.org\r\nSubject: x\r\n\r\nHi\r\n";
    let no_from = b"To: b@example.org\r\nSubject: x\r\n\r\nHi\r\n";
    for raw in [&undisclosed[..], &no_from[..]] {
        for ip in ["192.0.2.1", "127.0.0.1"] {
            let mut ars = Vec::new();
            for spec in [s.ours.spec(), s.odk_spec.clone()] {
                let (_, mods) = run(&spec, ip, raw).await;
                assert!(
                    inserted(&mods, "DKIM-Signature").is_empty(),
                    "{spec}: {mods:?}"
                );
                ars.push(inserted(&mods, "Authentication-Results"));
            }
            assert_eq!(
                ars[0],
                ["test.example; dkim=permerror (bad message/signature format)"],
                "{ip}"
            );
            assert_eq!(ars[0], ars[1], "{ip}: ours, then OpenDKIM's");
        }
    }
}

/// One message through the milter at `spec`, whatever the answer.
async fn outcome(spec: &str, ip: &'static str, raw: &[u8]) -> milter_proto::client::Outcome {
    let spec: SocketSpec = spec.parse().unwrap();
    let mut c = Client::connect(&spec, ClientConfig::default())
        .await
        .unwrap();
    c.connection(&connection(ip)).await.unwrap();
    let msg = Message::parse(b"<alice@example.com>", &[b"<bob@example.org>"], raw);
    let out = c.message(&msg).await.unwrap();
    c.quit().await.unwrap();
    out
}

#[tokio::test]
async fn a_signature_that_does_not_parse_is_decided_at_end_of_headers_like_opendkim() {
    let base = "From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n\r\nHi\r\n";
    let garbage = format!("DKIM-Signature: v=1; a=rsa-sha256; garbage\r\n{base}");
    let no_s =
        format!("DKIM-Signature: v=1; a=rsa-sha256; d=example.com; h=from; bh=xx; b=yy\r\n{base}");
    let s = setup_with("On-BadSignature reject\n");
    let (signed, _) = run(&s.ours.spec(), "127.0.0.1", &corpus()[0].1).await;
    // A good signature first, the broken one below it: still refused.
    let text = String::from_utf8_lossy(&signed).into_owned();
    let (top, rest) = text.split_once("\r\nFrom:").unwrap();
    let after_good = format!("{top}\r\nDKIM-Signature: v=1; garbage\r\nFrom:{rest}");
    for raw in [&garbage, &no_s, &after_good] {
        for spec in [s.ours.spec(), s.odk_spec.clone()] {
            let out = outcome(&spec, "192.0.2.1", raw.as_bytes()).await;
            assert_eq!(
                out.decision,
                Reply::ReplyCode(Bytes::from_static(b"550 5.7.0 DKIM signature syntax error")),
                "{spec}: {raw}"
            );
            assert_eq!(
                out.replies.last().map(|r| r.0),
                Some(b'N'),
                "{spec}: {out:?}"
            );
        }
    }
    // On-BadSignature accept (the default): delivered without an Authentication-Results.
    let s = setup();
    for spec in [s.ours.spec(), s.odk_spec.clone()] {
        let (_, mods) = run(&spec, "192.0.2.1", garbage.as_bytes()).await;
        assert!(mods.is_empty(), "{spec}: {mods:?}");
    }
}

#[test]
fn check_config_refuses_a_key_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    genkey(dir.path(), &["-s", "k"]);
    let key = dir.path().join("k.private");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let conf = dir.path().join("c.conf");
    std::fs::write(
        &conf,
        format!(
            "Domain example.com\nSelector k\nKeyFile {}\nSocket inet:8891@localhost\n",
            key.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
        .args(["--check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}: key file mode 0644", key.display())),
        "{err}"
    );
    // Like `opendkim -n`, --check-config needs no Socket (it demanded one before).
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        &conf,
        format!(
            "Domain example.com\nSelector k\nKeyFile {}\n",
            key.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
        .args(["--check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenDKIM checks the config file's directories too and refuses anything below a
    // world-writable one such as /tmp (sticky or not), so its copy lives in the target dir.
    let safe = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::copy(&key, safe.path().join("k.private")).unwrap();
    let odk_conf = safe.path().join("odk.conf");
    std::fs::write(
        &odk_conf,
        format!(
            "Domain example.com\nSelector k\nKeyFile {}\n",
            safe.path().join("k.private").display()
        ),
    )
    .unwrap();
    let odk = Command::new(OPENDKIM)
        .arg("-n")
        .arg("-x")
        .arg(&odk_conf)
        .output()
        .unwrap();
    assert!(odk.status.success(), "{odk:?}");
    std::fs::write(&conf, "Socket inet:8891@localhost\nLDAPUseTLS yes\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
        .args(["--check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2: LDAPUseTLS: LDAP is not supported"),
        "{err}"
    );
}

/// A 1024-bit RSA key (refused at startup before: aws-lc-rs's "TooSmall") signs through our
/// milter and OpenDKIM's milter passes it; a revoked key (`p=` empty) gives the same
/// `dkim=fail reason="key revoked"` in both (we wrote `permerror` before).
#[tokio::test]
async fn small_keys_sign_and_revoked_keys_fail_like_opendkim() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let small = d.join("small.private");
    let out = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&small)
        .arg("1024")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::set_permissions(&small, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    genkey(d, &["-s", "gone"]);
    let pubkey = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&small)
        .output()
        .unwrap();
    assert!(pubkey.status.success());
    // The PEM body is the base64 SubjectPublicKeyInfo, the `p=` value.
    let p: String = String::from_utf8_lossy(&pubkey.stdout)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    std::fs::write(
        d.join("keys"),
        format!(
            "small._domainkey.example.com v=DKIM1; k=rsa; p={p}\n\
             gone._domainkey.example.org v=DKIM1; k=rsa; p=\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("keytable"),
        format!(
            "small example.com:small:{0}/small.private\ngone example.org:gone:{0}/gone.private\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("signingtable"),
        "*@example.com small\n*@example.org gone\n",
    )
    .unwrap();
    let common = format!(
        "Mode sv\nCanonicalization relaxed/simple\nTestPublicKeys {0}/keys\n\
         AuthservID test.example\nInternalHosts 127.0.0.1\n",
        d.display()
    );
    let ours_conf = d.join("ours.conf");
    std::fs::write(
        &ours_conf,
        format!(
            "{common}KeyTable file:{0}/keytable\nSigningTable refile:{0}/signingtable\n",
            d.display()
        ),
    )
    .unwrap();
    let odk_conf = d.join("opendkim.conf");
    let odk_sock = d.join("opendkim.sock");
    std::fs::write(
        &odk_conf,
        format!(
            "{common}Socket local:{0}\nBackground no\nRequireSafeKeys no\n",
            odk_sock.display()
        ),
    )
    .unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_dkim-milter"));
    let ours = Daemon::start(
        &exe,
        d,
        "ours",
        &["--config", ours_conf.to_str().unwrap(), "--allow-root"],
    );
    let _odk = start_opendkim(&odk_conf, &odk_sock);
    let odk_spec = format!("unix:{}", odk_sock.display());
    for (from, want) in [
        ("alice@example.com", "dkim=pass (1024-bit key)"),
        ("alice@example.org", "dkim=fail reason=\"key revoked\""),
    ] {
        let raw = format!(
            "From: Alice <{from}>\r\nTo: bob@example.net\r\nSubject: hi\r\n\
             Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n\r\nHello.\r\n"
        );
        let (signed, mods) = run(&ours.spec(), "127.0.0.1", raw.as_bytes()).await;
        assert_eq!(
            inserted(&mods, "DKIM-Signature").len(),
            1,
            "{from}: {mods:?}"
        );
        let (_, odk) = run(&odk_spec, "192.0.2.1", &signed).await;
        let odk_ar = inserted(&odk, "Authentication-Results");
        assert!(odk_ar[0].contains(want), "{from}: {odk_ar:?}");
        let (_, mine) = run(&ours.spec(), "192.0.2.1", &signed).await;
        assert_eq!(
            inserted(&mine, "Authentication-Results"),
            [odk_ar[0]
                .trim_end_matches(";\n\tdkim-atps=neutral")
                .to_owned()],
            "{from}"
        );
    }
}

/// `Domain *` signs mail of every domain, with the sender's domain as `d=`, in both (ours
/// signed nothing with it before).
#[tokio::test]
async fn domain_star_signs_every_domain_like_opendkim() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    genkey(d, &["-s", "any"]);
    let sock = d.join("opendkim.sock");
    let common = format!(
        "Mode s\nDomain *\nSelector any\nKeyFile {0}/any.private\nInternalHosts 127.0.0.1\n\
         AuthservID test.example\n",
        d.display()
    );
    let ours_conf = d.join("ours.conf");
    std::fs::write(&ours_conf, &common).unwrap();
    let odk_conf = d.join("opendkim.conf");
    std::fs::write(
        &odk_conf,
        format!(
            "{common}Socket local:{}\nBackground no\nRequireSafeKeys no\n",
            sock.display()
        ),
    )
    .unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_dkim-milter"));
    let ours = Daemon::start(
        &exe,
        d,
        "ours",
        &["--config", ours_conf.to_str().unwrap(), "--allow-root"],
    );
    let _odk = start_opendkim(&odk_conf, &sock);
    let raw = b"From: Alice <alice@Anything.Example>\r\nTo: bob@example.net\r\nSubject: hi\r\n\
Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n\r\nHello.\r\n";
    for spec in [ours.spec(), format!("unix:{}", sock.display())] {
        let (_, mods) = run(&spec, "127.0.0.1", raw).await;
        let sigs = inserted(&mods, "DKIM-Signature");
        assert_eq!(sigs.len(), 1, "{spec}: {mods:?}");
        let d_tag = sigs[0]
            .split(';')
            .map(str::trim)
            .find_map(|t| t.strip_prefix("d="))
            .map(str::to_ascii_lowercase);
        assert_eq!(
            d_tag.as_deref(),
            Some("anything.example"),
            "{spec}: {}",
            sigs[0]
        );
    }
}
