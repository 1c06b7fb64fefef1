#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dmarc_filter`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dmarc_filter(data));
