//! The user-netns check's verdict and RESULT line from what a run measured
//! (see `user_netns_check` for the run); pure, so its pass and fail cases
//! are unit-tested on the host with recorded figures.

use crate::burst_judge::{Burst, Exit};
use crate::check::{Judged, ResultLine, Verdict};

/// The agent's `--netns-max` in the check, below the namespaces made.
pub const MAX_TRACKED: usize = 256;

/// What one user-netns run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserNetns {
    /// Namespaces the unprivileged user made, and how long that took.
    pub user_namespaces: usize,
    pub create_secs: f64,
    /// Namespaces the agent reported in its first round and after the traffic.
    pub tracked: (usize, usize),
    pub burst: Burst,
    /// The agent's `W! ... left out` warnings and `no room to count` lines.
    pub left_out_warnings: usize,
    pub no_slot: usize,
    pub exit: Exit,
}

impl Judged for UserNetns {
    /// The server namespace counted exactly, at most [`MAX_TRACKED`]
    /// namespaces reported, one warning for the rest, a clean exit.
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        self.burst.judge(&mut v);
        let (first, after) = self.tracked;
        v.require(first <= MAX_TRACKED && after <= MAX_TRACKED, || {
            format!("{first}/{after} namespaces reported, over {MAX_TRACKED}")
        });
        v.require(self.left_out_warnings == 1, || {
            format!("{} `left out` warnings, want 1", self.left_out_warnings)
        });
        v.require(self.no_slot == 0, || {
            format!("{} `no room to count` warnings", self.no_slot)
        });
        self.exit.judge("SIGTERM", &mut v);
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let b = &self.burst;
        let line = head(kernel, self.user_namespaces, b.syn_driven, b.ack_driven)
            .field("create_secs", format!("{:.1}", self.create_secs))
            .field("tracked", format!("{}/{}", self.tracked.0, self.tracked.1));
        b.add_counts(line)
            .field("reconcile", b.reconcile())
            .field("probe_misses", b.probes.probe_misses + b.probes.missed)
            .field("left_out_warnings", self.left_out_warnings)
            .field("exit", self.exit.code)
            .field("leftovers", self.exit.left.len())
    }
}

/// `RESULT kernel=K check=user-netns user_namespaces=N syn_driven= ack_driven=`.
pub fn head(kernel: &str, count: usize, syns: u64, acks: u64) -> ResultLine {
    ResultLine::new(kernel, "user-netns")
        .field("user_namespaces", count)
        .field("syn_driven", syns)
        .field("ack_driven", acks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> UserNetns {
        UserNetns {
            user_namespaces: 1000,
            create_secs: 2.5,
            tracked: (256, 256),
            burst: Burst::exact(2000, 500),
            left_out_warnings: 1,
            no_slot: 0,
            exit: Exit::clean(90),
        }
    }

    #[test]
    fn the_recorded_run_passes_and_each_failure_fails() {
        const RECORDED: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=user-netns user_namespaces=1000 syn_driven=2000 ack_driven=500 create_secs=2.5 tracked=256/256 proc_syn=2000 ebpf_syn=2000 proc_inv=500 ebpf_inv=500 reconcile=exact/exact probe_misses=0 left_out_warnings=1 exit=0 leftovers=0 status=PASS";
        let broken: [fn(&mut UserNetns); 7] = [
            |m| m.burst.ebpf_syn = 1999,
            |m| m.burst.probes.statuses[0] = "missed".into(),
            |m| m.tracked.1 = 257,
            |m| m.left_out_warnings = 0,
            |m| m.left_out_warnings = 2,
            |m| m.no_slot = 1,
            |m| m.exit.left.push("bpf prog spx_synack4".into()),
        ];
        crate::check::each_fails(&recorded(), "5.10.0-46-cloud-amd64", RECORDED, &broken);
    }
}
