//! ARC (RFC 8617) as far as DMARC needs it: chain validation on inbound mail, and sealing
//! as the last hop of our ADMD (off by default: ARC is on its way to historic status).
//!
//! ARC is DKIM under other names, so this module is built on [`crate::dkim`] rather than
//! beside it: an `ARC-Message-Signature` is parsed by [`crate::dkim::Signature::parse_ams`]
//! and checked like a `DKIM-Signature` (canonicalization and streamed body hash from
//! the DKIM core, key lookup and key checks from its verifier); an `ARC-Seal` ([`Seal`])
//! signs the relaxed form of every earlier set's fields, in instance order. Sealing signs
//! through the DKIM signer's primitives.
//!
//! # Layout
//! - [`Seal`], [`ArcSet`], [`ChainStatus`]: the three fields, grouping them into sets, the
//!   structural rules (at most 50 sets, instances 1..N, one field of each kind per set,
//!   `cv=` order); [`ArcError`] when they are broken.
//! - [`ArcVerifier`] (`new(headers)`, `body(chunk)`, `finish(headers, resolver)` →
//!   [`ArcOutcome`]) and [`verify_message`].
//! - [`ArcSealer`]: a new set on top of a validated chain ([`SealedSet`]).
//!
//! # Who uses it
//! The DMARC filter validates the chain when `ARCVerify` (or a trusted-sealer list,
//! `DomainWhitelist`, or sealing) is configured in `opendmarc.conf`, writes the `arc=`
//! result, and accepts a DMARC failure whose chain passes and whose newest seal is by a
//! trusted sealer ([`crate::dmarc::PolicyOverride::TrustedForwarder`]). `mailstackd`'s
//! pipeline seals when `ARCSeal` is on ([`crate::stack::Pipeline::arc_sealer`]): its AAR is
//! the pipeline's own `Authentication-Results`, `arc=` included.
//!
//! # Result words
//! `arc=none` (no ARC field), `arc=pass` with `header.oldest-pass` (RFC 8617 §5.2 step 5,
//! the registered ptype of RFC 8617 §10.2: 0 when every AMS still validates, else the
//! lowest instance from which they do) and `smtp.remote-ip`, `arc=fail` with the reason.
//! A key that cannot be fetched fails the chain (RFC 8617 has no temporary result).

pub(crate) mod header;
pub(crate) mod seal;
pub(crate) mod verify;

use std::net::IpAddr;

use crate::auth_results::MethodResult;

pub use header::{ArcError, ArcSet, ChainStatus, Seal};
pub use seal::{ArcSealer, SealError, SealedSet};
pub use verify::ArcVerifier;

/// The chain's state (RFC 8617 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArcResult {
    /// No ARC set.
    None,
    /// Every seal and the newest message signature validate.
    Pass,
    /// Anything else.
    Fail,
}

impl ArcResult {
    /// The `arc=` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

/// What chain validation found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArcOutcome {
    /// The chain's state.
    pub result: ArcResult,
    /// Why it failed.
    pub reason: Option<&'static str>,
    /// With `pass`: `header.oldest-pass`.
    pub oldest_pass: Option<u32>,
    /// Each set's sealer (`ARC-Seal` `d=`, lower case), i=1 first; empty when the sets did
    /// not parse.
    pub sealers: Vec<String>,
}

impl ArcOutcome {
    /// No ARC set.
    pub fn none() -> Self {
        Self {
            result: ArcResult::None,
            reason: None,
            oldest_pass: None,
            sealers: Vec::new(),
        }
    }

    /// A failed chain.
    pub fn fail(reason: &'static str, sealers: Vec<String>) -> Self {
        Self {
            result: ArcResult::Fail,
            reason: Some(reason),
            oldest_pass: None,
            sealers,
        }
    }

    /// The number of sets (the newest instance).
    pub fn instances(&self) -> u32 {
        self.sealers.len() as u32
    }

    /// The sealer of the newest set: the ADMD that handed the message to us.
    pub fn newest_sealer(&self) -> Option<&str> {
        self.sealers.last().map(String::as_str)
    }

    /// Whether the chain passed and its newest seal is by one of `trusted` (lower-case
    /// domains). The newest sealer is the one whose message signature covers the message as
    /// it reached us and whose AAR tells what it saw; an earlier trusted seal vouches for a
    /// message a later, untrusted hop may have changed, so it is not enough.
    pub fn trusted_pass(&self, trusted: &[String]) -> bool {
        self.result == ArcResult::Pass
            && self
                .newest_sealer()
                .is_some_and(|d| trusted.iter().any(|t| t == d))
    }

    /// The `Authentication-Results` clause: `arc=<result> (i=<n>) [reason=".."]
    /// [header.oldest-pass=<n>] [smtp.remote-ip=<ip>]`.
    pub fn clause(&self, remote_ip: Option<IpAddr>) -> MethodResult {
        let mut c = MethodResult::new("arc", self.result.as_str());
        if self.instances() > 0 {
            c = c.comment(format!("i={}", self.instances()));
        }
        if let Some(r) = self.reason {
            c = c.reason(r);
        }
        if let Some(o) = self.oldest_pass {
            c = c.property("header.oldest-pass", o.to_string());
        }
        if let Some(ip) = remote_ip {
            c = c.property("smtp.remote-ip", ip.to_string());
        }
        c
    }
}

/// Validates the chain of a complete CRLF message (for tests and tools).
pub async fn verify_message(msg: &[u8], resolver: &dyn crate::dns::Resolver) -> ArcOutcome {
    let (headers, at) = crate::dkim::canon::Header::split_message(msg);
    let mut v = ArcVerifier::new(&headers);
    v.body(msg.get(at..).unwrap_or_default());
    v.finish(&headers, resolver).await
}

/// Validates a complete CRLF message, seals it with `sealer` (the AAR is `authserv_id;`
/// then `results`, with `arc=<chain result>` added first) and returns the message with
/// the new set on top (for tests and tools; `mailstackd` seals in its pipeline).
pub async fn seal_message(
    sealer: &ArcSealer,
    msg: &[u8],
    resolver: &dyn crate::dns::Resolver,
    authserv_id: &str,
    results: &[MethodResult],
    now: u64,
) -> Result<Vec<u8>, SealError> {
    use crate::dkim::canon::{BodyHasher, Header};
    let chain = verify_message(msg, resolver).await;
    let (headers, at) = Header::split_message(msg);
    let mut body = BodyHasher::new(
        crate::dkim::config::Canon::Relaxed,
        &aws_lc_rs::digest::SHA256,
        None,
    );
    body.update(msg.get(at..).unwrap_or_default());
    let mut ar = crate::auth_results::AuthResults::new(authserv_id);
    ar.push(chain.clause(None));
    for r in results {
        ar.push(r.clone());
    }
    let set = sealer.seal(
        &headers,
        &body.finish().0,
        &chain,
        &ar.to_milter_value(),
        now,
    )?;
    let mut out = Vec::with_capacity(msg.len() + 2048);
    for (name, value) in set.fields().iter().rev() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.replace('\n', "\r\n").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(msg);
    Ok(out)
}

#[cfg(test)]
mod tests;
