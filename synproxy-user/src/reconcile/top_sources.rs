//! Top sources of one interval: from per-source event counts to the
//! [`TopSources`] lists of the snapshot, the top N per namespace, family and
//! counter by events in the interval. Pure: the kernel-side reader feeds it.
//!
//! - Sources are optionally summed into their prefix first (`--top-prefix-v4`,
//!   `--top-prefix-v6`), for spoofed floods where no single address stands out.
//! - Ranking: most events first; equal events by ascending address (numeric,
//!   so `10.0.0.2` before `10.0.0.10`), so a list never depends on input order.
//! - Selection keeps a bounded heap of N per group: O(n log N) for n sources.
//!   Aggregation sums in a hash map with std's randomly keyed SipHash: the
//!   addresses are chosen by the attacker, so a weak hash would let a spoofed
//!   flood pick colliding keys.
//! - The scratch maps and heaps are kept across rounds (cleared, not freed), so
//!   a round allocates only its output once the agent has seen its largest round.

use crate::sample::{TopSource, TopSources};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use synproxy_common::Counter;

/// `--top` default.
pub const DEFAULT_TOP: usize = 10;
/// `--top` upper bound: N series per namespace, family and counter on /metrics.
pub const MAX_TOP: usize = 1000;
/// `--top-map-entries` bounds.
pub const MIN_TOP_MAP_ENTRIES: u32 = 1024;
/// The maximum bounds user-space memory too: a full map costs up to 210
/// bytes per entry in the agent while a round reads it (docs/ebpf.md, per-source
/// map; `benches/top_sources_memory.rs`), 210 MiB at 1,048,576 entries.
pub const MAX_TOP_MAP_ENTRIES: u32 = 1 << 20;

/// What to rank, from `--top`, `--top-prefix-v4` and `--top-prefix-v6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopConfig {
    /// Entries per namespace, family and counter; 0 turns the feature off.
    pub n: usize,
    /// IPv4 sources are summed into this prefix length (32: each address alone).
    pub prefix_v4: u8,
    /// IPv6 sources likewise (128: each address alone).
    pub prefix_v6: u8,
    /// Entries of the kernel's per-source map.
    pub map_entries: u32,
}

impl Default for TopConfig {
    fn default() -> Self {
        Self {
            n: DEFAULT_TOP,
            prefix_v4: 32,
            prefix_v6: 128,
            map_entries: synproxy_common::SOURCES_DEFAULT_ENTRIES,
        }
    }
}

impl TopConfig {
    pub fn enabled(&self) -> bool {
        self.n > 0
    }
}

/// Address family of a source (and of its list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The `family` tag and label value.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// An IPv4-mapped IPv6 address arrived in an IPv6 packet: it stays IPv6.
    pub const fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// One source's events of one counter in one namespace during the interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceCount<'a> {
    /// The namespace's `netns` tag (`None`: the agent's own namespace).
    pub netns: Option<&'a str>,
    pub counter: Counter,
    /// Its family is the list's.
    pub source: IpAddr,
    pub events: u64,
}

/// The interval's events of one counter in one namespace and family over all
/// sources, as the probes counted them (so with the events of sources the
/// per-source map evicted): the denominator of `share`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalTotal<'a> {
    pub netns: Option<&'a str>,
    pub family: Family,
    pub counter: Counter,
    pub events: u64,
}

/// One namespace, family and counter this round.
#[derive(Clone, Copy, Debug)]
struct Group {
    netns: u32,
    family: Family,
    counter: Counter,
    /// From [`IntervalTotal`], if one was given.
    total: Option<u64>,
    /// Sum over the group's sources.
    sum: u64,
}

/// Heap entry ordered so that the heap's top is the worst kept entry: fewest
/// events, then highest address.
type Ranked = Reverse<(u64, Reverse<u128>)>;

/// Ranks one interval's per-source counts; keeps its scratch space between rounds.
#[derive(Debug)]
pub struct TopRanker {
    config: TopConfig,
    /// `netns` label -> index in `names` (index 0 is the own namespace).
    ids: HashMap<String, u32>,
    names: Vec<Option<String>>,
    group_ids: HashMap<(u32, Family, Counter), u32>,
    groups: Vec<Group>,
    /// IPv4: group << 32 | masked address -> events (a compact key: most
    /// floods are IPv4, and the map is the round's largest cost).
    sums_v4: HashMap<u64, u64>,
    /// IPv6: (group, masked address's high and low halves) -> events
    /// (halves: a u128 in the key would align the entry to 16, 48 bytes
    /// instead of 32).
    sums_v6: HashMap<(u32, u64, u64), u64>,
    heaps: Vec<BinaryHeap<Ranked>>,
}

impl TopRanker {
    pub fn new(config: TopConfig) -> Self {
        Self {
            config: TopConfig {
                n: config.n.min(MAX_TOP),
                prefix_v4: config.prefix_v4.min(32),
                prefix_v6: config.prefix_v6.min(128),
                map_entries: config.map_entries,
            },
            ids: HashMap::new(),
            names: Vec::new(),
            group_ids: HashMap::new(),
            groups: Vec::new(),
            sums_v4: HashMap::new(),
            sums_v6: HashMap::new(),
            heaps: Vec::new(),
        }
    }

    pub fn config(&self) -> TopConfig {
        self.config
    }

    /// The top N per namespace, family and counter of one interval, best
    /// first. Lists come in the order their group first appears in `totals`,
    /// then in `counts`; a group given a total but no sources has an empty
    /// list (per-source counting ran, nobody sent anything). Sources with 0
    /// events are not ranked. `interval_events` is the group's total, or the
    /// sum over its sources when that is larger (a total read at another
    /// moment than the counts) or no total was given, so `share` is at most 1.
    /// With `--top 0`: nothing, without reading the input.
    pub fn rank<'a>(
        &mut self,
        counts: impl IntoIterator<Item = SourceCount<'a>>,
        totals: impl IntoIterator<Item = IntervalTotal<'a>>,
    ) -> Vec<TopSources> {
        if !self.config.enabled() {
            return Vec::new();
        }
        self.begin();
        for t in totals {
            let g = self.group(t.netns, t.family, t.counter);
            let total = &mut self.groups[g as usize].total;
            *total = Some(total.unwrap_or(0).saturating_add(t.events));
        }
        // Consecutive counts are usually of one group: skip the lookups then.
        let mut last: Option<(Option<&str>, Family, Counter, u32)> = None;
        for c in counts {
            if c.events == 0 {
                continue;
            }
            let family = Family::of(&c.source);
            let g = match last {
                Some((netns, f, counter, g))
                    if netns == c.netns && f == family && counter == c.counter =>
                {
                    g
                }
                _ => {
                    let g = self.group(c.netns, family, c.counter);
                    last = Some((c.netns, family, c.counter, g));
                    g
                }
            };
            let group = &mut self.groups[g as usize];
            group.sum = group.sum.saturating_add(c.events);
            let key = masked(&c.source, self.config.prefix_v4, self.config.prefix_v6);
            let sum = match family {
                // IPv4 keys fit in 32 bits.
                Family::Ipv4 => self
                    .sums_v4
                    .entry((u64::from(g) << 32) | key as u64)
                    .or_insert(0),
                Family::Ipv6 => self
                    .sums_v6
                    .entry((g, (key >> 64) as u64, key as u64))
                    .or_insert(0),
            };
            *sum = sum.saturating_add(c.events);
        }
        self.select();
        self.output()
    }

    fn begin(&mut self) {
        self.ids.clear();
        self.names.clear();
        self.names.push(None);
        self.group_ids.clear();
        self.groups.clear();
        self.sums_v4.clear();
        self.sums_v6.clear();
        for heap in &mut self.heaps {
            heap.clear();
        }
    }

    fn group(&mut self, netns: Option<&str>, family: Family, counter: Counter) -> u32 {
        let netns = match netns {
            None => 0,
            Some(name) => match self.ids.get(name) {
                Some(id) => *id,
                None => {
                    let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
                    self.ids.insert(name.to_string(), id);
                    self.names.push(Some(name.to_string()));
                    id
                }
            },
        };
        let next = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
        *self
            .group_ids
            .entry((netns, family, counter))
            .or_insert_with(|| {
                self.groups.push(Group {
                    netns,
                    family,
                    counter,
                    total: None,
                    sum: 0,
                });
                next
            })
    }

    /// Bounded heaps of N per group: a candidate replaces the worst kept
    /// entry only if it ranks above it.
    fn select(&mut self) {
        let n = self.config.n;
        if self.heaps.len() < self.groups.len() {
            self.heaps.resize_with(self.groups.len(), BinaryHeap::new);
        }
        let v4 = self
            .sums_v4
            .iter()
            .map(|(&k, &events)| ((k >> 32) as u32, u128::from(k as u32), events));
        let v6 = self
            .sums_v6
            .iter()
            .map(|(&(g, hi, lo), &events)| (g, u128::from(hi) << 64 | u128::from(lo), events));
        for (g, key, events) in v4.chain(v6) {
            let Some(heap) = self.heaps.get_mut(g as usize) else {
                continue;
            };
            let candidate = Reverse((events, Reverse(key)));
            if heap.len() < n {
                heap.push(candidate);
            } else if let Some(mut worst) = heap.peek_mut() {
                // `Reverse`: smaller is better ranked.
                if candidate < *worst {
                    *worst = candidate;
                }
            }
        }
    }

    fn output(&mut self) -> Vec<TopSources> {
        let mut out = Vec::with_capacity(self.groups.len());
        for (g, group) in self.groups.iter().enumerate() {
            let interval_events = group.total.unwrap_or(0).max(group.sum);
            let mut ranked: Vec<(u64, u128)> = match self.heaps.get_mut(g) {
                Some(heap) => heap
                    .drain()
                    .map(|Reverse((e, Reverse(k)))| (e, k))
                    .collect(),
                None => Vec::new(),
            };
            ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let entries = ranked
                .into_iter()
                .map(|(events, key)| TopSource {
                    source: source_text(
                        group.family,
                        key,
                        self.config.prefix_v4,
                        self.config.prefix_v6,
                    ),
                    events,
                    share: share(events, interval_events),
                })
                .collect();
            out.push(TopSources {
                netns: self.names.get(group.netns as usize).cloned().flatten(),
                family: group.family.name(),
                counter: group.counter,
                interval_events,
                entries,
            });
        }
        out
    }
}

fn share(events: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (events as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// The address with the bits past the prefix cleared, as a number (IPv4 in
/// the low 32 bits; the family is the group's).
fn masked(addr: &IpAddr, prefix_v4: u8, prefix_v6: u8) -> u128 {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_v4.min(32)))
                .unwrap_or(0);
            u128::from(u32::from(*a) & mask)
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_v6.min(128)))
                .unwrap_or(0);
            u128::from(*a) & mask
        }
    }
}

/// `203.0.113.7`, or `203.0.113.0/24` when aggregated; the same for IPv6.
fn source_text(family: Family, key: u128, prefix_v4: u8, prefix_v6: u8) -> String {
    match family {
        Family::Ipv4 => {
            let addr = Ipv4Addr::from(u32::try_from(key).unwrap_or(u32::MAX));
            if prefix_v4 >= 32 {
                addr.to_string()
            } else {
                format!("{addr}/{prefix_v4}")
            }
        }
        Family::Ipv6 => {
            let addr = Ipv6Addr::from(key);
            if prefix_v6 >= 128 {
                addr.to_string()
            } else {
                format!("{addr}/{prefix_v6}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map's maximum is what bounds the agent's memory (docs/ebpf.md).
    #[test]
    fn map_entries_are_bounded_where_memory_is_measured() {
        use crate::cli::parse_top_map_entries;
        assert_eq!(parse_top_map_entries("1048576"), Ok(1 << 20));
        assert_eq!(parse_top_map_entries("1024"), Ok(1024));
        for bad in ["1048577", "16777216", "1023"] {
            assert!(parse_top_map_entries(bad).is_err(), "{bad}");
        }
    }

    fn ip(text: &str) -> IpAddr {
        match text.parse() {
            Ok(ip) => ip,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn count<'a>(
        netns: Option<&'a str>,
        counter: Counter,
        src: &str,
        events: u64,
    ) -> SourceCount<'a> {
        SourceCount {
            netns,
            counter,
            source: ip(src),
            events,
        }
    }

    fn syn<'a>(src: &str, events: u64) -> SourceCount<'a> {
        count(None, Counter::SynReceived, src, events)
    }

    fn config(n: usize) -> TopConfig {
        TopConfig {
            n,
            ..TopConfig::default()
        }
    }

    fn entries(list: &TopSources) -> Vec<(&str, u64)> {
        list.entries
            .iter()
            .map(|e| (e.source.as_str(), e.events))
            .collect()
    }

    #[test]
    fn top_n_best_first_with_ties_by_address() {
        let mut r = TopRanker::new(config(3));
        let counts = [
            syn("10.0.0.10", 5),
            syn("10.0.0.2", 5),
            syn("10.0.0.3", 9),
            syn("10.0.0.1", 1),
            syn("10.0.0.9", 5),
        ];
        let top = r.rank(counts, []);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].family, "ipv4");
        assert_eq!(top[0].counter, Counter::SynReceived);
        assert_eq!(top[0].interval_events, 25);
        // Numeric order among the ties: .2 and .9 before .10.
        assert_eq!(
            entries(&top[0]),
            [("10.0.0.3", 9), ("10.0.0.2", 5), ("10.0.0.9", 5)]
        );
        // Input order does not matter.
        let mut reversed = counts;
        reversed.reverse();
        assert_eq!(r.rank(reversed, []), top);
    }

    #[test]
    fn share_is_of_the_interval_total() {
        let mut r = TopRanker::new(config(10));
        let totals = [IntervalTotal {
            netns: None,
            family: Family::Ipv4,
            counter: Counter::SynReceived,
            events: 200,
        }];
        let top = r.rank([syn("192.0.2.1", 50), syn("192.0.2.2", 30)], totals);
        assert_eq!(top[0].interval_events, 200);
        assert_eq!(top[0].entries[0].share, 0.25);
        assert_eq!(top[0].entries[1].share, 0.15);
        // A total below the sources' sum (read at another moment): the sum.
        let totals = [IntervalTotal {
            events: 10,
            ..totals[0]
        }];
        let top = r.rank([syn("192.0.2.1", 50), syn("192.0.2.2", 30)], totals);
        assert_eq!(top[0].interval_events, 80);
        assert_eq!(top[0].entries[0].share, 0.625);
        // Without a total: the sum.
        let top = r.rank([syn("192.0.2.1", 3), syn("192.0.2.2", 1)], []);
        assert_eq!(top[0].entries[0].share, 0.75);
    }

    #[test]
    fn groups_per_namespace_family_and_counter() {
        let mut r = TopRanker::new(config(2));
        let totals = [
            IntervalTotal {
                netns: Some("blue"),
                family: Family::Ipv6,
                counter: Counter::CookieInvalid,
                events: 0,
            },
            IntervalTotal {
                netns: Some("red"),
                family: Family::Ipv4,
                counter: Counter::SynReceived,
                events: 7,
            },
        ];
        let counts = [
            count(Some("red"), Counter::SynReceived, "198.51.100.1", 4),
            count(Some("red"), Counter::CookieValid, "198.51.100.1", 2),
            count(Some("blue"), Counter::SynReceived, "2001:db8::1", 6),
            count(Some("red"), Counter::SynReceived, "198.51.100.2", 3),
            count(None, Counter::SynReceived, "2001:db8::2", 1),
            count(Some("red"), Counter::SynReceived, "198.51.100.3", 0),
        ];
        let top = r.rank(counts, totals);
        let groups: Vec<_> = top
            .iter()
            .map(|t| (t.netns.as_deref(), t.family, t.counter.name(), entries(t)))
            .collect();
        assert_eq!(
            groups,
            [
                // Given a total, no sources: an empty list.
                (Some("blue"), "ipv6", "cookie_invalid", vec![]),
                (
                    Some("red"),
                    "ipv4",
                    "syn_received",
                    vec![("198.51.100.1", 4), ("198.51.100.2", 3)]
                ),
                (
                    Some("red"),
                    "ipv4",
                    "cookie_valid",
                    vec![("198.51.100.1", 2)]
                ),
                (
                    Some("blue"),
                    "ipv6",
                    "syn_received",
                    vec![("2001:db8::1", 6)]
                ),
                (None, "ipv6", "syn_received", vec![("2001:db8::2", 1)]),
            ]
        );
    }

    #[test]
    fn prefix_aggregation_sums_before_ranking() {
        let mut r = TopRanker::new(TopConfig {
            n: 2,
            prefix_v4: 24,
            prefix_v6: 64,
            ..TopConfig::default()
        });
        let counts = [
            // 200 spoofed sources of 203.0.113.0/24, one event each...
            (0..200u64)
                .map(|i| syn(&format!("203.0.113.{i}"), 1))
                .collect::<Vec<_>>(),
            // ...outrank a single heavy address.
            vec![syn("198.51.100.7", 150), syn("198.51.100.8", 1)],
            vec![
                syn("2001:db8:1:2::1", 4),
                syn("2001:db8:1:2:ffff::9", 4),
                syn("2001:db8:1:3::1", 5),
            ],
        ]
        .concat();
        let top = r.rank(counts, []);
        assert_eq!(
            entries(&top[0]),
            [("203.0.113.0/24", 200), ("198.51.100.0/24", 151)]
        );
        assert_eq!(
            entries(&top[1]),
            [("2001:db8:1:2::/64", 8), ("2001:db8:1:3::/64", 5)]
        );
    }

    #[test]
    fn prefix_zero_and_odd_lengths() {
        let mut r = TopRanker::new(TopConfig {
            n: 5,
            prefix_v4: 0,
            prefix_v6: 1,
            ..TopConfig::default()
        });
        let top = r.rank(
            [
                syn("1.2.3.4", 1),
                syn("250.1.1.1", 2),
                syn("ffff::1", 3),
                syn("::1", 4),
            ],
            [],
        );
        assert_eq!(entries(&top[0]), [("0.0.0.0/0", 3)]);
        assert_eq!(entries(&top[1]), [("::/1", 4), ("8000::/1", 3)]);
        // Out-of-range lengths are clamped, never a shift overflow.
        let mut r = TopRanker::new(TopConfig {
            n: 5,
            prefix_v4: 200,
            prefix_v6: 255,
            ..TopConfig::default()
        });
        let top = r.rank([syn("1.2.3.4", 1), syn("::1", 1)], []);
        assert_eq!(entries(&top[0]), [("1.2.3.4", 1)]);
        assert_eq!(entries(&top[1]), [("::1", 1)]);
    }

    #[test]
    fn ipv6_addresses_and_duplicates_are_summed() {
        let mut r = TopRanker::new(config(10));
        let top = r.rank(
            [
                syn("2001:db8::1", 2),
                syn("2001:db8::1", 3),
                syn("::ffff:192.0.2.1", 1),
            ],
            [],
        );
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].family, "ipv6");
        assert_eq!(
            entries(&top[0]),
            [("2001:db8::1", 5), ("::ffff:192.0.2.1", 1)]
        );
    }

    #[test]
    fn zero_turns_it_off() {
        let mut r = TopRanker::new(config(0));
        let totals = [IntervalTotal {
            netns: None,
            family: Family::Ipv4,
            counter: Counter::SynReceived,
            events: 1,
        }];
        assert!(r.rank([syn("192.0.2.1", 1)], totals).is_empty());
    }

    #[test]
    fn saturating_sums() {
        let mut r = TopRanker::new(config(1));
        let top = r.rank([syn("192.0.2.1", u64::MAX), syn("192.0.2.1", 5)], []);
        assert_eq!(top[0].entries[0].events, u64::MAX);
        assert_eq!(top[0].entries[0].share, 1.0);
    }

    /// The heap against a full sort, on many sources with many ties.
    #[test]
    fn matches_a_full_sort() {
        let mut r = TopRanker::new(config(25));
        let counts: Vec<SourceCount> = (0..5000u32)
            .map(|i| SourceCount {
                netns: None,
                counter: Counter::CookieInvalid,
                source: IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))),
                events: u64::from(i.wrapping_mul(40503) % 97),
            })
            .collect();
        let top = r.rank(counts.iter().copied(), []);
        let mut expected: Vec<(u64, u32)> = counts
            .iter()
            .filter(|c| c.events > 0)
            .map(|c| match c.source {
                IpAddr::V4(a) => (c.events, u32::from(a)),
                IpAddr::V6(_) => (0, 0),
            })
            .collect();
        expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let expected: Vec<(String, u64)> = expected
            .iter()
            .take(25)
            .map(|(e, a)| (Ipv4Addr::from(*a).to_string(), *e))
            .collect();
        let got: Vec<(String, u64)> = top[0]
            .entries
            .iter()
            .map(|e| (e.source.clone(), e.events))
            .collect();
        assert_eq!(got, expected);
        // A second round with fewer sources leaves nothing of the first.
        let top = r.rank([count(None, Counter::CookieInvalid, "192.0.2.1", 1)], []);
        assert_eq!(entries(&top[0]), [("192.0.2.1", 1)]);
    }
}
