//! Ranges of the duration and size flags, checked while clap parses (flags
//! and `SYNPROXY_AGENT_*` variables alike): a value outside is one line
//! naming the flag and the range, and nothing downstream sees it. Within the
//! ranges no duration added to an `Instant` and no product of them overflows.

use crate::cli::parse_duration_any;
use std::time::Duration;

/// A duration range and how the error names it.
pub(crate) struct DurationRange {
    pub min: Duration,
    pub max: Duration,
    pub text: &'static str,
}

impl DurationRange {
    pub fn parse(&self, text: &str) -> Result<Duration, String> {
        let value = parse_duration_any(text)?;
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(format!("{text:?}: must be between {}", self.text))
        }
    }
}

/// `--interval` of the agent: 10ms to 24h.
pub const INTERVAL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(86_400));

/// `top --interval`: 10ms to 1h (the view keeps 5 minutes of history).
pub const TOP_INTERVAL: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));

/// `--rate-resolution`: 10ms to 1h; the agent drains the peak-rate map every
/// 8 buckets, so the finest resolution sets how often it wakes.
pub const RATE_RESOLUTION: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));

/// `--verdict-warmup`: 0s (judge from the second round) to 24h.
pub const VERDICT_WARMUP: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(86_400));

/// `--influx-buffer-lines`: 1 to 1,000,000 (a line is a few hundred bytes:
/// the largest buffer stays within a few hundred MiB).
pub const INFLUX_BUFFER_LINES: (u64, u64) = (1, 1_000_000);

/// `--on-attack-timeout`: 100ms to 1h.
pub const HOOK_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

pub fn parse_interval(text: &str) -> Result<Duration, String> {
    DurationRange {
        min: INTERVAL.0,
        max: INTERVAL.1,
        text: "10ms and 24h",
    }
    .parse(text)
}

pub fn parse_verdict_warmup(text: &str) -> Result<Duration, String> {
    DurationRange {
        min: VERDICT_WARMUP.0,
        max: VERDICT_WARMUP.1,
        text: "0s and 24h",
    }
    .parse(text)
}

pub fn parse_top_interval(text: &str) -> Result<Duration, String> {
    DurationRange {
        min: TOP_INTERVAL.0,
        max: TOP_INTERVAL.1,
        text: "10ms and 1h",
    }
    .parse(text)
}

pub fn parse_rate_resolution(text: &str) -> Result<Duration, String> {
    DurationRange {
        min: RATE_RESOLUTION.0,
        max: RATE_RESOLUTION.1,
        text: "10ms and 1h (the peak-rate map is drained every 8 buckets)",
    }
    .parse(text)
}

pub fn parse_hook_timeout(text: &str) -> Result<Duration, String> {
    DurationRange {
        min: HOOK_TIMEOUT.0,
        max: HOOK_TIMEOUT.1,
        text: "100ms and 1h",
    }
    .parse(text)
}

pub fn parse_influx_buffer_lines(text: &str) -> Result<u64, String> {
    let (min, max) = INFLUX_BUFFER_LINES;
    match text.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?}: expected a number of lines from {min} to {max}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_name_their_bounds() {
        assert_eq!(parse_interval("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_interval("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(
            parse_interval("24h1s"),
            Err("\"24h1s\": must be between 10ms and 24h".into())
        );
        assert!(parse_interval("99999999999999999h")
            .unwrap_err()
            .contains("between 10ms and 24h"));
        assert!(parse_top_interval("2h")
            .unwrap_err()
            .contains("10ms and 1h"));
        assert_eq!(parse_rate_resolution("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_rate_resolution("61m").is_err());
        assert_eq!(
            parse_rate_resolution("9ms"),
            Err("\"9ms\": must be between 10ms and 1h (the peak-rate map is drained every 8 buckets)".into())
        );
        assert!(parse_interval("0s")
            .unwrap_err()
            .contains("between 10ms and 24h"));
        assert_eq!(parse_hook_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(
            parse_hook_timeout("99ms"),
            Err("\"99ms\": must be between 100ms and 1h".into())
        );
        assert_eq!(parse_influx_buffer_lines("1"), Ok(1));
        assert_eq!(parse_influx_buffer_lines("1000000"), Ok(1_000_000));
        assert!(parse_influx_buffer_lines("0").is_err());
        assert!(parse_influx_buffer_lines("1000001")
            .unwrap_err()
            .contains("from 1 to 1000000"));
    }
}
