//! `cargo fuzz run node_state --features libfuzzer`: see `wireway_fuzz::node_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::node_state(data));
