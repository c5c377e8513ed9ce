//! The eBPF source: loads the programs embedded in the agent, attaches them to
//! the SYNPROXY functions (when `nf_synproxy_core` is loaded, again after it is
//! reloaded, and with backoff after a failed attach), and reads the in-kernel
//! counts (per namespace, around each /proc read), peak-rate buckets, probe and
//! recursion misses, and kernel-side diagnostics each round.
//!
//! Anything that makes eBPF unusable (no kprobes, no BTF, no capabilities, a
//! verifier rejection) is an [`Unavailable`] with one sentence naming the reason;
//! the agent then reports /proc only.

use super::btf::{Btf, KernelOffsets, VMLINUX_BTF};
use super::kprobe_events::{self, ProbeStats, TraceFs};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::KProbe;
use aya::{Ebpf, EbpfLoader};
use log::{debug, info, warn};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use synproxy_common::{
    diag, globals, CountKey, Counter, RateKey, COUNTER_COUNT, FAMILY_IPV4, FAMILY_IPV6,
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
pub const PROBES: [ProbeSpec; 9] = [
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
    probe("spx_hook4", "ipv4_synproxy_hook", false, "hook4"),
    probe("spx_hook6", "ipv6_synproxy_hook", false, "hook6"),
    probe("spx_seqadj", "nf_ct_seqadj_init", false, "seqadj"),
];

/// The programs that count events (names without `spx_`); the others only
/// stash state for them: a skipped stash program loses nothing by itself, and
/// what it can cost shows as `unmatched_returns`/`unmatched_seqadj`.
const COUNTING_PROGRAMS: [&str; 4] = ["synack4", "synack6", "ack_ret", "seqadj"];

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

/// Per family (0 = IPv4, 1 = IPv6), per counter in kernel order.
pub type FamilyCounts = [[u64; COUNTER_COUNT]; 2];

/// How the maps key a namespace: `net->ns.inum` and `net->net_cookie` (0
/// where cookies are not read).
pub type NsKey = (u32, u64);

/// What one round's read of the maps returns, besides the bracketing counts.
#[derive(Clone, Debug, Default)]
pub struct EbpfRound {
    /// Largest number of events in one rate bucket, among the buckets completed
    /// since the previous round, by namespace.
    pub peaks: HashMap<NsKey, FamilyCounts>,
    /// Events each namespace and family lost this round (`COUNTS` full).
    pub lost: HashMap<NsKey, [u64; 2]>,
    /// Per probe (short name): hits and misses since it was attached.
    pub probes: Vec<(&'static str, ProbeStats)>,
    /// Kernel-side diagnostics ([`synproxy_common::diag`]), totals since load.
    pub diag: [u64; diag::COUNT as usize],
    /// Programs skipped because another BPF program ran on that CPU, since load.
    pub recursion_misses: u64,
    /// The same per program (its name without `spx_`).
    pub program_recursion: Vec<(&'static str, u64)>,
    /// Probe misses, recursion misses and losses not attributable to a
    /// namespace, in this round (all namespaces).
    pub global_losses: u64,
    /// Kernel memory the maps pin (memlock), bytes.
    pub map_bytes: u64,
}

struct Attachment {
    generation: u64,
    /// Identity of the modules when attached.
    modules: Vec<Option<u64>>,
    /// (event name, perf fd) in attach order.
    events: Vec<(String, OwnedFd)>,
}

/// When to try attaching again after a failure.
struct Retry {
    modules: Vec<Option<u64>>,
    at: Instant,
    backoff: Duration,
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Read access to the per-namespace counts, usable from the netns reader thread.
pub struct CountsView<'a> {
    counts: &'a PerCpuHashMap<MapData, CountKey, u64>,
    present: &'a HashSet<CountKey>,
}

impl CountsView<'_> {
    /// The namespace's counts per family and counter: one map lookup per key
    /// that existed at the last [`EbpfSource::refresh_keys`] (a key created
    /// since reads as 0 until the next refresh: a lower bound, which the
    /// bracket check tolerates by re-reading). Few lookups matter: while a CPU
    /// is inside a map lookup syscall the kernel skips BPF programs there, so
    /// a packet handled in a softirq on that CPU at that moment is not counted
    /// (kernels from 6.7 on report it as a recursion miss).
    pub fn get(&self, ns: NsKey) -> FamilyCounts {
        let mut out = [[0u64; COUNTER_COUNT]; 2];
        for (f, family) in [FAMILY_IPV4, FAMILY_IPV6].into_iter().enumerate() {
            for counter in Counter::ALL {
                let key = CountKey {
                    netns: ns.0,
                    family,
                    counter: counter as u8,
                    _pad: [0; 2],
                    cookie: ns.1,
                };
                if !self.present.contains(&key) {
                    continue;
                }
                if let Ok(values) = self.counts.get(&key, 0) {
                    out[f][counter.index()] = values.iter().copied().fold(0u64, u64::wrapping_add);
                }
            }
        }
        out
    }
}

pub struct EbpfSource {
    ebpf: Ebpf,
    tracefs: TraceFs,
    /// Names this agent's kprobe events: unique per start, whatever the PID
    /// namespace (PIDs are not).
    token: String,
    counts: PerCpuHashMap<MapData, CountKey, u64>,
    lost: PerCpuHashMap<MapData, CountKey, u64>,
    rates: PerCpuHashMap<MapData, RateKey, u64>,
    diag_map: PerCpuArray<MapData, u64>,
    rate_res_ns: u64,
    attached: Option<Attachment>,
    generation: u64,
    retry: Option<Retry>,
    /// Probe misses of the current attachment at the previous round.
    last_missed: u64,
    last_recursion: u64,
    last_diag: [u64; diag::COUNT as usize],
    last_lost: HashMap<CountKey, u64>,
    /// Peaks of the buckets drained since the previous round.
    peaks: HashMap<NsKey, FamilyCounts>,
    /// `COUNTS` keys at the last [`EbpfSource::refresh_keys`].
    present: HashSet<CountKey>,
    map_bytes: u64,
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

const CAPS: &str = "missing capabilities (loading eBPF needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN for tracefs)";

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

impl EbpfSource {
    /// Checks the kernel, loads the programs (the verifier runs here) and tries
    /// to attach. Not being able to attach yet (module not loaded) is no error.
    pub fn open(rate_resolution: Duration, attach: bool, stop: &Stop) -> Result<Self, Unavailable> {
        if OBJECT.is_empty() {
            return Err(Unavailable(
                "this synproxy-agent was built without its eBPF programs (AYA_BUILD_SKIP)".into(),
            ));
        }
        let tracefs = TraceFs::find();
        if !Path::new(KPROBE_PMU).exists() && tracefs.is_none() {
            return Err(Unavailable(format!(
                "kprobes not supported by this kernel ({KPROBE_PMU} missing)"
            )));
        }
        let Some(tracefs) = tracefs else {
            return Err(Unavailable(
                "tracefs is not mounted (no kprobe_events in /sys/kernel/tracing or /sys/kernel/debug/tracing; mount -t tracefs nodev /sys/kernel/tracing)".into(),
            ));
        };
        let offsets = match Btf::read(Path::new(VMLINUX_BTF)) {
            Ok(Ok(btf)) => KernelOffsets::from_btf(&btf)
                .map_err(|e| Unavailable(format!("kernel BTF lacks a needed type: {e}")))?,
            Ok(Err(e)) => return Err(Unavailable(format!("{VMLINUX_BTF}: {e}"))),
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
        debug!("kernel offsets from BTF: {offsets:?}");
        // Cookies join eBPF counts with namespaces only where the agent can ask
        // a namespace for its cookie too (SO_NETNS_COOKIE, 5.14+).
        let cookie_offset = match (offsets.net_cookie, super::netns::current_netns_cookie()) {
            (Some(offset), Some(_)) => offset,
            _ => u32::MAX,
        };
        raise_memlock();
        let rate_res_ns = u64::try_from(rate_resolution.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::NET_INUM_OFFSET, &offsets.net_inum, true)
            .override_global(
                globals::HOOK_STATE_NET_OFFSET,
                &offsets.hook_state_net,
                true,
            )
            .override_global(globals::SKB_NFCT_OFFSET, &offsets.skb_nfct, true)
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
        let mut loaded: Vec<&str> = Vec::new();
        for spec in PROBES {
            if loaded.contains(&spec.program) {
                continue;
            }
            if stop.requested() {
                return Err(Unavailable("stopped during start-up".into()));
            }
            let program: &mut KProbe = ebpf
                .program_mut(spec.program)
                .ok_or_else(|| {
                    Unavailable(format!("program {} missing from the object", spec.program))
                })?
                .try_into()
                .map_err(|e| Unavailable(format!("program {}: {e}", spec.program)))?;
            if let Err(e) = program.load() {
                if is_permission(&e) {
                    return Err(Unavailable(format!("{CAPS}: {e}")));
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
                return Err(Unavailable(format!(
                    "the kernel verifier rejected {}: {detail}",
                    spec.program
                )));
            }
            loaded.push(spec.program);
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Unavailable(format!("map {name} missing from the object")))
        };
        let counts = PerCpuHashMap::try_from(take(&mut ebpf, "COUNTS")?)
            .map_err(|e| Unavailable(format!("map COUNTS: {e}")))?;
        let rates = PerCpuHashMap::try_from(take(&mut ebpf, "RATES")?)
            .map_err(|e| Unavailable(format!("map RATES: {e}")))?;
        let lost = PerCpuHashMap::try_from(take(&mut ebpf, "LOST")?)
            .map_err(|e| Unavailable(format!("map LOST: {e}")))?;
        let diag_map = PerCpuArray::try_from(take(&mut ebpf, "DIAG")?)
            .map_err(|e| Unavailable(format!("map DIAG: {e}")))?;
        for event in tracefs.remove_unused() {
            info!("removed kprobe event {event} left by an agent that no longer runs");
        }
        let map_bytes = own_map_memlock();
        debug!("eBPF maps pin {} KiB of kernel memory", map_bytes / 1024);
        let mut source = Self {
            ebpf,
            tracefs,
            token: kprobe_events::new_token(),
            counts,
            lost,
            rates,
            diag_map,
            rate_res_ns,
            attached: None,
            generation: 0,
            retry: None,
            last_missed: 0,
            last_recursion: 0,
            last_diag: [0; diag::COUNT as usize],
            last_lost: HashMap::new(),
            peaks: HashMap::new(),
            present: HashSet::new(),
            map_bytes,
        };
        if attach {
            source.poll(stop);
        }
        Ok(source)
    }

    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// The attachment generation, None while the probes are not attached.
    pub fn generation(&self) -> Option<u64> {
        self.attached.as_ref().map(|a| a.generation)
    }

    /// Lookups of the per-namespace counts (for the reads around /proc).
    pub fn counts_view(&self) -> CountsView<'_> {
        CountsView {
            counts: &self.counts,
            present: &self.present,
        }
    }

    /// Lists the keys of `COUNTS` (key iteration only, no value copies) so
    /// that [`CountsView::get`] looks up only keys that exist.
    pub fn refresh_keys(&mut self) {
        self.present.clear();
        if self.attached.is_some() {
            self.present
                .extend(self.counts.keys().filter_map(Result::ok));
        }
    }

    /// Follows module (re)loads: detaches probes whose module changed and
    /// (re)attaches when possible; after a failed attach, retries with backoff
    /// (1 s doubling to 30 s) or at once when a module changes. Cheap when
    /// nothing changed (a few stat calls). Returns true when the probes were
    /// (re)attached by this call.
    pub fn poll(&mut self, stop: &Stop) -> bool {
        let modules = module_identities();
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
        match self.attach(&modules, stop) {
            Ok(n) => {
                self.retry = None;
                info!(
                    "eBPF probes attached ({n} kprobes/kretprobes on the SYNPROXY paths, via {})",
                    self.tracefs.root().display()
                );
                true
            }
            Err(AttachError::Stopped) => false,
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

    fn attach(&mut self, modules: &[Option<u64>], stop: &Stop) -> Result<usize, AttachError> {
        let mut events: Vec<(String, OwnedFd)> = Vec::new();
        let result = (|| {
            for spec in PROBES {
                if !stop.allow_events() {
                    return Err(AttachError::Stopped);
                }
                let event = kprobe_events::event_name(&self.token, spec.short);
                let id = match self.tracefs.create(&event, spec.function, spec.ret) {
                    Ok(id) => id,
                    Err(e) => {
                        // The write may have created the event before failing to read its id.
                        let _ = self.tracefs.remove(&event);
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
                        let _ = self.tracefs.remove(&event);
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
                });
                Ok(n)
            }
            Err(e) => {
                remove_events(&self.tracefs, events);
                Err(e)
            }
        }
    }

    /// Detaches every probe and removes its kprobe event.
    pub fn detach(&mut self) {
        if let Some(att) = self.attached.take() {
            remove_events(&self.tracefs, att.events);
        }
    }

    /// Folds completed rate buckets into the round's peaks and deletes them,
    /// so `RATES` holds at most a few buckets per active key whatever the
    /// interval. Called every [`synproxy_common::RATE_DRAIN_BUCKETS`] buckets
    /// and at each round.
    pub fn drain_rates(&mut self) {
        if self.attached.is_none() {
            return;
        }
        let current = monotonic_ns() / self.rate_res_ns;
        let mut done = Vec::new();
        for item in self.rates.iter() {
            let Ok((key, values)) = item else { continue };
            if key.bucket >= current {
                continue;
            }
            done.push(key);
            let Some(slot) = slot(&key.count) else {
                continue;
            };
            let n: u64 = values.iter().copied().fold(0u64, u64::wrapping_add);
            let ns = (key.count.netns, key.count.cookie);
            let peak = &mut self.peaks.entry(ns).or_default()[slot.0][slot.1];
            *peak = (*peak).max(n);
        }
        for key in done {
            let _ = self.rates.remove(&key);
        }
    }

    /// The round's peaks, losses, probe stats and diagnostics; removes the
    /// `COUNTS`/`LOST` keys of namespaces not in `keep` (gone, or not
    /// reported). None when the probes are not attached.
    pub fn read_round(&mut self, keep: &HashSet<NsKey>) -> Option<EbpfRound> {
        self.attached.as_ref()?;
        self.drain_rates();
        let mut round = EbpfRound {
            peaks: std::mem::take(&mut self.peaks),
            map_bytes: self.map_bytes,
            ..Default::default()
        };
        let profile = self.tracefs.profile().unwrap_or_default();
        for spec in PROBES {
            let stats = profile
                .get(&kprobe_events::event_name(&self.token, spec.short))
                .copied()
                .unwrap_or_default();
            round.probes.push((spec.short, stats));
        }
        for slot in 0..diag::COUNT {
            if let Ok(values) = self.diag_map.get(&slot, 0) {
                round.diag[slot as usize] = values.iter().copied().fold(0u64, u64::wrapping_add);
            }
        }
        round.program_recursion = self.recursion_misses();
        round.recursion_misses = round.program_recursion.iter().map(|(_, n)| n).sum();
        let recursion_counting: u64 = round
            .program_recursion
            .iter()
            .filter(|(name, _)| COUNTING_PROGRAMS.contains(name))
            .map(|(_, n)| n)
            .sum();

        let mut lost_now = HashMap::new();
        let mut lost_total = 0u64;
        for item in self.lost.iter() {
            let Ok((key, values)) = item else { continue };
            let n: u64 = values.iter().copied().fold(0u64, u64::wrapping_add);
            let delta = n.saturating_sub(self.last_lost.get(&key).copied().unwrap_or(0));
            lost_now.insert(key, n);
            if delta > 0 {
                lost_total += delta;
                if let Some((f, _)) = slot(&key) {
                    round.lost.entry((key.netns, key.cookie)).or_default()[f] += delta;
                }
            }
        }
        self.last_lost = lost_now;

        let delta = |now: u64, before: u64| now.saturating_sub(before);
        let missed = round.probes.iter().map(|(_, s)| s.missed).sum::<u64>();
        let d = |slot: u32| delta(round.diag[slot as usize], self.last_diag[slot as usize]);
        let map_full = d(diag::COUNT_MAP_FULL);
        round.global_losses = delta(missed, self.last_missed)
            + delta(recursion_counting, self.last_recursion)
            + d(diag::SEQADJ_UNMATCHED)
            + d(diag::ACK_RETURN_UNMATCHED)
            + d(diag::READ_FAILED)
            + map_full.saturating_sub(lost_total);
        if map_full > 0 {
            warn!("eBPF: the COUNTS map was full: {map_full} events not counted this interval (see probe_misses per namespace)");
        }
        let rate_full = d(diag::RATE_MAP_FULL);
        if rate_full > 0 {
            warn!("eBPF: the RATES map was full: {rate_full} events missing from this interval's peak rates");
        }
        self.last_missed = missed;
        self.last_recursion = recursion_counting;
        self.last_diag = round.diag;

        self.prune(keep);
        Some(round)
    }

    /// Removes the keys of namespaces not in `keep`. `COUNTS` keys come from
    /// this round's listing ([`EbpfSource::refresh_keys`]); a key created since
    /// goes in the next round.
    fn prune(&mut self, keep: &HashSet<NsKey>) {
        let gone = |k: &CountKey| !keep.contains(&(k.netns, k.cookie));
        for key in self.present.iter().filter(|k| gone(k)) {
            let _ = self.counts.remove(key);
        }
        let lost: Vec<CountKey> = self
            .lost
            .keys()
            .filter_map(Result::ok)
            .filter(gone)
            .collect();
        for key in lost {
            let _ = self.lost.remove(&key);
            self.last_lost.remove(&key);
        }
    }

    /// `bpf_prog_info.recursion_misses` (5.12+; 0 before) per program, since
    /// load (names without `spx_`).
    fn recursion_misses(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for spec in PROBES {
            let name = spec.program.trim_start_matches("spx_");
            if out.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let Some(program) = self.ebpf.program(spec.program) else {
                continue;
            };
            let Ok(program): Result<&KProbe, _> = program.try_into() else {
                continue;
            };
            if let Ok(fd) = program.fd() {
                out.push((name, prog_recursion_misses(fd.as_fd()).unwrap_or(0)));
            }
        }
        out
    }

    pub fn rate_resolution(&self) -> Duration {
        Duration::from_nanos(self.rate_res_ns)
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program: its `recursion_misses`.
fn prog_recursion_misses(fd: BorrowedFd<'_>) -> Option<u64> {
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
    (rc == 0).then_some(info.recursion_misses)
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

/// (family index, counter index) of a key; None for values the programs never write.
fn slot(key: &CountKey) -> Option<(usize, usize)> {
    let family = usize::from(key.family == FAMILY_IPV6);
    let counter = usize::from(key.counter);
    (counter < COUNTER_COUNT).then_some((family, counter))
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
