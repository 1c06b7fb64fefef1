//! Chain validation (RFC 8617 §5.2) over the DKIM core: the `ARC-Message-Signature` is
//! checked exactly as a `DKIM-Signature` is ([`crate::dkim::canon`] canonicalization and
//! body hash, [`crate::dkim::verify`]'s key lookup and key checks), and the `ARC-Seal` over
//! its own header set.

use std::time::Duration;

use aws_lc_rs::digest::{Context, Digest};

use super::header::{ArcError, ArcSet, collect_sets};
use super::{ArcOutcome, ArcResult};
use crate::dkim::canon::{BodyHasher, Header, hash_headers, hash_signature_field};
use crate::dkim::config::{Canon, DEFAULT_DNS_TIMEOUT};
use crate::dkim::key::PublicKeyRecord;
use crate::dkim::sig::{Algorithm, Signature};
use crate::dkim::verify::{KeyLookup, KeyProblem, fetch_key, usable_key};
use crate::dns::Resolver;

/// Distinct body hashes computed per message (one per body canonicalization and `l=` among
/// the AMSs, newest first). The newest AMS always gets one; an older AMS whose body hash is
/// not among them only ends the `oldest-pass` search.
pub(crate) const MAX_BODY_HASHERS: usize = 4;

/// Distinct keys (`d=`, `s=`) fetched per message. 50 sets could name 100; a chain that
/// needs more than this fails instead of making the message wait for them.
pub(crate) const MAX_KEYS: usize = 16;

/// The whole validation's deadline, key lookups included (each lookup also has its own,
/// [`DEFAULT_DNS_TIMEOUT`]): under Postfix's 30 s `milter_command_timeout` with room for
/// the other filters.
pub(crate) const VALIDATION_DEADLINE: Duration = Duration::from_secs(10);

/// Smallest RSA key accepted (RFC 8301, and aws-lc's floor).
pub(crate) const MIN_KEY_BITS: usize = 1024;

/// A message being validated: built from its header block, fed its body, finished with
/// the key lookups. Memory: the ARC fields and at most 4 hash states.
#[derive(Debug)]
pub struct ArcVerifier {
    sets: Result<Vec<ArcSet>, ArcError>,
    hashers: Vec<BodyHasher>,
    key_timeout: Option<Duration>,
}

impl ArcVerifier {
    /// Starts with the header block (top first).
    pub fn new(headers: &[Header]) -> Self {
        let sets = collect_sets(headers);
        let mut hashers: Vec<BodyHasher> = Vec::new();
        if let Ok(sets) = &sets {
            for sig in sets.iter().rev().filter_map(|s| s.ams_sig.as_ref().ok()) {
                if hashers.len() < MAX_BODY_HASHERS && !hashers.iter().any(|h| fits(h, sig)) {
                    hashers.push(BodyHasher::new(
                        sig.canon.1,
                        sig.algorithm.digest(),
                        sig.length,
                    ));
                }
            }
        }
        Self {
            sets,
            hashers,
            key_timeout: Some(DEFAULT_DNS_TIMEOUT),
        }
    }

    /// The deadline of each key lookup (zero: none but the whole validation's 10 s deadline).
    #[must_use]
    pub fn with_key_timeout(mut self, timeout: Duration) -> Self {
        self.key_timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// Whether the message carries no ARC field at all (the result will be `none`).
    pub fn is_empty(&self) -> bool {
        matches!(&self.sets, Ok(s) if s.is_empty())
    }

    /// Feeds a body chunk (CRLF line ends).
    pub fn body(&mut self, chunk: &[u8]) {
        for h in &mut self.hashers {
            h.update(chunk);
        }
    }

    /// Validates the chain: `none` without ARC fields, `pass` with `oldest-pass`, or `fail`
    /// with the reason.
    pub async fn finish(self, headers: &[Header], resolver: &dyn Resolver) -> ArcOutcome {
        let sets = match self.sets {
            Err(e) => return ArcOutcome::fail(e.0, Vec::new()),
            Ok(s) if s.is_empty() => return ArcOutcome::none(),
            Ok(s) => s,
        };
        let sealers: Vec<String> = sets.iter().map(|s| s.seal_tags.domain.clone()).collect();
        let bodies: Vec<FinishedBody> = self
            .hashers
            .into_iter()
            .map(|h| {
                let (canon, limit, sha1) = (h.canon(), h.limit(), h.is_sha1());
                let (digest, len) = h.finish();
                FinishedBody {
                    canon,
                    limit,
                    sha1,
                    digest,
                    len,
                }
            })
            .collect();
        let mut v = Validation {
            headers,
            bodies: &bodies,
            lookup: KeyLookup {
                resolver,
                timeout: self.key_timeout,
            },
            keys: Vec::new(),
        };
        match tokio::time::timeout(VALIDATION_DEADLINE, v.chain(&sets)).await {
            Ok(Ok(oldest_pass)) => ArcOutcome {
                result: ArcResult::Pass,
                reason: None,
                oldest_pass: Some(oldest_pass),
                sealers,
            },
            Ok(Err(reason)) => ArcOutcome::fail(reason, sealers),
            Err(_) => ArcOutcome::fail("ARC validation timed out", sealers),
        }
    }
}

fn fits(h: &BodyHasher, sig: &Signature) -> bool {
    h.canon() == sig.canon.1
        && h.limit() == sig.length
        && h.is_sha1() == (sig.algorithm == Algorithm::RsaSha1)
}

#[derive(Debug)]
struct FinishedBody {
    canon: Canon,
    limit: Option<u64>,
    sha1: bool,
    digest: Digest,
    len: u64,
}

type KeyEntry = ((String, String), Result<PublicKeyRecord, KeyProblem>);

struct Validation<'a> {
    headers: &'a [Header],
    bodies: &'a [FinishedBody],
    lookup: KeyLookup<'a>,
    keys: Vec<KeyEntry>,
}

impl Validation<'_> {
    /// RFC 8617 §5.2 steps 4 to 6 (the structure, steps 1 to 3, was checked when the sets
    /// were collected): the newest AMS, every seal from the newest down, then the
    /// `oldest-pass` search over the older AMSs. Returns `oldest-pass`.
    async fn chain(&mut self, sets: &[ArcSet]) -> Result<u32, &'static str> {
        let Some(newest) = sets.last() else {
            return Err("no ARC set");
        };
        self.ams(newest).await?;
        for k in (0..sets.len()).rev() {
            self.seal(&sets[..=k]).await?;
        }
        // Step 5: the lowest instance from which every AMS up to the newest still
        // validates; 0 when all of them do (RFC 8617 §5.2, "header.oldest-pass").
        let mut oldest = newest.instance;
        for s in sets.iter().rev().skip(1) {
            if self.ams(s).await.is_err() {
                break;
            }
            oldest = s.instance;
        }
        Ok(if oldest == 1 { 0 } else { oldest })
    }

    async fn key(
        &mut self,
        selector: &str,
        domain: &str,
    ) -> Result<&PublicKeyRecord, &'static str> {
        let id = (selector.to_owned(), domain.to_owned());
        let at = match self.keys.iter().position(|(k, _)| *k == id) {
            Some(at) => at,
            None => {
                if self.keys.len() >= MAX_KEYS {
                    return Err("too many ARC keys");
                }
                let rec = fetch_key(&self.lookup, selector, domain).await;
                self.keys.push((id, rec));
                self.keys.len() - 1
            }
        };
        match &self.keys[at].1 {
            Ok(rec) => Ok(rec),
            Err(KeyProblem::NotFound) => Err("key not found in DNS"),
            Err(KeyProblem::Dns) => Err("key DNS query failed"),
            Err(KeyProblem::Revoked(why) | KeyProblem::Bad(why)) => Err(why),
        }
    }

    /// One `ARC-Message-Signature`, as a DKIM signature (RFC 8617 §5.1.1 / RFC 6376 §6).
    async fn ams(&mut self, set: &ArcSet) -> Result<(), &'static str> {
        let sig = set.ams_sig.as_ref().map_err(|e| *e)?;
        if sig.algorithm == Algorithm::RsaSha1 {
            return Err("ARC-Message-Signature algorithm invalid");
        }
        let body = self
            .bodies
            .iter()
            .find(|b| b.canon == sig.canon.1 && b.limit == sig.length && !b.sha1)
            .ok_or("ARC-Message-Signature body not hashed")?;
        if sig.length.is_some_and(|l| l > body.len) {
            return Err("length tag value exceeds body size");
        }
        if body.digest.as_ref() != sig.bh.as_slice() {
            return Err("body hash did not verify");
        }
        let mut ctx = Context::new(sig.algorithm.digest());
        hash_headers(&mut ctx, sig.canon.0, self.headers, &sig.headers);
        hash_signature_field(&mut ctx, sig.canon.0, &set.ams);
        let digest = ctx.finish();
        let rec = self.key(&sig.selector, &sig.domain).await?;
        let key = usable_key(rec, sig.algorithm, MIN_KEY_BITS).map_err(|(_, why, _)| why)?;
        if !key.verify(&digest, &sig.b) {
            return Err("ARC-Message-Signature did not verify");
        }
        Ok(())
    }

    /// The `ARC-Seal` of the last set in `prefix` (RFC 8617 §5.1.1): relaxed header
    /// canonicalization of every set's AAR, AMS and AS in instance order, the seal itself
    /// with an empty `b=` and no final CRLF.
    async fn seal(&mut self, prefix: &[ArcSet]) -> Result<(), &'static str> {
        let Some((last, before)) = prefix.split_last() else {
            return Err("no ARC set");
        };
        let tags = &last.seal_tags;
        let digest = seal_digest(tags.algorithm, before, [&last.aar, &last.ams, &last.seal]);
        let rec = self.key(&tags.selector, &tags.domain).await?;
        let key = usable_key(rec, tags.algorithm, MIN_KEY_BITS).map_err(|(_, why, _)| why)?;
        if !key.verify(&digest, &tags.b) {
            return Err("ARC-Seal did not verify");
        }
        Ok(())
    }
}

/// The hash an `ARC-Seal` signs: `before` (the earlier sets, i=1 first) then the new set's
/// AAR, AMS and seal field (its `b=` emptied).
pub(crate) fn seal_digest(alg: Algorithm, before: &[ArcSet], last: [&Header; 3]) -> Digest {
    let mut ctx = Context::new(alg.digest());
    let mut buf = Vec::with_capacity(1024);
    let mut add = |h: &Header, ctx: &mut Context| {
        buf.clear();
        h.canonicalize(Canon::Relaxed, &mut buf);
        ctx.update(&buf);
    };
    for s in before {
        for h in [&s.aar, &s.ams, &s.seal] {
            add(h, &mut ctx);
        }
    }
    let [aar, ams, seal] = last;
    add(aar, &mut ctx);
    add(ams, &mut ctx);
    hash_signature_field(&mut ctx, Canon::Relaxed, seal);
    ctx.finish()
}
