//! Replays the checked-in fuzz corpora of `fuzz/corpus/<target>` (SPF, configuration files,
//! DKIM signatures, key records and verification, ARC fields and chains, DMARC records, headers and
//! configuration and the whole DMARC filter, DKIM data sets and peer lists) through the same entry points the cargo-fuzz targets call, with the same fixtures
//! (`fuzz/src/fixtures.rs`, included here), on stable Rust,
//! and checks that a few seeds keep their meaning (so a corpus that silently stopped
//! exercising the parser shows up). The clamd corpus has its own replay test
//! (`clamd_corpus.rs`).

#[path = "../../fuzz/src/fixtures.rs"]
pub mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailstack::config::{ConfigFile, Syntax};
use mailstack::dkim::DkimConfig;
use mailstack::dkim::{Algorithm, Signature};
use mailstack::dkim::{Dataset, PeerList};
use mailstack::dkim::{DkimResult, VerifyOptions, verify_message};
use mailstack::dkim::{KeyType, PublicKeyRecord, rsa_key_bits};
use mailstack::dmarc::{DmarcConfig, DmarcFilter, DmarcResult, MessageFacts, Specification};
use mailstack::dmarc::{DmarcRecord, Policy, RecordError};
use mailstack::dmarc::{FromError, UpstreamContext, author_domain, read_upstream};
use mailstack::filter::Action;
use mailstack::init::syslog::{Facility, Severity};
use mailstack::spf::SpfResult;

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn replay(target: &str, run: fn(&[u8])) {
    for path in corpus(target) {
        run(&std::fs::read(&path).unwrap());
    }
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

#[test]
fn spf_record_corpus_replays() {
    for path in corpus("spf_record") {
        mailstack::fuzzing::spf::record(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn config_file_corpus_replays_and_keeps_meaning() {
    let files = corpus("config_file");
    for path in &files {
        mailstack::fuzzing::config::file(&std::fs::read(path).unwrap());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config_file");
    let f = ConfigFile::read(&dir.join("opendkim"), Syntax::Whitespace).unwrap();
    assert_eq!(f.entries.len(), 4);
    assert_eq!(f.entries[3].key, "On-BadSignature");
    assert_eq!(f.entries[3].line, 6);
    let err = ConfigFile::read(&dir.join("policyd_spf"), Syntax::Equals).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("policyd_spf:3: expected `key = value`, found \"x\"")
    );
    let f = ConfigFile::read(&dir.join("bad_values"), Syntax::Whitespace).unwrap();
    assert!(f.bool(&f.entries[0]).is_err());
    assert!(f.number::<u64>(&f.entries[1]).is_err());
}

#[test]
fn dkim_signature_corpus_replays_and_keeps_meaning() {
    replay("dkim_signature", mailstack::fuzzing::dkim::signature);
    let s = Signature::parse(&seed("dkim_signature", "rfc8463_ed25519")).unwrap();
    assert_eq!(s.algorithm, Algorithm::Ed25519Sha256);
    assert_eq!(
        (s.domain.as_str(), s.selector.as_str()),
        ("football.example.com", "brisbane")
    );
    assert_eq!(s.headers.len(), 8);
    assert_eq!(s.timestamp, Some(1_528_637_909));
    assert_eq!(s.b.len(), 64);
    let s = Signature::parse(&seed("dkim_signature", "rfc6376_a2")).unwrap();
    assert_eq!(s.identity, "joe@football.example.com");
    assert_eq!(s.headers[0], "Received");
    let e = Signature::parse(&seed("dkim_signature", "bad_identity_domain")).unwrap_err();
    assert_eq!(e.0, "invalid domain coverage");
    for name in ["bad_at_in_domain", "bad_empty_domain_dots"] {
        let e = Signature::parse(&seed("dkim_signature", name)).unwrap_err();
        assert_eq!(e.0, "domain tag is not a domain name", "{name}");
    }
}

#[test]
fn dkim_key_record_corpus_replays_and_keeps_meaning() {
    replay("dkim_key_record", mailstack::fuzzing::dkim::key_record);
    let k = PublicKeyRecord::parse(&seed("dkim_key_record", "rfc8463_ed25519")).unwrap();
    assert_eq!((k.key_type, k.key.len()), (KeyType::Ed25519, 32));
    for name in ["rfc6376_a3", "rfc8463_rsa", "pkcs1_rsa"] {
        let k = PublicKeyRecord::parse(&seed("dkim_key_record", name)).unwrap();
        assert_eq!(rsa_key_bits(&k.key), Some(1024), "{name}");
    }
    let k = PublicKeyRecord::parse(&seed("dkim_key_record", "genkey_split_testing")).unwrap();
    assert!(k.testing && k.strict_subdomains);
    assert_eq!(k.hashes, ["sha256"]);
    let e = PublicKeyRecord::parse(&seed("dkim_key_record", "revoked")).unwrap_err();
    assert_eq!(e.0, "key revoked");
}

#[test]
fn dmarc_record_corpus_replays_and_keeps_meaning() {
    replay("dmarc_record", mailstack::fuzzing::dmarc::record);
    let r = DmarcRecord::parse(&seed("dmarc_record", "rfc7489_b23_quarantine")).unwrap();
    assert_eq!((r.p, r.pct), (Policy::Quarantine, 25));
    assert_eq!(
        r.rua,
        [
            "mailto:dmarc-feedback@example.com",
            "mailto:tld-test@thirdparty.example.net!10m"
        ]
    );
    let r = DmarcRecord::parse(&seed("dmarc_record", "dmarcbis")).unwrap();
    assert_eq!(
        (r.np, r.psd, r.testing),
        (Some(Policy::Reject), Some(false), true)
    );
    assert_eq!(
        DmarcRecord::parse(&seed("dmarc_record", "bad_pct")),
        Err(RecordError::InvalidTag("pct"))
    );
}

#[test]
fn dmarc_headers_corpus_replays_and_keeps_meaning() {
    replay("dmarc_headers", |d| {
        mailstack::fuzzing::dmarc::headers(d, fixtures::psl())
    });
    let text = String::from_utf8(seed("dmarc_headers", "opendkim_opendmarc")).unwrap();
    let fields = mailstack::fuzzing::header_fields(&text);
    let from: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| n == "From")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(author_domain(&from).unwrap(), "example.com");
    let ctx = UpstreamContext {
        envelope_from: "alice@example.com",
        spf_ignore_results: false,
    };
    let up = read_upstream(&fields, ctx, |id| id == "mx.example.net");
    let spf = up.spf.unwrap();
    assert_eq!(
        (spf.domain.as_str(), spf.result),
        ("example.com", SpfResult::Pass)
    );
    assert_eq!(up.dkim.len(), 1);
    assert_eq!(
        (up.dkim[0].domain.as_str(), up.dkim[0].selector.as_str()),
        ("example.com", "mail")
    );
    let text = String::from_utf8(seed("dmarc_headers", "cve_2019_16378_multi_domain")).unwrap();
    let fields = mailstack::fuzzing::header_fields(&text);
    assert_eq!(
        author_domain(&[&fields[0].1]),
        Err(FromError::MultipleDomains)
    );
}

#[test]
fn dkim_config_corpus_replays_and_keeps_meaning() {
    replay("dkim_config", mailstack::fuzzing::dkim::config);
    let text = String::from_utf8(seed("dkim_config", "key_and_signing_tables")).unwrap();
    let cfg = DkimConfig::parse(Path::new("t.conf"), &text).unwrap();
    assert!(cfg.sign && !cfg.verify && cfg.multiple_signatures);
    assert_eq!(cfg.key_table.unwrap().entries.len(), 2);
    let text = String::from_utf8(seed("dkim_config", "bad_refused")).unwrap();
    let err = DkimConfig::parse(Path::new("t.conf"), &text).unwrap_err();
    assert!(
        err.to_string().starts_with("t.conf:2: SenderHeaders"),
        "{err}"
    );
}

#[test]
fn dmarc_config_corpus_replays_and_keeps_meaning() {
    replay("dmarc_config", mailstack::fuzzing::dmarc::config);
    let text = String::from_utf8(seed("dmarc_config", "enforcing")).unwrap();
    let cfg = DmarcConfig::parse(Path::new("t.conf"), &text).unwrap();
    assert!(cfg.reject_failures && cfg.hold_quarantined_messages);
    assert_eq!(cfg.specification, Specification::DmarcBis);
    assert_eq!(cfg.trusted_authserv_ids.len(), 3);
    let text = String::from_utf8(seed("dmarc_config", "bad_reject_string")).unwrap();
    let err = DmarcConfig::parse(Path::new("t.conf"), &text).unwrap_err();
    assert!(
        err.to_string().starts_with("t.conf:1: RejectString"),
        "{err}"
    );
}

#[test]
fn dkim_verify_corpus_replays_and_keeps_meaning() {
    replay("dkim_verify", |d| {
        mailstack::fuzzing::dkim::verify(d, fixtures::dkim_zone())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let zone = fixtures::dkim_zone();
    let opts = VerifyOptions {
        max_signatures: 4,
        min_key_bits: 1024,
        clock_drift: 300,
    };
    let verify = |name: &str| {
        let msg = seed("dkim_verify", name);
        let out = rt.block_on(verify_message(
            &msg,
            zone.clone(),
            opts.clone(),
            1_528_640_000,
        ));
        out.iter()
            .map(|r| (r.result, r.reason.unwrap_or("")))
            .collect::<Vec<_>>()
    };
    let pass = (DkimResult::Pass, "");
    assert_eq!(verify("rfc8463_a3"), [pass, pass]);
    // Found by hand after fuzzing: x= near u64::MAX overflowed `x + clock_drift` (a panic
    // with overflow checks, "signature expired" without); it is simply far in the future.
    let far = verify("x_near_u64_max");
    assert_eq!(far.len(), 1);
    assert_ne!(far[0].1, "signature expired", "{far:?}");
    let body = (DkimResult::Fail, "body hash did not verify");
    assert_eq!(verify("rfc8463_tampered_body"), [body, body]);
    let sig = (DkimResult::Fail, "signature verification failed");
    assert_eq!(verify("rfc8463_tampered_header"), [sig, sig]);
    assert_eq!(
        verify("selector_slow"),
        [(DkimResult::TempError, "key DNS query failed")]
    );
    assert_eq!(
        verify("selector_absent"),
        [(DkimResult::PermError, "key not found in DNS")]
    );
    // A revoked key fails (RFC 6376 §6.1.2, OpenDKIM's `dkim=fail reason="key revoked"`).
    assert_eq!(
        verify("selector_revoked"),
        [(DkimResult::Fail, "key revoked")]
    );
    assert_eq!(verify("no_signature"), []);
}

#[test]
fn dkim_dataset_corpus_replays_and_keeps_meaning() {
    replay("dkim_dataset", mailstack::fuzzing::dkim::dataset);
    let text = String::from_utf8(seed("dkim_dataset", "signing_table")).unwrap();
    let (key, table) = text.split_once('\n').unwrap();
    let ds = Dataset::parse_lines(table, true);
    assert_eq!(ds.lookup(key), Some("mail._domainkey.example.com"));
    assert_eq!(
        ds.lookup("x@a.example.com"),
        Some("sub._domainkey.example.com")
    );
    assert_eq!(
        ds.lookup("x@example.org"),
        Some("default._domainkey.example.net")
    );
    let text = String::from_utf8(seed("dkim_dataset", "internal_hosts")).unwrap();
    let peers = PeerList::from_dataset(&Dataset::parse_lines(&text, false)).unwrap();
    assert!(peers.contains(Some([192, 0, 2, 77].into()), "x"));
    assert!(!peers.contains(Some([192, 0, 2, 1].into()), "x"));
    assert!(peers.contains(None, "a.example.com"));
    assert!(!peers.contains(Some([198, 51, 100, 1].into()), "x"));
    // An IPv4-mapped entry is the IPv4 address (once an overflow that matched everything).
    let text = String::from_utf8(seed("dkim_dataset", "mapped_peer")).unwrap();
    let peers = PeerList::from_dataset(&Dataset::parse_lines(&text, false)).unwrap();
    assert!(peers.contains(Some([192, 0, 2, 1].into()), "x"));
    assert!(peers.contains(Some([192, 0, 2, 7].into()), "x"));
    assert!(!peers.contains(Some([198, 51, 100, 1].into()), "x"));
}

#[tokio::test]
async fn dmarc_filter_corpus_replays_and_keeps_meaning() {
    // The entry point runs its own runtime; replay it off this one.
    tokio::task::spawn_blocking(|| {
        replay("dmarc_filter", |d| {
            mailstack::fuzzing::dmarc::filter(d, fixtures::dmarc_filter())
        })
    })
    .await
    .unwrap();
    let cfg = DmarcConfig::parse(Path::new("t.conf"), fixtures::DMARC_FILTER_CONF).unwrap();
    let filter = DmarcFilter::new(cfg, Arc::new(fixtures::dmarc_zone()));
    let rcpts = ["bob@example.org".to_owned()];
    let check = async |name: &str| {
        let text = String::from_utf8(seed("dmarc_filter", name)).unwrap();
        let fields = mailstack::fuzzing::header_fields(&text);
        let envelope = fields
            .iter()
            .find(|(n, _)| n == "Return-Path")
            .map_or(String::new(), |(_, v)| {
                v.trim_matches(['<', '>']).to_owned()
            });
        let facts = MessageFacts {
            client_ip: Some([192, 0, 2, 1].into()),
            envelope_from: &envelope,
            helo: "mail.example.com",
            rcpts: &rcpts,
            headers: &fields,
            dkim_results: None,
            raw_message: None,
            job_id: None,
            mta_name: Some("mx.example.net"),
            prior: None,
        };
        filter.check(&facts).await
    };
    let v = check("reject_fail").await;
    assert_eq!(
        v.verdict.action,
        Action::Reject(Some(
            "550 5.7.1 rejected by DMARC policy for example.com".into()
        ))
    );
    let v = check("trusted_upstream_dkim").await;
    assert_eq!(v.verdict.action, Action::Accept);
    assert_eq!(
        v.headers()[0].1,
        "mx.example.net; dmarc=pass (p=reject dis=none) header.from=example.com"
    );
    assert_eq!(
        check("untrusted_ar").await.evaluation.unwrap().result,
        DmarcResult::Fail
    );
    assert!(matches!(
        check("quarantine_held").await.verdict.action,
        Action::Quarantine { .. }
    ));
    assert_eq!(
        check("temperror_dns").await.verdict.action,
        Action::Tempfail(None)
    );
}

#[test]
fn arc_headers_corpus_replays_and_keeps_meaning() {
    use mailstack::arc::{ArcResult, verify_message};
    replay("arc_headers", |d| {
        mailstack::fuzzing::arc::headers(d, fixtures::arc_zone())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let zone = fixtures::arc_zone();
    let check = |name: &str| rt.block_on(verify_message(&seed("arc_headers", name), zone));
    for (name, sets) in [("dkimpy_i1", 1), ("dkimpy_i3", 3)] {
        let o = check(name);
        assert_eq!(
            (o.result, o.instances()),
            (ArcResult::Pass, sets),
            "{name}: {o:?}"
        );
        assert_eq!(o.oldest_pass, Some(0));
    }
    assert_eq!(check("no_arc").result, ArcResult::None);
    for (name, reason) in [
        ("dkimpy_i3_body_changed", "body hash did not verify"),
        ("dkimpy_i3_set_missing", "incomplete ARC set"),
        ("malformed_sets", "instance tag invalid"),
    ] {
        let o = check(name);
        assert_eq!(
            (o.result, o.reason),
            (ArcResult::Fail, Some(reason)),
            "{name}"
        );
    }
}

#[test]
fn syslog_line_corpus_replays_and_keeps_meaning() {
    replay("syslog_line", mailstack::fuzzing::syslog::line);
    let now = time::OffsetDateTime::UNIX_EPOCH;
    let parse = |name| mailstack::init::syslog::parse(&seed("syslog_line", name), now);
    let m = parse("glibc_postfix");
    assert_eq!(
        (m.app.as_str(), m.pid.as_deref()),
        ("postfix/smtpd", Some("4242"))
    );
    assert_eq!(m.priority.facility, Facility::Mail);
    assert_eq!(m.priority.severity, Severity::Informational);
    let m = parse("rfc5424_sd_bom");
    assert_eq!(m.text, "An application event");
    assert_eq!(m.hostname.as_deref(), Some("mymachine"));
    assert_eq!(parse("no_pri").text, "no pri at all");
    assert_eq!(parse("control_chars").text, "a#011b#033c\u{fffd}d#177");
}

/// The HistoryFile reader's corpus, with the fuzzer's finds (a null sender's empty `mfrom`
/// did not read back) kept as regression seeds.
#[test]
fn dmarc_history_corpus_replays() {
    replay("dmarc_history", mailstack::fuzzing::dmarc::history);
}
