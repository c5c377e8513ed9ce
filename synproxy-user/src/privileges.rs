//! Least privilege. Once start-up is over (outputs bound, eBPF loaded and
//! attached or found unusable), the agent keeps in its effective, permitted
//! and bounding sets only the capabilities its features still need, clears
//! the inheritable and ambient sets, and sets `no_new_privs`. The table is
//! [`required`] (and the "Capabilities" section of docs/operations.md, checked against it
//! by a unit test).
//!
//! Capabilities belong to each thread, not to the process: `capset(2)`
//! changes only the calling thread. So the drop is applied on the calling
//! thread, then on every other thread of the process by a real-time signal
//! whose handler makes the same system calls on its own thread (what libcap's
//! `psx` does), pass after pass until no thread is left that has not applied
//! it; threads created afterwards inherit the reduced sets. Every thread's
//! `/proc/self/task/TID/status` is checked at the end.

use log::{debug, warn};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Capability numbers (linux/capability.h).
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Names as in capabilities(7), for the log and the tests.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A set of capabilities as a bit mask (bit N = capability N), the format of
/// `CapEff:` and friends in `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);

    pub fn of(caps: &[u32]) -> CapSet {
        CapSet(caps.iter().fold(0, |m, c| m | (1u64 << c)))
    }

    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }

    pub fn intersection(self, other: CapSet) -> CapSet {
        CapSet(self.0 & other.0)
    }

    pub fn minus(self, other: CapSet) -> CapSet {
        CapSet(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `CAP_BPF, CAP_PERFMON` (ascending), or `none`.
    pub fn names(self) -> String {
        let mut out = String::new();
        for cap in (0..64).filter(|&c| self.contains(c)) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            match NAMES.get(cap as usize) {
                Some(name) => out.push_str(name),
                None => {
                    let _ = write!(out, "CAP_{cap}");
                }
            }
        }
        if out.is_empty() {
            out.push_str("none");
        }
        out
    }

    /// Parses `CAP_BPF,cap_perfmon,...` (names with or without `CAP_`, any case).
    pub fn parse(list: &str) -> Result<CapSet, String> {
        let mut set = CapSet::EMPTY;
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let upper = item.to_ascii_uppercase();
            let name = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let cap = NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| format!("unknown capability {item:?}"))?;
            set = set.union(CapSet(1 << cap));
        }
        Ok(set)
    }
}

/// Which namespaces the agent reads (the part of `--netns` that matters here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsNeed {
    /// Its own namespace: plain file reads.
    Own,
    /// `--netns NAME`: setns(2) into bound namespace files.
    Named,
    /// `--netns all`: setns(2), and `/proc/PID/ns/net` of every process.
    All,
}

/// Which probes the agent may (re)attach at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EbpfNeed {
    /// kprobes through tracefs.
    Kprobe,
    /// fentry/fexit programs, loaded against the modules' BTF at each attach.
    Fentry,
    /// `--probes fentry` before its first attach: it may still fall back to
    /// kprobes (a module without BTF), so both rows' capabilities are kept.
    FentryOrKprobe,
}

/// The features that decide what the agent keeps after start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// The eBPF probes are loaded and will be (re)attached at run time.
    pub ebpf: Option<EbpfNeed>,
    pub netns: NetnsNeed,
}

/// What the running kernel and user change in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// The kernel knows CAP_BPF and CAP_PERFMON (Linux 5.8+); before, both
    /// are part of CAP_SYS_ADMIN.
    pub bpf_caps: bool,
    /// The agent's filesystem uid is 0: it owns the root-only tracefs files.
    pub root_fsuid: bool,
}

impl Host {
    pub fn current() -> Host {
        // SAFETY: PR_CAPBSET_READ only reads the calling thread's bounding set;
        // EINVAL means the kernel does not know the capability.
        let bpf_known =
            unsafe { libc::prctl(libc::PR_CAPBSET_READ, CAP_BPF as libc::c_ulong) } >= 0;
        // SAFETY: geteuid has no preconditions and cannot fail. (The agent
        // never changes its filesystem uid, which follows the effective one.)
        let euid = unsafe { libc::geteuid() };
        Host {
            bpf_caps: bpf_known,
            root_fsuid: euid == 0,
        }
    }
}

/// The capabilities the agent keeps after start-up (the table in docs/operations.md).
pub fn required(features: Features, host: Host) -> CapSet {
    let mut caps = Vec::new();
    if let Some(need) = features.ebpf {
        // Per round, bpf(BPF_OBJ_GET_INFO_BY_FD) for the programs' recursion
        // misses and run time (kernels before 5.19 refuse every bpf() command
        // without it while kernel.unprivileged_bpf_disabled is set); at each
        // (re)attach, perf_event_open of the kprobe events on every CPU.
        if host.bpf_caps {
            caps.extend([CAP_BPF, CAP_PERFMON]);
        } else {
            caps.push(CAP_SYS_ADMIN);
        }
        // Creating and removing kprobe events, their ids and kprobe_profile:
        // tracefs files are root's (0640/0440 under a 0700 or 0750 root).
        if need != EbpfNeed::Fentry && !host.root_fsuid {
            caps.push(CAP_DAC_OVERRIDE);
        }
        // fentry on module functions: at each (re)load, the module's BTF
        // object is found by id (BPF_BTF_GET_NEXT_ID, BPF_BTF_GET_FD_BY_ID),
        // which the kernel allows only with CAP_SYS_ADMIN.
        if need != EbpfNeed::Kprobe {
            caps.push(CAP_SYS_ADMIN);
        }
    }
    match features.netns {
        NetnsNeed::Own => {}
        NetnsNeed::Named => caps.push(CAP_SYS_ADMIN),
        NetnsNeed::All => caps.extend([CAP_SYS_ADMIN, CAP_SYS_PTRACE]),
    }
    CapSet::of(&caps)
}

/// What [`restrict`] did.
#[derive(Debug)]
pub struct Outcome {
    pub kept: CapSet,
    /// Needed but not held when the agent started.
    pub missing: CapSet,
    /// The bounding set could be reduced (needs CAP_SETPCAP, i.e. root).
    pub bounding_reduced: bool,
    pub threads: usize,
}

mod apply;
pub use apply::{
    capset, effective_has, restrict, restrict_and_log, DropFailed, ThreadStatus, ALLOW_FLAG,
};

#[cfg(test)]
mod tests {
    use super::*;

    const MODERN: Host = Host {
        bpf_caps: true,
        root_fsuid: false,
    };

    fn req(ebpf: bool, netns: NetnsNeed, host: Host) -> CapSet {
        required(
            Features {
                ebpf: ebpf.then_some(EbpfNeed::Kprobe),
                netns,
            },
            host,
        )
    }

    fn req_fentry(need: EbpfNeed, netns: NetnsNeed, host: Host) -> CapSet {
        required(
            Features {
                ebpf: Some(need),
                netns,
            },
            host,
        )
    }

    #[test]
    fn table() {
        assert_eq!(req(false, NetnsNeed::Own, MODERN), CapSet::EMPTY);
        assert_eq!(
            req(false, NetnsNeed::Named, MODERN),
            CapSet::of(&[CAP_SYS_ADMIN])
        );
        assert_eq!(
            req(false, NetnsNeed::All, MODERN),
            CapSet::of(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE])
        );
        assert_eq!(
            req(true, NetnsNeed::Own, MODERN),
            CapSet::of(&[CAP_BPF, CAP_PERFMON, CAP_DAC_OVERRIDE])
        );
        let root = Host {
            root_fsuid: true,
            ..MODERN
        };
        assert_eq!(
            req(true, NetnsNeed::Own, root),
            CapSet::of(&[CAP_BPF, CAP_PERFMON])
        );
        let old = Host {
            bpf_caps: false,
            root_fsuid: false,
        };
        assert_eq!(
            req(true, NetnsNeed::Named, old),
            CapSet::of(&[CAP_SYS_ADMIN, CAP_DAC_OVERRIDE])
        );
        assert_eq!(
            req_fentry(EbpfNeed::Fentry, NetnsNeed::Own, MODERN),
            CapSet::of(&[CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN])
        );
        assert_eq!(
            req_fentry(EbpfNeed::FentryOrKprobe, NetnsNeed::Own, MODERN),
            CapSet::of(&[CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_DAC_OVERRIDE])
        );
        assert_eq!(
            req_fentry(EbpfNeed::Fentry, NetnsNeed::All, root),
            CapSet::of(&[CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE])
        );
    }

    #[test]
    fn names_and_parse() {
        let set = CapSet::of(&[CAP_BPF, CAP_SYS_ADMIN, CAP_PERFMON]);
        assert_eq!(set.names(), "CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF");
        assert_eq!(CapSet::parse("bpf, CAP_perfmon,sys_admin"), Ok(set));
        assert_eq!(CapSet::EMPTY.names(), "none");
        assert!(CapSet::parse("cap_nope").is_err());
        assert_eq!(CapSet::parse(""), Ok(CapSet::EMPTY));
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000200000\nCapEff:\t0000000000200000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let s = ThreadStatus::parse(status).expect("parses");
        assert_eq!(s.effective, CapSet::of(&[CAP_SYS_ADMIN]));
        assert_eq!(s.bounding, CapSet(0x1ff_ffff_ffff));
        assert!(s.no_new_privs);
    }

    /// The table of docs/operations.md lists, per row, the capabilities
    /// [`required`] gives.
    #[test]
    fn documented_table_matches() {
        let readme = include_str!("../../docs/operations.md");
        let rows: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| features (after start-up)"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert!(
            rows.len() >= 9,
            "capability table not found in docs/operations.md"
        );
        let expected: [(&str, CapSet); 9] = [
            ("`--no-ebpf`", CapSet::EMPTY),
            (
                "`--no-ebpf --netns NAME`",
                req(false, NetnsNeed::Named, MODERN),
            ),
            (
                "`--no-ebpf --netns all`",
                req(false, NetnsNeed::All, MODERN),
            ),
            ("eBPF", req(true, NetnsNeed::Own, MODERN)),
            ("eBPF `--netns NAME`", req(true, NetnsNeed::Named, MODERN)),
            ("eBPF `--netns all`", req(true, NetnsNeed::All, MODERN)),
            (
                "eBPF `--probes fentry`",
                req_fentry(EbpfNeed::Fentry, NetnsNeed::Own, MODERN),
            ),
            (
                "eBPF `--probes fentry --netns all`",
                req_fentry(EbpfNeed::Fentry, NetnsNeed::All, MODERN),
            ),
            (
                "eBPF `--probes fentry`, before the first attach",
                req_fentry(EbpfNeed::FentryOrKprobe, NetnsNeed::Own, MODERN),
            ),
        ];
        for (feature, caps) in expected {
            let row = rows
                .iter()
                .find(|r| r.split('|').nth(1).map(str::trim) == Some(feature))
                .unwrap_or_else(|| panic!("no docs/operations.md row for {feature}"));
            let listed = row.split('|').nth(2).map(str::trim).unwrap_or_default();
            let listed = if listed == "none" {
                CapSet::EMPTY
            } else {
                CapSet::parse(&listed.replace('`', "")).expect("capability names")
            };
            assert_eq!(listed, caps, "docs/operations.md row {row}");
        }
    }
}
