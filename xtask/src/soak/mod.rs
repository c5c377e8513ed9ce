//! `cargo xtask soak --minutes N`: the release agent under a long, hostile
//! load on the host kernel (namespace churn, SYNPROXY traffic, `/metrics`
//! scrapes every second, InfluxDB killed and restarted, signals), sampling
//! every 100 ms, with its RSS, descriptors, threads and warnings printed
//! every minute and judged flat or growing at the end.

mod churn;
mod figures;
mod http;
mod influxd;
mod session;
mod traffic;

// The tests crate's own helpers, compiled in here (std, anyhow and libc
// only); the soak reads no answer's head nor checks for the agent's name.
#[allow(dead_code)]
#[path = "../../../tests/src/http_client.rs"]
mod http_client;
#[path = "../../../tests/src/influxd_setup.rs"]
mod influxd_setup;
#[allow(dead_code)]
#[path = "../../../tests/src/proc_signals.rs"]
mod proc_signals;
#[path = "../../../tests/src/synproxy_xt.rs"]
mod synproxy_xt;

use crate::cargo::{cargo, is_root, workspace_root};
use crate::interrupt::interrupted;
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Length of the run, the first minute being the warm-up (at least 2).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=24 * 60))]
    pub minutes: u64,
    /// Soak this agent binary instead of building the release agent (for
    /// example an installed package's /usr/bin/synproxy-agent).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<std::path::PathBuf>,
}

pub fn run(args: SoakArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask soak needs root: it creates network namespaces and iptables rules");
    }
    for tool in ["ip", "unshare", "iptables", "sysctl", "influxd", "sleep"] {
        if !on_path(tool) {
            bail!("cargo xtask soak needs `{tool}` in PATH (influxd: apt-get install influxdb)");
        }
    }
    let agent = match args.agent {
        Some(agent) => {
            if !agent.is_file() {
                bail!("--agent {}: no such file", agent.display());
            }
            agent
        }
        None => {
            // The agent embeds its eBPF programs: nightly, rust-src and bpf-linker first.
            crate::ebpf_toolchain::ensure()?;
            cargo(&["build", "--release", "--package", "synproxy-user"])?;
            workspace_root().join("target/release/synproxy-agent")
        }
    };
    crate::interrupt::catch();
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("spx-soak-{pid}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let outcome = session::run(&agent, &dir, &format!("spx-soak-{pid}-"), args.minutes);
    println!("soak: logs kept in {}", dir.display());
    outcome
}

/// The flag that ends every loop of the soak.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst) || interrupted()
    }

    /// Sleeps `duration` in short steps; false if stopped meanwhile.
    pub fn sleep(&self, duration: Duration) -> bool {
        self.sleep_until(Instant::now() + duration)
    }

    pub fn sleep_until(&self, until: Instant) -> bool {
        loop {
            if self.is_set() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// Runs a tool to completion, failing with its stderr. In its own process
/// group: Ctrl-C reaches the xtask only, which then cleans up in order.
pub fn run_tool(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .with_context(|| format!("cannot start {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(prog).is_file()))
        .unwrap_or(false)
}
