//! The InfluxDB writer's backlog: rounds of line protocol waiting to be
//! written, bounded by a number of lines. When full, the oldest lines go
//! first, and they are counted. The batch being written stays in the buffer
//! until the server answers, so nothing is lost to a failed request; lines
//! that had to make room while their request was in flight count as dropped
//! only if that request then fails.

use std::collections::VecDeque;

/// One round's lines (each ends with `\n`).
#[derive(Debug)]
struct Chunk {
    seq: u64,
    bytes: Vec<u8>,
    /// Where the lines still held start (the ones before made room).
    start: usize,
    lines: u64,
}

/// What a request carries: the oldest rounds, as one body.
#[derive(Debug)]
pub struct Batch {
    pub body: Vec<u8>,
    pub lines: u64,
    /// Rounds in it (a batch of one round cannot be split).
    pub rounds: usize,
    /// The newest round in it.
    last_seq: u64,
}

/// Line counts since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub written: u64,
    pub dropped: u64,
    pub rejected: u64,
}

#[derive(Debug)]
pub struct LineBuffer {
    chunks: VecDeque<Chunk>,
    capacity: u64,
    /// Lines held, including those of the batch in flight.
    lines: u64,
    next_seq: u64,
    /// The newest round of the batch in flight.
    in_flight: Option<u64>,
    /// Lines of the batch in flight removed to make room: dropped unless the
    /// request succeeds.
    dropped_in_flight: u64,
    counts: Counts,
}

impl LineBuffer {
    /// Holds at most `capacity` lines (at least 1).
    pub fn new(capacity: u64) -> Self {
        Self {
            chunks: VecDeque::new(),
            capacity: capacity.max(1),
            lines: 0,
            next_seq: 0,
            in_flight: None,
            dropped_in_flight: 0,
            counts: Counts::default(),
        }
    }

    /// Lines waiting, including a batch in flight.
    pub fn buffered(&self) -> u64 {
        self.lines
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Appends one round (whole lines). Returns how many of the oldest lines
    /// were dropped to make room (not counting lines of a request in flight,
    /// which are counted when that request fails).
    pub fn push(&mut self, round: Vec<u8>) -> u64 {
        let lines = round.iter().filter(|&&b| b == b'\n').count() as u64;
        if lines == 0 {
            return 0;
        }
        self.chunks.push_back(Chunk {
            seq: self.next_seq,
            bytes: round,
            start: 0,
            lines,
        });
        self.next_seq += 1;
        self.lines += lines;
        let dropped_before = self.counts.dropped;
        while self.lines > self.capacity {
            let excess = self.lines - self.capacity;
            let Some(oldest) = self.chunks.front_mut() else {
                break;
            };
            let seq = oldest.seq;
            let removed = if oldest.lines <= excess {
                let removed = oldest.lines;
                self.chunks.pop_front();
                removed
            } else {
                // Part of a round: skip its first `excess` lines.
                let mut skipped = 0;
                while skipped < excess {
                    match oldest.bytes[oldest.start..]
                        .iter()
                        .position(|&b| b == b'\n')
                    {
                        Some(end) => oldest.start += end + 1,
                        None => break,
                    }
                    skipped += 1;
                }
                oldest.lines -= excess;
                excess
            };
            self.lines -= removed;
            if self.in_flight.is_some_and(|last| seq <= last) {
                self.dropped_in_flight += removed;
            } else {
                self.counts.dropped += removed;
            }
        }
        self.counts.dropped - dropped_before
    }

    /// The oldest rounds, up to `max_lines` lines (but at least one round),
    /// as one request body. It stays in the buffer until [`Self::written`],
    /// [`Self::rejected`] or [`Self::failed`] says how the request went.
    pub fn take_batch(&mut self, max_lines: u64) -> Option<Batch> {
        let mut body = Vec::new();
        let mut lines = 0;
        let mut rounds = 0;
        let mut last_seq = None;
        for chunk in &self.chunks {
            if rounds > 0 && lines + chunk.lines > max_lines {
                break;
            }
            body.extend_from_slice(&chunk.bytes[chunk.start..]);
            lines += chunk.lines;
            rounds += 1;
            last_seq = Some(chunk.seq);
        }
        let last_seq = last_seq?;
        self.in_flight = Some(last_seq);
        self.dropped_in_flight = 0;
        Some(Batch {
            body,
            lines,
            rounds,
            last_seq,
        })
    }

    /// The server took the batch.
    pub fn written(&mut self, batch: &Batch) {
        self.remove_through(batch.last_seq);
        self.counts.written += batch.lines;
        self.dropped_in_flight = 0;
    }

    /// The server refused the batch for good (a 4xx other than 429).
    pub fn rejected(&mut self, batch: &Batch) {
        self.remove_through(batch.last_seq);
        self.counts.rejected += batch.lines;
        self.dropped_in_flight = 0;
    }

    /// The request failed; the batch (what is left of it) is sent again.
    pub fn failed(&mut self) {
        self.in_flight = None;
        self.counts.dropped += std::mem::take(&mut self.dropped_in_flight);
    }

    fn remove_through(&mut self, last_seq: u64) {
        while let Some(oldest) = self.chunks.front() {
            if oldest.seq > last_seq {
                break;
            }
            self.lines -= oldest.lines;
            self.chunks.pop_front();
        }
        self.in_flight = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(tag: &str, lines: usize) -> Vec<u8> {
        (0..lines)
            .map(|i| format!("m,r={tag} v={i}i 1\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn text(batch: &Batch) -> String {
        String::from_utf8_lossy(&batch.body).into_owned()
    }

    #[test]
    fn batches_take_whole_rounds_oldest_first() {
        let mut buffer = LineBuffer::new(100);
        assert_eq!(buffer.push(round("a", 3)), 0);
        assert_eq!(buffer.push(round("b", 3)), 0);
        assert_eq!(buffer.push(round("c", 3)), 0);
        assert_eq!(buffer.buffered(), 9);
        let batch = buffer.take_batch(7).expect("a batch");
        assert_eq!((batch.lines, batch.rounds), (6, 2));
        assert!(text(&batch).starts_with("m,r=a v=0i 1\n"));
        assert!(!text(&batch).contains("r=c"));
        buffer.written(&batch);
        assert_eq!(buffer.buffered(), 3);
        // A round larger than the limit still goes, alone.
        let batch = buffer.take_batch(1).expect("a batch");
        assert_eq!((batch.lines, batch.rounds), (3, 1));
        buffer.written(&batch);
        assert!(buffer.take_batch(10).is_none());
        assert_eq!(
            buffer.counts(),
            Counts {
                written: 9,
                dropped: 0,
                rejected: 0
            }
        );
    }

    #[test]
    fn full_buffer_drops_the_oldest_lines_and_counts_them() {
        let mut buffer = LineBuffer::new(5);
        buffer.push(round("a", 2));
        buffer.push(round("b", 2));
        // One over: the oldest line goes (half of round a).
        assert_eq!(buffer.push(round("c", 2)), 1);
        assert_eq!(buffer.buffered(), 5);
        let batch = buffer.take_batch(100).expect("a batch");
        assert_eq!(
            text(&batch),
            "m,r=a v=1i 1\nm,r=b v=0i 1\nm,r=b v=1i 1\nm,r=c v=0i 1\nm,r=c v=1i 1\n"
        );
        buffer.failed();
        // A round bigger than the whole buffer keeps its newest lines.
        assert_eq!(buffer.push(round("d", 7)), 7);
        let batch = buffer.take_batch(100).expect("a batch");
        assert_eq!(batch.lines, 5);
        assert!(
            text(&batch).starts_with("m,r=d v=2i 1\n"),
            "{}",
            text(&batch)
        );
        assert_eq!(buffer.counts().dropped, 1 + 7);
    }

    #[test]
    fn a_failed_request_is_sent_again_with_newer_rounds() {
        let mut buffer = LineBuffer::new(100);
        buffer.push(round("a", 2));
        let first = buffer.take_batch(100).expect("a batch");
        buffer.failed();
        buffer.push(round("b", 2));
        let second = buffer.take_batch(100).expect("a batch");
        assert_eq!((second.lines, second.rounds), (4, 2));
        assert!(text(&second).starts_with(&text(&first)));
        buffer.written(&second);
        assert_eq!(buffer.buffered(), 0);
        assert_eq!(buffer.counts().written, 4);
    }

    #[test]
    fn rounds_queued_during_a_request_stay() {
        let mut buffer = LineBuffer::new(100);
        buffer.push(round("a", 2));
        let batch = buffer.take_batch(100).expect("a batch");
        buffer.push(round("b", 3));
        buffer.rejected(&batch);
        assert_eq!(buffer.buffered(), 3);
        assert_eq!(buffer.counts().rejected, 2);
        let next = buffer.take_batch(100).expect("a batch");
        assert!(text(&next).contains("r=b") && !text(&next).contains("r=a"));
    }

    #[test]
    fn lines_dropped_while_in_flight_count_only_if_the_request_fails() {
        // Delivered after all: not dropped.
        let mut buffer = LineBuffer::new(4);
        buffer.push(round("a", 2));
        let batch = buffer.take_batch(100).expect("a batch");
        assert_eq!(buffer.push(round("b", 4)), 0);
        buffer.written(&batch);
        assert_eq!(buffer.counts().dropped, 0);
        assert_eq!(buffer.counts().written, 2);
        assert_eq!(buffer.buffered(), 4);

        // The request failed: they are lost, and counted.
        let mut buffer = LineBuffer::new(4);
        buffer.push(round("a", 2));
        buffer.take_batch(100).expect("a batch");
        assert_eq!(buffer.push(round("b", 4)), 0);
        buffer.failed();
        assert_eq!(buffer.counts().dropped, 2);
        let batch = buffer.take_batch(100).expect("a batch");
        assert!(!text(&batch).contains("r=a"));
        assert_eq!(batch.lines, 4);
    }
}
