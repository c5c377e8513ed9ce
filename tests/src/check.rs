//! One check's outcome as the VM suite reads it: a `RESULT kernel=K check=NAME
//! field=value ... status=PASS|FAIL` line, and `# ` notes that explain it.

use std::fmt::Display;

/// One RESULT line and its explanations.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub line: String,
    pub pass: bool,
    pub notes: Vec<String>,
}

impl Check {
    /// The check could not measure: its head with `status=FAIL`, the error as a note.
    pub fn failed(head: &str, e: &anyhow::Error) -> Check {
        Check {
            line: format!("{head} status=FAIL"),
            pass: false,
            notes: vec![format!("error: {e:#}")],
        }
    }

    /// The check's outcome, or [`Check::failed`] when it could not measure.
    pub fn or_failed(head: &str, result: anyhow::Result<Check>) -> Check {
        result.unwrap_or_else(|e| Check::failed(head, &e))
    }

    /// The lines printed for it: the RESULT line, then each note after `# `.
    pub fn report(&self) -> Vec<String> {
        let notes = self.notes.iter().map(|note| format!("# {note}"));
        std::iter::once(self.line.clone()).chain(notes).collect()
    }
}

/// Builds a RESULT line: `RESULT kernel=K check=NAME`, then fields in order,
/// then the verdict.
#[derive(Debug, Clone)]
pub struct ResultLine {
    text: String,
}

impl ResultLine {
    pub fn new(kernel: &str, check: &str) -> Self {
        Self {
            text: format!("RESULT kernel={kernel} check={check}"),
        }
    }

    /// Adds ` key=value`.
    pub fn field(mut self, key: &str, value: impl Display) -> Self {
        self.text.push_str(&format!(" {key}={value}"));
        self
    }

    /// Adds `fields` (` key=value ...` already written) as they are.
    pub fn raw(mut self, fields: &str) -> Self {
        self.text.push(' ');
        self.text.push_str(fields);
        self
    }

    /// The line so far, without a verdict (what [`Check::failed`] completes).
    pub fn head(&self) -> &str {
        &self.text
    }

    /// The finished line: the fields, then `status=PASS` or `status=FAIL`.
    pub fn status(&self, pass: bool) -> String {
        format!("{} status={}", self.text, status(pass))
    }
}

/// A judge's outcome: the reasons a check failed (none: it passed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub failed: Vec<String>,
}

impl Verdict {
    /// Records `reason` as a failure unless `ok`.
    pub fn require(&mut self, ok: bool, reason: impl FnOnce() -> String) {
        if !ok {
            self.failed.push(reason());
        }
    }

    pub fn pass(&self) -> bool {
        self.failed.is_empty()
    }

    /// The check: `line` finished with this verdict, the failed reasons
    /// first among the notes, then `notes`.
    pub fn check(self, line: &ResultLine, notes: Vec<String>) -> Check {
        let pass = self.pass();
        Check {
            line: line.status(pass),
            pass,
            notes: self.failed.into_iter().chain(notes).collect(),
        }
    }
}

/// `yes` or `no`, as RESULT values say it.
pub fn yes_no(b: bool) -> &'static str {
    ["no", "yes"][usize::from(b)]
}

/// What a check measured on a kernel: judged, and written as its RESULT
/// line, from the same figures.
pub trait Judged {
    /// Whether the figures pass, with the reason of each failure.
    fn judge(&self) -> Verdict;
    /// The RESULT line's fields, without the verdict.
    fn line(&self, kernel: &str) -> ResultLine;
    /// The check: the line with the verdict, its reasons, then `notes`.
    fn check(&self, kernel: &str, notes: Vec<String>) -> Check {
        self.judge().check(&self.line(kernel), notes)
    }
}

/// Test helper: `base` passes with exactly the `recorded` RESULT line (of
/// kernel `kernel`), and each of `broken` applied to a copy of it fails.
#[cfg(test)]
pub fn each_fails<M: Judged + Clone>(
    base: &M,
    kernel: &str,
    recorded: &str,
    broken: &[fn(&mut M)],
) {
    let check = base.check(kernel, Vec::new());
    assert!(check.pass, "{:?}", check.notes);
    assert_eq!(check.line, recorded);
    for (i, breaking) in broken.iter().enumerate() {
        let mut m = base.clone();
        breaking(&mut m);
        let check = m.check(kernel, Vec::new());
        assert!(!check.pass, "case {i} passed: {}", check.line);
        assert!(check.line.ends_with("status=FAIL"), "case {i}");
        assert!(!check.notes.is_empty(), "case {i} failed without a reason");
    }
}

/// `PASS` or `FAIL`.
pub fn status(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The value, or `none` when nothing was measured.
pub fn or_none<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_result_lines_in_field_order() {
        let line = ResultLine::new("6.12.1", "flood")
            .field("rules", "xt")
            .field("syn_driven", 20_000);
        assert_eq!(
            line.head(),
            "RESULT kernel=6.12.1 check=flood rules=xt syn_driven=20000"
        );
        assert_eq!(
            line.status(true),
            "RESULT kernel=6.12.1 check=flood rules=xt syn_driven=20000 status=PASS"
        );
        assert_eq!(
            line.status(false),
            "RESULT kernel=6.12.1 check=flood rules=xt syn_driven=20000 status=FAIL"
        );
    }

    #[test]
    fn an_error_is_a_failing_line_with_the_error_as_a_note() {
        let head = ResultLine::new("k", "sustained").field("secs", 30);
        let e = anyhow::anyhow!("no route").context("netns setup");
        let check = Check::or_failed(head.head(), Err(e));
        assert_eq!(
            check,
            Check {
                line: "RESULT kernel=k check=sustained secs=30 status=FAIL".into(),
                pass: false,
                notes: vec!["error: netns setup: no route".into()],
            }
        );
        assert_eq!(
            check.report(),
            [
                "RESULT kernel=k check=sustained secs=30 status=FAIL",
                "# error: netns setup: no route"
            ]
        );
    }

    #[test]
    fn a_verdict_fails_with_its_reasons_first() {
        let mut v = Verdict::default();
        v.require(true, || "unused".into());
        assert!(v.pass());
        v.require(false, || "exit 1".into());
        let check = v.check(
            &ResultLine::new("k", "x").field("a", 1),
            vec!["timing".into()],
        );
        assert_eq!(check.line, "RESULT kernel=k check=x a=1 status=FAIL");
        assert_eq!(check.notes, ["exit 1", "timing"]);
        assert!(!check.pass);
    }

    #[test]
    fn a_measured_outcome_is_kept_as_it_is() {
        let measured = Check {
            line: "RESULT kernel=k check=top-view status=PASS".into(),
            pass: true,
            notes: Vec::new(),
        };
        assert_eq!(Check::or_failed("unused", Ok(measured.clone())), measured);
        assert_eq!(measured.report(), std::slice::from_ref(&measured.line));
    }
}
