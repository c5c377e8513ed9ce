//! Attacks as events: a learnt baseline per namespace (and destination port),
//! a threshold above it, and hysteresis; see docs/attacks.md.

pub mod event;

pub use event::{AttackEvent, AttackKind, AttackPhase, EventPort, EventSource};
pub mod detector;
pub mod history;
pub mod state_file;
pub mod subject;
