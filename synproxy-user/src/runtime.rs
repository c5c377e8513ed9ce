//! The schedule around the sampler: signals, ticks or stdin requests, handing
//! each round's snapshot to the sinks, and one shutdown deadline. Sampling
//! (setns, /proc and map reads, attaching probes) runs on a blocking thread,
//! so a signal is seen at once and interrupts a long attach instead of
//! waiting for it, and network outputs (tasks on this runtime) are served
//! while a round is in progress.

use crate::cli::SignalMode;
use crate::sampler::Sampler;
use crate::sinks::{Ended, Sinks};
use crate::sources::ebpf::Stop;
use log::{info, warn};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Everything after a signal (detaching probes, the last writes) fits in this.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(900);

/// How the agent ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Signal, stdin EOF or closed stdout: a clean stop.
    Clean,
    /// `--once` could not read every selected namespace.
    SampleFailed,
    /// An output failed (stdout for another reason than being closed), or
    /// the sampler died.
    OutputFailed,
}

pub struct Schedule {
    pub once: bool,
    pub interval: Duration,
    pub signal: SignalMode,
}

/// SIGTERM and SIGINT, caught from the first moments of the process on.
pub struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl Signals {
    /// Must run inside the runtime (`Runtime::enter`). From here on the
    /// signals are recorded, even before anyone waits for them.
    pub fn install() -> Self {
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        if let Err(e) = term.as_ref().and(int.as_ref()) {
            warn!("cannot install signal handlers ({e}); relying on default signal handling");
        }
        Self {
            term: term.ok(),
            int: int.ok(),
        }
    }

    /// Resolves with the name of the next SIGTERM/SIGINT.
    pub async fn recv(&mut self) -> &'static str {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => "SIGTERM",
            _ = next(&mut self.int) => "SIGINT",
        }
    }
}

/// Blocks SIGTERM/SIGINT for the calling thread (`block = true`) or unblocks
/// them: main blocks them before the handlers exist, so a signal that early
/// is held for the handlers instead of killing the agent.
pub fn block_shutdown_signals(block: bool) {
    // SAFETY: sigset operations on a local, zero-initialised sigset_t; plain
    // syscall with valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let how = if block {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// How blocking work ended.
pub enum Blocking<T> {
    Done(T),
    /// A signal came: the work stopped early and returned.
    Stopped(T, &'static str),
    /// A signal came before the work had created anything that outlives the
    /// process: it was left to die with the process.
    Abandoned(&'static str),
    /// The work panicked.
    Died,
}

/// Runs `f` (blocking work) on the blocking pool. A signal meanwhile asks it
/// to stop; it is waited for only if it may have created kprobe events (the
/// one thing that outlives the process), so start-up ends at once otherwise.
pub async fn blocking_or_signal<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    signals: &mut Signals,
    stop: &Stop,
) -> Blocking<T> {
    let mut task = tokio::task::spawn_blocking(f);
    tokio::select! {
        done = &mut task => match done {
            Ok(value) => Blocking::Done(value),
            Err(_) => Blocking::Died,
        },
        signal = signals.recv() => {
            if !stop.request() {
                return Blocking::Abandoned(signal);
            }
            match task.await {
                Ok(value) => Blocking::Stopped(value, signal),
                Err(_) => Blocking::Died,
            }
        }
    }
}

enum Step {
    Continue(Sampler),
    Stop(Option<Sampler>, Exit),
}

async fn round(sampler: Sampler, sinks: &mut Sinks, signals: &mut Signals, stop: &Stop) -> Step {
    let done = blocking_or_signal(
        move || {
            let mut sampler = sampler;
            let round = sampler.sample();
            (sampler, round)
        },
        signals,
        stop,
    )
    .await;
    match done {
        Blocking::Done((sampler, round)) => match sinks.send(round) {
            Ok(()) => Step::Continue(sampler),
            Err(ended) => Step::Stop(Some(sampler), exit_for(ended)),
        },
        Blocking::Stopped((sampler, _), signal) => {
            info!("{signal}, exiting");
            Step::Stop(Some(sampler), Exit::Clean)
        }
        Blocking::Abandoned(signal) => {
            info!("{signal}, exiting");
            Step::Stop(None, Exit::Clean)
        }
        Blocking::Died => {
            log::error!("the sampler stopped unexpectedly");
            Step::Stop(None, Exit::OutputFailed)
        }
    }
}

pub async fn run(
    sampler: Sampler,
    mut sinks: Sinks,
    schedule: Schedule,
    mut signals: Signals,
    stop: Arc<Stop>,
) -> Exit {
    let (sampler, exit) = run_loop(sampler, &mut sinks, &schedule, &mut signals, &stop).await;
    let deadline = Instant::now() + SHUTDOWN_BUDGET;
    if let Some(mut sampler) = sampler {
        sampler.shutdown();
    }
    // --once has no signal to hurry it: give a slow reader time.
    let deadline = if schedule.once {
        deadline + Duration::from_secs(30)
    } else {
        deadline
    };
    match (sinks.finish(deadline), exit) {
        (Err(Ended::Failed(e)), Exit::Clean | Exit::SampleFailed) => {
            log::error!("{e}");
            Exit::OutputFailed
        }
        (_, exit) => exit,
    }
}

/// Logs how a sink ended and maps it to the agent's exit.
fn exit_for(ended: Ended) -> Exit {
    match ended {
        Ended::Closed(what) => {
            info!("{what}, exiting");
            Exit::Clean
        }
        Ended::Failed(e) => {
            log::error!("{e}");
            Exit::OutputFailed
        }
    }
}

async fn run_loop(
    mut sampler: Sampler,
    sinks: &mut Sinks,
    schedule: &Schedule,
    signals: &mut Signals,
    stop: &Stop,
) -> (Option<Sampler>, Exit) {
    if schedule.once {
        return match round(sampler, sinks, signals, stop).await {
            Step::Continue(sampler) => {
                let failed = sampler.last_round_failed();
                (
                    Some(sampler),
                    if failed {
                        Exit::SampleFailed
                    } else {
                        Exit::Clean
                    },
                )
            }
            Step::Stop(sampler, exit) => (sampler, exit),
        };
    }

    let primed = blocking_or_signal(
        move || {
            let mut sampler = sampler;
            sampler.prime();
            sampler
        },
        signals,
        stop,
    )
    .await;
    sampler = match primed {
        Blocking::Done(sampler) => sampler,
        Blocking::Stopped(sampler, signal) => {
            info!("{signal}, exiting");
            return (Some(sampler), Exit::Clean);
        }
        Blocking::Abandoned(signal) => {
            info!("{signal}, exiting");
            return (None, Exit::Clean);
        }
        Blocking::Died => {
            log::error!("the sampler stopped unexpectedly");
            return (None, Exit::OutputFailed);
        }
    };
    let mut drain = sampler.drain_period().map(|period| {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        t
    });
    let mut ticker = tokio::time::interval(schedule.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut lines = match schedule.signal {
        SignalMode::Stdin => Some(stdin_lines()),
        SignalMode::None => None,
    };
    loop {
        let due = tokio::select! {
            _ = ticker.tick(), if lines.is_none() => true,
            line = async { lines.as_mut()?.recv().await }, if lines.is_some() => match line {
                Some(()) => true,
                None => {
                    info!("stdin closed, exiting");
                    return (Some(sampler), Exit::Clean);
                }
            },
            _ = async { drain.as_mut()?.tick().await; Some(()) }, if drain.is_some() => {
                sampler.drain_rates();
                false
            }
            signal = signals.recv() => {
                info!("{signal}, exiting");
                return (Some(sampler), Exit::Clean);
            }
            ended = sinks.ended() => {
                return (Some(sampler), exit_for(ended));
            }
        };
        if !due {
            continue;
        }
        match round(sampler, sinks, signals, stop).await {
            Step::Continue(s) => sampler = s,
            Step::Stop(s, exit) => return (s, exit),
        }
    }
}

/// One message per line on stdin; the channel closes on EOF or a read error.
/// A plain thread, because a blocked stdin read must not hold up shutdown.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut line = String::new();
            let stdin = std::io::stdin();
            loop {
                line.clear();
                match stdin.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if tx.blocking_send(()).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!("stdin: {e}");
                        break;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the stdin reader: {e}");
    }
    rx
}
