//! `Received-SPF` (RFC 7208 §9.1) and `Authentication-Results` (RFC 8601 §2.7.2) for an
//! [`SpfOutput`].

use super::{Identity, SpfOutput};
use crate::auth_results::MethodResult;

/// A `Received-SPF` key=value value: a dot-atom is written as is, anything else quoted.
fn kv_value(v: &str) -> String {
    let atom = !v.is_empty()
        && v.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
        });
    if atom {
        v.to_owned()
    } else {
        let inner: String = v
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| {
                if c == '"' || c == '\\' {
                    format!("\\{c}")
                } else {
                    c.to_string()
                }
            })
            .collect();
        format!("\"{inner}\"")
    }
}

fn clean_comment(s: &str) -> String {
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
