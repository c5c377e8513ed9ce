//! `cargo xtask test`: everything CI checks, on a fresh machine. Installs what
//! the tests need, then formatting, lints, unit and real-kernel tests, the
//! benchmarks' smoke runs (criterion, and `bench --compare` for 3 s), the Debian
//! package check, the fuzz smoke run and the
//! VM suite.

use crate::cargo::{cargo, is_root};
use crate::timing::{self, BootTiming, StepTime};
use crate::vm;
use crate::vm::host::Apt;
use anyhow::{bail, Result};
use std::time::Instant;

/// Packages the host-kernel tests use (the VM suite installs its own).
/// `prometheus` brings the server and `promtool` for the Prometheus tests;
/// `influxdb` brings `influxd` (1.x) for the InfluxDB tests, which start their
/// own server on a free loopback port (never the packaged service's 8086).
/// `systemd` `systemd-analyze` for the unit checks; `util-linux` `setpriv`
/// for running the agent as an unprivileged user with chosen capabilities;
/// `man-db` `man` for the package's man page, `lintian` for the package,
/// `kmod` `modprobe`.
const TEST_PACKAGES: &[&str] = &[
    "iptables",
    "nftables",
    "iproute2",
    "prometheus",
    // The endpoint's web configuration tests: certificates, bcrypt hashes,
    // HTTPS requests.
    "openssl",
    "apache2-utils",
    "curl",
    "influxdb",
    "systemd",
    "util-linux",
    // `setcap`: the Telegraf test gives the agent file capabilities.
    "libcap2-bin",
    "man-db",
    "lintian",
    "kmod",
    // The live view's test reads `synproxy-agent top` from a tmux pane.
    "tmux",
    // The mixin test regenerates the dashboard and alerting rules.
    "jsonnet",
    // The container image is built with podman and run by the container test,
    // with runc (crun cannot start containers on hosts with hybrid cgroups).
    "podman",
    "runc",
    // The DaemonSet's schema validator is installed with pip into a venv.
    "python3-venv", // `conntrack -S` and `-C`: the stack-source test's cross-check.
    "conntrack",
];

/// Seconds each fuzz target runs in the suite's smoke run.
const FUZZ_SMOKE_SECS: u64 = 5;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the QEMU VM suite (host tests only).
    #[arg(long)]
    pub no_vm: bool,
}

pub fn run(args: TestArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask test needs root (network namespaces, SYNPROXY rules, apt-get): run it with sudo");
    }
    let started = Instant::now();
    let mut boots: Vec<BootTiming> = Vec::new();
    let mut steps: Vec<(&str, Result<()>, f64)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| {
        println!("==> xtask test: {name}");
        let started = Instant::now();
        let result = f();
        let secs = started.elapsed().as_secs_f64();
        if let Err(e) = &result {
            println!("==> xtask test: {name} FAILED: {e:#}");
        }
        steps.push((name, result, secs));
    };

    step("install test packages", &mut || {
        let mut apt = Apt::default();
        apt.ensure_installed(TEST_PACKAGES)?;
        // The dashboard's schema test installs Grafana's schema package with
        // npm. Debian's npm brings nodejs; a Node.js installed otherwise (its
        // own npm) is kept, as Debian's npm would conflict with it.
        let has_npm = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("npm").is_file()));
        if !has_npm {
            apt.ensure_installed(&["npm"])?;
        }
        Ok(())
    });
    // Every build of the agent compiles its eBPF programs.
    step(
        "install the eBPF toolchain",
        &mut crate::ebpf_toolchain::ensure,
    );
    step("cargo fmt --check", &mut || {
        cargo(&["fmt", "--all", "--", "--check"])
    });
    step("cargo clippy", &mut || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    });
    // Before the tests: the container test runs this image.
    step("container image (cargo xtask image)", &mut || {
        crate::image::build().map(|_| ())
    });
    // Build first so the real-kernel tests find the agent binary.
    step("cargo test (unit, CLI and host-kernel tests)", &mut || {
        cargo(&["build", "--workspace", "--bins"])?;
        cargo(&["test", "--workspace"])
    });
    step("benchmark smoke run", &mut || {
        cargo(&[
            "bench",
            "--package",
            "synproxy-user",
            "--bench",
            "parse_encode",
            "--",
            "--test",
        ])?;
        // Prints the per-source memory figures and fails above docs/ebpf.md's.
        cargo(&[
            "bench",
            "--package",
            "synproxy-user",
            "--bench",
            "top_sources_memory",
        ])?;
        // Prints the attack detector's memory and tick time at its bounds.
        cargo(&[
            "bench",
            "--package",
            "synproxy-user",
            "--bench",
            "attack_detector",
        ])
    });
    // After `cargo test`: the man page's example reuses its dev build.
    step("Debian package (cargo xtask package --check)", &mut || {
        let deb = crate::package::build()?;
        crate::package::check(&deb)
    });
    step("fuzz smoke run (cargo xtask fuzz)", &mut || {
        crate::fuzz::fuzz(crate::fuzz::TARGETS, FUZZ_SMOKE_SECS, 1).map(|stats| {
            for s in stats {
                println!(
                    "  fuzz {}: {} executions in {:.0}s, no crash",
                    s.target, s.execs, s.secs
                );
            }
        })
    });
    // The side-by-side bench, short: it must produce its figures (the
    // targets are judged on a full run, machines vary). Installs gcc and
    // collectd-core when missing.
    step(
        "bench --compare smoke run (3 s, 10 namespaces)",
        &mut || {
            crate::bench::compare::run(&crate::bench::compare::CompareArgs {
                secs: 3,
                netns_sizes: vec![10],
            })?
            .check_produced()
        },
    );
    if !args.no_vm {
        step("VM suite (cargo xtask vm-test)", &mut || {
            vm::run_default_matrix(&mut boots)
        });
    }

    println!();
    let times: Vec<StepTime> = steps
        .iter()
        .map(|(name, result, secs)| StepTime {
            name,
            ok: result.is_ok(),
            secs: *secs,
        })
        .collect();
    print!(
        "{}",
        timing::table(
            &times,
            &boots,
            started.elapsed().as_secs_f64(),
            timing::BUDGET_SECS
        )
    );
    let failed = steps
        .iter()
        .filter(|(_, result, _)| result.is_err())
        .count();
    println!("xtask: {} passed, {} failed", steps.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} step(s) failed");
    }
    Ok(())
}
