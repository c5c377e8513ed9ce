//! The `top-sources` spoofed flood (xt, IPv4): 100,000 SYNs from distinct
//! random addresses of 100.64.0.0/10 with 5 heavy sources (600, 500, 400, 300,
//! 200 SYNs, spread evenly through it), the agent with `--top-map-entries
//! 16384`: the heavy sources must be ranks 1-5 of the summed syn_received
//! events with exactly their counts, the map must have evicted, /proc must
//! have moved by every SYN sent and eBPF must equal /proc. `/metrics` is
//! scraped through the flood (`top_series_scrape`, and on the boot that
//! carries it a real Prometheus, `top_series_prometheus`).

use crate::check::{Check, Judged};
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
use crate::top_sources_judge::{flood_head, SpoofedFlood};
use crate::traffic::{RawSender, ServerMode};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;
use synproxy_common::Counter;

/// The spoofed-flood check (xt, IPv4).
pub fn flood(cfg: &Config, kernel: &str) -> Check {
    timed(flood_head(kernel).head(), |_| run_flood(cfg, kernel))
}

fn run_flood(cfg: &Config, kernel: &str) -> Result<Check> {
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
    let proc_delta = after.get(name) - before.get(name);
    let ebpf_v4 = ebpf_sums(&run.lines, srv)?
        .get(&(name.to_string(), "ipv4".to_string()))
        .copied()
        .unwrap_or(0);
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
    // The exposed rounds: the one the agent made at start, and each sampled.
    let series = top_series_scrape::judge(&seen, &run.lines, run.rounds + 1, ebpf, &mut notes);
    let prometheus = prometheus_figures
        .as_ref()
        .map(|figures| top_series_prometheus::judge(figures, run.rounds + 1, ebpf, &mut notes));
    let measured = SpoofedFlood {
        sent,
        proc_delta,
        ebpf: ebpf_v4,
        top5: ranked.iter().take(HEAVY.len()).copied().collect(),
        expected,
        rank6: ranked.get(HEAVY.len()).map_or(0, |(_, n)| *n),
        map: map_fields(&run.lines).map_err(|e| format!("{e:#}")),
        series,
        prometheus,
        health: agent_health(cfg, &run, srv, stopped)?,
        rounds: run.rounds,
        send_secs,
    };
    Ok(measured.check(kernel, notes))
}
