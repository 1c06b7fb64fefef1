//! DKIM signing and verification (RFC 6376, RFC 8463) as a drop-in for OpenDKIM 2.11: the
//! same `opendkim.conf`, the same decisions (sign for internal hosts and our domains, verify
//! the rest), the same `DKIM-Signature` layout and `Authentication-Results` text.
//!
//! # Layout
//! - [`DkimConfig`]: `opendkim.conf` (options, defaults, refusals); [`Dataset`] and
//!   [`PeerList`]: data sets and peer lists.
//! - [`Header`]: a header field as canonicalization sees it; [`Signature`]: the signature
//!   field.
//! - [`PrivateKey`]: private keys and `RequireSafeKeys`; [`PublicKeyRecord`]: key records;
//!   [`generate_key`]: `opendkim-genkey`.
//! - [`sign_message`]: which keys sign a message, and signing; [`MessageVerifier`] and
//!   [`verify_message`]: verification, [`authentication_results`]: its
//!   `Authentication-Results` value.
//! - [`DkimFilter`]: the sign/verify decisions in the common [`crate::filter::Filter`]
//!   shape. The `dkim-milter` example binary serves it alone as
//!   `mailstack::filter::Milter<DkimFilter>`; `mailstackd` chains it with the other filters.
//! - [`rotate`]: key rotation (`mailstack dkim-rotate`), its own namespace.
//!
//! # What the milter answers
//! [`DkimFilter`] returns a [`crate::filter::Verdict`]: the `On-*` action (reject as
//! `550 5.7.0 <text>`, tempfail as `451 4.7.5` for DNS failures and `451 4.7.0` otherwise,
//! discard, quarantine falling back to delivery when the MTA did not grant it, accept), the
//! header changes (the `DKIM-Signature` fields inserted at the top, first key first, the
//! `DKIM-Filter` field, old signatures and forged `Authentication-Results` deleted, and our own
//! `Authentication-Results` as [`crate::filter::Modification::AuthResults`], OpenDKIM's exact
//! text), one `dkim=` clause per signature for `mailstackd`'s combined field, and the results
//! as [`crate::filter::AuthFacts::dkim`] for DMARC (only when it verified).
//!
//! Served alone, the generic [`crate::filter::Milter`] turns that into the reply through the
//! one table [`crate::filter::apply`]: end of message answers **ACCEPT** (after the header
//! changes), as OpenDKIM does, not CONTINUE: the filter has seen the whole message and has
//! nothing more to say. A refused message (reject, tempfail, discard) gets no header changes,
//! since the MTA would drop them. A header change the MTA refuses is logged; it no longer
//! turns into `On-InternalError` (the adapter applies the changes after the decision).
//!
//! For embedding (the DMARC filter, tools), the small API is [`MessageVerifier`]
//! (`new(headers)`, `body(chunk)`, `finish(headers, resolver, now)` → one
//! [`SignatureResult`] per signature with `result`, `domain`, `selector`) or
//! [`verify_message`] for a whole message.
//!
//! # Why our own DKIM core and which crypto
//! mail-auth 0.13.3 (the newest that builds on Rust 1.95) computes a wrong relaxed body hash
//! when the body ends in whitespace-only lines, writes `header.i` instead of `header.d`,
//! reports a body hash mismatch as `neutral`, verifies every signature without a cap and has
//! no streaming verification. Rather than patch around each, this module owns
//! canonicalization, signing and verification (RFC 6376 §3.4–§6) and uses
//! [aws-lc-rs](https://docs.rs/aws-lc-rs) for the primitives: it is already mail-auth's
//! default backend (no new crate), it is as fast as OpenSSL (which OpenDKIM uses), it signs
//! RSA in constant time and carries no advisory. The `rsa` crate behind mail-auth's
//! `rust-crypto` feature carries RUSTSEC-2023-0071 (Marvin timing side channel in RSA
//! decryption/signing), which matters exactly for a DKIM signer, so it was not even measured;
//! `ring` lacks RSA key generation, which `genkey` needs, and is slower here. Measured by
//! `benches/benches/dkim_milter.rs` on the 2-core build VM (µs per operation, aws-lc-rs vs
//! ring): RSA-2048 sign 242 vs 562, verify 18 vs 21; Ed25519 sign 8 vs 23, verify 36 vs 46.
//! Through the milter protocol (4 connections, 5 KB messages, RSA-2048) the same bench gives
//! 4.5× OpenDKIM's messages per CPU second for signing and 6.2× for verifying.
//!
//! # Memory bound
//! Headers are kept up to `MaximumHeaders` (65536 bytes by default); the body is streamed
//! through the hash states (one per distinct body canonicalization and `l=` among the first
//! `MaximumSignaturesToVerify` signatures), so body size costs no memory. Above the header
//! bound the message is not processed and `On-Security` applies (tempfail by default;
//! OpenDKIM rejects).
//!
//! # Deliberate differences from OpenDKIM 2.11
//! Each is shown by `examples/tests/dkim_opendkim.rs` or a unit test.
//! - A missing key record is `dkim=permerror` (RFC 6376 §6.1.2 PERMFAIL); OpenDKIM writes
//!   `dkim=fail reason="key not found in DNS"`. The reason text is the same.
//! - A body hash mismatch gives `reason="body hash did not verify"`; OpenDKIM says
//!   `"signature verification failed"` for body and header mismatches alike. Both are `fail`.
//! - No `dkim-atps=` clause (ATPS, RFC 6541, is not implemented) and no DNSSEC word in the key
//!   comment (`(2048-bit key)`, as OpenDKIM writes without DNSSEC data).
//! - The signing algorithm follows each key (RSA → `rsa-sha256`, Ed25519 →
//!   `ed25519-sha256`); `SignatureAlgorithm` is only checked. RSA and Ed25519 sign the same
//!   message when the SigningTable lists both keys with `MultipleSignatures yes`. `rsa-sha1`
//!   is verified but never used to sign.
//! - OpenDKIM 2.11's own Ed25519 signatures over `simple` header canonicalization do not
//!   verify (not even in OpenDKIM); we report them as `fail` too.
//! - RSA keys under 1024 bits cannot be verified by aws-lc (`policy`, "key too small", even
//!   with `MinimumKeyBits 0`). Signing keys of 1024 to 2047 bits are used (RFC 8301 allows
//!   them) through aws-lc's own `RSA_sign` ([`LegacyRsaKey`]) with a warning at
//!   startup; under 1024 bits a signing key is refused.
//! - A malformed KeyTable (an entry that is not `domain:selector:key`, a key that does not
//!   load or fails `RequireSafeKeys`) stops startup, naming the entry; OpenDKIM starts and
//!   tempfails the messages that key should sign. Refusing early is deliberate: a typo in
//!   the key table should not turn into queued mail.
//! - `RequireSafeKeys` checks the key file it opened (owner root or our user; no other
//!   read/write; group read/write only for a group we are in, opendkim.conf(5)) and reads
//!   the key from the same descriptor. Inline keys in the KeyTable (base64 or PEM in the
//!   value) are not checked, as in OpenDKIM: they are as safe as the KeyTable file, which
//!   the admin must protect like a key file. A world-writable directory above the key is
//!   refused unless it is sticky (`/tmp`); OpenDKIM refuses sticky ones too.
//! - A key lookup answered SERVFAIL, REFUSED or not at all within `DNSTimeout` (5 s, its
//!   documented default; a deadline of its own whatever resolver is used) is `temperror`
//!   and `On-DNSError` applies.
//! - `SendReports yes` is refused (RFC 6651 reports would need this filter to submit mail of
//!   its own); `SendReports no`, `ReportAddress` and `ReportBccAddress` are accepted without
//!   effect. `RequestReports` writes `r=y`. `ReplaceRules` is refused (experimental in
//!   OpenDKIM, POSIX regular expressions, no regex engine here). `ConditionalSignatures` is
//!   refused: OpenDKIM 2.11 has no such option.
//! - `DontSignMailTo`, `MacroList`, `StrictHeaders` and `RequiredHeaders` are read
//!   ([`DkimConfig::dont_sign_to`], [`DkimConfig::macro_list_allows`],
//!   [`strict_headers_problem`]) for the per-message decision.
//! - `MaximumHeaders` exceeded → `On-Security`, not a fixed reject.
//! - Every `Authentication-Results` field claiming our authserv-id is deleted, whatever its
//!   methods, comments, version or folding ([`crate::auth_results::claims_authserv_id`]) and
//!   whether we sign, verify or do nothing; OpenDKIM deletes only fields with a `dkim` result
//!   and only when verifying, so a forged `spf=pass` under our name survived it.
//!   `KeepAuthResults yes` keeps them all, as OpenDKIM.
//! - A `DKIM-Signature` that is not a tag-list or lacks one of `v a b d h s` is, as for
//!   OpenDKIM, a syntax error decided at end of headers by `On-BadSignature` (reject:
//!   `550 5.7.0 DKIM signature syntax error` there, the filter's `Needs::early_reply`).
//!   With `accept` (the default) OpenDKIM answers ACCEPT at end of headers; we go on to end
//!   of message and answer ACCEPT with no result, so forged fields are still deleted.
//!   OpenDKIM also declines to sign internal mail carrying such a signature; we sign it (the
//!   check applies only to mail we verify).
//! - Unsupported features (LDAP, SQL/DB data sets, Lua, VBR, ATPS, reputation, statistics,
//!   RBL, header rewriting, re-signing, `SenderHeaders`, `MTA`) are refused at startup with
//!   file and line instead of being available.

pub(crate) mod canon;
pub(crate) mod config;
pub(crate) mod dataset;
pub(crate) mod filter;
pub(crate) mod key;
pub mod rotate;
pub(crate) mod sig;
pub(crate) mod sign;
pub(crate) mod verify;

use std::path::Path;

pub use canon::Header;
pub use config::{Canon, DkimConfig, OnActions};
pub use dataset::{Dataset, DatasetError, PeerList};
pub use filter::{DkimError, DkimFilter, DkimMessage};
pub use key::{
    GenKeyOptions, GeneratedKey, KeyError, KeyRecordError, KeyType, LegacyRsaError, LegacyRsaKey,
    MIN_RSA_SIGNING_BITS, PrivateKey, PublicKeyRecord, RECOMMENDED_RSA_BITS,
    check_safe as check_key_file, generate as generate_key, rsa_key_bits, txt_record_value,
};
pub use sig::{Algorithm, SigError, Signature};
pub use sign::{
    HeaderCountProblem, SignError, SignOptions, SigningKey, sign_message, strict_headers_problem,
};
pub use verify::{
    DkimResult, FailureClass, MessageVerifier, SignatureResult, VerifyOptions,
    authentication_results, verify_message,
};

use crate::config::ConfigError;
use crate::dns::{MemoryRecord, MemoryResolver};

/// Reads an OpenDKIM `TestPublicKeys` file (`<selector>._domainkey.<domain> <record>` per
/// line) into an in-memory zone. A line without a record is an error naming its number.
pub fn test_public_keys(path: &Path) -> Result<MemoryResolver, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut zone = MemoryResolver::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, record) = line.split_once(char::is_whitespace).ok_or_else(|| {
            ConfigError::at(
                path,
                n + 1,
                format!("expected `name record`, found {line:?}"),
            )
        })?;
        zone.add(name, MemoryRecord::Txt(record.trim().as_bytes().to_vec()));
    }
    Ok(zone)
}
