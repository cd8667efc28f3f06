//! `cargo fuzz run manifest --features libfuzzer`: see `wireway_fuzz::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::manifest(data));
