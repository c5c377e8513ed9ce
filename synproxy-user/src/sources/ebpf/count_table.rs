//! The agent's bounded tables of per-source and per-port counts, filled from
//! the programs' event log ([`super::event_log`]), one update per logged
//! event. Each entry holds its events since it was created, a creation stamp
//! and its events at the last round: a round takes each entry's growth
//! ([`CountTable::take_interval`]); readers of totals between rounds turn
//! two reads into deltas ([`super::port_counts::port_deltas`]), where an
//! entry evicted and created again has another stamp, so it counts from 0.
//!
//! Entries live in a vector of slots, found through an open-addressing index
//! of slot numbers (linear probing, at most half full, deletion by backward
//! shift): one logged event costs a hash of four words and, nearly always,
//! one probe. Full, a table evicts by the clock algorithm: a hand sweeps the
//! slots, sparing (once) each entry counted since it last passed, so a
//! spoofed flood's one-off sources go first and the busy ones stay, at a
//! constant cost per event. The keys come from packets, so the hash is keyed
//! with random seeds drawn at start.

use std::hash::BuildHasher;
use std::marker::PhantomData;
use synproxy_common::{logged_meta, logged_meta_fields, PortKey, SourceKey, SourceValue};

/// A key of a table, kept as four words (hashed and compared as they are):
/// the words of the event log's records, so a record's key needs no
/// conversion.
pub trait TableKey: Copy {
    fn words(&self) -> [u64; 4];
    fn from_words(words: [u64; 4]) -> Self;
}

impl TableKey for SourceKey {
    fn words(&self) -> [u64; 4] {
        let meta = logged_meta(self.netns, self.counter, self.family, 0);
        [self.cookie, meta, self.addr[0], self.addr[1]]
    }

    fn from_words(w: [u64; 4]) -> Self {
        let (netns, counter, family, _) = logged_meta_fields(w[1]);
        SourceKey {
            cookie: w[0],
            netns,
            counter,
            family,
            _pad: [0; 2],
            addr: [w[2], w[3]],
        }
    }
}

impl TableKey for PortKey {
    fn words(&self) -> [u64; 4] {
        let meta = logged_meta(self.netns, self.counter, self.family, self.port);
        [self.cookie, meta, 0, 0]
    }

    fn from_words(w: [u64; 4]) -> Self {
        let (netns, counter, family, port) = logged_meta_fields(w[1]);
        PortKey {
            cookie: w[0],
            netns,
            counter,
            family,
            port,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: [u64; 4],
    value: SourceValue,
    /// `value.events` at the last [`CountTable::take_interval`].
    taken: u64,
    /// The key's hash (its low bits: where its probe starts).
    hash: u32,
    /// Counted since the clock hand last passed.
    referenced: bool,
}

#[derive(Debug)]
pub struct CountTable<K: TableKey> {
    slots: Vec<Slot>,
    /// Slot number + 1 per position, 0 when free; a power of two long, at
    /// least twice the slots.
    index: Vec<u32>,
    capacity: usize,
    /// The clock hand: the next slot to consider for eviction.
    hand: usize,
    seeds: [u64; 4],
    /// Entries created since start (minus the entries present: evicted).
    inserts: u64,
    key: PhantomData<K>,
}

/// The 64-bit product of `a` and `b` folded into 64 bits.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl<K: TableKey> CountTable<K> {
    /// A table of at most `capacity` entries (at least 1, and at most
    /// `u32::MAX`); it grows as entries come, so an idle table takes no
    /// memory.
    pub fn new(capacity: u32) -> Self {
        let random = std::collections::hash_map::RandomState::new();
        let seeds = [0u64, 1, 2, 3].map(|i| random.hash_one(i) | 1);
        Self {
            slots: Vec::new(),
            index: Vec::new(),
            capacity: (capacity as usize).max(1),
            hand: 0,
            seeds,
            inserts: 0,
            key: PhantomData,
        }
    }

    #[inline]
    fn hash(&self, w: &[u64; 4]) -> u32 {
        let s = &self.seeds;
        let h = fold_mul(w[0] ^ s[0], w[1] ^ s[1]) ^ fold_mul(w[2] ^ s[2], w[3] ^ s[3]);
        (h ^ (h >> 32)) as u32
    }

    #[inline]
    fn mask(&self) -> usize {
        self.index.len().wrapping_sub(1)
    }

    /// One more event of `key`; returns its slot (for [`CountTable::bump`]).
    pub fn add(&mut self, key: K) -> usize {
        self.add_words(key.words())
    }

    /// [`CountTable::add`] of a key's words.
    #[inline(always)]
    pub fn add_words(&mut self, key: [u64; 4]) -> usize {
        let hash = self.hash(&key);
        let mask = self.mask();
        if !self.index.is_empty() {
            let mut p = hash as usize & mask;
            loop {
                let n = self.index[p];
                if n == 0 {
                    break;
                }
                let at = n as usize - 1;
                if let Some(slot) = self.slots.get_mut(at) {
                    if slot.key == key {
                        slot.value.events += 1;
                        slot.referenced = true;
                        return at;
                    }
                }
                p = (p + 1) & mask;
            }
        }
        self.insert(key, hash)
    }

    /// A new entry for `key` (not present), evicting one when full.
    #[cold]
    #[inline(never)]
    fn insert(&mut self, key: [u64; 4], hash: u32) -> usize {
        self.inserts += 1;
        let slot = Slot {
            key,
            value: SourceValue {
                events: 1,
                born: self.inserts,
            },
            taken: 0,
            hash,
            referenced: false,
        };
        let at = if self.slots.len() < self.capacity {
            self.slots.push(slot);
            if self.slots.len() * 2 > self.index.len() {
                self.grow_index();
                return self.slots.len() - 1;
            }
            self.slots.len() - 1
        } else {
            let victim = self.sweep();
            self.unindex(victim);
            self.slots[victim] = slot;
            victim
        };
        self.place(at);
        at
    }

    /// Enters slot `at` in the index.
    fn place(&mut self, at: usize) {
        let mask = self.mask();
        let mut p = self.slots[at].hash as usize & mask;
        while self.index[p] != 0 {
            p = (p + 1) & mask;
        }
        self.index[p] = at as u32 + 1;
    }

    /// Removes slot `at` from the index, moving back the entries after it
    /// that its place had pushed on.
    fn unindex(&mut self, at: usize) {
        let mask = self.mask();
        let wanted = at as u32 + 1;
        let mut hole = self.slots[at].hash as usize & mask;
        while self.index[hole] != wanted {
            if self.index[hole] == 0 {
                return;
            }
            hole = (hole + 1) & mask;
        }
        let mut q = (hole + 1) & mask;
        loop {
            let n = self.index[q];
            if n == 0 {
                break;
            }
            let home = self.slots[n as usize - 1].hash as usize & mask;
            // The entry at q may move to the hole if its probe passes it.
            if (q.wrapping_sub(home) & mask) >= (q.wrapping_sub(hole) & mask) {
                self.index[hole] = n;
                hole = q;
            }
            q = (q + 1) & mask;
        }
        self.index[hole] = 0;
    }

    /// Doubles the index (at least 16 positions) and enters every slot again.
    fn grow_index(&mut self) {
        let len = (self.slots.len() * 2).next_power_of_two().max(16);
        self.index.clear();
        self.index.resize(len, 0);
        for at in 0..self.slots.len() {
            self.place(at);
        }
    }

    /// One more event of the entry in slot `at` if it still holds the key
    /// of these words (a cache of the last slot a caller used); false
    /// otherwise.
    #[inline(always)]
    pub fn bump(&mut self, at: usize, key: &[u64; 4]) -> bool {
        match self.slots.get_mut(at) {
            Some(slot) if slot.key == *key => {
                slot.value.events += 1;
                slot.referenced = true;
                true
            }
            _ => false,
        }
    }

    /// The clock: the first slot from the hand not counted since the hand
    /// last passed, sparing (and clearing) the others; the hand moves past it.
    fn sweep(&mut self) -> usize {
        let len = self.slots.len();
        loop {
            let at = self.hand % len;
            self.hand = (at + 1) % len;
            let slot = &mut self.slots[at];
            if !std::mem::take(&mut slot.referenced) {
                return at;
            }
        }
    }

    /// Every entry: its events since it was created, and its stamp.
    pub fn iter(&self) -> impl Iterator<Item = (K, SourceValue)> + '_ {
        self.slots.iter().map(|s| (K::from_words(s.key), s.value))
    }

    /// Each entry's events since the previous call (or since it was
    /// created), for the entries that have some; the next call counts from
    /// here. The events of an entry evicted in between are lost to it (not
    /// to the namespace's totals).
    pub fn take_interval(&mut self, mut each: impl FnMut(&K, u64)) {
        for slot in &mut self.slots {
            let events = slot.value.events - slot.taken;
            if events > 0 {
                each(&K::from_words(slot.key), events);
                slot.taken = slot.value.events;
            }
        }
    }

    /// What [`CountTable::take_interval`] would give now, leaving the
    /// next call as it was.
    pub fn peek_interval(&self, mut each: impl FnMut(&K, u64)) {
        for slot in &self.slots {
            let events = slot.value.events - slot.taken;
            if events > 0 {
                each(&K::from_words(slot.key), events);
            }
        }
    }

    /// Entries present.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Entries evicted since start: created minus present (both only grow:
    /// an eviction makes room for one insert).
    pub fn evictions(&self) -> u64 {
        self.inserts - self.slots.len() as u64
    }

    /// Entries created since start.
    pub fn inserts(&self) -> u64 {
        self.inserts
    }

    /// Bytes the table takes now (slots and index, by capacity).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.index.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> PortKey {
        PortKey {
            cookie: 1,
            netns: 2,
            counter: 0,
            family: 4,
            port: n as u16,
        }
    }

    fn entries(t: &CountTable<PortKey>) -> Vec<(u16, u64, u64)> {
        let mut seen: Vec<_> = t.iter().map(|(k, v)| (k.port, v.events, v.born)).collect();
        seen.sort_unstable();
        seen
    }

    #[test]
    fn counts_per_key_and_evicts_what_was_not_counted_again() {
        let mut t = CountTable::new(2);
        t.add(key(1));
        t.add(key(2));
        t.add(key(1));
        // 2 was not counted again: 3 takes its place, 1 is spared once.
        t.add(key(3));
        assert_eq!(entries(&t), vec![(1, 2, 1), (3, 1, 3)]);
        assert_eq!((t.slots.len(), t.inserts()), (2, 3));
        // 2 comes back as a new entry: another stamp, counting from 1.
        t.add(key(2));
        let two = t.iter().find(|(k, _)| k.port == 2).map(|(_, v)| v);
        assert_eq!(two, Some(SourceValue { events: 1, born: 4 }));
        assert_eq!(t.inserts() - t.slots.len() as u64, 2);
        // Every key still present is found through the index.
        for (k, _) in t.iter().collect::<Vec<_>>() {
            let before = t.inserts();
            t.add(k);
            assert_eq!(t.inserts(), before, "{k:?} found");
        }
    }

    #[test]
    fn a_busy_key_survives_a_flood_of_one_off_keys() {
        let mut t = CountTable::new(64);
        for i in 0..100_000u32 {
            t.add(key(i % 60_000 + 100));
            if i % 10 == 0 {
                t.add(key(7));
            }
        }
        let busy = t.iter().find(|(k, _)| k.port == 7).map(|(_, v)| v.events);
        assert_eq!(busy, Some(10_000));
        assert_eq!(t.slots.len(), 64);
        assert_eq!(t.index.iter().filter(|&&n| n != 0).count(), 64);
    }

    #[test]
    fn an_interval_is_the_growth_since_the_last_one() {
        let mut t = CountTable::new(2);
        t.add(key(1));
        t.add(key(1));
        t.add(key(2));
        let take = |t: &mut CountTable<PortKey>| {
            let mut got = Vec::new();
            t.take_interval(|k, n| got.push((k.port, n)));
            got.sort_unstable();
            got
        };
        let mut peeked = Vec::new();
        t.peek_interval(|k, n| peeked.push((k.port, n)));
        peeked.sort_unstable();
        assert_eq!(peeked, vec![(1, 2), (2, 1)]);
        assert_eq!(take(&mut t), vec![(1, 2), (2, 1)], "a peek takes nothing");
        assert_eq!(take(&mut t), vec![]);
        t.add(key(2));
        // 1 is evicted (not counted since): 3 counts from its creation.
        t.add(key(3));
        assert_eq!(take(&mut t), vec![(2, 1), (3, 1)]);
    }

    /// Every slot is reached from its hash's position without crossing a
    /// free one, and the index holds nothing else.
    fn check(t: &CountTable<PortKey>) {
        let mask = t.mask();
        for (at, slot) in t.slots.iter().enumerate() {
            let mut p = slot.hash as usize & mask;
            while t.index[p] != at as u32 + 1 {
                assert_ne!(t.index[p], 0, "slot {at} unreachable");
                p = (p + 1) & mask;
            }
        }
        let used = t.index.iter().filter(|&&n| n != 0).count();
        assert_eq!(used, t.slots.len());
    }

    #[test]
    fn the_index_stays_whole_through_churn() {
        for capacity in [1u32, 5, 50, 1000] {
            let mut t = CountTable::new(capacity);
            let mut x = 12345u64;
            for i in 0..20_000u32 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Keys from a small range: hits, misses and evictions mixed.
                t.add(key((x >> 40) as u32 % (capacity * 3 + 7)));
                if i % 997 == 0 {
                    check(&t);
                }
            }
            check(&t);
            let total: u64 = t.iter().map(|(_, v)| v.events).sum();
            assert!(total > 0 && t.len() <= capacity as usize);
        }
    }

    #[test]
    fn bump_counts_only_the_key_still_in_its_slot() {
        let mut t = CountTable::new(1);
        let at = t.add(key(1));
        assert!(t.bump(at, &key(1).words()));
        t.add(key(2));
        assert!(!t.bump(at, &key(1).words()));
        assert_eq!(entries(&t), vec![(2, 1, 2)]);
    }

    #[test]
    fn a_zero_capacity_keeps_one_entry() {
        let mut t = CountTable::new(0);
        t.add(key(7));
        t.add(key(8));
        assert_eq!((t.slots.len(), t.capacity), (1, 1));
    }
}
