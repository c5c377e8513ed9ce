//! Loading the eBPF object: checking the kernel (BTF, kprobes), setting the
//! programs' globals from BTF offsets, mapping the shared maps, and loading
//! the kprobe programs (the verifier runs here).

use super::btf::{Btf, KernelOffsets, VMLINUX_BTF};
use super::error::{is_permission, load_error, EbpfError};
use super::event_log::{ring_len, EventLog};
use super::fentry_attach::fentry_precheck;
use super::kprobe_events::{self, TraceFs};
use super::ns_slots::NsSlots;
use super::port_counting::PortCounting;
use super::shared_array::SharedArray;
use super::source_counting::SourceCounting;
use super::{EbpfSource, ProbeType, Shared, Stop, KPROBE_PMU, PROBES};
use aya::maps::Map;
use aya::programs::KProbe;
use aya::{Ebpf, EbpfLoader};
use log::{debug, info, warn};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use synproxy_common::{
    diag, globals, LogPos, LoggedEvent, NsEntry, NsStats, NS_SLOTS, NS_TABLE_ENTRIES, RATE_RING,
};

/// The object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synproxy"));

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
fn kprobe_support(tracefs: Option<&TraceFs>) -> Result<&TraceFs, EbpfError> {
    if !Path::new(KPROBE_PMU).exists() && tracefs.is_none() {
        return Err(EbpfError::NoKprobes);
    }
    tracefs.ok_or(EbpfError::NoTracefs)
}

impl EbpfSource {
    /// Checks the kernel, loads the programs (the verifier runs here) and tries
    /// to attach. Not being able to attach yet (module not loaded) is no error.
    /// `source_entries`: with per-source counting (`--top` N > 0), the size
    /// of its map; `port_entries` likewise for per-port counting
    /// (`--top-ports` N > 0).
    pub fn open(
        rate_resolution: Duration,
        attach: bool,
        stop: &Stop,
        probes: ProbeType,
        source_entries: Option<u32>,
        port_entries: Option<u32>,
    ) -> Result<Self, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let vmlinux = match std::fs::read(VMLINUX_BTF) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(EbpfError::NoBtf),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(EbpfError::MissingCapabilities(format!(
                    "cannot read {VMLINUX_BTF}"
                )))
            }
            Err(e) => return Err(EbpfError::BtfUnreadable(e)),
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
            Ok(btf) => KernelOffsets::from_btf(&btf).map_err(EbpfError::BtfLacksType)?,
            Err(e) => return Err(EbpfError::BtfInvalid(e)),
        };
        drop(vmlinux);
        debug!("kernel offsets from BTF: {offsets:?}");
        // Cookies join eBPF counts with namespaces only where the agent can ask
        // a namespace for its cookie too (SO_NETNS_COOKIE, 5.14+).
        let cookie_offset = match (
            offsets.net_cookie,
            crate::sources::proc::netns::current_netns_cookie(),
        ) {
            (Some(offset), Some(_)) => offset,
            _ => u32::MAX,
        };
        raise_memlock();
        let rate_res_ns = u64::try_from(rate_resolution.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let count_sources = u32::from(source_entries.is_some());
        let count_ports = u32::from(port_entries.is_some());
        // The event log: a ring per possible CPU, or one record when nothing
        // is logged (`--top 0 --top-ports 0`).
        let cpus = match aya::util::nr_cpus() {
            Ok(n) => n.max(1),
            Err((path, e)) => return Err(EbpfError::ObjectLoad(format!("{path}: {e}"))),
        };
        let logging = source_entries.is_some() || port_entries.is_some();
        let log_len = if logging { ring_len(cpus) } else { 0 };
        let log_records = if logging {
            u32::try_from(cpus)
                .ok()
                .and_then(|c| c.checked_mul(log_len))
                .ok_or_else(|| EbpfError::ObjectLoad(format!("{cpus} CPUs: event log too large")))?
        } else {
            1
        };
        let log_pos_entries = u32::try_from(cpus)
            .map_err(|_| EbpfError::ObjectLoad(format!("{cpus} CPUs: event log too large")))?;
        let ebpf = EbpfLoader::new()
            .override_global(globals::COUNT_SOURCES, &count_sources, true)
            .override_global(globals::COUNT_PORTS, &count_ports, true)
            .map_max_entries("EVENT_LOG", log_records)
            .map_max_entries("LOG_POS", log_pos_entries)
            .override_global(globals::LOG_LEN, &log_len, true)
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
                    EbpfError::MissingCapabilities(e.to_string())
                } else {
                    EbpfError::ObjectLoad(e.to_string())
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
        let (log, log_bytes) = if logging {
            let records = map_shared(
                &ebpf,
                "EVENT_LOG",
                std::mem::size_of::<LoggedEvent>(),
                log_records,
            )?;
            let pos = map_shared(
                &ebpf,
                "LOG_POS",
                std::mem::size_of::<LogPos>(),
                log_pos_entries,
            )?;
            let bytes = ["EVENT_LOG", "LOG_POS"]
                .iter()
                .filter_map(|name| match ebpf.map(name) {
                    Some(Map::Array(data)) => Some(map_memlock(data.fd().as_fd())),
                    _ => None,
                })
                .sum();
            (Some(EventLog::new(records, pos, cpus, log_len)), bytes)
        } else {
            (None, 0)
        };
        let sources = source_entries.map(SourceCounting::new);
        let ports = port_entries.map(PortCounting::new);
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
            window: HashMap::new(),
            window_buckets: 0,
            map_bytes,
            log,
            log_bytes,
            sources,
            ports,
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
            Some(reason) => Err(reason),
            None => Ok(source),
        }
    }

    /// Loads the kprobe programs (the verifier runs here) and removes kprobe
    /// events that agents no longer running left behind.
    pub(super) fn load_kprobes(&mut self, stop: &Stop) -> Result<(), EbpfError> {
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
                return Err(EbpfError::Stopped);
            }
            let program: &mut KProbe = self
                .ebpf
                .program_mut(spec.program)
                .ok_or(EbpfError::ProgramMissing(spec.program))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| EbpfError::WrongProgram {
                    program: spec.program,
                    detail: e.to_string(),
                })?;
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
}

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

/// Maps an mmapable array map of the object.
pub(super) fn map_shared(
    ebpf: &Ebpf,
    name: &'static str,
    value_size: usize,
    max_entries: u32,
) -> Result<SharedArray, EbpfError> {
    let data = match ebpf.map(name) {
        Some(Map::Array(data)) => data,
        Some(_) => return Err(EbpfError::MapNotArray(name)),
        None => return Err(EbpfError::MapMissing(name)),
    };
    SharedArray::map(data.fd().as_fd(), value_size, max_entries as usize).map_err(|e| {
        if is_permission(&e) {
            EbpfError::MissingCapabilities(format!("mmap of map {name}: {e}"))
        } else {
            EbpfError::MapMemory {
                name,
                detail: e.to_string(),
            }
        }
    })
}

/// memlock of one BPF map (`/proc/self/fdinfo/FD`), bytes.
pub(super) fn map_memlock(fd: BorrowedFd<'_>) -> u64 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}
