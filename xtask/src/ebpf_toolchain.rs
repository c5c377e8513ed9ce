//! The eBPF toolchain, provisioned on a fresh machine (and so in CI):
//! rustup's nightly with rust-src (`-Z build-std=core` for bpfel-unknown-none)
//! and bpf-linker 0.13.0 built against the Debian LLVM whose major version equals
//! the nightly's. `cargo xtask setup-ebpf` runs it alone; `run`, `test` and
//! `vm-test` run it before building the agent (which embeds the eBPF object).

use crate::vm::host::{run_captured, run_inherited, Apt};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

pub const TOOLCHAIN: &str = "nightly";
pub const BPF_LINKER_VERSION: &str = "0.13.0";

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn rustup() -> Command {
    Command::new("rustup")
}

/// LLVM major version of the nightly (`rustc -vV`: `LLVM version: 22.1.4`).
fn nightly_llvm_major() -> Result<u32> {
    let out = run_captured(rustup().args(["run", TOOLCHAIN, "rustc", "-vV"]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no LLVM version in `rustc +{TOOLCHAIN} -vV`: {text}"))
}

/// Features bpf-linker was installed with, from cargo's install record.
fn installed_bpf_linker_features() -> Option<Vec<String>> {
    let text = std::fs::read_to_string(cargo_home().join(".crates2.json")).ok()?;
    // {"installs":{"bpf-linker 0.13.0 (registry+...)":{..."features":["llvm-22"],...}}}
    let start = text.find(&format!("\"bpf-linker {BPF_LINKER_VERSION} "))?;
    let rest = &text[start..];
    let features = rest.find("\"features\":[")? + "\"features\":[".len();
    let end = rest[features..].find(']')? + features;
    Some(
        rest[features..end]
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .filter(|f| !f.is_empty())
            .collect(),
    )
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
        .unwrap_or(false)
}

/// Installs whatever is missing; quick when everything is there.
pub fn ensure() -> Result<()> {
    if Command::new("rustup").arg("--version").output().is_err() {
        bail!("rustup not found: the eBPF build needs rustup (https://rustup.rs) for the {TOOLCHAIN} toolchain");
    }
    let has_nightly = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_nightly {
        println!(
            "xtask: rustup toolchain install {TOOLCHAIN} --profile minimal --component rust-src"
        );
        run_inherited(rustup().args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    if !nightly_has_rust_src() {
        println!("xtask: rustup component add rust-src --toolchain {TOOLCHAIN}");
        run_inherited(rustup().args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN]))?;
    }
    let llvm = nightly_llvm_major()?;
    let feature = format!("llvm-{llvm}");
    let linker = cargo_home().join("bin/bpf-linker");
    let version_ok = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    let features_ok = installed_bpf_linker_features().is_some_and(|f| f.contains(&feature));
    if version_ok && features_ok {
        return Ok(());
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    let packages = [
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".to_string(),
    ];
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    Apt::default()
        .ensure_installed(&packages)
        .with_context(|| {
            format!("installing LLVM {llvm} for bpf-linker (the nightly uses LLVM {llvm})")
        })?;
    println!(
        "xtask: LLVM_PREFIX={prefix} cargo install bpf-linker --version {BPF_LINKER_VERSION} --locked --no-default-features --features {feature} (3-4 min)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_inherited(
        Command::new(cargo)
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &feature,
            ]),
    )?;
    Ok(())
}
