//! `synproxy-agent top`: the live terminal view. It is one more output: a
//! [`Sink`] that receives every round's `Arc<Snapshot>` from the agent's own
//! sampler and runtime, and hands it to a UI thread that owns the terminal.
//!
//! - [`model`]: rates from the kernel's totals, the history ring (pure).
//! - [`ui`]: selection, orders, pause, and what each key does (pure).
//! - [`view`]: what each panel shows, drawn with ratatui (pure).
//! - [`terminal`]: raw mode and the alternate screen, restored on every exit.
//!
//! q or Ctrl-C (a key in raw mode) restores the terminal at once and reports
//! the sink ended ([`Ended::Closed`]): the runtime then stops like on a
//! signal. SIGTERM/SIGINT stop the runtime, which finishes this sink: the UI
//! thread ends and the terminal is restored.

pub mod defense_panel;
pub mod model;
pub mod ports_panel;
pub mod terminal;
pub mod ui;
pub mod view;

use crate::logging::LogRing;
use crate::sample::Snapshot;
use crate::sinks::{EndNotifier, Ended, Sink};
use ratatui::crossterm::event::{self, Event};
use ratatui::Terminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the key reader checks whether it should stop.
const KEY_POLL: Duration = Duration::from_millis(100);

enum Msg {
    Round(Arc<Snapshot>, Instant),
    Event(Event),
    Stop,
}

/// The view as an output of the agent.
pub struct TopSink {
    tx: Sender<Msg>,
    /// Set by the UI thread when it ends on its own (q, a failure).
    ended: Arc<Mutex<Option<Ended>>>,
    ui: Option<JoinHandle<()>>,
    keys: Option<JoinHandle<()>>,
    keys_stop: Arc<AtomicBool>,
    /// Receives `()` when the UI thread is done.
    done: Receiver<()>,
}

impl TopSink {
    /// Takes over the terminal ([`terminal::enter`]) and starts the UI and
    /// key threads. The error is one line.
    pub fn start(
        interval: Duration,
        log: Arc<LogRing>,
        notifier: EndNotifier,
    ) -> Result<Self, String> {
        terminal::enter().map_err(|e| format!("cannot set up the terminal: {e}"))?;
        let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
        let term = match Terminal::new(backend) {
            Ok(t) => t,
            Err(e) => {
                terminal::restore();
                return Err(format!("cannot set up the terminal: {e}"));
            }
        };
        let (tx, rx) = channel();
        let ended = Arc::new(Mutex::new(None));
        let (done_tx, done) = channel();
        let ui = {
            let ended = Arc::clone(&ended);
            std::thread::Builder::new()
                .name("top-ui".into())
                .spawn(move || {
                    let outcome = ui_loop(term, &rx, interval, &log);
                    terminal::restore();
                    if let Some(why) = outcome {
                        *ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                        notifier.ended(why);
                    }
                    let _ = done_tx.send(());
                })
        };
        let ui = match ui {
            Ok(h) => h,
            Err(e) => {
                terminal::restore();
                return Err(format!("cannot start the terminal view: {e}"));
            }
        };
        let keys_stop = Arc::new(AtomicBool::new(false));
        let keys = {
            let (tx, stop) = (tx.clone(), Arc::clone(&keys_stop));
            std::thread::Builder::new()
                .name("top-keys".into())
                .spawn(move || read_keys(&tx, &stop))
        };
        let keys = match keys {
            Ok(h) => h,
            Err(e) => {
                let _ = tx.send(Msg::Stop);
                terminal::restore();
                return Err(format!("cannot start the key reader: {e}"));
            }
        };
        Ok(Self {
            tx,
            ended,
            ui: Some(ui),
            keys: Some(keys),
            keys_stop,
            done,
        })
    }

    fn ended(&self) -> Ended {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Ended::Failed("the terminal view stopped unexpectedly".into()))
    }
}

impl Sink for TopSink {
    fn send(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), Ended> {
        // The time the round arrived: rates are over the real time between rounds.
        self.tx
            .send(Msg::Round(Arc::clone(snapshot), Instant::now()))
            .map_err(|_| self.ended())
    }

    fn finish(&mut self, deadline: Instant) -> Result<(), Ended> {
        let _ = self.tx.send(Msg::Stop);
        self.keys_stop.store(true, Ordering::SeqCst);
        let waited = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        if matches!(waited, Ok(()) | Err(RecvTimeoutError::Disconnected)) {
            if let Some(ui) = self.ui.take() {
                let _ = ui.join();
            }
        }
        // A UI thread stuck writing to the terminal: restore from here.
        terminal::restore();
        if let Some(keys) = self.keys.take() {
            if keys.is_finished() || Instant::now() + KEY_POLL < deadline {
                let _ = keys.join();
            }
        }
        match self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(Ended::Failed(e)) => Err(Ended::Failed(e)),
            _ => Ok(()),
        }
    }
}

/// Keys and resizes, as messages; stops within [`KEY_POLL`] of `stop`.
fn read_keys(tx: &Sender<Msg>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match event::poll(KEY_POLL) {
            Ok(false) => {}
            Ok(true) => match event::read() {
                Ok(ev) => {
                    if tx.send(Msg::Event(ev)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    log::warn!("reading keys: {e}");
                    return;
                }
            },
            Err(e) => {
                log::warn!("reading keys: {e}");
                return;
            }
        }
    }
}

/// Draws on every round, key and resize; returns how the view ended when it
/// ended on its own (`None`: told to stop).
fn ui_loop<B: ratatui::backend::Backend>(
    mut term: Terminal<B>,
    rx: &Receiver<Msg>,
    interval: Duration,
    log: &LogRing,
) -> Option<Ended> {
    let mut live = model::Model::new(interval);
    let mut state = ui::UiState::default();
    loop {
        let Ok(first) = rx.recv() else {
            return None;
        };
        // Everything already queued, then one frame.
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                Msg::Stop => return None,
                Msg::Round(snapshot, at) => live.ingest(snapshot, at),
                Msg::Event(Event::Key(key)) => {
                    if let Some(action) = ui::action(&key) {
                        state.apply(action, &live);
                    }
                }
                Msg::Event(_) => {}
            }
        }
        if state.quit {
            // Give the terminal back before the agent winds down.
            terminal::restore();
            return Some(Ended::Closed("q pressed".into()));
        }
        if !terminal::is_active() {
            return None;
        }
        // Lets the tmux test check that a panic gives the terminal back.
        #[cfg(debug_assertions)]
        if live.rounds >= 2 && std::env::var_os("SYNPROXY_AGENT_TOP_TEST_PANIC").is_some() {
            panic!(
                "SYNPROXY_AGENT_TOP_TEST_PANIC is set: panicking on purpose (debug builds only)"
            );
        }
        let status = view::Status {
            last_log: log.last(),
        };
        if let Err(e) = term.draw(|f| view::render(f, &live, &state, &status)) {
            return Some(Ended::Failed(format!("cannot draw on the terminal: {e}")));
        }
    }
}
