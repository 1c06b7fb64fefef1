#![no_main]
//! Fuzz target: see `mailstack::fuzzing::spf::record`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::spf::record(data));
