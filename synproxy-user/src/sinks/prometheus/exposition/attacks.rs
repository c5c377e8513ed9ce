//! The attack detector's series, per namespace, kind and port (`all` for the
//! namespace's total): `synproxy_attack_active` (1 while an attack lasts, 0
//! after), `synproxy_attacks_started_total` and
//! `synproxy_attack_last_start_time_seconds`. Subjects are kept from their
//! first attack on, at most [`MAX_SUBJECTS`] (the oldest start is dropped).

use super::{netns_label, Family};
use crate::analysis::attack::{AttackEvent, AttackPhase};
use prometheus_client::metrics::MetricType;
use std::collections::BTreeMap;

/// Subjects with series at most (a flood over many ports cannot grow them).
pub const MAX_SUBJECTS: usize = 1024;

/// (netns label, kind, port tag)
type SubjectLabels = (String, &'static str, String);

/// What the sink keeps of the attacks across rounds.
#[derive(Clone, Debug, Default)]
pub struct AttackBook {
    /// Per subject: attacks started, and the last start (seconds).
    started: BTreeMap<SubjectLabels, (u64, f64)>,
    /// The attacks in progress, by id.
    active: BTreeMap<String, SubjectLabels>,
}

fn labels(e: &AttackEvent) -> SubjectLabels {
    (netns_label(e.netns.as_deref()), e.kind.name(), e.port_tag())
}

impl AttackBook {
    /// A start or end, as it happens.
    pub fn event(&mut self, e: &AttackEvent) {
        let subject = labels(e);
        match e.phase {
            AttackPhase::Start => {
                let entry = self.started.entry(subject.clone()).or_default();
                entry.0 += 1;
                entry.1 = e.start_ns as f64 / 1e9;
                self.active.insert(e.id.clone(), subject);
                self.bound();
            }
            AttackPhase::End => {
                self.active.remove(&e.id);
            }
            AttackPhase::Ongoing => {
                self.active.insert(e.id.clone(), subject);
            }
        }
    }

    /// The round's attacks in progress: the truth at the end of the round.
    pub fn round(&mut self, ongoing: &[AttackEvent]) {
        self.active.clear();
        for e in ongoing {
            let subject = labels(e);
            // An attack restored from the state file starts here for us.
            let entry = self.started.entry(subject.clone()).or_insert((1, 0.0));
            if entry.1 == 0.0 {
                entry.1 = e.start_ns as f64 / 1e9;
            }
            self.active.insert(e.id.clone(), subject);
        }
        self.bound();
    }

    fn bound(&mut self) {
        while self.started.len() > MAX_SUBJECTS {
            let oldest = self
                .started
                .iter()
                .filter(|(k, _)| !self.active.values().any(|a| a == *k))
                .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.started.remove(&k);
                }
                None => break,
            }
        }
    }

    pub(super) fn families(&self) -> Vec<Family> {
        let mut active = Family::new(
            "synproxy_attack_active",
            "1 while an attack on the namespace (port all) or destination port lasts, 0 after.",
            MetricType::Gauge,
        );
        let mut started = Family::new(
            "synproxy_attacks_started",
            "Attacks started since the agent started.",
            MetricType::Counter,
        );
        let mut last = Family::new(
            "synproxy_attack_last_start_time_seconds",
            "When the last attack started, seconds since the Unix epoch.",
            MetricType::Gauge,
        );
        for (subject, (count, at)) in &self.started {
            let (netns, kind, port) = subject.clone();
            let l = vec![("netns", netns), ("kind", kind.to_string()), ("port", port)];
            let on = self.active.values().any(|a| a == subject);
            active.gauge(l.clone(), if on { 1.0 } else { 0.0 });
            started.count(l.clone(), *count);
            last.gauge(l, *at);
        }
        vec![active, started, last]
    }
}
