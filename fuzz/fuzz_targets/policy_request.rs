#![no_main]
//! Fuzz target: see `policy_proto::fuzzing::policy_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| policy_proto::fuzzing::policy_request(data));
