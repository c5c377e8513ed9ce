//! Line protocol on stdout, one write per sampling round so a reader (Telegraf
//! execd) sees whole lines. Writes happen on a writer thread behind a short
//! queue: a reader that stops reading never blocks sampling or shutdown (rounds
//! are dropped, and counted, while the queue is full). A closed stdout is
//! reported as such, not panicked on.

use super::line_protocol::LineEncoder;
use super::{EndNotifier, Ended, Sink};
use crate::sample::{Sample, Snapshot};
use log::warn;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Rounds waiting for the writer.
const QUEUE_ROUNDS: usize = 16;

pub struct StdoutSink {
    encoder: LineEncoder,
    queue: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    /// Set by the writer when stdout failed; it stops then.
    failure: Arc<Mutex<Option<Ended>>>,
    dropped: u64,
    dropping: bool,
}

/// The reader went away (EPIPE): time to stop, not an error to shout about.
fn closed() -> Ended {
    Ended::Closed("stdout closed".into())
}

fn io_failure(e: &io::Error) -> Ended {
    Ended::Failed(format!("stdout: {e}"))
}

impl StdoutSink {
    /// Starts the writer thread; `notifier` learns when stdout failed.
    pub fn new(encoder: LineEncoder, notifier: EndNotifier) -> Self {
        let (queue, rounds) = sync_channel::<Vec<u8>>(QUEUE_ROUNDS);
        let failure = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&failure);
        let writer = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let stdout = io::stdout();
                for buf in rounds {
                    let mut out = stdout.lock();
                    if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                        let error = match e.kind() {
                            io::ErrorKind::BrokenPipe => closed(),
                            _ => io_failure(&e),
                        };
                        if let Ok(mut slot) = shared.lock() {
                            *slot = Some(error.clone());
                        }
                        notifier.ended(error);
                        return;
                    }
                }
            });
        let (queue, writer) = match writer {
            Ok(handle) => (Some(queue), Some(handle)),
            Err(e) => {
                log::error!("cannot start the stdout writer: {e}");
                if let Ok(mut slot) = failure.lock() {
                    *slot = Some(io_failure(&e));
                }
                (None, None)
            }
        };
        Self {
            encoder,
            queue,
            writer,
            failure,
            dropped: 0,
            dropping: false,
        }
    }

    /// Rounds dropped because stdout was not read fast enough.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn take_failure(&self) -> Option<Ended> {
        self.failure.lock().ok().and_then(|mut slot| slot.take())
    }

    pub fn write(&mut self, samples: &[Sample]) -> Result<(), Ended> {
        let mut buf = Vec::with_capacity(1024);
        for sample in samples {
            self.encoder.encode(sample, &mut buf);
        }
        self.queue_round(buf)
    }

    /// Hands one round's bytes to the writer thread, in one write.
    fn queue_round(&mut self, buf: Vec<u8>) -> Result<(), Ended> {
        let Some(queue) = &self.queue else {
            return Err(self.take_failure().unwrap_or_else(closed));
        };
        match queue.try_send(buf) {
            Ok(()) => {
                if self.dropping {
                    warn!(
                        "stdout is read again ({} rounds dropped so far)",
                        self.dropped
                    );
                    self.dropping = false;
                }
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                if !self.dropping {
                    warn!("stdout is not being read: dropping rounds until it is");
                    self.dropping = true;
                }
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(self.take_failure().unwrap_or_else(closed)),
        }
    }

    /// Lets the writer finish what is queued, waiting until `deadline` at the
    /// latest (a reader that does not read must not hold up the exit).
    pub fn finish(&mut self, deadline: Instant) -> Result<(), Ended> {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if writer.is_finished() {
                let _ = writer.join();
            } else {
                warn!("stdout is not being read: exiting without writing the last rounds");
            }
        }
        match self.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Sink for StdoutSink {
    /// One write per round ([`LineEncoder::encode_round`]). A round in which
    /// no namespace could be read prints nothing.
    fn send(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), Ended> {
        if snapshot.namespaces.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(1024);
        self.encoder.encode_round(snapshot, &mut buf);
        self.queue_round(buf)
    }

    fn finish(&mut self, deadline: Instant) -> Result<(), Ended> {
        StdoutSink::finish(self, deadline)
    }
}
