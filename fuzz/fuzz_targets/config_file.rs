#![no_main]
//! Fuzz target: see `mailstack::fuzzing::config_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::config_file(data));
