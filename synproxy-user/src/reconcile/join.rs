//! The eBPF join: one namespace's /proc totals of a round with its eBPF counts
//! and peak-rate buckets of the same round, through its [`Reconciler`], into
//! the two `synproxy_ebpf` samples (IPv4, IPv6); and one round's map health
//! into the probes sample. Pure: values in, samples out (the sampler does the
//! reads).

use super::ebpf_vs_proc::{proc_counts, Bracket, Input, Reconciler};
use crate::fields::Values;
use crate::sample::{EbpfSample, ProbesSample};
use crate::sources::ebpf::{EbpfRound, NsKey};
use std::time::Duration;

/// The address families, in the order of the per-family arrays.
pub const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

/// One namespace's inputs to the join.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceReading<'a> {
    /// `netns` tag (`None`: the agent's own namespace).
    pub netns: Option<&'a str>,
    /// The namespace's /proc totals this round.
    pub totals: &'a Values<u64>,
    /// The /proc counters restarted this round.
    pub proc_reset: bool,
    /// Its map key, when the agent knows its identity.
    pub ebpf_key: Option<NsKey>,
    /// Its eBPF counts read around its /proc read (`None`: not attached).
    pub bracket: Option<Bracket>,
}

/// Joins one namespace's readings with this round's map read (`None` when
/// the probes are not attached) and returns its IPv4 and IPv6 samples.
/// Peak rates are events per bucket of `resolution`, per second, scaled by
/// /proc delta over eBPF delta when events were missed.
pub fn join(
    reconciler: &mut Reconciler,
    ns: NamespaceReading<'_>,
    round: Option<&EbpfRound>,
    resolution: Duration,
    timestamp_ns: u64,
) -> [EbpfSample; 2] {
    let global_losses = round.map_or(0, |r| r.global_losses);
    let out = reconciler.update(Input {
        proc: proc_counts(ns.totals),
        proc_reset: ns.proc_reset,
        ebpf: ns.bracket,
        global_losses,
    });
    let peaks = match (round, ns.ebpf_key) {
        (Some(r), Some(k)) if ns.bracket.is_some() => r.peaks.get(&k).copied().unwrap_or_default(),
        _ => Default::default(),
    };
    let res_s = resolution.as_secs_f64();
    std::array::from_fn(|f| EbpfSample {
        netns: ns.netns.map(str::to_string),
        family: FAMILIES[f],
        events: out.events[f],
        peak_rates: std::array::from_fn(|c| peaks[f][c] as f64 / res_s * out.scale[c]),
        status: out.status,
        timestamp_ns,
    })
}

/// The probes sample of a round: what the map read returned, or detached.
pub fn probes(
    round: Option<EbpfRound>,
    probe_type: &'static str,
    timestamp_ns: u64,
    sources: Option<crate::sample::SourceMapStats>,
    ports: Option<crate::sample::SourceMapStats>,
) -> ProbesSample {
    match round {
        Some(r) => ProbesSample {
            attached: true,
            probe_type,
            probe_misses: r.global_losses,
            recursion_misses: r.recursion_misses,
            program_recursion: r.program_recursion,
            map_bytes: r.map_bytes,
            probes: r.probes,
            diag: r.diag,
            sources,
            ports,
            timestamp_ns,
        },
        None => ProbesSample {
            attached: false,
            probe_type,
            probe_misses: 0,
            recursion_misses: 0,
            program_recursion: Vec::new(),
            map_bytes: 0,
            probes: Vec::new(),
            diag: Default::default(),
            sources: None,
            ports: None,
            timestamp_ns,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{Field, FIELD_COUNT};
    use crate::reconcile::ebpf_vs_proc::Status;
    use synproxy_common::{Counter, COUNTER_COUNT};

    const KEY: NsKey = (4_026_532_290, 77);
    const RES: Duration = Duration::from_millis(100);

    fn totals(syn: u64, invalid: u64) -> Values<u64> {
        let mut t = [0u64; FIELD_COUNT];
        t[Field::Counter(Counter::SynReceived).index()] = syn;
        t[Field::Counter(Counter::CookieInvalid).index()] = invalid;
        t
    }

    /// eBPF counts with `v4`/`v6` SYNs.
    fn syns(v4: u64, v6: u64) -> [[u64; COUNTER_COUNT]; 2] {
        let mut c = [[0; COUNTER_COUNT]; 2];
        c[0][Counter::SynReceived.index()] = v4;
        c[1][Counter::SynReceived.index()] = v6;
        c
    }

    fn reading<'a>(t: &'a Values<u64>, bracket: Option<Bracket>) -> NamespaceReading<'a> {
        NamespaceReading {
            netns: Some("blue"),
            totals: t,
            proc_reset: false,
            ebpf_key: Some(KEY),
            bracket,
        }
    }

    fn bracket(before: [[u64; COUNTER_COUNT]; 2], after: [[u64; COUNTER_COUNT]; 2]) -> Bracket {
        Bracket {
            generation: 1,
            before,
            after,
        }
    }

    #[test]
    fn detached_is_proc_only_with_zero_events_and_rates() {
        let mut r = Reconciler::new();
        let t = totals(10, 0);
        let out = join(&mut r, reading(&t, None), None, RES, 5);
        for (f, s) in out.iter().enumerate() {
            assert_eq!(s.family, FAMILIES[f]);
            assert_eq!(s.netns.as_deref(), Some("blue"));
            assert_eq!(s.status, Status::ProcOnly);
            assert_eq!(s.events, [0; COUNTER_COUNT]);
            assert_eq!(s.peak_rates, [0.0; COUNTER_COUNT]);
            assert_eq!(s.timestamp_ns, 5);
        }
        let p = probes(None, "kprobe", 5, None, None);
        assert!(!p.attached);
        assert_eq!((p.probe_misses, p.map_bytes), (0, 0));
    }

    #[test]
    fn exact_rounds_split_events_by_family_with_peak_rates() {
        let mut r = Reconciler::new();
        let mut round = EbpfRound::default();
        // Baseline: quiet around the read, 0 SYNs on both sides.
        let t0 = totals(0, 0);
        let first = join(
            &mut r,
            reading(&t0, Some(bracket(syns(0, 0), syns(0, 0)))),
            Some(&round),
            RES,
            1,
        );
        assert_eq!(first[0].status, Status::ProcOnly);
        // 30 IPv4 + 12 IPv6 SYNs; a bucket of 100 ms held 9 IPv4 SYNs at most.
        round.peaks.insert(KEY, syns(9, 2));
        let t1 = totals(42, 0);
        let out = join(
            &mut r,
            reading(&t1, Some(bracket(syns(30, 12), syns(30, 12)))),
            Some(&round),
            RES,
            2,
        );
        assert_eq!(out[0].status, Status::Exact);
        assert_eq!(out[1].status, Status::Exact);
        assert_eq!(out[0].events[Counter::SynReceived.index()], 30);
        assert_eq!(out[1].events[Counter::SynReceived.index()], 12);
        assert_eq!(out[0].peak_rates[Counter::SynReceived.index()], 90.0);
        assert_eq!(out[1].peak_rates[Counter::SynReceived.index()], 20.0);
    }

    #[test]
    fn peaks_of_other_namespaces_stay_theirs() {
        let mut r = Reconciler::new();
        let mut round = EbpfRound::default();
        round.peaks.insert((1, 1), syns(50, 50));
        round.global_losses = 2;
        let t = totals(0, 0);
        let out = join(
            &mut r,
            reading(&t, Some(bracket(syns(0, 0), syns(0, 0)))),
            Some(&round),
            RES,
            1,
        );
        assert_eq!(out[0].peak_rates, [0.0; COUNTER_COUNT]);
    }

    #[test]
    fn no_bracket_means_no_peaks_even_if_the_map_has_some() {
        let mut r = Reconciler::new();
        let mut round = EbpfRound::default();
        round.peaks.insert(KEY, syns(50, 50));
        let t = totals(0, 0);
        let out = join(&mut r, reading(&t, None), Some(&round), RES, 1);
        assert_eq!(out[0].peak_rates, [0.0; COUNTER_COUNT]);
        assert_eq!(out[0].status, Status::ProcOnly);
    }

    #[test]
    fn probes_sample_copies_the_round() {
        let round = EbpfRound {
            global_losses: 4,
            recursion_misses: 3,
            program_recursion: vec![("ack4", 3)],
            map_bytes: 4096,
            ..Default::default()
        };
        let p = probes(Some(round), "kprobe", 9, None, None);
        assert!(p.attached);
        assert_eq!(p.probe_misses, 4);
        assert_eq!(p.recursion_misses, 3);
        assert_eq!(p.program_recursion, vec![("ack4", 3)]);
        assert_eq!(p.map_bytes, 4096);
        assert_eq!(p.timestamp_ns, 9);
    }
}
