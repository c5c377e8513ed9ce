//! Per-source counting (`--top` N > 0): the agent's table of sources, filled
//! from the event log, and its reads, each round and at an attack's start.

use super::address_counts::{source_addr, SourceEvents, SourcesRound};
use super::count_table::CountTable;
use super::EbpfSource;
use synproxy_common::{Counter, SourceKey};

/// Per-source counting: the table and what its reads reported.
pub(super) struct SourceCounting {
    pub(super) table: CountTable<SourceKey>,
    capacity: u32,
}

/// A table entry's events as the round reports them; None for a counter or
/// family the programs do not log.
fn source_events(key: &SourceKey, events: u64) -> Option<SourceEvents> {
    Some(SourceEvents {
        ns: (key.netns, key.cookie),
        counter: Counter::from_u8(key.counter)?,
        source: source_addr(key)?,
        events,
    })
}

impl SourceCounting {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            table: CountTable::new(capacity),
            capacity,
        }
    }

    /// One logged event with a source: its record's first four words, the
    /// port cleared from the [`synproxy_common::logged_meta`] word (the
    /// key's words).
    #[inline(always)]
    pub(super) fn add(&mut self, words: [u64; 4]) {
        self.table.add_words(words);
    }

    /// The round's events per source into `out`, and the table's fill.
    pub(super) fn take_round(&mut self, out: &mut SourcesRound) {
        let events = &mut out.events;
        self.table.take_interval(|key, n| {
            events.extend(source_events(key, n));
        });
        out.capacity = self.capacity;
        out.entries = self.table.len() as u64;
        out.evictions = self.table.evictions();
    }
}

impl EbpfSource {
    /// The per-source events since the last round, without disturbing the
    /// round's own (for an attack's start document). None without
    /// per-source counting.
    pub fn peek_sources(&mut self) -> Option<Vec<SourceEvents>> {
        self.drain_log();
        let counting = self.sources.as_ref()?;
        let mut out = Vec::new();
        counting
            .table
            .peek_interval(|key, n| out.extend(source_events(key, n)));
        Some(out)
    }

    /// This interval's per-source events (None without per-source counting).
    pub(super) fn read_sources(&mut self) -> Option<SourcesRound> {
        self.drain_log();
        let mut round = SourcesRound {
            insert_failures: self.log_dropped(),
            map_bytes: self.log_bytes,
            ..Default::default()
        };
        self.sources.as_mut()?.take_round(&mut round);
        Some(round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synproxy_common::{logged_meta, FAMILY_IPV4, FAMILY_IPV6};

    fn event(addr: u64, counter: Counter, family: u8) -> [u64; 4] {
        [7, logged_meta(9, counter as u8, family, 0), addr, 0]
    }

    #[test]
    fn a_round_reports_each_sources_events_and_the_evictions() {
        let mut c = SourceCounting::new(3);
        let v4 = |last: u8| u64::from(u32::from_ne_bytes([203, 0, 113, last]));
        for _ in 0..3 {
            c.add(event(v4(1), Counter::SynReceived, FAMILY_IPV4));
        }
        c.add(event(v4(2), Counter::CookieInvalid, FAMILY_IPV4));
        // A family the programs do not log is in no round.
        c.add(event(v4(2), Counter::SynReceived, 5));
        let mut round = SourcesRound::default();
        c.take_round(&mut round);
        let mut got: Vec<_> = round
            .events
            .iter()
            .map(|e| (e.source.to_string(), e.counter, e.events))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("203.0.113.1".into(), Counter::SynReceived, 3),
                ("203.0.113.2".into(), Counter::CookieInvalid, 1),
            ]
        );
        assert_eq!((round.entries, round.capacity, round.evictions), (3, 3, 0));
        let mut round = SourcesRound::default();
        c.take_round(&mut round);
        assert!(round.events.is_empty(), "nothing new");
        // A fourth source takes the place of one not counted again.
        c.add(event(v4(3), Counter::SynReceived, FAMILY_IPV4));
        c.add(event(v4(4), Counter::SynReceived, FAMILY_IPV6));
        let mut round = SourcesRound::default();
        c.take_round(&mut round);
        assert_eq!(round.events.len(), 2);
        assert!(round.events.iter().all(|e| e.events == 1));
        assert_eq!((round.entries, round.evictions), (3, 2));
    }
}
