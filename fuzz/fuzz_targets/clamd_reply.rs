#![no_main]
//! Fuzz target: see `mailstack::fuzzing::clamd_reply`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::clamd_reply(data));
