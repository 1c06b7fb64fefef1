#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dkim_dataset`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dkim_dataset(data));
