//! eBPF-only checks: a flood (N pure SYNs and M bad ACKs as fast as a raw socket
//! sends them; the eBPF counts must equal /proc exactly, with no probe misses),
//! and the shutdown check (SIGTERM, SIGINT and stdin EOF each stop the agent
//! within 1 s, and no kprobe, BPF program or map of it remains).

use crate::live_agent::{self, LiveAgent};
use crate::netns::Topology;
use crate::packet::{TcpSegment, V6Checksum, ACK, SYN};
use crate::proc_counters;
use crate::rng::XorShift;
use crate::rules::{self, Family, Flavour, ServerRules, PROTECTED_PORT};
use crate::scenario::Config;
use crate::traffic::{self, RawSender, ServerMode, TcpServer};
use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use synproxy_common::Counter;

const PROBE_PORT: u16 = 8081;

/// One RESULT line and its explanations.
pub struct Check {
    pub line: String,
    pub pass: bool,
    pub notes: Vec<String>,
}

impl Check {
    fn failed(line: String, e: anyhow::Error) -> Check {
        Check {
            line: format!("{line} status=FAIL"),
            pass: false,
            notes: vec![format!("error: {e:#}")],
        }
    }
}

fn float_field(line: &crate::line_protocol::Line, name: &str) -> f64 {
    match line.fields.get(name) {
        Some(crate::line_protocol::FieldValue::Float(v)) => *v,
        Some(crate::line_protocol::FieldValue::Int(v)) => *v as f64,
        _ => 0.0,
    }
}

/// `syns` pure SYNs, then `acks` bare ACKs with random numbers, xt rules, IPv4.
pub fn flood(cfg: &Config, kernel: &str, syns: u32, acks: u32) -> Check {
    let head = format!("RESULT kernel={kernel} check=flood rules=xt family=ipv4 syn_driven={syns} ack_driven={acks}");
    match run_flood(cfg, &head, syns, acks) {
        Ok(check) => check,
        Err(e) => Check::failed(head, e),
    }
}

fn run_flood(cfg: &Config, head: &str, syns: u32, acks: u32) -> Result<Check> {
    let tools = &cfg.tools;
    let topo = Topology::create(tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let _srv_rules =
        ServerRules::install(tools, &topo.srv, Flavour::Xt, Family::Ipv4, &topo.srv_if)
            .context("SYNPROXY rules")?;
    let _cli_rules = rules::install_client_rst_filter(tools, &topo.cli, Flavour::Xt, Family::Ipv4)
        .context("RST filter")?;
    let _server = TcpServer::start(&topo.srv, PROTECTED_PORT, ServerMode::Hold)?;
    let (src, dst): (IpAddr, IpAddr) = (topo.cli4.into(), topo.srv4.into());
    traffic::wait_reachable(
        &topo.cli,
        SocketAddr::new(dst, PROBE_PORT),
        Duration::from_secs(5),
    )?;
    let mut live = LiveAgent::start(&cfg.agent, &topo.srv, &cfg.extra_agent_args)
        .context("agent with eBPF")?;
    let before = proc_counters::read(&topo.srv)?;
    let mut tx = RawSender::new(&topo.cli, src, V6Checksum::Correct)?;
    let mut rng = XorShift::from_time();
    let started = Instant::now();
    let seg = TcpSegment::to_protected;
    for i in 0..syns {
        let sport = 1024 + (i % 60000) as u16;
        tx.send(dst, &seg(sport, rng.next_u32(), 0, SYN))?;
    }
    for i in 0..acks {
        let sport = 1024 + (i % 60000) as u16;
        tx.send(dst, &seg(sport, rng.next_u32(), rng.next_u32(), ACK))?;
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Wait until /proc stops moving.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = proc_counters::read(&topo.srv)?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = proc_counters::read(&topo.srv)?;
        if now == last || Instant::now() > deadline {
            last = now;
            break;
        }
        last = now;
    }
    let proc_syn = last.get(Counter::SynReceived.name()) - before.get(Counter::SynReceived.name());
    let proc_inv =
        last.get(Counter::CookieInvalid.name()) - before.get(Counter::CookieInvalid.name());
    let lines = live.sample()?;
    let stopped = live.stop(Some(libc::SIGTERM))?;
    let srv = topo.srv.name();
    let (ebpf_syn, view) = live_agent::ebpf_count(&lines, srv, Counter::SynReceived.name())?;
    let (ebpf_inv, _) = live_agent::ebpf_count(&lines, srv, Counter::CookieInvalid.name())?;
    let (missed, attached) = live_agent::probe_misses(&lines)?;
    let peak = lines
        .iter()
        .filter(|l| {
            l.measurement == "synproxy_ebpf" && l.tags.get("netns").map(String::as_str) == Some(srv)
        })
        .map(|l| float_field(l, "syn_received_peak_rate"))
        .fold(0.0, f64::max);
    let mut notes = Vec::new();
    let mut pass = true;
    if proc_syn != u64::from(syns) || proc_inv != u64::from(acks) {
        notes.push(format!("/proc moved syn_received {proc_syn}, cookie_invalid {proc_inv}: not what was sent (packets lost before SYNPROXY?)"));
        pass = false;
    }
    if ebpf_syn != proc_syn || ebpf_inv != proc_inv {
        notes.push(format!(
            "eBPF {ebpf_syn}/{ebpf_inv} != /proc {proc_syn}/{proc_inv}"
        ));
        pass = false;
    }
    if missed != 0 || view.misses != 0 || !attached || view.statuses.iter().any(|s| s != "exact") {
        notes.push(format!(
            "attached={attached} kprobe missed={missed} probe_misses={} reconcile={:?}",
            view.misses, view.statuses
        ));
        pass = false;
    }
    if peak <= 0.0 {
        notes.push("no syn_received peak rate reported".into());
        pass = false;
    }
    if !stopped.exit_ok || stopped.elapsed > live_agent::EXIT_LIMIT {
        notes.push(format!(
            "SIGTERM: exit ok={} after {:?}",
            stopped.exit_ok, stopped.elapsed
        ));
        pass = false;
    }
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    if !left.is_empty() {
        notes.push(format!("left in the kernel: {}", left.join("; ")));
        pass = false;
    }
    Ok(Check {
        line: format!(
            "{head} proc_syn={proc_syn} ebpf_syn={ebpf_syn} proc_inv={proc_inv} ebpf_inv={ebpf_inv} misses={missed} reconcile={} peak_syn_rate={peak:.0}/s send_time={send_secs:.1}s status={}",
            view.statuses.join("/"),
            if pass { "PASS" } else { "FAIL" }
        ),
        pass,
        notes,
    })
}

/// Starts the agent with eBPF and stops it by `how` (SIGTERM, SIGINT, stdin EOF).
pub fn shutdown(cfg: &Config, kernel: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    for (how, signal) in [
        ("sigterm", Some(libc::SIGTERM)),
        ("sigint", Some(libc::SIGINT)),
        ("stdin-eof", None),
    ] {
        let head = format!("RESULT kernel={kernel} check=shutdown stop={how}");
        checks.push(match run_shutdown(cfg, &head, signal) {
            Ok(check) => check,
            Err(e) => Check::failed(head, e),
        });
    }
    checks
}

fn run_shutdown(cfg: &Config, head: &str, signal: Option<libc::c_int>) -> Result<Check> {
    let topo = Topology::create(&cfg.tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let mut live = LiveAgent::start(&cfg.agent, &topo.srv, &cfg.extra_agent_args)?;
    let attached = live.owned_events().len();
    // One round first, so the agent is in its steady state.
    live.sample()?;
    let stopped = live.stop(signal)?;
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    let pass = stopped.exit_ok
        && stopped.elapsed <= live_agent::EXIT_LIMIT
        && left.is_empty()
        && attached == live_agent::PROBE_COUNT;
    let mut notes = Vec::new();
    if !left.is_empty() {
        notes.push(format!("left in the kernel: {}", left.join("; ")));
    }
    let detach_log: Vec<&String> = stopped
        .stderr
        .iter()
        .filter(|l| l.contains("detached"))
        .collect();
    notes.push(format!("agent: {detach_log:?}"));
    if !pass {
        notes.push(format!("agent stderr: {}", stopped.stderr.join(" | ")));
    }
    Ok(Check {
        line: format!(
            "{head} probes_attached={attached} bpf_objects={} exit={} exit_ms={} leftovers={} status={}",
            stopped.owned.as_ref().map_or(0, |o| o.objects.len()),
            if stopped.exit_ok { 0 } else { 1 },
            stopped.elapsed.as_millis(),
            left.len(),
            if pass { "PASS" } else { "FAIL" }
        ),
        pass,
        notes,
    })
}
