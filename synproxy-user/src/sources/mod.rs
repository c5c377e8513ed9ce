//! Where readings come from: the kernel's `/proc/net/stat/synproxy`, in the
//! agent's own network namespace or in others, and the eBPF probes on the
//! SYNPROXY paths (per event, per namespace and family).

pub mod btf;
pub mod ebpf;
pub mod ebpf_sources;
pub mod kernel_btf;
pub mod kprobe_events;
pub mod ns_slots;
pub mod proc;
pub mod shared_array;
