//! The Defense panel: the selected namespace's verdict (docs/verdict.md),
//! since when, and every reason, one per line.

use super::model::{Model, NamespaceView};
use crate::analysis::verdict::DefenseState;

/// The panel's title and lines, or `None` when the round had no verdict for
/// the namespace (verdict off, or not read this round).
pub fn defense_lines(model: &Model, view: &NamespaceView) -> Option<(String, Vec<String>)> {
    let snap = model.last.as_ref()?;
    let sample = snap.defense.iter().find(|d| d.series == view.series)?;
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
    Some((title, lines))
}
