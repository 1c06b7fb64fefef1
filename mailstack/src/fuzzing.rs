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

/// A clamd reply, through every reply parser.
pub fn clamd_reply(data: &[u8]) {
    crate::clamd::proto::fuzz_reply(data);
}
