//! What a sampling round produced, ready for the sinks: a [`Snapshot`] per
//! round, made of per-namespace [`Sample`]s (/proc totals) and
//! [`EbpfSample`]s (the eBPF view), probe health and agent health.

use crate::fields::Values;
use crate::sources::proc::tcp_counters::StackField;

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
    pub status: crate::reconcile::ebpf_vs_proc::Status,
    pub timestamp_ns: u64,
}

/// Per-probe health, once per interval (measurement `synproxy_ebpf_probes`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbesSample {
    pub attached: bool,
    /// `kprobe` or `fentry`: the kind of programs in use.
    pub probe_type: &'static str,
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
    pub probes: Vec<(
        &'static str,
        crate::sources::ebpf::kprobe_events::ProbeStats,
    )>,
    /// Kernel-side diagnostics since load ([`synproxy_common::diag`]).
    pub diag: [u64; synproxy_common::diag::COUNT as usize],
    /// The per-source map, with `--top` N > 0.
    pub sources: Option<SourceMapStats>,
    /// The per-port map, with `--top-ports` N > 0 (same fields; its size is
    /// `--top-ports-map-entries`).
    pub ports: Option<SourceMapStats>,
    pub timestamp_ns: u64,
}

/// The kernel's per-source map (`--top`): how full it is and what it lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceMapStats {
    /// Entries in the map now.
    pub entries: u64,
    /// Its size (`--top-map-entries`).
    pub capacity: u32,
    /// Entries evicted since load (least recently seen sources).
    pub evictions: u64,
    /// Events not counted per source (no entry could be made), since load.
    pub insert_failures: u64,
    /// Kernel memory the map pins, bytes (part of `map_bytes`).
    pub map_bytes: u64,
}

/// Which series a namespace's readings belong to, for the life of the agent:
/// unique per series (a namespace that is replaced, for example a reused
/// inode before Linux 5.14, gets a new one). Sinks that accumulate across
/// rounds key their state by it, never by the label.
pub type SeriesId = u64;

/// A BPF program's run statistics since load (`bpf_prog_info.run_time_ns` and
/// `run_cnt`), counted only while `kernel.bpf_stats_enabled` is 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRuns {
    pub program: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// One namespace read this round.
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceSnapshot {
    pub series: SeriesId,
    /// The /proc totals (the `synproxy` line).
    pub sample: Sample,
    /// With eBPF: this round's view per family, IPv4 then IPv6 (the
    /// `synproxy_ebpf` lines).
    pub ebpf: Option<[EbpfSample; 2]>,
}

/// A namespace not found this round whose state the sampler keeps in case it
/// comes back (up to its retention period): not reported on stdout, but its
/// counters stay valid until it is forgotten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedNamespace {
    pub series: SeriesId,
    /// The label it had when it was last read (`None`: the agent's own namespace).
    pub netns: Option<String>,
    /// Its totals as last read.
    pub totals: Values<u64>,
    /// Rounds since it was last read (1 = not found this round).
    pub missing_rounds: u32,
}

/// The agent's own health this round.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentHealth {
    /// How long the round took (namespace reads, eBPF map reads, reconcile).
    pub round_duration: std::time::Duration,
    /// Whether eBPF is in use (loaded; `--no-ebpf` or a failed load: false).
    pub ebpf_enabled: bool,
    /// Whether the probes are attached.
    pub ebpf_attached: bool,
    /// Why eBPF is not in use, as logged at start-up (`--no-ebpf`, or why
    /// loading failed); `None` while it is in use.
    pub ebpf_off: Option<std::sync::Arc<str>>,
    /// Per BPF program run statistics; empty when not available (eBPF off, or
    /// `kernel.bpf_stats_enabled` is 0).
    pub programs: Vec<ProgramRuns>,
    /// The InfluxDB writer's state when the round was handed to the outputs;
    /// `None` without `--influx-url`. Filled in by that output, not the
    /// sampler, so that the other outputs (Prometheus) can show it.
    pub influx: Option<InfluxHealth>,
}

/// The InfluxDB writer's line counts since start, and its backlog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InfluxHealth {
    /// Lines the server accepted.
    pub written_lines: u64,
    /// Lines waiting in the buffer (including a request in flight).
    pub buffered_lines: u64,
    /// Lines dropped, oldest first, because the buffer was full.
    pub dropped_lines: u64,
    /// Lines the server refused with a 4xx other than 429 (not retried).
    pub rejected_lines: u64,
}

/// Everything one sampling round produced: what every sink receives, and all
/// it receives. Built by the sampler, which knows nothing of the sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Nanoseconds since the Unix epoch (the same on every line of the round).
    pub timestamp_ns: u64,
    /// Namespaces read this round, in the order they are reported.
    pub namespaces: Vec<NamespaceSnapshot>,
    /// Namespaces not found this round, still retained.
    pub retained: Vec<RetainedNamespace>,
    /// Namespaces that could not be read this round (already logged).
    pub failures: Vec<String>,
    /// With eBPF: probe health (the `synproxy_ebpf_probes` line).
    pub probes: Option<ProbesSample>,
    pub agent: AgentHealth,
    /// Per-source counts of this round (empty until per-source counting runs).
    pub top_sources: Vec<TopSources>,
    /// Per-port counts of this round (empty without per-port counting).
    pub top_ports: Vec<TopPorts>,
    /// The TCP stack's and conntrack's counters per namespace (the `nstat`
    /// and `conntrack` lines), in namespace order; empty with both sources off.
    pub stack: Vec<StackSample>,
    /// The defense verdict per namespace read this round (empty with
    /// `--verdict off`), in namespace order.
    pub defense: Vec<DefenseSample>,
    /// The attacks in progress at the end of the round (phase `ongoing`);
    /// starts and ends go to the sinks between rounds as they happen.
    pub attacks: Vec<crate::analysis::attack::AttackEvent>,
}

/// One namespace's defense verdict in one round.
#[derive(Clone, Debug, PartialEq)]
pub struct DefenseSample {
    pub series: SeriesId,
    /// Same as the namespace's [`Sample::netns`].
    pub netns: Option<String>,
    pub verdict: crate::analysis::verdict::Verdict,
}

/// The TCP stack's and conntrack's counters of one namespace in one round.
/// Counters are monotonic u64 totals (wraps and resets absorbed), gauges as
/// read. A part is `None` when its source is off or could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct StackSample {
    /// Same as the namespace's [`Sample::netns`].
    pub netns: Option<String>,
    /// `TcpExt` of `/proc/net/netstat`: the reported fields this kernel has.
    pub netstat: Option<Vec<(&'static StackField, u64)>>,
    /// `Tcp` of `/proc/net/snmp`: the reported fields this kernel has.
    pub snmp: Option<Vec<(&'static StackField, u64)>>,
    pub conntrack: Option<ConntrackSample>,
}

/// conntrack's table size and limit, and its statistics summed over CPUs.
#[derive(Clone, Debug, PartialEq)]
pub struct ConntrackSample {
    /// `nf_conntrack_count`.
    pub count: Option<u64>,
    /// `nf_conntrack_max`.
    pub max: Option<u64>,
    /// `/proc/net/stat/nf_conntrack`: (column, value) for the columns the
    /// header names, in [`crate::sources::proc::conntrack_stat::COLUMNS`]
    /// order; `entries` is the table size as read, the others totals.
    pub stats: Option<Vec<(&'static str, u64)>>,
}

/// The top sources of one namespace, family and counter in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct TopSources {
    pub netns: Option<String>,
    pub family: &'static str, // "ipv4" | "ipv6"
    pub counter: synproxy_common::Counter,
    /// Events of this counter in the interval, over all sources.
    pub interval_events: u64,
    /// Best first, at most --top N.
    pub entries: Vec<TopSource>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct TopSource {
    /// An address, or a prefix such as `203.0.113.0/24` when aggregated.
    pub source: String,
    pub events: u64,
    /// events / interval_events, 0..=1
    pub share: f64,
}

/// The top destination ports of one namespace and counter in one round,
/// IPv4 and IPv6 summed (a port is the same service for both families).
#[derive(Debug, Clone, PartialEq)]
pub struct TopPorts {
    pub netns: Option<String>,
    pub counter: synproxy_common::Counter,
    /// Events of this counter in the interval (both families), over all
    /// ports: the namespace's eBPF events.
    pub interval_events: u64,
    /// Most events first (equal events: lower port first), at most
    /// `--top-ports` N.
    pub entries: Vec<TopPort>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopPort {
    pub port: u16,
    pub events: u64,
    /// events / interval_events, 0..=1
    pub share: f64,
}

impl Snapshot {
    /// The `synproxy` samples, in order.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.namespaces.iter().map(|n| &n.sample)
    }

    /// The `synproxy_ebpf` samples, two per namespace, in namespace order.
    pub fn ebpf_samples(&self) -> impl Iterator<Item = &EbpfSample> {
        self.namespaces.iter().flat_map(|n| n.ebpf.iter().flatten())
    }
}

/// Names of the kernel-side diagnostics by [`synproxy_common::diag`] slot, as
/// every output spells them.
pub const DIAG_NAMES: [(u32, &str); synproxy_common::diag::COUNT as usize] = [
    (synproxy_common::diag::UNTRACKED, "untracked_events"),
    (synproxy_common::diag::RATE_LATE, "rate_late_events"),
    (
        synproxy_common::diag::ACK_RETURN_UNMATCHED,
        "unmatched_returns",
    ),
    (synproxy_common::diag::READ_FAILED, "read_failures"),
];
