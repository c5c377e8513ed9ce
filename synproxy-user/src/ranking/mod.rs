//! Ranking client addresses: from the interval's per-address event counts to
//! the [`TopSources`](crate::sample::TopSources) lists of the snapshot, the
//! top N per namespace, family and counter by events in the interval. Pure:
//! the kernel-side reader feeds it.
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

pub mod ports;
mod ranker;
#[cfg(test)]
mod tests;

pub use ranker::TopRanker;

use std::net::IpAddr;
use synproxy_common::Counter;

/// `--top` default.
pub const DEFAULT_TOP: usize = 10;
/// `--top` upper bound: N series per namespace, family and counter on /metrics.
pub const MAX_TOP: usize = 1000;
/// `--top-ports` default.
pub const DEFAULT_TOP_PORTS: usize = 5;
/// `--top-ports` upper bound: N series per namespace and counter on /metrics.
pub const MAX_TOP_PORTS: usize = 100;
/// `--top-ports-map-entries` bounds (32 bytes of key and value an entry).
pub const MIN_TOP_PORTS_MAP_ENTRIES: u32 = 256;
pub const MAX_TOP_PORTS_MAP_ENTRIES: u32 = 1 << 20;
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
    /// Ports per namespace and counter (`--top-ports`); 0 turns per-port
    /// counting off.
    pub ports: usize,
    /// Entries of the kernel's per-port map (`--top-ports-map-entries`).
    pub port_map_entries: u32,
}

impl Default for TopConfig {
    fn default() -> Self {
        Self {
            n: DEFAULT_TOP,
            prefix_v4: 32,
            prefix_v6: 128,
            map_entries: synproxy_common::SOURCES_DEFAULT_ENTRIES,
            ports: DEFAULT_TOP_PORTS,
            port_map_entries: synproxy_common::PORTS_DEFAULT_ENTRIES,
        }
    }
}

impl TopConfig {
    /// From `--top`, `--top-prefix-v4`, `--top-prefix-v6` and `--top-map-entries`.
    pub fn new(n: usize, prefix_v4: u8, prefix_v6: u8, map_entries: u32) -> Self {
        Self {
            n,
            prefix_v4,
            prefix_v6,
            map_entries,
            ..Self::default()
        }
    }

    /// With `--top-ports` and `--top-ports-map-entries`.
    pub fn with_ports(self, ports: usize, port_map_entries: u32) -> Self {
        Self {
            ports,
            port_map_entries,
            ..self
        }
    }

    pub fn enabled(&self) -> bool {
        self.n > 0
    }

    /// Whether the probes count per destination port.
    pub fn ports_enabled(&self) -> bool {
        self.ports > 0
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
