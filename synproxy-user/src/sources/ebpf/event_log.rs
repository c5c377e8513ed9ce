//! The programs' event log: per CPU a ring of `LoggedEvent` records in the
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
use synproxy_common::{log_pos, logged_meta, LOGGED_EVENT_WORDS, LOGGED_PORT, LOGGED_SOURCE};

pub(super) struct EventLog {
    /// `EVENT_LOG`: `cpus * len` records.
    records: SharedArray,
    /// `LOG_POS`: per CPU [`log_pos::STRIDE`] words.
    pos: SharedArray,
    cpus: usize,
    /// Records per ring (a power of two).
    len: usize,
}

/// Records per CPU ring for `cpus` possible CPUs:
/// [`synproxy_common::LOG_DEFAULT_PER_CPU`] up to 4 CPUs, then a total of
/// 256 Ki records (10 MiB) shared out (a flood spreads over the CPUs that
/// take its packets), at least 1,024 per CPU (a machine with 256 possible
/// CPUs or more gets 40 KiB per CPU).
pub fn ring_len(cpus: usize) -> u32 {
    const TOTAL: usize = 1 << 18;
    let per_cpu = (TOTAL / cpus.max(1)).clamp(1024, synproxy_common::LOG_DEFAULT_PER_CPU as usize);
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

    /// Hands the words of every whole record not read yet to `each`, oldest
    /// first per CPU (the words of a [`LoggedEvent`]).
    #[inline(always)]
    pub fn drain(&mut self, mut each: impl FnMut(&[u64; LOGGED_EVENT_WORDS])) {
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
            let ring = cpu * self.len;
            let mut tail = start;
            while tail < head {
                let at = (ring + (tail as usize & (self.len - 1))) * LOGGED_EVENT_WORDS;
                let Some(rec) = words.get(at..at + LOGGED_EVENT_WORDS) else {
                    break;
                };
                let seq = rec[4].load(Ordering::Acquire);
                if seq as u32 != (tail as u32).wrapping_add(1) {
                    // Not whole yet: the next drain takes it.
                    break;
                }
                each(&[
                    rec[0].load(Ordering::Relaxed),
                    rec[1].load(Ordering::Relaxed),
                    rec[2].load(Ordering::Relaxed),
                    rec[3].load(Ordering::Relaxed),
                    seq,
                ]);
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
        // A source's key is the record's words with the port left out.
        const NOT_PORT: u64 = logged_meta(u32::MAX, u8::MAX, u8::MAX, 0);
        log.drain(|w| {
            if w[4] & LOGGED_SOURCE != 0 {
                if let Some(sources) = sources.as_mut() {
                    sources.add([w[0], w[1] & NOT_PORT, w[2], w[3]]);
                }
            }
            if w[4] & LOGGED_PORT != 0 {
                if let Some(ports) = ports.as_mut() {
                    ports.add(w[0], w[1]);
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
        assert_eq!(ring_len(100), 2048);
        assert_eq!(ring_len(256), 1024);
        assert_eq!(ring_len(4096), 1024);
        assert_eq!(ring_len(0), 65_536);
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

    /// An anonymous shared file standing in for an mmapable array map.
    fn memfd(bytes: usize) -> OwnedFd {
        // SAFETY: creates a new anonymous file; the name is a valid C string.
        let fd = unsafe { libc::memfd_create(c"log".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: fd was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscall on a valid fd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as i64) }, 0);
        fd
    }

    /// The programs' side of two CPUs' rings of `len` records.
    struct Writer {
        records: SharedArray,
        pos: SharedArray,
        len: usize,
    }

    impl Writer {
        /// Appends a record as the programs do: the words, `seq` last, then
        /// the head; or counts it dropped when the ring is full.
        fn log(&self, cpu: usize, port: u16, whole: bool) {
            let pos = self.pos.u64s();
            let base = cpu * log_pos::STRIDE as usize;
            let head = pos[base].load(Ordering::Relaxed);
            let tail = pos[base + log_pos::TAIL as usize].load(Ordering::Relaxed);
            if head - tail >= self.len as u64 {
                pos[base + 1].fetch_add(1, Ordering::Relaxed);
                return;
            }
            let at = (cpu * self.len + head as usize % self.len) * LOGGED_EVENT_WORDS;
            let w = &self.records.u64s()[at..at + LOGGED_EVENT_WORDS];
            w[0].store(7, Ordering::Relaxed);
            w[1].store(logged_meta(9, 0, 4, port), Ordering::Relaxed);
            w[2].store(u64::from(port), Ordering::Relaxed);
            w[3].store(0, Ordering::Relaxed);
            if whole {
                let seq = u64::from((head as u32).wrapping_add(1)) | LOGGED_SOURCE;
                w[4].store(seq, Ordering::Release);
            }
            pos[base].store(head + 1, Ordering::Release);
        }
    }

    fn log_of(len: usize) -> (EventLog, Writer) {
        let cpus = 2;
        let rec_fd = memfd(cpus * len * LOGGED_EVENT_WORDS * 8);
        let pos_fd = memfd(cpus * log_pos::STRIDE as usize * 8);
        let map = |fd: &OwnedFd, size, n| SharedArray::map(fd.as_fd(), size, n).unwrap();
        let stride = log_pos::STRIDE as usize * 8;
        let log = EventLog::new(
            map(&rec_fd, LOGGED_EVENT_WORDS * 8, cpus * len),
            map(&pos_fd, stride, cpus),
            cpus,
            len as u32,
        );
        let writer = Writer {
            records: map(&rec_fd, LOGGED_EVENT_WORDS * 8, cpus * len),
            pos: map(&pos_fd, stride, cpus),
            len,
        };
        (log, writer)
    }

    fn drained(log: &mut EventLog) -> Vec<u16> {
        let mut ports = Vec::new();
        log.drain(|w| ports.push(w[2] as u16));
        ports
    }

    #[test]
    fn records_come_out_once_in_order_per_cpu() {
        let (mut log, w) = log_of(8);
        for port in 1..=5 {
            w.log(0, port, true);
        }
        w.log(1, 100, true);
        assert_eq!(drained(&mut log), vec![1, 2, 3, 4, 5, 100]);
        assert_eq!(drained(&mut log), Vec::<u16>::new(), "taken once");
        // Around the ring several times.
        for round in 0..5u16 {
            for i in 0..8 {
                w.log(1, round * 10 + i, true);
            }
            assert_eq!(
                drained(&mut log),
                (0..8).map(|i| round * 10 + i).collect::<Vec<_>>()
            );
        }
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_record_not_yet_whole_waits_with_those_after_it() {
        let (mut log, w) = log_of(8);
        w.log(0, 1, true);
        w.log(0, 2, false);
        w.log(0, 3, true);
        assert_eq!(drained(&mut log), vec![1]);
        // The program finishes it: its sequence word arrives.
        let seq = u64::from(2u32) | LOGGED_SOURCE;
        w.records.u64s()[LOGGED_EVENT_WORDS + 4].store(seq, Ordering::Release);
        assert_eq!(drained(&mut log), vec![2, 3]);
    }

    #[test]
    fn a_full_ring_drops_and_counts_until_drained() {
        let (mut log, w) = log_of(4);
        for port in 1..=6 {
            w.log(0, port, true);
        }
        w.log(1, 9, true);
        assert_eq!(log.dropped(), 2);
        assert_eq!(drained(&mut log), vec![1, 2, 3, 4, 9]);
        w.log(0, 7, true);
        assert_eq!(drained(&mut log), vec![7]);
        assert_eq!(log.dropped(), 2);
    }
}
