#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dkim::signature`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dkim::signature(data));
