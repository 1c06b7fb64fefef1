#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dmarc::filter` (fixtures: `mailstack_fuzz::fixtures`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailstack::fuzzing::dmarc::filter(data, mailstack_fuzz::fixtures::dmarc_filter())
});
