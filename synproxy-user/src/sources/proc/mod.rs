//! The kernel's `/proc/net/stat/synproxy` (and the TCP stack's and conntrack's
//! counters beside it): parsing them, reading them safely,
//! and reading them inside each selected network namespace.

pub mod conntrack_stat;
pub mod host_file;
pub mod netns;
pub mod netns_label;
pub mod netns_policy;
pub mod proc_file;
pub mod proc_stat;
pub mod tcp_counters;
pub mod text_scan;
