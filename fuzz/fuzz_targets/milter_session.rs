#![no_main]
//! Fuzz target: see `milter_proto::fuzzing::milter_session`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| milter_proto::fuzzing::milter_session(data));
