//! Pure analysis of the rounds, like [`crate::reconcile`]: values of this and
//! earlier rounds in, a decision out.

pub mod attack;
pub mod baseline;
pub mod verdict;
