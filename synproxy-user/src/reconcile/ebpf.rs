//! Agreement between the eBPF counts and the kernel's own counters, per network
//! namespace. Pure: totals in, status and interval events out.
//!
//! /proc is authoritative. Both sources are compared as totals since a common
//! baseline (taken when the probes were attached, or after a disagreement was
//! reported), summed over families because /proc has no family split:
//!
//! - `exact`: eBPF totals equal /proc totals for every counter.
//! - `lagging`: they differ while events are flowing and the kernel reported no
//!   probe miss: events in flight at the read (a probe fires just before or after
//!   the kernel's increment). At most [`MAX_LAGGING_ROUNDS`] in a row.
//! - `missed`: they differ and the kernel reported probe misses or lost events,
//!   or nothing moved this interval (so nothing can be in flight), or lagging
//!   went on too long. The baseline is then reset so later intervals can be
//!   exact again.
//! - `proc-only`: no eBPF counts for this interval (probes not attached yet,
//!   just (re)attached, or the /proc counters were reset).

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
    let field = |c: Counter| match c {
        Counter::SynReceived => Field::SynReceived,
        Counter::CookieInvalid => Field::CookieInvalid,
        Counter::CookieValid => Field::CookieValid,
        Counter::CookieRetrans => Field::CookieRetrans,
        Counter::ConnReopened => Field::ConnReopened,
    };
    Counter::ALL.map(|c| totals[field(c).index()])
}

#[derive(Clone, Copy, Debug)]
pub struct Input {
    /// /proc totals of the namespace (wrap-safe u64).
    pub proc: Counts,
    /// The /proc counters restarted this round (new proc entry).
    pub proc_reset: bool,
    /// Attachment generation and absolute eBPF counts of the namespace; None
    /// when the probes are not attached.
    pub ebpf: Option<(u64, FamilyCounts)>,
    /// Probe misses and lost events reported by the kernel since the previous read.
    pub losses: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    pub status: Status,
    /// eBPF-counted events in this interval, per family.
    pub events: FamilyCounts,
    /// /proc delta over the eBPF delta per counter when eBPF saw fewer events
    /// (1.0 otherwise): the factor that scales peak rates to the authoritative total.
    pub scale: [f64; COUNTER_COUNT],
    /// eBPF minus /proc since the baseline, per counter, before any reset.
    pub difference: [i64; COUNTER_COUNT],
}

#[derive(Clone, Debug)]
struct State {
    generation: u64,
    base_proc: Counts,
    base_ebpf: Counts,
    last_proc: Counts,
    last_ebpf: FamilyCounts,
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

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, input: Input) -> Outcome {
        let mut out = Outcome {
            status: Status::ProcOnly,
            events: [[0; COUNTER_COUNT]; 2],
            scale: [1.0; COUNTER_COUNT],
            difference: [0; COUNTER_COUNT],
        };
        let Some((generation, ebpf)) = input.ebpf else {
            self.state = None;
            return out;
        };
        let baseline = State {
            generation,
            base_proc: input.proc,
            base_ebpf: family_sum(&ebpf),
            last_proc: input.proc,
            last_ebpf: ebpf,
            lagging_rounds: 0,
        };
        let state = match self.state.as_mut() {
            Some(s) if s.generation == generation && !input.proc_reset => s,
            _ => {
                self.state = Some(baseline);
                return out;
            }
        };
        out.events = std::array::from_fn(|f| {
            std::array::from_fn(|c| ebpf[f][c].saturating_sub(state.last_ebpf[f][c]))
        });
        let ebpf_sum = family_sum(&ebpf);
        let mut moved = false;
        #[allow(clippy::needless_range_loop)] // c indexes five parallel arrays
        for c in 0..COUNTER_COUNT {
            let cum_e = ebpf_sum[c].wrapping_sub(state.base_ebpf[c]);
            let cum_p = input.proc[c].wrapping_sub(state.base_proc[c]);
            out.difference[c] = (cum_e as i64).wrapping_sub(cum_p as i64);
            let proc_delta = input.proc[c].saturating_sub(state.last_proc[c]);
            let ebpf_delta = out.events[0][c] + out.events[1][c];
            moved |= proc_delta != 0 || ebpf_delta != 0;
            if ebpf_delta > 0 && proc_delta > ebpf_delta {
                out.scale[c] = proc_delta as f64 / ebpf_delta as f64;
            }
        }
        out.status = if out.difference.iter().all(|&d| d == 0) {
            state.lagging_rounds = 0;
            Status::Exact
        } else if input.losses > 0 || !moved || state.lagging_rounds >= MAX_LAGGING_ROUNDS {
            Status::Missed
        } else {
            state.lagging_rounds += 1;
            Status::Lagging
        };
        if out.status != Status::Missed {
            // Peak rates are scaled only when events were really missed.
            out.scale = [1.0; COUNTER_COUNT];
        }
        state.last_proc = input.proc;
        state.last_ebpf = ebpf;
        if out.status == Status::Missed {
            *state = State {
                generation,
                ..baseline
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fc(v4: Counts, v6: Counts) -> FamilyCounts {
        [v4, v6]
    }

    fn input(proc: Counts, generation: u64, ebpf: FamilyCounts, losses: u64) -> Input {
        Input {
            proc,
            proc_reset: false,
            ebpf: Some((generation, ebpf)),
            losses,
        }
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
            losses: 0,
        });
        assert_eq!(out.status, Status::ProcOnly);
        assert_eq!(out.events, [[0; 5]; 2]);
    }

    #[test]
    fn baseline_then_exact_with_families() {
        let mut r = Reconciler::new();
        // Baseline: the namespace already had traffic before the probes attached.
        let out = r.update(input([100, 7, 50, 0, 0], 1, fc([0; 5], [0; 5]), 0));
        assert_eq!(out.status, Status::ProcOnly);
        // 5 SYNs over IPv4, 3 over IPv6, 2 valid cookies over IPv6.
        let out = r.update(input(
            [108, 7, 52, 0, 0],
            1,
            fc([5, 0, 0, 0, 0], [3, 0, 2, 0, 0]),
            0,
        ));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events, fc([5, 0, 0, 0, 0], [3, 0, 2, 0, 0]));
        assert_eq!(out.difference, [0; 5]);
        // Idle interval: still exact, no events.
        let out = r.update(input(
            [108, 7, 52, 0, 0],
            1,
            fc([5, 0, 0, 0, 0], [3, 0, 2, 0, 0]),
            0,
        ));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events, [[0; 5]; 2]);
    }

    #[test]
    fn in_flight_is_lagging_then_exact() {
        let mut r = Reconciler::new();
        r.update(input([0; 5], 1, [[0; 5]; 2], 0));
        // The kernel counted 10, eBPF saw 9 so far (a kretprobe still to run).
        let out = r.update(input([0, 0, 10, 0, 0], 1, fc([0, 0, 9, 0, 0], [0; 5]), 0));
        assert_eq!(out.status, Status::Lagging);
        assert_eq!(out.difference, [0, 0, -1, 0, 0]);
        let out = r.update(input([0, 0, 12, 0, 0], 1, fc([0, 0, 12, 0, 0], [0; 5]), 0));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events[0][2], 3);
    }

    #[test]
    fn reported_misses_make_missed_and_scale_peaks_then_rebase() {
        let mut r = Reconciler::new();
        r.update(input([0; 5], 1, [[0; 5]; 2], 0));
        let out = r.update(input(
            [0, 100, 0, 0, 0],
            1,
            fc([0, 80, 0, 0, 0], [0; 5]),
            20,
        ));
        assert_eq!(out.status, Status::Missed);
        assert_eq!(out.scale[1], 1.25);
        assert_eq!(out.difference[1], -20);
        // After the rebase, new events reconcile exactly again.
        let out = r.update(input([0, 110, 0, 0, 0], 1, fc([0, 90, 0, 0, 0], [0; 5]), 0));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.scale, [1.0; 5]);
    }

    #[test]
    fn a_difference_while_idle_is_missed() {
        let mut r = Reconciler::new();
        r.update(input([0; 5], 1, [[0; 5]; 2], 0));
        let out = r.update(input([3, 0, 0, 0, 0], 1, fc([2, 0, 0, 0, 0], [0; 5]), 0));
        assert_eq!(out.status, Status::Lagging);
        let out = r.update(input([3, 0, 0, 0, 0], 1, fc([2, 0, 0, 0, 0], [0; 5]), 0));
        assert_eq!(out.status, Status::Missed);
    }

    #[test]
    fn lagging_is_bounded() {
        let mut r = Reconciler::new();
        r.update(input([0; 5], 1, [[0; 5]; 2], 0));
        let mut statuses = Vec::new();
        for i in 1..=4u64 {
            let out = r.update(input(
                [i * 10, 0, 0, 0, 0],
                1,
                fc([i * 10 - 1, 0, 0, 0, 0], [0; 5]),
                0,
            ));
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
    fn reattach_or_proc_reset_starts_a_new_baseline() {
        let mut r = Reconciler::new();
        r.update(input([0; 5], 1, [[0; 5]; 2], 0));
        r.update(input([5, 0, 0, 0, 0], 1, fc([5, 0, 0, 0, 0], [0; 5]), 0));
        // Module reloaded: new generation, eBPF map values carry on.
        let out = r.update(input([0; 5], 2, fc([5, 0, 0, 0, 0], [0; 5]), 0));
        assert_eq!(out.status, Status::ProcOnly);
        let out = r.update(input([4, 0, 0, 0, 0], 2, fc([9, 0, 0, 0, 0], [0; 5]), 0));
        assert_eq!(out.status, Status::Exact);
        assert_eq!(out.events[0][0], 4);
        let mut reset = input([1, 0, 0, 0, 0], 2, fc([9, 0, 0, 0, 0], [0; 5]), 0);
        reset.proc_reset = true;
        assert_eq!(r.update(reset).status, Status::ProcOnly);
    }
}
