//! DKIM: signatures, key records, `opendkim.conf`, data sets and the verifier.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;

use super::{MAX_MESSAGE, hermetic_config, runtime};
use crate::dkim::canon::Header;
use crate::dkim::dataset::{Dataset, PeerList};
use crate::dkim::key::{KeyType, PublicKeyRecord, rsa_key_bits};
use crate::dkim::sig::{Signature, Unsigned, append_b, tag_list};
use crate::dkim::verify::{
    DkimResult, MessageVerifier, VerifyOptions, authentication_results, verify_message,
};
use crate::dmarc::config::HostPattern;
use crate::dns::Resolver;

/// A `DKIM-Signature` field value (RFC 6376 §3.5). A parsed signature written back by the
/// signer's own writer (`Unsigned::render` and `append_b`, OpenDKIM's layout) parses
/// to the same signature (with `t=0` where it had no `t=`: the layout always writes one).
pub fn signature(data: &[u8]) {
    let _ = tag_list(&String::from_utf8_lossy(data));
    let Ok(sig) = Signature::parse(data) else {
        return;
    };
    let bh = base64::engine::general_purpose::STANDARD.encode(&sig.bh);
    let unsigned = Unsigned {
        algorithm: sig.algorithm,
        canon: sig.canon,
        domain: &sig.domain,
        selector: &sig.selector,
        identity: Some(&sig.identity),
        timestamp: sig.timestamp.unwrap_or(0),
        expiration: sig.expiration,
        length: sig.length,
        bh: &bh,
        headers: &sig.headers,
    };
    let mut text = unsigned.render();
    append_b(&mut text, &sig.b);
    // Folds stay bare `\n`: values may hold CRLF of their own, which must stay as they are.
    let again = Signature::parse(text.as_bytes());
    let want = Signature {
        timestamp: Some(sig.timestamp.unwrap_or(0)),
        ..sig
    };
    assert_eq!(again.as_ref(), Ok(&want), "re-rendered as {text:?}");
}

/// A DKIM key record (`<selector>._domainkey` TXT, RFC 6376 §3.6.1), and the same bytes as
/// the DER key inside one. A parsed record written back by its `Display` (what
/// [`PrivateKey::public_record`](crate::dkim::PrivateKey::public_record) publishes)
/// parses to the same record.
pub fn key_record(data: &[u8]) {
    let _ = rsa_key_bits(data);
    let Ok(rec) = PublicKeyRecord::parse(data) else {
        return;
    };
    if rec.key_type == KeyType::Rsa {
        let _ = rsa_key_bits(&rec.key);
    }
    let text = rec.to_string();
    assert_eq!(
        PublicKeyRecord::parse(text.as_bytes()).as_ref(),
        Ok(&rec),
        "re-rendered as {text:?}"
    );
}

/// An `opendkim.conf`: parsed or refused with an error that names the file.
pub fn config(data: &[u8]) {
    let path = Path::new("fuzz-opendkim.conf");
    if let Err(e) = crate::dkim::DkimConfig::parse(path, &hermetic_config(data)) {
        let text = e.to_string();
        assert!(text.contains("fuzz-opendkim.conf"), "{text}");
    }
}

/// A whole CRLF message (at most [`MAX_MESSAGE`] bytes) through the DKIM verifier with
/// keys from `zone` at a fixed time (RFC 8463's example signatures carry `t=1528637909`).
/// One result per signature (up to the cap), a reason for each non-pass, the same results
/// when the body arrives in three chunks, and the `Authentication-Results` value written
/// for them reads back (through the DMARC reader) with one `dkim=` result each, in order.
pub fn verify(data: &[u8], zone: &Arc<dyn Resolver>) {
    if data.len() > MAX_MESSAGE {
        return;
    }
    let rt = runtime();
    let opts = VerifyOptions {
        max_signatures: 4,
        min_key_bits: 1024,
        clock_drift: 300,
    };
    let now = 1_528_640_000;
    let results = rt.block_on(verify_message(data, zone.clone(), opts.clone(), now));
    let (headers, body_at) = Header::split_message(data);
    let sigs = headers
        .iter()
        .filter(|h| h.name.trim().eq_ignore_ascii_case("DKIM-Signature"))
        .count();
    assert_eq!(results.len(), sigs.min(opts.max_signatures));
    for r in &results {
        assert_eq!(r.result == DkimResult::Pass, r.reason.is_none(), "{r:?}");
    }
    let body = &data[body_at..];
    let mut v = MessageVerifier::new(&headers, opts);
    let (a, b) = (body.len() / 3, body.len() * 2 / 3);
    for chunk in [&body[..a], &body[a..b], &body[b..]] {
        v.body(chunk);
    }
    let chunked = rt.block_on(v.finish(&headers, zone.as_ref(), now));
    assert_eq!(chunked, results, "body in three chunks");
    let ar = authentication_results("mx.example", &results);
    let (id, read) = crate::dmarc::headers::parse_auth_results(&ar)
        .unwrap_or_else(|| panic!("our Authentication-Results does not parse: {ar:?}"));
    assert_eq!(id, "mx.example");
    let want: Vec<&str> = if results.is_empty() {
        vec!["none"]
    } else {
        results.iter().map(|r| r.result.as_str()).collect()
    };
    let got: Vec<&str> = read.iter().map(|r| r.result.as_str()).collect();
    assert_eq!(got, want, "{ar:?}");
    assert!(read.iter().all(|r| r.method == "dkim"), "{ar:?}");
}

/// A data set file (`key value` lines, as `refile:`/`file:` tables and peer lists are
/// written) whose first line is a lookup key: the message's From address for a
/// `SigningTable`, a client address or host name for a peer list. `refile:` lookups agree
/// with a plain `*`-glob matcher; the keys as an OpenDKIM peer list and each line as an
/// OpenDMARC `IgnoreHosts` pattern are checked against that client and a few fixed ones
/// (an exact address matches itself).
pub fn dataset(data: &[u8]) {
    // Keeps the quadratic reference matcher quick; real tables have short lines.
    if data.len() > 4096 {
        return;
    }
    let text = hermetic_config(data);
    let (key, table) = text.split_once('\n').unwrap_or((&text, ""));
    let key = key.trim();
    let globs = Dataset::parse_lines(table, true);
    let want = globs
        .entries
        .iter()
        .find(|(k, _)| glob(&k.to_ascii_lowercase(), &key.to_ascii_lowercase()))
        .map(|(_, v)| v.as_str());
    assert_eq!(globs.lookup(key), want, "refile: lookup of {key:?}");
    let client: Option<IpAddr> = key.trim_matches(['[', ']']).parse().ok();
    let ips: [Option<IpAddr>; 6] = [
        client,
        None,
        Some([192, 0, 2, 1].into()),
        Some([127, 0, 0, 1].into()),
        Some("::ffff:192.0.2.1".parse().expect("a literal IPv6 address")),
        Some("2001:db8::1".parse().expect("a literal IPv6 address")),
    ];
    if let Ok(peers) = PeerList::from_dataset(&Dataset::parse_lines(table, false)) {
        for ip in ips {
            let _ = peers.contains(ip, key);
        }
    }
    for line in table.lines() {
        let Some(p) = HostPattern::parse(line) else {
            continue;
        };
        for ip in ips {
            let _ = p.matches(ip, key);
        }
        let bare = line.trim().trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            assert!(p.matches(Some(ip), ""), "{line:?} does not match itself");
        }
    }
}

/// `*` matches any run of characters: the textbook dynamic programme, as a reference.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // row[j]: whether the pattern so far matches t[..j].
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for &c in p {
        let mut next = vec![false; t.len() + 1];
        if c == b'*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = row[j - 1] && t[j - 1] == c;
            }
        }
        row = next;
    }
    row[t.len()]
}
