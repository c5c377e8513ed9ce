//! Loading the eBPF object: checking the kernel (BTF, kprobes), setting the
//! programs' globals from BTF offsets, mapping the shared maps, and loading
//! the kprobe programs (the verifier runs here).

use super::address_counts;
use super::address_iter::open_source_counting;
use super::btf::{self, Btf, KernelOffsets, VMLINUX_BTF};
use super::error::{is_permission, load_error, EbpfError};
use super::fentry_attach::fentry_precheck;
use super::kprobe_events::{self, TraceFs};
use super::ns_slots::NsSlots;
use super::port_iter::open_port_counting;
use super::shared_array::SharedArray;
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
use synproxy_common::{diag, globals, NsEntry, NsStats, NS_SLOTS, NS_TABLE_ENTRIES, RATE_RING};

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
        // The map-element iterator's target, for per-source counting.
        let iter_btf_id = match source_entries.or(port_entries) {
            Some(_) => btf::func_ids(&vmlinux, None, &[address_counts::ITER_TARGET])
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
        // With `--top 0` the map is one entry: nothing writes it.
        let source_map_entries = source_entries.unwrap_or(1);
        let count_ports = u32::from(port_entries.is_some());
        let port_map_entries = port_entries.unwrap_or(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("SOURCES", source_map_entries)
            .override_global(globals::COUNT_SOURCES, &count_sources, true)
            .map_max_entries("PORTS", port_map_entries)
            .override_global(globals::COUNT_PORTS, &count_ports, true)
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
        let ports = match port_entries {
            Some(capacity) => match open_port_counting(&mut ebpf, iter_btf_id, capacity) {
                Ok(counting) => Some(counting),
                Err(reason) => {
                    warn!("eBPF: per-port counting (--top-ports) is off: {reason}");
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
            window: HashMap::new(),
            window_buckets: 0,
            map_bytes,
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
