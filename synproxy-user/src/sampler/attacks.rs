//! Attack detection in the sampler: each namespace's detectors are stepped
//! with eBPF's rate buckets between rounds ([`Sampler::detect_tick`], so a
//! start is known within a second whatever the interval), or with the /proc
//! totals once per round where eBPF does not count the namespace. Starts and
//! ends are logged and queued for the sinks ([`Sampler::take_attack_events`]);
//! each round's snapshot carries the attacks in progress.

use super::*;
use crate::analysis::attack::detector::{NamespaceDetector, Scope, SubjectKey};
use crate::analysis::attack::subject::{Active, Change, Params as AttackParams};
use crate::analysis::attack::{AttackEvent, AttackKind, AttackPhase, EventPort, EventSource};
use crate::fields::Field;

/// The detector's configuration.
#[derive(Clone, Debug)]
pub struct AttackConfig {
    pub params: AttackParams,
    /// Where the detectors' state is kept across restarts (None: not kept).
    pub state_dir: Option<PathBuf>,
}

/// Sources and ports shown in an event's documents.
pub(super) const EVENT_TOP: usize = 5;

/// One namespace's attack detection, kept with its series.
#[derive(Debug, Default)]
pub(super) struct SeriesAttacks {
    pub detector: NamespaceDetector,
    /// The last /proc reading stepped: (timestamp ns, syn_received, cookie_invalid).
    proc_last: Option<(u64, [u64; 2])>,
    /// Stepped by the eBPF ticks since the last round.
    pub(super) fed: bool,
    /// The state file was asked for this namespace's saved state.
    claimed: bool,
    /// The latest top sources and ports per kind, for the documents.
    pub(super) tops: HashMap<AttackKind, (Vec<EventSource>, Vec<EventPort>)>,
}

impl Sampler {
    /// How often [`Sampler::detect_tick`] should run: with eBPF and the
    /// detector on.
    pub fn detect_period(&self) -> Option<Duration> {
        self.config.attacks.as_ref()?;
        let res = self.config.ebpf.as_ref()?.rate_resolution();
        Some(res.max(super::attack_tick::DETECT_PERIOD))
    }

    /// The starts and ends since the last call, oldest first.
    pub fn take_attack_events(&mut self) -> Vec<AttackEvent> {
        self.new_starts.clear();
        std::mem::take(&mut self.attack_events)
    }

    /// In each round: /proc steps for namespaces the ticks did not feed, the
    /// top sources and ports for the documents, and the round's `ongoing`
    /// documents.
    pub(super) fn attacks_round(&mut self, reads: &[Read], round: &mut Snapshot) {
        let Some(params) = self.config.attacks.as_ref().map(|a| a.params.clone()) else {
            return;
        };
        // Only namespaces the probes count (with a slot): the others are
        // stepped from /proc below.
        self.attack_keys = reads
            .iter()
            .filter(|r| r.after.is_some())
            .filter_map(|r| r.ebpf_key.map(|k| (k, r.key)))
            .collect();
        let now = round.timestamp_ns;
        for read in reads {
            let Some(series) = self.series.get_mut(&read.key) else {
                continue;
            };
            if !std::mem::replace(&mut series.attacks.claimed, true) {
                let label = (read.key != SeriesKey::Own).then_some(read.label.as_str());
                if let Some(saved) = self.attack_state.claim(label) {
                    series.attacks.detector = saved;
                }
            }
            let reading = AttackKind::ALL.map(|k| read.totals[Field::Counter(k.counter()).index()]);
            let last = series.attacks.proc_last.replace((now, reading));
            let fed = std::mem::take(&mut series.attacks.fed);
            let Some((then, before)) = last else { continue };
            if fed || read.reset {
                continue;
            }
            let secs = now.saturating_sub(then) as f64 / 1e9;
            let events: Vec<(SubjectKey, u64)> = AttackKind::ALL
                .iter()
                .zip(reading.iter().zip(before))
                .map(|(&kind, (now, before))| {
                    (SubjectKey { kind, port: None }, now.saturating_sub(before))
                })
                .collect();
            self.step_attacks(read.key, now, secs, Scope::Namespace, &events, &params);
        }
        self.remember_tops(round);
        self.save_attack_state(false);
        for read in reads {
            let Some(series) = self.series.get(&read.key) else {
                continue;
            };
            let label = (read.key != SeriesKey::Own).then_some(read.label.as_str());
            for (key, active) in series.attacks.detector.active() {
                round.attacks.push(document(
                    label,
                    *key,
                    AttackPhase::Ongoing,
                    active,
                    now,
                    &series.attacks,
                    series.verdict.state(),
                    self.config.verdict.is_some(),
                ));
            }
        }
    }

    /// The round's top sources and ports per namespace and kind, for the
    /// documents of the attacks that go on.
    fn remember_tops(&mut self, round: &Snapshot) {
        let by_id: HashMap<SeriesId, SeriesKey> =
            self.series.iter().map(|(k, s)| (s.id, *k)).collect();
        let mut by_label: HashMap<Option<&str>, SeriesKey> = HashMap::new();
        for n in &round.namespaces {
            if let Some(key) = by_id.get(&n.series) {
                by_label.insert(n.sample.netns.as_deref(), *key);
            }
        }
        for kind in AttackKind::ALL {
            for (label, key) in &by_label {
                let mut sources: Vec<EventSource> = round
                    .top_sources
                    .iter()
                    .filter(|t| t.counter == kind.counter() && t.netns.as_deref() == *label)
                    .flat_map(|t| t.entries.iter())
                    .map(|e| EventSource {
                        source: e.source.clone(),
                        events: e.events,
                    })
                    .collect();
                sources.sort_by_key(|s| std::cmp::Reverse(s.events));
                sources.truncate(EVENT_TOP);
                let ports: Vec<EventPort> = round
                    .top_ports
                    .iter()
                    .filter(|t| t.counter == kind.counter() && t.netns.as_deref() == *label)
                    .flat_map(|t| t.entries.iter())
                    .take(EVENT_TOP)
                    .map(|e| EventPort {
                        port: e.port,
                        events: e.events,
                    })
                    .collect();
                if let Some(series) = self.series.get_mut(key) {
                    let entry = series.attacks.tops.entry(kind).or_default();
                    if !sources.is_empty() || round.top_sources.is_empty() {
                        entry.0 = sources;
                    }
                    if !ports.is_empty() || round.top_ports.is_empty() {
                        entry.1 = ports;
                    }
                }
            }
        }
    }

    /// Steps one namespace's detectors; logs and queues what changed.
    pub(super) fn step_attacks(
        &mut self,
        key: SeriesKey,
        now: u64,
        secs: f64,
        scope: Scope,
        events: &[(SubjectKey, u64)],
        params: &AttackParams,
    ) {
        let own_name = self.own_name.clone();
        let verdict_on = self.config.verdict.is_some();
        let Some(series) = self.series.get_mut(&key) else {
            return;
        };
        let refused = series.attacks.detector.refused_ports;
        let changes = series
            .attacks
            .detector
            .step(now, secs, scope, events, params);
        if refused == 0 && series.attacks.detector.refused_ports > 0 {
            let name = if key == SeriesKey::Own {
                own_name.as_str()
            } else {
                series.label.as_str()
            };
            warn!(
                "{name}: attacks on more than {} ports at once: further ports are watched only in the namespace's total",
                crate::analysis::attack::detector::MAX_PORT_SUBJECTS
            );
        }
        let label = (key != SeriesKey::Own).then(|| series.label.clone());
        let name = label.clone().unwrap_or(own_name);
        for (subject, change) in changes {
            let (phase, active) = match change {
                Change::Started => {
                    let Some(active) = series
                        .attacks
                        .detector
                        .subjects
                        .get(&subject)
                        .and_then(|s| s.active.clone())
                    else {
                        continue;
                    };
                    (AttackPhase::Start, active)
                }
                Change::Ended(active) => (AttackPhase::End, active),
            };
            let doc = document(
                label.as_deref(),
                subject,
                phase,
                &active,
                now,
                &series.attacks,
                series.verdict.state(),
                verdict_on,
            );
            if phase == AttackPhase::Start {
                self.new_starts.push((self.attack_events.len(), key));
            }
            log_change(&name, &doc);
            self.attack_events.push(doc);
            self.attack_state.mark_dirty();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn document(
    label: Option<&str>,
    key: SubjectKey,
    phase: AttackPhase,
    active: &Active,
    now: u64,
    attacks: &SeriesAttacks,
    defense: crate::analysis::verdict::DefenseState,
    verdict_on: bool,
) -> AttackEvent {
    let (top_sources, top_ports) = attacks.tops.get(&key.kind).cloned().unwrap_or_default();
    let end_ns = (phase == AttackPhase::End).then(|| active.below_since_ns.unwrap_or(now));
    AttackEvent {
        id: AttackEvent::make_id(label, key.kind, key.port, active.start_ns),
        netns: label.map(str::to_string),
        kind: key.kind,
        port: key.port,
        phase,
        start_ns: active.start_ns,
        timestamp_ns: now,
        end_ns,
        rate: active.rate,
        baseline: active.baseline,
        threshold: active.threshold,
        peak_rate: active.peak_rate,
        events: active.events,
        top_sources,
        top_ports,
        defense: verdict_on.then(|| defense.name()),
    }
}

/// One line at an attack's start and one at its end, with the summary.
fn log_change(name: &str, e: &AttackEvent) {
    let port = e.port.map_or_else(String::new, |p| format!(" port {p}"));
    let sources = e
        .top_sources
        .iter()
        .take(3)
        .map(|s| format!("{} ({})", s.source, s.events))
        .collect::<Vec<_>>()
        .join(", ");
    let sources = if sources.is_empty() {
        String::new()
    } else {
        format!("; top sources {sources}")
    };
    match e.phase {
        AttackPhase::Start => info!(
            "{name}: attack started: {}{port} at {:.0}/s (threshold {:.0}/s, baseline {:.0}/s){sources}",
            e.kind.name(),
            e.rate,
            e.threshold,
            e.baseline
        ),
        AttackPhase::End => info!(
            "{name}: attack ended: {}{port} after {:.1}s, {} events, peak {:.0}/s{sources}",
            e.kind.name(),
            e.duration_secs(),
            e.events,
            e.peak_rate
        ),
        AttackPhase::Ongoing => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::stack::tests::sampler_with;
    use super::*;

    const SYNPROXY_HEADER: &str =
        "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n";

    fn write(root: &std::path::Path, syn: u32) {
        let path = root.join("net/stat/synproxy");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            path,
            format!("{SYNPROXY_HEADER}00000000 {syn:08x} 00000000 00000000 00000000 00000000\n"),
        )
        .unwrap();
    }

    /// The /proc path from the file to the events: a namespace flooded
    /// between two rounds starts an attack (queued for the sinks, logged),
    /// the round carries it as ongoing, the state file keeps it.
    #[test]
    fn a_round_with_a_flood_starts_an_attack_and_the_state_file_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("proc");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let config = AttackConfig {
            params: AttackParams {
                warmup_secs: 0.0,
                ..AttackParams::default()
            },
            state_dir: Some(state.clone()),
        };
        let mut s = sampler_with(&root, StackSources::default(), None);
        s.config.attacks = Some(config.clone());
        s.attack_state =
            super::super::attack_state::AttackState::load(Some(&state), &AttackParams::default());
        write(&root, 0);
        assert!(s.sample().attacks.is_empty());
        // Ten million SYNs since: far above the floor whatever the round's length.
        write(&root, 10_000_000);
        let round = s.sample();
        let events = s.take_attack_events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].phase, AttackPhase::Start);
        assert_eq!(events[0].kind, AttackKind::SynFlood);
        assert_eq!(events[0].port, None);
        assert_eq!(round.attacks.len(), 1);
        assert_eq!(round.attacks[0].id, events[0].id);
        assert_eq!(round.attacks[0].phase, AttackPhase::Ongoing);
        // At shutdown the state is written; a new sampler goes on with it.
        s.shutdown();
        let mut again = sampler_with(&root, StackSources::default(), None);
        again.config.attacks = Some(config);
        again.attack_state =
            super::super::attack_state::AttackState::load(Some(&state), &AttackParams::default());
        write(&root, 20_000_000);
        let round = again.sample();
        assert_eq!(round.attacks.len(), 1);
        assert_eq!(round.attacks[0].id, events[0].id);
        assert!(again.take_attack_events().is_empty(), "no second start");
    }
}
