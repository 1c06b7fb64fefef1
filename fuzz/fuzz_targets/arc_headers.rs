#![no_main]
//! Fuzz target: see `mailstack::fuzzing::arc_headers`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::arc_headers(data));
