//! The ebpf-cost check's verdict and RESULT line from what a run measured
//! (see `ebpf_cost` for what is measured and why); pure, so its pass and
//! fail cases are unit-tested on the host with recorded figures.

use crate::check::Check;
use crate::ebpf_cost::{Params, COST_TARGET, THROUGHPUT_TARGET};

/// One program's figures: name (without `spx_`), run time per run (ns), runs.
pub type ProgramCost = (&'static str, f64, f64);

/// The per-run costs of one probe type beside its empty program.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeCosts {
    /// The empty program's run time per run (ns) and its runs.
    pub floor_ns: f64,
    pub floor_runs: f64,
    pub programs: Vec<ProgramCost>,
}

impl ProbeCosts {
    /// The costliest program that ran, over the floor.
    fn ratio(&self) -> f64 {
        let worst = self
            .programs
            .iter()
            .filter(|(_, _, runs)| *runs > 0.0)
            .map(|c| c.1)
            .fold(0.0, f64::max);
        if self.floor_ns > 0.0 {
            worst / self.floor_ns
        } else {
            0.0
        }
    }

    fn ns_of(&self, program: &str) -> f64 {
        self.programs
            .iter()
            .find(|(n, _, _)| *n == program)
            .map_or(0.0, |c| c.1)
    }
}

/// What one ebpf-cost run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    pub kprobe: ProbeCosts,
    /// With fentry available: its costs and the probe type the
    /// `--probes fentry` agent reported.
    pub fentry: Option<(ProbeCosts, Option<String>)>,
    /// SYNs per second per throughput run (index = run): without probes,
    /// with the counting kprobes, with fentry, with kprobes and per-source
    /// counting.
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    pub with_fentry: Vec<f64>,
    pub with_sources: Vec<f64>,
    /// The agent's CPU time per SYN in the kprobe and fentry runs (ns).
    pub agent_cpu: Vec<f64>,
    pub fentry_agent_cpu: Vec<f64>,
    /// The agent's map memory (`synproxy_ebpf_probes` map_bytes).
    pub map_bytes: u64,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Per run where both rates are known: (with / without, the ns the probes
/// add per SYN: 1/rate with - 1/rate without).
fn pairs(without: &[f64], with: &[f64]) -> (Vec<f64>, Vec<f64>) {
    without
        .iter()
        .zip(with)
        .filter(|(wo, w)| **wo > 0.0 && **w > 0.0)
        .map(|(wo, w)| (w / wo, (1e9 / w - 1e9 / wo).max(0.0)))
        .unzip()
}

/// The check: every figure measured, the throughput target met where it is
/// enforced; the cost target is reported only.
pub fn judge(head: &str, m: &Measured, params: &Params, mut notes: Vec<String>) -> Check {
    let mut pass = true;
    let k = &m.kprobe;
    if k.floor_runs < f64::from(params.syns) || k.floor_ns <= 0.0 {
        notes.push(format!(
            "the empty program ran {} times for {} SYNs",
            k.floor_runs, params.syns
        ));
        pass = false;
    }
    if k.ns_of("synack4") <= 0.0 {
        notes.push("synack4 did not run for the SYNs (as /metrics showed within 60 s)".into());
        pass = false;
    }
    let cost_ratio = k.ratio();
    let cost_met = cost_ratio <= COST_TARGET;
    if !cost_met {
        notes.push(format!(
            "per run: {} against the empty program's {:.0} ns (target: at most {COST_TARGET}x)",
            k.programs
                .iter()
                .map(|(n, ns, runs)| format!("{n}={ns:.0}ns/{runs:.0} runs"))
                .collect::<Vec<_>>()
                .join(" "),
            k.floor_ns
        ));
    }
    if let Some((f, seen)) = &m.fentry {
        if f.floor_runs < f64::from(params.syns) || f.floor_ns <= 0.0 {
            notes.push(format!(
                "the empty fentry program ran {} times for {} SYNs",
                f.floor_runs, params.syns
            ));
            pass = false;
        }
        if seen.as_deref() != Some("fentry") {
            notes.push(format!("the --probes fentry agent used {seen:?}"));
            pass = false;
        }
        if f.ns_of("synack4") <= 0.0 {
            notes.push("fentry synack4 did not run for the SYNs".into());
            pass = false;
        }
    }

    let (ratios, extra) = pairs(&m.without, &m.with);
    let (fentry_ratios, fentry_extra) = pairs(&m.without, &m.with_fentry);
    let (sources_ratios, sources_extra) = pairs(&m.without, &m.with_sources);
    let rate_sources = median(m.with_sources.clone());
    let sources_throughput = median(sources_ratios.clone());
    if rate_sources <= 0.0 {
        notes.push("no throughput measured with per-source counting".into());
        pass = false;
    }
    notes.push(format!(
        "SYNs/s with kprobes and per-source counting {:.0?}: pair ratios {sources_ratios:.3?}",
        m.with_sources
    ));
    let (rate_without, rate_with) = (median(m.without.clone()), median(m.with.clone()));
    let throughput = median(ratios.clone());
    if rate_without <= 0.0 || rate_with <= 0.0 {
        notes.push("no throughput measured".into());
        pass = false;
    }
    let fentry = m.fentry.is_some();
    let fentry_throughput = median(fentry_ratios.clone());
    let throughput_met =
        throughput >= THROUGHPUT_TARGET && (!fentry || fentry_throughput >= THROUGHPUT_TARGET);
    if !throughput_met && params.enforce_throughput {
        notes.push(format!(
            "throughput with probes below {THROUGHPUT_TARGET} of without (kprobe {throughput:.3}{})",
            if fentry {
                format!(", fentry {fentry_throughput:.3}")
            } else {
                String::new()
            }
        ));
        pass = false;
    }
    notes.push(format!(
        "SYNs/s without probes {:.0?}, with {:.0?}: pair ratios {ratios:.3?}, median {throughput:.3} (target {THROUGHPUT_TARGET})",
        m.without, m.with
    ));
    let mut cost_fields: Vec<String> = k
        .programs
        .iter()
        .map(|(n, ns, _)| format!("{n}_ns={ns:.0}"))
        .collect();
    cost_fields.push(format!("kprobe_extra_ns_per_syn={:.0}", median(extra)));
    cost_fields.push(format!(
        "kprobe_agent_cpu_ns_per_syn={:.0}",
        median(m.agent_cpu.clone())
    ));
    let sources_fields = format!(
        " syn_rate_with_sources={rate_sources:.0} throughput_ratio_sources={sources_throughput:.3} sources_extra_ns_per_syn={:.0}",
        median(sources_extra)
    );
    let fentry_fields = match &m.fentry {
        Some((f, _)) => {
            let mut fields = vec![format!("fentry_floor_ns={:.0}", f.floor_ns)];
            fields.extend(
                f.programs
                    .iter()
                    .map(|(n, ns, _)| format!("fentry_{n}_ns={ns:.0}")),
            );
            fields.push(format!("fentry_cost_ratio={:.2}", f.ratio()));
            fields.push(format!(
                "syn_rate_with_fentry={:.0}",
                median(m.with_fentry.clone())
            ));
            fields.push(format!("throughput_ratio_fentry={fentry_throughput:.3}"));
            fields.push(format!(
                "fentry_extra_ns_per_syn={:.0}",
                median(fentry_extra)
            ));
            fields.push(format!(
                "fentry_agent_cpu_ns_per_syn={:.0}",
                median(m.fentry_agent_cpu.clone())
            ));
            notes.push(format!(
                "SYNs/s with fentry probes {:.0?}: pair ratios {fentry_ratios:.3?}",
                m.with_fentry
            ));
            format!(" fentry=yes {}", fields.join(" "))
        }
        None => " fentry=unavailable".to_string(),
    };
    Check {
        line: format!(
            "{head} floor_ns={:.0} {} cost_ratio={cost_ratio:.2} syn_rate_without={rate_without:.0} syn_rate_with={rate_with:.0} throughput_ratio={throughput:.3}{fentry_fields}{sources_fields} runs={} map_kib={} throughput_target={} cost_target={} status={}",
            k.floor_ns,
            cost_fields.join(" "),
            params.runs,
            m.map_bytes / 1024,
            if throughput_met { "met" } else { "missed" },
            if cost_met { "met" } else { "missed" },
            if pass { "PASS" } else { "FAIL" }
        ),
        pass,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures of the kind a 6.12 icount boot records (rounded).
    fn recorded() -> Measured {
        let costs = |scale: f64| ProbeCosts {
            floor_ns: 120.0 * scale,
            floor_runs: 10_000.0,
            programs: vec![
                ("synack4", 200.0 * scale, 10_000.0),
                ("ack4", 180.0 * scale, 2_500.0),
                ("seqadj", 90.0 * scale, 2_500.0),
            ],
        };
        Measured {
            kprobe: costs(1.0),
            fentry: Some((costs(0.5), Some("fentry".into()))),
            without: vec![10_000.0, 10_200.0, 9_900.0],
            with: vec![9_900.0, 10_000.0, 9_800.0],
            with_fentry: vec![9_950.0, 10_150.0, 9_850.0],
            with_sources: vec![9_800.0, 9_950.0, 9_750.0],
            agent_cpu: vec![40.0, 42.0, 41.0],
            fentry_agent_cpu: vec![30.0, 31.0, 29.0],
            map_bytes: 2 << 20,
        }
    }

    fn params(enforce: bool) -> Params {
        Params {
            syns: 10_000,
            runs: 3,
            enforce_throughput: enforce,
            ..Params::default()
        }
    }

    #[test]
    fn recorded_figures_pass_and_fill_every_field() {
        let check = judge("RESULT x", &recorded(), &params(true), Vec::new());
        assert!(check.pass, "{:?}", check.notes);
        for field in [
            "floor_ns=120 ",
            "synack4_ns=200 ",
            "cost_ratio=1.67 ",
            "syn_rate_without=10000 ",
            "throughput_ratio=0.990 ",
            "fentry=yes fentry_floor_ns=60 ",
            "throughput_ratio_fentry=0.995 ",
            "syn_rate_with_sources=9800 ",
            "map_kib=2048 ",
            "throughput_target=met cost_target=met status=PASS",
        ] {
            assert!(check.line.contains(field), "{field} not in {}", check.line);
        }
    }

    #[test]
    fn a_missed_throughput_fails_only_where_it_is_enforced() {
        let mut m = recorded();
        m.with = vec![9_000.0, 9_100.0, 8_900.0];
        assert!(judge("R", &m, &params(false), Vec::new()).pass);
        let check = judge("R", &m, &params(true), Vec::new());
        assert!(!check.pass);
        assert!(check.line.contains("throughput_target=missed"));
        assert!(check.notes.iter().any(|n| n.contains("below 0.97")));
    }

    #[test]
    fn the_cost_target_is_reported_never_failed() {
        let mut m = recorded();
        m.kprobe.programs[0].1 = 1_000.0;
        let check = judge("R", &m, &params(true), Vec::new());
        assert!(check.pass);
        assert!(check.line.contains("cost_target=missed"));
    }

    #[test]
    fn each_missing_figure_fails() {
        let broken: [fn(&mut Measured); 6] = [
            |m| m.kprobe.floor_runs = 9_999.0,
            |m| m.kprobe.programs[0].1 = 0.0,
            |m| m.with_sources = vec![0.0; 3],
            |m| m.without.clear(),
            |m| {
                if let Some((_, seen)) = &mut m.fentry {
                    *seen = Some("kprobe".into());
                }
            },
            |m| {
                if let Some((f, _)) = &mut m.fentry {
                    f.floor_ns = 0.0;
                }
            },
        ];
        for (i, breaking) in broken.iter().enumerate() {
            let mut m = recorded();
            breaking(&mut m);
            let check = judge("R", &m, &params(false), Vec::new());
            assert!(!check.pass, "case {i} passed: {}", check.line);
            assert!(check.line.ends_with("status=FAIL"), "case {i}");
        }
    }

    #[test]
    fn without_fentry_the_line_says_so() {
        let mut m = recorded();
        m.fentry = None;
        m.with_fentry.clear();
        let check = judge("R", &m, &params(true), Vec::new());
        assert!(check.pass, "{:?}", check.notes);
        assert!(check.line.contains(" fentry=unavailable "));
    }
}
