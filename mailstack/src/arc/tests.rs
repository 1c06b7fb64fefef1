//! Seal-and-validate round trips on our own code. dkimpy, an independent implementation,
//! checks both directions in `examples/tests/arc_dkimpy.rs`.

use std::sync::{Arc, OnceLock};

use super::*;
use crate::dkim::canon::{BodyHasher, Header};
use crate::dkim::config::Canon;
use crate::dkim::key::{GenKeyOptions, PrivateKey, generate};
use crate::dns::{MemoryRecord, MemoryResolver};

const NOW: u64 = 1_700_000_000;

fn key() -> Arc<PrivateKey> {
    static PEM: OnceLock<String> = OnceLock::new();
    let pem = PEM.get_or_init(|| generate(&GenKeyOptions::default()).unwrap().private_pem);
    Arc::new(PrivateKey::parse(pem.as_bytes()).unwrap())
}

fn zone(domains: &[&str]) -> MemoryResolver {
    let p = key().public_record_value();
    let mut z = MemoryResolver::new();
    for d in domains {
        z.add(
            &format!("arc._domainkey.{d}"),
            MemoryRecord::Txt(format!("v=DKIM1; k=rsa; p={p}").into_bytes()),
        );
    }
    z
}

const MSG: &[u8] = b"From: Alice <alice@origin.example>\r\nTo: list@lists.example\r\n\
Subject: hello\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@origin.example>\r\n\
\r\nHello there.\r\n  \r\n\r\n";

async fn validate(msg: &[u8], z: &MemoryResolver) -> ArcOutcome {
    let (headers, at) = Header::split_message(msg);
    let mut v = ArcVerifier::new(&headers);
    v.body(&msg[at..]);
    v.finish(&headers, z).await
}

/// Validates `msg`, seals it as `domain`, and returns the message with the new set on top.
async fn seal_as(msg: &[u8], domain: &str, z: &MemoryResolver) -> Vec<u8> {
    let chain = validate(msg, z).await;
    seal_with(msg, domain, &chain)
}

/// Seals `msg` as `domain` for a chain validated before (a hop validates what it received,
/// may change the message, then seals).
fn seal_with(msg: &[u8], domain: &str, chain: &ArcOutcome) -> Vec<u8> {
    let (headers, at) = Header::split_message(msg);
    let mut body = BodyHasher::new(Canon::Relaxed, &aws_lc_rs::digest::SHA256, None);
    body.update(&msg[at..]);
    let sealer = ArcSealer::new(domain, "arc", key()).unwrap();
    let ar = format!(
        "mx.{domain};\n\tspf=pass smtp.mailfrom=origin.example;\n\t{}",
        {
            let c = chain.clause(None);
            format!("arc={}", c.result)
        }
    );
    let set = sealer
        .seal(&headers, &body.finish().0, chain, &ar, NOW)
        .unwrap();
    let mut out = Vec::new();
    for (name, value) in set.fields().iter().rev() {
        out.extend_from_slice(format!("{name}: {}\r\n", value.replace('\n', "\r\n")).as_bytes());
    }
    out.extend_from_slice(msg);
    out
}

async fn three_hops(z: &MemoryResolver) -> Vec<u8> {
    let one = seal_as(MSG, "fwd1.example", z).await;
    let two = seal_as(&one, "fwd2.example", z).await;
    seal_as(&two, "fwd3.example", z).await
}

fn domains() -> MemoryResolver {
    zone(&["fwd1.example", "fwd2.example", "fwd3.example"])
}

#[tokio::test]
async fn no_arc_fields_is_none() {
    let o = validate(MSG, &domains()).await;
    assert_eq!(o, ArcOutcome::none());
    assert_eq!(o.clause(None).result, "none");
}

#[tokio::test]
async fn our_seals_validate_for_one_two_and_three_sets() {
    let z = domains();
    let mut msg = MSG.to_vec();
    for (n, d) in ["fwd1.example", "fwd2.example", "fwd3.example"]
        .iter()
        .enumerate()
    {
        msg = seal_as(&msg, d, &z).await;
        let o = validate(&msg, &z).await;
        assert_eq!(o.result, ArcResult::Pass, "i={}: {:?}", n + 1, o.reason);
        assert_eq!(o.oldest_pass, Some(0));
        assert_eq!(o.instances(), n as u32 + 1);
        assert_eq!(o.newest_sealer(), Some(*d));
    }
    let text = String::from_utf8_lossy(&msg);
    assert!(
        text.contains("ARC-Seal: i=3; a=rsa-sha256; cv=pass; d=fwd3.example;"),
        "{text}"
    );
    assert!(
        text.contains("ARC-Seal: i=1; a=rsa-sha256; cv=none; d=fwd1.example;"),
        "{text}"
    );
    assert!(
        text.contains("ARC-Authentication-Results: i=2; mx.fwd2.example;"),
        "{text}"
    );
    // The AAR of i=2 carries what fwd2 found of i=1: a passing chain.
    assert!(text.contains("arc=pass"), "{text}");
    let clause = validate(&msg, &z)
        .await
        .clause(Some("192.0.2.7".parse().unwrap()));
    assert_eq!(clause.comment.as_deref(), Some("i=3"));
    assert_eq!(
        clause.properties,
        [
            ("header.oldest-pass".to_owned(), "0".to_owned()),
            ("smtp.remote-ip".to_owned(), "192.0.2.7".to_owned())
        ]
    );
}

fn replace_once(msg: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(msg.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in message");
    text.replacen(from, to, 1).into_bytes()
}

/// Drops every field of instance `i` (the line and its folded continuation lines).
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
async fn tampered_chains_fail() {
    let z = domains();
    let msg = three_hops(&z).await;
    let fail = |o: ArcOutcome| {
        assert_eq!(o.result, ArcResult::Fail, "{o:?}");
        o.reason.unwrap()
    };
    // Body changed after the last seal: the newest AMS fails.
    let body = replace_once(&msg, "Hello there.", "Hello therE.");
    assert_eq!(fail(validate(&body, &z).await), "body hash did not verify");
    // A seal changed (i=2's cv and its timestamp: the signature no longer covers them).
    let seal = replace_once(
        &msg,
        "cv=pass; d=fwd2.example;\r\n\ts=arc; t=1700000000;",
        "cv=pass; d=fwd2.example;\r\n\ts=arc; t=1700000001;",
    );
    assert_eq!(fail(validate(&seal, &z).await), "ARC-Seal did not verify");
    // A set missing.
    assert_eq!(
        fail(validate(&drop_set(&msg, 2), &z).await),
        "incomplete ARC set"
    );
    // Without the newest set, the two older ones are still a whole chain: the checks are
    // per set, nothing in i=2 refers to i=3.
    assert_eq!(
        validate(&drop_set(&msg, 3), &z).await.result,
        ArcResult::Pass
    );
    // Instances out of order: i=2 renumbered to 4 (a gap, and i=4's seal changed).
    let renumbered = String::from_utf8(msg.clone())
        .unwrap()
        .replace(": i=2;", ": i=4;")
        .into_bytes();
    assert_eq!(fail(validate(&renumbered, &z).await), "incomplete ARC set");
    // Two sets swapped in number (1 <-> 2): cv order breaks.
    let swapped = String::from_utf8(msg.clone())
        .unwrap()
        .replace(": i=1;", ": i=9;")
        .replace(": i=2;", ": i=1;")
        .replace(": i=9;", ": i=2;")
        .into_bytes();
    assert_eq!(
        fail(validate(&swapped, &z).await),
        "ARC-Seal cv= out of order"
    );
    // A key missing from DNS.
    let o = validate(&msg, &zone(&["fwd1.example", "fwd3.example"])).await;
    assert_eq!(fail(o), "key not found in DNS");
}

#[tokio::test]
async fn a_hop_that_changes_the_message_moves_oldest_pass() {
    let z = domains();
    let one = seal_as(MSG, "fwd1.example", &z).await;
    // fwd2 validates, rewrites the subject (as a mailing list does), then seals.
    let chain = validate(&one, &z).await;
    assert_eq!(chain.result, ArcResult::Pass);
    let changed = replace_once(&one, "Subject: hello", "Subject: [list] hello");
    let two = seal_with(&changed, "fwd2.example", &chain);
    let o = validate(&two, &z).await;
    assert_eq!(o.result, ArcResult::Pass, "{o:?}");
    assert_eq!(o.oldest_pass, Some(2));
    // Trust goes by the newest sealer.
    assert!(o.trusted_pass(&["fwd2.example".into()]));
    assert!(!o.trusted_pass(&["fwd1.example".into()]));
}

#[tokio::test]
async fn failed_chains_are_not_sealed_and_ed25519_keys_refused() {
    let z = domains();
    let msg = three_hops(&z).await;
    let body = replace_once(&msg, "Hello there.", "Hello therE.");
    let chain = validate(&body, &z).await;
    let (headers, _) = Header::split_message(&body);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"");
    let sealer = ArcSealer::new("fwd4.example", "arc", key()).unwrap();
    let e = sealer
        .seal(&headers, &digest, &chain, "mx; arc=fail", NOW)
        .unwrap_err();
    assert!(
        matches!(e, SealError::ChainFailed("body hash did not verify")),
        "{e}"
    );
    let ed = generate(&GenKeyOptions {
        key_type: crate::dkim::key::KeyType::Ed25519,
        ..GenKeyOptions::default()
    })
    .unwrap();
    let ed = Arc::new(PrivateKey::parse(ed.private_pem.as_bytes()).unwrap());
    assert!(matches!(
        ArcSealer::new("a.example", "s", ed),
        Err(SealError::KeyType)
    ));
}

#[tokio::test]
async fn fifty_sets_at_most() {
    // 50 seals validate; a 51st is refused by the sealer and by the validator.
    let z = zone(&["fwd.example"]);
    let mut msg = MSG.to_vec();
    for _ in 0..50 {
        msg = seal_as(&msg, "fwd.example", &z).await;
    }
    let o = validate(&msg, &z).await;
    assert_eq!((o.result, o.instances()), (ArcResult::Pass, 50), "{o:?}");
    let (headers, _) = Header::split_message(&msg);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"");
    let sealer = ArcSealer::new("fwd.example", "arc", key()).unwrap();
    let e = sealer
        .seal(&headers, &digest, &o, "mx; arc=pass", NOW)
        .unwrap_err();
    assert!(matches!(e, SealError::TooManySets), "{e}");
}

#[test]
fn malformed_fields_never_panic() {
    for value in [
        "",
        "i=",
        "i=1",
        "i=1;",
        "i=99999999999999999999; cv=none",
        "i=1; a=rsa-sha256; cv=none; d=; s=; b=",
        "i=1; a=rsa-sha256; cv=none; d=a..b; s=x; b=!!!",
        "\u{0}i=1\u{ff};;;;==;",
    ] {
        for name in [
            "ARC-Seal",
            "ARC-Message-Signature",
            "ARC-Authentication-Results",
        ] {
            let h = Header {
                name: name.into(),
                value: value.as_bytes().to_vec(),
            };
            assert!(
                header::collect_sets(std::slice::from_ref(&h)).is_err(),
                "{name}: {value}"
            );
        }
    }
}

mod in_the_filters {
    //! ARC through the DMARC filter (validation, the trusted-forwarder override) and
    //! through `mailstackd`'s pipeline (sealing).

    use super::*;
    use crate::dmarc::{DmarcConfig, DmarcFilter, MessageFacts, PolicyOverride};
    use crate::filter::{Action, AuthFacts, ClientAddr, Connection, Envelope, Filter, Verdict};
    use crate::filter::{OfflineOutcome, apply_to_message, run_offline};
    use crate::stack::StackConfig;
    use std::path::Path;

    fn dmarc_zone() -> MemoryResolver {
        let mut z = zone(&["fwd1.example", "fwd2.example", "fwd3.example"]);
        z.add(
            "_dmarc.origin.example",
            MemoryRecord::Txt(b"v=DMARC1; p=reject".to_vec()),
        );
        z
    }

    fn conn() -> Connection {
        let mut c = Connection::new("relay", ClientAddr::Ip("198.51.100.9".parse().unwrap()));
        c.mta_name = Some("mx.dest.example".into());
        c
    }

    async fn verdict<F: Filter>(f: &F, msg: &[u8]) -> Verdict {
        let env = Envelope::new("<bounces@fwd1.example>");
        match run_offline(f, &conn(), &env, msg).await {
            OfflineOutcome::Verdict(v) => v,
            other => panic!("no verdict: {other:?}"),
        }
    }

    fn dmarc(z: &MemoryResolver, trusted: &str) -> DmarcFilter {
        let text = format!("RejectFailures yes\nDomainWhitelist {trusted}\n");
        let cfg = DmarcConfig::parse(Path::new("opendmarc.conf"), &text).unwrap();
        DmarcFilter::new(cfg, Arc::new(z.clone()))
    }

    async fn overrides(f: &DmarcFilter, msg: &[u8], z: &MemoryResolver) -> Vec<PolicyOverride> {
        let facts = AuthFacts {
            arc: Some(verify_message(msg, z).await),
            ..AuthFacts::default()
        };
        let (headers, _) = Header::split_message(msg);
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                let v = String::from_utf8_lossy(&h.value).replace("\r\n", "\n");
                (h.name.clone(), v.trim_start().to_owned())
            })
            .collect();
        let o = f
            .check(&MessageFacts {
                client_ip: conn().ip(),
                envelope_from: "bounces@fwd1.example",
                helo: "relay",
                rcpts: &[],
                headers: &headers,
                dkim_results: None,
                raw_message: None,
                job_id: None,
                mta_name: Some("mx.dest.example"),
                prior: Some(&facts),
            })
            .await;
        o.overrides
    }

    #[tokio::test]
    async fn a_trusted_sealer_overrides_a_dmarc_failure_an_untrusted_one_does_not() {
        let z = dmarc_zone();
        let sealed = seal_as(MSG, "fwd1.example", &z).await;
        let trusting = dmarc(&z, "fwd1.example");
        let v = verdict(&trusting, &sealed).await;
        assert_eq!(v.action, Action::Accept);
        assert_eq!(
            v.facts.arc.as_ref().map(|a| a.result),
            Some(ArcResult::Pass)
        );
        let words: Vec<String> = v
            .auth_results
            .iter()
            .map(|c| format!("{}={}", c.method, c.result))
            .collect();
        assert_eq!(words, ["dmarc=fail", "arc=pass"]);
        assert_eq!(
            v.auth_results[0].comment.as_deref(),
            Some("p=reject dis=none")
        );
        assert_eq!(
            overrides(&trusting, &sealed, &z).await,
            [PolicyOverride::TrustedForwarder]
        );
        // Sealed by fwd1, trusted: fwd2 only.
        let other = dmarc(&z, "fwd2.example");
        assert!(matches!(
            verdict(&other, &sealed).await.action,
            Action::Reject(Some(_))
        ));
        assert!(overrides(&other, &sealed, &z).await.is_empty());
        // A broken chain: no override either.
        let broken = replace_once(&sealed, "Hello there.", "Hello therE.");
        assert!(matches!(
            verdict(&trusting, &broken).await.action,
            Action::Reject(Some(_))
        ));
        assert!(overrides(&trusting, &broken, &z).await.is_empty());
        // No ARC at all: plain DMARC, no arc= clause unless asked for.
        let v = verdict(&trusting, MSG).await;
        assert!(matches!(v.action, Action::Reject(Some(_))));
        let plain = DmarcFilter::new(DmarcConfig::default(), Arc::new(z.clone()));
        let v = verdict(&plain, &sealed).await;
        assert!(v.auth_results.iter().all(|c| c.method != "arc"), "{v:?}");
    }

    fn key_file(dir: &Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("arc.pem");
        static PEM: OnceLock<String> = OnceLock::new();
        let _ = key();
        let pem = PEM.get_or_init(|| {
            // The same key as `key()`: its PEM again.
            generate(&GenKeyOptions::default()).unwrap().private_pem
        });
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// `mailstackd` (its pipeline, built from a `mailstackd.toml`) sealing as `domain`.
    fn mailstackd(domain: &str, key: &Path, z: &MemoryResolver) -> crate::stack::Mailstack {
        let text = format!(
            "[mailstackd]\nauthserv_id = \"mx.{domain}\"\n[spf]\nenabled = false\n\
             [dmarc]\noptions = {{ ARCSeal = true, ARCSealDomain = \"{domain}\", \
             ARCSealSelector = \"arc\", ARCSealKeyFile = \"{}\" }}\n",
            key.display()
        );
        let cfg = StackConfig::parse(Path::new("mailstackd.toml"), &text).unwrap();
        cfg.build(Arc::new(z.clone()), None, "host").unwrap()
    }

    #[tokio::test]
    async fn mailstackd_seals_one_two_three_on_the_chain_it_validated() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        let pem = std::fs::read(&key).unwrap();
        let public = PrivateKey::parse(&pem).unwrap().public_record_value();
        let mut z = MemoryResolver::new();
        for d in ["fwd1.example", "fwd2.example", "fwd3.example"] {
            z.add(
                &format!("arc._domainkey.{d}"),
                MemoryRecord::Txt(format!("v=DKIM1; k=rsa; p={public}").into_bytes()),
            );
        }
        let mut msg = MSG.to_vec();
        for (n, d) in ["fwd1.example", "fwd2.example", "fwd3.example"]
            .iter()
            .enumerate()
        {
            let stack = mailstackd(d, &key, &z);
            // The MTA must send the body: the seal's AMS hashes it.
            assert!(stack.needs().body);
            let v = verdict(&stack, &msg).await;
            assert_eq!(v.action, Action::Accept);
            msg = apply_to_message(&msg, &v.modifications);
            let o = verify_message(&msg, &z).await;
            assert_eq!(
                (o.result, o.instances()),
                (ArcResult::Pass, n as u32 + 1),
                "{o:?}"
            );
            let text = String::from_utf8_lossy(&msg).into_owned();
            let aar = format!("ARC-Authentication-Results: i={}; mx.{d};", n + 1);
            assert!(text.contains(&aar), "{text}");
            let want = if n == 0 { "arc=none" } else { "arc=pass" };
            let aar_text = text
                .split(&aar)
                .nth(1)
                .unwrap()
                .split("\r\nARC-")
                .next()
                .unwrap();
            assert!(
                aar_text.contains(want) && aar_text.contains("dmarc="),
                "{aar_text}"
            );
        }
        // Off by default: the embedded configuration seals nothing, validates nothing.
        let cfg = StackConfig::parse(Path::new("m.toml"), "").unwrap();
        let stack = cfg.build(Arc::new(z.clone()), None, "host").unwrap();
        let v = verdict(&stack, &msg).await;
        let out = apply_to_message(&msg, &v.modifications);
        assert_eq!(verify_message(&out, &z).await.instances(), 3);
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(!text.contains(": i=4;"), "sealed without ARCSeal");
        let ours = text
            .split("\r\n")
            .find(|l| l.starts_with("Authentication-Results:"));
        let ours = text
            .split(ours.unwrap())
            .nth(1)
            .unwrap()
            .split("\r\nARC-")
            .next()
            .unwrap();
        let words = ours.split([' ', '\t', ';', '\r', '\n']);
        assert!(
            !words.clone().any(|w| w.starts_with("arc=")),
            "arc= without ARCVerify: {ours}"
        );
        assert!(words.clone().any(|w| w.starts_with("dmarc=")), "{ours}");
    }
}
