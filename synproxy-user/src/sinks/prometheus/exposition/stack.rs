//! The TCP stack's and conntrack's counters of each namespace read this
//! round: one family per field (`synproxy_tcpext_*_total`,
//! `synproxy_tcp_*_total`, `synproxy_tcp_curr_estab`,
//! `synproxy_conntrack_stat_*_total`), conntrack's table size and limit
//! (`synproxy_conntrack_entries`, `synproxy_conntrack_entries_limit`), each
//! with the `netns` label of the SYNPROXY families.

use super::{netns_label, Family};
use crate::sample::Snapshot;
use crate::sources::proc::conntrack_stat::COLUMNS;
use crate::sources::proc::tcp_counters::{Kind, NETSTAT_FIELDS, SNMP_FIELDS};
use prometheus_client::metrics::MetricType;
use std::collections::HashSet;

/// Family and help of each conntrack statistics column but `entries` (the
/// table size: `synproxy_conntrack_entries`), in [`COLUMNS`] order.
const CONNTRACK_FAMILIES: [(&str, &str, &str); COLUMNS.len() - 1] = [
    (
        "searched",
        "synproxy_conntrack_stat_searched",
        "conntrack table lookups (older kernels; current ones print clashres in its place).",
    ),
    (
        "found",
        "synproxy_conntrack_stat_found",
        "conntrack lookups that found an entry.",
    ),
    (
        "new",
        "synproxy_conntrack_stat_new",
        "conntrack entries added (printed as 0 on current kernels).",
    ),
    (
        "invalid",
        "synproxy_conntrack_stat_invalid",
        "Packets conntrack could not track (INVALID; SYNPROXY's ACKs are among them).",
    ),
    (
        "ignore",
        "synproxy_conntrack_stat_ignore",
        "Packets already tracked or not to be tracked (printed as 0 on current kernels).",
    ),
    (
        "delete",
        "synproxy_conntrack_stat_delete",
        "conntrack entries removed (printed as 0 on current kernels).",
    ),
    (
        "delete_list",
        "synproxy_conntrack_stat_delete_list",
        "conntrack entries put on the dying list (older kernels; current ones print chainlength in its place).",
    ),
    (
        "insert",
        "synproxy_conntrack_stat_insert",
        "conntrack entries inserted.",
    ),
    (
        "insert_failed",
        "synproxy_conntrack_stat_insert_failed",
        "conntrack insertions that failed (a clash, or the table full).",
    ),
    (
        "drop",
        "synproxy_conntrack_stat_drop",
        "Packets dropped because conntrack failed (the table full).",
    ),
    (
        "early_drop",
        "synproxy_conntrack_stat_early_drop",
        "conntrack entries evicted early to make room in a full table.",
    ),
    (
        "icmp_error",
        "synproxy_conntrack_stat_icmp_error",
        "Packets conntrack could not track because of an ICMP error.",
    ),
    (
        "expect_new",
        "synproxy_conntrack_stat_expect_new",
        "conntrack entries added from an expectation.",
    ),
    (
        "expect_create",
        "synproxy_conntrack_stat_expect_create",
        "conntrack expectations added.",
    ),
    (
        "expect_delete",
        "synproxy_conntrack_stat_expect_delete",
        "conntrack expectations deleted.",
    ),
    (
        "search_restart",
        "synproxy_conntrack_stat_search_restart",
        "conntrack lookups restarted (hash table resized).",
    ),
    (
        "clashres",
        "synproxy_conntrack_stat_clashres",
        "conntrack insertion clashes resolved (current kernels).",
    ),
    (
        "chainlength",
        "synproxy_conntrack_stat_chainlength",
        "conntrack lookups that found a hash chain too long (current kernels).",
    ),
];

pub(super) fn families(snapshot: &Snapshot) -> Vec<Family> {
    let mut labels: HashSet<String> = HashSet::new();
    let samples: Vec<(String, &crate::sample::StackSample)> = snapshot
        .stack
        .iter()
        .map(|s| (netns_label(s.netns.as_deref()), s))
        .filter(|(label, _)| labels.insert(label.clone()))
        .collect();
    let mut families = Vec::new();
    for (fields, part) in [(&NETSTAT_FIELDS[..], 0), (&SNMP_FIELDS[..], 1)] {
        for field in fields {
            let kind = match field.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family = Family::new(field.metric, field.help, kind);
            for (label, sample) in &samples {
                let values = if part == 0 {
                    &sample.netstat
                } else {
                    &sample.snmp
                };
                let value = values
                    .iter()
                    .flatten()
                    .find(|(f, _)| f.metric == field.metric)
                    .map(|(_, v)| *v);
                if let Some(value) = value {
                    family.count(vec![("netns", label.clone())], value);
                }
            }
            families.push(family);
        }
    }
    let mut entries = Family::new(
        "synproxy_conntrack_entries",
        "conntrack table entries now (nf_conntrack_count).",
        MetricType::Gauge,
    );
    let mut limit = Family::new(
        "synproxy_conntrack_entries_limit",
        "conntrack table size limit (nf_conntrack_max).",
        MetricType::Gauge,
    );
    for (label, sample) in &samples {
        let Some(ct) = &sample.conntrack else {
            continue;
        };
        if let Some(count) = ct.count {
            entries.count(vec![("netns", label.clone())], count);
        }
        if let Some(max) = ct.max {
            limit.count(vec![("netns", label.clone())], max);
        }
    }
    families.push(entries);
    families.push(limit);
    for (column, name, help) in CONNTRACK_FAMILIES {
        let mut family = Family::new(name, help, MetricType::Counter);
        for (label, sample) in &samples {
            let value = sample
                .conntrack
                .as_ref()
                .and_then(|ct| ct.stats.as_ref())
                .and_then(|stats| stats.iter().find(|(c, _)| *c == column))
                .map(|(_, v)| *v);
            if let Some(value) = value {
                family.count(vec![("netns", label.clone())], value);
            }
        }
        families.push(family);
    }
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_conntrack_column_but_entries_has_a_family() {
        let columns: Vec<&str> = CONNTRACK_FAMILIES.iter().map(|(c, _, _)| *c).collect();
        assert_eq!(columns, COLUMNS[1..]);
        for (column, name, _) in CONNTRACK_FAMILIES {
            assert_eq!(name, format!("synproxy_conntrack_stat_{column}"));
        }
    }
}
