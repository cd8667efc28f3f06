//! `cargo fuzz run federation --features libfuzzer`: see `wireway_fuzz::federation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::federation(data));
