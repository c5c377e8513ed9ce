//! The time table `cargo xtask test` prints last: each step's wall time, each VM
//! check's time per kernel boot, and the whole run against the suite's budget.

/// What the whole of `cargo xtask test` may take on a fresh machine of the
/// project's kind (CI allows 90 minutes; the rest is headroom for a slower one).
pub const BUDGET_SECS: f64 = 55.0 * 60.0;

/// One step of `cargo xtask test`.
pub struct StepTime<'a> {
    pub name: &'a str,
    pub ok: bool,
    pub secs: f64,
}

/// The times of one kernel boot of the VM suite.
#[derive(Debug, Clone, PartialEq)]
pub struct BootTiming {
    /// `series release`, with ` icount` for the instruction-counted boot.
    pub kernel: String,
    /// Why it was not booted, if it was not.
    pub not_booted: Option<String>,
    /// QEMU start to the guest's init, when init started.
    pub boot_to_init: Option<f64>,
    /// Each check in order; `unfinished` for the one the boot ended in.
    pub checks: Vec<CheckTime>,
    /// QEMU start to its exit.
    pub total: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckTime {
    pub name: String,
    pub secs: f64,
    pub unfinished: bool,
}

fn minutes(secs: f64) -> String {
    format!("{:.1} min", secs / 60.0)
}

/// The table: steps with verdict and seconds, the VM suite's boots and checks
/// below it, then the whole run against `budget_secs` (over budget said loudly).
pub fn table(
    steps: &[StepTime],
    boots: &[BootTiming],
    total_secs: f64,
    budget_secs: f64,
) -> String {
    let mut out = String::from("xtask test: wall time per step\n");
    let width = steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for step in steps {
        let verdict = if step.ok { "ok" } else { "FAILED" };
        out.push_str(&format!(
            "  {verdict:<6} {:<width$} {:>6.0}s\n",
            step.name, step.secs
        ));
    }
    if !boots.is_empty() {
        out.push_str("xtask test: VM suite, seconds per kernel boot and check\n");
    }
    for boot in boots {
        out.push_str(&format!("  {}", boot.kernel));
        if let Some(why) = &boot.not_booted {
            out.push_str(&format!(": {why}\n"));
            continue;
        }
        out.push_str(&format!(" ({:.0}s)\n", boot.total));
        let names = boot.checks.iter().map(|c| c.name.len());
        let width = names.chain([12]).max().unwrap_or(0);
        if let Some(init) = boot.boot_to_init {
            out.push_str(&format!("    {:<width$} {init:>7.1}s\n", "boot-to-init"));
        }
        for check in &boot.checks {
            let mark = if check.unfinished {
                " (unfinished)"
            } else {
                ""
            };
            out.push_str(&format!(
                "    {:<width$} {:>7.1}s{mark}\n",
                check.name, check.secs
            ));
        }
    }
    let whole = format!(
        "{total_secs:.0}s ({}) of the {} budget",
        minutes(total_secs),
        minutes(budget_secs)
    );
    if total_secs > budget_secs {
        let bar = "!".repeat(72);
        out.push_str(&format!(
            "{bar}\nxtask test: OVER BUDGET: {whole}, {} over\n{bar}\n",
            minutes(total_secs - budget_secs)
        ));
    } else {
        out.push_str(&format!(
            "xtask test: total {whole}, {} to spare\n",
            minutes(budget_secs - total_secs)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boots() -> Vec<BootTiming> {
        vec![
            BootTiming {
                kernel: "6.12 6.12.1-cloud-amd64".into(),
                not_booted: None,
                boot_to_init: Some(4.12),
                checks: vec![
                    CheckTime {
                        name: "module-late".into(),
                        secs: 12.34,
                        unfinished: false,
                    },
                    CheckTime {
                        name: "matrix-nft-ipv6".into(),
                        secs: 300.0,
                        unfinished: true,
                    },
                ],
                total: 1200.4,
            },
            BootTiming {
                kernel: "sid unresolved-sid".into(),
                not_booted: Some("not booted: fetching the kernel failed".into()),
                boot_to_init: None,
                checks: Vec::new(),
                total: 0.0,
            },
        ]
    }

    #[test]
    fn within_budget_lists_steps_then_checks_per_kernel() {
        let steps = [
            StepTime {
                name: "cargo fmt --check",
                ok: true,
                secs: 2.4,
            },
            StepTime {
                name: "VM suite",
                ok: false,
                secs: 1500.0,
            },
        ];
        assert_eq!(
            table(&steps, &boots(), 2400.0, BUDGET_SECS),
            "xtask test: wall time per step\n\
             \x20 ok     cargo fmt --check      2s\n\
             \x20 FAILED VM suite            1500s\n\
             xtask test: VM suite, seconds per kernel boot and check\n\
             \x20 6.12 6.12.1-cloud-amd64 (1200s)\n\
             \x20   boot-to-init        4.1s\n\
             \x20   module-late        12.3s\n\
             \x20   matrix-nft-ipv6   300.0s (unfinished)\n\
             \x20 sid unresolved-sid: not booted: fetching the kernel failed\n\
             xtask test: total 2400s (40.0 min) of the 55.0 min budget, 15.0 min to spare\n"
        );
    }

    #[test]
    fn over_budget_is_said_loudly() {
        let steps = [StepTime {
            name: "cargo test",
            ok: true,
            secs: 3600.0,
        }];
        let out = table(&steps, &[], 3630.0, BUDGET_SECS);
        assert!(!out.contains("VM suite"));
        assert!(out.contains(
            "xtask test: OVER BUDGET: 3630s (60.5 min) of the 55.0 min budget, 5.5 min over\n"
        ));
        assert!(out.contains(&"!".repeat(72)));
        assert!(!out.contains("to spare"));
    }
}
