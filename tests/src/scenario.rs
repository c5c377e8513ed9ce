//! One check = one (rules flavour, family, counter) combination in fresh netns:
//! drive the counter by a known amount with real traffic, compare the /proc delta
//! with the driven amount and the agent's value with the /proc total.

use crate::agent;
use crate::burst_judge::{Exit, Probes};
use crate::live_agent::{self, LiveAgent};
use crate::matrix_judge::{self, AgentReading, EbpfReading, Matrix};
use crate::netns::Topology;
use crate::packet::{TcpSegment, V6Checksum, ACK, RST, SYN};
use crate::proc_counters::{self, Totals};
use crate::rng::XorShift;
use crate::rules::{self, Family, Flavour, ServerRules, PROTECTED_PORT};
use crate::tools::Tools;
use crate::traffic::{self, RawReceiver, RawSender, ServerMode, TcpServer};
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use synproxy_common::Counter;

/// Unprotected port probed to wait for the link (a refusal proves reachability).
const PROBE_PORT: u16 = 8081;
/// Generous: a TCG guest is ~10x slower than the host.
const PACKET_TIMEOUT: Duration = Duration::from_secs(5);
/// A probe packet that is counted at all is counted well within this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The counter called `name`, with the valid names in the error.
pub fn parse_counter(name: &str) -> Result<Counter> {
    Counter::from_name(name).with_context(|| {
        let names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        format!("unknown counter {name:?} ({})", names.join("|"))
    })
}

/// The recipes for these need crafted follow-ups of a captured SYN/ACK; they are
/// defined (and checked) for IPv4 only.
pub fn ipv4_only(counter: Counter) -> bool {
    matches!(counter, Counter::CookieRetrans | Counter::ConnReopened)
}

/// Which agent invocations a check compares with /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    /// Spawned inside the server netns.
    Inside,
    /// `--netns NAME` from the caller's (root) netns.
    NetnsFlag,
    /// Both; the RESULT line shows the inside value.
    Both,
}

impl AgentMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "inside" => Ok(AgentMode::Inside),
            "netns" => Ok(AgentMode::NetnsFlag),
            "both" => Ok(AgentMode::Both),
            other => bail!("unknown agent mode {other:?} (inside|netns|both)"),
        }
    }
}

/// Whether checks also run the agent with eBPF and require ebpf == proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EbpfMode {
    /// When the kernel has kprobes.
    Auto,
    /// Always; a kernel without kprobes fails the checks.
    Require,
    Off,
}

impl EbpfMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(EbpfMode::Auto),
            "require" => Ok(EbpfMode::Require),
            "off" => Ok(EbpfMode::Off),
            other => bail!("unknown --ebpf {other:?} (auto|require|off)"),
        }
    }

    pub fn enabled(self) -> bool {
        match self {
            EbpfMode::Auto => live_agent::kernel_has_kprobes(),
            EbpfMode::Require => true,
            EbpfMode::Off => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub tools: Tools,
    pub agent: PathBuf,
    pub extra_agent_args: Vec<String>,
    /// Existing netns to use as the server side (kept afterwards).
    pub server_netns: Option<String>,
    pub count: u32,
    pub agent_mode: AgentMode,
    pub ebpf: EbpfMode,
    /// `--probes fentry` given to the scenario: the agents run with it (it is
    /// in `extra_agent_args` too) and the eBPF checks report which probe type
    /// the agent used against the one this kernel should give.
    pub fentry: bool,
}

impl Config {
    /// How soon after SIGTERM/SIGINT/stdin EOF the agent must have exited:
    /// [`crate::live_agent::EXIT_LIMIT`], or with fentry in use
    /// [`crate::live_agent::FENTRY_EXIT_LIMIT`].
    pub fn exit_limit(&self) -> std::time::Duration {
        if self.fentry && crate::live_agent::expected_probe_type() == "fentry" {
            crate::live_agent::FENTRY_EXIT_LIMIT
        } else {
            crate::live_agent::EXIT_LIMIT
        }
    }

    /// With `--probes fentry`: ` probes=fentry probe_type=<seen> expected=<type>`
    /// for a RESULT line, and whether they agree. Empty and true otherwise.
    pub fn probe_type_fields(&self, seen: Option<&str>) -> (String, bool) {
        let probe = self.probe_type(seen);
        (probe.fields(), probe.ok())
    }

    /// The probe type an agent reported beside the one it must use.
    pub fn probe_type(&self, seen: Option<&str>) -> crate::burst_judge::ProbeType {
        crate::burst_judge::ProbeType {
            fentry: self.fentry,
            seen: seen.map(String::from),
            expected: crate::live_agent::expected_probe_type().into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Combo {
    pub rules: Flavour,
    pub family: Family,
    pub counter: Counter,
}

impl Combo {
    /// Checksums crafted IPv6 packets may need, most likely first. nft_synproxy
    /// validates IPv6 packets with the IPv4 checksum helper; whether a packet
    /// with that checksum, or a correct one, reaches the expression differs
    /// between kernels (6.18 and 5.10 take the former, 6.1/6.12 drop it), so
    /// nft + IPv6 checks find out with a probe before they count.
    fn v6_checksum_candidates(&self) -> &'static [V6Checksum] {
        match (self.rules, self.family) {
            (Flavour::Nft, Family::Ipv6) => &[V6Checksum::NftIpv4Helper, V6Checksum::Correct],
            _ => &[V6Checksum::Correct],
        }
    }

    fn sends_crafted_packets(&self) -> bool {
        self.counter != Counter::CookieValid
    }
}

/// All selected combinations in a stable order, IPv4-only counters skipped for IPv6.
pub fn combos(rules: &[Flavour], families: &[Family], counters: &[Counter]) -> Vec<Combo> {
    let mut v = Vec::new();
    for &r in rules {
        for &f in families {
            for &c in counters {
                if f == Family::Ipv6 && ipv4_only(c) {
                    continue;
                }
                v.push(Combo {
                    rules: r,
                    family: f,
                    counter: c,
                });
            }
        }
    }
    v
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub combo: Combo,
    pub driven: u64,
    pub proc_delta: u64,
    pub agent: u64,
    /// The agent's eBPF count of the counter (None: eBPF not checked).
    pub ebpf: Option<u64>,
    pub pass: bool,
    /// Explanations printed as `# ...` lines after the RESULT line.
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn result_line(&self, kernel: &str) -> String {
        format!(
            "RESULT kernel={kernel} rules={} family={} counter={} driven={} proc={} agent={} ebpf={} status={}",
            self.combo.rules.name(),
            self.combo.family.name(),
            self.combo.counter.name(),
            self.driven,
            self.proc_delta,
            self.agent,
            self.ebpf.map_or_else(|| "off".to_string(), |v| v.to_string()),
            if self.pass { "PASS" } else { "FAIL" }
        )
    }
}

/// Run one check; setup or traffic errors become a FAIL with a `# error:` note.
pub fn run_combo(cfg: &Config, combo: Combo) -> Outcome {
    let mut out = Outcome {
        combo,
        driven: 0,
        proc_delta: 0,
        agent: 0,
        ebpf: None,
        pass: false,
        notes: Vec::new(),
    };
    if let Err(e) = execute(cfg, combo, &mut out) {
        out.pass = false;
        out.notes.push(format!("error: {e:#}"));
    }
    out
}

struct Ctx<'a> {
    topo: &'a Topology,
    server: &'a TcpServer,
    combo: Combo,
    src: IpAddr,
    dst: IpAddr,
    rng: XorShift,
    used_ports: HashSet<u16>,
    /// Real connections stay open until the check ends: closing them is traffic too.
    held: Vec<TcpStream>,
    v6_checksum: V6Checksum,
}

impl Ctx<'_> {
    fn port(&mut self) -> u16 {
        loop {
            let p = self.rng.port();
            if self.used_ports.insert(p) {
                return p;
            }
        }
    }

    fn sender(&self) -> Result<RawSender> {
        RawSender::new(&self.topo.cli, self.src, self.v6_checksum)
    }

    fn seg(&self, sport: u16, seq: u32, ack: u32, flags: u8) -> TcpSegment {
        TcpSegment::to_protected(sport, seq, ack, flags)
    }

    fn counter_now(&self, name: &str) -> Result<u64> {
        Ok(proc_counters::read(&self.topo.srv)?.get(name))
    }

    fn wait_counter(&self, name: &str, at_least: u64) -> Result<()> {
        self.wait_counter_for(name, at_least, PACKET_TIMEOUT)
    }

    fn wait_counter_for(&self, name: &str, at_least: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.counter_now(name)?;
            if v >= at_least {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} stayed at {v}, expected >= {at_least}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn execute(cfg: &Config, combo: Combo, out: &mut Outcome) -> Result<()> {
    let tools = &cfg.tools;
    let topo = Topology::create(tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let mut srv_rules =
        ServerRules::install(tools, &topo.srv, combo.rules, combo.family, &topo.srv_if)
            .context("SYNPROXY rules in the server netns")?;
    let _cli_rules = rules::install_client_rst_filter(tools, &topo.cli, combo.rules, combo.family)
        .context("RST filter in the client netns")?;
    let mode = match combo.counter {
        Counter::ConnReopened => ServerMode::Reset,
        _ => ServerMode::Hold,
    };
    let server = TcpServer::start(&topo.srv, PROTECTED_PORT, mode).context("TCP server")?;
    let (src, dst): (IpAddr, IpAddr) = match combo.family {
        Family::Ipv4 => (topo.cli4.into(), topo.srv4.into()),
        Family::Ipv6 => (topo.cli6.into(), topo.srv6.into()),
    };
    let t0 = Instant::now();
    traffic::wait_reachable(&topo.cli, SocketAddr::new(dst, PROBE_PORT), PACKET_TIMEOUT)?;
    debug(|| format!("reachable after {:?}", t0.elapsed()));
    if combo.counter == Counter::CookieRetrans {
        srv_rules
            .drop_local_server_syn(tools)
            .context("rule dropping synproxy's SYN to the local server")?;
    }

    let name = combo.counter.name();
    let mut ctx = Ctx {
        topo: &topo,
        server: &server,
        combo,
        src,
        dst,
        rng: XorShift::from_time(),
        used_ports: HashSet::new(),
        held: Vec::new(),
        v6_checksum: V6Checksum::Correct,
    };
    if combo.sends_crafted_packets() {
        ctx.v6_checksum =
            probe_v6_checksum(&mut ctx).context("probing crafted-packet checksums")?;
    }
    // The agent with eBPF runs across the traffic: attached before, sampled after.
    let live = if cfg.ebpf.enabled() {
        Some(
            LiveAgent::start(&cfg.agent, &topo.srv, &cfg.extra_agent_args)
                .context("agent with eBPF")?,
        )
    } else {
        None
    };
    // Counted from here: the probe's SYN is outside the window.
    let before = proc_counters::read(&topo.srv)?;
    out.driven = u64::from(cfg.count);
    let t0 = Instant::now();
    drive(&mut ctx, cfg.count).with_context(|| format!("driving {name}"))?;
    debug(|| format!("driven in {:?}", t0.elapsed()));
    let after = settle(&topo, name, before.get(name) + out.driven)?;
    out.proc_delta = after.get(name).saturating_sub(before.get(name));
    if out.proc_delta != out.driven {
        out.notes
            .push(format!("/proc before {:?}, after {:?}", before.0, after.0));
    }
    let measured = Matrix {
        counter: name,
        driven: out.driven,
        proc_delta: out.proc_delta,
        agents: read_agents(cfg, &topo, name)?,
        ebpf: match live {
            Some(live) => Some(read_ebpf(live, &topo, name, cfg.exit_limit())?),
            None => None,
        },
    };
    let verdict = matrix_judge::judge(&measured);
    out.agent = measured.agent();
    out.ebpf = measured.ebpf.as_ref().map(|e| e.count);
    out.pass = verdict.pass();
    out.notes.splice(0..0, verdict.failed);
    if let Some(e) = measured.ebpf.as_ref().filter(|_| !out.pass) {
        out.notes
            .push(format!("eBPF agent stderr: {}", e.stderr.join(" | ")));
    }
    drop(ctx);
    Ok(())
}

/// Runs the agent the configured way(s), each value beside the /proc total
/// read right after it ran (traffic is idle by now).
fn read_agents(cfg: &Config, topo: &Topology, name: &str) -> Result<Vec<AgentReading>> {
    let mut readings = Vec::new();
    if matches!(cfg.agent_mode, AgentMode::Inside | AgentMode::Both) {
        let line = agent::run_inside(&topo.srv, &cfg.agent, &cfg.extra_agent_args)?;
        let proc_total = proc_counters::read(&topo.srv)?.get(name);
        readings.push(AgentReading {
            how: "inside netns".into(),
            value: line.counter(name).context("agent (inside netns) output")?,
            proc_total,
        });
    }
    if matches!(cfg.agent_mode, AgentMode::NetnsFlag | AgentMode::Both) {
        let line = agent::run_with_netns_flag(&topo.srv, &cfg.agent, &cfg.extra_agent_args)?;
        let proc_total = proc_counters::read(&topo.srv)?.get(name);
        readings.push(AgentReading {
            how: format!("--netns {}", topo.srv.name()),
            value: line.counter(name).context("agent --netns output")?,
            proc_total,
        });
    }
    Ok(readings)
}

/// The live agent's eBPF count of `name` in the server netns, its probes,
/// and how it stopped on stdin EOF.
fn read_ebpf(
    mut live: LiveAgent,
    topo: &Topology,
    name: &str,
    exit_limit: std::time::Duration,
) -> Result<EbpfReading> {
    let lines = live.sample()?;
    let stopped = live.stop(None)?;
    let (count, view) = live_agent::ebpf_count(&lines, topo.srv.name(), name)?;
    let (missed, attached) = live_agent::probe_misses(&lines)?;
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    Ok(EbpfReading {
        count,
        probes: Probes {
            missed,
            attached,
            probe_misses: view.misses,
            statuses: view.statuses,
        },
        exit: Exit::of(&stopped, left, Some(exit_limit)),
        stderr: stopped.stderr,
    })
}

/// Progress on stderr when SPX_DEBUG is set (timing in slow guests).
fn debug(msg: impl FnOnce() -> String) {
    if std::env::var_os("SPX_DEBUG").is_some() {
        eprintln!("# debug: {}", msg());
    }
}

/// Wait until `name` reaches `target`, then until all counters stop moving.
fn settle(topo: &Topology, name: &str, target: u64) -> Result<Totals> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = proc_counters::read(&topo.srv)?;
    while last.get(name) < target && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        last = proc_counters::read(&topo.srv)?;
    }
    // A short quiet period catches overshoot (a counter moving more than driven).
    loop {
        std::thread::sleep(Duration::from_millis(30));
        let now = proc_counters::read(&topo.srv)?;
        if now == last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// The first checksum mode whose crafted SYN moves syn_received (only one
/// candidate: no probe).
fn probe_v6_checksum(ctx: &mut Ctx) -> Result<V6Checksum> {
    let candidates = ctx.combo.v6_checksum_candidates();
    if let [only] = candidates {
        return Ok(*only);
    }
    for &mode in candidates {
        ctx.v6_checksum = mode;
        let before = ctx.counter_now("syn_received")?;
        let (sport, isn) = (ctx.port(), ctx.rng.next_u32());
        ctx.sender()?.send(ctx.dst, &ctx.seg(sport, isn, 0, SYN))?;
        if ctx
            .wait_counter_for("syn_received", before + 1, PROBE_TIMEOUT)
            .is_ok()
        {
            debug(|| format!("crafted IPv6 packets counted with {mode:?} checksums"));
            settle(ctx.topo, "syn_received", before + 1)?;
            return Ok(mode);
        }
    }
    bail!("no crafted IPv6 SYN reached SYNPROXY with any of {candidates:?} checksums")
}

/// One traffic recipe per counter (each arm says how it works). Each moves its
/// counter by exactly `n`.
fn drive(ctx: &mut Ctx, n: u32) -> Result<()> {
    match ctx.combo.counter {
        Counter::SynReceived => {
            // Pure SYNs: xt and nft count them one to one.
            let mut tx = ctx.sender()?;
            for _ in 0..n {
                let (sport, isn) = (ctx.port(), ctx.rng.next_u32());
                tx.send(ctx.dst, &ctx.seg(sport, isn, 0, SYN))?;
            }
        }
        Counter::CookieValid => {
            // Real handshakes through SYNPROXY; the accept proves the ACK was seen.
            let base = ctx.server.accepted();
            for _ in 0..n {
                let s = traffic::connect(
                    &ctx.topo.cli,
                    SocketAddr::new(ctx.dst, PROTECTED_PORT),
                    PACKET_TIMEOUT,
                )?;
                ctx.held.push(s);
            }
            // On 6.18 the server rejects SYNPROXY's first ACK (TSecr mismatch,
            // TcpExt TSEcrRejected) and completes after its SYN/ACK retransmit: ~1 s.
            ctx.server
                .wait_accepted(base + u64::from(n), PACKET_TIMEOUT)?;
        }
        Counter::CookieInvalid => {
            // Bare ACKs with a random ack number: no conntrack entry (loose=0), so
            // INVALID -> SYNPROXY -> cookie check fails.
            let mut tx = ctx.sender()?;
            for _ in 0..n {
                let (sport, seq, ack) = (ctx.port(), ctx.rng.next_u32(), ctx.rng.next_u32());
                tx.send(ctx.dst, &ctx.seg(sport, seq, ack, ACK))?;
            }
        }
        Counter::CookieRetrans => drive_cookie_retrans(ctx, n)?,
        Counter::ConnReopened => drive_conn_reopened(ctx, n)?,
    }
    Ok(())
}

/// SYN, ACK(ISN+1, c+1) -> entry in SYN_SENT (the SYN to the local server is
/// dropped), then a keep-alive style ACK(ISN, c+1) -> cookie_retrans +1.
fn drive_cookie_retrans(ctx: &mut Ctx, n: u32) -> Result<()> {
    let mut tx = ctx.sender()?;
    for i in 0..n {
        let (sport, isn) = (ctx.port(), ctx.rng.next_u32());
        let rx = RawReceiver::new(&ctx.topo.cli, ctx.src.is_ipv6())?;
        tx.send(ctx.dst, &ctx.seg(sport, isn, 0, SYN))?;
        let cookie = rx
            .wait_for(PROTECTED_PORT, sport, SYN | ACK, PACKET_TIMEOUT)
            .with_context(|| format!("SYN/ACK for flow {i}"))?
            .seq;
        let valid = ctx.counter_now("cookie_valid")?;
        let ack = cookie.wrapping_add(1);
        tx.send(ctx.dst, &ctx.seg(sport, isn.wrapping_add(1), ack, ACK))?;
        // The entry must exist (SYN_SENT) before the retransmission-like ACK.
        ctx.wait_counter("cookie_valid", valid + 1)?;
        tx.send(ctx.dst, &ctx.seg(sport, isn, ack, ACK))?;
        ctx.wait_counter("cookie_valid", valid + 2)?;
    }
    Ok(())
}

/// Handshake, server aborts (RST: entry in CLOSE for 10 s), then from the same
/// source port SYN with isn2 = isn1 + 2^30 and the ACK the cookie's linearity in
/// the client ISN predicts -> synproxy's SYN to the server reopens the entry.
fn drive_conn_reopened(ctx: &mut Ctx, n: u32) -> Result<()> {
    const SHIFT: u32 = 1 << 30;
    let mut tx = ctx.sender()?;
    for i in 0..n {
        let (sport, isn1) = (ctx.port(), ctx.rng.next_u32());
        let accepted = ctx.server.accepted();
        let rx = RawReceiver::new(&ctx.topo.cli, ctx.src.is_ipv6())?;
        tx.send(ctx.dst, &ctx.seg(sport, isn1, 0, SYN))?;
        let c1 = rx
            .wait_for(PROTECTED_PORT, sport, SYN | ACK, PACKET_TIMEOUT)
            .with_context(|| format!("first SYN/ACK of flow {i}"))?
            .seq;
        tx.send(
            ctx.dst,
            &ctx.seg(sport, isn1.wrapping_add(1), c1.wrapping_add(1), ACK),
        )?;
        ctx.server.wait_accepted(accepted + 1, PACKET_TIMEOUT)?;
        rx.wait_for(PROTECTED_PORT, sport, RST, PACKET_TIMEOUT)
            .with_context(|| format!("server RST of flow {i}"))?;
        let isn2 = isn1.wrapping_add(SHIFT);
        tx.send(ctx.dst, &ctx.seg(sport, isn2, 0, SYN))?;
        rx.wait_for(PROTECTED_PORT, sport, SYN | ACK, PACKET_TIMEOUT)
            .with_context(|| format!("second SYN/ACK of flow {i}"))?;
        let valid = ctx.counter_now("cookie_valid")?;
        let ack2 = c1.wrapping_add(SHIFT).wrapping_add(1);
        tx.send(ctx.dst, &ctx.seg(sport, isn2.wrapping_add(1), ack2, ACK))?;
        // The reopened connection need not complete towards the server; the
        // valid cookie (same code path as the reopen) is the sync point.
        ctx.wait_counter("cookie_valid", valid + 1)?;
    }
    Ok(())
}
