//! The configuration-file reader every tool's configuration goes through.

use std::path::Path;

use crate::config::{ConfigFile, Syntax};

/// A configuration file in both syntaxes, then every typed accessor on every entry.
pub fn file(data: &[u8]) {
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
