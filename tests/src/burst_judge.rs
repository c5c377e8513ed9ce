//! Pieces the eBPF checks judge alike, pure so that they are unit-tested on
//! the host: a burst of crafted SYNs and bad ACKs as /proc and an agent's
//! round saw it, how the agent stopped, and the probe type it used.

use crate::check::{ResultLine, Verdict};
use crate::line_protocol::Line;
use crate::live_agent::{self, Stopped};
use crate::proc_counters;
use anyhow::Result;
use std::time::Duration;
use synproxy_common::Counter;

/// SYNs and bad ACKs driven at the server, what its /proc moved by, and
/// what one round of an eBPF agent counted for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Burst {
    pub syn_driven: u64,
    pub ack_driven: u64,
    pub proc_syn: u64,
    pub proc_inv: u64,
    pub ebpf_syn: u64,
    pub ebpf_inv: u64,
    pub probes: Probes,
}

/// An eBPF agent's probes over a run, as its lines for the server said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probes {
    /// The probes line's `*_missed` sum and whether it says every probe is attached.
    pub missed: u64,
    pub attached: bool,
    /// The `probe_misses` reported and the reconcile status of each
    /// `synproxy_ebpf` line of the server.
    pub probe_misses: u64,
    pub statuses: Vec<String>,
}

impl Probes {
    /// Every probe attached, no miss, every line `exact`.
    pub fn judge(&self, v: &mut Verdict) {
        v.require(
            self.missed == 0
                && self.probe_misses == 0
                && self.attached
                && self.statuses.iter().all(|s| s == "exact"),
            || {
                format!(
                    "attached={} kprobe missed={} probe_misses={} reconcile={:?}",
                    self.attached, self.missed, self.probe_misses, self.statuses
                )
            },
        );
    }
}

impl Burst {
    /// `driven` SYNs and bad ACKs, the server's /proc `before` and `after`
    /// them, and the eBPF side from the round `lines` for namespace `srv`.
    pub fn read(
        lines: &[Line],
        srv: &str,
        driven: (u32, u32),
        before: &proc_counters::Totals,
        after: &proc_counters::Totals,
    ) -> Result<Self> {
        let delta = |c: Counter| after.get(c.name()).saturating_sub(before.get(c.name()));
        let (ebpf_syn, view) = live_agent::ebpf_count(lines, srv, Counter::SynReceived.name())?;
        let (ebpf_inv, _) = live_agent::ebpf_count(lines, srv, Counter::CookieInvalid.name())?;
        let (missed, attached) = live_agent::probe_misses(lines)?;
        Ok(Burst {
            syn_driven: driven.0.into(),
            ack_driven: driven.1.into(),
            proc_syn: delta(Counter::SynReceived),
            proc_inv: delta(Counter::CookieInvalid),
            ebpf_syn,
            ebpf_inv,
            probes: Probes {
                missed,
                attached,
                probe_misses: view.misses,
                statuses: view.statuses,
            },
        })
    }

    /// Test figures: `syn` SYNs and `ack` bad ACKs driven and every count
    /// exact, as the recorded runs show them.
    #[cfg(test)]
    pub fn exact(syn: u64, ack: u64) -> Self {
        Burst {
            syn_driven: syn,
            ack_driven: ack,
            proc_syn: syn,
            proc_inv: ack,
            ebpf_syn: syn,
            ebpf_inv: ack,
            probes: Probes {
                attached: true,
                statuses: vec!["exact".into(), "exact".into()],
                ..Probes::default()
            },
        }
    }

    /// /proc moved by what was driven, eBPF equal to /proc, every probe
    /// attached, no miss, every family line `exact`.
    pub fn judge(&self, v: &mut Verdict) {
        let (syn, inv) = (self.proc_syn, self.proc_inv);
        v.require((syn, inv) == (self.syn_driven, self.ack_driven), || {
            format!("/proc moved syn_received {syn}, cookie_invalid {inv}: not what was sent (packets lost before SYNPROXY?)")
        });
        v.require((self.ebpf_syn, self.ebpf_inv) == (syn, inv), || {
            format!(
                "eBPF {}/{} != /proc {syn}/{inv}",
                self.ebpf_syn, self.ebpf_inv
            )
        });
        self.probes.judge(v);
    }

    /// `line` with `proc_syn= ebpf_syn= proc_inv= ebpf_inv=`.
    pub fn add_counts(&self, line: ResultLine) -> ResultLine {
        line.field("proc_syn", self.proc_syn)
            .field("ebpf_syn", self.ebpf_syn)
            .field("proc_inv", self.proc_inv)
            .field("ebpf_inv", self.ebpf_inv)
    }

    /// The `reconcile=` value: each family line's status.
    pub fn reconcile(&self) -> String {
        self.probes.statuses.join("/")
    }
}

/// How an agent ended and what it left in the kernel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exit {
    pub ok: bool,
    /// Exit code, or 128 + signal number.
    pub code: i32,
    pub elapsed: Duration,
    pub left: Vec<String>,
    /// How long it may take (None: not judged here).
    pub limit: Option<Duration>,
}

impl Exit {
    pub fn of(stopped: &Stopped, left: Vec<String>, limit: Option<Duration>) -> Self {
        Exit {
            ok: stopped.exit_ok,
            code: stopped.exit_code,
            elapsed: stopped.elapsed,
            left,
            limit,
        }
    }

    /// A clean exit within [`EXIT_LIMIT`](live_agent::EXIT_LIMIT), as test figures.
    #[cfg(test)]
    pub fn clean(ms: u64) -> Self {
        Exit {
            ok: true,
            elapsed: Duration::from_millis(ms),
            limit: Some(live_agent::EXIT_LIMIT),
            ..Exit::default()
        }
    }

    /// Exit 0 within the limit and nothing left (`what` names the stop in
    /// the reasons).
    pub fn judge(&self, what: &str, v: &mut Verdict) {
        v.require(
            self.ok && self.limit.is_none_or(|l| self.elapsed <= l),
            || format!("{what}: exit {} after {:?}", self.code, self.elapsed),
        );
        v.require(self.left.is_empty(), || {
            format!("{what}: left in the kernel: {}", self.left.join("; "))
        });
    }
}

/// With `--probes fentry`: the probe type the agent reported and the one
/// this kernel must give.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeType {
    pub fentry: bool,
    pub seen: Option<String>,
    pub expected: String,
}

impl ProbeType {
    /// Under `fentry` the type the agent used must be the expected one.
    pub fn ok(&self) -> bool {
        !self.fentry || self.seen.as_deref().unwrap_or("none") == self.expected
    }

    /// ` probes=fentry probe_type=<seen> expected_probe_type=<type>`, or
    /// nothing without `--probes fentry`.
    pub fn fields(&self) -> String {
        if !self.fentry {
            return String::new();
        }
        format!(
            " probes=fentry probe_type={} expected_probe_type={}",
            self.seen.as_deref().unwrap_or("none"),
            self.expected
        )
    }

    pub fn judge(&self, v: &mut Verdict) {
        v.require(self.ok(), || format!("probe type:{}", self.fields()));
    }

    /// `line` with [`ProbeType::fields`].
    pub fn add_to(&self, line: ResultLine) -> ResultLine {
        if !self.fentry {
            return line;
        }
        line.field("probes", "fentry")
            .field("probe_type", self.seen.as_deref().unwrap_or("none"))
            .field("expected_probe_type", &self.expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The non-root check on 6.1 (recorded): 2,000 SYNs, 500 bad ACKs.
    fn recorded() -> Burst {
        Burst::exact(2000, 500)
    }

    #[test]
    fn an_exact_burst_passes() {
        let mut v = Verdict::default();
        recorded().judge(&mut v);
        assert!(v.pass(), "{:?}", v.failed);
        assert_eq!(recorded().reconcile(), "exact/exact");
    }

    #[test]
    fn each_broken_part_of_a_burst_fails() {
        let broken: [fn(&mut Burst); 7] = [
            |b| b.proc_syn = 1999,
            |b| b.proc_inv = 501,
            |b| b.ebpf_syn = 1999,
            |b| b.probes.missed = 1,
            |b| b.probes.probe_misses = 1,
            |b| b.probes.attached = false,
            |b| b.probes.statuses[1] = "lagging".into(),
        ];
        for (i, breaking) in broken.iter().enumerate() {
            let mut b = recorded();
            breaking(&mut b);
            let mut v = Verdict::default();
            b.judge(&mut v);
            assert!(!v.pass(), "case {i} passed");
        }
    }

    #[test]
    fn an_exit_fails_on_a_code_a_delay_or_a_leftover() {
        let mut v = Verdict::default();
        Exit::clean(55).judge("SIGTERM", &mut v);
        assert!(v.pass());
        let broken: [fn(&mut Exit); 3] = [
            |e| e.ok = false,
            |e| e.elapsed = Duration::from_secs(4),
            |e| e.left.push("kprobe event spx_x".into()),
        ];
        for (i, breaking) in broken.iter().enumerate() {
            let mut exit = Exit::clean(55);
            breaking(&mut exit);
            let mut v = Verdict::default();
            exit.judge("SIGTERM", &mut v);
            assert!(!v.pass(), "case {i}");
        }
        let mut unlimited = Exit::clean(55);
        unlimited.limit = None;
        unlimited.elapsed = Duration::from_secs(5);
        let mut v = Verdict::default();
        unlimited.judge("SIGTERM", &mut v);
        assert!(v.pass());
    }

    #[test]
    fn the_probe_type_counts_only_under_fentry() {
        let mut p = ProbeType {
            fentry: false,
            seen: Some("kprobe".into()),
            expected: "fentry".into(),
        };
        assert!(p.ok());
        assert_eq!(p.fields(), "");
        p.fentry = true;
        assert!(!p.ok());
        assert_eq!(
            p.fields(),
            " probes=fentry probe_type=kprobe expected_probe_type=fentry"
        );
        p.seen = None;
        assert!(p.fields().contains("probe_type=none "));
        p.expected = "none".into();
        assert!(p.ok());
    }
}
