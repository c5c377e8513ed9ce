//! The `top-sources` ground truth, per rules flavour (xt, nft) and family
//! (IPv4, IPv6): 60 sources whose every count is known and distinct (see
//! `top_sources` for the plan); summed over the rounds, each (counter,
//! source) must equal the plan exactly. Every second crafted packet of a
//! source carries IPv4 options or an IPv6 destination options header (where
//! the crafted IPv6 checksum allows): the probes then find the address
//! through the skb instead of right before the TCP header.

use crate::check::{Check, Judged};
use crate::live_agent::{Launch, LiveAgent};
use crate::netns::Topology;
use crate::packet::{TcpSegment, ACK, SYN};
use crate::proc_counters;
use crate::rng::XorShift;
use crate::rules::{self, Family, Flavour, ServerRules, PROTECTED_PORT};
use crate::scenario::Config;
use crate::top_sources::*;
use crate::top_sources_judge::{ground_truth_head, CounterTruth, GroundTruth};
use crate::traffic::{self, RawSender, ServerMode, TcpServer};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use synproxy_common::Counter;

/// The ground-truth check for every selected rules flavour and family.
pub fn ground_truth(
    cfg: &Config,
    kernel: &str,
    rules: &[Flavour],
    families: &[Family],
) -> Vec<Check> {
    let mut checks = Vec::new();
    for &r in rules {
        for &f in families {
            let head = ground_truth_head(kernel, r.name(), f.name());
            checks.push(timed(head.head(), |_| run_ground_truth(cfg, kernel, r, f)));
        }
    }
    checks
}

fn run_ground_truth(cfg: &Config, kernel: &str, rules: Flavour, family: Family) -> Result<Check> {
    let tools = &cfg.tools;
    let topo = Topology::create(tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let _srv_rules = ServerRules::install(tools, &topo.srv, rules, family, &topo.srv_if)
        .context("SYNPROXY rules")?;
    let _cli_rules =
        rules::install_client_rst_filter(tools, &topo.cli, rules, family).context("RST filter")?;
    let server = TcpServer::start(&topo.srv, PROTECTED_PORT, ServerMode::Hold)?;
    server_default_routes(cfg, &topo)?;
    let sources: Vec<IpAddr> = (0..SOURCES).map(|i| source_addr(family, i)).collect();
    let adds: Vec<String> = sources
        .iter()
        .map(|a| match a {
            IpAddr::V4(a) => format!("addr add {a}/32 dev {}", topo.cli_if),
            IpAddr::V6(a) => format!("addr add {a}/128 dev {} nodad", topo.cli_if),
        })
        .collect();
    ip_batch(cfg, &topo.cli, &adds).context("source addresses on the client veth")?;
    let dst: IpAddr = match family {
        Family::Ipv4 => topo.srv4.into(),
        Family::Ipv6 => topo.srv6.into(),
    };
    traffic::wait_reachable(
        &topo.cli,
        SocketAddr::new(dst, PROBE_PORT),
        Duration::from_secs(30),
    )?;
    let checksum = v6_checksum(&topo, rules, family).context("probing crafted-packet checksums")?;
    let mut args = cfg.extra_agent_args.clone();
    args.extend(["--top", "100"].map(String::from));
    let ebpf = cfg.ebpf.enabled();
    let mut live = LiveAgent::start_with(&cfg.agent, &topo.srv, &args, &Launch::Direct, ebpf)
        .context("the agent")?;
    let mut run = Run::new();
    let before = proc_counters::read(&topo.srv)?;

    // Crafted SYNs, then a round, then bad ACKs, then a round, then the real
    // connections: the sums must not depend on how traffic falls into rounds.
    let mut tx = RawSender::new(&topo.cli, sources[0], checksum)?;
    let mut rng = XorShift::from_time();
    // Below the ephemeral range of the real connections: a crafted ACK must
    // never match one of their conntrack entries.
    let mut sport = 1024u16;
    let mut next_port = || {
        sport = if sport >= 30_000 { 1024 } else { sport + 1 };
        sport
    };
    let plans: Vec<SourcePlan> = (0..SOURCES).map(plan).collect();
    // Round-robin over the sources, so each one's packets spread over the burst.
    let most_syns = plans.iter().map(|p| p.crafted_syns).max().unwrap_or(0);
    for k in 0..most_syns {
        for (src, p) in sources.iter().zip(&plans) {
            if k < p.crafted_syns {
                let seg = TcpSegment::to_protected(next_port(), rng.next_u32(), 0, SYN);
                tx.send_shaped(*src, dst, &seg, k % 2 == 1)?;
            }
        }
    }
    run.sample(&mut live)?;
    let most_acks = plans.iter().map(|p| p.bad_acks).max().unwrap_or(0);
    for k in 0..most_acks {
        for (src, p) in sources.iter().zip(&plans) {
            if k < p.bad_acks {
                let seg =
                    TcpSegment::to_protected(next_port(), rng.next_u32(), rng.next_u32(), ACK);
                tx.send_shaped(*src, dst, &seg, k % 2 == 1)?;
            }
        }
    }
    run.sample(&mut live)?;
    let conn_plan: Vec<(IpAddr, u32)> = sources
        .iter()
        .zip(&plans)
        .filter(|(_, p)| p.connections > 0)
        .map(|(a, p)| (*a, p.connections))
        .collect();
    let connections: u32 = conn_plan.iter().map(|(_, n)| n).sum();
    let accepted = server.accepted();
    let _held = connect_from(&topo.cli, &conn_plan, SocketAddr::new(dst, PROTECTED_PORT))?;
    server
        .wait_accepted(accepted + u64::from(connections), CONNECT_TIMEOUT)
        .context("timeout waiting for the server to accept the connections")?;

    let driven: [u64; 3] = plans.iter().fold([0; 3], |mut acc, p| {
        for (a, e) in acc.iter_mut().zip(p.expected()) {
            *a += e;
        }
        acc
    });
    let targets: Vec<(&str, u64)> = COUNTERS
        .iter()
        .zip(driven)
        .map(|(c, d)| (c.name(), before.get(c.name()) + d))
        .collect();
    let after = settle(&topo.srv, &targets)?;
    // Two rounds after the traffic settled: the second must add nothing. (What
    // the agent wrote after a sample's last line, and before it exited, is
    // summed too: the sums do not depend on where a round's top lines fall.)
    run.sample(&mut live)?;
    run.sample(&mut live)?;
    let stopped = live.stop(None)?;
    run.add_stdout(&stopped.stdout)?;
    let srv = topo.srv.name();
    let fam = family.name();
    let other = match family {
        Family::Ipv4 => "ipv6",
        Family::Ipv6 => "ipv4",
    };

    let tally = tally(&run.lines, srv)?;
    let ebpf_sum = ebpf_sums(&run.lines, srv)?;
    let mut counters = Vec::new();
    for (ci, counter) in COUNTERS.iter().enumerate() {
        let name = counter.name();
        let short = match counter {
            Counter::SynReceived => "syn",
            Counter::CookieInvalid => "inv",
            _ => "valid",
        };
        let expected: BTreeMap<IpAddr, u64> = sources
            .iter()
            .zip(&plans)
            .map(|(a, p)| (*a, p.expected()[ci]))
            .filter(|(_, n)| *n > 0)
            .collect();
        let empty = BTreeMap::new();
        let got = tally
            .get(&(name.to_string(), fam.to_string()))
            .unwrap_or(&empty);
        let ebpf_of = |family: &str| {
            ebpf_sum
                .get(&(name.to_string(), family.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let (diffs, mismatches) = differences(&expected, got, 5);
        counters.push(CounterTruth {
            name,
            short,
            driven: driven[ci],
            proc_delta: after.get(name) - before.get(name),
            ebpf: ebpf_of(fam),
            ebpf_other: ebpf_of(other),
            top_sum: got.values().sum(),
            listed: got.len(),
            expected: expected.len(),
            mismatches,
            diffs,
            other_listed: tally
                .get(&(name.to_string(), other.to_string()))
                .map(BTreeMap::len),
        });
    }
    let measured = GroundTruth {
        rules: rules.name(),
        family: fam,
        connections,
        counters,
        evictions: map_fields(&run.lines)
            .map(|m| m.evictions)
            .map_err(|e| format!("{e:#}")),
        health: agent_health(cfg, &run, srv, stopped)?,
        rounds: run.rounds,
    };
    Ok(measured.check(kernel, Vec::new()))
}
