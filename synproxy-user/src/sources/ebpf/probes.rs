//! The probe catalogue: which programs attach to which SYNPROXY functions,
//! as kprobes or as fentry/fexit, and which of them count events.

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

/// The probe set (docs/ebpf.md, "How the events are counted"). Entry probes that stash state for a
/// return probe come before it.
pub const PROBES: [ProbeSpec; 7] = [
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
    probe("spx_seqadj", "nf_ct_seqadj_init", false, "seqadj"),
];

/// The programs that count events (names without `spx_`); the others only
/// stash state for them: a skipped stash program loses nothing by itself, and
/// what it can cost shows as `unmatched_returns`.
pub(super) const COUNTING_PROGRAMS: [&str; 4] = ["synack4", "synack6", "ack_ret", "seqadj"];

/// Which kind of BPF program counts the events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeType {
    /// kprobes/kretprobes created through tracefs (any kernel with kprobes).
    #[default]
    Kprobe,
    /// fentry/fexit programs (BPF trampolines): cheaper per event; on module
    /// functions they need module BTF (Linux 5.11+), and hold the module loaded.
    Fentry,
}

impl ProbeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeType::Kprobe => "kprobe",
            ProbeType::Fentry => "fentry",
        }
    }
}

/// One fentry/fexit program: its name, the kernel function, whether it runs
/// at the function's exit, and its short name (the program name without
/// `spxf_`, used in the reported fields).
#[derive(Clone, Copy, Debug)]
pub struct FentrySpec {
    pub program: &'static str,
    pub function: &'static str,
    pub exit: bool,
    pub short: &'static str,
}

const fn fentry(
    program: &'static str,
    function: &'static str,
    exit: bool,
    short: &'static str,
) -> FentrySpec {
    FentrySpec {
        program,
        function,
        exit,
        short,
    }
}

/// The fentry/fexit set: the same functions as [`PROBES`]; an fexit program
/// sees arguments and return value, so each cookie check has one program.
pub const FENTRY_PROBES: [FentrySpec; 5] = [
    fentry(
        "spxf_synack4",
        "synproxy_send_client_synack",
        false,
        "synack4",
    ),
    fentry(
        "spxf_synack6",
        "synproxy_send_client_synack_ipv6",
        false,
        "synack6",
    ),
    fentry("spxf_ack4", "synproxy_recv_client_ack", true, "ack4"),
    fentry("spxf_ack6", "synproxy_recv_client_ack_ipv6", true, "ack6"),
    fentry("spxf_seqadj", "nf_ct_seqadj_init", false, "seqadj"),
];

/// The fentry programs that count events (see [`COUNTING_PROGRAMS`]).
pub(super) const FENTRY_COUNTING_PROGRAMS: [&str; 5] =
    ["synack4", "synack6", "ack4", "ack6", "seqadj"];

/// Modules whose (re)load invalidates the probes.
pub(super) const MODULES: [&str; 2] = ["nf_synproxy_core", "nf_conntrack"];

#[cfg(test)]
mod tests {
    use super::*;

    /// Both program sets cover the same functions; the fentry short names are
    /// the kprobe programs' (ack4/ack6 stand for the entry + return pair).
    #[test]
    fn fentry_set_matches_the_kprobe_set() {
        let mut kprobe: Vec<&str> = PROBES.iter().map(|p| p.function).collect();
        kprobe.dedup();
        let fentry: Vec<&str> = FENTRY_PROBES.iter().map(|p| p.function).collect();
        let mut k = kprobe.clone();
        k.sort_unstable();
        k.dedup();
        let mut f = fentry.clone();
        f.sort_unstable();
        assert_eq!(k, f);
        for name in FENTRY_COUNTING_PROGRAMS {
            assert!(FENTRY_PROBES.iter().any(|p| p.short == name), "{name}");
        }
        assert!(FENTRY_PROBES.iter().all(|p| p.program.len() <= 15));
    }
}
