//! The per-source series `/metrics` exposes during the top-sources flood:
//! the agent runs with `--prometheus-top-sources prefix` and is scraped every
//! second (and once after each round), as Prometheus would; every distinct
//! `synproxy_top_source_*` series seen is one Prometheus would have created.

use crate::ebpf_checks::{scrape_after_round, served_round_stamp, METRICS_ADDR};
use crate::line_protocol::Line;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The agent flags of the flood run.
pub const AGENT_ARGS: [&str; 5] = [
    "--prometheus-listen",
    METRICS_ADDR,
    "--stdout",
    "--prometheus-top-sources",
    "prefix",
];

/// The flood agent's `--top`.
pub const FLOOD_TOP: usize = 10;
/// The prefix of the flood's heavy sources (198.18.0.1-5).
pub const HEAVY_PREFIX: &str = "198.18.0.0/24";

/// The documented bound: each round's exposition has at most `--top` sources
/// per namespace, counter (3) and family (2), two series each.
pub fn bound(rounds: usize) -> usize {
    rounds * 2 * FLOOD_TOP * 3 * 2
}

/// The series `--prometheus-top-sources address` would have shown: each
/// distinct (netns, counter, family, source) of the line protocol's top lists,
/// two series each.
pub fn address_series(lines: &[Line]) -> usize {
    let sources: BTreeSet<Vec<&str>> = lines
        .iter()
        .filter(|l| l.measurement == crate::top_sources::MEASUREMENT)
        .map(|l| {
            ["netns", "counter", "family", "source"]
                .iter()
                .map(|k| l.tags.get(*k).map_or("", String::as_str))
                .collect()
        })
        .collect();
    2 * sources.len()
}

/// The RESULT fields and whether the series stayed within the bound: at
/// least one scrape, every source a prefix and no rank, the heavy sources'
/// /24 seen (with eBPF), at most [`bound`] distinct series.
pub fn judge(
    seen: &Seen,
    lines: &[Line],
    rounds: usize,
    ebpf: bool,
    notes: &mut Vec<String>,
) -> (String, bool) {
    let mut pass = true;
    let limit = bound(rounds);
    if seen.scrapes == 0 {
        pass = false;
        notes.push(format!(
            "/metrics: no scrape answered ({} failed)",
            seen.failed
        ));
    }
    if !seen.bad.is_empty() {
        pass = false;
        notes.push(format!(
            "/metrics with --prometheus-top-sources prefix: series with an address or a rank: {:?}",
            seen.bad.iter().take(5).collect::<Vec<_>>()
        ));
    }
    if seen.series.len() > limit {
        pass = false;
        notes.push(format!(
            "/metrics: {} distinct per-source series, over the bound {limit}",
            seen.series.len()
        ));
    }
    let heavy = format!("source=\"{HEAVY_PREFIX}\"");
    if ebpf && !seen.series.iter().any(|s| s.contains(&heavy)) {
        pass = false;
        notes.push(format!(
            "/metrics: no series of {HEAVY_PREFIX} (the heavy sources)"
        ));
    }
    (
        format!(
            "prom_scrapes={} prom_failed_scrapes={} prom_prefix_series={} prom_series_bound={limit} address_mode_series={}",
            seen.scrapes,
            seen.failed,
            seen.series.len(),
            address_series(lines)
        ),
        pass,
    )
}

/// What the scrapes saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub scrapes: usize,
    pub failed: usize,
    /// Distinct `synproxy_top_source_*` series (name and labels).
    pub series: BTreeSet<String>,
    /// Source labels that are not a /24 or /64 prefix, or series with a rank.
    pub bad: BTreeSet<String>,
}

impl Seen {
    fn add(&mut self, body: Option<&str>) {
        let Some(body) = body else {
            self.failed += 1;
            return;
        };
        self.scrapes += 1;
        for line in body.lines() {
            if !line.starts_with("synproxy_top_source_") {
                continue;
            }
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            let source = series
                .split_once("source=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(s, _)| s);
            let prefix = matches!(source, Some(s) if s.ends_with("/24") || s.ends_with("/64"));
            if !prefix || series.contains("rank=") {
                self.bad.insert(series.to_string());
            }
            self.series.insert(series.to_string());
        }
    }
}

/// A scraper thread, every second until [`Scraper::finish`].
pub struct Scraper {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn scrape() -> Option<String> {
    match crate::prometheus::http_get(METRICS_ADDR, "/metrics", None) {
        Ok((200, _, body)) => Some(body),
        _ => None,
    }
}

impl Scraper {
    pub fn start() -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next += Duration::from_secs(1);
                    let body = scrape();
                    if let Ok(mut seen) = s.lock() {
                        seen.add(body.as_deref());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The stamp of the round served now (take it before asking for a round).
    pub fn stamp(&self) -> Option<f64> {
        served_round_stamp()
    }

    /// One scrape of the round after `stamp`, so no round goes unseen.
    pub fn after_round(&self, stamp: Option<f64>) {
        let body = match scrape_after_round(stamp) {
            Ok((200, _, body)) => Some(body),
            _ => None,
        };
        if let Ok(mut seen) = self.seen.lock() {
            seen.add(body.as_deref());
        }
    }

    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        match Arc::try_unwrap(std::mem::take(&mut self.seen)) {
            Ok(m) => m.into_inner().unwrap_or_default(),
            Err(shared) => shared
                .lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default(),
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn seen_counts_distinct_series_and_flags_addresses_and_ranks() {
        let mut seen = Seen::default();
        let body = "# TYPE synproxy_top_source_events gauge\n\
            synproxy_top_source_events{netns=\"s\",family=\"ipv4\",counter=\"syn_received\",source=\"198.18.0.0/24\"} 500\n\
            synproxy_top_source_share{netns=\"s\",family=\"ipv4\",counter=\"syn_received\",source=\"198.18.0.0/24\"} 0.5\n\
            synproxy_syn_received_total{netns=\"s\"} 9\n";
        seen.add(Some(body));
        seen.add(Some(&body.replace("500", "700")));
        seen.add(None);
        assert_eq!((seen.scrapes, seen.failed, seen.series.len()), (2, 1, 2));
        assert!(seen.bad.is_empty());
        seen.add(Some(
            "synproxy_top_source_events{source=\"100.64.0.1\"} 1\n\
             synproxy_top_source_events{rank=\"1\",source=\"100.64.0.0/24\"} 1\n",
        ));
        assert_eq!(seen.bad.len(), 2);
        assert_eq!(seen.series.len(), 4);
    }
}
