//! /proc/net/stat/synproxy: a header, then one row of `%08x` u32 per possible CPU.

use crate::netns::Netns;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// Column totals (u64: the per-CPU u32 values are summed without wrapping).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals(pub BTreeMap<String, u64>);

impl Totals {
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
}

pub fn parse(text: &str) -> Result<Totals> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty synproxy stat file")?
        .split_whitespace()
        .collect();
    if header.is_empty() {
        bail!("synproxy stat file has an empty header");
    }
    let mut totals: BTreeMap<String, u64> = header.iter().map(|h| (h.to_string(), 0)).collect();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let values: Vec<&str> = line.split_whitespace().collect();
        if values.len() != header.len() {
            bail!(
                "row {} has {} values, header has {} columns",
                i + 1,
                values.len(),
                header.len()
            );
        }
        for (name, v) in header.iter().zip(values) {
            let n = u32::from_str_radix(v, 16)
                .with_context(|| format!("row {}: {name}={v:?} is not hex u32", i + 1))?;
            *totals.entry(name.to_string()).or_default() += u64::from(n);
        }
    }
    Ok(Totals(totals))
}

/// Totals of the netns of the calling thread (not /proc/self, which follows the
/// main thread).
pub fn read_current_thread() -> Result<Totals> {
    let path = "/proc/thread-self/net/stat/synproxy";
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    parse(&text).with_context(|| format!("parse {path}"))
}

pub fn read(netns: &Netns) -> Result<Totals> {
    netns
        .run(read_current_thread)
        .with_context(|| format!("synproxy counters of netns {}", netns.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_columns_over_cpus_without_u32_wrap() {
        let text = "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n\
                    00000000 ffffffff 00000001 00000002 00000003 00000004\n\
                    00000000 00000002 00000010 00000000 00000000 00000001\n";
        let t = parse(text).unwrap();
        assert_eq!(t.get("syn_received"), 0x1_0000_0001);
        assert_eq!(t.get("cookie_invalid"), 0x11);
        assert_eq!(t.get("conn_reopened"), 5);
        assert_eq!(t.get("entries"), 0);
    }

    #[test]
    fn rejects_ragged_rows() {
        assert!(parse("a\tb\n00000001\n").is_err());
        assert!(parse("a\n0000000g\n").is_err());
    }
}
