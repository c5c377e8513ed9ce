//! Golden files: one fixed [`Snapshot`] rendered by every output, compared
//! byte for byte with the files in `synproxy-user/tests/golden/`. A change
//! to any output shows up here as a diff to review. After an intended change:
//! `UPDATE_GOLDEN=1 cargo test -p synproxy-user golden` rewrites the files.

use super::line_protocol::{IntegerType, LineEncoder};
use super::prometheus::tests::promtool_check;
use super::prometheus::{render, Format, Published, TopSeries};
use crate::analysis::attack::{AttackEvent, AttackKind, AttackPhase, EventPort, EventSource};
use crate::analysis::verdict::{DefenseState, Reason, Signal, Verdict};
use crate::fields::{Field, Values, FIELD_COUNT};
use crate::reconcile::ebpf_vs_proc::Status;
use crate::sample::{
    AgentHealth, EbpfSample, InfluxHealth, NamespaceSnapshot, ProbesSample, ProgramRuns,
    RetainedNamespace, Sample, SeriesId, Snapshot, SourceMapStats, TopSource, TopSources,
};
use crate::sample::{ConntrackSample, DefenseSample, StackSample};
use crate::sources::ebpf::kprobe_events::ProbeStats;
use crate::sources::proc::conntrack_stat::COLUMNS;
use crate::sources::proc::tcp_counters::{StackField, NETSTAT_FIELDS, SNMP_FIELDS};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use synproxy_common::{Counter, COUNTER_COUNT};

/// The round's time: 2026-11-28 10:20:50.765150438 UTC.
const TS: u64 = 1_795_873_250_765_150_438;

/// The label of the namespace file named `odd ns,x=1"\` + 0xff + `\n`: its
/// space, comma, equals sign and quote kept, the backslash, the byte that
/// is not UTF-8 and the newline written `\xHH` (as `netns_label::encode`
/// writes them), so both outputs have their escaping to do.
const ODD_LABEL: &str = r#"odd ns,x=1"\x5c\xff\x0a"#;

/// `/proc` totals: `base` + 1, 2, 3... per field, so each field differs.
fn totals(base: u64) -> Values<u64> {
    let mut t = [0; FIELD_COUNT];
    for (i, field) in Field::ALL.into_iter().enumerate() {
        t[field.index()] = base + i as u64 + 1;
    }
    t
}

fn ebpf(netns: Option<&str>, base: u64, status: Status) -> [EbpfSample; 2] {
    std::array::from_fn(|f| {
        let events: [u64; COUNTER_COUNT] =
            std::array::from_fn(|c| base * (f as u64 + 1) + c as u64);
        EbpfSample {
            netns: netns.map(str::to_string),
            family: ["ipv4", "ipv6"][f],
            events,
            // Peaks with a fraction, and one that is not finite (shown as 0).
            peak_rates: std::array::from_fn(|c| match (f, c) {
                (1, 4) => f64::NAN,
                _ => events[c] as f64 * 12.5,
            }),
            status,
            timestamp_ns: TS,
        }
    })
}

fn namespace(
    series: SeriesId,
    netns: Option<&str>,
    base: u64,
    status: Status,
) -> NamespaceSnapshot {
    NamespaceSnapshot {
        series,
        sample: Sample {
            netns: netns.map(str::to_string),
            totals: totals(base),
            timestamp_ns: TS,
        },
        ebpf: Some(ebpf(netns, base / 10, status)),
    }
}

fn top(
    netns: Option<&str>,
    family: &'static str,
    counter: Counter,
    list: &[(&str, u64)],
) -> TopSources {
    let interval_events = list.iter().map(|(_, n)| n).sum::<u64>() + 5;
    TopSources {
        netns: netns.map(str::to_string),
        family,
        counter,
        interval_events,
        entries: list
            .iter()
            .map(|(source, events)| TopSource {
                source: (*source).to_string(),
                events: *events,
                share: *events as f64 / interval_events as f64,
            })
            .collect(),
    }
}

/// Three namespaces read (the agent's own, `blue`, the odd name), one
/// retained, one that failed; eBPF with kprobes, per-source counting, the
/// InfluxDB writer's health.
fn golden_snapshot() -> Snapshot {
    Snapshot {
        timestamp_ns: TS,
        namespaces: vec![
            namespace(1, None, 1000, Status::Exact),
            namespace(2, Some("blue"), 2000, Status::Lagging),
            namespace(3, Some(ODD_LABEL), 300, Status::ProcOnly),
        ],
        retained: vec![RetainedNamespace {
            series: 4,
            netns: Some("gone".into()),
            totals: totals(40),
            missing_rounds: 2,
        }],
        failures: vec!["red: permission denied".into()],
        probes: Some(ProbesSample {
            attached: true,
            probe_type: "kprobe",
            probe_misses: 3,
            recursion_misses: 2,
            program_recursion: vec![("ack4", 2), ("synack4", 0)],
            map_bytes: 2_797_568,
            probes: vec![
                (
                    "synack4",
                    ProbeStats {
                        hits: 420,
                        missed: 0,
                    },
                ),
                (
                    "ack4_ret",
                    ProbeStats {
                        hits: 77,
                        missed: 3,
                    },
                ),
            ],
            diag: [1, 0, 4, 0],
            sources: Some(SourceMapStats {
                entries: 40,
                capacity: 65536,
                evictions: 7,
                insert_failures: 1,
                map_bytes: 6_291_456,
            }),
            ports: Some(SourceMapStats {
                entries: 6,
                capacity: 4096,
                evictions: 0,
                insert_failures: 0,
                map_bytes: 327_680,
            }),
            timestamp_ns: TS,
        }),
        agent: AgentHealth {
            round_duration: Duration::from_micros(1500),
            ebpf_enabled: true,
            ebpf_attached: true,
            ebpf_off: None,
            programs: vec![
                ProgramRuns {
                    program: "ack4",
                    run_time_ns: 2_500_000_000,
                    run_count: 7,
                },
                ProgramRuns {
                    program: "synack4",
                    run_time_ns: 125_000,
                    run_count: 420,
                },
            ],
            influx: Some(InfluxHealth {
                written_lines: 1200,
                buffered_lines: 14,
                dropped_lines: 2,
                rejected_lines: 1,
            }),
        },
        top_sources: vec![
            top(
                Some("blue"),
                "ipv4",
                Counter::SynReceived,
                &[("203.0.113.7", 300), ("198.51.100.0/24", 120)],
            ),
            top(
                Some(ODD_LABEL),
                "ipv6",
                Counter::CookieInvalid,
                &[("2001:db8::1", 9), ("2001:db8:1::/64", 4)],
            ),
        ],
        top_ports: vec![
            crate::sample::TopPorts {
                netns: Some("blue".into()),
                counter: Counter::SynReceived,
                interval_events: 600,
                entries: vec![
                    crate::sample::TopPort {
                        port: 443,
                        events: 450,
                        share: 0.75,
                    },
                    crate::sample::TopPort {
                        port: 80,
                        events: 150,
                        share: 0.25,
                    },
                ],
            },
            crate::sample::TopPorts {
                netns: Some(ODD_LABEL.into()),
                counter: Counter::CookieInvalid,
                interval_events: 9,
                entries: vec![crate::sample::TopPort {
                    port: 8080,
                    events: 9,
                    share: 1.0,
                }],
            },
        ],
        stack: vec![
            stack(None, 10, true),
            stack(Some("blue"), 20, true),
            // An older kernel's conntrack header, no count file (only the
            // statistics), and no /proc/net/snmp read.
            StackSample {
                snmp: None,
                conntrack: Some(ConntrackSample {
                    count: None,
                    max: Some(65_536),
                    stats: Some(vec![("entries", 3), ("searched", 17), ("drop", 2)]),
                }),
                ..stack(Some(ODD_LABEL), 30, false)
            },
        ],
        defense: vec![
            defense(1, None, calm()),
            // Two floods at once: the worse decides, both are reasons; it
            // began this round.
            defense(
                2,
                Some("blue"),
                Verdict {
                    state: DefenseState::BackendSaturated,
                    reasons: vec![
                        reason(Signal::ListenDrops, 12.0, 1.0, 0.0),
                        reason(Signal::SynReceived, 5200.0, 50.0, 3.1),
                    ],
                    since_ns: TS,
                    changed_from: Some(DefenseState::SynFloodAbsorbed),
                },
            ),
            defense(
                3,
                Some(ODD_LABEL),
                Verdict {
                    state: DefenseState::ConntrackExhausted,
                    reasons: vec![reason(Signal::ConntrackFull, 0.97, 0.95, 0.0)],
                    since_ns: TS - 30_000_000_000,
                    changed_from: None,
                },
            ),
        ],
        attacks: vec![
            attack(Some("blue"), AttackKind::SynFlood, Some(443)),
            attack(Some(ODD_LABEL), AttackKind::AckFlood, None),
        ],
    }
}

/// An attack in progress since 2.5 s before the round.
fn attack(netns: Option<&str>, kind: AttackKind, port: Option<u16>) -> AttackEvent {
    let start_ns = TS - 2_500_000_000;
    AttackEvent {
        id: AttackEvent::make_id(netns, kind, port, start_ns),
        netns: netns.map(str::to_string),
        kind,
        port,
        phase: AttackPhase::Ongoing,
        start_ns,
        timestamp_ns: TS,
        end_ns: None,
        rate: 5200.5,
        baseline: 20.25,
        threshold: 100.0,
        peak_rate: 6100.0,
        events: 12_345,
        top_sources: vec![
            EventSource {
                source: "203.0.113.7".into(),
                events: 9000,
            },
            EventSource {
                source: "2001:db8::/64".into(),
                events: 3000,
            },
        ],
        top_ports: port
            .map(|p| EventPort {
                port: p,
                events: 12_345,
            })
            .into_iter()
            .collect(),
        defense: Some("syn_flood_absorbed"),
    }
}

/// The stack sources of one namespace: each counter `base` + its position;
/// with `all`, every field the agent reports (else the first netstat ones).
fn stack(netns: Option<&str>, base: u64, all: bool) -> StackSample {
    let fields = |list: &'static [StackField]| -> Vec<(&'static StackField, u64)> {
        let n = if all { list.len() } else { 3 };
        list.iter()
            .take(n)
            .enumerate()
            .map(|(i, f)| (f, base * 100 + i as u64))
            .collect()
    };
    StackSample {
        netns: netns.map(str::to_string),
        netstat: Some(fields(&NETSTAT_FIELDS)),
        snmp: Some(fields(&SNMP_FIELDS)),
        conntrack: Some(ConntrackSample {
            count: Some(base),
            max: Some(262_144),
            stats: Some(
                COLUMNS
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !matches!(**c, "searched" | "delete_list"))
                    .map(|(i, c)| (*c, if i == 0 { base } else { base * 1000 + i as u64 }))
                    .collect(),
            ),
        }),
    }
}

fn calm() -> Verdict {
    Verdict {
        state: DefenseState::Calm,
        reasons: Vec::new(),
        since_ns: TS - 600_000_000_000,
        changed_from: None,
    }
}

fn reason(signal: Signal, rate: f64, threshold: f64, baseline: f64) -> Reason {
    Reason {
        signal,
        rate,
        threshold,
        baseline,
    }
}

fn defense(series: SeriesId, netns: Option<&str>, verdict: Verdict) -> DefenseSample {
    DefenseSample {
        series,
        netns: netns.map(str::to_string),
        verdict,
    }
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// `actual` equals the golden file `name`, or (with `UPDATE_GOLDEN=1`)
/// becomes it.
fn assert_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (UPDATE_GOLDEN=1 cargo test -p synproxy-user golden writes it)",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let mut exp = expected.split_inclusive('\n');
    let mut act = actual.split_inclusive('\n');
    let mut line = 1;
    loop {
        match (exp.next(), act.next()) {
            (Some(e), Some(a)) if e == a => line += 1,
            (e, a) => panic!(
                "{} differs at line {line}:\n  golden: {:?}\n  now:    {:?}\n\
                 If the change is intended: UPDATE_GOLDEN=1 cargo test -p synproxy-user golden",
                path.display(),
                e.unwrap_or("(end of file)"),
                a.unwrap_or("(end of output)"),
            ),
        }
    }
}

fn published() -> Published {
    let mut published = Published {
        top_series: TopSeries::Address,
        ..Published::default()
    };
    published.add(&Arc::new(golden_snapshot()));
    published
}

#[test]
fn golden_prometheus_text() {
    let text = render(&published(), Format::Text).unwrap();
    assert_golden("metrics.txt", &text);
    promtool_check(&text);
}

#[test]
fn golden_openmetrics() {
    let text = render(&published(), Format::OpenMetrics).unwrap();
    assert_golden("metrics.openmetrics.txt", &text);
}

#[test]
fn golden_line_protocol() {
    let encoder = LineEncoder::new(&[("host".into(), "gw01".into())], IntegerType::Signed);
    let mut out = Vec::new();
    encoder.encode_round(&golden_snapshot(), &mut out);
    let text = String::from_utf8(out).unwrap();
    assert_golden("line-protocol.txt", &text);
}
