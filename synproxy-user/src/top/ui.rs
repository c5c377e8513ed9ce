//! The view's own state (selected namespace, orders, pause) and what each key
//! does to it. Pure: key events in, state changes out.

use super::model::{Model, NamespaceView};
use crate::sample::SeriesId;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::cmp::Ordering;
use synproxy_common::Counter;

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    NextNamespace,
    PrevNamespace,
    /// Cycle the order of the namespace list.
    SortNamespaces,
    /// Cycle the counter of the top-sources table.
    NextSourceCounter,
    /// Top sources by events or by address.
    SortSources,
    TogglePause,
}

/// The key's action, if any. Raw mode turns Ctrl-C into a key: it quits.
pub fn action(key: &KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return matches!(key.code, KeyCode::Char('c' | 'C')).then_some(Action::Quit);
    }
    Some(match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => Action::Quit,
        KeyCode::Tab | KeyCode::Down | KeyCode::Right | KeyCode::Char('j') => Action::NextNamespace,
        KeyCode::BackTab | KeyCode::Up | KeyCode::Left | KeyCode::Char('k') => {
            Action::PrevNamespace
        }
        KeyCode::Char('s') => Action::SortNamespaces,
        KeyCode::Char('c') => Action::NextSourceCounter,
        KeyCode::Char('o') => Action::SortSources,
        KeyCode::Char(' ' | 'p' | 'P') => Action::TogglePause,
        _ => return None,
    })
}

/// Order of the namespace list: by label, or by a counter's rate (busiest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceOrder {
    Label,
    Rate(Counter),
}

impl NamespaceOrder {
    const CYCLE: [NamespaceOrder; 4] = [
        NamespaceOrder::Label,
        NamespaceOrder::Rate(Counter::SynReceived),
        NamespaceOrder::Rate(Counter::CookieInvalid),
        NamespaceOrder::Rate(Counter::CookieValid),
    ];

    fn next(self) -> Self {
        let i = Self::CYCLE.iter().position(|o| *o == self).unwrap_or(0);
        Self::CYCLE[(i + 1) % Self::CYCLE.len()]
    }

    pub fn describe(self) -> String {
        match self {
            NamespaceOrder::Label => "name".into(),
            NamespaceOrder::Rate(c) => format!("{}/s", c.name()),
        }
    }
}

/// Order of the top-sources table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceOrder {
    Events,
    Address,
}

/// The counters per-source counting covers, in the order `c` cycles them.
pub const SOURCE_COUNTERS: [Counter; 3] = [
    Counter::SynReceived,
    Counter::CookieInvalid,
    Counter::CookieValid,
];

#[derive(Clone, Debug)]
pub struct UiState {
    /// Followed by series, so it survives relabelling and reordering.
    pub selected: Option<SeriesId>,
    pub order: NamespaceOrder,
    pub source_counter: Counter,
    pub source_order: SourceOrder,
    /// The model as it was when paused (rounds still arrive meanwhile).
    pub frozen: Option<Model>,
    pub quit: bool,
}

impl Default for UiState {
    fn default() -> Self {
        Self {
            selected: None,
            order: NamespaceOrder::Label,
            source_counter: Counter::SynReceived,
            source_order: SourceOrder::Events,
            frozen: None,
            quit: false,
        }
    }
}

/// The namespaces in display order.
pub fn ordered(model: &Model, order: NamespaceOrder) -> Vec<&NamespaceView> {
    let mut list: Vec<&NamespaceView> = model.namespaces.iter().collect();
    match order {
        NamespaceOrder::Label => list.sort_by(|a, b| a.label().cmp(b.label())),
        NamespaceOrder::Rate(c) => list.sort_by(|a, b| {
            let (ra, rb) = (a.rate(c).unwrap_or(-1.0), b.rate(c).unwrap_or(-1.0));
            rb.partial_cmp(&ra)
                .unwrap_or(Ordering::Equal)
                .then_with(|| a.label().cmp(b.label()))
        }),
    }
    list
}

impl UiState {
    /// The model to draw: the frozen one while paused.
    pub fn shown<'a>(&'a self, live: &'a Model) -> &'a Model {
        self.frozen.as_ref().unwrap_or(live)
    }

    /// The selected namespace in `model` (the first in order when the
    /// selection is gone or was never made).
    pub fn selected_in<'a>(&self, model: &'a Model) -> Option<&'a NamespaceView> {
        self.selected
            .and_then(|s| model.find(s))
            .or_else(|| ordered(model, self.order).first().copied())
    }

    pub fn apply(&mut self, action: Action, live: &Model) {
        match action {
            Action::Quit => self.quit = true,
            Action::NextNamespace => self.step(live, 1),
            Action::PrevNamespace => self.step(live, -1),
            Action::SortNamespaces => self.order = self.order.next(),
            Action::NextSourceCounter => {
                let i = SOURCE_COUNTERS
                    .iter()
                    .position(|c| *c == self.source_counter)
                    .map_or(0, |i| i + 1);
                self.source_counter = SOURCE_COUNTERS[i % SOURCE_COUNTERS.len()];
            }
            Action::SortSources => {
                self.source_order = match self.source_order {
                    SourceOrder::Events => SourceOrder::Address,
                    SourceOrder::Address => SourceOrder::Events,
                }
            }
            Action::TogglePause => {
                self.frozen = match self.frozen.take() {
                    Some(_) => None,
                    None => Some(live.clone()),
                }
            }
        }
    }

    fn step(&mut self, live: &Model, by: isize) {
        let model = self.shown(live);
        let list = ordered(model, self.order);
        if list.is_empty() {
            return;
        }
        let current = self
            .selected_in(model)
            .and_then(|v| list.iter().position(|x| x.series == v.series))
            .unwrap_or(0);
        let n = list.len() as isize;
        let next = (current as isize + by).rem_euclid(n) as usize;
        self.selected = Some(list[next].series);
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{snapshot, totals};
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys() {
        assert_eq!(action(&key(KeyCode::Char('q'))), Some(Action::Quit));
        assert_eq!(
            action(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(
            action(&key(KeyCode::Char('c'))),
            Some(Action::NextSourceCounter)
        );
        assert_eq!(action(&key(KeyCode::Tab)), Some(Action::NextNamespace));
        assert_eq!(action(&key(KeyCode::BackTab)), Some(Action::PrevNamespace));
        assert_eq!(action(&key(KeyCode::Char(' '))), Some(Action::TogglePause));
        assert_eq!(action(&key(KeyCode::Char('p'))), Some(Action::TogglePause));
        assert_eq!(action(&key(KeyCode::Char('x'))), None);
        let mut release = key(KeyCode::Char('q'));
        release.kind = KeyEventKind::Release;
        assert_eq!(action(&release), None);
    }

    fn model() -> Model {
        let t0 = Instant::now();
        let mut m = Model::new(Duration::from_secs(1));
        let ns = |a: u64, b: u64, c: u64| {
            snapshot(&[
                (1, Some("beta"), totals(a, 0)),
                (2, Some("alpha"), totals(b, 0)),
                (3, Some("gamma"), totals(c, 0)),
            ])
        };
        m.ingest(Arc::new(ns(0, 0, 0)), t0);
        m.ingest(Arc::new(ns(50, 10, 90)), t0 + Duration::from_secs(1));
        m
    }

    #[test]
    fn selection_follows_the_order_and_wraps() {
        let m = model();
        let mut ui = UiState::default();
        assert_eq!(ui.selected_in(&m).unwrap().label(), "alpha");
        ui.apply(Action::NextNamespace, &m);
        assert_eq!(ui.selected_in(&m).unwrap().label(), "beta");
        ui.apply(Action::PrevNamespace, &m);
        ui.apply(Action::PrevNamespace, &m);
        assert_eq!(ui.selected_in(&m).unwrap().label(), "gamma");
        // By syn_received rate: gamma 90, beta 50, alpha 10; the selection stays.
        ui.apply(Action::SortNamespaces, &m);
        let labels: Vec<&str> = ordered(&m, ui.order).iter().map(|v| v.label()).collect();
        assert_eq!(labels, ["gamma", "beta", "alpha"]);
        assert_eq!(ui.selected_in(&m).unwrap().label(), "gamma");
        ui.apply(Action::NextNamespace, &m);
        assert_eq!(ui.selected_in(&m).unwrap().label(), "beta");
        for _ in 0..3 {
            ui.apply(Action::SortNamespaces, &m);
        }
        assert_eq!(ui.order, NamespaceOrder::Label);
        // Nothing to select in an empty model: no panic.
        let empty = Model::new(Duration::from_secs(1));
        let mut ui = UiState::default();
        ui.apply(Action::NextNamespace, &empty);
        assert!(ui.selected_in(&empty).is_none());
    }

    #[test]
    fn pause_freezes_what_is_shown() {
        let mut live = model();
        let mut ui = UiState::default();
        ui.apply(Action::TogglePause, &live);
        live.ingest(
            Arc::new(snapshot(&[(1, Some("beta"), totals(1000, 0))])),
            Instant::now() + Duration::from_secs(5),
        );
        assert_eq!(ui.shown(&live).namespaces.len(), 3);
        ui.apply(Action::TogglePause, &live);
        assert_eq!(ui.shown(&live).namespaces.len(), 1);
    }

    #[test]
    fn source_counter_and_order_cycle() {
        let m = model();
        let mut ui = UiState::default();
        for want in [
            Counter::CookieInvalid,
            Counter::CookieValid,
            Counter::SynReceived,
        ] {
            ui.apply(Action::NextSourceCounter, &m);
            assert_eq!(ui.source_counter, want);
        }
        ui.apply(Action::SortSources, &m);
        assert_eq!(ui.source_order, SourceOrder::Address);
        ui.apply(Action::Quit, &m);
        assert!(ui.quit);
    }
}
