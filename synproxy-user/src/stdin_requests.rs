//! `--signal stdin`: every line on stdin asks for a sample (Telegraf execd
//! sends one per interval). Requests coalesce: while one is pending (sent
//! to the sampler and not yet taken up by a round) further lines add
//! nothing, so however fast stdin is written the agent holds at most one
//! request and samples at most once per round, and a line that arrives
//! while a round runs causes exactly one further round. Stdin is read in
//! [`CHUNK`]-byte reads and no line is kept, only its length so far: a line
//! longer than [`MAX_LINE`] is discarded (not a request) with a warning.

use log::warn;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Bytes per read of stdin.
pub const CHUNK: usize = 4096;

/// Longest line taken as a request (Telegraf writes a bare newline).
pub const MAX_LINE: usize = 4096;

/// What the reader tells the runtime.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Sample (no request was pending).
    Request,
    /// EOF or a read error: after the last request, stop.
    Closed,
}

/// A request is pending: set by the reader when it sends
/// [`Event::Request`], cleared by the sampler when a round takes it up.
#[derive(Clone, Debug, Default)]
pub struct Pending(Arc<AtomicBool>);

impl Pending {
    /// Called by the sampler before the round that serves the request: a
    /// line read from now on asks for another round.
    pub fn take(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Whether a request must be sent (none was pending).
    fn raise(&self) -> bool {
        !self.0.swap(true, Ordering::SeqCst)
    }
}

/// Splits stdin into lines without keeping them.
#[derive(Debug, Default)]
struct Lines {
    /// Bytes of the current line so far (saturating).
    len: usize,
}

/// What a chunk held.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fed {
    /// Complete lines within [`MAX_LINE`].
    lines: usize,
    /// Complete lines over it.
    overlong: usize,
}

impl Lines {
    fn feed(&mut self, chunk: &[u8]) -> Fed {
        let mut fed = Fed::default();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let len = self.len.saturating_add(end);
            if len > MAX_LINE {
                fed.overlong += 1;
            } else {
                fed.lines += 1;
            }
            self.len = 0;
            rest = &rest[end + 1..];
        }
        self.len = self.len.saturating_add(rest.len());
        fed
    }

    /// At EOF: a last line without its newline still counts.
    fn finish(&mut self) -> Fed {
        let len = std::mem::take(&mut self.len);
        match len {
            0 => Fed::default(),
            len if len > MAX_LINE => Fed {
                lines: 0,
                overlong: 1,
            },
            _ => Fed {
                lines: 1,
                overlong: 0,
            },
        }
    }
}

/// Logs discarded lines: the first, then at every power of two, so a stream
/// of them costs a few log lines.
#[derive(Debug, Default)]
struct Discarded(u64);

impl Discarded {
    fn add(&mut self, n: usize) {
        for _ in 0..n {
            self.0 += 1;
            if self.0.is_power_of_two() {
                warn!(
                    "stdin: a line over {MAX_LINE} bytes was discarded, not taken as a sample request ({} so far)",
                    self.0
                );
            }
        }
    }
}

/// Reads `input` until EOF or an error, calling `notify` with
/// [`Event::Request`] when a line comes and no request is pending, then
/// with [`Event::Closed`]. Stops early when `notify` returns false (the
/// runtime is gone).
pub fn read(mut input: impl Read, pending: &Pending, mut notify: impl FnMut(Event) -> bool) {
    let mut lines = Lines::default();
    let mut discarded = Discarded::default();
    let mut buf = [0u8; CHUNK];
    let mut request = |fed: Fed, discarded: &mut Discarded| {
        discarded.add(fed.overlong);
        fed.lines == 0 || !pending.raise() || notify(Event::Request)
    };
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !request(lines.feed(&buf[..n]), &mut discarded) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("stdin: {e}");
                break;
            }
        }
    }
    if request(lines.finish(), &mut discarded) {
        notify(Event::Closed);
    }
}

/// [`read`] on the process's stdin in a thread of its own (a blocked read
/// must not hold up shutdown).
pub fn spawn(pending: Pending, notify: impl FnMut(Event) -> bool + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read(std::io::stdin().lock(), &pending, notify));
    if let Err(e) = spawned {
        log::error!("cannot start the stdin reader: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_across_chunks_and_long_ones_discarded() {
        let mut lines = Lines::default();
        assert_eq!(
            lines.feed(b"\n\nab"),
            Fed {
                lines: 2,
                overlong: 0
            }
        );
        assert_eq!(lines.feed(b"c\n").lines, 1);
        let long = vec![b'x'; MAX_LINE];
        assert_eq!(lines.feed(&long), Fed::default());
        assert_eq!(lines.feed(b"\n").lines, 1, "exactly MAX_LINE is taken");
        assert_eq!(lines.feed(&long), Fed::default());
        assert_eq!(lines.feed(b"y\n\n").overlong, 1);
        assert_eq!(lines.len, 0);
        assert_eq!(lines.feed(b"last").lines, 0);
        assert_eq!(lines.finish().lines, 1);
        assert_eq!(lines.finish(), Fed::default());
    }

    #[test]
    fn requests_coalesce_while_one_is_pending() {
        let pending = Pending::default();
        let mut events = Vec::new();
        let input = vec![b'\n'; 100_000];
        read(&input[..], &pending, |e| {
            events.push(e);
            true
        });
        assert_eq!(events, [Event::Request, Event::Closed]);
        // Taken up by a round: the next line asks again.
        pending.take();
        let mut events = Vec::new();
        read(&b"\n\n"[..], &pending, |e| {
            events.push(e);
            true
        });
        assert_eq!(events, [Event::Request, Event::Closed]);
    }

    #[test]
    fn an_endless_line_is_no_request_and_holds_no_memory() {
        let pending = Pending::default();
        let mut events = Vec::new();
        let endless = std::io::repeat(b'x').take(64 << 20);
        read(endless, &pending, |e| {
            events.push(e);
            true
        });
        assert_eq!(events, [Event::Closed]);
    }
}
