//! ARC (RFC 8617) fields and chains.

use super::{MAX_MESSAGE, runtime};
use crate::arc::{ArcResult, ArcVerifier, Seal, header::collect_sets, verify_message};
use crate::dkim::canon::Header;
use crate::dkim::sig::Signature;
use crate::dns::Resolver;

/// A message's ARC fields (RFC 8617): each field through the `ARC-Seal` and
/// `ARC-Message-Signature` parsers, the set structure, and the whole chain validated with
/// keys from `zone`. Never a panic; at most 50 sets, numbered 1..N; `pass` has an
/// `oldest-pass` and no reason, `fail` a reason, `none` no ARC field; the body fed in
/// 7-byte chunks gives the same outcome.
pub fn headers(data: &[u8], zone: &dyn Resolver) {
    if data.len() > MAX_MESSAGE {
        return;
    }
    let (headers, body_at) = Header::split_message(data);
    for h in &headers {
        let _ = Seal::parse(&h.value);
        let _ = Signature::parse_ams(&h.value);
    }
    if let Ok(sets) = collect_sets(&headers) {
        assert!(sets.len() <= 50);
        for (n, set) in sets.iter().enumerate() {
            assert_eq!(set.instance as usize, n + 1);
            assert_eq!(set.seal_tags.instance, set.instance);
        }
    }
    let rt = runtime();
    let whole = rt.block_on(verify_message(data, zone));
    match whole.result {
        ArcResult::Pass => assert!(whole.oldest_pass.is_some() && whole.reason.is_none()),
        ArcResult::Fail => assert!(whole.reason.is_some()),
        _ => assert!(whole.sealers.is_empty() && whole.reason.is_none()),
    }
    let mut v = ArcVerifier::new(&headers);
    for chunk in data.get(body_at..).unwrap_or_default().chunks(7) {
        v.body(chunk);
    }
    assert_eq!(rt.block_on(v.finish(&headers, zone)), whole);
}
