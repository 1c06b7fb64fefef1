#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dmarc::record`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dmarc::record(data));
