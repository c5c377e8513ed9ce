//! Per-source counts (`--top`): the kernel-side `SOURCES` LRU hash, read
//! once per round through a BPF map-element iterator (`spx_sources_iter`):
//! one `read()` of an iterator fd walks the map in the kernel. A map lookup
//! syscall per entry would be slower, and while a CPU is inside one the
//! kernel skips every kprobe program on that CPU, so the reads would cost
//! counted events.
//!
//! Each entry holds the events since it was created and when it was created.
//! The reader keeps the previous round's entries and turns them into the
//! interval's events per source ([`interval_events`]); an entry the LRU
//! evicted and that came back has another creation time and counts from 0.
//! Evicted entries are counted as entries created minus entries present.

use super::ns_slots::NsKey;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use synproxy_common::{
    Counter, SourceKey, SourceValue, FAMILY_IPV4, FAMILY_IPV6, SOURCE_RECORD_LEN,
};

/// The kernel function whose BTF id an iterator over map elements loads against.
pub const ITER_TARGET: &str = "bpf_iter_bpf_map_elem";

/// One source's events of one counter in one namespace during the interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceEvents {
    pub ns: NsKey,
    pub counter: Counter,
    pub source: IpAddr,
    pub events: u64,
}

/// One round's read of the per-source map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcesRound {
    /// Sources with events in the interval (any order).
    pub events: Vec<SourceEvents>,
    /// Entries in the map now.
    pub entries: u64,
    /// The map's size (`--top-map-entries`).
    pub capacity: u32,
    /// Entries the LRU evicted since load (their events after the previous
    /// read are in the namespace's totals but in no source's count).
    pub evictions: u64,
    /// Events the map had no room for (a new entry refused), since load.
    pub insert_failures: u64,
    /// Kernel memory the map pins (memlock), bytes.
    pub map_bytes: u64,
}

/// A record the iterator wrote: key, then value, native byte order.
pub fn parse_record(record: &[u8]) -> Option<(SourceKey, SourceValue)> {
    if record.len() != SOURCE_RECORD_LEN {
        return None;
    }
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(record.get(at..at + 8)?.try_into().ok()?))
    };
    let key = SourceKey {
        cookie: u64_at(0)?,
        netns: u32::from_ne_bytes(record.get(8..12)?.try_into().ok()?),
        counter: *record.get(12)?,
        family: *record.get(13)?,
        _pad: [0; 2],
        addr: [u64_at(16)?, u64_at(24)?],
    };
    let value = SourceValue {
        events: u64_at(32)?,
        born: u64_at(40)?,
    };
    Some((key, value))
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

/// Turns successive reads of the map into interval events; keeps its maps
/// between rounds (cleared, not freed).
#[derive(Debug, Default)]
pub struct SourceDeltas {
    previous: HashMap<SourceKey, SourceValue>,
    current: HashMap<SourceKey, SourceValue>,
    /// Largest eviction count reported (entries created and entries present
    /// are read at slightly different moments: never report fewer).
    evictions: u64,
}

impl SourceDeltas {
    /// Folds one read (records of [`SOURCE_RECORD_LEN`] bytes) into
    /// interval events; `inserts` is the programs' count of created entries.
    pub fn fold(&mut self, records: &[u8], inserts: u64, out: &mut SourcesRound) {
        self.current.clear();
        for record in records.chunks_exact(SOURCE_RECORD_LEN) {
            let Some((key, value)) = parse_record(record) else {
                continue;
            };
            let events = interval_events(self.previous.get(&key), &value);
            self.current.insert(key, value);
            if events == 0 {
                continue;
            }
            let (Some(counter), Some(source)) = (Counter::from_u8(key.counter), source_addr(&key))
            else {
                continue;
            };
            out.events.push(SourceEvents {
                ns: (key.netns, key.cookie),
                counter,
                source,
                events,
            });
        }
        std::mem::swap(&mut self.previous, &mut self.current);
        out.entries = self.previous.len() as u64;
        self.evictions = self.evictions.max(inserts.saturating_sub(out.entries));
        out.evictions = self.evictions;
    }
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 64]) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-filled bpf_attr prefix of the command's layout,
    // valid for the call; the kernel reads at most its size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| std::io::Error::other("bpf() returned no fd"))?;
    // SAFETY: on success these commands return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_CREATE` of a loaded map-element iterator program with its map
/// (`bpf_iter_link_info.map.map_fd`).
pub fn attach_map_iter(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let link_info: u32 = map.as_raw_fd() as u32;
    let mut attr = [0u8; 64];
    // link_create: prog_fd @0, target_fd @4, attach_type @8, flags @12,
    // iter_info (u64 pointer) @16, iter_info_len @24.
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    let attach_type = aya_obj::generated::bpf_attach_type::BPF_TRACE_ITER as u32;
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    attr[16..24].copy_from_slice(&(&link_info as *const u32 as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&4u32.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// Reads one full pass of the iterator behind `link` into `buf` (cleared first).
pub fn read_iter(link: BorrowedFd<'_>, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    let iter = bpf(BPF_ITER_CREATE, &mut attr)?;
    let mut file = std::fs::File::from(iter);
    buf.clear();
    std::io::Read::read_to_end(&mut file, buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &SourceKey, value: &SourceValue) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&key.cookie.to_ne_bytes());
        r.extend_from_slice(&key.netns.to_ne_bytes());
        r.push(key.counter);
        r.push(key.family);
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&key.addr[0].to_ne_bytes());
        r.extend_from_slice(&key.addr[1].to_ne_bytes());
        r.extend_from_slice(&value.events.to_ne_bytes());
        r.extend_from_slice(&value.born.to_ne_bytes());
        r
    }

    fn v4_key(last: u8, counter: Counter) -> SourceKey {
        let addr = key_addr(IpAddr::V4(Ipv4Addr::new(203, 0, 113, last)));
        SourceKey {
            cookie: 7,
            netns: 9,
            counter: counter as u8,
            family: FAMILY_IPV4,
            _pad: [0; 2],
            addr,
        }
    }

    #[test]
    fn records_parse_back() {
        let key = v4_key(5, Counter::CookieValid);
        let value = SourceValue {
            events: 12,
            born: 99,
        };
        let r = record(&key, &value);
        assert_eq!(r.len(), SOURCE_RECORD_LEN);
        assert_eq!(parse_record(&r), Some((key, value)));
        assert_eq!(parse_record(&r[1..]), None);
        assert_eq!(
            source_addr(&key),
            Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)))
        );
        let mut v6 = key;
        v6.family = FAMILY_IPV6;
        v6.addr = key_addr("2001:db8::1".parse().unwrap());
        assert_eq!(source_addr(&v6), Some("2001:db8::1".parse().unwrap()));
        v6.family = 0;
        assert_eq!(source_addr(&v6), None);
    }

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
    fn deltas_over_rounds_sum_to_the_counts() {
        let a = v4_key(1, Counter::SynReceived);
        let b = v4_key(2, Counter::SynReceived);
        let mut deltas = SourceDeltas::default();
        let mut round = SourcesRound::default();
        let mut bytes = record(&a, &SourceValue { events: 3, born: 1 });
        deltas.fold(&bytes, 1, &mut round);
        assert_eq!(round.events.len(), 1);
        assert_eq!(round.events[0].events, 3);
        assert_eq!(round.events[0].ns, (9, 7));
        assert_eq!(round.evictions, 0);

        // a grows by 4, b appears with 2.
        bytes = record(&a, &SourceValue { events: 7, born: 1 });
        bytes.extend(record(&b, &SourceValue { events: 2, born: 5 }));
        let mut round = SourcesRound::default();
        deltas.fold(&bytes, 2, &mut round);
        let mut got: Vec<(IpAddr, u64)> =
            round.events.iter().map(|e| (e.source, e.events)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("203.0.113.1".parse().unwrap(), 4),
                ("203.0.113.2".parse().unwrap(), 2)
            ]
        );
        assert_eq!(round.entries, 2);

        // a evicted (3 created, 1 present): 2 evictions, and never fewer
        // later even if the counts are read at odd moments.
        bytes = record(&b, &SourceValue { events: 2, born: 5 });
        let mut round = SourcesRound::default();
        deltas.fold(&bytes, 3, &mut round);
        assert!(round.events.is_empty());
        assert_eq!(round.evictions, 2);
        let mut round = SourcesRound::default();
        deltas.fold(&bytes, 1, &mut round);
        assert_eq!(round.evictions, 2);
    }
}
