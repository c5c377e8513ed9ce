//! `cargo xtask fuzz --secs N [--target T]`: the cargo-fuzz targets in `fuzz/`
//! (libFuzzer, nightly), one after the other, each for N seconds.
//!
//! New inputs go to a scratch corpus (`target/fuzz-corpus/<target>`); the
//! checked-in corpus (`fuzz/corpus/<target>`) is only read, so a smoke run
//! leaves the tree as it was. Crashes are written to `fuzz/artifacts/<target>/`,
//! where `cargo test` replays them (tests/tests/fuzz_corpus.rs) once checked in.
//! `--cmin` merges the scratch corpus into the checked-in one, minimized.

use crate::cargo::workspace_root;
use crate::cargo_tools::CARGO_FUZZ;
use crate::ebpf_toolchain::TOOLCHAIN;
use crate::vm::host::{run_captured, run_inherited};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "proc_stat",
    "proc_stack",
    "btf",
    "line_protocol",
    "influx_response",
];

/// The fuzzed code is safe Rust: no sanitizer (about twice the executions per
/// second of ASan); overflow checks and debug assertions stay on.
const SANITIZER: &str = "none";

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Only this target (repeatable); default: all.
    #[arg(long = "target", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
    /// libFuzzer worker processes per target (`-jobs`/`-workers`).
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Run the target once on this input (a crash reproducer) instead of fuzzing.
    #[arg(long, value_name = "FILE", requires = "targets")]
    pub reproduce: Option<PathBuf>,
    /// After fuzzing, merge the scratch corpus into fuzz/corpus, minimized (`cargo fuzz cmin`).
    #[arg(long)]
    pub cmin: bool,
}

/// One target's run, from libFuzzer's final statistics.
#[derive(Debug)]
pub struct RunStats {
    pub target: String,
    pub secs: f64,
    pub execs: u64,
    pub corpus_files: usize,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn ensure_nightly() -> Result<()> {
    let ok = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!("xtask: rustup toolchain install {TOOLCHAIN} --profile minimal");
        run_inherited(Command::new("rustup").args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
        ]))?;
    }
    Ok(())
}

/// `cargo +nightly fuzz <args>` in the workspace root. The targets use the
/// agent's pure parsers only: its eBPF object is not built (`AYA_BUILD_SKIP`).
fn cargo_fuzz() -> Command {
    let mut command = Command::new("cargo");
    command
        .arg(format!("+{TOOLCHAIN}"))
        .arg("fuzz")
        .current_dir(workspace_root())
        .env("AYA_BUILD_SKIP", "1")
        // The outer cargo's toolchain must not leak into the nightly build.
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    command
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        TARGETS
            .iter()
            .copied()
            .filter(|t| args.targets.iter().any(|a| a == t))
            .collect()
    };
    if let Some(input) = &args.reproduce {
        prepare()?;
        for target in &targets {
            println!("xtask: fuzz {target}: replaying {}", input.display());
            run_inherited(
                cargo_fuzz()
                    .args(["run", "-s", SANITIZER, target])
                    .arg(input)
                    .arg("--"),
            )?;
        }
        return Ok(());
    }
    let stats = fuzz(&targets, args.secs, args.jobs)?;
    for s in &stats {
        println!(
            "xtask: fuzz {}: {} executions in {:.0}s ({:.0}/s), corpus {} files, no crash",
            s.target,
            s.execs,
            s.secs,
            s.execs as f64 / s.secs.max(0.001),
            s.corpus_files
        );
    }
    if args.cmin {
        for target in &targets {
            merge_into_checked_in(target)?;
        }
    }
    Ok(())
}

/// Installs cargo-fuzz and the nightly, builds every target once.
fn prepare() -> Result<()> {
    ensure_nightly()?;
    CARGO_FUZZ.ensure()?;
    println!("xtask: cargo +{TOOLCHAIN} fuzz build -s {SANITIZER}");
    run_inherited(cargo_fuzz().args(["build", "-s", SANITIZER]))
}

/// Fuzzes each target for `secs` seconds; fails on the first crash, naming
/// the reproducer libFuzzer wrote.
pub fn fuzz(targets: &[&str], secs: u64, jobs: u32) -> Result<Vec<RunStats>> {
    prepare()?;
    let mut all = Vec::new();
    for target in targets {
        all.push(fuzz_one(target, secs, jobs)?);
    }
    Ok(all)
}

fn scratch_corpus(target: &str) -> PathBuf {
    workspace_root().join("target/fuzz-corpus").join(target)
}

fn fuzz_one(target: &str, secs: u64, jobs: u32) -> Result<RunStats> {
    let scratch = scratch_corpus(target);
    let checked_in = fuzz_dir().join("corpus").join(target);
    for dir in [&scratch, &checked_in] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let artifacts = fuzz_dir().join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    println!("xtask: fuzz {target} for {secs}s (jobs {jobs})");
    let started = Instant::now();
    let mut command = cargo_fuzz();
    command
        .args(["run", "-s", SANITIZER, target])
        .arg(&scratch)
        .arg(&checked_in)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        // A slow input is a bug too (the BTF reader follows nested members).
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048");
    if jobs > 1 {
        command
            .arg(format!("-jobs={jobs}"))
            .arg(format!("-workers={jobs}"));
    }
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cargo fuzz run {target} failed to start"))?;
    let mut execs = 0u64;
    let mut tail: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(n) = line
                .strip_prefix("stat::number_of_executed_units:")
                .and_then(|n| n.trim().parse::<u64>().ok())
            {
                execs += n;
            }
            // Progress lines are many; keep what explains a failure.
            if !line.starts_with('#') {
                println!("  [{target}] {line}");
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        let reproducers = files(&artifacts);
        bail!(
            "fuzz target {target} failed ({status}) after {secs:.0}s; reproducers in {}: {}\n{}",
            artifacts.display(),
            reproducers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            tail.join("\n")
        );
    }
    // With -jobs the workers' statistics are in fuzz-N.log, not on stderr.
    if execs == 0 && jobs <= 1 {
        bail!("fuzz target {target}: libFuzzer reported no executions");
    }
    Ok(RunStats {
        target: target.to_string(),
        secs,
        execs,
        corpus_files: files(&scratch).len() + files(&checked_in).len(),
    })
}

/// Copies the scratch corpus into fuzz/corpus/<target> and minimizes it there.
fn merge_into_checked_in(target: &str) -> Result<()> {
    let checked_in = fuzz_dir().join("corpus").join(target);
    for file in files(&scratch_corpus(target)) {
        if let Some(name) = file.file_name() {
            std::fs::copy(&file, checked_in.join(name))
                .with_context(|| format!("copying {}", file.display()))?;
        }
    }
    println!("xtask: cargo fuzz cmin {target}");
    run_captured(cargo_fuzz().args(["cmin", "-s", SANITIZER, target]))?;
    let kept = files(&checked_in);
    let bytes: u64 = kept
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "xtask: fuzz/corpus/{target}: {} files, {} KiB",
        kept.len(),
        bytes / 1024
    );
    Ok(())
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}
