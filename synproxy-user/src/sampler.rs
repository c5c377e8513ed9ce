//! The sampler: one round reads every selected namespace (sources), turns the
//! readings into u64 totals and joins them with the eBPF counts (reconcile),
//! and returns one [`Snapshot`] (sample), knowing nothing of where it goes.
//! One failing namespace is reported once and does not stop the others.
//!
//! Series are keyed by the namespace's identity ([`NamespaceId`]), not by its
//! label: a namespace keeps its totals when it loses its name or is briefly
//! undiscoverable, and a new namespace reusing a name or an inode starts its
//! own series.

use crate::cli::NetnsSelection;
use crate::privileges;
use crate::ranking::{Family, IntervalTotal, SourceCount, TopConfig, TopRanker};
use crate::reconcile::ebpf_vs_proc::{self as ebpf_reconcile, Bracket, Reconciler};
use crate::reconcile::join::{self, NamespaceReading};
use crate::reconcile::wrap_tracker::{ResetReason, Update, WrapTracker};
use crate::sample::{
    now_ns, AgentHealth, EbpfSample, NamespaceSnapshot, RetainedNamespace, Sample, SeriesId,
    Snapshot, SourceMapStats, TopSources,
};
use crate::sources::ebpf::address_counts::SourcesRound;
use crate::sources::ebpf::{EbpfSource, FamilyCounts, NsKey, Stop};
use crate::sources::proc::netns::{self, NamespaceId, NetnsError, NetnsReader, NetnsTarget};
use crate::sources::proc::netns_policy::{Selector, DEFAULT_MAX_NAMESPACES};
use crate::sources::proc::proc_file::{KeptStat, ReadError, Reading, STAT_FILE};
use log::{debug, info, warn};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct SamplerConfig {
    /// One round only: failures are errors, not retried.
    pub once: bool,
    pub proc_root: PathBuf,
    pub netns_dir: PathBuf,
    pub selection: NetnsSelection,
    /// The eBPF source when eBPF is in use (adds the `synproxy_ebpf` lines).
    pub ebpf: Option<EbpfSource>,
    /// Without it: why (reported in every snapshot's agent health).
    pub ebpf_off: Option<std::sync::Arc<str>>,
    /// Set on SIGTERM/SIGINT: long steps (attaching) stop early.
    pub stop: Arc<Stop>,
    /// `--top`: how the per-source counts are ranked into
    /// [`Snapshot::top_sources`] (by [`TopRanker`]).
    pub top: TopConfig,
}

/// What a series is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SeriesKey {
    /// The agent's own namespace (without `--netns`: Telegraf's line).
    Own,
    Netns(NamespaceId),
}

/// Per-series state kept between rounds.
struct Series {
    /// Unique for the life of the agent ([`SeriesId`]).
    id: SeriesId,
    label: String,
    tracker: WrapTracker,
    reconciler: Reconciler,
    /// Rounds since the namespace was last read.
    missing_rounds: u32,
}

impl Series {
    fn new(id: SeriesId, label: &str) -> Self {
        Self {
            id,
            label: label.to_string(),
            tracker: WrapTracker::new(),
            reconciler: Reconciler::new(),
            missing_rounds: 0,
        }
    }
}

/// How long (in rounds) a vanished namespace's state is kept for its return.
pub const VANISHED_ROUNDS_KEPT: u32 = 360;

/// Pauses before re-reading a namespace whose /proc total fell outside its
/// eBPF bracket (an event held between its probe and its increment).
const BRACKET_RETRIES: [Duration; 3] = [
    Duration::from_millis(1),
    Duration::from_millis(4),
    Duration::from_millis(16),
];

/// One namespace read this round.
struct Read {
    key: SeriesKey,
    label: String,
    /// What to read again if the bracket does not hold.
    target: Option<NetnsTarget>,
    ebpf_key: Option<NsKey>,
    before: Option<FamilyCounts>,
    after: Option<FamilyCounts>,
    totals: crate::fields::Values<u64>,
    reset: bool,
}

pub struct Sampler {
    config: SamplerConfig,
    series: HashMap<SeriesKey, Series>,
    /// The error last reported per label, so it is logged once.
    failing: HashMap<String, String>,
    buf: Vec<u8>,
    /// The agent's own stat file (kept open on procfs) and its name in logs.
    own_file: KeptStat,
    own_name: String,
    /// Other namespaces' stat files (kept open on procfs).
    reader: NetnsReader,
    /// Identity of the agent's own network namespace (eBPF only).
    own_id: Option<NamespaceId>,
    last_round_failed: bool,
    /// Namespaces entered this round whose stat file could not be read.
    present_failing: HashSet<SeriesKey>,
    /// The last [`SeriesId`] handed out.
    last_series_id: SeriesId,
    ranker: TopRanker,
    /// `--netns all`: which of the namespaces found are tracked.
    selector: Option<Selector>,
    /// At most this many series of namespaces not found are kept.
    max_retained: usize,
}

/// The `failing` key of discovery failures (no namespace label has a NUL).
const DISCOVERY_LABEL: &str = "\0netns-discovery";
/// The same for processes refused even with CAP_SYS_PTRACE (warned once).
const DENIED_ANYWAY_LABEL: &str = "\0netns-discovery-policy";

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let own_id = config
            .ebpf
            .as_ref()
            .and_then(|_| netns::own_identity(&config.proc_root));
        let own_path = config.proc_root.join(STAT_FILE);
        let config_top = config.top;
        let selector = match &config.selection {
            NetnsSelection::All(policy) => Some(Selector::new(*policy, &config.proc_root)),
            _ => None,
        };
        let max_retained = selector
            .as_ref()
            .map_or(DEFAULT_MAX_NAMESPACES, |s| s.policy().max);
        Self {
            selector,
            max_retained,
            own_name: own_path.display().to_string(),
            own_file: KeptStat::new(own_path),
            reader: NetnsReader::new(),
            config,
            series: HashMap::new(),
            failing: HashMap::new(),
            buf: Vec::new(),
            own_id,
            last_round_failed: false,
            present_failing: HashSet::new(),
            last_series_id: 0,
            ranker: TopRanker::new(config_top),
        }
    }

    /// With eBPF: one silent round, so that the first emitted round already
    /// reconciles against a baseline taken now.
    pub fn prime(&mut self) {
        if self.config.ebpf.is_some() {
            let _ = self.sample();
        }
    }

    /// Stops the eBPF probes (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(mut ebpf) = self.config.ebpf.take() {
            ebpf.detach();
        }
    }

    /// SIGUSR1: releases the eBPF probes until the modules are reloaded
    /// ([`EbpfSource::release`]).
    pub fn release_probes(&mut self) {
        match self.config.ebpf.as_mut() {
            Some(ebpf) => ebpf.release(),
            None => info!("SIGUSR1: no eBPF probes to release"),
        }
    }

    /// Between rounds: keeps the peak-rate map small (see [`EbpfSource::drain_rates`]).
    pub fn drain_rates(&mut self) {
        if let Some(ebpf) = self.config.ebpf.as_mut() {
            ebpf.drain_rates();
        }
    }

    /// How often [`Sampler::drain_rates`] should run, when eBPF is in use.
    pub fn drain_period(&self) -> Option<Duration> {
        self.config
            .ebpf
            .as_ref()
            .map(|e| e.rate_resolution() * synproxy_common::RATE_DRAIN_BUCKETS)
    }

    /// Whether some selected namespace could not be read in the last round.
    pub fn last_round_failed(&self) -> bool {
        self.last_round_failed
    }

    pub fn sample(&mut self) -> Snapshot {
        let started = Instant::now();
        let mut round = Snapshot {
            timestamp_ns: 0,
            namespaces: Vec::new(),
            retained: Vec::new(),
            failures: Vec::new(),
            probes: None,
            agent: AgentHealth {
                round_duration: Duration::ZERO,
                ebpf_enabled: self.config.ebpf.is_some(),
                ebpf_attached: false,
                ebpf_off: self.config.ebpf_off.clone(),
                programs: Vec::new(),
                influx: None,
            },
            top_sources: Vec::new(),
        };
        // Attach (or re-attach after a module reload) before reading /proc, so a
        // new baseline is taken after the probes are in place.
        if let Some(ebpf) = self.config.ebpf.as_mut() {
            ebpf.poll(&self.config.stop);
        }
        let generation = self.config.ebpf.as_ref().and_then(EbpfSource::generation);
        let mut reads = match self.config.selection.clone() {
            NetnsSelection::Own => self.read_own(&mut round),
            NetnsSelection::Named(names) => {
                let targets = netns::named_targets(&names, &self.config.netns_dir);
                self.read_namespaces(&targets, &mut round)
            }
            NetnsSelection::All(_) => {
                let found = netns::discover(&self.config.proc_root, &self.config.netns_dir);
                self.report_denied(&found, &mut round);
                let targets = match self.selector.as_mut() {
                    Some(selector) => selector.select(found.targets),
                    None => found.targets,
                };
                self.read_namespaces(&targets, &mut round)
            }
        };
        if let Some(generation) = generation {
            self.settle_brackets(&mut reads, generation);
        }
        // Namespaces not read this round are released (their files closed).
        self.reader.end_round();
        self.age_series(&reads);
        let timestamp_ns = now_ns();
        round.timestamp_ns = timestamp_ns;
        let mut ebpf = self.reconcile_ebpf(&reads, generation, timestamp_ns, &mut round);
        for (i, read) in reads.iter().enumerate() {
            round.namespaces.push(NamespaceSnapshot {
                // Every read has its series (created by `track`, kept by `age_series`).
                series: self.series.get(&read.key).map_or(0, |s| s.id),
                sample: Sample {
                    netns: (read.key != SeriesKey::Own).then(|| read.label.clone()),
                    totals: read.totals,
                    timestamp_ns,
                },
                ebpf: ebpf.get_mut(i).and_then(Option::take),
            });
        }
        round.retained = self.retained();
        round.agent.ebpf_attached = round.probes.as_ref().is_some_and(|p| p.attached);
        self.last_round_failed = !round.failures.is_empty();
        round.agent.round_duration = started.elapsed();
        round
    }

    /// Series kept but not read this round (their last label and totals).
    fn retained(&self) -> Vec<RetainedNamespace> {
        let mut out: Vec<RetainedNamespace> = self
            .series
            .iter()
            .filter(|(_, s)| s.missing_rounds > 0)
            .filter_map(|(key, s)| {
                Some(RetainedNamespace {
                    series: s.id,
                    netns: (*key != SeriesKey::Own).then(|| s.label.clone()),
                    totals: s.tracker.totals()?,
                    missing_rounds: s.missing_rounds,
                })
            })
            .collect();
        out.sort_by_key(|r| r.series);
        out
    }

    fn around(&self) -> impl Fn(&NamespaceId) -> Option<FamilyCounts> + Sync + '_ {
        let view = self
            .config
            .ebpf
            .as_ref()
            .filter(|e| e.generation().is_some())
            .map(EbpfSource::counts_view);
        move |id: &NamespaceId| view.as_ref().and_then(|v| v.get(id.ebpf_key()))
    }

    fn read_own(&mut self, round: &mut Snapshot) -> Vec<Read> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut file = std::mem::replace(&mut self.own_file, KeptStat::new(PathBuf::new()));
        let result = {
            let around = self.around();
            netns::read_own(&mut file, self.own_id, &around, &mut buf)
        };
        self.own_file = file;
        self.buf = buf;
        let name = std::mem::take(&mut self.own_name);
        let reads = match result {
            Ok((id, before, reading, after)) => {
                let read = self.track(SeriesKey::Own, &name, "", reading);
                vec![Read {
                    ebpf_key: id.map(|id| id.ebpf_key()),
                    before,
                    after,
                    ..read
                }]
            }
            Err(e) => {
                if matches!(e, ReadError::Missing { .. }) {
                    if let Some(series) = self.series.get_mut(&SeriesKey::Own) {
                        series.tracker.counters_gone();
                    }
                }
                self.fail("", e.to_string(), round);
                Vec::new()
            }
        };
        self.own_name = name;
        reads
    }

    fn read_namespaces(&mut self, targets: &[NetnsTarget], round: &mut Snapshot) -> Vec<Read> {
        let mut reader = std::mem::take(&mut self.reader);
        let results = {
            let around = self.around();
            reader.read(targets, &self.config.proc_root, &around)
        };
        self.reader = reader;
        // Failures of namespaces no longer selected go with them (their
        // recovery cannot be seen), so the map stays bounded under churn.
        if !self.failing.is_empty() {
            let labels: HashSet<&str> = targets.iter().map(|t| t.label.as_str()).collect();
            self.failing
                .retain(|label, _| label.starts_with('\0') || labels.contains(label.as_str()));
        }
        let mut reads = Vec::with_capacity(targets.len());
        for (target, result) in targets.iter().zip(results) {
            match result {
                Ok(ns) => {
                    let key = SeriesKey::Netns(ns.id);
                    let name = format!("netns {}", target.label);
                    let read = self.track(key, &name, &target.label, ns.reading);
                    reads.push(Read {
                        target: Some(target.clone()),
                        ebpf_key: Some(ns.id.ebpf_key()),
                        before: ns.before,
                        after: ns.after,
                        ..read
                    });
                }
                Err(e) if target.transient && e.is_vanished() => {
                    debug!("{e} (process exited during the scan)");
                }
                Err(e) => {
                    if let NetnsError::Read { id, source, .. } = &e {
                        // The namespace is there (it was entered), its file is
                        // not: it is not "gone", and a missing file means its
                        // counters were destroyed (module unloaded).
                        self.present_failing.insert(SeriesKey::Netns(*id));
                        if let (ReadError::Missing { .. }, Some(series)) =
                            (source, self.series.get_mut(&SeriesKey::Netns(*id)))
                        {
                            series.tracker.counters_gone();
                        }
                    }
                    self.fail(&target.label, e.to_string(), round);
                }
            }
        }
        reads
    }

    /// `--netns all`: processes whose namespace could not be inspected are
    /// never skipped silently (a namespace only they use would go unreported).
    /// For lack of CAP_SYS_PTRACE it is a failure of the round (logged once,
    /// with its recovery); with it, something else (a security module's
    /// policy) refuses, which is logged once as a warning.
    fn report_denied(&mut self, found: &netns::Discovery, round: &mut Snapshot) {
        let Some((path, e)) = &found.first_denied else {
            if self.failing.remove(DISCOVERY_LABEL).is_some() {
                info!("--netns all: every process's network namespace can be inspected again");
            }
            return;
        };
        debug!(
            "--netns all: {} processes could not be inspected (first: {}: {e})",
            found.denied,
            path.display()
        );
        let error = std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EACCES));
        if privileges::effective_has(privileges::CAP_SYS_PTRACE) {
            let message = format!(
                "--netns all: {}: {error} even with CAP_SYS_PTRACE (a security policy?); namespaces only such processes use are not reported",
                path.display()
            );
            if !self.failing.contains_key(DENIED_ANYWAY_LABEL) {
                warn!("{message}");
                self.failing
                    .insert(DENIED_ANYWAY_LABEL.to_string(), message);
            }
            return;
        }
        let message = format!(
            "--netns all: cannot inspect the network namespace of other users' processes \
             ({}: {error}); namespaces only they use are not reported: the agent needs CAP_SYS_PTRACE for --netns all",
            self.config.proc_root.join("PID/ns/net").display(),
        );
        self.fail(DISCOVERY_LABEL, message, round);
    }

    fn fail(&mut self, label: &str, message: String, round: &mut Snapshot) {
        if self.config.once {
            log::error!("{message}");
        } else if self.failing.get(label) != Some(&message) {
            warn!("{message}; retrying every interval");
            self.failing.insert(label.to_string(), message.clone());
        }
        round.failures.push(message);
    }

    /// Feeds a reading to its series' wrap tracker.
    fn track(&mut self, key: SeriesKey, name: &str, label: &str, reading: Reading) -> Read {
        if self.failing.remove(label).is_some() {
            info!("{name}: synproxy counters readable again");
        }
        let next_id = self.last_series_id + 1;
        let series = self
            .series
            .entry(key)
            .or_insert_with(|| Series::new(next_id, label));
        if series.id == next_id {
            self.last_series_id = next_id;
        }
        let came_back = series.missing_rounds > 0;
        series.missing_rounds = 0;
        if came_back && key != SeriesKey::Own {
            // Its eBPF slot was released when it was not found: the counts
            // start again from zero, so the reconcile learns a new baseline.
            series.reconciler = Reconciler::new();
        }
        if series.label != label {
            info!("netns {}: now labelled {label}", series.label);
            series.label = label.to_string();
        }
        if reading.recreated {
            // The kept file went stale: its counters were destroyed.
            series.tracker.counters_gone();
        }
        let (mut totals, mut update) = series.tracker.update(reading.identity, &reading.stat);
        if let (true, Update::Reset(_), SeriesKey::Netns(id)) = (came_back, update, key) {
            if id.cookie.is_none() {
                // Without netns cookies (before 5.14) an inode can belong to a new
                // namespace: one that returns with restarted counters is one.
                info!("{name}: a new namespace with a reused inode; new series");
                self.last_series_id += 1;
                *series = Series::new(self.last_series_id, label);
                (totals, update) = series.tracker.update(reading.identity, &reading.stat);
            }
        }
        log_update(name, update);
        Read {
            key,
            label: label.to_string(),
            target: None,
            ebpf_key: None,
            before: None,
            after: None,
            totals,
            reset: matches!(update, Update::Reset(_)),
        }
    }

    /// Re-reads namespaces whose /proc totals fell outside their eBPF bracket
    /// (an event held between its probe and its increment): /proc again, then
    /// the eBPF counts again, keeping the first read's lower bound.
    fn settle_brackets(&mut self, reads: &mut [Read], generation: u64) {
        for pause in BRACKET_RETRIES {
            let outside: Vec<usize> = (0..reads.len())
                .filter(|&i| !self.bracket_holds(&reads[i], generation))
                .collect();
            if outside.is_empty() {
                return;
            }
            std::thread::sleep(pause);
            for i in outside {
                self.reread(&mut reads[i]);
            }
        }
    }

    fn bracket_holds(&self, read: &Read, generation: u64) -> bool {
        let (Some(before), Some(after)) = (read.before, read.after) else {
            return true;
        };
        self.series.get(&read.key).is_none_or(|series| {
            series.reconciler.consistent(
                &ebpf_reconcile::proc_counts(&read.totals),
                read.reset,
                &Bracket {
                    generation,
                    before,
                    after,
                },
            )
        })
    }

    fn reread(&mut self, read: &mut Read) {
        let reading = match (&read.target, read.key) {
            (Some(target), _) => {
                let mut reader = std::mem::take(&mut self.reader);
                let results = {
                    let around = self.around();
                    reader.read(
                        std::slice::from_ref(target),
                        &self.config.proc_root,
                        &around,
                    )
                };
                self.reader = reader;
                match results.into_iter().next() {
                    Some(Ok(ns)) if SeriesKey::Netns(ns.id) == read.key => {
                        Some((ns.reading, ns.after))
                    }
                    _ => None,
                }
            }
            (None, SeriesKey::Own) => {
                let mut buf = std::mem::take(&mut self.buf);
                let result = self.own_file.read(&mut buf).ok();
                self.buf = buf;
                result.map(|r| {
                    let after = self.own_id.and_then(|id| self.around()(&id));
                    (r, after)
                })
            }
            _ => None,
        };
        let Some((reading, after)) = reading else {
            return;
        };
        let Some(series) = self.series.get_mut(&read.key) else {
            return;
        };
        if reading.recreated {
            series.tracker.counters_gone();
        }
        let (totals, update) = series.tracker.update(reading.identity, &reading.stat);
        read.totals = totals;
        read.reset |= matches!(update, Update::Reset(_));
        read.after = after;
    }

    /// Series not read this round age; after [`VANISHED_ROUNDS_KEPT`] rounds
    /// they are forgotten, so state stays bounded.
    fn age_series(&mut self, reads: &[Read]) {
        let mut seen: HashSet<SeriesKey> = reads.iter().map(|r| r.key).collect();
        seen.extend(self.present_failing.drain());
        self.series.retain(|key, series| {
            if seen.contains(key) {
                series.missing_rounds = 0;
                return true;
            }
            series.missing_rounds += 1;
            if series.missing_rounds == 1 && *key != SeriesKey::Own {
                info!(
                    "netns {}: not found this round, no longer reported",
                    series.label
                );
            }
            series.missing_rounds <= VANISHED_ROUNDS_KEPT
        });
        forget_excess_missing(&mut self.series, self.max_retained);
    }

    /// Reads this round's eBPF maps and joins them with each namespace's
    /// /proc totals ([`join::join`]): per read, its IPv4 and IPv6 samples
    /// (`None` for all without eBPF); sets the round's probes sample.
    fn reconcile_ebpf(
        &mut self,
        reads: &[Read],
        generation: Option<u64>,
        timestamp_ns: u64,
        round: &mut Snapshot,
    ) -> Vec<Option<[crate::sample::EbpfSample; 2]>> {
        let Some(ebpf) = self.config.ebpf.as_mut() else {
            return Vec::new();
        };
        let mut keep = present_ebpf_keys(&self.series);
        keep.extend(self.own_id.map(|id| id.ebpf_key()));
        let mut ebpf_round = ebpf.read_round(&keep);
        let sources = ebpf_round.as_mut().and_then(|r| r.sources.take());
        let probe_type = ebpf.probe_type().as_str();
        let resolution = ebpf.rate_resolution();
        let mut out = Vec::with_capacity(reads.len());
        for read in reads {
            let Some(series) = self.series.get_mut(&read.key) else {
                out.push(None);
                continue;
            };
            let bracket = match (generation, read.before, read.after) {
                (Some(generation), Some(before), Some(after)) => Some(Bracket {
                    generation,
                    before,
                    after,
                }),
                _ => None,
            };
            let reading = NamespaceReading {
                netns: (read.key != SeriesKey::Own).then_some(read.label.as_str()),
                totals: &read.totals,
                proc_reset: read.reset,
                ebpf_key: read.ebpf_key,
                bracket,
            };
            out.push(Some(join::join(
                &mut series.reconciler,
                reading,
                ebpf_round.as_ref(),
                resolution,
                timestamp_ns,
            )));
        }
        // Present only while the kernel counts them (kernel.bpf_stats_enabled).
        round.agent.programs = ebpf_round
            .as_ref()
            .map(|r| {
                r.program_runs
                    .iter()
                    .map(
                        |&(program, run_time_ns, run_count)| crate::sample::ProgramRuns {
                            program,
                            run_time_ns,
                            run_count,
                        },
                    )
                    .collect()
            })
            .unwrap_or_default();
        let source_map = sources.as_ref().map(|s| SourceMapStats {
            entries: s.entries,
            capacity: s.capacity,
            evictions: s.evictions,
            insert_failures: s.insert_failures,
            map_bytes: s.map_bytes,
        });
        if let Some(sources) = sources {
            round.top_sources = rank_sources(&mut self.ranker, reads, &out, &sources);
        }
        round.probes = Some(join::probes(
            ebpf_round,
            probe_type,
            timestamp_ns,
            source_map,
        ));
        out
    }
}

/// eBPF keys of the namespaces found this round: a slot is released as soon
/// as its namespace is not found (a namespace that comes back gets a new one,
/// and its reconcile a new baseline).
fn present_ebpf_keys(series: &HashMap<SeriesKey, Series>) -> HashSet<NsKey> {
    series
        .iter()
        .filter(|(_, s)| s.missing_rounds == 0)
        .filter_map(|(k, _)| match k {
            SeriesKey::Netns(id) => Some(id.ebpf_key()),
            SeriesKey::Own => None,
        })
        .collect()
}

/// Under churn, only the `max` most recently seen of the series not found
/// are kept.
fn forget_excess_missing(series: &mut HashMap<SeriesKey, Series>, max: usize) {
    let mut missing: Vec<(u32, SeriesKey)> = series
        .iter()
        .filter(|(_, s)| s.missing_rounds > 0)
        .map(|(k, s)| (s.missing_rounds, *k))
        .collect();
    if missing.len() > max {
        missing.sort_unstable_by_key(|&(rounds, _)| std::cmp::Reverse(rounds));
        for (_, key) in &missing[..missing.len() - max] {
            series.remove(key);
        }
    }
}

/// The counters counted per source.
const SOURCE_COUNTERS: [synproxy_common::Counter; 3] = [
    synproxy_common::Counter::SynReceived,
    synproxy_common::Counter::CookieInvalid,
    synproxy_common::Counter::CookieValid,
];

/// The interval's top sources of the namespaces read this round; shares are
/// of the namespace's eBPF events of the interval (evicted sources' included).
fn rank_sources(
    ranker: &mut TopRanker,
    reads: &[Read],
    samples: &[Option<[EbpfSample; 2]>],
    sources: &SourcesRound,
) -> Vec<TopSources> {
    let labels: HashMap<NsKey, Option<&str>> = reads
        .iter()
        .filter_map(|r| {
            let label = (r.key != SeriesKey::Own).then_some(r.label.as_str());
            r.ebpf_key.map(|k| (k, label))
        })
        .collect();
    let mut totals = Vec::new();
    for (read, pair) in reads.iter().zip(samples) {
        let Some(pair) = pair else { continue };
        let netns = (read.key != SeriesKey::Own).then_some(read.label.as_str());
        for (family, sample) in [Family::Ipv4, Family::Ipv6].into_iter().zip(pair) {
            for counter in SOURCE_COUNTERS {
                totals.push(IntervalTotal {
                    netns,
                    family,
                    counter,
                    events: sample.events[counter.index()],
                });
            }
        }
    }
    let counts = sources.events.iter().filter_map(|e| {
        let netns = *labels.get(&e.ns)?;
        Some(SourceCount {
            netns,
            counter: e.counter,
            source: e.source,
            events: e.events,
        })
    });
    ranker.rank(counts, totals)
}

fn log_update(name: &str, update: Update) {
    match update {
        Update::Reset(
            reason @ (ResetReason::NewCounters
            | ResetReason::FileWasGone
            | ResetReason::CountersWentBack),
        ) => warn!(
            "{name}: synproxy counters were recreated (module reloaded or namespace replaced; {}); totals continue from a new baseline",
            match reason {
                ResetReason::FileWasGone => "the file was gone",
                ResetReason::NewCounters => "new proc entry",
                _ => "counters went back",
            }
        ),
        Update::Reset(ResetReason::CpuCountChanged { before, after }) => warn!(
            "{name}: CPU rows changed from {before} to {after}; totals continue from a new baseline"
        ),
        Update::Continued { wrapped_cpus } if wrapped_cpus > 0 => {
            debug!("{name}: 32-bit counter wrap on {wrapped_cpus} CPU(s) absorbed")
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
