//! What the live view knows, built from snapshots only: per namespace the
//! rate of each counter (difference of the kernel's u64 totals over the real
//! time between two rounds), a ring of the last minutes of rates, and the
//! round's eBPF view. Pure: the caller passes the time each round arrived.

use crate::fields::{Field, Values};
use crate::sample::{EbpfSample, SeriesId, Snapshot};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use synproxy_common::{Counter, COUNTER_COUNT};

/// How far back the sparklines reach.
pub const HISTORY_SPAN: Duration = Duration::from_secs(300);
/// At most this many points per counter: with `--netns all` on a host with
/// many namespaces the history must stay small (600 f32 = 2.4 KB a counter).
pub const MAX_HISTORY_POINTS: usize = 600;

/// Points kept per counter: [`HISTORY_SPAN`] at `interval`, within 2 and
/// [`MAX_HISTORY_POINTS`].
pub fn history_points(interval: Duration) -> usize {
    let n = HISTORY_SPAN.as_nanos().div_ceil(interval.as_nanos().max(1));
    usize::try_from(n)
        .unwrap_or(MAX_HISTORY_POINTS)
        .clamp(2, MAX_HISTORY_POINTS)
}

/// The last rates of one counter, oldest first, at most `capacity`.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    points: VecDeque<f32>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        Self {
            points: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, rate: f64) {
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(rate as f32);
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The newest `n` points (fewer if not that many yet), oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = f32> + '_ {
        self.points
            .iter()
            .skip(self.points.len().saturating_sub(n))
            .copied()
    }
}

/// Events per second of each counter between two readings of the totals;
/// `None` without elapsed time. Totals never go down (the sampler adds a
/// reset's new counts on top), so a drop can only be a bug: it reads as 0.
pub fn rates(
    before: &Values<u64>,
    after: &Values<u64>,
    elapsed: Duration,
) -> Option<[f64; COUNTER_COUNT]> {
    if elapsed.is_zero() {
        return None;
    }
    let secs = elapsed.as_secs_f64();
    Some(Counter::ALL.map(|c| {
        let i = Field::Counter(c).index();
        after[i].saturating_sub(before[i]) as f64 / secs
    }))
}

/// One namespace as the view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceView {
    pub series: SeriesId,
    /// `netns` label; `None` for the agent's own namespace.
    pub netns: Option<String>,
    pub totals: Values<u64>,
    /// Rates over the last interval, per counter in kernel order; `None`
    /// until the namespace was read twice.
    pub rates: Option<[f64; COUNTER_COUNT]>,
    /// The time the rates were taken over.
    pub elapsed: Option<Duration>,
    pub history: [History; COUNTER_COUNT],
    /// This round's eBPF view (IPv4, IPv6), with eBPF.
    pub ebpf: Option<[EbpfSample; 2]>,
    /// Read in the last round (false: retained, not found this round).
    pub present: bool,
    arrived: Instant,
}

impl NamespaceView {
    /// The label shown: the `netns` tag, or the agent's own namespace.
    pub fn label(&self) -> &str {
        self.netns.as_deref().unwrap_or("(own namespace)")
    }

    pub fn rate(&self, counter: Counter) -> Option<f64> {
        self.rates.map(|r| r[counter.index()])
    }
}

/// Everything the view shows, updated once per round.
#[derive(Clone, Debug)]
pub struct Model {
    pub interval: Duration,
    capacity: usize,
    /// In the snapshot's order; retained namespaces after them.
    pub namespaces: Vec<NamespaceView>,
    /// The latest round (agent health, failures, top sources).
    pub last: Option<Arc<Snapshot>>,
    pub rounds: u64,
}

impl Model {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            capacity: history_points(interval),
            namespaces: Vec::new(),
            last: None,
            rounds: 0,
        }
    }

    /// Takes one round that arrived at `at`. Namespaces are matched by
    /// series (a relabelled namespace keeps its history); those no longer
    /// in the snapshot at all are dropped.
    pub fn ingest(&mut self, snapshot: Arc<Snapshot>, at: Instant) {
        // By series: `--netns all` may bring thousands of namespaces.
        let mut old: HashMap<SeriesId, NamespaceView> = std::mem::take(&mut self.namespaces)
            .into_iter()
            .map(|v| (v.series, v))
            .collect();
        let mut take = |series: SeriesId| old.remove(&series);
        let mut next = Vec::with_capacity(snapshot.namespaces.len() + snapshot.retained.len());
        for ns in &snapshot.namespaces {
            let totals = ns.sample.totals;
            let view = match take(ns.series) {
                Some(mut v) => {
                    let elapsed = at.saturating_duration_since(v.arrived);
                    // A namespace missing for a while: the rate is an average
                    // over the gap, still true to the kernel's counts.
                    v.rates = rates(&v.totals, &totals, elapsed);
                    v.elapsed = v.rates.map(|_| elapsed);
                    if let Some(r) = v.rates {
                        for (h, rate) in v.history.iter_mut().zip(r) {
                            h.push(rate);
                        }
                    }
                    v.totals = totals;
                    v.netns.clone_from(&ns.sample.netns);
                    v.ebpf.clone_from(&ns.ebpf);
                    v.present = true;
                    v.arrived = at;
                    v
                }
                None => NamespaceView {
                    series: ns.series,
                    netns: ns.sample.netns.clone(),
                    totals,
                    rates: None,
                    elapsed: None,
                    history: std::array::from_fn(|_| History::new(self.capacity)),
                    ebpf: ns.ebpf.clone(),
                    present: true,
                    arrived: at,
                },
            };
            next.push(view);
        }
        for r in &snapshot.retained {
            if let Some(mut v) = take(r.series) {
                v.present = false;
                v.rates = None;
                v.elapsed = None;
                v.ebpf = None;
                next.push(v);
            }
        }
        self.namespaces = next;
        self.last = Some(snapshot);
        self.rounds += 1;
    }

    pub fn find(&self, series: SeriesId) -> Option<&NamespaceView> {
        self.namespaces.iter().find(|v| v.series == series)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fields::FIELD_COUNT;
    use crate::sample::{AgentHealth, NamespaceSnapshot, RetainedNamespace, Sample};

    /// Totals with `syn_received` = `syn` and `cookie_valid` = `valid`.
    pub fn totals(syn: u64, valid: u64) -> Values<u64> {
        let mut t = [0; FIELD_COUNT];
        t[Field::Counter(Counter::SynReceived).index()] = syn;
        t[Field::Counter(Counter::CookieValid).index()] = valid;
        t
    }

    pub fn snapshot(namespaces: &[(SeriesId, Option<&str>, Values<u64>)]) -> Snapshot {
        Snapshot {
            timestamp_ns: 1_795_873_250_765_150_438,
            namespaces: namespaces
                .iter()
                .map(|(series, netns, totals)| NamespaceSnapshot {
                    series: *series,
                    sample: Sample {
                        netns: netns.map(str::to_string),
                        totals: *totals,
                        timestamp_ns: 1,
                    },
                    ebpf: None,
                })
                .collect(),
            retained: Vec::new(),
            failures: Vec::new(),
            probes: None,
            agent: AgentHealth {
                round_duration: Duration::from_micros(100),
                ebpf_enabled: false,
                ebpf_attached: false,
                ebpf_off: Some("--no-ebpf".into()),
                programs: Vec::new(),
                influx: None,
            },
            top_sources: Vec::new(),
            top_ports: Vec::new(),
            stack: Vec::new(),
            defense: Vec::new(),
            attacks: Vec::new(),
        }
    }

    #[test]
    fn rates_are_deltas_over_real_time() {
        let r = rates(
            &totals(100, 0),
            &totals(350, 10),
            Duration::from_millis(500),
        )
        .unwrap();
        assert_eq!(r[Counter::SynReceived.index()], 500.0);
        assert_eq!(r[Counter::CookieValid.index()], 20.0);
        assert_eq!(r[Counter::CookieInvalid.index()], 0.0);
        assert_eq!(rates(&totals(1, 0), &totals(2, 0), Duration::ZERO), None);
        // Totals near u64::MAX stay exact differences (no float of the totals).
        let big = u64::MAX - 10;
        let r = rates(
            &totals(big, 0),
            &totals(big + 10, 0),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(r[0], 10.0);
        // Never negative.
        let r = rates(&totals(5, 0), &totals(3, 0), Duration::from_secs(1)).unwrap();
        assert_eq!(r[0], 0.0);
    }

    #[test]
    fn history_keeps_the_last_points() {
        assert_eq!(history_points(Duration::from_secs(1)), 300);
        assert_eq!(
            history_points(Duration::from_millis(10)),
            MAX_HISTORY_POINTS
        );
        assert_eq!(history_points(Duration::from_secs(3600)), 2);
        assert_eq!(history_points(Duration::from_secs(7)), 43);
        let mut h = History::new(3);
        assert!(h.is_empty());
        for x in 1..=5 {
            h.push(f64::from(x));
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.last(10).collect::<Vec<_>>(), vec![3.0, 4.0, 5.0]);
        assert_eq!(h.last(2).collect::<Vec<_>>(), vec![4.0, 5.0]);
        assert_eq!(History::new(0).last(1).count(), 0);
    }

    #[test]
    fn model_follows_series_and_elapsed_time() {
        let t0 = Instant::now();
        let mut m = Model::new(Duration::from_secs(1));
        m.ingest(Arc::new(snapshot(&[(1, Some("a"), totals(10, 0))])), t0);
        assert_eq!(m.namespaces[0].rates, None);
        // The round came 1.25 s later: 250 SYNs are 200/s, not 250/s.
        let t1 = t0 + Duration::from_millis(1250);
        m.ingest(Arc::new(snapshot(&[(1, Some("a"), totals(260, 5))])), t1);
        let a = &m.namespaces[0];
        assert_eq!(a.rate(Counter::SynReceived), Some(200.0));
        assert_eq!(a.rate(Counter::CookieValid), Some(4.0));
        assert_eq!(a.history[0].last(5).collect::<Vec<_>>(), vec![200.0]);
        // Relabelled (same series): history kept; a new series starts anew.
        let t2 = t1 + Duration::from_secs(1);
        m.ingest(
            Arc::new(snapshot(&[
                (1, Some("renamed"), totals(360, 5)),
                (2, Some("b"), totals(7, 7)),
            ])),
            t2,
        );
        assert_eq!(m.namespaces[0].label(), "renamed");
        assert_eq!(m.namespaces[0].history[0].len(), 2);
        assert_eq!(m.namespaces[1].rates, None);
        assert_eq!(m.rounds, 3);
        // Retained: kept without rates; gone from the snapshot: dropped.
        let mut s = snapshot(&[(2, Some("b"), totals(8, 7))]);
        s.retained.push(RetainedNamespace {
            series: 1,
            netns: Some("renamed".into()),
            totals: totals(360, 5),
            missing_rounds: 1,
        });
        m.ingest(Arc::new(s), t2 + Duration::from_secs(1));
        assert_eq!(m.namespaces.len(), 2);
        assert!(!m.find(1).unwrap().present);
        assert_eq!(m.find(1).unwrap().rates, None);
        m.ingest(
            Arc::new(snapshot(&[(2, Some("b"), totals(9, 7))])),
            t2 + Duration::from_secs(2),
        );
        assert!(m.find(1).is_none());
        assert_eq!(m.find(2).unwrap().rate(Counter::SynReceived), Some(1.0));
    }

    #[test]
    fn own_namespace_label() {
        let mut m = Model::new(Duration::from_secs(1));
        m.ingest(
            Arc::new(snapshot(&[(1, None, totals(0, 0))])),
            Instant::now(),
        );
        assert_eq!(m.namespaces[0].label(), "(own namespace)");
    }
}
