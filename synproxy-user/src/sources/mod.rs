//! Where readings come from: the kernel's `/proc/net/stat/synproxy`, in the
//! agent's own network namespace or in others ([`proc`]), and the eBPF probes
//! on the SYNPROXY paths, per event, per namespace and family ([`ebpf`]).

pub mod ebpf;
pub mod proc;
