//! The eBPF source: loads the programs embedded in the agent, attaches them to
//! the SYNPROXY functions (when `nf_synproxy_core` is loaded, again after it is
//! reloaded, and with backoff after a failed attach), and reads the in-kernel
//! counts (per namespace, around each /proc read), peak-rate buckets, probe and
//! recursion misses, and kernel-side diagnostics each round. Counts, rates and
//! diagnostics are read from memory-mapped maps ([`SharedArray`]), never by
//! map syscall: while a CPU is inside one, the kernel skips the programs there.
//!
//! Anything that makes eBPF unusable (no kprobes, no BTF, no capabilities, a
//! verifier rejection) is an [`Unavailable`] with one sentence naming the reason;
//! the agent then reports /proc only.
//!
//! Two probe types count the same events into the same maps ([`ProbeType`]):
//! kprobes/kretprobes (created through tracefs, the default) or
//! fentry/fexit programs (`--probes fentry`). fentry programs are loaded at
//! each attach against the BTF of the module that holds the function
//! ([`super::kernel_btf`]): after a module reload they are loaded again, not
//! only re-attached. Where fentry cannot be used (no module BTF, Linux before
//! 5.11, a load the kernel refuses) the agent says why once and uses kprobes.

use super::btf::{self, Btf, KernelOffsets, SplitBase, VMLINUX_BTF};
use super::ebpf_sources::{self, SourceDeltas, SourcesRound};
use super::kernel_btf;
use super::kprobe_events::{self, ProbeStats, TraceFs};
use super::ns_slots::{read_counts, NoSlot, NsSlots};
pub use super::ns_slots::{FamilyCounts, NsKey};
use super::shared_array::SharedArray;
use aya::maps::Map;
use aya::programs::{FEntry, FExit, Iter, KProbe};
use aya::{Ebpf, EbpfLoader};
use log::{debug, info, warn};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use synproxy_common::{
    diag, globals, source_stats, NsEntry, NsStats, COUNTER_COUNT, NS_SLOTS, NS_STATS_RATES_U32,
    NS_STATS_U32S, NS_TABLE_ENTRIES, RATE_RING,
};

/// The object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synproxy"));

pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// One probe: the program, the kernel function, and its short name in events.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    pub program: &'static str,
    pub function: &'static str,
    pub ret: bool,
    pub short: &'static str,
}

const fn probe(
    program: &'static str,
    function: &'static str,
    ret: bool,
    short: &'static str,
) -> ProbeSpec {
    ProbeSpec {
        program,
        function,
        ret,
        short,
    }
}

/// The probe set (README, "How the events are counted"). Entry probes that stash state for a
/// return probe come before it.
pub const PROBES: [ProbeSpec; 7] = [
    probe(
        "spx_synack4",
        "synproxy_send_client_synack",
        false,
        "synack4",
    ),
    probe(
        "spx_synack6",
        "synproxy_send_client_synack_ipv6",
        false,
        "synack6",
    ),
    probe("spx_ack4", "synproxy_recv_client_ack", false, "ack4"),
    probe("spx_ack_ret", "synproxy_recv_client_ack", true, "ack4_ret"),
    probe("spx_ack6", "synproxy_recv_client_ack_ipv6", false, "ack6"),
    probe(
        "spx_ack_ret",
        "synproxy_recv_client_ack_ipv6",
        true,
        "ack6_ret",
    ),
    probe("spx_seqadj", "nf_ct_seqadj_init", false, "seqadj"),
];

/// The programs that count events (names without `spx_`); the others only
/// stash state for them: a skipped stash program loses nothing by itself, and
/// what it can cost shows as `unmatched_returns`.
const COUNTING_PROGRAMS: [&str; 4] = ["synack4", "synack6", "ack_ret", "seqadj"];

/// Which kind of BPF program counts the events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeType {
    /// kprobes/kretprobes created through tracefs (any kernel with kprobes).
    #[default]
    Kprobe,
    /// fentry/fexit programs (BPF trampolines): cheaper per event; on module
    /// functions they need module BTF (Linux 5.11+), and hold the module loaded.
    Fentry,
}

impl ProbeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeType::Kprobe => "kprobe",
            ProbeType::Fentry => "fentry",
        }
    }
}

/// One fentry/fexit program: its name, the kernel function, whether it runs
/// at the function's exit, and its short name (the program name without
/// `spxf_`, used in the reported fields).
#[derive(Clone, Copy, Debug)]
pub struct FentrySpec {
    pub program: &'static str,
    pub function: &'static str,
    pub exit: bool,
    pub short: &'static str,
}

const fn fentry(
    program: &'static str,
    function: &'static str,
    exit: bool,
    short: &'static str,
) -> FentrySpec {
    FentrySpec {
        program,
        function,
        exit,
        short,
    }
}

/// The fentry/fexit set: the same functions as [`PROBES`]; an fexit program
/// sees arguments and return value, so each cookie check has one program.
pub const FENTRY_PROBES: [FentrySpec; 5] = [
    fentry(
        "spxf_synack4",
        "synproxy_send_client_synack",
        false,
        "synack4",
    ),
    fentry(
        "spxf_synack6",
        "synproxy_send_client_synack_ipv6",
        false,
        "synack6",
    ),
    fentry("spxf_ack4", "synproxy_recv_client_ack", true, "ack4"),
    fentry("spxf_ack6", "synproxy_recv_client_ack_ipv6", true, "ack6"),
    fentry("spxf_seqadj", "nf_ct_seqadj_init", false, "seqadj"),
];

/// The fentry programs that count events (see [`COUNTING_PROGRAMS`]).
const FENTRY_COUNTING_PROGRAMS: [&str; 5] = ["synack4", "synack6", "ack4", "ack6", "seqadj"];

/// Linux version of the running kernel, (major, minor), from uname.
fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: utsname is plain bytes: all zeroes is valid; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: String = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    parse_release(&release)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Where the fentry programs' functions are, as far as known at start.
#[derive(Clone, Debug)]
struct FentryTargets {
    /// vmlinux's type count: a module's split BTF ids continue after it.
    vmlinux_types: u32,
    /// Ids in vmlinux of functions built into the kernel (no module BTF needed).
    builtin: [Option<u32>; FENTRY_PROBES.len()],
}

/// Whether fentry can be used here, as far as can be told before the
/// modules load: Err is the reason to use kprobes instead.
fn fentry_precheck(vmlinux: &[u8]) -> Result<FentryTargets, String> {
    let names = FENTRY_PROBES.map(|p| p.function);
    let ids = btf::func_ids(vmlinux, None, &names).map_err(|e| format!("{VMLINUX_BTF}: {e}"))?;
    let vmlinux_types = btf::type_count(vmlinux).map_err(|e| format!("{VMLINUX_BTF}: {e}"))?;
    let mut builtin = [None; FENTRY_PROBES.len()];
    builtin.copy_from_slice(&ids);
    let targets = FentryTargets {
        vmlinux_types,
        builtin,
    };
    if targets.builtin.iter().all(Option::is_some) {
        return Ok(targets);
    }
    // Some functions are in modules: that needs module BTF and 5.11.
    if let Some((major, minor)) = kernel_version() {
        if (major, minor) < (5, 11) {
            return Err(format!(
                "fentry on module functions needs Linux 5.11 or later (this is {major}.{minor})"
            ));
        }
    }
    if let Some(reason) = no_module_btf() {
        return Err(reason);
    }
    Ok(targets)
}

/// A reason if loaded modules show that the kernel has no module BTF.
fn no_module_btf() -> Option<String> {
    let loaded: Vec<String> = std::fs::read_to_string("/proc/modules")
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    for m in MODULES {
        if loaded.iter().any(|l| l == m) && !Path::new("/sys/kernel/btf").join(m).exists() {
            return Some(format!(
                "no BTF for module {m} (/sys/kernel/btf/{m} missing: the kernel was built without CONFIG_DEBUG_INFO_BTF_MODULES)"
            ));
        }
    }
    if !loaded.is_empty()
        && !loaded
            .iter()
            .any(|m| Path::new("/sys/kernel/btf").join(m).exists())
    {
        return Some("no module BTF in /sys/kernel/btf (the kernel was built without CONFIG_DEBUG_INFO_BTF_MODULES)".into());
    }
    None
}

/// Modules whose (re)load invalidates the probes.
const MODULES: [&str; 2] = ["nf_synproxy_core", "nf_conntrack"];

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

/// Why eBPF cannot be used; the agent then reports /proc only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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
}

/// Per-source counting (`--top` N > 0): the iterator over `SOURCES` and
/// what turns its reads into interval events.
struct SourceCounting {
    /// The iterator program's link with the map; each read makes an
    /// iterator from it.
    link: OwnedFd,
    /// `SOURCE_STATS`: entries created, events refused.
    stats: SharedArray,
    deltas: SourceDeltas,
    /// The buffer the iterator's output streams through, kept between rounds.
    records: Vec<u8>,
    capacity: u32,
    map_bytes: u64,
    /// A failed read is said once, until one succeeds.
    failing: bool,
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

/// When to try attaching again after a failure.
struct Retry {
    modules: Vec<Option<u64>>,
    at: Instant,
    backoff: Duration,
}

/// After SIGUSR1, how long the probes stay released if the modules are not
/// reloaded meanwhile.
pub const RELEASE_HOLD: Duration = Duration::from_secs(60);

/// Probes released on request (SIGUSR1): not attached again while the modules
/// are the ones they were released from, until `until`.
struct Released {
    modules: Vec<Option<u64>>,
    until: Instant,
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

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

/// Read access to the per-namespace counts, usable from the netns reader threads.
pub struct CountsView<'a> {
    shared: &'a Shared,
    slots: &'a Mutex<NsSlots>,
}

impl CountsView<'_> {
    /// The namespace's counts per family and counter (memory reads, no
    /// syscall). A namespace read for the first time gets a slot here, so its
    /// events count from now on; None if no slot is free.
    pub fn get(&self, ns: NsKey) -> Option<FamilyCounts> {
        let mut slots = lock(self.slots);
        let assigned = slots.slot(
            ns,
            self.shared.table.u64s(),
            self.shared.stats.u64s(),
            Instant::now(),
        );
        match assigned {
            Ok(slot) => Some(read_counts(self.shared.stats.u64s(), slot)),
            Err(NoSlot::Full) => {
                if slots.first_refusal(ns) {
                    warn!(
                        "eBPF: no room to count namespace inode {} ({} namespaces tracked, at most {NS_SLOTS}): it is reported from /proc only",
                        ns.0,
                        slots.len()
                    );
                }
                None
            }
            Err(NoSlot::BadKey) => None,
        }
    }
}

fn lock(slots: &Mutex<NsSlots>) -> MutexGuard<'_, NsSlots> {
    // The table stays consistent whatever a panicking holder did: each entry
    // is published by one store.
    slots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    unusable: Option<String>,
    /// Inside [`EbpfSource::open`]: an unusable eBPF is its error, not a warning.
    opening: bool,
    /// Probe misses of the current attachment at the previous round.
    last_missed: u64,
    last_recursion: u64,
    last_diag: [u64; diag::COUNT as usize],
    /// Peaks of the buckets drained since the previous round.
    peaks: HashMap<NsKey, FamilyCounts>,
    map_bytes: u64,
    sources: Option<SourceCounting>,
}

/// Identity of a loaded module: the inode of /sys/module/NAME (a new one per load).
fn module_identities() -> Vec<Option<u64>> {
    MODULES
        .iter()
        .map(|m| {
            std::fs::metadata(Path::new("/sys/module").join(m))
                .ok()
                .map(|md| md.ino())
        })
        .collect()
}

fn first_errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(code);
            }
        }
        cur = e.source();
    }
    None
}

fn is_permission(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(first_errno(err), Some(libc::EPERM) | Some(libc::EACCES))
}

const CAPS: &str = "missing capabilities (loading eBPF needs root, or CAP_BPF + CAP_PERFMON, and CAP_DAC_OVERRIDE for tracefs)";

fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        // Only kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
        debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The tracefs to create kprobe events in, if the kernel has kprobes.
fn kprobe_support(tracefs: Option<&TraceFs>) -> Result<&TraceFs, Unavailable> {
    if !Path::new(KPROBE_PMU).exists() && tracefs.is_none() {
        return Err(Unavailable(format!(
            "kprobes not supported by this kernel ({KPROBE_PMU} missing)"
        )));
    }
    tracefs.ok_or_else(|| {
        Unavailable(
            "tracefs is not mounted (no kprobe_events in /sys/kernel/tracing or /sys/kernel/debug/tracing; mount -t tracefs nodev /sys/kernel/tracing)".into(),
        )
    })
}

/// Why the kernel refused to load a program: capabilities, or the
/// verifier's last line.
fn load_error(program: &str, e: aya::programs::ProgramError) -> Unavailable {
    if is_permission(&e) {
        return Unavailable(format!("{CAPS}: {e}"));
    }
    let detail = match &e {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => verifier_log
            .to_string()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_string(),
        other => other.to_string(),
    };
    Unavailable(format!("the kernel verifier rejected {program}: {detail}"))
}

impl EbpfSource {
    /// Checks the kernel, loads the programs (the verifier runs here) and tries
    /// to attach. Not being able to attach yet (module not loaded) is no error.
    /// `source_entries`: with per-source counting (`--top` N > 0), the size
    /// of its map.
    pub fn open(
        rate_resolution: Duration,
        attach: bool,
        stop: &Stop,
        probes: ProbeType,
        source_entries: Option<u32>,
    ) -> Result<Self, Unavailable> {
        if OBJECT.is_empty() {
            return Err(Unavailable(
                "this synproxy-agent was built without its eBPF programs (AYA_BUILD_SKIP)".into(),
            ));
        }
        let vmlinux = match std::fs::read(VMLINUX_BTF) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Unavailable(format!(
                    "no kernel BTF ({VMLINUX_BTF} missing; the kernel needs CONFIG_DEBUG_INFO_BTF)"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Unavailable(format!("{CAPS}: cannot read {VMLINUX_BTF}")))
            }
            Err(e) => return Err(Unavailable(format!("{VMLINUX_BTF}: {e}"))),
        };
        let fentry_targets = match probes {
            ProbeType::Kprobe => None,
            ProbeType::Fentry => match fentry_precheck(&vmlinux) {
                Ok(targets) => Some(targets),
                Err(reason) => {
                    warn!("--probes fentry: {reason}; using kprobes");
                    None
                }
            },
        };
        let active = if fentry_targets.is_some() {
            ProbeType::Fentry
        } else {
            ProbeType::Kprobe
        };
        let tracefs = TraceFs::find();
        if active == ProbeType::Kprobe {
            kprobe_support(tracefs.as_ref())?;
        }
        let offsets = match Btf::parse(&vmlinux) {
            Ok(btf) => KernelOffsets::from_btf(&btf)
                .map_err(|e| Unavailable(format!("kernel BTF lacks a needed type: {e}")))?,
            Err(e) => return Err(Unavailable(format!("{VMLINUX_BTF}: {e}"))),
        };
        // The map-element iterator's target, for per-source counting.
        let iter_btf_id = match source_entries {
            Some(_) => btf::func_ids(&vmlinux, None, &[ebpf_sources::ITER_TARGET])
                .ok()
                .and_then(|ids| ids.first().copied().flatten()),
            None => None,
        };
        drop(vmlinux);
        debug!("kernel offsets from BTF: {offsets:?}");
        // Cookies join eBPF counts with namespaces only where the agent can ask
        // a namespace for its cookie too (SO_NETNS_COOKIE, 5.14+).
        let cookie_offset = match (
            offsets.net_cookie,
            super::proc::netns::current_netns_cookie(),
        ) {
            (Some(offset), Some(_)) => offset,
            _ => u32::MAX,
        };
        raise_memlock();
        let rate_res_ns = u64::try_from(rate_resolution.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let count_sources = u32::from(source_entries.is_some());
        // With `--top 0` the map is one entry: nothing writes it.
        let source_map_entries = source_entries.unwrap_or(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("SOURCES", source_map_entries)
            .override_global(globals::COUNT_SOURCES, &count_sources, true)
            .override_global(globals::SKB_HEAD_OFFSET, &offsets.skb_head, true)
            .override_global(
                globals::SKB_NETWORK_HEADER_OFFSET,
                &offsets.skb_network_header,
                true,
            )
            .override_global(globals::NET_INUM_OFFSET, &offsets.net_inum, true)
            .override_global(globals::CT_NET_OFFSET, &offsets.ct_net, true)
            .override_global(globals::CT_L3NUM_OFFSET, &offsets.ct_l3num, true)
            .override_global(globals::NET_COOKIE_OFFSET, &cookie_offset, true)
            .override_global(globals::RATE_RES_NS, &rate_res_ns, true)
            .load(OBJECT)
            .map_err(|e| {
                if is_permission(&e) {
                    Unavailable(format!("{CAPS}: {e}"))
                } else {
                    Unavailable(format!("cannot load the eBPF object: {e}"))
                }
            })?;
        let shared = Shared {
            table: map_shared(
                &ebpf,
                "NS_TABLE",
                std::mem::size_of::<NsEntry>(),
                NS_TABLE_ENTRIES,
            )?,
            stats: map_shared(&ebpf, "NS_STATS", std::mem::size_of::<NsStats>(), NS_SLOTS)?,
            tags: map_shared(&ebpf, "RATE_TAGS", 8, RATE_RING)?,
            diag: map_shared(&ebpf, "DIAG", 8, diag::COUNT)?,
        };
        let sources = match source_entries {
            Some(capacity) => match open_source_counting(&mut ebpf, iter_btf_id, capacity) {
                Ok(counting) => Some(counting),
                Err(reason) => {
                    warn!("eBPF: per-source counting (--top) is off: {reason}");
                    None
                }
            },
            None => None,
        };
        let map_bytes = own_map_memlock();
        debug!("eBPF maps pin {} KiB of kernel memory", map_bytes / 1024);
        let mut source = Self {
            ebpf,
            tracefs,
            active,
            kprobes_loaded: false,
            fentry_targets,
            token: kprobe_events::new_token(),
            shared,
            slots: Mutex::new(NsSlots::default()),
            rate_res_ns,
            last_drained: 0,
            attached: None,
            generation: 0,
            retry: None,
            released: None,
            unusable: None,
            opening: true,
            last_missed: 0,
            last_recursion: 0,
            last_diag: [0; diag::COUNT as usize],
            peaks: HashMap::new(),
            map_bytes,
            sources,
        };
        if active == ProbeType::Kprobe {
            source.load_kprobes(stop)?;
        }
        // Tags for the buckets ahead, before any program can run.
        source.drain_rates();
        if attach {
            source.poll(stop);
        }
        source.opening = false;
        match source.unusable.take() {
            Some(reason) => Err(Unavailable(reason)),
            None => Ok(source),
        }
    }

    /// Loads the kprobe programs (the verifier runs here) and removes kprobe
    /// events that agents no longer running left behind.
    fn load_kprobes(&mut self, stop: &Stop) -> Result<(), Unavailable> {
        if self.kprobes_loaded {
            return Ok(());
        }
        let tracefs = kprobe_support(self.tracefs.as_ref())?;
        let mut loaded: Vec<&str> = Vec::new();
        for spec in PROBES {
            if loaded.contains(&spec.program) {
                continue;
            }
            if stop.requested() {
                return Err(Unavailable("stopped during start-up".into()));
            }
            let program: &mut KProbe = self
                .ebpf
                .program_mut(spec.program)
                .ok_or_else(|| {
                    Unavailable(format!("program {} missing from the object", spec.program))
                })?
                .try_into()
                .map_err(|e| Unavailable(format!("program {}: {e}", spec.program)))?;
            if let Err(e) = program.load() {
                return Err(load_error(spec.program, e));
            }
            loaded.push(spec.program);
        }
        for event in tracefs.remove_unused() {
            info!("removed kprobe event {event} left by an agent that no longer runs");
        }
        self.kprobes_loaded = true;
        Ok(())
    }

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

    /// Follows module (re)loads: detaches probes whose module changed and
    /// (re)attaches when possible; after a failed attach, retries with backoff
    /// (1 s doubling to 30 s) or at once when a module changes. Cheap when
    /// nothing changed (a few stat calls). Returns true when the probes were
    /// (re)attached by this call.
    pub fn poll(&mut self, stop: &Stop) -> bool {
        let modules = module_identities();
        if let Some(released) = &self.released {
            if released.modules == modules && Instant::now() < released.until {
                return false;
            }
            if released.modules == modules {
                info!(
                    "nf_synproxy_core was not reloaded within {} s of SIGUSR1: attaching the eBPF probes again",
                    RELEASE_HOLD.as_secs()
                );
            }
            self.released = None;
            self.retry = None;
        }
        if let Some(att) = &self.attached {
            if att.modules == modules {
                return false;
            }
            info!("nf_synproxy_core or nf_conntrack was unloaded or reloaded: detaching the eBPF probes");
            self.detach();
        }
        if let Some(retry) = &self.retry {
            if retry.modules == modules && Instant::now() < retry.at {
                return false;
            }
        }
        let mut attached = self.attach(&modules, stop);
        if matches!(attached, Err(AttachError::FentryUnusable(_))) && module_identities() != modules
        {
            // A module came or went meanwhile: not a reason to give fentry up.
            attached = Err(AttachError::Other(
                "nf_synproxy_core or nf_conntrack changed during the attach".into(),
            ));
        }
        if let Err(AttachError::FentryUnusable(reason)) = &attached {
            warn!("--probes fentry: {reason}; using kprobes");
            self.active = ProbeType::Kprobe;
            attached = match self.load_kprobes(stop) {
                Ok(()) => self.attach(&modules, stop),
                Err(Unavailable(reason)) => {
                    if self.opening {
                        // open() reports it as the reason eBPF is disabled.
                        self.unusable = Some(reason);
                        return false;
                    }
                    Err(AttachError::Other(reason))
                }
            };
        }
        match attached {
            Ok(what) => {
                self.retry = None;
                info!("eBPF probes attached ({what})");
                true
            }
            Err(AttachError::Stopped) => false,
            Err(AttachError::FentryUnusable(reason)) => {
                // Not reached: the fallback above replaced it.
                warn!("cannot attach the eBPF probes: {reason}");
                false
            }
            Err(AttachError::Missing(function)) => {
                if self.retry.as_ref().is_none_or(|r| r.modules != modules) {
                    info!("eBPF loaded; waiting for nf_synproxy_core ({function} not found): probes attach when it is loaded");
                }
                // A module appearing changes the identities: checked every round.
                self.retry = Some(Retry {
                    modules,
                    at: Instant::now() + RETRY_MAX,
                    backoff: RETRY_MAX,
                });
                false
            }
            Err(AttachError::Other(message)) => {
                let backoff = match &self.retry {
                    Some(r) if r.modules == modules => (r.backoff * 2).min(RETRY_MAX),
                    _ => RETRY_FIRST,
                };
                warn!(
                    "cannot attach the eBPF probes: {message}; reporting /proc only, retrying in {} s",
                    backoff.as_secs()
                );
                self.retry = Some(Retry {
                    modules,
                    at: Instant::now() + backoff,
                    backoff,
                });
                false
            }
        }
    }

    /// Attaches the probes of the type in use; Ok names what was attached.
    fn attach(&mut self, modules: &[Option<u64>], stop: &Stop) -> Result<String, AttachError> {
        match self.active {
            ProbeType::Kprobe => {
                let n = self.attach_kprobes(modules, stop)?;
                let via = self
                    .tracefs
                    .as_ref()
                    .map(|t| t.root().display().to_string())
                    .unwrap_or_default();
                Ok(format!(
                    "{n} kprobes/kretprobes on the SYNPROXY paths, via {via}"
                ))
            }
            ProbeType::Fentry => self.attach_fentry(modules, stop),
        }
    }

    fn attach_kprobes(
        &mut self,
        modules: &[Option<u64>],
        stop: &Stop,
    ) -> Result<usize, AttachError> {
        let Some(tracefs) = self.tracefs.as_ref() else {
            return Err(AttachError::Other("tracefs is not mounted".into()));
        };
        let mut events: Vec<(String, OwnedFd)> = Vec::new();
        let result = (|| {
            for spec in PROBES {
                if !stop.allow_events() {
                    return Err(AttachError::Stopped);
                }
                let event = kprobe_events::event_name(&self.token, spec.short);
                let id = match tracefs.create(&event, spec.function, spec.ret) {
                    Ok(id) => id,
                    Err(e) => {
                        // The write may have created the event before failing to read its id.
                        let _ = tracefs.remove(&event);
                        return Err(match e.raw_os_error() {
                            Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::EADDRNOTAVAIL)
                                if !symbol_exists(spec.function) =>
                            {
                                AttachError::Missing(spec.function)
                            }
                            Some(libc::EPERM) | Some(libc::EACCES) => {
                                AttachError::Other(format!("{CAPS}: kprobe_events: {e}"))
                            }
                            _ => AttachError::Other(format!("kprobe on {}: {e}", spec.function)),
                        });
                    }
                };
                let program: &KProbe = match self.ebpf.program(spec.program) {
                    Some(p) => p
                        .try_into()
                        .map_err(|e| AttachError::Other(format!("{}: {e}", spec.program)))?,
                    None => {
                        return Err(AttachError::Other(format!(
                            "program {} missing",
                            spec.program
                        )))
                    }
                };
                let prog_fd = program
                    .fd()
                    .map_err(|e| AttachError::Other(format!("{}: {e}", spec.program)))?;
                match kprobe_events::attach_program(id, prog_fd.as_fd()) {
                    Ok(fd) => events.push((event, fd)),
                    Err(e) => {
                        let _ = tracefs.remove(&event);
                        return Err(AttachError::Other(format!(
                            "attaching {} to {}: {e}",
                            spec.program, spec.function
                        )));
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.generation += 1;
                let n = events.len();
                // kprobe_profile restarts with the new events.
                self.last_missed = 0;
                self.attached = Some(Attachment {
                    generation: self.generation,
                    modules: modules.to_vec(),
                    events,
                    kind: ProbeType::Kprobe,
                });
                Ok(n)
            }
            Err(e) => {
                remove_events(tracefs, events);
                Err(e)
            }
        }
    }

    /// Loads every fentry/fexit program against the BTF object that holds
    /// its function (vmlinux, or the module's, found again at each attach so
    /// that a reloaded module's new BTF is used) and attaches it.
    fn attach_fentry(
        &mut self,
        modules: &[Option<u64>],
        stop: &Stop,
    ) -> Result<String, AttachError> {
        let Some(targets) = self.fentry_targets.clone() else {
            return Err(AttachError::FentryUnusable("no fentry targets".into()));
        };
        let resolved = resolve_fentry_targets(&targets)?;
        let result = (|| {
            for (spec, (id, obj)) in FENTRY_PROBES.iter().zip(&resolved) {
                if stop.requested() {
                    return Err(AttachError::Stopped);
                }
                let fd = match obj {
                    Some((_, _, fd)) => Some(fd.try_clone().map_err(|e| {
                        AttachError::Other(format!("duplicating a BTF descriptor: {e}"))
                    })?),
                    None => None,
                };
                let program = self.ebpf.program_mut(spec.program).ok_or_else(|| {
                    AttachError::Other(format!("program {} missing", spec.program))
                })?;
                let loaded = if spec.exit {
                    let p: &mut FExit = program
                        .try_into()
                        .map_err(|e| AttachError::Other(format!("{}: {e}", spec.program)))?;
                    p.load_with_btf_obj(*id, fd)
                        .and_then(|()| p.attach().map(drop))
                } else {
                    let p: &mut FEntry = program
                        .try_into()
                        .map_err(|e| AttachError::Other(format!("{}: {e}", spec.program)))?;
                    p.load_with_btf_obj(*id, fd)
                        .and_then(|()| p.attach().map(drop))
                };
                if let Err(e) = loaded {
                    let Unavailable(reason) = if is_permission(&e) {
                        // Also as root where a kernel does not allow fentry.
                        Unavailable(format!(
                            "the kernel refused {} ({}; loading needs CAP_BPF and CAP_PERFMON)",
                            spec.program,
                            first_errno(&e).map_or_else(
                                || e.to_string(),
                                |n| std::io::Error::from_raw_os_error(n).to_string()
                            )
                        ))
                    } else {
                        load_error(spec.program, e)
                    };
                    return Err(AttachError::FentryUnusable(format!(
                        "{} on {}: {reason}",
                        if spec.exit { "fexit" } else { "fentry" },
                        spec.function
                    )));
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.unload_fentry();
            return Err(e);
        }
        self.generation += 1;
        self.last_missed = 0;
        // Freshly loaded programs: their recursion_misses start at 0 again.
        self.last_recursion = 0;
        self.attached = Some(Attachment {
            generation: self.generation,
            modules: modules.to_vec(),
            events: Vec::new(),
            kind: ProbeType::Fentry,
        });
        let mut objects: Vec<String> = Vec::new();
        for (_, obj) in &resolved {
            let name = match obj {
                Some((module, id, _)) => format!("{module} (BTF id {id})"),
                None => "vmlinux".to_string(),
            };
            if !objects.contains(&name) {
                objects.push(name);
            }
        }
        Ok(format!(
            "{} fentry/fexit programs on the SYNPROXY paths, loaded against the BTF of {}",
            FENTRY_PROBES.len(),
            objects.join(" and ")
        ))
    }

    /// Unloads every fentry/fexit program (links and program descriptors):
    /// nothing of them holds a module any more.
    fn unload_fentry(&mut self) {
        for spec in FENTRY_PROBES {
            let Some(program) = self.ebpf.program_mut(spec.program) else {
                continue;
            };
            let unloaded = if spec.exit {
                <&mut FExit>::try_from(program).map(FExit::unload)
            } else {
                <&mut FEntry>::try_from(program).map(FEntry::unload)
            };
            // NotLoaded: this one was not loaded (a failed attach stopped earlier).
            if let Ok(Err(e)) = unloaded {
                if !matches!(e, aya::programs::ProgramError::NotLoaded) {
                    warn!("cannot unload {}: {e}", spec.program);
                }
            }
        }
    }

    /// SIGUSR1: detaches the probes and unloads fentry programs, so that
    /// nothing of the agent holds `nf_synproxy_core` or `nf_conntrack` (a
    /// loaded fentry program on a module function keeps the module from being
    /// unloaded). They are attached again, fentry programs loaded against the
    /// new module BTF, once the modules were unloaded or reloaded, or after
    /// [`RELEASE_HOLD`] if they were not.
    pub fn release(&mut self) {
        self.detach();
        self.released = Some(Released {
            modules: module_identities(),
            until: Instant::now() + RELEASE_HOLD,
        });
        info!(
            "SIGUSR1: eBPF probes released; nf_synproxy_core and nf_conntrack can be unloaded now. The probes attach again once they are reloaded, or in {} s if they are not",
            RELEASE_HOLD.as_secs()
        );
    }

    /// Detaches every probe: kprobe events are removed; fentry/fexit programs
    /// are unloaded (they are loaded again against the modules' BTF at the
    /// next attach).
    pub fn detach(&mut self) {
        if let Some(att) = self.attached.take() {
            match att.kind {
                ProbeType::Kprobe => {
                    if let Some(tracefs) = self.tracefs.as_ref() {
                        remove_events(tracefs, att.events);
                    }
                }
                ProbeType::Fentry => {
                    let started = Instant::now();
                    self.unload_fentry();
                    info!(
                        "eBPF probes detached ({} fentry/fexit programs unloaded in {} ms)",
                        FENTRY_PROBES.len(),
                        started.elapsed().as_millis()
                    );
                }
            }
        }
    }

    /// Folds the completed rate buckets into the round's peaks, zeroes them and
    /// hands their ring entries to the buckets ahead (`RATE_TAGS`). Called
    /// every [`synproxy_common::RATE_DRAIN_BUCKETS`] buckets and at each round;
    /// a drain later than the ring allows loses events from the peaks only
    /// (counted as `rate_late_events`).
    pub fn drain_rates(&mut self) {
        // A program that read the clock just before a bucket ended adds a
        // moment later: buckets are drained once they ended a while ago.
        let current = monotonic_ns().saturating_sub(DRAIN_MARGIN_NS) / self.rate_res_ns;
        let ring = u64::from(RATE_RING);
        let rates = self.shared.stats.u32s();
        let slots = lock(&self.slots);
        let first = self.last_drained.saturating_add(1);
        let last = current.min(self.last_drained.saturating_add(ring + 1));
        for bucket in first..last {
            let idx = (bucket % ring) as usize;
            for (ns, slot) in slots.assigned() {
                let base = slot as usize * NS_STATS_U32S + NS_STATS_RATES_U32;
                let mut events = [[0u64; COUNTER_COUNT]; 2];
                let mut any = false;
                for (f, family) in events.iter_mut().enumerate() {
                    for (c, n) in family.iter_mut().enumerate() {
                        let at = base + (f * COUNTER_COUNT + c) * RATE_RING as usize + idx;
                        if let Some(v) = rates.get(at) {
                            *n = u64::from(v.swap(0, Ordering::AcqRel));
                            any |= *n > 0;
                        }
                    }
                }
                if any {
                    let peak = self.peaks.entry(ns).or_default();
                    for f in 0..2 {
                        for c in 0..COUNTER_COUNT {
                            peak[f][c] = peak[f][c].max(events[f][c]);
                        }
                    }
                }
            }
        }
        drop(slots);
        // Each ring entry counts the first bucket not drained yet that maps to it.
        for (idx, tag) in self.shared.tags.u64s().iter().enumerate() {
            let idx = idx as u64;
            let ahead = (idx + ring - current % ring) % ring;
            tag.store(current + ahead, Ordering::Release);
        }
        self.last_drained = current.saturating_sub(1);
    }

    /// The round's peaks, losses, probe stats and diagnostics; releases the
    /// slots of namespaces not in `keep` (gone, or not reported). None when
    /// the probes are not attached.
    pub fn read_round(&mut self, keep: &HashSet<NsKey>) -> Option<EbpfRound> {
        self.attached.as_ref()?;
        self.drain_rates();
        let mut round = EbpfRound {
            peaks: std::mem::take(&mut self.peaks),
            map_bytes: self.map_bytes,
            ..Default::default()
        };
        // kprobe_profile counts kprobe hits and misses; fentry programs
        // have no such counts (their skipped runs are recursion misses).
        if let (ProbeType::Kprobe, Some(tracefs)) = (self.active, self.tracefs.as_ref()) {
            let profile = tracefs.profile().unwrap_or_default();
            for spec in PROBES {
                let stats = profile
                    .get(&kprobe_events::event_name(&self.token, spec.short))
                    .copied()
                    .unwrap_or_default();
                round.probes.push((spec.short, stats));
            }
        }
        round.probe_type = self.active;
        for (slot, value) in self.shared.diag.u64s().iter().enumerate() {
            if let Some(out) = round.diag.get_mut(slot) {
                *out = value.load(Ordering::Acquire);
            }
        }
        let infos = self.program_infos();
        round.program_recursion = infos
            .iter()
            .map(|(n, i)| (*n, i.recursion_misses))
            .collect();
        round.recursion_misses = round.program_recursion.iter().map(|(_, n)| n).sum();
        if bpf_stats_enabled() {
            round.program_runs = infos
                .iter()
                .map(|(n, i)| (*n, i.run_time_ns, i.run_cnt))
                .collect();
        }
        let counting: &[&str] = match self.active {
            ProbeType::Kprobe => &COUNTING_PROGRAMS,
            ProbeType::Fentry => &FENTRY_COUNTING_PROGRAMS,
        };
        let recursion_counting: u64 = round
            .program_recursion
            .iter()
            .filter(|(name, _)| counting.contains(name))
            .map(|(_, n)| n)
            .sum();

        let delta = |now: u64, before: u64| now.saturating_sub(before);
        let missed = round.probes.iter().map(|(_, s)| s.missed).sum::<u64>();
        let d = |slot: u32| delta(round.diag[slot as usize], self.last_diag[slot as usize]);
        round.global_losses = delta(missed, self.last_missed)
            + delta(recursion_counting, self.last_recursion)
            + d(diag::ACK_RETURN_UNMATCHED)
            + d(diag::READ_FAILED);
        let rate_late = d(diag::RATE_LATE);
        if rate_late > 0 {
            warn!("eBPF: the agent drained the peak-rate buckets late: {rate_late} events missing from this interval's peak rates");
        }
        self.last_missed = missed;
        self.last_recursion = recursion_counting;
        self.last_diag = round.diag;

        round.sources = self.read_sources();
        self.prune(keep);
        Some(round)
    }

    /// This interval's per-source events (None without per-source counting,
    /// or when the read failed: said once).
    fn read_sources(&mut self) -> Option<SourcesRound> {
        let counting = self.sources.as_mut()?;
        counting.deltas.begin();
        let deltas = &mut counting.deltas;
        let read = ebpf_sources::read_iter(counting.link.as_fd(), &mut counting.records, |r| {
            deltas.add(r)
        });
        if let Err(e) = read {
            if !counting.failing {
                warn!("eBPF: cannot read the per-source counts: {e}");
                counting.failing = true;
            }
            return None;
        }
        counting.failing = false;
        let stat = |slot: u32| {
            counting
                .stats
                .u64s()
                .get(slot as usize)
                .map_or(0, |v| v.load(Ordering::Acquire))
        };
        let inserts = stat(source_stats::INSERTS);
        let mut round = SourcesRound {
            capacity: counting.capacity,
            insert_failures: stat(source_stats::INSERT_FAILED),
            map_bytes: counting.map_bytes,
            ..Default::default()
        };
        counting.deltas.finish(inserts, &mut round);
        Some(round)
    }

    fn prune(&mut self, keep: &HashSet<NsKey>) {
        lock(&self.slots).release_except(keep, self.shared.table.u64s(), Instant::now());
    }

    /// `bpf_prog_info` of each program of the type in use (names without
    /// `spx_`/`spxf_`).
    fn program_infos(&self) -> Vec<(&'static str, ProgInfo)> {
        let programs: Vec<(&'static str, &'static str)> = match self.active {
            ProbeType::Kprobe => PROBES
                .iter()
                .map(|p| (p.program, p.program.trim_start_matches("spx_")))
                .collect(),
            ProbeType::Fentry => FENTRY_PROBES.iter().map(|p| (p.program, p.short)).collect(),
        };
        let mut out: Vec<(&'static str, ProgInfo)> = Vec::new();
        for (program, name) in programs {
            if out.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let Some(program) = self.ebpf.program(program) else {
                continue;
            };
            if let Ok(fd) = program.fd() {
                out.push((name, prog_info(fd.as_fd()).unwrap_or_default()));
            }
        }
        out
    }

    pub fn rate_resolution(&self) -> Duration {
        Duration::from_nanos(self.rate_res_ns)
    }
}

/// What the agent reads of a program's `bpf_prog_info`.
#[derive(Clone, Copy, Debug, Default)]
struct ProgInfo {
    /// Runs skipped by the kernel (5.12+; 0 before).
    recursion_misses: u64,
    /// Time spent in the program and runs, while `kernel.bpf_stats_enabled` is 1.
    run_time_ns: u64,
    run_cnt: u64,
}

/// Whether the kernel counts program run time (`kernel.bpf_stats_enabled`).
fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program (no map access: it does not block
/// BPF programs on this CPU the way map syscalls do).
fn prog_info(fd: BorrowedFd<'_>) -> Option<ProgInfo> {
    // SAFETY: bpf_prog_info is plain integers and arrays: all zeroes is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    // bpf_attr's `info` member: bpf_fd, info_len, info (u64 pointer).
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = [0u8; 128];
    let head = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: InfoAttr is plain data and fits in the zeroed 128-byte attr.
    unsafe { std::ptr::write_unaligned(attr.as_mut_ptr().cast::<InfoAttr>(), head) };
    // SAFETY: `attr` points at a valid bpf_attr prefix whose `info` pointer
    // refers to `info`, which outlives the call; the kernel writes at most
    // `info_len` bytes there.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    (rc == 0).then_some(ProgInfo {
        recursion_misses: info.recursion_misses,
        run_time_ns: info.run_time_ns,
        run_cnt: info.run_cnt,
    })
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// memlock of every BPF map this process holds (`/proc/self/fdinfo`), bytes.
fn own_map_memlock() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !text.lines().any(|l| l.starts_with("map_type:")) {
            continue;
        }
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
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

fn remove_events(tracefs: &TraceFs, events: Vec<(String, OwnedFd)>) {
    // Each close and removal waits for an RCU grace period in the kernel; done
    // in parallel the waits overlap (shutdown must finish within 1 s).
    let started = std::time::Instant::now();
    let n = events.len();
    if n == 0 {
        return;
    }
    std::thread::scope(|scope| {
        for (name, fd) in events {
            let spawned = std::thread::Builder::new()
                .name("kprobe-detach".into())
                .spawn_scoped(scope, move || {
                    drop(fd);
                    if let Err(e) = tracefs.remove(&name) {
                        warn!(
                            "cannot remove kprobe event {}/{name}: {e}",
                            kprobe_events::GROUP
                        );
                    }
                });
            if let Err(e) = spawned {
                warn!("cannot start a detach thread: {e}");
            }
        }
    });
    info!(
        "eBPF probes detached ({n} kprobe events closed and removed in {} ms)",
        started.elapsed().as_millis()
    );
}

/// Whether `function` is a kernel symbol right now (/proc/kallsyms), only
/// consulted after an attach failed.
fn symbol_exists(function: &str) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return false;
    };
    text.lines().any(|l| {
        let mut parts = l.split_whitespace();
        parts.nth(2) == Some(function)
    })
}

/// How long after its end a rate bucket is drained.
const DRAIN_MARGIN_NS: u64 = 1_000_000;

/// Maps an mmapable array map of the object.
fn map_shared(
    ebpf: &Ebpf,
    name: &str,
    value_size: usize,
    max_entries: u32,
) -> Result<SharedArray, Unavailable> {
    let data = match ebpf.map(name) {
        Some(Map::Array(data)) => data,
        Some(_) => return Err(Unavailable(format!("map {name} is not an array"))),
        None => return Err(Unavailable(format!("map {name} missing from the object"))),
    };
    SharedArray::map(data.fd().as_fd(), value_size, max_entries as usize).map_err(|e| {
        if is_permission(&e) {
            Unavailable(format!("{CAPS}: mmap of map {name}: {e}"))
        } else {
            Unavailable(format!("cannot map {name} into memory: {e}"))
        }
    })
}

/// Loads the iterator over `SOURCES` and links it with the map.
fn open_source_counting(
    ebpf: &mut Ebpf,
    iter_btf_id: Option<u32>,
    capacity: u32,
) -> Result<SourceCounting, String> {
    let btf_id = iter_btf_id.ok_or_else(|| {
        format!(
            "the kernel has no BPF map iterator ({} not in its BTF; Linux 5.9+)",
            ebpf_sources::ITER_TARGET
        )
    })?;
    let stats = map_shared(ebpf, "SOURCE_STATS", 8, source_stats::COUNT).map_err(|e| e.0)?;
    let map_fd = match ebpf.map("SOURCES") {
        Some(Map::LruHashMap(data)) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("map SOURCES: {e}"))?,
        _ => return Err("map SOURCES missing from the object".into()),
    };
    let program: &mut Iter = ebpf
        .program_mut("spx_sources_iter")
        .ok_or("program spx_sources_iter missing from the object")?
        .try_into()
        .map_err(|e| format!("spx_sources_iter: {e}"))?;
    program
        .load_with_btf_id(btf_id)
        .map_err(|e| format!("loading spx_sources_iter: {e}"))?;
    let prog_fd = program.fd().map_err(|e| format!("spx_sources_iter: {e}"))?;
    let link = ebpf_sources::attach_map_iter(prog_fd.as_fd(), map_fd.as_fd())
        .map_err(|e| format!("linking spx_sources_iter with SOURCES: {e}"))?;
    let map_bytes = map_memlock(map_fd.as_fd());
    Ok(SourceCounting {
        link,
        stats,
        deltas: SourceDeltas::new(capacity),
        records: Vec::new(),
        capacity,
        map_bytes,
        failing: false,
    })
}

/// memlock of one BPF map (`/proc/self/fdinfo/FD`), bytes.
fn map_memlock(fd: BorrowedFd<'_>) -> u64 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// (BTF id, (module, BTF object id, BTF object fd) or None for vmlinux) of
/// each fentry program, in [`FENTRY_PROBES`] order. Module BTF is found by
/// name among the kernel's BTF objects and its ids read from that object.
type Resolved = Vec<(u32, Option<(&'static str, u32, OwnedFd)>)>;

fn resolve_fentry_targets(targets: &FentryTargets) -> Result<Resolved, AttachError> {
    let mut out: Resolved = Vec::new();
    let mut vmlinux_strings: Option<Vec<u8>> = None;
    let mut objects: Vec<(&'static str, Option<kernel_btf::ModuleBtf>)> = Vec::new();
    for (spec, builtin) in FENTRY_PROBES.iter().zip(targets.builtin) {
        if let Some(id) = builtin {
            out.push((id, None));
            continue;
        }
        let mut found = None;
        for module in MODULES {
            if !objects.iter().any(|(m, _)| *m == module) {
                let object = kernel_btf::find_module_btf(module).map_err(|e| {
                    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                        AttachError::Other(format!(
                            "{CAPS}; fentry on module functions also needs CAP_SYS_ADMIN to find the module's BTF: {e}"
                        ))
                    } else {
                        AttachError::FentryUnusable(format!("cannot list the kernel's BTF objects: {e}"))
                    }
                })?;
                objects.push((module, object));
            }
            let Some((_, Some(object))) = objects.iter().find(|(m, _)| *m == module) else {
                continue;
            };
            if vmlinux_strings.is_none() {
                let data = std::fs::read(VMLINUX_BTF)
                    .map_err(|e| AttachError::Other(format!("{VMLINUX_BTF}: {e}")))?;
                let strings = btf::string_section(&data)
                    .map_err(|e| AttachError::Other(format!("{VMLINUX_BTF}: {e}")))?
                    .to_vec();
                vmlinux_strings = Some(strings);
            }
            let base = SplitBase {
                strings: vmlinux_strings.as_deref().unwrap_or_default(),
                type_count: targets.vmlinux_types,
            };
            let ids = btf::func_ids(&object.data, Some(&base), &[spec.function])
                .map_err(|e| AttachError::Other(format!("BTF of module {module}: {e}")))?;
            if let Some(Some(id)) = ids.first() {
                let fd = object.fd.try_clone().map_err(|e| {
                    AttachError::Other(format!("duplicating a BTF descriptor: {e}"))
                })?;
                found = Some((*id, Some((module, object.id, fd))));
                break;
            }
        }
        match found {
            Some(target) => out.push(target),
            None => {
                // Loaded modules without a BTF object: this kernel has no
                // module BTF. A module not loaded: wait for it.
                let loaded_without_btf = objects.iter().find(|(m, o)| {
                    o.is_none() && Path::new("/sys/module").join(m).join("refcnt").exists()
                });
                return Err(match loaded_without_btf {
                    Some((m, _)) if symbol_exists(spec.function) => AttachError::FentryUnusable(format!(
                        "no BTF for module {m} (the kernel was built without CONFIG_DEBUG_INFO_BTF_MODULES)"
                    )),
                    _ => AttachError::Missing(spec.function),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_release("5.10.0-46-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_release("7.2.13+deb14-cloud-amd64"), Some((7, 2)));
        assert_eq!(parse_release("6.18"), Some((6, 18)));
        assert_eq!(parse_release("garbage"), None);
    }

    /// Both program sets cover the same functions; the fentry short names are
    /// the kprobe programs' (ack4/ack6 stand for the entry + return pair).
    #[test]
    fn fentry_set_matches_the_kprobe_set() {
        let mut kprobe: Vec<&str> = PROBES.iter().map(|p| p.function).collect();
        kprobe.dedup();
        let fentry: Vec<&str> = FENTRY_PROBES.iter().map(|p| p.function).collect();
        let mut k = kprobe.clone();
        k.sort_unstable();
        k.dedup();
        let mut f = fentry.clone();
        f.sort_unstable();
        assert_eq!(k, f);
        for name in FENTRY_COUNTING_PROGRAMS {
            assert!(FENTRY_PROBES.iter().any(|p| p.short == name), "{name}");
        }
        assert!(FENTRY_PROBES.iter().all(|p| p.program.len() <= 15));
    }
}
