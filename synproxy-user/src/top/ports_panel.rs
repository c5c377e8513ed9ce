//! The Top ports panel: the selected namespace's destination ports of the
//! selected counter in the last interval (IPv4 and IPv6 summed), most events
//! first. Shown while the agent counts per port (eBPF, `--top-ports` > 0).

use super::model::{Model, NamespaceView};
use super::view::fmt_rate;
use synproxy_common::Counter;

/// The panel's title and lines, or `None` without per-port counting.
pub fn port_lines(
    model: &Model,
    view: &NamespaceView,
    counter: Counter,
) -> Option<(String, Vec<String>)> {
    let snap = model.last.as_ref()?;
    snap.probes.as_ref()?.ports?;
    let title = format!(" Top ports: {} ", counter.name());
    let list = snap
        .top_ports
        .iter()
        .find(|t| t.netns == view.netns && t.counter == counter);
    let Some(list) = list.filter(|l| !l.entries.is_empty()) else {
        let line = format!(
            "no ports of {} in this namespace this interval",
            counter.name()
        );
        return Some((title, vec![line]));
    };
    let mut lines = vec![format!(
        "{:>4}  {:<8}{:>12}{:>12}{:>8}",
        "rank", "port", "events", "rate/s", "share"
    )];
    for (i, e) in list.entries.iter().enumerate() {
        let rate = view
            .elapsed
            .map(|d| e.events as f64 / d.as_secs_f64().max(1e-9));
        lines.push(format!(
            "{:>4}  {:<8}{:>12}{:>12}{:>7.1}%",
            i + 1,
            e.port,
            e.events,
            fmt_rate(rate),
            e.share * 100.0
        ));
    }
    Some((title, lines))
}
