//! The ebpf-cost check's verdict and RESULT line from what a run measured
//! (see `ebpf_cost` for what is measured and why); pure, so its pass and
//! fail cases are unit-tested on the host with recorded figures.

use crate::check::Check;
use crate::ebpf_cost::{Params, COST_TARGET, DEFAULT_FLOOR, THROUGHPUT_TARGET};

/// One program's figures: name (without `spx_`), run time per run (ns), runs.
pub type ProgramCost = (&'static str, f64, f64);

/// The per-run costs of one probe type beside its reference program.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeCosts {
    /// The reference program's run time per run (ns), its runs, and what its
    /// map counted meanwhile (one per run when it did its increment).
    pub ref_ns: f64,
    pub ref_runs: f64,
    pub ref_count: f64,
    /// Events the traffic drove for our programs to count (each SYN a
    /// `syn_received`, each bad ACK a `cookie_invalid`).
    pub events: f64,
    pub programs: Vec<ProgramCost>,
}

impl ProbeCosts {
    /// All our programs' run time per counted event (ns).
    fn ours_per_event(&self) -> f64 {
        if self.events <= 0.0 {
            return 0.0;
        }
        self.programs
            .iter()
            .map(|(_, ns, runs)| ns * runs)
            .sum::<f64>()
            / self.events
    }

    /// Our programs per event over the reference per run.
    fn ratio(&self) -> f64 {
        if self.ref_ns > 0.0 {
            self.ours_per_event() / self.ref_ns
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

    /// Whether every figure was measured; says what is missing in `notes`.
    fn measured(&self, what: &str, syns: u32, notes: &mut Vec<String>) -> bool {
        let mut ok = true;
        if self.ref_runs < f64::from(syns) || self.ref_ns <= 0.0 {
            notes.push(format!(
                "the {what} reference program ran {} times for {syns} SYNs",
                self.ref_runs
            ));
            ok = false;
        }
        if self.ref_count != self.ref_runs {
            notes.push(format!(
                "the {what} reference program's map counted {} for {} runs",
                self.ref_count, self.ref_runs
            ));
            ok = false;
        }
        if self.ns_of("synack4") <= 0.0 {
            notes.push(format!(
                "{what} synack4 did not run for the SYNs (as /metrics showed within 60 s)"
            ));
            ok = false;
        }
        ok
    }

    fn fields(&self, prefix: &str) -> Vec<String> {
        let mut fields = vec![format!("{prefix}ref_ns={:.0}", self.ref_ns)];
        fields.extend(
            self.programs
                .iter()
                .map(|(n, ns, _)| format!("{prefix}{n}_ns={ns:.0}")),
        );
        fields.push(format!(
            "{prefix}ours_ns_per_event={:.0}",
            self.ours_per_event()
        ));
        fields.push(format!("{prefix}cost_ratio={:.2}", self.ratio()));
        fields
    }

    fn note(&self, what: &str) -> String {
        format!(
            "{what} per run: {} for {} events: {:.0} ns per event against the reference's {:.0} ns per run, {:.2}x (target: at most {COST_TARGET}x)",
            self.programs
                .iter()
                .map(|(n, ns, runs)| format!("{n}={ns:.0}ns/{runs:.0} runs"))
                .collect::<Vec<_>>()
                .join(" "),
            self.events,
            self.ours_per_event(),
            self.ref_ns,
            self.ratio()
        )
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
    /// with the default agent (kprobes), the default agent with
    /// `--probes fentry`, and the counting alone (kprobes, `--top 0`).
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    pub with_fentry: Vec<f64>,
    pub with_counting: Vec<f64>,
    /// The agent's CPU time per SYN in the kprobe and fentry runs (ns).
    pub agent_cpu: Vec<f64>,
    pub fentry_agent_cpu: Vec<f64>,
    /// The agent's map memory (`synproxy_ebpf_probes` map_bytes).
    pub map_bytes: u64,
    /// Throughput runs whose receive path went to `ksoftirqd` all the same.
    pub deferred_runs: u32,
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
    let k = &m.kprobe;
    let mut pass = k.measured("kprobe", params.syns, &mut notes);
    let mut cost_met = k.ratio() <= COST_TARGET;
    notes.push(k.note("kprobe"));
    if let Some((f, seen)) = &m.fentry {
        pass &= f.measured("fentry", params.syns, &mut notes);
        if seen.as_deref() != Some("fentry") {
            notes.push(format!("the --probes fentry agent used {seen:?}"));
            pass = false;
        }
        cost_met &= f.ratio() <= COST_TARGET;
        notes.push(f.note("fentry"));
    }

    let (ratios, extra) = pairs(&m.without, &m.with);
    let (fentry_ratios, fentry_extra) = pairs(&m.without, &m.with_fentry);
    let (counting_ratios, counting_extra) = pairs(&m.without, &m.with_counting);
    let rate_counting = median(m.with_counting.clone());
    if rate_counting <= 0.0 {
        notes.push("no throughput measured with the counting alone".into());
        pass = false;
    }
    notes.push(format!(
        "SYNs/s with the counting alone (--top 0) {:.0?}: pair ratios {counting_ratios:.3?}",
        m.with_counting
    ));
    let (rate_without, rate_with) = (median(m.without.clone()), median(m.with.clone()));
    let throughput = median(ratios.clone());
    if rate_without <= 0.0 || rate_with <= 0.0 {
        notes.push("no throughput measured".into());
        pass = false;
    }
    let fentry = m.fentry.is_some();
    let fentry_throughput = median(fentry_ratios.clone());
    let counting_throughput = median(counting_ratios.clone());
    // Reported: the default agent against the target.
    let throughput_met =
        throughput >= THROUGHPUT_TARGET && (!fentry || fentry_throughput >= THROUGHPUT_TARGET);
    let shown = format!(
        "kprobe {throughput:.3}{}",
        if fentry {
            format!(", fentry {fentry_throughput:.3}")
        } else {
            String::new()
        }
    );
    if !throughput_met {
        notes.push(format!(
            "the default agent's throughput is below the {THROUGHPUT_TARGET} target ({shown}): reported, not enforced"
        ));
    }
    // Enforced: the counting alone at the target, the default agent above its floor.
    if params.enforce_throughput {
        if counting_throughput < THROUGHPUT_TARGET {
            notes.push(format!(
                "throughput with the counting alone below {THROUGHPUT_TARGET} of without ({counting_throughput:.3})"
            ));
            pass = false;
        }
        let floor_met =
            throughput >= DEFAULT_FLOOR && (!fentry || fentry_throughput >= DEFAULT_FLOOR);
        if !floor_met {
            notes.push(format!(
                "throughput with the default agent's probes below its {DEFAULT_FLOOR} floor ({shown})"
            ));
            pass = false;
        }
    }
    notes.push(format!(
        "SYNs/s without probes {:.0?}, with the default agent {:.0?}: pair ratios {ratios:.3?}, median {throughput:.3} (target {THROUGHPUT_TARGET})",
        m.without, m.with
    ));
    let mut cost_fields = k.fields("");
    cost_fields.push(format!("kprobe_extra_ns_per_syn={:.0}", median(extra)));
    cost_fields.push(format!(
        "kprobe_agent_cpu_ns_per_syn={:.0}",
        median(m.agent_cpu.clone())
    ));
    let counting_fields = format!(
        " syn_rate_counting={rate_counting:.0} throughput_ratio_counting={counting_throughput:.3} counting_extra_ns_per_syn={:.0}",
        median(counting_extra)
    );
    let fentry_fields = match &m.fentry {
        Some((f, _)) => {
            let mut fields = f.fields("fentry_");
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
                "SYNs/s with the default agent's fentry probes {:.0?}: pair ratios {fentry_ratios:.3?}",
                m.with_fentry
            ));
            format!(" fentry=yes {}", fields.join(" "))
        }
        None => " fentry=unavailable".to_string(),
    };
    Check {
        line: format!(
            "{head} {} syn_rate_without={rate_without:.0} syn_rate_with={rate_with:.0} throughput_ratio={throughput:.3}{fentry_fields}{counting_fields} runs={} softirq_deferred_runs={} map_kib={} throughput_target={} cost_target={} status={}",
            cost_fields.join(" "),
            params.runs,
            m.deferred_runs,
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

    /// What a 6.1 icount boot recorded (2026-12-07, the default agent with
    /// per-source counting; first three throughput runs).
    fn recorded() -> Measured {
        let costs = |ref_ns: f64, programs: Vec<ProgramCost>| ProbeCosts {
            ref_ns,
            ref_runs: 10_000.0,
            ref_count: 10_000.0,
            events: 12_500.0,
            programs,
        };
        Measured {
            kprobe: costs(
                403.0,
                vec![
                    ("synack4", 1_686.0, 10_000.0),
                    ("ack4", 1_110.0, 2_500.0),
                    ("ack_ret", 1_073.0, 2_500.0),
                    ("seqadj", 0.0, 0.0),
                ],
            ),
            fentry: Some((
                costs(
                    438.0,
                    vec![
                        ("synack4", 1_723.0, 10_000.0),
                        ("ack4", 1_924.0, 2_500.0),
                        ("seqadj", 0.0, 0.0),
                    ],
                ),
                Some("fentry".into()),
            )),
            without: vec![18_941.0, 18_883.0, 18_931.0],
            with: vec![18_127.0, 17_997.0, 18_083.0],
            with_fentry: vec![18_271.0, 18_163.0, 18_271.0],
            with_counting: vec![18_488.0, 18_456.0, 18_454.0],
            agent_cpu: vec![5.0, 5.0, 5.0],
            fentry_agent_cpu: vec![5.0, 5.0, 5.0],
            map_bytes: 4644 << 10,
            deferred_runs: 0,
        }
    }

    /// The same with the default agent's rates 2.5% under without.
    fn meeting() -> Measured {
        let mut m = recorded();
        m.with = m.without.iter().map(|r| r * 0.975).collect();
        m.with_fentry = m.without.iter().map(|r| r * 0.98).collect();
        m
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
    fn recorded_figures_fill_every_field() {
        let check = judge("RESULT x", &recorded(), &params(false), Vec::new());
        assert!(check.pass, "{:?}", check.notes);
        for field in [
            "RESULT x ref_ns=403 synack4_ns=1686 ack4_ns=1110 ack_ret_ns=1073 seqadj_ns=0 ",
            // (1686 * 10000 + (1110 + 1073) * 2500) / 12500 = 1785.4 ns per event.
            "ours_ns_per_event=1785 cost_ratio=4.43 ",
            "syn_rate_without=18931 syn_rate_with=18083 throughput_ratio=0.955 ",
            "fentry=yes fentry_ref_ns=438 fentry_synack4_ns=1723 ",
            "fentry_ours_ns_per_event=1763 fentry_cost_ratio=4.03 ",
            "throughput_ratio_fentry=0.965 ",
            "syn_rate_counting=18456 throughput_ratio_counting=0.976 ",
            "runs=3 softirq_deferred_runs=0 map_kib=4644 ",
            "throughput_target=missed cost_target=missed status=PASS",
        ] {
            assert!(check.line.contains(field), "{field} not in {}", check.line);
        }
    }

    #[test]
    fn the_counting_alone_is_held_to_the_target_and_the_default_agent_to_its_floor() {
        // As recorded: the default agent below 0.97 is reported, not failed.
        let check = judge("R", &recorded(), &params(true), Vec::new());
        assert!(check.pass, "{:?}", check.notes);
        assert!(check.line.contains("throughput_target=missed"));
        assert!(check
            .notes
            .iter()
            .any(|n| n.contains("below the 0.97 target (kprobe 0.955, fentry 0.965)")));
        let check = judge("R", &meeting(), &params(true), Vec::new());
        assert!(check.pass, "{:?}", check.notes);
        assert!(check.line.contains("throughput_target=met"));
        // The counting alone below the target fails where enforced.
        let mut m = meeting();
        m.with_counting = vec![17_000.0, 17_100.0, 16_900.0];
        let check = judge("R", &m, &params(true), Vec::new());
        assert!(!check.pass);
        assert!(check
            .notes
            .iter()
            .any(|n| n.contains("counting alone below 0.97")));
        assert!(judge("R", &m, &params(false), Vec::new()).pass);
        // The default agent below its floor fails, with kprobes or fentry.
        let mut m = meeting();
        m.with = m.without.iter().map(|r| r * 0.92).collect();
        assert!(!judge("R", &m, &params(true), Vec::new()).pass);
        let mut m = meeting();
        m.with_fentry = m.without.iter().map(|r| r * 0.92).collect();
        assert!(!judge("R", &m, &params(true), Vec::new()).pass);
    }

    #[test]
    fn the_cost_target_is_reported_never_failed() {
        let check = judge("R", &meeting(), &params(true), Vec::new());
        assert!(check.pass);
        assert!(check.line.contains("cost_target=missed"));
        let mut m = meeting();
        for costs in [&mut m.kprobe, &mut m.fentry.as_mut().expect("fentry").0] {
            costs.ref_ns = 1_000.0;
        }
        let check = judge("R", &m, &params(true), Vec::new());
        assert!(check.line.contains(" cost_ratio=1.79 "), "{}", check.line);
        assert!(check.line.contains("cost_target=met"), "{}", check.line);
    }

    #[test]
    fn each_missing_figure_fails() {
        let broken: [fn(&mut Measured); 8] = [
            |m| m.kprobe.ref_runs = 9_999.0,
            |m| m.kprobe.ref_count = 9_000.0,
            |m| m.kprobe.programs[0].1 = 0.0,
            |m| m.with_counting = vec![0.0; 3],
            |m| m.without.clear(),
            |m| {
                if let Some((_, seen)) = &mut m.fentry {
                    *seen = Some("kprobe".into());
                }
            },
            |m| {
                if let Some((f, _)) = &mut m.fentry {
                    f.ref_ns = 0.0;
                }
            },
            |m| {
                if let Some((f, _)) = &mut m.fentry {
                    f.ref_count = 0.0;
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
        let mut m = meeting();
        m.fentry = None;
        m.with_fentry.clear();
        let check = judge("R", &m, &params(true), Vec::new());
        assert!(check.pass, "{:?}", check.notes);
        assert!(check.line.contains(" fentry=unavailable "));
    }
}
