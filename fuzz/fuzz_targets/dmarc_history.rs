#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dmarc_history`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dmarc_history(data));
