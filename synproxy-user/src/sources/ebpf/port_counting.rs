//! Per-port counting (`--top-ports` N > 0): the agent's table of ports,
//! filled from the event log, read once per round and whenever the attack
//! detector asks between rounds.

use super::count_table::CountTable;
use super::port_counts::{self, PortEvents, PortTotal, PortsRound};
use super::EbpfSource;
use synproxy_common::PortKey;

/// Per-port counting: the table and the reads between rounds.
pub(super) struct PortCounting {
    pub(super) table: CountTable<PortKey>,
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

    /// The round's events per port into `out` (sorted by namespace, counter,
    /// family and port), and the table's fill.
    fn take_round(&mut self, out: &mut PortsRound) {
        let events = &mut out.events;
        self.table.take_interval(|key, n| {
            let value = synproxy_common::SourceValue { events: n, born: 0 };
            events.extend(port_counts::port_total(key, &value).map(|t| PortEvents {
                ns: t.ns,
                counter: t.counter,
                family: t.family,
                port: t.port,
                events: n,
            }));
        });
        events.sort_unstable_by_key(|e| (e.ns, e.counter, e.family, e.port));
        out.capacity = self.capacity;
        out.entries = self.table.len() as u64;
        out.evictions = self.table.evictions();
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
        let mut round = PortsRound {
            insert_failures: dropped,
            map_bytes: log_bytes,
            ..Default::default()
        };
        self.ports.as_mut()?.take_round(&mut round);
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

#[cfg(test)]
mod tests {
    use super::*;
    use synproxy_common::{logged_meta, Counter, FAMILY_IPV4};

    fn add(c: &mut PortCounting, port: u16, n: u64) {
        for _ in 0..n {
            c.add(
                7,
                logged_meta(9, Counter::SynReceived as u8, FAMILY_IPV4, port.to_be()),
            );
        }
    }

    #[test]
    fn rounds_sum_to_the_counts_and_report_evictions() {
        let mut c = PortCounting::new(2);
        let mut round = PortsRound::default();
        add(&mut c, 80, 3);
        c.take_round(&mut round);
        assert_eq!(round.events.len(), 1);
        assert_eq!((round.entries, round.evictions), (1, 0));
        let mut round = PortsRound::default();
        add(&mut c, 80, 4);
        add(&mut c, 443, 2);
        c.take_round(&mut round);
        assert_eq!(round.events.iter().map(|e| e.events).sum::<u64>(), 6);
        assert_eq!(
            round.events.iter().map(|e| e.port).collect::<Vec<_>>(),
            vec![80, 443],
            "sorted, ports in host order"
        );
        // 8080 takes the place of one not counted since the hand passed: one
        // eviction, never fewer later.
        let mut round = PortsRound::default();
        add(&mut c, 8080, 1);
        c.take_round(&mut round);
        assert_eq!(round.events.len(), 1);
        assert_eq!((round.entries, round.evictions), (2, 1));
        let mut round = PortsRound::default();
        c.take_round(&mut round);
        assert!(round.events.is_empty());
        assert_eq!(round.evictions, 1);
    }
}
