//! The ranking's unit tests: order, ties, shares, groups, prefixes, bounds.

use super::*;
use crate::sample::TopSources;
use std::net::Ipv4Addr;

/// The map's maximum is what bounds the agent's memory (docs/ebpf.md).
#[test]
fn map_entries_are_bounded_where_memory_is_measured() {
    use crate::cli::parse_top_map_entries;
    assert_eq!(parse_top_map_entries("1048576"), Ok(1 << 20));
    assert_eq!(parse_top_map_entries("1024"), Ok(1024));
    for bad in ["1048577", "16777216", "1023"] {
        assert!(parse_top_map_entries(bad).is_err(), "{bad}");
    }
}

fn ip(text: &str) -> IpAddr {
    match text.parse() {
        Ok(ip) => ip,
        Err(e) => panic!("{text}: {e}"),
    }
}

fn count<'a>(netns: Option<&'a str>, counter: Counter, src: &str, events: u64) -> SourceCount<'a> {
    SourceCount {
        netns,
        counter,
        source: ip(src),
        events,
    }
}

fn syn<'a>(src: &str, events: u64) -> SourceCount<'a> {
    count(None, Counter::SynReceived, src, events)
}

fn config(n: usize) -> TopConfig {
    TopConfig {
        n,
        ..TopConfig::default()
    }
}

fn entries(list: &TopSources) -> Vec<(&str, u64)> {
    list.entries
        .iter()
        .map(|e| (e.source.as_str(), e.events))
        .collect()
}

#[test]
fn top_n_best_first_with_ties_by_address() {
    let mut r = TopRanker::new(config(3));
    let counts = [
        syn("10.0.0.10", 5),
        syn("10.0.0.2", 5),
        syn("10.0.0.3", 9),
        syn("10.0.0.1", 1),
        syn("10.0.0.9", 5),
    ];
    let top = r.rank(counts, []);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].family, "ipv4");
    assert_eq!(top[0].counter, Counter::SynReceived);
    assert_eq!(top[0].interval_events, 25);
    // Numeric order among the ties: .2 and .9 before .10.
    assert_eq!(
        entries(&top[0]),
        [("10.0.0.3", 9), ("10.0.0.2", 5), ("10.0.0.9", 5)]
    );
    // Input order does not matter.
    let mut reversed = counts;
    reversed.reverse();
    assert_eq!(r.rank(reversed, []), top);
}

#[test]
fn share_is_of_the_interval_total() {
    let mut r = TopRanker::new(config(10));
    let totals = [IntervalTotal {
        netns: None,
        family: Family::Ipv4,
        counter: Counter::SynReceived,
        events: 200,
    }];
    let top = r.rank([syn("192.0.2.1", 50), syn("192.0.2.2", 30)], totals);
    assert_eq!(top[0].interval_events, 200);
    assert_eq!(top[0].entries[0].share, 0.25);
    assert_eq!(top[0].entries[1].share, 0.15);
    // A total below the sources' sum (read at another moment): the sum.
    let totals = [IntervalTotal {
        events: 10,
        ..totals[0]
    }];
    let top = r.rank([syn("192.0.2.1", 50), syn("192.0.2.2", 30)], totals);
    assert_eq!(top[0].interval_events, 80);
    assert_eq!(top[0].entries[0].share, 0.625);
    // Without a total: the sum.
    let top = r.rank([syn("192.0.2.1", 3), syn("192.0.2.2", 1)], []);
    assert_eq!(top[0].entries[0].share, 0.75);
}

#[test]
fn groups_per_namespace_family_and_counter() {
    let mut r = TopRanker::new(config(2));
    let totals = [
        IntervalTotal {
            netns: Some("blue"),
            family: Family::Ipv6,
            counter: Counter::CookieInvalid,
            events: 0,
        },
        IntervalTotal {
            netns: Some("red"),
            family: Family::Ipv4,
            counter: Counter::SynReceived,
            events: 7,
        },
    ];
    let counts = [
        count(Some("red"), Counter::SynReceived, "198.51.100.1", 4),
        count(Some("red"), Counter::CookieValid, "198.51.100.1", 2),
        count(Some("blue"), Counter::SynReceived, "2001:db8::1", 6),
        count(Some("red"), Counter::SynReceived, "198.51.100.2", 3),
        count(None, Counter::SynReceived, "2001:db8::2", 1),
        count(Some("red"), Counter::SynReceived, "198.51.100.3", 0),
    ];
    let top = r.rank(counts, totals);
    let groups: Vec<_> = top
        .iter()
        .map(|t| (t.netns.as_deref(), t.family, t.counter.name(), entries(t)))
        .collect();
    assert_eq!(
        groups,
        [
            // Given a total, no sources: an empty list.
            (Some("blue"), "ipv6", "cookie_invalid", vec![]),
            (
                Some("red"),
                "ipv4",
                "syn_received",
                vec![("198.51.100.1", 4), ("198.51.100.2", 3)]
            ),
            (
                Some("red"),
                "ipv4",
                "cookie_valid",
                vec![("198.51.100.1", 2)]
            ),
            (
                Some("blue"),
                "ipv6",
                "syn_received",
                vec![("2001:db8::1", 6)]
            ),
            (None, "ipv6", "syn_received", vec![("2001:db8::2", 1)]),
        ]
    );
}

#[test]
fn prefix_aggregation_sums_before_ranking() {
    let mut r = TopRanker::new(TopConfig {
        n: 2,
        prefix_v4: 24,
        prefix_v6: 64,
        ..TopConfig::default()
    });
    let counts = [
        // 200 spoofed sources of 203.0.113.0/24, one event each...
        (0..200u64)
            .map(|i| syn(&format!("203.0.113.{i}"), 1))
            .collect::<Vec<_>>(),
        // ...outrank a single heavy address.
        vec![syn("198.51.100.7", 150), syn("198.51.100.8", 1)],
        vec![
            syn("2001:db8:1:2::1", 4),
            syn("2001:db8:1:2:ffff::9", 4),
            syn("2001:db8:1:3::1", 5),
        ],
    ]
    .concat();
    let top = r.rank(counts, []);
    assert_eq!(
        entries(&top[0]),
        [("203.0.113.0/24", 200), ("198.51.100.0/24", 151)]
    );
    assert_eq!(
        entries(&top[1]),
        [("2001:db8:1:2::/64", 8), ("2001:db8:1:3::/64", 5)]
    );
}

#[test]
fn prefix_zero_and_odd_lengths() {
    let mut r = TopRanker::new(TopConfig {
        n: 5,
        prefix_v4: 0,
        prefix_v6: 1,
        ..TopConfig::default()
    });
    let top = r.rank(
        [
            syn("1.2.3.4", 1),
            syn("250.1.1.1", 2),
            syn("ffff::1", 3),
            syn("::1", 4),
        ],
        [],
    );
    assert_eq!(entries(&top[0]), [("0.0.0.0/0", 3)]);
    assert_eq!(entries(&top[1]), [("::/1", 4), ("8000::/1", 3)]);
    // Out-of-range lengths are clamped, never a shift overflow.
    let mut r = TopRanker::new(TopConfig {
        n: 5,
        prefix_v4: 200,
        prefix_v6: 255,
        ..TopConfig::default()
    });
    let top = r.rank([syn("1.2.3.4", 1), syn("::1", 1)], []);
    assert_eq!(entries(&top[0]), [("1.2.3.4", 1)]);
    assert_eq!(entries(&top[1]), [("::1", 1)]);
}

#[test]
fn ipv6_addresses_and_duplicates_are_summed() {
    let mut r = TopRanker::new(config(10));
    let top = r.rank(
        [
            syn("2001:db8::1", 2),
            syn("2001:db8::1", 3),
            syn("::ffff:192.0.2.1", 1),
        ],
        [],
    );
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].family, "ipv6");
    assert_eq!(
        entries(&top[0]),
        [("2001:db8::1", 5), ("::ffff:192.0.2.1", 1)]
    );
}

#[test]
fn zero_turns_it_off() {
    let mut r = TopRanker::new(config(0));
    let totals = [IntervalTotal {
        netns: None,
        family: Family::Ipv4,
        counter: Counter::SynReceived,
        events: 1,
    }];
    assert!(r.rank([syn("192.0.2.1", 1)], totals).is_empty());
}

#[test]
fn saturating_sums() {
    let mut r = TopRanker::new(config(1));
    let top = r.rank([syn("192.0.2.1", u64::MAX), syn("192.0.2.1", 5)], []);
    assert_eq!(top[0].entries[0].events, u64::MAX);
    assert_eq!(top[0].entries[0].share, 1.0);
}

/// The heap against a full sort, on many sources with many ties.
#[test]
fn matches_a_full_sort() {
    let mut r = TopRanker::new(config(25));
    let counts: Vec<SourceCount> = (0..5000u32)
        .map(|i| SourceCount {
            netns: None,
            counter: Counter::CookieInvalid,
            source: IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))),
            events: u64::from(i.wrapping_mul(40503) % 97),
        })
        .collect();
    let top = r.rank(counts.iter().copied(), []);
    let mut expected: Vec<(u64, u32)> = counts
        .iter()
        .filter(|c| c.events > 0)
        .map(|c| match c.source {
            IpAddr::V4(a) => (c.events, u32::from(a)),
            IpAddr::V6(_) => (0, 0),
        })
        .collect();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let expected: Vec<(String, u64)> = expected
        .iter()
        .take(25)
        .map(|(e, a)| (Ipv4Addr::from(*a).to_string(), *e))
        .collect();
    let got: Vec<(String, u64)> = top[0]
        .entries
        .iter()
        .map(|e| (e.source.clone(), e.events))
        .collect();
    assert_eq!(got, expected);
    // A second round with fewer sources leaves nothing of the first.
    let top = r.rank([count(None, Counter::CookieInvalid, "192.0.2.1", 1)], []);
    assert_eq!(entries(&top[0]), [("192.0.2.1", 1)]);
}
