//! The flood and shutdown checks' verdicts and RESULT lines from what a run
//! measured (see `ebpf_checks` for the runs); pure, so their pass and fail
//! cases are unit-tested on the host with recorded figures.

use crate::burst_judge::{Burst, Exit, ProbeType};
use crate::check::{Judged, ResultLine, Verdict};

/// The flood's round as the agent's `/metrics` served it (-1: absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Why no body was read, if none was.
    pub error: Option<String>,
    pub proc_syn: f64,
    pub ebpf_syn: f64,
    pub ebpf_inv: f64,
    /// `synproxy_ebpf_reconcile_status{status="exact"}`.
    pub exact: f64,
    pub synack4_runs: f64,
    pub synack4_secs: f64,
}

impl Metrics {
    fn ns_per_run(&self) -> f64 {
        if self.synack4_runs > 0.0 {
            self.synack4_secs * 1e9 / self.synack4_runs
        } else {
            0.0
        }
    }
}

/// What one flood run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flood {
    pub probe: ProbeType,
    /// Under `--probes fentry` on a kernel without module BTF, the agent
    /// must warn that it uses kprobes: whether that applies, and it did.
    pub fallback_expected: bool,
    pub fallback_logged: bool,
    pub burst: Burst,
    pub recursion_misses: u64,
    /// The server's highest `syn_received_peak_rate`.
    pub peak: f64,
    pub send_secs: f64,
    /// The client's address and the `synproxy_top_sources` (source, events)
    /// of syn_received and cookie_invalid.
    pub client: String,
    pub top_syn: Vec<(String, u64)>,
    pub top_inv: Vec<(String, u64)>,
    /// The probes line's `source_map_entries` and `source_evictions`.
    pub source_map_entries: u64,
    pub source_evictions: u64,
    /// The server's syn_received total in /proc after the flood.
    pub proc_syn_total: u64,
    pub metrics: Metrics,
    pub exit: Exit,
}

/// `RESULT kernel=K check=flood rules=xt family=ipv4 syn_driven= ack_driven=`.
pub fn flood_head(kernel: &str, syns: u32, acks: u32) -> ResultLine {
    ResultLine::new(kernel, "flood")
        .field("rules", "xt")
        .field("family", "ipv4")
        .field("syn_driven", syns)
        .field("ack_driven", acks)
}

impl Judged for Flood {
    fn judge(&self) -> Verdict {
        let m = self;
        let mut v = Verdict::default();
        m.probe.judge(&mut v);
        // Where fentry cannot be used the agent must say why, once, and use kprobes.
        v.require(!m.fallback_expected || m.fallback_logged, || {
            "no `--probes fentry: ...; using kprobes` warning".into()
        });
        let b = &m.burst;
        b.judge(&mut v);
        v.require(m.peak > 0.0, || "no syn_received peak rate reported".into());
        // Per-source counting (--top, on by default): every packet came from
        // the client's address, so it is the one source, with every event.
        let only = |n: u64| vec![(m.client.clone(), n)];
        v.require(
            m.top_syn == only(b.syn_driven) && m.top_inv == only(b.ack_driven),
            || {
                format!(
                    "top sources: syn_received {:?}, cookie_invalid {:?}; expected only {} with {} and {}",
                    m.top_syn, m.top_inv, m.client, b.syn_driven, b.ack_driven
                )
            },
        );
        v.require(m.source_map_entries >= 2 && m.source_evictions == 0, || {
            format!(
                "synproxy_ebpf_probes: source_map_entries={} source_evictions={} (expected at least 2 and 0)",
                m.source_map_entries, m.source_evictions
            )
        });
        let p = &m.metrics;
        if let Some(e) = &p.error {
            v.failed.push(format!("GET /metrics: {e}"));
        }
        v.require(
            p.proc_syn == m.proc_syn_total as f64
                && p.ebpf_syn == b.ebpf_syn as f64
                && p.ebpf_inv == b.ebpf_inv as f64
                && p.exact == 1.0,
            || {
                format!(
                    "/metrics: synproxy_syn_received_total={} (kernel {}), eBPF syn_received={} cookie_invalid={} (stdout {}/{}), reconcile exact={}",
                    p.proc_syn, m.proc_syn_total, p.ebpf_syn, p.ebpf_inv, b.ebpf_syn, b.ebpf_inv, p.exact
                )
            },
        );
        // Every SYN went through synack4 while the kernel counted run time.
        v.require(
            p.synack4_runs >= b.syn_driven as f64 && p.synack4_secs > 0.0,
            || {
                format!(
                    "/metrics: synack4 runs={} run time={}s with bpf_stats_enabled=1, {} SYNs sent",
                    p.synack4_runs, p.synack4_secs, b.syn_driven
                )
            },
        );
        m.exit.judge("SIGTERM", &mut v);
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let m = self;
        let b = &m.burst;
        let p = &m.metrics;
        let head = flood_head(kernel, b.syn_driven as u32, b.ack_driven as u32);
        b.add_counts(m.probe.add_to(head))
            .field("misses", b.probes.missed)
            .field("probe_misses", b.probes.probe_misses)
            .field("recursion_misses", m.recursion_misses)
            .field("reconcile", b.reconcile())
            .field("peak_syn_rate", format!("{:.0}/s", m.peak))
            .field("send_time", format!("{:.1}s", m.send_secs))
            .field("metrics_ebpf_syn", p.ebpf_syn)
            .field("metrics_proc_syn", p.proc_syn)
            .field("synack4_runs", p.synack4_runs)
            .field("synack4_ns_per_run", format!("{:.0}", p.ns_per_run()))
            .field("top_syn", m.top_syn.first().map_or(0, |t| t.1))
            .field("top_inv", m.top_inv.first().map_or(0, |t| t.1))
            .field("source_map_entries", m.source_map_entries)
    }
}

/// What one shutdown run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shutdown {
    /// How the agent was stopped (`sigterm`, `stdin-eof`...).
    pub stop: &'static str,
    pub probe: ProbeType,
    /// Kprobe events the agent attached, and how many it must (none under fentry).
    pub attached: usize,
    pub expected_events: usize,
    pub bpf_objects: usize,
    pub exit: Exit,
}

/// `RESULT kernel=K check=shutdown stop=HOW`.
pub fn shutdown_head(kernel: &str, stop: &str) -> ResultLine {
    ResultLine::new(kernel, "shutdown").field("stop", stop)
}

impl Judged for Shutdown {
    fn judge(&self) -> Verdict {
        let m = self;
        let mut v = Verdict::default();
        m.probe.judge(&mut v);
        m.exit.judge("SIGTERM", &mut v);
        v.require(m.bpf_objects > 0, || {
            "no BPF object of the agent seen".into()
        });
        v.require(m.attached == m.expected_events, || {
            format!(
                "{} kprobe events attached, expected {}",
                m.attached, m.expected_events
            )
        });
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        let m = self;
        m.probe
            .add_to(shutdown_head(kernel, m.stop))
            .field("probes_attached", m.attached)
            .field("bpf_objects", m.bpf_objects)
            .field("exit", if m.exit.ok { 0 } else { 1 })
            .field("exit_ms", m.exit.elapsed.as_millis())
            .field("leftovers", m.exit.left.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FLOOD: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=flood rules=xt family=ipv4 syn_driven=20000 ack_driven=5000 probes=fentry probe_type=kprobe expected_probe_type=kprobe proc_syn=20000 ebpf_syn=20000 proc_inv=5000 ebpf_inv=5000 misses=0 probe_misses=0 recursion_misses=0 reconcile=exact/exact peak_syn_rate=20420/s send_time=1.2s metrics_ebpf_syn=20000 metrics_proc_syn=20000 synack4_runs=20000 synack4_ns_per_run=2118 top_syn=20000 top_inv=5000 source_map_entries=2 status=PASS";

    fn kprobe_under_fentry() -> ProbeType {
        ProbeType {
            fentry: true,
            seen: Some("kprobe".into()),
            expected: "kprobe".into(),
        }
    }

    /// The 5.10 flood of the recorded runs (no module BTF: kprobes).
    fn flood() -> Flood {
        let client = "10.0.0.1".to_string();
        Flood {
            probe: kprobe_under_fentry(),
            fallback_expected: true,
            fallback_logged: true,
            burst: Burst::exact(20000, 5000),
            recursion_misses: 0,
            peak: 20420.0,
            send_secs: 1.2,
            top_syn: vec![(client.clone(), 20000)],
            top_inv: vec![(client.clone(), 5000)],
            client,
            source_map_entries: 2,
            source_evictions: 0,
            proc_syn_total: 20000,
            metrics: Metrics {
                error: None,
                proc_syn: 20000.0,
                ebpf_syn: 20000.0,
                ebpf_inv: 5000.0,
                exact: 1.0,
                synack4_runs: 20000.0,
                synack4_secs: 0.04236,
            },
            exit: Exit::clean(60),
        }
    }

    #[test]
    fn the_recorded_flood_passes_and_each_failure_fails() {
        let broken: [fn(&mut Flood); 12] = [
            |m| m.probe.seen = Some("fentry".into()),
            |m| m.fallback_logged = false,
            |m| m.burst.proc_syn = 19999,
            |m| m.burst.probes.probe_misses = 3,
            |m| m.peak = 0.0,
            |m| m.top_syn[0].1 = 19999,
            |m| m.top_inv.push(("10.0.0.2".into(), 1)),
            |m| m.source_evictions = 1,
            |m| m.metrics.exact = 0.0,
            |m| m.metrics.synack4_runs = 19000.0,
            |m| m.exit.elapsed = Duration::from_secs(4),
            |m| m.exit.left.push("kprobe event spx_synack4".into()),
        ];
        crate::check::each_fails(&flood(), "5.10.0-46-cloud-amd64", FLOOD, &broken);
    }

    #[test]
    fn no_metrics_body_fails() {
        let mut m = flood();
        m.metrics = Metrics {
            error: Some("status 503".into()),
            proc_syn: -1.0,
            ebpf_syn: -1.0,
            ebpf_inv: -1.0,
            exact: -1.0,
            synack4_runs: -1.0,
            synack4_secs: -1.0,
        };
        let check = m.check("k", Vec::new());
        assert!(!check.pass);
        assert!(
            check.line.contains(" synack4_ns_per_run=0 "),
            "{}",
            check.line
        );
    }

    const SHUTDOWN: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=shutdown stop=sighup-sigterm probes=fentry probe_type=kprobe expected_probe_type=kprobe probes_attached=7 bpf_objects=12 exit=0 exit_ms=55 leftovers=0 status=PASS";

    fn shutdown() -> Shutdown {
        Shutdown {
            stop: "sighup-sigterm",
            probe: kprobe_under_fentry(),
            attached: 7,
            expected_events: 7,
            bpf_objects: 12,
            exit: Exit::clean(55),
        }
    }

    #[test]
    fn the_recorded_shutdown_passes_and_each_failure_fails() {
        let broken: [fn(&mut Shutdown); 6] = [
            |m| m.probe.seen = None,
            |m| m.exit.ok = false,
            |m| m.exit.elapsed = Duration::from_secs(4),
            |m| m.exit.left.push("bpf prog spx_ack4".into()),
            |m| m.bpf_objects = 0,
            |m| m.attached = 0,
        ];
        crate::check::each_fails(&shutdown(), "5.10.0-46-cloud-amd64", SHUTDOWN, &broken);
        let mut failed = shutdown();
        failed.exit.ok = false;
        assert!(failed.line("k").head().contains(" exit=1 "));
    }
}
