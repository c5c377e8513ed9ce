//! Which hook runs when: one at a time per namespace, in the order the
//! events came (an attack's end after its start), at most [`MAX_RUNNING`]
//! at once over all namespaces, each on its own short-lived thread. Queues
//! are bounded per namespace and in total; what overflows is dropped and
//! logged.

use super::config::HookConfig;
use super::runner::{self, Cut, Outcome};
use crate::analysis::attack::{AttackEvent, AttackPhase};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hooks running at once, over all namespaces.
pub const MAX_RUNNING: usize = 4;
/// Events waiting per namespace behind its running hook.
pub const QUEUE_PER_NETNS: usize = 8;
/// Events waiting over all namespaces (and in the channel to the dispatcher).
pub const QUEUE_TOTAL: usize = 1024;
/// Ids of attacks whose start was dropped, so their end is dropped too.
const DROPPED_IDS: usize = 4096;

/// A namespace's label (`None`: the agent's own).
pub type Key = Option<String>;

/// A log line: its level and text.
pub type Logger = Arc<dyn Fn(log::Level, String) + Send + Sync>;

pub enum Msg {
    Event(Arc<AttackEvent>),
    Done(Key),
    /// The agent exits: run what is queued until the [`Cut`], then stop.
    Finish,
}

#[derive(Default)]
struct Netns {
    waiting: VecDeque<Arc<AttackEvent>>,
    running: bool,
    /// Events dropped since its queue was last empty.
    dropped: u64,
}

pub struct Dispatcher {
    pub hook: Arc<HookConfig>,
    pub cut: Arc<Cut>,
    pub log: Logger,
    /// Events sent but not yet received (the sink's bound on the channel).
    pub in_channel: Arc<AtomicUsize>,
    pub tx: Sender<Msg>,
    netns: HashMap<Key, Netns>,
    /// Namespaces with a waiting event and no running hook, oldest first.
    ready: VecDeque<Key>,
    running: usize,
    queued: usize,
    dropped_starts: HashSet<String>,
    finishing: bool,
}

impl Dispatcher {
    pub fn new(
        hook: Arc<HookConfig>,
        cut: Arc<Cut>,
        log: Logger,
        in_channel: Arc<AtomicUsize>,
        tx: Sender<Msg>,
    ) -> Self {
        Self {
            hook,
            cut,
            log,
            in_channel,
            tx,
            netns: HashMap::new(),
            ready: VecDeque::new(),
            running: 0,
            queued: 0,
            dropped_starts: HashSet::new(),
            finishing: false,
        }
    }

    /// The dispatcher's loop; returns once finishing is done.
    pub fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let msg = if self.finishing {
                if self.running == 0 && (self.ready.is_empty() || self.past_cut()) {
                    break;
                }
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                }
            };
            match msg {
                Some(Msg::Event(event)) => {
                    self.in_channel.fetch_sub(1, Ordering::SeqCst);
                    self.enqueue(event);
                }
                Some(Msg::Done(key)) => self.done(key),
                Some(Msg::Finish) => self.finishing = true,
                None => {}
            }
            if !self.past_cut() {
                self.schedule();
            }
        }
        if self.queued > 0 {
            (self.log)(
                log::Level::Warn,
                format!(
                    "hook: {} queued run(s) not started: the agent exits",
                    self.queued
                ),
            );
        }
    }

    fn past_cut(&self) -> bool {
        self.finishing && self.cut.get().is_some_and(|d| Instant::now() >= d)
    }

    fn enqueue(&mut self, event: Arc<AttackEvent>) {
        if event.phase == AttackPhase::Ongoing {
            return;
        }
        if event.phase == AttackPhase::End && self.dropped_starts.remove(&event.id) {
            return; // its start was dropped: the hook never heard of it
        }
        let key = event.netns.clone();
        if self.queued >= QUEUE_TOTAL {
            (self.log)(
                log::Level::Warn,
                format!(
                    "hook: {QUEUE_TOTAL} events waiting over all namespaces; dropped the {} of attack {}",
                    event.phase.name(),
                    event.id
                ),
            );
            if event.phase == AttackPhase::Start {
                self.remember_dropped(&event.id);
            }
            return;
        }
        let netns = self.netns.entry(key.clone()).or_default();
        let mut incoming = Some(event);
        if netns.waiting.len() >= QUEUE_PER_NETNS {
            let (what, removed) = drop_oldest(&mut netns.waiting, &mut incoming);
            self.queued -= removed;
            netns.dropped += 1;
            if netns.dropped == 1 {
                (self.log)(
                    log::Level::Warn,
                    format!(
                        "hook: namespace {} has {QUEUE_PER_NETNS} events waiting behind its running hook; {what} (further drops are counted until its queue empties)",
                        label(&key)
                    ),
                );
            }
            if let Some(id) = what.start_id() {
                if !what.end_removed() {
                    self.remember_dropped(&id);
                }
            }
        }
        let netns = self.netns.entry(key.clone()).or_default();
        if let Some(event) = incoming {
            netns.waiting.push_back(event);
            self.queued += 1;
        }
        if !netns.running && !netns.waiting.is_empty() && !self.ready.contains(&key) {
            self.ready.push_back(key);
        }
    }

    fn remember_dropped(&mut self, id: &str) {
        if self.dropped_starts.len() >= DROPPED_IDS {
            self.dropped_starts.clear();
        }
        self.dropped_starts.insert(id.to_string());
    }

    fn done(&mut self, key: Key) {
        self.running = self.running.saturating_sub(1);
        let Some(netns) = self.netns.get_mut(&key) else {
            return;
        };
        netns.running = false;
        if !netns.waiting.is_empty() {
            self.ready.push_back(key);
            return;
        }
        if netns.dropped > 1 {
            (self.log)(
                log::Level::Warn,
                format!(
                    "hook: namespace {}: {} events dropped while its queue was full",
                    label(&key),
                    netns.dropped
                ),
            );
        }
        self.netns.remove(&key);
    }

    fn schedule(&mut self) {
        while self.running < MAX_RUNNING {
            let Some(key) = self.ready.pop_front() else {
                return;
            };
            let Some(netns) = self.netns.get_mut(&key) else {
                continue;
            };
            let Some(event) = netns.waiting.pop_front() else {
                continue;
            };
            self.queued -= 1;
            netns.running = true;
            self.running += 1;
            let (hook, cut, log, tx) = (
                self.hook.clone(),
                self.cut.clone(),
                self.log.clone(),
                self.tx.clone(),
            );
            let done_key = key.clone();
            let spawned = std::thread::Builder::new()
                .name("hook-run".into())
                .spawn(move || {
                    let report = runner::run(&hook, &event, &cut);
                    let level = match report.outcome {
                        Outcome::Done => log::Level::Debug,
                        _ => log::Level::Warn,
                    };
                    log(level, report.line(&hook, &event));
                    if report.stdout.bytes > 0 {
                        log(
                            log::Level::Debug,
                            format!(
                                "hook for attack {}: stdout ({} bytes): {}",
                                event.id,
                                report.stdout.bytes,
                                report.stdout.first_lines(1)
                            ),
                        );
                    }
                    let _ = tx.send(Msg::Done(done_key));
                });
            if let Err(e) = spawned {
                (self.log)(
                    log::Level::Warn,
                    format!("hook: cannot start a thread for the hook: {e}; one event dropped"),
                );
                self.done(key);
            }
        }
    }
}

/// What was dropped from a full queue.
enum Dropped {
    /// An attack's start (and its end, if it was waiting too, or was the
    /// incoming event).
    Start { id: String, end_removed: bool },
    /// An end (no start was waiting).
    End { id: String },
}

impl Dropped {
    fn start_id(&self) -> Option<String> {
        match self {
            Dropped::Start { id, .. } => Some(id.clone()),
            Dropped::End { .. } => None,
        }
    }

    fn end_removed(&self) -> bool {
        matches!(
            self,
            Dropped::Start {
                end_removed: true,
                ..
            }
        )
    }
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dropped::Start { id, .. } => {
                write!(
                    f,
                    "dropped the oldest waiting start (attack {id}) and its end"
                )
            }
            Dropped::End { id } => write!(f, "dropped the oldest waiting end (attack {id})"),
        }
    }
}

/// Makes room in a full queue: the oldest waiting start goes, with its end
/// (waiting or incoming), so the hook hears of neither; with only ends
/// waiting, the oldest end. Returns what went and how many queued events
/// were removed.
fn drop_oldest(
    waiting: &mut VecDeque<Arc<AttackEvent>>,
    incoming: &mut Option<Arc<AttackEvent>>,
) -> (Dropped, usize) {
    if let Some(at) = waiting.iter().position(|e| e.phase == AttackPhase::Start) {
        let id = waiting[at].id.clone();
        waiting.remove(at);
        let mut removed = 1;
        let mut end_removed = false;
        if let Some(end) = waiting.iter().position(|e| e.id == id) {
            waiting.remove(end);
            removed += 1;
            end_removed = true;
        }
        if incoming.as_ref().is_some_and(|e| e.id == id) {
            *incoming = None;
            end_removed = true;
        }
        return (Dropped::Start { id, end_removed }, removed);
    }
    let id = waiting
        .pop_front()
        .map(|e| e.id.clone())
        .unwrap_or_default();
    (Dropped::End { id }, 1)
}

/// A namespace for the log.
pub fn label(key: &Key) -> String {
    match key {
        Some(name) => format!("{name:?}"),
        None => "(the agent's own)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::hook::runner_tests::event;

    fn queue(events: &[(AttackPhase, u64)]) -> VecDeque<Arc<AttackEvent>> {
        events
            .iter()
            .map(|&(phase, start)| Arc::new(event("a", phase, start)))
            .collect()
    }

    fn starts(waiting: &VecDeque<Arc<AttackEvent>>) -> Vec<(AttackPhase, u64)> {
        waiting.iter().map(|e| (e.phase, e.start_ns)).collect()
    }

    #[test]
    fn a_full_queue_loses_a_whole_attack_before_it_loses_an_end() {
        use AttackPhase::{End, Start};
        // The oldest start goes with its waiting end.
        let mut waiting = queue(&[(End, 1), (Start, 2), (Start, 3), (End, 2)]);
        let mut incoming = Some(Arc::new(event("a", End, 3)));
        let (what, removed) = drop_oldest(&mut waiting, &mut incoming);
        assert_eq!(removed, 2);
        assert!(what.end_removed());
        assert_eq!(starts(&waiting), [(End, 1), (Start, 3)]);
        assert!(incoming.is_some());
        // The incoming end of the dropped start goes too.
        let (what, removed) = drop_oldest(&mut waiting, &mut incoming);
        assert_eq!((removed, what.start_id().is_some()), (1, true));
        assert!(what.end_removed() && incoming.is_none());
        assert_eq!(starts(&waiting), [(End, 1)]);
        // Only ends: the oldest end.
        let mut waiting = queue(&[(End, 4), (End, 5)]);
        let mut incoming = Some(Arc::new(event("a", Start, 6)));
        let (what, removed) = drop_oldest(&mut waiting, &mut incoming);
        assert_eq!(removed, 1);
        assert_eq!(
            what.to_string(),
            "dropped the oldest waiting end (attack a/syn_flood/443/4)"
        );
        assert_eq!(starts(&waiting), [(End, 5)]);
    }
}
