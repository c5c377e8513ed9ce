//! Ranking destination ports: from the interval's per-port events to the
//! [`TopPorts`] lists of the snapshot, the top N per namespace and counter.
//! IPv4 and IPv6 events of a port are summed (a port is the same service for
//! both families). Ranking: most events first, equal events by ascending
//! port. Ports are few (the map is small), so a sort per list is enough.

use crate::sample::{TopPort, TopPorts};
use std::collections::HashMap;
use synproxy_common::Counter;

/// One port's events of one counter in one namespace and family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortCount<'a> {
    /// The namespace's `netns` tag (`None`: the agent's own namespace).
    pub netns: Option<&'a str>,
    pub counter: Counter,
    pub port: u16,
    pub events: u64,
}

/// A namespace's eBPF events of one counter in the interval (both
/// families): the denominator of `share`. Lists come out in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterTotal<'a> {
    pub netns: Option<&'a str>,
    pub counter: Counter,
    pub events: u64,
}

/// The top `n` ports per namespace and counter of `totals` that had
/// per-port events (lists without any are left out).
pub fn rank_ports<'a>(
    n: usize,
    counts: impl IntoIterator<Item = PortCount<'a>>,
    totals: &[CounterTotal<'a>],
) -> Vec<TopPorts> {
    let mut groups: HashMap<(Option<&str>, Counter), HashMap<u16, u64>> = HashMap::new();
    for c in counts {
        if c.events == 0 {
            continue;
        }
        *groups
            .entry((c.netns, c.counter))
            .or_default()
            .entry(c.port)
            .or_default() += c.events;
    }
    let mut out = Vec::new();
    for total in totals {
        let Some(ports) = groups.remove(&(total.netns, total.counter)) else {
            continue;
        };
        let sum: u64 = ports.values().sum();
        // Never a share over 1, even if the totals lag the map.
        let interval_events = total.events.max(sum);
        let mut ranked: Vec<(u16, u64)> = ports.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(n);
        out.push(TopPorts {
            netns: total.netns.map(str::to_owned),
            counter: total.counter,
            interval_events,
            entries: ranked
                .into_iter()
                .map(|(port, events)| TopPort {
                    port,
                    events,
                    share: if interval_events == 0 {
                        0.0
                    } else {
                        events as f64 / interval_events as f64
                    },
                })
                .collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(netns: Option<&str>, counter: Counter, port: u16, events: u64) -> PortCount<'_> {
        PortCount {
            netns,
            counter,
            port,
            events,
        }
    }

    #[test]
    fn families_are_summed_ranked_by_events_then_port_and_cut_at_n() {
        let blue = Some("blue");
        let counts = [
            // 443 as IPv4 and IPv6: 30 in all.
            count(blue, Counter::SynReceived, 443, 10),
            count(blue, Counter::SynReceived, 443, 20),
            count(blue, Counter::SynReceived, 80, 30),
            count(blue, Counter::SynReceived, 22, 5),
            count(blue, Counter::SynReceived, 8080, 0),
            count(blue, Counter::CookieInvalid, 80, 4),
            // A namespace not in the totals is not reported.
            count(Some("gone"), Counter::SynReceived, 80, 9),
        ];
        let totals = [
            CounterTotal {
                netns: blue,
                counter: Counter::SynReceived,
                events: 100,
            },
            CounterTotal {
                netns: blue,
                counter: Counter::CookieValid,
                events: 3,
            },
            CounterTotal {
                netns: blue,
                counter: Counter::CookieInvalid,
                events: 2,
            },
        ];
        let lists = rank_ports(2, counts, &totals);
        assert_eq!(lists.len(), 2, "no list without per-port events");
        let syn = &lists[0];
        assert_eq!(syn.counter, Counter::SynReceived);
        assert_eq!(syn.interval_events, 100);
        let got: Vec<(u16, u64, f64)> = syn
            .entries
            .iter()
            .map(|e| (e.port, e.events, e.share))
            .collect();
        assert_eq!(got, vec![(80, 30, 0.3), (443, 30, 0.3)]);
        let inv = &lists[1];
        assert_eq!(inv.counter, Counter::CookieInvalid);
        // The totals lag the map: the share stays at most 1.
        assert_eq!(inv.interval_events, 4);
        assert_eq!(inv.entries[0].share, 1.0);
    }
}

#[cfg(test)]
mod bounds_tests {
    use crate::cli::{parse_top_ports, parse_top_ports_map_entries};

    #[test]
    fn top_ports_flags_are_bounded_with_one_line_errors() {
        assert_eq!(parse_top_ports("0"), Ok(0));
        assert_eq!(parse_top_ports("100"), Ok(100));
        assert_eq!(
            parse_top_ports("101"),
            Err("expected a number of ports from 0 (off) to 100".into())
        );
        assert!(parse_top_ports("-1").is_err());
        assert_eq!(parse_top_ports_map_entries("256"), Ok(256));
        assert_eq!(parse_top_ports_map_entries("1048576"), Ok(1 << 20));
        for bad in ["255", "1048577", "many", ""] {
            let e = parse_top_ports_map_entries(bad).unwrap_err();
            assert!(
                !e.contains('\n') && e.contains("256 to 1048576"),
                "{bad}: {e}"
            );
        }
    }
}
