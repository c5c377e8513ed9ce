//! Lifecycle checks:
//! - `sigterm-during-startup`: SIGTERM after a series of delays covering the
//!   agent's start-up (0 ms up to past the attach); each must exit 0 and leave no
//!   kprobe event, BPF program or map.
//! - `kill9-restart`: an agent as PID 1 of its own PID namespace, attached, is
//!   killed with SIGKILL; a new one started the same way must attach, remove the
//!   killed one's events and count driven traffic exactly.
//! - `two-agents`: two agents at once, each PID 1 of its own PID namespace, both
//!   attached and both exact over the same driven traffic.
//!
//! Without eBPF (a kernel without kprobes) the agents run with `--no-ebpf` and
//! the checks cover what is left: exit status, /proc totals, PID namespaces.

use crate::burst_judge::Exit;
use crate::check::{Check, Judged, ResultLine};
use crate::lifecycle_judge::{
    Agent, Kill9, Restarted, Seen, Startup, StartupRun, TwoAgents, DRIVEN,
};
use crate::live_agent::{self, Launch, LiveAgent, Stopped, ATTACH_TIMEOUT};
use crate::packet::{TcpSegment, V6Checksum, ACK, SYN};
use crate::pidns;
use crate::proc_counters::{self, Totals};
use crate::protected_server::ProtectedServer;
use crate::rng::XorShift;
use crate::scenario::Config;
use crate::traffic::{RawSender, ServerMode};
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use synproxy_common::Counter;

const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Delays of the start-up series: 0 up to this share of the measured start-up.
const DELAY_SPAN: f64 = 1.25;
const DELAY_STEPS: u32 = 20;

/// One agent's start-up for [`sigterm_during_startup`]: the time from spawn to
/// the attach (eBPF) or to its first line of output (without).
fn measure_startup(cfg: &Config, args: &[String], ebpf: bool) -> Result<(Duration, Stopped)> {
    let mut agent = LiveAgent::spawn(&cfg.agent, args, &Launch::Direct)?;
    let started = Instant::now();
    let took = if ebpf {
        agent.wait_attached(ATTACH_TIMEOUT)?
    } else {
        let deadline = started + ATTACH_TIMEOUT;
        loop {
            if !agent.take_lines().is_empty() {
                break started.elapsed();
            }
            if Instant::now() > deadline {
                bail!("{}: no output within {ATTACH_TIMEOUT:?}", agent.what());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let stopped = agent.stop(Some(libc::SIGTERM))?;
    Ok((took, stopped))
}

/// SIGTERM after each of `delays` (None: derived from a measured start-up).
pub fn sigterm_during_startup(cfg: &Config, kernel: &str, delays: Option<&[u64]>) -> Check {
    let head = ResultLine::new(kernel, "sigterm-during-startup");
    Check::or_failed(head.head(), run_sigterm_during_startup(cfg, kernel, delays))
}

fn run_sigterm_during_startup(cfg: &Config, kernel: &str, delays: Option<&[u64]>) -> Result<Check> {
    let ebpf = cfg.ebpf.enabled();
    // eBPF is never switched off here: where it cannot attach, the agent still
    // loads its programs (and then warns), which is start-up work to interrupt.
    let mut args: Vec<String> = ["--interval", "200ms", "--log-format", "telegraf"]
        .map(String::from)
        .to_vec();
    args.extend_from_slice(&cfg.extra_agent_args);
    let mut notes = Vec::new();
    // One start-up measured to the end (attach), then stopped the same way.
    let (startup, reference) = measure_startup(cfg, &args, ebpf).context("measuring start-up")?;
    let delays: Vec<u64> = match delays {
        Some(d) => d.to_vec(),
        None => {
            let span = (startup.as_millis() as f64 * DELAY_SPAN).ceil() as u64;
            let step = (span / u64::from(DELAY_STEPS)).max(10);
            (0..=DELAY_STEPS).map(|i| u64::from(i) * step).collect()
        }
    };
    let mut runs = Vec::new();
    let left = live_agent::wait_clean(&reference, Duration::from_secs(2))?;
    clean_up(&reference, &mut notes);
    runs.push(StartupRun {
        delay: None,
        signalled: startup,
        exit: Exit::of(&reference, left, None),
        stderr: reference.stderr,
    });
    let t0 = Instant::now();
    for &delay in &delays {
        let agent = LiveAgent::spawn(&cfg.agent, &args, &Launch::Direct)?;
        // Nothing can catch a signal before the agent's main() runs: the
        // delays count from its first statement, which takes SIGTERM over.
        live_agent::wait_signals_handled(agent.pid())?;
        let spawned = Instant::now();
        // The delay is the parameter under test, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(delay));
        let signalled = spawned.elapsed();
        agent.signal(libc::SIGTERM)?;
        let stopped = agent.wait_exit(Instant::now())?;
        let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
        clean_up(&stopped, &mut notes);
        runs.push(StartupRun {
            delay: Some(delay),
            signalled,
            exit: Exit::of(&stopped, left, None),
            stderr: stopped.stderr,
        });
    }
    let series_secs = t0.elapsed().as_secs_f64();
    let measured = Startup {
        ebpf,
        startup,
        delays,
        runs,
    };
    notes.extend(measured.slow_exits());
    notes.push(format!(
        "timing: start-up {} ms ({}), {} runs in {series_secs:.1}s",
        startup.as_millis(),
        if ebpf {
            "to `eBPF probes attached`"
        } else {
            "to the first line"
        },
        measured.runs.len()
    ));
    Ok(measured.check(kernel, notes))
}

/// Removes the kprobe events a stopped agent left (already counted as a
/// failure), so that the next run or check starts from a clean kernel.
fn clean_up(stopped: &Stopped, notes: &mut Vec<String>) {
    let names = match &stopped.owned {
        Some(o) => o.events.clone(),
        None => live_agent::group_events()
            .difference(&stopped.before.events)
            .cloned()
            .collect(),
    };
    let failed = live_agent::remove_events(&names);
    if !failed.is_empty() {
        notes.push(format!(
            "could not remove leftover kprobe events: {}",
            failed.join("; ")
        ));
    }
}

/// The protected server, ready for crafted traffic.
struct Bench {
    setup: ProtectedServer,
}

impl Bench {
    fn new(cfg: &Config) -> Result<Self> {
        Ok(Bench {
            setup: ProtectedServer::xt_ipv4(cfg, ServerMode::Hold)?,
        })
    }

    /// [`DRIVEN`] SYNs and bad ACKs; returns the /proc delta
    /// (syn_received, cookie_invalid) once it stopped moving.
    fn drive(&self) -> Result<(u64, u64)> {
        let before = proc_counters::read(&self.setup.topo.srv)?;
        let mut tx = RawSender::new(
            &self.setup.topo.cli,
            self.setup.topo.cli4.into(),
            V6Checksum::Correct,
        )?;
        let mut rng = XorShift::from_time();
        let dst = self.setup.topo.srv4.into();
        for _ in 0..DRIVEN.0 {
            tx.send(
                dst,
                &TcpSegment::to_protected(rng.port(), rng.next_u32(), 0, SYN),
            )?;
        }
        for _ in 0..DRIVEN.1 {
            tx.send(
                dst,
                &TcpSegment::to_protected(rng.port(), rng.next_u32(), rng.next_u32(), ACK),
            )?;
        }
        let syn = Counter::SynReceived.name();
        let inv = Counter::CookieInvalid.name();
        let want = (before.get(syn) + DRIVEN.0, before.get(inv) + DRIVEN.1);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last: Totals;
        loop {
            last = proc_counters::read(&self.setup.topo.srv)?;
            if (last.get(syn), last.get(inv)) >= want || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A short quiet period catches overshoot.
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = proc_counters::read(&self.setup.topo.srv)?;
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        Ok((
            last.get(syn) - before.get(syn),
            last.get(inv) - before.get(inv),
        ))
    }
}

/// Whether `pid` is PID 1 of a PID namespace other than ours.
fn is_pid1_elsewhere(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let pid1 = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        == Some("1");
    pid1 && pidns::pid_namespace_of(pid) != pidns::pid_namespace_of(std::process::id())
}

fn helper() -> Result<Launch> {
    Ok(Launch::PidNamespace {
        helper: std::env::current_exe().context("path of synproxy-scenario (the helper)")?,
    })
}

pub fn kill9_restart(cfg: &Config, kernel: &str) -> Check {
    let head = ResultLine::new(kernel, "kill9-restart");
    Check::or_failed(head.head(), run_kill9_restart(cfg, kernel))
}

fn run_kill9_restart(cfg: &Config, kernel: &str) -> Result<Check> {
    let ebpf = cfg.ebpf.enabled();
    let bench = Bench::new(cfg)?;
    let srv = &bench.setup.topo.srv;
    let launch = helper()?;
    let extra = &cfg.extra_agent_args;
    let mut notes = Vec::new();
    let t0 = Instant::now();
    let first = LiveAgent::start_with(&cfg.agent, srv, extra, &launch, ebpf)
        .context("first agent (PID 1 of its own PID namespace)")?;
    let first_pid1 = is_pid1_elsewhere(first.pid());
    let killed_events = first.owned_events();
    let first_attach_secs = t0.elapsed().as_secs_f64();
    first.signal(libc::SIGKILL)?;
    let killed = first.wait_exit(Instant::now())?;
    let killed_events_after_kill = live_agent::kprobe_lines_for(&killed_events).0.len();
    let t1 = Instant::now();
    let restarted = LiveAgent::start_with(&cfg.agent, srv, extra, &launch, ebpf);
    let restart_secs = t1.elapsed().as_secs_f64();
    // The killed agent's events must be gone once the new one started.
    let killed_left = live_agent::kprobe_lines_for(&killed_events).0;
    let killed_objects_left = match &killed.owned {
        Some(o) => {
            let now = live_agent::agent_objects()?;
            o.objects.iter().filter(|x| now.contains(x)).count()
        }
        None => 0,
    };
    if killed.exit_code != 128 + libc::SIGKILL {
        notes.push(format!(
            "killed agent: helper exit {} (expected {})",
            killed.exit_code,
            128 + libc::SIGKILL
        ));
    }
    // Whatever happened, the next check starts without the killed agent's events.
    let failed_removals = live_agent::remove_events(&killed_events);
    if !failed_removals.is_empty() {
        notes.push(format!(
            "could not remove the killed agent's events: {}",
            failed_removals.join("; ")
        ));
    }
    let restarted = match restarted {
        Ok(second) => Ok(restarted_run(&bench, second, ebpf)?),
        Err(e) => Err(format!("{e:#}")),
    };
    notes.push(format!(
        "timing: first agent attached in {first_attach_secs:.1}s, restart attached in {restart_secs:.1}s"
    ));
    let measured = Kill9 {
        ebpf,
        first_pid1,
        killed_exit: killed.exit_code,
        killed_events: killed_events.len(),
        killed_events_after_kill,
        killed_left,
        killed_objects_left,
        restarted,
    };
    Ok(measured.check(kernel, notes))
}

/// The restarted agent over the driven traffic, then stopped.
fn restarted_run(bench: &Bench, mut second: LiveAgent, ebpf: bool) -> Result<Restarted> {
    let srv = &bench.setup.topo.srv;
    let pid1 = is_pid1_elsewhere(second.pid());
    let proc = bench.drive()?;
    let round = second.sample()?;
    let seen = Seen::read(&round, srv.name(), ebpf)?;
    let total_now = proc_counters::read(srv)?.get(Counter::SynReceived.name());
    let stopped = second.stop(Some(libc::SIGTERM))?;
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    Ok(Restarted {
        pid1,
        proc,
        total_now,
        seen,
        exit: Exit::of(&stopped, left, None),
    })
}

pub fn two_agents(cfg: &Config, kernel: &str) -> Check {
    let head = ResultLine::new(kernel, "two-agents");
    Check::or_failed(head.head(), run_two_agents(cfg, kernel))
}

fn run_two_agents(cfg: &Config, kernel: &str) -> Result<Check> {
    let ebpf = cfg.ebpf.enabled();
    let bench = Bench::new(cfg)?;
    let srv = &bench.setup.topo.srv;
    let launch = helper()?;
    let extra = &cfg.extra_agent_args;
    let a = LiveAgent::start_with(&cfg.agent, srv, extra, &launch, ebpf)
        .context("agent A (PID 1 of its own PID namespace)")?;
    let b = LiveAgent::start_with(&cfg.agent, srv, extra, &launch, ebpf);
    let mut live = vec![("A", a)];
    let b_error = match b {
        Ok(b) => {
            live.push(("B", b));
            None
        }
        Err(e) => Some(format!("{e:#}")),
    };
    let distinct_ns = live.len() == 2
        && pidns::pid_namespace_of(live[0].1.pid()) != pidns::pid_namespace_of(live[1].1.pid());
    let pid1: Vec<bool> = live
        .iter()
        .map(|(_, a)| is_pid1_elsewhere(a.pid()))
        .collect();
    let proc = bench.drive()?;
    let total_now = proc_counters::read(srv)?.get(Counter::SynReceived.name());
    let mut seen = Vec::new();
    for (_, agent) in live.iter_mut() {
        let round = agent.sample()?;
        seen.push(Seen::read(&round, srv.name(), ebpf)?);
    }
    let mut agents = Vec::new();
    for (((name, agent), seen), pid1) in live.into_iter().zip(seen).zip(pid1) {
        let stopped = agent.stop(Some(libc::SIGTERM))?;
        let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
        agents.push(Agent {
            name,
            pid1,
            seen,
            exit: Exit::of(&stopped, left, None),
        });
    }
    let measured = TwoAgents {
        ebpf,
        b_error,
        distinct_ns,
        proc,
        total_now,
        agents,
    };
    Ok(measured.check(kernel, Vec::new()))
}
