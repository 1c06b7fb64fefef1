#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dkim::dataset`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dkim::dataset(data));
