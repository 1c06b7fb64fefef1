#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dmarc_record`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dmarc_record(data));
