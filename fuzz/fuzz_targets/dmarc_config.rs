#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dmarc::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dmarc::config(data));
