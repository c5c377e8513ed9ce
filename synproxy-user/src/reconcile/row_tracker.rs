//! The wrap and reset rules of [`super::wrap_tracker`] for rows of any width:
//! [`RowTracker`] for per-CPU u32 rows (SYNPROXY's file through
//! [`super::wrap_tracker::WrapTracker`], conntrack's statistics),
//! [`SumTracker`] for counters the kernel already sums into 64 bits
//! (`/proc/net/netstat`, `/proc/net/snmp`). Pure.
//!
//! Both report totals that start at the kernel's values and never drop: a
//! reset (the file was gone, a new proc entry, a different number of rows,
//! a counter that went back) adds the new counters on top of the old totals.
//! Gauges are not tracked: callers pass them as 0 and report them as read.

use super::wrap_tracker::{CounterIdentity, ResetReason, Update};

/// A per-CPU step this large or larger is a restart, not a wrap.
pub(super) const MAX_STEP: u32 = 1 << 31;

/// Per-CPU u32 counters summed into monotonic u64 totals.
#[derive(Debug)]
pub struct RowTracker<const N: usize> {
    state: Option<RowState<N>>,
}

#[derive(Debug)]
struct RowState<const N: usize> {
    identity: CounterIdentity,
    last: Vec<[u32; N]>,
    totals: [u64; N],
    gone: bool,
}

impl<const N: usize> Default for RowTracker<N> {
    fn default() -> Self {
        Self { state: None }
    }
}

fn sums<const N: usize>(rows: &[[u32; N]]) -> [u64; N] {
    let mut sums = [0u64; N];
    for row in rows {
        for (sum, value) in sums.iter_mut().zip(row) {
            *sum += u64::from(*value);
        }
    }
    sums
}

fn add<const N: usize>(totals: &mut [u64; N], delta: &[u64; N]) {
    for (t, d) in totals.iter_mut().zip(delta) {
        *t = t.saturating_add(*d);
    }
}

impl<const N: usize> RowTracker<N> {
    /// The file (or its namespace) is gone: whatever is read next is new.
    pub fn counters_gone(&mut self) {
        if let Some(state) = self.state.as_mut() {
            state.gone = true;
        }
    }

    pub fn update(&mut self, identity: CounterIdentity, rows: &[[u32; N]]) -> ([u64; N], Update) {
        let Some(state) = self.state.as_mut() else {
            let totals = sums(rows);
            self.state = Some(RowState {
                identity,
                last: rows.to_vec(),
                totals,
                gone: false,
            });
            return (totals, Update::Baseline);
        };
        let went_back = || {
            state
                .last
                .iter()
                .zip(rows)
                .any(|(b, n)| b.iter().zip(n).any(|(b, n)| n.wrapping_sub(*b) >= MAX_STEP))
        };
        let reset = if state.gone {
            Some(ResetReason::FileWasGone)
        } else if state.identity != identity {
            Some(ResetReason::NewCounters)
        } else if state.last.len() != rows.len() {
            Some(ResetReason::CpuCountChanged {
                before: state.last.len(),
                after: rows.len(),
            })
        } else if went_back() {
            Some(ResetReason::CountersWentBack)
        } else {
            None
        };
        let update = match reset {
            Some(reason) => {
                add(&mut state.totals, &sums(rows));
                Update::Reset(reason)
            }
            None => {
                let mut wrapped_cpus = 0;
                let mut delta = [0u64; N];
                for (now, before) in rows.iter().zip(&state.last) {
                    let mut wrapped = false;
                    for i in 0..N {
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
        state.gone = false;
        state.last.clear();
        state.last.extend_from_slice(rows);
        (state.totals, update)
    }
}

/// Counters the kernel sums into 64 bits: no wrap to absorb, only resets.
#[derive(Debug)]
pub struct SumTracker<const N: usize> {
    state: Option<SumState<N>>,
}

#[derive(Debug)]
struct SumState<const N: usize> {
    identity: CounterIdentity,
    last: [u64; N],
    totals: [u64; N],
    gone: bool,
}

impl<const N: usize> Default for SumTracker<N> {
    fn default() -> Self {
        Self { state: None }
    }
}

impl<const N: usize> SumTracker<N> {
    pub fn counters_gone(&mut self) {
        if let Some(state) = self.state.as_mut() {
            state.gone = true;
        }
    }

    pub fn update(&mut self, identity: CounterIdentity, values: &[u64; N]) -> ([u64; N], Update) {
        let Some(state) = self.state.as_mut() else {
            self.state = Some(SumState {
                identity,
                last: *values,
                totals: *values,
                gone: false,
            });
            return (*values, Update::Baseline);
        };
        let reset = if state.gone {
            Some(ResetReason::FileWasGone)
        } else if state.identity != identity {
            Some(ResetReason::NewCounters)
        } else if values
            .iter()
            .zip(&state.last)
            .any(|(now, before)| now < before)
        {
            Some(ResetReason::CountersWentBack)
        } else {
            None
        };
        let update = match reset {
            Some(reason) => {
                add(&mut state.totals, values);
                Update::Reset(reason)
            }
            None => {
                let mut delta = [0u64; N];
                for i in 0..N {
                    delta[i] = values[i] - state.last[i];
                }
                add(&mut state.totals, &delta);
                Update::Continued { wrapped_cpus: 0 }
            }
        };
        state.identity = identity;
        state.gone = false;
        state.last = *values;
        (state.totals, update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: CounterIdentity = CounterIdentity {
        file_dev: 21,
        file_inode: 4026532085,
    };
    const OTHER: CounterIdentity = CounterIdentity {
        file_dev: 21,
        file_inode: 4026532282,
    };

    #[test]
    fn rows_wrap_per_cpu_and_reset_on_a_new_entry() {
        let mut t = RowTracker::<2>::default();
        let (totals, update) = t.update(ID, &[[0xffff_fff0, 1], [5, 0]]);
        assert_eq!(update, Update::Baseline);
        assert_eq!(totals, [0xffff_fff5, 1]);
        let (totals, update) = t.update(ID, &[[0x10, 1], [6, 0]]);
        assert_eq!(update, Update::Continued { wrapped_cpus: 1 });
        assert_eq!(totals[0], 0xffff_fff5 + 0x20 + 1);
        let (totals, update) = t.update(OTHER, &[[1, 0], [1, 0]]);
        assert_eq!(update, Update::Reset(ResetReason::NewCounters));
        assert_eq!(totals[0], 0xffff_fff5 + 0x21 + 2);
        // Same entry, fewer rows; then gone and back with higher values.
        let (_, update) = t.update(OTHER, &[[1, 0]]);
        assert!(matches!(
            update,
            Update::Reset(ResetReason::CpuCountChanged {
                before: 2,
                after: 1
            })
        ));
        t.counters_gone();
        let (_, update) = t.update(OTHER, &[[9, 0]]);
        assert_eq!(update, Update::Reset(ResetReason::FileWasGone));
        let (_, update) = t.update(OTHER, &[[3, 0]]);
        assert_eq!(update, Update::Reset(ResetReason::CountersWentBack));
    }

    #[test]
    fn sums_continue_and_never_drop() {
        let mut t = SumTracker::<2>::default();
        assert_eq!(t.update(ID, &[10, 3]), ([10, 3], Update::Baseline));
        assert_eq!(
            t.update(ID, &[15, 3]),
            ([15, 3], Update::Continued { wrapped_cpus: 0 })
        );
        // A counter went back (a new namespace under a reused inode, a
        // 32-bit kernel's wrap): a reset, the new values added on top.
        assert_eq!(
            t.update(ID, &[2, 4]),
            ([17, 7], Update::Reset(ResetReason::CountersWentBack))
        );
        assert_eq!(
            t.update(OTHER, &[1, 1]),
            ([18, 8], Update::Reset(ResetReason::NewCounters))
        );
        t.counters_gone();
        assert_eq!(
            t.update(OTHER, &[5, 5]),
            ([23, 13], Update::Reset(ResetReason::FileWasGone))
        );
        assert_eq!(
            t.update(OTHER, &[u64::MAX, 5]),
            ([u64::MAX, 13], Update::Continued { wrapped_cpus: 0 })
        );
    }
}
