//! Agreement between the eBPF counts and the kernel's own counters, per network
//! namespace. Pure: totals in, status and interval events out.
//!
//! /proc is authoritative. Each round the agent reads a namespace's eBPF counts
//! just before and just after its /proc file (`before` <= `after`). An event's
//! probe and the kernel's increment are a few instructions apart, so the
//! kernel's total, less what it had counted before the probes were attached
//! (the offset), lies within that bracket unless an event was missed or was
//! still between its probe and its increment for longer than the read took.
//! The offset is learnt per counter as an interval: each round narrows it to
//! `[proc - after, proc - before]`; it is pinned once some round saw the counter
//! quiet around the read (usually the first round after attaching).
//!
//! - `exact`: the offset is pinned and the kernel's total lies within the
//!   bracket for every counter. The round's events are a cut of the bracket
//!   that sums to the kernel's delta, so over a run of exact rounds they sum
//!   to the kernel's delta exactly, per namespace, split by family.
//! - `lagging`: outside the bracket (the agent already re-read the namespace a
//!   few times) while nothing was reported missed: an event was held between
//!   its probe and its increment. At most [`MAX_LAGGING_ROUNDS`] in a row.
//! - `missed`: outside the bracket and the kernel reported misses or lost
//!   events, or nothing moved (nothing can be in flight), or lagging went on
//!   too long. The offset is learnt again from this round.
//! - `proc-only`: no eBPF counts (probes not attached, just (re)attached, the
//!   /proc counters restarted), or the offset is not pinned yet because the
//!   namespace was busy at every read since the probes attached.

use crate::fields::{Field, Values};
use synproxy_common::{Counter, COUNTER_COUNT};

/// One value per counter, in kernel order ([`Counter::ALL`]).
pub type Counts = [u64; COUNTER_COUNT];
/// Per family (0 = IPv4, 1 = IPv6), per counter.
pub type FamilyCounts = [Counts; 2];

pub const MAX_LAGGING_ROUNDS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Exact,
    Lagging,
    Missed,
    ProcOnly,
}

impl Status {
    pub const fn name(self) -> &'static str {
        match self {
            Status::Exact => "exact",
            Status::Lagging => "lagging",
            Status::Missed => "missed",
            Status::ProcOnly => "proc-only",
        }
    }
}

/// The five event counters out of the `synproxy` totals.
pub fn proc_counts(totals: &Values<u64>) -> Counts {
    Counter::ALL.map(|c| totals[Field::Counter(c).index()])
}

/// eBPF counts of one namespace read around its /proc read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bracket {
    /// Changes whenever the probes were (re)attached.
    pub generation: u64,
    pub before: FamilyCounts,
    pub after: FamilyCounts,
}

#[derive(Clone, Copy, Debug)]
pub struct Input {
    /// /proc totals of the namespace (wrap-safe u64).
    pub proc: Counts,
    /// The /proc counters restarted this round (new proc entry).
    pub proc_reset: bool,
    /// None when the probes are not attached.
    pub ebpf: Option<Bracket>,
    /// Probe misses and unattributed losses this round (all namespaces).
    pub global_losses: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    pub status: Status,
    /// eBPF-counted events in this round, per family.
    pub events: FamilyCounts,
    /// /proc delta over the eBPF delta per counter when eBPF saw fewer events
    /// (1.0 otherwise): the factor that scales peak rates to the authoritative total.
    pub scale: [f64; COUNTER_COUNT],
    /// eBPF minus /proc, per counter: how far outside the bracket (0 inside).
    pub difference: [i64; COUNTER_COUNT],
}

#[derive(Clone, Debug)]
struct State {
    generation: u64,
    /// Bounds of the offset (/proc total minus eBPF total) per counter.
    offset_lo: [i64; COUNTER_COUNT],
    offset_hi: [i64; COUNTER_COUNT],
    last_proc: Counts,
    /// The eBPF counts reported up to the previous round (per family).
    last_cut: FamilyCounts,
    lagging_rounds: u32,
}

/// Per-namespace reconciliation state.
#[derive(Clone, Debug, Default)]
pub struct Reconciler {
    state: Option<State>,
}

fn family_sum(c: &FamilyCounts) -> Counts {
    std::array::from_fn(|i| c[0][i].wrapping_add(c[1][i]))
}

fn diff(a: u64, b: u64) -> i64 {
    (a as i64).wrapping_sub(b as i64)
}

/// Offset bounds one reading allows, per counter: `[proc - after, proc - before]`.
fn round_bounds(proc: &Counts, bracket: &Bracket) -> ([i64; COUNTER_COUNT], [i64; COUNTER_COUNT]) {
    let before = family_sum(&bracket.before);
    let after = family_sum(&bracket.after);
    (
        std::array::from_fn(|c| diff(proc[c], after[c])),
        std::array::from_fn(|c| diff(proc[c], before[c])),
    )
}

/// Splits `total` (between the family sums of `before` and `after`) over the
/// families so that each stays within its own bracket.
fn cut(total: u64, before: [u64; 2], after: [u64; 2]) -> [u64; 2] {
    let room = total.saturating_sub(before[0].saturating_add(before[1]));
    let v4 = before[0].saturating_add(room.min(after[0].saturating_sub(before[0])));
    [v4, total.saturating_sub(v4)]
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this reading is consistent with what earlier rounds learnt (or
    /// starts a new baseline): if not, the agent re-reads before giving up.
    pub fn consistent(&self, proc: &Counts, proc_reset: bool, bracket: &Bracket) -> bool {
        let Some(state) = self.state.as_ref() else {
            return true;
        };
        if state.generation != bracket.generation || proc_reset {
            return true;
        }
        let (lo, hi) = round_bounds(proc, bracket);
        (0..COUNTER_COUNT).all(|c| lo[c].max(state.offset_lo[c]) <= hi[c].min(state.offset_hi[c]))
    }

    pub fn update(&mut self, input: Input) -> Outcome {
        let mut out = Outcome {
            status: Status::ProcOnly,
            events: [[0; COUNTER_COUNT]; 2],
            scale: [1.0; COUNTER_COUNT],
            difference: [0; COUNTER_COUNT],
        };
        let Some(bracket) = input.ebpf else {
            self.state = None;
            return out;
        };
        let (lo, hi) = round_bounds(&input.proc, &bracket);
        let baseline = State {
            generation: bracket.generation,
            offset_lo: lo,
            offset_hi: hi,
            last_proc: input.proc,
            last_cut: bracket.after,
            lagging_rounds: 0,
        };
        let state = match self.state.as_mut() {
            Some(s) if s.generation == bracket.generation && !input.proc_reset => s,
            _ => {
                self.state = Some(baseline);
                return out;
            }
        };
        let new_lo: [i64; COUNTER_COUNT] = std::array::from_fn(|c| lo[c].max(state.offset_lo[c]));
        let new_hi: [i64; COUNTER_COUNT] = std::array::from_fn(|c| hi[c].min(state.offset_hi[c]));
        let consistent = (0..COUNTER_COUNT).all(|c| new_lo[c] <= new_hi[c]);
        let mut moved = false;
        for c in 0..COUNTER_COUNT {
            moved |= input.proc[c] != state.last_proc[c]
                || bracket.after[0][c] != state.last_cut[0][c]
                || bracket.after[1][c] != state.last_cut[1][c];
        }
        let reported = if consistent {
            state.offset_lo = new_lo;
            state.offset_hi = new_hi;
            state.lagging_rounds = 0;
            if new_lo == new_hi {
                out.status = Status::Exact;
                // The kernel's count since attach, split over the families.
                let mut cut_now = [[0u64; COUNTER_COUNT]; 2];
                for c in 0..COUNTER_COUNT {
                    let total = diff(input.proc[c], 0).wrapping_sub(new_lo[c]).max(0) as u64;
                    let [v4, v6] = cut(
                        total,
                        [bracket.before[0][c], bracket.before[1][c]],
                        [bracket.after[0][c], bracket.after[1][c]],
                    );
                    cut_now[0][c] = v4;
                    cut_now[1][c] = v6;
                }
                cut_now
            } else {
                bracket.after
            }
        } else {
            let after = family_sum(&bracket.after);
            for c in 0..COUNTER_COUNT {
                if lo[c] > state.offset_hi[c] {
                    // /proc is ahead of everything eBPF saw.
                    out.difference[c] = -lo[c].wrapping_sub(state.offset_hi[c]);
                } else if hi[c] < state.offset_lo[c] {
                    out.difference[c] = state.offset_lo[c].wrapping_sub(hi[c]);
                }
                let proc_delta = input.proc[c].saturating_sub(state.last_proc[c]);
                let ebpf_delta = after[c]
                    .saturating_sub(state.last_cut[0][c].wrapping_add(state.last_cut[1][c]));
                if out.difference[c] < 0 && ebpf_delta > 0 && proc_delta > ebpf_delta {
                    out.scale[c] = proc_delta as f64 / ebpf_delta as f64;
                }
            }
            if input.global_losses > 0 || !moved || state.lagging_rounds >= MAX_LAGGING_ROUNDS {
                out.status = Status::Missed;
            } else {
                state.lagging_rounds += 1;
                out.status = Status::Lagging;
            }
            bracket.after
        };
        if out.status != Status::Missed {
            // Peak rates are scaled only when events were really missed.
            out.scale = [1.0; COUNTER_COUNT];
        }
        for ((events, last), now) in out
            .events
            .iter_mut()
            .zip(&mut state.last_cut)
            .zip(&reported)
        {
            for ((e, l), n) in events.iter_mut().zip(last.iter_mut()).zip(now) {
                *e = n.saturating_sub(*l);
                *l = (*l).max(*n);
            }
        }
        state.last_proc = input.proc;
        if out.status == Status::Missed {
            let last_cut = state.last_cut;
            *state = State {
                last_cut,
                ..baseline
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: Counts = [0; 5];

    fn input(proc: Counts, generation: u64, before: FamilyCounts, after: FamilyCounts) -> Input {
        Input {
            proc,
            proc_reset: false,
            ebpf: Some(Bracket {
                generation,
                before,
                after,
            }),
            global_losses: 0,
        }
    }

    /// A read with no event in flight: the same counts before and after.
    fn quiet(proc: Counts, ebpf: FamilyCounts) -> Input {
        input(proc, 1, ebpf, ebpf)
    }

    #[test]
    fn proc_counts_follow_counter_order() {
        // entries, syn_received, cookie_invalid, cookie_valid, cookie_retrans, conn_reopened
        assert_eq!(proc_counts(&[0, 1, 2, 3, 4, 5]), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn no_ebpf_is_proc_only() {
        let mut r = Reconciler::new();
        let out = r.update(Input {
            proc: [1; 5],
            proc_reset: false,
            ebpf: None,
            global_losses: 0,
        });
        assert_eq!(out.status, Status::ProcOnly);
        assert_eq!(out.events, [[0; 5]; 2]);
    }

    #[test]
    fn baseline_then_exact_with_families() {
        let mut r = Reconciler::new();
        // Baseline: the namespace already had traffic before the probes attached.
        let out = r.update(quiet([100, 7, 50, 0, 0], [Z, Z]));
        assert_eq!(out.status, Status::ProcOnly);
        // 5 SYNs over IPv4, 3 over IPv6, 2 valid cookies over IPv6.
        let out = r.update(quiet(
            [108, 7, 52, 0, 0],
            [[5, 0, 0, 0, 0], [3, 0, 2, 0, 0]],
        ));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events, [[5, 0, 0, 0, 0], [3, 0, 2, 0, 0]]);
        // Idle round: still exact, no events.
        let out = r.update(quiet(
            [108, 7, 52, 0, 0],
            [[5, 0, 0, 0, 0], [3, 0, 2, 0, 0]],
        ));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events, [[0; 5]; 2]);
    }

    #[test]
    fn events_in_flight_within_the_bracket_are_exact_and_sum_to_proc() {
        let mut r = Reconciler::new();
        r.update(quiet(Z, [Z, Z]));
        // Traffic during the read: eBPF saw 10 before and 14 after, the kernel
        // counted 12 when its file was read.
        let out = r.update(input(
            [12, 0, 0, 0, 0],
            1,
            [[10, 0, 0, 0, 0], Z],
            [[14, 0, 0, 0, 0], Z],
        ));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events[0][0], 12);
        // Next round: the kernel at 20; eBPF 18..21, of which IPv6 0..2.
        let out = r.update(input(
            [20, 0, 0, 0, 0],
            1,
            [[18, 0, 0, 0, 0], Z],
            [[19, 0, 0, 0, 0], [2, 0, 0, 0, 0]],
        ));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events[0][0] + out.events[1][0], 8);
        assert_eq!(out.events, [[7, 0, 0, 0, 0], [1, 0, 0, 0, 0]]);
    }

    #[test]
    fn outside_the_bracket_is_lagging_then_exact() {
        let mut r = Reconciler::new();
        r.update(quiet(Z, [Z, Z]));
        // The kernel counted 10, eBPF saw 9 even after the read.
        let out = r.update(input([0, 0, 10, 0, 0], 1, [Z, Z], [[0, 0, 9, 0, 0], Z]));
        assert_eq!(out.status, Status::Lagging);
        assert_eq!(out.difference, [0, 0, -1, 0, 0]);
        assert_eq!(out.events[0][2], 9);
        let out = r.update(quiet([0, 0, 12, 0, 0], [[0, 0, 12, 0, 0], Z]));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events[0][2], 3);
    }

    #[test]
    fn losses_make_missed_and_scale_peaks_then_rebase() {
        let mut r = Reconciler::new();
        r.update(quiet(Z, [Z, Z]));
        let mut i = quiet([0, 100, 0, 0, 0], [[0, 80, 0, 0, 0], Z]);
        i.global_losses = 20;
        let out = r.update(i);
        assert_eq!(out.status, Status::Missed);
        assert_eq!(out.scale[1], 1.25);
        assert_eq!(out.difference[1], -20);
        // After the rebase, new events reconcile exactly again.
        let out = r.update(quiet([0, 110, 0, 0, 0], [[0, 90, 0, 0, 0], Z]));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.scale, [1.0; 5]);
        assert_eq!(out.events[0][1], 10);
    }

    #[test]
    fn a_difference_while_idle_is_missed() {
        let mut r = Reconciler::new();
        r.update(quiet(Z, [Z, Z]));
        let out = r.update(quiet([3, 0, 0, 0, 0], [[2, 0, 0, 0, 0], Z]));
        assert_eq!(out.status, Status::Lagging);
        let out = r.update(quiet([3, 0, 0, 0, 0], [[2, 0, 0, 0, 0], Z]));
        assert_eq!(out.status, Status::Missed);
    }

    #[test]
    fn lagging_is_bounded() {
        let mut r = Reconciler::new();
        r.update(quiet(Z, [Z, Z]));
        let mut statuses = Vec::new();
        for i in 1..=4u64 {
            let out = r.update(quiet([i * 10, 0, 0, 0, 0], [[i * 10 - 1, 0, 0, 0, 0], Z]));
            statuses.push(out.status);
        }
        assert_eq!(
            statuses,
            [
                Status::Lagging,
                Status::Lagging,
                Status::Missed,
                Status::Exact
            ]
        );
    }

    #[test]
    fn a_busy_baseline_is_proc_only_until_a_quiet_read_pins_it() {
        let mut r = Reconciler::new();
        // Attached while events flowed: the kernel's 50 includes 0..=4 of the
        // events eBPF saw (offset 46..=50).
        r.update(input([50, 0, 0, 0, 0], 1, [Z, Z], [[4, 0, 0, 0, 0], Z]));
        let out = r.update(input(
            [60, 0, 0, 0, 0],
            1,
            [[12, 0, 0, 0, 0], Z],
            [[14, 0, 0, 0, 0], Z],
        ));
        assert_eq!(out.status, Status::ProcOnly);
        // Quiet read: offset 70 - 22 = 48.
        let out = r.update(quiet([70, 0, 0, 0, 0], [[22, 0, 0, 0, 0], Z]));
        assert_eq!(out.status, Status::Exact);
        let out = r.update(input(
            [75, 0, 0, 0, 0],
            1,
            [[24, 0, 0, 0, 0], Z],
            [[30, 0, 0, 0, 0], Z],
        ));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events[0][0], 5);
    }

    #[test]
    fn reattach_or_proc_reset_starts_a_new_baseline() {
        let mut r = Reconciler::new();
        r.update(quiet(Z, [Z, Z]));
        r.update(quiet([5, 0, 0, 0, 0], [[5, 0, 0, 0, 0], Z]));
        // Module reloaded: new generation, eBPF map values carry on.
        let out = r.update(input(Z, 2, [[5, 0, 0, 0, 0], Z], [[5, 0, 0, 0, 0], Z]));
        assert_eq!(out.status, Status::ProcOnly);
        let out = r.update(input(
            [4, 0, 0, 0, 0],
            2,
            [[9, 0, 0, 0, 0], Z],
            [[9, 0, 0, 0, 0], Z],
        ));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events[0][0], 4);
        let mut reset = input(
            [1, 0, 0, 0, 0],
            2,
            [[9, 0, 0, 0, 0], Z],
            [[9, 0, 0, 0, 0], Z],
        );
        reset.proc_reset = true;
        assert_eq!(r.update(reset).status, Status::ProcOnly);
    }

    /// Events whose probe runs before (or after) the kernel's increment, read
    /// at arbitrary moments: every round is exact and the reported events sum
    /// to the kernel's delta, per counter.
    #[test]
    fn interleaved_events_sum_to_the_kernel_delta() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut r = Reconciler::new();
        let (mut proc, mut ebpf) = (Z, [Z, Z]);
        r.update(quiet(proc, ebpf));
        let mut reported = Z;
        let start = proc;
        for _ in 0..200 {
            let complete = next() % 20;
            // Some events complete; one may be half-done at each of the reads.
            let mut step = |proc: &mut Counts, ebpf: &mut FamilyCounts, half: bool| {
                let c = (next() % 5) as usize;
                let f = (next() % 2) as usize;
                let probe_first = next() % 2 == 0;
                if half {
                    if probe_first {
                        ebpf[f][c] += 1;
                    } else {
                        proc[c] += 1;
                    }
                    Some((c, f, probe_first))
                } else {
                    proc[c] += 1;
                    ebpf[f][c] += 1;
                    None
                }
            };
            for _ in 0..complete {
                step(&mut proc, &mut ebpf, false);
            }
            // An event half done between the bracket's first read and /proc...
            let before = ebpf;
            let pending = step(&mut proc, &mut ebpf, true);
            let seen_proc = proc;
            // ...and completed before the second read.
            if let Some((c, f, probe_first)) = pending {
                if probe_first {
                    proc[c] += 1;
                } else {
                    ebpf[f][c] += 1;
                }
            }
            let out = r.update(input(seen_proc, 1, before, ebpf));
            assert_eq!(out.status, Status::Exact);
            for (c, total) in reported.iter_mut().enumerate() {
                *total += out.events[0][c] + out.events[1][c];
            }
            let expected: Counts = std::array::from_fn(|c| seen_proc[c] - start[c]);
            assert_eq!(reported, expected);
        }
    }
}
