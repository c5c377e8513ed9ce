//! The terminal view: formatting helpers, and whole screens drawn on ratatui's TestBackend at several sizes.

use super::super::model::tests::{snapshot, totals};
use super::super::ui::Action;
use super::*;
use crate::reconcile::ebpf_vs_proc::Status as Reconcile;
use crate::sample::TopSource;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn screen(model: &Model, ui: &UiState, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| {
        render(
            f,
            model,
            ui,
            &Status {
                last_log: Some("INFO  SIGTERM, exiting".into()),
            },
        )
    })
    .unwrap();
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn two_rounds() -> Model {
    let t0 = Instant::now();
    let mut m = Model::new(Duration::from_secs(1));
    m.ingest(
        Arc::new(snapshot(&[
            (1, Some("edge"), totals(1000, 10)),
            (2, Some("core"), totals(0, 0)),
        ])),
        t0,
    );
    m.ingest(
        Arc::new(snapshot(&[
            (1, Some("edge"), totals(1200, 14)),
            (2, Some("core"), totals(3, 0)),
        ])),
        t0 + Duration::from_secs(1),
    );
    m
}

#[test]
fn rates_format() {
    assert_eq!(fmt_rate(None), "-");
    assert_eq!(fmt_rate(Some(f64::NAN)), "-");
    assert_eq!(fmt_rate(Some(0.0)), "0.0");
    assert_eq!(fmt_rate(Some(99.94)), "99.9");
    assert_eq!(fmt_rate(Some(200.4)), "200");
    assert_eq!(fmt_rate(Some(123_456.0)), "123.5k");
    assert_eq!(fmt_rate(Some(2.5e9)), "2500.0M");
}

#[test]
fn sparklines() {
    assert_eq!(sparkline(&[], 4), "    ");
    assert_eq!(sparkline(&[0.0, 1.0, 4.0, 8.0], 4), " ▁▄█");
    // Only the newest points that fit; scaled to those.
    assert_eq!(sparkline(&[100.0, 1.0, 2.0], 2), "▄█");
    assert_eq!(sparkline(&[5.0], 0), "");
}

#[test]
fn full_screen_shows_namespace_rates_and_ebpf_off() {
    let m = two_rounds();
    let ui = UiState::default();
    let s = screen(&m, &ui, 120, 40);
    assert!(s.contains("2 namespaces | eBPF off"), "{s}");
    // Sorted by name: core first and selected.
    assert!(s.contains("> core"), "{s}");
    let mut ui = ui;
    ui.apply(Action::NextNamespace, &m);
    let s = screen(&m, &ui, 120, 40);
    assert!(s.contains(" edge: rates from /proc over 1.00 s "), "{s}");
    let syn = s
        .lines()
        .find(|l| l.contains("syn_received   "))
        .unwrap_or_default();
    assert!(syn.contains("200"), "{syn}");
    assert!(syn.contains("1200"), "{syn}");
    assert!(s.contains("eBPF off: --no-ebpf"), "{s}");
    assert!(
        s.contains("no per-source counts: per-source counting needs eBPF"),
        "{s}"
    );
    assert!(s.contains("q: quit"), "{s}");
    assert!(s.contains("INFO  SIGTERM, exiting"), "{s}");
}

#[test]
fn ebpf_split_peak_and_reconcile() {
    let mut m = two_rounds();
    let mut snap = (**m.last.as_ref().unwrap()).clone();
    snap.agent.ebpf_off = None;
    snap.agent.ebpf_enabled = true;
    snap.agent.ebpf_attached = true;
    let fam = |family, syn, peak| EbpfSample {
        netns: Some("edge".into()),
        family,
        events: [syn, 0, 0, 0, 0],
        peak_rates: [peak, 0.0, 0.0, 0.0, 0.0],
        status: Reconcile::Exact,
        timestamp_ns: 1,
    };
    snap.namespaces[0].sample.totals = totals(1500, 14);
    snap.namespaces[0].ebpf = Some([fam("ipv4", 250, 900.0), fam("ipv6", 50, 120.0)]);
    let at = Instant::now() + Duration::from_secs(3);
    m.ingest(Arc::new(snap.clone()), at);
    m.ingest(Arc::new(snap), at + Duration::from_secs(1));
    let ui = UiState {
        selected: Some(1),
        ..UiState::default()
    };
    let s = screen(&m, &ui, 120, 40);
    let v4 = s.lines().find(|l| l.contains("ipv4")).unwrap_or_default();
    assert!(v4.contains("250/s") && v4.contains("exact"), "{s}");
    let v6 = s.lines().find(|l| l.contains("ipv6")).unwrap_or_default();
    assert!(v6.contains("50.0/s"), "{s}");
    let syn = s
        .lines()
        .find(|l| l.contains("syn_received   "))
        .unwrap_or_default();
    assert!(syn.contains("900"), "peak: {syn}");
    assert!(s.contains("eBPF on"), "{s}");
}

#[test]
fn probes_waiting_for_the_module() {
    let mut m = Model::new(Duration::from_secs(1));
    let mut snap = snapshot(&[(1, Some("edge"), totals(0, 0))]);
    snap.agent.ebpf_off = None;
    snap.agent.ebpf_enabled = true;
    m.ingest(Arc::new(snap), Instant::now());
    let s = screen(&m, &UiState::default(), 120, 40);
    assert!(s.contains("probes not attached"), "{s}");
}

#[test]
fn top_sources_merge_families_and_sort() {
    let tops = vec![
        TopSources {
            netns: Some("edge".into()),
            family: "ipv4",
            counter: Counter::SynReceived,
            interval_events: 90,
            entries: vec![
                TopSource {
                    source: "203.0.113.0/24".into(),
                    events: 60,
                    share: 60.0 / 90.0,
                },
                TopSource {
                    source: "198.51.100.7".into(),
                    events: 30,
                    share: 30.0 / 90.0,
                },
            ],
        },
        TopSources {
            netns: Some("edge".into()),
            family: "ipv6",
            counter: Counter::SynReceived,
            interval_events: 10,
            entries: vec![TopSource {
                source: "2001:db8::1".into(),
                events: 10,
                share: 1.0,
            }],
        },
        TopSources {
            netns: Some("other".into()),
            family: "ipv4",
            counter: Counter::SynReceived,
            interval_events: 5,
            entries: vec![TopSource {
                source: "192.0.2.1".into(),
                events: 5,
                share: 1.0,
            }],
        },
    ];
    let rows = source_rows(
        &tops,
        Some("edge"),
        Counter::SynReceived,
        SourceOrder::Events,
    )
    .unwrap();
    let got: Vec<(&str, u64)> = rows.iter().map(|r| (r.source.as_str(), r.events)).collect();
    assert_eq!(
        got,
        [
            ("203.0.113.0/24", 60),
            ("198.51.100.7", 30),
            ("2001:db8::1", 10)
        ]
    );
    assert!((rows[0].share - 0.6).abs() < 1e-9);
    let rows = source_rows(
        &tops,
        Some("edge"),
        Counter::SynReceived,
        SourceOrder::Address,
    )
    .unwrap();
    assert_eq!(rows[0].source, "198.51.100.7");
    assert_eq!(
        source_rows(
            &tops,
            Some("edge"),
            Counter::CookieValid,
            SourceOrder::Events
        ),
        Some(Vec::new())
    );
    assert_eq!(
        source_rows(&[], None, Counter::SynReceived, SourceOrder::Events),
        None
    );

    let mut m = two_rounds();
    let mut snap = (**m.last.as_ref().unwrap()).clone();
    snap.top_sources = tops;
    m.ingest(Arc::new(snap), Instant::now() + Duration::from_secs(2));
    let mut ui = UiState {
        selected: Some(1),
        ..UiState::default()
    };
    let s = screen(&m, &ui, 120, 40);
    let first = s
        .lines()
        .find(|l| l.contains("203.0.113.0/24"))
        .unwrap_or_default();
    assert!(first.contains("   1  ") && first.contains("60.0%"), "{s}");
    ui.apply(Action::NextSourceCounter, &m);
    let s = screen(&m, &ui, 120, 40);
    assert!(s.contains("no sources of cookie_invalid"), "{s}");
}

#[test]
fn any_size_renders_without_panicking() {
    let m = two_rounds();
    let mut ui = UiState::default();
    ui.apply(Action::TogglePause, &m);
    for w in (0..=140).step_by(7).chain([39, 40, 41]) {
        for h in 0..=45 {
            let s = screen(&m, &ui, w, h);
            if w >= MIN_WIDTH && h >= MIN_HEIGHT {
                assert!(s.contains("syn_received"), "{w}x{h}:\n{s}");
                assert!(s.contains("q: quit") || w < 110, "{w}x{h}:\n{s}");
            }
        }
    }
    let s = screen(&m, &ui, 30, 5);
    assert!(s.contains("too small"), "{s}");
    // Before any round.
    let empty = Model::new(Duration::from_millis(500));
    let s = screen(&empty, &UiState::default(), 100, 20);
    assert!(s.contains("every 500ms | starting"), "{s}");
}

#[test]
fn small_heights_drop_panels_in_order() {
    let m = two_rounds();
    let ui = UiState::default();
    // 10 lines: header, counters, help only.
    let s = screen(&m, &ui, 120, 10);
    assert!(!s.contains("Namespaces") && !s.contains("eBPF off:"), "{s}");
    // 14: the eBPF panel (2 lines and borders) comes back first.
    let s = screen(&m, &ui, 120, 14);
    assert!(s.contains("eBPF off:") && !s.contains("Namespaces"), "{s}");
    // Then the status line, then the namespaces (2 + header + borders).
    let s = screen(&m, &ui, 120, 20);
    assert!(
        s.contains("SIGTERM, exiting") && s.contains("Namespaces"),
        "{s}"
    );
    assert!(!s.contains("Top sources"), "{s}");
    let s = screen(&m, &ui, 120, 24);
    assert!(s.contains("Top sources"), "{s}");
}

#[test]
fn the_defense_panel_shows_the_selected_namespaces_verdict() {
    use crate::analysis::verdict::{DefenseState, Reason, Signal, Verdict};
    use crate::sample::DefenseSample;
    let mut m = two_rounds();
    let mut snap = snapshot(&[
        (1, Some("edge"), totals(5200, 14)),
        (2, Some("core"), totals(3, 0)),
    ]);
    let verdict = |state, reasons: Vec<Reason>| Verdict {
        state,
        reasons,
        since_ns: 3_600_000_000_000 + 62_000_000_000,
        changed_from: None,
    };
    snap.defense = vec![
        DefenseSample {
            series: 1,
            netns: Some("edge".into()),
            verdict: verdict(
                DefenseState::SynFloodAbsorbed,
                vec![Reason {
                    signal: Signal::SynReceived,
                    rate: 4000.0,
                    threshold: 50.0,
                    baseline: 0.2,
                }],
            ),
        },
        DefenseSample {
            series: 2,
            netns: Some("core".into()),
            verdict: verdict(DefenseState::Calm, Vec::new()),
        },
    ];
    let mut attack = crate::analysis::attack::event::tests::sample_event(
        crate::analysis::attack::AttackPhase::Ongoing,
    );
    attack.start_ns = 3_600_000_000_000 + 62_000_000_000;
    snap.attacks = vec![attack];
    m.ingest(Arc::new(snap), Instant::now());
    let mut ui = UiState::default();
    // core (sorted first) is calm.
    let s = screen(&m, &ui, 120, 40);
    assert!(s.contains(" Defense: calm since 01:01:02 UTC "), "{s}");
    assert!(s.contains("nothing fires"), "{s}");
    ui.apply(Action::NextNamespace, &m);
    let s = screen(&m, &ui, 120, 40);
    assert!(
        s.contains(" Defense: syn_flood_absorbed since 01:01:02 UTC "),
        "{s}"
    );
    assert!(
        s.contains("syn_received 4000.0/s >= 50.0/s (baseline 0.2/s)"),
        "{s}"
    );
    assert!(
        s.contains("attack syn_flood port 443 since 01:01:02 UTC: 5000/s, peak 6000/s, 12000 events, top 203.0.113.7"),
        "{s}"
    );
    // Without a verdict (verdict off): no panel.
    let s = screen(&two_rounds(), &UiState::default(), 120, 40);
    assert!(!s.contains("Defense"), "{s}");
}

#[test]
fn the_top_ports_panel_shows_the_selected_namespaces_ports() {
    use crate::sample::{ProbesSample, SourceMapStats, TopPort, TopPorts};
    let mut m = two_rounds();
    let mut snap = snapshot(&[
        (1, Some("edge"), totals(1400, 20)),
        (2, Some("core"), totals(3, 0)),
    ]);
    snap.probes = Some(ProbesSample {
        attached: true,
        probe_type: "kprobe",
        probe_misses: 0,
        recursion_misses: 0,
        program_recursion: Vec::new(),
        map_bytes: 0,
        probes: Vec::new(),
        diag: Default::default(),
        sources: None,
        ports: Some(SourceMapStats {
            entries: 2,
            capacity: 4096,
            evictions: 0,
            insert_failures: 0,
            map_bytes: 0,
        }),
        timestamp_ns: 0,
    });
    snap.top_ports = vec![TopPorts {
        netns: Some("edge".into()),
        counter: Counter::SynReceived,
        interval_events: 200,
        entries: vec![
            TopPort {
                port: 8443,
                events: 150,
                share: 0.75,
            },
            TopPort {
                port: 22,
                events: 50,
                share: 0.25,
            },
        ],
    }];
    m.ingest(Arc::new(snap.clone()), Instant::now());
    let mut ui = UiState {
        selected: Some(1),
        ..UiState::default()
    };
    let s = screen(&m, &ui, 120, 40);
    assert!(s.contains(" Top ports: syn_received "), "{s}");
    let first = s.lines().find(|l| l.contains("8443")).unwrap_or_default();
    assert!(first.contains("   1  ") && first.contains("75.0%"), "{s}");
    let second = s.lines().find(|l| l.contains(" 22 ")).unwrap_or_default();
    assert!(second.contains("   2  ") && second.contains("25.0%"), "{s}");
    // Every height draws; a short screen gives the panel up first.
    for h in 0..=40 {
        let s = screen(&m, &ui, 120, h);
        if s.contains("Top ports") {
            assert!(s.contains("Top sources"), "{h}:\n{s}");
        }
    }
    // Another counter: no ports of it.
    ui.apply(Action::NextSourceCounter, &m);
    let s = screen(&m, &ui, 120, 40);
    assert!(
        s.contains("no ports of cookie_invalid in this namespace"),
        "{s}"
    );
    // Without per-port counting: no panel.
    snap.probes = None;
    m.ingest(Arc::new(snap), Instant::now() + Duration::from_secs(1));
    let s = screen(&m, &ui, 120, 40);
    assert!(!s.contains("Top ports"), "{s}");
}
