//! The line protocol encoder: shapes, escaping, saturation, and every line parsed back by the influxdb-line-protocol crate.

use super::*;
use crate::fields::FIELD_COUNT;
use influxdb_line_protocol::{parse_lines, FieldValue};

fn sample(netns: Option<&str>) -> Sample {
    Sample {
        netns: netns.map(str::to_owned),
        totals: [0, 8742, 235, 8814, 0, 0],
        timestamp_ns: 1_549_550_634_000_000_000,
    }
}

fn encode(encoder: &LineEncoder, sample: &Sample) -> String {
    let mut out = Vec::new();
    encoder.encode(sample, &mut out);
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => panic!("encoder wrote invalid UTF-8: {e}"),
    }
}

fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn telegraf_shape() {
    let e = LineEncoder::new(&tags(&[("host", "gw01")]), IntegerType::Signed);
    assert_eq!(
        encode(&e, &sample(None)),
        "synproxy,host=gw01 conn_reopened=0i,cookie_invalid=235i,cookie_retrans=0i,cookie_valid=8814i,entries=0i,syn_received=8742i 1549550634000000000\n"
    );
}

#[test]
fn unsigned_integers_and_no_tags() {
    let e = LineEncoder::new(&[], IntegerType::Unsigned);
    assert_eq!(
        encode(&e, &sample(None)),
        "synproxy conn_reopened=0u,cookie_invalid=235u,cookie_retrans=0u,cookie_valid=8814u,entries=0u,syn_received=8742u 1549550634000000000\n"
    );
}

#[test]
fn netns_tag_sorted_among_static_tags() {
    let e = LineEncoder::new(
        &tags(&[("zone", "a"), ("host", "gw01"), ("dc", "x")]),
        IntegerType::Signed,
    );
    let line = encode(&e, &sample(Some("blue")));
    assert!(
        line.starts_with("synproxy,dc=x,host=gw01,netns=blue,zone=a "),
        "{line}"
    );
    let e = LineEncoder::new(&tags(&[("host", "gw01")]), IntegerType::Signed);
    let line = encode(&e, &sample(Some("blue")));
    assert!(line.starts_with("synproxy,host=gw01,netns=blue "), "{line}");
}

#[test]
fn escaping() {
    assert_eq!(escape_tag("a b,c=d\\e"), "a\\ b\\,c\\=d\\\\e");
    assert_eq!(escape_tag("new\nline\r"), "new_line_");
    assert_eq!(escape_tag("ünïcode"), "ünïcode");
    assert_eq!(escape_tag("end\\\\"), "end__");
}

#[test]
fn empty_values_are_omitted() {
    let e = LineEncoder::new(&tags(&[("host", "")]), IntegerType::Signed);
    let line = encode(&e, &sample(Some("")));
    assert!(line.starts_with("synproxy conn_reopened="), "{line}");
}

#[test]
fn timestamps_saturate_at_i64_max() {
    let e = LineEncoder::new(&[], IntegerType::Unsigned);
    let mut s = sample(None);
    s.timestamp_ns = u64::MAX;
    assert!(encode(&e, &s).ends_with(&format!(" {}\n", i64::MAX)));
}

#[test]
fn huge_totals_saturate_as_signed() {
    let e = LineEncoder::new(&[], IntegerType::Signed);
    let mut s = sample(None);
    s.totals = [u64::MAX; FIELD_COUNT];
    let line = encode(&e, &s);
    assert!(line.contains(&format!("entries={}i", i64::MAX)), "{line}");
    let e = LineEncoder::new(&[], IntegerType::Unsigned);
    assert!(encode(&e, &s).contains(&format!("entries={}u", u64::MAX)));
}

/// The single line in `text`, parsed by the independent parser.
fn parse_one(
    text: &str,
) -> Result<influxdb_line_protocol::ParsedLine<'_>, proptest::test_runner::TestCaseError> {
    let mut lines = parse_lines(text);
    let first = lines.next();
    if lines.next().is_some() {
        return Err(proptest::test_runner::TestCaseError::fail(format!(
            "more than one line: {text}"
        )));
    }
    match first {
        Some(Ok(line)) => Ok(line),
        Some(Err(err)) => Err(proptest::test_runner::TestCaseError::fail(format!(
            "{err}: {text}"
        ))),
        None => Err(proptest::test_runner::TestCaseError::fail(format!(
            "no line: {text}"
        ))),
    }
}

fn check_roundtrip(
    static_tags: &[(String, String)],
    netns: Option<String>,
    totals: [u64; FIELD_COUNT],
    integers: IntegerType,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert_eq;
    let e = LineEncoder::new(static_tags, integers);
    let s = Sample {
        netns: netns.clone(),
        totals,
        timestamp_ns: 42,
    };
    let text = encode(&e, &s);
    let parsed = parse_one(&text)?;
    let line = &parsed;
    prop_assert_eq!(line.series.measurement.as_str(), MEASUREMENT);
    prop_assert_eq!(line.timestamp, Some(42));
    let sanitize = super::sanitized_tag;
    if let Some(ns) = netns.as_deref().filter(|v| !v.is_empty()) {
        let got = line.tag_value(NETNS_TAG).map(|v| v.to_string());
        prop_assert_eq!(got, Some(sanitize(ns)), "{}", text);
    }
    for (k, v) in static_tags
        .iter()
        .filter(|(k, v)| !k.is_empty() && !v.is_empty() && k != NETNS_TAG)
    {
        let got = line.tag_value(&sanitize(k)).map(|v| v.to_string());
        // A later duplicate key may have been dropped.
        if let Some(got) = got {
            if static_tags.iter().filter(|(k2, _)| k2 == k).count() == 1 {
                prop_assert_eq!(got, sanitize(v), "{}", text);
            }
        }
    }
    for field in Field::ALL {
        let value = totals[field.index()];
        let expected = match integers {
            IntegerType::Signed => FieldValue::I64(value.min(i64::MAX as u64) as i64),
            IntegerType::Unsigned => FieldValue::U64(value),
        };
        prop_assert_eq!(line.field_value(field.name()), Some(&expected), "{}", text);
    }
    Ok(())
}

fn ebpf_sample(netns: Option<&str>) -> EbpfSample {
    EbpfSample {
        netns: netns.map(str::to_owned),
        family: "ipv4",
        events: [20000, 5000, 0, 0, 0],
        peak_rates: [31000.0, 12500.5, 0.0, 0.0, 0.0],
        status: crate::reconcile::ebpf_vs_proc::Status::Exact,
        timestamp_ns: 1_549_550_634_000_000_000,
    }
}

#[test]
fn ebpf_line_shape() {
    let e = LineEncoder::new(&tags(&[("host", "gw01")]), IntegerType::Signed);
    let mut out = Vec::new();
    e.encode_ebpf(&ebpf_sample(Some("blue")), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "synproxy_ebpf,family=ipv4,host=gw01,netns=blue conn_reopened=0i,conn_reopened_peak_rate=0,cookie_invalid=5000i,cookie_invalid_peak_rate=12500.5,cookie_retrans=0i,cookie_retrans_peak_rate=0,cookie_valid=0i,cookie_valid_peak_rate=0,reconcile=\"exact\",syn_received=20000i,syn_received_peak_rate=31000 1549550634000000000\n"
    );
}

#[test]
fn probes_line_shape() {
    let e = LineEncoder::new(&[], IntegerType::Unsigned);
    let mut out = Vec::new();
    let probes = ProbesSample {
        attached: true,
        probe_type: "kprobe",
        probes: vec![(
            "ack4_ret",
            crate::sources::ebpf::kprobe_events::ProbeStats { hits: 7, missed: 1 },
        )],
        diag: [0, 0, 1, 0],
        probe_misses: 1,
        recursion_misses: 0,
        program_recursion: vec![("ack_ret", 0)],
        map_bytes: 4096,
        sources: None,
        ports: None,
        timestamp_ns: 5,
    };
    e.encode_probes(&probes, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "synproxy_ebpf_probes ack4_ret_hits=7u,ack4_ret_missed=1u,ack_ret_recursion_misses=0u,attached=1u,map_bytes=4096u,probe_misses=1u,probe_type=\"kprobe\",rate_late_events=0u,read_failures=0u,recursion_misses=0u,unmatched_returns=1u,untracked_events=0u 5\n"
    );
    // With --top: the per-source map.
    let probes = ProbesSample {
        sources: Some(crate::sample::SourceMapStats {
            entries: 3,
            capacity: 65536,
            evictions: 2,
            insert_failures: 0,
            map_bytes: 8192,
        }),
        ..probes
    };
    let mut out = Vec::new();
    e.encode_probes(&probes, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "synproxy_ebpf_probes ack4_ret_hits=7u,ack4_ret_missed=1u,ack_ret_recursion_misses=0u,attached=1u,map_bytes=4096u,probe_misses=1u,probe_type=\"kprobe\",rate_late_events=0u,read_failures=0u,recursion_misses=0u,source_evictions=2u,source_insert_failures=0u,source_map_bytes=8192u,source_map_capacity=65536u,source_map_entries=3u,unmatched_returns=1u,untracked_events=0u 5\n"
    );
}

fn check_ebpf_roundtrip(
    static_tags: &[(String, String)],
    netns: Option<String>,
    events: [u64; 5],
    rates: [f64; 5],
    integers: IntegerType,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert_eq;
    let e = LineEncoder::new(static_tags, integers);
    let mut sample = ebpf_sample(None);
    sample.netns = netns.clone();
    sample.events = events;
    sample.peak_rates = rates;
    sample.timestamp_ns = 42;
    let mut out = Vec::new();
    e.encode_ebpf(&sample, &mut out);
    let text = String::from_utf8(out)
        .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("invalid UTF-8: {e}")))?;
    let parsed = parse_one(&text)?;
    let line = &parsed;
    prop_assert_eq!(line.series.measurement.as_str(), EBPF_MEASUREMENT);
    prop_assert_eq!(
        line.tag_value(FAMILY_TAG).map(|v| v.to_string()),
        Some("ipv4".to_string())
    );
    if let Some(ns) = netns.as_deref().filter(|v| !v.is_empty()) {
        let got = line.tag_value(NETNS_TAG).map(|v| v.to_string());
        prop_assert_eq!(got, Some(super::sanitized_tag(ns)), "{}", text);
    }
    for counter in Counter::ALL {
        let value = events[counter as usize];
        let expected = match integers {
            IntegerType::Signed => FieldValue::I64(value.min(i64::MAX as u64) as i64),
            IntegerType::Unsigned => FieldValue::U64(value),
        };
        prop_assert_eq!(
            line.field_value(counter.name()),
            Some(&expected),
            "{}",
            text
        );
        let rate = line.field_value(&format!("{}_peak_rate", counter.name()));
        prop_assert_eq!(
            rate,
            Some(&FieldValue::F64(rates[counter as usize])),
            "{}",
            text
        );
    }
    prop_assert_eq!(
        line.field_value("reconcile"),
        Some(&FieldValue::String("exact".into())),
        "{}",
        text
    );
    Ok(())
}

fn top_list(netns: Option<&str>) -> TopSources {
    TopSources {
        netns: netns.map(str::to_owned),
        family: "ipv6",
        counter: Counter::CookieInvalid,
        interval_events: 400,
        entries: vec![
            crate::sample::TopSource {
                source: "2001:db8::1".into(),
                events: 300,
                share: 0.75,
            },
            crate::sample::TopSource {
                source: "2001:db8:1::/48".into(),
                events: 100,
                share: 0.25,
            },
        ],
    }
}

fn top_lines(e: &LineEncoder, list: &TopSources) -> String {
    let mut out = Vec::new();
    e.encode_top_sources(list, 1_549_550_634_000_000_000, &mut out);
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => panic!("encoder wrote invalid UTF-8: {e}"),
    }
}

#[test]
fn top_sources_lines() {
    let e = LineEncoder::new(
        &tags(&[("host", "gw01"), ("zone", "a")]),
        IntegerType::Signed,
    );
    assert_eq!(
        top_lines(&e, &top_list(Some("blue"))),
        "synproxy_top_sources,counter=cookie_invalid,family=ipv6,host=gw01,netns=blue,rank=1,source=2001:db8::1,zone=a events=300i,share=0.75 1549550634000000000\n\
         synproxy_top_sources,counter=cookie_invalid,family=ipv6,host=gw01,netns=blue,rank=2,source=2001:db8:1::/48,zone=a events=100i,share=0.25 1549550634000000000\n"
    );
    // The own namespace: no netns tag; --uint.
    let e = LineEncoder::new(&[], IntegerType::Unsigned);
    let mut list = top_list(None);
    list.entries.truncate(1);
    list.entries[0].share = 1.0;
    assert_eq!(
        top_lines(&e, &list),
        "synproxy_top_sources,counter=cookie_invalid,family=ipv6,rank=1,source=2001:db8::1 events=300u,share=1 1549550634000000000\n"
    );
    // Nothing for an empty list.
    list.entries.clear();
    assert_eq!(top_lines(&e, &list), "");
}

#[test]
fn top_sources_escape_the_netns_and_parse_back() {
    let e = LineEncoder::new(&tags(&[("host", "gw01")]), IntegerType::Signed);
    let text = top_lines(&e, &top_list(Some("a b,c=d\n")));
    let lines: Vec<_> = parse_lines(&text).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (i, line) in lines.into_iter().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(err) => panic!("{err}: {text}"),
        };
        assert_eq!(line.series.measurement.as_str(), TOP_SOURCES_MEASUREMENT);
        assert_eq!(
            line.tag_value(NETNS_TAG).map(|v| v.to_string()),
            Some("a b,c=d_".to_string())
        );
        assert_eq!(
            line.tag_value("rank").map(|v| v.to_string()),
            Some((i + 1).to_string())
        );
        assert_eq!(
            line.field_value("events"),
            Some(&FieldValue::I64([300, 100][i]))
        );
        assert_eq!(
            line.field_value("share"),
            Some(&FieldValue::F64([0.75, 0.25][i]))
        );
    }
}

#[test]
fn top_sources_come_before_the_probes_line_that_ends_a_round() {
    let e = LineEncoder::new(&[], IntegerType::Signed);
    let round = Snapshot {
        timestamp_ns: 7,
        namespaces: vec![crate::sample::NamespaceSnapshot {
            series: 1,
            sample: sample(None),
            ebpf: None,
        }],
        retained: Vec::new(),
        failures: Vec::new(),
        probes: Some(ProbesSample {
            attached: true,
            probe_type: "kprobe",
            probes: Vec::new(),
            diag: [0; 4],
            probe_misses: 0,
            recursion_misses: 0,
            program_recursion: Vec::new(),
            map_bytes: 0,
            sources: None,
            ports: None,
            timestamp_ns: 7,
        }),
        agent: crate::sample::AgentHealth {
            round_duration: std::time::Duration::ZERO,
            ebpf_enabled: false,
            ebpf_attached: false,
            ebpf_off: None,
            programs: Vec::new(),
            influx: None,
        },
        top_sources: vec![top_list(None)],
        top_ports: Vec::new(),
        stack: Vec::new(),
        defense: Vec::new(),
        attacks: Vec::new(),
    };
    let mut out = Vec::new();
    e.encode_round(&round, &mut out);
    let text = String::from_utf8(out).unwrap_or_default();
    let measurements: Vec<&str> = text
        .lines()
        .map(|l| l.split([',', ' ']).next().unwrap_or_default())
        .collect();
    assert_eq!(
        measurements,
        [
            "synproxy",
            TOP_SOURCES_MEASUREMENT,
            TOP_SOURCES_MEASUREMENT,
            PROBES_MEASUREMENT
        ]
    );
    assert!(text.ends_with(" 7\n"), "{text}");
}

proptest::proptest! {
    #[test]
    fn every_top_sources_line_parses_with_an_independent_parser(
        static_tags in proptest::collection::vec(("[a-z]{1,3}(\\PC|[ ,=\\\\\n\r\t]){0,6}", "\\PC{0,6}|[ ,=\\\\\"\n\r\t]{0,4}"), 0..4),
        netns in proptest::option::of("(\\PC|[ ,=\\\\\n\r\t\"]){0,10}"),
        entries in proptest::collection::vec((proptest::num::u128::ANY, proptest::num::u64::ANY, 0.0f64..=1.0), 0..5),
        unsigned in proptest::bool::ANY,
    ) {
        use proptest::prop_assert_eq;
        let integers = if unsigned { IntegerType::Unsigned } else { IntegerType::Signed };
        let e = LineEncoder::new(&static_tags, integers);
        let mut list = top_list(netns.as_deref());
        list.entries = entries
            .iter()
            .map(|(addr, events, share)| crate::sample::TopSource {
                source: format!("{}/64", std::net::Ipv6Addr::from(*addr)),
                events: *events,
                share: *share,
            })
            .collect();
        let text = top_lines(&e, &list);
        let lines: Vec<_> = parse_lines(&text).collect();
        prop_assert_eq!(lines.len(), list.entries.len(), "{}", text);
        for (i, line) in lines.into_iter().enumerate() {
            let line = line.map_err(|err| {
                proptest::test_runner::TestCaseError::fail(format!("{err}: {text}"))
            })?;
            let entry = &list.entries[i];
            prop_assert_eq!(line.series.measurement.as_str(), TOP_SOURCES_MEASUREMENT);
            prop_assert_eq!(line.tag_value("source").map(|v| v.to_string()), Some(entry.source.clone()));
            prop_assert_eq!(line.tag_value("rank").map(|v| v.to_string()), Some((i + 1).to_string()));
            prop_assert_eq!(line.tag_value("counter").map(|v| v.to_string()), Some("cookie_invalid".to_string()));
            if let Some(ns) = netns.as_deref().filter(|v| !v.is_empty()) {
                let got = line.tag_value(NETNS_TAG).map(|v| v.to_string());
                prop_assert_eq!(got, Some(super::sanitized_tag(ns)), "{}", text);
            }
            let expected = match integers {
                IntegerType::Signed => FieldValue::I64(entry.events.min(i64::MAX as u64) as i64),
                IntegerType::Unsigned => FieldValue::U64(entry.events),
            };
            prop_assert_eq!(line.field_value("events"), Some(&expected), "{}", text);
            prop_assert_eq!(line.field_value("share"), Some(&FieldValue::F64(entry.share)), "{}", text);
        }
    }
}

proptest::proptest! {
    #[test]
    fn every_ebpf_line_parses_with_an_independent_parser(
        static_tags in proptest::collection::vec(("[a-z]{1,3}(\\PC|[ ,=\\\\\n\r\t]){0,6}", "\\PC{0,6}|[ ,=\\\\\"\n\r\t]{0,4}"), 0..4),
        netns in proptest::option::of("(\\PC|[ ,=\\\\\n\r\t\"]){0,10}"),
        events in proptest::array::uniform5(proptest::num::u64::ANY),
        rates in proptest::array::uniform5(0.0f64..1e12),
        unsigned in proptest::bool::ANY,
    ) {
        let integers = if unsigned { IntegerType::Unsigned } else { IntegerType::Signed };
        check_ebpf_roundtrip(&static_tags, netns, events, rates, integers)?;
    }
}

proptest::proptest! {
    #[test]
    fn every_line_parses_with_an_independent_parser(
        static_tags in proptest::collection::vec(("[a-z]{1,3}(\\PC|[ ,=\\\\\n\r\t]){0,6}", "\\PC{0,6}|[ ,=\\\\\"\n\r\t]{0,4}"), 0..4),
        netns in proptest::option::of("(\\PC|[ ,=\\\\\n\r\t\"]){0,10}"),
        totals in proptest::array::uniform6(proptest::num::u64::ANY),
        unsigned in proptest::bool::ANY,
    ) {
        let integers = if unsigned { IntegerType::Unsigned } else { IntegerType::Signed };
        check_roundtrip(&static_tags, netns, totals, integers)?;
    }
}
