//! The eBPF view: per namespace (events, peak rates, reconcile state),
//! the probes' health and the programs' run statistics.

use super::synproxy::Row;
use super::{netns_label, Family, STATUSES};
use crate::reconcile::join::FAMILIES;
use crate::sample::{AgentHealth, ProbesSample, Snapshot, DIAG_NAMES};
use crate::sinks::prometheus::Published;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use synproxy_common::Counter;

/// Per namespace: the events the agent added up, peak rates and reconcile
/// state of the last round, rounds per reconcile state.
pub(super) fn namespace_families(
    published: &Published,
    snapshot: &Snapshot,
    rows: &[Row],
) -> [Family; 4] {
    let mut events = Family::new(
        "synproxy_ebpf_events",
        "SYNPROXY events counted by the eBPF probes, per namespace, address family and counter (added up by the agent from each round's events; reconciled with the kernel counters).",
        MetricType::Counter,
    );
    let mut reconcile_rounds = Family::new(
        "synproxy_ebpf_reconcile_rounds",
        "Rounds per reconcile state of the eBPF counts with the kernel counters (exact, lagging, missed, proc-only).",
        MetricType::Counter,
    );
    for (series, label, _, _) in rows {
        let Some(totals) = published.ebpf.get(series) else {
            continue;
        };
        for (f, family) in FAMILIES.into_iter().enumerate() {
            for counter in Counter::ALL {
                events.count(
                    vec![
                        ("netns", label.clone()),
                        ("family", family.to_string()),
                        ("counter", counter.name().to_string()),
                    ],
                    totals.events[f][counter.index()],
                );
            }
        }
        for (i, status) in STATUSES.into_iter().enumerate() {
            reconcile_rounds.count(
                vec![
                    ("netns", label.clone()),
                    ("status", status.name().to_string()),
                ],
                totals.rounds[i],
            );
        }
    }
    let mut peaks = Family::new(
        "synproxy_ebpf_peak_rate",
        "Highest rate in the last round, events per second over one --rate-resolution bucket, per namespace, address family and counter.",
        MetricType::Gauge,
    );
    let mut status = Family::new(
        "synproxy_ebpf_reconcile_status",
        "Reconcile state of the last round, one series per state: 1 for the current one, 0 for the others.",
        MetricType::Gauge,
    );
    for ns in &snapshot.namespaces {
        let Some(families) = &ns.ebpf else {
            continue;
        };
        let label = netns_label(ns.sample.netns.as_deref());
        if !rows
            .iter()
            .any(|(id, l, _, present)| *present && *id == ns.series && *l == label)
        {
            continue;
        }
        for sample in families {
            for counter in Counter::ALL {
                let rate = sample.peak_rates[counter.index()];
                peaks.gauge(
                    vec![
                        ("netns", label.clone()),
                        ("family", sample.family.to_string()),
                        ("counter", counter.name().to_string()),
                    ],
                    if rate.is_finite() { rate.max(0.0) } else { 0.0 },
                );
            }
        }
        for s in STATUSES {
            status.count(
                vec![("netns", label.clone()), ("status", s.name().to_string())],
                u64::from(s == families[0].status),
            );
        }
    }
    [events, peaks, status, reconcile_rounds]
}

/// Agent-wide: lost events, recursion misses, probe hits and misses,
/// kernel-side diagnostics, map memory, the probe type, and with `--top`
/// the per-source map.
pub(super) fn probe_families(published: &Published, probes: &ProbesSample) -> Vec<Family> {
    let mut families = Vec::new();
    let mut probe_misses = Family::new(
            "synproxy_ebpf_probe_misses",
            "Events the probes lost, all namespaces (the kernel cannot tell whose): kprobe misses, BPF recursion misses of the counting programs, events whose namespace could not be read.",
            MetricType::Counter,
        );
    probe_misses.count(Vec::new(), published.probe_misses);
    let mut recursion = Family::new(
        "synproxy_ebpf_recursion_misses",
        "Runs of the program the kernel skipped (BPF recursion protection), since load.",
        MetricType::Counter,
    );
    for (program, n) in &probes.program_recursion {
        recursion.count(vec![("program", (*program).to_string())], *n);
    }
    let mut hits = Family::new(
        "synproxy_ebpf_kprobe_hits",
        "Hits of the kprobe since it was attached (kprobe_profile).",
        MetricType::Counter,
    );
    let mut missed = Family::new(
            "synproxy_ebpf_kprobe_missed",
            "Misses of the kprobe since it was attached (kprobe_profile; kretprobes include maxactive misses).",
            MetricType::Counter,
        );
    for (probe, stats) in &probes.probes {
        hits.count(vec![("probe", (*probe).to_string())], stats.hits);
        missed.count(vec![("probe", (*probe).to_string())], stats.missed);
    }
    let mut anomalies = Family::new(
            "synproxy_ebpf_anomalies",
            "Kernel-side diagnostics since load, by kind: untracked_events (events of namespaces not counted per namespace; not a loss), rate_late_events (missing from peak rates only), unmatched_returns, read_failures.",
            MetricType::Counter,
        );
    for (slot, kind) in DIAG_NAMES {
        anomalies.count(vec![("kind", kind.to_string())], probes.diag[slot as usize]);
    }
    let mut map_memory = Family::new(
        "synproxy_ebpf_map_memory",
        "Kernel memory the eBPF maps pin (memlock).",
        MetricType::Gauge,
    )
    .unit(Unit::Bytes);
    map_memory.count(Vec::new(), probes.map_bytes);
    let mut probe_type = Family::new(
            "synproxy_ebpf_probe_type",
            "The kind of BPF programs that count the events: 1 for the one in use (--probes, or kprobe after a fallback), 0 for the other.",
            MetricType::Gauge,
        );
    for kind in ["kprobe", "fentry"] {
        probe_type.count(
            vec![("type", kind.to_string())],
            u64::from(kind == probes.probe_type),
        );
    }
    families.extend([
        probe_misses,
        recursion,
        hits,
        missed,
        anomalies,
        map_memory,
        probe_type,
    ]);
    if let Some(map) = &probes.sources {
        let mut entries = Family::new(
            "synproxy_ebpf_source_map_entries",
            "Entries in the kernel's per-source map (--top).",
            MetricType::Gauge,
        );
        entries.count(Vec::new(), map.entries);
        let mut capacity = Family::new(
            "synproxy_ebpf_source_map_capacity",
            "Size of the kernel's per-source map (--top-map-entries).",
            MetricType::Gauge,
        );
        capacity.count(Vec::new(), u64::from(map.capacity));
        let mut evictions = Family::new(
                "synproxy_ebpf_source_evictions",
                "Sources the per-source map evicted (least recently seen) since load: more sources than --top-map-entries.",
                MetricType::Counter,
            );
        evictions.count(Vec::new(), map.evictions);
        let mut failures = Family::new(
            "synproxy_ebpf_source_insert_failures",
            "Events not counted per source because the map made no entry for them, since load.",
            MetricType::Counter,
        );
        failures.count(Vec::new(), map.insert_failures);
        let mut memory = Family::new(
                "synproxy_ebpf_source_map_memory",
                "Kernel memory the per-source map pins (memlock; part of synproxy_ebpf_map_memory_bytes).",
                MetricType::Gauge,
            )
            .unit(Unit::Bytes);
        memory.count(Vec::new(), map.map_bytes);
        families.extend([entries, capacity, evictions, failures, memory]);
    }
    if let Some(map) = &probes.ports {
        families.extend(port_map_families(map));
    }
    families
}

/// The per-port map's fill and losses (`--top-ports`).
fn port_map_families(map: &crate::sample::SourceMapStats) -> [Family; 5] {
    let mut entries = Family::new(
        "synproxy_ebpf_port_map_entries",
        "Entries in the kernel's per-port map (--top-ports).",
        MetricType::Gauge,
    );
    entries.count(Vec::new(), map.entries);
    let mut capacity = Family::new(
        "synproxy_ebpf_port_map_capacity",
        "Size of the kernel's per-port map (--top-ports-map-entries).",
        MetricType::Gauge,
    );
    capacity.count(Vec::new(), u64::from(map.capacity));
    let mut evictions = Family::new(
        "synproxy_ebpf_port_evictions",
        "Entries the per-port map evicted (least recently seen) since load: more (namespace, counter, family, port) keys than --top-ports-map-entries.",
        MetricType::Counter,
    );
    evictions.count(Vec::new(), map.evictions);
    let mut failures = Family::new(
        "synproxy_ebpf_port_insert_failures",
        "Events not counted per port because the map made no entry for them, since load.",
        MetricType::Counter,
    );
    failures.count(Vec::new(), map.insert_failures);
    let mut memory = Family::new(
        "synproxy_ebpf_port_map_memory",
        "Kernel memory the per-port map pins (memlock; part of synproxy_ebpf_map_memory_bytes).",
        MetricType::Gauge,
    )
    .unit(Unit::Bytes);
    memory.count(Vec::new(), map.map_bytes);
    [entries, capacity, evictions, failures, memory]
}

/// Run time and run count per program (while kernel.bpf_stats_enabled is 1).
pub(super) fn program_families(agent: &AgentHealth) -> [Family; 2] {
    let mut run_time = Family::new(
        "synproxy_ebpf_program_run_time",
        "Time the eBPF program ran, while kernel.bpf_stats_enabled is 1.",
        MetricType::Counter,
    )
    .unit(Unit::Seconds);
    let mut run_count = Family::new(
        "synproxy_ebpf_program_runs",
        "Runs of the eBPF program, while kernel.bpf_stats_enabled is 1.",
        MetricType::Counter,
    );
    for p in &agent.programs {
        run_time.gauge(
            vec![("program", p.program.to_string())],
            p.run_time_ns as f64 / 1e9,
        );
        run_count.count(vec![("program", p.program.to_string())], p.run_count);
    }
    [run_time, run_count]
}
