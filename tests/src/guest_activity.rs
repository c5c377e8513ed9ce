//! What else ran in the guest during a throughput run of the eBPF cost check:
//! every task's CPU time (`/proc/<pid>/task/<tid>/schedstat`) and the kernel's
//! softirq and interrupt counts, read before and after the run, so a slow run
//! names what took the time.

use std::collections::HashMap;

/// One reading: CPU ns per task (keyed by tid, with its name), softirqs by
/// kind, and all interrupts.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    tasks: HashMap<u32, (String, u64)>,
    softirqs: Vec<(String, u64)>,
    interrupts: u64,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Snapshot {
    pub fn take() -> Self {
        let mut tasks = HashMap::new();
        for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let dir = format!("/proc/{pid}/task");
            for task in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let base = format!("{dir}/{tid}");
                let ns = read(&format!("{base}/schedstat"))
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok());
                if let Some(ns) = ns {
                    let comm = read(&format!("{base}/comm")).trim().to_string();
                    tasks.insert(tid, (comm, ns));
                }
            }
        }
        let softirqs = read("/proc/softirqs")
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next()?.trim_end_matches(':').to_string();
                Some((name, w.filter_map(|v| v.parse::<u64>().ok()).sum()))
            })
            .collect();
        let interrupts = read("/proc/stat")
            .lines()
            .find_map(|l| l.strip_prefix("intr "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Self {
            tasks,
            softirqs,
            interrupts,
        }
    }

    /// The tasks that used the most CPU since `before` (the `top` busiest,
    /// in us), the softirqs and interrupts counted since, in one line.
    pub fn since(&self, before: &Snapshot, top: usize) -> String {
        let mut busy: Vec<(u64, &str, u32)> = self
            .tasks
            .iter()
            .map(|(tid, (comm, ns))| {
                let was = before.tasks.get(tid).map_or(0, |t| t.1);
                (ns.saturating_sub(was), comm.as_str(), *tid)
            })
            .filter(|(ns, _, _)| *ns > 0)
            .collect();
        busy.sort_by_key(|b| std::cmp::Reverse(b.0));
        let tasks: Vec<String> = busy
            .iter()
            .take(top)
            .map(|(ns, comm, tid)| format!("{comm}/{tid}={}us", ns / 1000))
            .collect();
        let softirqs: Vec<String> = self
            .softirqs
            .iter()
            .filter_map(|(name, n)| {
                let was = before
                    .softirqs
                    .iter()
                    .find(|(b, _)| b == name)
                    .map_or(0, |b| b.1);
                (n > &was).then(|| format!("{name}={}", n - was))
            })
            .collect();
        format!(
            "tasks {} softirqs {} irqs={}",
            tasks.join(","),
            softirqs.join(","),
            self.interrupts.saturating_sub(before.interrupts)
        )
    }
}
