//! Entry points for the cargo-fuzz targets in `fuzz/` and for the stable tests that replay
//! their corpora. Not a public API: hidden from the docs and free to change.

use std::path::Path;

use crate::config::{ConfigFile, Syntax};

/// An SPF TXT record (and, if it has one, the macro-strings inside it): parsed or rejected,
/// never a panic.
pub fn spf_record(data: &[u8]) {
    if crate::spf::record::is_spf_record(data) {
        let _ = crate::spf::record::Record::parse(data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::spf::record::MacroString::parse(text, true);
        let _ = crate::spf::record::MacroString::parse(text, false);
    }
}

/// A configuration file in both syntaxes, then every typed accessor on every entry.
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for syntax in [Syntax::Whitespace, Syntax::Equals] {
        if let Ok(file) = ConfigFile::parse(Path::new("fuzz.conf"), &text, syntax) {
            for entry in &file.entries {
                let _ = file.bool(entry);
                let _ = file.number::<u64>(entry);
            }
        }
    }
}

/// A datagram from `/dev/log` through the syslog parser and both renderings, which
/// parse back to the same message.
pub fn syslog_line(data: &[u8]) {
    crate::init::syslog::fuzz_line(data);
}

/// A clamd reply, through every reply parser.
pub fn clamd_reply(data: &[u8]) {
    crate::clamd::proto::fuzz_reply(data);
}

/// A `DKIM-Signature` field value (RFC 6376 §3.5). A parsed signature written back in
/// OpenDKIM's layout ([`Unsigned::render`] and [`append_b`]) parses to the same signature
/// (with `t=0` where it had no `t=`: the layout always writes one).
///
/// [`Unsigned::render`]: crate::dkim::sig::Unsigned::render
/// [`append_b`]: crate::dkim::sig::append_b
pub fn dkim_signature(data: &[u8]) {
    use crate::dkim::sig::{Signature, Unsigned, append_b, tag_list};
    use base64::Engine as _;

    let _ = tag_list(&String::from_utf8_lossy(data));
    let Ok(sig) = Signature::parse(data) else {
        return;
    };
    let bh = base64::engine::general_purpose::STANDARD.encode(&sig.bh);
    let unsigned = Unsigned {
        algorithm: sig.algorithm,
        canon: sig.canon,
        domain: &sig.domain,
        selector: &sig.selector,
        identity: Some(&sig.identity),
        timestamp: sig.timestamp.unwrap_or(0),
        expiration: sig.expiration,
        length: sig.length,
        bh: &bh,
        headers: &sig.headers,
    };
    let mut text = unsigned.render();
    append_b(&mut text, &sig.b);
    // Folds stay bare `\n`: values may hold CRLF of their own, which must stay as they are.
    let again = Signature::parse(text.as_bytes());
    let want = Signature {
        timestamp: Some(sig.timestamp.unwrap_or(0)),
        ..sig
    };
    assert_eq!(again.as_ref(), Ok(&want), "re-rendered as {text:?}");
}

/// A DKIM key record (`<selector>._domainkey` TXT, RFC 6376 §3.6.1), and the same bytes as
/// the DER key inside one. A parsed record written back canonically parses to the same
/// record.
pub fn dkim_key_record(data: &[u8]) {
    use crate::dkim::key::{KeyType, PublicKeyRecord, rsa_key_bits};
    use base64::Engine as _;

    let _ = rsa_key_bits(data);
    let Ok(rec) = PublicKeyRecord::parse(data) else {
        return;
    };
    if rec.key_type == KeyType::Rsa {
        let _ = rsa_key_bits(&rec.key);
    }
    let mut text = String::from("v=DKIM1; k=");
    text.push_str(match rec.key_type {
        KeyType::Rsa => "rsa",
        KeyType::Ed25519 => "ed25519",
    });
    if !rec.hashes.is_empty() {
        text.push_str("; h=");
        text.push_str(&rec.hashes.join(":"));
    }
    match (rec.testing, rec.strict_subdomains) {
        (true, true) => text.push_str("; t=y:s"),
        (true, false) => text.push_str("; t=y"),
        (false, true) => text.push_str("; t=s"),
        (false, false) => {}
    }
    text.push_str("; p=");
    text.push_str(&base64::engine::general_purpose::STANDARD.encode(&rec.key));
    assert_eq!(
        PublicKeyRecord::parse(text.as_bytes()).as_ref(),
        Ok(&rec),
        "re-rendered as {text:?}"
    );
}

/// A DMARC history file (ours or OpenDMARC's `HistoryFile`): reading never panics, and every
/// record read, written back as a block, reads back to a record that writes the same block.
pub fn dmarc_history(data: &[u8]) {
    use crate::dmarc::history::{HistoryReader, MessageRecord};

    for rec in HistoryReader::new(data).flatten() {
        let block = rec.to_history_block();
        let again = MessageRecord::from_history_block(&block)
            .unwrap_or_else(|e| panic!("{e} in our own block:\n{block}"));
        assert_eq!(again.to_history_block(), block);
    }
}

/// A `_dmarc` TXT record (RFC 7489 §6.3, RFC 9989). A parsed record written back with
/// every tag explicit parses to the same record, and `pct=` stays within 0–100.
pub fn dmarc_record(data: &[u8]) {
    use crate::dmarc::record::{Alignment, DmarcRecord};

    let Ok(rec) = DmarcRecord::parse(data) else {
        return;
    };
    assert!(rec.pct <= 100, "pct={}", rec.pct);
    let align = |a: Alignment| a.as_char();
    let mut text = format!(
        "v=DMARC1; p={}; adkim={}; aspf={}; pct={}",
        rec.p,
        align(rec.adkim),
        align(rec.aspf),
        rec.pct
    );
    for (tag, p) in [("sp", rec.sp), ("np", rec.np)] {
        if let Some(p) = p {
            text.push_str(&format!("; {tag}={p}"));
        }
    }
    for (tag, uris) in [("rua", &rec.rua), ("ruf", &rec.ruf)] {
        if !uris.is_empty() {
            text.push_str(&format!("; {tag}={}", uris.join(",")));
        }
    }
    match rec.psd {
        Some(true) => text.push_str("; psd=y"),
        Some(false) => text.push_str("; psd=n"),
        None => {}
    }
    if rec.testing {
        text.push_str("; t=y");
    }
    assert_eq!(
        DmarcRecord::parse(text.as_bytes()).as_ref(),
        Ok(&rec),
        "re-rendered as {text:?}"
    );
}

/// A header block (`Name: value` lines, folds starting with a space or tab; LF or CRLF)
/// through the DMARC header readers: `From:` fields to the author domain (always one valid,
/// lower-case host name, whose Organizational Domain is a suffix of it),
/// `Authentication-Results` values (what parses is written back by
/// [`AuthResults`](crate::auth_results::AuthResults) and reads the same, where its parts
/// are tokens the writer keeps as they are), and all fields through `read_upstream` with
/// `Return-Path:` as the envelope sender (only valid domains come out; no
/// `Authentication-Results` is used when no authserv-id is trusted).
pub fn dmarc_headers(data: &[u8]) {
    use crate::dmarc::headers::{
        UpstreamContext, author_domain, is_valid_domain, parse_auth_results, read_upstream,
    };

    let fields = header_fields(&String::from_utf8_lossy(data));
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
        let org = fuzz_psl().organizational_domain(&d);
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

/// Splits a header block into `(name, value)` fields, folds joined with `\n` (as the
/// milter hands them over). Lines without a colon are skipped.
pub fn header_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.to_owned(), value.trim_start().to_owned()));
        }
    }
    out
}

/// A small public suffix list with a wildcard and an exception rule.
fn fuzz_psl() -> &'static crate::dmarc::psl::PublicSuffixList {
    static PSL: std::sync::OnceLock<crate::dmarc::psl::PublicSuffixList> =
        std::sync::OnceLock::new();
    PSL.get_or_init(|| {
        crate::dmarc::psl::PublicSuffixList::parse(
            "// fuzz list\ncom\nnet\norg\nexample\nuk\nco.uk\n*.ck\n!www.ck\n",
        )
    })
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
        let again = crate::dmarc::headers::parse_auth_results(&text);
        assert_eq!(
            again.as_ref().map(|(i, r)| (i.as_str(), r.as_slice())),
            Some((id, results)),
            "written as {text:?}"
        );
    }
}

/// Keeps a configuration file from naming device or kernel files (a data set of
/// `/dev/zero` or a FIFO would read forever, which is the operator's business, not a parser
/// bug) and drops `Include` lines (they read other configuration files, whose errors name
/// those files).
fn hermetic_config(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .lines()
        .filter(|l| !["/dev", "/proc", "/sys"].iter().any(|p| l.contains(p)))
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            !first.eq_ignore_ascii_case("include")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An `opendkim.conf`: parsed or refused with an error that names the file.
pub fn dkim_config(data: &[u8]) {
    let path = Path::new("fuzz-opendkim.conf");
    if let Err(e) = crate::dkim::DkimConfig::parse(path, &hermetic_config(data)) {
        let text = e.to_string();
        assert!(text.contains("fuzz-opendkim.conf"), "{text}");
    }
}

/// An `opendmarc.conf`: parsed or refused with an error that names the file.
pub fn dmarc_config(data: &[u8]) {
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

/// Largest message [`dkim_verify`] looks at (64 KiB): enough for every header and signature
/// shape; a longer body only costs hashing time.
pub const MAX_FUZZ_MESSAGE: usize = 64 * 1024;

/// The zone [`dkim_verify`] resolves keys in: RFC 8463 Appendix A's Ed25519 and RSA keys
/// for `football.example.com` (selectors `brisbane` and `test`), with a revoked, a corrupt,
/// a wrong-type and a timing-out selector next to them.
pub fn fuzz_dkim_zone() -> crate::dns::MemoryResolver {
    use crate::dns::{MemoryRecord, MemoryResolver};
    const ED25519: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    const RSA: &str = "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR\
        iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBs\
        CR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB";
    let mut zone = MemoryResolver::new();
    let d = "._domainkey.football.example.com";
    for (sel, txt) in [
        ("brisbane", ED25519),
        ("test", RSA),
        ("revoked", "v=DKIM1; p="),
        (
            "corrupt",
            "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDk",
        ),
        ("wrongtype", "v=DKIM1; k=ed25519; h=sha1; t=y:s; p=AAAA"),
    ] {
        zone.add(
            &format!("{sel}{d}"),
            MemoryRecord::Txt(txt.as_bytes().to_vec()),
        );
    }
    zone.add(&format!("slow{d}"), MemoryRecord::Timeout);
    zone
}

/// A whole CRLF message (at most [`MAX_FUZZ_MESSAGE`] bytes) through the DKIM verifier with
/// [`fuzz_dkim_zone`] at a fixed time. One result per signature (up to the cap), a reason
/// for each non-pass, the same results when the body arrives in three chunks, and the
/// `Authentication-Results` value written for them reads back (through the DMARC reader)
/// with one `dkim=` result each, in order.
pub fn dkim_verify(data: &[u8]) {
    use crate::dkim::canon::Header;
    use crate::dkim::verify::{
        DkimResult, MessageVerifier, VerifyOptions, authentication_results, verify_message,
    };

    if data.len() > MAX_FUZZ_MESSAGE {
        return;
    }
    static ZONE: std::sync::OnceLock<std::sync::Arc<dyn crate::dns::Resolver>> =
        std::sync::OnceLock::new();
    let zone = ZONE.get_or_init(|| std::sync::Arc::new(fuzz_dkim_zone()));
    let rt = runtime();
    let opts = VerifyOptions {
        max_signatures: 4,
        min_key_bits: 1024,
        clock_drift: 300,
    };
    // RFC 8463's example signatures carry t=1528637909.
    let now = 1_528_640_000;
    let results = rt.block_on(verify_message(data, zone.clone(), opts.clone(), now));
    let (headers, body_at) = Header::split_message(data);
    let sigs = headers
        .iter()
        .filter(|h| h.name.trim().eq_ignore_ascii_case("DKIM-Signature"))
        .count();
    assert_eq!(results.len(), sigs.min(opts.max_signatures));
    for r in &results {
        assert_eq!(r.result == DkimResult::Pass, r.reason.is_none(), "{r:?}");
    }
    let body = &data[body_at..];
    let mut v = MessageVerifier::new(&headers, opts);
    let (a, b) = (body.len() / 3, body.len() * 2 / 3);
    for chunk in [&body[..a], &body[a..b], &body[b..]] {
        v.body(chunk);
    }
    let chunked = rt.block_on(v.finish(&headers, zone.as_ref(), now));
    assert_eq!(chunked, results, "body in three chunks");
    let ar = authentication_results("mx.example", &results);
    let (id, read) = crate::dmarc::headers::parse_auth_results(&ar)
        .unwrap_or_else(|| panic!("our Authentication-Results does not parse: {ar:?}"));
    assert_eq!(id, "mx.example");
    let want: Vec<&str> = if results.is_empty() {
        vec!["none"]
    } else {
        results.iter().map(|r| r.result.as_str()).collect()
    };
    let got: Vec<&str> = read.iter().map(|r| r.result.as_str()).collect();
    assert_eq!(got, want, "{ar:?}");
    assert!(read.iter().all(|r| r.method == "dkim"), "{ar:?}");
}

/// A data set file (`key value` lines, as `refile:`/`file:` tables and peer lists are
/// written) whose first line is a lookup key: the message's From address for a
/// `SigningTable`, a client address or host name for a peer list. `refile:` lookups agree
/// with a plain `*`-glob matcher; the keys as an OpenDKIM peer list and each line as an
/// OpenDMARC `IgnoreHosts` pattern are checked against that client and a few fixed ones
/// (an exact address matches itself).
pub fn dkim_dataset(data: &[u8]) {
    use std::net::IpAddr;

    use crate::dkim::dataset::{Dataset, PeerList};
    use crate::dmarc::config::HostPattern;

    // Keeps the quadratic reference matcher quick; real tables have short lines.
    if data.len() > 4096 {
        return;
    }
    let text = hermetic_config(data);
    let (key, table) = text.split_once('\n').unwrap_or((&text, ""));
    let key = key.trim();
    let globs = Dataset::parse_lines(table, true);
    let want = globs
        .entries
        .iter()
        .find(|(k, _)| glob(&k.to_ascii_lowercase(), &key.to_ascii_lowercase()))
        .map(|(_, v)| v.as_str());
    assert_eq!(globs.lookup(key), want, "refile: lookup of {key:?}");
    let client: Option<IpAddr> = key.trim_matches(['[', ']']).parse().ok();
    let ips: [Option<IpAddr>; 6] = [
        client,
        None,
        Some([192, 0, 2, 1].into()),
        Some([127, 0, 0, 1].into()),
        Some("::ffff:192.0.2.1".parse().expect("a literal IPv6 address")),
        Some("2001:db8::1".parse().expect("a literal IPv6 address")),
    ];
    if let Ok(peers) = PeerList::from_dataset(&Dataset::parse_lines(table, false)) {
        for ip in ips {
            let _ = peers.contains(ip, key);
        }
    }
    for line in table.lines() {
        let Some(p) = HostPattern::parse(line) else {
            continue;
        };
        for ip in ips {
            let _ = p.matches(ip, key);
        }
        let bare = line.trim().trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            assert!(p.matches(Some(ip), ""), "{line:?} does not match itself");
        }
    }
}

/// `*` matches any run of characters: the textbook dynamic programme, as a reference.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // row[j]: whether the pattern so far matches t[..j].
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for &c in p {
        let mut next = vec![false; t.len() + 1];
        if c == b'*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = row[j - 1] && t[j - 1] == c;
            }
        }
        row = next;
    }
    row[t.len()]
}

/// The public key of `fuzz/corpus/arc_headers`' seeds (sealed by dkimpy with a 1024-bit key
/// made for them) under `arc._domainkey.fwd{1,2,3}.example`.
pub fn fuzz_arc_zone() -> crate::dns::MemoryResolver {
    use crate::dns::{MemoryRecord, MemoryResolver};
    const KEY: &str = "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDaJ+D28HK4zFoekqtkiUS4SJnOtsSibdTIt7hg\
    cr0EWUxYKMmed3iKMGx+h3EoIquDS7+hWOmrucil1bMJql7mV0nq/rXcQgSdWi5gNTfAogabgTfU\
    LxaTAPvISyRu1uJmHwvXjQR89nU1Xpg9kAqdPNg7/zPXoOiq5vQ8U8YnRwIDAQAB";
    let mut zone = MemoryResolver::new();
    for d in ["fwd1.example", "fwd2.example", "fwd3.example"] {
        zone.add(
            &format!("arc._domainkey.{d}"),
            MemoryRecord::Txt(KEY.as_bytes().to_vec()),
        );
    }
    zone
}

/// A message's ARC fields (RFC 8617): each field through the `ARC-Seal` and
/// `ARC-Message-Signature` parsers, the set structure, and the whole chain validated over
/// [`fuzz_arc_zone`]. Never a panic; at most 50 sets, numbered 1..N; `pass` has an
/// `oldest-pass` and no reason, `fail` a reason, `none` no ARC field; the body fed in
/// 7-byte chunks gives the same outcome.
pub fn arc_headers(data: &[u8]) {
    use crate::arc::{ArcResult, ArcVerifier, Seal, header::collect_sets, verify_message};
    use crate::dkim::canon::Header;
    use crate::dkim::sig::Signature;

    if data.len() > MAX_FUZZ_MESSAGE {
        return;
    }
    let (headers, body_at) = Header::split_message(data);
    for h in &headers {
        let _ = Seal::parse(&h.value);
        let _ = Signature::parse_ams(&h.value);
    }
    if let Ok(sets) = collect_sets(&headers) {
        assert!(sets.len() <= 50);
        for (n, set) in sets.iter().enumerate() {
            assert_eq!(set.instance as usize, n + 1);
            assert_eq!(set.seal_tags.instance, set.instance);
        }
    }
    static ZONE: std::sync::OnceLock<crate::dns::MemoryResolver> = std::sync::OnceLock::new();
    let zone = ZONE.get_or_init(fuzz_arc_zone);
    let rt = runtime();
    let whole = rt.block_on(verify_message(data, zone));
    match whole.result {
        ArcResult::Pass => assert!(whole.oldest_pass.is_some() && whole.reason.is_none()),
        ArcResult::Fail => assert!(whole.reason.is_some()),
        _ => assert!(whole.sealers.is_empty() && whole.reason.is_none()),
    }
    let mut v = ArcVerifier::new(&headers);
    for chunk in data.get(body_at..).unwrap_or_default().chunks(7) {
        v.body(chunk);
    }
    assert_eq!(rt.block_on(v.finish(&headers, zone)), whole);
}

/// The runtime the async entry points run on (current thread; DNS comes from memory).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// The `opendmarc.conf` of [`dmarc_filter`]: enforcing, quarantine held, our authserv-id.
pub const FUZZ_DMARC_CONF: &str = "AuthservID mx.example.net\nRejectFailures true\n\
    HoldQuarantinedMessages true\nTrustedAuthservIDs upstream.example.net\n";

/// The zone of [`dmarc_filter`]: `_dmarc` records for `example.com` (reject, strict DKIM),
/// `example.org` (quarantine, `sp=none`), `example.net` (none), an invalid one for
/// `bad.example`, two for `multi.example` and a timeout for `slow.example`.
pub fn fuzz_dmarc_zone() -> crate::dns::MemoryResolver {
    use crate::dns::{MemoryRecord, MemoryResolver};
    let mut zone = MemoryResolver::new();
    for (domain, txt) in [
        (
            "example.com",
            "v=DMARC1; p=reject; adkim=s; rua=mailto:d@example.com",
        ),
        ("example.org", "v=DMARC1; p=quarantine; sp=none"),
        ("example.net", "v=DMARC1; p=none"),
        ("bad.example", "v=DMARC1; p=bogus"),
        ("multi.example", "v=DMARC1; p=reject"),
        ("multi.example", "v=DMARC1; p=none"),
    ] {
        zone.add(
            &format!("_dmarc.{domain}"),
            MemoryRecord::Txt(txt.as_bytes().to_vec()),
        );
    }
    zone.add("_dmarc.slow.example", MemoryRecord::Timeout);
    zone
}

/// A header block (as for [`dmarc_headers`]; `Return-Path:` is the envelope sender) through
/// the whole DMARC filter with [`FUZZ_DMARC_CONF`] and [`fuzz_dmarc_zone`]. Every
/// `Authentication-Results` it adds reads back with our authserv-id; a reject or quarantine
/// comes only from a DMARC `fail` whose requested disposition asks for it; an evaluated
/// From domain is a valid host name.
pub fn dmarc_filter(data: &[u8]) {
    use crate::dmarc::headers::{is_valid_domain, parse_auth_results};
    use crate::dmarc::{DmarcConfig, DmarcFilter, DmarcResult, MessageFacts, Policy};
    use crate::filter::Action;

    static FILTER: std::sync::OnceLock<DmarcFilter> = std::sync::OnceLock::new();
    let filter = FILTER.get_or_init(|| {
        let cfg = DmarcConfig::parse(Path::new("fuzz-opendmarc.conf"), FUZZ_DMARC_CONF)
            .expect("the fuzz configuration parses");
        DmarcFilter::new(cfg, std::sync::Arc::new(fuzz_dmarc_zone()))
    });
    let fields = header_fields(&String::from_utf8_lossy(data));
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
    let verdict = runtime().block_on(filter.check(&facts));
    for (name, value) in &verdict.headers() {
        if name == "Authentication-Results" {
            let read = parse_auth_results(value);
            assert_eq!(
                read.map(|(id, _)| id).as_deref(),
                Some("mx.example.net"),
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
