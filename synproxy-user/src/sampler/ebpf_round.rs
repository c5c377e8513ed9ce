//! The eBPF side of a round: the maps read once, joined with each
//! namespace's /proc totals, the probes' health and the top sources.

use super::*;

impl Sampler {
    /// Reads this round's eBPF maps and joins them with each namespace's
    /// /proc totals ([`join::join`]): per read, its IPv4 and IPv6 samples
    /// (`None` for all without eBPF); sets the round's probes sample.
    pub(super) fn reconcile_ebpf(
        &mut self,
        reads: &[Read],
        generation: Option<u64>,
        timestamp_ns: u64,
        round: &mut Snapshot,
    ) -> Vec<Option<[crate::sample::EbpfSample; 2]>> {
        let Some(ebpf) = self.config.ebpf.as_mut() else {
            return Vec::new();
        };
        let mut keep = present_ebpf_keys(&self.series);
        keep.extend(self.own_id.map(|id| id.ebpf_key()));
        let mut ebpf_round = ebpf.read_round(&keep);
        let sources = ebpf_round.as_mut().and_then(|r| r.sources.take());
        let ports = ebpf_round.as_mut().and_then(|r| r.ports.take());
        let probe_type = ebpf.probe_type().as_str();
        let resolution = ebpf.rate_resolution();
        let mut out = Vec::with_capacity(reads.len());
        for read in reads {
            let Some(series) = self.series.get_mut(&read.key) else {
                out.push(None);
                continue;
            };
            let bracket = match (generation, read.before, read.after) {
                (Some(generation), Some(before), Some(after)) => Some(Bracket {
                    generation,
                    before,
                    after,
                }),
                _ => None,
            };
            let reading = NamespaceReading {
                netns: (read.key != SeriesKey::Own).then_some(read.label.as_str()),
                totals: &read.totals,
                proc_reset: read.reset,
                ebpf_key: read.ebpf_key,
                bracket,
            };
            out.push(Some(join::join(
                &mut series.reconciler,
                reading,
                ebpf_round.as_ref(),
                resolution,
                timestamp_ns,
            )));
        }
        // Present only while the kernel counts them (kernel.bpf_stats_enabled).
        round.agent.programs = ebpf_round
            .as_ref()
            .map(|r| {
                r.program_runs
                    .iter()
                    .map(
                        |&(program, run_time_ns, run_count)| crate::sample::ProgramRuns {
                            program,
                            run_time_ns,
                            run_count,
                        },
                    )
                    .collect()
            })
            .unwrap_or_default();
        let source_map = sources.as_ref().map(|s| SourceMapStats {
            entries: s.entries,
            capacity: s.capacity,
            evictions: s.evictions,
            insert_failures: s.insert_failures,
            map_bytes: s.map_bytes,
        });
        if let Some(sources) = sources {
            round.top_sources = rank_sources(&mut self.ranker, reads, &out, &sources);
        }
        let port_map = ports.as_ref().map(|p| SourceMapStats {
            entries: p.entries,
            capacity: p.capacity,
            evictions: p.evictions,
            insert_failures: p.insert_failures,
            map_bytes: p.map_bytes,
        });
        if let Some(ports) = ports {
            round.top_ports = rank_ports_of(self.config.top.ports, reads, &out, &ports);
        }
        round.probes = Some(join::probes(
            ebpf_round,
            probe_type,
            timestamp_ns,
            source_map,
            port_map,
        ));
        out
    }
}

/// eBPF keys of the namespaces found this round: a slot is released as soon
/// as its namespace is not found (a namespace that comes back gets a new one,
/// and its reconcile a new baseline).
pub(super) fn present_ebpf_keys(series: &HashMap<SeriesKey, Series>) -> HashSet<NsKey> {
    series
        .iter()
        .filter(|(_, s)| s.missing_rounds == 0)
        .filter_map(|(k, _)| match k {
            SeriesKey::Netns(id) => Some(id.ebpf_key()),
            SeriesKey::Own => None,
        })
        .collect()
}

/// The interval's top ports of the namespaces read this round; shares are of
/// the namespace's eBPF events of the interval (both families).
pub(super) fn rank_ports_of(
    n: usize,
    reads: &[Read],
    samples: &[Option<[EbpfSample; 2]>],
    ports: &PortsRound,
) -> Vec<crate::sample::TopPorts> {
    use crate::ranking::ports::{rank_ports, CounterTotal, PortCount};
    let labels: HashMap<NsKey, Option<&str>> = reads
        .iter()
        .filter_map(|r| {
            let label = (r.key != SeriesKey::Own).then_some(r.label.as_str());
            r.ebpf_key.map(|k| (k, label))
        })
        .collect();
    let mut totals = Vec::new();
    for (read, pair) in reads.iter().zip(samples) {
        let Some(pair) = pair else { continue };
        let netns = (read.key != SeriesKey::Own).then_some(read.label.as_str());
        for counter in SOURCE_COUNTERS {
            totals.push(CounterTotal {
                netns,
                counter,
                events: pair.iter().map(|s| s.events[counter.index()]).sum(),
            });
        }
    }
    let counts = ports.events.iter().filter_map(|e| {
        Some(PortCount {
            netns: *labels.get(&e.ns)?,
            counter: e.counter,
            port: e.port,
            events: e.events,
        })
    });
    rank_ports(n, counts, &totals)
}

/// The counters counted per source.
const SOURCE_COUNTERS: [synproxy_common::Counter; 3] = [
    synproxy_common::Counter::SynReceived,
    synproxy_common::Counter::CookieInvalid,
    synproxy_common::Counter::CookieValid,
];

/// The interval's top sources of the namespaces read this round; shares are
/// of the namespace's eBPF events of the interval (evicted sources' included).
pub(super) fn rank_sources(
    ranker: &mut TopRanker,
    reads: &[Read],
    samples: &[Option<[EbpfSample; 2]>],
    sources: &SourcesRound,
) -> Vec<TopSources> {
    let labels: HashMap<NsKey, Option<&str>> = reads
        .iter()
        .filter_map(|r| {
            let label = (r.key != SeriesKey::Own).then_some(r.label.as_str());
            r.ebpf_key.map(|k| (k, label))
        })
        .collect();
    let mut totals = Vec::new();
    for (read, pair) in reads.iter().zip(samples) {
        let Some(pair) = pair else { continue };
        let netns = (read.key != SeriesKey::Own).then_some(read.label.as_str());
        for (family, sample) in [Family::Ipv4, Family::Ipv6].into_iter().zip(pair) {
            for counter in SOURCE_COUNTERS {
                totals.push(IntervalTotal {
                    netns,
                    family,
                    counter,
                    events: sample.events[counter.index()],
                });
            }
        }
    }
    let counts = sources.events.iter().filter_map(|e| {
        let netns = *labels.get(&e.ns)?;
        Some(SourceCount {
            netns,
            counter: e.counter,
            source: e.source,
            events: e.events,
        })
    });
    ranker.rank(counts, totals)
}
