//! `Authentication-Results` headers (RFC 8601), shared by the SPF, DKIM and DMARC filters.
//!
//! The builder produces the header *value* (what follows `Authentication-Results:`). Long
//! values are folded the way Postfix expects from a milter: lines are joined with `\n\t`,
//! never `\r\n` (Postfix splits on `\n` and would keep a `\r`). Policy servers must not send
//! a newline at all: use [`AuthResults::to_single_line`] there.

use std::fmt::Write as _;

/// Longest line we aim for when folding (RFC 5322 recommends 78 characters).
pub const FOLD_WIDTH: usize = 78;

/// One `method=result` clause with its reason, comment and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodResult {
    /// The method, e.g. `spf`, `dkim`, `dmarc`.
    pub method: String,
    /// The result keyword, e.g. `pass`, `fail`, `temperror`.
    pub result: String,
    /// A comment written right after the result, without parentheses (e.g. `2048-bit key`).
    pub comment: Option<String>,
    /// `reason="..."` text, if any.
    pub reason: Option<String>,
    /// `ptype.property=value` pairs, e.g. `("header.d", "example.com")`, in output order.
    pub properties: Vec<(String, String)>,
}

impl MethodResult {
    /// A clause with no comment, reason or properties.
    pub fn new(method: impl Into<String>, result: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            result: result.into(),
            comment: None,
            reason: None,
            properties: Vec::new(),
        }
    }

    /// Adds a comment after the result.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// Sets the `reason=` text.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Appends a `ptype.property=value` pair.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// The clause as separate words, so the folder can break between them.
    fn words(&self) -> Vec<String> {
        let mut words = vec![format!("{}={}", self.method, self.result)];
        if let Some(c) = &self.comment {
            words.push(format!("({})", sanitize_comment(c)));
        }
        if let Some(r) = &self.reason {
            words.push(format!("reason=\"{}\"", sanitize_quoted(r)));
        }
        for (name, value) in &self.properties {
            words.push(format!("{name}={}", value_token(value)));
        }
        words
    }
}

/// An `Authentication-Results` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResults {
    /// The authserv-id: the name of the host or domain that did the checks.
    pub authserv_id: String,
    /// The results, in order. Empty means `none`.
    pub results: Vec<MethodResult>,
}

impl AuthResults {
    /// An empty header for `authserv_id`.
    pub fn new(authserv_id: impl Into<String>) -> Self {
        Self {
            authserv_id: authserv_id.into(),
            results: Vec::new(),
        }
    }

    /// Appends a result.
    pub fn push(&mut self, result: MethodResult) -> &mut Self {
        self.results.push(result);
        self
    }

    fn parts(&self) -> Vec<Vec<String>> {
        if self.results.is_empty() {
            return vec![vec![format!("{};", self.authserv_id)], vec!["none".into()]];
        }
        let last = self.results.len() - 1;
        let mut parts = vec![vec![format!("{};", self.authserv_id)]];
        for (i, r) in self.results.iter().enumerate() {
            let mut words = r.words();
            if i != last
                && let Some(w) = words.last_mut()
            {
                w.push(';');
            }
            parts.push(words);
        }
        parts
    }

    /// The value folded for a milter: each result starts a new line joined with `\n\t`, and
    /// a result longer than [`FOLD_WIDTH`] breaks between its words.
    pub fn to_milter_value(&self) -> String {
        let mut out = String::new();
        let mut col = "Authentication-Results: ".len();
        for (i, words) in self.parts().into_iter().enumerate() {
            if i > 0 {
                out.push_str("\n\t");
                col = 8;
            }
            for (j, w) in words.iter().enumerate() {
                if j > 0 {
                    if col + 1 + w.len() > FOLD_WIDTH {
                        out.push_str("\n\t");
                        col = 8;
                    } else {
                        out.push(' ');
                        col += 1;
                    }
                }
                out.push_str(w);
                col += w.len();
            }
        }
        out
    }

    /// The value on one line (for policy `PREPEND`, where a newline is not allowed).
    pub fn to_single_line(&self) -> String {
        let mut out = String::new();
        for words in self.parts() {
            for w in words {
                if !out.is_empty() {
                    out.push(' ');
                }
                let _ = write!(out, "{w}");
            }
        }
        out
    }
}

/// The authserv-id an `Authentication-Results` value claims (RFC 8601 §2.2), read past
/// comments (nested, with quoted pairs), folding and white space, and without a trailing
/// `version` number: `(x) mx.example.org 1 ; ...` → `mx.example.org`. `None` when there is no
/// id before the first `;` (or the value ends inside a comment).
pub fn authserv_id(value: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    let mut depth = 0usize;
    let mut start = None;
    while let Some(&c) = value.get(i) {
        match (depth, c) {
            (_, b'\\') if depth > 0 => i += 1,
            (_, b'(') => depth += 1,
            (d, b')') if d > 0 => depth -= 1,
            (0, b';') => break,
            (0, c) if start.is_none() && !c.is_ascii_whitespace() => start = Some(i),
            (0, c) if start.is_some() && (c.is_ascii_whitespace() || c == b'(') => break,
            _ => {}
        }
        i += 1;
    }
    let begin = start?;
    let mut end = begin;
    while value
        .get(end)
        .is_some_and(|c| !c.is_ascii_whitespace() && !matches!(c, b';' | b'('))
    {
        end += 1;
    }
    let id = value.get(begin..end)?;
    let id = id
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(id);
    (!id.is_empty()).then_some(id)
}

/// Whether an `Authentication-Results` value claims to come from `our_id` (compared without
/// case), whatever its methods, comments or folding: such a field arriving from outside is
/// forged and every filter removes it before anything reads it.
pub fn claims_authserv_id(value: &[u8], our_id: &str) -> bool {
    authserv_id(value).is_some_and(|id| id.eq_ignore_ascii_case(our_id.as_bytes()))
}

/// Removes what would end a comment or break the header.
fn sanitize_comment(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '(' | ')' | '\\' | '\r' | '\n'))
        .collect()
}

/// Removes what would end a quoted string or break the header.
fn sanitize_quoted(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '"' | '\\' | '\r' | '\n'))
        .collect()
}

/// A property value as a token, or quoted when it contains characters a token cannot hold.
fn value_token(v: &str) -> String {
    let token_ok = !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+' | '/' | '=' | ':')
        });
    if token_ok {
        v.to_owned()
    } else {
        format!("\"{}\"", sanitize_quoted(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_folded_forms() {
        let mut ar = AuthResults::new("mx.example.org");
        ar.push(
            MethodResult::new("spf", "pass")
                .comment("sender SPF authorized")
                .property("smtp.mailfrom", "alice@example.com"),
        );
        ar.push(
            MethodResult::new("dkim", "pass")
                .comment("2048-bit key; unprotected")
                .property("header.d", "example.com")
                .property("header.i", "@example.com")
                .property("header.b", "AbCdEf12"),
        );
        assert_eq!(
            ar.to_single_line(),
            "mx.example.org; spf=pass (sender SPF authorized) smtp.mailfrom=alice@example.com; \
             dkim=pass (2048-bit key; unprotected) header.d=example.com header.i=@example.com \
             header.b=AbCdEf12"
        );
        let folded = ar.to_milter_value();
        assert!(!folded.contains('\r'));
        assert!(folded.starts_with("mx.example.org;\n\tspf=pass"));
        assert!(folded.lines().all(|l| l.len() <= FOLD_WIDTH));
    }

    #[test]
    fn empty_is_none_and_values_are_quoted_safely() {
        assert_eq!(AuthResults::new("a").to_single_line(), "a; none");
        let r = MethodResult::new("spf", "fail")
            .reason("bad \"x\"\nthing")
            .property("smtp.mailfrom", "a b");
        let mut ar = AuthResults::new("h");
        ar.push(r);
        assert_eq!(
            ar.to_single_line(),
            "h; spf=fail reason=\"bad xthing\" smtp.mailfrom=\"a b\""
        );
    }

    #[test]
    fn authserv_id_past_comments_folding_and_version() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b" mx.example.org; spf=pass", Some(b"mx.example.org")),
            (b"mx.example.org;dkim=pass", Some(b"mx.example.org")),
            (
                b" (forged (nested) \\) x) MX.Example.ORG 1; dkim=pass",
                Some(b"MX.Example.ORG"),
            ),
            (
                b"\r\n\tmx.example.org\r\n\t;\r\n\tspf=pass",
                Some(b"mx.example.org"),
            ),
            (b" mx.example.org(c); none", Some(b"mx.example.org")),
            (b" \"mx.example.org\"; none", Some(b"mx.example.org")),
            (b" ; spf=pass", None),
            (b" (unterminated mx.example.org; spf=pass", None),
            (b"", None),
        ];
        for (v, want) in cases {
            assert_eq!(authserv_id(v), *want, "{:?}", String::from_utf8_lossy(v));
        }
        assert!(claims_authserv_id(
            b" (x) mx.EXAMPLE.org; spf=pass",
            "mx.example.org"
        ));
        assert!(!claims_authserv_id(
            b" mx.example.org.evil; spf=pass",
            "mx.example.org"
        ));
    }
}
