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
