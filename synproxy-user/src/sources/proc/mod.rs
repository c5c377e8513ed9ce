//! The kernel's `/proc/net/stat/synproxy`: parsing it, reading it safely,
//! and reading it inside each selected network namespace.

pub mod host_file;
pub mod netns;
pub mod netns_label;
pub mod netns_policy;
pub mod proc_file;
pub mod proc_stat;
