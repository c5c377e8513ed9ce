//! The per-port counting's kernel side (`--top-ports` N > 0): loading the
//! iterator over `PORTS`, linking it with the map, and reading it, once per
//! round and whenever the attack detector asks between rounds.

use super::address_counts;
use super::loader::{map_memlock, map_shared};
use super::port_counts::{self, PortDeltas, PortTotal, PortsRound};
use super::shared_array::SharedArray;
use super::EbpfSource;
use aya::maps::Map;
use aya::programs::Iter;
use aya::Ebpf;
use log::warn;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use synproxy_common::{port_stats, PORT_RECORD_LEN};

/// Per-port counting: the iterator over `PORTS` and the round's deltas.
pub(super) struct PortCounting {
    link: OwnedFd,
    /// `PORT_STATS`: entries created, events refused.
    stats: SharedArray,
    deltas: PortDeltas,
    /// The round's read (swapped with the kept previous one).
    round_read: Vec<PortTotal>,
    /// The latest read for [`EbpfSource::read_port_totals`].
    totals: Vec<PortTotal>,
    /// The buffer the iterator's output streams through.
    records: Vec<u8>,
    capacity: u32,
    map_bytes: u64,
    failing: bool,
}

impl PortCounting {
    /// Records kept from one pass: the map's size and a quarter more (entries
    /// a pass meets twice, or created under it).
    fn limit(&self) -> usize {
        let capacity = self.capacity as usize;
        capacity + capacity / 4
    }

    /// One pass of the iterator into `out`, sorted by key.
    fn read_into(&mut self, which: Which) -> std::io::Result<()> {
        let limit = self.limit();
        let out = match which {
            Which::Round => &mut self.round_read,
            Which::Totals => &mut self.totals,
        };
        out.clear();
        let read = address_counts::read_iter_of(
            self.link.as_fd(),
            PORT_RECORD_LEN,
            &mut self.records,
            |r| {
                if out.len() < limit {
                    if let Some(t) = port_counts::parse_port_record(r) {
                        out.push(t);
                    }
                }
            },
        );
        port_counts::sort_read(out);
        match read {
            Ok(()) => {
                self.failing = false;
                Ok(())
            }
            Err(e) => {
                if !self.failing {
                    warn!("eBPF: cannot read the per-port counts: {e}");
                    self.failing = true;
                }
                Err(e)
            }
        }
    }

    fn stat(&self, slot: u32) -> u64 {
        self.stats
            .u64s()
            .get(slot as usize)
            .map_or(0, |v| v.load(Ordering::Acquire))
    }
}

#[derive(Clone, Copy)]
enum Which {
    Round,
    Totals,
}

impl EbpfSource {
    /// This interval's per-port events (None without per-port counting, or
    /// when the read failed: said once).
    pub(super) fn read_ports(&mut self) -> Option<PortsRound> {
        let counting = self.ports.as_mut()?;
        counting.read_into(Which::Round).ok()?;
        let mut round = PortsRound {
            capacity: counting.capacity,
            insert_failures: counting.stat(port_stats::INSERT_FAILED),
            map_bytes: counting.map_bytes,
            ..Default::default()
        };
        let inserts = counting.stat(port_stats::INSERTS);
        counting
            .deltas
            .finish(&mut counting.round_read, inserts, &mut round);
        Some(round)
    }

    /// The per-port counts now, for readers between rounds (the attack
    /// detector): each `PORTS` entry's events since it was created, sorted by
    /// [`PortTotal::key`]; turn two reads into deltas with
    /// [`port_counts::port_deltas`]. One iterator pass (no map syscalls), into
    /// a buffer kept for the next call. None without per-port counting
    /// (`--top-ports 0`, or the iterator could not be set up) or when the
    /// read failed (said once).
    pub fn read_port_totals(&mut self) -> Option<&[PortTotal]> {
        let counting = self.ports.as_mut()?;
        counting.read_into(Which::Totals).ok()?;
        Some(&counting.totals)
    }

    /// Whether the probes count per destination port.
    pub fn counts_ports(&self) -> bool {
        self.ports.is_some()
    }
}

/// Loads the iterator over `PORTS` and links it with the map.
pub(super) fn open_port_counting(
    ebpf: &mut Ebpf,
    iter_btf_id: Option<u32>,
    capacity: u32,
) -> Result<PortCounting, String> {
    let btf_id = iter_btf_id.ok_or_else(|| {
        format!(
            "the kernel has no BPF map iterator ({} not in its BTF; Linux 5.9+)",
            address_counts::ITER_TARGET
        )
    })?;
    let stats = map_shared(ebpf, "PORT_STATS", 8, port_stats::COUNT).map_err(|e| e.to_string())?;
    let map_fd = match ebpf.map("PORTS") {
        Some(Map::LruHashMap(data)) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("map PORTS: {e}"))?,
        _ => return Err("map PORTS missing from the object".into()),
    };
    let program: &mut Iter = ebpf
        .program_mut("spx_ports_iter")
        .ok_or("program spx_ports_iter missing from the object")?
        .try_into()
        .map_err(|e| format!("spx_ports_iter: {e}"))?;
    program
        .load_with_btf_id(btf_id)
        .map_err(|e| format!("loading spx_ports_iter: {e}"))?;
    let prog_fd = program.fd().map_err(|e| format!("spx_ports_iter: {e}"))?;
    let link = address_counts::attach_map_iter(prog_fd.as_fd(), map_fd.as_fd())
        .map_err(|e| format!("linking spx_ports_iter with PORTS: {e}"))?;
    let map_bytes = map_memlock(map_fd.as_fd());
    Ok(PortCounting {
        link,
        stats,
        deltas: PortDeltas::default(),
        round_read: Vec::new(),
        totals: Vec::new(),
        records: Vec::new(),
        capacity,
        map_bytes,
        failing: false,
    })
}
