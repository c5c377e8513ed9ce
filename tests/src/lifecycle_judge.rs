//! The lifecycle checks' verdicts and RESULT lines from what a run measured
//! (see `lifecycle` for the runs); pure, so their pass and fail cases are
//! unit-tested on the host with recorded figures.

use crate::burst_judge::Exit;
use crate::check::{yes_no, Judged, ResultLine, Verdict};
use crate::line_protocol::Line;
use crate::live_agent;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::Duration;
use synproxy_common::Counter;

/// Crafted traffic per driven phase (syn_received, cookie_invalid).
pub const DRIVEN: (u64, u64) = (200, 50);

/// One agent's view of the driven phase: the round after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// eBPF syn_received and cookie_invalid (both families).
    pub syn: u64,
    pub inv: u64,
    pub statuses: Vec<String>,
    pub misses: u64,
    /// The server's syn_received total (/proc through the agent).
    pub total_syn: u64,
}

impl Seen {
    pub fn read(lines: &[Line], label: &str, ebpf: bool) -> Result<Seen> {
        let mut s = Seen::default();
        let proc_line = lines
            .iter()
            .find(|l| {
                l.measurement == "synproxy"
                    && l.tags.get("netns").map(String::as_str) == Some(label)
            })
            .context("no synproxy line for the server netns")?;
        s.total_syn = proc_line.counter(Counter::SynReceived.name())?;
        if ebpf {
            let (syn, view) = live_agent::ebpf_count(lines, label, Counter::SynReceived.name())?;
            let (inv, _) = live_agent::ebpf_count(lines, label, Counter::CookieInvalid.name())?;
            let (missed, _) = live_agent::probe_misses(lines)?;
            s.syn = syn;
            s.inv = inv;
            s.statuses = view.statuses;
            s.misses = view.misses + missed;
        }
        Ok(s)
    }

    /// The agent's total equals /proc's and, with eBPF, its counts equal the
    /// /proc delta with no miss and every line `exact`.
    fn judge(&self, who: &str, ebpf: bool, proc: (u64, u64), total: u64, v: &mut Verdict) {
        let exact = !ebpf
            || ((self.syn, self.inv) == proc
                && self.misses == 0
                && self.statuses.iter().all(|s| s == "exact"));
        v.require(exact && self.total_syn == total, || {
            format!(
                "{who}: eBPF {}/{} vs /proc {}/{}, reconcile {:?}, misses {}, syn_received total {} vs /proc {total}",
                self.syn, self.inv, proc.0, proc.1, self.statuses, self.misses, self.total_syn
            )
        });
    }

    fn reconcile(&self) -> String {
        if self.statuses.is_empty() {
            "n/a".into()
        } else {
            self.statuses.join("/")
        }
    }
}

fn judge_driven(proc: (u64, u64), v: &mut Verdict) {
    v.require(proc == DRIVEN, || {
        format!(
            "/proc moved {}/{}, driven {}/{}",
            proc.0, proc.1, DRIVEN.0, DRIVEN.1
        )
    });
}

fn ebpf_on(ebpf: bool) -> &'static str {
    ["off", "on"][usize::from(ebpf)]
}

/// One SIGTERM of the start-up series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StartupRun {
    /// The delay after the agent's main() took signals (None: the
    /// reference run, signalled after the attach).
    pub delay: Option<u64>,
    /// When the signal went, from the spawn.
    pub signalled: Duration,
    pub exit: Exit,
    pub stderr: Vec<String>,
}

impl StartupRun {
    fn when(&self) -> String {
        match self.delay {
            None => format!("after the attach ({} ms)", self.signalled.as_millis()),
            Some(d) => format!("{d} ms (sent at {} ms)", self.signalled.as_millis()),
        }
    }
}

/// What `sigterm-during-startup` measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Startup {
    pub ebpf: bool,
    /// From spawn to the attach (eBPF) or to the first line.
    pub startup: Duration,
    pub delays: Vec<u64>,
    pub runs: Vec<StartupRun>,
}

impl Startup {
    /// Exits over the limit: reported, not failed (the shutdown checks own it).
    pub fn slow_exits(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| r.exit.code == 0 && r.exit.left.is_empty())
            .filter(|r| r.exit.elapsed > live_agent::EXIT_LIMIT)
            .map(|r| {
                format!(
                    "SIGTERM at {}: exit 0 but after {} ms (over {:?})",
                    r.when(),
                    r.exit.elapsed.as_millis(),
                    live_agent::EXIT_LIMIT
                )
            })
            .collect()
    }

    fn delays_text(&self) -> String {
        let d = &self.delays;
        match (d.first(), d.last()) {
            (Some(a), Some(b)) if d.len() > 1 => {
                format!("{a}..{b}/{}ms", d[1].saturating_sub(d[0]))
            }
            (Some(a), _) => format!("{a}ms"),
            _ => "none".into(),
        }
    }
}

impl Judged for Startup {
    /// Every run exits 0 and leaves nothing.
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        for r in &self.runs {
            v.require(r.exit.code == 0 && r.exit.left.is_empty(), || {
                format!(
                    "SIGTERM at {}: exit {} after {} ms, left: [{}]; stderr: {}",
                    r.when(),
                    r.exit.code,
                    r.exit.elapsed.as_millis(),
                    r.exit.left.join("; "),
                    r.stderr.join(" | ")
                )
            });
        }
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let mut exits: BTreeMap<i32, usize> = BTreeMap::new();
        for r in &self.runs {
            *exits.entry(r.exit.code).or_default() += 1;
        }
        let exits: Vec<String> = exits.iter().map(|(c, n)| format!("{c}x{n}")).collect();
        let max_exit = self.runs.iter().map(|r| r.exit.elapsed).max();
        ResultLine::new(kernel, "sigterm-during-startup")
            .field("ebpf", ebpf_on(self.ebpf))
            .field("startup_ms", self.startup.as_millis())
            .field("delays", self.delays_text())
            .field("runs", self.runs.len())
            .field("exits", exits.join(","))
            .field("max_exit_ms", max_exit.unwrap_or_default().as_millis())
            .field(
                "leftovers",
                self.runs.iter().map(|r| r.exit.left.len()).sum::<usize>(),
            )
    }
}

/// The agent started after the kill, once it attached.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restarted {
    pub pid1: bool,
    /// The /proc delta of the driven phase and the total after it.
    pub proc: (u64, u64),
    pub total_now: u64,
    pub seen: Seen,
    pub exit: Exit,
}

/// What `kill9-restart` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Kill9 {
    pub ebpf: bool,
    pub first_pid1: bool,
    /// The killed agent's (helper's) exit code and its kprobe events: how
    /// many it had, how many the kill left, which the restart left.
    pub killed_exit: i32,
    pub killed_events: usize,
    pub killed_events_after_kill: usize,
    pub killed_left: Vec<String>,
    pub killed_objects_left: usize,
    /// The restarted agent, or why it did not start.
    pub restarted: Result<Restarted, String>,
}

impl Judged for Kill9 {
    /// The restart removes the killed agent's events and objects, both
    /// agents are PID 1 of their own namespace, the restarted one counts
    /// the driven traffic exactly and exits cleanly.
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        v.require(
            self.killed_left.is_empty() && self.killed_objects_left == 0,
            || {
                format!(
                    "left by the killed agent after the restart: {} kprobe events [{}], {} BPF objects",
                    self.killed_left.len(),
                    self.killed_left.join("; "),
                    self.killed_objects_left
                )
            },
        );
        v.require(self.first_pid1, || {
            "the first agent was not PID 1 of its own PID namespace".into()
        });
        let r = match &self.restarted {
            Ok(r) => r,
            Err(e) => {
                v.failed.push(format!("restarted agent: {e}"));
                return v;
            }
        };
        v.require(r.pid1, || {
            "the restarted agent was not PID 1 of its own PID namespace".into()
        });
        judge_driven(r.proc, &mut v);
        r.seen
            .judge("restarted agent", self.ebpf, r.proc, r.total_now, &mut v);
        r.exit.judge("restarted agent on SIGTERM", &mut v);
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let head = ResultLine::new(kernel, "kill9-restart")
            .field("ebpf", ebpf_on(self.ebpf))
            .field(
                "pid1",
                yes_no(self.first_pid1 && self.restarted.as_ref().map_or(true, |r| r.pid1)),
            )
            .field("killed_exit", self.killed_exit)
            .field("killed_events", self.killed_events)
            .field("killed_events_after_kill", self.killed_events_after_kill);
        let Ok(r) = &self.restarted else {
            return head
                .field("restart_attached", "no")
                .field("killed_events_left", self.killed_left.len());
        };
        head.field("restart_attached", if self.ebpf { "yes" } else { "n/a" })
            .field("killed_events_left", self.killed_left.len())
            .field("killed_objects_left", self.killed_objects_left)
            .field("proc", format!("{}/{}", r.proc.0, r.proc.1))
            .field("ebpf_counts", format!("{}/{}", r.seen.syn, r.seen.inv))
            .field("reconcile", r.seen.reconcile())
            .field("probe_misses", r.seen.misses)
            .field("exit", r.exit.code)
            .field("leftovers", r.exit.left.len())
    }
}

/// One of the two agents: its view of the driven phase and its exit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Agent {
    pub name: &'static str,
    pub pid1: bool,
    pub seen: Seen,
    pub exit: Exit,
}

/// What `two-agents` measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TwoAgents {
    pub ebpf: bool,
    /// Why agent B did not start while A ran, if it did not.
    pub b_error: Option<String>,
    pub distinct_ns: bool,
    pub proc: (u64, u64),
    pub total_now: u64,
    pub agents: Vec<Agent>,
}

impl Judged for TwoAgents {
    /// Both started, each PID 1 of its own namespace, both exact over the
    /// driven traffic, both exit cleanly.
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        if let Some(e) = &self.b_error {
            v.failed.push(format!("agent B, started while A runs: {e}"));
        }
        let pid1: Vec<bool> = self.agents.iter().map(|a| a.pid1).collect();
        v.require(
            pid1.iter().all(|p| *p) && (self.agents.len() != 2 || self.distinct_ns),
            || {
                format!(
                    "PID 1 of their own PID namespace: {pid1:?}, distinct namespaces: {}",
                    self.distinct_ns
                )
            },
        );
        judge_driven(self.proc, &mut v);
        for a in &self.agents {
            let who = format!("agent {}", a.name);
            a.seen
                .judge(&who, self.ebpf, self.proc, self.total_now, &mut v);
            a.exit.judge(&format!("{who} on SIGTERM"), &mut v);
        }
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let pid1: Vec<&str> = self.agents.iter().map(|a| yes_no(a.pid1)).collect();
        let mut line = ResultLine::new(kernel, "two-agents")
            .field("ebpf", ebpf_on(self.ebpf))
            .field("agents", self.agents.len())
            .field("pid1", pid1.join("/"))
            .field("distinct_pidns", yes_no(self.distinct_ns))
            .field("proc", format!("{}/{}", self.proc.0, self.proc.1));
        for a in &self.agents {
            let name = a.name.to_lowercase();
            line = line
                .field(
                    &format!("ebpf_{name}"),
                    format!("{}/{}", a.seen.syn, a.seen.inv),
                )
                .field(&format!("reconcile_{name}"), a.seen.reconcile());
        }
        let exits: Vec<String> = self
            .agents
            .iter()
            .map(|a| a.exit.code.to_string())
            .collect();
        line.field("exits", exits.join("/")).field(
            "leftovers",
            self.agents.iter().map(|a| a.exit.left.len()).sum::<usize>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::each_fails;

    const K: &str = "5.10.0-46-cloud-amd64";

    fn exact() -> Seen {
        Seen {
            syn: 200,
            inv: 50,
            statuses: vec!["exact".into(), "exact".into()],
            misses: 0,
            total_syn: 1200,
        }
    }

    const STARTUP: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=sigterm-during-startup ebpf=on startup_ms=1238 delays=0..1540/77ms runs=22 exits=0x22 max_exit_ms=196 leftovers=0 status=PASS";

    fn startup() -> Startup {
        let delays: Vec<u64> = (0..=20).map(|i| i * 77).collect();
        let mut runs = vec![StartupRun {
            delay: None,
            signalled: Duration::from_millis(1238),
            exit: Exit::clean(196),
            stderr: Vec::new(),
        }];
        runs.extend(delays.iter().map(|&d| StartupRun {
            delay: Some(d),
            signalled: Duration::from_millis(d),
            exit: Exit::clean(40),
            stderr: Vec::new(),
        }));
        Startup {
            ebpf: true,
            startup: Duration::from_millis(1238),
            delays,
            runs,
        }
    }

    #[test]
    fn the_recorded_startup_series_passes_and_each_failure_fails() {
        let broken: [fn(&mut Startup); 2] = [
            |m| m.runs[3].exit.code = 1,
            |m| m.runs[0].exit.left.push("kprobe event spx_ack4".into()),
        ];
        each_fails(&startup(), K, STARTUP, &broken);
        let mut slow = startup();
        slow.runs[5].exit.elapsed = Duration::from_secs(4);
        assert!(slow.judge().pass());
        assert_eq!(slow.slow_exits().len(), 1);
        assert!(slow.line(K).head().contains(" max_exit_ms=4000 "));
    }

    const KILL9: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=kill9-restart ebpf=on pid1=yes killed_exit=137 killed_events=7 killed_events_after_kill=7 restart_attached=yes killed_events_left=0 killed_objects_left=0 proc=200/50 ebpf_counts=200/50 reconcile=exact/exact probe_misses=0 exit=0 leftovers=0 status=PASS";

    fn kill9() -> Kill9 {
        Kill9 {
            ebpf: true,
            first_pid1: true,
            killed_exit: 137,
            killed_events: 7,
            killed_events_after_kill: 7,
            killed_left: Vec::new(),
            killed_objects_left: 0,
            restarted: Ok(Restarted {
                pid1: true,
                proc: DRIVEN,
                total_now: 1200,
                seen: exact(),
                exit: Exit::clean(60),
            }),
        }
    }

    fn restarted(m: &mut Kill9) -> &mut Restarted {
        m.restarted.as_mut().expect("the recorded restart")
    }

    #[test]
    fn the_recorded_kill9_restart_passes_and_each_failure_fails() {
        let broken: [fn(&mut Kill9); 9] = [
            |m| m.killed_left.push("p:kprobes/spx_1_synack4".into()),
            |m| m.killed_objects_left = 1,
            |m| m.first_pid1 = false,
            |m| restarted(m).pid1 = false,
            |m| restarted(m).proc.1 = 49,
            |m| restarted(m).seen.total_syn = 1199,
            |m| restarted(m).seen.statuses[0] = "lagging".into(),
            |m| restarted(m).exit.left.push("bpf map".into()),
            |m| m.restarted = Err("no attach within 60 s".into()),
        ];
        each_fails(&kill9(), K, KILL9, &broken);
        let mut failed = kill9();
        failed.restarted = Err("no attach".into());
        assert!(failed.line(K).head().ends_with(
            "pid1=yes killed_exit=137 killed_events=7 killed_events_after_kill=7 restart_attached=no killed_events_left=0"
        ));
    }

    #[test]
    fn without_ebpf_the_counts_are_not_judged() {
        let mut m = kill9();
        m.ebpf = false;
        restarted(&mut m).seen = Seen {
            total_syn: 1200,
            ..Seen::default()
        };
        let check = m.check(K, Vec::new());
        assert!(check.pass, "{:?}", check.notes);
        assert!(check
            .line
            .contains(" restart_attached=n/a killed_events_left=0 "));
        assert!(check.line.contains(" reconcile=n/a "));
    }

    const TWO: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=two-agents ebpf=on agents=2 pid1=yes/yes distinct_pidns=yes proc=200/50 ebpf_a=200/50 reconcile_a=exact/exact ebpf_b=200/50 reconcile_b=exact/exact exits=0/0 leftovers=0 status=PASS";

    fn two() -> TwoAgents {
        let agent = |name| Agent {
            name,
            pid1: true,
            seen: exact(),
            exit: Exit::clean(70),
        };
        TwoAgents {
            ebpf: true,
            b_error: None,
            distinct_ns: true,
            proc: DRIVEN,
            total_now: 1200,
            agents: vec![agent("A"), agent("B")],
        }
    }

    #[test]
    fn the_recorded_two_agents_pass_and_each_failure_fails() {
        let broken: [fn(&mut TwoAgents); 7] = [
            |m| {
                m.agents.pop();
                m.b_error = Some("attach failed".into());
            },
            |m| m.agents[1].pid1 = false,
            |m| m.distinct_ns = false,
            |m| m.proc.0 = 201,
            |m| m.agents[0].seen.misses = 1,
            |m| m.agents[1].seen.inv = 49,
            |m| m.agents[1].exit.ok = false,
        ];
        each_fails(&two(), K, TWO, &broken);
    }
}
