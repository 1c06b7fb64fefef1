#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dkim::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dkim::config(data));
