//! `cargo fuzz run tun_writes --features libfuzzer`: see `wireway_fuzz::tun_writes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::tun_writes(data));
