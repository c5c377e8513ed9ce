//! The agent's own health: eBPF state, the last round, namespaces by
//! state, the InfluxDB writer's line counts.

use super::Family;
use crate::sample::{InfluxHealth, Snapshot};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

pub(super) fn health_families(snapshot: &Snapshot) -> Vec<Family> {
    let agent = &snapshot.agent;
    let mut enabled = Family::new(
        "synproxy_agent_ebpf_enabled",
        "1 if the eBPF programs are loaded (not --no-ebpf, and loading worked).",
        MetricType::Gauge,
    );
    enabled.count(Vec::new(), u64::from(agent.ebpf_enabled));
    let mut attached = Family::new(
        "synproxy_agent_ebpf_attached",
        "1 while the eBPF probes are attached.",
        MetricType::Gauge,
    );
    attached.count(Vec::new(), u64::from(agent.ebpf_attached));
    let mut duration = Family::new(
        "synproxy_agent_last_round_duration",
        "How long the last sampling round took.",
        MetricType::Gauge,
    )
    .unit(Unit::Seconds);
    duration.gauge(Vec::new(), agent.round_duration.as_secs_f64());
    let mut timestamp = Family::new(
        "synproxy_agent_last_round_timestamp",
        "When the last sampling round ended, seconds since the Unix epoch.",
        MetricType::Gauge,
    )
    .unit(Unit::Seconds);
    timestamp.gauge(Vec::new(), snapshot.timestamp_ns as f64 / 1e9);
    let mut namespaces = Family::new(
        "synproxy_agent_namespaces",
        "Namespaces by state in the last round: read, retained (not found, kept for their return), failed (could not be read).",
        MetricType::Gauge,
    );
    namespaces.count(
        vec![("state", "read".into())],
        snapshot.namespaces.len() as u64,
    );
    namespaces.count(
        vec![("state", "retained".into())],
        snapshot.retained.len() as u64,
    );
    namespaces.count(
        vec![("state", "failed".into())],
        snapshot.failures.len() as u64,
    );
    let mut families = vec![enabled, attached, duration, timestamp, namespaces];
    if let Some(influx) = &agent.influx {
        families.extend(influx_families(influx));
    }
    families
}

/// The InfluxDB writer's health (only with `--influx-url`).
fn influx_families(influx: &InfluxHealth) -> [Family; 4] {
    let mut written = Family::new(
        "synproxy_agent_influx_written_lines",
        "Line protocol lines the InfluxDB server accepted.",
        MetricType::Counter,
    );
    written.count(Vec::new(), influx.written_lines);
    let mut dropped = Family::new(
        "synproxy_agent_influx_dropped_lines",
        "Lines dropped, oldest first, because the InfluxDB writer's buffer (--influx-buffer-lines) was full.",
        MetricType::Counter,
    );
    dropped.count(Vec::new(), influx.dropped_lines);
    let mut rejected = Family::new(
        "synproxy_agent_influx_rejected_lines",
        "Lines the InfluxDB server refused with a 4xx status other than 429 (not retried).",
        MetricType::Counter,
    );
    rejected.count(Vec::new(), influx.rejected_lines);
    let mut buffered = Family::new(
        "synproxy_agent_influx_buffered_lines",
        "Lines waiting to be written to InfluxDB (including a request in flight).",
        MetricType::Gauge,
    );
    buffered.count(Vec::new(), influx.buffered_lines);
    [written, dropped, rejected, buffered]
}
