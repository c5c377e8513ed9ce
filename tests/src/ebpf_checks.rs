//! eBPF-only checks: a flood (N pure SYNs and M bad ACKs as fast as a raw socket
//! sends them; the eBPF counts must equal /proc exactly, with no probe misses,
//! on stdout and on the agent's Prometheus endpoint, which must also show each
//! program's run count and time while `kernel.bpf_stats_enabled` is on),
//! and the shutdown check (SIGTERM, SIGINT and stdin EOF each stop the agent
//! within 1 s, and no kprobe, BPF program or map of it remains).

use crate::burst_judge::{Burst, Exit};
use crate::check::{Check, Judged};
use crate::flood_judge::{self, Flood, Metrics, Shutdown};
use crate::live_agent::{self, LiveAgent};
use crate::netns::Topology;
use crate::packet::{TcpSegment, V6Checksum, ACK, SYN};
use crate::proc_counters;
use crate::protected_server::ProtectedServer;
use crate::rng::XorShift;
use crate::scenario::Config;
use crate::traffic::{RawSender, ServerMode};
use anyhow::{Context, Result};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use synproxy_common::Counter;

/// Where the flood check's agent serves /metrics.
pub const METRICS_ADDR: &str = "127.0.0.1:10816";
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns on the kernel's per-program run time accounting; restores it on drop.
pub struct BpfStats {
    before: Option<String>,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS).ok();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("cannot write 1 to {BPF_STATS}"))?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(before) = &self.before {
            let _ = std::fs::write(BPF_STATS, before.trim());
        }
    }
}

/// The value of the sample `name{...}` whose labels include all of `labels`
/// (Prometheus text format), summed over the matching samples.
/// When the round `/metrics` serves ended (seconds since the epoch).
const ROUND_STAMP: &str = "synproxy_agent_last_round_timestamp_seconds";

/// The stamp of the round `/metrics` serves now, if it serves one.
pub fn served_round_stamp() -> Option<f64> {
    match crate::prometheus::http_get(METRICS_ADDR, "/metrics", None) {
        Ok((200, _, body)) => metric(&body, ROUND_STAMP, &[]),
        _ => None,
    }
}

/// `GET /metrics` once it serves a newer round than the one stamped
/// `previous` (taken before a round was asked for): the Prometheus sink
/// stores a round a moment after stdout printed it. After 60 s, whatever it
/// answers (the check then reports it).
pub fn scrape_after_round(previous: Option<f64>) -> Result<(u16, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = crate::prometheus::http_get(METRICS_ADDR, "/metrics", None);
        if let Ok((200, _, body)) = &answer {
            let newer = match (metric(body, ROUND_STAMP, &[]), previous) {
                (Some(now), Some(before)) => now > before,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if newer {
                return answer;
            }
        }
        if Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let matches = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if let (true, Ok(v)) = (matches, value.parse::<f64>()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
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
    let head = flood_judge::flood_head(kernel, syns, acks);
    Check::or_failed(head.head(), run_flood(cfg, kernel, syns, acks))
}

fn run_flood(cfg: &Config, kernel: &str, syns: u32, acks: u32) -> Result<Check> {
    let setup = ProtectedServer::xt_ipv4(cfg, ServerMode::Hold)?;
    let topo = &setup.topo;
    let (src, dst): (IpAddr, IpAddr) = (topo.cli4.into(), topo.srv4.into());
    let _stats = BpfStats::enable()?;
    let mut args = cfg.extra_agent_args.clone();
    args.extend(["--prometheus-listen", METRICS_ADDR, "--stdout"].map(String::from));
    let mut live = LiveAgent::start(&cfg.agent, &topo.srv, &args).context("agent with eBPF")?;
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
    let served_before = served_round_stamp();
    let lines = live.sample()?;
    let scrape = scrape_after_round(served_before);
    let fallback_logged = live
        .stderr_lines()
        .iter()
        .any(|l| l.contains("--probes fentry: ") && l.contains("using kprobes"));
    let probes_line = lines
        .iter()
        .find(|l| l.measurement == "synproxy_ebpf_probes");
    let recursion_misses = probes_line
        .map(|l| l.counter("recursion_misses"))
        .transpose()?
        .unwrap_or(0);
    let stopped = live.stop(Some(libc::SIGTERM))?;
    let srv = topo.srv.name();
    let burst = Burst::read(&lines, srv, (syns, acks), &before, &last)?;
    let peak = lines
        .iter()
        .filter(|l| {
            l.measurement == "synproxy_ebpf" && l.tags.get("netns").map(String::as_str) == Some(srv)
        })
        .map(|l| float_field(l, "syn_received_peak_rate"))
        .fold(0.0, f64::max);
    let top = |counter: &str| -> Vec<(String, u64)> {
        lines
            .iter()
            .filter(|l| {
                l.measurement == "synproxy_top_sources"
                    && l.tags.get("netns").map(String::as_str) == Some(srv)
                    && l.tags.get("counter").map(String::as_str) == Some(counter)
            })
            .map(|l| {
                (
                    l.tags.get("source").cloned().unwrap_or_default(),
                    l.counter("events").unwrap_or(0),
                )
            })
            .collect()
    };
    let (source_map_entries, source_evictions) = probes_line
        .map(|l| {
            (
                l.counter("source_map_entries").unwrap_or(0),
                l.counter("source_evictions").unwrap_or(u64::MAX),
            )
        })
        .unwrap_or((0, u64::MAX));
    // The same round on the Prometheus endpoint.
    let (body, error) = match scrape {
        Ok((200, _, body)) => (body, None),
        Ok((status, _, body)) => (String::new(), Some(format!("status {status}: {body}"))),
        Err(e) => (String::new(), Some(format!("{e:#}"))),
    };
    let ns = ("netns", srv);
    let prom = |name: &str, labels: &[(&str, &str)]| metric(&body, name, labels).unwrap_or(-1.0);
    let metrics = Metrics {
        error,
        proc_syn: prom("synproxy_syn_received_total", &[ns]),
        ebpf_syn: prom(
            "synproxy_ebpf_events_total",
            &[ns, ("counter", Counter::SynReceived.name())],
        ),
        ebpf_inv: prom(
            "synproxy_ebpf_events_total",
            &[ns, ("counter", Counter::CookieInvalid.name())],
        ),
        exact: prom("synproxy_ebpf_reconcile_status", &[ns, ("status", "exact")]),
        synack4_runs: prom(
            "synproxy_ebpf_program_runs_total",
            &[("program", "synack4")],
        ),
        synack4_secs: prom(
            "synproxy_ebpf_program_run_time_seconds_total",
            &[("program", "synack4")],
        ),
    };
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    let measured = Flood {
        probe: cfg.probe_type(live_agent::probe_type(&lines).as_deref()),
        fallback_expected: cfg.fentry && live_agent::expected_probe_type() == "kprobe",
        fallback_logged,
        burst,
        recursion_misses,
        peak,
        send_secs,
        client: src.to_string(),
        top_syn: top(Counter::SynReceived.name()),
        top_inv: top(Counter::CookieInvalid.name()),
        source_map_entries,
        source_evictions,
        proc_syn_total: last.get(Counter::SynReceived.name()),
        metrics,
        exit: Exit::of(&stopped, left, Some(cfg.exit_limit())),
    };
    Ok(measured.check(kernel, Vec::new()))
}

/// Starts the agent with eBPF and stops it by `how` (SIGTERM, SIGINT,
/// SIGQUIT, stdin EOF; `sighup-sigterm`: a SIGHUP, which the agent ignores,
/// then a round that must still come, then SIGTERM).
pub fn shutdown(cfg: &Config, kernel: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    for (how, signal) in [
        ("sigterm", Some(libc::SIGTERM)),
        ("sigint", Some(libc::SIGINT)),
        ("sigquit", Some(libc::SIGQUIT)),
        ("sighup-sigterm", Some(libc::SIGTERM)),
        ("stdin-eof", None),
    ] {
        let head = flood_judge::shutdown_head(kernel, how);
        checks.push(Check::or_failed(
            head.head(),
            run_shutdown(cfg, kernel, how, signal),
        ));
    }
    checks
}

fn run_shutdown(
    cfg: &Config,
    kernel: &str,
    how: &'static str,
    signal: Option<libc::c_int>,
) -> Result<Check> {
    let topo = Topology::create(&cfg.tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let mut live = LiveAgent::start(&cfg.agent, &topo.srv, &cfg.extra_agent_args)?;
    let attached = live.owned_events().len();
    // One round first, so the agent is in its steady state.
    let lines = live.sample()?;
    if how == "sighup-sigterm" {
        live.signal(libc::SIGHUP)?;
        live.sample().context("a round after SIGHUP")?;
    }
    // fentry programs have no kprobe events: their links die with the process.
    let expected_events = if cfg.fentry && live_agent::expected_probe_type() == "fentry" {
        0
    } else {
        live_agent::PROBE_COUNT
    };
    let stopped = live.stop(signal)?;
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    let measured = Shutdown {
        stop: how,
        probe: cfg.probe_type(live_agent::probe_type(&lines).as_deref()),
        attached,
        expected_events,
        bpf_objects: stopped.owned.as_ref().map_or(0, |o| o.objects.len()),
        exit: Exit::of(&stopped, left, Some(cfg.exit_limit())),
    };
    let detach_log: Vec<&String> = stopped
        .stderr
        .iter()
        .filter(|l| l.contains("detached"))
        .collect();
    let mut check = measured.check(kernel, vec![format!("agent: {detach_log:?}")]);
    if !check.pass {
        check
            .notes
            .push(format!("agent stderr: {}", stopped.stderr.join(" | ")));
    }
    Ok(check)
}
