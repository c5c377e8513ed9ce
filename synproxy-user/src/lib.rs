//! synproxy-agent: measures netfilter SYNPROXY and writes InfluxDB line
//! protocol and/or serves Prometheus metrics.
//!
//! Data flow, one direction: [`sources`] (read the kernel) -> [`reconcile`]
//! (u64 totals, resets, the eBPF join) -> [`sample`] (one [`sample::Snapshot`]
//! per round) -> [`sinks`] (stdout line protocol, Prometheus); [`ranking`]
//! turns the per-address counts into each round's top sources. [`sampler`]
//! runs one round of that flow and knows nothing of the sinks; [`runtime`]
//! schedules rounds, hands each snapshot to the sinks, and owns signals and
//! shutdown. [`top`] is the live terminal view: one more consumer of the
//! snapshots.

pub mod analysis;
pub mod cli;
pub mod cli_bounds;
pub mod fields;
pub mod logging;
pub mod privileges;
pub mod ranking;
pub mod reconcile;
pub mod runtime;
pub mod sample;
pub mod sampler;
pub mod sinks;
pub mod sources;
pub mod start_up_pages;
pub mod stdin_requests;
pub mod top;
