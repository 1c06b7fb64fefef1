//! Entry points for the cargo-fuzz targets in `fuzz/` and for the stable tests that replay
//! their corpora, one module per area. Compiled only with the `fuzzing` feature; not a
//! public API: hidden from the docs and free to change.
//!
//! The fixtures an entry point runs against (DNS zones, configuration, a public suffix
//! list) are its arguments: they live in the fuzz crate (`fuzz/fixtures/`), not here. Round
//! trips go through the library's own writers (`Display`, `render`, `to_history_block`,
//! [`AuthResults`](crate::auth_results::AuthResults)), the ones the filters use.

pub mod arc;
pub mod clamd;
pub mod config;
pub mod dkim;
pub mod dmarc;
pub mod spf;
pub mod syslog;

/// Largest message the message-level entry points ([`dkim::verify`], [`arc::headers`]) look
/// at (64 KiB): enough for every header and signature shape; a longer body only costs
/// hashing time.
pub const MAX_MESSAGE: usize = 64 * 1024;

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
