//! The `top-sources` spoofed flood (xt, IPv4): 100,000 SYNs from distinct
//! random addresses of 100.64.0.0/10 with 5 heavy sources (600, 500, 400, 300,
//! 200 SYNs, spread evenly through it), the agent with `--top-map-entries
//! 16384`: the heavy sources must be ranks 1-5 of the summed syn_received
//! events with exactly their counts, the map must have evicted, /proc must
//! have moved by every SYN sent and eBPF must equal /proc. `/metrics` is
//! scraped through the flood (`top_series_scrape`, and on the boot that
//! carries it a real Prometheus, `top_series_prometheus`).

use crate::check::Check;
use crate::live_agent::{Launch, LiveAgent};
use crate::packet::{TcpSegment, V6Checksum, SYN};
use crate::proc_counters;
use crate::protected_server::ProtectedServer;
use crate::rng::XorShift;
use crate::scenario::Config;
use crate::top_series_prometheus::{self, RealPrometheus};
use crate::top_series_scrape::{self, Scraper};
use crate::top_sources::{
    agent_health, ebpf_sums, flood_addr, flood_schedule, heavy_addr, map_fields, ranking,
    server_default_routes, settle, tally, timed, Run, FLOOD_MAP_ENTRIES, FLOOD_SOURCES, HEAVY,
};
use crate::traffic::{RawSender, ServerMode};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;
use synproxy_common::Counter;

/// The spoofed-flood check (xt, IPv4).
pub fn flood(cfg: &Config, kernel: &str) -> Check {
    let heavy: Vec<String> = HEAVY.iter().map(u32::to_string).collect();
    let head = format!(
        "RESULT kernel={kernel} check=top-sources mode=flood rules=xt family=ipv4 random_sources={FLOOD_SOURCES} heavy={} map_entries={FLOOD_MAP_ENTRIES}",
        heavy.join("/")
    );
    timed(&head, |head| run_flood(cfg, head))
}

fn run_flood(cfg: &Config, head: &str) -> Result<Check> {
    let setup = ProtectedServer::xt_ipv4(cfg, ServerMode::Hold)?;
    let topo = &setup.topo;
    let dst: IpAddr = topo.srv4.into();
    server_default_routes(cfg, topo)?;
    let mut args = cfg.extra_agent_args.clone();
    args.extend([
        "--top".to_string(),
        "10".to_string(),
        "--top-map-entries".to_string(),
        FLOOD_MAP_ENTRIES.to_string(),
    ]);
    args.extend(top_series_scrape::AGENT_ARGS.map(String::from));
    let ebpf = cfg.ebpf.enabled();
    let real_prometheus = top_series_prometheus::wanted().then(RealPrometheus::start);
    let mut live = LiveAgent::start_with(&cfg.agent, &topo.srv, &args, &Launch::Direct, ebpf)
        .context("the agent")?;
    let real_prometheus = real_prometheus.map(|p| p.and_then(RealPrometheus::scraping));
    let scraper = Scraper::start();
    let mut run = Run::new();
    let before = proc_counters::read(&topo.srv)?;
    let mut rng = XorShift::from_time();
    let (a, b) = (rng.next_u32(), rng.next_u32());
    let schedule = flood_schedule(FLOOD_SOURCES, &HEAVY);
    let mut tx = RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)?;
    let send_start = Instant::now();
    let mut random = 0u32;
    for (p, what) in schedule.iter().enumerate() {
        let src = match what {
            None => {
                random += 1;
                flood_addr(a, b, random - 1)
            }
            Some(h) => heavy_addr(*h),
        };
        let sport = 1024 + (p % 60_000) as u16;
        let seg = TcpSegment::to_protected(sport, rng.next_u32(), 0, SYN);
        tx.send_from(src.into(), dst, &seg)?;
        // A few rounds during the flood: the heavy sources' events are summed
        // over the rounds.
        if p > 0 && p % 25_000 == 0 {
            run.sample_scraped(&mut live, &scraper)?;
        }
    }
    let send_secs = send_start.elapsed().as_secs_f64();
    let real_prometheus = real_prometheus.map(|p| p.and_then(RealPrometheus::scraped_now));
    let sent = schedule.len() as u64;
    let name = Counter::SynReceived.name();
    let after = settle(&topo.srv, &[(name, before.get(name) + sent)])?;
    run.sample_scraped(&mut live, &scraper)?;
    run.sample_scraped(&mut live, &scraper)?;
    let seen = scraper.finish();
    let prometheus_figures = real_prometheus.map(|p| p.and_then(RealPrometheus::finish));
    let stopped = live.stop(None)?;
    run.add_stdout(&stopped.stdout)?;
    let srv = topo.srv.name();

    let mut notes = Vec::new();
    let mut pass = ebpf;
    if !ebpf {
        notes.push("per-source counts need eBPF (kprobes): the agent ran with --no-ebpf".into());
    }
    let proc_delta = after.get(name) - before.get(name);
    let ebpf_v4 = ebpf_sums(&run.lines, srv)?
        .get(&(name.to_string(), "ipv4".to_string()))
        .copied()
        .unwrap_or(0);
    if proc_delta != sent {
        pass = false;
        notes.push(format!(
            "/proc syn_received moved {proc_delta}, {sent} SYNs sent"
        ));
    }
    if ebpf_v4 != proc_delta {
        pass = false;
        notes.push(format!("eBPF syn_received {ebpf_v4}, /proc {proc_delta}"));
    }
    let tally = tally(&run.lines, srv)?;
    let empty = BTreeMap::new();
    let sums = tally
        .get(&(name.to_string(), "ipv4".to_string()))
        .unwrap_or(&empty);
    let ranked = ranking(sums);
    let expected: Vec<(IpAddr, u64)> = HEAVY
        .iter()
        .enumerate()
        .map(|(h, n)| (heavy_addr(h).into(), u64::from(*n)))
        .collect();
    let top5: Vec<(IpAddr, u64)> = ranked.iter().take(HEAVY.len()).copied().collect();
    let show = |v: &[(IpAddr, u64)]| {
        v.iter()
            .map(|(a, n)| format!("{a}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    if top5 != expected {
        pass = false;
        notes.push(format!(
            "ranks 1-5 of summed syn_received: {} (expected {})",
            show(&top5),
            show(&expected)
        ));
    }
    let rank6 = ranked.get(HEAVY.len()).map_or(0, |(_, n)| *n);
    let map = map_fields(&run.lines);
    let map_text = match &map {
        Ok(m) => {
            if m.evictions == 0 {
                pass = false;
                notes.push(format!(
                    "source_evictions=0 after {FLOOD_SOURCES} sources into a map of {} entries",
                    m.capacity
                ));
            }
            if m.capacity != u64::from(FLOOD_MAP_ENTRIES) || m.entries > m.capacity {
                pass = false;
                notes.push(format!(
                    "source_map_entries={} source_map_capacity={}",
                    m.entries, m.capacity
                ));
            }
            format!(
                "source_evictions={} source_map_entries={} source_map_capacity={} source_map_bytes={}",
                m.evictions, m.entries, m.capacity, m.bytes
            )
        }
        Err(e) => {
            pass = false;
            notes.push(format!("probes line: {e:#}"));
            "source_evictions=?".to_string()
        }
    };
    // The exposed rounds: the one the agent made at start, and each sampled.
    let series_text = top_series_scrape::judge(&seen, &run.lines, run.rounds + 1, ebpf, &mut notes);
    pass &= series_text.1;
    let prometheus_text = match &prometheus_figures {
        Some(figures) => {
            let (text, ok) =
                top_series_prometheus::judge(figures, run.rounds + 1, ebpf, &mut notes);
            pass &= ok;
            text
        }
        None => "prometheus=not-in-this-boot".to_string(),
    };
    if ebpf && !agent_health(cfg, &run, srv, stopped, &mut notes)? {
        pass = false;
    }
    Ok(Check {
        line: format!(
            "{head} syn_driven={sent} proc_syn={proc_delta} ebpf_syn={ebpf_v4} top5={} rank6_events={rank6} {map_text} {} {prometheus_text} rounds={} send_time={send_secs:.1}s status={}",
            show(&top5),
            series_text.0,
            run.rounds,
            if pass { "PASS" } else { "FAIL" }
        ),
        pass,
        notes,
    })
}
