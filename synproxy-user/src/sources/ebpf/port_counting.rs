//! Per-port counting (`--top-ports` N > 0): the agent's table of ports,
//! filled from the event log, read once per round and whenever the attack
//! detector asks between rounds.

use super::count_table::CountTable;
use super::port_counts::{self, PortDeltas, PortTotal, PortsRound};
use super::EbpfSource;
use synproxy_common::PortKey;

/// Per-port counting: the table and the round's deltas.
pub(super) struct PortCounting {
    pub(super) table: CountTable<PortKey>,
    deltas: PortDeltas,
    /// The round's read (swapped with the kept previous one).
    round_read: Vec<PortTotal>,
    /// The latest read for [`EbpfSource::read_port_totals`].
    totals: Vec<PortTotal>,
    capacity: u32,
    /// The slot of the last key counted: a flood hits one port, so most
    /// events need no hash lookup.
    last: usize,
}

impl PortCounting {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            table: CountTable::new(capacity),
            deltas: PortDeltas::default(),
            round_read: Vec::new(),
            totals: Vec::new(),
            capacity,
            last: 0,
        }
    }

    /// One logged event with a port: its record's namespace word and
    /// [`synproxy_common::logged_meta`] word (the key's words).
    #[inline(always)]
    pub(super) fn add(&mut self, cookie: u64, meta: u64) {
        let key = [cookie, meta, 0, 0];
        if !self.table.bump(self.last, &key) {
            self.last = self.table.add_words(key);
        }
    }

    /// The table into `out`, sorted by key.
    fn read_into(table: &CountTable<PortKey>, out: &mut Vec<PortTotal>) {
        out.clear();
        out.extend(
            table
                .iter()
                .filter_map(|(key, value)| port_counts::port_total(&key, &value)),
        );
        port_counts::sort_read(out);
    }
}

impl EbpfSource {
    /// This interval's per-port events (None without per-port counting).
    pub(super) fn read_ports(&mut self) -> Option<PortsRound> {
        self.drain_log();
        let dropped = self.log_dropped();
        let log_bytes = self.log_bytes;
        let counting = self.ports.as_mut()?;
        PortCounting::read_into(&counting.table, &mut counting.round_read);
        let mut round = PortsRound {
            capacity: counting.capacity,
            insert_failures: dropped,
            map_bytes: log_bytes,
            ..Default::default()
        };
        let inserts = counting.table.inserts();
        counting
            .deltas
            .finish(&mut counting.round_read, inserts, &mut round);
        Some(round)
    }

    /// The per-port counts now, for readers between rounds (the attack
    /// detector): each entry's events since it was created, sorted by
    /// [`PortTotal::key`]; turn two reads into deltas with
    /// [`port_counts::port_deltas`]. Into a buffer kept for the next call.
    /// None without per-port counting (`--top-ports 0`).
    pub fn read_port_totals(&mut self) -> Option<&[PortTotal]> {
        self.drain_log();
        let counting = self.ports.as_mut()?;
        PortCounting::read_into(&counting.table, &mut counting.totals);
        Some(&counting.totals)
    }

    /// Whether the probes count per destination port.
    pub fn counts_ports(&self) -> bool {
        self.ports.is_some()
    }
}
