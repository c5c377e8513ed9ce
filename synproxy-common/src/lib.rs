//! Types shared by the kernel-side programs and the agent.
//!
//! Everything here is `#[repr(C)]` and `no_std` so that the eBPF crate and the
//! agent read the same bytes the same way.
#![no_std]

/// The SYNPROXY counters in the order the kernel prints them in
/// `/proc/net/stat/synproxy` (after the constant `entries` column).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    SynReceived = 0,
    CookieInvalid = 1,
    CookieValid = 2,
    CookieRetrans = 3,
    ConnReopened = 4,
}

/// Number of event counters the kernel keeps per CPU (`struct synproxy_stats`).
pub const COUNTER_COUNT: usize = 5;
