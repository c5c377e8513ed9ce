//! Value parsers of single flags (clap's `value_parser`s): one-line errors.

use crate::ranking::{
    MAX_TOP, MAX_TOP_MAP_ENTRIES, MAX_TOP_PORTS, MAX_TOP_PORTS_MAP_ENTRIES, MIN_TOP_MAP_ENTRIES,
    MIN_TOP_PORTS_MAP_ENTRIES,
};
use crate::sources::proc::netns_policy::{MAX_MAX_NAMESPACES, MIN_MAX_NAMESPACES};
use std::time::Duration;

/// `IP:PORT`, with IPv6 addresses in brackets: `127.0.0.1:10816`, `[::]:10816`.
pub fn parse_listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse::<std::net::SocketAddr>().map_err(|_| {
        "not an address to listen on (expected IP:PORT, for example 127.0.0.1:10816 or [::]:10816)"
            .to_string()
    })
}

/// `--top N`: 0 (off) to [`MAX_TOP`], which bounds the series on /metrics.
pub fn parse_top(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n <= MAX_TOP => Ok(n),
        _ => Err(format!(
            "expected a number of sources from 0 (off) to {MAX_TOP}"
        )),
    }
}

/// `--netns-max N`: 1 to 16384.
pub fn parse_netns_max(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (MIN_MAX_NAMESPACES..=MAX_MAX_NAMESPACES).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of namespaces from {MIN_MAX_NAMESPACES} to {MAX_MAX_NAMESPACES}"
        )),
    }
}

/// `--top-ports N`: 0 (off) to [`MAX_TOP_PORTS`].
pub fn parse_top_ports(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n <= MAX_TOP_PORTS => Ok(n),
        _ => Err(format!(
            "expected a number of ports from 0 (off) to {MAX_TOP_PORTS}"
        )),
    }
}

/// `--top-ports-map-entries N`: 256 to 2^20.
pub fn parse_top_ports_map_entries(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (MIN_TOP_PORTS_MAP_ENTRIES..=MAX_TOP_PORTS_MAP_ENTRIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of map entries from {MIN_TOP_PORTS_MAP_ENTRIES} to {MAX_TOP_PORTS_MAP_ENTRIES}"
        )),
    }
}

/// `--top-map-entries N`: 1024 to 2^20.
pub fn parse_top_map_entries(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (MIN_TOP_MAP_ENTRIES..=MAX_TOP_MAP_ENTRIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of map entries from {MIN_TOP_MAP_ENTRIES} to {MAX_TOP_MAP_ENTRIES}"
        )),
    }
}

/// `--top-prefix-v4 BITS`: 0 to 32.
pub fn parse_prefix_v4(text: &str) -> Result<u8, String> {
    parse_prefix(text, 32)
}

/// `--top-prefix-v6 BITS`: 0 to 128.
pub fn parse_prefix_v6(text: &str) -> Result<u8, String> {
    parse_prefix(text, 128)
}

fn parse_prefix(text: &str, max: u8) -> Result<u8, String> {
    match text.trim().trim_start_matches('/').parse::<u8>() {
        Ok(bits) if bits <= max => Ok(bits),
        _ => Err(format!(
            "expected a prefix length from 0 to {max} ({max}: each address alone)"
        )),
    }
}

/// `500ms`, `10s`, `1m`, `2h`, or a combination such as `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let total = parse_duration_any(text)?;
    if total < Duration::from_millis(10) {
        return Err(format!("{:?}: must be at least 10ms", text.trim()));
    }
    Ok(total)
}

/// [`parse_duration`] without its lower bound (the flags' ranges are in
/// [`cli_bounds`]).
pub fn parse_duration_any(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (examples: 500ms, 10s, 1m)".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{text:?}: expected a number (examples: 500ms, 10s, 1m)"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "" => return Err(format!("{text:?}: missing unit (use ms, s, m or h)")),
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// `KEY=VALUE` with a non-empty key and value, no control characters, and a key
/// that InfluxDB accepts (not starting with `_`).
pub fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    if key.is_empty() || value.is_empty() {
        return Err(format!("{text:?}: key and value must be non-empty"));
    }
    if key.starts_with('_') {
        return Err(format!(
            "{text:?}: tag keys starting with _ are reserved by InfluxDB"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{text:?}: control characters are not allowed"));
    }
    if key.ends_with('\\') || value.ends_with('\\') {
        return Err(format!(
            "{text:?}: line protocol cannot end a key or value with a backslash"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}
