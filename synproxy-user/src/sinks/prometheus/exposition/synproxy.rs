//! The SYNPROXY counters from /proc, one family per counter, one series
//! per namespace (read this round, or retained).

use super::{netns_label, Family};
use crate::sample::{SeriesId, Snapshot};
use prometheus_client::metrics::MetricType;
use std::collections::HashSet;
use synproxy_common::{Counter, COUNTER_COUNT};

/// A namespace of the exposition: its series, `netns` label, /proc totals
/// and whether it was read this round (not only retained).
pub(super) type Row = (SeriesId, String, [u64; COUNTER_COUNT], bool);

/// Which namespaces: those read this round, then the retained ones (most
/// recently seen first) whose label is still free.
pub(super) fn rows(snapshot: &Snapshot) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut labels: HashSet<String> = HashSet::new();
    for ns in &snapshot.namespaces {
        let label = netns_label(ns.sample.netns.as_deref());
        let totals =
            Counter::ALL.map(|c| ns.sample.totals[crate::fields::Field::Counter(c).index()]);
        if labels.insert(label.clone()) {
            rows.push((ns.series, label, totals, true));
        }
    }
    let mut retained: Vec<_> = snapshot.retained.iter().collect();
    retained.sort_by_key(|r| (r.missing_rounds, r.series));
    for r in retained {
        let label = netns_label(r.netns.as_deref());
        if labels.insert(label.clone()) {
            let totals = Counter::ALL.map(|c| r.totals[crate::fields::Field::Counter(c).index()]);
            rows.push((r.series, label, totals, false));
        }
    }
    rows
}

/// One counter family per SYNPROXY counter.
pub(super) fn families(rows: &[Row]) -> Vec<Family> {
    let mut families = Vec::new();
    for counter in Counter::ALL {
        let mut family = Family::new(
            proc_family_name(counter),
            proc_help(counter),
            MetricType::Counter,
        );
        for (_, label, totals, _) in rows {
            family.count(vec![("netns", label.clone())], totals[counter.index()]);
        }
        families.push(family);
    }
    families
}

/// Help of the /proc counter families, in kernel order.
pub(super) fn proc_help(counter: Counter) -> &'static str {
    match counter {
        Counter::SynReceived => "SYNs answered by SYNPROXY with a cookie SYN/ACK (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieInvalid => "ACKs with a bad or expired SYN cookie (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieValid => "ACKs whose SYN cookie checked out: connections handed to the server (kernel counter, /proc/net/stat/synproxy).",
        Counter::CookieRetrans => "ACKs for a connection whose SYN to the server is still pending (kernel counter, /proc/net/stat/synproxy).",
        Counter::ConnReopened => "SYNs reopening a closed tracked connection (kernel counter, /proc/net/stat/synproxy).",
    }
}

/// `synproxy_<counter>` (rendered `..._total`).
pub(super) fn proc_family_name(counter: Counter) -> &'static str {
    match counter {
        Counter::SynReceived => "synproxy_syn_received",
        Counter::CookieInvalid => "synproxy_cookie_invalid",
        Counter::CookieValid => "synproxy_cookie_valid",
        Counter::CookieRetrans => "synproxy_cookie_retrans",
        Counter::ConnReopened => "synproxy_conn_reopened",
    }
}
