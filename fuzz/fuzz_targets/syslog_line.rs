#![no_main]
//! Fuzz target: see `mailstack::fuzzing::syslog_line`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mailstack::fuzzing::syslog_line(data));
