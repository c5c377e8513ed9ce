//! Per-address counts (`--top`): the kernel-side `SOURCES` LRU hash, read
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

/// Turns successive reads of the map into interval events.
///
/// Memory is what bounds `--top-map-entries`: a spoofed flood fills the map,
/// and every entry is read every round. So the iterator's output is streamed
/// through a fixed buffer ([`read_iter`]), and the entries are kept as two
/// sorted vectors of 48-byte records (this round's and the previous one's,
/// matched by a merge), grown to at most the map's size, instead of hash maps
/// (twice that, and more while they grow). Worst case in user space, with the
/// round's events and the ranking: see docs/ebpf.md, "How sources are counted"
/// (measured by `benches/top_sources_memory.rs`).
#[derive(Debug, Default)]
pub struct SourceDeltas {
    previous: Vec<Entry>,
    current: Vec<Entry>,
    /// The map's size: the vectors never grow past it (0: no limit).
    capacity: usize,
    /// Largest eviction count reported (entries created and entries present
    /// are read at slightly different moments: never report fewer).
    evictions: u64,
}

/// One map entry as kept between rounds.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: SourceKey,
    value: SourceValue,
}

impl Entry {
    fn order(&self) -> (u64, u32, u8, u8, [u64; 2]) {
        let k = &self.key;
        (k.cookie, k.netns, k.counter, k.family, k.addr)
    }
}

impl SourceDeltas {
    /// For a map of `capacity` entries.
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity: capacity as usize,
            ..Self::default()
        }
    }

    /// Records kept from one pass: the map's size, and a quarter more for
    /// entries a pass meets twice or that a flood inserts into buckets the
    /// iterator has not reached yet while it evicts others it has passed.
    fn limit(&self) -> usize {
        if self.capacity == 0 {
            usize::MAX
        } else {
            self.capacity + self.capacity / 4
        }
    }

    /// Starts a read.
    pub fn begin(&mut self) {
        self.current.clear();
    }

    /// One record of the read (of [`SOURCE_RECORD_LEN`] bytes; others are
    /// ignored).
    pub fn add(&mut self, record: &[u8]) {
        let Some((key, value)) = parse_record(record) else {
            return;
        };
        let len = self.current.len();
        let limit = self.limit();
        if len >= limit {
            // Counted in a later round (as an entry new since the last read).
            return;
        }
        if len == self.current.capacity() && self.capacity > 0 {
            // Doubling up to the map's size, then in small steps.
            let want = if len < self.capacity {
                (len * 2).clamp(1024, self.capacity)
            } else {
                len + (self.capacity / 16).max(1)
            };
            self.current.reserve_exact(want.min(limit) - len);
        }
        self.current.push(Entry { key, value });
    }

    /// Ends a read: interval events into `out`; `inserts` is the programs'
    /// count of created entries.
    pub fn finish(&mut self, inserts: u64, out: &mut SourcesRound) {
        self.current.sort_unstable_by_key(Entry::order);
        // A key seen twice in one pass (the map changed under the iterator)
        // counts once.
        self.current.dedup_by_key(|e| e.order());
        // Counted first, so that the events take exactly their room (a
        // growing vector needs up to 1.5 times it while it moves).
        let active = self.merged().filter(|(_, events)| *events > 0).count();
        out.events.reserve_exact(active);
        for (entry, events) in self.merged() {
            if events == 0 {
                continue;
            }
            let key = &entry.key;
            let (Some(counter), Some(source)) = (Counter::from_u8(key.counter), source_addr(key))
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

    /// Ends a read without taking it as the new reference: the events of
    /// each entry since the previous [`SourceDeltas::finish`] into `out`
    /// (cleared first), so a reader between rounds (the attack detector at an
    /// attack's start) leaves the round's deltas as they were.
    pub fn peek(&mut self, out: &mut Vec<SourceEvents>) {
        out.clear();
        self.current.sort_unstable_by_key(Entry::order);
        self.current.dedup_by_key(|e| e.order());
        for (entry, events) in self.merged() {
            let key = &entry.key;
            if events == 0 {
                continue;
            }
            let (Some(counter), Some(source)) = (Counter::from_u8(key.counter), source_addr(key))
            else {
                continue;
            };
            out.push(SourceEvents {
                ns: (key.netns, key.cookie),
                counter,
                source,
                events,
            });
        }
        self.current.clear();
    }

    /// Each entry of this read with its events since the previous read
    /// (both vectors sorted: a merge).
    fn merged(&self) -> impl Iterator<Item = (&Entry, u64)> + '_ {
        let mut p = 0;
        self.current.iter().map(move |entry| {
            let order = entry.order();
            while self.previous.get(p).is_some_and(|e| e.order() < order) {
                p += 1;
            }
            let previous = self
                .previous
                .get(p)
                .filter(|e| e.order() == order)
                .map(|e| &e.value);
            (entry, interval_events(previous, &entry.value))
        })
    }

    /// One whole read at once (records of [`SOURCE_RECORD_LEN`] bytes).
    pub fn fold(&mut self, records: &[u8], inserts: u64, out: &mut SourcesRound) {
        self.begin();
        for record in records.chunks_exact(SOURCE_RECORD_LEN) {
            self.add(record);
        }
        self.finish(inserts, out);
    }

    /// Bytes the kept entries take now (both vectors' capacity).
    pub fn heap_bytes(&self) -> usize {
        (self.previous.capacity() + self.current.capacity()) * std::mem::size_of::<Entry>()
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

/// The iterator's output is read this many bytes at a time (whole records).
pub const READ_CHUNK: usize = SOURCE_RECORD_LEN * 1364;

/// Reads one full pass of the iterator behind `link` through `buf` (a fixed
/// [`READ_CHUNK`] bytes, kept between rounds) and hands each record to
/// `each`. A record cut by a read is completed by the next one.
pub fn read_iter(
    link: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    read_iter_of(link, SOURCE_RECORD_LEN, buf, each)
}

/// [`read_iter`] for records of `record_len` bytes.
pub fn read_iter_of(
    link: BorrowedFd<'_>,
    record_len: usize,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    let iter = bpf(BPF_ITER_CREATE, &mut attr)?;
    let mut file = std::fs::File::from(iter);
    stream_records_of(&mut file, record_len, buf, &mut each)
}

/// [`read_iter`] on any reader.
pub fn stream_records(
    reader: &mut impl std::io::Read,
    buf: &mut Vec<u8>,
    each: &mut impl FnMut(&[u8]),
) -> std::io::Result<()> {
    stream_records_of(reader, SOURCE_RECORD_LEN, buf, each)
}

/// [`stream_records`] for records of `record_len` bytes (a divisor of
/// [`READ_CHUNK`]).
pub fn stream_records_of(
    reader: &mut impl std::io::Read,
    record_len: usize,
    buf: &mut Vec<u8>,
    each: &mut impl FnMut(&[u8]),
) -> std::io::Result<()> {
    const _: () = assert!(READ_CHUNK.is_multiple_of(synproxy_common::PORT_RECORD_LEN));
    buf.resize(READ_CHUNK, 0);
    let mut filled = 0;
    loop {
        let n = match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
        let whole = filled - filled % record_len;
        for record in buf[..whole].chunks_exact(record_len) {
            each(record);
        }
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
    if filled != 0 {
        return Err(std::io::Error::other(format!(
            "the iterator ended within a record ({filled} of {record_len} bytes)"
        )));
    }
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

    /// A read between rounds sees the events since the last round and leaves
    /// the round's own deltas as if it had not happened.
    #[test]
    fn a_peek_between_rounds_changes_nothing_for_the_round() {
        let key = v4_key(5, Counter::SynReceived);
        let at = |events| record(&key, &SourceValue { events, born: 1 });
        let mut deltas = SourceDeltas::new(1024);
        let mut round = SourcesRound::default();
        deltas.fold(&at(10), 0, &mut round);
        deltas.begin();
        deltas.add(&at(25));
        let mut peeked = Vec::new();
        deltas.peek(&mut peeked);
        assert_eq!(peeked.len(), 1);
        assert_eq!(peeked[0].events, 15);
        let mut round = SourcesRound::default();
        deltas.fold(&at(40), 0, &mut round);
        assert_eq!(round.events.len(), 1);
        assert_eq!(
            round.events[0].events, 30,
            "since the last round, not the peek"
        );
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

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn records_stream_through_a_fixed_buffer_whatever_the_read_sizes() {
        let mut bytes = Vec::new();
        for i in 0..3000u32 {
            let key = v4_key((i % 250) as u8, Counter::SynReceived);
            let key = SourceKey { netns: i, ..key };
            bytes.extend(record(
                &key,
                &SourceValue {
                    events: u64::from(i) + 1,
                    born: 1,
                },
            ));
        }
        for step in [1, 47, 48, 4096, 1 << 20] {
            let mut buf = Vec::new();
            let mut seen = Vec::new();
            let mut reader = Trickle { data: &bytes, step };
            stream_records(&mut reader, &mut buf, &mut |r: &[u8]| {
                seen.push(parse_record(r))
            })
            .expect("reads");
            assert_eq!(seen.len(), 3000, "step {step}");
            assert!(seen.iter().all(Option::is_some));
            assert_eq!(buf.len(), READ_CHUNK, "the buffer stays at its size");
        }
        let mut reader = Trickle {
            data: &bytes[..100],
            step: 100,
        };
        let cut = stream_records(&mut reader, &mut Vec::new(), &mut |_: &[u8]| {});
        assert!(cut.is_err(), "a cut record is an error");
    }

    #[test]
    fn kept_entries_never_outgrow_the_map() {
        let mut deltas = SourceDeltas::new(5000);
        let mut bytes = Vec::new();
        for i in 0..5000u32 {
            let key = SourceKey {
                netns: i,
                ..v4_key(1, Counter::SynReceived)
            };
            bytes.extend(record(&key, &SourceValue { events: 1, born: 1 }));
        }
        // The same key twice in one pass counts once.
        let first = bytes[..SOURCE_RECORD_LEN].to_vec();
        bytes.extend(first);
        for round in 0..3 {
            let mut out = SourcesRound::default();
            deltas.fold(&bytes, 5000, &mut out);
            assert_eq!(out.entries, 5000);
            assert_eq!(out.events.len(), if round == 0 { 5000 } else { 0 });
            assert!(
                deltas.heap_bytes() <= 2 * (5000 + 5000 / 16) * 48,
                "{}",
                deltas.heap_bytes()
            );
        }
    }
}
