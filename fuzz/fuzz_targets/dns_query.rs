//! `cargo fuzz run dns_query --features libfuzzer`: see `wireway_fuzz::dns_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::dns_query(data));
