//! DMARC: records, header readers, `opendmarc.conf`, the history file and the whole filter.

use std::path::Path;

use super::hermetic_config;
use crate::dmarc::headers::{
    UpstreamContext, author_domain, is_valid_domain, parse_auth_results, read_upstream,
};
use crate::dmarc::psl::PublicSuffixList;
use crate::dmarc::{DmarcFilter, DmarcResult, MessageFacts, Policy};
use crate::filter::Action;

/// A DMARC history file (ours or OpenDMARC's `HistoryFile`): reading never panics, and every
/// record read, written back as a block, reads back to a record that writes the same block.
pub fn history(data: &[u8]) {
    use crate::dmarc::history::{HistoryReader, MessageRecord};

    for rec in HistoryReader::new(data).flatten() {
        let block = rec.to_history_block();
        let again = MessageRecord::from_history_block(&block)
            .unwrap_or_else(|e| panic!("{e} in our own block:\n{block}"));
        assert_eq!(again.to_history_block(), block);
    }
}

/// A `_dmarc` TXT record (RFC 7489 §6.3, RFC 9989). A parsed record written back by its
/// `Display` (every tag explicit) parses to the same record, and `pct=` stays within 0–100.
pub fn record(data: &[u8]) {
    use crate::dmarc::DmarcRecord;

    let Ok(rec) = DmarcRecord::parse(data) else {
        return;
    };
    assert!(rec.pct <= 100, "pct={}", rec.pct);
    let text = rec.to_string();
    assert_eq!(
        DmarcRecord::parse(text.as_bytes()).as_ref(),
        Ok(&rec),
        "re-rendered as {text:?}"
    );
}

/// A header block (`Name: value` lines, folds starting with a space or tab; LF or CRLF)
/// through the DMARC header readers: `From:` fields to the author domain (always one valid,
/// lower-case host name, whose Organizational Domain under `psl` is a suffix of it),
/// `Authentication-Results` values (what parses is written back by
/// [`AuthResults`](crate::auth_results::AuthResults) and reads the same, where its parts
/// are tokens the writer keeps as they are), and all fields through `read_upstream` with
/// `Return-Path:` as the envelope sender (only valid domains come out; no
/// `Authentication-Results` is used when no authserv-id is trusted).
pub fn headers(data: &[u8], psl: &PublicSuffixList) {
    let fields = super::header_fields(&String::from_utf8_lossy(data));
    fn named<'a>(fields: &'a [(String, String)], n: &str) -> Vec<&'a str> {
        fields
            .iter()
            .filter(|(f, _)| f.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    let froms = named(&fields, "From");
    if let Ok(d) = author_domain(&froms) {
        assert!(is_valid_domain(&d), "author domain {d:?}");
        assert_eq!(d, d.to_ascii_lowercase());
        let org = psl.organizational_domain(&d);
        assert!(
            d == org || d.ends_with(&format!(".{org}")),
            "organizational domain {org:?} of {d:?}"
        );
    }
    for ar in named(&fields, "Authentication-Results") {
        if let Some((id, results)) = parse_auth_results(ar) {
            auth_results_round_trip(&id, &results);
        }
    }
    let envelope = named(&fields, "Return-Path")
        .first()
        .copied()
        .unwrap_or("")
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    for spf_ignore_results in [false, true] {
        let ctx = UpstreamContext {
            envelope_from: envelope,
            spf_ignore_results,
        };
        let all = read_upstream(&fields, ctx, |_| true);
        assert!(
            all.dkim.iter().all(|d| is_valid_domain(&d.domain)),
            "{all:?}"
        );
        assert!(
            all.spf.iter().all(|s| is_valid_domain(&s.domain)),
            "{all:?}"
        );
        assert!(!spf_ignore_results || all.spf.is_none(), "{all:?}");
        let none = read_upstream(&fields, ctx, |_| false);
        assert!(none.dkim.is_empty(), "{none:?}");
    }
}

/// Parts the `Authentication-Results` writer keeps unchanged: a token of its alphabet.
fn is_ar_token(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+' | '/' | ':'))
}

/// Writes a parsed `Authentication-Results` back (on one line and folded) and checks it
/// reads the same, when every part is one the writer keeps as it is.
fn auth_results_round_trip(id: &str, results: &[crate::dmarc::headers::ResInfo]) {
    use crate::auth_results::{AuthResults, MethodResult};

    let value_ok = |v: &str| !v.chars().any(|c| matches!(c, '"' | '\\') || c.is_control());
    let clean = !id.is_empty()
        && is_ar_token(id)
        && results.iter().all(|r| {
            is_ar_token(&r.method)
                && is_ar_token(&r.result)
                && r.properties
                    .iter()
                    .all(|(k, v)| !k.is_empty() && is_ar_token(k) && value_ok(v))
        });
    if !clean {
        return;
    }
    let mut ar = AuthResults::new(id);
    for r in results {
        let mut m = MethodResult::new(r.method.clone(), r.result.clone());
        for (k, v) in &r.properties {
            m = m.property(k.clone(), v.clone());
        }
        ar.push(m);
    }
    for text in [ar.to_single_line(), ar.to_milter_value()] {
        let again = parse_auth_results(&text);
        assert_eq!(
            again.as_ref().map(|(i, r)| (i.as_str(), r.as_slice())),
            Some((id, results)),
            "written as {text:?}"
        );
    }
}

/// An `opendmarc.conf`: parsed or refused with an error that names the file.
pub fn config(data: &[u8]) {
    let path = Path::new("fuzz-opendmarc.conf");
    match crate::dmarc::DmarcConfig::parse(path, &hermetic_config(data)) {
        Ok(cfg) => {
            let _ = cfg.authserv_id(Some("mx.example"));
            let _ = cfg.ignores_host(Some([192, 0, 2, 1].into()), "mx.example");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("fuzz-opendmarc.conf"), "{text}");
        }
    }
}

/// A header block (as for [`headers`]; `Return-Path:` is the envelope sender) through
/// `filter` (a [`DmarcFilter`] with its configuration and zone). Every
/// `Authentication-Results` it adds reads back with the configured authserv-id; a reject or quarantine
/// comes only from a DMARC `fail` whose requested disposition asks for it; an evaluated
/// From domain is a valid host name.
pub fn filter(data: &[u8], filter: &DmarcFilter) {
    let fields = super::header_fields(&String::from_utf8_lossy(data));
    let envelope = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Return-Path"))
        .map_or("", |(_, v)| {
            v.trim().trim_start_matches('<').trim_end_matches('>')
        });
    let rcpts = ["bob@example.org".to_owned()];
    let facts = MessageFacts {
        client_ip: Some([192, 0, 2, 1].into()),
        envelope_from: envelope,
        helo: "mail.example.com",
        rcpts: &rcpts,
        headers: &fields,
        dkim_results: None,
        raw_message: None,
        job_id: Some("4ABCDEF"),
        mta_name: Some("mx.example.net"),
        prior: None,
    };
    let authserv_id = filter.config().authserv_id(facts.mta_name);
    let verdict = super::runtime().block_on(filter.check(&facts));
    for (name, value) in &verdict.headers() {
        if name == "Authentication-Results" {
            let read = parse_auth_results(value);
            assert_eq!(
                read.map(|(id, _)| id).as_deref(),
                Some(authserv_id.as_str()),
                "{value:?}"
            );
        }
    }
    if let Some(ev) = &verdict.evaluation {
        assert!(is_valid_domain(&ev.from_domain), "{ev:?}");
        let wanted = match verdict.verdict.action {
            Action::Reject(Some(_)) => Some(Policy::Reject),
            Action::Quarantine { .. } => Some(Policy::Quarantine),
            _ => None,
        };
        if let Some(p) = wanted {
            assert_eq!(ev.result, DmarcResult::Fail, "{verdict:?}");
            assert_eq!(ev.requested_disposition(), p, "{verdict:?}");
        }
    }
}
