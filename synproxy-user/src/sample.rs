//! One reading of one series, ready for a sink.

use crate::fields::Values;

/// Totals for one network namespace at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// `netns` tag value; `None` for the agent's own namespace (Telegraf's output).
    pub netns: Option<String>,
    /// Monotonic u64 totals, indexed by [`crate::fields::Field::index`].
    pub totals: Values<u64>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// eBPF-side view of one namespace and family over one interval
/// (measurement `synproxy_ebpf`).
#[derive(Clone, Debug, PartialEq)]
pub struct EbpfSample {
    /// Same as the namespace's [`Sample::netns`].
    pub netns: Option<String>,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// Events counted in the kernel by the probes during the interval, per counter
    /// in kernel order ([`synproxy_common::Counter::ALL`]).
    pub events: [u64; synproxy_common::COUNTER_COUNT],
    /// Peak rate per counter (events per second over one rate bucket).
    pub peak_rates: [f64; synproxy_common::COUNTER_COUNT],
    pub status: crate::reconcile::ebpf::Status,
    pub timestamp_ns: u64,
}

/// Per-probe health, once per interval (measurement `synproxy_ebpf_probes`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbesSample {
    pub attached: bool,
    /// This round: probe misses, BPF recursion misses and losses not
    /// attributable to a namespace (all namespaces).
    pub probe_misses: u64,
    /// Programs skipped because another BPF program ran on that CPU, since load.
    pub recursion_misses: u64,
    /// The same per program.
    pub program_recursion: Vec<(&'static str, u64)>,
    /// Kernel memory the maps pin, bytes.
    pub map_bytes: u64,
    /// Probe short name -> hits and misses since it was attached.
    pub probes: Vec<(&'static str, crate::sources::kprobe_events::ProbeStats)>,
    /// Kernel-side diagnostics since load ([`synproxy_common::diag`]).
    pub diag: [u64; synproxy_common::diag::COUNT as usize],
    pub timestamp_ns: u64,
}
