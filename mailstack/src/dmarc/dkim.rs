//! In-process DKIM verification for DMARC (`DKIMSelfValidate yes`).
//!
//! A small seam over [`crate::dkim::MessageVerifier`], the workspace's own verifier (RFC-correct
//! canonicalization, OpenDKIM's results; it replaced mail-auth 0.13.3 here, whose relaxed body
//! hash is wrong for bodies ending in whitespace-only lines). Keys are fetched through the same
//! [`Resolver`] as the DMARC and SPF lookups, so tests run on a
//! [`crate::dns::MemoryResolver`].
//!
//! Two ways in: [`InProcessDkim::start`] streams (the milter keeps only the header block; each
//! body chunk goes through the body hashes and is dropped), [`InProcessDkim::verify`] takes a
//! whole message.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dkim::canon::Header;
use crate::dkim::verify::{DkimResult, MessageVerifier, SignatureResult, VerifyOptions};
use crate::dns::Resolver;

use super::eval::{DkimInput, DkimStatus};

/// Signatures verified per message at most (OpenDKIM's `MaximumSignaturesToVerify`, 3); the
/// others are ignored.
pub const MAX_SIGNATURES: usize = 3;
/// Smallest RSA key accepted (OpenDKIM's `MinimumKeyBits`, 1024); smaller keys are `policy`.
pub(crate) const MIN_KEY_BITS: usize = 1024;
/// Clock drift allowed on `t=`/`x=` (OpenDKIM's `ClockDrift`, 300 s).
pub(crate) const CLOCK_DRIFT: u64 = 300;

/// DKIM verification for the DMARC filter.
pub struct InProcessDkim {
    resolver: Arc<dyn Resolver>,
}

impl std::fmt::Debug for InProcessDkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessDkim").finish_non_exhaustive()
    }
}

fn options() -> VerifyOptions {
    VerifyOptions {
        max_signatures: MAX_SIGNATURES,
        min_key_bits: MIN_KEY_BITS,
        clock_drift: CLOCK_DRIFT,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One signature result as DMARC input: the one mapping, also used by the DKIM filter's
/// facts ([`crate::dkim::DkimFilter`]).
pub(crate) fn input(r: SignatureResult) -> DkimInput {
    DkimInput {
        domain: r.domain.to_ascii_lowercase(),
        selector: r.selector,
        status: match r.result {
            DkimResult::Pass => DkimStatus::Pass,
            DkimResult::Fail => DkimStatus::Fail,
            DkimResult::Policy => DkimStatus::Policy,
            DkimResult::TempError => DkimStatus::TempError,
            DkimResult::PermError => DkimStatus::PermError,
        },
    }
}

impl From<SignatureResult> for DkimInput {
    /// A DKIM verifier's result as DMARC input (domain lower-cased, the result mapped).
    fn from(r: SignatureResult) -> Self {
        input(r)
    }
}

impl InProcessDkim {
    /// A verifier fetching keys through `resolver`.
    pub fn new(resolver: Arc<dyn Resolver>) -> Self {
        Self { resolver }
    }

    /// Starts verifying a message from its header block (top first).
    pub fn start(&self, headers: Vec<Header>) -> DkimStream {
        let verifier = MessageVerifier::new(&headers, options());
        DkimStream { headers, verifier }
    }

    /// Verifies a whole message (headers and body, CRLF).
    pub async fn verify(&self, raw: &[u8]) -> Vec<DkimInput> {
        let (headers, body_at) = Header::split_message(raw);
        let mut stream = self.start(headers);
        stream.body(raw.get(body_at..).unwrap_or_default());
        stream.finish(self).await
    }
}

/// One message being verified.
#[derive(Debug)]
pub struct DkimStream {
    headers: Vec<Header>,
    verifier: MessageVerifier,
}

impl DkimStream {
    /// Feeds a body chunk (CRLF line ends).
    pub fn body(&mut self, chunk: &[u8]) {
        self.verifier.body(chunk);
    }

    /// Fetches the keys and returns one result per signature (at most [`MAX_SIGNATURES`]).
    pub async fn finish(self, dkim: &InProcessDkim) -> Vec<DkimInput> {
        let results = self
            .verifier
            .finish(&self.headers, dkim.resolver.as_ref(), now())
            .await;
        results.into_iter().map(input).collect()
    }
}
