//! Turns successive reads of the kernel's per-CPU u32 counters into monotonic
//! u64 totals. Pure: readings in, totals and what happened out.
//!
//! Each CPU's counter wraps at 2^32 on its own, so the tracker keeps the last
//! value per CPU and adds `current.wrapping_sub(last)`. That is exact as long as
//! the counters are the same ones as last time and no CPU counts 2^31 events
//! between two reads (over 200 million per second per CPU at a 10 s interval).
//!
//! New counters (module reloaded, namespace replaced) start from zero. Their
//! proc inode cannot tell: the kernel reuses inode numbers at once, which the VM
//! suite saw on a reload. So a reset is any of: the file was gone since the
//! last read (the entry only disappears with its counters), a changed file
//! identity, a changed number of CPU rows, or a counter that went backwards
//! (serial-number arithmetic: a step of 2^31 or more is not a wrap). The new
//! counts are then added on top of the old totals, so a reset never shows as a
//! drop or a jump.

use super::row_tracker::RowTracker;
use crate::fields::{Values, FIELD_COUNT};
use crate::sources::proc::proc_stat::ProcStat;

/// What identifies one instance of the kernel's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterIdentity {
    /// Device and inode of the proc file that was read.
    pub file_dev: u64,
    pub file_inode: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The file was gone since the last read: its counters were destroyed.
    FileWasGone,
    /// A new proc entry: the module was reloaded or the namespace replaced.
    NewCounters,
    /// Same entry but a different number of CPU rows.
    CpuCountChanged { before: usize, after: usize },
    /// A counter went backwards (by serial-number arithmetic).
    CountersWentBack,
}

#[cfg(test)]
use super::row_tracker::MAX_STEP;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// First reading: totals are the kernel's sums.
    Baseline,
    /// Same counters as last time; deltas added (per-CPU wraps included).
    Continued { wrapped_cpus: usize },
    /// Counters restarted; their values were added to the running totals.
    Reset(ResetReason),
}

/// The SYNPROXY file's tracker: [`RowTracker`] over its six columns.
#[derive(Debug, Default)]
pub struct WrapTracker {
    rows: RowTracker<FIELD_COUNT>,
    /// The totals of the last update (`None` before the first).
    totals: Option<Values<u64>>,
}

impl WrapTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Totals as of the last update, if there was one.
    pub fn totals(&self) -> Option<Values<u64>> {
        self.totals
    }

    /// The stat file (or its namespace) no longer exists: whatever is read
    /// next is a new set of counters.
    pub fn counters_gone(&mut self) {
        self.rows.counters_gone();
    }

    pub fn update(&mut self, identity: CounterIdentity, stat: &ProcStat) -> (Values<u64>, Update) {
        let (totals, update) = self.rows.update(identity, &stat.cpus);
        self.totals = Some(totals);
        (totals, update)
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
        for _ in 0..20 {
            value = value.wrapping_add(0x7fff_ffff);
            expected += 0x7fff_ffff;
            let (totals, update) = t.update(ID, &stat(&[value]));
            assert!(matches!(update, Update::Continued { .. }), "{update:?}");
            assert_eq!(totals[1], expected);
        }
        assert!(expected > u64::from(u32::MAX) * 9);
    }

    #[test]
    fn same_inode_after_reload_is_caught_by_values() {
        // The kernel reused the proc inode: only the values tell.
        let mut t = WrapTracker::new();
        t.update(ID, &stat(&[3, 2]));
        let (totals, update) = t.update(ID, &stat(&[0, 1]));
        assert_eq!(update, Update::Reset(ResetReason::CountersWentBack));
        assert_eq!(totals[1], 5 + 1);
    }

    #[test]
    fn file_gone_then_back_is_a_reset_even_with_higher_values() {
        let mut t = WrapTracker::new();
        t.update(ID, &stat(&[3, 2]));
        t.counters_gone();
        // Reloaded and already past the old values: same inode, no value drop.
        let (totals, update) = t.update(ID, &stat(&[10, 20]));
        assert_eq!(update, Update::Reset(ResetReason::FileWasGone));
        assert_eq!(totals[1], 5 + 30);
        // And continues normally afterwards.
        let (totals, update) = t.update(ID, &stat(&[11, 20]));
        assert_eq!(update, Update::Continued { wrapped_cpus: 0 });
        assert_eq!(totals[1], 36);
    }

    #[test]
    fn counters_gone_before_any_reading_is_harmless() {
        let mut t = WrapTracker::new();
        t.counters_gone();
        let (totals, update) = t.update(ID, &stat(&[4]));
        assert_eq!(update, Update::Baseline);
        assert_eq!(totals[1], 4);
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
        /// as long as no CPU counts 2^31 events between two reads.
        #[test]
        fn totals_track_true_increments(
            start in proptest::array::uniform2(proptest::num::u32::ANY),
            steps in proptest::collection::vec(proptest::array::uniform2(0u32..MAX_STEP), 1..20),
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
