//! eBPF-only checks: a flood (N pure SYNs and M bad ACKs as fast as a raw socket
//! sends them; the eBPF counts must equal /proc exactly, with no probe misses,
//! on stdout and on the agent's Prometheus endpoint, which must also show each
//! program's run count and time while `kernel.bpf_stats_enabled` is on),
//! and the shutdown check (SIGTERM, SIGINT and stdin EOF each stop the agent
//! within 1 s, and no kprobe, BPF program or map of it remains).

use crate::check::{Check, ResultLine};
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
    let head = ResultLine::new(kernel, "flood")
        .field("rules", "xt")
        .field("family", "ipv4")
        .field("syn_driven", syns)
        .field("ack_driven", acks);
    let head = head.head();
    Check::or_failed(head, run_flood(cfg, head, syns, acks))
}

fn run_flood(cfg: &Config, head: &str, syns: u32, acks: u32) -> Result<Check> {
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
    let proc_syn = last.get(Counter::SynReceived.name()) - before.get(Counter::SynReceived.name());
    let proc_inv =
        last.get(Counter::CookieInvalid.name()) - before.get(Counter::CookieInvalid.name());
    let served_before = served_round_stamp();
    let lines = live.sample()?;
    let scrape = scrape_after_round(served_before);
    let (probe_fields, probe_type_ok) =
        cfg.probe_type_fields(live_agent::probe_type(&lines).as_deref());
    let fallback_logged = live
        .stderr_lines()
        .iter()
        .any(|l| l.contains("--probes fentry: ") && l.contains("using kprobes"));
    let recursion = lines
        .iter()
        .find(|l| l.measurement == "synproxy_ebpf_probes")
        .map(|l| l.counter("recursion_misses"))
        .transpose()?
        .unwrap_or(0);
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
    if !probe_type_ok {
        notes.push(format!("probe type:{probe_fields}"));
        pass = false;
    }
    // Where fentry cannot be used the agent must say why, once, and use kprobes.
    if cfg.fentry && live_agent::expected_probe_type() == "kprobe" && !fallback_logged {
        notes.push("no `--probes fentry: ...; using kprobes` warning".into());
        pass = false;
    }
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
    // Per-source counting (--top, on by default): every packet came from the
    // client's address, so it is the one source, with every event.
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
    let top_syn = top(Counter::SynReceived.name());
    let top_inv = top(Counter::CookieInvalid.name());
    let client = src.to_string();
    if top_syn != [(client.clone(), u64::from(syns))] || top_inv != [(client, u64::from(acks))] {
        notes.push(format!(
            "top sources: syn_received {top_syn:?}, cookie_invalid {top_inv:?}; expected only {src} with {syns} and {acks}"
        ));
        pass = false;
    }
    let source_map = lines
        .iter()
        .find(|l| l.measurement == "synproxy_ebpf_probes")
        .map(|l| {
            (
                l.counter("source_map_entries").unwrap_or(0),
                l.counter("source_evictions").unwrap_or(u64::MAX),
            )
        })
        .unwrap_or((0, u64::MAX));
    if source_map.0 < 2 || source_map.1 != 0 {
        notes.push(format!(
            "synproxy_ebpf_probes: source_map_entries={} source_evictions={} (expected at least 2 and 0)",
            source_map.0, source_map.1
        ));
        pass = false;
    }
    // The same round on the Prometheus endpoint.
    let body = match scrape {
        Ok((200, _, body)) => body,
        Ok((status, _, body)) => {
            notes.push(format!("GET /metrics: status {status}: {body}"));
            String::new()
        }
        Err(e) => {
            notes.push(format!("GET /metrics: {e:#}"));
            String::new()
        }
    };
    let ns = ("netns", srv);
    let prom = |name: &str, labels: &[(&str, &str)]| metric(&body, name, labels).unwrap_or(-1.0);
    let prom_proc_syn = prom("synproxy_syn_received_total", &[ns]);
    let prom_ebpf_syn = prom(
        "synproxy_ebpf_events_total",
        &[ns, ("counter", Counter::SynReceived.name())],
    );
    let prom_ebpf_inv = prom(
        "synproxy_ebpf_events_total",
        &[ns, ("counter", Counter::CookieInvalid.name())],
    );
    let prom_exact = prom("synproxy_ebpf_reconcile_status", &[ns, ("status", "exact")]);
    let synack_runs = prom(
        "synproxy_ebpf_program_runs_total",
        &[("program", "synack4")],
    );
    let synack_secs = prom(
        "synproxy_ebpf_program_run_time_seconds_total",
        &[("program", "synack4")],
    );
    let proc_syn_total = last.get(Counter::SynReceived.name()) as f64;
    if prom_proc_syn != proc_syn_total
        || prom_ebpf_syn != ebpf_syn as f64
        || prom_ebpf_inv != ebpf_inv as f64
        || prom_exact != 1.0
    {
        notes.push(format!(
            "/metrics: synproxy_syn_received_total={prom_proc_syn} (kernel {proc_syn_total}), eBPF syn_received={prom_ebpf_syn} cookie_invalid={prom_ebpf_inv} (stdout {ebpf_syn}/{ebpf_inv}), reconcile exact={prom_exact}"
        ));
        pass = false;
    }
    // Every SYN went through synack4 while the kernel counted run time.
    if synack_runs < f64::from(syns) || synack_secs <= 0.0 {
        notes.push(format!(
            "/metrics: synack4 runs={synack_runs} run time={synack_secs}s with bpf_stats_enabled=1, {syns} SYNs sent"
        ));
        pass = false;
    }
    let ns_per_run = if synack_runs > 0.0 {
        synack_secs * 1e9 / synack_runs
    } else {
        0.0
    };
    if !stopped.exit_ok || stopped.elapsed > cfg.exit_limit() {
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
            "{head}{probe_fields} proc_syn={proc_syn} ebpf_syn={ebpf_syn} proc_inv={proc_inv} ebpf_inv={ebpf_inv} misses={missed} probe_misses={} recursion_misses={recursion} reconcile={} peak_syn_rate={peak:.0}/s send_time={send_secs:.1}s metrics_ebpf_syn={prom_ebpf_syn} metrics_proc_syn={prom_proc_syn} synack4_runs={synack_runs} synack4_ns_per_run={ns_per_run:.0} top_syn={} top_inv={} source_map_entries={} status={}",
            view.misses,
            view.statuses.join("/"),
            top_syn.first().map_or(0, |t| t.1),
            top_inv.first().map_or(0, |t| t.1),
            source_map.0,
            if pass { "PASS" } else { "FAIL" }
        ),
        pass,
        notes,
    })
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
        let head = ResultLine::new(kernel, "shutdown").field("stop", how);
        let head = head.head();
        checks.push(Check::or_failed(
            head,
            run_shutdown(cfg, head, signal, how == "sighup-sigterm"),
        ));
    }
    checks
}

fn run_shutdown(
    cfg: &Config,
    head: &str,
    signal: Option<libc::c_int>,
    hangup_first: bool,
) -> Result<Check> {
    let topo = Topology::create(&cfg.tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let mut live = LiveAgent::start(&cfg.agent, &topo.srv, &cfg.extra_agent_args)?;
    let attached = live.owned_events().len();
    // One round first, so the agent is in its steady state.
    let lines = live.sample()?;
    if hangup_first {
        live.signal(libc::SIGHUP)?;
        live.sample().context("a round after SIGHUP")?;
    }
    let (probe_fields, probe_type_ok) =
        cfg.probe_type_fields(live_agent::probe_type(&lines).as_deref());
    // fentry programs have no kprobe events: their links die with the process.
    let expected_events = if cfg.fentry && live_agent::expected_probe_type() == "fentry" {
        0
    } else {
        live_agent::PROBE_COUNT
    };
    let stopped = live.stop(signal)?;
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    let pass = stopped.exit_ok
        && stopped.elapsed <= cfg.exit_limit()
        && left.is_empty()
        && probe_type_ok
        && stopped
            .owned
            .as_ref()
            .is_some_and(|o| !o.objects.is_empty())
        && attached == expected_events;
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
            "{head}{probe_fields} probes_attached={attached} bpf_objects={} exit={} exit_ms={} leftovers={} status={}",
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
