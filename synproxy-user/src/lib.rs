//! synproxy-agent: measures netfilter SYNPROXY and writes InfluxDB line protocol.
//!
//! Data flow: [`sources`] (read the kernel) -> [`reconcile`] (u64 totals, resets)
//! -> [`sample`] -> [`sinks`] (line protocol). [`agent`] is the sampler that runs
//! one round of that flow; [`runtime`] schedules rounds, signals and shutdown.

pub mod agent;
pub mod cli;
pub mod fields;
pub mod logging;
pub mod reconcile;
pub mod runtime;
pub mod sample;
pub mod sinks;
pub mod sources;
