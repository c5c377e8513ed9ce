//! Which check runs on which kernel series when the whole suite runs.
//!
//! Every check runs with kprobes (the default) on every series. The checks
//! that repeat a kprobe check with `--probes fentry` do not all need every
//! series: what differs per kernel with fentry (attaching through the module's
//! BTF, the module reference a program holds, the 5.10 fallback) is proven on
//! every series by `fentry-flood`, `fentry-module` and `fentry-non-root`; the
//! long repeats (a sustained flood, the lifecycle signals, the xt matrix) test
//! the same agent code as their kprobe twins and run on one series each, spread
//! so that every series with module BTF runs one of them. `--check NAME` runs
//! a check wherever it is asked for.

/// One repeat and the series it runs on in a whole-suite run.
pub struct Placement {
    pub check: &'static str,
    pub series: &'static [&'static str],
    /// Why there: the table in `docs/testing.md` (a test keeps them equal).
    #[cfg_attr(not(test), allow(dead_code))]
    pub why: &'static str,
}

/// Every series (5.10 runs only `fentry-flood` and `fentry-module` with
/// fentry: it has no module BTF, so the guest leaves the other repeats out).
const EVERY: &[&str] = &["5.10", "6.1", "6.12", "sid"];

pub const FENTRY_REPEATS: &[Placement] = &[
    Placement {
        check: "fentry-flood",
        series: EVERY,
        why: "the attach (or the 5.10 fallback) and exact counts under a flood",
    },
    Placement {
        check: "fentry-module",
        series: EVERY,
        why: "the module reference a program holds differs by kernel version",
    },
    Placement {
        check: "fentry-non-root",
        series: EVERY,
        why: "the capabilities the module BTF lookup needs (a 3 s check)",
    },
    Placement {
        check: "fentry-sustained",
        series: &["sid"],
        why: "the newest trampolines under the longest flood",
    },
    Placement {
        check: "fentry-lifecycle",
        series: &["6.1"],
        why: "6.1 holds the module only while attached (5.12-6.3), so a signal between load and attach differs there",
    },
    Placement {
        check: "fentry-matrix-xt-ipv4",
        series: &["6.12"],
        why: "every counter through fentry/fexit on Debian stable's kernel",
    },
];

/// The checks a whole-suite boot of `series` leaves to other series.
pub fn left_to_other_series(series: &str) -> Vec<String> {
    FENTRY_REPEATS
        .iter()
        .filter(|p| !p.series.contains(&series))
        .map(|p| p.check.to_string())
        .collect()
}

/// Where the checks left out of `series`' boot run instead, for the log.
pub fn where_instead(left: &[String]) -> String {
    let placed = |c: &String| {
        let on = FENTRY_REPEATS
            .iter()
            .find(|p| p.check == c)
            .map_or(String::new(), |p| p.series.join("/"));
        format!("{c} (on {on})")
    };
    left.iter().map(placed).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
fn markdown_table() -> String {
    let mut t = String::from("| check | kernel series | why there |\n| --- | --- | --- |\n");
    for p in FENTRY_REPEATS {
        let series = if p.series == EVERY {
            "all".to_string()
        } else {
            p.series.join(", ")
        };
        t.push_str(&format!("| `{}` | {series} | {} |\n", p.check, p.why));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_names::CHECKS;
    use crate::vm::kernel::SERIES;

    #[test]
    fn every_repeat_is_a_known_check_on_known_series() {
        for p in FENTRY_REPEATS {
            assert!(CHECKS.contains(&p.check), "{}", p.check);
            assert!(!p.series.is_empty(), "{} runs nowhere", p.check);
            for s in p.series {
                assert!(SERIES.iter().any(|k| k.name == *s), "{}: {s}", p.check);
            }
        }
        let fentry_checks = CHECKS.iter().filter(|c| c.starts_with("fentry-")).count();
        assert_eq!(
            fentry_checks,
            FENTRY_REPEATS.len(),
            "a fentry check has no placement"
        );
    }

    #[test]
    fn docs_testing_shows_this_table() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/testing.md"))
                .unwrap_or_default();
        assert!(
            doc.contains(&markdown_table()),
            "docs/testing.md lacks:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn every_series_with_module_btf_runs_a_long_repeat() {
        for s in ["6.1", "6.12", "sid"] {
            let left = left_to_other_series(s);
            let long = [
                "fentry-sustained",
                "fentry-lifecycle",
                "fentry-matrix-xt-ipv4",
            ];
            assert_eq!(
                long.iter()
                    .filter(|c| !left.iter().any(|l| l == *c))
                    .count(),
                1,
                "{s}: {left:?}"
            );
            assert!(!left
                .iter()
                .any(|c| c == "fentry-flood" || c == "fentry-module"));
        }
    }
}
