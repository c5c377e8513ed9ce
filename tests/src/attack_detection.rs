//! The `attack-detection` check (xt, IPv4, eBPF): the agent with its attack
//! detector and a hook on a server namespace whose ports 8080 and 8081
//! SYNPROXY protects, at TCG speed (sizes below; the judge is in
//! `attack_detection_judge`):
//!
//! 1. Benign SYNs from eight addresses to both ports swinging tenfold (15/s
//!    and 150/s, 1.5 s each): the warm-up (6 s) learns the swing, and the
//!    next 4.5 s of it raise no event.
//! 2. A spoofed flood (2,000/s from four addresses, 3 s) to 8080: an event
//!    for port 8080 and one for the namespace start within 1 s of the onset,
//!    the port's start names the four addresses among its top sources, both
//!    end within 3.5 s of the last packet (release 2 s); the hook gets the
//!    port event's start and end documents.
//! 3. Two floods, to 8080 and, 1.5 s later, to 8081 (3 s each): two port
//!    events with their own ids, starts and ends.
//! 4. A flood of 9 s to 8080, the agent stopped (SIGTERM) after the start
//!    and started again on the same state directory: the second agent goes
//!    on with the same event and ends it, without a start of its own.

use crate::attack_detection_judge::{of_port, AttackDetection, Flood};
use crate::attack_judge::{judge_flood, judge_quiet, judge_restart, AttackLine, Expect};
use crate::attack_watch::AttackWatch;
use crate::check::{Check, Judged, ResultLine};
use crate::netns::Topology;
use crate::packet::{TcpSegment, V6Checksum, SYN};
use crate::rng::XorShift;
use crate::rules::{self, Family, Flavour, ServerRules};
use crate::scenario::Config;
use crate::top_sources::{server_default_routes, timed};
use crate::traffic::RawSender;
use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PORTS: [u16; 2] = [8080, 8081];
const FLOOD_RATE: u32 = 2000;
/// A start within this of the onset, an end within this of the last packet.
const START_LIMIT: Duration = Duration::from_secs(1);
const END_LIMIT: Duration = Duration::from_millis(3500);
const EVENT_WAIT: Duration = Duration::from_secs(60);

fn agent_args(state: &Path) -> Vec<String> {
    let hook = format!("{} {}", state.join("hook.sh").display(), state.display());
    [
        "--interval",
        "2s",
        "--top",
        "5",
        "--attack-warmup",
        "6s",
        "--attack-bucket",
        "1s",
        "--attack-floor",
        "100",
        "--attack-release",
        "2s",
        "--no-verdict",
        "--state-dir",
        &state.display().to_string(),
        "--on-attack",
        &hook,
    ]
    .map(String::from)
    .to_vec()
}

pub fn attack_detection(cfg: &Config, kernel: &str) -> Check {
    let probes = if cfg.fentry { "fentry" } else { "kprobe" };
    let head = ResultLine::new(kernel, "attack-detection").field("probes", probes);
    timed(head.head(), |_| run(cfg, kernel, probes))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The state directory with the hook, removed at the end.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("attack-detection-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let hook = dir.join("hook.sh");
        // Each run keeps its document in a file of its own (no command
        // but the shell's and cat: the guest has few).
        std::fs::write(&hook, "#!/bin/sh\ncat > \"$1/doc.$$.json\"\n")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(dir))
    }

    /// The hook's documents: (phase, id) each.
    fn docs(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.0)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.starts_with("doc.") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            // A hook still writing its document: read at the next look.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
                continue;
            };
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            out.push((s("phase"), s("id")));
        }
        Ok(out)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Paced SYNs to `ports` (in turn) from `sources` (in turn) at `per_sec`.
fn paced(
    tx: &mut RawSender,
    dst: IpAddr,
    ports: &[u16],
    sources: &[Ipv4Addr],
    per_sec: u32,
    secs: f64,
) -> Result<()> {
    let mut rng = XorShift::from_time();
    let total = (f64::from(per_sec) * secs) as u32;
    let start = Instant::now();
    for i in 0..total {
        let due = Duration::from_secs_f64(f64::from(i) / f64::from(per_sec.max(1)));
        while let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait.min(Duration::from_millis(10)));
        }
        let port = ports[i as usize % ports.len()];
        let src = sources[i as usize % sources.len()];
        let seg = TcpSegment::to_port(port, rng.port(), rng.next_u32(), 0, SYN);
        tx.send_from(src.into(), dst, &seg)?;
    }
    Ok(())
}

fn addrs(third: u8, n: u8) -> Vec<Ipv4Addr> {
    (1..=n).map(|i| Ipv4Addr::new(100, 64, third, i)).collect()
}

fn expect<'a>(port: &'a str, sources: &'a [String]) -> Expect<'a> {
    Expect {
        kind: "syn_flood",
        port,
        start_within_ns: START_LIMIT.as_nanos() as u64,
        end_within_ns: END_LIMIT.as_nanos() as u64,
        sources,
    }
}

/// Waits until every port of `ports` has an end line.
fn ends(watch: &mut AttackWatch, ports: &[&str]) -> Result<()> {
    watch.until("the floods' end lines", EVENT_WAIT, |w| {
        ports
            .iter()
            .all(|p| w.lines.iter().any(|l| l.port == *p && l.phase == "end"))
    })
}

fn run(cfg: &Config, kernel: &str, probes: &str) -> Result<Check> {
    let tools = &cfg.tools;
    let topo = Topology::create(tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let mut rule_sets = Vec::new();
    for port in PORTS {
        rule_sets.push(
            ServerRules::install_on_port(
                tools,
                &topo.srv,
                Flavour::Xt,
                Family::Ipv4,
                &topo.srv_if,
                port,
            )
            .with_context(|| format!("SYNPROXY rules for port {port}"))?,
        );
    }
    let _cli_rules = rules::install_client_rst_filter(tools, &topo.cli, Flavour::Xt, Family::Ipv4)
        .context("RST filter")?;
    server_default_routes(cfg, &topo)?;
    let dst: IpAddr = topo.srv4.into();
    let mut tx = RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)?;
    let mut rng = XorShift::from_time();
    crate::top_ports::reach(&topo, &mut tx, dst, PORTS[0], &mut rng).context("the first SYN")?;
    let state = StateDir::new()?;
    let mut args = cfg.extra_agent_args.clone();
    args.extend(agent_args(&state.0));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let srv = topo.srv.name().to_string();
    let mut watch = AttackWatch::start(&cfg.agent, &srv, &args).context("the agent")?;

    // 1. Benign swings: learnt, then quiet.
    let benign = addrs(2, 8);
    for _ in 0..2 {
        paced(&mut tx, dst, &PORTS, &benign, 15, 1.5)?;
        paced(&mut tx, dst, &PORTS, &benign, 150, 1.5)?;
    }
    paced(&mut tx, dst, &PORTS, &benign, 15, 1.5)?;
    paced(&mut tx, dst, &PORTS, &benign, 150, 1.5)?;
    paced(&mut tx, dst, &PORTS, &benign, 15, 1.5)?;
    watch.rounds_more(1)?;
    let quiet = judge_quiet(&watch.lines);
    watch.lines.clear();

    // 2. One flood to 8080 from four addresses.
    let flooders = addrs(1, 4);
    let names: Vec<String> = flooders.iter().map(Ipv4Addr::to_string).collect();
    let onset = now_ns();
    paced(&mut tx, dst, &PORTS[..1], &flooders, FLOOD_RATE, 3.0)?;
    let stop = now_ns();
    ends(&mut watch, &["8080", "all"])?;
    let single_lines = watch.lines.clone();
    let single = vec![
        Flood {
            what: "one flood, port 8080".into(),
            result: judge_flood(
                &of_port(&single_lines, "8080"),
                onset,
                stop,
                &expect("8080", &names),
            ),
        },
        Flood {
            what: "one flood, the namespace".into(),
            result: judge_flood(
                &of_port(&single_lines, "all"),
                onset,
                stop,
                &expect("all", &[]),
            ),
        },
    ];
    let hook_id = single_lines
        .iter()
        .find(|l| l.port == "8080" && l.phase == "start")
        .map(|l| l.id.clone());
    watch.lines.clear();

    // 3. Two floods on two ports, the second 1.5 s after the first.
    let (onsets, stops) = two_floods(&topo, dst, &flooders)?;
    ends(&mut watch, &["8080", "8081"])?;
    let two_lines = watch.lines.clone();
    let two_ports: Vec<Flood> = PORTS
        .iter()
        .zip(onsets.iter().zip(&stops))
        .map(|(port, (on, off))| {
            let port = port.to_string();
            Flood {
                what: format!("two floods, port {port}"),
                result: judge_flood(&of_port(&two_lines, &port), *on, *off, &expect(&port, &[])),
            }
        })
        .collect();
    let ids: Vec<&String> = two_lines
        .iter()
        .filter(|l| l.phase == "start" && l.port != "all")
        .map(|l| &l.id)
        .collect();
    let distinct = ids.len() == 2 && ids[0] != ids[1];
    // The hook runs are done once the ends are logged; give the last one a moment.
    let hook_docs = wait_docs(&state, hook_id.as_deref())?;
    watch.lines.clear();

    // 4. A restart during a flood.
    let restart = restart(cfg, watch, &topo, dst, &flooders, &args)?;
    drop(rule_sets);
    let measured = AttackDetection {
        probes: probes.to_string(),
        quiet,
        single,
        two_ports,
        distinct,
        hook_docs,
        hook_id,
        restart,
        start_limit_ns: START_LIMIT.as_nanos() as u64,
        end_limit_ns: END_LIMIT.as_nanos() as u64,
    };
    let notes = single_lines
        .iter()
        .chain(&two_lines)
        .filter(|l| l.phase != "ongoing")
        .map(|l| {
            format!(
                "{} {} port {} id {} top_sources {}",
                l.phase, l.kind, l.port, l.id, l.top_sources
            )
        })
        .collect();
    Ok(measured.check(kernel, notes))
}

/// Floods 8080 for 3 s and 8081 for 3 s from 1.5 s on, from two senders:
/// each port's (onset, last packet).
fn two_floods(topo: &Topology, dst: IpAddr, flooders: &[Ipv4Addr]) -> Result<([u64; 2], [u64; 2])> {
    std::thread::scope(|s| {
        let second = s.spawn(|| -> Result<(u64, u64)> {
            std::thread::sleep(Duration::from_millis(1500));
            let mut tx = RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)?;
            let on = now_ns();
            paced(&mut tx, dst, &PORTS[1..], flooders, FLOOD_RATE, 3.0)?;
            Ok((on, now_ns()))
        });
        let mut tx = RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)?;
        let on = now_ns();
        paced(&mut tx, dst, &PORTS[..1], flooders, FLOOD_RATE, 3.0)?;
        let first = (on, now_ns());
        let second = second
            .join()
            .map_err(|_| anyhow::anyhow!("the second flood's thread panicked"))??;
        Ok(([first.0, second.0], [first.1, second.1]))
    })
}

/// The hook's documents once both of `id`'s are there (or after 10 s).
fn wait_docs(state: &StateDir, id: Option<&str>) -> Result<Vec<(String, String)>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let docs = state.docs()?;
        let mine = docs.iter().filter(|(_, i)| Some(i.as_str()) == id).count();
        if mine >= 2 || Instant::now() > deadline {
            return Ok(docs);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 9 s flood to 8080; after its start the agent is stopped with SIGTERM
/// and started again on the same state directory.
fn restart(
    cfg: &Config,
    mut watch: AttackWatch,
    topo: &Topology,
    dst: IpAddr,
    flooders: &[Ipv4Addr],
    args: &[&str],
) -> Result<Result<String, String>> {
    std::thread::scope(|s| {
        let flood = s.spawn(|| -> Result<()> {
            let mut tx = RawSender::new(&topo.cli, topo.cli4.into(), V6Checksum::Correct)?;
            paced(&mut tx, dst, &PORTS[..1], flooders, FLOOD_RATE, 9.0)
        });
        watch.until("the restart flood's start", EVENT_WAIT, |w| {
            w.lines
                .iter()
                .any(|l| l.port == "8080" && l.phase == "start")
        })?;
        let first: Vec<AttackLine> = of_port(&watch.lines, "8080");
        // SIGTERM: the first agent writes its state as it stops.
        watch.terminate().context("stopping the first agent")?;
        let mut second =
            AttackWatch::start(&cfg.agent, topo.srv.name(), args).context("the second agent")?;
        flood
            .join()
            .map_err(|_| anyhow::anyhow!("the flood's thread panicked"))??;
        second.until("the restart flood's end", EVENT_WAIT, |w| {
            w.lines.iter().any(|l| l.port == "8080" && l.phase == "end")
        })?;
        let result = judge_restart(&first, &of_port(&second.lines, "8080"));
        second.terminate().context("stopping the second agent")?;
        Ok(result)
    })
}
