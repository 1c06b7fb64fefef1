#![no_main]
//! Fuzz target: see `mailstack::fuzzing::spf_record`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::spf_record(data));
