//! Turns successive reads of the kernel's per-CPU u32 counters into monotonic
//! u64 totals. Pure: readings in, totals and what happened out.
//!
//! Each CPU's counter wraps at 2^32 on its own, so the tracker keeps the last
//! value per CPU and adds `current.wrapping_sub(last)`. That is exact as long as
//! no CPU counts 2^32 events between two reads, and the counters are the same
//! ones as last time. The second condition is checked through the file's
//! identity: the kernel creates a new proc entry (new inode) for every network
//! namespace and every load of nf_synproxy_core, so a changed identity means the
//! counters restarted from zero. Then the new counts are added on top of the old
//! total, so a reset never shows as a drop or a jump.

use crate::fields::{Values, FIELD_COUNT};
use crate::sources::proc_stat::ProcStat;

/// What identifies one instance of the kernel's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterIdentity {
    /// Device and inode of the proc file that was read.
    pub file_dev: u64,
    pub file_inode: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// A new proc entry: the module was reloaded or the namespace replaced.
    NewCounters,
    /// Same entry but a different number of CPU rows.
    CpuCountChanged { before: usize, after: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// First reading: totals are the kernel's sums.
    Baseline,
    /// Same counters as last time; deltas added (per-CPU wraps included).
    Continued { wrapped_cpus: usize },
    /// Counters restarted; their values were added to the running totals.
    Reset(ResetReason),
}

#[derive(Debug, Default)]
pub struct WrapTracker {
    state: Option<State>,
}

#[derive(Debug)]
struct State {
    identity: CounterIdentity,
    last: Vec<Values<u32>>,
    totals: Values<u64>,
}

impl WrapTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Totals as of the last update, if there was one.
    pub fn totals(&self) -> Option<Values<u64>> {
        self.state.as_ref().map(|s| s.totals)
    }

    pub fn update(&mut self, identity: CounterIdentity, stat: &ProcStat) -> (Values<u64>, Update) {
        let Some(state) = self.state.as_mut() else {
            let totals = stat.sums();
            self.state = Some(State {
                identity,
                last: stat.cpus.clone(),
                totals,
            });
            return (totals, Update::Baseline);
        };

        let reset = if state.identity != identity {
            Some(ResetReason::NewCounters)
        } else if state.last.len() != stat.cpus.len() {
            Some(ResetReason::CpuCountChanged {
                before: state.last.len(),
                after: stat.cpus.len(),
            })
        } else {
            None
        };

        let update = match reset {
            Some(reason) => {
                // New counters started at zero: all they hold happened since.
                add(&mut state.totals, &stat.sums());
                Update::Reset(reason)
            }
            None => {
                let mut wrapped_cpus = 0;
                let mut delta = [0u64; FIELD_COUNT];
                for (now, before) in stat.cpus.iter().zip(&state.last) {
                    let mut wrapped = false;
                    for i in 0..FIELD_COUNT {
                        wrapped |= now[i] < before[i];
                        delta[i] += u64::from(now[i].wrapping_sub(before[i]));
                    }
                    wrapped_cpus += usize::from(wrapped);
                }
                add(&mut state.totals, &delta);
                Update::Continued { wrapped_cpus }
            }
        };
        state.identity = identity;
        state.last.clone_from(&stat.cpus);
        (state.totals, update)
    }
}

fn add(totals: &mut Values<u64>, delta: &Values<u64>) {
    for (t, d) in totals.iter_mut().zip(delta) {
        *t = t.saturating_add(*d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: CounterIdentity = CounterIdentity {
        file_dev: 21,
        file_inode: 4026532085,
    };
    const OTHER_ID: CounterIdentity = CounterIdentity {
        file_dev: 21,
        file_inode: 4026532282,
    };

    fn stat(syn_received_per_cpu: &[u32]) -> ProcStat {
        ProcStat {
            cpus: syn_received_per_cpu
                .iter()
                .map(|&v| [0, v, 0, 0, 0, 0])
                .collect(),
        }
    }

    #[test]
    fn baseline_is_the_kernel_sum() {
        let mut t = WrapTracker::new();
        let (totals, update) = t.update(ID, &stat(&[0x8000_0001, 0x8000_0003]));
        assert_eq!(update, Update::Baseline);
        assert_eq!(totals[1], 4_294_967_300);
    }

    #[test]
    fn per_cpu_wrap_keeps_totals_monotonic() {
        let mut t = WrapTracker::new();
        t.update(ID, &stat(&[0xffff_fff0, 5]));
        let (totals, update) = t.update(ID, &stat(&[0x10, 6]));
        assert_eq!(update, Update::Continued { wrapped_cpus: 1 });
        // 0xffff_fff0 + 5, then +0x20 on cpu0 and +1 on cpu1.
        assert_eq!(totals[1], 0xffff_fff0 + 5 + 0x20 + 1);
        let (totals, _) = t.update(ID, &stat(&[0x11, 6]));
        assert_eq!(totals[1], 0xffff_fff0 + 5 + 0x21 + 1);
    }

    #[test]
    fn many_wraps_accumulate_past_u32() {
        let mut t = WrapTracker::new();
        t.update(ID, &stat(&[0]));
        let mut expected = 0u64;
        let mut value = 0u32;
        for _ in 0..10 {
            value = value.wrapping_add(0xc000_0000);
            expected += 0xc000_0000;
            let (totals, _) = t.update(ID, &stat(&[value]));
            assert_eq!(totals[1], expected);
        }
        assert!(expected > u64::from(u32::MAX) * 7);
    }

    #[test]
    fn new_identity_is_a_reset_not_a_drop() {
        let mut t = WrapTracker::new();
        t.update(ID, &stat(&[100, 200]));
        let (totals, update) = t.update(OTHER_ID, &stat(&[1, 2]));
        assert_eq!(update, Update::Reset(ResetReason::NewCounters));
        assert_eq!(totals[1], 303);
        // And continues from the new baseline.
        let (totals, update) = t.update(OTHER_ID, &stat(&[4, 2]));
        assert_eq!(update, Update::Continued { wrapped_cpus: 0 });
        assert_eq!(totals[1], 306);
    }

    #[test]
    fn cpu_count_change_is_a_reset() {
        let mut t = WrapTracker::new();
        t.update(ID, &stat(&[100, 200]));
        let (totals, update) = t.update(ID, &stat(&[1, 2, 3]));
        assert_eq!(
            update,
            Update::Reset(ResetReason::CpuCountChanged {
                before: 2,
                after: 3
            })
        );
        assert_eq!(totals[1], 306);
    }

    #[test]
    fn unchanged_counters_add_nothing() {
        let mut t = WrapTracker::new();
        let (a, _) = t.update(ID, &stat(&[7, 9]));
        let (b, update) = t.update(ID, &stat(&[7, 9]));
        assert_eq!(a, b);
        assert_eq!(update, Update::Continued { wrapped_cpus: 0 });
        assert_eq!(t.totals(), Some(b));
    }

    proptest::proptest! {
        /// Totals equal the true number of increments whatever the wrap pattern,
        /// as long as no CPU counts 2^32 events between two reads.
        #[test]
        fn totals_track_true_increments(
            start in proptest::array::uniform2(proptest::num::u32::ANY),
            steps in proptest::collection::vec(proptest::array::uniform2(0u32..=u32::MAX), 1..20),
        ) {
            let mut t = WrapTracker::new();
            let mut now = start;
            t.update(ID, &stat(&now));
            let mut expected: u64 = start.iter().map(|&v| u64::from(v)).sum();
            for step in steps {
                for cpu in 0..2 {
                    now[cpu] = now[cpu].wrapping_add(step[cpu]);
                    expected += u64::from(step[cpu]);
                }
                let (totals, _) = t.update(ID, &stat(&now));
                proptest::prop_assert_eq!(totals[1], expected);
            }
        }
    }
}
