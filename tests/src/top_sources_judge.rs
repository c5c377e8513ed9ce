//! The top-sources checks' verdicts and RESULT lines from what a run
//! measured (see `top_sources_ground_truth` and `top_sources_flood` for the
//! runs); pure, so their pass and fail cases are unit-tested on the host
//! with recorded figures.

use crate::burst_judge::{Exit, Probes};
use crate::check::{Judged, ResultLine, Verdict};
use crate::top_sources::{MapFields, FLOOD_MAP_ENTRIES, FLOOD_SOURCES, HEAVY, SOURCES};
use std::net::IpAddr;

/// The eBPF agent's health over a run, None when it ran without eBPF
/// (which fails: per-source counts need it).
pub type Health = Option<(Probes, Exit)>;

fn judge_health(health: &Health, v: &mut Verdict) {
    match health {
        Some((probes, exit)) => {
            probes.judge(v);
            exit.judge("stop", v);
        }
        None => v
            .failed
            .push("per-source counts need eBPF (kprobes): the agent ran with --no-ebpf".into()),
    }
}

/// One counter of the ground truth check, for the run's family.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterTruth {
    pub name: &'static str,
    /// Its RESULT prefix: `syn`, `inv`, `valid`.
    pub short: &'static str,
    pub driven: u64,
    pub proc_delta: u64,
    /// eBPF's count of this family and of the other one.
    pub ebpf: u64,
    pub ebpf_other: u64,
    /// The listed sources' events summed, how many were listed and expected.
    pub top_sum: u64,
    pub listed: usize,
    pub expected: usize,
    /// Sources whose sum differs from their count (the first few described).
    pub mismatches: usize,
    pub diffs: Vec<String>,
    /// Sources of the other family listed, if any.
    pub other_listed: Option<usize>,
}

/// What one ground truth run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    pub rules: &'static str,
    pub family: &'static str,
    pub connections: u32,
    pub counters: Vec<CounterTruth>,
    /// `source_evictions` of the last probes line, or why it was not read.
    pub evictions: Result<u64, String>,
    pub health: Health,
    pub rounds: usize,
}

/// `RESULT kernel=K check=top-sources rules=R family=F sources=60`.
pub fn ground_truth_head(kernel: &str, rules: &str, family: &str) -> ResultLine {
    ResultLine::new(kernel, "top-sources")
        .field("rules", rules)
        .field("family", family)
        .field("sources", SOURCES)
}

impl Judged for GroundTruth {
    /// Per counter: every source's sum equal to its count, the sums equal
    /// to eBPF's count of the family (none of the other), which equals the
    /// /proc delta, which equals what was driven; no eviction; a healthy agent.
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        judge_health(&self.health, &mut v);
        let other = if self.family == "ipv4" {
            "ipv6"
        } else {
            "ipv4"
        };
        for c in &self.counters {
            let name = c.name;
            v.require(c.mismatches == 0, || {
                format!(
                    "{name}: {} sources differ: {}",
                    c.mismatches,
                    c.diffs.join(", ")
                )
            });
            v.require(c.proc_delta == c.driven, || {
                format!("{name}: /proc moved {}, driven {}", c.proc_delta, c.driven)
            });
            v.require(c.ebpf == c.proc_delta && c.ebpf_other == 0, || {
                format!(
                    "{name}: eBPF {} {} ({other} {}), /proc {}",
                    self.family, c.ebpf, c.ebpf_other, c.proc_delta
                )
            });
            v.require(c.top_sum == c.ebpf, || {
                format!(
                    "{name}: the listed sources sum to {}, eBPF counted {}",
                    c.top_sum, c.ebpf
                )
            });
            if let Some(n) = c.other_listed {
                v.failed.push(format!("{name}: {n} {other} sources listed"));
            }
        }
        match &self.evictions {
            Ok(e) => v.require(*e == 0, || {
                format!("source_evictions={e} with {SOURCES} sources")
            }),
            Err(e) => v.failed.push(format!("probes line: {e}")),
        }
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let mut line = ground_truth_head(kernel, self.rules, self.family)
            .field("connections", self.connections);
        for c in &self.counters {
            let key = |k: &str| format!("{}_{k}", c.short);
            line = line
                .field(&key("driven"), c.driven)
                .field(&key("proc"), c.proc_delta)
                .field(&key("ebpf"), c.ebpf)
                .field(&key("top_sum"), c.top_sum)
                .field(&key("sources"), format!("{}/{}", c.listed, c.expected));
        }
        let evictions = match &self.evictions {
            Ok(e) => e.to_string(),
            Err(_) => "?".into(),
        };
        line.field(
            "mismatches",
            self.counters.iter().map(|c| c.mismatches).sum::<usize>(),
        )
        .field("source_evictions", evictions)
        .field("rounds", self.rounds)
    }
}

/// What one spoofed-flood run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoofedFlood {
    pub sent: u64,
    pub proc_delta: u64,
    pub ebpf: u64,
    /// Ranks 1-5 of the summed syn_received, the heavy sources they must
    /// be, and rank 6's events.
    pub top5: Vec<(IpAddr, u64)>,
    pub expected: Vec<(IpAddr, u64)>,
    pub rank6: u64,
    pub map: Result<MapFields, String>,
    /// The `/metrics` series and the real Prometheus' figures as their own
    /// judges gave them: RESULT fields and whether they pass.
    pub series: (String, bool),
    pub prometheus: Option<(String, bool)>,
    pub health: Health,
    pub rounds: usize,
    pub send_secs: f64,
}

/// `RESULT kernel=K check=top-sources mode=flood ...`.
pub fn flood_head(kernel: &str) -> ResultLine {
    let heavy: Vec<String> = HEAVY.iter().map(u32::to_string).collect();
    ResultLine::new(kernel, "top-sources")
        .field("mode", "flood")
        .field("rules", "xt")
        .field("family", "ipv4")
        .field("random_sources", FLOOD_SOURCES)
        .field("heavy", heavy.join("/"))
        .field("map_entries", FLOOD_MAP_ENTRIES)
}

fn show(v: &[(IpAddr, u64)]) -> String {
    v.iter()
        .map(|(a, n)| format!("{a}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Judged for SpoofedFlood {
    /// /proc moved by what was sent, eBPF equal to it, the heavy sources
    /// ranked 1-5 with their exact counts, the map full and evicting but
    /// within its capacity, the series within their bounds, a healthy agent.
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        judge_health(&self.health, &mut v);
        v.require(self.proc_delta == self.sent, || {
            format!(
                "/proc syn_received moved {}, {} SYNs sent",
                self.proc_delta, self.sent
            )
        });
        v.require(self.ebpf == self.proc_delta, || {
            format!("eBPF syn_received {}, /proc {}", self.ebpf, self.proc_delta)
        });
        v.require(self.top5 == self.expected, || {
            format!(
                "ranks 1-5 of summed syn_received: {} (expected {})",
                show(&self.top5),
                show(&self.expected)
            )
        });
        match &self.map {
            Ok(m) => {
                v.require(m.evictions > 0, || {
                    format!(
                        "source_evictions=0 after {FLOOD_SOURCES} sources into a map of {} entries",
                        m.capacity
                    )
                });
                v.require(
                    m.capacity == u64::from(FLOOD_MAP_ENTRIES) && m.entries <= m.capacity,
                    || {
                        format!(
                            "source_map_entries={} source_map_capacity={}",
                            m.entries, m.capacity
                        )
                    },
                );
            }
            Err(e) => v.failed.push(format!("probes line: {e}")),
        }
        v.require(self.series.1, || {
            "the per-source series of /metrics (see below)".into()
        });
        if let Some((_, ok)) = &self.prometheus {
            v.require(*ok, || "the real Prometheus' series (see below)".into());
        }
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let line = flood_head(kernel)
            .field("syn_driven", self.sent)
            .field("proc_syn", self.proc_delta)
            .field("ebpf_syn", self.ebpf)
            .field("top5", show(&self.top5))
            .field("rank6_events", self.rank6);
        let line = match &self.map {
            Ok(m) => line
                .field("source_evictions", m.evictions)
                .field("source_map_entries", m.entries)
                .field("source_map_capacity", m.capacity)
                .field("source_map_bytes", m.bytes),
            Err(_) => line.field("source_evictions", "?"),
        };
        let prometheus = match &self.prometheus {
            Some((text, _)) => text.clone(),
            None => "prometheus=not-in-this-boot".into(),
        };
        line.raw(&self.series.0)
            .raw(&prometheus)
            .field("rounds", self.rounds)
            .field("send_time", format!("{:.1}s", self.send_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn healthy() -> Health {
        Some((
            Probes {
                attached: true,
                statuses: vec!["exact".into(); 8],
                ..Probes::default()
            },
            Exit::clean(120),
        ))
    }

    fn counter(name: &'static str, short: &'static str, n: u64, sources: usize) -> CounterTruth {
        CounterTruth {
            name,
            short,
            driven: n,
            proc_delta: n,
            ebpf: n,
            top_sum: n,
            listed: sources,
            expected: sources,
            ..CounterTruth::default()
        }
    }

    #[test]
    fn the_recorded_ground_truth_passes_and_each_failure_fails() {
        const RECORDED: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=top-sources rules=nft family=ipv4 sources=60 connections=55 syn_driven=1830 syn_proc=1830 syn_ebpf=1830 syn_top_sum=1830 syn_sources=60/60 inv_driven=3600 inv_proc=3600 inv_ebpf=3600 inv_top_sum=3600 inv_sources=60/60 valid_driven=55 valid_proc=55 valid_ebpf=55 valid_top_sum=55 valid_sources=10/10 mismatches=0 source_evictions=0 rounds=4 status=PASS";
        let recorded = GroundTruth {
            rules: "nft",
            family: "ipv4",
            connections: 55,
            counters: vec![
                counter("syn_received", "syn", 1830, 60),
                counter("cookie_invalid", "inv", 3600, 60),
                counter("cookie_valid", "valid", 55, 10),
            ],
            evictions: Ok(0),
            health: healthy(),
            rounds: 4,
        };
        let broken: [fn(&mut GroundTruth); 9] = [
            |m| {
                m.counters[0].mismatches = 1;
                m.counters[0].diffs = vec!["10.78.0.7: 7 listed, 8 driven".into()];
            },
            |m| m.counters[1].proc_delta = 3599,
            |m| m.counters[2].ebpf = 54,
            |m| m.counters[0].ebpf_other = 1,
            |m| m.counters[1].top_sum = 3599,
            |m| m.counters[2].other_listed = Some(1),
            |m| m.evictions = Ok(3),
            |m| m.evictions = Err("no synproxy_ebpf_probes line".into()),
            |m| m.health = None,
        ];
        crate::check::each_fails(&recorded, "5.10.0-46-cloud-amd64", RECORDED, &broken);
    }

    #[test]
    fn the_recorded_spoofed_flood_passes_and_each_failure_fails() {
        const RECORDED: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=top-sources mode=flood rules=xt family=ipv4 random_sources=100000 heavy=600/500/400/300/200 map_entries=16384 syn_driven=102000 proc_syn=102000 ebpf_syn=102000 top5=198.18.0.1=600,198.18.0.2=500,198.18.0.3=400,198.18.0.4=300,198.18.0.5=200 rank6_events=1 source_evictions=83709 source_map_entries=16296 source_map_capacity=16384 source_map_bytes=1839104 prom_scrapes=11 prom_failed_scrapes=0 prom_prefix_series=20 prom_series_bound=840 address_mode_series=60 rounds=6 send_time=4.6s status=PASS";
        let heavy: Vec<(IpAddr, u64)> = HEAVY
            .iter()
            .zip(1..)
            .map(|(n, i)| (IpAddr::V4(Ipv4Addr::new(198, 18, 0, i)), u64::from(*n)))
            .collect();
        let recorded = SpoofedFlood {
            sent: 102_000,
            proc_delta: 102_000,
            ebpf: 102_000,
            top5: heavy.clone(),
            expected: heavy,
            rank6: 1,
            map: Ok(MapFields {
                entries: 16296,
                capacity: 16384,
                evictions: 83709,
                bytes: 1_839_104,
            }),
            series: (
                "prom_scrapes=11 prom_failed_scrapes=0 prom_prefix_series=20 prom_series_bound=840 address_mode_series=60".into(),
                true,
            ),
            prometheus: None,
            health: healthy(),
            rounds: 6,
            send_secs: 4.6,
        };
        let mut line = recorded.line("5.10.0-46-cloud-amd64").status(true);
        line = line.replace(" prometheus=not-in-this-boot", "");
        assert_eq!(line, RECORDED);
        let broken: [fn(&mut SpoofedFlood); 10] = [
            |m| m.proc_delta = 101_999,
            |m| m.ebpf = 101_999,
            |m| m.top5.swap(3, 4),
            |m| m.top5[0].1 = 601,
            |m| m.map.as_mut().expect("map").evictions = 0,
            |m| m.map.as_mut().expect("map").capacity = 8192,
            |m| m.map = Err("no synproxy_ebpf_probes line".into()),
            |m| m.series.1 = false,
            |m| m.prometheus = Some(("prometheus_series_created=9000".into(), false)),
            |m| m.health.as_mut().expect("health").1.ok = false,
        ];
        for (i, breaking) in broken.iter().enumerate() {
            let mut m = recorded.clone();
            breaking(&mut m);
            assert!(!m.judge().pass(), "case {i}");
        }
    }
}
