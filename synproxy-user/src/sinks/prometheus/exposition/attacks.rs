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
            // An attack this agent did not see start (restored from the
            // state file after a restart) is not counted as started.
            let entry = self.started.entry(subject.clone()).or_insert((0, 0.0));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::attack::AttackKind;

    fn event(phase: AttackPhase, port: u16, start_ns: u64) -> AttackEvent {
        AttackEvent {
            id: AttackEvent::make_id(Some("blue"), AttackKind::SynFlood, Some(port), start_ns),
            netns: Some("blue".into()),
            kind: AttackKind::SynFlood,
            port: Some(port),
            phase,
            start_ns,
            timestamp_ns: start_ns,
            end_ns: None,
            rate: 1.0,
            baseline: 0.0,
            threshold: 1.0,
            peak_rate: 1.0,
            events: 1,
            top_sources: Vec::new(),
            top_ports: Vec::new(),
            defense: None,
        }
    }

    fn values(book: &AttackBook) -> Vec<(u64, bool)> {
        book.started
            .iter()
            .map(|(k, (n, _))| (*n, book.active.values().any(|a| a == k)))
            .collect()
    }

    #[test]
    fn starts_count_ends_clear_and_restored_attacks_are_not_counted() {
        let mut book = AttackBook::default();
        book.event(&event(AttackPhase::Start, 80, 1));
        assert_eq!(values(&book), [(1, true)]);
        book.event(&event(AttackPhase::End, 80, 1));
        assert_eq!(values(&book), [(1, false)]);
        book.event(&event(AttackPhase::Start, 80, 5));
        assert_eq!(values(&book), [(2, true)]);
        // A round whose ongoing list lacks it: it is over.
        book.round(&[]);
        assert_eq!(values(&book), [(2, false)]);
        // Restored after a restart: active, never started here.
        book.round(&[event(AttackPhase::Ongoing, 443, 9)]);
        assert_eq!(values(&book), [(0, true), (2, false)]);
    }

    #[test]
    fn a_flood_over_many_ports_keeps_the_series_bounded() {
        let mut book = AttackBook::default();
        for port in 0..5000u16 {
            book.event(&event(AttackPhase::Start, port, u64::from(port) + 1));
            book.event(&event(AttackPhase::End, port, u64::from(port) + 1));
        }
        assert_eq!(book.started.len(), MAX_SUBJECTS);
        // The most recent starts are the ones kept.
        assert!(book.started.keys().any(|k| k.2 == "4999"));
        assert!(!book.started.keys().any(|k| k.2 == "0"));
    }
}
