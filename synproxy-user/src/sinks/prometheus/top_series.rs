//! Per-source series on `/metrics` (`--prometheus-top-sources`).
//!
//! Every distinct label set is a new series in Prometheus' head block, kept
//! for hours after it stops. A spoofed flood of random sources puts new
//! addresses into the top list every round, and random addresses rarely share
//! a /24 or /64 either, so neither mode bounds the series created over time:
//! the default is `off`. Line protocol and `top` keep the full detail.

use super::exposition::{netns_label, Family};
use crate::sample::Snapshot;
use crate::sinks::line_protocol::sanitized_tag;
use prometheus_client::metrics::MetricType;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Prefix length of the `prefix` mode for IPv4 sources.
pub const PREFIX_V4: u8 = 24;
/// Prefix length of the `prefix` mode for IPv6 sources.
pub const PREFIX_V6: u8 = 64;

/// Which per-source series the exposition carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TopSeries {
    /// None.
    #[default]
    Off,
    /// One per /24 (IPv4) or /64 (IPv6) prefix, its sources' events summed.
    Prefix,
    /// One per source as ranked (an address, or a --top-prefix-v4/-v6 prefix).
    Address,
}

/// The source as a /24 or /64 prefix (`203.0.113.0/24`). A source that is
/// already a shorter prefix stays as it is; `None` for text that is not an
/// address or prefix.
pub fn prefix_of(source: &str) -> Option<String> {
    let (addr, bits) = match source.split_once('/') {
        Some((addr, bits)) => (addr, Some(bits.parse::<u8>().ok()?)),
        None => (source, None),
    };
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            let bits = bits.unwrap_or(32).min(PREFIX_V4);
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            Some(format!("{}/{bits}", Ipv4Addr::from(u32::from(a) & mask)))
        }
        IpAddr::V6(a) => {
            let bits = bits.unwrap_or(128).min(PREFIX_V6);
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            Some(format!("{}/{bits}", Ipv6Addr::from(u128::from(a) & mask)))
        }
    }
}

/// This round's top sources as `mode` wants them: per namespace, family and
/// counter at most `--top` series, labelled by source (no rank: PromQL's
/// `topk` ranks). Only the last round is shown, so a source that leaves the
/// top N leaves the exposition at once.
pub(super) fn top_source_families(snapshot: &Snapshot, mode: TopSeries) -> [Family; 2] {
    let mut events = Family::new(
        "synproxy_top_source_events",
        "Events of the source in the last round, for the --top sources per namespace, address family and counter: an address (or a --top-prefix-v4/-v6 prefix) with --prometheus-top-sources address, its /24 or /64 with prefix.",
        MetricType::Gauge,
    );
    let mut share = Family::new(
        "synproxy_top_source_share",
        "The source's share of the counter's events in the namespace and address family in the last round (0 to 1), for the --top sources.",
        MetricType::Gauge,
    );
    if mode == TopSeries::Off {
        return [events, share];
    }
    // One list per namespace label, family and counter (labels are unique).
    let mut seen = HashSet::new();
    for list in &snapshot.top_sources {
        let label = netns_label(list.netns.as_deref());
        if !seen.insert((label.clone(), list.family, list.counter)) {
            continue;
        }
        // (source label, events, share), first appearance order.
        let mut rows: Vec<(String, u64, f64)> = Vec::new();
        for entry in &list.entries {
            let source = match mode {
                TopSeries::Prefix => match prefix_of(&entry.source) {
                    Some(prefix) => prefix,
                    None => continue,
                },
                _ => sanitized_tag(&entry.source),
            };
            let entry_share = if entry.share.is_finite() {
                entry.share.clamp(0.0, 1.0)
            } else {
                0.0
            };
            match rows.iter_mut().find(|r| r.0 == source) {
                // A prefix sums its sources; an address listed twice (a
                // malformed list) keeps its first entry.
                Some(row) if mode == TopSeries::Prefix => {
                    row.1 = row.1.saturating_add(entry.events);
                    row.2 = (row.2 + entry_share).min(1.0);
                }
                Some(_) => {}
                None => rows.push((source, entry.events, entry_share)),
            }
        }
        for (source, n, mut s) in rows {
            // A prefix's share from its summed events (no rounding drift).
            if mode == TopSeries::Prefix && list.interval_events > 0 {
                s = (n as f64 / list.interval_events as f64).clamp(0.0, 1.0);
            }
            let labels = vec![
                ("netns", label.clone()),
                ("family", list.family.to_string()),
                ("counter", list.counter.name().to_string()),
                ("source", source),
            ];
            events.count(labels.clone(), n);
            share.gauge(labels, s);
        }
    }
    [events, share]
}

#[cfg(test)]
mod tests {
    use super::prefix_of;

    #[test]
    fn prefixes_are_24_and_64_bits_and_never_longer() {
        assert_eq!(prefix_of("203.0.113.7").as_deref(), Some("203.0.113.0/24"));
        assert_eq!(
            prefix_of("203.0.113.0/28").as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(prefix_of("10.1.0.0/16").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(prefix_of("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(
            prefix_of("2001:db8:1:2:3:4:5:6").as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(
            prefix_of("2001:db8:1:2::/96").as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(prefix_of("2001:db8::/32").as_deref(), Some("2001:db8::/32"));
        assert_eq!(prefix_of("not an address"), None);
        assert_eq!(prefix_of("203.0.113.7/x"), None);
        assert_eq!(prefix_of("203.0.113.7/"), None);
    }
}
