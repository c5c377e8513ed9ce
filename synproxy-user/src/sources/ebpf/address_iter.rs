//! The per-address counting's kernel side (`--top` N > 0): loading the
//! iterator over `SOURCES`, linking it with the map, and reading it each round.

use super::address_counts::{self, SourceDeltas, SourcesRound};
use super::loader::{map_memlock, map_shared};
use super::shared_array::SharedArray;
use super::EbpfSource;
use aya::maps::Map;
use aya::programs::Iter;
use aya::Ebpf;
use log::warn;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use synproxy_common::source_stats;

/// Per-source counting (`--top` N > 0): the iterator over `SOURCES` and
/// what turns its reads into interval events.
pub(super) struct SourceCounting {
    /// The iterator program's link with the map; each read makes an
    /// iterator from it.
    link: OwnedFd,
    /// `SOURCE_STATS`: entries created, events refused.
    stats: SharedArray,
    deltas: SourceDeltas,
    /// The buffer the iterator's output streams through, kept between rounds.
    records: Vec<u8>,
    capacity: u32,
    map_bytes: u64,
    /// A failed read is said once, until one succeeds.
    failing: bool,
}

impl EbpfSource {
    /// The per-source events since the last round, without disturbing the
    /// round's own deltas (for an attack's start document). None without
    /// per-source counting or when the read failed.
    pub fn peek_sources(&mut self) -> Option<Vec<address_counts::SourceEvents>> {
        let counting = self.sources.as_mut()?;
        counting.deltas.begin();
        let deltas = &mut counting.deltas;
        address_counts::read_iter(counting.link.as_fd(), &mut counting.records, |r| {
            deltas.add(r)
        })
        .ok()?;
        let mut out = Vec::new();
        counting.deltas.peek(&mut out);
        Some(out)
    }

    /// This interval's per-source events (None without per-source counting,
    /// or when the read failed: said once).
    pub(super) fn read_sources(&mut self) -> Option<SourcesRound> {
        let counting = self.sources.as_mut()?;
        counting.deltas.begin();
        let deltas = &mut counting.deltas;
        let read = address_counts::read_iter(counting.link.as_fd(), &mut counting.records, |r| {
            deltas.add(r)
        });
        if let Err(e) = read {
            if !counting.failing {
                warn!("eBPF: cannot read the per-source counts: {e}");
                counting.failing = true;
            }
            return None;
        }
        counting.failing = false;
        let stat = |slot: u32| {
            counting
                .stats
                .u64s()
                .get(slot as usize)
                .map_or(0, |v| v.load(Ordering::Acquire))
        };
        let inserts = stat(source_stats::INSERTS);
        let mut round = SourcesRound {
            capacity: counting.capacity,
            insert_failures: stat(source_stats::INSERT_FAILED),
            map_bytes: counting.map_bytes,
            ..Default::default()
        };
        counting.deltas.finish(inserts, &mut round);
        Some(round)
    }
}

/// Loads the iterator over `SOURCES` and links it with the map.
pub(super) fn open_source_counting(
    ebpf: &mut Ebpf,
    iter_btf_id: Option<u32>,
    capacity: u32,
) -> Result<SourceCounting, String> {
    let btf_id = iter_btf_id.ok_or_else(|| {
        format!(
            "the kernel has no BPF map iterator ({} not in its BTF; Linux 5.9+)",
            address_counts::ITER_TARGET
        )
    })?;
    let stats =
        map_shared(ebpf, "SOURCE_STATS", 8, source_stats::COUNT).map_err(|e| e.to_string())?;
    let map_fd = match ebpf.map("SOURCES") {
        Some(Map::LruHashMap(data)) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("map SOURCES: {e}"))?,
        _ => return Err("map SOURCES missing from the object".into()),
    };
    let program: &mut Iter = ebpf
        .program_mut("spx_sources_iter")
        .ok_or("program spx_sources_iter missing from the object")?
        .try_into()
        .map_err(|e| format!("spx_sources_iter: {e}"))?;
    program
        .load_with_btf_id(btf_id)
        .map_err(|e| format!("loading spx_sources_iter: {e}"))?;
    let prog_fd = program.fd().map_err(|e| format!("spx_sources_iter: {e}"))?;
    let link = address_counts::attach_map_iter(prog_fd.as_fd(), map_fd.as_fd())
        .map_err(|e| format!("linking spx_sources_iter with SOURCES: {e}"))?;
    let map_bytes = map_memlock(map_fd.as_fd());
    Ok(SourceCounting {
        link,
        stats,
        deltas: SourceDeltas::new(capacity),
        records: Vec::new(),
        capacity,
        map_bytes,
        failing: false,
    })
}
