//! `Received-SPF` (RFC 7208 §9.1) and `Authentication-Results` (RFC 8601 §2.7.2) for an
//! [`SpfOutput`].

use super::{Identity, SpfOutput};
use crate::auth_results::MethodResult;

/// `atext` of RFC 5322 §3.2.3 (the characters of a dot-atom's parts).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// `dot-atom-text`: atext parts separated by single dots.
fn is_dot_atom(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(is_atext))
}

/// A quoted-string (RFC 5322 §3.2.4) holding `v`: `"` and `\` escaped, control characters
/// (CR, LF, NUL, ...) dropped, since they could end the header field.
fn quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A `Received-SPF` key=value value (RFC 7208 §9.1: `dot-atom / quoted-string`): a dot-atom
/// is written as is, anything else quoted.
pub(crate) fn kv_value(v: &str) -> String {
    if is_dot_atom(v) {
        v.to_owned()
    } else {
        quoted(v)
    }
}

/// [`kv_value`] as python-policyd-spf spells values, for the policy server's transcripts:
/// besides dot-atoms, it writes an address (`u@example.com`), the null sender `<>`,
/// `<UNKNOWN>` and an empty value (a bypass header for the null sender: `envelope-from=;`)
/// bare. Those are kept bare only when made of atext, `.`, `@`, `<`, `>`, `:`,
/// `[` and `]` (no white space, `;`, `"`, `(`, `\` or control character), so no reader that
/// splits the list on `;` and white space can see a key in them; anything else (a HELO name
/// like `x identity=mailfrom`) is quoted as §9.1 says.
pub(crate) fn kv_value_compat(v: &str) -> String {
    let bare = v.bytes().all(|b| is_atext(b) || b".@<>:[]".contains(&b));
    if bare { v.to_owned() } else { quoted(v) }
}

/// Text safe inside a header comment: no parenthesis or backslash that could end it, no
/// control character that could end the field.
pub(crate) fn clean_comment(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')' && *c != '\\')
        .collect()
}

impl SpfOutput {
    /// The `Received-SPF` header value on one line (RFC 7208 §9.1), with `identity=` so
    /// consumers never mistake a HELO result for the MAIL FROM one. `comment` goes in
    /// parentheses after the result; `envelope_from` is the MAIL FROM as given (`<>` when
    /// null); `receiver` is our host name.
    pub fn received_spf(
        &self,
        comment: &str,
        envelope_from: &str,
        receiver: Option<&str>,
    ) -> String {
        let mut out = format!("{} ({})", self.result.as_str(), clean_comment(comment));
        out.push_str(&format!(" identity={};", self.identity.as_str()));
        out.push_str(&format!(" client-ip={};", self.ip));
        out.push_str(&format!(" helo={};", kv_value(&self.helo)));
        let from = if envelope_from.is_empty() {
            "<>"
        } else {
            envelope_from
        };
        out.push_str(&format!(" envelope-from={};", kv_value(from)));
        if let Some(r) = receiver {
            out.push_str(&format!(" receiver={};", kv_value(r)));
        }
        if let (Some(m), true) = (&self.mechanism, self.problem.is_none()) {
            out.push_str(&format!(" mechanism={};", kv_value(m)));
        }
        if let Some(p) = &self.problem {
            out.push_str(&format!(" problem={};", kv_value(p)));
        }
        out.pop();
        out
    }

    /// The `spf=` clause for an `Authentication-Results` header (push it into a
    /// [`crate::auth_results::AuthResults`]): `smtp.mailfrom=<domain>` for the MAIL FROM
    /// identity, `smtp.helo=<name>` for HELO.
    pub fn auth_results(&self, comment: Option<&str>) -> MethodResult {
        let mut m = MethodResult::new("spf", self.result.as_str());
        if let Some(c) = comment {
            m = m.comment(c);
        }
        match self.identity {
            Identity::MailFrom => m.property("smtp.mailfrom", &self.domain),
            Identity::Helo => m.property("smtp.helo", &self.helo),
        }
    }
}
