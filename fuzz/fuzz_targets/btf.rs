//! cargo-fuzz target `btf`: the body is synproxy_tests::fuzz::btf (replayed by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synproxy_tests::fuzz::btf(data));
