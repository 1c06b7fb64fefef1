//! Macro expansion (RFC 7208 §7).

use std::fmt::Write as _;
use std::net::IpAddr;

use super::record::{MacroString, MacroToken};

/// Longest domain name; longer expansions are truncated from the left (RFC 7208 §7.3).
pub(crate) const MAX_DOMAIN_LEN: usize = 253;
/// Longest expansion of any macro-string we produce (bounds work and memory on hostile input;
/// an explanation is one TXT record, a domain at most 253 characters).
pub(crate) const MAX_EXPANSION_LEN: usize = 8192;

/// The values macros expand to.
#[derive(Debug, Clone)]
pub(crate) struct MacroValues<'a> {
    pub(crate) local: &'a str,
    pub(crate) sender_domain: &'a str,
    pub(crate) domain: &'a str,
    pub(crate) ip: IpAddr,
    pub(crate) helo: &'a str,
    pub(crate) receiver: &'a str,
    /// `%{p}`: the validated client name, computed by the caller when the string needs it.
    pub(crate) ptr: Option<&'a str>,
    /// `%{t}`: seconds since the epoch.
    pub(crate) now: u64,
}

/// Whether `m` uses `%{p}` (which needs DNS lookups before expansion).
pub(crate) fn needs_ptr(m: &MacroString) -> bool {
    m.tokens
        .iter()
        .any(|t| matches!(t, MacroToken::Expand { letter: b'p', .. }))
}

/// Whether `m` uses `%{s}`, `%{l}` or `%{h}` (values other than the client and the domain).
pub(crate) fn uses_sender(m: &MacroString) -> bool {
    m.tokens.iter().any(|t| {
        matches!(
            t,
            MacroToken::Expand {
                letter: b's' | b'l' | b'h',
                ..
            }
        )
    })
}

/// `%{i}`: dotted quad, or 32 dot-separated nibbles for IPv6 (upper-case hex, as the RFC 7208
/// test suite's `v-macro-ip6` case and pyspf spell them; DNS does not care about case).
fn ip_macro(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(63);
            for byte in v6.octets() {
                let _ = write!(out, "{:X}.{:X}.", byte >> 4, byte & 0xf);
            }
            out.pop();
            out
        }
    }
}

fn letter_value(letter: u8, v: &MacroValues<'_>) -> String {
    match letter {
        b's' => format!("{}@{}", v.local, v.sender_domain),
        b'l' => v.local.to_owned(),
        b'o' => v.sender_domain.to_owned(),
        b'd' => v.domain.to_owned(),
        b'i' => ip_macro(v.ip),
        b'p' => v.ptr.unwrap_or("unknown").to_owned(),
        b'v' => if v.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_owned(),
        b'h' => v.helo.to_owned(),
        b'c' => v.ip.to_string(),
        b'r' => v.receiver.to_owned(),
        b't' => v.now.to_string(),
        _ => String::new(),
    }
}

/// RFC 3986 escaping of everything but unreserved characters, upper-case hex (§7.3).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn transform(value: &str, digits: Option<u32>, reverse: bool, delimiters: &str) -> String {
    let delims = if delimiters.is_empty() {
        "."
    } else {
        delimiters
    };
    let mut parts: Vec<&str> = value.split(|c| delims.contains(c)).collect();
    if reverse {
        parts.reverse();
    }
    if let Some(n) = digits {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n < parts.len() {
            parts.drain(..parts.len() - n);
        }
    }
    parts.join(".")
}

/// Which end of an over-long expansion is kept.
#[derive(Clone, Copy)]
enum Keep {
    /// An explanation: its first [`MAX_EXPANSION_LEN`] bytes.
    Start,
    /// A domain: enough of the end for the §7.3 left truncation to give what it would give
    /// on the whole expansion.
    End,
}

/// Expands a macro-string, cut to its first [`MAX_EXPANSION_LEN`] bytes.
pub(crate) fn expand(m: &MacroString, v: &MacroValues<'_>) -> String {
    expand_keeping(m, v, Keep::Start)
}

fn expand_keeping(m: &MacroString, v: &MacroValues<'_>, keep: Keep) -> String {
    let mut out = String::new();
    for token in &m.tokens {
        match token {
            MacroToken::Literal(s) => out.push_str(s),
            MacroToken::Expand {
                letter,
                upper,
                digits,
                reverse,
                delimiters,
            } => {
                let value = transform(&letter_value(*letter, v), *digits, *reverse, delimiters);
                if *upper {
                    out.push_str(&url_escape(&value));
                } else {
                    out.push_str(&value);
                }
            }
        }
        if out.len() > MAX_EXPANSION_LEN {
            match keep {
                Keep::Start => {
                    let mut cut = MAX_EXPANSION_LEN;
                    while !out.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    out.truncate(cut);
                    break;
                }
                Keep::End => {
                    // What expand_domain keeps starts after a dot among the last 254
                    // bytes of the final string (253 without a trailing dot), so those
                    // and one more are all that can matter; later tokens only append.
                    let mut cut = out.len() - (MAX_DOMAIN_LEN + 2);
                    while !out.is_char_boundary(cut) {
                        cut += 1;
                    }
                    out.drain(..cut);
                }
            }
        }
    }
    out
}

/// Expands a domain-spec and applies the §7.3 left truncation: left labels are dropped until
/// at most [`MAX_DOMAIN_LEN`] octets are left (also when the expansion is longer than
/// [`MAX_EXPANSION_LEN`]: the end of the name is what is kept).
pub(crate) fn expand_domain(m: &MacroString, v: &MacroValues<'_>) -> String {
    let mut s = expand_keeping(m, v, Keep::End);
    if s.ends_with('.') {
        s.pop();
    }
    let mut view = s.as_str();
    while view.len() > MAX_DOMAIN_LEN {
        match view.split_once('.') {
            Some((_, rest)) => view = rest,
            None => break,
        }
    }
    view.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(ip: &str) -> MacroValues<'static> {
        MacroValues {
            local: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            helo: "mx.example.org",
            receiver: "unknown",
            ptr: None,
            now: 0,
        }
    }

    fn exp(s: &str, ip: &str) -> String {
        expand(&MacroString::parse(s, true).unwrap(), &values(ip))
    }

    #[test]
    fn rfc7208_section_7_4_examples() {
        let ip = "192.0.2.3";
        assert_eq!(exp("%{s}", ip), "strong-bad@email.example.com");
        assert_eq!(exp("%{o}", ip), "email.example.com");
        assert_eq!(exp("%{d4}", ip), "email.example.com");
        assert_eq!(exp("%{d3}", ip), "email.example.com");
        assert_eq!(exp("%{d2}", ip), "example.com");
        assert_eq!(exp("%{d1}", ip), "com");
        assert_eq!(exp("%{dr}", ip), "com.example.email");
        assert_eq!(exp("%{d2r}", ip), "example.email");
        assert_eq!(exp("%{l}", ip), "strong-bad");
        assert_eq!(exp("%{l-}", ip), "strong.bad");
        assert_eq!(exp("%{lr}", ip), "strong-bad");
        assert_eq!(exp("%{lr-}", ip), "bad.strong");
        assert_eq!(exp("%{l1r-}", ip), "strong");
        assert_eq!(
            exp("%{ir}.%{v}._spf.%{d2}", ip),
            "3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            exp("%{lr-}.lp._spf.%{d2}", ip),
            "bad.strong.lp._spf.example.com"
        );
        assert_eq!(
            exp("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01"),
            "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com"
        );
        assert_eq!(exp("%{S}", ip), "strong-bad%40email.example.com");
        assert_eq!(exp("%%%_%-", ip), "% %20");
    }

    #[test]
    fn truncates_long_domains_from_the_left() {
        let long = format!(
            "{}.example.com",
            "a".repeat(63) + "." + &"b".repeat(63) + "." + &"c".repeat(63) + "." + &"d".repeat(63)
        );
        let m = MacroString::parse(&long, false).unwrap();
        let out = expand_domain(&m, &values("192.0.2.3"));
        assert!(out.len() <= MAX_DOMAIN_LEN);
        assert!(out.ends_with(".example.com"));
    }

    /// An expansion longer than [`MAX_EXPANSION_LEN`] still keeps its right end: the name is
    /// exactly what dropping left labels from the whole expansion gives.
    #[test]
    fn truncates_huge_expansions_from_the_left_too() {
        let local = (0..3000)
            .map(|n| format!("l{n}"))
            .collect::<Vec<_>>()
            .join(".");
        assert!(local.len() > MAX_EXPANSION_LEN);
        let v = MacroValues {
            local: &local,
            ..values("192.0.2.3")
        };
        let m = MacroString::parse("%{l}.%{l}.x.%{d2}", false).unwrap();
        let out = expand_domain(&m, &v);
        let whole = format!("{local}.{local}.x.example.com");
        let mut want = whole.as_str();
        while want.len() > MAX_DOMAIN_LEN {
            want = want.split_once('.').unwrap().1;
        }
        assert_eq!(out, want);
        assert!(out.ends_with(".l2999.x.example.com") && out.len() <= MAX_DOMAIN_LEN);
        // A label cut by the bound is never kept as if it were whole.
        let m = MacroString::parse("%{l}", false).unwrap();
        let labels = "a".repeat(200) + "." + &"b".repeat(9000) + ".c.example.com";
        let v = MacroValues {
            local: &labels,
            ..values("192.0.2.3")
        };
        assert_eq!(expand_domain(&m, &v), "c.example.com");
    }
}
