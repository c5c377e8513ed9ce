//! `cargo xtask vm-test`: boot Debian cloud kernels under QEMU with an initramfs built
//! here, run the SYNPROXY scenarios in the guest and collect their RESULT lines.

mod coverage;
pub mod host;
mod initramfs;
mod kernel;
mod newc;
mod qemu;

pub use initramfs::build_guest_binaries;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::timing::{BootTiming, CheckTime};
use host::{Apt, HOST_PACKAGES};
use kernel::KernelImage;
use qemu::{BootEnd, BootOutcome, BootSpec};

/// The series booted when no --kernel is given, oldest first; `sid` is Debian unstable's
/// cloud kernel, the newest series the archive serves (its version moves).
pub const DEFAULT_SERIES: &[&str] = &["5.10", "6.1", "6.12", "sid"];

/// Time caps, sized from CI's 90 minutes for all of `cargo xtask test` (fresh machine:
/// packages, eBPF toolchain, fmt, clippy, builds, unit and host tests, bench smoke run,
/// then this suite), on a machine twice as slow as the project machine.
///
/// One boot: a kernel with every check takes 2-4 min here under TCG; twice as slow and
/// with room for new checks of 1-3 min each, 20 min is generous. A kernel that hangs
/// fails alone after this and the next kernel still boots.
const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 20 * 60;
/// All boots together (downloads and builds before the first boot are not counted):
/// leaves CI about 30 min for everything else.
const DEFAULT_TOTAL_TIMEOUT_SECS: u64 = 60 * 60;
/// A boot is not started with less than this left of the total budget.
const MIN_BOOT_BUDGET_SECS: u64 = 60;
const DEFAULT_GUEST_CPUS: u32 = 2;
const DEFAULT_GUEST_MEMORY_MIB: u32 = 2048;

#[derive(Debug, Clone, clap::Args)]
pub struct VmTestArgs {
    /// Kernel series to boot (repeatable): 5.10, 6.1, 6.12, sid. Default: all of them.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Time limit for one boot, in seconds (QEMU start to poweroff); a kernel that
    /// exceeds it fails alone, naming the check it was in, and the next kernel boots.
    #[arg(long, default_value_t = DEFAULT_BOOT_TIMEOUT_SECS)]
    pub boot_timeout_secs: u64,
    /// Time limit for all boots together, in seconds (from the first boot; kernel
    /// downloads and builds are not counted); a boot gets at most what is left.
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
    /// Run only this check group in the guest (repeatable; default: all). Names as in
    /// the timing line (`synproxy-scenario --list` prints them all): module-late (with
    /// module-reload), clean-state, matrix-xt-ipv4, ..., flood-shutdown, top-sources, ...
    #[arg(long = "check", value_name = "NAME")]
    pub checks: Vec<String>,
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
            checks: Vec::new(),
        }
    }
}

/// Installs the host packages and runs the default kernel matrix; for `cargo xtask test`,
/// which gets each boot's times in `timings` (also when the suite fails).
pub fn run_default_matrix(timings: &mut Vec<BootTiming>) -> Result<()> {
    run_timed(VmTestArgs::default(), timings)
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

struct KernelRun {
    image: KernelImage,
    /// Shown after the series name ("" or " icount", see [`Boot`]).
    label: &'static str,
    outcome: BootOutcome,
    /// The boot's time limit.
    limit: Duration,
}

impl KernelRun {
    fn failed_results(&self) -> usize {
        self.outcome
            .results
            .iter()
            .filter(|r| !r.contains("status=PASS"))
            .count()
    }

    /// Where the boot was when it ended abnormally.
    fn open_check_name(&self) -> &str {
        self.outcome
            .open_check
            .as_ref()
            .map(|c| c.name.as_str())
            .unwrap_or("boot")
    }

    fn problem(&self) -> Option<String> {
        let open = match &self.outcome.open_check {
            Some(check) => format!("in check {} (running {:.0}s)", check.name, check.host_secs),
            None if self.outcome.time_to_init.is_none() => "before init started".to_string(),
            None => "outside any check".to_string(),
        };
        match &self.outcome.end {
            BootEnd::Panicked => return Some(format!("kernel panic {open}")),
            BootEnd::TimedOut => {
                return Some(format!(
                    "timed out after {:.0}s {open}",
                    self.limit.as_secs_f64()
                ))
            }
            BootEnd::ExitedEarly(why) => return Some(format!("{why} {open}")),
            BootEnd::NotStarted(why) => return Some(why.clone()),
            BootEnd::Completed => {}
        }
        if self.outcome.results.is_empty() {
            return Some("no RESULT lines".into());
        }
        let failed = self.failed_results();
        (failed > 0).then(|| format!("{failed} failed checks"))
    }

    /// A RESULT line for a boot that ended abnormally, naming the check it was in, so the
    /// failure is counted and shows in the results.
    fn synthesized_result(&self) -> Option<String> {
        let reason = match &self.outcome.end {
            BootEnd::Completed => return None,
            BootEnd::Panicked => "kernel-panic",
            BootEnd::TimedOut => "timeout",
            BootEnd::ExitedEarly(_) => "exited-early",
            BootEnd::NotStarted(_) => "not-started",
        };
        let running = self
            .outcome
            .open_check
            .as_ref()
            .map(|c| format!(" check_secs={:.0}", c.host_secs))
            .unwrap_or_default();
        Some(format!(
            "RESULT kernel={} check={} status=FAIL reason={reason} boot_limit={:.0}s boot_secs={:.0}{running} source=host",
            self.image.release,
            self.open_check_name(),
            self.limit.as_secs_f64(),
            self.outcome.total.as_secs_f64(),
        ))
    }

    /// Its times, for the table `cargo xtask test` prints.
    fn boot_timing(&self) -> BootTiming {
        let not_booted = match &self.outcome.end {
            BootEnd::NotStarted(why) => Some(why.clone()),
            _ => None,
        };
        let mut checks: Vec<CheckTime> = self
            .outcome
            .checks
            .iter()
            .map(|check| CheckTime {
                name: check.name.clone(),
                secs: check.guest_secs.unwrap_or(check.host_secs),
                unfinished: false,
            })
            .collect();
        if let Some(open) = &self.outcome.open_check {
            checks.push(CheckTime {
                name: open.name.clone(),
                secs: open.host_secs,
                unfinished: true,
            });
        }
        BootTiming {
            kernel: format!("{} {}{}", self.image.series, self.image.release, self.label),
            not_booted,
            boot_to_init: self.outcome.time_to_init.map(|d| d.as_secs_f64()),
            checks,
            total: self.outcome.total.as_secs_f64(),
        }
    }

    /// `series release: boot-to-init=4.1s module-late=12.3s ... total=160.2s`
    fn timing_line(&self) -> String {
        let timing = self.boot_timing();
        let mut parts = vec![format!("{}:", timing.kernel)];
        if timing.not_booted.is_some() {
            parts.push("not booted".to_string());
            return parts.join(" ");
        }
        if let Some(init) = timing.boot_to_init {
            parts.push(format!("boot-to-init={init:.1}s"));
        }
        for check in &timing.checks {
            let mark = if check.unfinished { "(unfinished)" } else { "" };
            parts.push(format!("{}={:.1}s{mark}", check.name, check.secs));
        }
        parts.push(format!("total={:.1}s", timing.total));
        parts.join(" ")
    }
}

pub fn run(args: VmTestArgs) -> Result<()> {
    run_timed(args, &mut Vec::new())
}

fn run_timed(args: VmTestArgs, timings: &mut Vec<BootTiming>) -> Result<()> {
    for name in &args.checks {
        crate::check_names::validate(name).map_err(anyhow::Error::msg)?;
    }
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

    // A kernel that cannot be resolved or downloaded (e.g. sid mid-upload) fails alone.
    let mut images = Vec::new();
    let mut runs = Vec::new();
    for series in series {
        match kernel::fetch(series, &mut apt, &vm_dir) {
            Ok(image) => images.push(image),
            Err(error) => {
                let why = format!("not booted: fetching the kernel failed: {error:#}");
                println!("vm-test: {} {why}", series.name);
                runs.push(KernelRun {
                    label: "",
                    image: KernelImage {
                        series: series.name,
                        release: format!("unresolved-{}", series.name),
                        debian_version: String::new(),
                        root: PathBuf::new(),
                    },
                    outcome: BootOutcome::not_started(why),
                    limit: Duration::ZERO,
                });
            }
        }
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

    let accelerator_is_kvm = qemu::kvm_usable();
    let accelerator = if accelerator_is_kvm {
        "KVM"
    } else {
        "TCG (no usable KVM)"
    };
    let total_budget = Duration::from_secs(args.total_timeout_secs);
    let boot_budget = Duration::from_secs(args.boot_timeout_secs);
    println!(
        "vm-test: prepared in {:.0}s; time limits: {:.0}s per boot, {:.0}s for all {} boots",
        started.elapsed().as_secs_f64(),
        boot_budget.as_secs_f64(),
        total_budget.as_secs_f64(),
        images.len()
    );
    for failed in &mut runs {
        if let Some(line) = failed.synthesized_result() {
            failed.outcome.results.push(line);
        }
    }
    let boots_started = Instant::now();
    let mut prometheus_archive: Option<Vec<u8>> = None;
    for image in images {
        let total_left = total_budget.saturating_sub(boots_started.elapsed());
        if total_left < Duration::from_secs(MIN_BOOT_BUDGET_SECS) {
            let why = format!(
                "not booted: {:.0}s left of the {:.0}s budget for all boots",
                total_left.as_secs_f64(),
                total_budget.as_secs_f64()
            );
            println!("vm-test: {} ({}) {why}", image.series, image.release);
            let mut skipped = KernelRun {
                image,
                label: "",
                outcome: BootOutcome::not_started(why),
                limit: Duration::ZERO,
            };
            if let Some(line) = skipped.synthesized_result() {
                skipped.outcome.results.push(line);
            }
            runs.push(skipped);
            continue;
        }
        let left = if args.checks.is_empty() {
            coverage::left_to_other_series(image.series)
        } else {
            Vec::new()
        };
        if !left.is_empty() {
            println!(
                "vm-test: {} leaves {} (xtask/src/vm/coverage.rs)",
                image.series,
                coverage::where_instead(&left)
            );
        }
        for mut boot in plan_boots(&args.checks, accelerator_is_kvm) {
            boot.skip.extend(left.iter().cloned());
            boot.real_prometheus = kernel::find_series(image.series)
                .is_ok_and(|s| s.real_prometheus)
                && boot.runs_prometheus_check();
            if boot.real_prometheus && prometheus_archive.is_none() {
                let bytes = initramfs::build_prometheus_archive()?;
                println!(
                    "vm-test: {} boot carries prometheus ({:.1} MiB, uncompressed)",
                    image.series,
                    bytes.len() as f64 / 1048576.0
                );
                prometheus_archive = Some(bytes);
            }
            let total_left = total_budget.saturating_sub(boots_started.elapsed());
            let kernel_run = boot_image(
                image.clone(),
                &boot,
                &args,
                &vm_dir,
                &common_gz,
                prometheus_archive
                    .as_deref()
                    .filter(|_| boot.real_prometheus),
                boot_budget.min(total_left),
                accelerator,
            )?;
            runs.push(kernel_run);
        }
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
    timings.extend(runs.iter().map(KernelRun::boot_timing));
    println!("vm-test: seconds per kernel and check");
    for kernel_run in &runs {
        println!("  {}", kernel_run.timing_line());
    }
    // Repeated last, where a truncated CI log still shows them.
    let failures: Vec<&String> = runs
        .iter()
        .flat_map(|r| r.outcome.results.iter())
        .filter(|r| !r.contains("status=PASS"))
        .collect();
    if !failures.is_empty() {
        const SHOWN: usize = 4;
        println!(
            "vm-test: failed results ({} of {})",
            failures.len().min(SHOWN),
            failures.len()
        );
        for line in failures.iter().take(SHOWN) {
            println!("  {}", shorten(line, 600));
        }
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
        "VM-TEST SUMMARY kernels={} passed={passed} failed={failed} boot_time={:.0}s total_time={:.0}s status={}",
        kernels.join(","),
        boots_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        if broken.is_empty() { "PASS" } else { "FAIL" }
    );
    if !broken.is_empty() {
        bail!("vm-test failed: {}", broken.join("; "));
    }
    Ok(())
}

/// One boot of a kernel: which checks run in it and how the guest keeps time.
struct Boot {
    checks: Vec<String>,
    skip: Vec<String>,
    icount: bool,
    /// Shown after the series name ("" or " icount").
    label: &'static str,
    /// Its initrd carries Debian's `prometheus` (see `KernelSeries`).
    real_prometheus: bool,
}

impl Boot {
    fn file_suffix(&self) -> &'static str {
        if self.icount {
            ".icount"
        } else {
            ""
        }
    }

    /// The check that scrapes with a real Prometheus runs in this boot.
    fn runs_prometheus_check(&self) -> bool {
        !self.icount
            && !self.skip.iter().any(|c| c == PROMETHEUS_CHECK)
            && (self.checks.is_empty() || self.checks.iter().any(|c| c == PROMETHEUS_CHECK))
    }
}

/// The check whose flood a real Prometheus scrapes (in the series whose
/// `real_prometheus` is set).
const PROMETHEUS_CHECK: &str = "top-sources";

/// Checks that need the instruction-counted guest clock (qemu::ICOUNT).
const ICOUNT_CHECKS: [&str; 1] = ["ebpf-cost"];

/// Under TCG the eBPF cost check gets a boot of its own with `-icount`
/// (its rates must not follow the host's load); under KVM one boot runs all.
fn plan_boots(checks: &[String], kvm: bool) -> Vec<Boot> {
    let counted = |c: &str| ICOUNT_CHECKS.contains(&c);
    if kvm {
        return vec![Boot {
            checks: checks.to_vec(),
            skip: Vec::new(),
            icount: false,
            label: "",
            real_prometheus: false,
        }];
    }
    let mut boots = Vec::new();
    let rest: Vec<String> = checks.iter().filter(|c| !counted(c)).cloned().collect();
    if checks.is_empty() || !rest.is_empty() {
        boots.push(Boot {
            checks: rest,
            skip: ICOUNT_CHECKS.iter().map(|c| c.to_string()).collect(),
            icount: false,
            label: "",
            real_prometheus: false,
        });
    }
    let wanted: Vec<String> = ICOUNT_CHECKS
        .iter()
        .filter(|c| checks.is_empty() || checks.iter().any(|w| w == *c))
        .map(|c| c.to_string())
        .collect();
    if !wanted.is_empty() {
        boots.push(Boot {
            checks: wanted,
            skip: Vec::new(),
            icount: true,
            label: " icount",
            real_prometheus: false,
        });
    }
    boots
}

/// How many more boots a kernel gets after panics that are the emulator's
/// (see [`emulator_panic`]), in all: 7.2 under TCG hit the int3 race in 3 of
/// 4 boots, mostly in the initcalls, where a boot again costs seconds.
const EMULATOR_REBOOTS: u32 = 5;
/// Of those, after a panic inside a check (a whole boot's checks again).
const EMULATOR_REBOOTS_IN_CHECKS: u32 = 2;

/// A boot that panicked before init started: no check, agent or test code
/// had run yet.
fn panicked_before_init(end: &BootEnd, time_to_init: Option<Duration>) -> bool {
    *end == BootEnd::Panicked && time_to_init.is_none()
}

/// Why a panicked boot is the emulated kernel's own fault, worth one more
/// boot: before init started, or an oops on an int3 trap in kernel text (the
/// breakpoint live code patching sets while it rewrites a static branch,
/// which TCG's vCPUs can run into after the patch is done).
fn emulator_panic(
    end: &BootEnd,
    time_to_init: Option<Duration>,
    console: &str,
) -> Option<&'static str> {
    if panicked_before_init(end, time_to_init) {
        return Some("before init started (before any of the suite's code ran)");
    }
    let int3 = console
        .lines()
        .any(|l| l.contains("Oops: int3") && !l.contains("kprobe"));
    (*end == BootEnd::Panicked && int3).then_some("on an int3 oops (live code patching under TCG)")
}

#[allow(clippy::too_many_arguments)]
fn boot_image(
    image: KernelImage,
    boot: &Boot,
    args: &VmTestArgs,
    vm_dir: &Path,
    common_gz: &[u8],
    prometheus: Option<&[u8]>,
    limit: Duration,
    accelerator: &str,
) -> Result<KernelRun> {
    let plan = kernel::plan_modules(&image)?;
    let modules_gz = initramfs::compress(&initramfs::build_module_archive(&image, &plan)?)?;
    let initrd = vm_dir.join(format!(
        "initrd-{}{}.img",
        image.release,
        if prometheus.is_some() {
            ".prometheus"
        } else {
            ""
        }
    ));
    initramfs::write_initrd(&initrd, prometheus, common_gz, &modules_gz)?;
    let console_log = vm_dir.join("logs").join(format!(
        "{}{}.console.log",
        image.release,
        boot.file_suffix()
    ));
    println!(
        "vm-test: booting {} ({}) with {accelerator}{}, limit {:.0}s: {} modules early, {} after the agent starts; console log {}",
        image.release,
        image.debian_version,
        boot.label,
        limit.as_secs_f64(),
        plan.early.len(),
        plan.late.len(),
        console_log.display()
    );
    let spec = BootSpec {
        vmlinuz: &image.vmlinuz(),
        initrd: &initrd,
        console_log: &console_log,
        timeout: limit,
        cpus: args.cpus,
        memory_mib: args.memory_mib,
        echo_prefix: format!("[{}{}] ", image.series, boot.label),
        echo_all: args.verbose,
        checks: &boot.checks,
        skip: &boot.skip,
        icount: boot.icount,
        single_thread_tcg: kernel::find_series(image.series).is_ok_and(|s| s.single_thread_tcg),
        real_prometheus: prometheus.is_some(),
    };
    let mut outcome = qemu::boot(&spec)?;
    let mut in_checks = 0;
    for attempt in 1..=EMULATOR_REBOOTS {
        let console = std::fs::read_to_string(&console_log).unwrap_or_default();
        let Some(why) = emulator_panic(&outcome.end, outcome.time_to_init, &console) else {
            break;
        };
        if outcome.time_to_init.is_some() {
            in_checks += 1;
            if in_checks > EMULATOR_REBOOTS_IN_CHECKS {
                break;
            }
        }
        // Nothing of ours runs before init, and an int3 oops is the kernel's
        // own live code patching racing under TCG (seen: in the initcalls, and
        // in NF_HOOK's static branch as a check added its first rules). More
        // boots, said aloud; each panicked boot's log is kept. A panic that
        // keeps coming back fails.
        let kept = console_log.with_extension(format!("panicked-boot-{attempt}.log"));
        let _ = std::fs::rename(&console_log, &kept);
        println!(
            "vm-test: {}{} panicked {why} (console log {}): booting it again ({attempt} of {EMULATOR_REBOOTS})",
            image.release,
            boot.label,
            kept.display()
        );
        outcome = qemu::boot(&spec)?;
    }
    let mut kernel_run = KernelRun {
        image,
        label: boot.label,
        outcome,
        limit,
    };
    if let Some(line) = kernel_run.synthesized_result() {
        println!("[{}] {line}", kernel_run.image.series);
        kernel_run.outcome.results.push(line);
    }
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
    println!("vm-test: timing {}", kernel_run.timing_line());
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
    Ok(kernel_run)
}

/// `line` cut to at most `max` bytes (at a character boundary), marked when cut.
fn shorten(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [...]", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use qemu::CheckTiming;

    fn run_with(end: BootEnd, open: Option<&str>) -> KernelRun {
        let check = |name: &str, secs: f64| CheckTiming {
            name: name.into(),
            guest_secs: Some(secs),
            host_secs: secs + 0.2,
        };
        KernelRun {
            label: "",
            image: KernelImage {
                series: "6.12",
                release: "6.12.1+deb12-cloud-amd64".into(),
                debian_version: "6.12.1-1".into(),
                root: PathBuf::from("/nonexistent"),
            },
            outcome: BootOutcome {
                end,
                results: vec!["RESULT kernel=x check=module-late status=PASS".into()],
                checks: vec![check("module-late", 12.34), check("matrix-xt-ipv4", 40.0)],
                open_check: open.map(|name| CheckTiming {
                    name: name.into(),
                    guest_secs: None,
                    host_secs: 300.0,
                }),
                time_to_init: Some(Duration::from_millis(4100)),
                total: Duration::from_secs(1200),
                tail: Vec::new(),
            },
            limit: Duration::from_secs(1200),
        }
    }

    #[test]
    fn a_timeout_names_the_open_check() {
        let run = run_with(BootEnd::TimedOut, Some("matrix-nft-ipv6"));
        assert_eq!(
            run.problem().unwrap(),
            "timed out after 1200s in check matrix-nft-ipv6 (running 300s)"
        );
        let result = run.synthesized_result().unwrap();
        assert!(result.starts_with(
            "RESULT kernel=6.12.1+deb12-cloud-amd64 check=matrix-nft-ipv6 status=FAIL reason=timeout "
        ));
        assert_eq!(
            run.timing_line(),
            "6.12 6.12.1+deb12-cloud-amd64: boot-to-init=4.1s module-late=12.3s \
             matrix-xt-ipv4=40.0s matrix-nft-ipv6=300.0s(unfinished) total=1200.0s"
        );
    }

    #[test]
    fn a_completed_boot_adds_no_result() {
        let run = run_with(BootEnd::Completed, None);
        assert_eq!(run.synthesized_result(), None);
        assert_eq!(run.problem(), None);
        assert!(panicked_before_init(&BootEnd::Panicked, None));
        assert!(!panicked_before_init(
            &BootEnd::Panicked,
            Some(Duration::from_secs(4))
        ));
        assert!(!panicked_before_init(&BootEnd::TimedOut, None));
        let panicked = run_with(BootEnd::Panicked, None);
        assert!(panicked
            .synthesized_result()
            .unwrap()
            .contains(" check=boot status=FAIL reason=kernel-panic "));
    }

    #[test]
    fn an_int3_oops_or_a_panic_before_init_is_booted_again() {
        let oops = "[  161.653540] Oops: int3: 0000 [#1] SMP NOPTI\n[  161.658759] Kernel panic - not syncing: Fatal exception in interrupt";
        let booted = Some(Duration::from_secs(10));
        assert!(emulator_panic(&BootEnd::Panicked, booted, oops).is_some());
        assert!(emulator_panic(&BootEnd::Panicked, None, "").is_some());
        assert!(emulator_panic(
            &BootEnd::Panicked,
            booted,
            "Kernel panic - not syncing: Oops"
        )
        .is_none());
        assert!(emulator_panic(&BootEnd::Completed, booted, oops).is_none());
        assert!(emulator_panic(&BootEnd::TimedOut, booted, oops).is_none());
    }

    #[test]
    fn the_cost_check_gets_an_instruction_counted_boot_under_tcg() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = plan_boots(&[], false);
        assert_eq!(all.len(), 2);
        assert!(!all[0].icount && all[0].checks.is_empty() && all[0].skip == names(&["ebpf-cost"]));
        assert!(all[1].icount && all[1].checks == names(&["ebpf-cost"]));
        let only_cost = plan_boots(&names(&["ebpf-cost"]), false);
        assert_eq!(only_cost.len(), 1);
        assert!(only_cost[0].icount);
        let no_cost = plan_boots(&names(&["sustained"]), false);
        assert_eq!(no_cost.len(), 1);
        assert!(!no_cost[0].icount && no_cost[0].checks == names(&["sustained"]));
        let kvm = plan_boots(&[], true);
        assert_eq!(kvm.len(), 1);
        assert!(!kvm[0].icount && kvm[0].skip.is_empty());
    }

    /// The names init.sh selects its checks by are exactly the shared list.
    #[test]
    fn init_selects_exactly_the_known_checks() {
        let script = include_str!("init.sh");
        let code = script.lines().filter(|l| !l.trim_start().starts_with('#'));
        let mut selected: Vec<String> = Vec::new();
        for line in code {
            for call in ["selected ", "fentry_repeat "] {
                for (_, rest) in line
                    .match_indices(call)
                    .map(|(i, _)| line.split_at(i + call.len()))
                {
                    let word = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .trim_matches('"');
                    let literal = !word.is_empty()
                        && word
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                    if literal {
                        selected.push(word.to_string());
                    }
                }
            }
        }
        // The two loops select by pattern.
        assert!(script.contains(r#"selected "matrix-$rules-$family""#));
        assert!(script.contains(r#"selected "iptables-nft-$family""#));
        for rules in ["xt", "nft"] {
            for family in ["ipv4", "ipv6"] {
                selected.push(format!("matrix-{rules}-{family}"));
            }
        }
        selected.extend(["iptables-nft-ipv4".into(), "iptables-nft-ipv6".into()]);
        selected.sort();
        selected.dedup();
        let mut known: Vec<String> = crate::check_names::CHECKS
            .iter()
            .map(|c| c.to_string())
            .collect();
        known.sort();
        assert_eq!(selected, known);
    }

    #[test]
    fn an_unknown_check_is_refused_before_anything_is_built() {
        let args = VmTestArgs {
            checks: vec!["sustained".into(), "flod-shutdown".into()],
            ..VmTestArgs::default()
        };
        let e = run(args).unwrap_err().to_string();
        assert!(
            e.starts_with("unknown check \"flod-shutdown\"; known checks: module-late, "),
            "{e}"
        );
    }

    #[test]
    fn only_the_boot_that_runs_the_top_sources_check_carries_prometheus() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = plan_boots(&[], false);
        assert!(all[0].runs_prometheus_check() && !all[1].runs_prometheus_check());
        assert!(plan_boots(&names(&["top-sources"]), false)[0].runs_prometheus_check());
        assert!(!plan_boots(&names(&["sustained"]), false)[0].runs_prometheus_check());
        assert!(plan_boots(&[], true)[0].runs_prometheus_check());
        let carrying: Vec<&str> = kernel::SERIES
            .iter()
            .filter(|s| s.real_prometheus)
            .map(|s| s.name)
            .collect();
        assert_eq!(carrying, ["6.12"]);
    }
}
