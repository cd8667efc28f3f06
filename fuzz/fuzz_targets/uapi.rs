//! `cargo fuzz run uapi --features libfuzzer`: see `wireway_fuzz::uapi`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::uapi(data));
