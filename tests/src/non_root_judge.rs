//! The non-root check's verdict and RESULT line from what a run measured
//! (see `non_root` for the run); pure, so its pass and fail cases are
//! unit-tested on the host with recorded figures.

use crate::burst_judge::{Burst, Exit, ProbeType};
use crate::caps;
use crate::check::{yes_no, Judged, ResultLine, Verdict};

/// One counter as the uid 65534 agent, a root agent and the kernel gave it.
pub type Totals = (&'static str, u64, u64, u64);

/// What one non-root run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NonRoot {
    /// The capabilities the agent was given (mask).
    pub given: u64,
    pub probe: ProbeType,
    /// Where the agent's capability sets or uid were not the table's, after
    /// start-up and after the traffic.
    pub wrong_caps: Vec<String>,
    /// The agent's effective set after start-up (mask).
    pub cap_eff: u64,
    pub burst: Burst,
    pub totals: Vec<Totals>,
    pub exit: Exit,
}

impl NonRoot {
    fn totals_equal(&self) -> bool {
        self.totals.iter().all(|&(_, a, r, k)| a == r && a == k)
    }
}

impl Judged for NonRoot {
    /// The table's capabilities on every thread, the burst counted exactly,
    /// the totals equal to a root agent's and the kernel's, a clean exit.
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        for wrong in &self.wrong_caps {
            v.require(false, || wrong.clone());
        }
        self.probe.judge(&mut v);
        self.burst.judge(&mut v);
        for &(name, a, r, k) in &self.totals {
            v.require(a == r && a == k, || {
                format!("{name}: uid 65534 agent {a}, root agent {r}, kernel {k}")
            });
        }
        self.exit.judge("SIGTERM", &mut v);
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let b = &self.burst;
        let line = self
            .probe
            .add_to(head(kernel, self.given))
            .field("cap_eff", caps::names(self.cap_eff))
            .field("syn_driven", b.syn_driven)
            .field("ack_driven", b.ack_driven);
        b.add_counts(line)
            .field("misses", b.probes.missed)
            .field("reconcile", b.reconcile())
            .field("totals_equal_root", yes_no(self.totals_equal()))
            .field("exit", self.exit.code)
            .field("leftovers", self.exit.left.len())
    }
}

/// `RESULT kernel=K check=non-root uid=65534 caps=...`.
pub fn head(kernel: &str, given: u64) -> ResultLine {
    ResultLine::new(kernel, "non-root")
        .field("uid", caps::NOBODY)
        .field("caps", caps::names(given))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{CAP_BPF, CAP_DAC_OVERRIDE, CAP_PERFMON, CAP_SYS_ADMIN};

    const RECORDED: &str = "RESULT kernel=6.1.0-57-cloud-amd64 check=non-root uid=65534 caps=dac_override,sys_admin,perfmon,bpf cap_eff=dac_override,sys_admin,perfmon,bpf syn_driven=2000 ack_driven=500 proc_syn=2000 ebpf_syn=2000 proc_inv=500 ebpf_inv=500 misses=0 reconcile=exact/exact totals_equal_root=yes exit=0 leftovers=0 status=PASS";

    fn recorded() -> NonRoot {
        let table = caps::mask(&[CAP_BPF, CAP_PERFMON, CAP_DAC_OVERRIDE, CAP_SYS_ADMIN]);
        NonRoot {
            given: table,
            probe: ProbeType::default(),
            wrong_caps: Vec::new(),
            cap_eff: table,
            burst: Burst::exact(2000, 500),
            totals: vec![
                ("syn_received", 2000, 2000, 2000),
                ("cookie_invalid", 500, 500, 500),
            ],
            exit: Exit::clean(80),
        }
    }

    #[test]
    fn the_recorded_run_passes_and_each_failure_fails() {
        let broken: [fn(&mut NonRoot); 6] = [
            |m| {
                m.wrong_caps
                    .push("after traffic: thread 2: effective has sys_resource".into())
            },
            |m| {
                m.probe = ProbeType {
                    fentry: true,
                    seen: Some("kprobe".into()),
                    expected: "fentry".into(),
                }
            },
            |m| m.burst.ebpf_inv = 499,
            |m| m.totals[1].2 = 499,
            |m| m.exit.ok = false,
            |m| m.exit.left.push("bpf map spx_counts".into()),
        ];
        crate::check::each_fails(&recorded(), "6.1.0-57-cloud-amd64", RECORDED, &broken);
    }

    #[test]
    fn unequal_totals_say_no() {
        let mut m = recorded();
        m.totals[0].1 = 1;
        assert!(m.line("k").head().contains(" totals_equal_root=no "));
    }
}
