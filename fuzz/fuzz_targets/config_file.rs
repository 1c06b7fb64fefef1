#![no_main]
//! Fuzz target: see `mailstack::fuzzing::config::file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::config::file(data));
