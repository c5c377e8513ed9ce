//! The programs' event log: per CPU a ring of [`LoggedEvent`] records in the
//! memory-mapped `EVENT_LOG`, with its positions in `LOG_POS`. The programs
//! append one record per syn_received, cookie_invalid and cookie_valid event
//! (with per-source or per-port counting on); the agent drains the rings at
//! every drain tick and before each read of the tables, with plain memory
//! reads (no system call, so no program is skipped meanwhile).
//!
//! A record is taken once its `seq` says it is whole; the ring's tail is
//! stored after its records were read, so the programs never overwrite a
//! record being read. A full ring drops the event's record (counted per CPU
//! in `LOG_POS`); the event still counts in the namespace's totals.

use super::shared_array::SharedArray;
use std::sync::atomic::Ordering;
use synproxy_common::{log_pos, LoggedEvent, LOGGED_EVENT_WORDS};

pub(super) struct EventLog {
    /// `EVENT_LOG`: `cpus * len` records.
    records: SharedArray,
    /// `LOG_POS`: per CPU [`log_pos::STRIDE`] words.
    pos: SharedArray,
    cpus: usize,
    /// Records per ring (a power of two).
    len: usize,
}

/// Records per CPU ring for `cpus` CPUs: [`synproxy_common::LOG_DEFAULT_PER_CPU`]
/// up to 4 CPUs, then a total of 256 Ki records (10 MiB) shared out, down to
/// 4,096 per CPU (a flood spreads over the CPUs that take its packets).
pub fn ring_len(cpus: usize) -> u32 {
    const TOTAL: usize = 1 << 18;
    let per_cpu = (TOTAL / cpus.max(1)).clamp(4096, synproxy_common::LOG_DEFAULT_PER_CPU as usize);
    // A power of two at most `per_cpu`.
    let len = 1usize << (usize::BITS - 1 - per_cpu.leading_zeros());
    len as u32
}

impl EventLog {
    pub fn new(records: SharedArray, pos: SharedArray, cpus: usize, len: u32) -> Self {
        Self {
            records,
            pos,
            cpus,
            len: len as usize,
        }
    }

    /// Hands every whole record not read yet to `each`, oldest first per CPU.
    pub fn drain(&mut self, mut each: impl FnMut(&LoggedEvent)) {
        let words = self.records.u64s();
        let pos = self.pos.u64s();
        let stride = log_pos::STRIDE as usize;
        for cpu in 0..self.cpus {
            let base = cpu * stride;
            let (Some(head), Some(tail_word)) = (
                pos.get(base + log_pos::HEAD as usize),
                pos.get(base + log_pos::TAIL as usize),
            ) else {
                break;
            };
            let head = head.load(Ordering::Acquire);
            let start = tail_word.load(Ordering::Relaxed);
            let mut tail = start;
            while tail < head {
                let at = (cpu * self.len + (tail as usize & (self.len - 1))) * LOGGED_EVENT_WORDS;
                let Some(rec) = words.get(at..at + LOGGED_EVENT_WORDS) else {
                    break;
                };
                let seq = rec[4].load(Ordering::Acquire);
                if seq as u32 != (tail as u32).wrapping_add(1) {
                    // Not whole yet: the next drain takes it.
                    break;
                }
                let word1 = rec[1].load(Ordering::Relaxed).to_ne_bytes();
                let event = LoggedEvent {
                    cookie: rec[0].load(Ordering::Relaxed),
                    netns: u32::from_ne_bytes([word1[0], word1[1], word1[2], word1[3]]),
                    counter: word1[4],
                    family: word1[5],
                    port: u16::from_ne_bytes([word1[6], word1[7]]),
                    addr: [
                        rec[2].load(Ordering::Relaxed),
                        rec[3].load(Ordering::Relaxed),
                    ],
                    seq,
                };
                each(&event);
                tail += 1;
            }
            if tail != start {
                // After the reads: the programs may reuse the records from here.
                tail_word.store(tail, Ordering::Release);
            }
        }
    }

    /// Records dropped since load because a ring was full.
    pub fn dropped(&self) -> u64 {
        let pos = self.pos.u64s();
        (0..self.cpus)
            .filter_map(|cpu| pos.get(cpu * log_pos::STRIDE as usize + log_pos::DROPPED as usize))
            .map(|v| v.load(Ordering::Relaxed))
            .sum()
    }
}

impl super::EbpfSource {
    /// Drains the event log into the per-source and per-port tables.
    pub(super) fn drain_log(&mut self) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let (sources, ports) = (&mut self.sources, &mut self.ports);
        log.drain(|event| {
            if event.seq & synproxy_common::LOGGED_SOURCE != 0 {
                if let Some(sources) = sources.as_mut() {
                    sources.add(event);
                }
            }
            if event.seq & synproxy_common::LOGGED_PORT != 0 {
                if let Some(ports) = ports.as_mut() {
                    ports.add(event);
                }
            }
        });
    }

    /// Events whose record a full ring dropped, since load.
    pub(super) fn log_dropped(&self) -> u64 {
        self.log.as_ref().map_or(0, EventLog::dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::ring_len;

    #[test]
    fn rings_share_a_bounded_total() {
        assert_eq!(ring_len(1), 65_536);
        assert_eq!(ring_len(4), 65_536);
        assert_eq!(ring_len(6), 32_768);
        assert_eq!(ring_len(64), 4096);
        assert_eq!(ring_len(1024), 4096);
        assert_eq!(ring_len(0), 65_536);
    }
}
