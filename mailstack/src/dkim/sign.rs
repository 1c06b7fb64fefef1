//! Signing: which keys apply to a message (OpenDKIM's `Domain`/`KeyFile`/`Selector` or
//! `KeyTable`/`SigningTable` rules) and producing `DKIM-Signature` values.

use std::path::Path;

use aws_lc_rs::digest::{Context, Digest};
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::canon::{BodyHasher, Header, hash_headers, hash_signature_field};
use super::config::{Canon, DkimConfig};
use super::dataset::Dataset;
use super::key::{KeyError, KeyType, PrivateKey};
use super::sig::{Algorithm, Unsigned, append_b};

/// One key and where it signs.
#[derive(Debug)]
pub struct SigningKey {
    /// `d=`; `None` means the sender's domain (a KeyTable `%`).
    pub domain: Option<String>,
    /// `s=`.
    pub selector: String,
    /// The private key.
    pub key: PrivateKey,
}

/// How to sign (the header and canonicalization options of `opendkim.conf`).
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// `Canonicalization` (header, body).
    pub canon: (Canon, Canon),
    /// `SignHeaders` (lower case).
    pub sign_headers: Vec<String>,
    /// `OversignHeaders` (lower case).
    pub oversign_headers: Vec<String>,
    /// `SignatureTTL` (0: no `x=`).
    pub ttl: u64,
    /// `RequestReports`: write `r=y` (RFC 6651 §4.1), asking verifiers for failure reports.
    pub request_reports: bool,
}

impl SignOptions {
    /// The options of `cfg`.
    pub fn from_config(cfg: &DkimConfig) -> Self {
        Self {
            canon: cfg.canonicalization,
            sign_headers: cfg.sign_headers.clone(),
            oversign_headers: cfg.oversign_headers.clone(),
            ttl: cfg.signature_ttl,
            request_reports: cfg.request_reports,
        }
    }

    /// The `h=` list for `headers`: every instance of a signed name in message order, then
    /// each oversigned name once more (OpenDKIM's `OversignHeaders`).
    pub fn header_list(&self, headers: &[Header]) -> Vec<String> {
        let mut h: Vec<String> = headers
            .iter()
            .filter(|x| {
                let n = x.name.trim().to_ascii_lowercase();
                self.sign_headers.contains(&n)
            })
            .map(|x| x.name.trim().to_owned())
            .collect();
        for o in &self.oversign_headers {
            if self.sign_headers.contains(o) || o == "from" {
                let name = headers
                    .iter()
                    .find(|x| x.name.trim().eq_ignore_ascii_case(o))
                    .map_or_else(|| title_case(o), |x| x.name.trim().to_owned());
                h.push(name);
            }
        }
        h
    }
}

fn title_case(s: &str) -> String {
    s.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Why a message could not be signed (`On-SignatureError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The crypto library refused (should not happen with a loaded key).
    #[error("signing failed: {0}")]
    Crypto(String),
}

/// Header fields RFC 5322 §3.6 allows at most once (its table's "max number" 1).
pub(crate) const AT_MOST_ONCE: &[&str] = &[
    "date",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
];

/// Why a header block breaks RFC 5322 §3.6's field counts, for `StrictHeaders` (refuse to
/// process) and `RequiredHeaders` (reject): no From or no Date (each "min 1"), or a field
/// that may appear at most once (Date, From, Sender, Reply-To, To, Cc, Bcc, Message-ID,
/// In-Reply-To, References, Subject) more than once. `None` if the counts conform.
pub fn strict_headers_problem(headers: &[Header]) -> Option<HeaderCountProblem> {
    let count = |n: &str| {
        headers
            .iter()
            .filter(|h| h.name.trim().eq_ignore_ascii_case(n))
            .count()
    };
    for required in ["from", "date"] {
        if count(required) == 0 {
            return Some(HeaderCountProblem::Missing(required));
        }
    }
    AT_MOST_ONCE
        .iter()
        .find(|n| count(n) > 1)
        .map(|n| HeaderCountProblem::Repeated(n))
}

/// What [`strict_headers_problem`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderCountProblem {
    /// A mandatory field is absent.
    #[error("RFC 5322 requires a {0} header field")]
    Missing(&'static str),
    /// A field allowed once appears more often.
    #[error("RFC 5322 allows one {0} header field, found more")]
    Repeated(&'static str),
}

/// A finished body hash for [`sign_one`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyHash<'a> {
    /// The hash of the canonical body.
    pub digest: &'a Digest,
    /// The canonical body length.
    pub len: u64,
    /// Whether to write `l=` (`BodyLengthDB`).
    pub length_tag: bool,
}

/// Signs one message with one key: `body` is the finished body hash (from a [`BodyHasher`]
/// with the options' body canonicalization). Returns the field value (no leading space,
/// folded with `\n\t`).
pub(crate) fn sign_one(
    key: &SigningKey,
    domain: &str,
    identity: Option<&str>,
    opts: &SignOptions,
    headers: &[Header],
    body: &BodyHash<'_>,
    now: u64,
) -> Result<String, SignError> {
    let started = crate::metrics::get().map(|m| (m, std::time::Instant::now()));
    let r = sign_inner(key, domain, identity, opts, headers, body, now);
    if let Some((m, t)) = started {
        m.observe("dkim_sign", t.elapsed());
    }
    r
}

fn sign_inner(
    key: &SigningKey,
    domain: &str,
    identity: Option<&str>,
    opts: &SignOptions,
    headers: &[Header],
    body: &BodyHash<'_>,
    now: u64,
) -> Result<String, SignError> {
    let h = opts.header_list(headers);
    let algorithm = match key.key.key_type() {
        KeyType::Rsa => Algorithm::RsaSha256,
        KeyType::Ed25519 => Algorithm::Ed25519Sha256,
    };
    let bh = B64.encode(body.digest.as_ref());
    let unsigned = Unsigned {
        algorithm,
        canon: opts.canon,
        domain,
        selector: &key.selector,
        identity,
        timestamp: now,
        expiration: (opts.ttl > 0).then(|| now + opts.ttl),
        length: body.length_tag.then_some(body.len),
        bh: &bh,
        headers: &h,
    };
    let mut value = unsigned.render();
    if opts.request_reports {
        // After t=/x=/i=/l=, before bh=: hashed like every other tag.
        if let Some(at) = value.find("\n\tbh=") {
            value.insert_str(at, " r=y;");
        }
    }
    let field = Header {
        name: "DKIM-Signature".into(),
        value: format!(" {value}").replace('\n', "\r\n").into_bytes(),
    };
    let mut ctx = Context::new(algorithm.digest());
    hash_headers(&mut ctx, opts.canon.0, headers, &h);
    hash_signature_field(&mut ctx, opts.canon.0, &field);
    let sig = sign_digest(&key.key, &ctx.finish())?;
    append_b(&mut value, &sig);
    Ok(value)
}

/// Signs a finished SHA-256 header hash with `key` (RSA PKCS#1 v1.5, or Ed25519 over the
/// hash as RFC 8463 says): the `b=` bytes, for DKIM and ARC ([`crate::arc`]) alike.
pub(crate) fn sign_digest(key: &PrivateKey, digest: &Digest) -> Result<Vec<u8>, SignError> {
    Ok(match key {
        PrivateKey::Rsa(k) => {
            let mut out = vec![0u8; k.public_modulus_len()];
            k.sign_digest(&RSA_PKCS1_SHA256, digest, &mut out)
                .map_err(|e| SignError::Crypto(e.to_string()))?;
            out
        }
        PrivateKey::RsaLegacy(k) => k
            .sign_sha256_digest(digest.as_ref())
            .map_err(|e| SignError::Crypto(e.to_string()))?,
        PrivateKey::Ed25519(k) => k.sign(digest.as_ref()).as_ref().to_vec(),
    })
}

/// Signs a complete CRLF message with `keys` (all with the same options); returns the field
/// values in key order. For tests, tools and callers that hold the whole message.
pub fn sign_message(
    keys: &[(&SigningKey, &str)],
    opts: &SignOptions,
    msg: &[u8],
    length: bool,
    now: u64,
) -> Result<Vec<String>, SignError> {
    let (headers, body_at) = Header::split_message(msg);
    let mut hasher = BodyHasher::new(opts.canon.1, &aws_lc_rs::digest::SHA256, None);
    hasher.update(&msg[body_at..]);
    let (bh, len) = hasher.finish();
    keys.iter()
        .map(|(k, d)| {
            let body = BodyHash {
                digest: &bh,
                len,
                length_tag: length,
            };
            sign_one(k, d, None, opts, &headers, &body, now)
        })
        .collect()
}

/// One key chosen for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyChoice {
    /// Position in the [`KeySet`] ([`KeySet::key`]).
    pub index: usize,
    /// `d=`.
    pub domain: String,
    /// `i=`, from the SigningTable's second field (dropped unless within `d=`).
    pub identity: Option<String>,
}

/// The keys of a configuration and the rules choosing them.
#[derive(Debug)]
pub(crate) struct KeySet {
    /// Single-key mode: `Domain`, with `SubDomains`.
    domains: Dataset,
    sub_domains: bool,
    /// Loaded keys by KeyTable name (single-key mode: one entry named "").
    keys: Vec<(String, SigningKey)>,
    signing_table: Option<Dataset>,
    multiple: bool,
}

impl KeySet {
    /// Loads every key of `cfg` (checking `RequireSafeKeys`); an empty set if `cfg` does not
    /// sign. `Err` names the key file and what is wrong.
    pub(crate) fn from_config(cfg: &DkimConfig) -> Result<Self, KeyError> {
        let mut set = Self {
            domains: cfg.domains.clone(),
            sub_domains: cfg.sub_domains,
            keys: Vec::new(),
            signing_table: cfg.signing_table.clone(),
            multiple: cfg.multiple_signatures,
        };
        if !cfg.sign {
            return Ok(set);
        }
        if let (Some(file), Some(sel)) = (&cfg.key_file, &cfg.selector)
            && cfg.key_table.is_none()
        {
            let key = PrivateKey::read(file, cfg.require_safe_keys)?;
            set.keys.push((
                String::new(),
                SigningKey {
                    domain: None,
                    selector: sel.clone(),
                    key,
                },
            ));
        }
        if let Some(kt) = &cfg.key_table {
            for (name, value) in &kt.entries {
                let mut parts = value.splitn(3, ':');
                let (Some(d), Some(s), Some(k)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(KeyError::KeyTableSyntax {
                        name: name.clone(),
                        value: value.clone(),
                    });
                };
                let key = if k.starts_with('/') || k.starts_with("./") || k.starts_with("../") {
                    PrivateKey::read(Path::new(k), cfg.require_safe_keys)?
                } else {
                    PrivateKey::parse(k.as_bytes()).map_err(|e| KeyError::KeyTableKey {
                        name: name.clone(),
                        source: Box::new(e),
                    })?
                };
                set.keys.push((
                    name.clone(),
                    SigningKey {
                        domain: (d != "%").then(|| d.to_ascii_lowercase()),
                        selector: s.to_owned(),
                        key,
                    },
                ));
            }
        }
        for (name, k) in &set.keys {
            if k.key.key_type() == KeyType::Rsa && k.key.bits() < super::key::RECOMMENDED_RSA_BITS {
                tracing::warn!(
                    "key {name:?} (selector {}): {}-bit RSA; RFC 8301 asks signers for at \
                     least 2048 bits",
                    k.selector,
                    k.key.bits()
                );
            }
        }
        Ok(set)
    }

    /// The key at `index` (from [`KeySet::keys_for`]).
    pub(crate) fn key(&self, index: usize) -> &SigningKey {
        &self.keys[index.min(self.keys.len().saturating_sub(1))].1
    }

    /// Whether any key is loaded.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that sign mail from `from` (`user@domain`), each with its `d=` and `i=`.
    pub(crate) fn keys_for(&self, from: &str) -> Vec<KeyChoice> {
        let from = from.to_ascii_lowercase();
        let Some((user, domain)) = from.rsplit_once('@') else {
            return Vec::new();
        };
        match &self.signing_table {
            None => self.single_key(domain),
            Some(t) => {
                let names = if t.wildcard {
                    t.lookup_all(&from)
                } else {
                    table_lookup(t, user, domain)
                };
                let take = if self.multiple { names.len() } else { 1 };
                names
                    .into_iter()
                    .take(take)
                    .filter_map(|v| {
                        let mut fields = v.split(':').map(str::trim);
                        let name = fields.next().unwrap_or("").replace('%', domain);
                        let identity = fields.next().filter(|i| !i.is_empty());
                        let index = self.keys.iter().position(|(n, _)| *n == name)?;
                        let key = &self.keys[index].1;
                        let d = key.domain.clone().unwrap_or_else(|| domain.to_owned());
                        // OpenDKIM drops an identity outside d= rather than sign badly.
                        let identity = identity.map(|i| i.replace('%', domain)).filter(|i| {
                            let idom = i.rsplit_once('@').map_or("", |(_, x)| x);
                            idom.eq_ignore_ascii_case(&d)
                                || idom.to_ascii_lowercase().ends_with(&format!(".{d}"))
                        });
                        Some(KeyChoice {
                            index,
                            domain: d,
                            identity,
                        })
                    })
                    .collect()
            }
        }
    }

    fn single_key(&self, domain: &str) -> Vec<KeyChoice> {
        if self.keys.is_empty() {
            return Vec::new();
        }
        // `Domain *` (or a `refile:` pattern) matches every domain, as in OpenDKIM; the
        // signature then carries the sender's own domain as d=.
        let matched = self.domains.keys().find_map(|d| {
            let d = d.to_ascii_lowercase();
            if d == "*" || (self.domains.wildcard && super::dataset::wildcard_match(&d, domain)) {
                return Some(domain.to_owned());
            }
            (domain == d || (self.sub_domains && domain.ends_with(&format!(".{d}")))).then_some(d)
        });
        matched
            .map(|d| {
                vec![KeyChoice {
                    index: 0,
                    domain: d,
                    identity: None,
                }]
            })
            .unwrap_or_default()
    }
}

/// OpenDKIM's SigningTable lookup order for non-`refile:` tables: `user@host`, `host`,
/// `user@.parent` for each parent, `.parent` for each parent, `user@*`, `*`.
fn table_lookup<'a>(t: &'a Dataset, user: &str, domain: &str) -> Vec<&'a str> {
    let mut keys = vec![format!("{user}@{domain}"), domain.to_owned()];
    let parents: Vec<&str> = domain
        .match_indices('.')
        .map(|(i, _)| &domain[i + 1..])
        .collect();
    keys.extend(parents.iter().map(|p| format!("{user}@.{p}")));
    keys.push(format!(".{domain}"));
    keys.extend(parents.iter().map(|p| format!(".{p}")));
    keys.push(format!("{user}@*"));
    keys.push("*".into());
    let mut out = Vec::new();
    for k in keys {
        out.extend(t.lookup_all(&k));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_list_and_oversigning() {
        let cfg = DkimConfig::parse(
            Path::new("x"),
            "OversignHeaders From,Reply-To\nSignHeaders From,To,Subject,Reply-To\n",
        )
        .unwrap();
        let o = SignOptions::from_config(&cfg);
        let (hs, _) = Header::split_message(b"From: a@b\r\nTo: c\r\nTo: d\r\nX: y\r\n\r\n");
        assert_eq!(o.header_list(&hs), ["From", "To", "To", "From", "Reply-To"]);
    }

    #[test]
    fn header_counts_for_strict_headers() {
        let hs = |t: &[u8]| Header::split_message(t).0;
        assert_eq!(
            strict_headers_problem(&hs(b"From: a@b\r\nDate: x\r\nTo: c\r\nTo: d\r\n\r\n")),
            Some(HeaderCountProblem::Repeated("to"))
        );
        assert_eq!(
            strict_headers_problem(&hs(b"Date: x\r\nSubject: s\r\n\r\n")),
            Some(HeaderCountProblem::Missing("from"))
        );
        assert_eq!(
            strict_headers_problem(&hs(
                b"From: a@b\r\nDate: x\r\nReceived: 1\r\nReceived: 2\r\n\r\n"
            )),
            None
        );
    }

    #[tokio::test]
    async fn request_reports_adds_r_y_and_the_signature_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let k = key_file(dir.path());
        let key = SigningKey {
            domain: Some("example.com".into()),
            selector: "s".into(),
            key: PrivateKey::read(&k, true).unwrap(),
        };
        let cfg = DkimConfig::parse(Path::new("c"), "RequestReports yes\n").unwrap();
        let msg = b"From: a@example.com\r\nDate: x\r\n\r\nhi\r\n";
        let v = sign_message(
            &[(&key, "example.com")],
            &SignOptions::from_config(&cfg),
            msg,
            false,
            1,
        )
        .unwrap()
        .remove(0);
        assert!(v.contains(" r=y;\n\tbh="), "{v}");
        let sig =
            super::super::sig::Signature::parse(format!(" {v}").replace('\n', "\r\n").as_bytes())
                .unwrap();
        assert_eq!(sig.selector, "s");
        let mut zone = crate::dns::MemoryResolver::new();
        zone.add(
            "s._domainkey.example.com",
            crate::dns::MemoryRecord::Txt(
                format!("v=DKIM1; k=ed25519; p={}", key.key.public_record_value()).into_bytes(),
            ),
        );
        let mut signed = format!("DKIM-Signature: {}\r\n", v.replace('\n', "\r\n")).into_bytes();
        signed.extend_from_slice(msg);
        let r = super::super::verify::verify_message(
            &signed,
            std::sync::Arc::new(zone),
            super::super::verify::VerifyOptions::from_config(&cfg),
            1,
        )
        .await;
        assert_eq!(r[0].result, super::super::verify::DkimResult::Pass, "{r:?}");
        let plain = sign_message(
            &[(&key, "example.com")],
            &SignOptions::from_config(&DkimConfig::default()),
            msg,
            false,
            1,
        )
        .unwrap()
        .remove(0);
        assert!(!plain.contains("r=y"));
    }

    #[test]
    fn signing_table_lookup_order() {
        let t = Dataset::parse("csl:.example.com=sub, alice@example.com=alice, *=any").unwrap();
        assert_eq!(table_lookup(&t, "alice", "example.com")[0], "alice");
        assert_eq!(table_lookup(&t, "bob", "x.example.com")[0], "sub");
        assert_eq!(table_lookup(&t, "bob", "other.org")[0], "any");
    }

    fn key_file(dir: &Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let g = super::super::key::generate(&super::super::key::GenKeyOptions {
            key_type: KeyType::Ed25519,
            ..Default::default()
        })
        .unwrap();
        let p = dir.join("k.private");
        std::fs::write(&p, g.private_pem).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn which_keys_sign_which_senders() {
        let dir = tempfile::tempdir().unwrap();
        let k = key_file(dir.path());
        let single = |extra: &str| {
            let text = format!(
                "Domain example.com\nSelector s\nKeyFile {}\n{extra}",
                k.display()
            );
            KeySet::from_config(&DkimConfig::parse(Path::new("c"), &text).unwrap()).unwrap()
        };
        let set = single("");
        let d = |set: &KeySet, from: &str| -> Vec<String> {
            set.keys_for(from).into_iter().map(|c| c.domain).collect()
        };
        assert_eq!(d(&set, "Alice@EXAMPLE.com"), ["example.com"]);
        assert!(d(&set, "a@sub.example.com").is_empty());
        assert!(d(&set, "a@other.org").is_empty());
        assert_eq!(
            d(&single("SubDomains yes\n"), "a@sub.example.com"),
            ["example.com"]
        );
        assert!(d(&single("Mode v\n"), "a@example.com").is_empty());
        // `Domain *`: every domain, signed as itself (signed nothing before).
        let text = format!("Domain *\nSelector s\nKeyFile {}\n", k.display());
        let all = KeySet::from_config(&DkimConfig::parse(Path::new("c"), &text).unwrap()).unwrap();
        assert_eq!(d(&all, "a@Other.ORG"), ["other.org"]);
        assert_eq!(d(&all, "a@sub.example.com"), ["sub.example.com"]);

        // KeyTable with `%`: the sender's domain signs; every match with MultipleSignatures.
        let text = format!(
            "KeyTable csl:any=%:s:{0}, two=example.com:t:{0}\n\
             SigningTable csl:*=any, .example.com=two\nMultipleSignatures yes\n",
            k.display()
        );
        let set = KeySet::from_config(&DkimConfig::parse(Path::new("c"), &text).unwrap()).unwrap();
        assert_eq!(d(&set, "a@foo.org"), ["foo.org"]);
        assert_eq!(d(&set, "a@x.example.com"), ["example.com", "x.example.com"]);
        let text = format!(
            "KeyTable csl:k=example.com:s:{0}\nSigningTable refile:{1}\n",
            k.display(),
            dir.path().join("st").display()
        );
        std::fs::write(
            dir.path().join("st"),
            "bob@* k:bob@mail.example.com\n*@* k:x@evil.org\n",
        )
        .unwrap();
        let set = KeySet::from_config(&DkimConfig::parse(Path::new("c"), &text).unwrap()).unwrap();
        let id = |from: &str| set.keys_for(from)[0].identity.clone();
        assert_eq!(
            id("bob@example.com").as_deref(),
            Some("bob@mail.example.com")
        );
        assert_eq!(id("eve@example.com"), None);
    }
}
