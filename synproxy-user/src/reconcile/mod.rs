//! Turns raw readings into what the agent reports: wrap-safe u64 totals per
//! series, agreement between the eBPF counts and /proc, and the join of the
//! two into per-namespace, per-family samples. Pure throughout.

pub mod ebpf_vs_proc;
pub mod join;
pub mod row_tracker;
pub mod wrap_tracker;
