//! The `non-root` check (VM suite): the agent with eBPF and `--netns NAME`,
//! run as uid/gid 65534 with exactly the capability table's (docs/operations.md) capabilities for
//! that ("eBPF `--netns NAME`": CAP_BPF, CAP_PERFMON, CAP_DAC_OVERRIDE,
//! CAP_SYS_ADMIN) as ambient capabilities (synproxy-scenario's own
//! `--caps-exec` helper: the guest has no setpriv). Its probes must attach,
//! its sets after start-up must be the table's on every thread (bounding set
//! too, no_new_privs), its eBPF counts must equal /proc after a burst of
//! crafted SYNs and bad ACKs, its totals must equal a root agent's and the
//! kernel's, and on SIGTERM it must exit 0 leaving nothing in the kernel
//! (removing its kprobe events after the drop needs CAP_DAC_OVERRIDE).

use crate::burst_judge::{Burst, Exit};
use crate::caps::{self, CAP_BPF, CAP_DAC_OVERRIDE, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_RESOURCE};
use crate::check::{Check, Judged};
use crate::live_agent::{self, Launch, LiveAgent};
use crate::netns::Topology;
use crate::non_root_judge::{self, NonRoot};
use crate::packet::{TcpSegment, V6Checksum, ACK, SYN};
use crate::proc_counters;
use crate::protected_server::ProtectedServer;
use crate::rng::XorShift;
use crate::scenario::Config;
use crate::traffic::{RawSender, ServerMode};
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use synproxy_common::STAT_COLUMNS;

const SYNS: u32 = 2_000;
const ACKS: u32 = 500;
/// The capability table's row "eBPF `--netns NAME`".
const CAPS: [u32; 4] = [CAP_BPF, CAP_PERFMON, CAP_DAC_OVERRIDE, CAP_SYS_ADMIN];
/// The rows "eBPF `--probes fentry`" and "`--no-ebpf --netns NAME`" together:
/// no tracefs (no CAP_DAC_OVERRIDE), CAP_SYS_ADMIN for the module BTF.
const FENTRY_CAPS: [u32; 3] = [CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN];

/// The table's capabilities for this run: the fentry row where the agent
/// will use fentry (`--probes fentry` on a kernel with module BTF).
fn table_caps(cfg: &Config) -> Vec<u32> {
    if cfg.fentry && live_agent::expected_probe_type() == "fentry" {
        FENTRY_CAPS.to_vec()
    } else {
        CAPS.to_vec()
    }
}

/// What the agent is started with: the table's row, plus, on kernels that
/// charge BPF maps to RLIMIT_MEMLOCK (before 5.11), CAP_SYS_RESOURCE, which
/// the table lists as used at start-up only (to raise the limit).
fn given_caps(cfg: &Config, kernel: &str) -> Vec<u32> {
    let mut given = table_caps(cfg);
    let mut parts = kernel
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < (5, 11) {
        given.push(CAP_SYS_RESOURCE);
    }
    given
}

pub fn non_root(cfg: &Config, kernel: &str) -> Check {
    let given = given_caps(cfg, kernel);
    let head = non_root_judge::head(kernel, caps::mask(&given));
    Check::or_failed(head.head(), run(cfg, kernel, &given))
}

/// Polls until /proc of `topo.srv` stops moving (60 s at most).
fn settled(topo: &Topology) -> Result<proc_counters::Totals> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = proc_counters::read(&topo.srv)?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = proc_counters::read(&topo.srv)?;
        if now == last {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!(
                "timeout waiting for /proc of {} to settle (60s)",
                topo.srv.name()
            );
        }
        last = now;
    }
}

fn run(cfg: &Config, kernel: &str, given: &[u32]) -> Result<Check> {
    let setup = ProtectedServer::xt_ipv4(cfg, ServerMode::Hold)?;
    let topo = &setup.topo;
    let (src, dst): (IpAddr, IpAddr) = (topo.cli4.into(), topo.srv4.into());
    let helper = std::env::current_exe().context("path of synproxy-scenario")?;
    let launch = Launch::Caps {
        helper,
        caps: caps::names(caps::mask(given)),
    };
    // Waits for the attach and one round.
    let mut live =
        LiveAgent::start_with(&cfg.agent, &topo.srv, &cfg.extra_agent_args, &launch, true)
            .context("agent with eBPF as uid 65534")?;
    let mut wrong_caps = Vec::new();
    let kept = caps::mask(&table_caps(cfg));
    // Without CAP_SETPCAP the agent cannot shrink its bounding set.
    let bounding = caps::mask(given);
    let check_caps = |live: &LiveAgent, when: &str, wrong_caps: &mut Vec<String>| -> Result<()> {
        let threads = caps::process_caps(live.pid())?;
        let wrong = caps::check_threads(&threads, kept, bounding);
        if !wrong.is_empty() {
            wrong_caps.push(format!("{when}: {}", wrong.join("; ")));
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", live.pid()))?;
        let uid_ok = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|v| v.split_whitespace().all(|u| u == "65534"));
        if !uid_ok {
            wrong_caps.push(format!("{when}: the agent does not run as uid 65534"));
        }
        Ok(())
    };
    check_caps(&live, "after start-up", &mut wrong_caps)?;
    let cap_eff = caps::process_caps(live.pid())?
        .first()
        .map_or(0, |(_, t)| t.effective);

    let before = proc_counters::read(&topo.srv)?;
    let mut tx = RawSender::new(&topo.cli, src, V6Checksum::Correct)?;
    let mut rng = XorShift::from_time();
    let seg = TcpSegment::to_protected;
    for i in 0..SYNS {
        tx.send(dst, &seg(1024 + i as u16, rng.next_u32(), 0, SYN))?;
    }
    for i in 0..ACKS {
        tx.send(
            dst,
            &seg(1024 + i as u16, rng.next_u32(), rng.next_u32(), ACK),
        )?;
    }
    let last = settled(topo)?;
    let lines = live.sample()?;
    check_caps(&live, "after traffic", &mut wrong_caps)?;
    let srv = topo.srv.name();
    let burst = Burst::read(&lines, srv, (SYNS, ACKS), &before, &last)?;
    // Totals: the non-root agent's, a root agent's (`--once --no-ebpf`) and
    // the kernel's, all counters.
    let line = lines
        .iter()
        .find(|l| {
            l.measurement == "synproxy" && l.tags.get("netns").map(String::as_str) == Some(srv)
        })
        .context("no synproxy line for the server namespace")?;
    let root = crate::agent::run_with_netns_flag(&topo.srv, &cfg.agent, &[])
        .context("root agent --once --no-ebpf --netns")?;
    let kernel_totals = proc_counters::read(&topo.srv)?;
    let mut totals = Vec::new();
    for name in STAT_COLUMNS {
        totals.push((
            name,
            line.counter(name)?,
            root.counter(name)?,
            kernel_totals.get(name),
        ));
    }
    let stopped = live.stop(Some(libc::SIGTERM))?;
    let left = live_agent::wait_clean(&stopped, Duration::from_secs(2))?;
    let measured = NonRoot {
        given: caps::mask(given),
        probe: cfg.probe_type(live_agent::probe_type(&lines).as_deref()),
        wrong_caps,
        cap_eff,
        burst,
        totals,
        exit: Exit::of(&stopped, left, None),
    };
    let logged: Vec<&String> = stopped
        .stderr
        .iter()
        .filter(|l| l.contains("capabilities"))
        .collect();
    let mut notes = vec![format!("agent: {logged:?}")];
    let mut check = measured.check(kernel, Vec::new());
    if !check.pass {
        notes.push(format!("agent stderr: {}", stopped.stderr.join(" | ")));
    }
    check.notes.append(&mut notes);
    Ok(check)
}
