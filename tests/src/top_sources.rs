//! The `top-sources` check: the agent's `synproxy_top_sources` lines
//! against traffic whose per-source counts are known.
//!
//! - Ground truth, per rules flavour (xt, nft) and family (IPv4, IPv6): 60 extra
//!   addresses on the client's veth (10.78.0.1-60/32, fd00:78::1-60/128; the
//!   server netns routes them back through a default route). Source `i` (0..60)
//!   causes `i + 1` syn_received events and `2i + 1` cookie_invalid events
//!   (crafted SYNs and bare ACKs with random numbers); every sixth source
//!   (`i = 6k + 5`) also opens `k + 1` real connections bound to it
//!   (cookie_valid `k + 1`; their SYNs are part of its `i + 1` syn_received:
//!   it sends `i + 1 - (k + 1)` crafted SYNs). Every count is distinct. The agent
//!   runs with `--top 100`, so every source is listed in every round; summed over
//!   the rounds, each (counter, source) must equal the ground truth exactly, the
//!   sum over sources must equal the agent's eBPF total of the counter and family
//!   (and /proc), and `source_evictions` must stay 0.
//! - Spoofed flood (xt, IPv4): 100,000 SYNs from distinct random addresses of
//!   100.64.0.0/10 with 5 heavy sources (600, 500, 400, 300, 200 SYNs, spread
//!   evenly through it), the agent with `--top-map-entries 16384`: the heavy
//!   sources must be ranks 1-5 of the summed syn_received events with exactly
//!   their counts, the map must have evicted (`source_evictions > 0`), /proc
//!   must have moved by every SYN sent and eBPF must equal /proc.

use crate::burst_judge::{Exit, Probes};
use crate::check::Check;
use crate::line_protocol::{parse_line, FieldValue, Line};
use crate::live_agent::{self, LiveAgent};
use crate::netns::{Netns, Topology};
use crate::packet::{TcpSegment, V6Checksum, SYN};
use crate::proc_counters::{self, Totals};
use crate::rng::XorShift;
use crate::rules::{Family, Flavour};
use crate::scenario::Config;
use crate::tools;
use crate::top_series_scrape::Scraper;
use crate::top_sources_judge::Health;
use crate::traffic::RawSender;
use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use synproxy_common::Counter;

pub use crate::top_sources_flood::flood;
pub use crate::top_sources_ground_truth::ground_truth;

/// The measurement of the per-source lines.
pub const MEASUREMENT: &str = "synproxy_top_sources";
/// The counters with per-source lists.
pub const COUNTERS: [Counter; 3] = [
    Counter::SynReceived,
    Counter::CookieInvalid,
    Counter::CookieValid,
];
/// Sources of the ground-truth runs.
pub const SOURCES: u32 = 60;
/// The flood's random sources (one SYN each).
pub const FLOOD_SOURCES: u32 = 100_000;
/// The flood's heavy sources' SYNs, rank 1 first.
pub const HEAVY: [u32; 5] = [600, 500, 400, 300, 200];
/// The flood agent's `--top-map-entries`: far fewer than the sources.
pub const FLOOD_MAP_ENTRIES: u32 = 16_384;
pub(crate) use crate::protected_server::PROBE_PORT;
/// Generous: the guest runs under TCG.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one source is to cause in a ground-truth run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePlan {
    pub crafted_syns: u32,
    pub bad_acks: u32,
    pub connections: u32,
}

impl SourcePlan {
    /// syn_received, cookie_invalid, cookie_valid (the order of [`COUNTERS`]).
    pub fn expected(&self) -> [u64; 3] {
        [
            u64::from(self.crafted_syns + self.connections),
            u64::from(self.bad_acks),
            u64::from(self.connections),
        ]
    }
}

/// Source `i`'s plan: `i + 1` syn_received, `2i + 1` cookie_invalid, and for
/// `i = 6k + 5`, `k + 1` connections (cookie_valid), whose SYNs are part of
/// the `i + 1`.
pub fn plan(i: u32) -> SourcePlan {
    let connections = if i % 6 == 5 { i / 6 + 1 } else { 0 };
    SourcePlan {
        crafted_syns: i + 1 - connections,
        bad_acks: 2 * i + 1,
        connections,
    }
}

/// The `i`-th (0-based) extra client address of `family`.
pub fn source_addr(family: Family, i: u32) -> IpAddr {
    let n = i + 1;
    match family {
        Family::Ipv4 => Ipv4Addr::new(10, 78, 0, n as u8).into(),
        Family::Ipv6 => Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, n as u16).into(),
    }
}

/// The flood's `j`-th random source: `a * j + b` modulo 2^22 in 100.64.0.0/10
/// (`a` odd, so distinct `j` give distinct addresses).
pub fn flood_addr(a: u32, b: u32, j: u32) -> Ipv4Addr {
    let off = (a | 1).wrapping_mul(j).wrapping_add(b) & ((1 << 22) - 1);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) | off)
}

/// The flood's heavy sources (outside 100.64.0.0/10), rank 1 first.
pub fn heavy_addr(h: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, h as u8 + 1)
}

/// The flood's send order: `None` is the next random source, `Some(h)` a SYN
/// of heavy source `h`. Heavy source `h`'s `k`-th SYN goes after
/// `(k + 1/2) / HEAVY[h]` of the random ones: each heavy source is spread
/// evenly over the whole flood.
pub fn flood_schedule(randoms: u32, heavy: &[u32]) -> Vec<Option<usize>> {
    let mut keyed: Vec<(u64, Option<usize>)> = (0..randoms)
        .map(|j| (u64::from(j) * 2 * 1_000_000, None))
        .collect();
    for (h, &count) in heavy.iter().enumerate() {
        for k in 0..count {
            // (k + 1/2) * randoms / count, in units of 1/2,000,000 of a random slot,
            // plus 1 + h so no key equals a random one's or another heavy one's.
            let key = (2 * u64::from(k) + 1) * u64::from(randoms) * 1_000_000 / u64::from(count);
            keyed.push((key + 1 + h as u64, Some(h)));
        }
    }
    keyed.sort();
    keyed.into_iter().map(|(_, what)| what).collect()
}

/// Per (counter, family): per source, the `events` summed over every
/// `synproxy_top_sources` line of `netns` in `lines` (lines of any round).
pub type Tally = BTreeMap<(String, String), BTreeMap<IpAddr, u64>>;

pub fn tally(lines: &[Line], netns: &str) -> Result<Tally> {
    let mut out: Tally = BTreeMap::new();
    for line in lines.iter().filter(|l| {
        l.measurement == MEASUREMENT && l.tags.get("netns").map(String::as_str) == Some(netns)
    }) {
        let tag = |name: &str| {
            line.tags
                .get(name)
                .cloned()
                .with_context(|| format!("no {name} tag in {line:?}"))
        };
        let (counter, family, source) = (tag("counter")?, tag("family")?, tag("source")?);
        let addr: IpAddr = source
            .parse()
            .with_context(|| format!("source {source:?} is not an address"))?;
        let want = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
        if family != want {
            bail!("source {source} tagged family={family}");
        }
        let events = line.counter("events")?;
        *out.entry((counter, family))
            .or_default()
            .entry(addr)
            .or_default() += events;
    }
    Ok(out)
}

/// Per (counter, family): the `synproxy_ebpf` events of `netns` summed over
/// the lines (one line per family and round).
pub fn ebpf_sums(lines: &[Line], netns: &str) -> Result<BTreeMap<(String, String), u64>> {
    let mut out = BTreeMap::new();
    for line in lines.iter().filter(|l| {
        l.measurement == "synproxy_ebpf" && l.tags.get("netns").map(String::as_str) == Some(netns)
    }) {
        let family = line
            .tags
            .get("family")
            .cloned()
            .with_context(|| format!("no family tag in {line:?}"))?;
        for counter in COUNTERS {
            *out.entry((counter.name().to_string(), family.clone()))
                .or_default() += line.counter(counter.name())?;
        }
    }
    Ok(out)
}

/// Sources ranked like the agent ranks them: most events first, equal counts
/// by address, lowest first.
pub fn ranking(sums: &BTreeMap<IpAddr, u64>) -> Vec<(IpAddr, u64)> {
    let mut v: Vec<(IpAddr, u64)> = sums.iter().map(|(a, n)| (*a, *n)).collect();
    v.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    v
}

/// Differences between the expected and the reported per-source sums (a
/// source expected with 0 must be absent), at most `limit` of them, plus how
/// many there are in all.
pub fn differences(
    expected: &BTreeMap<IpAddr, u64>,
    got: &BTreeMap<IpAddr, u64>,
    limit: usize,
) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    for (addr, &want) in expected {
        let have = got.get(addr).copied().unwrap_or(0);
        if have != want {
            all.push(format!("{addr}: {have} (expected {want})"));
        }
    }
    for (addr, &have) in got {
        if !expected.contains_key(addr) {
            all.push(format!("{addr}: {have} (not a source)"));
        }
    }
    let n = all.len();
    all.truncate(limit);
    (all, n)
}

/// The map fields of the last `synproxy_ebpf_probes` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapFields {
    pub entries: u64,
    pub capacity: u64,
    pub evictions: u64,
    pub bytes: u64,
}

pub fn map_fields(lines: &[Line]) -> Result<MapFields> {
    let line = lines
        .iter()
        .rev()
        .find(|l| l.measurement == "synproxy_ebpf_probes")
        .context("no synproxy_ebpf_probes line")?;
    Ok(MapFields {
        entries: line.counter("source_map_entries")?,
        capacity: line.counter("source_map_capacity")?,
        evictions: line.counter("source_evictions")?,
        bytes: line.counter("source_map_bytes")?,
    })
}

/// `ip -n NETNS -batch -` with `commands`, one per line.
pub(crate) fn ip_batch(cfg: &Config, netns: &Netns, commands: &[String]) -> Result<()> {
    let text = commands.join("\n") + "\n";
    tools::run_with_stdin(
        &cfg.tools.ip,
        &["-n", netns.name(), "-batch", "-"],
        Some(&text),
    )
}

/// Default routes of the server netns through the client end of the veth:
/// answers to the extra (and spoofed) sources leave by it, and reverse path
/// filtering accepts them.
pub(crate) fn server_default_routes(cfg: &Config, topo: &Topology) -> Result<()> {
    ip_batch(
        cfg,
        &topo.srv,
        &[
            format!("route add default via {} dev {}", topo.cli4, topo.srv_if),
            format!("route add default via {} dev {}", topo.cli6, topo.srv_if),
        ],
    )
    .context("default routes in the server netns")
}

/// Waits until each counter of `targets` reached its value in the server netns,
/// then until /proc stops moving; the totals then. An error names the counters
/// that did not get there.
pub(crate) fn settle(srv: &Netns, targets: &[(&str, u64)]) -> Result<Totals> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = proc_counters::read(srv)?;
    while targets.iter().any(|(n, v)| last.get(n) < *v) {
        if Instant::now() > deadline {
            let short: Vec<String> = targets
                .iter()
                .map(|(n, v)| format!("{n} {} of {v}", last.get(n)))
                .collect();
            bail!(
                "timeout waiting for /proc/net/stat/synproxy to reach the driven counts ({SETTLE_TIMEOUT:?}): {}",
                short.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        last = proc_counters::read(srv)?;
    }
    // Quiet: nothing more arrives (an overshoot shows as a difference).
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = proc_counters::read(srv)?;
        if now == last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// The first checksum mode whose crafted IPv6 SYN moves syn_received (see
/// `scenario::Combo::v6_checksum_candidates`). Run before the agent starts,
/// from the client's own address: not one of the counted sources.
pub(crate) fn v6_checksum(topo: &Topology, rules: Flavour, family: Family) -> Result<V6Checksum> {
    let candidates: &[V6Checksum] = match (rules, family) {
        (Flavour::Nft, Family::Ipv6) => &[V6Checksum::NftIpv4Helper, V6Checksum::Correct],
        _ => return Ok(V6Checksum::Correct),
    };
    let mut rng = XorShift::from_time();
    for &mode in candidates {
        let before = proc_counters::read(&topo.srv)?.get(Counter::SynReceived.name());
        let mut tx = RawSender::new(&topo.cli, topo.cli6.into(), mode)?;
        tx.send(
            topo.srv6.into(),
            &TcpSegment::to_protected(rng.port(), rng.next_u32(), 0, SYN),
        )?;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while Instant::now() < deadline {
            if proc_counters::read(&topo.srv)?.get(Counter::SynReceived.name()) > before {
                settle(&topo.srv, &[(Counter::SynReceived.name(), before + 1)])?;
                return Ok(mode);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    bail!("no crafted IPv6 SYN reached SYNPROXY with any of {candidates:?} checksums")
}

/// Non-blocking connects to `dst` from each `(source, count)`, `count` each;
/// the sockets must stay open until the check ends (closing is traffic too).
pub(crate) fn connect_from(
    netns: &Netns,
    plan: &[(IpAddr, u32)],
    dst: SocketAddr,
) -> Result<Vec<Socket>> {
    let plan = plan.to_vec();
    netns.run(move || {
        let mut socks = Vec::new();
        for (src, count) in plan {
            for _ in 0..count {
                let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
                s.bind(&SocketAddr::new(src, 0).into())
                    .with_context(|| format!("bind {src}"))?;
                s.set_nonblocking(true)?;
                // Closed at the end with a RST, not a FIN: no orphaned socket
                // outlives the check (see `TcpServer`).
                s.set_linger(Some(Duration::ZERO))?;
                match s.connect(&dst.into()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("connect {src} -> {dst}"));
                    }
                }
                socks.push(s);
            }
        }
        Ok(socks)
    })
}

/// The agent's lines after its first round: every sample, then what it wrote
/// before it exited.
pub(crate) struct Run {
    pub(crate) lines: Vec<Line>,
    pub(crate) rounds: usize,
}

impl Run {
    pub(crate) fn new() -> Self {
        Run {
            lines: Vec::new(),
            rounds: 0,
        }
    }

    pub(crate) fn sample(&mut self, live: &mut LiveAgent) -> Result<()> {
        self.lines.extend(live.sample()?);
        self.rounds += 1;
        Ok(())
    }

    /// [`Run::sample`], then a scrape of that round's `/metrics`.
    pub(crate) fn sample_scraped(&mut self, live: &mut LiveAgent, scraper: &Scraper) -> Result<()> {
        let stamp = scraper.stamp();
        self.sample(live)?;
        scraper.after_round(stamp);
        Ok(())
    }

    pub(crate) fn add_stdout(&mut self, stdout: &[String]) -> Result<()> {
        for raw in stdout {
            self.lines
                .push(parse_line(raw).with_context(|| format!("agent line {raw:?}"))?);
        }
        Ok(())
    }
}

/// `run`'s check with how long it took in its notes, or [`Check::failed`].
pub(crate) fn timed(head: &str, run: impl FnOnce(&str) -> Result<Check>) -> Check {
    let started = Instant::now();
    let result = run(head).map(|mut check| {
        check
            .notes
            .push(format!("took {:.1}s", started.elapsed().as_secs_f64()));
        check
    });
    Check::or_failed(head, result)
}

/// The agent's eBPF side over the run (its probes, every `synproxy_ebpf`
/// line of `srv`) and how it stopped (stdin EOF or SIGTERM), for
/// [`crate::top_sources_judge`]; None without eBPF.
pub(crate) fn agent_health(
    cfg: &Config,
    run: &Run,
    srv: &str,
    stopped: live_agent::Stopped,
) -> Result<Health> {
    if !cfg.ebpf.enabled() {
        return Ok(None);
    }
    let (missed, attached) = live_agent::probe_misses(&run.lines)?;
    let probe_misses: u64 = run
        .lines
        .iter()
        .filter(|l| l.measurement == "synproxy_ebpf_probes")
        .map(|l| l.counter("probe_misses"))
        .collect::<Result<Vec<u64>>>()?
        .into_iter()
        .sum();
    let statuses = run
        .lines
        .iter()
        .filter(|l| {
            l.measurement == "synproxy_ebpf" && l.tags.get("netns").map(String::as_str) == Some(srv)
        })
        .map(|l| match l.fields.get("reconcile") {
            Some(FieldValue::Str(s)) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    let probes = Probes {
        missed,
        attached,
        probe_misses,
        statuses,
    };
    Ok(Some((
        probes,
        Exit::of(&stopped, left, Some(cfg.exit_limit())),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .map(|l| parse_line(l).expect("test line parses"))
            .collect()
    }

    #[test]
    fn every_count_of_the_plan_is_distinct_and_connections_are_inside_the_syns() {
        let plans: Vec<SourcePlan> = (0..SOURCES).map(plan).collect();
        for ci in 0..3 {
            let nonzero: Vec<u64> = plans
                .iter()
                .map(|p| p.expected()[ci])
                .filter(|n| *n > 0)
                .collect();
            let distinct: BTreeSet<u64> = nonzero.iter().copied().collect();
            assert_eq!(distinct.len(), nonzero.len(), "counter {ci}");
        }
        for (i, p) in plans.iter().enumerate() {
            assert_eq!(p.expected()[0], i as u64 + 1);
            assert_eq!(p.expected()[1], 2 * i as u64 + 1);
        }
        let connecting: Vec<u32> = plans
            .iter()
            .map(|p| p.connections)
            .filter(|c| *c > 0)
            .collect();
        assert_eq!(connecting, (1..=10).collect::<Vec<u32>>());
    }

    #[test]
    fn source_addresses_are_distinct_and_of_their_family() {
        for family in [Family::Ipv4, Family::Ipv6] {
            let all: BTreeSet<IpAddr> = (0..SOURCES).map(|i| source_addr(family, i)).collect();
            assert_eq!(all.len(), SOURCES as usize);
            assert!(all.iter().all(|a| a.is_ipv4() == (family == Family::Ipv4)));
        }
        assert_eq!(source_addr(Family::Ipv6, 4).to_string(), "fd00:78::5");
    }

    #[test]
    fn flood_addresses_are_distinct_and_in_the_shared_space() {
        let all: BTreeSet<Ipv4Addr> = (0..FLOOD_SOURCES)
            .map(|j| flood_addr(0x1234_5678, 0xdead_beef, j))
            .collect();
        assert_eq!(all.len(), FLOOD_SOURCES as usize);
        let net = u32::from(Ipv4Addr::new(100, 64, 0, 0));
        assert!(all.iter().all(|a| u32::from(*a) & 0xffc0_0000 == net));
        assert!((0..HEAVY.len()).all(|h| !all.contains(&heavy_addr(h))));
    }

    #[test]
    fn the_schedule_spreads_each_heavy_source_over_the_flood() {
        let s = flood_schedule(1000, &[10, 4]);
        assert_eq!(s.len(), 1014);
        assert_eq!(s.iter().filter(|w| w.is_none()).count(), 1000);
        for (h, count) in [(0usize, 10usize), (1, 4)] {
            let at: Vec<usize> = s
                .iter()
                .enumerate()
                .filter(|(_, w)| **w == Some(h))
                .map(|(p, _)| p)
                .collect();
            assert_eq!(at.len(), count);
            // The first SYN within the first share, the last within the last.
            assert!(at[0] < s.len() / count, "{at:?}");
            assert!(at[count - 1] > s.len() - s.len() / count, "{at:?}");
        }
    }

    #[test]
    fn tally_sums_each_source_over_rounds_for_its_netns_only() {
        let l = lines(
            "synproxy_top_sources,counter=syn_received,family=ipv4,netns=srv,rank=1,source=10.78.0.2 events=5i,share=0.5 1\n\
             synproxy_top_sources,counter=syn_received,family=ipv4,netns=srv,rank=2,source=10.78.0.1 events=3i,share=0.3 1\n\
             synproxy_ebpf_probes attached=1i 1\n\
             synproxy_top_sources,counter=syn_received,family=ipv4,netns=srv,rank=1,source=10.78.0.1 events=4i,share=1 2\n\
             synproxy_top_sources,counter=syn_received,family=ipv4,netns=other,rank=1,source=10.78.0.1 events=100i,share=1 2\n\
             synproxy_top_sources,counter=cookie_invalid,family=ipv6,netns=srv,rank=1,source=fd00:78::1 events=7u,share=1 2",
        );
        let t = tally(&l, "srv").expect("tally");
        let syn = &t[&("syn_received".to_string(), "ipv4".to_string())];
        assert_eq!(syn.len(), 2);
        assert_eq!(syn[&"10.78.0.1".parse::<IpAddr>().expect("addr")], 7);
        assert_eq!(syn[&"10.78.0.2".parse::<IpAddr>().expect("addr")], 5);
        let inv = &t[&("cookie_invalid".to_string(), "ipv6".to_string())];
        assert_eq!(inv[&"fd00:78::1".parse::<IpAddr>().expect("addr")], 7);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn tally_refuses_a_prefix_or_a_wrong_family() {
        let prefix = lines("synproxy_top_sources,counter=syn_received,family=ipv4,netns=srv,rank=1,source=10.78.0.0/24 events=5i,share=1 1");
        assert!(tally(&prefix, "srv").is_err());
        let wrong = lines("synproxy_top_sources,counter=syn_received,family=ipv6,netns=srv,rank=1,source=10.78.0.1 events=5i,share=1 1");
        assert!(tally(&wrong, "srv").is_err());
    }

    #[test]
    fn ebpf_sums_per_counter_and_family() {
        let l = lines(
            "synproxy_ebpf,family=ipv4,netns=srv syn_received=3i,cookie_invalid=1i,cookie_valid=0i,reconcile=\"exact\" 1\n\
             synproxy_ebpf,family=ipv6,netns=srv syn_received=2i,cookie_invalid=0i,cookie_valid=1i,reconcile=\"exact\" 1\n\
             synproxy_ebpf,family=ipv4,netns=srv syn_received=4i,cookie_invalid=0i,cookie_valid=2i,reconcile=\"exact\" 2\n\
             synproxy_ebpf,family=ipv4,netns=x syn_received=50i,cookie_invalid=0i,cookie_valid=0i,reconcile=\"exact\" 2",
        );
        let s = ebpf_sums(&l, "srv").expect("sums");
        let get = |c: &str, f: &str| s[&(c.to_string(), f.to_string())];
        assert_eq!(get("syn_received", "ipv4"), 7);
        assert_eq!(get("syn_received", "ipv6"), 2);
        assert_eq!(get("cookie_valid", "ipv4"), 2);
        assert_eq!(get("cookie_invalid", "ipv4"), 1);
    }

    #[test]
    fn ranking_is_by_events_then_by_address() {
        let a = |s: &str| s.parse::<IpAddr>().expect("addr");
        let sums: BTreeMap<IpAddr, u64> = [
            (a("10.0.0.10"), 5),
            (a("10.0.0.2"), 5),
            (a("10.0.0.3"), 9),
            (a("10.0.0.1"), 1),
        ]
        .into_iter()
        .collect();
        let r: Vec<IpAddr> = ranking(&sums).into_iter().map(|(a, _)| a).collect();
        assert_eq!(
            r,
            vec![a("10.0.0.3"), a("10.0.0.2"), a("10.0.0.10"), a("10.0.0.1")]
        );
    }

    #[test]
    fn differences_find_wrong_missing_and_extra_sources() {
        let a = |s: &str| s.parse::<IpAddr>().expect("addr");
        let expected: BTreeMap<IpAddr, u64> =
            [(a("10.0.0.1"), 1), (a("10.0.0.2"), 2), (a("10.0.0.3"), 3)]
                .into_iter()
                .collect();
        assert_eq!(differences(&expected, &expected, 5), (vec![], 0));
        let got: BTreeMap<IpAddr, u64> =
            [(a("10.0.0.1"), 1), (a("10.0.0.2"), 3), (a("10.0.0.9"), 1)]
                .into_iter()
                .collect();
        let (shown, n) = differences(&expected, &got, 2);
        assert_eq!(n, 3);
        assert_eq!(
            shown,
            vec!["10.0.0.2: 3 (expected 2)", "10.0.0.3: 0 (expected 3)"]
        );
    }

    #[test]
    fn map_fields_come_from_the_last_probes_line() {
        let l = lines(
            "synproxy_ebpf_probes attached=1i,source_map_entries=5i,source_map_capacity=16384i,source_evictions=0i,source_map_bytes=100i 1\n\
             synproxy_ebpf_probes attached=1i,source_map_entries=16384i,source_map_capacity=16384i,source_evictions=83616i,source_map_bytes=2000i 2",
        );
        assert_eq!(
            map_fields(&l).expect("fields"),
            MapFields {
                entries: 16384,
                capacity: 16384,
                evictions: 83616,
                bytes: 2000
            }
        );
        assert!(map_fields(&lines("synproxy_ebpf_probes attached=1i 1")).is_err());
    }
}
