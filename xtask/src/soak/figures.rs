//! What the soak measures: one [`Sample`] of the agent and the load a minute,
//! read from /proc; the table; and the flat-or-growing verdict over the first
//! and last sample.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// RSS may end up to this factor above the start ...
pub const RSS_FACTOR: f64 = 1.2;
/// ... plus this much (allocator and buffer slack).
pub const RSS_SLACK_KIB: u64 = 4 * 1024;
/// Open descriptors may end this many above the start, plus one per
/// namespace more on the host than at the start (the agent keeps one stat
/// file open per namespace it reads).
pub const FD_SLACK: u64 = 8;
/// Threads may end this many above the start (a short-lived worker that
/// enters new namespaces can be caught alive).
pub const THREAD_SLACK: u64 = 2;

/// The agent and the load at one moment; counters are totals since the start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub warnings: u64,
    pub errors: u64,
    /// Network namespaces on the host (named and held by processes).
    pub namespaces: u64,
    /// Sample lines of the last `/metrics` answer.
    pub series: u64,
    pub stdout_lines: u64,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub connections_ok: u64,
    pub connections_failed: u64,
    pub influx_kills: u64,
}

/// `Err` names what grew; `Ok` means flat.
pub fn verdict(start: &Sample, end: &Sample) -> Result<(), Vec<String>> {
    let mut grew = Vec::new();
    let rss_limit = (start.rss_kib as f64 * RSS_FACTOR) as u64 + RSS_SLACK_KIB;
    if end.rss_kib > rss_limit {
        grew.push(format!(
            "RSS {} KiB -> {} KiB (limit {rss_limit} KiB = start x {RSS_FACTOR} + {RSS_SLACK_KIB} KiB)",
            start.rss_kib, end.rss_kib
        ));
    }
    let fd_limit = start.fds + FD_SLACK + end.namespaces.saturating_sub(start.namespaces);
    if end.fds > fd_limit {
        grew.push(format!(
            "open fds {} -> {} (limit {fd_limit}: start + {FD_SLACK} + namespaces added on the host, {} -> {})",
            start.fds, end.fds, start.namespaces, end.namespaces
        ));
    }
    let thread_limit = start.threads + THREAD_SLACK;
    if end.threads > thread_limit {
        grew.push(format!(
            "threads {} -> {} (limit {thread_limit})",
            start.threads, end.threads
        ));
    }
    if grew.is_empty() {
        Ok(())
    } else {
        Err(grew)
    }
}

pub const TABLE_HEADER: &str = "  time  RSS MiB  fds  thr  WARN ERROR  netns series  stdout lines  scrapes ok/fail  conns ok/fail  influx kills";

pub fn table_row(s: &Sample) -> String {
    let secs = s.at.as_secs();
    format!(
        "{:>3}:{:02} {:>8.2} {:>4} {:>4} {:>5} {:>5} {:>6} {:>6} {:>13} {:>10}/{:<5} {:>8}/{:<5} {:>12}",
        secs / 60,
        secs % 60,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        s.warnings,
        s.errors,
        s.namespaces,
        s.series,
        s.stdout_lines,
        s.scrapes_ok,
        s.scrapes_failed,
        s.connections_ok,
        s.connections_failed,
        s.influx_kills
    )
}

/// The agent's figures from /proc/PID (RSS, peak, fds, threads); `None` once
/// it is gone.
pub fn read_process(pid: u32) -> Option<(u64, u64, u64, u64)> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let rss = crate::bench::status_kib(&status, "VmRSS:")?;
    let hwm = crate::bench::status_kib(&status, "VmHWM:")?;
    let fds = std::fs::read_dir(dir.join("fd")).ok()?.count() as u64;
    let threads = std::fs::read_dir(dir.join("task")).ok()?.count() as u64;
    Some((rss, hwm, fds, threads))
}

/// Whether the process catches or ignores `signal` (SigCgt/SigIgn of its
/// status): if neither, the signal's default action applies.
pub fn handles_signal(pid: u32, signal: i32) -> bool {
    super::proc_signals::signal_in(pid, &["SigCgt:", "SigIgn:"], signal)
}

/// Distinct network namespaces on the host: bound under /run/netns or held
/// by a process (what `--netns all` can see).
pub fn count_namespaces() -> u64 {
    let mut seen = BTreeSet::new();
    let mut add = |path: &Path| {
        if let Ok(meta) = std::fs::metadata(path) {
            seen.insert((meta.dev(), meta.ino()));
        }
    };
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        add(&entry.path());
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            add(&entry.path().join("ns/net"));
        }
    }
    seen.len() as u64
}

/// WARN and ERROR lines of the agent's text log, read as it grows.
#[derive(Debug, Default)]
pub struct LogCounter {
    offset: u64,
    partial: String,
    pub warnings: u64,
    pub errors: u64,
    /// Messages with digits masked, and how often each came.
    pub kinds: HashMap<String, u64>,
}

/// Messages are cut here for the summary.
const KIND_CHARS: usize = 110;

impl LogCounter {
    /// Reads what was appended to `path` since the last call.
    pub fn update(&mut self, path: &Path) {
        let Ok(mut file) = std::fs::File::open(path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if let Ok(n) = file.read_to_end(&mut bytes) {
            self.offset += n as u64;
            self.partial.push_str(&String::from_utf8_lossy(&bytes));
        }
        let complete = match self.partial.rfind('\n') {
            Some(end) => {
                let rest = self.partial.split_off(end + 1);
                std::mem::replace(&mut self.partial, rest)
            }
            None => return,
        };
        for line in complete.lines() {
            self.count(line);
        }
    }

    /// One text-format line: `<RFC 3339 time> <LEVEL> <message>`.
    fn count(&mut self, line: &str) {
        let mut parts = line.splitn(3, ' ');
        let (_, level) = (parts.next(), parts.next().unwrap_or_default());
        match level {
            "WARN" => self.warnings += 1,
            "ERROR" => self.errors += 1,
            _ => return,
        }
        let message = parts.next().unwrap_or_default().trim_start();
        let kind: String = message
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(KIND_CHARS)
            .collect();
        *self.kinds.entry(format!("{level} {kind}")).or_default() += 1;
    }

    /// The most frequent kinds, most frequent first.
    pub fn top_kinds(&self, n: usize) -> String {
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut out = String::new();
        for (kind, count) in kinds.into_iter().take(n) {
            let _ = writeln!(out, "  {count:>6}  {kind}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rss_kib: u64, fds: u64, threads: u64, namespaces: u64) -> Sample {
        Sample {
            rss_kib,
            fds,
            threads,
            namespaces,
            ..Sample::default()
        }
    }

    #[test]
    fn equal_figures_are_flat() {
        let s = sample(10_000, 120, 6, 110);
        assert_eq!(verdict(&s, &s), Ok(()));
    }

    #[test]
    fn rss_within_factor_and_slack_is_flat_and_above_is_growing() {
        let start = sample(10_000, 120, 6, 110);
        // 10,000 x 1.2 + 4,096 = 16,096.
        assert_eq!(verdict(&start, &sample(16_096, 120, 6, 110)), Ok(()));
        let grew = verdict(&start, &sample(16_097, 120, 6, 110)).unwrap_err();
        assert!(
            grew[0].starts_with("RSS 10000 KiB -> 16097 KiB"),
            "{grew:?}"
        );
    }

    #[test]
    fn fds_may_follow_the_namespaces_but_not_more() {
        let start = sample(10_000, 120, 6, 110);
        assert_eq!(verdict(&start, &sample(10_000, 128, 6, 110)), Ok(()));
        assert!(verdict(&start, &sample(10_000, 129, 6, 110)).is_err());
        // 20 more namespaces on the host: 20 more files the agent may hold.
        assert_eq!(verdict(&start, &sample(10_000, 148, 6, 130)), Ok(()));
        // Fewer descriptors is never growth.
        assert_eq!(verdict(&start, &sample(10_000, 20, 6, 10)), Ok(()));
    }

    #[test]
    fn threads_beyond_the_slack_are_growing() {
        let start = sample(10_000, 120, 6, 110);
        assert_eq!(verdict(&start, &sample(10_000, 120, 8, 110)), Ok(()));
        let grew = verdict(&start, &sample(10_000, 120, 9, 110)).unwrap_err();
        assert_eq!(grew, vec!["threads 6 -> 9 (limit 8)".to_string()]);
    }

    #[test]
    fn handles_signal_reads_the_ignored_and_caught_masks() {
        let spawn = |script: &str| {
            std::process::Command::new("sh")
                .args(["-c", script])
                .spawn()
                .unwrap()
        };
        let mut plain = spawn("exec sleep 30");
        let mut ignoring = spawn("trap '' USR2; exec sleep 30");
        // Until sh has exec'd sleep, its own handlers show: wait for sleep.
        let is_sleep = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !(is_sleep(plain.id()) && is_sleep(ignoring.id())) {
            assert!(std::time::Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (p, i) = (
            handles_signal(plain.id(), libc::SIGUSR2),
            handles_signal(ignoring.id(), libc::SIGUSR2),
        );
        for child in [&mut plain, &mut ignoring] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(!p, "sleep has the default action for SIGUSR2");
        assert!(i, "SIGUSR2 ignored after trap ''");
    }

    #[test]
    fn log_counter_counts_levels_and_groups_messages() {
        let dir = std::env::temp_dir().join(format!("xtask-soak-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.log");
        std::fs::write(
            &path,
            "2026-01-01T00:00:00Z INFO  started\n\
             2026-01-01T00:00:01Z WARN  InfluxDB write failed after 12 ms\n\
             2026-01-01T00:00:02Z WARN  InfluxDB write failed after 345 ms\n\
             2026-01-01T00:00:03Z ERROR bad\n\
             2026-01-01T00:00:04Z WARN  half a li",
        )
        .unwrap();
        let mut counter = LogCounter::default();
        counter.update(&path);
        assert_eq!((counter.warnings, counter.errors), (2, 1));
        assert_eq!(counter.kinds["WARN InfluxDB write failed after ## ms"], 1);
        assert_eq!(counter.kinds["WARN InfluxDB write failed after ### ms"], 1);
        // The unfinished line counts once it is complete, and only once.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"ne\n"))
            .unwrap();
        counter.update(&path);
        counter.update(&path);
        assert_eq!(counter.warnings, 3);
        assert_eq!(counter.kinds["WARN half a line"], 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
