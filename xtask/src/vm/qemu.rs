//! One QEMU boot per kernel; the serial console is parsed for RESULT lines.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEnd {
    /// Init printed VMTEST-END and powered off.
    Completed,
    /// The console showed a kernel panic.
    Panicked,
    /// No end within the time limit; QEMU was killed.
    TimedOut,
    /// QEMU exited without the end marker (e.g. init died).
    ExitedEarly(String),
    /// Not booted (the budget for all boots was used up).
    NotStarted(String),
}

/// One check of the guest, from its CHECK-BEGIN / CHECK-END console markers.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTiming {
    pub name: String,
    /// Duration the guest measured (CHECK-END secs=); None while the check is open.
    pub guest_secs: Option<f64>,
    /// Duration the host saw between the two markers (up to the end of the boot for a
    /// check that never ended).
    pub host_secs: f64,
}

/// A console marker line of init.sh.
#[derive(Debug, Clone, PartialEq)]
pub enum Marker {
    Begin { name: String },
    End { name: String, secs: Option<f64> },
}

/// Parses `CHECK-BEGIN name=X ...` and `CHECK-END name=X secs=Y`.
pub fn parse_marker(line: &str) -> Option<Marker> {
    let (kind, rest) = line.trim().split_once(' ')?;
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|token| token.strip_prefix(key)?.strip_prefix('='))
    };
    let name = field("name")?.to_string();
    match kind {
        "CHECK-BEGIN" => Some(Marker::Begin { name }),
        "CHECK-END" => Some(Marker::End {
            name,
            secs: field("secs").and_then(|s| s.parse().ok()),
        }),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct BootOutcome {
    pub end: BootEnd,
    /// Every console line that starts with "RESULT ".
    pub results: Vec<String>,
    /// Checks that ended, in order.
    pub checks: Vec<CheckTiming>,
    /// The check that had begun and not ended when the boot ended (the one a timeout,
    /// panic or early exit happened in).
    pub open_check: Option<CheckTiming>,
    /// Time from starting QEMU to the guest's VMTEST-BOOTED line.
    pub time_to_init: Option<Duration>,
    pub total: Duration,
    /// The last console lines, shown on failure.
    pub tail: Vec<String>,
}

impl BootOutcome {
    pub fn not_started(why: String) -> Self {
        Self {
            end: BootEnd::NotStarted(why),
            results: Vec::new(),
            checks: Vec::new(),
            open_check: None,
            time_to_init: None,
            total: Duration::ZERO,
            tail: Vec::new(),
        }
    }
}

const TAIL_LINES: usize = 30;

/// `rcupdate.rcu_expedited=1`: under TCG a normal RCU grace period takes hundreds of
/// milliseconds (quiescent states are seen only at emulated timer ticks, slower still on
/// a busy host), and removing a kprobe event waits for grace periods. Expedited grace
/// periods (IPIs, as fast as on hardware) keep the agent's shutdown measurable against its
/// 1 s limit instead of against the emulator's speed.
///
/// `clocksource=tsc tsc=reliable`: under TCG the kernel's watchdog soon finds the
/// emulated TSC unstable and falls back to the HPET, whose every read is an emulated
/// MMIO access (microseconds, under QEMU's global lock). The probes read the clock per
/// event, so an HPET would make the eBPF cost figures measure QEMU's device model;
/// hardware and KVM guests read a TSC or kvm-clock for a few nanoseconds.
const KERNEL_COMMAND_LINE: &str = "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init \
     rcupdate.rcu_expedited=1 clocksource=tsc tsc=reliable";

/// The kernel command line; `vmtest_checks=a,b` (no dot: the kernel hands it to
/// init as an environment variable) when only some checks are to run, and
/// `vmtest_skip=c,d` for checks left to another boot.
fn command_line(checks: &[String], skip: &[String]) -> String {
    let mut line = KERNEL_COMMAND_LINE.to_string();
    if !checks.is_empty() {
        line.push_str(&format!(" vmtest_checks={}", checks.join(",")));
    }
    if !skip.is_empty() {
        line.push_str(&format!(" vmtest_skip={}", skip.join(",")));
    }
    line
}

/// QEMU's instruction counting for TCG guests (`-icount`): the guest's clocks
/// advance 2 ns per instruction executed instead of with the host's time, so
/// a rate the guest measures is instructions per event, whatever else the
/// host runs (`sleep=off`: idle time is skipped, not waited for). The eBPF
/// cost check runs in such a boot; it makes a single host thread run all the
/// guest's CPUs, so the other checks keep the normal boot. Such a boot has one
/// CPU ([`ICOUNT_CPUS`]): with two, 5.10 hangs bringing up the second.
pub const ICOUNT: [&str; 2] = ["-icount", "shift=1,sleep=off"];
pub const ICOUNT_CPUS: u32 = 1;

/// KVM only where the CPU advertises it and /dev/kvm opens; this machine's kind has
/// /dev/kvm but cannot run normal guests, and no vmx/svm flag.
pub fn kvm_usable() -> bool {
    let cpu_flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = cpu_flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    has_flag
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

pub struct BootSpec<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub console_log: &'a Path,
    pub timeout: Duration,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Prefix for echoed console lines, e.g. "[6.12] ".
    pub echo_prefix: String,
    /// Echo every console line; otherwise only RESULT/SUMMARY/marker lines.
    pub echo_all: bool,
    /// Run only these checks in the guest (all when empty); passed to init as
    /// the environment variable `vmtest_checks` through the kernel command line.
    pub checks: &'a [String],
    /// Checks not to run in this boot (`vmtest_skip`).
    pub skip: &'a [String],
    /// Guest time from instruction counts ([`ICOUNT`]; TCG only).
    pub icount: bool,
    /// TCG with one host thread for all vCPUs (see `KernelSeries`).
    pub single_thread_tcg: bool,
    /// The initrd carries `prometheus` (`vmtest_prometheus=1` tells the guest).
    pub real_prometheus: bool,
}

pub fn boot(spec: &BootSpec) -> Result<BootOutcome> {
    let accel = if kvm_usable() {
        "kvm"
    } else if spec.single_thread_tcg {
        "tcg,thread=single"
    } else {
        "tcg"
    };
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-accel",
            accel,
            "-cpu",
            "max",
            "-nographic",
            "-no-reboot",
            "-net",
            "none",
        ])
        .args([
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            &if spec.icount { ICOUNT_CPUS } else { spec.cpus }.to_string(),
        ])
        .arg("-kernel")
        .arg(spec.vmlinuz)
        .arg("-initrd")
        .arg(spec.initrd)
        .args([
            "-append",
            &format!(
                "{}{}{}",
                command_line(spec.checks, spec.skip),
                if spec.icount { " vmtest_icount=1" } else { "" },
                if spec.real_prometheus {
                    " vmtest_prometheus=1"
                } else {
                    ""
                }
            ),
        ])
        .args(if spec.icount { &ICOUNT[..] } else { &[] })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().context("starting qemu-system-x86_64")?;
    let mut log = std::fs::File::create(spec.console_log)
        .with_context(|| format!("creating {}", spec.console_log.display()))?;

    let (sender, receiver) = mpsc::channel::<String>();
    if let Some(stdout) = child.stdout.take() {
        let sender = sender.clone();
        std::thread::spawn(move || forward_lines(stdout, sender));
    }
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || forward_lines(stderr, sender));
    } else {
        drop(sender);
    }

    let deadline = started + spec.timeout;
    let mut results = Vec::new();
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut time_to_init = None;
    let mut saw_end = false;
    let mut panicked = false;
    let mut timed_out = false;
    let mut checks = Vec::new();
    let mut open_check: Option<(String, Instant)> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            timed_out = true;
            break;
        }
        match receiver.recv_timeout(remaining) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                let interesting = line.starts_with("# ")
                    || [
                        "RESULT ", "SUMMARY", "VMTEST-", "CHECK-", "FAIL", "panic", "error",
                    ]
                    .iter()
                    .any(|marker| line.contains(marker));
                if spec.echo_all || interesting {
                    println!("{}{line}", spec.echo_prefix);
                }
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                // Only lines that start with it: the guest prefixes nested output.
                if line.starts_with("RESULT ") {
                    results.push(line.trim().to_string());
                }
                match parse_marker(&line) {
                    Some(Marker::Begin { name }) => open_check = Some((name, Instant::now())),
                    Some(Marker::End { name, secs }) => {
                        let host_secs = match open_check.take() {
                            Some((open, since)) if open == name => since.elapsed().as_secs_f64(),
                            _ => 0.0,
                        };
                        checks.push(CheckTiming {
                            name,
                            guest_secs: secs,
                            host_secs,
                        });
                    }
                    None => {}
                }
                if line.contains("VMTEST-BOOTED") && time_to_init.is_none() {
                    time_to_init = Some(started.elapsed());
                }
                if line.contains("VMTEST-END") {
                    saw_end = true;
                }
                if line.contains("Kernel panic") {
                    panicked = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            // Both pipes closed: QEMU is exiting.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for qemu-system-x86_64")?;
    let end = if panicked {
        BootEnd::Panicked
    } else if timed_out {
        BootEnd::TimedOut
    } else if saw_end {
        BootEnd::Completed
    } else {
        BootEnd::ExitedEarly(format!("qemu exited ({status}) without VMTEST-END"))
    };
    Ok(BootOutcome {
        end,
        results,
        checks,
        open_check: open_check.map(|(name, since)| CheckTiming {
            name,
            guest_secs: None,
            host_secs: since.elapsed().as_secs_f64(),
        }),
        time_to_init,
        total: started.elapsed(),
        tail: tail.into(),
    })
}

fn forward_lines(stream: impl std::io::Read, sender: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buffer);
                let line = strip_terminal_controls(line.trim_end_matches(['\n', '\r']));
                if sender.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

/// Drops ANSI escape sequences (SeaBIOS clears the screen) and other control characters.
fn strip_terminal_controls(line: &str) -> String {
    let mut clean = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates up to the final byte (@ to ~).
                for next in chars.by_ref() {
                    if ('@'..='~').contains(&next) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            clean.push(c);
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::{parse_marker, strip_terminal_controls, Marker};

    #[test]
    fn parses_check_markers() {
        assert_eq!(
            parse_marker("CHECK-BEGIN name=matrix-xt-ipv4 kernel=6.1.0-56-cloud-amd64 uptime=12.3"),
            Some(Marker::Begin {
                name: "matrix-xt-ipv4".into()
            })
        );
        assert_eq!(
            parse_marker("CHECK-END name=module-late secs=12.5"),
            Some(Marker::End {
                name: "module-late".into(),
                secs: Some(12.5)
            })
        );
        assert_eq!(parse_marker("CHECK-BEGIN kernel=x"), None);
        assert_eq!(parse_marker("RESULT kernel=x check=y status=PASS"), None);
        assert_eq!(
            parse_marker("module-late scenario: CHECK-BEGIN name=x"),
            None
        );
    }

    #[test]
    fn strips_screen_clearing_sequences() {
        assert_eq!(
            strip_terminal_controls("\u{1b}c\u{1b}[?7l\u{1b}[2JVMTEST-BOOTED x\r"),
            "VMTEST-BOOTED x"
        );
        assert_eq!(strip_terminal_controls("a\tb"), "a\tb");
    }
}
