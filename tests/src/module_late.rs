//! VM checks `module-late` and `module-reload`, which share one agent.
//!
//! module-late: `synproxy-agent --interval 500ms --netns SRV` (eBPF) starts
//! while `nf_synproxy_core` is not loaded: it must report the missing proc file
//! once and keep running; once the late modules are loaded it must attach its
//! probes, log the recovery, and after real connections its totals must equal
//! the summed `/proc` rows and its eBPF events the /proc `cookie_valid`.
//!
//! module-reload: with the same agent, the late modules are unloaded and loaded
//! again (the kernel's counters restart at 0). The agent must log the reset,
//! continue its totals from the new baseline (old total + new counters, never a
//! drop), re-attach, and count the new events exactly.

use crate::check::{or_none, yes_no, Check, Judged, ResultLine, Verdict};
use crate::guest_modules::{self, ModuleList, SYNPROXY_CORE};
use crate::module_agent::{self, ModuleAgent, Waits};
use crate::netns::Netns;
use crate::scenario::Config;
use crate::sustained_judge::{fmt_counts, Counts};
use anyhow::{Context, Result};
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::time::{Duration, Instant};
use synproxy_common::Counter;

/// The timing name of the second check (no clean-state wait: it goes on from
/// module-late's agent and namespace).
pub const RELOAD: &str = "module-reload";
const VALID: usize = Counter::CookieValid.index();

/// The driven connections and the agent's eBPF count of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counted {
    /// The matrix check passed, and what it drove.
    pub scenario_ok: bool,
    pub driven: Option<u64>,
    /// eBPF cookie_valid events since the attach; exact lines among the
    /// agent's last two eBPF lines of the server.
    pub ebpf: u64,
    pub ebpf_exact: usize,
}

impl Counted {
    /// The reasons the connections were not counted exactly against /proc's `proc`.
    fn reasons(&self, proc: Option<u64>, reasons: &mut Vec<String>) {
        if !self.scenario_ok {
            reasons.push("the driven connections' check failed".to_string());
        }
        if Some(self.ebpf) != proc || self.ebpf_exact != 2 {
            reasons.push(format!(
                "eBPF: {} events against /proc {}, {} of the last two lines exact",
                self.ebpf,
                or_none(proc),
                self.ebpf_exact
            ));
        }
    }
}

/// What module-late measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LateMeasured {
    /// How often the missing file was logged over three intervals after the first report.
    pub missing_reports: usize,
    pub alive_while_missing: bool,
    /// `/proc/net/stat/synproxy` did not exist before the load.
    pub file_absent_before: bool,
    pub ebpf_attached: bool,
    pub counted: Counted,
    /// The server's summed /proc rows and the agent's last totals.
    pub proc: Option<Counts>,
    pub agent: Option<Counts>,
    /// The agent logged something after the load.
    pub recovery_logged: bool,
    pub alive_after: bool,
}

/// What module-reload measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReloadMeasured {
    pub unloaded: bool,
    pub reattached: bool,
    pub counted: Counted,
    /// /proc cookie_valid after the reload (counted from 0 again).
    pub proc: Option<u64>,
    /// The agent's cookie_valid total before the unload and now.
    pub agent_before: Option<u64>,
    pub agent: Option<u64>,
    pub reset_logged: bool,
    pub alive: bool,
}

impl Judged for LateMeasured {
    /// module-late's reasons to fail.
    fn judge(&self) -> Verdict {
        let m = self;
        let proc_val = m.proc.map(|p| p[VALID]);
        let mut reasons = Vec::new();
        if m.missing_reports != 1 {
            reasons.push(format!(
                "the missing file was reported {} times, not once",
                m.missing_reports
            ));
        }
        if !m.alive_while_missing || !m.alive_after {
            reasons.push("the agent exited".to_string());
        }
        if !m.file_absent_before {
            reasons.push("/proc/net/stat/synproxy existed before the late load".to_string());
        }
        if !m.recovery_logged {
            reasons.push("the agent logged nothing after the module loaded".to_string());
        }
        m.counted.reasons(proc_val, &mut reasons);
        if proc_val.unwrap_or(0) == 0 {
            reasons.push("/proc cookie_valid did not move".to_string());
        }
        if m.agent != m.proc {
            reasons.push("the agent's totals differ from /proc's".to_string());
        }
        if !m.ebpf_attached {
            reasons.push("the probes did not attach after the load".to_string());
        }
        Verdict { failed: reasons }
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let m = self;
        let proc_val = m.proc.map(|p| p[VALID]);
        ResultLine::new(kernel, "module-late")
            .field("counter", "cookie_valid")
            .field("driven", or_none(m.counted.driven))
            .field("proc", or_none(proc_val))
            .field("agent", or_none(m.agent.map(|a| a[VALID])))
            .field("ebpf", m.counted.ebpf)
            .field("ebpf_attached_late", yes_no(m.ebpf_attached))
            .field("ebpf_reconcile_exact", m.counted.ebpf_exact)
            .field(
                "proc_totals",
                m.proc.map_or("none".into(), |p| fmt_counts(&p)),
            )
            .field(
                "agent_totals",
                m.agent
                    .map_or("none/none/none/none/none".into(), |a| fmt_counts(&a)),
            )
            .field("missing_reports", m.missing_reports)
            .field("recovery_logged", yes_no(m.recovery_logged))
            .field("agent_alive", yes_no(m.alive_after))
    }
}

impl ReloadMeasured {
    /// The agent's total must go on from where it was: before + /proc's new count.
    fn expected(&self) -> u64 {
        self.agent_before.unwrap_or(0) + self.proc.unwrap_or(0)
    }
}

impl Judged for ReloadMeasured {
    /// module-reload's reasons to fail.
    fn judge(&self) -> Verdict {
        let m = self;
        let expected = m.expected();
        let mut reasons = Vec::new();
        if !m.unloaded {
            reasons.push("the late modules did not all unload".to_string());
        }
        if !m.reattached {
            reasons.push("the probes did not attach again".to_string());
        }
        if !m.alive {
            reasons.push("the agent exited".to_string());
        }
        m.counted.reasons(m.proc, &mut reasons);
        if !m.reset_logged {
            reasons.push("the agent did not log the recreated counters".to_string());
        }
        if m.counted.driven != Some(m.proc.unwrap_or(0)) {
            reasons.push(format!(
                "/proc moved {}, driven {}",
                or_none(m.proc),
                or_none(m.counted.driven)
            ));
        }
        if m.agent != Some(expected) {
            reasons.push(format!(
                "the agent's total is {}, not its total before plus /proc ({expected})",
                or_none(m.agent)
            ));
        }
        Verdict { failed: reasons }
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let m = self;
        let expected = m.expected();
        ResultLine::new(kernel, RELOAD)
            .field("counter", "cookie_valid")
            .field("driven", or_none(m.counted.driven))
            .field("proc", or_none(m.proc))
            .field("agent", or_none(m.agent))
            .field("agent_before", or_none(m.agent_before))
            .field("agent_expected", expected)
            .field("ebpf", m.counted.ebpf)
            .field("ebpf_reattached", yes_no(m.reattached))
            .field("ebpf_reconcile_exact", m.counted.ebpf_exact)
            .field("unloaded", yes_no(m.unloaded))
            .field("reset_logged", yes_no(m.reset_logged))
            .field("agent_alive", yes_no(m.alive))
    }
}

/// What module-reload goes on with.
pub struct Running {
    agent: ModuleAgent,
    srv: Netns,
    modules: ModuleList,
}

/// module-late's state for module-reload, between the two checks of one run.
#[derive(Default)]
pub struct Handover {
    /// When module-late began (None: it did not run).
    started: Cell<Option<Instant>>,
    running: RefCell<Option<Running>>,
}

/// Runs module-late; leaves its agent and namespace in `handover`.
pub fn module_late(cfg: &Config, kernel: &str, handover: &Handover) -> Check {
    let head = ResultLine::new(kernel, "module-late").field("counter", "cookie_valid");
    handover.started.set(Some(Instant::now()));
    Check::or_failed(
        head.head(),
        measure_late(cfg, kernel, handover).map(|(m, mut notes)| {
            let mut check = m.check(kernel, Vec::new());
            check.notes.append(&mut notes);
            check
        }),
    )
}

/// Ends module-late and begins module-reload on the console (the guest's init
/// ends module-reload), then runs it with module-late's agent. Nothing when
/// module-late did not run (its precondition failed).
pub fn module_reload(cfg: &Config, kernel: &str, handover: &Handover) -> Vec<Check> {
    let Some(started) = handover.started.get() else {
        return Vec::new();
    };
    println!(
        "CHECK-END name=module-late secs={:.1}",
        started.elapsed().as_secs_f64()
    );
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    println!(
        "CHECK-BEGIN name={RELOAD} kernel={kernel} uptime={}",
        uptime.split_whitespace().next().unwrap_or("0.00")
    );
    let head = ResultLine::new(kernel, RELOAD).field("counter", "cookie_valid");
    let measured = match handover.running.borrow_mut().take() {
        Some(running) => measure_reload(cfg, kernel, running),
        None => Err(anyhow::anyhow!("module-late left no agent to go on with")),
    };
    vec![Check::or_failed(
        head.head(),
        measured.map(|(m, mut notes)| {
            let mut check = m.check(kernel, Vec::new());
            check.notes.append(&mut notes);
            check
        }),
    )]
}

/// The server's /proc totals, or None when they cannot be read.
fn proc_totals(srv: &Netns) -> Option<Counts> {
    module_agent::proc_counts(srv).ok()
}

fn measure_late(
    cfg: &Config,
    kernel: &str,
    handover: &Handover,
) -> Result<(LateMeasured, Vec<String>)> {
    let modules = ModuleList::late()?;
    let srv = module_agent::server_netns(cfg, "late")?;
    // The agent runs in the root namespace and reads the server's through --netns.
    // With eBPF its probes cannot attach yet either; they must once the module loads.
    let mut agent = ModuleAgent::start(&cfg.agent, srv.name(), &[])?;
    let mut waits = Waits::default();
    let mut m = LateMeasured::default();
    waits.until(
        "the agent to log the missing /proc/net/stat/synproxy",
        Duration::from_secs(120),
        || agent.count_logged(module_agent::reports_missing_file) > 0,
    );
    // Not logged again while the agent retries: a failing round prints nothing,
    // so this watches three more intervals (3 x 500 ms) after the report.
    std::thread::sleep(Duration::from_millis(1500));
    m.missing_reports = agent.count_logged(module_agent::reports_missing_file);
    let logged_before = agent.stderr().len();
    m.alive_while_missing = agent.running();
    m.file_absent_before = !Path::new("/proc/net/stat/synproxy").exists();

    // The clean-state baseline of the new modules is taken right after they load.
    // An agent attaching its probes holds a module reference for a moment, and a
    // baseline taken then would never be met again: the agent is stopped meanwhile.
    agent.live().signal(libc::SIGSTOP)?;
    waits.until(
        "every agent thread to stop",
        Duration::from_secs(60),
        || agent.stopped(),
    );
    let loaded = modules.load(kernel);
    agent.live().signal(libc::SIGCONT)?;
    loaded?;
    // Traffic only once the probes are attached and one exact round followed, so
    // eBPF sees every event.
    (m.ebpf_attached, _) = agent.wait_attach(
        &mut waits,
        1,
        "the agent to attach its probes after the module loaded",
    );
    let mut notes = Vec::new();
    let (driven, scenario_ok) =
        module_agent::drive_cookie_valid(cfg, kernel, &srv, "module-late", &mut notes);
    (m.counted.driven, m.counted.scenario_ok) = (Some(driven), scenario_ok);
    // The eBPF lines carry per-interval events: their sum since the agent started
    // (the probes attached after the load, before any traffic) must equal /proc.
    waits.until(
        "the agent to report srv's /proc totals and eBPF events",
        Duration::from_secs(60),
        || {
            let proc = proc_totals(&srv);
            proc.is_some()
                && agent.totals() == proc
                && proc.map(|p| p[VALID]) == Some(agent.ebpf_since(0, Counter::CookieValid))
                && agent.exact_of_last_two() == 2
        },
    );
    m.alive_after = agent.running();
    m.recovery_logged = agent.stderr().len() > logged_before;
    m.proc = proc_totals(&srv);
    m.agent = agent.totals();
    m.counted.ebpf = agent.ebpf_since(0, Counter::CookieValid);
    m.counted.ebpf_exact = agent.exact_of_last_two();
    notes.extend(waits.timeouts);
    notes.extend(agent.stderr_tail("module-late"));
    if !m.judge().pass() {
        notes.extend(agent.stdout_tail("module-late"));
    }
    *handover.running.borrow_mut() = Some(Running {
        agent,
        srv,
        modules,
    });
    Ok((m, notes))
}

fn measure_reload(
    cfg: &Config,
    kernel: &str,
    mut r: Running,
) -> Result<(ReloadMeasured, Vec<String>)> {
    let agent = &mut r.agent;
    let mut waits = Waits::default();
    let mut notes = Vec::new();
    let mut m = ReloadMeasured {
        agent_before: agent.totals().map(|t| t[VALID]),
        ..ReloadMeasured::default()
    };
    let attached_before = agent.count_logged(module_agent::reports_attach);
    let missing_before = agent.count_logged(module_agent::reports_missing_file);
    let unload = r.modules.unload()?;
    notes.extend(unload.stderr.iter().map(|l| format!("rmmod: {l}")));
    m.unloaded = unload.failed.is_empty() && !guest_modules::loaded(SYNPROXY_CORE);
    // The agent must see the file gone before it comes back: that is how it tells
    // new counters from old ones that happen to be equal.
    waits.until(
        "the agent to log the unloaded module's missing file",
        Duration::from_secs(120),
        || agent.count_logged(module_agent::reports_missing_file) > missing_before,
    );
    r.modules.load(kernel)?;
    // Traffic only once the probes are back and an exact round followed.
    let mark;
    (m.reattached, mark) = agent.wait_attach(
        &mut waits,
        attached_before + 1,
        "the agent to re-attach its probes",
    );
    let (driven, scenario_ok) =
        module_agent::drive_cookie_valid(cfg, kernel, &r.srv, RELOAD, &mut notes);
    (m.counted.driven, m.counted.scenario_ok) = (Some(driven), scenario_ok);
    let before = m.agent_before.unwrap_or(0);
    waits.until(
        "the agent's total to reach old total + /proc after the reload",
        Duration::from_secs(60),
        || {
            let proc = proc_totals(&r.srv).map(|p| p[VALID]);
            proc.is_some()
                && agent.totals().map(|t| t[VALID]) == proc.map(|p| p + before)
                && proc == Some(agent.ebpf_since(mark, Counter::CookieValid))
                && agent.exact_of_last_two() == 2
        },
    );
    m.proc = proc_totals(&r.srv).map(|p| p[VALID]);
    m.agent = agent.totals().map(|t| t[VALID]);
    m.counted.ebpf = agent.ebpf_since(mark, Counter::CookieValid);
    m.counted.ebpf_exact = agent.exact_of_last_two();
    m.reset_logged = agent.count_logged(|l| l.contains("counters were recreated")) > 0;
    m.alive = agent.running();
    notes.extend(waits.timeouts);
    if !m.judge().pass() {
        notes.extend(agent.stderr_tail(RELOAD));
        notes.extend(agent.stdout_tail(RELOAD));
    }
    r.agent.stop().context("stopping the agent")?;
    Ok((m, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_cases::assert_each_fails;

    const KERNEL: &str = "6.12.118+deb12-cloud-amd64";

    /// The figures of a passing run on 6.12.
    fn late_pass() -> LateMeasured {
        LateMeasured {
            missing_reports: 1,
            alive_while_missing: true,
            file_absent_before: true,
            ebpf_attached: true,
            counted: Counted {
                scenario_ok: true,
                driven: Some(5),
                ebpf: 5,
                ebpf_exact: 2,
            },
            proc: Some([5, 0, 5, 0, 0]),
            agent: Some([5, 0, 5, 0, 0]),
            recovery_logged: true,
            alive_after: true,
        }
    }

    fn reload_pass() -> ReloadMeasured {
        ReloadMeasured {
            unloaded: true,
            reattached: true,
            counted: Counted {
                scenario_ok: true,
                driven: Some(5),
                ebpf: 5,
                ebpf_exact: 2,
            },
            proc: Some(5),
            agent_before: Some(5),
            agent: Some(10),
            reset_logged: true,
            alive: true,
        }
    }

    #[test]
    fn a_passing_run_gives_the_recorded_lines() {
        let late = late_pass().check(KERNEL, Vec::new());
        assert_eq!(late.line, format!("RESULT kernel={KERNEL} check=module-late counter=cookie_valid driven=5 proc=5 agent=5 ebpf=5 ebpf_attached_late=yes ebpf_reconcile_exact=2 proc_totals=5/0/5/0/0 agent_totals=5/0/5/0/0 missing_reports=1 recovery_logged=yes agent_alive=yes status=PASS"));
        assert!(late.pass && late.notes.is_empty());
        let reload = reload_pass().check(KERNEL, Vec::new());
        assert_eq!(reload.line, format!("RESULT kernel={KERNEL} check=module-reload counter=cookie_valid driven=5 proc=5 agent=10 agent_before=5 agent_expected=10 ebpf=5 ebpf_reattached=yes ebpf_reconcile_exact=2 unloaded=yes reset_logged=yes agent_alive=yes status=PASS"));
        assert!(reload.pass && reload.notes.is_empty());
    }

    #[test]
    fn each_late_failure_fails_with_its_reason() {
        assert_each_fails(
            late_pass,
            |m| m.check(KERNEL, Vec::new()),
            &[
                (|m| m.missing_reports = 2, "reported 2 times"),
                (|m| m.missing_reports = 0, "reported 0 times"),
                (|m| m.alive_while_missing = false, "exited"),
                (|m| m.alive_after = false, "exited"),
                (|m| m.file_absent_before = false, "existed before"),
                (|m| m.recovery_logged = false, "logged nothing"),
                (|m| m.counted.scenario_ok = false, "connections' check"),
                (
                    |m| {
                        m.proc = Some([0; 5]);
                        m.agent = Some([0; 5]);
                        m.counted.ebpf = 0;
                    },
                    "did not move",
                ),
                (|m| m.agent = Some([5, 0, 4, 0, 0]), "totals differ"),
                (|m| m.agent = None, "totals differ"),
                (|m| m.counted.ebpf = 4, "eBPF: 4 events against /proc 5"),
                (|m| m.counted.ebpf_exact = 1, "1 of the last two"),
                (|m| m.ebpf_attached = false, "did not attach after the load"),
            ],
        );
        let mut m = late_pass();
        m.agent = None;
        let line = m.check(KERNEL, Vec::new()).line;
        assert!(line.contains(" agent=none ebpf=5 "), "{line}");
        assert!(
            line.contains(" agent_totals=none/none/none/none/none "),
            "{line}"
        );
    }

    #[test]
    fn each_reload_failure_fails_with_its_reason() {
        assert_each_fails(
            reload_pass,
            |m| m.check(KERNEL, Vec::new()),
            &[
                (|m| m.unloaded = false, "did not all unload"),
                (|m| m.reattached = false, "did not attach again"),
                (|m| m.alive = false, "exited"),
                (|m| m.counted.scenario_ok = false, "connections' check"),
                (|m| m.reset_logged = false, "recreated counters"),
                (|m| m.counted.driven = Some(4), "driven 4"),
                // A total that dropped to the new counters is the bug this catches.
                (
                    |m| m.agent = Some(5),
                    "total is 5, not its total before plus /proc (10)",
                ),
                (|m| m.counted.ebpf = 6, "eBPF: 6 events"),
                (|m| m.counted.ebpf_exact = 0, "0 of the last two"),
            ],
        );
    }
}
