//! Host unit tests of the checks' judges: a passing measurement changed one
//! way at a time must fail, each with its own reason.

use crate::check::Check;
use std::fmt::Debug;

/// A change to a passing measurement, and a text the failing check's notes
/// must contain.
pub type FailCase<M> = (fn(&mut M), &'static str);

/// Applies each case to `pass()` and asserts that `judge` fails it with a
/// `status=FAIL` line and a note containing the case's reason.
pub fn assert_each_fails<M: Debug>(
    pass: impl Fn() -> M,
    judge: impl Fn(&M) -> Check,
    cases: &[FailCase<M>],
) {
    for (change, reason) in cases {
        let mut m = pass();
        change(&mut m);
        let check = judge(&m);
        assert!(
            !check.pass && check.line.ends_with(" status=FAIL"),
            "{reason}: passed with {m:?}"
        );
        assert!(
            check.notes.iter().any(|n| n.contains(reason)),
            "{reason}: not among {:?}",
            check.notes
        );
    }
}
