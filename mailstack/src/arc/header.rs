//! The ARC header fields (RFC 8617 §4.1): `ARC-Seal` parsing, and grouping a message's
//! fields into ARC sets with the structural checks of §5.2 steps 1 and 3.
//!
//! Bounded: at most [`MAX_ARC_FIELDS`] ARC fields are looked at and each may be at most
//! [`MAX_ARC_FIELD_BYTES`]; anything beyond is a failed chain, never a panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::dkim::canon::Header;
use crate::dkim::sig::{Algorithm, MAX_ARC_INSTANCE, Signature, parse_instance, tag_list};

/// `ARC-Seal`.
pub(crate) const SEAL: &str = "ARC-Seal";
/// `ARC-Message-Signature`.
pub(crate) const MESSAGE_SIGNATURE: &str = "ARC-Message-Signature";
/// `ARC-Authentication-Results`.
pub(crate) const AUTHENTICATION_RESULTS: &str = "ARC-Authentication-Results";

/// ARC fields read per message: three per set for the [`MAX_ARC_INSTANCE`] sets RFC 8617
/// §4.2.1 allows. A message with more fails without further parsing.
pub(crate) const MAX_ARC_FIELDS: usize = 3 * MAX_ARC_INSTANCE as usize;

/// Longest ARC field value accepted (64 KiB). An RSA-8192 seal is under 2 KB; an
/// `ARC-Authentication-Results` copies one `Authentication-Results` field, which Postfix
/// keeps under its 102,400-byte `header_size_limit` for the whole header block anyway.
pub(crate) const MAX_ARC_FIELD_BYTES: usize = 64 * 1024;

/// The chain validation status of an `ARC-Seal` (`cv=`, RFC 8617 §4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainStatus {
    /// `cv=none`: the first set (i=1).
    None,
    /// `cv=pass`: the sealer found the chain before it valid.
    Pass,
    /// `cv=fail`: the sealer found it broken.
    Fail,
}

impl ChainStatus {
    /// The `cv=` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

/// A parsed `ARC-Seal` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// `i=`.
    pub instance: u32,
    /// `cv=`.
    pub cv: ChainStatus,
    /// `a=`.
    pub algorithm: Algorithm,
    /// `b=` decoded.
    pub b: Vec<u8>,
    /// `d=` (lower case).
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `t=`.
    pub timestamp: Option<u64>,
}

/// Why an ARC field or the set structure is unusable (the chain fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArcError(pub &'static str);

impl Seal {
    /// Parses an `ARC-Seal` value.
    pub fn parse(value: &[u8]) -> Result<Self, ArcError> {
        let tags = tag_list(&String::from_utf8_lossy(value));
        let mut seen = std::collections::HashSet::new();
        if !tags.iter().all(|(t, _)| seen.insert(t.as_str())) {
            return Err(ArcError("duplicate tag in ARC-Seal"));
        }
        let get = |n: &str| tags.iter().find(|(t, _)| t == n).map(|(_, v)| v.as_str());
        if get("h").is_some() {
            return Err(ArcError("h= tag not allowed in ARC-Seal"));
        }
        let instance = parse_instance(get("i").ok_or(ArcError("ARC-Seal without i="))?)
            .map_err(|e| ArcError(e.0))?;
        let cv = match get("cv").map(str::to_ascii_lowercase).as_deref() {
            Some("none") => ChainStatus::None,
            Some("pass") => ChainStatus::Pass,
            Some("fail") => ChainStatus::Fail,
            Some(_) => return Err(ArcError("ARC-Seal cv= invalid")),
            None => return Err(ArcError("ARC-Seal without cv=")),
        };
        // RFC 8617 §4.1.3 (and dkimpy, OpenARC): rsa-sha256; ed25519-sha256 from the
        // arc-multi draft is accepted too. rsa-sha1 never.
        let algorithm = match get("a") {
            Some("rsa-sha256") => Algorithm::RsaSha256,
            Some("ed25519-sha256") => Algorithm::Ed25519Sha256,
            Some(_) => return Err(ArcError("ARC-Seal algorithm invalid")),
            None => return Err(ArcError("ARC-Seal without a=")),
        };
        let b_text: String = get("b")
            .ok_or(ArcError("ARC-Seal without b="))?
            .split_whitespace()
            .collect();
        let b = B64
            .decode(&b_text)
            .ok()
            .filter(|b| !b.is_empty())
            .ok_or(ArcError("ARC-Seal b= corrupt"))?;
        let domain = get("d")
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| is_domain(d))
            .ok_or(ArcError("ARC-Seal d= invalid"))?;
        let selector = get("s")
            .filter(|s| !s.is_empty())
            .ok_or(ArcError("ARC-Seal s= invalid"))?
            .to_owned();
        let timestamp = get("t")
            .map(|t| {
                t.parse::<u64>()
                    .map_err(|_| ArcError("ARC-Seal t= invalid"))
            })
            .transpose()?;
        Ok(Self {
            instance,
            cv,
            algorithm,
            b,
            domain,
            selector,
            timestamp,
        })
    }
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && !d.starts_with('.')
        && !d.contains("..")
        && !d.contains(|c: char| c == '@' || c.is_ascii_whitespace() || c.is_control())
}

/// One ARC set: its three fields and what parsed of them.
#[derive(Debug, Clone)]
pub struct ArcSet {
    /// `i=`.
    pub instance: u32,
    /// The `ARC-Authentication-Results` field.
    pub aar: Header,
    /// The `ARC-Message-Signature` field.
    pub ams: Header,
    /// Its signature, or why it did not parse (only the newest must parse: RFC 8617 §5.2).
    pub ams_sig: Result<Signature, &'static str>,
    /// The `ARC-Seal` field.
    pub seal: Header,
    /// The seal.
    pub seal_tags: Seal,
}

fn arc_kind(h: &Header) -> Option<usize> {
    let n = h.name.trim();
    [AUTHENTICATION_RESULTS, MESSAGE_SIGNATURE, SEAL]
        .iter()
        .position(|k| n.eq_ignore_ascii_case(k))
}

/// The instance of an `ARC-Authentication-Results` value: `i=<n>;` first (RFC 8617 §4.1.1).
fn aar_instance(value: &[u8]) -> Result<u32, ArcError> {
    let text = String::from_utf8_lossy(value);
    let (first, _) = text
        .split_once(';')
        .ok_or(ArcError("ARC-Authentication-Results without i="))?;
    let v = first
        .trim()
        .strip_prefix("i=")
        .ok_or(ArcError("ARC-Authentication-Results without i="))?;
    parse_instance(v).map_err(|e| ArcError(e.0))
}

/// The ARC sets of a header block in instance order (i=1 first): `Ok(vec![])` when there
/// is no ARC field at all. Fails (RFC 8617 §5.2 steps 1 and 3) on more than 50 sets, a
/// field that does not parse, a missing or duplicated field of an instance, instances that
/// are not 1..N, or a `cv=` that breaks the rules (i=1 `none`, later `pass`; a `fail`
/// anywhere ends the chain).
pub(crate) fn collect_sets(headers: &[Header]) -> Result<Vec<ArcSet>, ArcError> {
    // [instance - 1] -> [AAR, AMS, AS]
    let mut slots: Vec<[Option<&Header>; 3]> = Vec::new();
    let mut fields = 0usize;
    for h in headers {
        let Some(kind) = arc_kind(h) else { continue };
        fields += 1;
        if fields > MAX_ARC_FIELDS {
            return Err(ArcError("more than 50 ARC sets"));
        }
        if h.value.len() > MAX_ARC_FIELD_BYTES {
            return Err(ArcError("ARC field too long"));
        }
        let instance = match kind {
            0 => aar_instance(&h.value)?,
            _ => {
                let tags = tag_list(&String::from_utf8_lossy(&h.value));
                let i = tags
                    .iter()
                    .find(|(t, _)| t == "i")
                    .ok_or(ArcError("ARC field without i="))?;
                parse_instance(&i.1).map_err(|e| ArcError(e.0))?
            }
        };
        let at = (instance - 1) as usize;
        if slots.len() <= at {
            slots.resize(at + 1, [None; 3]);
        }
        let slot = &mut slots[at][kind];
        if slot.is_some() {
            return Err(ArcError("duplicate ARC field for one instance"));
        }
        *slot = Some(h);
    }
    let mut sets = Vec::with_capacity(slots.len());
    for (n, slot) in slots.iter().enumerate() {
        let [Some(aar), Some(ams), Some(seal)] = slot else {
            return Err(ArcError("incomplete ARC set"));
        };
        let instance = n as u32 + 1;
        let seal_tags = Seal::parse(&seal.value)?;
        let ams_sig = Signature::parse_ams(&ams.value)
            .map(|(_, s)| s)
            .map_err(|e| e.0);
        sets.push(ArcSet {
            instance,
            aar: (*aar).clone(),
            ams: (*ams).clone(),
            ams_sig,
            seal: (*seal).clone(),
            seal_tags,
        });
    }
    if let Some(last) = sets.last()
        && last.seal_tags.cv == ChainStatus::Fail
    {
        return Err(ArcError("newest ARC-Seal says cv=fail"));
    }
    for s in &sets {
        let want = if s.instance == 1 {
            ChainStatus::None
        } else {
            ChainStatus::Pass
        };
        if s.seal_tags.cv != want {
            return Err(ArcError("ARC-Seal cv= out of order"));
        }
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    const SEAL1: &str = " i=1; a=rsa-sha256; cv=none; d=Example.org; s=arc; t=12; b=AAAA";

    #[test]
    fn seal_tags_and_errors() {
        let s = Seal::parse(SEAL1.as_bytes()).unwrap();
        assert_eq!(
            (s.instance, s.cv, s.domain.as_str(), s.b.len()),
            (1, ChainStatus::None, "example.org", 3)
        );
        let e = |v: &str| Seal::parse(v.as_bytes()).unwrap_err().0;
        assert_eq!(
            e("i=0; a=rsa-sha256; cv=none; d=a.b; s=x; b=AAAA"),
            "instance tag invalid"
        );
        assert_eq!(
            e("i=51; a=rsa-sha256; cv=none; d=a.b; s=x; b=AAAA"),
            "instance tag invalid"
        );
        assert_eq!(
            e("i=1; a=rsa-sha1; cv=none; d=a.b; s=x; b=AAAA"),
            "ARC-Seal algorithm invalid"
        );
        assert_eq!(
            e("i=1; a=rsa-sha256; cv=maybe; d=a.b; s=x; b=AAAA"),
            "ARC-Seal cv= invalid"
        );
        assert_eq!(
            e("i=1; a=rsa-sha256; cv=none; d=a.b; s=x; b=AAAA; h=from"),
            "h= tag not allowed in ARC-Seal"
        );
        assert_eq!(e("i=1; i=1"), "duplicate tag in ARC-Seal");
    }

    fn set(i: u32, cv: &str) -> Vec<Header> {
        vec![
            h(
                SEAL,
                &format!(" i={i}; a=rsa-sha256; cv={cv}; d=a.example; s=s; b=AAAA"),
            ),
            h(
                MESSAGE_SIGNATURE,
                &format!(" i={i}; a=rsa-sha256; d=a.example; s=s; h=from; bh=AAAA; b=AAAA"),
            ),
            h(
                AUTHENTICATION_RESULTS,
                &format!(" i={i}; mx.a.example; spf=pass"),
            ),
        ]
    }

    #[test]
    fn structure_rules() {
        assert!(collect_sets(&[h("From", " a@b")]).unwrap().is_empty());
        let mut two = set(2, "pass");
        two.extend(set(1, "none"));
        let sets = collect_sets(&two).unwrap();
        assert_eq!(sets.iter().map(|s| s.instance).collect::<Vec<_>>(), [1, 2]);
        assert!(sets[1].ams_sig.is_ok(), "{:?}", sets[1].ams_sig);
        let err = |hs: &[Header]| collect_sets(hs).unwrap_err().0;
        assert_eq!(err(&set(2, "pass")), "incomplete ARC set");
        assert_eq!(err(&set(1, "pass")), "ARC-Seal cv= out of order");
        let mut gap = set(3, "pass");
        gap.extend(set(1, "none"));
        assert_eq!(err(&gap), "incomplete ARC set");
        let mut dup = set(1, "none");
        dup.push(h(AUTHENTICATION_RESULTS, " i=1; other; dkim=pass"));
        assert_eq!(err(&dup), "duplicate ARC field for one instance");
        let mut failed = set(2, "fail");
        failed.extend(set(1, "none"));
        assert_eq!(err(&failed), "newest ARC-Seal says cv=fail");
        let many: Vec<Header> = (1..=51).flat_map(|i| set(i, "pass")).collect();
        assert_eq!(err(&many), "more than 50 ARC sets");
        let huge = h(
            AUTHENTICATION_RESULTS,
            &format!(" i=1; {}", "x".repeat(70_000)),
        );
        assert_eq!(err(&[huge]), "ARC field too long");
    }
}
