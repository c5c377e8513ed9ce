//! Per-address counts (`--top`): what a round reports of the agent's table of
//! sources (filled from the programs' event log, see `count_table`), and the
//! keys' addresses. Evicted entries are counted as entries created minus
//! entries present.

use super::ns_slots::NsKey;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use synproxy_common::{Counter, SourceKey, SourceValue, FAMILY_IPV4, FAMILY_IPV6};

/// One source's events of one counter in one namespace during the interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceEvents {
    pub ns: NsKey,
    pub counter: Counter,
    pub source: IpAddr,
    pub events: u64,
}

/// One round's read of the per-source table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcesRound {
    /// Sources with events in the interval (any order).
    pub events: Vec<SourceEvents>,
    /// Entries in the table now.
    pub entries: u64,
    /// The table's size (`--top-map-entries`).
    pub capacity: u32,
    /// Entries the table evicted since load (their events after the previous
    /// round are in the namespace's totals but in no source's count).
    pub evictions: u64,
    /// Events whose record the event log dropped (a full ring), since load:
    /// in the totals, in no source's or port's count.
    pub insert_failures: u64,
    /// Kernel memory of the event log (memlock), bytes.
    pub map_bytes: u64,
}

/// The address of a key, by its family; None for a family the programs do
/// not write.
pub fn source_addr(key: &SourceKey) -> Option<IpAddr> {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&key.addr[0].to_ne_bytes());
    bytes[8..].copy_from_slice(&key.addr[1].to_ne_bytes());
    match key.family {
        FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => None,
    }
}

/// [`SourceKey::addr`] of an address as the programs store it.
pub fn key_addr(addr: IpAddr) -> [u64; 2] {
    let bytes = match addr {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    [word(0), word(8)]
}

/// Events of an entry since the previous read: the growth of the same
/// entry, or all of it for an entry created since (new, or evicted and
/// created again: another `born`).
pub fn interval_events(previous: Option<&SourceValue>, now: &SourceValue) -> u64 {
    match previous {
        Some(p) if p.born == now.born => now.events.saturating_sub(p.events),
        _ => now.events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_events_follow_the_entry() {
        let v = |events, born| SourceValue { events, born };
        assert_eq!(interval_events(None, &v(5, 1)), 5);
        assert_eq!(interval_events(Some(&v(5, 1)), &v(8, 1)), 3);
        // Evicted and created again: counts from 0, even past the old count.
        assert_eq!(interval_events(Some(&v(5, 1)), &v(9, 2)), 9);
        assert_eq!(interval_events(Some(&v(5, 1)), &v(2, 2)), 2);
    }

    #[test]
    fn addresses_go_through_keys_unchanged() {
        for addr in ["203.0.113.9", "2001:db8::1"] {
            let ip: IpAddr = addr.parse().unwrap();
            let key = SourceKey {
                family: if ip.is_ipv4() {
                    FAMILY_IPV4
                } else {
                    FAMILY_IPV6
                },
                addr: key_addr(ip),
                ..SourceKey::default()
            };
            assert_eq!(source_addr(&key), Some(ip));
        }
    }
}
