//! ARC against dkimpy (PyPI `dkimpy`, its `arc_sign`/`arc_verify`; an implementation
//! independent of ours), offline: keys come from a zone file on dkimpy's side and from a
//! `MemoryResolver` on ours.
//!
//! - Chains sealed by dkimpy for i = 1, 2, 3 validate as `pass` with our code; tampered
//!   ones (body changed, a seal changed, a set missing, instances out of order) as `fail`,
//!   and dkimpy agrees on each.
//! - Our seals validate with dkimpy for i = 1, 2, 3, made by the library call and by
//!   `mailstackd`'s pipeline (`ARCSeal` on, the message as Postfix would deliver it), and
//!   mixed chains (ours on dkimpy's, dkimpy's on ours) validate on both sides.
//! - A DMARC-failing message forwarded through a dkimpy sealer listed in `DomainWhitelist`
//!   is accepted with `trusted_forwarder`; through an unlisted sealer it is rejected.
//!
//! Needs `/opt/dkimpy/bin/python3` with dkimpy and authres (`.ci/run` installs them:
//! `python3 -m venv /opt/dkimpy && /opt/dkimpy/bin/pip install dkimpy authres`); fails
//! with that instruction without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use mailstack::arc::{self, ArcResult, ArcSealer};
use mailstack::auth_results::MethodResult;
use mailstack::dkim::Header;
use mailstack::dkim::PrivateKey;
use mailstack::dmarc::{DmarcConfig, DmarcFilter, MessageFacts, PolicyOverride};
use mailstack::dns::{MemoryRecord, MemoryResolver};
use mailstack::filter::{
    Action, AuthFacts, ClientAddr, Connection, Envelope, Modification, OfflineOutcome,
    apply_to_message, run_offline,
};
use mailstack::stack::StackConfig;

const PYTHON: &str = "/opt/dkimpy/bin/python3";
const NOW: u64 = 1_700_000_000;
const SELECTOR: &str = "arc";
const SEALERS: &[&str] = &[
    "fwd1.example",
    "fwd2.example",
    "fwd3.example",
    "list.example",
];

const MSG: &str = "From: Alice <alice@origin.example>\r\nTo: list@list.example\r\n\
Subject: hello\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@origin.example>\r\n\
\r\nHello there.\r\n";

struct Setup {
    _dir: tempfile::TempDir,
    key_file: PathBuf,
    zone_file: PathBuf,
    key: Arc<PrivateKey>,
    resolver: MemoryResolver,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/arc_dkimpy.py")
}

fn setup() -> Setup {
    let ok = Command::new(PYTHON)
        .args(["-c", "import dkim, authres"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "dkimpy is missing: run `python3 -m venv /opt/dkimpy && /opt/dkimpy/bin/pip install \
         dkimpy authres` (as .ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("arc.pem");
    // PKCS#1 ("traditional"): the form dkimpy reads; ours reads it too.
    let st = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key_file)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl genrsa failed");
    let key = Arc::new(PrivateKey::parse(&std::fs::read(&key_file).unwrap()).unwrap());
    let record = format!("v=DKIM1; k=rsa; p={}", key.public_record_value());
    let mut resolver = MemoryResolver::new();
    let mut zone = String::new();
    for d in SEALERS {
        let name = format!("{SELECTOR}._domainkey.{d}");
        resolver.add(&name, MemoryRecord::Txt(record.clone().into_bytes()));
        zone.push_str(&format!("{name} {record}\n"));
    }
    // DMARC for the author domain: p=reject, so forwarding breaks it.
    resolver.add(
        "_dmarc.origin.example",
        MemoryRecord::Txt(b"v=DMARC1; p=reject".to_vec()),
    );
    let zone_file = dir.path().join("zone");
    std::fs::write(&zone_file, zone).unwrap();
    Setup {
        _dir: dir,
        key_file,
        zone_file,
        key,
        resolver,
    }
}

fn python(args: &[&str], input: &[u8]) -> (bool, Vec<u8>) {
    let mut child = Command::new(PYTHON)
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        eprintln!("dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), out.stdout)
}

impl Setup {
    /// dkimpy seals `msg` as `domain`, after the `Authentication-Results` its `arc_sign`
    /// reads (`arc=<chain>` for i > 1, as a validating hop writes it).
    fn dkimpy_seal(&self, msg: &[u8], domain: &str, chain: Option<&str>) -> Vec<u8> {
        let srv = format!("mx.{domain}");
        let arc = chain.map_or(String::new(), |c| format!(" arc={c};"));
        let mut input = format!(
            "Authentication-Results: {srv};{arc} spf=pass smtp.mailfrom=origin.example\r\n"
        )
        .into_bytes();
        input.extend_from_slice(msg);
        let (ok, out) = python(
            &[
                "sign",
                self.key_file.to_str().unwrap(),
                domain,
                SELECTOR,
                &srv,
            ],
            &input,
        );
        assert!(ok, "dkimpy could not seal");
        out
    }

    /// dkimpy's chain result word and reason.
    fn dkimpy_verify(&self, msg: &[u8]) -> String {
        let (ok, out) = python(&["verify", self.zone_file.to_str().unwrap()], msg);
        assert!(ok, "dkimpy verify crashed");
        String::from_utf8_lossy(&out).trim().to_owned()
    }

    async fn ours(&self, msg: &[u8]) -> arc::ArcOutcome {
        arc::verify_message(msg, &self.resolver).await
    }

    async fn our_seal(&self, msg: &[u8], domain: &str) -> Vec<u8> {
        let sealer = ArcSealer::new(domain, SELECTOR, self.key.clone()).unwrap();
        let spf = MethodResult::new("spf", "pass").property("smtp.mailfrom", "origin.example");
        arc::seal_message(
            &sealer,
            msg,
            &self.resolver,
            &format!("mx.{domain}"),
            &[spf],
            NOW,
        )
        .await
        .unwrap()
    }
}

fn replace_once(msg: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(msg.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in the message:\n{text}");
    text.replacen(from, to, 1).into_bytes()
}

/// The message without any field of instance `i` (dkimpy writes `i=N;` right after the
/// colon for all three fields).
fn drop_set(msg: &[u8], i: u32) -> Vec<u8> {
    let text = String::from_utf8(msg.to_vec()).unwrap();
    let mut out = String::new();
    let mut dropping = false;
    for line in text.split_inclusive("\r\n") {
        if !line.starts_with([' ', '\t']) {
            dropping = line.starts_with("ARC-") && line.contains(&format!(": i={i};"));
        }
        if !dropping {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

#[tokio::test]
async fn dkimpy_chains_validate_with_our_code_and_tampering_fails() {
    let s = setup();
    let one = s.dkimpy_seal(MSG.as_bytes(), "fwd1.example", None);
    let two = s.dkimpy_seal(&one, "fwd2.example", Some("pass"));
    let three = s.dkimpy_seal(&two, "fwd3.example", Some("pass"));
    for (n, msg) in [&one, &two, &three].iter().enumerate() {
        let o = s.ours(msg).await;
        assert_eq!(o.result, ArcResult::Pass, "i={}: {o:?}", n + 1);
        assert_eq!(o.instances(), n as u32 + 1);
        assert_eq!(o.oldest_pass, Some(0));
        assert!(
            s.dkimpy_verify(msg).starts_with("pass"),
            "dkimpy itself, i={}",
            n + 1
        );
    }
    let text = String::from_utf8_lossy(&three).into_owned();
    let seal2 = text
        .split("\r\nARC-Seal: ")
        .find(|f| f.starts_with("i=2;"))
        .expect("dkimpy's ARC-Seal i=2");
    // dkimpy folds `b=` onto its own line: change one character of the signature.
    let b_at = seal2.find("b=").unwrap() + 10;
    let flipped = if &seal2[b_at..=b_at] == "A" { "B" } else { "A" };
    let tampered_seal = format!("{}{flipped}{}", &seal2[..b_at], &seal2[b_at + 1..]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "body changed",
            replace_once(&three, "Hello there.", "Hello therE."),
        ),
        ("seal changed", replace_once(&three, seal2, &tampered_seal)),
        ("set missing", drop_set(&three, 2)),
        (
            "instances out of order",
            String::from_utf8(three.clone())
                .unwrap()
                .replace(": i=1;", ": i=9;")
                .replace(": i=2;", ": i=1;")
                .replace(": i=9;", ": i=2;")
                .into_bytes(),
        ),
    ];
    for (what, msg) in &cases {
        let o = s.ours(msg).await;
        assert_eq!(o.result, ArcResult::Fail, "{what}: {o:?}");
        assert!(s.dkimpy_verify(msg).starts_with("fail"), "dkimpy on {what}");
        eprintln!("{what}: fail ({})", o.reason.unwrap_or_default());
    }
}

/// `mailstackd` (the pipeline its `mailstackd.toml` builds, `ARCSeal` on) sealing `msg` as
/// `domain`: the message as Postfix would deliver it.
async fn mailstackd_seal(s: &Setup, msg: &[u8], domain: &str) -> Vec<u8> {
    let text = format!(
        "[mailstackd]\nauthserv_id = \"mx.{domain}\"\n[spf]\nenabled = false\n\
         [dmarc]\noptions = {{ ARCSeal = true, ARCSealDomain = \"{domain}\", \
         ARCSealSelector = \"{SELECTOR}\", ARCSealKeyFile = \"{}\" }}\n",
        s.key_file.display()
    );
    let cfg = StackConfig::parse(Path::new("mailstackd.toml"), &text).unwrap();
    let stack = cfg
        .build(Arc::new(s.resolver.clone()), None, "host")
        .unwrap();
    let conn = Connection::new("relay", ClientAddr::Ip("198.51.100.9".parse().unwrap()));
    let env = Envelope::new("<bounces@list.example>");
    let OfflineOutcome::Verdict(v) = run_offline(&stack, &conn, &env, msg).await else {
        panic!("mailstackd did not reach end of message");
    };
    assert_eq!(v.action, Action::Accept);
    apply_to_message(msg, &v.modifications)
}

#[tokio::test]
async fn mailstackd_seals_validate_with_dkimpy_for_one_two_three() {
    let s = setup();
    let mut msg = MSG.as_bytes().to_vec();
    for (n, d) in ["fwd1.example", "fwd2.example", "fwd3.example"]
        .iter()
        .enumerate()
    {
        msg = mailstackd_seal(&s, &msg, d).await;
        let verdict = s.dkimpy_verify(&msg);
        assert!(
            verdict.starts_with("pass"),
            "dkimpy on mailstackd's i={}: {verdict}\n{}",
            n + 1,
            String::from_utf8_lossy(&msg)
        );
    }
    let text = String::from_utf8_lossy(&msg);
    assert!(
        text.contains("ARC-Seal: i=3; a=rsa-sha256; cv=pass; d=fwd3.example;"),
        "{text}"
    );
}

#[tokio::test]
async fn our_seals_validate_with_dkimpy_for_one_two_three() {
    let s = setup();
    let mut msg = MSG.as_bytes().to_vec();
    for (n, d) in ["fwd1.example", "fwd2.example", "fwd3.example"]
        .iter()
        .enumerate()
    {
        msg = s.our_seal(&msg, d).await;
        let verdict = s.dkimpy_verify(&msg);
        assert!(
            verdict.starts_with("pass"),
            "dkimpy on our i={}: {verdict}",
            n + 1
        );
    }
    // Mixed: ours on top of dkimpy's, then dkimpy's on top of ours.
    let one = s.dkimpy_seal(MSG.as_bytes(), "fwd1.example", None);
    let two = s.our_seal(&one, "fwd2.example").await;
    assert!(
        s.dkimpy_verify(&two).starts_with("pass"),
        "dkimpy on ours over dkimpy's"
    );
    let three = s.dkimpy_seal(&two, "fwd3.example", Some("pass"));
    assert!(s.dkimpy_verify(&three).starts_with("pass"));
    let o = s.ours(&three).await;
    assert_eq!((o.result, o.instances()), (ArcResult::Pass, 3), "{o:?}");
}

/// What DMARC does with `msg` arriving from a forwarder (SPF none for its envelope, no
/// DKIM signature), with `DomainWhitelist` set to `trusted`: the action `dmarc-milter`'s
/// filter takes over the whole message (ARC validated inside it), its
/// `Authentication-Results` fields, and the override reasons of the same evaluation.
async fn dmarc_on(s: &Setup, msg: &[u8], trusted: &str) -> (Action, String, Vec<PolicyOverride>) {
    let text = format!(
        "AuthservID mx.dest.example\nRejectFailures yes\nSPFSelfValidate yes\n\
         DomainWhitelist {trusted}\n"
    );
    let cfg = DmarcConfig::parse(Path::new("opendmarc.conf"), &text).unwrap();
    let filter = DmarcFilter::new(cfg, Arc::new(s.resolver.clone()));
    let conn = Connection::new("relay", ClientAddr::Ip("198.51.100.9".parse().unwrap()));
    let env = Envelope::new("<bounces@list.example>");
    let OfflineOutcome::Verdict(v) = run_offline(&filter, &conn, &env, msg).await else {
        panic!("DMARC did not reach end of message");
    };
    let fields: Vec<String> = v
        .modifications
        .iter()
        .filter_map(|m| match m {
            Modification::AuthResults(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    // The same evaluation through the library call, for the outcome's override reasons.
    let mut facts = AuthFacts::default();
    facts.arc = Some(arc::verify_message(msg, &s.resolver).await);
    let (headers, _) = Header::split_message(msg);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|h| {
            let v = String::from_utf8_lossy(&h.value).replace("\r\n", "\n");
            (h.name.clone(), v.trim_start().to_owned())
        })
        .collect();
    let outcome = filter
        .check(&MessageFacts {
            client_ip: conn.ip(),
            envelope_from: "bounces@list.example",
            helo: "relay",
            rcpts: &[],
            headers: &headers,
            dkim_results: None,
            raw_message: None,
            job_id: None,
            mta_name: None,
            prior: Some(&facts),
        })
        .await;
    assert_eq!(
        outcome.verdict.action, v.action,
        "filter and library call agree"
    );
    (v.action, fields.join("\n"), outcome.overrides.clone())
}

#[tokio::test]
async fn a_trusted_dkimpy_sealer_overrides_a_dmarc_failure_an_untrusted_one_does_not() {
    let s = setup();
    let sealed = s.dkimpy_seal(MSG.as_bytes(), "list.example", None);
    let (action, ar, overrides) = dmarc_on(&s, &sealed, "list.example").await;
    assert_eq!(action, Action::Accept, "{ar}");
    assert_eq!(overrides, [PolicyOverride::TrustedForwarder]);
    assert!(ar.contains("arc=pass (i=1) header.oldest-pass=0"), "{ar}");
    assert!(ar.contains("dmarc=fail (p=reject dis=none)"), "{ar}");
    let (action, ar, overrides) = dmarc_on(&s, &sealed, "other.example").await;
    assert!(matches!(action, Action::Reject(Some(_))), "{action:?} {ar}");
    assert!(overrides.is_empty());
    // A broken chain by the trusted sealer does not help either.
    let broken = replace_once(&sealed, "Hello there.", "Hello therE.");
    let (action, _, overrides) = dmarc_on(&s, &broken, "list.example").await;
    assert!(matches!(action, Action::Reject(Some(_))), "{action:?}");
    assert!(overrides.is_empty());
}
