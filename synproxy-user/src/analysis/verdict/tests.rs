use super::*;

const SEC: u64 = 1_000_000_000;

/// Feeds rounds of one second each: per round the increments of each signal's
/// counter (by [`Signal`] index) and the conntrack count/max.
struct Feed {
    ns: NamespaceVerdict,
    params: Params,
    now: u64,
    totals: [u64; Signal::COUNT],
}

impl Feed {
    /// After a first round (no rates yet).
    fn with(params: Params) -> Self {
        let mut f = Self {
            ns: NamespaceVerdict::default(),
            params,
            now: 0,
            totals: [0; Signal::COUNT],
        };
        f.round(&[], None);
        f
    }

    /// After a first round and a 3 s warm-up of quiet.
    fn new() -> Self {
        let mut f = Self::with(Params {
            warmup_secs: 3.0,
            ..Params::default()
        });
        for _ in 0..3 {
            assert_eq!(f.round(&[], None).state, Learning);
        }
        f
    }

    fn round(&mut self, increments: &[(Signal, u64)], ct: Option<(u64, u64)>) -> Verdict {
        self.now += SEC;
        for (s, n) in increments {
            self.totals[*s as usize] += n;
        }
        let mut r = Readings {
            counters: [None; Signal::COUNT],
            conntrack_count_max: ct,
        };
        for s in Signal::ALL {
            if s != Signal::ConntrackFull {
                r.counters[s as usize] = Some(self.totals[s as usize]);
            }
        }
        self.ns.observe(self.now, r, &self.params)
    }
}

use DefenseState::*;
use Signal::*;

#[test]
fn a_quiet_namespace_is_calm_and_a_handful_of_events_do_not_flag_it() {
    let mut f = Feed::new();
    let v = f.round(&[(SynReceived, 20)], Some((10, 1000)));
    assert_eq!((v.state, v.changed_from), (Calm, Some(Learning)));
    for _ in 0..10 {
        let v = f.round(&[(SynReceived, 20), (ListenDrops, 0)], Some((10, 1000)));
        assert_eq!(v.state, Calm, "{v:?}");
        assert!(v.reasons.is_empty() && v.changed_from.is_none());
    }
}

#[test]
fn a_syn_flood_is_absorbed_within_one_round_and_calm_returns_after_the_release() {
    let mut f = Feed::new();
    for _ in 0..30 {
        assert_eq!(f.round(&[(SynReceived, 20)], None).state, Calm);
    }
    let v = f.round(&[(SynReceived, 5000)], None);
    assert_eq!(v.state, SynFloodAbsorbed);
    assert_eq!(v.changed_from, Some(Calm));
    assert_eq!(v.since_ns, f.now);
    // The baseline: 3 quiet seconds and 30 at 20/s, a mean until 300 s.
    let line = v.reasons_line();
    assert_eq!(line, "syn_received 5000.0/s >= 90.9/s (baseline 18.2/s)");
    // Still flooding: same state, no change, since unchanged.
    let since = v.since_ns;
    let v = f.round(&[(SynReceived, 4000)], None);
    assert_eq!(
        (v.state, v.changed_from, v.since_ns),
        (SynFloodAbsorbed, None, since)
    );
    // Back to normal: held for one round, calm after the second.
    assert_eq!(f.round(&[(SynReceived, 20)], None).state, SynFloodAbsorbed);
    let v = f.round(&[(SynReceived, 20)], None);
    assert_eq!((v.state, v.changed_from), (Calm, Some(SynFloodAbsorbed)));
}

#[test]
fn the_flood_is_not_learnt_as_normal() {
    let mut f = Feed::new();
    for _ in 0..600 {
        f.round(&[(SynReceived, 5000)], None);
    }
    let v = f.round(&[(SynReceived, 5000)], None);
    assert_eq!(v.state, SynFloodAbsorbed);
    assert_eq!(v.reasons[0].baseline, 0.0);
}

#[test]
fn the_warm_up_learns_a_busy_namespace_instead_of_flagging_it() {
    let mut f = Feed::with(Params::default());
    for _ in 0..30 {
        let v = f.round(&[(SynReceived, 1000), (ListenDrops, 2)], None);
        assert_eq!((v.state, v.reasons.len()), (Learning, 0));
    }
    let v = f.round(&[(SynReceived, 1000), (ListenDrops, 2)], None);
    assert_eq!((v.state, v.changed_from), (Calm, Some(Learning)));
    // conntrack's fill needs no baseline: judged while learning.
    let mut f = Feed::with(Params::default());
    assert_eq!(f.round(&[], Some((990, 1000))).state, ConntrackExhausted);
}

#[test]
fn a_busy_namespace_needs_five_times_its_own_rate() {
    let mut f = Feed::with(Params::default());
    for i in 0..300 {
        let state = f.round(&[(SynReceived, 1000)], None).state;
        assert_eq!(state, if i < 30 { Learning } else { Calm });
    }
    assert_eq!(f.round(&[(SynReceived, 4000)], None).state, Calm);
    assert_eq!(
        f.round(&[(SynReceived, 6000)], None).state,
        SynFloodAbsorbed
    );
}

#[test]
fn a_pulsing_flood_does_not_flap() {
    let mut f = Feed::new();
    f.round(&[(SynReceived, 1000)], None);
    for i in 0..20 {
        // Half the threshold or more holds: 30/s against a 50/s floor.
        let n = if i % 2 == 0 { 1000 } else { 30 };
        assert_eq!(f.round(&[(SynReceived, n)], None).state, SynFloodAbsorbed);
    }
}

#[test]
fn the_most_severe_signal_decides_and_every_firing_one_is_a_reason() {
    let mut f = Feed::new();
    let v = f.round(
        &[
            (SynReceived, 5000),
            (CookieInvalid, 3000),
            (ListenDrops, 40),
            (KernelSyncookies, 500),
        ],
        None,
    );
    assert_eq!(v.state, BackendSaturated);
    let names: Vec<&str> = v.reasons.iter().map(|r| r.signal.name()).collect();
    assert_eq!(
        names,
        [
            "TcpExtListenDrops",
            "TcpExtSyncookiesSent",
            "cookie_invalid",
            "syn_received"
        ]
    );
}

#[test]
fn each_state_has_its_signal() {
    let cases = [
        (CookieInvalid, 500, InvalidAckFlood),
        (KernelSyncookies, 200, UnprotectedSynFlood),
        (ListenDrops, 3, BackendSaturated),
        (CookieRetrans, 50, BackendSaturated),
        (ConntrackDrops, 2, ConntrackExhausted),
    ];
    for (signal, n, state) in cases {
        let mut f = Feed::new();
        f.round(&[], None);
        assert_eq!(f.round(&[(signal, n)], None).state, state, "{signal:?}");
    }
}

#[test]
fn conntrack_near_its_maximum_is_exhausted_whatever_the_rates() {
    let mut f = Feed::new();
    assert_eq!(f.round(&[], Some((900, 1000))).state, Calm);
    let v = f.round(&[], Some((960, 1000)));
    assert_eq!(v.state, ConntrackExhausted);
    assert_eq!(
        v.reasons_line(),
        "conntrack_fill 96% of nf_conntrack_max (>= 95%)"
    );
    // A max of 0 (unreadable) never divides.
    assert_eq!(f.round(&[], Some((5, 0))).state, Calm);
}

#[test]
fn a_layer_not_read_or_a_counter_reset_gives_no_rate_and_no_false_alarm() {
    let mut ns = NamespaceVerdict::default();
    let p = Params {
        warmup_secs: 0.0,
        ..Params::default()
    };
    let mut r = Readings::default();
    r.counters[SynReceived as usize] = Some(1_000_000);
    ns.observe(SEC, r, &p);
    // Recreated counters (module reloaded): smaller than before.
    r.counters[SynReceived as usize] = Some(10);
    assert_eq!(ns.observe(2 * SEC, r, &p).state, Calm);
    // Layer gone.
    r.counters[SynReceived as usize] = None;
    assert_eq!(ns.observe(3 * SEC, r, &p).state, Calm);
    // Same timestamp twice: no rate.
    r.counters[SynReceived as usize] = Some(10);
    ns.observe(4 * SEC, r, &p);
    r.counters[SynReceived as usize] = Some(100_000);
    assert_eq!(ns.observe(4 * SEC, r, &p).state, Calm);
}

#[test]
fn state_names_are_distinct_and_ordered_by_severity() {
    for (i, s) in DefenseState::ALL.iter().enumerate() {
        assert_eq!(s.severity() as usize, i);
    }
    let mut names: Vec<&str> = DefenseState::ALL.iter().map(|s| s.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), DefenseState::ALL.len());
}
