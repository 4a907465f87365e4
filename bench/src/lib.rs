//! Benchmark harness for the heapkeep allocator.
//!
//! The library holds everything the benchmark binaries share: the allocation
//! workloads ([`workloads`]), the deterministic random number generator
//! ([`rng`]), a raw heap block type ([`block`]), resident-memory readers
//! ([`procmem`]), the worker entry point used by the `hk-worker-*` binaries
//! ([`worker`]) and the driver side: running workers as child processes
//! ([`driver`]), aggregating and reporting results ([`report`]) and drawing
//! the charts ([`chart`]).
//!
//! Each `hk-worker-<allocator>` binary installs one global allocator and runs
//! exactly one workload per process; the `heapkeep-bench` driver starts those
//! processes round after round, alternating allocators, and compares them.

pub mod block;
pub mod chart;
pub mod driver;
pub mod procmem;
pub mod report;
pub mod rng;
pub mod worker;
pub mod workloads;

use serde::{Deserialize, Serialize};

/// The allocators the harness knows about, in display order. `heapkeep` is
/// the allocator under test, the rest are its peers, then the variants of
/// heapkeep (see [`is_variant`]), which run only when asked for.
pub const ALLOCATORS: &[&str] = &[
    "heapkeep",
    "system",
    "mimalloc",
    "jemalloc",
    "snmalloc",
    "heapkeep-nostats",
    "heapkeep-check",
    "heapkeep-profile",
];

/// The allocators a run compares when none are named.
pub const DEFAULT_ALLOCATORS: &[&str] = &["heapkeep", "system", "mimalloc", "jemalloc", "snmalloc"];

/// A build or mode of heapkeep itself, to measure what something costs
/// (`heapkeep-nostats`: no operation counters; `heapkeep-check`: check mode,
/// the heapkeep worker run with `HEAPKEEP_CHECK=1`; `heapkeep-profile`: the
/// sampling profile at its default rate, `HEAPKEEP_PROFILE=1`). Ratios against it are
/// reported, but it is no peer for the bar.
pub fn is_variant(allocator: &str) -> bool {
    allocator.starts_with("heapkeep-")
}

/// Name of the allocator under test.
pub const UNDER_TEST: &str = "heapkeep";

/// How much work a workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Small scale: a whole quick run (all workloads, all allocators,
    /// three rounds) takes a few minutes on a 2-core machine.
    Quick,
    /// Larger scale for numbers meant to be published.
    Full,
}

impl Scale {
    /// Picks the quick or the full value of a parameter.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Scale::Quick => quick,
            Scale::Full => full,
        }
    }

    /// The name used on worker command lines and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Scale::Quick => "quick",
            Scale::Full => "full",
        }
    }

    /// Parses a name produced by [`Scale::as_str`].
    pub fn parse(s: &str) -> Option<Scale> {
        match s {
            "quick" => Some(Scale::Quick),
            "full" => Some(Scale::Full),
            _ => None,
        }
    }
}

/// The line a worker prints on stdout (as JSON) after running a workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Workload name.
    pub workload: String,
    /// Allocator name.
    pub allocator: String,
    /// Scale the workload ran at.
    pub scale: Scale,
    /// Wall time of the workload, measured inside the worker process.
    pub seconds: f64,
    /// Peak resident set size of the worker (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
    /// Resident set size at the end of the workload, in KiB (for
    /// `memreturn`: right after freeing ~90% of the memory).
    pub rss_after_kib: u64,
    /// Checksum of the work done; identical for every allocator when the
    /// workload did identical work.
    pub checksum: u64,
}
