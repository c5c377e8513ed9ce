//! [`TopRanker`]: groups the interval's per-address counts by namespace,
//! family and counter, sums them into prefixes, and keeps the top N of each
//! group in a bounded heap (see the parent module for the rules).

use super::{Family, IntervalTotal, SourceCount, TopConfig, MAX_TOP};
use crate::sample::{TopSource, TopSources};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use synproxy_common::Counter;

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
                ..config
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
