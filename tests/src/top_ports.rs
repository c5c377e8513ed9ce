//! The `top-ports` check: the agent's `synproxy_top_ports` lines against
//! traffic whose per-port counts are known (xt rules, IPv4; the judge is in
//! `top_ports_judge`).
//!
//! - Exact phase: SYNPROXY protects ports 8080, 8081 and 8082 of the server
//!   netns; crafted SYNs (60, 40, 20) and bare ACKs with random numbers
//!   (9, 18, 27) go to them, interleaved. The agent (`--top-ports 10
//!   --top-ports-map-entries 256`) is sampled after the SYNs and twice after
//!   the ACKs: summed over those rounds each (counter, port) must equal what
//!   was sent, no other port may appear, the sum over ports must equal the
//!   agent's eBPF total (which must equal /proc and what was driven), and the
//!   map must hold the 6 keys with nothing evicted.
//! - Overflow phase: one SYN to each of 320 ports of a protected range, more
//!   keys than the map's 256 entries: the probes line must report evictions,
//!   and eBPF must still equal /proc.
//!
//! It runs twice, with kprobes and with `--probes fentry` (kprobes again
//! where the module has no BTF, as on 5.10): the kretprobe path carries the
//! port from entry to return, the fexit path reads it at once.

use crate::check::{Check, Judged};
use crate::line_protocol::{FieldValue, Line};
use crate::live_agent::{Launch, LiveAgent};
use crate::netns::Topology;
use crate::packet::{TcpSegment, V6Checksum, ACK, SYN};
use crate::proc_counters;
use crate::rng::XorShift;
use crate::rules::{self, Family, Flavour, RuleSet, ServerRules};
use crate::scenario::Config;
use crate::top_ports_judge::{head, PortCounter, PortMap, TopPorts};
use crate::top_sources::{agent_health, ebpf_sums, settle, timed, Run};
use crate::traffic::RawSender;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use synproxy_common::Counter;

/// The measurement of the per-port lines.
pub const MEASUREMENT: &str = "synproxy_top_ports";
/// The exact phase's ports: (port, SYNs, bad ACKs).
pub const PLAN: [(u16, u64, u64); 3] = [(8080, 60, 9), (8081, 40, 18), (8082, 20, 27)];
/// The agent's `--top-ports-map-entries` (the smallest allowed).
pub const MAP_ENTRIES: u64 = 256;
/// The overflow phase: one SYN to each port of this range.
pub const OVERFLOW_FIRST: u16 = 20_000;
pub const OVERFLOW_PORTS: u16 = 320;
/// How long the first SYN may take to reach SYNPROXY (neighbour resolution).
const REACH_TIMEOUT: Duration = Duration::from_secs(20);

/// The check with kprobes, then with `--probes fentry` (once with fentry
/// when the scenario was given `--probes fentry`).
pub fn top_ports(cfg: &Config, kernel: &str) -> Vec<Check> {
    let mut fentry = cfg.clone();
    if !fentry.fentry {
        fentry.fentry = true;
        fentry
            .extra_agent_args
            .extend(["--probes", "fentry"].map(String::from));
    }
    let mut checks = Vec::new();
    for cfg in [(!cfg.fentry).then_some(cfg), Some(&fentry)]
        .into_iter()
        .flatten()
    {
        let probes = if cfg.fentry { "fentry" } else { "kprobe" };
        let line = head(kernel, probes);
        checks.push(timed(line.head(), |_| run(cfg, kernel)));
    }
    checks
}

fn run(cfg: &Config, kernel: &str) -> Result<Check> {
    let tools = &cfg.tools;
    let topo = Topology::create(tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let mut rule_sets = Vec::new();
    for (port, _, _) in PLAN {
        let r = ServerRules::install_on_port(
            tools,
            &topo.srv,
            Flavour::Xt,
            Family::Ipv4,
            &topo.srv_if,
            port,
        )
        .with_context(|| format!("SYNPROXY rules for port {port}"))?;
        rule_sets.push(r);
    }
    let _range = overflow_rules(cfg, &topo).context("SYNPROXY rules for the port range")?;
    let _cli_rules = rules::install_client_rst_filter(tools, &topo.cli, Flavour::Xt, Family::Ipv4)
        .context("RST filter")?;
    let dst: IpAddr = topo.srv4.into();
    let mut tx = RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)?;
    let mut rng = XorShift::from_time();
    reach(&topo, &mut tx, dst, PLAN[0].0, &mut rng).context("the first SYN")?;

    let mut args = cfg.extra_agent_args.clone();
    args.extend(
        [
            "--top-ports",
            "10",
            "--top-ports-map-entries",
            &MAP_ENTRIES.to_string(),
        ]
        .map(String::from),
    );
    let mut live = LiveAgent::start_with(
        &cfg.agent,
        &topo.srv,
        &args,
        &Launch::Direct,
        cfg.ebpf.enabled(),
    )
    .context("the agent")?;
    let mut run = Run::new();
    let before = proc_counters::read(&topo.srv)?;
    let (syn, inv) = (Counter::SynReceived.name(), Counter::CookieInvalid.name());

    // Exact phase: SYNs, a round, bad ACKs, two rounds (the second adds nothing).
    let most = PLAN.iter().map(|p| p.1.max(p.2)).max().unwrap_or(0);
    let mut sport = 1024u16;
    for k in 0..most {
        for &(port, syns, _) in &PLAN {
            if k < syns {
                sport = sport.wrapping_add(1).max(1024);
                tx.send(
                    dst,
                    &TcpSegment::to_port(port, sport, rng.next_u32(), 0, SYN),
                )?;
            }
        }
    }
    let syn_driven: u64 = PLAN.iter().map(|p| p.1).sum();
    let inv_driven: u64 = PLAN.iter().map(|p| p.2).sum();
    settle(&topo.srv, &[(syn, before.get(syn) + syn_driven)])?;
    run.sample(&mut live)?;
    for k in 0..most {
        for &(port, _, acks) in &PLAN {
            if k < acks {
                sport = sport.wrapping_add(1).max(1024);
                let seg = TcpSegment::to_port(port, sport, rng.next_u32(), rng.next_u32(), ACK);
                tx.send(dst, &seg)?;
            }
        }
    }
    let after = settle(&topo.srv, &[(inv, before.get(inv) + inv_driven)])?;
    run.sample(&mut live)?;
    run.sample(&mut live)?;
    let exact_end = run.lines.len();

    // Overflow phase: more (port, counter) keys than the map holds.
    for i in 0..OVERFLOW_PORTS {
        let seg = TcpSegment::to_port(OVERFLOW_FIRST + i, 40_000 + i, rng.next_u32(), 0, SYN);
        tx.send(dst, &seg)?;
    }
    let overflow_sent = u64::from(OVERFLOW_PORTS);
    let end = settle(&topo.srv, &[(syn, after.get(syn) + overflow_sent)])?;
    run.sample(&mut live)?;
    let overflow_map = port_map(&run.lines[exact_end..]).map_err(|e| format!("{e:#}"));
    let stopped = live.stop(None)?;
    run.add_stdout(&stopped.stdout)?;
    let srv = topo.srv.name();

    let exact = &run.lines[..exact_end];
    let tally = tally(exact, srv)?;
    let ebpf = ebpf_sums(exact, srv)?;
    let ebpf_of = |sums: &BTreeMap<(String, String), u64>, name: &str| -> u64 {
        sums.iter()
            .filter(|((c, _), _)| c == name)
            .map(|(_, n)| n)
            .sum()
    };
    let mut counters = Vec::new();
    for (counter, short, driven) in [
        (Counter::SynReceived, "syn", syn_driven),
        (Counter::CookieInvalid, "inv", inv_driven),
    ] {
        let name = counter.name();
        let empty = BTreeMap::new();
        let got = tally.get(name).unwrap_or(&empty);
        let want = |port: u16| {
            PLAN.iter().find(|p| p.0 == port).map(|p| {
                if counter == Counter::SynReceived {
                    p.1
                } else {
                    p.2
                }
            })
        };
        counters.push(PortCounter {
            name,
            short,
            driven,
            proc_delta: after.get(name) - before.get(name),
            ebpf: ebpf_of(&ebpf, name),
            port_sum: got.values().sum(),
            ports: PLAN
                .iter()
                .map(|p| {
                    (
                        p.0,
                        want(p.0).unwrap_or(0),
                        got.get(&p.0).copied().unwrap_or(0),
                    )
                })
                .collect(),
            extra: got
                .iter()
                .filter(|(port, _)| want(**port).is_none())
                .map(|(port, n)| (*port, *n))
                .collect(),
        });
    }
    let valid = Counter::CookieValid.name();
    let measured = TopPorts {
        counters,
        valid_listed: tally.get(valid).map_or(0, |m| m.values().sum()),
        exact_map: port_map(exact).map_err(|e| format!("{e:#}")),
        overflow_sent,
        overflow_proc: end.get(syn) - after.get(syn),
        overflow_ebpf: ebpf_of(&ebpf_sums(&run.lines[exact_end..], srv)?, syn),
        overflow_map,
        capacity: MAP_ENTRIES,
        exact_keys: (PLAN.len() * 2) as u64,
        probes: if cfg.fentry { "fentry" } else { "kprobe" },
        probe_type: cfg.probe_type_fields(probe_type(&run.lines).as_deref()),
        health: agent_health(cfg, &run, srv, stopped)?,
        rounds: run.rounds,
    };
    drop(rule_sets);
    Ok(measured.check(kernel, Vec::new()))
}

/// The `probe_type` of the last `synproxy_ebpf_probes` line.
fn probe_type(lines: &[Line]) -> Option<String> {
    lines
        .iter()
        .rev()
        .find(|l| l.measurement == "synproxy_ebpf_probes")
        .and_then(|l| match l.fields.get("probe_type") {
            Some(FieldValue::Str(s)) => Some(s.clone()),
            _ => None,
        })
}

/// SYNPROXY rules for the overflow phase's port range (iptables' `A:B`).
fn overflow_rules(cfg: &Config, topo: &Topology) -> Result<RuleSet> {
    let range = format!("{OVERFLOW_FIRST}:{}", OVERFLOW_FIRST + OVERFLOW_PORTS - 1);
    let mut set = RuleSet::new(&topo.srv);
    for rule in crate::synproxy_xt::synproxy_xt_rules(&topo.srv_if, OVERFLOW_FIRST) {
        let args: Vec<String> = rule
            .into_iter()
            .map(|a| {
                if a == OVERFLOW_FIRST.to_string() {
                    range.clone()
                } else {
                    a
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        set.xt_rule(&cfg.tools.iptables, &args)?;
    }
    Ok(set)
}

/// Sends SYNs to `port` until one reaches SYNPROXY (neighbour resolution
/// first), then waits for /proc to settle.
pub(crate) fn reach(
    topo: &Topology,
    tx: &mut RawSender,
    dst: IpAddr,
    port: u16,
    rng: &mut XorShift,
) -> Result<()> {
    let name = Counter::SynReceived.name();
    let before = proc_counters::read(&topo.srv)?.get(name);
    let deadline = Instant::now() + REACH_TIMEOUT;
    while Instant::now() < deadline {
        tx.send(
            dst,
            &TcpSegment::to_port(port, rng.port(), rng.next_u32(), 0, SYN),
        )?;
        let wait = Instant::now() + Duration::from_millis(500);
        while Instant::now() < wait {
            let now = proc_counters::read(&topo.srv)?.get(name);
            if now > before {
                settle(&topo.srv, &[(name, now)])?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    bail!("no crafted SYN reached SYNPROXY within {REACH_TIMEOUT:?}")
}

/// Per counter: per port, the `events` summed over every
/// `synproxy_top_ports` line of `netns` in `lines`.
pub fn tally(lines: &[Line], netns: &str) -> Result<BTreeMap<String, BTreeMap<u16, u64>>> {
    let mut out: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
    for line in lines.iter().filter(|l| {
        l.measurement == MEASUREMENT && l.tags.get("netns").map(String::as_str) == Some(netns)
    }) {
        let tag = |name: &str| {
            line.tags
                .get(name)
                .cloned()
                .with_context(|| format!("no {name} tag in {line:?}"))
        };
        let port: u16 = tag("port")?
            .parse()
            .with_context(|| format!("port tag of {line:?}"))?;
        *out.entry(tag("counter")?)
            .or_default()
            .entry(port)
            .or_default() += line.counter("events")?;
    }
    Ok(out)
}

/// The per-port map fields of the last `synproxy_ebpf_probes` line.
pub fn port_map(lines: &[Line]) -> Result<PortMap> {
    let line = lines
        .iter()
        .rev()
        .find(|l| l.measurement == "synproxy_ebpf_probes")
        .context("no synproxy_ebpf_probes line")?;
    Ok(PortMap {
        entries: line.counter("port_map_entries")?,
        capacity: line.counter("port_map_capacity")?,
        evictions: line.counter("port_evictions")?,
        insert_failures: line.counter("port_insert_failures")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line_protocol::parse_line;

    #[test]
    fn ports_are_tallied_per_counter_and_the_last_probes_line_gives_the_map() {
        let lines: Vec<Line> = [
            "synproxy_top_ports,counter=syn_received,netns=srv,port=8080,rank=1 events=5i,share=0.5 1",
            "synproxy_top_ports,counter=syn_received,netns=srv,port=8080,rank=1 events=7i,share=1 2",
            "synproxy_top_ports,counter=cookie_invalid,netns=srv,port=8081,rank=1 events=3i,share=1 2",
            "synproxy_top_ports,counter=syn_received,netns=other,port=8080,rank=1 events=100i,share=1 2",
            "synproxy_ebpf_probes port_map_entries=1i,port_map_capacity=256i,port_evictions=0i,port_insert_failures=0i 1",
            "synproxy_ebpf_probes port_map_entries=2i,port_map_capacity=256i,port_evictions=3i,port_insert_failures=0i 2",
        ]
        .iter()
        .map(|l| parse_line(l).expect("parses"))
        .collect();
        let t = tally(&lines, "srv").expect("tallies");
        assert_eq!(t["syn_received"][&8080], 12);
        assert_eq!(t["cookie_invalid"][&8081], 3);
        assert_eq!(t.len(), 2);
        let map = port_map(&lines).expect("map");
        assert_eq!((map.entries, map.evictions), (2, 3));
        assert!(port_map(&lines[..4]).is_err());
    }
}
