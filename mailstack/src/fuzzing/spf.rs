//! SPF records.

use crate::spf::record::{MacroString, Record, is_spf_record};

/// An SPF TXT record (and, if it has one, the macro-strings inside it): parsed or rejected,
/// never a panic.
pub fn record(data: &[u8]) {
    if is_spf_record(data) {
        let _ = Record::parse(data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = MacroString::parse(text, true);
        let _ = MacroString::parse(text, false);
    }
}
