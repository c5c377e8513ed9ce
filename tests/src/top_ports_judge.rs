//! The top-ports check's verdict and RESULT line from what a run measured
//! (see `top_ports` for the run); pure, so its pass and fail cases are
//! unit-tested on the host with recorded figures.

use crate::check::{Judged, ResultLine, Verdict};
use crate::top_sources_judge::Health;

/// One counter of the exact phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortCounter {
    pub name: &'static str,
    /// Its RESULT prefix: `syn`, `inv`.
    pub short: &'static str,
    pub driven: u64,
    pub proc_delta: u64,
    /// The agent's `synproxy_ebpf` events of the server netns (both families).
    pub ebpf: u64,
    /// The `synproxy_top_ports` events of the server netns summed.
    pub port_sum: u64,
    /// (port, expected, reported) per driven port.
    pub ports: Vec<(u16, u64, u64)>,
    /// Ports reported that were not driven (port, events).
    pub extra: Vec<(u16, u64)>,
}

/// The per-port map's fields of a `synproxy_ebpf_probes` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortMap {
    pub entries: u64,
    pub capacity: u64,
    pub evictions: u64,
    pub insert_failures: u64,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TopPorts {
    pub counters: Vec<PortCounter>,
    /// cookie_valid events listed per port (none was driven).
    pub valid_listed: u64,
    /// The map after the exact phase.
    pub exact_map: Result<PortMap, String>,
    /// The overflow phase: SYNs sent to distinct ports, /proc's and eBPF's
    /// syn_received, and the map after it.
    pub overflow_sent: u64,
    pub overflow_proc: u64,
    pub overflow_ebpf: u64,
    pub overflow_map: Result<PortMap, String>,
    /// The agent's `--top-ports-map-entries`.
    pub capacity: u64,
    /// Keys the exact phase creates (ports x counters, one family).
    pub exact_keys: u64,
    /// `kprobe`, or `fentry` for the run with `--probes fentry`.
    pub probes: &'static str,
    /// With fentry: the probe type fields (what the agent used, what this
    /// kernel must give) and whether they agree.
    pub probe_type: (String, bool),
    pub health: Health,
    pub rounds: usize,
}

/// `RESULT kernel=K check=top-ports probes=P`.
pub fn head(kernel: &str, probes: &str) -> ResultLine {
    ResultLine::new(kernel, "top-ports").field("probes", probes)
}

impl Judged for TopPorts {
    /// Exact phase: every driven port's events equal to what was sent to it,
    /// no other port, the sum over ports equal to the eBPF total, which equals
    /// /proc and what was driven; the map holds the keys, nothing evicted.
    /// Overflow phase: more ports than the map holds: evictions reported, the
    /// map within its size, eBPF still equal to /proc and to what was sent.
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        v.require(self.probe_type.1, || {
            format!("probe type:{}", self.probe_type.0)
        });
        match &self.health {
            Some((probes, exit)) => {
                probes.judge(&mut v);
                exit.judge("stop", &mut v);
            }
            None => v
                .failed
                .push("per-port counts need eBPF: the agent ran without it".into()),
        }
        for c in &self.counters {
            let name = c.name;
            for &(port, want, got) in &c.ports {
                v.require(want == got, || {
                    format!("{name}: port {port} reported {got}, sent {want}")
                });
            }
            v.require(c.extra.is_empty(), || {
                format!("{name}: ports not driven reported: {:?}", c.extra)
            });
            v.require(c.proc_delta == c.driven, || {
                format!("{name}: /proc moved {}, driven {}", c.proc_delta, c.driven)
            });
            v.require(c.ebpf == c.proc_delta, || {
                format!("{name}: eBPF {}, /proc {}", c.ebpf, c.proc_delta)
            });
            v.require(c.port_sum == c.ebpf, || {
                format!(
                    "{name}: the ports sum to {}, eBPF counted {}",
                    c.port_sum, c.ebpf
                )
            });
        }
        v.require(self.valid_listed == 0, || {
            format!(
                "{} cookie_valid events listed, none driven",
                self.valid_listed
            )
        });
        match &self.exact_map {
            Ok(m) => v.require(
                m.entries == self.exact_keys
                    && m.capacity == self.capacity
                    && m.evictions == 0
                    && m.insert_failures == 0,
                || {
                    format!(
                        "after the exact phase: {m:?}, expected {} entries of {}, nothing evicted",
                        self.exact_keys, self.capacity
                    )
                },
            ),
            Err(e) => v.failed.push(format!("probes line: {e}")),
        }
        v.require(
            self.overflow_proc == self.overflow_sent && self.overflow_ebpf == self.overflow_proc,
            || {
                format!(
                    "overflow: sent {}, /proc {}, eBPF {}",
                    self.overflow_sent, self.overflow_proc, self.overflow_ebpf
                )
            },
        );
        match &self.overflow_map {
            Ok(m) => v.require(
                m.evictions > 0 && m.entries <= self.capacity && m.capacity == self.capacity,
                || {
                    format!(
                        "after {} ports into {} entries: {m:?}: no eviction reported",
                        self.overflow_sent, self.capacity
                    )
                },
            ),
            Err(e) => v.failed.push(format!("probes line: {e}")),
        }
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let mut line = head(kernel, self.probes);
        for c in &self.counters {
            let key = |k: &str| format!("{}_{k}", c.short);
            let ports: Vec<String> = c
                .ports
                .iter()
                .map(|(port, _, got)| format!("{port}:{got}"))
                .collect();
            line = line
                .field(&key("driven"), c.driven)
                .field(&key("proc"), c.proc_delta)
                .field(&key("ebpf"), c.ebpf)
                .field(&key("port_sum"), c.port_sum)
                .field(&key("ports"), ports.join(","));
        }
        let map = |m: &Result<PortMap, String>| match m {
            Ok(m) => format!("{}/{},{}", m.entries, m.capacity, m.evictions),
            Err(_) => "?".into(),
        };
        let line = line
            .field("valid_listed", self.valid_listed)
            .field("map", map(&self.exact_map))
            .field("overflow_sent", self.overflow_sent)
            .field("overflow_ebpf", self.overflow_ebpf)
            .field("overflow_map", map(&self.overflow_map))
            .field("rounds", self.rounds);
        // `probes=fentry` is in the head already.
        let probe = self.probe_type.0.trim().trim_start_matches("probes=fentry");
        match probe.trim() {
            "" => line,
            fields => line.raw(fields),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burst_judge::{Exit, Probes};
    use crate::check::each_fails;

    fn recorded() -> TopPorts {
        let counter = |name, short, ports: &[(u16, u64)]| {
            let n = ports.iter().map(|p| p.1).sum();
            PortCounter {
                name,
                short,
                driven: n,
                proc_delta: n,
                ebpf: n,
                port_sum: n,
                ports: ports.iter().map(|&(p, e)| (p, e, e)).collect(),
                extra: Vec::new(),
            }
        };
        TopPorts {
            counters: vec![
                counter("syn_received", "syn", &[(8080, 60), (8081, 40), (8082, 20)]),
                counter(
                    "cookie_invalid",
                    "inv",
                    &[(8080, 9), (8081, 18), (8082, 27)],
                ),
            ],
            valid_listed: 0,
            exact_map: Ok(PortMap {
                entries: 6,
                capacity: 256,
                evictions: 0,
                insert_failures: 0,
            }),
            overflow_sent: 320,
            overflow_proc: 320,
            overflow_ebpf: 320,
            overflow_map: Ok(PortMap {
                entries: 250,
                capacity: 256,
                evictions: 76,
                insert_failures: 0,
            }),
            capacity: 256,
            exact_keys: 6,
            probes: "fentry",
            probe_type: (
                " probes=fentry probe_type=fentry expected_probe_type=fentry".into(),
                true,
            ),
            health: Some((
                Probes {
                    attached: true,
                    statuses: vec!["exact".into(); 4],
                    ..Probes::default()
                },
                Exit::clean(120),
            )),
            rounds: 5,
        }
    }

    #[test]
    fn the_recorded_run_passes_and_each_failure_fails() {
        const RECORDED: &str = "RESULT kernel=6.12 check=top-ports probes=fentry syn_driven=120 syn_proc=120 syn_ebpf=120 syn_port_sum=120 syn_ports=8080:60,8081:40,8082:20 inv_driven=54 inv_proc=54 inv_ebpf=54 inv_port_sum=54 inv_ports=8080:9,8081:18,8082:27 valid_listed=0 map=6/256,0 overflow_sent=320 overflow_ebpf=320 overflow_map=250/256,76 rounds=5 probe_type=fentry expected_probe_type=fentry status=PASS";
        each_fails(
            &recorded(),
            "6.12",
            RECORDED,
            &[
                |m| m.counters[0].ports[1].2 = 39,
                |m| m.counters[1].extra.push((22, 1)),
                |m| m.counters[0].port_sum = 119,
                |m| m.counters[1].ebpf = 53,
                |m| m.counters[1].proc_delta = 53,
                |m| m.valid_listed = 1,
                |m| m.exact_map = Err("no probes line".into()),
                |m| {
                    if let Ok(map) = &mut m.exact_map {
                        map.evictions = 1;
                    }
                },
                |m| {
                    if let Ok(map) = &mut m.exact_map {
                        map.entries = 7;
                    }
                },
                |m| {
                    if let Ok(map) = &mut m.overflow_map {
                        map.evictions = 0;
                    }
                },
                |m| m.overflow_ebpf = 319,
                |m| m.health = None,
                |m| m.probe_type.1 = false,
            ],
        );
    }
}
