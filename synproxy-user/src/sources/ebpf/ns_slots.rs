//! Which namespace counts in which slot of the eBPF `NS_STATS` array, and the
//! `NS_TABLE` entries that tell the programs. The agent alone writes the
//! table: it gives a namespace a slot when it first reads its counts (before
//! the namespace's first /proc read, so the offset learnt for the series
//! covers any event before that) and releases it when the namespace is no
//! longer tracked. A released slot is reused only after [`COOLING`], so an
//! event whose program looked the old entry up a moment earlier cannot land
//! in the next namespace's counts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use synproxy_common::{
    ns_table_home, NsEntry, COUNTER_COUNT, NS_ENTRY_EMPTY, NS_ENTRY_FREED, NS_SLOTS, NS_STATS_U64S,
    NS_TABLE_ENTRIES, NS_TABLE_PROBES,
};

/// How the maps key a namespace: `net->ns.inum` and `net->net_cookie` (0
/// where cookies are not read).
pub type NsKey = (u32, u64);

/// Per family (0 = IPv4, 1 = IPv6), per counter in kernel order.
pub type FamilyCounts = [[u64; COUNTER_COUNT]; 2];

/// How long a released slot waits before another namespace gets it.
pub const COOLING: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Assigned {
    slot: u32,
    /// Index of its `NS_TABLE` entry.
    entry: u32,
}

/// Why a namespace has no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot is in use (or cooling), or the table has no free entry
    /// within [`NS_TABLE_PROBES`] of the namespace's home.
    Full,
    /// Not a namespace inode (the programs never count under it).
    BadKey,
}

#[derive(Debug)]
pub struct NsSlots {
    by_ns: HashMap<NsKey, Assigned>,
    /// Slots ready for use (popped from the end).
    free: Vec<u32>,
    cooling: VecDeque<(u32, Instant)>,
    /// Namespaces already warned about having no slot.
    refused: HashSet<NsKey>,
}

impl Default for NsSlots {
    fn default() -> Self {
        Self {
            by_ns: HashMap::new(),
            free: (0..NS_SLOTS).rev().collect(),
            cooling: VecDeque::new(),
            refused: HashSet::new(),
        }
    }
}

/// `NS_TABLE` as u64 words: entry `i` is words `2i` (word) and `2i + 1` (cookie).
const WORDS_PER_ENTRY: usize = std::mem::size_of::<NsEntry>() / 8;

impl NsSlots {
    /// The namespace's slot, giving it a (zeroed) one if it has none.
    /// `table` is `NS_TABLE` and `stats` `NS_STATS`, as u64 words.
    pub fn slot(
        &mut self,
        ns: NsKey,
        table: &[AtomicU64],
        stats: &[AtomicU64],
        now: Instant,
    ) -> Result<u32, NoSlot> {
        if let Some(a) = self.by_ns.get(&ns) {
            return Ok(a.slot);
        }
        if ns.0 as u64 <= NS_ENTRY_FREED {
            return Err(NoSlot::BadKey);
        }
        self.reclaim(now);
        let Some(&slot) = self.free.last() else {
            return Err(NoSlot::Full);
        };
        let home = ns_table_home(ns.0, ns.1);
        let entry = (0..NS_TABLE_PROBES)
            .map(|i| (home + i) & (NS_TABLE_ENTRIES - 1))
            .find(|&e| {
                let word = table
                    .get(e as usize * WORDS_PER_ENTRY)
                    .map_or(u64::MAX, |w| w.load(Ordering::Acquire));
                word == NS_ENTRY_EMPTY || word == NS_ENTRY_FREED
            })
            .ok_or(NoSlot::Full)?;
        let base = slot as usize * NS_STATS_U64S;
        let (Some(values), Some([word, cookie])) = (
            stats.get(base..base + NS_STATS_U64S),
            table
                .get(entry as usize * WORDS_PER_ENTRY..)
                .and_then(|t| t.first_chunk::<2>()),
        ) else {
            return Err(NoSlot::Full);
        };
        self.free.pop();
        // The slot's previous namespace cooled down: nothing adds to it now.
        for v in values {
            v.store(0, Ordering::Relaxed);
        }
        cookie.store(ns.1, Ordering::Relaxed);
        // Publishes the zeroed slot and the cookie with the entry.
        word.store(NsEntry::word(ns.0, slot), Ordering::Release);
        self.by_ns.insert(ns, Assigned { slot, entry });
        self.refused.remove(&ns);
        Ok(slot)
    }

    /// Whether this is the first time `ns` was refused a slot (to warn once).
    pub fn first_refusal(&mut self, ns: NsKey) -> bool {
        self.refused.insert(ns)
    }

    /// Releases the slots of namespaces not in `keep`.
    pub fn release_except(&mut self, keep: &HashSet<NsKey>, table: &[AtomicU64], now: Instant) {
        let gone: Vec<NsKey> = self
            .by_ns
            .keys()
            .filter(|k| !keep.contains(k))
            .copied()
            .collect();
        for ns in gone {
            if let Some(a) = self.by_ns.remove(&ns) {
                if let Some(word) = table.get(a.entry as usize * WORDS_PER_ENTRY) {
                    word.store(NS_ENTRY_FREED, Ordering::Release);
                }
                self.cooling.push_back((a.slot, now));
            }
        }
        self.refused.retain(|k| keep.contains(k));
        self.reclaim(now);
    }

    fn reclaim(&mut self, now: Instant) {
        while let Some(&(slot, since)) = self.cooling.front() {
            if now.saturating_duration_since(since) < COOLING {
                break;
            }
            self.cooling.pop_front();
            self.free.push(slot);
        }
    }

    /// Namespaces with a slot, and the slot.
    pub fn assigned(&self) -> impl Iterator<Item = (NsKey, u32)> + '_ {
        self.by_ns.iter().map(|(k, a)| (*k, a.slot))
    }

    pub fn len(&self) -> usize {
        self.by_ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ns.is_empty()
    }
}

/// A slot's counts (`stats`: `NS_STATS` as u64 words).
pub fn read_counts(stats: &[AtomicU64], slot: u32) -> FamilyCounts {
    let base = slot as usize * NS_STATS_U64S;
    std::array::from_fn(|f| {
        std::array::from_fn(|c| {
            stats
                .get(base + f * COUNTER_COUNT + c)
                .map_or(0, |v| v.load(Ordering::Acquire))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    struct Maps {
        table: Vec<AtomicU64>,
        stats: Vec<AtomicU64>,
    }

    impl Maps {
        fn new() -> Self {
            Self {
                table: words(NS_TABLE_ENTRIES as usize * WORDS_PER_ENTRY),
                stats: words(NS_SLOTS as usize * NS_STATS_U64S),
            }
        }

        /// The lookup the programs do (synproxy-ebpf `slot_of`).
        fn kernel_lookup(&self, ns: NsKey) -> Option<u32> {
            let home = ns_table_home(ns.0, ns.1);
            for i in 0..NS_TABLE_PROBES {
                let e = ((home + i) & (NS_TABLE_ENTRIES - 1)) as usize * WORDS_PER_ENTRY;
                let word = self.table[e].load(Ordering::Acquire);
                if word == NS_ENTRY_EMPTY {
                    return None;
                }
                if word & 0xffff_ffff == u64::from(ns.0)
                    && self.table[e + 1].load(Ordering::Acquire) == ns.1
                {
                    return Some((word >> 32) as u32);
                }
            }
            None
        }
    }

    #[test]
    fn a_namespace_keeps_its_slot_and_the_kernel_finds_it() {
        let maps = Maps::new();
        let mut slots = NsSlots::default();
        let now = Instant::now();
        let a = slots
            .slot((4026532000, 7), &maps.table, &maps.stats, now)
            .unwrap();
        let b = slots
            .slot((4026532001, 8), &maps.table, &maps.stats, now)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(
            slots.slot((4026532000, 7), &maps.table, &maps.stats, now),
            Ok(a)
        );
        assert_eq!(maps.kernel_lookup((4026532000, 7)), Some(a));
        assert_eq!(maps.kernel_lookup((4026532001, 8)), Some(b));
        // Same inode, another cookie: a different namespace.
        assert_eq!(maps.kernel_lookup((4026532000, 9)), None);
        assert_eq!(
            slots.slot((1, 0), &maps.table, &maps.stats, now),
            Err(NoSlot::BadKey)
        );
    }

    #[test]
    fn a_released_slot_is_zeroed_and_reused_only_after_cooling() {
        let maps = Maps::new();
        let mut slots = NsSlots::default();
        let t0 = Instant::now();
        let old = (4026532000, 1);
        let slot = slots.slot(old, &maps.table, &maps.stats, t0).unwrap();
        maps.stats[slot as usize * NS_STATS_U64S + 3].store(42, Ordering::Relaxed);
        slots.release_except(&HashSet::new(), &maps.table, t0);
        assert_eq!(maps.kernel_lookup(old), None);
        // Every other slot is taken first; the released one waits.
        let mut taken = Vec::new();
        for i in 0..NS_SLOTS - 1 {
            let ns = (4026533000 + i, u64::from(i) + 100);
            taken.push(slots.slot(ns, &maps.table, &maps.stats, t0).unwrap());
        }
        assert!(!taken.contains(&slot));
        let late = (4026540000, 5);
        assert_eq!(
            slots.slot(late, &maps.table, &maps.stats, t0),
            Err(NoSlot::Full)
        );
        assert!(slots.first_refusal(late));
        assert!(!slots.first_refusal(late));
        let reused = slots
            .slot(late, &maps.table, &maps.stats, t0 + COOLING)
            .unwrap();
        assert_eq!(reused, slot);
        assert_eq!(read_counts(&maps.stats, reused), [[0; COUNTER_COUNT]; 2]);
        assert_eq!(maps.kernel_lookup(late), Some(slot));
        // Every namespace is still found although freed entries sit in chains.
        for i in 0..NS_SLOTS - 1 {
            let ns = (4026533000 + i, u64::from(i) + 100);
            assert_eq!(maps.kernel_lookup(ns), Some(taken[i as usize]));
        }
    }

    #[test]
    fn a_lookup_goes_past_freed_entries() {
        let maps = Maps::new();
        let mut slots = NsSlots::default();
        let now = Instant::now();
        // Find two namespaces with the same home entry.
        let first = (4026532000u32, 0u64);
        let home = ns_table_home(first.0, first.1);
        let second = (4026532001..)
            .map(|inum| (inum, 0u64))
            .find(|k| ns_table_home(k.0, k.1) == home)
            .unwrap();
        slots.slot(first, &maps.table, &maps.stats, now).unwrap();
        let s2 = slots.slot(second, &maps.table, &maps.stats, now).unwrap();
        let keep: HashSet<NsKey> = [second].into();
        slots.release_except(&keep, &maps.table, now);
        assert_eq!(maps.kernel_lookup(second), Some(s2));
        assert_eq!(maps.kernel_lookup(first), None);
    }
}
