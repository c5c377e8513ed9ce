//! The TCP stack's and conntrack's counters of a namespace, read from the
//! files themselves (the tests' ground truth, apart from the agent's parsers):
//! `/proc/net/netstat` and `/proc/net/snmp` as "Prefix: names" / "Prefix:
//! values" line pairs, `/proc/net/stat/nf_conntrack` as a header and hex rows
//! per CPU, and the conntrack count.

use crate::netns::Netns;
use crate::proc_counters;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// `Prefix` + `Name` (as nstat names them: `TcpExtListenDrops`) to value.
pub type Named = BTreeMap<String, u64>;

/// Parses "Prefix: a b c" / "Prefix: 1 2 3" line pairs.
pub fn parse_pairs(text: &str) -> Result<Named> {
    let mut out = Named::new();
    let mut lines = text.lines();
    while let Some(header) = lines.next() {
        let Some(values) = lines.next() else {
            bail!("header line without values: {header:?}");
        };
        let (Some((p1, names)), Some((p2, nums))) =
            (header.split_once(':'), values.split_once(':'))
        else {
            bail!("not a prefix line pair: {header:?} / {values:?}");
        };
        if p1 != p2 {
            bail!("prefixes differ: {p1:?} / {p2:?}");
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let nums: Vec<&str> = nums.split_whitespace().collect();
        if names.len() != nums.len() {
            bail!("{p1}: {} names, {} values", names.len(), nums.len());
        }
        for (n, v) in names.iter().zip(nums) {
            // Tcp MaxConn is -1: kept as 0, never a counter we compare.
            let v = v.parse::<u64>().unwrap_or(0);
            out.insert(format!("{p1}{n}"), v);
        }
    }
    Ok(out)
}

fn thread_file(rel: &str) -> Result<String> {
    let path = format!("/proc/thread-self/{rel}");
    std::fs::read_to_string(&path).with_context(|| format!("read {path}"))
}

/// TcpExt, IpExt, Tcp, Udp... of `netns`, at one moment.
pub fn read_tcp(netns: &Netns) -> Result<Named> {
    netns
        .run(|| {
            let mut all = parse_pairs(&thread_file("net/netstat")?)?;
            all.extend(parse_pairs(&thread_file("net/snmp")?)?);
            Ok(all)
        })
        .with_context(|| format!("TCP counters of netns {}", netns.name()))
}

/// conntrack's statistics summed over CPUs, plus `count` (nf_conntrack_count).
pub fn read_conntrack(netns: &Netns) -> Result<proc_counters::Totals> {
    netns
        .run(|| {
            let mut t = proc_counters::parse(&thread_file("net/stat/nf_conntrack")?)?;
            let count = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
                .context("read nf_conntrack_count")?;
            let count = count.trim().parse().context("nf_conntrack_count")?;
            t.0.insert("count".into(), count);
            Ok(t)
        })
        .with_context(|| format!("conntrack counters of netns {}", netns.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_by_name_with_the_prefix() {
        let text = "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 3 7\nTcp: RtoAlgorithm MaxConn\nTcp: 1 -1\n";
        let n = parse_pairs(text).unwrap();
        assert_eq!(n["TcpExtSyncookiesSent"], 3);
        assert_eq!(n["TcpExtListenDrops"], 7);
        assert_eq!(n["TcpMaxConn"], 0);
        assert!(parse_pairs("TcpExt: a b\nTcpExt: 1\n").is_err());
        assert!(parse_pairs("TcpExt: a\nTcp: 1\n").is_err());
        assert!(parse_pairs("TcpExt: a\n").is_err());
    }
}
