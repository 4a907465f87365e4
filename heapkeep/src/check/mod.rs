//! Check mode: catches heap misuse (double and invalid frees, use after
//! free, overflows, layout mismatches, leaks) and reports where it happened.
//! Turned on by `HEAPKEEP_CHECK=1` (`heapkeep check` sets it); see
//! [`OPTIONS`] for the rest.

mod options;
pub(crate) mod report;

pub use options::{CheckOption, OPTIONS};
