//! The kernel's softirq threads during the eBPF cost check's throughput runs.
//!
//! A crafted SYN's receive path normally runs inline, in the sender's
//! `sendto` (the softirq raised by the veth runs when the sender's bottom
//! halves are enabled again). Once something wakes `ksoftirqd` (a softirq
//! round over its 2 ms budget, a timer's work arriving at the wrong moment),
//! the kernel leaves pending softirqs to it while it is runnable; with one
//! CPU and a sender that never stops, it stays runnable for the rest of the
//! run, and every packet is handed from the sender to `ksoftirqd` and back:
//! about 4% more guest time per SYN, in runs with and without probes alike.
//! Which runs fall into that mode is chance, so the rates were bimodal.
//! Running `ksoftirqd` as SCHED_FIFO (priority 1) makes it run as soon as it
//! is woken, drain what is pending and sleep again, so it is never left
//! runnable behind the sender and the receive path stays inline.

use anyhow::{Context, Result};

/// `ksoftirqd/N` thread ids.
fn threads() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// CPU time of all `ksoftirqd` threads so far (ns).
pub fn cpu_ns() -> u64 {
    threads()
        .iter()
        .filter_map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `ksoftirqd` threads made SCHED_FIFO; their scheduling is restored on drop.
pub struct Realtime {
    saved: Vec<(i32, i32, libc::sched_param)>,
}

impl Realtime {
    pub fn start() -> Result<Self> {
        let mut guard = Self { saved: Vec::new() };
        let pids = threads();
        if pids.is_empty() {
            anyhow::bail!("no ksoftirqd thread found in /proc");
        }
        for pid in pids {
            let mut old = libc::sched_param { sched_priority: 0 };
            // SAFETY: plain syscalls with a pointer to a local struct.
            let policy = unsafe { libc::sched_getscheduler(pid) };
            // SAFETY: as above.
            if policy < 0 || unsafe { libc::sched_getparam(pid, &mut old) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("reading the scheduling of ksoftirqd {pid}"));
            }
            let fifo = libc::sched_param { sched_priority: 1 };
            // SAFETY: as above.
            if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &fifo) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("making ksoftirqd {pid} SCHED_FIFO"));
            }
            guard.saved.push((pid, policy, old));
        }
        Ok(guard)
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        for (pid, policy, param) in &self.saved {
            // SAFETY: plain syscall with a pointer to a saved struct.
            unsafe { libc::sched_setscheduler(*pid, *policy, param) };
        }
    }
}
