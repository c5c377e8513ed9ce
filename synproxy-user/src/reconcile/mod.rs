//! Turns raw readings into what the agent reports: wrap-safe u64 totals per
//! series, and agreement between the eBPF counts and /proc.

pub mod ebpf;
pub mod wrap_tracker;
