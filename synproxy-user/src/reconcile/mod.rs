//! Turns raw readings into what the agent reports: wrap-safe u64 totals per
//! series (and, with the eBPF source, agreement between the two sources).

pub mod wrap_tracker;
