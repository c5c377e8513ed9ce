//! The sampler: one round reads every selected namespace (sources), turns the
//! readings into u64 totals and joins them with the eBPF counts (reconcile),
//! and returns one [`Snapshot`] (sample), knowing nothing of where it goes.
//! One failing namespace is reported once and does not stop the others.
//!
//! Series are keyed by the namespace's identity ([`NamespaceId`]), not by its
//! label: a namespace keeps its totals when it loses its name or is briefly
//! undiscoverable, and a new namespace reusing a name or an inode starts its
//! own series.

use crate::analysis::verdict::{NamespaceVerdict, Params as VerdictParams};
use crate::cli::NetnsSelection;
use crate::privileges;
use crate::ranking::{Family, IntervalTotal, SourceCount, TopConfig, TopRanker};
use crate::reconcile::ebpf_vs_proc::{self, Bracket, Reconciler};
use crate::reconcile::join::{self, NamespaceReading};
use crate::reconcile::wrap_tracker::{ResetReason, Update, WrapTracker};
use crate::sample::{
    now_ns, AgentHealth, EbpfSample, NamespaceSnapshot, RetainedNamespace, Sample, SeriesId,
    Snapshot, SourceMapStats, TopSources,
};
use crate::sources::ebpf::address_counts::SourcesRound;
use crate::sources::ebpf::port_counts::PortsRound;
use crate::sources::ebpf::{EbpfSource, FamilyCounts, NsKey, Stop};
use crate::sources::proc::netns::{
    self, NamespaceId, NetnsError, NetnsReader, NetnsTarget, StackFile, StackReader,
};
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
    /// The TCP stack's and conntrack's counters ([`Snapshot::stack`]).
    pub stack: StackSources,
    /// The defense verdict's rules ([`Snapshot::defense`]); `None`: off.
    pub verdict: Option<VerdictParams>,
    /// Attack detection (`None`: off).
    pub attacks: Option<AttackConfig>,
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
    verdict: NamespaceVerdict,
    attacks: attacks::SeriesAttacks,
}

impl Series {
    fn new(id: SeriesId, label: &str) -> Self {
        Self {
            id,
            label: label.to_string(),
            tracker: WrapTracker::new(),
            reconciler: Reconciler::new(),
            missing_rounds: 0,
            verdict: NamespaceVerdict::default(),
            attacks: attacks::SeriesAttacks::default(),
        }
    }
}

/// How long (in rounds) a vanished namespace's state is kept for its return.
pub const VANISHED_ROUNDS_KEPT: u32 = 360;

/// The longest time between two drains of the probes' event log: a ring of
/// 65,536 records then holds 262,000 events a second on its CPU.
pub const LOG_DRAIN_PERIOD: Duration = Duration::from_millis(250);

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
    /// The stack sources' files, trackers and logged failures.
    stack_reader: StackReader,
    stack_series: HashMap<SeriesKey, stack::StackSeries>,
    stack_failing: HashMap<(String, StackFile), String>,
    /// The eBPF key of each namespace read last round, for the detector's ticks.
    attack_keys: HashMap<NsKey, SeriesKey>,
    /// Attack starts and ends not yet handed to the sinks.
    attack_events: Vec<crate::analysis::attack::AttackEvent>,
    attack_state: attack_state::AttackState,
    /// The detector's last between-rounds read of the per-port counts and
    /// its time (ns), and a buffer for the next read.
    port_previous: Vec<crate::sources::ebpf::port_counts::PortTotal>,
    port_current: Vec<crate::sources::ebpf::port_counts::PortTotal>,
    port_read_at: Option<u64>,
    /// Starts queued this tick (index in `attack_events`, series), whose
    /// documents get the namespace's top sources.
    new_starts: Vec<(usize, SeriesKey)>,
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
        let attack_state = match &config.attacks {
            Some(a) => attack_state::AttackState::load(a.state_dir.as_deref(), &a.params),
            None => attack_state::AttackState::default(),
        };
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
            stack_reader: StackReader::new(),
            stack_series: HashMap::new(),
            stack_failing: HashMap::new(),
            attack_keys: HashMap::new(),
            attack_events: Vec::new(),
            attack_state,
            port_previous: Vec::new(),
            port_current: Vec::new(),
            port_read_at: None,
            new_starts: Vec::new(),
        }
    }

    /// With eBPF: one silent round, so that the first emitted round already
    /// reconciles against a baseline taken now.
    pub fn prime(&mut self) {
        if self.config.ebpf.is_some() {
            let _ = self.sample();
            // The detector's first step starts from here.
            if let Some(ebpf) = self.config.ebpf.as_mut() {
                let _ = ebpf.take_window();
            }
        }
    }

    /// Stops the eBPF probes (also done on drop).
    pub fn shutdown(&mut self) {
        if self.config.attacks.is_some() {
            self.save_attack_state(true);
        }
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

    /// Between rounds: keeps the peak-rate map small (and drains the
    /// probes' event log) (see [`EbpfSource::drain_rates`]).
    pub fn drain_rates(&mut self) {
        if let Some(ebpf) = self.config.ebpf.as_mut() {
            ebpf.drain_rates();
        }
    }

    /// How often [`Sampler::drain_rates`] should run, when eBPF is in use:
    /// every [`synproxy_common::RATE_DRAIN_BUCKETS`] rate buckets, and at
    /// least every [`LOG_DRAIN_PERIOD`] while the probes log events (each
    /// CPU's ring must hold what it logs meanwhile).
    pub fn drain_period(&self) -> Option<Duration> {
        self.config.ebpf.as_ref().map(|e| {
            let rates = e.rate_resolution() * synproxy_common::RATE_DRAIN_BUCKETS;
            if e.logs_events() {
                rates.min(LOG_DRAIN_PERIOD)
            } else {
                rates
            }
        })
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
            top_ports: Vec::new(),
            stack: Vec::new(),
            defense: Vec::new(),
            attacks: Vec::new(),
        };
        // Attach (or re-attach after a module reload) before reading /proc, so a
        // new baseline is taken after the probes are in place.
        if let Some(ebpf) = self.config.ebpf.as_mut() {
            ebpf.poll(&self.config.stop);
        }
        let generation = self.config.ebpf.as_ref().and_then(EbpfSource::generation);
        let (mut reads, targets) = match self.config.selection.clone() {
            NetnsSelection::Own => (self.read_own(&mut round), None),
            NetnsSelection::Named(names) => {
                let targets = netns::named_targets(&names, &self.config.netns_dir);
                (self.read_namespaces(&targets, &mut round), Some(targets))
            }
            NetnsSelection::All(_) => {
                let found = netns::discover(&self.config.proc_root, &self.config.netns_dir);
                self.report_denied(&found, &mut round);
                let targets = match self.selector.as_mut() {
                    Some(selector) => selector.select(found.targets),
                    None => found.targets,
                };
                (self.read_namespaces(&targets, &mut round), Some(targets))
            }
        };
        if let Some(generation) = generation {
            self.settle_brackets(&mut reads, generation);
        }
        // The stack sources after the SYNPROXY file (and its eBPF bracket).
        if let Some(targets) = &targets {
            self.forget_stack_failures(targets);
        }
        let all = matches!(self.config.selection, NetnsSelection::All(_));
        // Only `--netns all` filters by it: not built otherwise.
        let counted: HashSet<&str> = reads
            .iter()
            .filter(|r| all && r.totals.iter().any(|v| *v > 0))
            .map(|r| r.label.as_str())
            .collect();
        let stack_targets = targets.map(|t| stack::stack_targets(all, t, &counted));
        let stack_of = self.read_stack(stack_targets.as_deref(), &mut round);
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
            let stack = stack_of.get(&read.key).and_then(|&s| round.stack.get(s));
            if let Some(sample) = self.judge_defense(read, stack, timestamp_ns) {
                round.defense.push(sample);
            }
        }
        self.attacks_round(&reads, &mut round);
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
}

pub(super) mod attack_state;
mod attack_tick;
mod attacks;
mod defense;
mod ebpf_round;
mod read;
mod stack;

pub use attacks::AttackConfig;
pub use stack::StackSources;

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
