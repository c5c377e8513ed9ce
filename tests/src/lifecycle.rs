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

use crate::check::Check;
use crate::line_protocol::Line;
use crate::live_agent::{self, Launch, LiveAgent, Stopped, ATTACH_TIMEOUT};
use crate::netns::Topology;
use crate::packet::{TcpSegment, V6Checksum, ACK, SYN};
use crate::pidns;
use crate::proc_counters::{self, Totals};
use crate::rng::XorShift;
use crate::rules::{self, Family, Flavour, RuleSet, ServerRules};
use crate::scenario::Config;
use crate::traffic::{self, RawSender};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use synproxy_common::Counter;

const PROBE_PORT: u16 = 8081;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Crafted traffic per driven phase.
const DRIVE_SYNS: u32 = 200;
const DRIVE_ACKS: u32 = 50;
/// Delays of the start-up series: 0 up to this share of the measured start-up.
const DELAY_SPAN: f64 = 1.25;
const DELAY_STEPS: u32 = 20;

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

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
    let head = format!("RESULT kernel={kernel} check=sigterm-during-startup");
    Check::or_failed(&head, run_sigterm_during_startup(cfg, &head, delays))
}

fn run_sigterm_during_startup(cfg: &Config, head: &str, delays: Option<&[u64]>) -> Result<Check> {
    let ebpf = cfg.ebpf.enabled();
    // eBPF is never switched off here: where it cannot attach, the agent still
    // loads its programs (and then warns), which is start-up work to interrupt.
    let mut args: Vec<String> = ["--interval", "200ms", "--log-format", "telegraf"]
        .map(String::from)
        .to_vec();
    args.extend_from_slice(&cfg.extra_agent_args);
    let mut notes = Vec::new();
    let mut pass = true;
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
    let mut runs: Vec<(u64, Stopped, Vec<String>, Duration)> = Vec::new();
    let left = live_agent::wait_clean(&reference, Duration::from_secs(2))?;
    clean_up(&reference, &mut notes);
    runs.push((u64::MAX, reference, left, startup));
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
        runs.push((delay, stopped, left, signalled));
    }
    let series_secs = t0.elapsed().as_secs_f64();
    let mut exits: BTreeMap<i32, usize> = BTreeMap::new();
    let mut leftovers = 0usize;
    let mut max_exit = Duration::ZERO;
    for (delay, stopped, left, signalled) in &runs {
        *exits.entry(stopped.exit_code).or_default() += 1;
        leftovers += left.len();
        max_exit = max_exit.max(stopped.elapsed);
        let when = if *delay == u64::MAX {
            format!("after the attach ({} ms)", signalled.as_millis())
        } else {
            format!("{delay} ms (sent at {} ms)", signalled.as_millis())
        };
        if stopped.exit_code != 0 || !left.is_empty() {
            pass = false;
            notes.push(format!(
                "SIGTERM at {when}: exit {} after {} ms, left: [{}]; stderr: {}",
                stopped.exit_code,
                stopped.elapsed.as_millis(),
                left.join("; "),
                stopped.stderr.join(" | ")
            ));
        } else if stopped.elapsed > live_agent::EXIT_LIMIT {
            notes.push(format!(
                "SIGTERM at {when}: exit 0 but after {} ms (over {:?})",
                stopped.elapsed.as_millis(),
                live_agent::EXIT_LIMIT
            ));
        }
    }
    let exits_text = exits
        .iter()
        .map(|(code, n)| format!("{code}x{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let delays_text = match (delays.first(), delays.last()) {
        (Some(a), Some(b)) if delays.len() > 1 => {
            format!("{a}..{b}/{}ms", delays[1].saturating_sub(delays[0]))
        }
        (Some(a), _) => format!("{a}ms"),
        _ => "none".into(),
    };
    notes.push(format!(
        "timing: start-up {} ms ({}), {} runs in {series_secs:.1}s",
        startup.as_millis(),
        if ebpf {
            "to `eBPF probes attached`"
        } else {
            "to the first line"
        },
        runs.len()
    ));
    Ok(Check {
        line: format!(
            "{head} ebpf={} startup_ms={} delays={delays_text} runs={} exits={exits_text} max_exit_ms={} leftovers={leftovers} status={}",
            if ebpf { "on" } else { "off" },
            startup.as_millis(),
            runs.len(),
            max_exit.as_millis(),
            verdict(pass)
        ),
        pass,
        notes,
    })
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

/// Server + client netns with xt IPv4 SYNPROXY rules, ready for crafted traffic.
struct Bench {
    topo: Topology,
    _rules: ServerRules,
    _cli_rules: RuleSet,
}

impl Bench {
    fn new(cfg: &Config) -> Result<Self> {
        let topo = Topology::create(&cfg.tools, None).context("netns setup")?;
        let rules = ServerRules::install(
            &cfg.tools,
            &topo.srv,
            Flavour::Xt,
            Family::Ipv4,
            &topo.srv_if,
        )?;
        let cli_rules =
            rules::install_client_rst_filter(&cfg.tools, &topo.cli, Flavour::Nft, Family::Ipv4)?;
        traffic::wait_reachable(
            &topo.cli,
            SocketAddr::new(topo.srv4.into(), PROBE_PORT),
            Duration::from_secs(10),
        )?;
        Ok(Bench {
            topo,
            _rules: rules,
            _cli_rules: cli_rules,
        })
    }

    /// [`DRIVE_SYNS`] SYNs and [`DRIVE_ACKS`] bad ACKs; returns the /proc delta
    /// (syn_received, cookie_invalid) once it stopped moving.
    fn drive(&self) -> Result<(u64, u64)> {
        let before = proc_counters::read(&self.topo.srv)?;
        let mut tx = RawSender::new(&self.topo.cli, self.topo.cli4.into(), V6Checksum::Correct)?;
        let mut rng = XorShift::from_time();
        let dst = self.topo.srv4.into();
        for _ in 0..DRIVE_SYNS {
            tx.send(
                dst,
                &TcpSegment::to_protected(rng.port(), rng.next_u32(), 0, SYN),
            )?;
        }
        for _ in 0..DRIVE_ACKS {
            tx.send(
                dst,
                &TcpSegment::to_protected(rng.port(), rng.next_u32(), rng.next_u32(), ACK),
            )?;
        }
        let syn = Counter::SynReceived.name();
        let inv = Counter::CookieInvalid.name();
        let want = (
            before.get(syn) + u64::from(DRIVE_SYNS),
            before.get(inv) + u64::from(DRIVE_ACKS),
        );
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last: Totals;
        loop {
            last = proc_counters::read(&self.topo.srv)?;
            if (last.get(syn), last.get(inv)) >= want || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A short quiet period catches overshoot.
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = proc_counters::read(&self.topo.srv)?;
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

/// One agent's view of the driven phase: the round after it.
#[derive(Debug, Default)]
struct Seen {
    syn: u64,
    inv: u64,
    statuses: Vec<String>,
    misses: u64,
    total_syn: u64,
}

fn seen(lines: &[Line], label: &str, ebpf: bool) -> Result<Seen> {
    let mut s = Seen::default();
    let proc_line = lines
        .iter()
        .find(|l| {
            l.measurement == "synproxy" && l.tags.get("netns").map(String::as_str) == Some(label)
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
    let head = format!("RESULT kernel={kernel} check=kill9-restart");
    Check::or_failed(&head, run_kill9_restart(cfg, &head))
}

fn run_kill9_restart(cfg: &Config, head: &str) -> Result<Check> {
    let ebpf = cfg.ebpf.enabled();
    let bench = Bench::new(cfg)?;
    let srv = &bench.topo.srv;
    let launch = helper()?;
    let extra = &cfg.extra_agent_args;
    let mut notes = Vec::new();
    let mut pass = true;
    let t0 = Instant::now();
    let first = LiveAgent::start_with(&cfg.agent, srv, extra, &launch, ebpf)
        .context("first agent (PID 1 of its own PID namespace)")?;
    let first_pid1 = is_pid1_elsewhere(first.pid());
    let killed_events = first.owned_events();
    let first_attach_secs = t0.elapsed().as_secs_f64();
    first.signal(libc::SIGKILL)?;
    let killed = first.wait_exit(Instant::now())?;
    let left_after_kill = live_agent::kprobe_lines_for(&killed_events).0.len();
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
    if !killed_left.is_empty() || killed_objects_left > 0 {
        pass = false;
        notes.push(format!(
            "left by the killed agent after the restart: {} kprobe events [{}], {killed_objects_left} BPF objects",
            killed_left.len(),
            killed_left.join("; ")
        ));
    }
    if !first_pid1 {
        pass = false;
        notes.push("the first agent was not PID 1 of its own PID namespace".into());
    }
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
    let mut second = match restarted {
        Ok(a) => a,
        Err(e) => {
            notes.push(format!("restarted agent: {e:#}"));
            return Ok(Check {
                line: format!(
                    "{head} ebpf={} pid1=yes killed_exit={} killed_events={} killed_events_after_kill={left_after_kill} restart_attached=no killed_events_left={} status=FAIL",
                    if ebpf { "on" } else { "off" },
                    killed.exit_code,
                    killed_events.len(),
                    killed_left.len()
                ),
                pass: false,
                notes,
            });
        }
    };
    let second_pid1 = is_pid1_elsewhere(second.pid());
    if !second_pid1 {
        pass = false;
        notes.push("the restarted agent was not PID 1 of its own PID namespace".into());
    }
    let (proc_syn, proc_inv) = bench.drive()?;
    let round = second.sample()?;
    let view = seen(&round, srv.name(), ebpf)?;
    let total_now = proc_counters::read(srv)?.get(Counter::SynReceived.name());
    let stopped = second.stop(Some(libc::SIGTERM))?;
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    if (proc_syn, proc_inv) != (u64::from(DRIVE_SYNS), u64::from(DRIVE_ACKS)) {
        pass = false;
        notes.push(format!(
            "/proc moved {proc_syn}/{proc_inv}, driven {DRIVE_SYNS}/{DRIVE_ACKS}"
        ));
    }
    if view.total_syn != total_now {
        pass = false;
        notes.push(format!(
            "restarted agent: syn_received total {} != /proc {total_now}",
            view.total_syn
        ));
    }
    if ebpf
        && ((view.syn, view.inv) != (proc_syn, proc_inv)
            || view.misses != 0
            || view.statuses.iter().any(|s| s != "exact"))
    {
        pass = false;
        notes.push(format!(
            "restarted agent eBPF {}/{} vs /proc {proc_syn}/{proc_inv}, reconcile {:?}, misses {}",
            view.syn, view.inv, view.statuses, view.misses
        ));
    }
    if !stopped.exit_ok || !left.is_empty() {
        pass = false;
        notes.push(format!(
            "restarted agent on SIGTERM: exit {}, left [{}]",
            stopped.exit_code,
            left.join("; ")
        ));
    }
    notes.push(format!(
        "timing: first agent attached in {first_attach_secs:.1}s, restart attached in {restart_secs:.1}s"
    ));
    Ok(Check {
        line: format!(
            "{head} ebpf={} pid1={} killed_exit={} killed_events={} killed_events_after_kill={left_after_kill} restart_attached={} killed_events_left={} killed_objects_left={killed_objects_left} proc={proc_syn}/{proc_inv} ebpf_counts={}/{} reconcile={} probe_misses={} exit={} leftovers={} status={}",
            if ebpf { "on" } else { "off" },
            if first_pid1 && second_pid1 { "yes" } else { "no" },
            killed.exit_code,
            killed_events.len(),
            if ebpf { "yes" } else { "n/a" },
            killed_left.len(),
            view.syn,
            view.inv,
            if view.statuses.is_empty() { "n/a".to_string() } else { view.statuses.join("/") },
            view.misses,
            stopped.exit_code,
            left.len(),
            verdict(pass)
        ),
        pass,
        notes,
    })
}

pub fn two_agents(cfg: &Config, kernel: &str) -> Check {
    let head = format!("RESULT kernel={kernel} check=two-agents");
    Check::or_failed(&head, run_two_agents(cfg, &head))
}

fn run_two_agents(cfg: &Config, head: &str) -> Result<Check> {
    let ebpf = cfg.ebpf.enabled();
    let bench = Bench::new(cfg)?;
    let srv = &bench.topo.srv;
    let launch = helper()?;
    let extra = &cfg.extra_agent_args;
    let mut notes = Vec::new();
    let mut pass = true;
    let a = LiveAgent::start_with(&cfg.agent, srv, extra, &launch, ebpf)
        .context("agent A (PID 1 of its own PID namespace)")?;
    let b = LiveAgent::start_with(&cfg.agent, srv, extra, &launch, ebpf);
    let mut agents = vec![("A", a)];
    match b {
        Ok(b) => agents.push(("B", b)),
        Err(e) => {
            pass = false;
            notes.push(format!("agent B, started while A runs: {e:#}"));
        }
    }
    let pid1: Vec<bool> = agents
        .iter()
        .map(|(_, a)| is_pid1_elsewhere(a.pid()))
        .collect();
    let distinct_ns = agents.len() == 2
        && pidns::pid_namespace_of(agents[0].1.pid()) != pidns::pid_namespace_of(agents[1].1.pid());
    if pid1.iter().any(|p| !p) || (agents.len() == 2 && !distinct_ns) {
        pass = false;
        notes.push(format!(
            "PID 1 of their own PID namespace: {pid1:?}, distinct namespaces: {distinct_ns}"
        ));
    }
    let (proc_syn, proc_inv) = bench.drive()?;
    if (proc_syn, proc_inv) != (u64::from(DRIVE_SYNS), u64::from(DRIVE_ACKS)) {
        pass = false;
        notes.push(format!(
            "/proc moved {proc_syn}/{proc_inv}, driven {DRIVE_SYNS}/{DRIVE_ACKS}"
        ));
    }
    let total_now = proc_counters::read(srv)?.get(Counter::SynReceived.name());
    let mut parts = Vec::new();
    for (name, agent) in agents.iter_mut() {
        let round = agent.sample()?;
        let view = seen(&round, srv.name(), ebpf)?;
        let exact = !ebpf
            || ((view.syn, view.inv) == (proc_syn, proc_inv)
                && view.misses == 0
                && view.statuses.iter().all(|s| s == "exact"));
        if !exact || view.total_syn != total_now {
            pass = false;
            notes.push(format!(
                "agent {name}: eBPF {}/{} vs /proc {proc_syn}/{proc_inv}, reconcile {:?}, misses {}, syn_received total {} vs /proc {total_now}",
                view.syn, view.inv, view.statuses, view.misses, view.total_syn
            ));
        }
        parts.push(format!(
            "ebpf_{}={}/{} reconcile_{}={}",
            name.to_lowercase(),
            view.syn,
            view.inv,
            name.to_lowercase(),
            if view.statuses.is_empty() {
                "n/a".to_string()
            } else {
                view.statuses.join("/")
            }
        ));
    }
    let mut exits = Vec::new();
    let mut leftovers = 0;
    for (name, agent) in agents {
        let stopped = agent.stop(Some(libc::SIGTERM))?;
        let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
        if !stopped.exit_ok || !left.is_empty() {
            pass = false;
            notes.push(format!(
                "agent {name} on SIGTERM: exit {}, left [{}]",
                stopped.exit_code,
                left.join("; ")
            ));
        }
        exits.push(stopped.exit_code.to_string());
        leftovers += left.len();
    }
    Ok(Check {
        line: format!(
            "{head} ebpf={} agents={} pid1={} distinct_pidns={} proc={proc_syn}/{proc_inv} {} exits={} leftovers={leftovers} status={}",
            if ebpf { "on" } else { "off" },
            exits.len(),
            pid1.iter()
                .map(|p| if *p { "yes" } else { "no" })
                .collect::<Vec<_>>()
                .join("/"),
            if distinct_ns { "yes" } else { "no" },
            parts.join(" "),
            exits.join("/"),
            verdict(pass)
        ),
        pass,
        notes,
    })
}
