//! VM check `clean-state`: the suite's precondition (`clean_state`) itself. A
//! namespace with an xt SYNPROXY rule, its /run/netns name removed and held
//! only by a process, must fail the precondition naming that namespace with
//! its holder and `ipt_SYNPROXY`'s extra reference; once the holder is gone
//! the kernel tears the namespace down and the precondition holds again.

use crate::check::{yes_no, Check, Judged, ResultLine, Verdict};
use crate::clean_state;
use crate::module_agent::Waits;
use crate::netns::Netns;
use crate::scenario::Config;
use crate::tools;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The name the precondition runs under inside this check.
const PROBE: &str = "clean-state-probe";
/// The precondition's look while the namespace is held: short, it must fail.
const HELD_WITHIN: Duration = Duration::from_secs(2);

/// What the check saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// The SYNPROXY rule went into the namespace.
    pub rule_added: bool,
    /// The holder entered the namespace.
    pub holder_inside: bool,
    pub holder_pid: u32,
    /// The precondition's exit code (0 clean, 1 not, 2 error) and lines, while
    /// the namespace was held and after the holder was gone.
    pub held_exit: i32,
    pub held_lines: Vec<String>,
    pub released_exit: i32,
}

/// Whether the held precondition's RESULT line names `ipt_SYNPROXY`'s one
/// extra reference (baseline 0).
pub fn found_module(held_lines: &[String]) -> bool {
    held_lines.iter().any(|l| {
        l.starts_with("RESULT ")
            && l.contains(&format!(" check={PROBE} precondition=clean-state "))
            && l.contains("module:ipt_SYNPROXY:1/0")
            && l.ends_with("status=FAIL")
    })
}

/// Whether a `#` line names a network namespace held by the holder as its own.
pub fn found_netns(held_lines: &[String], holder: u32) -> bool {
    let held_by = format!("] held by pid {holder} (sleep): its netns");
    held_lines
        .iter()
        .any(|l| l.contains("network namespace net:[") && l.contains(&held_by))
}

impl Judged for Measured {
    /// The reasons the check fails.
    fn judge(&self) -> Verdict {
        let m = self;
        let module = found_module(&m.held_lines);
        let netns = found_netns(&m.held_lines, m.holder_pid);
        let mut reasons = Vec::new();
        if !m.rule_added {
            reasons.push("the SYNPROXY rule could not be added".to_string());
        }
        if !m.holder_inside {
            reasons.push("the holder did not enter the namespace".to_string());
        }
        if m.held_exit != 1 {
            reasons.push(format!(
                "the precondition exited {} while the namespace was held, not 1",
                m.held_exit
            ));
        }
        if !module {
            reasons
                .push("the precondition did not name ipt_SYNPROXY's extra reference".to_string());
        }
        if !netns {
            reasons.push(format!(
                "the precondition did not name the namespace held by pid {}",
                m.holder_pid
            ));
        }
        if m.released_exit != 0 {
            reasons.push(format!(
                "the precondition exited {} after the holder was gone, not 0",
                m.released_exit
            ));
        }
        Verdict { failed: reasons }
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let m = self;
        let module = found_module(&m.held_lines);
        let netns = found_netns(&m.held_lines, m.holder_pid);
        ResultLine::new(kernel, "clean-state")
            .field("held_exit", m.held_exit)
            .field("found_module", yes_no(module))
            .field("found_netns", yes_no(netns))
            .field("released_exit", m.released_exit)
    }
}

pub fn clean_state(cfg: &Config, kernel: &str) -> Check {
    let head = ResultLine::new(kernel, "clean-state");
    Check::or_failed(
        head.head(),
        measure(cfg, kernel).map(|(m, mut notes)| {
            let mut check = m.check(kernel, Vec::new());
            check.notes.append(&mut notes);
            check
        }),
    )
}

/// The precondition under the name [`PROBE`], as `--clean-state check` runs
/// it: its exit code and lines.
fn probe(kernel: &str, baseline: &Path, within: Duration) -> (i32, Vec<String>) {
    match clean_state::settle(baseline, within) {
        Ok(settled) => {
            let (clean, lines) = clean_state::report(kernel, PROBE, &settled, within);
            (if clean { 0 } else { 1 }, lines)
        }
        Err(e) => (2, vec![format!("error: {e:#}")]),
    }
}

fn measure(cfg: &Config, kernel: &str) -> Result<(Measured, Vec<String>)> {
    let baseline = std::env::var_os(clean_state::ENV)
        .filter(|f| !f.is_empty())
        .with_context(|| format!("no clean-state baseline: {} is not set", clean_state::ENV))?;
    let baseline = Path::new(&baseline);
    let tools = &cfg.tools;
    let mut m = Measured::default();
    let leak = Netns::create(tools, &format!("cs-leak-{}", std::process::id()))?;
    m.rule_added = leak
        .run(|| {
            tools::run(
                &tools.iptables,
                &[
                    "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "SYNPROXY", "--mss",
                    "1460",
                ],
            )
        })
        .is_ok();
    let mut holder = Command::new(&tools.ip)
        .args(["netns", "exec", leak.name(), "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the namespace's holder")?;
    m.holder_pid = holder.id();
    let mut waits = Waits::default();
    // The holder is in the namespace once its ns link differs from ours.
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    m.holder_inside = waits.until(
        "the holder to enter the namespace",
        Duration::from_secs(30),
        || ns_of(&m.holder_pid.to_string()).is_some_and(|ns| Some(ns) != ns_of("self")),
    );
    // `ip netns del`: the name goes, the holder keeps the namespace.
    drop(leak);
    (m.held_exit, m.held_lines) = probe(kernel, baseline, HELD_WITHIN);
    crate::child::stop(&mut holder);
    let (released_exit, released_lines) = probe(kernel, baseline, clean_state::DEFAULT_WITHIN);
    m.released_exit = released_exit;
    let mut notes = waits.timeouts;
    notes.extend(
        m.held_lines
            .iter()
            .map(|l| format!("clean-state probe while held: {l}")),
    );
    notes.extend(
        released_lines
            .iter()
            .map(|l| format!("clean-state probe after release: {l}")),
    );
    Ok((m, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_cases::assert_each_fails;

    const KERNEL: &str = "6.12.118+deb12-cloud-amd64";

    /// What the precondition printed on 6.12 while the namespace was held.
    fn held_lines() -> Vec<String> {
        [
            "RESULT kernel=6.12.118+deb12-cloud-amd64 check=clean-state-probe precondition=clean-state leftovers=4 leftover=netns:net:[4026532123],module:ipt_SYNPROXY:1/0,module:iptable_filter:1/0,module:xt_tcpudp:1/0 waited=2.1s limit=2s status=FAIL",
            "# clean-state-probe: not started: the kernel is not back at its state before the first check: network namespace net:[4026532123] held by pid 666 (sleep): its netns",
            "# clean-state-probe: not started: the kernel is not back at its state before the first check: module ipt_SYNPROXY: other references 1 (baseline 0), besides 0 from modules using it; refcnt 1, state Live",
        ]
        .map(String::from)
        .to_vec()
    }

    fn pass() -> Measured {
        Measured {
            rule_added: true,
            holder_inside: true,
            holder_pid: 666,
            held_exit: 1,
            held_lines: held_lines(),
            released_exit: 0,
        }
    }

    #[test]
    fn a_passing_run_gives_the_recorded_line() {
        let check = pass().check(KERNEL, Vec::new());
        assert_eq!(check.line, format!("RESULT kernel={KERNEL} check=clean-state held_exit=1 found_module=yes found_netns=yes released_exit=0 status=PASS"));
        assert!(check.pass && check.notes.is_empty());
    }

    #[test]
    fn each_failure_fails_with_its_reason() {
        assert_each_fails(
            pass,
            |m| m.check(KERNEL, Vec::new()),
            &[
                (|m| m.rule_added = false, "rule could not be added"),
                (|m| m.holder_inside = false, "did not enter"),
                (|m| m.held_exit = 0, "exited 0 while the namespace was held"),
                (|m| m.held_exit = 2, "exited 2 while"),
                // Another process holding a namespace is not this holder.
                (|m| m.holder_pid = 667, "held by pid 667"),
                (
                    |m| m.held_lines[0] = m.held_lines[0].replace("module:ipt_SYNPROXY:1/0,", ""),
                    "ipt_SYNPROXY",
                ),
                (
                    |m| m.held_lines[0] = m.held_lines[0].replace("1/0", "2/0"),
                    "ipt_SYNPROXY",
                ),
                (|m| m.held_lines.clear(), "ipt_SYNPROXY"),
                (
                    |m| m.released_exit = 1,
                    "exited 1 after the holder was gone",
                ),
            ],
        );
        let mut m = pass();
        m.held_lines.remove(1);
        assert!(m
            .check(KERNEL, Vec::new())
            .line
            .contains(" found_module=yes found_netns=no "));
    }
}
