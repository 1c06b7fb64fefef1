//! Test vectors: `tests/vectors/<version>.txt` is a request as smtpd of that Postfix version
//! sends it, and `<version>.expected` its typed decode, rendered by [`render`] (every accessor's
//! value, then the unknown attributes in order).
//!
//! The attribute sets follow `docs/spec/policy-delegation.md` §1.2 (the "since" column of
//! `SMTPD_POLICY_README`), in the order `smtpd_check.c` sends them, for a TLS+SASL build:
//!
//! | file | attributes | what changed |
//! |---|---|---|
//! | `2.1` | 12 | the first set: request, protocol_state/name, client, helo, sender, recipient, queue_id, instance, size |
//! | `2.2` | 18 | + sasl_method/username/sender, ccert_subject/issuer/fingerprint |
//! | `2.3` | 23 | + recipient_count, encryption_protocol/cipher/keysize, etrn_domain |
//! | `2.5` | 24 | + stress (shown as `stress=yes`, an IPv6 client, the null sender) |
//! | `2.9` | 25 | + ccert_pubkey_fingerprint |
//! | `2.10` | 25 | same set; an END-OF-MESSAGE request with the real size |
//! | `3.0` | 26 | + client_port (a MAIL request, no recipient yet) |
//! | `3.1` | 27 | + policy_context |
//! | `3.2` | 29 | + server_address, server_port |
//! | `3.5` | 29 | same set; DATA (BDAT is reported as DATA since 3.4) with two recipients |
//! | `3.7` | 29 | same set, **captured** from Debian 12's Postfix 3.7.11 (XCLIENT client, no TLS) |
//! | `3.8` | 31 | + compatibility_level, mail_version |
//! | `3.12` | 32 | + tls_sni |
//!
//! The order and names were checked against a real Postfix: `examples/tests/policy_postfix.rs`
//! (`real_postfix_requests_match_the_test_vectors`) compares what Debian's Postfix 3.7 sends
//! with `3.5.txt`.
//!
//! `future-unknown-and-duplicates.txt` holds what a later Postfix (or another client) may send:
//! unknown attributes (kept, in order), a value with `=`, duplicates (the accessors give the
//! last value), and values the typed accessors cannot read (`client_address=unknown`).
//!
//! Each request must decode whole in one piece and byte by byte, re-encode to the same bytes,
//! and render to its `.expected` file. `POLICY_REGEN_VECTORS=1 cargo test -p policy-proto
//! --test vectors` rewrites the `.expected` files (review the diff).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use policy_proto::{PolicyRequest, RequestDecoder};

/// A stable text rendering of every typed accessor of `r`, then its unknown attributes in
/// order, then the attribute count.
fn render(r: &PolicyRequest) -> String {
    let mut s = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(s, "{name}: {value}");
    };
    line("request", format!("{:?}", r.request()));
    line("protocol_state", format!("{:?}", r.protocol_state()));
    line("protocol_name", format!("{:?}", r.protocol_name()));
    line("client_address", format!("{:?}", r.client_address()));
    line("client_name", format!("{:?}", r.client_name()));
    line("client_port", format!("{:?}", r.client_port()));
    line(
        "reverse_client_name",
        format!("{:?}", r.reverse_client_name()),
    );
    line("server_address", format!("{:?}", r.server_address()));
    line("server_port", format!("{:?}", r.server_port()));
    line("helo_name", format!("{:?}", r.helo_name()));
    line("sender", format!("{:?}", r.sender()));
    line("sender_address", format!("{:?}", r.sender_address()));
    line("recipient", format!("{:?}", r.recipient()));
    line("recipient_count", format!("{:?}", r.recipient_count()));
    line("queue_id", format!("{:?}", r.queue_id()));
    line("instance", format!("{:?}", r.instance()));
    line("size", format!("{:?}", r.size()));
    line("etrn_domain", format!("{:?}", r.etrn_domain()));
    line("stress", format!("{:?}", r.stress()));
    line("sasl_method", format!("{:?}", r.sasl_method()));
    line("sasl_username", format!("{:?}", r.sasl_username()));
    line("sasl_sender", format!("{:?}", r.sasl_sender()));
    line("ccert_subject", format!("{:?}", r.ccert_subject()));
    line("ccert_issuer", format!("{:?}", r.ccert_issuer()));
    line("ccert_fingerprint", format!("{:?}", r.ccert_fingerprint()));
    line(
        "ccert_pubkey_fingerprint",
        format!("{:?}", r.ccert_pubkey_fingerprint()),
    );
    line(
        "encryption_protocol",
        format!("{:?}", r.encryption_protocol()),
    );
    line("encryption_cipher", format!("{:?}", r.encryption_cipher()));
    line(
        "encryption_keysize",
        format!("{:?}", r.encryption_keysize()),
    );
    line("tls_sni", format!("{:?}", r.tls_sni()));
    line("policy_context", format!("{:?}", r.policy_context()));
    line(
        "compatibility_level",
        format!("{:?}", r.compatibility_level()),
    );
    line("mail_version", format!("{:?}", r.mail_version()));
    line("attributes", r.attributes().len().to_string());
    let unknown: Vec<_> = r.unknown().collect();
    line("unknown", unknown.len().to_string());
    for (name, value) in unknown {
        let _ = writeln!(s, "  {name}={value:?}");
    }
    s
}

fn vectors() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

fn decode_one(wire: &[u8], file: &Path) -> PolicyRequest {
    let mut buf = BytesMut::from(wire);
    let req = RequestDecoder::new()
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .unwrap_or_else(|| panic!("{}: incomplete request", file.display()));
    assert!(
        buf.is_empty(),
        "{}: {} bytes after the request",
        file.display(),
        buf.len()
    );
    req
}

#[test]
fn every_postfix_version_decodes_to_its_expected_form() {
    let regen = std::env::var_os("POLICY_REGEN_VECTORS").is_some_and(|v| v == "1");
    let files = vectors();
    for version in [
        "2.1", "2.2", "2.3", "2.5", "2.9", "2.10", "3.0", "3.1", "3.2", "3.5", "3.8", "3.12",
    ] {
        assert!(
            files
                .iter()
                .any(|f| f.file_stem().is_some_and(|s| s == version)),
            "no vector for Postfix {version}"
        );
    }
    let mut mismatches = Vec::new();
    for file in &files {
        let wire = std::fs::read(file).unwrap();
        let req = decode_one(&wire, file);

        // Byte by byte gives the same request, and nothing before the last byte.
        let mut dec = RequestDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            match dec.decode(&mut buf).unwrap() {
                Some(r) => {
                    assert_eq!(i + 1, wire.len(), "{}: early end", file.display());
                    got = Some(r);
                }
                None => assert!(
                    i + 1 < wire.len(),
                    "{}: needs more at the end",
                    file.display()
                ),
            }
        }
        assert_eq!(got.as_ref(), Some(&req), "{}", file.display());

        // Re-encoding gives back the bytes.
        let mut out = BytesMut::new();
        req.encode(&mut out);
        assert_eq!(
            &out[..],
            &wire[..],
            "{}: re-encoding differs",
            file.display()
        );

        let rendered = render(&req);
        let expected = file.with_extension("expected");
        if regen {
            std::fs::write(&expected, &rendered).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (POLICY_REGEN_VECTORS=1 writes it)",
                expected.display()
            )
        });
        if want != rendered {
            mismatches.push(format!(
                "{}:\n--- expected\n{want}--- got\n{rendered}",
                file.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// The attribute counts follow the "since" column: each version sends what the previous one
/// did plus its additions, and smtpd's attributes are all known to the crate.
#[test]
fn attribute_sets_grow_by_version() {
    let count = |v: &str| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/vectors/{v}.txt"));
        let req = decode_one(&std::fs::read(&file).unwrap(), &file);
        assert_eq!(req.unknown().count(), 0, "{v}: unknown attributes");
        req.attributes().len()
    };
    let counts: Vec<_> = [
        "2.1", "2.2", "2.3", "2.5", "2.9", "2.10", "3.0", "3.1", "3.2", "3.5", "3.7", "3.8", "3.12",
    ]
    .iter()
    .map(|v| count(v))
    .collect();
    assert_eq!(counts, [12, 18, 23, 24, 25, 25, 26, 27, 29, 29, 29, 31, 32]);
}
