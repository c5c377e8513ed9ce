//! cargo-fuzz target `line_protocol`: the body is synproxy_tests::fuzz::line_protocol (replayed by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synproxy_tests::fuzz::line_protocol(data));
