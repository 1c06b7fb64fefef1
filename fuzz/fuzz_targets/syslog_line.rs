#![no_main]
//! Fuzz target: see `mailstack::fuzzing::syslog::line`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::syslog::line(data));
