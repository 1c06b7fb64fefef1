//! Verification: the first `MaximumSignaturesToVerify` signatures of a message, each with a
//! result OpenDKIM would give, and the `Authentication-Results` value OpenDKIM writes.

use std::sync::Arc;

use aws_lc_rs::digest::{Context, Digest};
use aws_lc_rs::signature::{
    ED25519, ParsedPublicKey, RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
    RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, VerificationAlgorithm,
};

use super::canon::{BodyHasher, Header, hash_headers, hash_signature_field};
use super::config::DEFAULT_DNS_TIMEOUT;
use super::config::{Canon, DkimConfig};
use super::key::{KeyRecordError, KeyType, PublicKeyRecord, rsa_key_bits};
use super::sig::{Algorithm, Signature};
use crate::dns::{DnsError, Resolver};
use std::time::Duration;

/// The result of one signature (RFC 8601 §2.7.1 words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DkimResult {
    /// The signature verified.
    Pass,
    /// It did not verify: body hash or signature mismatch, expired, unauthorized identity.
    Fail,
    /// It verified cryptographically but local policy refuses it (key under
    /// `MinimumKeyBits`).
    Policy,
    /// Transient: the key could not be fetched (DNS timeout, SERVFAIL).
    TempError,
    /// Permanent: the signature or its key record is unusable, or the key does not exist.
    PermError,
}

impl DkimResult {
    /// The `dkim=` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Policy => "policy",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        }
    }
}

/// Which `On-*` class a non-pass result falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureClass {
    /// `On-BadSignature`.
    BadSignature,
    /// `On-KeyNotFound`.
    KeyNotFound,
    /// `On-DNSError`.
    DnsError,
}

/// The outcome for one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureResult {
    /// The result.
    pub result: DkimResult,
    /// OpenDKIM's error string, for `reason=` (None on pass).
    pub reason: Option<&'static str>,
    /// `d=` (empty if the field did not parse).
    pub domain: String,
    /// `i=` (or `@d`).
    pub identity: String,
    /// `s=`.
    pub selector: String,
    /// `a=`.
    pub algorithm: Option<Algorithm>,
    /// `b=` as written (whitespace removed).
    pub b: String,
    /// The key size in bits, when the key was fetched.
    pub key_bits: Option<usize>,
    /// The key record carries `t=y` (testing: failures are not acted on).
    pub testing: bool,
    /// For non-pass results: which `On-*` action applies.
    pub class: Option<FailureClass>,
}

/// Verification limits (from `opendkim.conf`).
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// `MaximumSignaturesToVerify`.
    pub max_signatures: usize,
    /// `MinimumKeyBits`.
    pub min_key_bits: usize,
    /// `ClockDrift` (seconds).
    pub clock_drift: u64,
}

impl VerifyOptions {
    /// The options of `cfg`.
    pub fn from_config(cfg: &DkimConfig) -> Self {
        Self {
            max_signatures: cfg.max_signatures,
            min_key_bits: cfg.minimum_key_bits,
            clock_drift: cfg.clock_drift,
        }
    }
}

/// A message being verified: built from its header block, fed its body in chunks, finished
/// with the key lookups. Memory: the header block and one hash state per distinct
/// (body canonicalization, hash, `l=`) among the signatures verified.
#[derive(Debug)]
pub struct MessageVerifier {
    sigs: Vec<(Header, Result<Signature, &'static str>)>,
    hashers: Vec<BodyHasher>,
    opts: VerifyOptions,
    key_timeout: Option<Duration>,
}

impl MessageVerifier {
    /// Starts with the header block of a message (in order, top first).
    pub fn new(headers: &[Header], opts: VerifyOptions) -> Self {
        let sigs: Vec<_> = headers
            .iter()
            .filter(|h| h.name.trim().eq_ignore_ascii_case("DKIM-Signature"))
            .take(opts.max_signatures)
            .map(|h| (h.clone(), Signature::parse(&h.value).map_err(|e| e.0)))
            .collect();
        let mut hashers: Vec<BodyHasher> = Vec::new();
        for s in sigs.iter().filter_map(|(_, s)| s.as_ref().ok()) {
            let alg = s.algorithm.digest();
            if !hashers
                .iter()
                .any(|h| same_body(h, s.canon.1, s.length) && h_alg(h, s.algorithm))
            {
                hashers.push(BodyHasher::new(s.canon.1, alg, s.length));
            }
        }
        Self {
            sigs,
            hashers,
            opts,
            key_timeout: Some(DEFAULT_DNS_TIMEOUT),
        }
    }

    /// The deadline of each key lookup (`DNSTimeout`; 5 s unless set).
    /// It applies whatever resolver is used, the system one included, so a resolver that
    /// retries for longer cannot hold the message past it. Zero means no deadline
    /// (OpenDKIM: "a value of 0 causes an infinite wait"). A lookup past the deadline is
    /// `temperror` (`On-DNSError`).
    #[must_use]
    pub fn with_key_timeout(mut self, timeout: Duration) -> Self {
        self.key_timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// Whether the message carries any signature.
    pub fn has_signatures(&self) -> bool {
        !self.sigs.is_empty()
    }

    /// Feeds a body chunk.
    pub fn body(&mut self, chunk: &[u8]) {
        for h in &mut self.hashers {
            h.update(chunk);
        }
    }

    /// Fetches the keys and computes each result. `now` is the Unix time.
    pub async fn finish(
        self,
        headers: &[Header],
        resolver: &dyn Resolver,
        now: u64,
    ) -> Vec<SignatureResult> {
        let bodies: Vec<(Canon, Option<u64>, bool, Digest, u64)> = self
            .hashers
            .into_iter()
            .map(|h| {
                let (c, l, sha1) = (h.canon(), h.limit(), h.is_sha1());
                let (d, n) = h.finish();
                (c, l, sha1, d, n)
            })
            .collect();
        let mut out = Vec::with_capacity(self.sigs.len());
        for (field, sig) in &self.sigs {
            let r = match sig {
                Err(e) => failed(None, DkimResult::PermError, e, FailureClass::BadSignature),
                Ok(s) => {
                    let body = bodies.iter().find(|(c, l, sha1, _, _)| {
                        *c == s.canon.1
                            && *l == s.length
                            && *sha1 == (s.algorithm == Algorithm::RsaSha1)
                    });
                    match body {
                        Some((_, _, _, d, n)) => {
                            let lookup = KeyLookup {
                                resolver,
                                timeout: self.key_timeout,
                            };
                            verify_one(s, field, headers, (d, *n), &lookup, &self.opts, now).await
                        }
                        None => failed(
                            Some(s),
                            DkimResult::PermError,
                            "internal error",
                            FailureClass::BadSignature,
                        ),
                    }
                }
            };
            out.push(r);
        }
        out
    }
}

fn same_body(h: &BodyHasher, c: Canon, l: Option<u64>) -> bool {
    h.canon() == c && h.limit() == l
}

fn h_alg(h: &BodyHasher, a: Algorithm) -> bool {
    h.is_sha1() == (a == Algorithm::RsaSha1)
}

fn failed(
    s: Option<&Signature>,
    result: DkimResult,
    reason: &'static str,
    class: FailureClass,
) -> SignatureResult {
    SignatureResult {
        result,
        reason: Some(reason),
        domain: s.map(|s| s.domain.clone()).unwrap_or_default(),
        identity: s.map(|s| s.identity.clone()).unwrap_or_default(),
        selector: s.map(|s| s.selector.clone()).unwrap_or_default(),
        algorithm: s.map(|s| s.algorithm),
        b: s.map(|s| s.b_text.clone()).unwrap_or_default(),
        key_bits: None,
        testing: false,
        class: Some(class),
    }
}

/// The key lookup of one signature: the resolver and the `DNSTimeout` deadline.
pub(crate) struct KeyLookup<'a> {
    pub(crate) resolver: &'a dyn Resolver,
    pub(crate) timeout: Option<Duration>,
}

impl KeyLookup<'_> {
    pub(crate) async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        match self.timeout {
            None => self.resolver.txt(name).await,
            Some(t) => tokio::time::timeout(t, self.resolver.txt(name))
                .await
                .unwrap_or(Err(DnsError::Timeout)),
        }
    }
}

/// Why [`fetch_key`] found no usable key record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    /// NXDOMAIN or no TXT record (RFC 6376 §6.1.2 PERMFAIL, OpenDKIM's On-KeyNotFound).
    NotFound,
    /// SERVFAIL, REFUSED, a timeout (ours or the resolver's), no usable answer: RFC 6376
    /// §6.1.2 "TEMPFAIL (key unavailable)", OpenDKIM's On-DNSError (tempfail).
    Dns,
    /// An empty `p=`: the key was revoked (RFC 6376 §6.1.2 step 6), a `fail` in RFC 8601's
    /// words, as OpenDKIM reports it.
    Revoked(&'static str),
    /// The record does not parse.
    Bad(&'static str),
}

/// Fetches and parses the key record `<selector>._domainkey.<domain>` (the first TXT
/// record answered), for DKIM and ARC ([`crate::arc`]) alike.
pub(crate) async fn fetch_key(
    lookup: &KeyLookup<'_>,
    selector: &str,
    domain: &str,
) -> Result<PublicKeyRecord, KeyProblem> {
    let name = format!("{selector}._domainkey.{domain}");
    let txts = match lookup.txt(&name).await {
        Ok(t) => t,
        Err(e) if e.is_void() => return Err(KeyProblem::NotFound),
        Err(_) => return Err(KeyProblem::Dns),
    };
    match txts.iter().map(|t| PublicKeyRecord::parse(t)).next() {
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) if e == KeyRecordError::REVOKED => Err(KeyProblem::Revoked(e.0)),
        Some(Err(e)) => Err(KeyProblem::Bad(e.0)),
        None => Err(KeyProblem::NotFound),
    }
}

async fn verify_one(
    s: &Signature,
    field: &Header,
    headers: &[Header],
    body: (&Digest, u64),
    resolver: &KeyLookup<'_>,
    opts: &VerifyOptions,
    now: u64,
) -> SignatureResult {
    use DkimResult::{Fail, PermError, TempError};
    use FailureClass::{BadSignature, DnsError as Dns, KeyNotFound};
    if let Some(x) = s.expiration
        && x.saturating_add(opts.clock_drift) < now
    {
        return failed(Some(s), Fail, "signature expired", BadSignature);
    }
    if let Some(t) = s.timestamp
        && t > now.saturating_add(opts.clock_drift)
    {
        return failed(
            Some(s),
            PermError,
            "signature timestamp in the future",
            BadSignature,
        );
    }
    if let Some(l) = s.length
        && l > body.1
    {
        return failed(
            Some(s),
            PermError,
            "length tag value exceeds body size",
            BadSignature,
        );
    }
    let rec = match fetch_key(resolver, &s.selector, &s.domain).await {
        Ok(r) => r,
        Err(KeyProblem::NotFound) => {
            return failed(Some(s), PermError, "key not found in DNS", KeyNotFound);
        }
        Err(KeyProblem::Dns) => {
            return failed(Some(s), TempError, "key DNS query failed", Dns);
        }
        Err(KeyProblem::Revoked(why)) => return failed(Some(s), Fail, why, BadSignature),
        Err(KeyProblem::Bad(why)) => return failed(Some(s), PermError, why, BadSignature),
    };
    let mut r = failed(Some(s), Fail, "", BadSignature);
    r.testing = rec.testing;
    if rec.strict_subdomains {
        let idom = s.identity.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !idom.eq_ignore_ascii_case(&s.domain) {
            r.reason = Some("unauthorized subdomain");
            return r;
        }
    }
    let key = match usable_key(&rec, s.algorithm, opts.min_key_bits) {
        Ok(k) => k,
        Err((result, reason, bits)) => {
            r.result = result;
            r.reason = Some(reason);
            r.key_bits = bits;
            return r;
        }
    };
    r.key_bits = key.bits;
    if body.0.as_ref() != s.bh.as_slice() {
        r.reason = Some("body hash did not verify");
        return r;
    }
    let mut ctx = Context::new(s.algorithm.digest());
    hash_headers(&mut ctx, s.canon.0, headers, &s.headers);
    hash_signature_field(&mut ctx, s.canon.0, field);
    if !key.verify(&ctx.finish(), &s.b) {
        r.reason = Some("signature verification failed");
        return r;
    }
    r.result = DkimResult::Pass;
    r.reason = None;
    r.class = None;
    r
}

/// A public key checked against a signature's algorithm and the local key-size policy,
/// ready to verify (shared by DKIM and ARC, [`crate::arc`]).
pub(crate) struct UsableKey {
    key: ParsedPublicKey,
    key_type: KeyType,
    /// The key size in bits (RSA: from the key; Ed25519: 256).
    pub(crate) bits: Option<usize>,
}

impl UsableKey {
    /// Whether `sig` is a valid signature of the header hash `digest`.
    pub(crate) fn verify(&self, digest: &Digest, sig: &[u8]) -> bool {
        match self.key_type {
            KeyType::Rsa => self.key.verify_digest_sig(digest, sig).is_ok(),
            KeyType::Ed25519 => self.key.verify_sig(digest.as_ref(), sig).is_ok(),
        }
    }
}

/// Checks `rec` for a signature made with `alg` (key type, `h=` hashes, `MinimumKeyBits`
/// and aws-lc's 1024-bit floor) and parses the key. On refusal: the result, OpenDKIM's
/// reason, and the key size when known.
pub(crate) fn usable_key(
    rec: &PublicKeyRecord,
    alg: Algorithm,
    min_key_bits: usize,
) -> Result<UsableKey, (DkimResult, &'static str, Option<usize>)> {
    use DkimResult::{PermError, Policy};
    let want = match alg {
        Algorithm::Ed25519Sha256 => KeyType::Ed25519,
        _ => KeyType::Rsa,
    };
    if rec.key_type != want {
        return Err((PermError, "key type mismatch", None));
    }
    let hash = if alg == Algorithm::RsaSha1 {
        "sha1"
    } else {
        "sha256"
    };
    if !rec.hashes.is_empty() && !rec.hashes.iter().any(|h| h == hash) {
        return Err((PermError, "key hash mismatch", None));
    }
    let bits = match want {
        KeyType::Rsa => rsa_key_bits(&rec.key),
        KeyType::Ed25519 => Some(256),
    };
    let verifier: &'static dyn VerificationAlgorithm = match alg {
        Algorithm::RsaSha256 => &RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        Algorithm::RsaSha1 => &RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        Algorithm::Ed25519Sha256 => &ED25519,
    };
    if want == KeyType::Rsa && bits.is_some_and(|b| b < min_key_bits.max(1024)) {
        return Err((Policy, "key too small", bits));
    }
    let Ok(key) = ParsedPublicKey::new(verifier, &rec.key) else {
        return Err((PermError, "key data decode failed", bits));
    };
    Ok(UsableKey {
        key,
        key_type: want,
        bits,
    })
}

/// The shortest `b=` prefix of at least 8 characters (OpenDKIM's `MINSIGLEN`) that tells
/// `b` apart from every other signature's.
pub(crate) fn b_prefix<'a>(b: &'a str, all: &[&str]) -> &'a str {
    let mut n = 8.min(b.len());
    while n < b.len()
        && all
            .iter()
            .any(|o| *o != b && o.len() >= n && o.as_bytes()[..n] == b.as_bytes()[..n])
    {
        n += 1;
    }
    &b[..n]
}

/// The `Authentication-Results` value OpenDKIM writes: `<id>;` then one `dkim=` result per
/// line (`\n\t` folds): `dkim=<res>[ reason="..."] (<bits>-bit key) header.d=..
/// header.i=.. header.a=.. header.s=.. header.b=..`. `None` results: `dkim=none`.
pub fn authentication_results(authserv_id: &str, results: &[SignatureResult]) -> String {
    if results.is_empty() {
        return format!("{authserv_id}; dkim=none");
    }
    let all: Vec<&str> = results.iter().map(|r| r.b.as_str()).collect();
    let mut out = format!("{authserv_id};");
    for (i, r) in results.iter().enumerate() {
        out.push_str(if i == 0 { "\n\tdkim=" } else { ";\n\tdkim=" });
        out.push_str(r.result.as_str());
        if let Some(reason) = r.reason {
            out.push_str(&format!(" reason=\"{}\"", reason.replace('"', "")));
        }
        // OpenDKIM writes the size of RSA keys only.
        if let Some(bits) = r
            .key_bits
            .filter(|_| r.algorithm != Some(Algorithm::Ed25519Sha256))
        {
            out.push_str(&format!(" ({bits}-bit key)"));
        }
        if r.domain.is_empty() {
            continue;
        }
        out.push_str(&format!(" header.d={}", token(&r.domain)));
        out.push_str(&format!(" header.i={}", token(&r.identity)));
        if let Some(a) = r.algorithm {
            out.push_str(&format!(" header.a={}", a.as_str()));
        }
        out.push_str(&format!(" header.s={}", token(&r.selector)));
        out.push_str(&format!(" header.b={}", token(b_prefix(&r.b, &all))));
    }
    out
}

/// A property value safe in a header: a token, or quoted.
fn token(v: &str) -> String {
    if !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+' | '/' | '=')
        })
    {
        v.to_owned()
    } else {
        let clean: String = v
            .chars()
            .filter(|c| !matches!(c, '"' | '\\' | '\r' | '\n') && !c.is_control())
            .collect();
        format!("\"{clean}\"")
    }
}

/// Verifies a complete CRLF message (for tests and tools).
pub async fn verify_message(
    msg: &[u8],
    resolver: Arc<dyn Resolver>,
    opts: VerifyOptions,
    now: u64,
) -> Vec<SignatureResult> {
    let (headers, body_at) = Header::split_message(msg);
    let mut v = MessageVerifier::new(&headers, opts);
    v.body(&msg[body_at..]);
    v.finish(&headers, resolver.as_ref(), now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_grow_only_when_needed() {
        assert_eq!(
            b_prefix("AAAAAAAAAB", &["AAAAAAAAAB", "AAAAAAAAAC"]),
            "AAAAAAAAAB"
        );
        assert_eq!(b_prefix("AAAAAAAABB", &["AAAAAAAABB", "BBBB"]), "AAAAAAAA");
    }

    /// A resolver answering every query with `err`, after `delay`.
    struct Failing(DnsError, Duration);

    #[async_trait::async_trait]
    impl Resolver for Failing {
        async fn txt(&self, _: &str) -> Result<Vec<Vec<u8>>, DnsError> {
            tokio::time::sleep(self.1).await;
            Err(self.0.clone())
        }
        async fn a(&self, _: &str) -> Result<Vec<std::net::Ipv4Addr>, DnsError> {
            Err(self.0.clone())
        }
        async fn aaaa(&self, _: &str) -> Result<Vec<std::net::Ipv6Addr>, DnsError> {
            Err(self.0.clone())
        }
        async fn mx(&self, _: &str) -> Result<Vec<crate::dns::Mx>, DnsError> {
            Err(self.0.clone())
        }
        async fn ptr(&self, _: std::net::IpAddr) -> Result<Vec<String>, DnsError> {
            Err(self.0.clone())
        }
    }

    fn signed_message() -> Vec<u8> {
        use super::super::key::{GenKeyOptions, KeyType, PrivateKey, generate};
        use super::super::sign::{SignOptions, SigningKey, sign_message};
        let g = generate(&GenKeyOptions {
            key_type: KeyType::Ed25519,
            ..GenKeyOptions::default()
        })
        .unwrap();
        let key = SigningKey {
            domain: Some("example.com".into()),
            selector: "s".into(),
            key: PrivateKey::parse(g.private_pem.as_bytes()).unwrap(),
        };
        let msg = b"From: a@example.com\r\nSubject: x\r\n\r\nhi\r\n";
        let cfg = DkimConfig::default();
        let sigs = sign_message(
            &[(&key, "example.com")],
            &SignOptions::from_config(&cfg),
            msg,
            false,
            1_700_000_000,
        )
        .unwrap();
        let mut out = format!("DKIM-Signature: {}\r\n", sigs[0].replace('\n', "\r\n")).into_bytes();
        out.extend_from_slice(msg);
        out
    }

    async fn verify_with(r: Failing, timeout: Duration) -> SignatureResult {
        let msg = signed_message();
        let (headers, at) = Header::split_message(&msg);
        let mut v =
            MessageVerifier::new(&headers, VerifyOptions::from_config(&DkimConfig::default()))
                .with_key_timeout(timeout);
        v.body(&msg[at..]);
        v.finish(&headers, &r, 1_700_000_000).await.remove(0)
    }

    #[tokio::test]
    async fn servfail_on_the_key_is_a_temporary_error() {
        let r = verify_with(
            Failing(DnsError::ServFail, Duration::ZERO),
            DEFAULT_DNS_TIMEOUT,
        )
        .await;
        assert_eq!(r.result, DkimResult::TempError);
        assert_eq!(r.class, Some(FailureClass::DnsError));
        let ar = authentication_results("mx", &[r]);
        assert!(
            ar.contains("dkim=temperror reason=\"key DNS query failed\""),
            "{ar}"
        );
    }

    #[tokio::test]
    async fn key_lookups_have_their_own_deadline() {
        // A resolver that would answer only after a minute: DNSTimeout ends the lookup.
        let started = std::time::Instant::now();
        let r = verify_with(
            Failing(DnsError::NxDomain, Duration::from_secs(60)),
            Duration::from_millis(100),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(r.result, DkimResult::TempError);
        assert_eq!(r.reason, Some("key DNS query failed"));
        assert_eq!(r.class, Some(FailureClass::DnsError));
        // DNSTimeout 0: no deadline (OpenDKIM's infinite wait), the resolver's answer counts.
        let r = verify_with(
            Failing(DnsError::NxDomain, Duration::from_millis(300)),
            Duration::ZERO,
        )
        .await;
        assert_eq!(r.result, DkimResult::PermError);
        assert_eq!(r.class, Some(FailureClass::KeyNotFound));
    }
}
