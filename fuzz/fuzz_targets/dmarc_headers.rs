#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dmarc::headers` (fixtures: `mailstack_fuzz::fixtures`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailstack::fuzzing::dmarc::headers(data, mailstack_fuzz::fixtures::psl())
});
