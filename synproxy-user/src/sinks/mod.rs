//! Where samples go: line protocol on stdout.

pub mod line_protocol;
pub mod stdout;
