//! `heapkeep::measure(|| work)`: what a closure did to the heap on the
//! calling thread.
//!
//! The calling thread's heap counts everything the thread does (see
//! `counters.rs`); a scope reads its counters before and after. The high
//! point inside the scope comes from the counters' `hi` (the highest net
//! figure the slow paths saw since the last flush) and `scope_hi` (the highest `hi` seen at
//! flushes since the scope began), so the fast paths do nothing extra. A
//! scope sets the counters' `exact_hi`: outside one, `hi` follows only highs
//! that could raise the process peak.

use core::sync::atomic::Ordering;

use crate::counters::Counters;
use crate::heap::STATE_EMPTY;
use crate::thread;

/// What a closure did on the calling thread (see [`measure`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    /// Allocation calls.
    pub allocs: u64,
    /// Free calls.
    pub frees: u64,
    /// Reallocation calls.
    pub reallocs: u64,
    /// Usable bytes handed out (every allocation, and growth in place).
    pub bytes_allocated: u64,
    /// The highest bytes in use reached during the closure, above the bytes
    /// in use when it started (0 if it never went above). Seen by the
    /// allocation slow paths and at the closure's end: a high point that
    /// small blocks from the fast path reached and left again between two
    /// slow paths can be missed by up to what the thread's pages had ready
    /// (a few KiB in practice; see `Stats::peak_live_bytes`).
    pub peak_bytes: u64,
}

/// A snapshot of one heap's totals.
struct Snap {
    allocs: u64,
    frees: u64,
    reallocs: u64,
    moves: u64,
    bytes_out: u64,
    net: i64,
}

fn snap(c: &Counters) -> Snap {
    let t = c.totals();
    Snap {
        allocs: t.allocs,
        frees: t.frees,
        reallocs: t.reallocs,
        moves: t.moves,
        bytes_out: t.bytes_out,
        net: t.net(),
    }
}

/// Runs `f` and returns its result with what it did on the calling thread:
/// allocations, frees and reallocations (calls), bytes allocated, and the
/// peak of bytes in use above the starting point. Work done by other
/// threads (including threads `f` starts) is not counted; frees of blocks
/// other threads allocated are. Scopes nest: an outer scope includes what
/// inner ones did. In check mode, and in builds without the `stats`
/// feature, every figure is 0.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;
///
/// let (sum, m) = heapkeep::measure(|| (0..1000u64).collect::<Vec<_>>().iter().sum::<u64>());
/// assert_eq!(sum, 499_500);
/// if heapkeep::STATS_ENABLED {
///     assert_eq!((m.allocs, m.frees), (1, 1));
///     assert!(m.peak_bytes >= 8000);
/// }
/// ```
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Measured) {
    let mut heap = thread::current();
    // SAFETY: the calling thread's heap (or the static empty heap), whose
    // counters are atomics; the empty heap's are never written.
    if unsafe { (*heap).remote.state.load(Ordering::Relaxed) } == STATE_EMPTY
        && !crate::check::enabled()
        && !crate::profile::every()
    {
        let h = crate::forbid::own_heap();
        if !h.is_null() {
            heap = h;
        }
    }
    // SAFETY: as above.
    if unsafe { (*heap).remote.state.load(Ordering::Relaxed) } == STATE_EMPTY {
        // Check mode (or no heap to be had): nothing is counted per thread.
        return (f(), Measured::default());
    }
    // SAFETY: heaps are never freed; the counters are atomics, and this
    // thread runs the heap, so it may flush them.
    let c = unsafe { &(*heap).counters };
    let r = Ordering::Relaxed;
    // Keep `hi` exact inside the scope (the flush sets the marks so), fold
    // the high point so far into `scope_hi` for an enclosing scope, then
    // start this one at the current figure.
    let was_exact = c.exact_hi.swap(true, r);
    c.flush();
    let outer = c.scope_hi.load(r);
    let before = snap(c);
    c.scope_hi.store(before.net, r);
    let out = f();
    let after = snap(c);
    let high = c.scope_hi.load(r).max(c.hi.load(r)).max(after.net);
    c.scope_hi.store(outer.max(high), r);
    // The marks follow at the next upkeep (an enclosing scope keeps them).
    c.exact_hi.store(was_exact, r);
    let m = Measured {
        allocs: (after.allocs - before.allocs) - (after.moves - before.moves),
        frees: (after.frees - before.frees) - (after.moves - before.moves),
        reallocs: after.reallocs - before.reallocs,
        bytes_allocated: after.bytes_out - before.bytes_out,
        peak_bytes: (high - before.net).max(0) as u64,
    };
    (out, m)
}
