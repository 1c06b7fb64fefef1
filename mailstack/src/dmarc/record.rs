//! DMARC policy records (`_dmarc` TXT, RFC 7489 §6.3 and RFC 9989 §4.7).

use std::fmt;

/// A requested policy (`p=`, `sp=`, `np=`), also used for the disposition applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// `none`: monitor only.
    None,
    /// `quarantine`: treat as suspicious.
    Quarantine,
    /// `reject`: refuse.
    Reject,
}

impl Policy {
    /// `none`, `quarantine` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Quarantine => "quarantine",
            Self::Reject => "reject",
        }
    }

    /// One step weaker (RFC 7489 §6.6.4 for mail outside `pct`, RFC 9989 `t=y`).
    pub fn weaker(self) -> Self {
        match self {
            Self::Reject => Self::Quarantine,
            Self::Quarantine | Self::None => Self::None,
        }
    }

    fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "quarantine" => Some(Self::Quarantine),
            "reject" => Some(Self::Reject),
            _ => None,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifier alignment mode (`adkim=`, `aspf=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Alignment {
    /// `r`: same Organizational Domain (the default).
    #[default]
    Relaxed,
    /// `s`: exactly the same domain.
    Strict,
}

impl Alignment {
    /// `r` or `s`.
    pub fn as_char(self) -> char {
        match self {
            Self::Relaxed => 'r',
            Self::Strict => 's',
        }
    }
}

/// Why a TXT record is not a usable DMARC record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// It does not start with `v=DMARC1` (not a DMARC record; other TXT records are skipped).
    #[error("not a DMARC record")]
    NotDmarc,
    /// A tag has a value outside its grammar.
    #[error("invalid value for {0}=")]
    InvalidTag(&'static str),
    /// No `p=` (and no `rua=` that would make it `p=none`).
    #[error("no p= tag")]
    MissingPolicy,
}

/// A parsed DMARC record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DmarcRecord {
    /// `p=`.
    pub p: Policy,
    /// `sp=` (absent: `p` applies to subdomains).
    pub sp: Option<Policy>,
    /// `np=` (RFC 9989: non-existent subdomains).
    pub np: Option<Policy>,
    /// `adkim=`.
    pub adkim: Alignment,
    /// `aspf=`.
    pub aspf: Alignment,
    /// `pct=` (RFC 7489; default 100).
    pub pct: u8,
    /// `rua=` URIs.
    pub rua: Vec<String>,
    /// `ruf=` URIs.
    pub ruf: Vec<String>,
    /// `psd=` (RFC 9989): `Some(true)` for `y`, `Some(false)` for `n`.
    pub psd: Option<bool>,
    /// `t=y` (RFC 9989 testing mode).
    pub testing: bool,
}

impl DmarcRecord {
    /// Parses one TXT record. Unknown tags are ignored (RFC 7489 §6.3); a record whose `p=` is
    /// missing but has `rua=` is `p=none` (§6.6.3); an invalid `sp=`, `np=`, `adkim=`, `aspf=`,
    /// `pct=` or `psd=` makes the record invalid.
    pub fn parse(txt: &[u8]) -> Result<Self, RecordError> {
        let txt = std::str::from_utf8(txt).map_err(|_| RecordError::NotDmarc)?;
        let mut tags = txt
            .split(';')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| match t.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (t, ""),
            });
        match tags.next() {
            Some((k, v)) if k == "v" && v == "DMARC1" => {}
            _ => return Err(RecordError::NotDmarc),
        }
        let mut p = None;
        let mut rec = Self {
            p: Policy::None,
            sp: None,
            np: None,
            adkim: Alignment::Relaxed,
            aspf: Alignment::Relaxed,
            pct: 100,
            rua: Vec::new(),
            ruf: Vec::new(),
            psd: None,
            testing: false,
        };
        for (k, v) in tags {
            match k.to_ascii_lowercase().as_str() {
                "p" => p = Some(Policy::parse(v).ok_or(RecordError::InvalidTag("p"))?),
                "sp" => rec.sp = Some(Policy::parse(v).ok_or(RecordError::InvalidTag("sp"))?),
                "np" => rec.np = Some(Policy::parse(v).ok_or(RecordError::InvalidTag("np"))?),
                "adkim" => rec.adkim = alignment(v).ok_or(RecordError::InvalidTag("adkim"))?,
                "aspf" => rec.aspf = alignment(v).ok_or(RecordError::InvalidTag("aspf"))?,
                "pct" => {
                    rec.pct = v
                        .parse::<u8>()
                        .ok()
                        .filter(|n| *n <= 100)
                        .ok_or(RecordError::InvalidTag("pct"))?;
                }
                "rua" => rec.rua = uris(v),
                "ruf" => rec.ruf = uris(v),
                "psd" => {
                    rec.psd = match v {
                        "y" => Some(true),
                        "n" => Some(false),
                        "u" => None,
                        _ => return Err(RecordError::InvalidTag("psd")),
                    }
                }
                "t" => rec.testing = v == "y",
                _ => {}
            }
        }
        rec.p = match p {
            Some(p) => p,
            None if !rec.rua.is_empty() => Policy::None,
            None => return Err(RecordError::MissingPolicy),
        };
        Ok(rec)
    }
}

/// The record as a TXT value with every tag explicit, in RFC 7489's order (`v`, `p`, `sp`,
/// `np`, `adkim`, `aspf`, `pct`, `rua`, `ruf`, `psd`, `t`); optional tags that are absent
/// are left out. [`DmarcRecord::parse`] reads it back to the same record.
///
/// ```
/// use mailstack::dmarc::DmarcRecord;
///
/// let rec = DmarcRecord::parse(b"v=DMARC1; p=reject; rua=mailto:d@example.com")?;
/// assert_eq!(
///     rec.to_string(),
///     "v=DMARC1; p=reject; adkim=r; aspf=r; pct=100; rua=mailto:d@example.com"
/// );
/// assert_eq!(DmarcRecord::parse(rec.to_string().as_bytes())?, rec);
/// # Ok::<(), mailstack::dmarc::RecordError>(())
/// ```
impl fmt::Display for DmarcRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v=DMARC1; p={}", self.p)?;
        for (tag, p) in [("sp", self.sp), ("np", self.np)] {
            if let Some(p) = p {
                write!(f, "; {tag}={p}")?;
            }
        }
        write!(
            f,
            "; adkim={}; aspf={}; pct={}",
            self.adkim.as_char(),
            self.aspf.as_char(),
            self.pct
        )?;
        for (tag, uris) in [("rua", &self.rua), ("ruf", &self.ruf)] {
            if !uris.is_empty() {
                write!(f, "; {tag}={}", uris.join(","))?;
            }
        }
        match self.psd {
            Some(true) => f.write_str("; psd=y")?,
            Some(false) => f.write_str("; psd=n")?,
            None => {}
        }
        if self.testing {
            f.write_str("; t=y")?;
        }
        Ok(())
    }
}

fn alignment(v: &str) -> Option<Alignment> {
    match v {
        "r" => Some(Alignment::Relaxed),
        "s" => Some(Alignment::Strict),
        _ => None,
    }
}

fn uris(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7489_examples() {
        let r = DmarcRecord::parse(
            b"v=DMARC1; p=quarantine; rua=mailto:dmarc-feedback@example.com, mailto:x@example.net; pct=25; sp=reject; adkim=s",
        )
        .unwrap();
        assert_eq!(r.p, Policy::Quarantine);
        assert_eq!(r.sp, Some(Policy::Reject));
        assert_eq!(r.pct, 25);
        assert_eq!(r.adkim, Alignment::Strict);
        assert_eq!(r.aspf, Alignment::Relaxed);
        assert_eq!(r.rua.len(), 2);
        let r = DmarcRecord::parse(b"v=DMARC1; rua=mailto:a@example.com").unwrap();
        assert_eq!(r.p, Policy::None);
        let r = DmarcRecord::parse(b"v=DMARC1;p=reject;t=y;np=quarantine;psd=n;future=1").unwrap();
        assert!(r.testing);
        assert_eq!(r.np, Some(Policy::Quarantine));
        assert_eq!(r.psd, Some(false));
    }

    #[test]
    fn rejects_what_is_not_a_record() {
        assert_eq!(
            DmarcRecord::parse(b"v=spf1 -all"),
            Err(RecordError::NotDmarc)
        );
        assert_eq!(
            DmarcRecord::parse(b"p=reject; v=DMARC1"),
            Err(RecordError::NotDmarc)
        );
        assert_eq!(
            DmarcRecord::parse(b"v=DMARC1"),
            Err(RecordError::MissingPolicy)
        );
        assert_eq!(
            DmarcRecord::parse(b"v=DMARC1; p=block"),
            Err(RecordError::InvalidTag("p"))
        );
        assert_eq!(
            DmarcRecord::parse(b"v=DMARC1; p=none; pct=101"),
            Err(RecordError::InvalidTag("pct"))
        );
    }
}
