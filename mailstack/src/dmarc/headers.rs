//! Reading the header fields DMARC depends on: the author domain from `From:`, upstream
//! `Authentication-Results` (RFC 8601) and `Received-SPF` (RFC 7208 §9.1), with OpenDMARC's
//! protections: one From domain (CVE-2019-16378, CVE-2021-34555), balanced angle brackets
//! (OpenDMARC PR #342), domain names that are valid host names (CVE-2020-12272), and a
//! `Received-SPF` used only for the MAIL FROM identity of this envelope (CVE-2019-20790).

use crate::spf::{Identity, SpfResult};

use super::eval::{DkimInput, DkimStatus, SpfInput};

/// Why no author domain could be taken from the `From:` fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FromError {
    /// There is no `From:` field.
    #[error("no From field")]
    Missing,
    /// There are several `From:` fields.
    #[error("{0} From fields")]
    Several(usize),
    /// The field does not parse as an address list (unbalanced quotes, comments or brackets).
    #[error("From field cannot be parsed")]
    Unparseable,
    /// An address has no domain, or a domain that is not a valid host name.
    #[error("From address has no valid domain: {0:?}")]
    InvalidDomain(String),
    /// The addresses have different domains.
    #[error("From field has addresses in different domains")]
    MultipleDomains,
}

/// The author domain (lower case) of the `From:` field values of a message.
pub fn author_domain(from_fields: &[&str]) -> Result<String, FromError> {
    let value = match from_fields {
        [] => return Err(FromError::Missing),
        [one] => *one,
        more => return Err(FromError::Several(more.len())),
    };
    let addrs = addresses(value).ok_or(FromError::Unparseable)?;
    let mut domain: Option<String> = None;
    for a in &addrs {
        let d = a
            .rsplit_once('@')
            .map(|(_, d)| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| is_valid_domain(d))
            .ok_or_else(|| FromError::InvalidDomain(a.clone()))?;
        match &domain {
            Some(prev) if *prev != d => return Err(FromError::MultipleDomains),
            _ => domain = Some(d),
        }
    }
    domain.ok_or(FromError::Missing)
}

/// The addr-specs of an RFC 5322 address list (display names, comments and groups dropped);
/// `None` when quotes, comments or angle brackets are unbalanced.
fn addresses(value: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let (mut plain, mut angle) = (String::new(), None::<String>);
    let (mut quoted, mut escaped, mut comment, mut in_angle) = (false, false, 0u32, false);
    let mut finish = |plain: &mut String, angle: &mut Option<String>| {
        let a = angle.take().unwrap_or_else(|| plain.clone());
        let a = a.trim();
        if !a.is_empty() {
            out.push(a.to_owned());
        }
        plain.clear();
    };
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        if quoted {
            match c {
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        if comment > 0 {
            match c {
                '\\' => escaped = true,
                '(' => comment += 1,
                ')' => comment -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            '"' if !in_angle => {
                quoted = true;
                plain.clear();
            }
            '(' => comment = 1,
            ')' => return None,
            '<' if in_angle => return None,
            '<' => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if !in_angle => return None,
            '>' => in_angle = false,
            ':' if !in_angle => plain.clear(),
            ',' | ';' if !in_angle => finish(&mut plain, &mut angle),
            c if c.is_whitespace() => {}
            c if in_angle => angle.get_or_insert_with(String::new).push(c),
            c => plain.push(c),
        }
    }
    if quoted || comment > 0 || in_angle || escaped {
        return None;
    }
    finish(&mut plain, &mut angle);
    Some(out)
}

/// A domain name usable for DMARC: at least two labels of letters, digits and inner
/// hyphens, 63 octets per label, 253 in all, a TLD that is not all digits.
pub fn is_valid_domain(d: &str) -> bool {
    let d = d.trim_end_matches('.');
    let labels: Vec<&str> = d.split('.').collect();
    d.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_digit()))
}

/// One `method=result` of an `Authentication-Results` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResInfo {
    /// The method, lower case, version dropped (`spf`, `dkim`, ...).
    pub method: String,
    /// The result, lower case.
    pub result: String,
    /// `ptype.property` (lower case) and value pairs, quotes removed.
    pub properties: Vec<(String, String)>,
}

impl ResInfo {
    /// The first value of `name` (e.g. `header.d`).
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Removes comments, keeps quoted strings; `None` if unbalanced.
fn strip_comments(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0u32, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.checked_sub(1)?,
            _ if depth > 0 => {}
            '\r' | '\n' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    (depth == 0 && !quoted).then_some(out)
}

/// Splits on `sep` outside quoted strings.
fn split_unquoted(s: &str, sep: fn(char) -> bool) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && sep(c) {
            parts.push(String::new());
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts.retain(|p| !p.trim().is_empty());
    parts
}

/// Parses an `Authentication-Results` value into its authserv-id and results; `None` when
/// it does not parse.
pub fn parse_auth_results(value: &str) -> Option<(String, Vec<ResInfo>)> {
    let clean = strip_comments(value)?;
    let mut parts = split_unquoted(&clean, |c| c == ';').into_iter();
    let id = parts.next()?.split_whitespace().next()?.to_owned();
    let mut out = Vec::new();
    for part in parts {
        let words = split_unquoted(&part, char::is_whitespace);
        let mut words = words.iter().map(|w| w.trim());
        let Some((method, result)) = words.next().and_then(|w| w.split_once('=')) else {
            continue;
        };
        let method = method.split('/').next().unwrap_or(method).trim();
        let mut info = ResInfo {
            method: method.to_ascii_lowercase(),
            result: result.trim().to_ascii_lowercase(),
            properties: Vec::new(),
        };
        for w in words {
            if let Some((k, v)) = w.split_once('=')
                && k.contains('.')
            {
                info.properties
                    .push((k.to_ascii_lowercase(), v.trim_matches('"').to_owned()));
            }
        }
        out.push(info);
    }
    Some((id, out))
}

/// The domain of an address or bare domain (`user@d`, `@d`, `d`), lower case.
fn domain_of(s: &str) -> String {
    let s = s.trim().trim_start_matches('<').trim_end_matches('>');
    s.rsplit_once('@')
        .map_or(s, |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Maps an SPF keyword as OpenDMARC does for headers.
fn spf_word(word: &str) -> SpfResult {
    match word.to_ascii_lowercase().as_str() {
        "pass" => SpfResult::Pass,
        "fail" | "hardfail" => SpfResult::Fail,
        "softfail" => SpfResult::SoftFail,
        "neutral" => SpfResult::Neutral,
        "temperror" | "tempfail" => SpfResult::TempError,
        "permerror" | "perm_error" => SpfResult::PermError,
        _ => SpfResult::None,
    }
}

/// Results taken from trusted upstream header fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstream {
    /// The SPF result, if a usable one was found.
    pub spf: Option<SpfInput>,
    /// DKIM results with a valid `header.d`.
    pub dkim: Vec<DkimInput>,
}

/// What [`read_upstream`] needs to know about the message.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamContext<'a> {
    /// The envelope sender (MAIL FROM, brackets removed; empty for the null sender).
    pub envelope_from: &'a str,
    /// Whether to ignore SPF results in headers (`SPFIgnoreResults`).
    pub spf_ignore_results: bool,
}

/// Reads SPF and DKIM results from the header fields `(name, value)` of a message, using
/// only `Authentication-Results` whose authserv-id (read by
/// [`crate::auth_results::authserv_id`]) `trusted` accepts, as OpenDMARC does
/// (§2.3 of the reference): SPF from `spf=` with an `smtp.mailfrom` in the envelope domain
/// (or `smtp.helo` for the null sender), else from the first `Received-SPF` that names
/// `identity=mailfrom` and an `envelope-from` in the envelope domain; DKIM from `dkim=` with `header.d` (and
/// `header.s`).
pub fn read_upstream(
    fields: &[(String, String)],
    ctx: UpstreamContext<'_>,
    trusted: impl Fn(&str) -> bool,
) -> Upstream {
    let env_domain = domain_of(ctx.envelope_from);
    let mut up = Upstream::default();
    for (name, value) in fields {
        if !name.eq_ignore_ascii_case("Authentication-Results") {
            continue;
        }
        // The one reader of the claimed id, shared with the filters that remove forged
        // fields (past comments, folding, quotes and the version), so a field is trusted
        // here exactly when it would have been recognised as claiming that id there.
        let id = crate::auth_results::authserv_id(value.as_bytes())
            .and_then(|id| std::str::from_utf8(id).ok());
        if !id.is_some_and(&trusted) {
            continue;
        }
        let Some((_, results)) = parse_auth_results(value) else {
            continue;
        };
        for r in results {
            match r.method.as_str() {
                "spf" if !ctx.spf_ignore_results && up.spf.is_none() => {
                    up.spf = spf_from_ar(&r, &env_domain, ctx.envelope_from.is_empty());
                }
                "dkim" => {
                    if let Some(d) = r.property("header.d").map(domain_of)
                        && is_valid_domain(&d)
                    {
                        up.dkim.push(DkimInput {
                            domain: d,
                            selector: r.property("header.s").unwrap_or_default().to_owned(),
                            status: DkimStatus::parse(&r.result),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    if up.spf.is_none() && !ctx.spf_ignore_results {
        up.spf = fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Received-SPF"))
            .and_then(|(_, v)| spf_from_received(v, ctx.envelope_from));
    }
    up
}

fn spf_from_ar(r: &ResInfo, env_domain: &str, null_sender: bool) -> Option<SpfInput> {
    let (domain, identity) = match (r.property("smtp.mailfrom"), r.property("smtp.helo")) {
        (Some(m), _) => (domain_of(m), Identity::MailFrom),
        (None, Some(h)) if null_sender => (domain_of(h), Identity::Helo),
        _ => return None,
    };
    if !is_valid_domain(&domain) || (identity == Identity::MailFrom && domain != env_domain) {
        return None;
    }
    Some(SpfInput {
        domain,
        identity,
        result: spf_word(&r.result),
    })
}

/// `Received-SPF: <result> (comment) key=value; ...` (RFC 7208 §9.1), used only with
/// `identity=mailfrom` and an `envelope-from` in the envelope sender's domain. Only the
/// key=value list after the comment counts, and of each key only its first occurrence (the
/// writer puts `identity=` first; a value quoted or not can then never override it).
fn spf_from_received(value: &str, envelope_from: &str) -> Option<SpfInput> {
    let (result, pairs) = received_spf_fields(value)?;
    let first = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    let identity_ok = first("identity").is_some_and(|v| v.eq_ignore_ascii_case("mailfrom"));
    // OpenDMARC compares the domains (checked against OpenDMARC 1.4.2 in
    // examples/tests/dmarc_vs_opendmarc.rs).
    let env_ok = first("envelope-from").is_some_and(|v| {
        !envelope_from.is_empty() && v.contains('@') && domain_of(v) == domain_of(envelope_from)
    });
    let domain = domain_of(envelope_from);
    if !(identity_ok && env_ok && is_valid_domain(&domain)) {
        return None;
    }
    let result = match spf_word(&result) {
        SpfResult::Pass => SpfResult::Pass,
        SpfResult::TempError => SpfResult::TempError,
        SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => SpfResult::Fail,
        SpfResult::None | SpfResult::PermError => SpfResult::None,
    };
    Some(SpfInput {
        domain,
        identity: Identity::MailFrom,
        result,
    })
}

/// Most key=value pairs read from one `Received-SPF` (RFC 7208 §9.1 defines seven keys).
const MAX_RECEIVED_SPF_PAIRS: usize = 32;

/// Splits a `Received-SPF` value (RFC 7208 §9.1) into its result and its key=value pairs:
///
/// ```text
/// header = result FWS [comment FWS] [ key-value-list ] CRLF
/// key-value-list = key-value-pair *( ";" [CFWS] key-value-pair ) [";"]
/// key-value-pair = key [CFWS] "=" ( dot-atom / quoted-string )
/// ```
///
/// Quoted strings are unescaped; a bare value is taken up to white space, `;` or `(` (so the
/// unquoted `envelope-from=a@b.example` python-policyd-spf writes still reads). `None` when
/// the value does not have that shape (unterminated comment or quoted string, a pair
/// without `=`, two pairs without `;` between them): such a field is not used at all.
fn received_spf_fields(value: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut p = Cursor(value.as_bytes(), 0);
    p.skip_cfws()?;
    let result = p.take_while(|b| b.is_ascii_alphanumeric() || b == b'_');
    if result.is_empty() {
        return None;
    }
    let mut pairs = Vec::new();
    loop {
        p.skip_cfws()?;
        if p.peek().is_none() || pairs.len() >= MAX_RECEIVED_SPF_PAIRS {
            break;
        }
        let key = p.take_while(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        p.skip_cfws()?;
        if key.is_empty() || p.next() != Some(b'=') {
            return None;
        }
        p.skip_cfws()?;
        let value = if p.peek() == Some(b'"') {
            p.quoted()?
        } else {
            p.take_while(|b| !b.is_ascii_whitespace() && !b";\"(".contains(&b))
        };
        pairs.push((key, value));
        p.skip_cfws()?;
        match p.next() {
            Some(b';') | None => {}
            Some(_) => return None,
        }
    }
    Some((result, pairs))
}

/// A byte cursor for [`received_spf_fields`].
struct Cursor<'a>(&'a [u8], usize);

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.0.get(self.1).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.1 += 1;
        Some(b)
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> String {
        let start = self.1;
        while self.peek().is_some_and(&f) {
            self.1 += 1;
        }
        String::from_utf8_lossy(self.0.get(start..self.1).unwrap_or_default()).into_owned()
    }

    /// Skips white space (folding included) and comments, nested, with quoted pairs; `None`
    /// when a comment does not end.
    fn skip_cfws(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match (depth, self.peek()) {
                (0, Some(b)) if b.is_ascii_whitespace() => {}
                (0, Some(b'(')) => depth = 1,
                (0, _) => return Some(()),
                (_, None) => return None,
                (_, Some(b'\\')) => self.1 += 1,
                (_, Some(b'(')) => depth += 1,
                (_, Some(b')')) => depth -= 1,
                _ => {}
            }
            self.1 += 1;
        }
    }

    /// A quoted-string starting at the cursor, unescaped; `None` when it does not end.
    fn quoted(&mut self) -> Option<String> {
        self.next();
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => out.push(self.next()?),
                b => out.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn author_domain_cases() {
        let ok = |v: &str| author_domain(&[v]);
        assert_eq!(ok("alice@Example.COM").unwrap(), "example.com");
        assert_eq!(ok("\"Bob, Jr\" <bob@a.example>").unwrap(), "a.example");
        assert_eq!(
            ok("Bob (x@evil.example) <bob@a.example>").unwrap(),
            "a.example"
        );
        assert_eq!(ok("a@x.example, b@X.example").unwrap(), "x.example");
        assert_eq!(ok("team: a@x.example, b@x.example;").unwrap(), "x.example");
        assert_eq!(
            ok("\"a@evil.example\" <b@good.example>").unwrap(),
            "good.example"
        );
        assert_eq!(
            ok("a@x.example, b@y.example"),
            Err(FromError::MultipleDomains)
        );
        assert_eq!(ok("<a@x.example>>"), Err(FromError::Unparseable));
        assert_eq!(ok("<a@x.example"), Err(FromError::Unparseable));
        assert_eq!(ok("a@x.example>"), Err(FromError::Unparseable));
        assert_eq!(ok("\"open <a@x.example>"), Err(FromError::Unparseable));
        assert!(matches!(
            ok("undisclosed"),
            Err(FromError::InvalidDomain(_))
        ));
        assert!(matches!(
            ok("a@[192.0.2.1]"),
            Err(FromError::InvalidDomain(_))
        ));
        assert!(matches!(
            ok("a@example.net(.example.com"),
            Err(FromError::Unparseable)
        ));
        assert!(matches!(
            ok("a@localhost"),
            Err(FromError::InvalidDomain(_))
        ));
        assert_eq!(author_domain(&[]), Err(FromError::Missing));
        assert_eq!(
            author_domain(&["a@x.example", "b@x.example"]),
            Err(FromError::Several(2))
        );
    }

    #[test]
    fn valid_domains() {
        assert!(is_valid_domain("a-b.example.com"));
        assert!(is_valid_domain("example.com."));
        assert!(!is_valid_domain("example.net(.example.com"));
        assert!(!is_valid_domain("-a.example"));
        assert!(!is_valid_domain("a..example"));
        assert!(!is_valid_domain("1.2.3.4"));
        assert!(!is_valid_domain(&format!("{}.example", "a".repeat(64))));
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn upstream_results_only_from_trusted_ids() {
        let f = fields(&[
            (
                "Authentication-Results",
                "evil.example; dkim=pass header.d=paypal.example; spf=pass smtp.mailfrom=x@s.example",
            ),
            (
                "Authentication-Results",
                "mx.example;\n\tdkim=pass (2048-bit key; unprotected) header.d=Sender.Example \
                 header.i=@sender.example header.a=rsa-sha256 header.s=mail header.b=AZILdnmX;\n\t\
                 dkim-atps=neutral",
            ),
            (
                "Authentication-Results",
                "mx.example; dkim=pass header.d=example.net(.example.com",
            ),
            (
                "Authentication-Results",
                "mx.example; dkim=pass header.d=\"bad domain.example\"",
            ),
            (
                "Authentication-Results",
                "MX.example 1; spf=pass smtp.mailfrom=alice@s.example",
            ),
        ]);
        let ctx = UpstreamContext {
            envelope_from: "alice@s.example",
            spf_ignore_results: false,
        };
        let up = read_upstream(&f, ctx, |id| id.eq_ignore_ascii_case("mx.example"));
        assert_eq!(
            up.dkim,
            vec![DkimInput {
                domain: "sender.example".into(),
                selector: "mail".into(),
                status: DkimStatus::Pass
            }]
        );
        assert_eq!(
            up.spf,
            Some(SpfInput {
                domain: "s.example".into(),
                identity: Identity::MailFrom,
                result: SpfResult::Pass
            })
        );
        let ctx = UpstreamContext {
            envelope_from: "bob@other.example",
            ..ctx
        };
        let up = read_upstream(&f, ctx, |id| id.eq_ignore_ascii_case("mx.example"));
        assert_eq!(
            up.spf, None,
            "smtp.mailfrom outside the envelope domain is ignored"
        );
    }

    #[test]
    fn received_spf_only_for_this_envelope_and_mailfrom() {
        let rs = "Pass (mailfrom) identity=mailfrom; client-ip=127.0.0.2; helo=in.example; \
                  envelope-from=alice@sender.example; receiver=dest.example";
        let f = fields(&[("Received-SPF", rs)]);
        let ctx = UpstreamContext {
            envelope_from: "alice@sender.example",
            spf_ignore_results: false,
        };
        let up = read_upstream(&f, ctx, |_| false);
        assert_eq!(up.spf.unwrap().result, SpfResult::Pass);
        let up = read_upstream(
            &f,
            UpstreamContext {
                envelope_from: "mallory@other.example",
                ..ctx
            },
            |_| false,
        );
        assert_eq!(up.spf, None);
        let helo = "Pass (helo) identity=helo; client-ip=1.2.3.4; helo=sender.example; \
                    envelope-from=alice@sender.example";
        let up = read_upstream(&fields(&[("Received-SPF", helo)]), ctx, |_| false);
        assert_eq!(up.spf, None, "CVE-2019-20790: a HELO result is not used");
        let soft = "SoftFail identity=mailfrom; envelope-from=\"alice@sender.example\"";
        let up = read_upstream(&fields(&[("Received-SPF", soft)]), ctx, |_| false);
        assert_eq!(up.spf.unwrap().result, SpfResult::Fail);
        let ignore = UpstreamContext {
            spf_ignore_results: true,
            ..ctx
        };
        assert_eq!(read_upstream(&f, ignore, |_| true).spf, None);
    }

    #[test]
    fn trusted_id_read_by_the_shared_reader() {
        let ctx = UpstreamContext {
            envelope_from: "alice@s.example",
            spf_ignore_results: false,
        };
        let trusted = |id: &str| id.eq_ignore_ascii_case("mx.example");
        for (value, dkim) in [
            (
                "(x) mx.example; spf=pass smtp.mailfrom=alice@s.example",
                false,
            ),
            (
                " (forged (nested)) \"mx.example\" 1;\r\n\tdkim=pass header.d=a.example",
                true,
            ),
            ("\"mx.example\"; dkim=pass header.d=a.example", true),
        ] {
            let up = read_upstream(&fields(&[("Authentication-Results", value)]), ctx, trusted);
            assert_eq!(!up.dkim.is_empty(), dkim, "{value}");
            assert_eq!(up.spf.is_some(), !dkim, "{value}");
        }
        for value in [
            "mx.example.evil; dkim=pass header.d=a.example",
            "(mx.example) evil.example; dkim=pass header.d=a.example",
            "(mx.example; dkim=pass header.d=a.example",
        ] {
            let up = read_upstream(&fields(&[("Authentication-Results", value)]), ctx, trusted);
            assert_eq!(up, Upstream::default(), "{value}");
        }
    }

    #[test]
    fn received_spf_helo_result_never_poses_as_mail_from() {
        let ctx = UpstreamContext {
            envelope_from: "alice@sender.example",
            spf_ignore_results: false,
        };
        for forged in [
            // A later identity= must not override the first one.
            "Pass (x) identity=helo; helo=x; identity=mailfrom; envelope-from=alice@sender.example",
            // An escaped quote inside the quoted HELO value does not end it.
            "Pass (x) identity=helo; client-ip=192.0.2.1; \
             helo=\"a\\\" identity=mailfrom envelope-from=alice@sender.example \\\"\"; \
             envelope-from=alice@sender.example",
            "Pass (x) identity=helo; helo=\"x identity=mailfrom\"; \
             envelope-from=alice@sender.example",
            // Only the list after the comment counts.
            "Pass identity=mailfrom (identity=helo) identity=helo; envelope-from=alice@sender.example",
            // Malformed: no identity at all, a pair without ';', an open quoted string.
            "Pass (x) envelope-from=alice@sender.example",
            "Pass (x) identity=mailfrom envelope-from=alice@sender.example",
            "Pass (x) identity=mailfrom; envelope-from=\"alice@sender.example",
        ] {
            let up = read_upstream(&fields(&[("Received-SPF", forged)]), ctx, |_| false);
            assert_eq!(up.spf, None, "{forged}");
        }
        let quoted = "pass (mx: domain of alice@sender.example designates 192.0.2.1) \
                      identity=mailfrom; client-ip=192.0.2.1; helo=\"a b\"; \
                      envelope-from=\"alice@sender.example\"; receiver=mx.example";
        let up = read_upstream(&fields(&[("Received-SPF", quoted)]), ctx, |_| false);
        assert_eq!(up.spf.map(|s| s.result), Some(SpfResult::Pass));
    }
}
