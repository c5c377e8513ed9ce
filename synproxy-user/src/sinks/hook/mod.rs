//! `--on-attack CMD`: runs a command at each attack's start and end, with
//! the event as one JSON document on its stdin and its figures in a few
//! environment variables (docs/hook.md). [`HookSink::attack`] only hands the
//! event to the dispatcher thread ([`dispatch`]); each run ([`runner`]) is on
//! its own thread, so sampling never waits for a hook.

pub mod config;
pub mod dispatch;
pub mod runner;
#[cfg(test)]
mod runner_tests;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, HookConfig};

use super::{Ended, Sink};
use crate::analysis::attack::{AttackEvent, AttackPhase};
use crate::sample::Snapshot;
use dispatch::{Dispatcher, Logger, Msg, QUEUE_TOTAL};
use runner::Cut;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time past the exit deadline given to killed hooks to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(2);

pub struct HookSink {
    tx: Sender<Msg>,
    cut: Arc<Cut>,
    in_channel: Arc<AtomicUsize>,
    /// Whether an overflow of the channel was logged (once until it drains).
    overflow_logged: AtomicBool,
    /// Closed by the dispatcher thread when it is done.
    stopped: Receiver<()>,
    log: Logger,
    finished: bool,
}

impl HookSink {
    /// Starts the dispatcher thread; the error is one line.
    pub fn start(hook: HookConfig) -> Result<Self, String> {
        log::info!(
            "--on-attack: {} runs at each attack's start and end, without capabilities (timeout {:?}, one at a time per namespace)",
            hook.display(),
            hook.timeout
        );
        let log: Logger = Arc::new(|level, line| log::log!(level, "{line}"));
        Self::start_logging(hook, log)
    }

    /// As [`HookSink::start`], with the log lines going to `log`.
    pub fn start_logging(hook: HookConfig, log: Logger) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel();
        let (stopped_tx, stopped) = mpsc::channel::<()>();
        let cut = Arc::new(Cut::default());
        let in_channel = Arc::new(AtomicUsize::new(0));
        let dispatcher = Dispatcher::new(
            Arc::new(hook),
            cut.clone(),
            log.clone(),
            in_channel.clone(),
            tx.clone(),
        );
        std::thread::Builder::new()
            .name("hook".into())
            .spawn(move || {
                dispatcher.run(rx);
                drop(stopped_tx);
            })
            .map_err(|e| format!("--on-attack: cannot start the hook thread: {e}"))?;
        Ok(Self {
            tx,
            cut,
            in_channel,
            overflow_logged: AtomicBool::new(false),
            stopped,
            log,
            finished: false,
        })
    }
}

impl Sink for HookSink {
    fn send(&mut self, _snapshot: &Arc<Snapshot>) -> Result<(), Ended> {
        Ok(())
    }

    fn attack(&mut self, event: &Arc<AttackEvent>) -> Result<(), Ended> {
        if event.phase == AttackPhase::Ongoing || self.finished {
            return Ok(());
        }
        if self.in_channel.load(Ordering::SeqCst) >= QUEUE_TOTAL {
            if !self.overflow_logged.swap(true, Ordering::SeqCst) {
                (self.log)(
                    log::Level::Warn,
                    format!(
                        "hook: {QUEUE_TOTAL} events not yet taken by the hook thread; dropping attack {} ({}) and further events until it catches up",
                        event.id,
                        event.phase.name()
                    ),
                );
            }
            return Ok(());
        }
        self.overflow_logged.store(false, Ordering::SeqCst);
        self.in_channel.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Msg::Event(event.clone())).is_err() {
            self.in_channel.fetch_sub(1, Ordering::SeqCst);
            (self.log)(
                log::Level::Warn,
                format!(
                    "hook: the hook thread has stopped; attack {} not run",
                    event.id
                ),
            );
        }
        Ok(())
    }

    /// Runs what is queued and waits for running hooks until `deadline`;
    /// then they are killed (one line each) and what did not start is
    /// counted in one line.
    fn finish(&mut self, deadline: Instant) -> Result<(), Ended> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.cut.set(deadline);
        if self.tx.send(Msg::Finish).is_err() {
            return Ok(());
        }
        let wait = deadline.saturating_duration_since(Instant::now()) + REAP_GRACE;
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.stopped.recv_timeout(wait) {
            (self.log)(
                log::Level::Warn,
                "hook: killed hooks not reaped by the exit deadline; not waiting for them".into(),
            );
        }
        Ok(())
    }
}
