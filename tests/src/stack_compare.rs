//! The TCP stack's and conntrack's counters of a namespace as the agent
//! reports them (its `nstat` and `conntrack` lines, `--once`) against the
//! files read inside the namespace at the same moment, `nstat -asz`
//! (iproute2) and `conntrack -S` / `-C` run inside it. Test support: a
//! mismatch panics naming the field.

use crate::harness::agent_binary;
use crate::line_protocol::{parse_line, FieldValue};
use crate::netns::run_in;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// The fields the agent reports (docs/outputs.md), as Telegraf names them.
pub const NETSTAT: [&str; 14] = [
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesRecv",
    "TcpExtSyncookiesFailed",
    "TcpExtEmbryonicRsts",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPReqQFullDoCookies",
    "TcpExtTCPReqQFullDrop",
    "TcpExtTCPBacklogDrop",
    "TcpExtTCPTimeouts",
    "TcpExtTCPSynRetrans",
    "TcpExtTSEcrRejected",
    "TcpExtTCPChallengeACK",
    "TcpExtTCPSYNChallenge",
];
pub const SNMP: [&str; 11] = [
    "TcpActiveOpens",
    "TcpPassiveOpens",
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpCurrEstab",
    "TcpInSegs",
    "TcpOutSegs",
    "TcpRetransSegs",
    "TcpInErrs",
    "TcpOutRsts",
    "TcpInCsumErrors",
];

/// `conntrack -S` names -> the columns of /proc/net/stat/nf_conntrack.
pub const CONNTRACK_S: [(&str, &str); 10] = [
    ("found", "found"),
    ("invalid", "invalid"),
    ("insert", "insert"),
    ("insert_failed", "insert_failed"),
    ("drop", "drop"),
    ("early_drop", "early_drop"),
    ("error", "icmp_error"),
    ("search_restart", "search_restart"),
    ("clash_resolve", "clashres"),
    ("chaintoolong", "chainlength"),
];

pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Everything the three sources say, by the agent's field names:
/// `netstat.X`, `snmp.X`, `conntrack.X` (the statistics) and
/// `conntrack.ip_conntrack_count` / `_max`.
pub type Values = BTreeMap<String, u64>;

/// The files themselves, read inside the namespace (a parse of their own:
/// header and value lines by name; hex rows summed, `entries` of row one).
pub fn read_files(ns: &str) -> Values {
    run_in(ns, || {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{p}: {e}"));
        let mut values = Values::new();
        for (part, path, groups) in [
            ("netstat", "/proc/thread-self/net/netstat", &["TcpExt"][..]),
            ("snmp", "/proc/thread-self/net/snmp", &["Tcp"][..]),
        ] {
            let text = read(path)?;
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let (Some(h), Some(v)) = (pair.first(), pair.get(1)) else {
                    continue;
                };
                let names: Vec<&str> = h.split_whitespace().collect();
                let cells: Vec<&str> = v.split_whitespace().collect();
                let group = names[0].trim_end_matches(':');
                if !groups.contains(&group) {
                    continue;
                }
                for (name, cell) in names.iter().zip(&cells).skip(1) {
                    if let Ok(n) = cell.parse::<u64>() {
                        values.insert(format!("{part}.{group}{name}"), n);
                    }
                }
            }
        }
        let stat = read("/proc/thread-self/net/stat/nf_conntrack")?;
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        for (row, line) in lines.enumerate() {
            for (name, cell) in header.iter().zip(line.split_whitespace()) {
                let n = u64::from_str_radix(cell, 16)?;
                let key = format!("conntrack.{name}");
                if *name == "entries" {
                    if row == 0 {
                        values.insert(key, n);
                    }
                } else {
                    *values.entry(key).or_default() += n;
                }
            }
        }
        for (field, file) in [
            ("ip_conntrack_count", "nf_conntrack_count"),
            ("ip_conntrack_max", "nf_conntrack_max"),
        ] {
            let text = read(&format!("/proc/sys/net/netfilter/{file}"))?;
            values.insert(format!("conntrack.{field}"), text.trim().parse()?);
        }
        Ok(values)
    })
    .unwrap_or_else(|e| panic!("reading the files inside {ns}: {e:#}"))
}

/// The agent's `--once` lines for the namespace (`extra` flags, `env`).
pub fn agent(ns: &str, extra: &[&str], env: &[(&str, &str)]) -> (Values, BTreeSet<String>) {
    let out = Command::new(agent_binary())
        // The verdict's line is the verdict's tests' business.
        .args([
            "--once",
            "--no-ebpf",
            "--no-verdict",
            "--no-host-tag",
            "--netns",
            ns,
        ])
        .args(extra)
        .envs(env.iter().copied())
        .env_remove("HOST_PROC")
        .output()
        .unwrap_or_else(|e| panic!("agent: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "agent: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut values = Values::new();
    let mut measurements = BTreeSet::new();
    for text in stdout.lines() {
        let line = parse_line(text).unwrap_or_else(|e| panic!("{text}: {e:#}"));
        assert_eq!(
            line.tags.get("netns").map(String::as_str),
            Some(ns),
            "{text}"
        );
        measurements.insert(line.measurement.clone());
        let part = match (line.measurement.as_str(), line.tags.get("name")) {
            ("nstat", Some(name)) => name.clone(),
            ("conntrack", _) => "conntrack".to_string(),
            _ => continue,
        };
        if line.measurement == "conntrack" {
            let cpu = line.tags.get("cpu").map(String::as_str);
            let floats = line.fields.contains_key("ip_conntrack_count");
            assert_eq!(cpu.is_none(), floats, "{text}");
        }
        for (field, value) in &line.fields {
            let n = match value {
                FieldValue::Int(n) => u64::try_from(*n).unwrap_or_else(|e| panic!("{text}: {e}")),
                // Telegraf's type for the table size and limit.
                FieldValue::Float(f) if field.starts_with("ip_conntrack_") => *f as u64,
                other => panic!("{text}: {field} is {other:?}"),
            };
            values.insert(format!("{part}.{field}"), n);
        }
    }
    (values, measurements)
}

/// `nstat -asz` inside the namespace (absolute values, zeros, no history).
pub fn nstat_tool(ns: &str) -> Values {
    in_ns(ns, &["nstat", "-asz"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut cells = l.split_whitespace();
            Some((cells.next()?.to_string(), cells.next()?.parse().ok()?))
        })
        .collect()
}

/// `conntrack -S` summed over CPUs, and `conntrack -C`, inside the namespace.
pub fn conntrack_tool(ns: &str) -> (Values, u64) {
    let mut sums = Values::new();
    for line in in_ns(ns, &["conntrack", "-S"]).lines() {
        for cell in line.split_whitespace() {
            let Some((name, value)) = cell.split_once('=') else {
                continue;
            };
            if name != "cpu" {
                *sums.entry(name.to_string()).or_default() += value
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
            }
        }
    }
    let count = in_ns(ns, &["conntrack", "-C"])
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("conntrack -C: {e}"));
    (sums, count)
}

/// The agent's values for `ns` equal the files' and the tools' (retried
/// until the namespace's counters stand still across the readings); the
/// agent's values are returned.
pub fn assert_equal_to_kernel(ns: &str) -> Values {
    // The files, the agent, the files again and the tools: compared when the
    // files did not move across the agent's read (an idle namespace's only
    // late movers are timers; retried a few times).
    let mut attempts = 0;
    let (before, agent_values, nstat, (ct_s, ct_c)) = loop {
        attempts += 1;
        let before = read_files(ns);
        let (agent_values, measurements) = agent(ns, &[], &[]);
        let after = read_files(ns);
        let nstat = nstat_tool(ns);
        let ct = conntrack_tool(ns);
        let last = read_files(ns);
        let expected: BTreeSet<String> =
            ["conntrack", "nstat", "synproxy"].map(String::from).into();
        assert_eq!(measurements, expected);
        if before == after && after == last {
            break (before, agent_values, nstat, ct);
        }
        assert!(
            attempts < 10,
            "the namespace's counters never stood still: {before:?} {after:?}"
        );
    };

    // Every documented field is there and equals the kernel's.
    for field in NETSTAT {
        let key = format!("netstat.{field}");
        assert_eq!(agent_values.get(&key), before.get(&key), "{key}");
        assert_eq!(
            agent_values.get(&key),
            nstat.get(field),
            "{key} vs nstat -az"
        );
    }
    for field in SNMP {
        let key = format!("snmp.{field}");
        assert_eq!(agent_values.get(&key), before.get(&key), "{key}");
        if field == "TcpCurrEstab" {
            // nstat leaves out this gauge (with the MIB's constants).
            assert_eq!(nstat.get(field), None);
            continue;
        }
        assert_eq!(
            agent_values.get(&key),
            nstat.get(field),
            "{key} vs nstat -az"
        );
    }
    let conntrack: Vec<(&String, &u64)> = before
        .iter()
        .filter(|(k, _)| k.starts_with("conntrack."))
        .collect();
    // This kernel's 17 columns, the table size and the limit.
    assert_eq!(conntrack.len(), 19, "{conntrack:?}");
    for (key, value) in conntrack {
        assert_eq!(agent_values.get(key), Some(value), "{key}");
    }
    for (tool, column) in CONNTRACK_S {
        let key = format!("conntrack.{column}");
        assert_eq!(
            agent_values.get(&key),
            ct_s.get(tool),
            "{key} vs conntrack -S {tool}"
        );
    }
    assert_eq!(
        agent_values.get("conntrack.ip_conntrack_count"),
        Some(&ct_c),
        "vs conntrack -C"
    );
    assert_eq!(
        agent_values.get("conntrack.entries"),
        Some(&ct_c),
        "entries vs conntrack -C"
    );
    agent_values
}
