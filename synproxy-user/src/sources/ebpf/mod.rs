//! The eBPF source: loads the programs embedded in the agent, attaches them to
//! the SYNPROXY functions (when `nf_synproxy_core` is loaded, again after it is
//! reloaded, and with backoff after a failed attach), and reads the in-kernel
//! counts (per namespace, around each /proc read), peak-rate buckets, probe and
//! recursion misses, and kernel-side diagnostics each round. Counts, rates and
//! diagnostics are read from memory-mapped maps ([`SharedArray`]), never by
//! map syscall: while a CPU is inside one, the kernel skips the programs there.
//!
//! Anything that makes eBPF unusable (no kprobes, no BTF, no capabilities, a
//! verifier rejection) is an [`EbpfError`] with one sentence naming the reason;
//! the agent then reports /proc only.
//!
//! Two probe types count the same events into the same maps ([`ProbeType`]):
//! kprobes/kretprobes (created through tracefs, the default) or
//! fentry/fexit programs (`--probes fentry`). fentry programs are loaded at
//! each attach against the BTF of the module that holds the function
//! ([`kernel_btf`]): after a module reload they are loaded again, not
//! only re-attached. Where fentry cannot be used (no module BTF, Linux before
//! 5.11, a load the kernel refuses) the agent says why once and uses kprobes.
//!
//! Where each part lives: `probes` (the probe catalogue), `loader` (checks
//! and loading), `kprobe_attach` and `fentry_attach`, `reattach` (module
//! reloads, backoff, SIGUSR1), `round` (each round's reads), `prog_info`
//! (`bpf_prog_info`), `event_log` (draining the programs' per-CPU event
//! rings), `count_table`, `source_counting` and `port_counting` (the tables
//! of sources and ports the log fills), `error`
//! ([`EbpfError`]); the kernel-facing helpers are the public modules below.

pub mod address_counts;
pub mod btf;
pub mod count_table;
mod event_log;
pub mod kernel_btf;
pub mod kprobe_events;
pub mod ns_slots;
pub mod port_counts;
pub mod shared_array;

mod error;
mod fentry_attach;
mod kprobe_attach;
mod loader;
mod port_counting;
mod probes;
mod prog_info;
mod reattach;
mod round;
mod source_counting;

pub use error::EbpfError;
pub use ns_slots::{FamilyCounts, NsKey};
pub use probes::{FentrySpec, ProbeSpec, ProbeType, FENTRY_PROBES, KPROBE_PMU, PROBES};
pub use reattach::RELEASE_HOLD;
pub use round::CountsView;

use address_counts::SourcesRound;
use aya::Ebpf;
use fentry_attach::FentryTargets;
use kprobe_events::{ProbeStats, TraceFs};
use ns_slots::NsSlots;
use port_counting::PortCounting;
use port_counts::PortsRound;
use reattach::{Released, Retry};
use shared_array::SharedArray;
use source_counting::SourceCounting;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use synproxy_common::diag;

/// Shutdown handshake between the runtime and eBPF work in progress. Until
/// the first kprobe event is created nothing of the agent outlives the process
/// (BPF programs and maps go with their file descriptors), so a signal before
/// that point may end the process at once; after it, the attach in progress
/// must stop and undo its events first.
#[derive(Debug, Default)]
pub struct Stop(AtomicU8);

const STOP_REQUESTED: u8 = 1;
const EVENTS_MAY_EXIST: u8 = 2;

impl Stop {
    /// Asks long steps to stop. Returns whether kprobe events may exist, in
    /// which case the caller must wait for the step and detach.
    pub fn request(&self) -> bool {
        self.0.fetch_or(STOP_REQUESTED, Ordering::SeqCst) & EVENTS_MAY_EXIST != 0
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst) & STOP_REQUESTED != 0
    }

    /// Called before creating kprobe events: false once a stop was requested.
    fn allow_events(&self) -> bool {
        self.0.fetch_or(EVENTS_MAY_EXIST, Ordering::SeqCst) & STOP_REQUESTED == 0
    }
}

/// What one round's read of the maps returns, besides the bracketing counts.
#[derive(Clone, Debug, Default)]
pub struct EbpfRound {
    /// Largest number of events in one rate bucket, among the buckets completed
    /// since the previous round, by namespace.
    pub peaks: HashMap<NsKey, FamilyCounts>,
    /// Per probe (short name): hits and misses since it was attached.
    pub probes: Vec<(&'static str, ProbeStats)>,
    /// Kernel-side diagnostics ([`synproxy_common::diag`]), totals since load.
    pub diag: [u64; diag::COUNT as usize],
    /// Programs skipped because another BPF program ran on that CPU, since load.
    pub recursion_misses: u64,
    /// The same per program (its name without `spx_`).
    pub program_recursion: Vec<(&'static str, u64)>,
    /// Per program: run time (ns) and run count since load, counted by the
    /// kernel only while `kernel.bpf_stats_enabled` is 1 (empty otherwise).
    pub program_runs: Vec<(&'static str, u64, u64)>,
    /// Probe misses, recursion misses and losses not attributable to a
    /// namespace, in this round (all namespaces).
    pub global_losses: u64,
    /// Kernel memory the maps pin (memlock), bytes.
    pub map_bytes: u64,
    /// The kind of programs that counted.
    pub probe_type: ProbeType,
    /// Per-source counts of the interval, with `--top` N > 0.
    pub sources: Option<SourcesRound>,
    /// Per-port counts of the interval, with `--top-ports` N > 0.
    pub ports: Option<PortsRound>,
}

struct Attachment {
    generation: u64,
    /// Identity of the modules when attached.
    modules: Vec<Option<u64>>,
    /// (event name, perf fd) in attach order (kprobes; empty for fentry,
    /// whose links the programs hold).
    events: Vec<(String, OwnedFd)>,
    kind: ProbeType,
}

/// The memory-mapped maps.
struct Shared {
    /// `NS_TABLE`, written by the agent only.
    table: SharedArray,
    /// `NS_STATS`: per slot, counts and rate buckets.
    stats: SharedArray,
    /// `RATE_TAGS`: the bucket each ring index counts.
    tags: SharedArray,
    diag: SharedArray,
}

pub struct EbpfSource {
    ebpf: Ebpf,
    /// Needed for kprobes only.
    tracefs: Option<TraceFs>,
    /// The probe type in use: `--probes`, or kprobe after a fallback.
    active: ProbeType,
    /// The kprobe programs are loaded (at start for kprobes, at a fallback).
    kprobes_loaded: bool,
    /// With fentry: where the functions are.
    fentry_targets: Option<FentryTargets>,
    /// Names this agent's kprobe events: unique per start, whatever the PID
    /// namespace (PIDs are not).
    token: String,
    shared: Shared,
    slots: Mutex<NsSlots>,
    rate_res_ns: u64,
    /// The last rate bucket folded into `peaks`.
    last_drained: u64,
    attached: Option<Attachment>,
    generation: u64,
    retry: Option<Retry>,
    released: Option<Released>,
    /// fentry fell back to kprobes, which cannot be used either: eBPF is
    /// unusable (at start-up: [`EbpfSource::open`] fails with this).
    unusable: Option<EbpfError>,
    /// Inside [`EbpfSource::open`]: an unusable eBPF is its error, not a warning.
    opening: bool,
    /// Probe misses of the current attachment at the previous round.
    last_missed: u64,
    last_recursion: u64,
    last_diag: [u64; diag::COUNT as usize],
    /// Peaks of the buckets drained since the previous round.
    peaks: HashMap<NsKey, FamilyCounts>,
    /// Events of the buckets drained since the detector last took them
    /// ([`EbpfSource::take_window`]), per namespace and counter (both
    /// families), and how many buckets that was.
    window: HashMap<NsKey, [u64; synproxy_common::COUNTER_COUNT]>,
    window_buckets: u64,
    map_bytes: u64,
    /// The programs' event log, with per-source or per-port counting.
    log: Option<event_log::EventLog>,
    /// Kernel memory the log pins (memlock), bytes.
    log_bytes: u64,
    sources: Option<SourceCounting>,
    ports: Option<PortCounting>,
}

impl EbpfSource {
    /// The probe type in use.
    pub fn probe_type(&self) -> ProbeType {
        self.active
    }

    /// What later (re)attaches need (the capabilities kept after start-up).
    pub fn capability_need(&self) -> crate::privileges::EbpfNeed {
        use crate::privileges::EbpfNeed;
        match self.active {
            ProbeType::Kprobe => EbpfNeed::Kprobe,
            // Attached once: the modules have BTF, later attaches use it too.
            ProbeType::Fentry if self.generation > 0 => EbpfNeed::Fentry,
            ProbeType::Fentry => EbpfNeed::FentryOrKprobe,
        }
    }

    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// The attachment generation, None while the probes are not attached.
    pub fn generation(&self) -> Option<u64> {
        self.attached.as_ref().map(|a| a.generation)
    }

    /// Reads of the per-namespace counts (for the reads around /proc).
    pub fn counts_view(&self) -> CountsView<'_> {
        CountsView {
            shared: &self.shared,
            slots: &self.slots,
        }
    }
}

impl Drop for EbpfSource {
    fn drop(&mut self) {
        self.detach();
    }
}

enum AttachError {
    /// The function is not in the kernel (its module is not loaded).
    Missing(&'static str),
    /// fentry/fexit cannot be used on this kernel: use kprobes.
    FentryUnusable(String),
    /// The agent is shutting down.
    Stopped,
    Other(String),
}
