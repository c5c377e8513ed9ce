//! The matrix's ground truth for one counter: what was driven, what /proc
//! moved by, what the agent reported, what eBPF counted; pure, so its pass
//! and fail cases are unit-tested on the host with recorded figures.

use crate::burst_judge::{Exit, Probes};
use crate::check::Verdict;

/// One run of the agent the configured way (inside the netns, or with
/// `--netns`): the counter's value it reported, and the /proc total read
/// right after it (the traffic is idle by then).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReading {
    /// How it ran, for the reasons (`inside netns`, `--netns NAME`).
    pub how: String,
    pub value: u64,
    pub proc_total: u64,
}

/// The eBPF agent that ran across the traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EbpfReading {
    /// Its count of the counter in the server netns, both families.
    pub count: u64,
    pub probes: Probes,
    /// How it stopped on stdin EOF, and its stderr.
    pub exit: Exit,
    pub stderr: Vec<String>,
}

/// What one counter's run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matrix {
    pub counter: &'static str,
    pub driven: u64,
    pub proc_delta: u64,
    pub agents: Vec<AgentReading>,
    pub ebpf: Option<EbpfReading>,
}

impl Matrix {
    /// The `agent=` value: the first agent's reading (a total, not a delta).
    pub fn agent(&self) -> u64 {
        self.agents.first().map_or(0, |a| a.value)
    }
}

/// /proc moved by exactly what was driven; each agent's reading equals the
/// /proc *total* read right after it (not the delta: traffic outside the
/// counted window, such as the nft IPv6 checksum probe's one SYN, is in
/// both, which is why `agent=6` beside `proc=5` passes); eBPF equals the
/// /proc delta, with every probe attached, no miss, every line `exact`,
/// and a clean stop in time.
pub fn judge(m: &Matrix) -> Verdict {
    let mut v = Verdict::default();
    v.require(m.proc_delta == m.driven, || {
        format!("proc delta {} != driven {}", m.proc_delta, m.driven)
    });
    let name = m.counter;
    for a in &m.agents {
        v.require(a.value == a.proc_total, || {
            format!(
                "agent {} reported {name}={}, /proc total is {}",
                a.how, a.value, a.proc_total
            )
        });
    }
    if let Some(e) = &m.ebpf {
        v.require(e.count == m.proc_delta, || {
            format!("ebpf {name}={}, /proc delta {}", e.count, m.proc_delta)
        });
        e.probes.judge(&mut v);
        e.exit.judge("agent on stdin EOF", &mut v);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Family, Flavour};
    use crate::scenario::{Combo, Outcome};
    use synproxy_common::Counter;

    /// `RESULT kernel=6.12.118+deb12-cloud-amd64 rules=nft family=ipv6
    /// counter=syn_received driven=5 proc=5 agent=6 ebpf=5 status=PASS`:
    /// the checksum probe's SYN is in the total, outside the window.
    fn nft_ipv6_syn() -> Matrix {
        Matrix {
            counter: "syn_received",
            driven: 5,
            proc_delta: 5,
            agents: vec![AgentReading {
                how: "inside netns".into(),
                value: 6,
                proc_total: 6,
            }],
            ebpf: Some(EbpfReading {
                count: 5,
                probes: Probes {
                    attached: true,
                    statuses: vec!["exact".into(), "exact".into()],
                    ..Probes::default()
                },
                exit: Exit::clean(40),
                stderr: Vec::new(),
            }),
        }
    }

    fn line(m: &Matrix) -> String {
        let v = judge(m);
        Outcome {
            combo: Combo {
                rules: Flavour::Nft,
                family: Family::Ipv6,
                counter: Counter::SynReceived,
            },
            driven: m.driven,
            proc_delta: m.proc_delta,
            agent: m.agent(),
            ebpf: m.ebpf.as_ref().map(|e| e.count),
            pass: v.pass(),
            notes: v.failed,
        }
        .result_line("6.12.118+deb12-cloud-amd64")
    }

    #[test]
    fn an_agent_total_over_the_delta_passes_as_recorded() {
        assert_eq!(
            line(&nft_ipv6_syn()),
            "RESULT kernel=6.12.118+deb12-cloud-amd64 rules=nft family=ipv6 counter=syn_received driven=5 proc=5 agent=6 ebpf=5 status=PASS"
        );
    }

    #[test]
    fn each_failure_fails() {
        let broken: [fn(&mut Matrix); 8] = [
            |m| m.proc_delta = 4,
            |m| m.agents[0].value = 5,
            |m| {
                m.agents.push(AgentReading {
                    how: "--netns srv".into(),
                    value: 7,
                    proc_total: 6,
                })
            },
            |m| m.ebpf.as_mut().expect("ebpf").count = 6,
            |m| m.ebpf.as_mut().expect("ebpf").probes.statuses[0] = "proc-only".into(),
            |m| m.ebpf.as_mut().expect("ebpf").probes.missed = 1,
            |m| m.ebpf.as_mut().expect("ebpf").exit.ok = false,
            |m| {
                m.ebpf
                    .as_mut()
                    .expect("ebpf")
                    .exit
                    .left
                    .push("kprobe".into())
            },
        ];
        for (i, breaking) in broken.iter().enumerate() {
            let mut m = nft_ipv6_syn();
            breaking(&mut m);
            assert!(line(&m).ends_with("status=FAIL"), "case {i}");
        }
    }

    #[test]
    fn without_ebpf_the_line_says_off() {
        let mut m = nft_ipv6_syn();
        m.ebpf = None;
        assert!(line(&m).ends_with(" agent=6 ebpf=off status=PASS"));
    }
}
