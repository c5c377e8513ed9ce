//! Per-destination-port counts (`--top-ports`): reads of the agent's table of
//! ports (filled from the programs' event log, see `count_table`).
//!
//! A round takes each entry's growth from the table itself ([`PortsRound`]).
//! A read between rounds gives each entry's events since it was created and
//! when ([`PortTotal`], sorted by key); the attack detector turns two of them
//! into deltas with [`port_deltas`]. An entry evicted that came back has
//! another creation stamp and counts from 0. Entries are keyed by the namespace's (inode or cookie
//! stand-in, cookie), not by its slot, so a namespace's slot changes do not
//! touch them.

use super::address_counts::interval_events;
use super::ns_slots::NsKey;
use synproxy_common::{Counter, PortKey, SourceValue, FAMILY_IPV4, FAMILY_IPV6};

/// One `PORTS` entry as read: a namespace's events of one counter, family
/// and destination port since the entry was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortTotal {
    /// The namespace as [`crate::sources::ebpf::CountsView`] keys it.
    pub ns: NsKey,
    pub counter: Counter,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// The destination port (host byte order).
    pub port: u16,
    /// Events since `born`.
    pub events: u64,
    /// When the entry was created (`bpf_ktime_get_ns`): another value means
    /// the entry was evicted and created again, and `events` restarted at 0.
    pub born: u64,
}

impl PortTotal {
    /// The order reads are sorted in (and what identifies an entry).
    pub fn key(&self) -> (NsKey, Counter, u8, u16) {
        (self.ns, self.counter, self.family, self.port)
    }
}

/// One port's events of one counter and family in one namespace between two
/// reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEvents {
    pub ns: NsKey,
    pub counter: Counter,
    pub family: u8,
    pub port: u16,
    pub events: u64,
}

/// One round's read of the per-port table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortsRound {
    /// Ports with events in the interval (sorted by namespace, counter,
    /// family, port).
    pub events: Vec<PortEvents>,
    /// Entries in the table now.
    pub entries: u64,
    /// The table's size (`--top-ports-map-entries`).
    pub capacity: u32,
    /// Entries the table evicted since load.
    pub evictions: u64,
    /// Events whose record the event log dropped (a full ring), since load.
    pub insert_failures: u64,
    /// Kernel memory of the event log (memlock), bytes.
    pub map_bytes: u64,
}

/// A table entry as read; None for a counter or family the programs do not
/// log.
pub fn port_total(key: &PortKey, value: &SourceValue) -> Option<PortTotal> {
    if key.family != FAMILY_IPV4 && key.family != FAMILY_IPV6 {
        return None;
    }
    Some(PortTotal {
        ns: (key.netns, key.cookie),
        counter: Counter::from_u8(key.counter)?,
        family: key.family,
        // As in the packet (network order).
        port: u16::from_be(key.port),
        events: value.events,
        born: value.born,
    })
}

/// Sorts a read by key and keeps one record per key (the map can change
/// under the iterator, which may then meet an entry twice: the later record
/// wins, it has the most events).
pub fn sort_read(read: &mut Vec<PortTotal>) {
    read.sort_by_key(PortTotal::key);
    // dedup_by keeps the first of a run: move the last one there first.
    read.reverse();
    read.dedup_by_key(|t| t.key());
    read.reverse();
}

/// The events of each entry of `current` since `previous` (both sorted by
/// [`PortTotal::key`], as [`sort_read`] leaves them), into `out` (cleared
/// first); entries without events are left out. An entry absent from
/// `previous`, or created again since (another `born`), counts all its
/// events. Entries only in `previous` were evicted: their events after the
/// previous read are lost to the per-port counts (not to the totals).
pub fn port_deltas(previous: &[PortTotal], current: &[PortTotal], out: &mut Vec<PortEvents>) {
    out.clear();
    let mut p = 0;
    for now in current {
        let key = now.key();
        while previous.get(p).is_some_and(|e| e.key() < key) {
            p += 1;
        }
        let before = previous
            .get(p)
            .filter(|e| e.key() == key)
            .map(|e| SourceValue {
                events: e.events,
                born: e.born,
            });
        let value = SourceValue {
            events: now.events,
            born: now.born,
        };
        let events = interval_events(before.as_ref(), &value);
        if events > 0 {
            out.push(PortEvents {
                ns: now.ns,
                counter: now.counter,
                family: now.family,
                port: now.port,
                events,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(port: u16, events: u64, born: u64) -> PortTotal {
        PortTotal {
            ns: (9, 7),
            counter: Counter::SynReceived,
            family: FAMILY_IPV4,
            port,
            events,
            born,
        }
    }

    #[test]
    fn entries_read_with_the_port_in_host_order() {
        let key = PortKey {
            cookie: 7,
            netns: 9,
            counter: Counter::CookieInvalid as u8,
            family: FAMILY_IPV6,
            port: 8080u16.to_be(),
        };
        let value = SourceValue {
            events: 12,
            born: 99,
        };
        assert_eq!(
            port_total(&key, &value),
            Some(PortTotal {
                ns: (9, 7),
                counter: Counter::CookieInvalid,
                family: FAMILY_IPV6,
                port: 8080,
                events: 12,
                born: 99,
            })
        );
        let bad_family = PortKey { family: 5, ..key };
        assert_eq!(port_total(&bad_family, &value), None);
        let bad_counter = PortKey { counter: 9, ..key };
        assert_eq!(port_total(&bad_counter, &value), None);
    }

    #[test]
    fn deltas_follow_growth_new_entries_and_recreation() {
        let previous = vec![total(80, 5, 1), total(443, 10, 1), total(8080, 3, 1)];
        // 80 grew by 2, 443 unchanged, 8080 evicted and back with 1 (born
        // 4), 9000 new with 6; an entry only in `previous` (none here) and
        // unchanged entries give nothing.
        let current = vec![
            total(80, 7, 1),
            total(443, 10, 1),
            total(8080, 1, 4),
            total(9000, 6, 5),
        ];
        let mut out = vec![PortEvents {
            ns: (0, 0),
            counter: Counter::CookieValid,
            family: 0,
            port: 0,
            events: 0,
        }];
        port_deltas(&previous, &current, &mut out);
        let got: Vec<(u16, u64)> = out.iter().map(|e| (e.port, e.events)).collect();
        assert_eq!(got, vec![(80, 2), (8080, 1), (9000, 6)]);
        port_deltas(&[], &current, &mut out);
        assert_eq!(out.iter().map(|e| e.events).sum::<u64>(), 24);
    }

    #[test]
    fn keys_differ_by_namespace_counter_and_family() {
        let a = total(80, 5, 1);
        let b = PortTotal { ns: (9, 8), ..a };
        let c = PortTotal {
            counter: Counter::CookieValid,
            ..a
        };
        let d = PortTotal {
            family: FAMILY_IPV6,
            ..a
        };
        let mut read = vec![d, c, b, a];
        sort_read(&mut read);
        let mut out = Vec::new();
        port_deltas(&[a], &read, &mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out.iter().all(|e| e.events == 5));
    }

    #[test]
    fn a_key_read_twice_counts_once_with_its_last_value() {
        let mut read = vec![total(80, 5, 1), total(443, 1, 1), total(80, 6, 1)];
        sort_read(&mut read);
        assert_eq!(read, vec![total(80, 6, 1), total(443, 1, 1)]);
    }
}
