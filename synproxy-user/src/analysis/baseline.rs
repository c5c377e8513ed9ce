//! A rate's learnt normal: an exponentially weighted moving average over the
//! rounds in which the rate was not flagged, so an attack is never learnt as
//! normal, with a time constant in seconds so that rounds of any length weigh
//! by the time they cover.

/// One signal's baseline, in events per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Baseline {
    rate: f64,
    /// Seconds of unflagged history it has seen (capped at the time constant).
    seen_secs: f64,
}

impl Baseline {
    /// The current estimate (0 before any round).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Seconds of history behind the estimate, at most `tau_secs`.
    pub fn seen_secs(&self) -> f64 {
        self.seen_secs
    }

    /// Takes in one unflagged round of `secs` seconds at `rate` per second.
    /// Until a time constant of history was seen the average is over what was
    /// seen (a plain mean), so the first rounds are not pulled towards 0.
    pub fn learn(&mut self, rate: f64, secs: f64, tau_secs: f64) {
        if !(rate.is_finite() && secs.is_finite() && secs > 0.0 && tau_secs > 0.0) {
            return;
        }
        let rate = rate.max(0.0);
        let weight = if self.seen_secs < tau_secs {
            secs / (self.seen_secs + secs)
        } else {
            1.0 - (-secs / tau_secs).exp()
        };
        self.rate += (rate - self.rate) * weight.clamp(0.0, 1.0);
        self.seen_secs = (self.seen_secs + secs).min(tau_secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rounds_are_a_mean_then_an_ewma_with_the_time_constant() {
        let mut b = Baseline::default();
        b.learn(10.0, 1.0, 300.0);
        assert_eq!(b.rate(), 10.0);
        b.learn(20.0, 1.0, 300.0);
        assert!((b.rate() - 15.0).abs() < 1e-9);
        for _ in 0..600 {
            b.learn(100.0, 1.0, 300.0);
        }
        assert!(b.rate() > 85.0 && b.rate() < 100.0, "{}", b.rate());
        assert_eq!(b.seen_secs(), 300.0);
        // One long round weighs like many short ones of the same total time.
        let (mut one, mut many) = (b, b);
        one.learn(0.0, 60.0, 300.0);
        for _ in 0..60 {
            many.learn(0.0, 1.0, 300.0);
        }
        assert!((one.rate() - many.rate()).abs() < 1e-6);
    }

    #[test]
    fn nonsense_input_changes_nothing() {
        let mut b = Baseline::default();
        b.learn(5.0, 2.0, 300.0);
        let before = b;
        for (rate, secs, tau) in [
            (f64::NAN, 1.0, 300.0),
            (1.0, 0.0, 300.0),
            (1.0, -1.0, 300.0),
            (f64::INFINITY, 1.0, 300.0),
            (1.0, 1.0, 0.0),
        ] {
            b.learn(rate, secs, tau);
        }
        assert_eq!(b, before);
    }
}
