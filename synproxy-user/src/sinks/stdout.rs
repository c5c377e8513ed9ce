//! Line protocol on stdout, one write per sampling round so a reader (Telegraf
//! execd) sees whole lines. A reader that stops reading never blocks sampling
//! or shutdown: a round is written by the sampling thread itself only when the
//! write cannot block (a regular file or `/dev/null`; a pipe with room for a
//! round of at most `PIPE_BUF` bytes, written atomically; a socket, without
//! waiting), and otherwise handed to a writer thread (started on first need)
//! behind a short queue; rounds are dropped, and counted, while the queue is
//! full. Once a round is queued, the following ones are too until the writer
//! has caught up, so rounds stay in order. A closed stdout is reported as
//! such, not panicked on.

use super::line_protocol::LineEncoder;
use super::{EndNotifier, Ended, Sink};
use crate::analysis::attack::AttackEvent;
use crate::sample::{Sample, Snapshot};
use log::warn;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Rounds queued and not yet written by the writer thread.
    pending: Arc<AtomicUsize>,
    /// Set by the writer when stdout failed; it stops then.
    failure: Arc<Mutex<Option<Ended>>>,
    notifier: EndNotifier,
    /// What stdout is: how a round can be written without blocking.
    direct: Direct,
    /// The round being encoded (reused).
    buf: Vec<u8>,
    dropped: u64,
    dropping: bool,
}

/// How stdout can be written to without blocking, from what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direct {
    /// A regular file or `/dev/null`: writes do not wait for a reader.
    File,
    /// A pipe or FIFO: when poll says it has room, up to `PIPE_BUF` bytes.
    Pipe,
    /// A socket: `send` with `MSG_DONTWAIT`.
    Socket,
    /// Anything else (a terminal): always through the writer thread.
    Never,
}

const STDOUT: libc::c_int = 1;

impl Direct {
    fn of_stdout() -> Self {
        // SAFETY: `st` is a plain C struct fstat fills in; fd 1 is only
        // inspected.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the pointer refers to `st`, which outlives the call.
        if unsafe { libc::fstat(STDOUT, &mut st) } != 0 {
            return Direct::Never;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Direct::File,
            libc::S_IFIFO => Direct::Pipe,
            libc::S_IFSOCK => Direct::Socket,
            // /dev/null (1:3): discards at once.
            libc::S_IFCHR if libc::major(st.st_rdev) == 1 && libc::minor(st.st_rdev) == 3 => {
                Direct::File
            }
            _ => Direct::Never,
        }
    }
}

/// What a direct write did.
enum Wrote {
    /// This many bytes (all, or the first part, the rest to be queued).
    Bytes(usize),
    Failed(io::Error),
}

/// Writes as much of `buf` to stdout as can be written without blocking.
fn write_direct(direct: Direct, buf: &[u8]) -> Wrote {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        let n = match direct {
            Direct::Never => return Wrote::Bytes(done),
            Direct::Pipe => {
                if rest.len() > libc::PIPE_BUF || done > 0 {
                    return Wrote::Bytes(done);
                }
                let mut fds = libc::pollfd {
                    fd: STDOUT,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, zero timeout.
                let ready = unsafe { libc::poll(&mut fds, 1, 0) };
                if ready != 1 || fds.revents & libc::POLLOUT == 0 {
                    // Full (or closed: the queued write reports it).
                    return Wrote::Bytes(done);
                }
                // SAFETY: the pointer and length describe `rest`, which
                // outlives the call.
                unsafe { libc::write(STDOUT, rest.as_ptr().cast(), rest.len()) }
            }
            // SAFETY: as above.
            Direct::File => unsafe { libc::write(STDOUT, rest.as_ptr().cast(), rest.len()) },
            // SAFETY: as above; MSG_DONTWAIT never blocks, MSG_NOSIGNAL
            // turns a closed peer into EPIPE.
            Direct::Socket => unsafe {
                libc::send(
                    STDOUT,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            },
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Wrote::Bytes(done),
                _ => return Wrote::Failed(e),
            }
        }
        if n == 0 {
            return Wrote::Bytes(done);
        }
        done += n as usize;
    }
    Wrote::Bytes(done)
}

/// The reader went away (EPIPE): time to stop, not an error to shout about.
fn closed() -> Ended {
    Ended::Closed("stdout closed".into())
}

fn io_failure(e: &io::Error) -> Ended {
    Ended::Failed(format!("stdout: {e}"))
}

impl StdoutSink {
    /// `notifier` learns when stdout failed in the writer thread.
    pub fn new(encoder: LineEncoder, notifier: EndNotifier) -> Self {
        Self {
            encoder,
            queue: None,
            writer: None,
            pending: Arc::new(AtomicUsize::new(0)),
            failure: Arc::new(Mutex::new(None)),
            notifier,
            direct: Direct::of_stdout(),
            buf: Vec::with_capacity(1024),
            dropped: 0,
            dropping: false,
        }
    }

    /// The writer thread's queue, starting the thread on first use.
    fn queue(&mut self) -> Result<&SyncSender<Vec<u8>>, Ended> {
        if self.writer.is_none() {
            if let Some(e) = self.peek_failure() {
                return Err(e);
            }
            let (queue, rounds) = sync_channel::<Vec<u8>>(QUEUE_ROUNDS);
            let shared = Arc::clone(&self.failure);
            let pending = Arc::clone(&self.pending);
            let notifier = self.notifier.clone();
            let writer = std::thread::Builder::new()
                .name("stdout".into())
                .spawn(move || {
                    let stdout = io::stdout();
                    for buf in rounds {
                        let mut out = stdout.lock();
                        let written = out.write_all(&buf).and_then(|()| out.flush());
                        pending.fetch_sub(1, Ordering::SeqCst);
                        if let Err(e) = written {
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
            match writer {
                Ok(handle) => {
                    self.queue = Some(queue);
                    self.writer = Some(handle);
                }
                Err(e) => {
                    log::error!("cannot start the stdout writer: {e}");
                    let error = io_failure(&e);
                    if let Ok(mut slot) = self.failure.lock() {
                        *slot = Some(error.clone());
                    }
                    return Err(error);
                }
            }
        }
        match &self.queue {
            Some(queue) => Ok(queue),
            None => Err(self.take_failure().unwrap_or_else(closed)),
        }
    }

    fn peek_failure(&self) -> Option<Ended> {
        self.failure.lock().ok().and_then(|slot| slot.clone())
    }

    /// Rounds dropped because stdout was not read fast enough.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn take_failure(&self) -> Option<Ended> {
        self.failure.lock().ok().and_then(|mut slot| slot.take())
    }

    pub fn write(&mut self, samples: &[Sample]) -> Result<(), Ended> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for sample in samples {
            self.encoder.encode(sample, &mut buf);
        }
        let result = self.write_round(&buf);
        self.buf = buf;
        result
    }

    /// Writes one round: directly when that cannot block and nothing is
    /// queued before it, otherwise (what is left of it) through the writer.
    fn write_round(&mut self, buf: &[u8]) -> Result<(), Ended> {
        let mut done = 0;
        if self.direct != Direct::Never && self.pending.load(Ordering::SeqCst) == 0 {
            match write_direct(self.direct, buf) {
                Wrote::Bytes(n) => done = n,
                Wrote::Failed(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(closed()),
                Wrote::Failed(e) => return Err(io_failure(&e)),
            }
        }
        if done == buf.len() {
            self.read_again();
            return Ok(());
        }
        self.queue_round(buf[done..].to_vec())
    }

    fn read_again(&mut self) {
        if self.dropping {
            warn!(
                "stdout is read again ({} rounds dropped so far)",
                self.dropped
            );
            self.dropping = false;
        }
    }

    /// Hands one round's bytes to the writer thread, in one write.
    fn queue_round(&mut self, buf: Vec<u8>) -> Result<(), Ended> {
        let pending = Arc::clone(&self.pending);
        let queue = self.queue()?;
        pending.fetch_add(1, Ordering::SeqCst);
        let sent = queue.try_send(buf);
        if sent.is_err() {
            pending.fetch_sub(1, Ordering::SeqCst);
        }
        match sent {
            Ok(()) => {
                self.read_again();
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
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.encoder.encode_round(snapshot, &mut buf);
        let result = self.write_round(&buf);
        self.buf = buf;
        result
    }

    fn finish(&mut self, deadline: Instant) -> Result<(), Ended> {
        StdoutSink::finish(self, deadline)
    }

    /// An attack's start or end: its line at once, between rounds.
    fn attack(&mut self, event: &Arc<AttackEvent>) -> Result<(), Ended> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.encoder.encode_attack(event, &mut buf);
        let result = self.write_round(&buf);
        self.buf = buf;
        result
    }
}
