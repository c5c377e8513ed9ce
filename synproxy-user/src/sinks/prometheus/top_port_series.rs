//! Per-port series on `/metrics`: the last round's top ports (`--top-ports`
//! N per namespace and counter, IPv4 and IPv6 summed), labelled by port (no
//! rank: PromQL's `topk` ranks). Unlike sources, ports are the services a
//! namespace protects, so the series stay few; still, a SYNPROXY rule
//! without `--dport` lets a flood spread over every port, so the exposition
//! carries at most [`MAX_PORT_SERIES`] of them per scrape (line protocol and
//! `top` keep every list).

use super::exposition::{netns_label, Family};
use crate::sample::Snapshot;
use prometheus_client::metrics::MetricType;
use std::collections::HashSet;

/// Port series per scrape at most (each of the two families).
pub const MAX_PORT_SERIES: usize = 1000;

pub(super) fn top_port_families(snapshot: &Snapshot) -> [Family; 2] {
    let mut events = Family::new(
        "synproxy_top_port_events",
        "Events of the destination port in the last round (IPv4 and IPv6 summed), for the --top-ports ports per namespace and counter.",
        MetricType::Gauge,
    );
    let mut share = Family::new(
        "synproxy_top_port_share",
        "The port's share of the counter's events in the namespace in the last round (0 to 1), for the --top-ports ports.",
        MetricType::Gauge,
    );
    let mut seen = HashSet::new();
    let mut rows = 0;
    for list in &snapshot.top_ports {
        let label = netns_label(list.netns.as_deref());
        if !seen.insert((label.clone(), list.counter)) {
            continue;
        }
        let mut ports = HashSet::new();
        for entry in &list.entries {
            if rows >= MAX_PORT_SERIES {
                return [events, share];
            }
            if !ports.insert(entry.port) {
                continue;
            }
            let labels = vec![
                ("netns", label.clone()),
                ("counter", list.counter.name().to_string()),
                ("port", entry.port.to_string()),
            ];
            let s = if entry.share.is_finite() {
                entry.share.clamp(0.0, 1.0)
            } else {
                0.0
            };
            events.count(labels.clone(), entry.events);
            share.gauge(labels, s);
            rows += 1;
        }
    }
    [events, share]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{TopPort, TopPorts};
    use synproxy_common::Counter;

    fn list(netns: &str, ports: u16) -> TopPorts {
        TopPorts {
            netns: Some(netns.into()),
            counter: Counter::SynReceived,
            interval_events: 100,
            entries: (1..=ports)
                .map(|port| TopPort {
                    port,
                    events: 1,
                    share: 0.01,
                })
                .collect(),
        }
    }

    #[test]
    fn series_are_capped_per_scrape() {
        let mut snapshot = (*crate::sinks::prometheus::tests::snapshot(Vec::new(), false)).clone();
        snapshot.top_ports = (0..30).map(|i| list(&format!("ns{i}"), 50)).collect();
        // The same list twice counts once.
        snapshot.top_ports.push(list("ns0", 50));
        let [events, _] = top_port_families(&snapshot);
        assert_eq!(events.len(), MAX_PORT_SERIES);
        snapshot.top_ports.truncate(2);
        let [events, share] = top_port_families(&snapshot);
        assert_eq!((events.len(), share.len()), (100, 100));
    }
}
