//! `--prometheus-top-sources`: what each mode puts on `/metrics`.

use super::exposition::{render, Format};
use super::tests::{has, promtool_check, samples, top, with_top};
use super::{Published, TopSeries};
use synproxy_common::Counter;

/// Two IPv4 lists (one with three sources in two /24s) and an IPv6 list of
/// three addresses in two /64s.
fn flood_round(mode: TopSeries) -> Published {
    let mut published = Published {
        top_series: mode,
        ..Published::default()
    };
    let mut v6 = top(
        None,
        &[
            ("2001:db8:1:2::7", 6),
            ("2001:db8:1:2:ffff::1", 3),
            ("2001:db8:1:3::1", 1),
        ],
    );
    v6.family = "ipv6";
    v6.counter = Counter::CookieInvalid;
    with_top(
        &mut published,
        vec![
            top(
                Some("blue"),
                &[
                    ("203.0.113.7", 30),
                    ("198.51.100.9", 12),
                    ("203.0.113.200", 8),
                ],
            ),
            v6,
        ],
    );
    published
}

fn top_lines(text: &str) -> Vec<&str> {
    samples(text)
        .into_iter()
        .filter(|l| l.starts_with("synproxy_top_source"))
        .collect()
}

#[test]
fn off_shows_no_source_at_all() {
    let published = flood_round(TopSeries::Off);
    assert_eq!(Published::default().top_series, TopSeries::Off);
    for format in [Format::Text, Format::OpenMetrics] {
        let text = render(&published, format).unwrap();
        assert!(!text.contains("synproxy_top_source"), "{text}");
        assert!(!text.contains("203.0.113"), "{text}");
    }
    // The rest of the exposition is there.
    let text = render(&published, Format::Text).unwrap();
    assert!(
        has(&text, "synproxy_syn_received_total{netns=\"blue\"} 30"),
        "{text}"
    );
    promtool_check(&text);
}

#[test]
fn prefix_sums_sources_into_24s_and_64s_without_rank() {
    let text = render(&flood_round(TopSeries::Prefix), Format::Text).unwrap();
    let expected = [
        "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"203.0.113.0/24\"} 38",
        "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"198.51.100.0/24\"} 12",
        "synproxy_top_source_events{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",source=\"2001:db8:1:2::/64\"} 9",
        "synproxy_top_source_events{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",source=\"2001:db8:1:3::/64\"} 1",
        "synproxy_top_source_share{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"203.0.113.0/24\"} 0.76",
        "synproxy_top_source_share{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"198.51.100.0/24\"} 0.24",
        "synproxy_top_source_share{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",source=\"2001:db8:1:2::/64\"} 0.9",
        "synproxy_top_source_share{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",source=\"2001:db8:1:3::/64\"} 0.1",
    ];
    let mut got = top_lines(&text);
    got.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "{text}");
    assert!(!text.contains("rank="), "{text}");
    promtool_check(&text);
}

#[test]
fn address_shows_each_source_without_rank() {
    let text = render(&flood_round(TopSeries::Address), Format::Text).unwrap();
    let lines = top_lines(&text);
    assert_eq!(lines.len(), 12, "{text}");
    for line in [
        "synproxy_top_source_events{netns=\"blue\",family=\"ipv4\",counter=\"syn_received\",source=\"203.0.113.200\"} 8",
        "synproxy_top_source_events{netns=\"self\",family=\"ipv6\",counter=\"cookie_invalid\",source=\"2001:db8:1:2:ffff::1\"} 3",
    ] {
        assert!(has(&text, line), "{line} missing in\n{text}");
    }
    assert!(!text.contains("rank="), "{text}");
    promtool_check(&text);
}
