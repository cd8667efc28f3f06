//! `cargo fuzz run cgroup_name --features libfuzzer`: see `wireway_fuzz::cgroup_name`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::cgroup_name(data));
