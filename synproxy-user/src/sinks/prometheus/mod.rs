//! Prometheus `/metrics`: the latest snapshot, rendered once per snapshot.
//!
//! Each round the sink adds the round's eBPF events to its own cumulative
//! counters (per series, so they go on across probe re-attaches and label
//! changes) and publishes the snapshot with them as one immutable value
//! (`tokio::sync::watch`). The first scrape of a value renders it once per
//! format and later scrapes of it are served from that buffer: a scrape never
//! waits for a round in progress, and a round never waits for a scrape. Exposition by the Prometheus project's
//! `prometheus-client` crate: OpenMetrics 1.0 when the scraper's `Accept`
//! prefers it, the text format 0.0.4 otherwise. The HTTP server is hyper's,
//! on the agent's runtime.
//!
//! Namespaces not found in a round stay in the exposition, with the counters
//! they had, as long as the sampler retains them (their per-round gauges go at
//! once); then they leave. A retained namespace whose label a present one has
//! taken is left out (labels are unique in each exposition).

mod auth;
mod exposition;
mod listener;
mod page;
mod reload;
mod routes;
mod server;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
pub(super) mod tests;
mod tls;
mod top_port_series;
mod top_series;
#[cfg(test)]
mod top_series_tests;
mod web_config;
#[cfg(test)]
mod web_config_tests;

pub use exposition::{netns_label, render, Format};
pub use listener::Listener;
pub use page::Page;
pub use top_series::TopSeries;

use super::gate::Gate;
use super::{Ended, Sink};
use crate::analysis::attack::AttackEvent;
use crate::reconcile::ebpf_vs_proc::Status;
use crate::sample::{SeriesId, Snapshot};
use log::info;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use synproxy_common::COUNTER_COUNT;
use tokio::sync::watch;

/// The `netns` label of the agent's own namespace (run without `--netns`,
/// where line protocol has no `netns` tag), so every series has the same
/// label set.
pub const OWN_NETNS_LABEL: &str = "self";

/// Content type of OpenMetrics text 1.0.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reconcile states, in the order of the per-series round counters.
const STATUSES: [Status; 4] = [
    Status::Exact,
    Status::Lagging,
    Status::Missed,
    Status::ProcOnly,
];

/// What the sink adds up itself, per series, across rounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EbpfTotals {
    /// eBPF-counted events per family and counter (sum of the rounds' events).
    pub events: [[u64; COUNTER_COUNT]; 2],
    /// Rounds per reconcile state, in [`STATUSES`] order.
    pub rounds: [u64; 4],
}

/// What a scrape renders: the latest snapshot and the sink's own totals.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub snapshot: Option<Arc<Snapshot>>,
    pub ebpf: HashMap<SeriesId, EbpfTotals>,
    /// Events the probes lost, all namespaces (sum of the rounds').
    pub probe_misses: u64,
    /// Rounds sampled since start.
    pub rounds: u64,
    /// Which per-source series to show (`--prometheus-top-sources`).
    pub top_series: TopSeries,
    /// The attack detector's starts, ends and attacks in progress.
    pub attacks: exposition::attacks::AttackBook,
}

impl Published {
    /// Adds one round: its eBPF events to the totals, and the snapshot as the
    /// latest. State of series the sampler no longer keeps is dropped.
    pub fn add(&mut self, snapshot: &Arc<Snapshot>) {
        self.rounds += 1;
        for ns in &snapshot.namespaces {
            let Some(families) = &ns.ebpf else {
                continue;
            };
            let totals = self.ebpf.entry(ns.series).or_default();
            for (f, sample) in families.iter().enumerate() {
                for c in 0..COUNTER_COUNT {
                    totals.events[f][c] = totals.events[f][c].saturating_add(sample.events[c]);
                }
            }
            if let Some(i) = STATUSES.iter().position(|s| *s == families[0].status) {
                totals.rounds[i] += 1;
            }
        }
        if let Some(probes) = &snapshot.probes {
            self.probe_misses = self.probe_misses.saturating_add(probes.probe_misses);
        }
        let kept: HashSet<SeriesId> = snapshot
            .namespaces
            .iter()
            .map(|n| n.series)
            .chain(snapshot.retained.iter().map(|r| r.series))
            .collect();
        self.ebpf.retain(|id, _| kept.contains(id));
        self.attacks.round(&snapshot.attacks);
        self.snapshot = Some(Arc::clone(snapshot));
    }
}

/// The sink: accumulates and publishes; the server task renders.
pub struct PrometheusSink {
    published: Published,
    tx: watch::Sender<Arc<Page>>,
}

impl PrometheusSink {
    /// Starts serving on `listener` (on the current tokio runtime); requests
    /// are read once `gate` is open.
    pub fn start(listener: Listener, gate: Gate) -> Result<Self, String> {
        let addr = listener.local_addr();
        let web = listener.web_config();
        let scheme = match &web {
            Some(web) if web.tls() => "https",
            _ => "http",
        };
        let top_series = listener.top_series();
        let socket = listener.into_tokio()?;
        let published = Published {
            top_series,
            ..Published::default()
        };
        let (tx, rx) = watch::channel(Arc::new(Page::new(Arc::new(published.clone()))));
        let limits = server::Limits::default();
        tokio::spawn(server::serve(socket, rx, gate, limits, web));
        info!("Prometheus metrics on {scheme}://{addr}/metrics");
        Ok(Self { published, tx })
    }
}

impl Sink for PrometheusSink {
    fn send(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), Ended> {
        self.published.add(snapshot);
        let page = Page::new(Arc::new(self.published.clone()));
        self.tx.send_replace(Arc::new(page));
        Ok(())
    }

    fn finish(&mut self, _deadline: Instant) -> Result<(), Ended> {
        Ok(())
    }

    /// Starts and ends show at the next scrape, not the next round.
    fn attack(&mut self, event: &Arc<AttackEvent>) -> Result<(), Ended> {
        self.published.attacks.event(event);
        let page = Page::new(Arc::new(self.published.clone()));
        self.tx.send_replace(Arc::new(page));
        Ok(())
    }
}
