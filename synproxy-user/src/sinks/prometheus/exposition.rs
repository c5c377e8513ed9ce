//! The exposition: families and samples from one [`Published`], encoded by
//! `prometheus-client` as the text format 0.0.4 or OpenMetrics 1.0.0.

use super::top_series::top_source_families;
use super::{Published, OPENMETRICS_CONTENT_TYPE, OWN_NETNS_LABEL, STATUSES};
use crate::reconcile::join::FAMILIES;
use crate::sample::SeriesId;
use crate::sample::{InfluxHealth, DIAG_NAMES};
use crate::sinks::line_protocol::sanitized_tag;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::Arc;
use synproxy_common::{Counter, COUNTER_COUNT};

/// Exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// OpenMetrics when the `Accept` headers rank it at least as high as any
    /// text format the agent could send instead; the text format otherwise.
    pub fn for_accept<'a>(headers: impl IntoIterator<Item = &'a str>) -> Format {
        let mut openmetrics: f32 = 0.0;
        let mut text: f32 = 0.0;
        for header in headers {
            for item in header.split(',') {
                let mut parts = item.split(';');
                let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let mut q = 1.0f32;
                for param in parts {
                    if let Some(("q", value)) =
                        param.split_once('=').map(|(k, v)| (k.trim(), v.trim()))
                    {
                        q = value.parse().unwrap_or(0.0);
                    }
                }
                match media.as_str() {
                    "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                    "text/plain" | "text/*" | "*/*" => text = text.max(q),
                    _ => {}
                }
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Renders `published` in `format`.
pub fn render(published: &Published, format: Format) -> Result<String, std::fmt::Error> {
    render_shared(Arc::new(published.clone()), format)
}

/// [`render`] without a copy (what a scrape does with the published value).
pub(super) fn render_shared(
    published: Arc<Published>,
    format: Format,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(published)));
    let mut out = String::with_capacity(16 * 1024);
    match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

pub(super) type Labels = Vec<(&'static str, String)>;

/// One metric family: name (without `_total` or the unit), help, unit, type
/// and its samples.
pub(super) struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Value {
    Count(u64),
    Gauge(f64),
}

impl Family {
    pub(super) fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Self {
            name,
            help,
            unit: None,
            kind,
            samples: Vec::new(),
        }
    }

    pub(super) fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }

    pub(super) fn count(&mut self, labels: Labels, value: u64) {
        self.samples.push((labels, Value::Count(value)));
    }

    pub(super) fn gauge(&mut self, labels: Labels, value: f64) {
        self.samples.push((labels, Value::Gauge(value)));
    }

    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), self.kind)?;
        for (labels, value) in &self.samples {
            if self.kind == MetricType::Info {
                metric.encode_info(labels)?;
                continue;
            }
            let sample = metric.encode_family(labels)?;
            match (self.kind, value) {
                (MetricType::Counter, Value::Count(v)) => ConstCounter::new(*v).encode(sample)?,
                (MetricType::Counter, Value::Gauge(v)) => ConstCounter::new(*v).encode(sample)?,
                (_, Value::Count(v)) => {
                    ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(sample)?
                }
                (_, Value::Gauge(v)) => ConstGauge::new(*v).encode(sample)?,
            }
        }
        Ok(())
    }
}

/// The collector behind each scrape: renders one [`Published`].
#[derive(Debug)]
pub(super) struct Exposition(Arc<Published>);

/// Help of the /proc counter families, in kernel order.
pub(super) fn proc_help(counter: Counter) -> &'static str {
    match counter {
        Counter::SynReceived => "SYNs answered by SYNPROXY with a cookie SYN/ACK (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieInvalid => "ACKs with a bad or expired SYN cookie (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieValid => "ACKs whose SYN cookie checked out: connections handed to the server (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieRetrans => "ACKs for a connection whose SYN to the server is still pending (kernel counter, /proc/net/stat/synproxy).",
        Counter::ConnReopened => "SYNs reopening a closed tracked connection (kernel counter, /proc/net/stat/synproxy).",
    }
}

/// `synproxy_<counter>` (rendered `..._total`).
pub(super) fn proc_family_name(counter: Counter) -> &'static str {
    match counter {
        Counter::SynReceived => "synproxy_syn_received",
        Counter::CookieInvalid => "synproxy_cookie_invalid",
        Counter::CookieValid => "synproxy_cookie_valid",
        Counter::CookieRetrans => "synproxy_cookie_retrans",
        Counter::ConnReopened => "synproxy_conn_reopened",
    }
}

/// The `netns` label value: the line protocol tag as a reader gets it back,
/// [`OWN_NETNS_LABEL`] for the agent's own namespace.
pub fn netns_label(netns: Option<&str>) -> String {
    match netns {
        Some(name) => sanitized_tag(name),
        None => OWN_NETNS_LABEL.to_string(),
    }
}

impl Exposition {
    pub(super) fn families(&self) -> Vec<Family> {
        let published = &*self.0;
        let mut agent_build = Family::new(
            "synproxy_agent_build",
            "The agent's version (always 1).",
            MetricType::Info,
        );
        agent_build.gauge(
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        );
        let mut rounds = Family::new(
            "synproxy_agent_rounds",
            "Sampling rounds since the agent started.",
            MetricType::Counter,
        );
        rounds.count(Vec::new(), published.rounds);
        let mut families = vec![agent_build, rounds];
        let Some(snapshot) = &published.snapshot else {
            return families;
        };

        // Which namespaces: those read this round, then the retained ones
        // (most recently seen first) whose label is still free.
        let mut rows: Vec<(SeriesId, String, [u64; COUNTER_COUNT], bool)> = Vec::new();
        let mut labels: HashSet<String> = HashSet::new();
        for ns in &snapshot.namespaces {
            let label = netns_label(ns.sample.netns.as_deref());
            let totals =
                Counter::ALL.map(|c| ns.sample.totals[crate::fields::Field::Counter(c).index()]);
            if labels.insert(label.clone()) {
                rows.push((ns.series, label, totals, true));
            }
        }
        let mut retained: Vec<_> = snapshot.retained.iter().collect();
        retained.sort_by_key(|r| (r.missing_rounds, r.series));
        for r in retained {
            let label = netns_label(r.netns.as_deref());
            if labels.insert(label.clone()) {
                let totals =
                    Counter::ALL.map(|c| r.totals[crate::fields::Field::Counter(c).index()]);
                rows.push((r.series, label, totals, false));
            }
        }

        for counter in Counter::ALL {
            let mut family = Family::new(
                proc_family_name(counter),
                proc_help(counter),
                MetricType::Counter,
            );
            for (_, label, totals, _) in &rows {
                family.count(vec![("netns", label.clone())], totals[counter.index()]);
            }
            families.push(family);
        }

        // eBPF, per namespace.
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
        for (series, label, _, _) in &rows {
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
        families.extend([events, peaks, status, reconcile_rounds]);
        families.extend(top_source_families(snapshot, published.top_series));

        // eBPF, agent-wide.
        if let Some(probes) = &snapshot.probes {
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
        }
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
        for p in &snapshot.agent.programs {
            run_time.gauge(
                vec![("program", p.program.to_string())],
                p.run_time_ns as f64 / 1e9,
            );
            run_count.count(vec![("program", p.program.to_string())], p.run_count);
        }

        // The agent.
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
        families.extend([
            run_time, run_count, enabled, attached, duration, timestamp, namespaces,
        ]);
        if let Some(influx) = &agent.influx {
            families.extend(influx_families(influx));
        }
        families
    }
}

/// The InfluxDB writer's health (only with `--influx-url`).
pub(super) fn influx_families(influx: &InfluxHealth) -> [Family; 4] {
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

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.families() {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}
