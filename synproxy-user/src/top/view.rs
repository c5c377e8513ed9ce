//! Drawing one frame from the model and the view's state. Pure: what each
//! panel says is computed here (and tested on ratatui's `TestBackend`); the
//! terminal only receives the frame.

use super::model::{Model, NamespaceView};
use super::ui::{ordered, SourceOrder, UiState};
use crate::sample::{EbpfSample, TopSources};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;
use synproxy_common::{Counter, COUNTER_COUNT};

/// Rows of the Top ports panel at most (the line protocol has them all).
const MAX_PORT_ROWS: usize = 5;

/// Below this the view shows only a note (never panics, never garbles).
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 10;

pub const HELP: &str =
    "Tab/Shift-Tab/arrows: namespace  s: sort namespaces  c: source counter  o: source order  space/p: pause  q: quit";

/// Extra facts beside the model: the log's last line.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Most recent log record, already one line (`WARN  ...`).
    pub last_log: Option<String>,
}

/// A rate as shown: `-` when unknown, one decimal below 100/s, then whole
/// numbers, then k and M.
pub fn fmt_rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".into(),
        Some(r) if !r.is_finite() || r < 0.0 => "-".into(),
        Some(r) if r < 100.0 => format!("{r:.1}"),
        Some(r) if r < 100_000.0 => format!("{r:.0}"),
        Some(r) if r < 100_000_000.0 => format!("{:.1}k", r / 1e3),
        Some(r) => format!("{:.1}M", r / 1e6),
    }
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The newest `width` points as bars scaled to their maximum, newest at the
/// right; zero is a blank, any non-zero rate at least the lowest bar.
pub fn sparkline(points: &[f32], width: usize) -> String {
    let shown = &points[points.len().saturating_sub(width)..];
    let max = shown.iter().copied().fold(0.0f32, f32::max);
    let mut out = String::with_capacity(width * 3);
    out.extend(std::iter::repeat_n(' ', width - shown.len()));
    for &p in shown {
        if p <= 0.0 || max <= 0.0 || !p.is_finite() {
            out.push(' ');
        } else {
            let level = ((p / max) * 8.0).ceil().clamp(1.0, 8.0) as usize;
            out.push(BARS[level - 1]);
        }
    }
    out
}

/// `HH:MM:SS UTC` of a snapshot's timestamp.
pub(super) fn clock(timestamp_ns: u64) -> String {
    let secs = timestamp_ns / 1_000_000_000 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn interval_text(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The title line.
pub fn header(model: &Model, paused: bool) -> String {
    let mut s = format!(
        "synproxy-agent top | every {}",
        interval_text(model.interval)
    );
    match &model.last {
        None => s.push_str(" | starting: waiting for the first round"),
        Some(snap) => {
            let n = model.namespaces.iter().filter(|v| v.present).count();
            s.push_str(&format!(
                " | {n} namespace{} | eBPF {} | {}",
                if n == 1 { "" } else { "s" },
                if snap.agent.ebpf_attached {
                    "on"
                } else {
                    "off"
                },
                clock(snap.timestamp_ns)
            ));
        }
    }
    if paused {
        s.push_str(" | PAUSED (space/p resumes)");
    }
    s
}

/// The counter panel's lines: one per counter with its rate, total, eBPF
/// peak rate and sparkline.
pub fn counter_lines(view: &NamespaceView, width: u16) -> Vec<String> {
    const FIXED: usize = 15 + 12 + 22 + 12 + 2;
    let spark_width = usize::from(width).saturating_sub(FIXED);
    let mut lines = vec![format!(
        "{:<15}{:>12}{:>22}{:>12}  {}",
        "counter",
        "rate/s",
        "total",
        "peak/s",
        if spark_width >= 12 { "last 5 min" } else { "" }
    )];
    for c in Counter::ALL {
        let points: Vec<f32> = view.history[c.index()].last(spark_width).collect();
        let peak = view.ebpf.as_ref().map(|fam| {
            fam.iter()
                .map(|e| e.peak_rates[c.index()])
                .fold(0.0, f64::max)
        });
        let total = view.totals[crate::fields::Field::Counter(c).index()];
        lines.push(format!(
            "{:<15}{:>12}{:>22}{:>12}  {}",
            c.name(),
            fmt_rate(view.rate(c)),
            total,
            fmt_rate(peak),
            sparkline(&points, spark_width)
        ));
    }
    lines
}

/// The eBPF panel: the IPv4/IPv6 split and reconcile status, or why there
/// is none.
pub fn ebpf_lines(model: &Model, view: &NamespaceView) -> Vec<String> {
    let Some(snap) = &model.last else {
        return vec!["eBPF: starting".into()];
    };
    if let Some(reason) = &snap.agent.ebpf_off {
        return vec![
            format!("eBPF off: {reason}"),
            "rates are from /proc only: no IPv4/IPv6 split, peak rates or reconcile status".into(),
        ];
    }
    if !snap.agent.ebpf_attached {
        return vec![
            "eBPF loaded, probes not attached: nf_synproxy_core not loaded yet, or attaching failed (see the log line below)".into(),
        ];
    }
    let Some(families) = &view.ebpf else {
        return vec!["eBPF: no counts for this namespace this round".into()];
    };
    let mut lines = vec![format!(
        "{:<8}{}  reconcile",
        "family",
        Counter::ALL
            .iter()
            .map(|c| format!("{:>16}", c.name()))
            .collect::<String>()
    )];
    for fam in families {
        lines.push(family_line(fam, view.elapsed));
    }
    lines
}

fn family_line(fam: &EbpfSample, elapsed: Option<std::time::Duration>) -> String {
    let rate = |i: usize| elapsed.map(|e| fam.events[i] as f64 / e.as_secs_f64().max(1e-9));
    let cells: String = (0..COUNTER_COUNT)
        .map(|i| format!("{:>16}", format!("{}/s", fmt_rate(rate(i)))))
        .collect();
    format!("{:<8}{cells}  {}", fam.family, fam.status.name())
}

/// One row of the top-sources table.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRow {
    pub source: String,
    pub family: &'static str,
    pub events: u64,
    /// Of both families' events of the counter in the interval.
    pub share: f64,
}

/// The selected namespace's top sources of `counter`, both families merged;
/// `None` when the round has no per-source counts at all (eBPF off, `--top 0`).
pub fn source_rows(
    top: &[TopSources],
    netns: Option<&str>,
    counter: Counter,
    order: SourceOrder,
) -> Option<Vec<SourceRow>> {
    if top.is_empty() {
        return None;
    }
    let mine: Vec<&TopSources> = top
        .iter()
        .filter(|t| t.netns.as_deref() == netns && t.counter == counter)
        .collect();
    let total: u64 = mine.iter().map(|t| t.interval_events).sum();
    let mut rows: Vec<SourceRow> = mine
        .iter()
        .flat_map(|t| {
            t.entries.iter().map(|e| SourceRow {
                source: e.source.clone(),
                family: t.family,
                events: e.events,
                share: if total == 0 {
                    0.0
                } else {
                    e.events as f64 / total as f64
                },
            })
        })
        .collect();
    match order {
        SourceOrder::Events => rows.sort_by(|a, b| {
            b.events
                .cmp(&a.events)
                .then_with(|| a.source.cmp(&b.source))
        }),
        SourceOrder::Address => rows.sort_by(|a, b| a.source.cmp(&b.source)),
    }
    Some(rows)
}

pub fn source_lines(model: &Model, ui: &UiState, view: &NamespaceView) -> Vec<String> {
    let top = model
        .last
        .as_ref()
        .map_or(&[][..], |s| s.top_sources.as_slice());
    let counter = ui.source_counter;
    match source_rows(top, view.netns.as_deref(), counter, ui.source_order) {
        None => {
            vec!["no per-source counts: per-source counting needs eBPF and --top above 0".into()]
        }
        Some(rows) if rows.is_empty() => vec![format!(
            "no sources of {} in this namespace this interval",
            counter.name()
        )],
        Some(rows) => {
            let mut lines = vec![format!(
                "{:>4}  {:<42}{:<7}{:>12}{:>12}{:>8}",
                "rank", "source", "family", "events", "rate/s", "share"
            )];
            for (i, r) in rows.iter().enumerate() {
                let rate = view
                    .elapsed
                    .map(|e| r.events as f64 / e.as_secs_f64().max(1e-9));
                lines.push(format!(
                    "{:>4}  {:<42}{:<7}{:>12}{:>12}{:>7.1}%",
                    i + 1,
                    r.source,
                    r.family,
                    r.events,
                    fmt_rate(rate),
                    r.share * 100.0
                ));
            }
            lines
        }
    }
}

/// The namespace list (marker, label, three rates), the selected one first
/// visible within `rows` lines.
pub fn namespace_lines(model: &Model, ui: &UiState, rows: usize) -> Vec<(String, bool)> {
    let list = ordered(model, ui.order);
    let selected = ui.selected_in(model).map(|v| v.series);
    let mut out = vec![(
        format!(
            "  {:<32}{:>18}{:>18}{:>18}  (order: {})",
            "namespace",
            "syn_received/s",
            "cookie_invalid/s",
            "cookie_valid/s",
            ui.order.describe()
        ),
        false,
    )];
    let body = rows.saturating_sub(1);
    let at = list
        .iter()
        .position(|v| Some(v.series) == selected)
        .unwrap_or(0);
    let first = at.saturating_sub(body.saturating_sub(1));
    for v in list.iter().skip(first).take(body) {
        let is = Some(v.series) == selected;
        let mut line = format!(
            "{} {:<32}{:>18}{:>18}{:>18}",
            if is { ">" } else { " " },
            v.label(),
            fmt_rate(v.rate(Counter::SynReceived)),
            fmt_rate(v.rate(Counter::CookieInvalid)),
            fmt_rate(v.rate(Counter::CookieValid)),
        );
        if !v.present {
            line.push_str("  (not found this round)");
        }
        out.push((line, is));
    }
    out
}

/// The line above the help: namespaces that failed, else the last log record.
pub fn status_line(model: &Model, status: &Status) -> String {
    if let Some(snap) = &model.last {
        if !snap.failures.is_empty() {
            return format!("not read this round: {}", snap.failures.join("; "));
        }
    }
    status.last_log.clone().unwrap_or_default()
}

fn panel<'a>(title: String, lines: Vec<Line<'a>>) -> Paragraph<'a> {
    Paragraph::new(lines).block(Block::bordered().title(title))
}

fn plain(lines: Vec<String>) -> Vec<Line<'static>> {
    lines.into_iter().map(Line::from).collect()
}

/// Draws the whole view into `frame`.
pub fn render(frame: &mut Frame, live: &Model, ui: &UiState, status: &Status) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let note = format!(
            "terminal too small ({}x{}); need {MIN_WIDTH}x{MIN_HEIGHT}. q quits",
            area.width, area.height
        );
        frame.render_widget(
            Paragraph::new(note).wrap(ratatui::widgets::Wrap { trim: true }),
            area,
        );
        return;
    }
    let model = ui.shown(live);
    let paused = ui.frozen.is_some();
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let selected = ui.selected_in(model);

    let ebpf = selected.map_or_else(|| vec![String::new()], |v| ebpf_lines(model, v));
    let sources = selected.map_or_else(Vec::new, |v| source_lines(model, ui, v));
    let defense = selected.and_then(|v| super::defense_panel::defense_lines(model, v));
    let ports = selected.and_then(|v| super::ports_panel::port_lines(model, v, ui.source_counter));
    let ns_rows = model.namespaces.len().clamp(1, 8) + 1;
    // Panels in the order they are given up when the height runs short.
    let fixed = 1 + 8 + 1; // header, counters, help
    let mut spare = area.height.saturating_sub(fixed);
    let mut take = |h: usize| {
        let h = u16::try_from(h).unwrap_or(u16::MAX);
        (spare >= h).then(|| spare -= h).is_some()
    };
    let ebpf_h = ebpf.len() + 2;
    let defense_h = defense.as_ref().map_or(0, |(_, l)| l.len().min(6) + 2);
    let show_defense = defense.is_some() && take(defense_h);
    let show_ebpf = take(ebpf_h);
    let show_status = take(1);
    let show_ns = take(ns_rows + 2);
    let show_sources = take(4);
    let ports_h = ports
        .as_ref()
        .map_or(0, |(_, l)| l.len().min(MAX_PORT_ROWS + 1) + 2);
    let show_ports = ports.is_some() && take(ports_h);

    let mut constraints = vec![Constraint::Length(1)];
    if show_ns {
        constraints.push(Constraint::Length(ns_rows as u16 + 2));
    }
    if show_defense {
        constraints.push(Constraint::Length(defense_h as u16));
    }
    constraints.push(Constraint::Length(8));
    if show_ebpf {
        constraints.push(Constraint::Length(ebpf_h as u16));
    }
    if show_ports {
        constraints.push(Constraint::Length(ports_h as u16));
    }
    if show_sources {
        constraints.push(Constraint::Min(4));
    } else {
        constraints.push(Constraint::Min(0));
    }
    if show_status {
        constraints.push(Constraint::Length(1));
    }
    constraints.push(Constraint::Length(1));
    let areas = Layout::vertical(constraints).split(area);
    let mut next = areas.iter().copied();
    let mut slot = || next.next().unwrap_or(Rect::ZERO);

    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(header(model, paused), bold))),
        slot(),
    );
    if show_ns {
        let lines = namespace_lines(model, ui, ns_rows)
            .into_iter()
            .map(|(text, is)| {
                if is {
                    Line::from(Span::styled(text, bold))
                } else {
                    Line::from(text)
                }
            })
            .collect();
        frame.render_widget(panel(" Namespaces ".into(), lines), slot());
    }
    if let Some((title, lines)) = defense.filter(|_| show_defense) {
        let lines: Vec<String> = lines.into_iter().take(4).collect();
        frame.render_widget(panel(title, plain(lines)), slot());
    }
    let counters = slot();
    match selected {
        Some(v) => {
            let title = match v.elapsed {
                Some(e) => format!(
                    " {}: rates from /proc over {:.2} s ",
                    v.label(),
                    e.as_secs_f64()
                ),
                None => format!(" {}: rates from /proc (after the second round) ", v.label()),
            };
            let lines = counter_lines(v, counters.width.saturating_sub(2));
            frame.render_widget(panel(title, plain(lines)), counters);
        }
        None => {
            let text = if model.last.is_some() {
                "no namespace read yet (see the line below)"
            } else {
                "waiting for the first round"
            };
            frame.render_widget(
                panel(" Counters ".into(), plain(vec![text.into()])),
                counters,
            );
        }
    }
    if show_ebpf {
        frame.render_widget(panel(" eBPF ".into(), plain(ebpf)), slot());
    }
    if let Some((title, lines)) = ports.filter(|_| show_ports) {
        let lines: Vec<String> = lines.into_iter().take(MAX_PORT_ROWS + 1).collect();
        frame.render_widget(panel(title, plain(lines)), slot());
    }
    let sources_area = slot();
    if show_sources {
        let order = match ui.source_order {
            SourceOrder::Events => "by events",
            SourceOrder::Address => "by source",
        };
        let title = format!(" Top sources: {}, {order} ", ui.source_counter.name());
        frame.render_widget(panel(title, plain(sources)), sources_area);
    }
    if show_status {
        frame.render_widget(Paragraph::new(status_line(model, status)), slot());
    }
    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(
            HELP,
            Style::default().add_modifier(Modifier::REVERSED),
        ))),
        slot(),
    );
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
