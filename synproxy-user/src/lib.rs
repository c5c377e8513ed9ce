//! synproxy-agent: measures netfilter SYNPROXY and writes InfluxDB line protocol.
//!
//! Data flow: [`sources`] (read the kernel) -> [`reconcile`] (u64 totals, resets)
//! -> [`sample`] -> [`sinks`] (line protocol). [`agent`] drives it on a schedule.

pub mod agent;
pub mod cli;
pub mod fields;
pub mod logging;
pub mod reconcile;
pub mod sample;
pub mod sinks;
pub mod sources;
