//! The `DKIM-Signature` field: parsing (RFC 6376 §3.5) and writing in OpenDKIM's layout.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::config::Canon;

/// Splits a tag-list (`tag=value; ...`) into trimmed `(tag, value)` pairs. Whitespace inside
/// values is kept except at the ends; empty trailing items are skipped.
pub(crate) fn tag_list(s: &str) -> Vec<(String, String)> {
    s.split(';')
        .filter_map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return None;
            }
            let (t, v) = item.split_once('=').unwrap_or((item, ""));
            Some((t.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// A signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// `rsa-sha256`.
    RsaSha256,
    /// `rsa-sha1` (verified, as OpenDKIM does; never used to sign).
    RsaSha1,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519Sha256,
}

impl Algorithm {
    /// The `a=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RsaSha256 => "rsa-sha256",
            Self::RsaSha1 => "rsa-sha1",
            Self::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The digest.
    pub fn digest(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Self::RsaSha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            _ => &aws_lc_rs::digest::SHA256,
        }
    }
}

/// A parsed DKIM-Signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `a=`.
    pub algorithm: Algorithm,
    /// `b=` decoded.
    pub b: Vec<u8>,
    /// `b=` as written, whitespace removed (for `header.b`).
    pub b_text: String,
    /// `bh=` decoded.
    pub bh: Vec<u8>,
    /// `c=` (header, body).
    pub canon: (Canon, Canon),
    /// `d=` (lower case).
    pub domain: String,
    /// `h=`.
    pub headers: Vec<String>,
    /// `i=` (default `@` + d).
    pub identity: String,
    /// `l=`.
    pub length: Option<u64>,
    /// `s=`.
    pub selector: String,
    /// `t=`.
    pub timestamp: Option<u64>,
    /// `x=`.
    pub expiration: Option<u64>,
}

/// Why a signature field is unusable; the text is OpenDKIM's (libopendkim) error string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigError(pub &'static str);

impl Signature {
    /// Parses a field value.
    pub fn parse(value: &[u8]) -> Result<Self, SigError> {
        Self::parse_tags(&tag_list(&String::from_utf8_lossy(value)), false)
    }

    /// Parses an `ARC-Message-Signature` value (RFC 8617 §4.1.2): a DKIM signature without
    /// `v=`, whose `i=` is the instance number (1 to 50) instead of an identity. Returns the
    /// instance and the signature (identity `@d`).
    pub fn parse_ams(value: &[u8]) -> Result<(u32, Self), SigError> {
        let mut tags = tag_list(&String::from_utf8_lossy(value));
        let at = tags
            .iter()
            .position(|(t, _)| t == "i")
            .ok_or(SigError("instance tag missing"))?;
        let (_, i) = tags.remove(at);
        let instance = parse_instance(&i)?;
        if tags.iter().any(|(t, _)| t == "v") {
            return Err(SigError("v= tag not allowed in ARC-Message-Signature"));
        }
        tags.push(("v".into(), "1".into()));
        Ok((instance, Self::parse_tags(&tags, true)?))
    }

    fn parse_tags(tags: &[(String, String)], arc: bool) -> Result<Self, SigError> {
        let mut seen = std::collections::HashSet::new();
        for (t, _) in tags {
            if !seen.insert(t.as_str()) {
                return Err(SigError("duplicate tag"));
            }
        }
        let get = |n: &str| tags.iter().find(|(t, _)| t == n).map(|(_, v)| v.as_str());
        match get("v") {
            None => return Err(SigError("signature version missing")),
            Some("1") => {}
            Some(_) => return Err(SigError("unsupported signature version")),
        }
        let algorithm = match get("a") {
            None => return Err(SigError("signature algorithm missing")),
            Some("rsa-sha256") => Algorithm::RsaSha256,
            Some("rsa-sha1") => Algorithm::RsaSha1,
            Some("ed25519-sha256") => Algorithm::Ed25519Sha256,
            Some(_) => return Err(SigError("signature algorithm invalid")),
        };
        let b_text: String = get("b")
            .ok_or(SigError("signature data missing"))?
            .split_whitespace()
            .collect();
        if b_text.is_empty() {
            return Err(SigError("signature data empty"));
        }
        let b = B64
            .decode(&b_text)
            .map_err(|_| SigError("signature data corrupt"))?;
        let bh_text: String = get("bh")
            .ok_or(SigError("body hash missing"))?
            .split_whitespace()
            .collect();
        if bh_text.is_empty() {
            return Err(SigError("body hash empty"));
        }
        let bh = B64
            .decode(&bh_text)
            .map_err(|_| SigError("body hash corrupt"))?;
        let canon = match get("c") {
            None => (Canon::Simple, Canon::Simple),
            Some(c) => Canon::parse_pair(c).ok_or(SigError("invalid canonicalization"))?,
        };
        let domain = get("d").ok_or(SigError("domain tag missing"))?;
        if domain.is_empty() {
            return Err(SigError("domain tag empty"));
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        // `d=.` is empty once its root dot is gone; `d=a@b` is no domain name: either would
        // be looked up as a key and could never be written back into a signature.
        if domain.is_empty()
            || domain.starts_with('.')
            || domain.contains("..")
            || domain.contains(|c: char| c == '@' || c.is_ascii_whitespace() || c.is_control())
        {
            return Err(SigError("domain tag is not a domain name"));
        }
        let headers: Vec<String> = get("h")
            .ok_or(SigError("header list missing"))?
            .split(':')
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        if headers.is_empty() {
            return Err(SigError("header list empty"));
        }
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            return Err(SigError("header list missing required entries"));
        }
        let identity = match get("i").filter(|_| !arc) {
            Some(i) => {
                let dom = i.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                let dom = dom.to_ascii_lowercase();
                if dom != domain && !dom.ends_with(&format!(".{domain}")) {
                    return Err(SigError("invalid domain coverage"));
                }
                i.to_owned()
            }
            None => format!("@{domain}"),
        };
        let num = |n: &str, e: &'static str| {
            get(n)
                .map(|v| v.parse::<u64>().map_err(|_| SigError(e)))
                .transpose()
        };
        let length = num("l", "body length value invalid")?;
        let timestamp = num("t", "invalid timestamp")?;
        let expiration = num("x", "invalid expiration")?;
        if let (Some(t), Some(x)) = (timestamp, expiration)
            && x < t
        {
            return Err(SigError("signature timestamp order error"));
        }
        if let Some(q) = get("q")
            && !q.split(':').any(|m| m.trim() == "dns/txt")
        {
            return Err(SigError("query method invalid"));
        }
        let selector = get("s").ok_or(SigError("selector tag missing"))?;
        if selector.is_empty() {
            return Err(SigError("selector tag empty"));
        }
        Ok(Self {
            algorithm,
            b,
            b_text,
            bh,
            canon,
            domain,
            headers,
            identity,
            length,
            selector: selector.to_owned(),
            timestamp,
            expiration,
        })
    }
}

/// Most ARC sets a message may carry (RFC 8617 §4.2.1: instance values 1 to 50).
pub(crate) const MAX_ARC_INSTANCE: u32 = 50;

/// An ARC instance value `i=`: a decimal from 1 to [`MAX_ARC_INSTANCE`].
pub(crate) fn parse_instance(v: &str) -> Result<u32, SigError> {
    match v.trim().parse::<u32>() {
        Ok(i) if (1..=MAX_ARC_INSTANCE).contains(&i) && v.trim().len() <= 2 => Ok(i),
        _ => Err(SigError("instance tag invalid")),
    }
}

/// What goes into a new signature before `b=`.
#[derive(Debug, Clone)]
pub(crate) struct Unsigned<'a> {
    /// `a=`.
    pub algorithm: Algorithm,
    /// `c=`.
    pub canon: (Canon, Canon),
    /// `d=`.
    pub domain: &'a str,
    /// `s=`.
    pub selector: &'a str,
    /// `i=`, if any.
    pub identity: Option<&'a str>,
    /// `t=`.
    pub timestamp: u64,
    /// `x=`, if any.
    pub expiration: Option<u64>,
    /// `l=`, if any.
    pub length: Option<u64>,
    /// `bh=` (base64).
    pub bh: &'a str,
    /// `h=` names as written.
    pub headers: &'a [String],
}

/// Width OpenDKIM folds the signature at (its `DKIM_HDRMARGIN`, 75 columns).
pub(crate) const FOLD_MARGIN: usize = 75;

impl Unsigned<'_> {
    /// The field value in OpenDKIM's layout, ending with `b=` (no leading space; lines
    /// joined with `\n\t`): `v=1; a=..; c=..; d=..;` / `s=..; t=..;` / `bh=..;` / `h=..;` /
    /// `b=`.
    pub(crate) fn render(&self) -> String {
        let mut out = format!(
            "v=1; a={}; c={}/{}; d={};\n\ts={}; t={};",
            self.algorithm.as_str(),
            self.canon.0.as_str(),
            self.canon.1.as_str(),
            self.domain,
            self.selector,
            self.timestamp
        );
        if let Some(x) = self.expiration {
            out.push_str(&format!(" x={x};"));
        }
        if let Some(i) = self.identity {
            out.push_str(&format!("\n\ti={i};"));
        }
        if let Some(l) = self.length {
            out.push_str(&format!(" l={l};"));
        }
        out.push_str(&format!("\n\tbh={};\n\th=", self.bh));
        let mut col = 8 + 2;
        for (i, h) in self.headers.iter().enumerate() {
            if i > 0 {
                if col + 1 + h.len() > FOLD_MARGIN {
                    out.push_str(":\n\t ");
                    col = 9;
                } else {
                    out.push(':');
                    col += 1;
                }
            }
            out.push_str(h);
            col += h.len();
        }
        out.push_str(";\n\tb=");
        out
    }
}

/// Appends the base64 `b=` value folded OpenDKIM's way (continuation lines `\n\t `).
pub(crate) fn append_b(value: &mut String, b: &[u8]) {
    let b64 = B64.encode(b);
    let first = FOLD_MARGIN - 10;
    let (head, mut rest) = b64.split_at(first.min(b64.len()));
    value.push_str(head);
    while !rest.is_empty() {
        let (line, r) = rest.split_at((FOLD_MARGIN - 10).min(rest.len()));
        value.push_str("\n\t ");
        value.push_str(line);
        rest = r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_errors() {
        let s = Signature::parse(
            b" v=1; a=rsa-sha256; c=relaxed/simple; d=Example.COM;\r\n\ts=mail; t=10;\r\n\tbh=AAAA;\r\n\th=Date:From:From;\r\n\tb=AB\r\n\t CD",
        )
        .unwrap();
        assert_eq!(s.domain, "example.com");
        assert_eq!(s.identity, "@example.com");
        assert_eq!(s.b_text, "ABCD");
        assert_eq!(s.headers, ["Date", "From", "From"]);
        assert_eq!(s.canon, (Canon::Relaxed, Canon::Simple));
        let e = |v: &[u8]| Signature::parse(v).unwrap_err().0;
        assert_eq!(e(b"v=1; a=x"), "signature algorithm invalid");
        assert_eq!(
            e(b"v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=a.b; h=To; s=x"),
            "header list missing required entries"
        );
        assert_eq!(
            e(b"v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=a.b; h=From; s=x; i=@evil.b"),
            "invalid domain coverage"
        );
        assert_eq!(e(b"v=1; v=1"), "duplicate tag");
        // Found by fuzzing: a root-only or non-domain d= is refused.
        for d in ["d=.", "d=..", "d=a@b.example", "d=a..b", "d=.a.example"] {
            let v = format!("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; {d}; h=From; s=x");
            assert_eq!(e(v.as_bytes()), "domain tag is not a domain name", "{d}");
        }
    }

    #[test]
    fn render_layout() {
        let h = vec!["Date".to_owned(), "To".into(), "From".into()];
        let u = Unsigned {
            algorithm: Algorithm::RsaSha256,
            canon: (Canon::Relaxed, Canon::Simple),
            domain: "d.example",
            selector: "mail",
            identity: None,
            timestamp: 5,
            expiration: None,
            length: None,
            bh: "AAAA",
            headers: &h,
        };
        let mut v = u.render();
        assert_eq!(
            v,
            "v=1; a=rsa-sha256; c=relaxed/simple; d=d.example;\n\ts=mail; t=5;\n\tbh=AAAA;\n\th=Date:To:From;\n\tb="
        );
        append_b(&mut v, &[0u8; 256]);
        assert!(v.lines().all(|l| l.len() <= FOLD_MARGIN));
        let parsed = Signature::parse(v.replace('\n', "\r\n").as_bytes()).unwrap();
        assert_eq!(parsed.b, vec![0u8; 256]);
    }
}
