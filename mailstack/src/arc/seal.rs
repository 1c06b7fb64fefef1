//! Sealing (RFC 8617 §5.1): a new ARC set on top of the chain the message arrived with,
//! signed with [`crate::dkim::sign`]'s key handling and canonicalization.

use std::sync::Arc;

use aws_lc_rs::digest::{Context, Digest};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::header::{
    AUTHENTICATION_RESULTS, ArcError, ChainStatus, MESSAGE_SIGNATURE, SEAL, collect_sets,
};
use super::verify::seal_digest;
use super::{ArcOutcome, ArcResult};
use crate::dkim::canon::{Header, hash_headers, hash_signature_field};
use crate::dkim::config::Canon;
use crate::dkim::key::{KeyType, PrivateKey};
use crate::dkim::sig::{Algorithm, MAX_ARC_INSTANCE, Unsigned, append_b};
use crate::dkim::sign::{SignError, sign_digest};

/// The header fields an `ARC-Message-Signature` of ours covers, each instance present (and
/// `From` at least once, RFC 6376 §5.4). `Authentication-Results`, `DKIM-Signature` and
/// the ARC fields are left out on purpose: the filters add and delete those fields in the
/// same pass, after the hash was taken (RFC 8617 §4.1.2 also says the AMS should not cover
/// ARC-Seal fields).
pub(crate) const SIGNED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
];

/// Why no ARC set was added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// ARC seals are `rsa-sha256` (RFC 8617 §4.1.3): the key is not RSA.
    #[error("ARC sealing needs an RSA key (rsa-sha256, RFC 8617)")]
    KeyType,
    /// The chain the message arrived with failed: it is left as it came, so that a later
    /// validator sees the failure itself (RFC 8617 §5.1.2 allows, not requires, a
    /// `cv=fail` set).
    #[error("the ARC chain failed ({0}); not sealed")]
    ChainFailed(&'static str),
    /// 50 sets already (RFC 8617 §4.2.1).
    #[error("the message already carries 50 ARC sets")]
    TooManySets,
    /// The ARC fields changed between validation and sealing (should not happen).
    #[error("ARC fields unusable: {0}")]
    Structure(#[from] ArcError),
    /// The crypto library refused.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// A new ARC set: the field values, folded with `"\n\t"`, no leading space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSet {
    /// `i=`.
    pub instance: u32,
    /// The `ARC-Authentication-Results` value.
    pub aar: String,
    /// The `ARC-Message-Signature` value.
    pub ams: String,
    /// The `ARC-Seal` value.
    pub seal: String,
}

impl SealedSet {
    /// `(name, value)` in the order they are best inserted at the top one after the other
    /// (the seal ends up first, as dkimpy and OpenARC write them).
    pub fn fields(&self) -> [(&'static str, &str); 3] {
        [
            (AUTHENTICATION_RESULTS, &self.aar),
            (MESSAGE_SIGNATURE, &self.ams),
            (SEAL, &self.seal),
        ]
    }
}

/// Seals messages for one ADMD: `d=`, `s=` and an RSA key.
#[derive(Debug, Clone)]
pub struct ArcSealer {
    domain: String,
    selector: String,
    key: Arc<PrivateKey>,
}

/// A header as the MTA will write it: leading space, CRLF folds.
fn as_written(name: &str, value: &str) -> Header {
    Header {
        name: name.to_owned(),
        value: format!(" {value}").replace('\n', "\r\n").into_bytes(),
    }
}

impl ArcSealer {
    /// A sealer signing as `d=domain`, `s=selector`.
    pub fn new(domain: &str, selector: &str, key: Arc<PrivateKey>) -> Result<Self, SealError> {
        if key.key_type() != KeyType::Rsa {
            return Err(SealError::KeyType);
        }
        Ok(Self {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            selector: selector.to_owned(),
            key,
        })
    }

    /// `d=`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Adds the next set to a message whose header block is `headers` (as received), whose
    /// relaxed SHA-256 body hash is `body`, and whose chain validated as `chain`.
    /// `auth_results` is our `Authentication-Results` value (`authserv-id; method=result
    /// ...`), copied into the AAR (RFC 8617 §4.1.1). `now` is the Unix time (`t=`).
    pub fn seal(
        &self,
        headers: &[Header],
        body: &Digest,
        chain: &ArcOutcome,
        auth_results: &str,
        now: u64,
    ) -> Result<SealedSet, SealError> {
        let cv = match chain.result {
            ArcResult::None => ChainStatus::None,
            ArcResult::Pass => ChainStatus::Pass,
            ArcResult::Fail => {
                return Err(SealError::ChainFailed(chain.reason.unwrap_or("failed")));
            }
        };
        let prior = collect_sets(headers)?;
        if (cv == ChainStatus::None) != prior.is_empty() {
            return Err(SealError::Structure(ArcError(
                "chain status and ARC fields differ",
            )));
        }
        let instance = prior.len() as u32 + 1;
        if instance > MAX_ARC_INSTANCE {
            return Err(SealError::TooManySets);
        }
        let aar = format!("i={instance}; {auth_results}");
        let ams = self.message_signature(headers, body, instance, now)?;
        let mut seal = format!(
            "i={instance}; a=rsa-sha256; cv={}; d={};\n\ts={}; t={now};\n\tb=",
            cv.as_str(),
            self.domain,
            self.selector
        );
        let digest = seal_digest(
            Algorithm::RsaSha256,
            &prior,
            [
                &as_written(AUTHENTICATION_RESULTS, &aar),
                &as_written(MESSAGE_SIGNATURE, &ams),
                &as_written(SEAL, &seal),
            ],
        );
        append_b(&mut seal, &sign_digest(&self.key, &digest)?);
        Ok(SealedSet {
            instance,
            aar,
            ams,
            seal,
        })
    }

    /// The `ARC-Message-Signature`: a DKIM signature in OpenDKIM's layout
    /// ([`Unsigned::render`]) with `i=<instance>` where DKIM has `v=1`.
    fn message_signature(
        &self,
        headers: &[Header],
        body: &Digest,
        instance: u32,
        now: u64,
    ) -> Result<String, SealError> {
        let mut h: Vec<String> = headers
            .iter()
            .map(|x| x.name.trim().to_ascii_lowercase())
            .filter(|n| SIGNED_HEADERS.contains(&n.as_str()))
            .collect();
        if !h.iter().any(|n| n == "from") {
            h.insert(0, "from".into());
        }
        let bh = B64.encode(body.as_ref());
        let unsigned = Unsigned {
            algorithm: Algorithm::RsaSha256,
            canon: (Canon::Relaxed, Canon::Relaxed),
            domain: &self.domain,
            selector: &self.selector,
            identity: None,
            timestamp: now,
            expiration: None,
            length: None,
            bh: &bh,
            headers: &h,
        };
        let rendered = unsigned.render();
        let mut value = match rendered.strip_prefix("v=1; ") {
            Some(rest) => format!("i={instance}; {rest}"),
            // render() always starts with `v=1; ` (see its layout); kept total anyway.
            None => {
                return Err(SealError::Structure(ArcError(
                    "unexpected signature layout",
                )));
            }
        };
        let mut ctx = Context::new(Algorithm::RsaSha256.digest());
        hash_headers(&mut ctx, Canon::Relaxed, headers, &h);
        hash_signature_field(
            &mut ctx,
            Canon::Relaxed,
            &as_written(MESSAGE_SIGNATURE, &value),
        );
        append_b(&mut value, &sign_digest(&self.key, &ctx.finish())?);
        Ok(value)
    }
}
