//! The exposition from synthetic snapshots, checked line by line (and by
//! `promtool check metrics` where it is installed), and the HTTP routes.

use super::exposition::*;
use super::routes::*;
use super::*;
use crate::fields::{Field, FIELD_COUNT};
use crate::reconcile::join::FAMILIES;
use crate::sample::InfluxHealth;
use crate::sample::{
    AgentHealth, EbpfSample, NamespaceSnapshot, ProbesSample, ProgramRuns, RetainedNamespace,
    Sample, TopSource, TopSources,
};
use crate::sources::ebpf::kprobe_events::ProbeStats;
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use std::time::Duration;
use synproxy_common::Counter;

fn totals(syn: u64, valid: u64) -> [u64; FIELD_COUNT] {
    let mut t = [0; FIELD_COUNT];
    t[Field::Counter(Counter::SynReceived).index()] = syn;
    t[Field::Counter(Counter::CookieValid).index()] = valid;
    t
}

fn ebpf(netns: Option<&str>, syn: [u64; 2], status: Status) -> [EbpfSample; 2] {
    std::array::from_fn(|f| {
        let mut events = [0; COUNTER_COUNT];
        events[Counter::SynReceived.index()] = syn[f];
        let mut peak_rates = [0.0; COUNTER_COUNT];
        peak_rates[Counter::SynReceived.index()] = syn[f] as f64 * 10.0;
        EbpfSample {
            netns: netns.map(str::to_string),
            family: FAMILIES[f],
            events,
            peak_rates,
            status,
            timestamp_ns: 1,
        }
    })
}

fn namespace(series: SeriesId, netns: Option<&str>, t: [u64; FIELD_COUNT]) -> NamespaceSnapshot {
    NamespaceSnapshot {
        series,
        sample: Sample {
            netns: netns.map(str::to_string),
            totals: t,
            timestamp_ns: 1_795_873_250_765_150_438,
        },
        ebpf: None,
    }
}

pub(super) fn snapshot(namespaces: Vec<NamespaceSnapshot>, probes: bool) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        timestamp_ns: 1_795_873_250_765_150_438,
        namespaces,
        retained: Vec::new(),
        failures: Vec::new(),
        probes: probes.then(|| ProbesSample {
            attached: true,
            probe_type: "kprobe",
            probe_misses: 2,
            recursion_misses: 1,
            program_recursion: vec![("ack4", 1), ("synack4", 0)],
            map_bytes: 2_797_568,
            probes: vec![
                (
                    "synack4",
                    ProbeStats {
                        hits: 20,
                        missed: 0,
                    },
                ),
                ("ack4_ret", ProbeStats { hits: 5, missed: 1 }),
            ],
            diag: [0, 1, 0, 0],
            sources: Some(crate::sample::SourceMapStats {
                entries: 40,
                capacity: 65536,
                evictions: 3,
                insert_failures: 0,
                map_bytes: 6_291_456,
            }),
            ports: Some(crate::sample::SourceMapStats {
                entries: 6,
                capacity: 4096,
                evictions: 1,
                insert_failures: 0,
                map_bytes: 327_680,
            }),
            timestamp_ns: 1,
        }),
        agent: AgentHealth {
            round_duration: Duration::from_micros(1500),
            ebpf_enabled: probes,
            ebpf_attached: probes,
            ebpf_off: (!probes).then(|| "--no-ebpf".into()),
            programs: if probes {
                vec![ProgramRuns {
                    program: "ack4",
                    run_time_ns: 2_500_000_000,
                    run_count: 7,
                }]
            } else {
                Vec::new()
            },
            influx: None,
        },
        top_sources: Vec::new(),
        top_ports: Vec::new(),
        stack: Vec::new(),
        defense: Vec::new(),
        attacks: Vec::new(),
    })
}

/// The sample lines of `text` (no comments), without the `# EOF`.
pub(super) fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

pub(super) fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// An eBPF round in two namespaces, the own-namespace label, and the
/// eBPF totals the sink adds up.
fn ebpf_published() -> Published {
    let mut published = Published::default();
    let mut blue = namespace(1, Some("blue"), totals(30, 4));
    blue.ebpf = Some(ebpf(Some("blue"), [20, 10], Status::Exact));
    let mut init = namespace(2, Some("init"), totals(0, 0));
    init.ebpf = Some(ebpf(Some("init"), [0, 0], Status::ProcOnly));
    published.add(&snapshot(vec![blue.clone(), init.clone()], true));
    blue.sample.totals = totals(45, 4);
    blue.ebpf = Some(ebpf(Some("blue"), [10, 5], Status::Exact));
    published.add(&snapshot(vec![blue, init], true));
    published
}

#[test]
fn proc_counters_carry_the_netns_label_and_no_entries() {
    let mut published = Published::default();
    published.add(&snapshot(vec![namespace(1, None, totals(10, 5))], false));
    let text = render(&published, Format::Text).unwrap();
    for line in [
        "# TYPE synproxy_syn_received_total counter",
        "synproxy_syn_received_total{netns=\"self\"} 10",
        "synproxy_cookie_valid_total{netns=\"self\"} 5",
        "synproxy_cookie_invalid_total{netns=\"self\"} 0",
        "synproxy_cookie_retrans_total{netns=\"self\"} 0",
        "synproxy_conn_reopened_total{netns=\"self\"} 0",
        "synproxy_agent_build_info{version=\"0.1.0\"} 1",
        "synproxy_agent_ebpf_attached 0",
        "synproxy_agent_ebpf_enabled 0",
        "synproxy_agent_rounds_total 1",
        "synproxy_agent_last_round_duration_seconds 0.0015",
        "synproxy_agent_namespaces{state=\"read\"} 1",
    ] {
        assert!(has(&text, line), "{line} missing in\n{text}");
    }
    assert!(!text.contains("entries"), "{text}");
    assert!(
        !text.contains("synproxy_ebpf"),
        "no eBPF series without eBPF:\n{text}"
    );
}

#[test]
fn influx_writer_health_only_with_the_writer() {
    let mut published = Published::default();
    published.add(&snapshot(vec![namespace(1, None, totals(10, 5))], false));
    let text = render(&published, Format::Text).unwrap();
    assert!(!text.contains("influx"), "{text}");

    let mut round = (*snapshot(vec![namespace(1, None, totals(10, 5))], false)).clone();
    round.agent.influx = Some(InfluxHealth {
        written_lines: 40,
        buffered_lines: 3,
        dropped_lines: 2,
        rejected_lines: 1,
    });
    published.add(&Arc::new(round));
    let text = render(&published, Format::Text).unwrap();
    for line in [
        "# TYPE synproxy_agent_influx_written_lines_total counter",
        "synproxy_agent_influx_written_lines_total 40",
        "synproxy_agent_influx_dropped_lines_total 2",
        "synproxy_agent_influx_rejected_lines_total 1",
        "# TYPE synproxy_agent_influx_buffered_lines gauge",
        "synproxy_agent_influx_buffered_lines 3",
    ] {
        assert!(has(&text, line), "{line} missing in\n{text}");
    }
    promtool_check(&text);
}

#[test]
fn ebpf_series_from_a_synthetic_snapshot() {
    let published = ebpf_published();
    let text = render(&published, Format::Text).unwrap();
    for line in [
        "synproxy_syn_received_total{netns=\"blue\"} 45",
        "synproxy_ebpf_events_total{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\"} 30",
        "synproxy_ebpf_events_total{netns=\"blue\",family=\"ipv6\",counter=\"syn_received\"} 15",
        "synproxy_ebpf_events_total{netns=\"blue\",family=\"ipv4\",counter=\"cookie_valid\"} 0",
        "synproxy_ebpf_peak_rate{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\"} 100.0",
        "synproxy_ebpf_peak_rate{netns=\"blue\",family=\"ipv6\",counter=\"syn_received\"} 50.0",
        "synproxy_ebpf_reconcile_status{netns=\"blue\",status=\"exact\"} 1",
        "synproxy_ebpf_reconcile_status{netns=\"blue\",status=\"proc-only\"} 0",
        "synproxy_ebpf_reconcile_status{netns=\"init\",status=\"proc-only\"} 1",
        "synproxy_ebpf_reconcile_rounds_total{netns=\"blue\",status=\"exact\"} 2",
        "synproxy_ebpf_reconcile_rounds_total{netns=\"init\",status=\"proc-only\"} 2",
        "synproxy_ebpf_probe_misses_total 4",
        "synproxy_ebpf_recursion_misses_total{program=\"ack4\"} 1",
        "synproxy_ebpf_kprobe_hits_total{probe=\"synack4\"} 20",
        "synproxy_ebpf_kprobe_missed_total{probe=\"ack4_ret\"} 1",
        "synproxy_ebpf_anomalies_total{kind=\"rate_late_events\"} 1",
        "synproxy_ebpf_map_memory_bytes 2797568",
        "synproxy_ebpf_source_map_entries 40",
        "synproxy_ebpf_source_map_capacity 65536",
        "synproxy_ebpf_source_evictions_total 3",
        "synproxy_ebpf_source_insert_failures_total 0",
        "synproxy_ebpf_source_map_memory_bytes 6291456",
        "synproxy_ebpf_program_run_time_seconds_total{program=\"ack4\"} 2.5",
        "synproxy_ebpf_program_runs_total{program=\"ack4\"} 7",
        "synproxy_agent_ebpf_attached 1",
    ] {
        assert!(has(&text, line), "{line} missing in\n{text}");
    }
    // Every family once, every series once.
    let mut series: Vec<&str> = samples(&text)
        .iter()
        .map(|l| l.rsplit_once(' ').map_or(*l, |(s, _)| s))
        .collect();
    let n = series.len();
    series.sort_unstable();
    series.dedup();
    assert_eq!(series.len(), n, "duplicate series in\n{text}");
    promtool_check(&text);
}

pub(super) fn top(netns: Option<&str>, sources: &[(&str, u64)]) -> TopSources {
    let total: u64 = sources.iter().map(|(_, e)| e).sum();
    TopSources {
        netns: netns.map(str::to_string),
        family: "ipv4",
        counter: Counter::SynReceived,
        interval_events: total,
        entries: sources
            .iter()
            .map(|(source, events)| TopSource {
                source: (*source).to_string(),
                events: *events,
                share: *events as f64 / total as f64,
            })
            .collect(),
    }
}

pub(super) fn with_top(published: &mut Published, tops: Vec<TopSources>) {
    let mut ns = namespace(1, Some("blue"), totals(30, 4));
    ns.ebpf = Some(ebpf(Some("blue"), [20, 10], Status::Exact));
    let mut round = (*snapshot(vec![ns], true)).clone();
    round.top_sources = tops;
    published.add(&Arc::new(round));
}

#[test]
fn top_sources_are_a_bounded_gauge_of_the_last_round() {
    let mut published = Published {
        top_series: TopSeries::Address,
        ..Published::default()
    };
    let mut v6 = top(None, &[("2001:db8::/64", 5)]);
    v6.family = "ipv6";
    v6.counter = Counter::CookieInvalid;
    with_top(
        &mut published,
        vec![
            top(
                Some("blue"),
                &[("203.0.113.7", 30), ("198.51.100.0/24", 10)],
            ),
            v6,
        ],
    );
    let text = render(&published, Format::Text).unwrap();
    for line in [
        "# TYPE synproxy_top_source_events gauge",
        "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"203.0.113.7\"} 30",
        "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"198.51.100.0/24\"} 10",
        "synproxy_top_source_events{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",source=\"2001:db8::/64\"} 5",
        "# TYPE synproxy_top_source_share gauge",
        "synproxy_top_source_share{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"203.0.113.7\"} 0.75",
        "synproxy_top_source_share{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",source=\"2001:db8::/64\"} 1.0",
    ] {
        assert!(has(&text, line), "{line} missing in\n{text}");
    }
    promtool_check(&text);
    let text = render(&published, Format::OpenMetrics).unwrap();
    assert!(
        has(&text, "# TYPE synproxy_top_source_events gauge"),
        "{text}"
    );

    // The next round's top: 203.0.113.7 dropped out, its series is gone.
    with_top(
        &mut published,
        vec![top(
            Some("blue"),
            &[("192.0.2.9", 40), ("198.51.100.0/24", 12)],
        )],
    );
    let text = render(&published, Format::Text).unwrap();
    assert!(!text.contains("203.0.113.7"), "{text}");
    assert!(!text.contains("2001:db8::/64"), "{text}");
    assert!(has(
        &text,
        "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"192.0.2.9\"} 40"
    ));
    assert_eq!(
        samples(&text)
            .iter()
            .filter(|l| l.starts_with("synproxy_top_source_events"))
            .count(),
        2
    );
    promtool_check(&text);

    // Per-source counting off, or nobody sent anything: no family at all.
    with_top(&mut published, vec![top(Some("blue"), &[])]);
    let text = render(&published, Format::Text).unwrap();
    assert!(!text.contains("synproxy_top_source"), "{text}");
    promtool_check(&text);
}

/// A malformed snapshot (a list twice, a source twice) never makes
/// duplicate series.
#[test]
fn top_sources_never_duplicate_a_series() {
    let mut published = Published {
        top_series: TopSeries::Address,
        ..Published::default()
    };
    let list = top(Some("blue"), &[("192.0.2.1", 3), ("192.0.2.1", 2)]);
    with_top(&mut published, vec![list.clone(), list]);
    let text = render(&published, Format::Text).unwrap();
    assert_eq!(
        samples(&text)
            .iter()
            .filter(|l| l.starts_with("synproxy_top_source_events"))
            .count(),
        1,
        "{text}"
    );
    promtool_check(&text);
}

#[test]
fn openmetrics_when_asked() {
    let published = ebpf_published();
    let text = render(&published, Format::OpenMetrics).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(has(&text, "# TYPE synproxy_syn_received counter"), "{text}");
    assert!(
        has(&text, "synproxy_syn_received_total{netns=\"blue\"} 45"),
        "{text}"
    );
    assert!(has(&text, "# TYPE synproxy_agent_build info"), "{text}");
    assert!(
        has(&text, "# UNIT synproxy_ebpf_map_memory_bytes bytes"),
        "{text}"
    );
}

#[test]
fn accept_header_negotiation() {
    // What Prometheus 2.x sends.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::for_accept([prometheus]), Format::OpenMetrics);
    assert_eq!(Format::for_accept([]), Format::Text);
    assert_eq!(Format::for_accept(["*/*"]), Format::Text);
    assert_eq!(
        Format::for_accept(["text/plain;version=0.0.4"]),
        Format::Text
    );
    assert_eq!(
        Format::for_accept(["text/plain;q=0.9, application/openmetrics-text;q=0.5"]),
        Format::Text
    );
    assert_eq!(
        Format::for_accept(["application/openmetrics-text; version=1.0.0"]),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::for_accept(["application/openmetrics-text;q=0"]),
        Format::Text
    );
}

/// Probes re-attached: a proc-only round with no events in between; the
/// eBPF totals go on from where they were.
#[test]
fn ebpf_totals_survive_reattach_and_follow_the_series_not_the_label() {
    let mut published = Published::default();
    let mut ns = namespace(7, Some("blue"), totals(10, 0));
    ns.ebpf = Some(ebpf(Some("blue"), [10, 0], Status::Exact));
    published.add(&snapshot(vec![ns.clone()], true));
    ns.ebpf = Some(ebpf(Some("blue"), [0, 0], Status::ProcOnly));
    published.add(&snapshot(vec![ns.clone()], true));
    // The namespace lost its name: same series, new label.
    ns.sample.netns = Some("ns-4026532290".into());
    ns.ebpf = Some(ebpf(Some("ns-4026532290"), [5, 1], Status::Exact));
    published.add(&snapshot(vec![ns], true));
    assert_eq!(published.ebpf[&7].events[0][0], 15);
    assert_eq!(published.ebpf[&7].events[1][0], 1);
    assert_eq!(published.ebpf[&7].rounds, [2, 0, 0, 1]);
    let text = render(&published, Format::Text).unwrap();
    assert!(has(
        &text,
        "synproxy_ebpf_events_total{netns=\"ns-4026532290\",family=\"ipv4\",counter=\"syn_received\"} 15"
    ));
    assert!(!text.contains("netns=\"blue\""), "{text}");
}

/// A namespace not found stays with its counters while retained (not its
/// per-round gauges), unless a present one has its label; once the
/// sampler forgets it, it leaves, with its eBPF totals.
#[test]
fn retained_namespaces_keep_their_counters_until_forgotten() {
    let mut published = Published::default();
    let mut gone = namespace(3, Some("red"), totals(8, 1));
    gone.ebpf = Some(ebpf(Some("red"), [8, 0], Status::Exact));
    let mut reused = namespace(4, Some("blue"), totals(1, 0));
    reused.ebpf = Some(ebpf(Some("blue"), [1, 0], Status::Exact));
    published.add(&snapshot(vec![gone, reused.clone()], true));

    let mut next = (*snapshot(vec![reused.clone()], true)).clone();
    next.retained = vec![
        RetainedNamespace {
            series: 3,
            netns: Some("red".into()),
            totals: totals(8, 1),
            missing_rounds: 1,
        },
        // An older namespace once labelled blue: the present one wins.
        RetainedNamespace {
            series: 2,
            netns: Some("blue".into()),
            totals: totals(99, 99),
            missing_rounds: 5,
        },
    ];
    published.add(&Arc::new(next));
    let text = render(&published, Format::Text).unwrap();
    assert!(
        has(&text, "synproxy_syn_received_total{netns=\"red\"} 8"),
        "{text}"
    );
    assert!(
        has(&text, "synproxy_syn_received_total{netns=\"blue\"} 1"),
        "{text}"
    );
    assert!(!text.contains(" 99\n"), "{text}");
    assert!(has(
        &text,
        "synproxy_ebpf_events_total{netns=\"red\",family=\"ipv4\",counter=\"syn_received\"} 8"
    ));
    assert!(
        !text.contains("synproxy_ebpf_peak_rate{netns=\"red\""),
        "{text}"
    );
    assert!(
        !text.contains("synproxy_ebpf_reconcile_status{netns=\"red\""),
        "{text}"
    );
    assert!(has(
        &text,
        "synproxy_agent_namespaces{state=\"retained\"} 2"
    ));
    promtool_check(&text);

    // Forgotten by the sampler: gone from the exposition.
    published.add(&snapshot(vec![reused], true));
    let text = render(&published, Format::Text).unwrap();
    assert!(!text.contains("netns=\"red\""), "{text}");
    assert!(!published.ebpf.contains_key(&3));
}

#[test]
fn label_values_are_the_line_protocol_tags_and_escaped() {
    let mut published = Published::default();
    published.add(&snapshot(
        vec![namespace(1, Some("a \"q\"\nb\\"), totals(1, 0))],
        false,
    ));
    let text = render(&published, Format::Text).unwrap();
    assert!(
        has(
            &text,
            r#"synproxy_syn_received_total{netns="a \"q\"_b_"} 1"#
        ),
        "{text}"
    );
    promtool_check(&text);
}

#[test]
fn before_the_first_round_only_agent_series() {
    let text = render(&Published::default(), Format::Text).unwrap();
    assert_eq!(
        samples(&text),
        vec![
            "synproxy_agent_build_info{version=\"0.1.0\"} 1",
            "synproxy_agent_rounds_total 0"
        ]
    );
}

#[test]
fn http_routes() {
    let page = Page::new(Arc::new(ebpf_published()));
    let get = |path: &str, accept: Option<&str>| {
        let mut request = Request::get(path);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        respond(&request.body(()).unwrap(), &page)
    };
    let metrics = get("/metrics", None);
    assert_eq!(metrics.status(), StatusCode::OK);
    assert_eq!(
        metrics.headers()[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let om = get(
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert_eq!(om.headers()[CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
    assert_eq!(get("/nope", None).status(), StatusCode::NOT_FOUND);
    assert_eq!(get("/", None).status(), StatusCode::OK);
    let post = Request::post("/metrics").body(()).unwrap();
    assert_eq!(
        respond(&post, &page).status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[test]
fn a_page_is_rendered_once_per_format() {
    let page = Page::new(Arc::new(ebpf_published()));
    let text = page.body(Format::Text).unwrap();
    let again = page.body(Format::Text).unwrap();
    // The same buffer, not an equal copy.
    assert_eq!(text.as_ptr(), again.as_ptr());
    let om = page.body(Format::OpenMetrics).unwrap();
    assert_eq!(
        om.as_ptr(),
        page.body(Format::OpenMetrics).unwrap().as_ptr()
    );
    assert_ne!(text, om);
    assert_eq!(
        text,
        render(&ebpf_published(), Format::Text).unwrap().as_bytes()
    );
}

/// `promtool check metrics` finds nothing (skipped without promtool,
/// unless CI=true).
pub(crate) fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("promtool (Debian package prometheus) is needed: {e} (CI=true)")
        }
        Err(e) => {
            eprintln!("SKIPPED promtool check: {e} (apt-get install prometheus)");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("promtool stdin");
    }
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{text}"
    );
}
