//! Namespace churn: named namespaces (`ip netns add/del`) and anonymous ones
//! held by short-lived `unshare -n sleep` processes, each kind kept at a
//! bound and replaced continuously.

use super::{run_tool, Stop};
use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Alive at once, of each kind.
pub const BOUND: usize = 50;
/// A namespace lives 10 to 19 s (spread, so they are replaced one by one).
const MIN_LIFE_SECS: u64 = 10;
/// At most this many creations of each kind per tick (start-up and catch-up).
const PER_TICK: usize = 3;
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct ChurnCounts {
    pub named_created: AtomicU64,
    pub anonymous_created: AtomicU64,
    pub failures: AtomicU64,
}

/// Runs until `stop`, then deletes what it created.
pub fn run(prefix: String, stop: Stop, counts: Arc<ChurnCounts>) {
    let mut named: VecDeque<(String, Instant)> = VecDeque::new();
    let mut anonymous: Vec<Child> = Vec::new();
    let mut seq = 0u64;
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        // Reported once per kind of failure is enough to see what goes wrong.
        if counts.failures.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("soak: churn: {what}: {error:#}");
        }
    };
    while !stop.is_set() {
        let now = Instant::now();
        // Named: delete those whose time is up, then fill up to the bound.
        while named.front().is_some_and(|(_, until)| *until <= now) {
            if let Some((name, _)) = named.pop_front() {
                if let Err(e) = run_tool("ip", &["netns", "del", &name]) {
                    failed("ip netns del", &e);
                }
            }
        }
        for _ in 0..PER_TICK {
            if named.len() >= BOUND {
                break;
            }
            seq += 1;
            let name = format!("{prefix}{seq}");
            match run_tool("ip", &["netns", "add", &name]) {
                Ok(()) => {
                    counts.named_created.fetch_add(1, Ordering::Relaxed);
                    named.push_back((name, now + life(seq)));
                }
                Err(e) => failed("ip netns add", &e),
            }
        }
        // Anonymous: reap the ones that ended, then fill up.
        anonymous.retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_)) | Err(_)));
        for _ in 0..PER_TICK {
            if anonymous.len() >= BOUND {
                break;
            }
            seq += 1;
            let secs = life(seq).as_secs().to_string();
            let child = Command::new("unshare")
                .args(["--net", "sleep", &secs])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn();
            match child {
                Ok(child) => {
                    counts.anonymous_created.fetch_add(1, Ordering::Relaxed);
                    anonymous.push(child);
                }
                Err(e) => failed("unshare --net sleep", &e),
            }
        }
        std::thread::sleep(TICK);
    }
    for mut child in anonymous {
        let _ = child.kill();
        let _ = child.wait();
    }
    for (name, _) in named {
        if let Err(e) = run_tool("ip", &["netns", "del", &name]) {
            eprintln!("soak: deleting namespace {name}: {e:#}");
        }
    }
}

fn life(seq: u64) -> Duration {
    Duration::from_secs(MIN_LIFE_SECS + seq % 10)
}
