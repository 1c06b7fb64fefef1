//! Parsing of SPF records (RFC 7208 §4.5, §4.6, §5, §6, §7.1 ABNF) into terms.
//!
//! The whole record is parsed before any evaluation, so a syntax error anywhere gives
//! `permerror` even when an earlier mechanism would have matched (RFC 7208 §4.6).

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest record we parse (a TXT record may hold several 255-byte strings; RFC 7208 §3.4 asks
/// publishers to stay under 450 bytes, so 4 KiB leaves plenty of room and bounds our work).
pub(crate) const MAX_RECORD_LEN: usize = 4096;
/// Most terms in one record (a record of [`MAX_RECORD_LEN`] single-letter terms has ~2000).
pub(crate) const MAX_TERMS: usize = 256;
/// Most macro tokens in one macro-string.
pub(crate) const MAX_MACRO_TOKENS: usize = 128;

/// A syntax error in a record; the text is used in explanations (`permerror` reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError(pub(crate) String);

fn err<T>(msg: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(msg.into()))
}

/// `+`, `-`, `~`, `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

/// One element of a macro-string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MacroToken {
    Literal(String),
    Expand {
        letter: u8,
        upper: bool,
        digits: Option<u32>,
        reverse: bool,
        delimiters: String,
    },
}

/// A parsed macro-string (RFC 7208 §7.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MacroString {
    pub(crate) tokens: Vec<MacroToken>,
}

impl MacroString {
    /// Parses a macro-string; `explain` allows spaces and the `c`, `r`, `t` letters.
    pub(crate) fn parse(s: &str, explain: bool) -> Result<Self, SyntaxError> {
        let bytes = s.as_bytes();
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'%' {
                let ok = (0x21..=0x7e).contains(&b) || (explain && b == b' ');
                if !ok {
                    return err(format!(
                        "Invalid character in macro-string: {:?}",
                        b as char
                    ));
                }
                lit.push(b as char);
                i += 1;
                continue;
            }
            match bytes.get(i + 1) {
                Some(b'%') => lit.push('%'),
                Some(b'_') => lit.push(' '),
                Some(b'-') => lit.push_str("%20"),
                Some(b'{') => {
                    let end = match bytes[i + 2..].iter().position(|&c| c == b'}') {
                        Some(p) => i + 2 + p,
                        None => return err("Unterminated macro"),
                    };
                    if !lit.is_empty() {
                        tokens.push(MacroToken::Literal(std::mem::take(&mut lit)));
                    }
                    tokens.push(parse_expand(&bytes[i + 2..end], explain)?);
                    i = end + 1;
                    if tokens.len() > MAX_MACRO_TOKENS {
                        return err("Too many macros");
                    }
                    continue;
                }
                _ => return err(format!("Invalid macro in: {s}")),
            }
            i += 2;
        }
        if !lit.is_empty() {
            tokens.push(MacroToken::Literal(lit));
        }
        Ok(Self { tokens })
    }

    /// The literal text after the last macro, or `None` when the string ends with a macro.
    fn literal_tail(&self) -> Option<&str> {
        match self.tokens.last() {
            Some(MacroToken::Literal(s)) => Some(s),
            Some(MacroToken::Expand { .. }) => None,
            None => Some(""),
        }
    }
}

fn parse_expand(body: &[u8], explain: bool) -> Result<MacroToken, SyntaxError> {
    let Some((&letter, rest)) = body.split_first() else {
        return err("Empty macro");
    };
    let lower = letter.to_ascii_lowercase();
    let known = matches!(lower, b's' | b'l' | b'o' | b'd' | b'i' | b'p' | b'h' | b'v')
        || (explain && matches!(lower, b'c' | b'r' | b't'));
    if !known {
        return err(format!("Unknown macro letter: {}", letter as char));
    }
    let ndigits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let digits = if ndigits > 0 {
        // Saturate: more parts than a name can have simply means "all of them".
        let n = rest[..ndigits].iter().fold(0u32, |n, d| {
            n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
        });
        if n == 0 {
            return err("Macro digit transformer must be nonzero");
        }
        Some(n)
    } else {
        None
    };
    let mut rest = &rest[ndigits..];
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = &rest[1..];
    }
    if let Some(bad) = rest.iter().find(|b| !b".-+,/_=".contains(b)) {
        return err(format!("Invalid macro delimiter: {}", *bad as char));
    }
    Ok(MacroToken::Expand {
        letter: lower,
        upper: letter.is_ascii_uppercase(),
        digits,
        reverse,
        delimiters: String::from_utf8_lossy(rest).into_owned(),
    })
}

/// A `<domain-spec>`: a macro-string with a valid domain-end (RFC 7208 §7.1).
fn parse_domain_spec(s: &str) -> Result<MacroString, SyntaxError> {
    if s.is_empty() {
        return err("Empty domain-spec");
    }
    let m = MacroString::parse(s, false)?;
    if let Some(tail) = m.literal_tail() {
        let tail = tail.strip_suffix('.').unwrap_or(tail);
        let Some((_, top)) = tail.rsplit_once('.') else {
            return err(format!("Invalid domain found (use FQDN): {s}"));
        };
        if !is_toplabel(top) {
            return err(format!("Invalid top label in domain: {s}"));
        }
    }
    Ok(m)
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`
pub(crate) fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric()
    } else {
        b.iter().any(u8::is_ascii_alphabetic)
    }
}

/// A mechanism (RFC 7208 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mechanism {
    All,
    Include(MacroString),
    A {
        domain: Option<MacroString>,
        cidr4: u8,
        cidr6: u8,
    },
    Mx {
        domain: Option<MacroString>,
        cidr4: u8,
        cidr6: u8,
    },
    Ptr(Option<MacroString>),
    Ip4 {
        addr: Ipv4Addr,
        cidr: u8,
    },
    Ip6 {
        addr: Ipv6Addr,
        cidr: u8,
    },
    Exists(MacroString),
}

/// A directive: qualifier, mechanism, and its text (for `mechanism=` in headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    pub(crate) qualifier: Qualifier,
    pub(crate) mechanism: Mechanism,
    pub(crate) text: String,
}

/// A parsed SPF record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Record {
    pub(crate) directives: Vec<Directive>,
    pub(crate) redirect: Option<MacroString>,
    pub(crate) exp: Option<MacroString>,
}

/// Whether a TXT record is an SPF record: `v=spf1` followed by a space or the end (§4.5).
pub(crate) fn is_spf_record(txt: &[u8]) -> bool {
    txt.len() >= 6
        && txt[..6].eq_ignore_ascii_case(b"v=spf1")
        && matches!(txt.get(6), None | Some(b' '))
}

impl Record {
    /// Parses a record already selected by [`is_spf_record`].
    pub(crate) fn parse(txt: &[u8]) -> Result<Self, SyntaxError> {
        if txt.len() > MAX_RECORD_LEN {
            return err("SPF record too long");
        }
        let Ok(text) = std::str::from_utf8(txt) else {
            return err("Non-ASCII character in SPF record");
        };
        if !text.is_ascii() {
            return err("Non-ASCII character in SPF record");
        }
        let mut record = Self::default();
        for (n, term) in text[6..].split(' ').filter(|t| !t.is_empty()).enumerate() {
            if n >= MAX_TERMS {
                return err("Too many terms in SPF record");
            }
            record.add_term(term)?;
        }
        Ok(record)
    }

    fn add_term(&mut self, term: &str) -> Result<(), SyntaxError> {
        let split = term.find([':', '/', '=']);
        if let Some(eq) = split.filter(|&p| term.as_bytes()[p] == b'=') {
            return self.add_modifier(&term[..eq], &term[eq + 1..], term);
        }
        let (qualifier, body) = match term.as_bytes()[0] {
            b'+' => (Qualifier::Pass, &term[1..]),
            b'-' => (Qualifier::Fail, &term[1..]),
            b'~' => (Qualifier::SoftFail, &term[1..]),
            b'?' => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        let mechanism = parse_mechanism(body)?;
        self.directives.push(Directive {
            qualifier,
            mechanism,
            text: term.to_owned(),
        });
        Ok(())
    }

    fn add_modifier(&mut self, name: &str, value: &str, term: &str) -> Result<(), SyntaxError> {
        let valid_name = name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            return err(format!("Invalid modifier: {term}"));
        }
        let slot = if name.eq_ignore_ascii_case("redirect") {
            &mut self.redirect
        } else if name.eq_ignore_ascii_case("exp") {
            &mut self.exp
        } else {
            // Unknown modifiers are ignored, but must be syntactically valid (§6).
            MacroString::parse(value, false)?;
            return Ok(());
        };
        if slot.is_some() {
            return err(format!("Duplicate {name} modifier"));
        }
        *slot = Some(parse_domain_spec(value)?);
        Ok(())
    }
}

fn parse_mechanism(body: &str) -> Result<Mechanism, SyntaxError> {
    let name_end = body.find([':', '/']).unwrap_or(body.len());
    let name = body[..name_end].to_ascii_lowercase();
    let rest = &body[name_end..];
    let arg = rest.strip_prefix(':');
    match name.as_str() {
        "all" if rest.is_empty() => Ok(Mechanism::All),
        "include" => Ok(Mechanism::Include(parse_domain_spec(required(
            arg, "include",
        )?)?)),
        "exists" => Ok(Mechanism::Exists(parse_domain_spec(required(
            arg, "exists",
        )?)?)),
        "ptr" => match arg {
            Some(d) => Ok(Mechanism::Ptr(Some(parse_domain_spec(d)?))),
            None if rest.is_empty() => Ok(Mechanism::Ptr(None)),
            None => err(format!("Invalid ptr mechanism: {body}")),
        },
        "a" | "mx" => {
            let (domain, cidr4, cidr6) = parse_domain_cidr(rest)?;
            Ok(if name == "a" {
                Mechanism::A {
                    domain,
                    cidr4,
                    cidr6,
                }
            } else {
                Mechanism::Mx {
                    domain,
                    cidr4,
                    cidr6,
                }
            })
        }
        "ip4" => {
            let arg = required(arg, "ip4")?;
            let (addr, cidr) = split_cidr(arg, 32)?;
            let addr = parse_ip4(addr)
                .ok_or_else(|| SyntaxError(format!("Invalid IP4 address: {arg}")))?;
            Ok(Mechanism::Ip4 { addr, cidr })
        }
        "ip6" => {
            let arg = required(arg, "ip6")?;
            let (addr, cidr) = split_cidr(arg, 128)?;
            let addr = addr
                .parse()
                .map_err(|_| SyntaxError(format!("Invalid IP6 address: {arg}")))?;
            Ok(Mechanism::Ip6 { addr, cidr })
        }
        _ => err(format!("Unknown mechanism found: {body}")),
    }
}

fn required<'a>(arg: Option<&'a str>, name: &str) -> Result<&'a str, SyntaxError> {
    match arg {
        Some(a) if !a.is_empty() => Ok(a),
        _ => err(format!("Missing argument for {name} mechanism")),
    }
}

/// Dotted quad, exactly four decimal parts without leading zeros' ambiguity (`Ipv4Addr` rules).
fn parse_ip4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// Splits `addr/len` (one CIDR length, for ip4/ip6).
fn split_cidr(arg: &str, max: u8) -> Result<(&str, u8), SyntaxError> {
    match arg.split_once('/') {
        None => Ok((arg, max)),
        Some((addr, len)) => Ok((addr, parse_cidr_len(len, max)?)),
    }
}

/// `"0" / %x31-39 0*1DIGIT` (or `0*2DIGIT` for IPv6), at most `max`.
fn parse_cidr_len(len: &str, max: u8) -> Result<u8, SyntaxError> {
    let ok = !len.is_empty()
        && len.len() <= 3
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    match len.parse::<u8>() {
        Ok(n) if ok && n <= max => Ok(n),
        _ => err(format!("Invalid CIDR length: /{len}")),
    }
}

type DomainCidr = (Option<MacroString>, u8, u8);

/// `[ ":" domain-spec ] [ dual-cidr-length ]` for `a` and `mx`.
///
/// The CIDR suffix is taken from the right, and only when it has the CIDR shape, since a
/// domain-spec may itself contain `/` (`a:foo:bar/baz.example.com` is legal).
fn parse_domain_cidr(rest: &str) -> Result<DomainCidr, SyntaxError> {
    let (mut spec, mut cidr4, mut cidr6) = (rest, 32u8, 128u8);
    if let Some(pos) = spec.rfind("//") {
        let tail = &spec[pos + 2..];
        if tail.bytes().all(|b| b.is_ascii_digit()) {
            cidr6 = parse_cidr_len(tail, 128)?;
            spec = &spec[..pos];
        }
    }
    if let Some(pos) = spec.rfind('/') {
        let tail = &spec[pos + 1..];
        if tail.bytes().all(|b| b.is_ascii_digit()) {
            cidr4 = parse_cidr_len(tail, 32)?;
            spec = &spec[..pos];
        }
    }
    let domain = match spec.strip_prefix(':') {
        Some(d) => Some(parse_domain_spec(d)?),
        None if spec.is_empty() => None,
        None => return err(format!("Invalid mechanism syntax: {rest}")),
    };
    Ok((domain, cidr4, cidr6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mechanisms() {
        let r = Record::parse(b"v=spf1 a/24//64 mx:example.com ip4:192.0.2.0/24 -all").unwrap();
        assert_eq!(r.directives.len(), 4);
        assert_eq!(
            r.directives[0].mechanism,
            Mechanism::A {
                domain: None,
                cidr4: 24,
                cidr6: 64
            }
        );
        assert_eq!(r.directives[3].qualifier, Qualifier::Fail);
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "v=spf1 a/33",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 a:museum",
            "v=spf1 foo",
            "v=spf1 =x",
            "v=spf1 redirect=a.example redirect=b.example",
            "v=spf1 exists:%{x}.example.com",
            "v=spf1 a:%{d0}.example.com",
        ] {
            assert!(Record::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn colon_domain_is_legal() {
        let r = Record::parse(b"v=spf1 a:foo:bar/baz.example.com").unwrap();
        assert!(matches!(
            &r.directives[0].mechanism,
            Mechanism::A {
                domain: Some(_),
                cidr4: 32,
                ..
            }
        ));
    }

    /// RFC 7208 §7.1: `macro-literal = %x21-24 / %x26-7E` holds `:` and `/`, and a
    /// domain-spec must end in `"." toplabel` or a macro; §5: `a`, `mx` take
    /// `[ ":" domain-spec ] [ dual-cidr-length ]`, the others a bare domain-spec. So a `:`
    /// after the first one belongs to the domain-spec, and the domain-end decides.
    #[test]
    fn colons_in_domain_specs_follow_the_abnf() {
        let domain = |r: &str| -> Result<String, SyntaxError> {
            let rec = Record::parse(r.as_bytes())?;
            let spec = match &rec.directives[0].mechanism {
                Mechanism::A { domain, .. } | Mechanism::Mx { domain, .. } => domain.clone(),
                Mechanism::Include(m) | Mechanism::Exists(m) => Some(m.clone()),
                Mechanism::Ptr(m) => m.clone(),
                other => panic!("{other:?}"),
            };
            Ok(match spec.map(|m| m.tokens).as_deref() {
                Some([MacroToken::Literal(l)]) => l.clone(),
                other => format!("{other:?}"),
            })
        };
        for (record, want) in [
            ("v=spf1 a:foo:bar.example.com", "foo:bar.example.com"),
            ("v=spf1 include:foo:bar.example.com", "foo:bar.example.com"),
            ("v=spf1 ptr:foo:bar.example.com", "foo:bar.example.com"),
            ("v=spf1 exists:foo:bar.example.com", "foo:bar.example.com"),
            (
                "v=spf1 mx:foo:bar.example.com/24//64",
                "foo:bar.example.com",
            ),
            ("v=spf1 a::foo.example.com", ":foo.example.com"),
            ("v=spf1 a:x/24:foo.example.com", "x/24:foo.example.com"),
        ] {
            assert_eq!(domain(record).as_deref(), Ok(want), "{record}");
        }
        for bad in [
            "v=spf1 a:foo:bar",
            "v=spf1 a:foo.example.com:80",
            "v=spf1 a:foo.example.com:",
            "v=spf1 a:%{d}:bar",
            "v=spf1 ptr:foo:bar.example.com/24",
            "v=spf1 include:foo:bar.example.com/24",
            "v=spf1 exists:foo:",
            "v=spf1 a:",
            "v=spf1 redirect=foo:bar",
        ] {
            assert!(Record::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        // An unknown modifier's value is any macro-string, `:` included.
        assert!(Record::parse(b"v=spf1 foo=bar:baz -all").is_ok());
    }

    #[test]
    fn toplabels() {
        assert!(is_toplabel("com"));
        assert!(is_toplabel("1-2"));
        assert!(!is_toplabel("123"));
        assert!(!is_toplabel("-com"));
        assert!(!is_toplabel(""));
    }
}
