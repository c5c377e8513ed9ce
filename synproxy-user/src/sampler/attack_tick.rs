//! The attack detector between rounds (eBPF): every [`DETECT_PERIOD`] the
//! completed rate buckets step each namespace's detectors and the per-port
//! counts read since the last tick step its ports', so a start is known
//! within a second whatever the interval. A start's document gets the
//! ports of that tick and the sources since the last round (one read of the
//! per-source map, only when something started).

use super::attacks::EVENT_TOP;
use super::*;
use crate::analysis::attack::detector::{Scope, SubjectKey};
use crate::analysis::attack::{AttackKind, EventPort, EventSource};
use crate::sources::ebpf::port_counts::{port_deltas, PortEvents};
use synproxy_common::Counter;

/// Between rounds the detector steps at most this often (and at the rate
/// buckets' width at least).
pub(super) const DETECT_PERIOD: Duration = Duration::from_millis(250);

impl Sampler {
    /// Between rounds (eBPF): one detector step per namespace the probes
    /// count, over the rate buckets completed since the last tick, and one
    /// per namespace's ports over the per-port counts since the last tick.
    pub fn detect_tick(&mut self) {
        let Some(params) = self.config.attacks.as_ref().map(|a| a.params.clone()) else {
            return;
        };
        let Some(ebpf) = self.config.ebpf.as_mut() else {
            return;
        };
        if !ebpf.is_attached() {
            return;
        }
        let (window, covered) = ebpf.take_window();
        let now = now_ns();
        let ports = self.read_port_steps(now);
        let keys: Vec<(NsKey, SeriesKey)> =
            self.attack_keys.iter().map(|(k, s)| (*k, *s)).collect();
        if let Some((_, deltas)) = &ports {
            self.remember_tick_ports(&keys, deltas);
        }
        let secs = covered.as_secs_f64();
        if secs > 0.0 {
            for &(ns, key) in &keys {
                let counts = window.get(&ns).copied().unwrap_or_default();
                let events: Vec<(SubjectKey, u64)> = AttackKind::ALL
                    .iter()
                    .map(|&kind| {
                        let n = counts.get(kind.counter().index()).copied().unwrap_or(0);
                        (SubjectKey { kind, port: None }, n)
                    })
                    .collect();
                self.step_attacks(key, now, secs, Scope::Namespace, &events, &params);
                if let Some(series) = self.series.get_mut(&key) {
                    series.attacks.fed = true;
                }
            }
        }
        if let Some((secs, deltas)) = ports {
            let mut by_ns = port_events_by_ns(&deltas);
            for &(ns, key) in &keys {
                let events = by_ns.remove(&ns).unwrap_or_default();
                self.step_attacks(key, now, secs, Scope::Ports, &events, &params);
            }
        }
        self.fill_start_sources(&keys);
    }

    /// The per-port events since the last tick and the time they cover
    /// (seconds); None without per-port counting, at the first read, or
    /// when a read failed (the next read starts afresh).
    fn read_port_steps(&mut self, now: u64) -> Option<(f64, Vec<PortEvents>)> {
        let ebpf = self.config.ebpf.as_mut()?;
        let Some(totals) = ebpf.read_port_totals() else {
            self.port_read_at = None;
            return None;
        };
        self.port_current.clear();
        self.port_current.extend_from_slice(totals);
        let last = self.port_read_at.replace(now);
        let mut deltas = Vec::new();
        if last.is_some() {
            port_deltas(&self.port_previous, &self.port_current, &mut deltas);
        }
        std::mem::swap(&mut self.port_previous, &mut self.port_current);
        let secs = now.saturating_sub(last?) as f64 / 1e9;
        (secs > 0.0).then_some((secs, deltas))
    }

    /// The tick's busiest ports per namespace and kind, for the documents
    /// (a start then names the ports of its own onset).
    fn remember_tick_ports(&mut self, keys: &[(NsKey, SeriesKey)], deltas: &[PortEvents]) {
        for &(ns, key) in keys {
            let Some(series) = self.series.get_mut(&key) else {
                continue;
            };
            for kind in AttackKind::ALL {
                let mut ports: Vec<EventPort> = Vec::new();
                for d in deltas
                    .iter()
                    .filter(|d| d.ns == ns && d.counter == kind.counter())
                {
                    match ports.iter_mut().find(|p| p.port == d.port) {
                        Some(p) => p.events += d.events,
                        None => ports.push(EventPort {
                            port: d.port,
                            events: d.events,
                        }),
                    }
                }
                if ports.is_empty() {
                    continue;
                }
                ports.sort_by_key(|p| (std::cmp::Reverse(p.events), p.port));
                ports.truncate(EVENT_TOP);
                series.attacks.tops.entry(kind).or_default().1 = ports;
            }
        }
    }

    /// Attacks that started this tick: their namespaces' top sources since
    /// the last round (one read of the per-source map).
    fn fill_start_sources(&mut self, keys: &[(NsKey, SeriesKey)]) {
        if self.new_starts.is_empty() {
            return;
        }
        let starts = std::mem::take(&mut self.new_starts);
        let Some(events) = self.config.ebpf.as_mut().and_then(|e| e.peek_sources()) else {
            return;
        };
        let ns_of: HashMap<SeriesKey, NsKey> = keys.iter().map(|(n, s)| (*s, *n)).collect();
        for (index, key) in starts {
            let Some(&ns) = ns_of.get(&key) else { continue };
            let Some(doc) = self.attack_events.get_mut(index) else {
                continue;
            };
            let counter: Counter = doc.kind.counter();
            let mut sources: Vec<(u64, String)> = events
                .iter()
                .filter(|e| e.ns == ns && e.counter == counter)
                .map(|e| (e.events, e.source.to_string()))
                .collect();
            sources.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            sources.truncate(EVENT_TOP);
            doc.top_sources = sources
                .into_iter()
                .map(|(events, source)| EventSource { source, events })
                .collect();
            let kind = doc.kind;
            let top = doc.top_sources.clone();
            if let Some(series) = self.series.get_mut(&key) {
                series.attacks.tops.entry(kind).or_default().0 = top;
            }
        }
    }
}

/// Per namespace, its ports' events as detector steps (families summed by
/// the detector).
fn port_events_by_ns(deltas: &[PortEvents]) -> HashMap<NsKey, Vec<(SubjectKey, u64)>> {
    let mut by_ns: HashMap<NsKey, Vec<(SubjectKey, u64)>> = HashMap::new();
    for d in deltas {
        let Some(kind) = AttackKind::ALL
            .into_iter()
            .find(|k| k.counter() == d.counter)
        else {
            continue;
        };
        by_ns.entry(d.ns).or_default().push((
            SubjectKey {
                kind,
                port: Some(d.port),
            },
            d.events,
        ));
    }
    by_ns
}
