//! What the kernel says about each loaded program (`bpf_prog_info` by a
//! hand-written `BPF_OBJ_GET_INFO_BY_FD`): recursion misses and run time.

use super::{EbpfSource, ProbeType, FENTRY_PROBES, PROBES};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

impl EbpfSource {
    /// `bpf_prog_info` of each program of the type in use (names without
    /// `spx_`/`spxf_`).
    pub(super) fn program_infos(&self) -> Vec<(&'static str, ProgInfo)> {
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
}

/// What the agent reads of a program's `bpf_prog_info`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ProgInfo {
    /// Runs skipped by the kernel (5.12+; 0 before).
    pub(super) recursion_misses: u64,
    /// Time spent in the program and runs, while `kernel.bpf_stats_enabled` is 1.
    pub(super) run_time_ns: u64,
    pub(super) run_cnt: u64,
}

/// Whether the kernel counts program run time (`kernel.bpf_stats_enabled`).
pub(super) fn bpf_stats_enabled() -> bool {
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
