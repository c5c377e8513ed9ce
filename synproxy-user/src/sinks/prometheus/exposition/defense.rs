//! The defense verdict of each namespace read this round: a one-hot state
//! (`synproxy_defense_state{netns,state}`: 1 for the current state, 0 for the
//! others, so a query can select any state) and when it began
//! (`synproxy_defense_state_start_time_seconds`). The reasons are text: in the
//! `synproxy_defense` lines and the agent's log.

use super::{netns_label, Family};
use crate::analysis::verdict::DefenseState;
use crate::sample::Snapshot;
use prometheus_client::metrics::MetricType;
use std::collections::HashSet;

pub(super) fn families(snapshot: &Snapshot) -> Vec<Family> {
    let mut state = Family::new(
        "synproxy_defense_state",
        "The namespace's defense verdict: 1 for its current state (learning, calm, syn_flood_absorbed, invalid_ack_flood, unprotected_syn_flood, backend_saturated, conntrack_exhausted), 0 for the others.",
        MetricType::Gauge,
    );
    let mut since = Family::new(
        "synproxy_defense_state_start_time_seconds",
        "When the namespace's current defense state began, seconds since the Unix epoch.",
        MetricType::Gauge,
    );
    let mut seen: HashSet<String> = HashSet::new();
    for sample in &snapshot.defense {
        let label = netns_label(sample.netns.as_deref());
        if !seen.insert(label.clone()) {
            continue;
        }
        for s in DefenseState::ALL {
            let on = u64::from(s == sample.verdict.state);
            state.count(
                vec![("netns", label.clone()), ("state", s.name().to_string())],
                on,
            );
        }
        since.gauge(vec![("netns", label)], sample.verdict.since_ns as f64 / 1e9);
    }
    vec![state, since]
}
