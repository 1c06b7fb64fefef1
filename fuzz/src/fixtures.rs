//! The fixtures of the fuzz targets (DNS zones, an `opendmarc.conf`, a public suffix list),
//! read from `fuzz/fixtures/`. Shared by the fuzz targets (through the `mailstack_fuzz`
//! library) and by `mailstack/tests/fuzz_corpus.rs`, which replays the corpora on stable
//! Rust and includes this file as a module.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use mailstack::dmarc::PublicSuffixList;
use mailstack::dmarc::{DmarcConfig, DmarcFilter};
use mailstack::dns::{MemoryRecord, MemoryResolver, Resolver};

/// The `opendmarc.conf` of the `dmarc_filter` target: enforcing, quarantine held, our
/// authserv-id `mx.example.net`.
pub const DMARC_FILTER_CONF: &str = include_str!("../fixtures/dmarc_filter.conf");

/// A zone file of `NAME TXT VALUE` lines (the value is the rest of the line) and
/// `NAME TIMEOUT` lines (a query that never answers); `#` starts a comment line.
///
/// # Panics
/// On a line of any other shape: the fixtures are checked-in files, and a broken one must
/// stop the run rather than fuzz against a zone other than the one described.
pub fn zone(text: &str) -> MemoryResolver {
    let mut zone = MemoryResolver::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some("TXT"), Some(value)) => {
                zone.add(name, MemoryRecord::Txt(value.as_bytes().to_vec()));
            }
            (Some(name), Some("TIMEOUT"), None) => {
                zone.add(name, MemoryRecord::Timeout);
            }
            _ => panic!(
                "zone fixture line {}: expected `NAME TXT VALUE` or `NAME TIMEOUT`, found {line:?}",
                n + 1
            ),
        }
    }
    zone
}

/// The zone of the `dkim_verify` target (`fixtures/dkim_verify.zone`): RFC 8463
/// Appendix A's keys for `football.example.com` and a few broken selectors.
pub fn dkim_zone() -> &'static Arc<dyn Resolver> {
    static ZONE: OnceLock<Arc<dyn Resolver>> = OnceLock::new();
    ZONE.get_or_init(|| Arc::new(zone(include_str!("../fixtures/dkim_verify.zone"))))
}

/// The zone of the `arc_headers` target (`fixtures/arc_headers.zone`): the key the ARC
/// seeds were sealed with.
pub fn arc_zone() -> &'static MemoryResolver {
    static ZONE: OnceLock<MemoryResolver> = OnceLock::new();
    ZONE.get_or_init(|| zone(include_str!("../fixtures/arc_headers.zone")))
}

/// The zone of the `dmarc_filter` target (`fixtures/dmarc_filter.zone`).
pub fn dmarc_zone() -> MemoryResolver {
    zone(include_str!("../fixtures/dmarc_filter.zone"))
}

/// The DMARC filter of the `dmarc_filter` target: [`DMARC_FILTER_CONF`] over
/// [`dmarc_zone`].
///
/// # Panics
/// If the checked-in configuration does not parse.
pub fn dmarc_filter() -> &'static DmarcFilter {
    static FILTER: OnceLock<DmarcFilter> = OnceLock::new();
    FILTER.get_or_init(|| {
        let cfg = DmarcConfig::parse(Path::new("fixtures/dmarc_filter.conf"), DMARC_FILTER_CONF)
            .unwrap_or_else(|e| panic!("{e}"));
        DmarcFilter::new(cfg, Arc::new(dmarc_zone()))
    })
}

/// The public suffix list of the `dmarc_headers` target (`fixtures/dmarc_headers.psl`): a
/// few suffixes, a wildcard and an exception rule.
pub fn psl() -> &'static PublicSuffixList {
    static PSL: OnceLock<PublicSuffixList> = OnceLock::new();
    PSL.get_or_init(|| PublicSuffixList::parse(include_str!("../fixtures/dmarc_headers.psl")))
}
