//! The sustained-flood check: one server netns protects two
//! ports, one by xt rules and one by native nft rules, each for IPv4 and IPv6;
//! at least 20 other namespaces exist (idle ones, and a few with SYNPROXY rules
//! and a trickle of traffic); an agent samples every 200 ms with `--netns all`
//! while a paced sender drives crafted SYNs and bad ACKs over xt/nft x IPv4/IPv6
//! for several seconds. Every round of the agent is then judged for the server
//! namespace: a busy round (its /proc totals moved, or its eBPF events were not
//! zero) must be `exact`, probe misses must be 0, and the eBPF events summed over
//! the run must equal the /proc delta, which must equal what was driven.

use crate::check::Check;
use crate::live_agent::{self, Launch, LiveAgent, ATTACH_TIMEOUT};
use crate::netns::{Netns, Topology};
use crate::packet::{TcpSegment, V6Checksum, ACK, SYN};
use crate::proc_counters::{self, Totals};
use crate::rng::XorShift;
use crate::rules::{self, Family, Flavour, RuleSet, ServerRules, PROTECTED_PORT};
use crate::scenario::Config;
use crate::sustained_judge::{judge, Counts, Recorded};
use crate::traffic::{self, RawSender};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use synproxy_common::Counter;

/// The port protected by xt rules is [`PROTECTED_PORT`]; this one by nft rules.
pub const NFT_PORT: u16 = 8082;
/// Unprotected port probed to wait for the link.
const PROBE_PORT: u16 = 8081;
const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// A probe packet that is counted at all is counted well within this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Waiting for /proc to stop moving after the traffic (TCG is ~10x slower).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Waiting for agent rounds (a round of ~25 namespaces under TCG takes well
/// under a second).
const ROUNDS_TIMEOUT: Duration = Duration::from_secs(60);
/// Rounds and time the agent keeps sampling after the traffic.
const ROUNDS_AFTER: usize = 5;
const TIME_AFTER: Duration = Duration::from_secs(1);
/// Trickle: one crafted SYN per namespace every this long.
const TRICKLE_EVERY: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct Params {
    pub syns: u32,
    pub acks: u32,
    /// The sender is paced to take at least this long.
    pub secs: f64,
    /// Namespaces with SYNPROXY rules and a trickle of traffic (2 each: client
    /// and server).
    pub trickle: u32,
    /// Idle namespaces (at least enough for 20 namespaces besides the server).
    pub idle: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            syns: 100_000,
            acks: 30_000,
            secs: 6.0,
            trickle: 3,
            idle: 15,
        }
    }
}

/// One of the four traffic streams.
#[derive(Clone, Copy, Debug)]
struct Stream {
    flavour: Flavour,
    family: Family,
}

const STREAMS: [Stream; 4] = [
    Stream {
        flavour: Flavour::Xt,
        family: Family::Ipv4,
    },
    Stream {
        flavour: Flavour::Xt,
        family: Family::Ipv6,
    },
    Stream {
        flavour: Flavour::Nft,
        family: Family::Ipv4,
    },
    Stream {
        flavour: Flavour::Nft,
        family: Family::Ipv6,
    },
];

impl Stream {
    fn port(self) -> u16 {
        match self.flavour {
            Flavour::Xt => PROTECTED_PORT,
            Flavour::Nft => NFT_PORT,
        }
    }
}

pub fn sustained(cfg: &Config, kernel: &str, params: &Params) -> Check {
    let head = format!("RESULT kernel={kernel} check=sustained");
    let driven = format!(
        "{head} syn_driven={} ack_driven={}",
        params.syns, params.acks
    );
    run(cfg, &head, params).unwrap_or_else(|e| Check::failed(&driven, &e))
}

fn totals_counts(t: &Totals) -> Counts {
    Counter::ALL.map(|c| t.get(c.name()))
}

/// A trickle namespace pair: rules on the server side, RST filter on the client.
struct Trickle {
    topo: Topology,
    _rules: ServerRules,
    _cli_rules: RuleSet,
}

fn setup_trickle(cfg: &Config) -> Result<Trickle> {
    let topo = Topology::create(&cfg.tools, None).context("trickle netns")?;
    let rules = ServerRules::install(
        &cfg.tools,
        &topo.srv,
        Flavour::Xt,
        Family::Ipv4,
        &topo.srv_if,
    )?;
    let cli_rules =
        rules::install_client_rst_filter(&cfg.tools, &topo.cli, Flavour::Nft, Family::Ipv4)?;
    Ok(Trickle {
        topo,
        _rules: rules,
        _cli_rules: cli_rules,
    })
}

/// The first checksum mode whose crafted SYN to the nft port over IPv6 moves
/// syn_received (nft_synproxy checks IPv6 with the IPv4 helper; which checksum
/// passes differs between kernels).
fn probe_nft_v6_checksum(topo: &Topology) -> Result<V6Checksum> {
    let candidates = [V6Checksum::NftIpv4Helper, V6Checksum::Correct];
    let mut rng = XorShift::from_time();
    let name = Counter::SynReceived.name();
    for mode in candidates {
        let before = proc_counters::read(&topo.srv)?.get(name);
        let mut tx = RawSender::new(&topo.cli, topo.cli6.into(), mode)?;
        let seg = TcpSegment::to_port(NFT_PORT, rng.port(), rng.next_u32(), 0, SYN);
        tx.send(topo.srv6.into(), &seg)?;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while Instant::now() < deadline {
            if proc_counters::read(&topo.srv)?.get(name) > before {
                return Ok(mode);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    bail!("no crafted IPv6 SYN to the nft port reached SYNPROXY with any of {candidates:?}")
}

/// Waits until the server's /proc totals stop moving (300 ms quiet).
fn settle(srv: &Netns) -> Result<Totals> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = proc_counters::read(srv)?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = proc_counters::read(srv)?;
        if now == last {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!(
                "/proc/net/stat/synproxy of {} still moving after {SETTLE_TIMEOUT:?}",
                srv.name()
            );
        }
        last = now;
    }
}

/// Collects the agent's stdout until `done(lines)` holds.
fn collect_until(
    agent: &mut LiveAgent,
    lines: &mut Vec<String>,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + ROUNDS_TIMEOUT;
    loop {
        lines.extend(agent.take_lines());
        if done(lines) {
            return Ok(());
        }
        if !agent.running() {
            let log = agent.stderr_lines();
            bail!(
                "the agent exited while waiting for {what}: {}",
                log.join(" | ")
            );
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {ROUNDS_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines that end a round: the probes line (eBPF), else every `synproxy` line
/// of `label` (one per round).
fn round_ends(lines: &[String], ebpf: bool, label: &str) -> usize {
    if ebpf {
        lines
            .iter()
            .filter(|l| l.starts_with("synproxy_ebpf_probes"))
            .count()
    } else {
        let tag = format!(",netns={label} ");
        let tag_mid = format!(",netns={label},");
        lines
            .iter()
            .filter(|l| l.starts_with("synproxy,") && (l.contains(&tag) || l.contains(&tag_mid)))
            .count()
    }
}

struct Driven {
    syn: [u64; 4],
    ack: [u64; 4],
    send_secs: f64,
}

/// Sends `syns` SYNs and `acks` bad ACKs interleaved over the four streams,
/// paced to take at least `secs`.
fn drive(topo: &Topology, v6_nft: V6Checksum, p: &Params) -> Result<Driven> {
    let mut tx4 = RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)?;
    let mut tx6_xt = RawSender::new(&topo.cli, topo.cli6.into(), V6Checksum::Correct)?;
    let mut tx6_nft = RawSender::new(&topo.cli, topo.cli6.into(), v6_nft)?;
    let (dst4, dst6): (IpAddr, IpAddr) = (topo.srv4.into(), topo.srv6.into());
    let mut rng = XorShift::from_time();
    let total = u64::from(p.syns) + u64::from(p.acks);
    let mut d = Driven {
        syn: [0; 4],
        ack: [0; 4],
        send_secs: 0.0,
    };
    let (mut n_syn, mut n_ack) = (0u64, 0u64);
    let started = Instant::now();
    for i in 0..total {
        // Spread the ACKs evenly among the SYNs.
        let is_ack = (i + 1) * u64::from(p.acks) / total > i * u64::from(p.acks) / total;
        let k = if is_ack { n_ack } else { n_syn };
        let s = (k % 4) as usize;
        let stream = STREAMS[s];
        let sport = 1024 + (k / 4 % 60_000) as u16;
        let seg = if is_ack {
            TcpSegment::to_port(stream.port(), sport, rng.next_u32(), rng.next_u32(), ACK)
        } else {
            TcpSegment::to_port(stream.port(), sport, rng.next_u32(), 0, SYN)
        };
        let (tx, dst) = match (stream.flavour, stream.family) {
            (_, Family::Ipv4) => (&mut tx4, dst4),
            (Flavour::Xt, Family::Ipv6) => (&mut tx6_xt, dst6),
            (Flavour::Nft, Family::Ipv6) => (&mut tx6_nft, dst6),
        };
        tx.send(dst, &seg)?;
        if is_ack {
            d.ack[s] += 1;
            n_ack += 1;
        } else {
            d.syn[s] += 1;
            n_syn += 1;
        }
        // Pacing (not synchronisation): never ahead of the even schedule.
        if i % 256 == 255 {
            let due = Duration::from_secs_f64(p.secs * (i + 1) as f64 / total as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
    let due = Duration::from_secs_f64(p.secs);
    let elapsed = started.elapsed();
    if due > elapsed {
        std::thread::sleep(due - elapsed);
    }
    d.send_secs = started.elapsed().as_secs_f64();
    Ok(d)
}

/// Crafted SYNs into each trickle namespace until `stop`.
fn trickle(list: &[Trickle], stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    let mut senders = Vec::new();
    for t in list {
        senders.push((
            RawSender::new(&t.topo.cli, t.topo.cli4.into(), V6Checksum::Correct)?,
            IpAddr::from(t.topo.srv4),
        ));
    }
    let mut rng = XorShift::from_time();
    while !stop.load(Ordering::Relaxed) {
        for (tx, dst) in &mut senders {
            tx.send(
                *dst,
                &TcpSegment::to_protected(rng.port(), rng.next_u32(), 0, SYN),
            )?;
            sent.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(TRICKLE_EVERY);
    }
    Ok(())
}

fn run(cfg: &Config, head: &str, p: &Params) -> Result<Check> {
    let t_setup = Instant::now();
    let tools = &cfg.tools;
    let ebpf = cfg.ebpf.enabled();
    let topo = Topology::create(tools, None).context("server/client netns")?;
    let mut srv_rules = Vec::new();
    for stream in STREAMS {
        srv_rules.push(
            ServerRules::install_on_port(
                tools,
                &topo.srv,
                stream.flavour,
                stream.family,
                &topo.srv_if,
                stream.port(),
            )
            .with_context(|| {
                format!(
                    "{} {} SYNPROXY rules on port {}",
                    stream.flavour.name(),
                    stream.family.name(),
                    stream.port()
                )
            })?,
        );
    }
    let mut cli_rules = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        cli_rules.push(
            rules::install_client_rst_filter(tools, &topo.cli, Flavour::Nft, family)
                .context("RST filter in the client netns")?,
        );
    }
    let mut trickles = Vec::new();
    for _ in 0..p.trickle {
        trickles.push(setup_trickle(cfg)?);
    }
    // Besides the server: its client, the trickle pairs and the idle ones.
    let busy_others = 1 + 2 * p.trickle;
    let idle_count = p.idle.max(20u32.saturating_sub(busy_others));
    let mut idle = Vec::new();
    for i in 0..idle_count {
        let name = format!("spx-{}-idle{i}", std::process::id());
        idle.push(Netns::create(tools, &name)?);
    }
    let others = busy_others + idle_count;
    for dst in [IpAddr::from(topo.srv4), IpAddr::from(topo.srv6)] {
        traffic::wait_reachable(&topo.cli, SocketAddr::new(dst, PROBE_PORT), LINK_TIMEOUT)?;
    }
    for t in &trickles {
        traffic::wait_reachable(
            &t.topo.cli,
            SocketAddr::new(t.topo.srv4.into(), PROBE_PORT),
            LINK_TIMEOUT,
        )?;
    }
    let v6_nft = probe_nft_v6_checksum(&topo).context("probing crafted IPv6 checksums for nft")?;
    let setup_secs = t_setup.elapsed().as_secs_f64();

    // The agent: every namespace, 200 ms rounds.
    let mut args: Vec<String> = [
        "--interval",
        "200ms",
        "--netns",
        "all",
        "--log-format",
        "telegraf",
    ]
    .map(String::from)
    .to_vec();
    if !ebpf {
        args.push("--no-ebpf".into());
    }
    args.extend_from_slice(&cfg.extra_agent_args);
    let t_attach = Instant::now();
    let mut agent = LiveAgent::spawn(&cfg.agent, &args, &Launch::Direct)?;
    let attach_ms = if ebpf {
        agent.wait_attached(ATTACH_TIMEOUT)?.as_millis()
    } else {
        0
    };
    let label = topo.srv.name().to_string();
    let mut lines = Vec::new();
    // Two complete rounds after the attach: the baseline is set.
    let base = round_ends(&lines, ebpf, &label);
    collect_until(
        &mut agent,
        &mut lines,
        "two agent rounds after the attach",
        |l| round_ends(l, ebpf, &label) >= base + 2,
    )?;
    let start_secs = t_attach.elapsed().as_secs_f64();

    let before = proc_counters::read(&topo.srv)?;
    let stop = AtomicBool::new(false);
    let trickle_sent = AtomicU64::new(0);
    let t_drive = Instant::now();
    let (driven, trickle_result) = std::thread::scope(|s| {
        let trickler = s.spawn(|| trickle(&trickles, &stop, &trickle_sent));
        let driven = drive(&topo, v6_nft, p);
        stop.store(true, Ordering::Relaxed);
        let trickle_result = trickler
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("trickle thread panicked")));
        (driven, trickle_result)
    });
    let driven = driven.context("driving the flood")?;
    trickle_result.context("trickle traffic")?;
    let after = settle(&topo.srv)?;
    let settle_secs = t_drive.elapsed().as_secs_f64() - driven.send_secs;
    // The agent keeps sampling for a while after the traffic.
    let t_after = Instant::now();
    lines.extend(agent.take_lines());
    let mark = round_ends(&lines, ebpf, &label);
    collect_until(
        &mut agent,
        &mut lines,
        "agent rounds after the traffic",
        |l| round_ends(l, ebpf, &label) >= mark + ROUNDS_AFTER && t_after.elapsed() >= TIME_AFTER,
    )?;
    lines.extend(agent.take_lines());
    let stopped = agent.stop(Some(libc::SIGTERM))?;
    lines.extend(stopped.stdout.iter().cloned());
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;

    let recorded = Recorded {
        lines,
        ebpf,
        label,
        before: totals_counts(&before),
        after: totals_counts(&after),
        syn: driven.syn,
        ack: driven.ack,
        send_secs: driven.send_secs,
        exit_ok: stopped.exit_ok,
        exit_code: stopped.exit_code,
        exit_elapsed: stopped.elapsed,
        stderr: stopped.stderr.clone(),
        left,
        others,
        timing: format!(
            "setup {setup_secs:.1}s, agent start to 2 rounds {start_secs:.1}s (attach {attach_ms} ms), traffic {:.1}s, settle {settle_secs:.1}s, trickle SYNs {}; streams xt4/xt6/nft4/nft6 syn {:?} ack {:?}, nft IPv6 checksum {v6_nft:?}",
            driven.send_secs,
            trickle_sent.load(Ordering::Relaxed),
            driven.syn,
            driven.ack
        ),
    };
    drop((srv_rules, cli_rules, idle, trickles));
    judge(head, &recorded, &|seen| cfg.probe_type_fields(seen))
}
