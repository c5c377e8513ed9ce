//! Kernel-side programs (kprobes on the SYNPROXY paths). Filled in by the eBPF
//! issue; until then the agent runs proc-only.
#![no_std]

pub use synproxy_common::COUNTER_COUNT;
