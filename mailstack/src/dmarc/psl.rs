//! The public suffix list (<https://publicsuffix.org/list/>) for RFC 7489 §3.2's
//! Organizational Domain, read from the file `PublicSuffixList` names (Debian:
//! `/usr/share/publicsuffix/public_suffix_list.dat`, package `publicsuffix`).
//!
//! The algorithm is the list's own: the rule matching the most labels wins, an exception rule
//! (`!name`) beats the wildcard it carves out of, and an unlisted TLD is a public suffix (the
//! implicit `*` rule). Both the ICANN and the PRIVATE sections are used, as OpenDMARC does.

use std::collections::HashSet;
use std::path::Path;

/// Largest list file we read (4 MiB; the real list is about 250 KiB).
pub(crate) const MAX_PSL_FILE: u64 = 4 * 1024 * 1024;

/// A loaded public suffix list.
#[derive(Debug, Clone, Default)]
pub struct PublicSuffixList {
    rules: HashSet<String>,
    wildcards: HashSet<String>,
    exceptions: HashSet<String>,
}

impl PublicSuffixList {
    /// Reads a list file.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let len = std::fs::metadata(path)?.len();
        if len > MAX_PSL_FILE {
            return Err(std::io::Error::other(format!(
                "{len} bytes, larger than the {MAX_PSL_FILE} accepted"
            )));
        }
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Parses the list's text (`//` comments, one rule per line, first word only).
    pub fn parse(text: &str) -> Self {
        let mut psl = Self::default();
        for line in text.lines() {
            let Some(rule) = line.split_whitespace().next() else {
                continue;
            };
            if rule.starts_with("//") {
                continue;
            }
            let rule = rule.to_ascii_lowercase();
            if let Some(exc) = rule.strip_prefix('!') {
                psl.exceptions.insert(exc.to_owned());
            } else if let Some(base) = rule.strip_prefix("*.") {
                psl.wildcards.insert(base.to_owned());
            } else {
                psl.rules.insert(rule);
            }
        }
        psl
    }

    /// How many labels (from the right) of `domain` form its public suffix.
    fn suffix_labels(&self, labels: &[&str]) -> usize {
        let n = labels.len();
        let mut best = 1; // the implicit `*` rule
        for k in 1..=n {
            let name = labels[n - k..].join(".");
            if self.exceptions.contains(&name) {
                return k - 1;
            }
            if self.rules.contains(&name) {
                best = best.max(k);
            }
            if k < n && self.wildcards.contains(&name) {
                // `*.name` covers one more label; a `!` exception for it returns above on the
                // next round.
                best = best.max(k + 1);
            }
        }
        best
    }

    /// The Organizational Domain of `domain` (lower case, no trailing dot): its public suffix
    /// plus one label, or `domain` itself when it is a public suffix.
    pub fn organizational_domain(&self, domain: &str) -> String {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        let k = self.suffix_labels(&labels);
        if k >= labels.len() {
            return domain;
        }
        labels[labels.len() - k - 1..].join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "// comment\ncom\nuk\nco.uk\n*.ck\n!www.ck\njp\n*.kobe.jp\n!city.kobe.jp\n\
                        // ===BEGIN PRIVATE DOMAINS===\nblogspot.com\n";

    #[test]
    fn publicsuffix_org_test_cases() {
        let p = PublicSuffixList::parse(LIST);
        let cases = [
            ("example.com", "example.com"),
            ("a.b.Example.COM.", "example.com"),
            ("com", "com"),
            ("a.b.example.co.uk", "example.co.uk"),
            ("co.uk", "co.uk"),
            ("a.b.c.ck", "b.c.ck"),
            ("c.ck", "c.ck"),
            ("www.ck", "www.ck"),
            ("a.www.ck", "www.ck"),
            ("a.b.kobe.jp", "a.b.kobe.jp"),
            ("x.a.b.kobe.jp", "a.b.kobe.jp"),
            ("x.city.kobe.jp", "city.kobe.jp"),
            ("me.blogspot.com", "me.blogspot.com"),
            ("a.me.blogspot.com", "me.blogspot.com"),
            ("x.unlisted", "x.unlisted"),
            ("y.x.unlisted", "x.unlisted"),
        ];
        for (domain, org) in cases {
            assert_eq!(p.organizational_domain(domain), org, "{domain}");
        }
    }
}
