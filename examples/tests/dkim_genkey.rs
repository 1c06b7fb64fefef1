//! `dkim-milter genkey` against Debian's `opendkim-genkey` 2.11: for the same options the
//! `.txt` files are identical except for the key material (same owner name, tags in the same
//! order, `p=` split into the same 250-character pieces, same comment), both `.private`
//! files are PKCS#8 PEM with mode 600, and OpenDKIM (`opendkim -t`) signs with our keys
//! (RSA and Ed25519) and verifies the result against our records; keys made by `openssl`
//! (PKCS#1 as OpenSSL 1.x's opendkim-genkey wrote, PKCS#8, Ed25519 PKCS#8 v1) load.
//!
//! Needs `opendkim-genkey` (Debian package opendkim-tools), `opendkim` and `openssl`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");

/// The `.txt` with every base64 character of `p=` replaced, so layouts compare.
fn shape(txt: &str) -> String {
    let mut out = String::new();
    let mut in_p = false;
    for (i, piece) in txt.split('"').enumerate() {
        if i > 0 {
            out.push('"');
        }
        let quoted = i % 2 == 1;
        if quoted && piece.starts_with("p=") {
            in_p = true;
            out.push_str("p=");
            out.extend(piece[2..].chars().map(|_| 'K'));
        } else if quoted && in_p {
            out.extend(piece.chars().map(|_| 'K'));
        } else {
            out.push_str(piece);
        }
    }
    out
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn txt_layout_equals_opendkim_genkey() {
    assert!(
        Path::new("/usr/sbin/opendkim-genkey").exists(),
        "opendkim-genkey missing: install opendkim-tools"
    );
    let cases: [&[&str]; 4] = [
        &[],
        &["-a"],
        &["-r", "-t"],
        &["-a", "-r", "-S", "-t", "-n", "hello world"],
    ];
    for extra in cases {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        run(Command::new("opendkim-genkey")
            .args(["-s", "sel", "-d", "example.com", "-D"])
            .arg(theirs.path())
            .args(extra));
        run(Command::new(BIN)
            .args(["genkey", "-s", "sel", "-d", "example.com", "-D"])
            .arg(ours.path())
            .args(extra));
        let t = std::fs::read_to_string(theirs.path().join("sel.txt")).unwrap();
        let o = std::fs::read_to_string(ours.path().join("sel.txt")).unwrap();
        assert_eq!(
            shape(&o),
            shape(&t),
            "options {extra:?}\nours:\n{o}\ntheirs:\n{t}"
        );
        for dir in [&theirs, &ours] {
            let p = dir.path().join("sel.private");
            let pem = std::fs::read_to_string(&p).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
}

#[test]
fn opendkim_signs_with_our_keys_and_verifies_against_our_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let msg = d.join("m.eml");
    std::fs::write(
        &msg,
        "From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n",
    )
    .unwrap();
    for (sel, kind, alg) in [
        ("r", "rsa", "rsa-sha256"),
        ("e", "ed25519", "ed25519-sha256"),
    ] {
        run(Command::new(BIN)
            .args([
                "genkey",
                "-s",
                sel,
                "-d",
                "example.com",
                "--type",
                kind,
                "-D",
            ])
            .arg(d));
        let txt = std::fs::read_to_string(d.join(format!("{sel}.txt"))).unwrap();
        let record: String = txt.split('"').skip(1).step_by(2).collect();
        std::fs::write(
            d.join("keys"),
            format!("{sel}._domainkey.example.com {record}\n"),
        )
        .unwrap();
        let sign = d.join("s.conf");
        std::fs::write(
            &sign,
            format!(
                "Mode s\nDomain example.com\nSelector {sel}\nKeyFile {}\nSignatureAlgorithm {alg}\n\
                 Canonicalization relaxed/relaxed\nRequireSafeKeys no\n",
                d.join(format!("{sel}.private")).display()
            ),
        )
        .unwrap();
        let out = Command::new("/usr/sbin/opendkim")
            .arg("-t")
            .arg(&msg)
            .arg("-x")
            .arg(&sign)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let sig = text
            .split_once("DKIM-Signature:")
            .map(|(_, s)| s.trim_end().replace('\n', "\r\n"))
            .unwrap_or_else(|| {
                panic!(
                    "{kind}: OpenDKIM did not sign with our key: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let signed = d.join("signed.eml");
        let mut body = format!("DKIM-Signature:{sig}\r\n").into_bytes();
        body.extend_from_slice(&std::fs::read(&msg).unwrap());
        std::fs::write(&signed, body).unwrap();
        let verify = d.join("v.conf");
        std::fs::write(
            &verify,
            format!("Mode v\nTestPublicKeys {}\n", d.join("keys").display()),
        )
        .unwrap();
        let out = Command::new("/usr/sbin/opendkim")
            .arg("-t")
            .arg(&signed)
            .arg("-x")
            .arg(&verify)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(log.contains("succeeded"), "{kind}: {log}");
    }
}

#[test]
fn keys_from_openssl_are_accepted_pkcs1_pkcs8_and_ed25519() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, &[&str]); 3] = [
        ("pkcs1", &["genrsa", "-traditional", "2048"]),
        (
            "pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        ),
        ("ed25519", &["genpkey", "-algorithm", "ed25519"]),
    ];
    for (name, args) in cases {
        let key = d.join(format!("{name}.private"));
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl (Debian package openssl)");
        assert!(out.status.success(), "openssl {args:?}");
        std::fs::write(&key, &out.stdout).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .to_owned();
        let conf = d.join("c.conf");
        std::fs::write(
            &conf,
            format!(
                "Domain example.com\nSelector s\nKeyFile {}\nSocket inet:8891@localhost\n",
                key.display()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["--check-config", "--config"])
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} ({first}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
