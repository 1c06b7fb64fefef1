#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dkim::key_record`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dkim::key_record(data));
