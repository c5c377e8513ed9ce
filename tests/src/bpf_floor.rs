//! The floor of the eBPF cost check: an empty kprobe program (`r0 = 0; exit`)
//! attached through a tracefs kprobe event to the same kernel function as one
//! of the agent's programs, so the kernel's BPF statistics give, in the same
//! run and for the same events, what a kprobe program that does nothing costs.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use synproxy_user::sources::ebpf::kprobe_events;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
/// tracefs group of the floor's event (not the agent's group, whose unused
/// events an agent removes at start).
const GROUP: &str = "spx_floor";
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

/// Loads `r0 = 0; exit` as a program of `prog_type` named `name`;
/// `attach_attrs` sets the attach fields of the load attributes.
fn load_empty(
    prog_type: u32,
    name: &[u8],
    attach_attrs: impl FnOnce(&mut [u8]),
) -> Result<OwnedFd> {
    // mov r0, 0 ; exit
    let insns: [u8; 16] = [
        0xb7, 0, 0, 0, 0, 0, 0, 0, //
        0x95, 0, 0, 0, 0, 0, 0, 0,
    ];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, 2);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    let len = name.len().min(15);
    attr[48..48 + len].copy_from_slice(&name[..len]);
    attach_attrs(&mut attr);
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub struct EmptyKprobe {
    prog: OwnedFd,
    perf: Option<OwnedFd>,
    tracefs: PathBuf,
    event: String,
}

impl EmptyKprobe {
    /// Loads the empty program and attaches it to `function`'s entry.
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
        let prog = load_empty(BPF_PROG_TYPE_KPROBE, b"spx_floor", |_| {})
            .context("loading the empty kprobe program")?;
        let tracefs = TRACEFS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("kprobe_events").exists())
            .context("no tracefs with kprobe_events")?;
        let event = format!("floor_{}", std::process::id());
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
        let perf = kprobe_events::attach_program(id, floor.prog.as_fd())
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

    /// (run time ns, run count) of the empty program.
    pub fn stats(&self) -> Result<(u64, u64)> {
        prog_run_stats(&self.prog)
    }

    pub fn tracefs(&self) -> &Path {
        &self.tracefs
    }
}

impl Drop for EmptyKprobe {
    fn drop(&mut self) {
        self.perf = None;
        let _ = self.write_event(&format!("-:{GROUP}/{}", self.event));
    }
}

const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;

/// The floor for `--probes fentry`: an empty fentry program on a function of
/// a module (loaded against the module's BTF object, like the agent's), so
/// its BPF statistics give what entering a program through a trampoline and
/// doing nothing costs, for the same events as the agent's fentry programs.
pub struct EmptyFentry {
    prog: OwnedFd,
    _link: OwnedFd,
}

impl EmptyFentry {
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
        let prog = load_empty(BPF_PROG_TYPE_TRACING, b"spxf_floor", |attr| {
            put_u32(attr, 68, BPF_TRACE_FENTRY);
            put_u32(attr, 108, id);
            put_u32(attr, 112, module_btf.fd.as_raw_fd() as u32);
        })
        .context("loading the empty fentry program")?;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 8, prog.as_raw_fd() as u32);
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
            .with_context(|| format!("attaching the empty fentry program to {function}"))?;
        // SAFETY: as above (the link's descriptor).
        let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
        Ok(Self { prog, _link: link })
    }

    /// (run time ns, run count) of the empty program.
    pub fn stats(&self) -> Result<(u64, u64)> {
        prog_run_stats(&self.prog)
    }
}
