//! `cargo fuzz run spiffe_id --features libfuzzer`: see `wireway_fuzz::spiffe_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::spiffe_id(data));
