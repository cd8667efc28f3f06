//! `cargo fuzz run pod_cgroup_files --features libfuzzer`: see `wireway_fuzz::pod_cgroup_files`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wireway_fuzz::pod_cgroup_files(data));
