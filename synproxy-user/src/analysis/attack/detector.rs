//! One namespace's detectors: one [`Subject`] per kind for the namespace's
//! total and, with per-port counting, one per kind and destination port.
//! Ports are bounded ([`MAX_PORT_SUBJECTS`]): a flood spread over many ports
//! cannot make the agent's memory grow; idle ports are forgotten.

use super::event::AttackKind;
use super::subject::{Change, Params, Subject};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Port subjects kept per namespace (over both kinds): with full histories
/// about 9 KiB per namespace, under 24 MiB for 2,048 busy namespaces
/// (`benches/attack_detector.rs`).
pub const MAX_PORT_SUBJECTS: usize = 16;

/// What a detector watches: a kind, for the namespace (`port` None) or one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubjectKey {
    pub kind: AttackKind,
    pub port: Option<u16>,
}

/// Which subjects a step covers: those not given are taken as 0 events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The namespace's totals (every kind, `port` None).
    Namespace,
    /// The destination ports (`port` Some).
    Ports,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceDetector {
    /// Seconds of this namespace's traffic learnt (its warm-up progress).
    pub learnt_secs: f64,
    pub subjects: BTreeMap<SubjectKey, Subject>,
    /// Ports refused because [`MAX_PORT_SUBJECTS`] were under attack.
    pub refused_ports: u64,
}

impl NamespaceDetector {
    /// Whether the namespace is past its warm-up.
    pub fn judging(&self, p: &Params) -> bool {
        self.learnt_secs >= p.warmup_secs
    }

    /// One step of `secs` seconds ending at `now_ns`: events per subject of
    /// `scope` (others of that scope had none). Returns what changed.
    pub fn step(
        &mut self,
        now_ns: u64,
        secs: f64,
        scope: Scope,
        events: &[(SubjectKey, u64)],
        p: &Params,
    ) -> Vec<(SubjectKey, Change)> {
        if !(secs.is_finite() && secs > 0.0) {
            return Vec::new();
        }
        let judge = self.judging(p);
        let mut changes = Vec::new();
        let in_scope = |k: &SubjectKey| match scope {
            Scope::Namespace => k.port.is_none(),
            Scope::Ports => k.port.is_some(),
        };
        if scope == Scope::Namespace {
            for kind in AttackKind::ALL {
                self.subjects
                    .entry(SubjectKey { kind, port: None })
                    .or_default();
            }
        }
        for &(key, _) in events.iter().filter(|(k, n)| in_scope(k) && *n > 0) {
            if key.port.is_some() && !self.subjects.contains_key(&key) && !self.make_room() {
                self.refused_ports += 1;
                continue;
            }
            self.subjects.entry(key).or_default();
        }
        for (key, subject) in self.subjects.iter_mut().filter(|(k, _)| in_scope(k)) {
            let n = events
                .iter()
                .filter(|(k, _)| k == key)
                .fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
            if let Some(change) = subject.step(now_ns, n, secs, judge, p) {
                changes.push((*key, change));
            }
        }
        if scope == Scope::Namespace {
            self.learnt_secs = (self.learnt_secs + secs).min(p.warmup_secs.max(0.0) + secs);
        }
        self.subjects
            .retain(|k, s| k.port.is_none() || !s.is_idle());
        changes
    }

    /// Frees a port subject for a new port: an idle one, else the one with the
    /// lowest baseline that is not under attack. False if all are attacked.
    fn make_room(&mut self) -> bool {
        let ports = self.subjects.keys().filter(|k| k.port.is_some()).count();
        if ports < MAX_PORT_SUBJECTS {
            return true;
        }
        let victim = self
            .subjects
            .iter()
            .filter(|(k, s)| k.port.is_some() && s.active.is_none())
            .min_by(|a, b| a.1.history.baseline().total_cmp(&b.1.history.baseline()))
            .map(|(k, _)| *k);
        match victim {
            Some(k) => {
                self.subjects.remove(&k);
                true
            }
            None => false,
        }
    }

    /// The attacks in progress.
    pub fn active(&self) -> impl Iterator<Item = (&SubjectKey, &super::subject::Active)> {
        self.subjects
            .iter()
            .filter_map(|(k, s)| s.active.as_ref().map(|a| (k, a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn params() -> Params {
        Params {
            bucket_secs: 1.0,
            floor: 100.0,
            release_secs: 1.0,
            warmup_secs: 2.0,
            ..Params::default()
        }
    }

    fn port(kind: AttackKind, port: u16) -> SubjectKey {
        SubjectKey {
            kind,
            port: Some(port),
        }
    }

    #[test]
    fn two_ports_flooded_are_two_attacks_and_the_namespace_one() {
        let p = params();
        let mut d = NamespaceDetector::default();
        let syn = AttackKind::SynFlood;
        let ns = SubjectKey {
            kind: syn,
            port: None,
        };
        // Warm-up: judged only after 2 s of namespace steps.
        for i in 1..=4 {
            let c = d.step(i * S / 2, 0.5, Scope::Namespace, &[(ns, 1000)], &p);
            assert!(c.is_empty());
        }
        assert!(d.judging(&p));
        // Port 80 floods first, then port 443 too.
        let c = d.step(3 * S, 0.5, Scope::Ports, &[(port(syn, 80), 1000)], &p);
        assert_eq!(c, vec![(port(syn, 80), Change::Started)]);
        let c = d.step(
            4 * S,
            0.5,
            Scope::Ports,
            &[(port(syn, 80), 1000), (port(syn, 443), 900)],
            &p,
        );
        assert_eq!(c, vec![(port(syn, 443), Change::Started)]);
        assert_eq!(d.active().count(), 2);
        // Port 80 stops: its attack ends alone, 443's goes on.
        let mut ended = Vec::new();
        for i in 0..4 {
            let now = 5 * S + i * S / 2;
            ended.extend(d.step(now, 0.5, Scope::Ports, &[(port(syn, 443), 900)], &p));
        }
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].0, port(syn, 80));
        assert!(matches!(ended[0].1, Change::Ended(_)));
        assert_eq!(
            d.active().map(|(k, _)| *k).collect::<Vec<_>>(),
            [port(syn, 443)]
        );
    }

    #[test]
    fn with_every_port_subject_under_attack_a_new_port_is_refused() {
        let p = Params {
            warmup_secs: 0.0,
            ..params()
        };
        let mut d = NamespaceDetector::default();
        let flood: Vec<(SubjectKey, u64)> = (0..MAX_PORT_SUBJECTS as u16)
            .map(|i| (port(AttackKind::SynFlood, i), 1000))
            .collect();
        let started = d.step(S, 0.5, Scope::Ports, &flood, &p);
        assert_eq!(started.len(), MAX_PORT_SUBJECTS);
        let mut more = flood.clone();
        more.push((port(AttackKind::SynFlood, 9999), 1000));
        assert!(d.step(2 * S, 0.5, Scope::Ports, &more, &p).is_empty());
        assert_eq!(d.refused_ports, 1);
        assert_eq!(d.active().count(), MAX_PORT_SUBJECTS);
    }

    #[test]
    fn ports_are_bounded_and_idle_ones_forgotten() {
        let p = Params {
            warmup_secs: 0.0,
            floor: 1e12,
            ..params()
        };
        let mut d = NamespaceDetector::default();
        let many: Vec<(SubjectKey, u64)> = (0..1000)
            .map(|i| (port(AttackKind::SynFlood, i), 5))
            .collect();
        d.step(S, 0.5, Scope::Ports, &many, &p);
        assert_eq!(d.subjects.len(), MAX_PORT_SUBJECTS);
        assert!(d.refused_ports == 0, "room is made from ports not attacked");
        // Without traffic for the whole window they are idle and dropped.
        for i in 0..130 {
            d.step(2 * S + i * S, 1.0, Scope::Ports, &[], &p);
        }
        assert_eq!(d.subjects.len(), 0);
    }
}
