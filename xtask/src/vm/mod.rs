//! `cargo xtask vm-test`: boot Debian cloud kernels under QEMU with an initramfs built
//! here, run the SYNPROXY scenarios in the guest and collect their RESULT lines.

pub mod host;
mod initramfs;
mod kernel;
mod newc;
mod qemu;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use host::{Apt, HOST_PACKAGES};
use kernel::KernelImage;
use qemu::{BootEnd, BootOutcome, BootSpec};

/// The series booted when no --kernel is given, oldest first; `sid` is Debian unstable's
/// cloud kernel, the newest series the archive serves (its version moves).
pub const DEFAULT_SERIES: &[&str] = &["5.10", "6.1", "6.12", "sid"];

const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 300;
/// Stays under the 10 minute budget for the whole suite.
const DEFAULT_TOTAL_TIMEOUT_SECS: u64 = 570;
const DEFAULT_GUEST_CPUS: u32 = 2;
const DEFAULT_GUEST_MEMORY_MIB: u32 = 512;

#[derive(Debug, Clone, clap::Args)]
pub struct VmTestArgs {
    /// Kernel series to boot (repeatable): 5.10, 6.1, 6.12, sid. Default: all of them.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Time limit for one boot, in seconds (kernel start to poweroff).
    #[arg(long, default_value_t = DEFAULT_BOOT_TIMEOUT_SECS)]
    pub boot_timeout_secs: u64,
    /// Time limit for the whole run, in seconds; later boots get what is left.
    #[arg(long, default_value_t = DEFAULT_TOTAL_TIMEOUT_SECS)]
    pub total_timeout_secs: u64,
    /// Virtual CPUs per guest (2 gives /proc/net/stat/synproxy two rows to sum).
    #[arg(long, default_value_t = DEFAULT_GUEST_CPUS)]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = DEFAULT_GUEST_MEMORY_MIB)]
    pub memory_mib: u32,
    /// Echo every console line as it arrives (RESULT lines are always printed).
    #[arg(long)]
    pub verbose: bool,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            boot_timeout_secs: DEFAULT_BOOT_TIMEOUT_SECS,
            total_timeout_secs: DEFAULT_TOTAL_TIMEOUT_SECS,
            cpus: DEFAULT_GUEST_CPUS,
            memory_mib: DEFAULT_GUEST_MEMORY_MIB,
            verbose: false,
        }
    }
}

/// Installs the host packages and runs the default kernel matrix; for `cargo xtask test`.
pub fn run_default_matrix() -> Result<()> {
    run(VmTestArgs::default())
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

struct KernelRun {
    image: KernelImage,
    outcome: BootOutcome,
}

impl KernelRun {
    fn failed_results(&self) -> usize {
        self.outcome
            .results
            .iter()
            .filter(|r| !r.contains("status=PASS"))
            .count()
    }

    fn problem(&self) -> Option<String> {
        match &self.outcome.end {
            BootEnd::Panicked => return Some("kernel panic".into()),
            BootEnd::TimedOut => return Some("timed out".into()),
            BootEnd::ExitedEarly(why) => return Some(why.clone()),
            BootEnd::Completed => {}
        }
        if self.outcome.results.is_empty() {
            return Some("no RESULT lines".into());
        }
        let failed = self.failed_results();
        (failed > 0).then(|| format!("{failed} failed checks"))
    }
}

pub fn run(args: VmTestArgs) -> Result<()> {
    let started = Instant::now();
    let workspace = workspace_root();
    let vm_dir = workspace.join("target/vm");
    std::fs::create_dir_all(vm_dir.join("logs"))
        .with_context(|| format!("creating {}", vm_dir.display()))?;

    let series_names: Vec<String> = if args.kernels.is_empty() {
        DEFAULT_SERIES.iter().map(|s| s.to_string()).collect()
    } else {
        args.kernels.clone()
    };
    let series = series_names
        .iter()
        .map(|name| kernel::find_series(name))
        .collect::<Result<Vec<_>>>()?;

    let mut apt = Apt::default();
    apt.ensure_installed(HOST_PACKAGES)?;

    let mut images = Vec::new();
    for series in series {
        images.push(kernel::fetch(series, &mut apt, &vm_dir)?);
    }

    crate::ebpf_toolchain::ensure()?;
    let binaries = initramfs::build_guest_binaries(&workspace)?;
    let initramfs_started = Instant::now();
    let common = initramfs::build_common_archive(&binaries)?;
    let common_gz = initramfs::compress(&common)?;
    println!(
        "vm-test: common initramfs {:.1} MiB ({:.1} MiB gzip) built in {:.1}s",
        common.payload_bytes() as f64 / 1048576.0,
        common_gz.len() as f64 / 1048576.0,
        initramfs_started.elapsed().as_secs_f64()
    );

    let accelerator = if qemu::kvm_usable() {
        "KVM"
    } else {
        "TCG (no usable KVM)"
    };
    let mut runs = Vec::new();
    for image in images {
        let plan = kernel::plan_modules(&image)?;
        let modules_gz = initramfs::compress(&initramfs::build_module_archive(&image, &plan)?)?;
        let initrd = vm_dir.join(format!("initrd-{}.img", image.release));
        initramfs::write_initrd(&initrd, &common_gz, &modules_gz)?;
        let console_log = vm_dir
            .join("logs")
            .join(format!("{}.console.log", image.release));
        println!(
            "vm-test: booting {} ({}) with {accelerator}: {} modules early, {} after the agent starts; console log {}",
            image.release,
            image.debian_version,
            plan.early.len(),
            plan.late.len(),
            console_log.display()
        );
        let total_left =
            Duration::from_secs(args.total_timeout_secs).saturating_sub(started.elapsed());
        let boot_timeout = Duration::from_secs(args.boot_timeout_secs).min(total_left);
        let outcome = qemu::boot(&BootSpec {
            vmlinuz: &image.vmlinuz(),
            initrd: &initrd,
            console_log: &console_log,
            timeout: boot_timeout,
            cpus: args.cpus,
            memory_mib: args.memory_mib,
            echo_prefix: format!("[{}] ", image.series),
            echo_all: args.verbose,
        })?;
        let kernel_run = KernelRun { image, outcome };
        let init_time = kernel_run
            .outcome
            .time_to_init
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into());
        println!(
            "vm-test: {} boot to init {init_time}, whole boot {:.1}s, {} RESULT lines, {}",
            kernel_run.image.release,
            kernel_run.outcome.total.as_secs_f64(),
            kernel_run.outcome.results.len(),
            kernel_run.problem().unwrap_or_else(|| "all passed".into())
        );
        if kernel_run.outcome.end != BootEnd::Completed || kernel_run.outcome.results.is_empty() {
            println!(
                "vm-test: last {} console lines of {}:",
                kernel_run.outcome.tail.len(),
                kernel_run.image.release
            );
            for line in &kernel_run.outcome.tail {
                println!("    {line}");
            }
        }
        runs.push(kernel_run);
    }

    println!("vm-test: results");
    let mut passed = 0;
    let mut failed = 0;
    for kernel_run in &runs {
        for result in &kernel_run.outcome.results {
            println!("{result}");
        }
        failed += kernel_run.failed_results();
        passed += kernel_run.outcome.results.len() - kernel_run.failed_results();
    }
    let broken: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.problem()
                .map(|p| format!("{} ({}): {p}", r.image.series, r.image.release))
        })
        .collect();
    let kernels: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{}={}@{:.0}s",
                r.image.series,
                r.image.release,
                r.outcome.total.as_secs_f64()
            )
        })
        .collect();
    println!(
        "VM-TEST SUMMARY kernels={} passed={passed} failed={failed} total_time={:.0}s status={}",
        kernels.join(","),
        started.elapsed().as_secs_f64(),
        if broken.is_empty() { "PASS" } else { "FAIL" }
    );
    if !broken.is_empty() {
        bail!("vm-test failed: {}", broken.join("; "));
    }
    Ok(())
}
