//! cargo-fuzz target `influx_response`: the body is synproxy_tests::fuzz::influx_response (replayed by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synproxy_tests::fuzz::influx_response(data));
