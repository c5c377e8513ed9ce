//! The schedule around the sampler: signals, ticks or stdin requests, handing
//! each round's snapshot to the sinks, and one shutdown deadline. Sampling
//! (setns, /proc and map reads, attaching probes) and the schedule run on one
//! long-lived thread (`sampler`) that sleeps until its next round and hands
//! the round to the sinks itself: one wake-up per round, nothing in between
//! (the eBPF drain ticks only with eBPF). The async runtime's thread serves
//! the network outputs and waits for signals and sink failures; a signal
//! asks the sampler thread to stop at once (a long attach is interrupted)
//! and is never held up by a round in progress unless probes may have to be
//! detached.

use crate::cli::SignalMode;
use crate::sampler::Sampler;
use crate::sinks::{Ended, Sinks};
use crate::sources::ebpf::Stop;
use crate::stdin_requests;
use log::{info, warn};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
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

/// SIGTERM, SIGINT and SIGQUIT (each ends the run cleanly), SIGHUP (logged
/// and ignored by the agent, which has no configuration file to re-read and
/// no terminal to lose; it ends `top`, whose terminal hung up), caught from
/// the first moments of the process on, and SIGUSR1 (release the eBPF
/// probes, see [`crate::sources::ebpf::EbpfSource::release`]).
pub struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    quit: Option<Signal>,
    hup: Option<Signal>,
    /// Whether SIGHUP ends the run (`top`) or is only logged (the agent).
    hup_ends: bool,
    usr1: Option<Signal>,
}

impl Signals {
    /// Must run inside the runtime (`Runtime::enter`). From here on the
    /// signals are recorded, even before anyone waits for them.
    pub fn install() -> Self {
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        let quit = signal(SignalKind::quit());
        let hup = signal(SignalKind::hangup());
        let installed = term.as_ref().and(int.as_ref()).and(quit.as_ref());
        if let Err(e) = installed.and(hup.as_ref()) {
            warn!("cannot install signal handlers ({e}); relying on default signal handling");
        }
        let usr1 = signal(SignalKind::user_defined1());
        if let Err(e) = &usr1 {
            warn!("cannot install the SIGUSR1 handler ({e}): the probes cannot be released on request");
        }
        Self {
            term: term.ok(),
            int: int.ok(),
            quit: quit.ok(),
            hup: hup.ok(),
            hup_ends: false,
            usr1: usr1.ok(),
        }
    }

    /// SIGHUP ends the run like SIGTERM (`top`: its terminal is gone).
    pub fn end_on_hangup(&mut self) {
        self.hup_ends = true;
    }

    /// The SIGUSR1 stream, to wait on beside [`Signals::recv`].
    fn take_usr1(&mut self) -> Option<Signal> {
        self.usr1.take()
    }

    /// Resolves with the name of the next signal that ends the run
    /// (SIGTERM, SIGINT, SIGQUIT; SIGHUP for `top`). A SIGHUP the agent
    /// ignores is logged here.
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
        loop {
            tokio::select! {
                _ = next(&mut self.term) => return "SIGTERM",
                _ = next(&mut self.int) => return "SIGINT",
                _ = next(&mut self.quit) => return "SIGQUIT",
                _ = next(&mut self.hup) => {
                    if self.hup_ends {
                        return "SIGHUP";
                    }
                    info!("SIGHUP: ignored (nothing to re-read; SIGTERM, SIGINT or SIGQUIT end the agent)");
                }
            }
        }
    }
}

/// Resolves at the next SIGUSR1 (never without a handler).
async fn recv_usr1(usr1: &mut Option<Signal>) {
    match usr1 {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Blocks the signals [`Signals`] handles (SIGTERM, SIGINT, SIGQUIT, SIGHUP)
/// for the calling thread (`block = true`) or unblocks them: main blocks them
/// before the handlers exist, so a signal that early is held for the
/// handlers instead of killing the agent.
pub fn block_shutdown_signals(block: bool) {
    // SAFETY: sigset operations on a local, zero-initialised sigset_t; plain
    // syscall with valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGQUIT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let how = if block {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Raises the soft limit on open files to the hard limit: `--netns all` keeps
/// one stat file open per namespace (see [`crate::sources::proc::netns`]).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write `limit`, which outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
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

/// What the sampler thread is told.
enum Control {
    /// Stop, end with this exit, and let the sinks finish by this deadline.
    Stop(Exit, Instant),
    /// `--signal stdin`: a line came, sample now.
    Request,
    /// `--signal stdin`: EOF or a read error.
    StdinClosed,
    /// SIGUSR1: release the eBPF probes (and so the modules they hold).
    Release,
}

pub async fn run(
    sampler: Sampler,
    mut sinks: Sinks,
    schedule: Schedule,
    mut signals: Signals,
    stop: Arc<Stop>,
) -> Exit {
    let mut ends = sinks.take_ends();
    let (control, control_rx) = std::sync::mpsc::channel::<Control>();
    let pending = stdin_requests::Pending::default();
    if schedule.signal == SignalMode::Stdin && !schedule.once {
        let control = control.clone();
        stdin_requests::spawn(pending.clone(), move |event| {
            let message = match event {
                stdin_requests::Event::Request => Control::Request,
                stdin_requests::Event::Closed => Control::StdinClosed,
            };
            control.send(message).is_ok()
        });
    }
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<Exit>();
    let handle = tokio::runtime::Handle::current();
    let thread_stop = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || {
            // Sinks may use the runtime (channels, tasks) from this thread.
            let _runtime = handle.enter();
            let exit = sampler_thread(
                sampler,
                &mut sinks,
                (&schedule, &pending),
                &control_rx,
                &thread_stop,
            );
            let _ = done_tx.send(exit);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the sampler thread: {e}");
        return Exit::OutputFailed;
    }
    let mut usr1 = signals.take_usr1();
    let stopping = loop {
        tokio::select! {
            exit = &mut done => return exit.unwrap_or_else(|_| {
                log::error!("the sampler stopped unexpectedly");
                Exit::OutputFailed
            }),
            signal = signals.recv() => {
                info!("{signal}, exiting");
                // Probes may have to be detached: then wait for the sampler.
                break (Exit::Clean, stop.request());
            }
            ended = ends.next() => break (exit_for(ended), false),
            () = recv_usr1(&mut usr1) => {
                let _ = control.send(Control::Release);
            }
        }
    };
    let (exit, must_wait) = stopping;
    let deadline = Instant::now() + SHUTDOWN_BUDGET;
    let _ = control.send(Control::Stop(exit, deadline));
    stop.request();
    // The sampler thread finishes the sinks by the deadline; a round in
    // progress (and nothing that must be undone) is not waited for longer.
    let grace = if must_wait {
        deadline + DETACH_BACKSTOP
    } else {
        deadline + Duration::from_millis(50)
    };
    match tokio::time::timeout_at(grace.into(), done).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(_)) => Exit::OutputFailed,
        Err(_) if must_wait => {
            // Only a read that never returns (a hostile file system under
            // --proc-root) keeps the sampler from detaching for this long.
            // Exiting closes every probe's descriptor; the kprobe events it
            // defined are removed at the next start.
            log::error!(
                "the sampler did not stop within {:.1}s (stuck in a read?); exiting without detaching the probes",
                (SHUTDOWN_BUDGET + DETACH_BACKSTOP).as_secs_f64()
            );
            Exit::OutputFailed
        }
        Err(_) => Exit::Clean,
    }
}

/// How long past the budget a shutdown waits for the probes to be detached
/// (fentry trampolines are torn down one at a time; slow under emulation).
const DETACH_BACKSTOP: Duration = Duration::from_secs(5);

/// The sampler thread: the schedule, each round, the sinks, and at the end
/// detaching the probes and letting the sinks finish.
fn sampler_thread(
    sampler: Sampler,
    sinks: &mut Sinks,
    (schedule, pending): (&Schedule, &stdin_requests::Pending),
    control: &Receiver<Control>,
    stop: &Stop,
) -> Exit {
    let (sampler, exit, deadline) = run_loop(sampler, sinks, (schedule, pending), control, stop);
    let deadline = deadline.unwrap_or_else(|| Instant::now() + SHUTDOWN_BUDGET);
    if let Some(mut sampler) = sampler {
        sampler.shutdown();
    }
    // --once has no signal to hurry it: give a slow reader time.
    let deadline = if schedule.once {
        Instant::now() + SHUTDOWN_BUDGET + Duration::from_secs(30)
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

/// The next tick after `now` on the grid `start + k * period` (missed ticks
/// are skipped, not caught up).
/// Never panics: a sum past what `Instant` holds gives `now + period`, or
/// `now` (the CLI bounds the period, so neither happens in practice).
fn next_tick(tick: Instant, period: Duration, now: Instant) -> Instant {
    let fallback = || now.checked_add(period).unwrap_or(now);
    let Some(next) = tick.checked_add(period) else {
        return fallback();
    };
    if next > now || period.is_zero() {
        return next;
    }
    let behind = now.duration_since(next).as_nanos();
    let skipped = behind / period.as_nanos() + 1;
    let skipped = u32::try_from(skipped).unwrap_or(u32::MAX);
    next.checked_add(period.saturating_mul(skipped))
        .unwrap_or_else(fallback)
}

/// What ended a wait.
enum Woken {
    Due,
    Drain,
    Control(Control),
    /// The main thread is gone.
    Orphaned,
}

fn wait_until(
    control: &Receiver<Control>,
    round: Option<Instant>,
    drain: Option<Instant>,
) -> Woken {
    let (deadline, is_drain) = match (round, drain) {
        (Some(r), Some(d)) if d < r => (Some(d), true),
        (Some(r), _) => (Some(r), false),
        (None, Some(d)) => (Some(d), true),
        (None, None) => (None, false),
    };
    let received = match deadline {
        Some(deadline) => control.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        None => control.recv().map_err(|_| RecvTimeoutError::Disconnected),
    };
    match received {
        Ok(message) => Woken::Control(message),
        Err(RecvTimeoutError::Timeout) if is_drain => Woken::Drain,
        Err(RecvTimeoutError::Timeout) => Woken::Due,
        Err(RecvTimeoutError::Disconnected) => Woken::Orphaned,
    }
}

/// One round, handed to the sinks (after the attack starts and ends it found).
fn round(sampler: &mut Sampler, sinks: &mut Sinks) -> Result<(), Exit> {
    let snapshot = sampler.sample();
    send_attacks(sampler, sinks)?;
    sinks.send(snapshot).map_err(exit_for)
}

/// Hands the attack starts and ends the sampler found to the sinks.
fn send_attacks(sampler: &mut Sampler, sinks: &mut Sinks) -> Result<(), Exit> {
    for event in sampler.take_attack_events() {
        sinks.attack(event).map_err(exit_for)?;
    }
    Ok(())
}

fn run_loop(
    mut sampler: Sampler,
    sinks: &mut Sinks,
    (schedule, pending): (&Schedule, &stdin_requests::Pending),
    control: &Receiver<Control>,
    stop: &Stop,
) -> (Option<Sampler>, Exit, Option<Instant>) {
    if schedule.once {
        return match round(&mut sampler, sinks) {
            Ok(()) => {
                let exit = if sampler.last_round_failed() {
                    Exit::SampleFailed
                } else {
                    Exit::Clean
                };
                (Some(sampler), exit, None)
            }
            Err(exit) => (Some(sampler), exit, None),
        };
    }
    sampler.prime();
    if stop.requested() {
        return match control.try_recv() {
            Ok(Control::Stop(exit, deadline)) => (Some(sampler), exit, Some(deadline)),
            _ => (Some(sampler), Exit::Clean, None),
        };
    }
    // With the attack detector the drain is also its step (a start is then
    // known within a second whatever the interval).
    let drain_period = match (sampler.drain_period(), sampler.detect_period()) {
        (Some(drain), Some(detect)) => Some(drain.min(detect)),
        (drain, _) => drain,
    };
    let started = Instant::now();
    let mut next_drain = drain_period.map(|p| started + p);
    // Like an interval timer: the first round at once, then on the grid.
    let mut next_round = match schedule.signal {
        SignalMode::None => Some(started),
        SignalMode::Stdin => None,
    };
    let mut first_round = true;
    loop {
        let due = match wait_until(control, next_round, next_drain) {
            Woken::Due => true,
            Woken::Drain => {
                if sampler.detect_period().is_some() {
                    sampler.detect_tick();
                    if let Err(exit) = send_attacks(&mut sampler, sinks) {
                        return (Some(sampler), exit, None);
                    }
                } else {
                    sampler.drain_rates();
                }
                if let (Some(tick), Some(period)) = (next_drain, drain_period) {
                    next_drain = Some(next_tick(tick, period, Instant::now()));
                }
                false
            }
            Woken::Control(Control::Request) => {
                // Lines read from here on ask for one more round.
                pending.take();
                true
            }
            Woken::Control(Control::Release) => {
                sampler.release_probes();
                false
            }
            Woken::Control(Control::StdinClosed) => {
                info!("stdin closed, exiting");
                return (Some(sampler), Exit::Clean, None);
            }
            Woken::Control(Control::Stop(exit, deadline)) => {
                return (Some(sampler), exit, Some(deadline))
            }
            Woken::Orphaned => return (Some(sampler), Exit::Clean, None),
        };
        if !due {
            continue;
        }
        if let Some(tick) = next_round {
            next_round = Some(next_tick(tick, schedule.interval, Instant::now()));
        }
        if let Err(exit) = round(&mut sampler, sinks) {
            return (Some(sampler), exit, None);
        }
        if std::mem::take(&mut first_round) {
            release_start_up_pages();
        }
    }
}

/// Start-up is over once a round has run: its code need not stay resident.
fn release_start_up_pages() {
    match crate::start_up_pages::release() {
        Ok(bytes) => log::debug!(
            "start-up pages of the executable released ({} KiB advised)",
            bytes / 1024
        ),
        Err(e) => log::debug!("start-up pages kept: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_skip_missed_rounds_on_the_grid() {
        let start = Instant::now();
        let p = Duration::from_millis(100);
        assert_eq!(next_tick(start, p, start), start + p);
        assert_eq!(
            next_tick(start, p, start + Duration::from_millis(350)),
            start + Duration::from_millis(400)
        );
        assert_eq!(
            next_tick(start, p, start + Duration::from_millis(100)),
            start + Duration::from_millis(200)
        );
    }

    #[test]
    fn ticks_never_overflow() {
        let start = Instant::now();
        assert_eq!(next_tick(start, Duration::MAX, start), start);
        let day = Duration::from_secs(86_400);
        assert_eq!(next_tick(start, day, start), start + day);
    }
}
