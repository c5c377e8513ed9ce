//! Kprobes created through tracefs (`kprobe_events`) and attached to the loaded
//! programs with `perf_event_open` + `PERF_EVENT_IOC_SET_BPF`.
//!
//! Why not aya's `KProbe::attach`: probes made through the kprobe PMU are
//! invisible in `kprobe_profile`, and before Linux 6.7 the kernel reports their
//! misses nowhere. Events made here show `hits` and `nmissed` (kretprobe
//! `maxactive` misses included) in `kprobe_profile` on every kernel, so misses
//! are read, never assumed. Every event is named `spx_<token>_<probe>` in group
//! [`GROUP`], with a token drawn at start (PIDs repeat across PID namespaces and
//! restarts; tokens do not), and removed on detach. Events left by a killed
//! agent are removed at the next start: the kernel refuses to remove an event
//! that is in use (EBUSY), so every event of the group that *can* be removed
//! belongs to no running agent.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const GROUP: &str = "synproxy_agent";

/// kretprobe instances per probe (the kernel's default is max(10, 2 * CPUs)).
pub const MAXACTIVE: u32 = 256;

const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// tracefs with a `kprobe_events` file.
#[derive(Clone, Debug)]
pub struct TraceFs {
    root: PathBuf,
}

/// Hits and misses of one probe, from `kprobe_profile`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub hits: u64,
    pub missed: u64,
}

impl TraceFs {
    pub fn find() -> Option<TraceFs> {
        TRACEFS_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|root| root.join("kprobe_events").exists())
            .map(|root| TraceFs { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write_events(&self, line: &str) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .open(self.root.join("kprobe_events"))?;
        f.write_all(format!("{line}\n").as_bytes())
    }

    /// Creates `p:GROUP/event function` (or `rN:` for a return probe) and
    /// returns its tracepoint id.
    pub fn create(&self, event: &str, function: &str, ret: bool) -> io::Result<u64> {
        let kind = if ret {
            format!("r{MAXACTIVE}")
        } else {
            "p".to_string()
        };
        self.write_events(&format!("{kind}:{GROUP}/{event} {function}"))?;
        let id_path = self.root.join("events").join(GROUP).join(event).join("id");
        let id = fs::read_to_string(&id_path)?;
        id.trim()
            .parse()
            .map_err(|_| io::Error::other(format!("{}: not a number: {id:?}", id_path.display())))
    }

    /// Removes an event; retried briefly while the kernel still holds it.
    pub fn remove(&self, event: &str) -> io::Result<()> {
        let mut last = Ok(());
        for _ in 0..50 {
            last = self.write_events(&format!("-:{GROUP}/{event}"));
            match &last {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => return last,
            }
        }
        last
    }

    /// Events of `GROUP` in `kprobe_events`.
    pub fn group_events(&self) -> io::Result<Vec<String>> {
        let text = fs::read_to_string(self.root.join("kprobe_events"))?;
        Ok(parse_kprobe_events(&text))
    }

    /// Removes the events of `GROUP` no running agent uses (one attempt each:
    /// an event in use answers EBUSY and stays).
    pub fn remove_unused(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for event in self.group_events().unwrap_or_default() {
            if self.write_events(&format!("-:{GROUP}/{event}")).is_ok() {
                removed.push(event);
            }
        }
        removed
    }

    /// `kprobe_profile`: event name -> hits, nmissed.
    pub fn profile(&self) -> io::Result<HashMap<String, ProbeStats>> {
        let text = fs::read_to_string(self.root.join("kprobe_profile"))?;
        Ok(parse_kprobe_profile(&text))
    }
}

/// A token for this agent's event names: 8 hex digits from the kernel's
/// random source (the clock and PID as a fallback).
pub fn new_token() -> String {
    let mut bytes = [0u8; 4];
    // SAFETY: the pointer and length describe `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let value = if n == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        nanos ^ std::process::id().rotate_left(16)
    };
    format!("{value:08x}")
}

/// `spx_<token>_<probe>`
pub fn event_name(token: &str, probe: &str) -> String {
    format!("spx_{token}_{probe}")
}

/// `p:synproxy_agent/spx_1a2b3c4d_synack4 synproxy_send_client_synack` -> `spx_1a2b3c4d_synack4`
pub fn parse_kprobe_events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let head = line.split_whitespace().next()?;
            let (_, name) = head.split_once(':')?;
            let (group, event) = name.split_once('/')?;
            (group == GROUP).then(|| event.to_string())
        })
        .collect()
}

/// `  <event>  <hits>  <nmissed>` per line.
pub fn parse_kprobe_profile(text: &str) -> HashMap<String, ProbeStats> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next()?;
            let hits = parts.next()?.parse().ok()?;
            let missed = parts.next()?.parse().ok()?;
            Some((name.to_string(), ProbeStats { hits, missed }))
        })
        .collect()
}

/// The first 64 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 8, __u32)`
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `_IO('$', 0)`
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

/// Opens the tracepoint `id` as a perf event and runs `prog` on every hit.
pub fn attach_program(id: u64, prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        wakeup_events: 1,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid perf_event_attr (VER0 size) that outlives the call;
    // pid -1 / cpu 0 is how trace events are opened for BPF (the program runs on
    // every CPU).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: both descriptors are open for the duration of the calls.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_profile() {
        let events = "p:kprobes/other do_sys_open\np:synproxy_agent/spx_0000002a_synack4 synproxy_send_client_synack\nr256:synproxy_agent/spx_0000002a_ack4_ret synproxy_recv_client_ack\n";
        assert_eq!(
            parse_kprobe_events(events),
            vec![
                "spx_0000002a_synack4".to_string(),
                "spx_0000002a_ack4_ret".to_string()
            ]
        );
        assert_eq!(event_name("0000002a", "synack4"), "spx_0000002a_synack4");
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
        let profile = "  spx42_synack4                                             20000               0\n  spx42_ack4_ret    5000 3\n";
        let p = parse_kprobe_profile(profile);
        assert_eq!(
            p["spx42_synack4"],
            ProbeStats {
                hits: 20000,
                missed: 0
            }
        );
        assert_eq!(
            p["spx42_ack4_ret"],
            ProbeStats {
                hits: 5000,
                missed: 3
            }
        );
    }

    #[test]
    fn perf_attr_is_ver0_sized() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 64);
    }
}
