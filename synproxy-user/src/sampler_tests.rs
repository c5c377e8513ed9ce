//! The sampler's bookkeeping under namespace churn: eBPF slots, retained
//! series and failure entries stay bounded.

use super::ebpf_round::{present_ebpf_keys, rank_sources};
use super::read::forget_excess_missing;
use super::*;
use crate::sources::ebpf::Stop;

fn netns(inode: u64, cookie: Option<u64>) -> SeriesKey {
    SeriesKey::Netns(NamespaceId {
        dev: 4,
        inode,
        cookie,
    })
}

fn series(id: SeriesId, missing_rounds: u32) -> Series {
    let mut s = Series::new(id, &format!("ns-{id}"));
    s.missing_rounds = missing_rounds;
    s
}

#[test]
fn a_namespace_not_found_keeps_no_ebpf_slot() {
    let mut all = HashMap::new();
    all.insert(SeriesKey::Own, series(1, 0));
    all.insert(netns(4026532001, Some(11)), series(2, 0));
    all.insert(netns(4026532002, Some(12)), series(3, 1));
    all.insert(netns(4026532003, None), series(4, 0));
    all.insert(netns(4026532004, None), series(5, 360));
    let keep = present_ebpf_keys(&all);
    let want: HashSet<NsKey> = [(synproxy_common::cookie_key(11), 11), (4026532003u32, 0)].into();
    assert_eq!(keep, want);
}

#[test]
fn retained_series_are_bounded_longest_gone_first() {
    let mut all = HashMap::new();
    for i in 0..2 {
        all.insert(netns(100 + i, Some(i)), series(i, 0));
    }
    for i in 1..=5u64 {
        all.insert(netns(200 + i, Some(10 + i)), series(10 + i, i as u32));
    }
    forget_excess_missing(&mut all, 2);
    let mut left: Vec<SeriesId> = all.values().map(|s| s.id).collect();
    left.sort_unstable();
    assert_eq!(left, [0, 1, 11, 12]);
    forget_excess_missing(&mut all, 2);
    assert_eq!(all.len(), 4);
}

fn sampler(netns_dir: &std::path::Path, names: &[&str]) -> Sampler {
    Sampler::new(SamplerConfig {
        once: false,
        proc_root: "/proc".into(),
        netns_dir: netns_dir.into(),
        selection: NetnsSelection::Named(names.iter().map(|n| n.to_string()).collect()),
        ebpf: None,
        ebpf_off: None,
        stop: Arc::new(Stop::default()),
        top: TopConfig {
            n: 0,
            prefix_v4: 32,
            prefix_v6: 128,
            map_entries: synproxy_common::SOURCES_DEFAULT_ENTRIES,
            ..Default::default()
        },
        stack: StackSources::default(),
        verdict: None,
        attacks: None,
    })
}

/// A namespace that failed and is no longer selected leaves no entry
/// behind (under churn they would pile up); one still selected keeps its
/// entry, so its failure is logged once.
#[test]
fn failure_entries_go_with_their_namespace() {
    let dir = std::path::Path::new("/nonexistent-netns-dir");
    let mut s = sampler(dir, &["gone-1", "gone-2"]);
    let round = s.sample();
    assert_eq!(round.failures.len(), 2);
    assert_eq!(s.failing.len(), 2);
    s.config.selection = NetnsSelection::Named(vec!["gone-2".into(), "gone-3".into()]);
    let round = s.sample();
    assert_eq!(round.failures.len(), 2);
    let mut labels: Vec<&str> = s.failing.keys().map(String::as_str).collect();
    labels.sort_unstable();
    assert_eq!(labels, ["gone-2", "gone-3"]);
    s.config.selection = NetnsSelection::Named(vec!["gone-4".into()]);
    s.sample();
    assert_eq!(s.failing.keys().collect::<Vec<_>>(), ["gone-4"]);
}

/// A namespace that comes back after a round without it got a new (zeroed)
/// eBPF slot: its reconcile starts from a new baseline instead of calling the
/// restarted counts a miss.
#[test]
fn a_namespace_that_comes_back_reconciles_from_a_new_baseline() {
    use crate::reconcile::ebpf_vs_proc::{Bracket, Input};
    use crate::reconcile::wrap_tracker::CounterIdentity;
    use crate::sources::proc::proc_stat::parse;
    use synproxy_common::Counter;
    let reading = || {
        Reading {
        identity: CounterIdentity {
            file_dev: 1,
            file_inode: 2,
        },
        stat: parse(b"entries syn_received cookie_invalid cookie_valid cookie_retrans conn_reopened\n0 a 0 0 0 0\n")
            .expect("stat"),
        recreated: false,
    }
    };
    let mut s = sampler(std::path::Path::new("/nonexistent-netns-dir"), &[]);
    let key = netns(4026532001, Some(7));
    let read = s.track(key, "netns x", "x", reading());
    let proc = ebpf_vs_proc::proc_counts(&read.totals);
    let counts = |syn: u64| {
        let mut c = [[0u64; synproxy_common::COUNTER_COUNT]; 2];
        c[0][Counter::SynReceived.index()] = syn;
        c
    };
    let bracket = |syn| Bracket {
        generation: 1,
        before: counts(syn),
        after: counts(syn),
    };
    let series = s.series.get_mut(&key).expect("series");
    for _ in 0..2 {
        series.reconciler.update(Input {
            proc,
            proc_reset: false,
            ebpf: Some(bracket(10)),
            global_losses: 0,
        });
    }
    // The old slot's counts are learnt; a fresh slot's zeros are not them.
    assert!(!series.reconciler.consistent(&proc, false, &bracket(0)));
    series.missing_rounds = 1;
    s.track(key, "netns x", "x", reading());
    let series = s.series.get(&key).expect("series");
    assert!(series.reconciler.consistent(&proc, false, &bracket(0)));
}

fn read(key: SeriesKey, label: &str, ebpf_key: NsKey) -> Read {
    Read {
        key,
        label: label.into(),
        target: None,
        ebpf_key: Some(ebpf_key),
        before: None,
        after: None,
        totals: [0; crate::fields::FIELD_COUNT],
        reset: false,
    }
}

fn ebpf_pair(syn_v4: u64) -> [EbpfSample; 2] {
    std::array::from_fn(|f| {
        let mut events = [0; synproxy_common::COUNTER_COUNT];
        if f == 0 {
            events[synproxy_common::Counter::SynReceived.index()] = syn_v4;
        }
        EbpfSample {
            netns: None,
            family: ["ipv4", "ipv6"][f],
            events,
            peak_rates: [0.0; synproxy_common::COUNTER_COUNT],
            status: ebpf_vs_proc::Status::Exact,
            timestamp_ns: 1,
        }
    })
}

/// Per-source counts go to the namespace their eBPF key belongs to (the own
/// namespace without a label), shares are of that namespace's interval
/// events, and counts of a namespace not read this round are left out.
#[test]
fn top_sources_take_their_namespace_and_its_events() {
    use crate::sources::ebpf::address_counts::SourceEvents;
    use synproxy_common::Counter;
    let blue_key: NsKey = (2, 0);
    let reads = [
        read(SeriesKey::Own, "own", (1, 0)),
        read(netns(4026532001, Some(11)), "blue", blue_key),
    ];
    let samples = [Some(ebpf_pair(10)), Some(ebpf_pair(100))];
    let event = |ns: NsKey, source: &str, events: u64| SourceEvents {
        ns,
        counter: Counter::SynReceived,
        source: source.parse().unwrap(),
        events,
    };
    let sources = SourcesRound {
        events: vec![
            event(blue_key, "203.0.113.7", 60),
            event((1, 0), "198.51.100.1", 5),
            event((9, 0), "203.0.113.9", 99),
        ],
        ..SourcesRound::default()
    };
    let mut ranker = TopRanker::new(TopConfig {
        n: 5,
        prefix_v4: 32,
        prefix_v6: 128,
        map_entries: synproxy_common::SOURCES_DEFAULT_ENTRIES,
        ..Default::default()
    });
    let lists = rank_sources(&mut ranker, &reads, &samples, &sources);
    let entries = |netns: Option<&str>| -> Vec<(String, u64, f64)> {
        lists
            .iter()
            .filter(|l| {
                l.netns.as_deref() == netns
                    && l.family == "ipv4"
                    && l.counter == Counter::SynReceived
            })
            .flat_map(|l| l.entries.iter())
            .map(|e| (e.source.clone(), e.events, e.share))
            .collect()
    };
    assert_eq!(entries(Some("blue")), [("203.0.113.7".into(), 60, 0.6)]);
    assert_eq!(entries(None), [("198.51.100.1".into(), 5, 0.5)]);
    assert!(
        lists
            .iter()
            .flat_map(|l| &l.entries)
            .all(|e| e.source != "203.0.113.9"),
        "{lists:?}"
    );
}
