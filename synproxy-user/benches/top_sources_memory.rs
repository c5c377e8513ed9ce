//! User-space memory of per-source counting under a spoofed-source flood,
//! with the largest map `--top-map-entries` accepts: N synthetic records per
//! round (every entry a distinct source with new events, the worst case)
//! through the agent's own code path: the table of sources the event log
//! fills ([`CountTable`]), the round's events taken from it, and the ranking
//! ([`TopRanker`], `--top 10`, each address alone). A counting global
//! allocator gives the peak heap of a round above what was allocated before
//! it; printed per entry, for IPv4 and IPv6 sources (IPv6 keys are larger in
//! the ranking), with the process's peak RSS.
//!
//! `cargo bench -p synproxy-user --bench top_sources_memory [-- ENTRIES]`;
//! fails when a full map needs more than the documented figures (docs/ebpf.md).
//! (allocation sizes do not depend on the build profile: `cargo test
//! --bench top_sources_memory` gives the same figures, slower).
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use synproxy_common::{Counter, SourceKey, FAMILY_IPV4, FAMILY_IPV6};
use synproxy_user::ranking::{SourceCount, TopConfig, TopRanker, MAX_TOP_MAP_ENTRIES};
use synproxy_user::sources::ebpf::address_counts::{key_addr, source_addr, SourceEvents};
use synproxy_user::sources::ebpf::count_table::CountTable;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc` and `dealloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as if old and new existed at once, as in a moving realloc.
            let now = CURRENT.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The key of the flood's `j`th source.
fn key(j: u64, v6: bool) -> SourceKey {
    let addr: IpAddr = if v6 {
        IpAddr::V6(std::net::Ipv6Addr::from(
            0x2001_0db8_u128 << 96 | u128::from(j),
        ))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::from(0x6440_0000 | j as u32))
    };
    SourceKey {
        cookie: 1,
        netns: 4026531840,
        counter: Counter::SynReceived as u8,
        family: if v6 { FAMILY_IPV6 } else { FAMILY_IPV4 },
        _pad: [0; 2],
        addr: key_addr(addr),
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Peak heap bytes of the worst of 3 rounds of `n` entries, above the heap
/// before the first.
fn measure(n: u32, v6: bool) -> usize {
    let mut table = CountTable::new(n);
    let mut ranker = TopRanker::new(TopConfig {
        n: 10,
        prefix_v4: 32,
        prefix_v6: 128,
        map_entries: n,
        ..TopConfig::default()
    });
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    for round in 0..3 {
        // The round's logged events: every source again (in a scattered
        // order), a few of them more than once.
        for i in 0..u64::from(n) {
            let j = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % u64::from(n);
            for _ in 0..=(j + round) % 3 {
                table.add(key(j, v6));
            }
        }
        // The round's events per source, as the agent takes them.
        let mut events = Vec::new();
        table.take_interval(|key, n| {
            events.push(SourceEvents {
                ns: (key.netns, key.cookie),
                counter: Counter::SynReceived,
                source: source_addr(key).unwrap(),
                events: n,
            })
        });
        assert_eq!(events.len(), n as usize, "every entry has events");
        // As the sampler: namespace labels, then the ranking.
        let labels: HashMap<(u32, u64), Option<&str>> =
            HashMap::from([((4026531840, 1), Some("flood"))]);
        let counts = events.iter().filter_map(|e| {
            Some(SourceCount {
                netns: *labels.get(&e.ns)?,
                counter: e.counter,
                source: e.source,
                events: e.events,
            })
        });
        let top = ranker.rank(counts, std::iter::empty());
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].entries.len(), 10);
    }
    PEAK.load(Ordering::Relaxed) - base
}

fn main() {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u32>().ok())
        .unwrap_or(MAX_TOP_MAP_ENTRIES);
    for (v6, family, bound) in [(false, "ipv4", 180), (true, "ipv6", 221)] {
        let peak = measure(n, v6);
        println!(
            "top-sources memory: {n} entries, {family} sources: peak heap {:.1} MiB per round = {:.0} bytes per entry; peak RSS so far {} MiB",
            peak as f64 / f64::from(1 << 20),
            peak as f64 / f64::from(n),
            peak_rss_kib() / 1024
        );
        // The documented figures (docs/ebpf.md) (allocation sizes are deterministic): a
        // change that needs more fails here.
        let per_entry = peak as f64 / f64::from(n);
        assert!(
            n < MAX_TOP_MAP_ENTRIES || per_entry < f64::from(bound) + 1.0,
            "{family}: {per_entry:.1} bytes per entry, docs/ebpf.md says at most {bound}"
        );
    }
}
