//! The Defense panel: the selected namespace's verdict (docs/verdict.md),
//! since when, and every reason, one per line; then its attacks in progress
//! (docs/attacks.md), one per line.

use super::model::{Model, NamespaceView};
use crate::analysis::verdict::DefenseState;

/// The panel's title and lines, or `None` when the round had no verdict for
/// the namespace (verdict off, or not read this round).
pub fn defense_lines(model: &Model, view: &NamespaceView) -> Option<(String, Vec<String>)> {
    let snap = model.last.as_ref()?;
    let sample = snap.defense.iter().find(|d| d.series == view.series)?;
    let attacks: Vec<String> = snap
        .attacks
        .iter()
        .filter(|a| a.netns == sample.netns)
        .map(attack_line)
        .collect();
    let v = &sample.verdict;
    let since = super::view::clock(v.since_ns);
    let title = format!(" Defense: {} since {since} ", v.state.name());
    let mut lines: Vec<String> = v.reasons.iter().map(|r| r.to_string()).collect();
    if lines.is_empty() {
        lines.push(
            match v.state {
                DefenseState::Learning => {
                    "learning this namespace's normal rates (--verdict-warmup)"
                }
                _ => "nothing fires: SYNPROXY, the TCP stack and conntrack are quiet",
            }
            .to_string(),
        );
    }
    lines.extend(attacks);
    Some((title, lines))
}

/// `attack syn_flood port 443 since 10:20:48 UTC: 5200/s, peak 6100/s,
/// 12345 events, top 203.0.113.7`
fn attack_line(a: &crate::analysis::attack::AttackEvent) -> String {
    let top = a
        .top_sources
        .first()
        .map_or_else(String::new, |s| format!(", top {}", s.source));
    format!(
        "attack {} port {} since {}: {:.0}/s, peak {:.0}/s, {} events{top}",
        a.kind.name(),
        a.port_tag(),
        super::view::clock(a.start_ns),
        a.rate,
        a.peak_rate,
        a.events
    )
}
