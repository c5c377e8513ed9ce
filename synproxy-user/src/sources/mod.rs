//! Where readings come from. Today: the kernel's `/proc/net/stat/synproxy`,
//! in the agent's own network namespace or in others. The eBPF source slots in
//! next to it.

pub mod netns;
pub mod proc_file;
pub mod proc_stat;
