//! cargo-fuzz target `proc_stack`: the body is synproxy_tests::fuzz::proc_stack (replayed by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synproxy_tests::fuzz::proc_stack(data));
