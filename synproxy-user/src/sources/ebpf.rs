//! The eBPF source: loads the programs embedded in the agent, attaches them to
//! the SYNPROXY functions (when `nf_synproxy_core` is loaded, again after it is
//! reloaded), and reads the in-kernel counts, peak-rate buckets, probe misses and
//! kernel-side diagnostics each interval.
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
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use synproxy_common::{diag, globals, CountKey, RateKey, COUNTER_COUNT, FAMILY_IPV6};

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

/// The probe set of docs/synproxy-kernel.md. Entry probes that stash state for a
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

/// Modules whose (re)load invalidates the probes.
const MODULES: [&str; 2] = ["nf_synproxy_core", "nf_conntrack"];

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

/// What one read of the maps returns.
#[derive(Clone, Debug, Default)]
pub struct EbpfReading {
    /// Changes whenever the probes were (re)attached: counts of different
    /// generations must not be compared.
    pub generation: u64,
    /// eBPF counts since the programs were loaded, by netns inode.
    pub counts: HashMap<u32, FamilyCounts>,
    /// Largest number of events in one rate bucket, among the buckets completed
    /// since the previous read, by netns inode.
    pub peaks: HashMap<u32, FamilyCounts>,
    /// Per probe (short name): hits and misses since it was attached.
    pub probes: Vec<(&'static str, ProbeStats)>,
    /// Kernel-side diagnostics ([`synproxy_common::diag`]), totals since load.
    pub diag: [u64; diag::COUNT as usize],
    /// Probe misses plus lost events (map full, unmatched returns, failed reads)
    /// since the previous read.
    pub losses: u64,
}

struct Attachment {
    generation: u64,
    /// Identity of the modules when attached.
    modules: Vec<Option<u64>>,
    /// (event name, perf fd) in attach order.
    events: Vec<(String, OwnedFd)>,
}

pub struct EbpfSource {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    tracefs: TraceFs,
    counts: PerCpuHashMap<MapData, CountKey, u64>,
    rates: PerCpuHashMap<MapData, RateKey, u64>,
    diag_map: PerCpuArray<MapData, u64>,
    rate_res_ns: u64,
    attached: Option<Attachment>,
    generation: u64,
    /// Module identities at the last failed attach: retried when they change.
    last_try: Option<Vec<Option<u64>>>,
    /// Probe misses of the current attachment at the previous read.
    last_missed: u64,
    /// Loss-relevant diagnostics at the previous read.
    last_diag_losses: u64,
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
    pub fn open(rate_resolution: Duration, attach: bool) -> Result<Self, Unavailable> {
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
            .override_global(globals::RATE_RES_NS, &rate_res_ns, true)
            .load(OBJECT)
            .map_err(|e| {
                if is_permission(&e) {
                    Unavailable(format!("{CAPS}: {e}"))
                } else {
                    Unavailable(format!("cannot load the eBPF object: {e}"))
                }
            })?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                debug!("kernel-side eBPF log unavailable: {e}");
                None
            }
        };
        let mut loaded: Vec<&str> = Vec::new();
        for spec in PROBES {
            if loaded.contains(&spec.program) {
                continue;
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
        let diag_map = PerCpuArray::try_from(take(&mut ebpf, "DIAG")?)
            .map_err(|e| Unavailable(format!("map DIAG: {e}")))?;
        for event in tracefs.remove_stale() {
            info!("removed kprobe event {event} left by an agent that no longer runs");
        }
        let mut source = Self {
            ebpf,
            logger,
            tracefs,
            counts,
            rates,
            diag_map,
            rate_res_ns,
            attached: None,
            generation: 0,
            last_try: None,
            last_missed: 0,
            last_diag_losses: 0,
        };
        if attach {
            source.poll();
        }
        Ok(source)
    }

    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// Follows module (re)loads: detaches probes whose module changed and
    /// (re)attaches when possible. Cheap when nothing changed (a few stat calls).
    /// Returns true when the probes were (re)attached by this call.
    pub fn poll(&mut self) -> bool {
        let modules = module_identities();
        if let Some(att) = &self.attached {
            if att.modules == modules {
                return false;
            }
            info!("nf_synproxy_core or nf_conntrack was unloaded or reloaded: detaching the eBPF probes");
            self.detach();
        }
        if self.last_try.as_ref() == Some(&modules) {
            return false;
        }
        match self.attach(&modules) {
            Ok(n) => {
                self.last_try = None;
                info!(
                    "eBPF probes attached ({n} kprobes/kretprobes on the SYNPROXY paths, via {})",
                    self.tracefs.root().display()
                );
                true
            }
            Err(AttachError::Missing(function)) => {
                info!("eBPF loaded; waiting for nf_synproxy_core ({function} not found): probes attach when it is loaded");
                self.last_try = Some(modules);
                false
            }
            Err(AttachError::Other(message)) => {
                warn!("cannot attach the eBPF probes: {message}; reporting /proc only until nf_synproxy_core is reloaded");
                self.last_try = Some(modules);
                false
            }
        }
    }

    fn attach(&mut self, modules: &[Option<u64>]) -> Result<usize, AttachError> {
        let pid = std::process::id();
        let mut events: Vec<(String, OwnedFd)> = Vec::new();
        let result = (|| {
            for spec in PROBES {
                let event = format!("spx{pid}_{}", spec.short);
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

    /// Reads counts, completed rate buckets, probe stats and diagnostics. None
    /// when the probes are not attached.
    pub fn read(&mut self) -> Option<EbpfReading> {
        self.flush_log();
        let att = self.attached.as_ref()?;
        let mut reading = EbpfReading {
            generation: att.generation,
            ..Default::default()
        };
        for item in self.counts.iter() {
            let Ok((key, values)) = item else { continue };
            let Some(slot) = slot(&key) else { continue };
            let total: u64 = values.iter().copied().fold(0u64, u64::wrapping_add);
            reading.counts.entry(key.netns).or_default()[slot.0][slot.1] = total;
        }
        // Buckets before the current one are complete: fold them into the peaks
        // and delete them.
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
            let peak = &mut reading.peaks.entry(key.count.netns).or_default()[slot.0][slot.1];
            *peak = (*peak).max(n);
        }
        for key in done {
            let _ = self.rates.remove(&key);
        }
        let profile = self.tracefs.profile().unwrap_or_default();
        let pid = std::process::id();
        for spec in PROBES {
            let stats = profile
                .get(&format!("spx{pid}_{}", spec.short))
                .copied()
                .unwrap_or_default();
            reading.probes.push((spec.short, stats));
        }
        for slot in 0..diag::COUNT {
            if let Ok(values) = self.diag_map.get(&slot, 0) {
                reading.diag[slot as usize] = values.iter().copied().fold(0u64, u64::wrapping_add);
            }
        }
        let missed = reading.probes.iter().map(|(_, s)| s.missed).sum::<u64>();
        let diag_losses = reading.diag[diag::COUNT_MAP_FULL as usize]
            + reading.diag[diag::ACK_RETURN_UNMATCHED as usize]
            + reading.diag[diag::READ_FAILED as usize];
        reading.losses = missed.saturating_sub(self.last_missed)
            + diag_losses.saturating_sub(self.last_diag_losses);
        self.last_missed = missed;
        self.last_diag_losses = diag_losses;
        Some(reading)
    }

    /// Forwards kernel-side aya-log records to the agent's log.
    pub fn flush_log(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }

    pub fn rate_resolution(&self) -> Duration {
        Duration::from_nanos(self.rate_res_ns)
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
