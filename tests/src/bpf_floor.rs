//! The reference of the eBPF cost check: a minimal counting program (one
//! hash-map increment per event, what monitoring tools such as ebpf_exporter
//! run per event), loaded from raw instructions and attached through a tracefs
//! kprobe event (or as an fentry program) to the same kernel function as one
//! of the agent's programs, so the kernel's BPF statistics give, in the same
//! run and for the same events, what the least a counting program does costs.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use synproxy_user::sources::ebpf::kprobe_events;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
/// tracefs group of the reference's event (not the agent's group, whose unused
/// events an agent removes at start).
const GROUP: &str = "spx_ref";
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed 128-byte buffer, at least as large as every
    // bpf_attr variant used here; the kernel reads and writes within its size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(b)
}

/// Run time and count of a BPF program (`bpf_prog_info.run_time_ns`,
/// `run_cnt`; counted while `kernel.bpf_stats_enabled` is 1).
pub fn prog_run_stats(fd: &OwnedFd) -> Result<(u64, u64)> {
    let mut info = [0u8; 256];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    // struct bpf_prog_info: run_time_ns at 192, run_cnt at 200.
    Ok((get_u64(&info, 192), get_u64(&info, 200)))
}

/// One BPF instruction: opcode, destination and source registers, offset,
/// immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let o = off.to_le_bytes();
    let i = imm.to_le_bytes();
    [code, (src << 4) | dst, o[0], o[1], i[0], i[1], i[2], i[3]]
}

/// The reference program: what a monitoring tool's per-event program does
/// (ebpf_exporter's counters, bcc's `counts.increment(key)`): look up one
/// fixed key in a hash map, add 1 atomically to its value where found, else
/// insert 1.
fn map_increment(map_fd: i32) -> Vec<u8> {
    const ST_W: u8 = 0x62; // *(u32 *)(dst + off) = imm
    const ST_DW: u8 = 0x7a; // *(u64 *)(dst + off) = imm
    const MOV_X: u8 = 0xbf; // dst = src
    const MOV_K: u8 = 0xb7; // dst = imm
    const ADD_K: u8 = 0x07; // dst += imm
    const LD_IMM64: u8 = 0x18; // dst = imm64 (two slots; src 1: a map fd)
    const CALL: u8 = 0x85;
    const JEQ_K: u8 = 0x15; // if dst == imm goto +off
    const XADD_DW: u8 = 0xdb; // lock *(u64 *)(dst + off) += src
    const EXIT: u8 = 0x95;
    const PSEUDO_MAP_FD: u8 = 1;
    const LOOKUP: i32 = 1; // bpf_map_lookup_elem
    const UPDATE: i32 = 2; // bpf_map_update_elem
    const NOEXIST: i32 = 1;
    let load_map = |v: &mut Vec<[u8; 8]>| {
        v.push(insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd));
        v.push(insn(0, 0, 0, 0, 0));
    };
    let mut v = vec![
        insn(ST_W, 10, 0, -4, 0), // key = 0
        insn(MOV_X, 2, 10, 0, 0),
        insn(ADD_K, 2, 0, 0, -4), // r2 = &key
    ];
    load_map(&mut v);
    v.extend([
        insn(CALL, 0, 0, 0, LOOKUP),
        insn(JEQ_K, 0, 0, 4, 0), // not found: to the insert
        insn(MOV_K, 1, 0, 0, 1),
        insn(XADD_DW, 0, 1, 0, 0),
        insn(MOV_K, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
        insn(ST_DW, 10, 0, -16, 1), // value = 1
    ]);
    load_map(&mut v);
    v.extend([
        insn(MOV_X, 2, 10, 0, 0),
        insn(ADD_K, 2, 0, 0, -4),
        insn(MOV_X, 3, 10, 0, 0),
        insn(ADD_K, 3, 0, 0, -16),
        insn(MOV_K, 4, 0, 0, NOEXIST),
        insn(CALL, 0, 0, 0, UPDATE),
        insn(MOV_K, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    v.concat()
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_TYPE_HASH: u32 = 1;

/// The reference program's hash map (u32 key, u64 value) and the program
/// loaded against it.
struct Counter {
    map: OwnedFd,
    prog: OwnedFd,
}

impl Counter {
    /// Creates the map and loads the program as `prog_type` named `name`;
    /// `attach_attrs` sets the attach fields of the load attributes.
    fn load(prog_type: u32, name: &[u8], attach_attrs: impl FnOnce(&mut [u8])) -> Result<Self> {
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_MAP_TYPE_HASH);
        put_u32(&mut attr, 4, 4);
        put_u32(&mut attr, 8, 8);
        put_u32(&mut attr, 12, 16);
        let fd = bpf(BPF_MAP_CREATE, &mut attr).context("creating the reference hash map")?;
        // SAFETY: BPF_MAP_CREATE returned a new descriptor nothing else owns.
        let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let insns = map_increment(map.as_raw_fd());
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, prog_type);
        put_u32(&mut attr, 4, (insns.len() / 8) as u32);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        let len = name.len().min(15);
        attr[48..48 + len].copy_from_slice(&name[..len]);
        attach_attrs(&mut attr);
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        // SAFETY: BPF_PROG_LOAD returned a new descriptor nothing else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { map, prog })
    }

    /// The count under the program's key (0 before its first run).
    fn count(&self) -> Result<u64> {
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, self.map.as_raw_fd() as u32);
        put_u64(&mut attr, 8, &key as *const u32 as u64);
        put_u64(&mut attr, 16, &mut value as *mut u64 as u64);
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(value),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
            Err(e) => Err(e).context("BPF_MAP_LOOKUP_ELEM on the reference map"),
        }
    }

    /// (run time ns, run count, the map's count).
    fn stats(&self) -> Result<RefStats> {
        let (ns, runs) = prog_run_stats(&self.prog)?;
        Ok(RefStats {
            ns,
            runs,
            count: self.count()?,
        })
    }
}

/// A reading of the reference program: its BPF statistics and its count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RefStats {
    pub ns: u64,
    pub runs: u64,
    pub count: u64,
}

pub struct RefKprobe {
    prog: Counter,
    perf: Option<OwnedFd>,
    tracefs: PathBuf,
    event: String,
}

impl RefKprobe {
    /// Loads the reference program and attaches it to `function`'s entry.
    pub fn attach(function: &str) -> Result<Self> {
        // Kernels before 5.11 charge programs to RLIMIT_MEMLOCK against what
        // the user (root, like the agent) has locked already.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: plain syscall with a pointer to a local struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
            bail!(
                "cannot raise RLIMIT_MEMLOCK: {}",
                std::io::Error::last_os_error()
            );
        }
        let prog = Counter::load(BPF_PROG_TYPE_KPROBE, b"spx_ref", |_| {})
            .context("loading the reference kprobe program")?;
        let tracefs = TRACEFS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("kprobe_events").exists())
            .context("no tracefs with kprobe_events")?;
        let event = format!("ref_{}", std::process::id());
        let mut floor = Self {
            prog,
            perf: None,
            tracefs,
            event,
        };
        floor.write_event(&format!("p:{GROUP}/{} {function}", floor.event))?;
        let id_path = floor
            .tracefs
            .join("events")
            .join(GROUP)
            .join(&floor.event)
            .join("id");
        let id: u64 = std::fs::read_to_string(&id_path)
            .with_context(|| format!("reading {}", id_path.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{}: not a number", id_path.display()))?;
        // The agent's own attach: perf_event_open, SET_BPF, ENABLE.
        let perf = kprobe_events::attach_program(id, floor.prog.prog.as_fd())
            .with_context(|| format!("attaching the program to trace event {id}"))?;
        floor.perf = Some(perf);
        Ok(floor)
    }

    fn write_event(&self, line: &str) -> Result<()> {
        let path = self.tracefs.join("kprobe_events");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("writing {line:?} to {}", path.display()))
    }

    pub fn stats(&self) -> Result<RefStats> {
        self.prog.stats()
    }

    pub fn tracefs(&self) -> &Path {
        &self.tracefs
    }
}

impl Drop for RefKprobe {
    fn drop(&mut self) {
        self.perf = None;
        let _ = self.write_event(&format!("-:{GROUP}/{}", self.event));
    }
}

const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;

/// The reference for `--probes fentry`: the same program as an fentry program
/// on a function of a module (loaded against the module's BTF object, like
/// the agent's), for the same events as the agent's fentry programs.
pub struct RefFentry {
    prog: Counter,
    _link: OwnedFd,
}

impl RefFentry {
    pub fn attach(module: &str, function: &str) -> Result<Self> {
        use synproxy_user::sources::ebpf::{btf, kernel_btf};
        let vmlinux =
            std::fs::read("/sys/kernel/btf/vmlinux").context("reading /sys/kernel/btf/vmlinux")?;
        let base = btf::SplitBase {
            strings: btf::string_section(&vmlinux)
                .map_err(|e| anyhow::anyhow!("/sys/kernel/btf/vmlinux: {e}"))?,
            type_count: btf::type_count(&vmlinux)
                .map_err(|e| anyhow::anyhow!("/sys/kernel/btf/vmlinux: {e}"))?,
        };
        let module_btf = kernel_btf::find_module_btf(module)
            .with_context(|| format!("looking for the BTF object of {module}"))?
            .with_context(|| format!("no kernel BTF object named {module}"))?;
        let id = btf::func_ids(&module_btf.data, Some(&base), &[function])
            .map_err(|e| anyhow::anyhow!("BTF of {module}: {e}"))?
            .first()
            .copied()
            .flatten()
            .with_context(|| format!("no function {function} in the BTF of {module}"))?;
        let prog = Counter::load(BPF_PROG_TYPE_TRACING, b"spxf_ref", |attr| {
            put_u32(attr, 68, BPF_TRACE_FENTRY);
            put_u32(attr, 108, id);
            put_u32(attr, 112, module_btf.fd.as_raw_fd() as u32);
        })
        .context("loading the reference fentry program")?;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 8, prog.prog.as_raw_fd() as u32);
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
            .with_context(|| format!("attaching the reference fentry program to {function}"))?;
        // SAFETY: as above (the link's descriptor).
        let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
        Ok(Self { prog, _link: link })
    }

    pub fn stats(&self) -> Result<RefStats> {
        self.prog.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_program_increments_or_inserts() {
        let prog = map_increment(7);
        let insns: Vec<&[u8]> = prog.chunks(8).collect();
        assert_eq!(insns.len(), 22);
        // Both map loads carry the map's descriptor as a pseudo map fd.
        for at in [3, 12] {
            assert_eq!(insns[at][..2], [0x18, 0x11], "insn {at}");
            assert_eq!(insns[at][4..], 7i32.to_le_bytes(), "insn {at}");
        }
        // The lookup's miss jumps over the atomic add to the insert.
        assert_eq!(insns[6][0], 0x15);
        let target = 7 + i16::from_le_bytes([insns[6][2], insns[6][3]]) as usize;
        assert_eq!(insns[target][0], 0x7a);
        assert_eq!(insns[8][..2], [0xdb, 0x10]);
        assert_eq!(insns[19][4..], 2i32.to_le_bytes());
        assert_eq!((insns[10][0], insns[21][0]), (0x95, 0x95));
    }
}
