//! The allocation workloads and the table that names them.
//!
//! Each workload models one thing allocators are judged on (small-object
//! speed, cross-thread frees, false sharing, large blocks, memory return...).
//! A workload takes a [`Scale`] and returns an [`Outcome`]: its own wall
//! time, a checksum of the work it did (equal for every allocator) and, when
//! it measures one itself, the resident set after its frees.

use std::time::Instant;

use crate::Scale;

pub mod churn;
pub mod false_sharing;
pub mod large;
pub mod larson;
pub mod memreturn;
pub mod prodcons;
pub mod random;
pub mod realloc;
pub mod small;

/// What a workload run produced.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Wall time of the measured part, in seconds.
    pub seconds: f64,
    /// Checksum of the work done (allocator independent).
    pub checksum: u64,
    /// Resident set (KiB) the workload measured itself, if it does.
    pub rss_after_kib: Option<u64>,
}

/// Runs `f` and times it; `f` returns the checksum.
pub fn timed(f: impl FnOnce() -> u64) -> Outcome {
    let start = Instant::now();
    let checksum = f();
    Outcome {
        seconds: start.elapsed().as_secs_f64(),
        checksum,
        rss_after_kib: None,
    }
}

/// A named workload.
pub struct Workload {
    /// Name used on command lines and in reports.
    pub name: &'static str,
    /// One-line description for reports.
    pub about: &'static str,
    /// Entry point.
    pub run: fn(Scale) -> Outcome,
}

/// All workloads, in report order.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "small",
        about: "many small short-lived objects in one thread (alloc/free pairs, small Boxes, binary trees)",
        run: small::run,
    },
    Workload {
        name: "larson",
        about: "4 server threads replacing random slots and handing batches to each other to free",
        run: larson::run,
    },
    Workload {
        name: "prodcons",
        about: "one producer thread allocates batches, a consumer thread frees them",
        run: prodcons::run,
    },
    Workload {
        name: "false-sharing",
        about: "4 threads writing repeatedly into small blocks, some first allocated by main and handed over",
        run: false_sharing::run,
    },
    Workload {
        name: "random",
        about: "random sizes 8 B..32 KiB, large live set of random slots, random replacement",
        run: random::run,
    },
    Workload {
        name: "realloc",
        about: "Vec/String growth by push, exact-step growth, shrink_to_fit",
        run: realloc::run,
    },
    Workload {
        name: "large",
        about: "blocks of 64 KiB..16 MiB allocated, touched page by page and freed",
        run: large::run,
    },
    Workload {
        name: "churn",
        about: "1500 (quick) or 4000 (full) short-lived threads, 4 at a time, allocating and handing objects on",
        run: churn::run,
    },
    Workload {
        name: "memreturn",
        about: "allocate a lot of mixed sizes, free ~90% at random, measure resident memory after",
        run: memreturn::run,
    },
];

/// Looks a workload up by name.
pub fn find(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// Mixes `v` into checksum `acc` (order dependent, cheap).
#[inline]
pub fn mix(acc: u64, v: u64) -> u64 {
    (acc ^ v).wrapping_mul(0x0100_0000_01b3).rotate_left(7)
}
