//! Why eBPF cannot be used, one variant per cause (docs/ebpf.md, "When eBPF
//! cannot be used"); each is shown as the one line the agent logs before it
//! reports /proc only.

use super::btf::{BtfError, VMLINUX_BTF};
use super::probes::KPROBE_PMU;

/// What loading eBPF needs; it starts every capability error.
pub(super) const CAPS: &str = "missing capabilities (loading eBPF needs root, or CAP_BPF + CAP_PERFMON, and CAP_DAC_OVERRIDE for tracefs)";

/// Why the eBPF source could not be opened or its kprobe programs loaded.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("this synproxy-agent was built without its eBPF programs (AYA_BUILD_SKIP)")]
    NotBuilt,
    #[error("no kernel BTF ({VMLINUX_BTF} missing; the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    NoBtf,
    #[error("{VMLINUX_BTF}: {0}")]
    BtfUnreadable(std::io::Error),
    #[error("{VMLINUX_BTF}: {0}")]
    BtfInvalid(BtfError),
    #[error("kernel BTF lacks a needed type: {0}")]
    BtfLacksType(BtfError),
    #[error("kprobes not supported by this kernel ({KPROBE_PMU} missing)")]
    NoKprobes,
    #[error("tracefs is not mounted (no kprobe_events in /sys/kernel/tracing or /sys/kernel/debug/tracing; mount -t tracefs nodev /sys/kernel/tracing)")]
    NoTracefs,
    /// What was refused, with the kernel's answer.
    #[error("{CAPS}: {0}")]
    MissingCapabilities(String),
    /// `detail` is the verifier log's last line (or the load error where
    /// there is no log); `log` the whole log.
    #[error("the kernel verifier rejected {program}: {detail}")]
    VerifierRejected {
        program: &'static str,
        detail: String,
        log: String,
    },
    #[error("cannot load the eBPF object: {0}")]
    ObjectLoad(String),
    #[error("program {0} missing from the object")]
    ProgramMissing(&'static str),
    #[error("program {program}: {detail}")]
    WrongProgram {
        program: &'static str,
        detail: String,
    },
    #[error("map {0} is not an array")]
    MapNotArray(&'static str),
    #[error("map {0} missing from the object")]
    MapMissing(&'static str),
    #[error("cannot map {name} into memory: {detail}")]
    MapMemory { name: &'static str, detail: String },
    #[error("stopped during start-up")]
    Stopped,
    /// Reasons to use kprobes instead of `--probes fentry`.
    #[error("fentry on module functions needs Linux 5.11 or later (this is {major}.{minor})")]
    FentryNeedsNewerKernel { major: u32, minor: u32 },
    #[error("no BTF for module {0} (/sys/kernel/btf/{0} missing: the kernel was built without CONFIG_DEBUG_INFO_BTF_MODULES)")]
    NoBtfForModule(&'static str),
    #[error("no module BTF in /sys/kernel/btf (the kernel was built without CONFIG_DEBUG_INFO_BTF_MODULES)")]
    NoModuleBtf,
}

/// The first OS error code in an error's chain.
pub(super) fn first_errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
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

/// Whether the kernel refused for want of privileges (EPERM, EACCES).
pub(super) fn is_permission(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(first_errno(err), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Why the kernel refused to load a program: capabilities, or the
/// verifier's last line.
pub(super) fn load_error(program: &'static str, e: aya::programs::ProgramError) -> EbpfError {
    if is_permission(&e) {
        return EbpfError::MissingCapabilities(e.to_string());
    }
    match &e {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            let log = verifier_log.to_string();
            let detail = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .to_string();
            EbpfError::VerifierRejected {
                program,
                detail,
                log,
            }
        }
        other => EbpfError::VerifierRejected {
            program,
            detail: other.to_string(),
            log: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines docs/ebpf.md shows and the VM suite matches.
    #[test]
    fn messages_are_the_documented_lines() {
        assert_eq!(
            EbpfError::NoKprobes.to_string(),
            "kprobes not supported by this kernel (/sys/bus/event_source/devices/kprobe missing)"
        );
        assert_eq!(
            EbpfError::NoBtf.to_string(),
            "no kernel BTF (/sys/kernel/btf/vmlinux missing; the kernel needs CONFIG_DEBUG_INFO_BTF)"
        );
        assert_eq!(
            EbpfError::MissingCapabilities("cannot read /sys/kernel/btf/vmlinux".into()).to_string(),
            "missing capabilities (loading eBPF needs root, or CAP_BPF + CAP_PERFMON, and CAP_DAC_OVERRIDE for tracefs): cannot read /sys/kernel/btf/vmlinux"
        );
        assert_eq!(
            EbpfError::VerifierRejected {
                program: "spx_ack4",
                detail: "R1 invalid mem access 'scalar'".into(),
                log: "0: (79) r1 = *(u64 *)(r1 +0)\nR1 invalid mem access 'scalar'\n".into(),
            }
            .to_string(),
            "the kernel verifier rejected spx_ack4: R1 invalid mem access 'scalar'"
        );
        assert_eq!(
            EbpfError::NotBuilt.to_string(),
            "this synproxy-agent was built without its eBPF programs (AYA_BUILD_SKIP)"
        );
        assert_eq!(
            EbpfError::NoBtfForModule("nf_synproxy_core").to_string(),
            "no BTF for module nf_synproxy_core (/sys/kernel/btf/nf_synproxy_core missing: the kernel was built without CONFIG_DEBUG_INFO_BTF_MODULES)"
        );
        assert_eq!(
            EbpfError::FentryNeedsNewerKernel {
                major: 5,
                minor: 10
            }
            .to_string(),
            "fentry on module functions needs Linux 5.11 or later (this is 5.10)"
        );
        assert!(EbpfError::NoTracefs
            .to_string()
            .starts_with("tracefs is not mounted ("));
    }
}
