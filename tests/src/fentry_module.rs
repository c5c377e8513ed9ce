//! VM check `fentry-module`: fentry programs and module reloads. A loaded
//! fentry program on a module function holds the module (Linux 6.4+; 5.12-6.3
//! while attached). With the agent on `--probes fentry`: unloading
//! `nf_synproxy_core` must fail "in use" while the agent keeps counting;
//! SIGUSR1 releases it; the modules are unloaded and loaded again, and the
//! agent must load its programs again against the new module BTF (another BTF
//! object id in its attach log) and count the new events exactly; after SIGTERM
//! the modules unload. Where the module has no BTF (5.10) the agent must warn
//! once and use kprobes, which do not hold the module.

use crate::check::{or_none, yes_no, Check, Judged, ResultLine, Verdict};
use crate::clean_state;
use crate::guest_modules::{self, ModuleList, Unload, SYNPROXY_CORE};
use crate::live_agent;
use crate::module_agent::{self, ModuleAgent, Waits};
use crate::netns::Netns;
use crate::scenario::Config;
use anyhow::Result;
use std::path::Path;
use std::time::Duration;
use synproxy_common::Counter;

const CHECK: &str = "fentry-module";
/// What the agent's fallback warning starts with.
const FALLBACK: &str = "--probes fentry: ";
const VALID: usize = Counter::CookieValid.index();

/// The steps where the module has BTF and fentry holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    /// Modules rmmod could not unload while the agent held them.
    pub rmmod_while_held: Vec<String>,
    /// rmmod said "in use" (kmod) or "temporarily unavailable" (busybox, O_NONBLOCK).
    pub in_use: bool,
    pub refcnt_held: Option<i64>,
    pub alive_while_held: bool,
    /// After SIGUSR1.
    pub refcnt_released: Option<i64>,
    pub rmmod_after_release: Vec<String>,
    pub unloaded_after_release: bool,
    /// The BTF object ids of the first and the second attach log line.
    pub btf_before: Option<u32>,
    pub btf_after: Option<u32>,
    pub reload_scenario_ok: bool,
    pub proc_after_reload: Option<u64>,
    /// eBPF cookie_valid events since the re-attach.
    pub ebpf_after_reload: u64,
    pub probe_type_after: String,
    /// Modules that would not unload after the agent exited.
    pub rmmod_after_exit: Vec<String>,
}

/// Where the module has BTF, the module steps; else the kprobe fallback.
#[derive(Clone, Debug, PartialEq)]
pub enum Steps {
    Fentry(Held),
    /// The first fallback warning.
    Fallback {
        warning: String,
    },
}

/// What the check measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// `fentry` where `/sys/kernel/btf/nf_synproxy_core` exists, else `kprobe`.
    pub expected: String,
    pub probe_type: String,
    /// `--probes fentry: ...` warnings logged.
    pub warnings: usize,
    pub scenario_ok: bool,
    pub cookie_valid: Option<u64>,
    /// eBPF cookie_valid events since the start.
    pub ebpf: u64,
    pub exit: i32,
    /// Waits that timed out.
    pub timeouts: Vec<String>,
    pub steps: Steps,
}

fn joined_or(names: &[String], default: &str) -> String {
    Unload {
        failed: names.to_vec(),
        stderr: Vec::new(),
    }
    .failed_or(default)
}

impl Measured {
    /// On the kprobe fallback, the agent's warning, as a note.
    pub fn fallback_note(&self) -> Option<String> {
        match &self.steps {
            Steps::Fallback { warning } => Some(format!(
                "{CHECK} fallback warning: {}",
                warning.replace(' ', "_")
            )),
            Steps::Fentry(_) => None,
        }
    }
}

impl Judged for Measured {
    /// The reasons the check fails.
    fn judge(&self) -> Verdict {
        let m = self;
        let mut reasons = m.timeouts.clone();
        if !m.scenario_ok {
            reasons.push("the driven connections' check failed".to_string());
        }
        if m.probe_type != m.expected {
            reasons.push(format!(
                "probe type {}, expected {}",
                m.probe_type, m.expected
            ));
        }
        if m.cookie_valid.unwrap_or(0) == 0 || m.cookie_valid != Some(m.ebpf) {
            reasons.push(format!(
                "eBPF {} against /proc cookie_valid {}",
                m.ebpf,
                or_none(m.cookie_valid)
            ));
        }
        if m.exit != 0 {
            reasons.push(format!("the agent exited {} on SIGTERM", m.exit));
        }
        match &m.steps {
            Steps::Fentry(h) => judge_held(m, h, &mut reasons),
            Steps::Fallback { .. } => {
                if m.warnings != 1 {
                    reasons.push(format!("{} fallback warnings, expected 1", m.warnings));
                }
                if m.expected == "fentry" {
                    reasons.push("the module has BTF but the module steps did not run".to_string());
                }
            }
        }
        Verdict { failed: reasons }
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let m = self;
        let line = ResultLine::new(kernel, CHECK)
            .field("probes", "fentry")
            .field("probe_type", &m.probe_type)
            .field("expected_probe_type", &m.expected);
        match &m.steps {
            Steps::Fentry(h) => line
                .field("cookie_valid", or_none(m.cookie_valid))
                .field("ebpf", m.ebpf)
                .field("rmmod_while_held", joined_or(&h.rmmod_while_held, "none"))
                .field("in_use", yes_no(h.in_use))
                .field("refcnt_held", or_none(h.refcnt_held))
                .field("refcnt_released", or_none(h.refcnt_released))
                .field(
                    "rmmod_after_release",
                    joined_or(&h.rmmod_after_release, "ok"),
                )
                .field("btf_id_before", or_none(h.btf_before))
                .field("btf_id_after", or_none(h.btf_after))
                .field("proc_after_reload", or_none(h.proc_after_reload))
                .field("ebpf_after_reload", h.ebpf_after_reload)
                .field("probe_type_after", &h.probe_type_after)
                .field("exit", m.exit)
                .field("rmmod_after_exit", joined_or(&h.rmmod_after_exit, "ok"))
                .field("agent_alive_while_held", yes_no(h.alive_while_held)),
            Steps::Fallback { .. } => line
                .field("fallback_warnings", m.warnings)
                .field("cookie_valid", or_none(m.cookie_valid))
                .field("ebpf", m.ebpf)
                .field("exit", m.exit),
        }
    }
}

fn judge_held(m: &Measured, h: &Held, reasons: &mut Vec<String>) {
    if m.warnings != 0 {
        reasons.push(format!("{} fallback warnings with module BTF", m.warnings));
    }
    if !h.rmmod_while_held.iter().any(|n| n == SYNPROXY_CORE) || !h.in_use {
        reasons.push(format!(
            "{SYNPROXY_CORE} was not held: rmmod failed for [{}], in use {}",
            h.rmmod_while_held.join(","),
            yes_no(h.in_use)
        ));
    }
    if h.refcnt_held.is_none_or(|r| r <= 0) {
        reasons.push(format!("refcnt while held {}", or_none(h.refcnt_held)));
    }
    if !h.alive_while_held {
        reasons.push("the agent exited while it held the module".to_string());
    }
    if !h.rmmod_after_release.is_empty() || !h.unloaded_after_release {
        reasons.push(format!(
            "after SIGUSR1 the modules did not unload: [{}]",
            h.rmmod_after_release.join(",")
        ));
    }
    if h.btf_before.is_none() || h.btf_after.is_none() || h.btf_before == h.btf_after {
        reasons.push(format!(
            "BTF ids before and after the reload: {} and {}",
            or_none(h.btf_before),
            or_none(h.btf_after)
        ));
    }
    if !h.reload_scenario_ok {
        reasons.push("the driven connections' check after the reload failed".to_string());
    }
    if h.proc_after_reload.unwrap_or(0) == 0 || h.proc_after_reload != Some(h.ebpf_after_reload) {
        reasons.push(format!(
            "after the reload eBPF {} against /proc {}",
            h.ebpf_after_reload,
            or_none(h.proc_after_reload)
        ));
    }
    if h.probe_type_after != "fentry" {
        reasons.push(format!(
            "probe type after the reload {}",
            h.probe_type_after
        ));
    }
    if !h.rmmod_after_exit.is_empty() {
        reasons.push(format!(
            "after the agent exited these would not unload: {}",
            h.rmmod_after_exit.join(",")
        ));
    }
}

pub fn fentry_module(cfg: &Config, kernel: &str) -> Check {
    let head = ResultLine::new(kernel, CHECK).field("probes", "fentry");
    Check::or_failed(
        head.head(),
        measure(cfg, kernel).map(|(m, mut notes, mut tails)| {
            let mut first = Vec::from_iter(m.fallback_note());
            first.append(&mut notes);
            let mut check = m.check(kernel, first);
            if !check.pass {
                check.notes.append(&mut tails);
            }
            check
        }),
    )
}

/// What differs from the clean-state baseline now, as notes (when a module
/// will not unload: what holds it).
fn show_baseline(when: &str) -> Vec<String> {
    let Some(file) = std::env::var_os(clean_state::ENV).filter(|f| !f.is_empty()) else {
        return Vec::new();
    };
    clean_state::show(Path::new(&file), &format!("{CHECK} {when}"))
        .unwrap_or_else(|e| vec![format!("{CHECK} {when}: {e:#}")])
        .into_iter()
        .map(|l| l.trim_start_matches("# ").to_string())
        .collect()
}

/// The agent's cookie_valid since `mark` equals /proc's, and its last two
/// eBPF lines are exact (its totals: `before` + /proc).
fn caught_up(agent: &mut ModuleAgent, srv: &Netns, mark: usize, before: u64) -> bool {
    let Ok(proc) = module_agent::proc_counts(srv) else {
        return false;
    };
    let totals_ok = if mark == 0 {
        agent.totals() == Some(proc)
    } else {
        agent.totals().map(|t| t[VALID]) == Some(before + proc[VALID])
    };
    totals_ok
        && agent.ebpf_since(mark, Counter::CookieValid) == proc[VALID]
        && agent.exact_of_last_two() == 2
}

type Measurement = (Measured, Vec<String>, Vec<String>);

fn measure(cfg: &Config, kernel: &str) -> Result<Measurement> {
    let modules = ModuleList::late()?;
    let srv = module_agent::server_netns(cfg, "fentry")?;
    let mut agent = ModuleAgent::start(&cfg.agent, srv.name(), &["--probes", "fentry"])?;
    let mut waits = Waits::default();
    let mut notes = Vec::new();
    let expected = live_agent::expected_probe_type().to_string();
    agent.wait_attach(&mut waits, 1, "the --probes fentry agent to attach");
    let probe_type = agent.probe_type();
    let warnings = agent.count_logged(|l| l.contains(FALLBACK));
    let (_, scenario_ok) = module_agent::drive_cookie_valid(cfg, kernel, &srv, CHECK, &mut notes);
    waits.until(
        "the agent to report srv's /proc totals and eBPF events",
        Duration::from_secs(60),
        || caught_up(&mut agent, &srv, 0, 0),
    );
    let cookie_valid = module_agent::proc_counts(&srv).ok().map(|p| p[VALID]);
    let ebpf = agent.ebpf_since(0, Counter::CookieValid);
    let steps = if expected == "fentry" {
        Steps::Fentry(held(
            cfg, kernel, &modules, &srv, &mut agent, &mut waits, &mut notes,
        )?)
    } else {
        let warning = agent
            .stderr()
            .iter()
            .find_map(|l| l.split_once(FALLBACK).map(|(_, w)| w.to_string()))
            .unwrap_or_default();
        Steps::Fallback { warning }
    };
    let mut tails = agent.stderr_tail(CHECK);
    tails.extend(agent.stdout_tail(CHECK));
    let stopped = agent.stop()?;
    let mut m = Measured {
        expected,
        probe_type,
        warnings,
        scenario_ok,
        cookie_valid,
        ebpf,
        exit: stopped.exit_code,
        timeouts: Vec::new(),
        steps,
    };
    if let Steps::Fentry(h) = &mut m.steps {
        // SIGTERM: nothing of the agent holds the module any more. What would
        // not unload is named by rmmod_after_exit.
        let mut last = Unload::default();
        let mut exit_wait = Waits::default();
        let gone = exit_wait.until(
            "the late modules to unload after the agent exited",
            Duration::from_secs(60),
            || {
                last = modules.unload().unwrap_or_else(|e| Unload {
                    failed: vec![format!("rmmod: {e:#}")],
                    stderr: Vec::new(),
                });
                !guest_modules::loaded(SYNPROXY_CORE)
            },
        );
        notes.extend(exit_wait.timeouts);
        if !gone {
            h.rmmod_after_exit = last.failed.clone();
            if h.rmmod_after_exit.is_empty() {
                h.rmmod_after_exit.push(SYNPROXY_CORE.to_string());
            }
        }
        if m.exit != 0 || !gone {
            notes.extend(
                last.stderr
                    .iter()
                    .map(|l| format!("{CHECK} rmmod after exit: {l}")),
            );
        }
        // The other checks need the modules.
        modules.load(kernel)?;
    }
    m.timeouts = waits.timeouts;
    Ok((m, notes, tails))
}

/// From the first exact count to the count after the reload (fentry only).
fn held(
    cfg: &Config,
    kernel: &str,
    modules: &ModuleList,
    srv: &Netns,
    agent: &mut ModuleAgent,
    waits: &mut Waits,
    notes: &mut Vec<String>,
) -> Result<Held> {
    let mut h = Held {
        btf_before: module_agent::btf_id_of_attach(&agent.stderr(), 1),
        ..Held::default()
    };
    // Held: the dependants go, nf_synproxy_core stays, "in use".
    let unload = modules.unload()?;
    h.in_use = unload
        .stderr
        .iter()
        .any(|l| l.contains("in use") || l.contains("temporarily unavailable"));
    h.refcnt_held = guest_modules::refcnt(SYNPROXY_CORE);
    h.rmmod_while_held = unload.failed;
    notes.extend(
        unload
            .stderr
            .iter()
            .map(|l| format!("{CHECK} rmmod while held: {l}")),
    );
    // Only nf_synproxy_core may stay: anything else names what holds it.
    if h.rmmod_while_held != [SYNPROXY_CORE] {
        notes.extend(show_baseline("while held"));
    }
    h.alive_while_held = agent.running();
    // Released on request: then the modules go and come back.
    agent.live().signal(libc::SIGUSR1)?;
    waits.until(
        "the agent to release its probes on SIGUSR1",
        Duration::from_secs(60),
        || agent.count_logged(|l| l.contains("eBPF probes released")) > 0,
    );
    // The kernel drops a freed program's module reference a moment later.
    if !waits.until(
        "nf_synproxy_core's refcnt to drop to 0 after SIGUSR1",
        Duration::from_secs(60),
        || guest_modules::refcnt(SYNPROXY_CORE) == Some(0),
    ) {
        notes.extend(show_baseline("after SIGUSR1"));
    }
    h.refcnt_released = guest_modules::refcnt(SYNPROXY_CORE);
    let missing_before = agent.count_logged(module_agent::reports_missing_file);
    let unload = modules.unload()?;
    h.unloaded_after_release = !guest_modules::loaded(SYNPROXY_CORE);
    h.rmmod_after_release = unload.failed;
    if !h.rmmod_after_release.is_empty() || !h.unloaded_after_release {
        notes.extend(
            unload
                .stderr
                .iter()
                .map(|l| format!("{CHECK} rmmod after release: {l}")),
        );
    }
    waits.until(
        "the agent to log the unloaded module's missing file",
        Duration::from_secs(120),
        || agent.count_logged(module_agent::reports_missing_file) > missing_before,
    );
    let before = agent.totals().map_or(0, |t| t[VALID]);
    modules.load(kernel)?;
    let (_, mark) = agent.wait_attach(waits, 2, "the agent to load its fentry programs again");
    h.btf_after = module_agent::btf_id_of_attach(&agent.stderr(), 2);
    let label = format!("{CHECK}-reload");
    (_, h.reload_scenario_ok) = module_agent::drive_cookie_valid(cfg, kernel, srv, &label, notes);
    waits.until(
        "the agent's total to reach old total + /proc after the reload",
        Duration::from_secs(60),
        || caught_up(agent, srv, mark, before),
    );
    h.proc_after_reload = module_agent::proc_counts(srv).ok().map(|p| p[VALID]);
    h.ebpf_after_reload = agent.ebpf_since(mark, Counter::CookieValid);
    h.probe_type_after = agent.probe_type();
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_cases::assert_each_fails;

    const KERNEL: &str = "6.12.118+deb12-cloud-amd64";

    /// The figures of a passing run on 6.12.
    fn fentry_pass() -> Measured {
        Measured {
            expected: "fentry".into(),
            probe_type: "fentry".into(),
            warnings: 0,
            scenario_ok: true,
            cookie_valid: Some(5),
            ebpf: 5,
            exit: 0,
            timeouts: Vec::new(),
            steps: Steps::Fentry(Held {
                rmmod_while_held: vec![SYNPROXY_CORE.into()],
                in_use: true,
                refcnt_held: Some(4),
                alive_while_held: true,
                refcnt_released: Some(0),
                rmmod_after_release: Vec::new(),
                unloaded_after_release: true,
                btf_before: Some(48),
                btf_after: Some(825),
                reload_scenario_ok: true,
                proc_after_reload: Some(5),
                ebpf_after_reload: 5,
                probe_type_after: "fentry".into(),
                rmmod_after_exit: Vec::new(),
            }),
        }
    }

    /// The figures of a passing run on 5.10 (no module BTF).
    fn fallback_pass() -> Measured {
        Measured {
            expected: "kprobe".into(),
            probe_type: "kprobe".into(),
            warnings: 1,
            steps: Steps::Fallback {
                warning: "nf_synproxy_core has no BTF; using kprobes".into(),
            },
            ..fentry_pass()
        }
    }

    fn held(m: &mut Measured) -> &mut Held {
        match &mut m.steps {
            Steps::Fentry(h) => h,
            Steps::Fallback { .. } => unreachable!(),
        }
    }

    #[test]
    fn passing_runs_give_the_recorded_lines() {
        let check = fentry_pass().check(KERNEL, Vec::new());
        assert_eq!(check.line, format!("RESULT kernel={KERNEL} check=fentry-module probes=fentry probe_type=fentry expected_probe_type=fentry cookie_valid=5 ebpf=5 rmmod_while_held=nf_synproxy_core in_use=yes refcnt_held=4 refcnt_released=0 rmmod_after_release=ok btf_id_before=48 btf_id_after=825 proc_after_reload=5 ebpf_after_reload=5 probe_type_after=fentry exit=0 rmmod_after_exit=ok agent_alive_while_held=yes status=PASS"));
        assert!(check.pass && check.notes.is_empty(), "{:?}", check.notes);
        let kernel = "5.10.0-46-cloud-amd64";
        let check = fallback_pass().check(kernel, Vec::new());
        assert_eq!(check.line, format!("RESULT kernel={kernel} check=fentry-module probes=fentry probe_type=kprobe expected_probe_type=kprobe fallback_warnings=1 cookie_valid=5 ebpf=5 exit=0 status=PASS"));
        assert!(check.pass && check.notes.is_empty(), "{:?}", check.notes);
        assert_eq!(
            fallback_pass().fallback_note().as_deref(),
            Some("fentry-module fallback warning: nf_synproxy_core_has_no_BTF;_using_kprobes")
        );
        assert_eq!(fentry_pass().fallback_note(), None);
    }

    #[test]
    fn each_fentry_failure_fails_with_its_reason() {
        assert_each_fails(
            fentry_pass,
            |m| m.check(KERNEL, Vec::new()),
            &[
                (
                    |m| m.timeouts.push("timeout waiting for x (60s)".into()),
                    "timeout waiting for x",
                ),
                (|m| m.scenario_ok = false, "connections' check failed"),
                (
                    |m| m.probe_type = "kprobe".into(),
                    "probe type kprobe, expected fentry",
                ),
                (|m| m.ebpf = 4, "eBPF 4 against /proc cookie_valid 5"),
                (|m| m.cookie_valid = None, "cookie_valid none"),
                (|m| m.exit = 1, "exited 1 on SIGTERM"),
                (|m| m.warnings = 1, "1 fallback warnings with module BTF"),
                (|m| held(m).rmmod_while_held.clear(), "was not held"),
                (|m| held(m).in_use = false, "in use no"),
                (|m| held(m).refcnt_held = Some(0), "refcnt while held 0"),
                (|m| held(m).refcnt_held = None, "refcnt while held none"),
                (|m| held(m).alive_while_held = false, "exited while it held"),
                (
                    |m| held(m).rmmod_after_release = vec![SYNPROXY_CORE.into()],
                    "did not unload: [nf_synproxy_core]",
                ),
                (|m| held(m).unloaded_after_release = false, "did not unload"),
                // The programs loaded again against the old BTF object.
                (|m| held(m).btf_after = Some(48), "48 and 48"),
                (|m| held(m).btf_after = None, "48 and none"),
                (
                    |m| held(m).reload_scenario_ok = false,
                    "after the reload failed",
                ),
                (
                    |m| held(m).ebpf_after_reload = 6,
                    "after the reload eBPF 6 against /proc 5",
                ),
                (|m| held(m).proc_after_reload = Some(0), "against /proc 0"),
                (
                    |m| held(m).probe_type_after = "kprobe".into(),
                    "after the reload kprobe",
                ),
                (
                    |m| held(m).rmmod_after_exit = vec![SYNPROXY_CORE.into()],
                    "would not unload: nf_synproxy_core",
                ),
                (
                    |m| {
                        m.steps = Steps::Fallback {
                            warning: String::new(),
                        }
                    },
                    "module steps did not run",
                ),
            ],
        );
        // An xt rule of an earlier check left: ipt_SYNPROXY stays and, as its
        // user, holds one reference of nf_synproxy_core after SIGUSR1.
        let mut m = fentry_pass();
        let h = held(&mut m);
        h.rmmod_while_held = vec!["ipt_SYNPROXY".into(), SYNPROXY_CORE.into()];
        h.refcnt_held = Some(5);
        h.refcnt_released = Some(1);
        h.rmmod_after_release = h.rmmod_while_held.clone();
        h.unloaded_after_release = false;
        let check = m.check(KERNEL, Vec::new());
        assert!(!check.pass);
        assert!(check.line.contains(" rmmod_while_held=ipt_SYNPROXY,nf_synproxy_core in_use=yes refcnt_held=5 refcnt_released=1 rmmod_after_release=ipt_SYNPROXY,nf_synproxy_core "), "{}", check.line);
    }

    #[test]
    fn each_fallback_failure_fails_with_its_reason() {
        assert_each_fails(
            fallback_pass,
            |m| m.check("5.10.0-46-cloud-amd64", Vec::new()),
            &[
                (|m| m.warnings = 0, "0 fallback warnings, expected 1"),
                (|m| m.warnings = 2, "2 fallback warnings, expected 1"),
                (
                    |m| m.probe_type = "fentry".into(),
                    "probe type fentry, expected kprobe",
                ),
                (|m| m.exit = 143, "exited 143"),
                (|m| m.ebpf = 0, "eBPF 0 against"),
            ],
        );
    }
}
