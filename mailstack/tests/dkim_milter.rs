//! The DKIM milter in-process, driven by `milter_proto::client::Client` over a duplex pipe
//! (Postfix's offer, HDR_LEADSPC included), with keys from `genkey` and DNS from a
//! `MemoryResolver`: the sign/verify decision, the `On-*` actions and their SMTP replies,
//! `MaximumSignaturesToVerify`, `MaximumHeaders`, `AlwaysAddARHeader`, `t=y` keys,
//! `MinimumKeyBits`, `RemoveOldSignatures`.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use mailstack::dkim::{DkimConfig, DkimFilter};
use mailstack::dkim::{GenKeyOptions, KeyType, PrivateKey};
use mailstack::dkim::{SignOptions, SigningKey, sign_message};
use mailstack::dns::{MemoryRecord, MemoryResolver};
use mailstack::filter::Milter;
use milter_proto::ConnAddr;
use milter_proto::Reply;
use milter_proto::client::{Client, ClientConfig, Connection, Message, Outcome};
use milter_proto::server::{ServerConfig, serve_connection};

const MSG: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\n\
Subject: test\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nHello\r\n";

struct Env {
    dir: tempfile::TempDir,
    key: SigningKey,
    zone: MemoryResolver,
}

fn env(record_extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let g = mailstack::dkim::generate_key(&GenKeyOptions {
        key_type: KeyType::Rsa,
        selector: "sel".into(),
        ..GenKeyOptions::default()
    })
    .unwrap();
    let path = dir.path().join("sel.private");
    std::fs::write(&path, &g.private_pem).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut zone = MemoryResolver::new();
    let record = mailstack::dkim::txt_record_value(&g.txt)
        .replace("k=rsa; ", &format!("k=rsa; {record_extra}"));
    zone.add(
        "sel._domainkey.example.com",
        MemoryRecord::Txt(record.into_bytes()),
    );
    zone.add("slow._domainkey.example.com", MemoryRecord::Timeout);
    Env {
        dir,
        key: SigningKey {
            domain: Some("example.com".into()),
            selector: "sel".into(),
            key: PrivateKey::parse(g.private_pem.as_bytes()).unwrap(),
        },
        zone,
    }
}

fn filter(e: &Env, extra: &str) -> Arc<DkimFilter> {
    let conf = format!(
        "Domain example.com\nSelector sel\nKeyFile {}\nAuthservID mx.test\n\
         Canonicalization relaxed/simple\n{extra}",
        e.dir.path().join("sel.private").display()
    );
    let cfg = DkimConfig::parse(Path::new("test.conf"), &conf).unwrap();
    Arc::new(DkimFilter::new(cfg, Arc::new(e.zone.clone())).unwrap())
}

async fn run(f: &Arc<DkimFilter>, ip: &'static str, raw: &[u8]) -> Outcome {
    let (a, b) = tokio::io::duplex(1 << 20);
    let h = Milter::new(f.clone());
    let server =
        tokio::spawn(async move { serve_connection(b, h, &ServerConfig::default()).await });
    let mut c = Client::negotiate(a, ClientConfig::default()).await.unwrap();
    let conn = Connection {
        addr: ConnAddr::Inet {
            port: 1,
            address: Bytes::from_static(ip.as_bytes()),
        },
        ..Connection::default()
    };
    c.connection(&conn).await.unwrap();
    let out = c
        .message(&Message::parse(
            b"<alice@example.com>",
            &[b"<bob@example.org>"],
            raw,
        ))
        .await
        .unwrap();
    c.quit().await.unwrap();
    server.await.unwrap().unwrap();
    out
}

fn inserted(o: &Outcome, name: &str) -> Vec<String> {
    o.modifications
        .iter()
        .filter_map(|m| match m {
            Reply::InsHeader { name: n, value, .. } if n.as_ref() == name.as_bytes() => {
                Some(String::from_utf8_lossy(value).into_owned())
            }
            _ => None,
        })
        .collect()
}

fn signed(sel_key: &SigningKey, msg: &[u8]) -> Vec<u8> {
    let cfg = DkimConfig::parse(Path::new("t"), "OversignHeaders From\n").unwrap();
    let opts = SignOptions::from_config(&cfg);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let v = sign_message(&[(sel_key, "example.com")], &opts, msg, false, now).unwrap();
    let mut out = format!("DKIM-Signature: {}\r\n", v[0].replace('\n', "\r\n")).into_bytes();
    out.extend_from_slice(msg);
    out
}

fn reply_text(o: &Outcome) -> String {
    match &o.decision {
        Reply::ReplyCode(t) => String::from_utf8_lossy(t).into_owned(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn internal_mail_is_signed_external_mail_is_verified() {
    let e = env("");
    let f = filter(&e, "");
    let out = run(&f, "127.0.0.1", MSG).await;
    let sig = inserted(&out, "DKIM-Signature");
    assert_eq!(sig.len(), 1);
    // Leading space (HDR_LEADSPC) and \n\t folds, never \r.
    assert!(sig[0].starts_with(" v=1; a=rsa-sha256; c=relaxed/simple; d=example.com;\n\ts=sel;"));
    assert!(!sig[0].contains('\r'));
    assert!(sig[0].contains("h=From:To:Subject:Date;"), "{}", sig[0]);
    assert!(inserted(&out, "Authentication-Results").is_empty());

    let mut msg = format!("DKIM-Signature:{}\r\n", sig[0].replace('\n', "\r\n")).into_bytes();
    msg.extend_from_slice(MSG);
    let out = run(&f, "192.0.2.1", &msg).await;
    assert_eq!(out.decision, Reply::Accept);
    let ar = inserted(&out, "Authentication-Results");
    assert_eq!(ar.len(), 1);
    assert!(
        ar[0].starts_with(" mx.test;\n\tdkim=pass (2048-bit key) header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=sel header.b="),
        "{}",
        ar[0]
    );
    // From a foreign domain, even internal mail is only verified.
    let other = String::from_utf8_lossy(MSG).replace("alice@example.com", "x@other.example");
    let out = run(&f, "127.0.0.1", other.as_bytes()).await;
    assert!(inserted(&out, "DKIM-Signature").is_empty());
}

#[tokio::test]
async fn on_actions_and_replies() {
    let e = env("");
    let bad = String::from_utf8_lossy(&signed(&e.key, MSG)).replace("Hello", "Tampered");
    let out = run(&filter(&e, ""), "192.0.2.1", bad.as_bytes()).await;
    assert_eq!(
        out.decision,
        Reply::Accept,
        "On-BadSignature defaults to accept"
    );
    assert!(
        inserted(&out, "Authentication-Results")[0]
            .contains("dkim=fail reason=\"body hash did not verify\"")
    );
    let out = run(
        &filter(&e, "On-BadSignature reject\n"),
        "192.0.2.1",
        bad.as_bytes(),
    )
    .await;
    assert_eq!(reply_text(&out), "550 5.7.0 bad DKIM signature data");

    // DNS timeout: On-DNSError tempfail (451 4.7.5) by default.
    let g = mailstack::dkim::generate_key(&GenKeyOptions::default()).unwrap();
    let slow = SigningKey {
        domain: e.key.domain.clone(),
        selector: "slow".into(),
        key: PrivateKey::parse(g.private_pem.as_bytes()).unwrap(),
    };
    let out = run(&filter(&e, ""), "192.0.2.1", &signed(&slow, MSG)).await;
    assert_eq!(reply_text(&out), "451 4.7.5 DKIM key retrieval failed");
    // A refused message gets no header changes (filter::apply's table; the MTA would drop
    // them): the temperror result is in the verdict (see the filter's unit tests) and shows
    // when the action delivers.
    assert!(out.modifications.is_empty(), "{out:?}");
    let out = run(
        &filter(&e, "On-DNSError accept\n"),
        "192.0.2.1",
        &signed(&slow, MSG),
    )
    .await;
    assert_eq!(out.decision, Reply::Accept);
    assert!(inserted(&out, "Authentication-Results")[0].contains("dkim=temperror"));

    // Unsigned: no AR unless AlwaysAddARHeader; On-NoSignature applies.
    let out = run(&filter(&e, ""), "192.0.2.1", MSG).await;
    assert!(inserted(&out, "Authentication-Results").is_empty());
    assert_eq!(out.decision, Reply::Accept);
    let out = run(&filter(&e, "AlwaysAddARHeader yes\n"), "192.0.2.1", MSG).await;
    assert_eq!(
        inserted(&out, "Authentication-Results"),
        [" mx.test; dkim=none"]
    );
    let out = run(
        &filter(&e, "AlwaysAddARHeader yes\nOn-NoSignature tempfail\n"),
        "192.0.2.1",
        MSG,
    )
    .await;
    assert!(out.modifications.is_empty(), "{out:?}");
    assert_eq!(
        reply_text(&out),
        "451 4.7.0 DKIM signature processing failed"
    );
}

#[tokio::test]
async fn testing_keys_and_small_keys() {
    let e = env("t=y; ");
    let bad = String::from_utf8_lossy(&signed(&e.key, MSG)).replace("Hello", "Tampered");
    let out = run(
        &filter(&e, "On-BadSignature reject\n"),
        "192.0.2.1",
        bad.as_bytes(),
    )
    .await;
    assert_eq!(out.decision, Reply::Accept, "t=y bypasses On-BadSignature");
    let e = env("");
    let msg = signed(&e.key, MSG);
    let out = run(&filter(&e, "MinimumKeyBits 4096\n"), "192.0.2.1", &msg).await;
    assert!(
        inserted(&out, "Authentication-Results")[0]
            .contains("dkim=policy reason=\"key too small\" (2048-bit key)")
    );
}

#[tokio::test]
async fn limits() {
    let e = env("");
    // Four signatures: only the first three are verified (MaximumSignaturesToVerify 3).
    let mut msg = MSG.to_vec();
    for _ in 0..4 {
        msg = signed(&e.key, &msg);
    }
    let out = run(&filter(&e, ""), "192.0.2.1", &msg).await;
    let ar = &inserted(&out, "Authentication-Results")[0];
    assert_eq!(ar.matches("dkim=pass").count(), 3, "{ar}");
    // A header block over MaximumHeaders: not processed, On-Security (tempfail).
    let big = format!(
        "X-Big: {}\r\n{}",
        "a".repeat(2000),
        String::from_utf8_lossy(MSG)
    );
    let out = run(
        &filter(&e, "MaximumHeaders 1000\n"),
        "192.0.2.1",
        big.as_bytes(),
    )
    .await;
    assert_eq!(reply_text(&out), "451 4.7.0 resource unavailable");
    // RemoveOldSignatures: signing an already signed message deletes the old field first.
    let out = run(
        &filter(&e, "RemoveOldSignatures yes\n"),
        "127.0.0.1",
        &signed(&e.key, MSG),
    )
    .await;
    assert!(
        out.modifications
            .iter()
            .any(|m| matches!(m, Reply::ChgHeader { index: 1, value, .. } if value.is_empty()))
    );
    assert_eq!(inserted(&out, "DKIM-Signature").len(), 1);
}

#[tokio::test]
async fn signing_table_identity_becomes_i_and_header_i() {
    let e = env("");
    let key = e.dir.path().join("sel.private");
    let conf = format!(
        "KeyTable csl:k=example.com:sel:{}\nSigningTable csl:alice@example.com=k:alice@example.com\n\
         AuthservID mx.test\n",
        key.display()
    );
    let cfg = DkimConfig::parse(Path::new("test.conf"), &conf).unwrap();
    let f = Arc::new(DkimFilter::new(cfg, Arc::new(e.zone.clone())).unwrap());
    let out = run(&f, "127.0.0.1", MSG).await;
    let sig = &inserted(&out, "DKIM-Signature")[0];
    assert!(sig.contains("\n\ti=alice@example.com;"), "{sig}");
    let mut msg = format!("DKIM-Signature:{}\r\n", sig.replace('\n', "\r\n")).into_bytes();
    msg.extend_from_slice(MSG);
    let out = run(&f, "192.0.2.1", &msg).await;
    let ar = &inserted(&out, "Authentication-Results")[0];
    assert!(
        ar.contains("dkim=pass (2048-bit key) header.d=example.com header.i=alice@example.com"),
        "{ar}"
    );
}

#[tokio::test]
async fn authenticated_clients_peer_list_and_exempt_domains() {
    let e = env("");
    let f = filter(
        &e,
        "PeerList 198.51.100.0/24\nExemptDomains exempt.example\n",
    );
    // SMTP AUTH at MAIL makes an outside client internal: signed. Postfix sends both
    // {auth_type} and {auth_authen}; the filter reads the login (Envelope::authenticated).
    let (a, b) = tokio::io::duplex(1 << 20);
    let h = Milter::new(f.clone());
    let server =
        tokio::spawn(async move { serve_connection(b, h, &ServerConfig::default()).await });
    let mut c = Client::negotiate(a, ClientConfig::default()).await.unwrap();
    c.connection(&Connection::default()).await.unwrap();
    let mut msg = Message::parse(b"<alice@example.com>", &[b"<bob@example.org>"], MSG);
    msg.macros = vec![(
        b'M',
        vec![
            (
                Bytes::from_static(b"{auth_type}"),
                Bytes::from_static(b"PLAIN"),
            ),
            (
                Bytes::from_static(b"{auth_authen}"),
                Bytes::from_static(b"alice"),
            ),
        ],
    )];
    let out = c.message(&msg).await.unwrap();
    c.quit().await.unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(inserted(&out, "DKIM-Signature").len(), 1, "{out:?}");
    // Without AUTH the same client is only verified.
    let out = run(&f, "192.0.2.1", MSG).await;
    assert!(inserted(&out, "DKIM-Signature").is_empty());
    // PeerList: accepted at connect, nothing else happens.
    let out = run(&f, "198.51.100.7", MSG).await;
    assert!(out.modifications.is_empty());
    assert_eq!(out.decision, Reply::Accept, "{out:?}");
    // ExemptDomains: neither signed nor verified.
    let exempt = String::from_utf8_lossy(MSG).replace("alice@example.com", "a@exempt.example");
    let f = filter(&e, "ExemptDomains exempt.example\nAlwaysAddARHeader yes\n");
    let out = run(&f, "127.0.0.1", exempt.as_bytes()).await;
    assert!(out.modifications.is_empty(), "{out:?}");
}

fn deleted(o: &Outcome, name: &str) -> Vec<u32> {
    o.modifications
        .iter()
        .filter_map(|m| match m {
            Reply::ChgHeader {
                index,
                name: n,
                value,
            } if value.is_empty() && n.eq_ignore_ascii_case(name.as_bytes()) => Some(*index),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn forged_results_are_removed_in_every_mode_whatever_their_method() {
    let e = env("");
    // 1: ours, behind a comment, folded, SPF only; 2: someone else's; 3: ours with a
    // version number, in capitals.
    let forged = format!(
        "Authentication-Results: (forged) mx.test;\r\n\tspf=pass smtp.mailfrom=example.com\r\n\
         Authentication-Results: other.example; dkim=pass\r\n\
         Authentication-Results: MX.TEST 1; dkim=pass header.d=example.com\r\n{}",
        String::from_utf8_lossy(MSG)
    );
    let exempt = forged.replace("alice@example.com", "a@exempt.example");
    let f = filter(&e, "ExemptDomains exempt.example\n");
    // Signing (internal), verifying (external), nothing (exempt domain).
    for (ip, msg) in [
        ("127.0.0.1", &forged),
        ("192.0.2.1", &forged),
        ("127.0.0.1", &exempt),
    ] {
        let out = run(&f, ip, msg.as_bytes()).await;
        assert_eq!(out.decision, Reply::Accept, "{ip}: {out:?}");
        assert_eq!(
            deleted(&out, "Authentication-Results"),
            [3, 1],
            "{ip} {msg}: {out:?}"
        );
    }
    // KeepAuthResults yes keeps them.
    let f = filter(&e, "KeepAuthResults yes\n");
    for ip in ["127.0.0.1", "192.0.2.1"] {
        let out = run(&f, ip, forged.as_bytes()).await;
        assert!(
            deleted(&out, "Authentication-Results").is_empty(),
            "{out:?}"
        );
    }
}

#[tokio::test]
async fn from_without_a_domain_is_a_format_error() {
    let e = env("");
    let f = filter(&e, "On-NoSignature reject\nOn-BadSignature reject\n");
    let undisclosed =
        String::from_utf8_lossy(MSG).replace("Alice <alice@example.com>", "undisclosed");
    let no_from = String::from_utf8_lossy(MSG).replace("From: Alice <alice@example.com>\r\n", "");
    let signed_undisclosed = String::from_utf8_lossy(&signed(&e.key, MSG))
        .replace("Alice <alice@example.com>", "undisclosed");
    for msg in [&undisclosed, &no_from, &signed_undisclosed] {
        // OpenDKIM's text, whether the client is internal or not, signed or not, and
        // whatever On-NoSignature says (the differential test shows it).
        for ip in ["127.0.0.1", "192.0.2.1"] {
            let out = run(&f, ip, msg.as_bytes()).await;
            assert_eq!(out.decision, Reply::Accept, "{ip} {msg}: {out:?}");
            assert_eq!(
                inserted(&out, "Authentication-Results"),
                [" mx.test; dkim=permerror (bad message/signature format)"],
                "{ip} {msg}"
            );
            assert!(inserted(&out, "DKIM-Signature").is_empty());
        }
    }
}

#[tokio::test]
async fn a_signature_that_does_not_parse_is_decided_at_end_of_headers() {
    let e = env("");
    let garbage = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; garbage\r\n{}",
        String::from_utf8_lossy(&signed(&e.key, MSG))
    );
    // On-BadSignature accept (the default): delivered without a verdict, as OpenDKIM.
    let out = run(&filter(&e, ""), "192.0.2.1", garbage.as_bytes()).await;
    assert_eq!(out.decision, Reply::Accept, "{out:?}");
    assert!(out.modifications.is_empty(), "{out:?}");
    // On-BadSignature reject: OpenDKIM's reply, at end of headers.
    let out = run(
        &filter(&e, "On-BadSignature reject\n"),
        "192.0.2.1",
        garbage.as_bytes(),
    )
    .await;
    assert_eq!(reply_text(&out), "550 5.7.0 DKIM signature syntax error");
    assert_eq!(out.replies.last().map(|r| r.0), Some(b'N'), "{out:?}");
    // A duplicate tag is not a syntax error: a permerror result at end of message.
    let dup = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; d=example.com; s=sel; h=from; \
         bh=xx; b=yy\r\n{}",
        String::from_utf8_lossy(MSG)
    );
    let out = run(&filter(&e, ""), "192.0.2.1", dup.as_bytes()).await;
    assert!(
        inserted(&out, "Authentication-Results")[0].contains("dkim=permerror"),
        "{out:?}"
    );
}
