//! One subject's detector (a namespace's, or one destination port's, rate of
//! one kind): its history and, while it lasts, its attack.
//!
//! A step's rate starts an attack when it reaches the threshold, the larger
//! of the floor and `factor` times the learnt baseline. The attack holds while
//! the rate stays at or above half the threshold (hysteresis: a pulsing flood
//! is one attack, not many) and ends once it has been below that for
//! `release_secs`; its end time is when it went below.

use super::history::History;
use serde::{Deserialize, Serialize};

/// The detector's rules (docs/attacks.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Length of one learning bucket, seconds (the baseline covers
    /// [`super::history::HISTORY_BUCKETS`] of them).
    pub bucket_secs: f64,
    /// The baseline is this quantile of the buckets' peak rates.
    pub quantile: f64,
    /// An attack starts at this many times the baseline...
    pub factor: f64,
    /// ...and never below this many events per second.
    pub floor: f64,
    /// Seconds below half the threshold before an attack ends.
    pub release_secs: f64,
    /// Seconds a namespace is learnt, not judged, after it is first seen
    /// (state files bring back what was learnt before a restart).
    pub warmup_secs: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            bucket_secs: 60.0,
            quantile: 0.95,
            factor: 4.0,
            floor: 100.0,
            release_secs: 5.0,
            warmup_secs: 60.0,
        }
    }
}

impl Params {
    pub fn threshold(&self, baseline: f64) -> f64 {
        (self.factor * baseline).max(self.floor)
    }
}

/// An attack in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Active {
    /// Unix nanoseconds of the start of the step that crossed the threshold.
    pub start_ns: u64,
    /// The baseline and threshold it started against.
    pub baseline: f64,
    pub threshold: f64,
    pub peak_rate: f64,
    /// Events since the start.
    pub events: u64,
    /// The last step's rate.
    pub rate: f64,
    /// When the rate went below the release level (unix ns), while it stays there.
    pub below_since_ns: Option<u64>,
}

/// What a step changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Started,
    /// The attack ended at this time (unix ns); its last figures are given.
    Ended(Active),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    pub history: History,
    pub active: Option<Active>,
}

impl Subject {
    /// One step: `events` in the `secs` seconds ending at `now_ns` (unix
    /// ns). `judge` is false while the namespace is warming up (the step is
    /// only learnt).
    pub fn step(
        &mut self,
        now_ns: u64,
        events: u64,
        secs: f64,
        judge: bool,
        p: &Params,
    ) -> Option<Change> {
        if !(secs.is_finite() && secs > 0.0) {
            return None;
        }
        let rate = events as f64 / secs;
        let now = now_ns as f64 / 1e9;
        let mut change = None;
        match self.active.as_mut() {
            None => {
                let baseline = self.history.baseline();
                let threshold = p.threshold(baseline);
                if judge && rate >= threshold {
                    let start_ns = now_ns.saturating_sub((secs * 1e9) as u64);
                    self.active = Some(Active {
                        start_ns,
                        baseline,
                        threshold,
                        peak_rate: rate,
                        events,
                        rate,
                        below_since_ns: None,
                    });
                    change = Some(Change::Started);
                }
            }
            Some(a) => {
                a.events = a.events.saturating_add(events);
                a.peak_rate = a.peak_rate.max(rate);
                a.rate = rate;
                if rate >= a.threshold / 2.0 {
                    a.below_since_ns = None;
                } else {
                    let since = *a
                        .below_since_ns
                        .get_or_insert(now_ns.saturating_sub((secs * 1e9) as u64));
                    if now_ns.saturating_sub(since) as f64 / 1e9 >= p.release_secs {
                        change = self.active.take().map(Change::Ended);
                    }
                }
            }
        }
        let flagged = self.active.is_some() || matches!(change, Some(Change::Ended(_)));
        self.history
            .observe(now, rate, flagged, p.bucket_secs, p.quantile);
        change
    }

    /// Nothing learnt and nothing active: can be forgotten.
    pub fn is_idle(&self) -> bool {
        self.active.is_none() && self.history.is_idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn params() -> Params {
        Params {
            bucket_secs: 1.0,
            floor: 100.0,
            factor: 4.0,
            release_secs: 2.0,
            ..Params::default()
        }
    }

    /// Steps of half a second from `t0` seconds at `rate` per second.
    fn run(s: &mut Subject, t0: u64, steps: u64, rate: u64, p: &Params) -> Vec<(u64, Change)> {
        (1..=steps)
            .filter_map(|i| {
                let now = t0 * S + i * S / 2;
                s.step(now, rate / 2, 0.5, true, p).map(|c| (now, c))
            })
            .collect()
    }

    #[test]
    fn starts_above_the_learnt_threshold_and_ends_after_the_release_time() {
        let p = params();
        let mut s = Subject::default();
        // Benign traffic swinging between 20/s and 200/s: learnt in the
        // warm-up (one swing), then never an attack.
        for k in 0..10u64 {
            let rate = if k < 5 { 20 } else { 200 };
            assert_eq!(s.step(k * S / 2, rate / 2, 0.5, false, &p), None);
        }
        for k in 1..20 {
            let rate = if k % 2 == 0 { 20 } else { 200 };
            assert!(run(&mut s, k * 5, 10, rate, &p).is_empty(), "round {k}");
        }
        assert_eq!(s.history.baseline(), 200.0);
        // 800/s is 4x: an attack, from the first step.
        let changes = run(&mut s, 100, 6, 2000, &p);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1, Change::Started);
        let a = s.active.clone().unwrap();
        assert_eq!(a.start_ns, 100 * S);
        assert_eq!(a.threshold, 800.0);
        assert_eq!(a.events, 6000);
        // Dips to 500/s (above half the threshold) keep it; back at 20/s it
        // ends 2 s after it went below.
        assert!(run(&mut s, 103, 4, 500, &p).is_empty());
        let changes = run(&mut s, 105, 8, 20, &p);
        assert_eq!(changes.len(), 1);
        let (at, Change::Ended(ended)) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(ended.below_since_ns, Some(105 * S));
        assert_eq!(*at, 107 * S);
        assert_eq!(ended.peak_rate, 2000.0);
        assert!(s.active.is_none());
        // The attack's buckets were not learnt.
        assert_eq!(s.history.baseline(), 200.0);
    }

    #[test]
    fn a_quiet_subject_starts_at_the_floor_and_warm_up_only_learns() {
        let p = params();
        let mut s = Subject::default();
        assert_eq!(
            s.step(S, 40, 0.5, true, &p),
            None,
            "80/s is under the floor"
        );
        assert_eq!(s.step(2 * S, 60, 0.5, true, &p), Some(Change::Started));
        let mut w = Subject::default();
        assert_eq!(w.step(S, 10_000, 0.5, false, &p), None);
        assert!(w.active.is_none());
    }

    #[test]
    fn nonsense_steps_change_nothing() {
        let p = params();
        let mut s = Subject::default();
        for secs in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(s.step(S, u64::MAX, secs, true, &p), None);
        }
        assert!(s.is_idle());
        // A huge count is a huge rate, not a panic.
        assert_eq!(s.step(S, u64::MAX, 0.5, true, &p), Some(Change::Started));
        assert_eq!(s.step(2 * S, u64::MAX, 0.5, true, &p), None);
        assert_eq!(s.active.as_ref().unwrap().events, u64::MAX);
    }
}
