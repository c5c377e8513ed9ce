//! `cargo xtask bench`: the criterion benchmark of the per-interval path, then
//! the agent's steady-state memory in proc-only interval mode; or, with
//! `--compare`, the agent's cost per round beside a bare reader and collectd,
//! and with `--netns all` at scale ([`compare`]).

pub mod compare;

use crate::cargo::{cargo, workspace_root};
use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Target from the foundation issue.
const RSS_TARGET_KIB: u64 = 10 * 1024;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Skip the criterion run; only measure the agent's memory.
    #[arg(long)]
    pub rss_only: bool,
    /// How long the agent runs (at a 100ms interval) before memory is read.
    #[arg(long, default_value_t = 10)]
    pub rss_seconds: u64,
    /// The agent beside a bare C reader and collectd's synproxy plugin, all
    /// on the real /proc/net/stat/synproxy every 100 ms, then `--netns all`
    /// over namespaces the bench creates (needs root).
    #[arg(long)]
    pub compare: bool,
    /// --compare: seconds of the side-by-side run (each scale run: a third).
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// --compare: namespace counts for the `--netns all` runs (0 for none).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub netns_sizes: Vec<usize>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.compare {
        return compare::run(&compare::CompareArgs {
            secs: args.secs,
            netns_sizes: args.netns_sizes,
        })
        .map(|_| ());
    }
    if !args.rss_only {
        cargo(&[
            "bench",
            "--package",
            "synproxy-user",
            "--bench",
            "parse_encode",
        ])?;
    }
    cargo(&["build", "--release", "--package", "synproxy-user"])?;
    let agent = workspace_root().join("target/release/synproxy-agent");
    let mut child = Command::new(&agent)
        .args(["--interval", "100ms", "--no-ebpf"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))?;
    std::thread::sleep(Duration::from_secs(args.rss_seconds));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let status = status.context("reading the agent's /proc/PID/status")?;
    let rss = status_kib(&status, "VmRSS:").context("no VmRSS in /proc/PID/status")?;
    let hwm = status_kib(&status, "VmHWM:").context("no VmHWM in /proc/PID/status")?;
    println!(
        "agent RSS after {}s at --interval 100ms --no-ebpf: {:.2} MiB (peak {:.2} MiB, target <= {} MiB)",
        args.rss_seconds,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        RSS_TARGET_KIB / 1024
    );
    if hwm > RSS_TARGET_KIB {
        bail!("agent peak RSS {hwm} KiB is over the {RSS_TARGET_KIB} KiB target");
    }
    Ok(())
}

/// A `kB` value of `/proc/PID/status`.
pub(crate) fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
