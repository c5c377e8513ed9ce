//! Pure InfluxDB line protocol encoder for [`Sample`]s, in Telegraf's shape:
//! `synproxy,host=gw01 conn_reopened=0i,cookie_invalid=235i,... 1549550634000000000`
//!
//! Tags are sorted by key (InfluxDB's canonical order), fields alphabetical as
//! Telegraf writes them. Tag keys and values escape `,`, `=`, space and `\`.
//! Line protocol cannot carry control characters in names, nor a name ending
//! in a backslash, so those characters (a netns name may hold a newline) become
//! `_`; an empty tag value omits the tag.

use crate::fields::Field;
use crate::sample::{EbpfSample, ProbesSample, Sample, Snapshot, TopSources, DIAG_NAMES};
use std::io::Write as _;
use synproxy_common::Counter;

pub const MEASUREMENT: &str = "synproxy";
pub const NETNS_TAG: &str = "netns";
/// Per namespace and family: eBPF-counted events, peak rates, misses, reconcile status.
pub const EBPF_MEASUREMENT: &str = "synproxy_ebpf";
/// Per agent: probe hits/misses and kernel-side diagnostics.
pub const PROBES_MEASUREMENT: &str = "synproxy_ebpf_probes";
pub const FAMILY_TAG: &str = "family";
/// Per namespace, family, counter and rank: the interval's top sources.
pub const TOP_SOURCES_MEASUREMENT: &str = "synproxy_top_sources";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IntegerType {
    /// `123i` (int64): Telegraf's default, accepted by every InfluxDB.
    #[default]
    Signed,
    /// `123u` (uint64): only where the receiver accepts it.
    Unsigned,
}

#[derive(Clone, Debug)]
pub struct LineEncoder {
    /// Static tags, already escaped, sorted by key.
    tags: Vec<(String, String)>,
    integers: IntegerType,
}

impl LineEncoder {
    /// `tags` are raw (unescaped) key/value pairs; the netns tag is added per sample.
    pub fn new(tags: &[(String, String)], integers: IntegerType) -> Self {
        let mut tags: Vec<(String, String)> = tags
            .iter()
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .map(|(k, v)| (escape_tag(k), escape_tag(v)))
            .collect();
        tags.sort();
        tags.dedup_by(|a, b| a.0 == b.0);
        Self { tags, integers }
    }

    /// Appends one line (with its trailing newline) to `out`.
    pub fn encode(&self, sample: &Sample, out: &mut Vec<u8>) {
        out.extend_from_slice(MEASUREMENT.as_bytes());

        let netns = sample
            .netns
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(escape_tag);
        let mut netns_written = netns.is_none();
        for (key, value) in &self.tags {
            if !netns_written && key.as_str() > NETNS_TAG {
                write_tag(out, NETNS_TAG, netns.as_deref().unwrap_or_default());
                netns_written = true;
            }
            write_tag(out, key, value);
        }
        if !netns_written {
            write_tag(out, NETNS_TAG, netns.as_deref().unwrap_or_default());
        }

        let mut separator = b' ';
        for field in Field::ALPHABETICAL {
            out.push(separator);
            separator = b',';
            out.extend_from_slice(field.name().as_bytes());
            out.push(b'=');
            let value = sample.totals[field.index()];
            // Writing into a Vec cannot fail.
            let _ = match self.integers {
                // Saturate: 2^63 events is out of reach, but never print a negative.
                IntegerType::Signed => write!(out, "{}i", value.min(i64::MAX as u64)),
                IntegerType::Unsigned => write!(out, "{value}u"),
            };
        }
        let _ = writeln!(out, " {}", timestamp(sample.timestamp_ns));
    }
}

impl LineEncoder {
    /// Static tags merged with per-line tags (`extra`: escaped, sorted by key,
    /// empty values omitted), in key order.
    fn write_tags(&self, out: &mut Vec<u8>, extra: &[(&str, &str)]) {
        let mut extra = extra.iter().filter(|(_, v)| !v.is_empty()).peekable();
        for (key, value) in &self.tags {
            while let Some((k, v)) = extra.next_if(|(k, _)| *k < key.as_str()) {
                write_tag(out, k, v);
            }
            // A per-line tag wins over a static one of the same key.
            if extra.peek().is_some_and(|(k, _)| *k == key.as_str()) {
                continue;
            }
            write_tag(out, key, value);
        }
        for (k, v) in extra {
            write_tag(out, k, v);
        }
    }

    fn write_int(&self, out: &mut Vec<u8>, separator: &mut u8, name: &str, value: u64) {
        out.push(*separator);
        *separator = b',';
        let _ = match self.integers {
            IntegerType::Signed => write!(out, "{name}={}i", value.min(i64::MAX as u64)),
            IntegerType::Unsigned => write!(out, "{name}={value}u"),
        };
    }

    fn write_float(out: &mut Vec<u8>, separator: &mut u8, name: &str, value: f64) {
        out.push(*separator);
        *separator = b',';
        // Line protocol has no NaN or infinities.
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let _ = write!(out, "{name}={value}");
    }

    /// One `synproxy_ebpf` line:
    /// `synproxy_ebpf,family=ipv4,host=gw01 conn_reopened=0i,conn_reopened_peak_rate=0,...,reconcile="exact",syn_received=20000i,syn_received_peak_rate=31000 TS`
    pub fn encode_ebpf(&self, sample: &EbpfSample, out: &mut Vec<u8>) {
        out.extend_from_slice(EBPF_MEASUREMENT.as_bytes());
        let netns = sample.netns.as_deref().map(escape_tag).unwrap_or_default();
        let family = escape_tag(sample.family);
        self.write_tags(out, &[(FAMILY_TAG, &family), (NETNS_TAG, &netns)]);
        let mut separator = b' ';
        // Alphabetical field order.
        let mut counters = Counter::ALL;
        counters.sort_by_key(|c| c.name());
        let mut wrote_misc = false;
        for counter in counters {
            if !wrote_misc && counter.name() > "reconcile" {
                out.push(separator);
                separator = b',';
                out.extend_from_slice(b"reconcile=\"");
                out.extend_from_slice(sample.status.name().as_bytes());
                out.push(b'"');
                wrote_misc = true;
            }
            let i = counter as usize;
            self.write_int(out, &mut separator, counter.name(), sample.events[i]);
            Self::write_float(
                out,
                &mut separator,
                &format!("{}_peak_rate", counter.name()),
                sample.peak_rates[i],
            );
        }
        if !wrote_misc {
            out.push(separator);
            out.extend_from_slice(b"reconcile=\"");
            out.extend_from_slice(sample.status.name().as_bytes());
            out.push(b'"');
        }
        let _ = writeln!(out, " {}", timestamp(sample.timestamp_ns));
    }

    /// A whole round, as every line protocol output writes it: the `synproxy`
    /// lines, the `nstat` and `conntrack` lines, the `synproxy_defense` lines,
    /// the `synproxy_attack` lines of the attacks in progress, then the
    /// `synproxy_ebpf` lines, the `synproxy_top_sources` and
    /// `synproxy_top_ports` lines, and last the `synproxy_ebpf_probes` line (a reader can take it
    /// as the end of an eBPF round). A round in which no namespace could be
    /// read writes nothing.
    pub fn encode_round(&self, snapshot: &Snapshot, out: &mut Vec<u8>) {
        if snapshot.namespaces.is_empty() {
            return;
        }
        for sample in snapshot.samples() {
            self.encode(sample, out);
        }
        for sample in &snapshot.stack {
            self.encode_stack(sample, snapshot.timestamp_ns, out);
        }
        for sample in &snapshot.defense {
            self.encode_defense(sample, snapshot.timestamp_ns, out);
        }
        for event in &snapshot.attacks {
            self.encode_attack(event, out);
        }
        for sample in snapshot.ebpf_samples() {
            self.encode_ebpf(sample, out);
        }
        for list in &snapshot.top_sources {
            self.encode_top_sources(list, snapshot.timestamp_ns, out);
        }
        for list in &snapshot.top_ports {
            self.encode_top_ports(list, snapshot.timestamp_ns, out);
        }
        if let Some(probes) = &snapshot.probes {
            self.encode_probes(probes, out);
        }
    }

    /// One `synproxy_top_sources` line per entry, best first (none for an
    /// empty list):
    /// `synproxy_top_sources,counter=syn_received,family=ipv4,host=gw01,netns=blue,rank=1,source=203.0.113.7 events=500i,share=0.5 TS`
    pub fn encode_top_sources(&self, list: &TopSources, timestamp_ns: u64, out: &mut Vec<u8>) {
        let netns = list.netns.as_deref().map(escape_tag).unwrap_or_default();
        let family = escape_tag(list.family);
        for (i, entry) in list.entries.iter().enumerate() {
            out.extend_from_slice(TOP_SOURCES_MEASUREMENT.as_bytes());
            let rank = (i + 1).to_string();
            let source = escape_tag(&entry.source);
            self.write_tags(
                out,
                &[
                    ("counter", list.counter.name()),
                    (FAMILY_TAG, &family),
                    (NETNS_TAG, &netns),
                    ("rank", &rank),
                    ("source", &source),
                ],
            );
            let mut separator = b' ';
            self.write_int(out, &mut separator, "events", entry.events);
            Self::write_float(out, &mut separator, "share", entry.share);
            let _ = writeln!(out, " {}", timestamp(timestamp_ns));
        }
    }

    /// One `synproxy_ebpf_probes` line: `attached`, `probe_type`, this round's `probe_misses`
    /// (all namespaces), `recursion_misses`, `map_bytes`, kernel-side
    /// diagnostics, per probe `<probe>_hits` / `<probe>_missed` since it
    /// was attached, and with `--top` the per-source map's `source_map_*`
    /// and `source_evictions`, `source_insert_failures`, and with
    /// `--top-ports` the per-port map's `port_map_*`, `port_evictions` and
    /// `port_insert_failures`.
    pub fn encode_probes(&self, sample: &ProbesSample, out: &mut Vec<u8>) {
        out.extend_from_slice(PROBES_MEASUREMENT.as_bytes());
        self.write_tags(out, &[]);
        let mut fields: Vec<(String, u64)> = vec![
            ("attached".into(), u64::from(sample.attached)),
            ("probe_misses".into(), sample.probe_misses),
            ("recursion_misses".into(), sample.recursion_misses),
            ("map_bytes".into(), sample.map_bytes),
        ];
        for (slot, name) in DIAG_NAMES {
            fields.push((name.into(), sample.diag[slot as usize]));
        }
        for (program, n) in &sample.program_recursion {
            fields.push((format!("{program}_recursion_misses"), *n));
        }
        for (probe, stats) in &sample.probes {
            fields.push((format!("{probe}_hits"), stats.hits));
            fields.push((format!("{probe}_missed"), stats.missed));
        }
        if let Some(map) = &sample.sources {
            fields.push(("source_map_entries".into(), map.entries));
            fields.push(("source_map_capacity".into(), u64::from(map.capacity)));
            fields.push(("source_map_bytes".into(), map.map_bytes));
            fields.push(("source_evictions".into(), map.evictions));
            fields.push(("source_insert_failures".into(), map.insert_failures));
        }
        if let Some(map) = &sample.ports {
            fields.push(("port_map_entries".into(), map.entries));
            fields.push(("port_map_capacity".into(), u64::from(map.capacity)));
            fields.push(("port_map_bytes".into(), map.map_bytes));
            fields.push(("port_evictions".into(), map.evictions));
            fields.push(("port_insert_failures".into(), map.insert_failures));
        }
        fields.sort();
        let mut separator = b' ';
        let mut wrote_type = false;
        for (name, value) in fields {
            // `probe_type="kprobe"` (a string) in its alphabetical place.
            if !wrote_type && name.as_str() > "probe_type" {
                Self::write_probe_type(out, &mut separator, sample.probe_type);
                wrote_type = true;
            }
            self.write_int(out, &mut separator, &name, value);
        }
        if !wrote_type {
            Self::write_probe_type(out, &mut separator, sample.probe_type);
        }
        let _ = writeln!(out, " {}", timestamp(sample.timestamp_ns));
    }

    fn write_probe_type(out: &mut Vec<u8>, separator: &mut u8, probe_type: &str) {
        out.push(*separator);
        *separator = b',';
        out.extend_from_slice(b"probe_type=\"");
        // A fixed word (kprobe, fentry): nothing to escape.
        out.extend_from_slice(probe_type.as_bytes());
        out.push(b'"');
    }
}

/// Line protocol timestamps are int64 nanoseconds: a clock past 2262 (or
/// `now_ns`'s saturated u64::MAX) is written as the largest one, never as a
/// number InfluxDB rejects with the whole batch.
fn timestamp(ns: u64) -> u64 {
    ns.min(i64::MAX as u64)
}

fn write_tag(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
}

/// Escapes a tag key or value (the same rules apply to both).
pub fn escape_tag(raw: &str) -> String {
    let mut escaped = String::with_capacity(raw.len() + 2);
    let kept = raw.trim_end_matches('\\');
    for c in kept.chars() {
        match c {
            ',' | '=' | ' ' | '\\' => {
                escaped.push('\\');
                escaped.push(c);
            }
            c if c.is_control() => escaped.push('_'),
            c => escaped.push(c),
        }
    }
    // Parsers reject a name that ends in a backslash, escaped or not.
    escaped.extend(std::iter::repeat_n('_', raw.len() - kept.len()));
    escaped
}

/// What a parser reads back for a tag value `raw` after [`escape_tag`]:
/// control characters and trailing backslashes become `_`.
pub fn sanitized_tag(raw: &str) -> String {
    let kept = raw.trim_end_matches('\\');
    kept.chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .chain(std::iter::repeat_n('_', raw.len() - kept.len()))
        .collect()
}

mod attack;
mod defense;
mod ports;
mod stack;
pub use attack::ATTACK_MEASUREMENT;
pub use defense::DEFENSE_MEASUREMENT;
pub use stack::{CONNTRACK_MEASUREMENT, NSTAT_MEASUREMENT};

#[cfg(test)]
#[path = "line_protocol_tests.rs"]
mod tests;
