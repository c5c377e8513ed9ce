//! `cargo xtask run`: build the agent in release mode and run it as root,
//! printing line protocol on stdout until Ctrl-C.

use crate::cargo::{cargo, is_root, workspace_root};
use anyhow::{bail, Result};
use std::os::unix::process::CommandExt;
use std::process::Command;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Arguments for synproxy-agent (after `--`); default: `--interval 10s`.
    #[arg(last = true, value_name = "AGENT_ARGS")]
    pub agent_args: Vec<String>,
}

pub fn run(args: RunArgs) -> Result<()> {
    // The agent embeds its eBPF programs: nightly, rust-src and bpf-linker first.
    crate::ebpf_toolchain::ensure()?;
    cargo(&["build", "--release", "--package", "synproxy-user"])?;
    let agent = workspace_root().join("target/release/synproxy-agent");
    let agent_args = if args.agent_args.is_empty() {
        vec!["--interval".to_string(), "10s".to_string()]
    } else {
        args.agent_args
    };
    eprintln!("xtask run: {} {}", agent.display(), agent_args.join(" "));
    let mut command = if is_root() {
        Command::new(&agent)
    } else {
        // Reading other namespaces (and eBPF) needs root.
        let mut sudo = Command::new("sudo");
        sudo.arg("--preserve-env=HOST_PROC").arg(&agent);
        sudo
    };
    command.args(&agent_args);
    // Replace the xtask so signals and the exit code go straight to the agent.
    let error = command.exec();
    bail!("cannot start {}: {error}", agent.display())
}
