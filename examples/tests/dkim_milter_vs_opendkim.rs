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
//!   in both; `Domain *` signs every domain as itself in both;
//! - BodyLengthDB: a recipient listed as `user@domain` or `*@domain` gets the same `l=` from
//!   both, an unlisted one none; DontSignMailTo: a listed address stops signing in both;
//! - PeerList (`!.parent.example`, `child.parent.example`): `child.parent.example` is
//!   accepted at CONNECT by both, `host.child.parent.example` (the negation is met first)
//!   and `other.parent.example` are processed by both;
//! - MacroList `daemon_name=MTA-out`: an outside client whose MTA says `{daemon_name}`
//!   `MTA-out` (at CONNECT, as Postfix) is signed by both, another value verified by both;
//! - two From fields: StrictHeaders gives `dkim=permerror (bad message/signature format)`,
//!   RequiredHeaders OpenDKIM's `550 5.0.0 message does not have exactly one From field`
//!   (and its texts for Date and repeated fields) in both.
//!
//! Where we differ on purpose (asserted as differences):
//! - BodyLengthDB and DontSignMailTo look recipients up in opendkim.conf(5)'s "various forms
//!   as described under the SigningTable setting" (bare domain, `.parent`, `user@*`, `*`);
//!   OpenDKIM 2.11 asks BodyLengthDB only for `user@domain` and `*@domain`, DontSignMailTo
//!   only for the whole address, so `.mlm.example` and `*@nosign.example` act only in ours;
//! - a `.child.parent.example` peer entry also names `child.parent.example` itself in ours
//!   (kept for every peer list); in OpenDKIM it names only names below it;
//! - RequiredHeaders refuses mail without a From, and repeated Sender fields, in ours (RFC
//!   5322 §3.6's counts); OpenDKIM 2.11 lets both through.
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
use milter_proto::ConnAddr;
use milter_proto::Reply;
use milter_proto::SocketSpec;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use support::milters::Daemon;

const OPENDKIM: &str = "/usr/sbin/opendkim";

struct OpenDkim(Child);

impl Drop for OpenDkim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `ours` as dkim-milter's configuration and `theirs` (plus the socket and
/// foreground lines) as OpenDKIM's, in `d`, and starts both: our daemon, OpenDKIM, and
/// OpenDKIM's socket spec.
fn start_pair(d: &Path, ours: &str, theirs: &str) -> (Daemon, OpenDkim, String) {
    let ours_conf = d.join("ours.conf");
    std::fs::write(&ours_conf, ours).unwrap();
    let odk_conf = d.join("opendkim.conf");
    let odk_sock = d.join("opendkim.sock");
    std::fs::write(
        &odk_conf,
        format!(
            "{theirs}Socket local:{}\nBackground no\nRequireSafeKeys no\n",
            odk_sock.display()
        ),
    )
    .unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_dkim-milter"));
    let daemon = Daemon::start(
        &exe,
        d,
        "ours",
        &["--config", ours_conf.to_str().unwrap(), "--allow-root"],
    );
    let odk = start_opendkim(&odk_conf, &odk_sock);
    (daemon, odk, format!("unix:{}", odk_sock.display()))
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
    let ours = format!(
        "{common}KeyTable file:{0}/keytable\nSigningTable refile:{0}/signingtable\n\
         MultipleSignatures yes\n",
        d.display()
    );
    let theirs = format!(
        "{common}Domain example.com\nSelector rsa\nKeyFile {0}/rsa.private\n",
        d.display()
    );
    let (ours, opendkim, odk_spec) = start_pair(d, &ours, &theirs);
    Setup {
        odk_spec,
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
    let ours = format!(
        "{common}KeyTable file:{0}/keytable\nSigningTable refile:{0}/signingtable\n",
        d.display()
    );
    let (ours, _odk, odk_spec) = start_pair(d, &ours, &common);
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
    let common = format!(
        "Mode s\nDomain *\nSelector any\nKeyFile {0}/any.private\nInternalHosts 127.0.0.1\n\
         AuthservID test.example\n",
        d.display()
    );
    let (ours, _odk, odk_spec) = start_pair(d, &common, &common);
    let raw = b"From: Alice <alice@Anything.Example>\r\nTo: bob@example.net\r\nSubject: hi\r\n\
Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n\r\nHello.\r\n";
    for spec in [ours.spec(), odk_spec] {
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

/// One message through the milter at `spec` from the client `conn`, to `rcpts`.
async fn exchange(
    spec: &str,
    conn: &Connection,
    rcpts: &[&[u8]],
    raw: &[u8],
) -> milter_proto::client::Outcome {
    let spec: SocketSpec = spec.parse().unwrap();
    let mut c = Client::connect(&spec, ClientConfig::default())
        .await
        .unwrap();
    let at_connect = c.connection(conn).await.unwrap();
    let msg = Message::parse(b"<alice@example.com>", rcpts, raw);
    let mut out = c.message(&msg).await.unwrap();
    c.quit().await.unwrap();
    out.replies.splice(0..0, at_connect.replies);
    out
}

/// The client `host` at `ip`, with `macros` at CONNECT (where Postfix sends `{daemon_name}`).
fn client(
    host: &'static str,
    ip: &'static str,
    macros: &[(&'static str, &'static str)],
) -> Connection {
    let mut pairs = vec![(Bytes::from_static(b"j"), Bytes::from_static(b"mx.example"))];
    pairs.extend(macros.iter().map(|(n, v)| {
        (
            Bytes::from_static(n.as_bytes()),
            Bytes::from_static(v.as_bytes()),
        )
    }));
    Connection {
        hostname: Bytes::from_static(host.as_bytes()),
        addr: ConnAddr::Inet {
            port: 40000,
            address: Bytes::from_static(ip.as_bytes()),
        },
        helo: Some(Bytes::from_static(host.as_bytes())),
        macros: vec![(b'C', pairs)],
    }
}

/// The RSA `DKIM-Signature` among `mods` (ours adds an Ed25519 one too), if any.
fn rsa_signature(mods: &[Reply]) -> Option<String> {
    inserted(mods, "DKIM-Signature")
        .into_iter()
        .find(|s| s.contains("a=rsa-sha256"))
}

/// The tags of `sig` that do not depend on the signer's clock or randomness, unfolded.
fn stable_tags(sig: &str) -> Vec<(String, String)> {
    let unfolded: String = sig.chars().filter(|c| !c.is_whitespace()).collect();
    let mut tags: Vec<(String, String)> = unfolded
        .split(';')
        .filter_map(|t| t.split_once('='))
        .filter(|(k, _)| !matches!(*k, "b" | "t" | "x"))
        .map(|(k, v)| (k.to_owned(), v.to_ascii_lowercase()))
        .collect();
    tags.sort();
    tags
}

fn tag(sig: &str, name: &str) -> Option<String> {
    stable_tags(sig)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

const PLAIN: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n\
Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n\r\nHello.\r\nMore.\r\n";

/// BodyLengthDB: `boss@example.net` (the address) and `*@lists.example` (its domain) give
/// the same `l=` (and the same other stable tags) in both; an unlisted recipient no `l=` in
/// either. A parent-domain entry (`.mlm.example` for `x@a.mlm.example`) is a difference on
/// purpose: ours follows opendkim.conf(5) ("in various forms as described under the
/// SigningTable setting"), OpenDKIM 2.11 only asks for `user@domain` and `*@domain`.
#[tokio::test]
async fn body_length_db_adds_l_for_the_same_recipients_as_opendkim() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bodylength");
    std::fs::write(&db, "*@lists.example\n.mlm.example\nboss@example.net\n").unwrap();
    let s = setup_with(&format!("BodyLengthDB file:{}\n", db.display()));
    let local = client("localhost", "127.0.0.1", &[]);
    let len = PLAIN.len() - PLAIN.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    // (recipient, l= from ours, l= from OpenDKIM)
    for (rcpt, ours_l, odk_l) in [
        (&b"<dev@lists.example>"[..], true, true),
        (&b"<boss@example.net>"[..], true, true),
        (&b"<x@a.mlm.example>"[..], true, false),
        (&b"<x@example.org>"[..], false, false),
    ] {
        let rcpt_s = String::from_utf8_lossy(rcpt);
        let mut sigs = Vec::new();
        for (spec, want_l) in [(s.ours.spec(), ours_l), (s.odk_spec.clone(), odk_l)] {
            let out = exchange(&spec, &local, &[rcpt], PLAIN).await;
            let sig = rsa_signature(&out.modifications)
                .unwrap_or_else(|| panic!("{spec} {rcpt_s}: {out:?}"));
            assert_eq!(
                tag(&sig, "l"),
                want_l.then(|| len.to_string()),
                "{spec} {rcpt_s}: {sig}"
            );
            sigs.push(stable_tags(&sig));
        }
        if ours_l == odk_l {
            assert_eq!(sigs[0], sigs[1], "{rcpt_s}: ours, then OpenDKIM's");
        }
    }
}

/// DontSignMailTo: a message to a listed address (even among others) is signed by neither,
/// and gets the same Authentication-Results (if any) from both; to an unlisted recipient
/// both sign. A `*@domain` entry is a difference on purpose: ours looks recipients up as
/// BodyLengthDB does (opendkim.conf(5)), OpenDKIM 2.11 only asks for the whole address.
#[tokio::test]
async fn dont_sign_mail_to_stops_signing_like_opendkim() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dontsign");
    std::fs::write(&db, "*@nosign.example\nboss@example.net\n").unwrap();
    let s = setup_with(&format!("DontSignMailTo file:{}\n", db.display()));
    let local = client("localhost", "127.0.0.1", &[]);
    // (recipients, ours signs, OpenDKIM signs)
    for (rcpts, ours_signs, odk_signs) in [
        (vec![&b"<boss@example.net>"[..]], false, false),
        (
            vec![&b"<bob@example.org>"[..], &b"<boss@example.net>"[..]],
            false,
            false,
        ),
        (vec![&b"<bob@example.org>"[..]], true, true),
        (vec![&b"<x@nosign.example>"[..]], false, true),
    ] {
        let mut ars = Vec::new();
        for (spec, signed) in [(s.ours.spec(), ours_signs), (s.odk_spec.clone(), odk_signs)] {
            let out = exchange(&spec, &local, &rcpts, PLAIN).await;
            assert!(
                matches!(out.decision, Reply::Continue | Reply::Accept),
                "{spec}: {out:?}"
            );
            assert_eq!(
                rsa_signature(&out.modifications).is_some(),
                signed,
                "{spec} {rcpts:?}: {out:?}"
            );
            ars.push(inserted(&out.modifications, "Authentication-Results"));
        }
        assert_eq!(ars[0], ars[1], "{rcpts:?}: ours, then OpenDKIM's");
    }
}

/// PeerList: a listed client is accepted at CONNECT, without DKIM processing, by both; a
/// processed one gets the same Authentication-Results. With `!.parent.example` and
/// `child.parent.example`, `host.child.parent.example` is processed by both: OpenDKIM asks
/// for the host itself, then `.child.parent.example`, `.parent.example`, ... (each `!`
/// first), so the bare `child.parent.example` names only that host and the negation is met
/// first; `.child.parent.example` instead makes both skip it. On purpose, ours also lets a
/// `.child.parent.example` entry name the host `child.parent.example` itself (kept from
/// before, for every peer list: InternalHosts, ExternalIgnoreList, PeerList), which
/// OpenDKIM 2.11 does not: there the negation decides and the host is processed.
#[tokio::test]
async fn peer_list_skips_the_same_clients_as_opendkim() {
    let dir = tempfile::tempdir().unwrap();
    for (list, skipped) in [
        (
            "!.parent.example\nchild.parent.example\n",
            [(false, false), (true, true), (false, false)],
        ),
        (
            "!.parent.example\n.child.parent.example\n",
            [(true, true), (true, false), (false, false)],
        ),
    ] {
        let db = dir.path().join("peers");
        std::fs::write(&db, list).unwrap();
        let s = setup_with(&format!("PeerList file:{}\n", db.display()));
        let (signed, _) = run(&s.ours.spec(), "127.0.0.1", PLAIN).await;
        let hosts = [
            "host.child.parent.example",
            "child.parent.example",
            "other.parent.example",
        ];
        for (host, (ours_skip, odk_skip)) in hosts.into_iter().zip(skipped) {
            let conn = client(host, "192.0.2.1", &[]);
            let mut outs = Vec::new();
            for (spec, skip) in [(s.ours.spec(), ours_skip), (s.odk_spec.clone(), odk_skip)] {
                let out = exchange(&spec, &conn, &[b"<bob@example.org>"], &signed).await;
                let at_connect = out.replies.first() == Some(&(b'C', Reply::Accept));
                assert_eq!(at_connect, skip, "{list:?} {host} {spec}: {out:?}");
                let ar: Vec<String> = inserted(&out.modifications, "Authentication-Results")
                    .iter()
                    .map(|a| a.trim_end_matches(";\n\tdkim-atps=neutral").to_owned())
                    .collect();
                assert_eq!(ar.is_empty(), skip, "{list:?} {host} {spec}: {ar:?}");
                outs.push((out.decision.clone(), ar));
            }
            if ours_skip == odk_skip {
                assert_eq!(outs[0], outs[1], "{list:?} {host}: ours, then OpenDKIM's");
            }
        }
    }
}

/// MacroList `daemon_name=MTA-out`: a client outside InternalHosts whose connection carries
/// `{daemon_name}=MTA-out` is signed by both; with another value both verify and do not sign.
#[tokio::test]
async fn macro_list_marks_local_senders_like_opendkim() {
    let s = setup_with("MacroList daemon_name=MTA-out\n");
    for (value, signs) in [("MTA-out", true), ("MTA-in", false)] {
        let conn = client("client.example", "192.0.2.1", &[("{daemon_name}", value)]);
        let mut outs = Vec::new();
        for spec in [s.ours.spec(), s.odk_spec.clone()] {
            let out = exchange(&spec, &conn, &[b"<bob@example.org>"], PLAIN).await;
            let sig = rsa_signature(&out.modifications);
            assert_eq!(sig.is_some(), signs, "{spec} {value}: {out:?}");
            outs.push((
                sig.map(|s| stable_tags(&s)),
                inserted(&out.modifications, "Authentication-Results"),
            ));
        }
        assert_eq!(outs[0], outs[1], "{value}: ours, then OpenDKIM's");
    }
}

/// Two From fields under StrictHeaders: both accept without signing or verifying and
/// write `dkim=permerror (bad message/signature format)`. Under RequiredHeaders both
/// refuse at end of headers with the same text (ours said `550 5.7.0 RFC5322 header
/// requirement error` for every problem before); so for no Date and for two Subject
/// fields. Differences on purpose: ours also refuses mail without a From and repeated
/// Sender fields (RFC 5322 §3.6 counts), which OpenDKIM 2.11's RequiredHeaders lets through.
#[tokio::test]
async fn two_from_fields_under_strict_and_required_headers_like_opendkim() {
    let date = "Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n";
    let two_from = format!(
        "From: Alice <alice@example.com>\r\nFrom: Eve <eve@example.com>\r\n\
         To: bob@example.org\r\nSubject: hi\r\n{date}\r\nHello.\r\n"
    );
    let hosts = [("localhost", "127.0.0.1"), ("client.example", "192.0.2.1")];
    let s = setup_with("StrictHeaders yes\n");
    for (host, ip) in hosts {
        for spec in [s.ours.spec(), s.odk_spec.clone()] {
            let out = exchange(
                &spec,
                &client(host, ip, &[]),
                &[b"<bob@example.org>"],
                two_from.as_bytes(),
            )
            .await;
            assert_eq!(out.decision, Reply::Accept, "{spec} {ip}: {out:?}");
            assert!(
                inserted(&out.modifications, "DKIM-Signature").is_empty(),
                "{spec} {ip}"
            );
            assert_eq!(
                inserted(&out.modifications, "Authentication-Results"),
                ["test.example; dkim=permerror (bad message/signature format)"],
                "{spec} {ip}"
            );
        }
    }
    let s = setup_with("RequiredHeaders yes\n");
    let no_from = format!("To: bob@example.org\r\n{date}\r\nHello.\r\n");
    let two_senders = format!(
        "From: a@example.com\r\nSender: a@example.com\r\nSender: b@example.com\r\n{date}\r\nx\r\n"
    );
    let refused = |text: &'static str| Some(Reply::ReplyCode(Bytes::from_static(text.as_bytes())));
    // (message, ours's reply at end of headers, OpenDKIM's; None: accepted at end of message)
    let cases = [
        (
            two_from.clone(),
            refused("550 5.0.0 message does not have exactly one From field"),
            refused("550 5.0.0 message does not have exactly one From field"),
        ),
        (
            "From: a@example.com\r\nTo: b@example.org\r\n\r\nx\r\n".to_owned(),
            refused("550 5.0.0 message does not have exactly one Date field"),
            refused("550 5.0.0 message does not have exactly one Date field"),
        ),
        (
            format!("From: a@example.com\r\n{date}Subject: 1\r\nSubject: 2\r\n\r\nx\r\n"),
            refused("550 5.0.0 message has multiple Subject fields"),
            refused("550 5.0.0 message has multiple Subject fields"),
        ),
        (
            no_from,
            refused("550 5.0.0 message does not have exactly one From field"),
            None,
        ),
        (
            two_senders,
            refused("550 5.0.0 message has multiple Sender fields"),
            None,
        ),
    ];
    for (raw, ours, odk) in &cases {
        for (host, ip) in hosts {
            for (spec, want) in [(s.ours.spec(), ours), (s.odk_spec.clone(), odk)] {
                let out = exchange(
                    &spec,
                    &client(host, ip, &[]),
                    &[b"<bob@example.org>"],
                    raw.as_bytes(),
                )
                .await;
                match want {
                    Some(reply) => {
                        assert_eq!(&out.decision, reply, "{spec} {ip}: {raw}");
                        assert_eq!(
                            out.replies.last().map(|r| r.0),
                            Some(b'N'),
                            "{spec}: {out:?}"
                        );
                    }
                    None => {
                        assert_eq!(out.decision, Reply::Accept, "{spec} {ip}: {raw}");
                        assert_eq!(
                            out.replies.last().map(|r| r.0),
                            Some(b'E'),
                            "{spec}: {out:?}"
                        );
                    }
                }
            }
        }
    }
}
