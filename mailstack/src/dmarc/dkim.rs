//! In-process DKIM verification for DMARC (`DKIMSelfValidate yes`).
//!
//! This is a small private seam: [`InProcessDkim::verify`] takes the whole message and returns
//! one [`DkimInput`] per signature. Today it uses mail-auth 0.13.3's verifier; when
//! `mailstack::dkim` has its own verifier (which fixes mail-auth's relaxed body hash with
//! trailing whitespace-only lines, reference §5.13), only the body of `verify` changes.
//!
//! DNS: mail-auth would query through its own hickory resolver. Instead every
//! `<s>._domainkey.<d>` key is fetched first through our [`Resolver`] (the same one the DMARC
//! and SPF lookups use, so tests run on a [`crate::dns::MemoryResolver`]) and handed to
//! mail-auth through a pre-filled TXT cache; mail-auth's own resolver points at the discard
//! port and is never meant to be asked.
//!
//! mail-auth 0.13.3 hashes a relaxed body ending in whitespace-only lines wrongly (reference
//! §0.1): [`InProcessDkim::verify`] re-verifies such signatures on a copy without those lines.
//! It reports a body-hash mismatch as `neutral` (OpenDKIM: `fail`); for DMARC only `pass`
//! counts, so that changes nothing here.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::Canonicalization;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, Txt};

use crate::dns::Resolver;

use super::eval::{DkimInput, DkimStatus};

/// Signatures verified per message at most (OpenDKIM's `MaximumSignaturesToVerify`, 3);
/// the others are ignored.
pub const MAX_SIGNATURES: usize = 3;

/// A TXT cache mail-auth reads, filled before verification.
#[derive(Default)]
struct KeyCache(Mutex<HashMap<Box<str>, Txt>>);

impl mail_auth::ResolverCache<Box<str>, Txt> for KeyCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().ok()?.get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().ok()?.remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: std::time::Instant) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, value);
        }
    }
}

/// DKIM verification for the DMARC filter.
pub struct InProcessDkim {
    resolver: Arc<dyn Resolver>,
    authenticator: MessageAuthenticator,
    timeout: Duration,
}

impl std::fmt::Debug for InProcessDkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessDkim")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl InProcessDkim {
    /// A verifier fetching keys through `resolver`, `timeout` per query.
    pub fn new(resolver: Arc<dyn Resolver>, timeout: Duration) -> Result<Self, String> {
        // mail-auth's own resolver: never used for keys (they come from the cache); the
        // discard port answers nothing if an unexpected lookup (ATPS) happens.
        let mut ns = NameServerConfig::udp(std::net::Ipv4Addr::LOCALHOST.into());
        for conn in &mut ns.connections {
            conn.port = 9;
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_millis(200);
        opts.attempts = 1;
        let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
        let authenticator = MessageAuthenticator::new(config, opts).map_err(|e| e.to_string())?;
        Ok(Self {
            resolver,
            authenticator,
            timeout,
        })
    }

    /// Verifies up to [`MAX_SIGNATURES`] signatures of `raw` (headers and body, CRLF).
    ///
    /// mail-auth 0.13.3 hashes a relaxed body that ends in whitespace-only lines wrongly
    /// (reference §5.13: `Hello\r\n  \r\n` is hashed as `Hello\r\n\r\n`). Relaxed
    /// canonicalization removes such lines anyway, so a relaxed-body signature that did not
    /// pass is verified again on a copy without them; simple-body signatures keep the first
    /// result (for them those lines count).
    pub async fn verify(&self, raw: &[u8]) -> Vec<DkimInput> {
        let Some(msg) = AuthenticatedMessage::parse(raw) else {
            return Vec::new();
        };
        let cache = KeyCache::default();
        let far = std::time::Instant::now() + Duration::from_secs(3600);
        for h in msg.dkim_headers.iter().take(MAX_SIGNATURES) {
            let sig = &h.header;
            let name = format!("{}._domainkey.{}", sig.s, sig.d).to_ascii_lowercase();
            let txt = self.key(&name).await;
            mail_auth::ResolverCache::insert(&cache, format!("{name}.").into(), txt, far);
        }
        let mut results = self.verify_parsed(&msg, &cache).await;
        let retry = results
            .iter()
            .any(|(relaxed, _, r)| *relaxed && r.status != DkimStatus::Pass);
        if retry
            && let Some(stripped) = strip_trailing_blank_lines(raw)
            && let Some(msg2) = AuthenticatedMessage::parse(&stripped)
        {
            let second = self.verify_parsed(&msg2, &cache).await;
            for (relaxed, b, r) in &mut results {
                if let Some((_, _, r2)) = second.iter().find(|(_, b2, _)| b2 == b)
                    && *relaxed
                {
                    *r = r2.clone();
                }
            }
        }
        results.into_iter().map(|(_, _, r)| r).collect()
    }

    /// One mail-auth pass: (relaxed body?, signature bytes, result) per signature.
    async fn verify_parsed(
        &self,
        msg: &AuthenticatedMessage<'_>,
        cache: &KeyCache,
    ) -> Vec<(bool, Vec<u8>, DkimInput)> {
        let outputs = self
            .authenticator
            .verify_dkim(Parameters::new(msg).with_txt_cache(cache))
            .await;
        outputs
            .iter()
            .filter_map(|o| {
                let sig = o.signature()?;
                let input = DkimInput {
                    domain: sig.d.to_ascii_lowercase(),
                    selector: sig.s.clone(),
                    status: match o.result() {
                        DkimResult::Pass => DkimStatus::Pass,
                        DkimResult::Neutral(_) => DkimStatus::Neutral,
                        DkimResult::Fail(_) => DkimStatus::Fail,
                        DkimResult::PermError(_) => DkimStatus::PermError,
                        DkimResult::TempError(_) => DkimStatus::TempError,
                        DkimResult::None => DkimStatus::None,
                    },
                };
                Some((sig.cb == Canonicalization::Relaxed, sig.b.clone(), input))
            })
            .take(MAX_SIGNATURES)
            .collect()
    }

    /// The key record at `name`, as mail-auth's cache holds it (errors included).
    async fn key(&self, name: &str) -> Txt {
        use mail_auth::{DnsError as MaDns, Error as MaError};
        let answer = tokio::time::timeout(self.timeout, self.resolver.txt(name)).await;
        match answer {
            Ok(Ok(records)) => {
                let mut last = MaError::Dns(MaDns::InvalidRecordType);
                for r in &records {
                    match DomainKey::parse(r) {
                        Ok(k) => return Txt::DomainKey(Arc::new(k)),
                        Err(e) => last = e,
                    }
                }
                Txt::Error(last)
            }
            Ok(Err(e)) if e.is_void() => {
                Txt::Error(MaError::Dns(MaDns::RecordNotFound(ResponseCode::NXDomain)))
            }
            Ok(Err(e)) => Txt::Error(MaError::Dns(MaDns::Resolver(e.to_string()))),
            Err(_) => Txt::Error(MaError::Dns(MaDns::Resolver("DNS timeout".into()))),
        }
    }
}

/// `raw` with the body's trailing whitespace-only lines removed, or `None` if it has none.
fn strip_trailing_blank_lines(raw: &[u8]) -> Option<Vec<u8>> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let (head, body) = raw.split_at(split);
    let mut end = body.len();
    loop {
        let content = body.get(..end)?;
        let Some(line) = content.strip_suffix(b"\r\n") else {
            break;
        };
        let start = line
            .windows(2)
            .rposition(|w| w == b"\r\n")
            .map_or(0, |p| p + 2);
        let last = line.get(start..)?;
        if !last.iter().all(|b| *b == b' ' || *b == b'\t') {
            break;
        }
        end = start;
    }
    if end == body.len() {
        return None;
    }
    let mut out = head.to_vec();
    out.extend_from_slice(body.get(..end)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::strip_trailing_blank_lines as strip;

    #[test]
    fn strips_only_trailing_whitespace_lines() {
        let m = |b: &str| format!("A: b\r\n\r\n{b}").into_bytes();
        assert_eq!(strip(&m("Hello\r\n  \r\n\t\r\n\r\n")), Some(m("Hello\r\n")));
        assert_eq!(strip(&m("  \r\n")), Some(m("")));
        assert_eq!(strip(&m("Hello\r\n")), None);
        assert_eq!(strip(&m("Hello  \r\nx\r\n")), None);
        assert_eq!(strip(&m("Hello")), None);
        assert_eq!(strip(b"A: b\r\n"), None);
    }
}
