//! One reading of one series, ready for a sink.

use crate::fields::Values;

/// Totals for one network namespace at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// `netns` tag value; `None` for the agent's own namespace (Telegraf's output).
    pub netns: Option<String>,
    /// Monotonic u64 totals, indexed by [`crate::fields::Field::index`].
    pub totals: Values<u64>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
