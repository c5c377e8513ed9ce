//! Capabilities of a running agent, and starting one as an unprivileged user.
//!
//! - [`process_caps`]: the capability sets and `no_new_privs` of every thread
//!   of a process, from `/proc/PID/task/TID/status`.
//! - synproxy-scenario's `--caps-exec CAPS PROGRAM ARGS...` mode
//!   ([`helper_main`]): what `setpriv --reuid 65534 --regid 65534
//!   --clear-groups --inh-caps/--ambient-caps/--bounding-set -all,+CAPS` does,
//!   for the VM guest, which has no setpriv: drops to uid/gid 65534 keeping
//!   CAPS (and only them) as ambient capabilities and bounding set, then execs
//!   PROGRAM.

use anyhow::{bail, Context, Result};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

/// First argument of synproxy-scenario that selects the helper mode.
pub const HELPER_FLAG: &str = "--caps-exec";
/// The user and group the helper runs PROGRAM as (`nobody`/`nogroup`).
pub const NOBODY: u32 = 65534;

pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

const NAMES: [(u32, &str); 8] = [
    (CAP_DAC_OVERRIDE, "dac_override"),
    (CAP_NET_BIND_SERVICE, "net_bind_service"),
    (CAP_NET_ADMIN, "net_admin"),
    (CAP_SYS_PTRACE, "sys_ptrace"),
    (CAP_SYS_ADMIN, "sys_admin"),
    (CAP_SYS_RESOURCE, "sys_resource"),
    (CAP_PERFMON, "perfmon"),
    (CAP_BPF, "bpf"),
];

/// Bit mask of `caps` (the format of `CapEff:` in /proc/PID/status).
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// `bpf,perfmon` style names (setpriv's, without `cap_`) of `mask`; bits
/// without a name here as their number.
pub fn names(mask: u64) -> String {
    let parts: Vec<String> = (0..64u32)
        .filter(|c| mask & (1 << c) != 0)
        .map(|c| {
            NAMES
                .iter()
                .find(|(n, _)| *n == c)
                .map_or_else(|| format!("cap{c}"), |(_, name)| name.to_string())
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

/// setpriv's capability list: `-all,+bpf,+perfmon`.
pub fn setpriv_list(caps: &[u32]) -> String {
    let mut list = "-all".to_string();
    for c in caps {
        list.push_str(",+");
        list.push_str(&names(mask(&[*c])));
    }
    list
}

/// `CAP_SYS_ADMIN`, `cap_sys_admin` or `sys_admin`: its number (the names above).
pub fn cap_by_name(name: &str) -> Result<u32> {
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("cap_").unwrap_or(&name);
    NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(c, _)| *c)
        .with_context(|| format!("unknown capability {name:?}"))
}

/// The capability names (`CAP_SYS_ADMIN`, ...) of the documented table's row
/// (docs/operations.md) for `feature` (its first cell); a row of `none` is empty.
pub fn readme_row(feature: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let readme =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("docs/operations.md: {e}"));
    let row = readme
        .lines()
        .find(|l| l.split('|').nth(1).map(str::trim) == Some(feature))
        .unwrap_or_else(|| panic!("no capability row for {feature} in docs/operations.md"));
    let caps = row.split('|').nth(2).unwrap_or_default().replace('`', "");
    caps.split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty() && c != "none")
        .collect()
}

/// The capability lines of one thread's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl ThreadCaps {
    pub fn parse(status: &str) -> Result<ThreadCaps> {
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .with_context(|| format!("no {key} line in {status:?}"))
        };
        let set = |key: &str| -> Result<u64> {
            let v = field(key)?;
            u64::from_str_radix(v, 16).with_context(|| format!("{key} {v:?}"))
        };
        Ok(ThreadCaps {
            effective: set("CapEff:")?,
            permitted: set("CapPrm:")?,
            inheritable: set("CapInh:")?,
            bounding: set("CapBnd:")?,
            ambient: set("CapAmb:")?,
            no_new_privs: field("NoNewPrivs:")? == "1",
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "eff={} prm={} inh={} bnd={} amb={} nnp={}",
            names(self.effective),
            names(self.permitted),
            names(self.inheritable),
            if self.bounding.count_ones() > 20 {
                format!("{:#x}", self.bounding)
            } else {
                names(self.bounding)
            },
            names(self.ambient),
            u8::from(self.no_new_privs)
        )
    }
}

/// Every thread of `pid`: (thread name, its sets).
pub fn process_caps(pid: u32) -> Result<Vec<(String, ThreadCaps)>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read_dir {dir}"))? {
        let path = entry?.path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue; // the thread exited
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or_default()
            .trim()
            .to_string();
        out.push((name, ThreadCaps::parse(&status)?));
    }
    if out.is_empty() {
        bail!("{dir}: no threads (process exited?)");
    }
    Ok(out)
}

/// What the capability table (docs/operations.md) says a thread of the agent keeps after start-up:
/// effective = permitted = `kept`, inheritable and ambient empty,
/// no_new_privs, bounding `bounding`. Returns a description of every thread
/// that differs.
pub fn check_threads(threads: &[(String, ThreadCaps)], kept: u64, bounding: u64) -> Vec<String> {
    threads
        .iter()
        .filter(|(_, t)| {
            t.effective != kept
                || t.permitted != kept
                || t.inheritable != 0
                || t.ambient != 0
                || !t.no_new_privs
                || t.bounding != bounding
        })
        .map(|(name, t)| {
            format!(
                "thread {name}: {} (want eff=prm={} bnd={} inh=amb=none nnp=1)",
                t.describe(),
                names(kept),
                names(bounding)
            )
        })
        .collect()
}

// --- the --caps-exec helper ------------------------------------------------

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

/// `--caps-exec CAPS PROGRAM ARGS...`: CAPS is a comma-separated list
/// (`bpf,perfmon,dac_override`, may be empty). Must run as root before the
/// process starts any thread (first thing in main). Returns only on error.
pub fn helper_main(args: &[OsString]) -> Result<i32> {
    let [caps, program, ..] = args else {
        bail!("usage: {HELPER_FLAG} CAP,CAP,... PROGRAM [ARGS...]");
    };
    let caps: Vec<u32> = caps
        .to_string_lossy()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(cap_by_name)
        .collect::<Result<_>>()?;
    let keep = mask(&caps);
    let argv: Vec<CString> = args[1..]
        .iter()
        .map(|a| CString::new(a.as_bytes()).context("argument contains a NUL byte"))
        .collect::<Result<_>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let program = CString::new(program.as_bytes()).context("program contains a NUL byte")?;

    // Bounding set: only CAPS (needs CAP_SETPCAP: root).
    for cap in 0..64u32 {
        // SAFETY: reads this thread's bounding set; EINVAL past the last capability.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) };
        if present < 0 {
            break;
        }
        if present == 1 && keep & (1 << cap) == 0 {
            // SAFETY: drops one capability from this thread's bounding set.
            check(
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) },
                "prctl(PR_CAPBSET_DROP) (needs root)",
            )?;
        }
    }
    // Keep the permitted set across the uid change.
    // SAFETY: sets a flag of this thread's securebits.
    check(
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong) },
        "prctl(PR_SET_KEEPCAPS)",
    )?;
    // SAFETY: plain syscalls on this (single-threaded) process's credentials.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), "setgroups([])")?;
        check(libc::setresgid(NOBODY, NOBODY, NOBODY), "setresgid(65534)")?;
        check(libc::setresuid(NOBODY, NOBODY, NOBODY), "setresuid(65534)")?;
    }
    // After setuid the effective set is empty: permitted = effective =
    // inheritable = CAPS (ambient capabilities must be permitted and inheritable).
    synproxy_user::privileges::capset(keep, keep, keep)
        .map_err(std::io::Error::from_raw_os_error)
        .context("capset")?;
    for &cap in &caps {
        // SAFETY: raises one ambient capability (permitted and inheritable above).
        check(
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            },
            "prctl(PR_CAP_AMBIENT_RAISE)",
        )?;
    }
    // SAFETY: valid NUL-terminated program and NULL-terminated argv that
    // outlive the call; returns only on failure.
    unsafe { libc::execv(program.as_ptr(), argv_ptrs.as_ptr()) };
    Err(std::io::Error::last_os_error()).with_context(|| format!("execv {program:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_status() {
        assert_eq!(
            setpriv_list(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]),
            "-all,+sys_admin,+sys_ptrace"
        );
        assert_eq!(names(mask(&[CAP_BPF, CAP_PERFMON])), "perfmon,bpf");
        assert_eq!(cap_by_name("CAP_BPF").ok(), Some(CAP_BPF));
        let status = "Name:\ta\nCapInh:\t0000000000000000\nCapPrm:\t0000000000280000\nCapEff:\t0000000000280000\nCapBnd:\t0000000000280000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let t = ThreadCaps::parse(status).expect("parses");
        let kept = mask(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]);
        assert_eq!(t.effective, kept);
        assert!(check_threads(&[("a".into(), t)], kept, kept).is_empty());
        assert_eq!(check_threads(&[("a".into(), t)], 0, kept).len(), 1);
    }
}
