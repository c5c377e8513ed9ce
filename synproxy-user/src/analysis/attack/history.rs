//! A subject's learnt normal: the peak rate of each of the last
//! [`HISTORY_BUCKETS`] learning buckets, and a high quantile of them as the
//! baseline. A quantile rather than a mean: benign traffic that swings 10x
//! through the day has its high level in the baseline, and one odd bucket
//! (5% of them) does not move it. Buckets in which an attack was active are
//! not learnt, so an attack is never taken for normal.

use serde::{Deserialize, Serialize};

/// Learning buckets kept (the baseline window is this many buckets).
pub const HISTORY_BUCKETS: usize = 60;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Peak rate per completed, unflagged bucket, oldest first.
    peaks: std::collections::VecDeque<f32>,
    /// The bucket being filled: when it started (seconds on the detector's
    /// clock), its peak so far, and whether an attack touched it.
    bucket_start: Option<f64>,
    bucket_peak: f64,
    bucket_flagged: bool,
    /// The baseline of `peaks`, recomputed when a bucket completes.
    baseline: f64,
}

impl History {
    /// The learnt normal peak rate (0 until a bucket completed).
    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    /// Completed buckets learnt.
    pub fn learnt(&self) -> usize {
        self.peaks.len()
    }

    /// Whether it holds nothing worth keeping: no activity in any bucket.
    pub fn is_idle(&self) -> bool {
        self.bucket_peak == 0.0 && self.peaks.iter().all(|p| *p == 0.0)
    }

    /// One step's rate at time `now` (seconds); `flagged` while an attack of
    /// this subject is active. Buckets are `bucket_secs` long; a gap of whole
    /// buckets without steps counts as quiet buckets.
    pub fn observe(&mut self, now: f64, rate: f64, flagged: bool, bucket_secs: f64, quantile: f64) {
        if !(now.is_finite() && rate.is_finite() && bucket_secs > 0.0) {
            return;
        }
        let start = *self.bucket_start.get_or_insert(now);
        if now >= start + bucket_secs {
            self.close(quantile);
            let elapsed = ((now - start) / bucket_secs).floor();
            // Whole buckets without a step: quiet (capped at the window).
            let quiet = (elapsed as usize).saturating_sub(1).min(HISTORY_BUCKETS);
            for _ in 0..quiet {
                self.push(0.0);
            }
            if quiet > 0 {
                self.baseline = quantile_of(&self.peaks, quantile);
            }
            self.bucket_start = Some(start + elapsed * bucket_secs);
        }
        self.bucket_peak = self.bucket_peak.max(rate.max(0.0));
        self.bucket_flagged |= flagged;
    }

    fn close(&mut self, quantile: f64) {
        if !self.bucket_flagged {
            self.push(self.bucket_peak);
            self.baseline = quantile_of(&self.peaks, quantile);
        }
        self.bucket_peak = 0.0;
        self.bucket_flagged = false;
    }

    fn push(&mut self, peak: f64) {
        if self.peaks.len() == HISTORY_BUCKETS {
            self.peaks.pop_front();
        }
        self.peaks.push_back(peak as f32);
    }

    /// Checks what a state file brought back, so a damaged one cannot make
    /// the history unbounded or its figures nonsense.
    pub fn sanitised(mut self, quantile: f64) -> Self {
        while self.peaks.len() > HISTORY_BUCKETS {
            self.peaks.pop_front();
        }
        self.peaks.retain(|p| p.is_finite() && *p >= 0.0);
        if !(self.bucket_peak.is_finite() && self.bucket_peak >= 0.0) {
            self.bucket_peak = 0.0;
        }
        self.bucket_start = self.bucket_start.filter(|s| s.is_finite());
        self.baseline = quantile_of(&self.peaks, quantile);
        self
    }
}

/// The `q` quantile (nearest rank) of `values`; 0 when empty.
fn quantile_of(values: &std::collections::VecDeque<f32>, q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted: Vec<f32> = values.iter().copied().collect();
    sorted.sort_by(f32::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_is_a_high_quantile_of_bucket_peaks() {
        let mut h = History::default();
        // 40 buckets at 10/s and 20 at 100/s (a 10x swing), 1 s buckets.
        for i in 0..61 {
            let rate = if i % 3 == 0 { 100.0 } else { 10.0 };
            h.observe(f64::from(i), rate, false, 1.0, 0.95);
        }
        assert_eq!(h.learnt(), 60);
        assert_eq!(h.baseline(), 100.0);
        // One odd bucket among 60 does not move a 95% quantile.
        let mut h = History::default();
        for i in 0..61 {
            let rate = if i == 30 { 10_000.0 } else { 10.0 };
            h.observe(f64::from(i), rate, false, 1.0, 0.95);
        }
        assert_eq!(h.baseline(), 10.0);
    }

    #[test]
    fn flagged_buckets_are_not_learnt_and_gaps_are_quiet() {
        let mut h = History::default();
        h.observe(0.0, 10.0, false, 1.0, 0.95);
        h.observe(1.0, 5000.0, true, 1.0, 0.95);
        h.observe(2.0, 10.0, false, 1.0, 0.95);
        assert_eq!(h.learnt(), 1, "the flagged bucket is skipped");
        assert_eq!(h.baseline(), 10.0);
        // Ten buckets without a step: nine quiet ones plus the one closed.
        h.observe(12.0, 0.0, false, 1.0, 0.95);
        assert_eq!(h.learnt(), 11);
        assert!(!h.is_idle());
    }

    #[test]
    fn a_damaged_history_is_bounded_and_sane() {
        let mut h = History::default();
        for _ in 0..100 {
            h.peaks.push_back(f32::NAN);
            h.peaks.push_back(3.0);
        }
        h.bucket_peak = f64::INFINITY;
        let h = h.sanitised(0.95);
        assert!(h.learnt() <= HISTORY_BUCKETS);
        assert_eq!(h.baseline(), 3.0);
        assert_eq!(h.bucket_peak, 0.0);
    }
}
