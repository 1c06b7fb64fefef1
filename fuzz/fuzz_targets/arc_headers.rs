#![no_main]
//! Fuzz target: see `mailstack::fuzzing::arc::headers` (fixtures: `mailstack_fuzz::fixtures`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailstack::fuzzing::arc::headers(data, mailstack_fuzz::fixtures::arc_zone())
});
