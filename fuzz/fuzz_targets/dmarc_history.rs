#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dmarc::history`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::dmarc::history(data));
