//! Is the defense holding? One state per namespace per round, from SYNPROXY's
//! counters, the TCP stack's and conntrack's together, with the reasons.
//!
//! Each signal is a counter's rate over the round. It fires when the rate
//! reaches its threshold: `factor` times the namespace's own baseline for that
//! signal (learnt from the rounds in which it did not fire, see
//! [`Baseline`]), and never below an absolute floor, so that a quiet
//! namespace does not flag a handful of events. Once firing it holds while the
//! rate stays above half the threshold, and stops after `release_rounds`
//! rounds below that (hysteresis: a flood that pulses does not flap). The state
//! is the most severe firing signal's; docs/verdict.md has the table.
//!
//! A namespace's first `warmup_secs` are learnt, not judged (state
//! `learning`): without them a server whose normal rate is above a floor would
//! be flagged from the agent's start until forever, since a firing signal is
//! never learnt. The price: a flood already running at start is taken as
//! normal until it ends.

pub mod readings;
mod signals;
#[cfg(test)]
mod tests;

pub use signals::{DefenseState, Signal};

use super::baseline::Baseline;

/// The thresholds and time constants (see the module comment).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Time constant of the baselines, seconds.
    pub tau_secs: f64,
    /// A signal fires at this many times its baseline...
    pub factor: f64,
    /// ...and never below its floor (events per second), by [`Signal`] index.
    pub floors: [f64; Signal::COUNT],
    /// conntrack counts as exhausted from this share of `nf_conntrack_max`.
    pub conntrack_full_ratio: f64,
    /// Rounds below half the threshold before a firing signal stops.
    pub release_rounds: u32,
    /// Seconds of a namespace's history learnt before it is judged.
    pub warmup_secs: f64,
}

impl Default for Params {
    fn default() -> Self {
        let mut floors = [0.0; Signal::COUNT];
        for s in Signal::ALL {
            floors[s as usize] = s.default_floor();
        }
        Self {
            tau_secs: 300.0,
            factor: 5.0,
            floors,
            conntrack_full_ratio: 0.95,
            release_rounds: 2,
            warmup_secs: 30.0,
        }
    }
}

/// One round's readings of one namespace: each signal's cumulative counter
/// (`None` where its layer was not read this round), and conntrack's
/// `nf_conntrack_count` and `nf_conntrack_max`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Readings {
    pub counters: [Option<u64>; Signal::COUNT],
    pub conntrack_count_max: Option<(u64, u64)>,
}

/// Why a state holds: one firing signal with its figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Reason {
    pub signal: Signal,
    /// Events per second this round (for the conntrack fill: the share of max).
    pub rate: f64,
    /// What it had to reach to fire.
    pub threshold: f64,
    pub baseline: f64,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.signal == Signal::ConntrackFull {
            return write!(
                f,
                "{} {:.0}% of nf_conntrack_max (>= {:.0}%)",
                self.signal.name(),
                self.rate * 100.0,
                self.threshold * 100.0
            );
        }
        write!(
            f,
            "{} {:.1}/s >= {:.1}/s (baseline {:.1}/s)",
            self.signal.name(),
            self.rate,
            self.threshold,
            self.baseline
        )
    }
}

/// A namespace's verdict after a round.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub state: DefenseState,
    /// Every firing signal, the most severe first (empty when calm).
    pub reasons: Vec<Reason>,
    /// When the current state began (the round's timestamp, ns).
    pub since_ns: u64,
    /// The state before, when it changed this round.
    pub changed_from: Option<DefenseState>,
}

impl Verdict {
    /// The reasons as one line: "a; b" ("" when calm).
    pub fn reasons_line(&self) -> String {
        let parts: Vec<String> = self.reasons.iter().map(|r| r.to_string()).collect();
        parts.join("; ")
    }
}

/// Per signal: its baseline and whether (and how long) it is firing.
#[derive(Clone, Copy, Debug, Default)]
struct SignalState {
    baseline: Baseline,
    firing: bool,
    rounds_below: u32,
}

/// One namespace's history: the last readings, the baselines, the state.
#[derive(Clone, Debug, Default)]
pub struct NamespaceVerdict {
    last: Option<(u64, Readings)>,
    signals: [SignalState; Signal::COUNT],
    state: DefenseState,
    since_ns: u64,
    /// Seconds observed (rates seen), up to the warm-up.
    history_secs: f64,
}

impl NamespaceVerdict {
    /// The state as last judged.
    pub fn state(&self) -> DefenseState {
        self.state
    }

    /// Takes in one round (`now_ns`, the round's timestamp) and judges it.
    /// The first round has no rates yet. A counter that went backwards
    /// (a module reloaded, counters recreated) gives no rate this round.
    pub fn observe(&mut self, now_ns: u64, readings: Readings, params: &Params) -> Verdict {
        let previous = self.last.replace((now_ns, readings));
        if previous.is_none() {
            self.since_ns = now_ns;
        }
        let secs = previous.map_or(0.0, |(t, _)| now_ns.saturating_sub(t) as f64 / 1e9);
        let learning = self.history_secs < params.warmup_secs;
        self.history_secs = (self.history_secs + secs).min(params.warmup_secs);
        let mut reasons = Vec::new();
        for signal in Signal::ALL {
            let i = signal as usize;
            let measured = match signal {
                Signal::ConntrackFull => readings
                    .conntrack_count_max
                    .filter(|(_, max)| *max > 0)
                    .map(|(count, max)| count as f64 / max as f64),
                _ => match (
                    previous.and_then(|(_, r)| r.counters[i]),
                    readings.counters[i],
                ) {
                    (Some(a), Some(b)) if b >= a && secs > 0.0 => Some((b - a) as f64 / secs),
                    _ => None,
                },
            };
            let Some(value) = measured else {
                self.signals[i].firing = false;
                continue;
            };
            if learning && signal != Signal::ConntrackFull {
                self.signals[i].baseline.learn(value, secs, params.tau_secs);
                continue;
            }
            if let Some(reason) = self.judge_signal(signal, value, secs, params) {
                reasons.push(reason);
            }
        }
        reasons.sort_by_key(|r| std::cmp::Reverse(r.signal.state().severity()));
        let quiet = if learning {
            DefenseState::Learning
        } else {
            DefenseState::Calm
        };
        let state = reasons.first().map_or(quiet, |r| r.signal.state());
        let changed_from = (state != self.state).then_some(self.state);
        if changed_from.is_some() {
            self.state = state;
            self.since_ns = now_ns;
        }
        Verdict {
            state,
            reasons,
            since_ns: self.since_ns,
            changed_from,
        }
    }

    /// Whether `signal` fires at `value` (with hysteresis); learns the
    /// baseline from values that do not.
    fn judge_signal(
        &mut self,
        signal: Signal,
        value: f64,
        secs: f64,
        params: &Params,
    ) -> Option<Reason> {
        let s = &mut self.signals[signal as usize];
        let baseline = s.baseline.rate();
        let threshold = if signal == Signal::ConntrackFull {
            params.conntrack_full_ratio
        } else {
            (params.factor * baseline).max(params.floors[signal as usize])
        };
        let holding = s.firing && value >= threshold / 2.0;
        if value >= threshold || holding {
            s.firing = true;
            s.rounds_below = 0;
        } else if s.firing {
            s.rounds_below += 1;
            if s.rounds_below >= params.release_rounds {
                s.firing = false;
            }
        }
        if !s.firing && signal != Signal::ConntrackFull {
            s.baseline.learn(value, secs, params.tau_secs);
        }
        s.firing.then_some(Reason {
            signal,
            rate: value,
            threshold,
            baseline,
        })
    }
}
