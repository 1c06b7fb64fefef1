#![no_main]
//! Fuzz target: see `mailstack::fuzzing::dkim::verify` (fixtures: `mailstack_fuzz::fixtures`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailstack::fuzzing::dkim::verify(data, mailstack_fuzz::fixtures::dkim_zone())
});
