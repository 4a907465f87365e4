//! Per-heap operation counters: the raw material of `heapkeep::stats()`.
//!
//! Every heap carries a [`Counters`]. Only the thread running the heap writes
//! it, with relaxed loads and stores (plain `mov`/`add` on x86_64, no locked
//! instruction), so counting costs the fast paths a handful of instructions;
//! any thread may read it at any time (`stats.rs` sums all heaps).
//!
//! Calls are counted in totals (`allocs`, `frees`, `reallocs`), bytes in two
//! running sums (`bytes_out`, `bytes_in`): a heap's net usable bytes in use
//! are `bytes_out - bytes_in` (negative for a heap that frees what others
//! allocated). Two sums rather than one net figure keep the alloc and free
//! paths free of each other's store-to-load latency.
//!
//! ## The peak
//! The bytes in use over the whole process would need one shared counter
//! updated on every call. Instead each heap remembers `flushed`, its net
//! figure when it last *flushed*, and `hi`, the highest net figure since.
//! A flush adds `net - flushed` to the global [`LIVE`] and raises [`PEAK`] to
//! `LIVE - flushed + hi` (the highest point this heap reached on top of what
//! the others had flushed). A heap flushes when its net figure climbs
//! [`FLUSH_BYTES`] above `flushed`; the slow paths also flush when it has
//! fallen that far below, so the fast paths only compare on allocation.
//!
//! Consequences (documented on `Stats`): bytes in use are exact whenever read
//! (all heaps' sums are added); the peak is exact for a program whose
//! allocations come from one thread at a time, and otherwise may be low by
//! up to `FLUSH_BYTES` per other thread.
//!
//! Threads without a heap (the static empty heap) count into [`ORPHAN`] with
//! atomic read-modify-writes, since several such threads may count at once.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Whether counting is compiled in (feature `stats`).
pub(crate) const ENABLED: bool = cfg!(feature = "stats");

/// A heap flushes its `live` into [`LIVE`] when it drifts this far from zero.
pub(crate) const FLUSH_BYTES: i64 = 256 << 10;

/// Sum over heaps of their `flushed` figures.
pub(crate) static LIVE: AtomicI64 = AtomicI64::new(0);
/// Highest process-wide bytes in use seen at a flush (see the module docs).
pub(crate) static PEAK: AtomicI64 = AtomicI64::new(0);
/// Counts of threads that have no heap (see the module docs).
pub(crate) static ORPHAN: Counters = Counters::new();

/// Counters of one heap. Written by the heap's thread only (or with
/// read-modify-writes for [`ORPHAN`]); read by anyone.
#[repr(C)]
pub(crate) struct Counters {
    /// Usable bytes handed out (and grown in place), in total.
    pub(crate) bytes_out: AtomicU64,
    /// Usable bytes taken back (and shrunk in place), in total.
    pub(crate) bytes_in: AtomicU64,
    /// Net figure (`bytes_out - bytes_in`) at the last flush.
    pub(crate) flushed: AtomicI64,
    /// Highest net figure since the last flush.
    pub(crate) hi: AtomicI64,
    /// `bytes_in + hi`: an allocation that takes `bytes_out` above it sets a
    /// new high (one compare on the fast path; frees raise it with `bytes_in`).
    pub(crate) top: AtomicU64,
    /// Blocks handed out, in total.
    pub(crate) allocs: AtomicU64,
    /// Blocks taken back, in total.
    pub(crate) frees: AtomicU64,
    /// Sum of the sizes asked for by `alloc` and `realloc` calls.
    pub(crate) requested: AtomicU64,
    /// `realloc` calls.
    pub(crate) reallocs: AtomicU64,
    /// `realloc` calls that moved the block: their new and old block are also
    /// counted in `allocs`/`frees`, which `stats.rs` subtracts.
    pub(crate) realloc_moves: AtomicU64,
    /// Highest net figure seen at flushes since a `measure` scope began
    /// (flushes reset `hi`; this keeps the scope's high point).
    pub(crate) scope_hi: AtomicI64,
    /// Counts that are not the program's (check mode's inner heap, whose
    /// blocks carry redzones): never flushed into [`LIVE`]/[`PEAK`], left
    /// out of `stats()`.
    pub(crate) private: AtomicBool,
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Counters {
    /// All zero.
    pub(crate) const fn new() -> Counters {
        Counters {
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            flushed: AtomicI64::new(0),
            hi: AtomicI64::new(0),
            top: AtomicU64::new(0),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            realloc_moves: AtomicU64::new(0),
            scope_hi: AtomicI64::new(i64::MIN),
            private: AtomicBool::new(false),
        }
    }

    /// Net usable bytes this heap handed out (`bytes_out - bytes_in`).
    #[inline(always)]
    pub(crate) fn net(&self) -> i64 {
        let r = Ordering::Relaxed;
        self.bytes_out.load(r).wrapping_sub(self.bytes_in.load(r)) as i64
    }

    /// Counts a block of `bytes` usable bytes handed out for a request of `size` bytes. Owner thread only. True when this
    /// made a new high: the caller then calls [`Counters::rise`] (kept out of
    /// line so the inlined fast path stays small).
    #[inline(always)]
    #[must_use]
    pub(crate) fn on_alloc(&self, bytes: usize, size: usize) -> bool {
        if !ENABLED {
            return false;
        }
        bump(&self.allocs, 1);
        bump(&self.requested, size as u64);
        self.add_out(bytes)
    }

    /// [`Counters::on_alloc`] and, on a new high, [`Counters::rise`]: for
    /// the slow paths (the fast path tail-calls its `rise`).
    #[inline]
    pub(crate) fn count_alloc(&self, bytes: usize, size: usize) {
        if self.on_alloc(bytes, size) {
            self.rise();
        }
    }

    /// Adds `bytes` to `bytes_out`; true when that made a new high.
    #[inline(always)]
    fn add_out(&self, bytes: usize) -> bool {
        let out = self.bytes_out.load(Ordering::Relaxed) + bytes as u64;
        self.bytes_out.store(out, Ordering::Relaxed);
        out > self.top.load(Ordering::Relaxed)
    }

    /// Counts a block of `bytes` usable bytes taken back. Owner thread only.
    #[inline(always)]
    pub(crate) fn on_free(&self, bytes: usize) {
        if !ENABLED {
            return;
        }
        bump(&self.frees, 1);
        bump(&self.bytes_in, bytes as u64);
        bump(&self.top, bytes as u64);
    }

    /// A new high: `bytes_out` passed `top`.
    #[cold]
    #[inline(never)]
    pub(crate) fn rise(&self) {
        let r = Ordering::Relaxed;
        let out = self.bytes_out.load(r);
        let net = out.wrapping_sub(self.bytes_in.load(r)) as i64;
        self.hi.store(net, r);
        self.top.store(out, r);
        if net - self.flushed.load(r) > FLUSH_BYTES {
            self.flush();
        }
    }

    /// Flushes if the net figure fell far below the last flush (slow paths).
    pub(crate) fn check_fall(&self) {
        if ENABLED && self.net() - self.flushed.load(Ordering::Relaxed) < -FLUSH_BYTES {
            self.flush();
        }
    }

    /// Counts a large or huge block changing size in place.
    pub(crate) fn on_resize(&self, old: usize, new: usize) {
        if !ENABLED {
            return;
        }
        if new >= old {
            if self.add_out(new - old) {
                self.rise();
            }
        } else {
            bump(&self.bytes_in, (old - new) as u64);
            bump(&self.top, (old - new) as u64);
        }
    }

    /// Counts a `realloc` call of `size` bytes; `moved` if it made a new block.
    pub(crate) fn on_realloc(&self, size: usize, moved: bool) {
        if !ENABLED {
            return;
        }
        bump(&self.reallocs, 1);
        bump(&self.requested, size as u64);
        if moved {
            bump(&self.realloc_moves, 1);
        }
    }

    /// Moves the change since the last flush into the global [`LIVE`] and
    /// raises [`PEAK`].
    #[cold]
    #[inline(never)]
    pub(crate) fn flush(&self) {
        let r = Ordering::Relaxed;
        let net = self.net();
        let flushed = self.flushed.load(r);
        let hi = self.hi.load(r).max(net);
        self.scope_hi.fetch_max(hi, r);
        if !self.private.load(r) {
            let base = LIVE.fetch_add(net - flushed, r);
            PEAK.fetch_max(base - flushed + hi, r);
            crate::map::on_peak(base - flushed + hi);
        }
        self.flushed.store(net, r);
        self.hi.store(net, r);
        self.top
            .store(self.bytes_in.load(r).wrapping_add(net as u64), r);
    }

    /// For [`ORPHAN`]: counts an allocation of `bytes` usable bytes for a
    /// request of `size` with read-modify-writes (several threads).
    pub(crate) fn orphan_alloc(&self, bytes: usize, size: usize) {
        if !ENABLED {
            return;
        }
        let r = Ordering::Relaxed;
        self.allocs.fetch_add(1, r);
        self.requested.fetch_add(size as u64, r);
        self.bytes_out.fetch_add(bytes as u64, r);
        self.flushed.fetch_add(bytes as i64, r);
        let live = LIVE.fetch_add(bytes as i64, r) + bytes as i64;
        PEAK.fetch_max(live, r);
    }

    /// For [`ORPHAN`]: counts a free with read-modify-writes (several threads).
    pub(crate) fn orphan_free(&self, bytes: usize) {
        if !ENABLED {
            return;
        }
        let r = Ordering::Relaxed;
        self.frees.fetch_add(1, r);
        self.bytes_in.fetch_add(bytes as u64, r);
        // Keep the orphan's net figure flushed: frees only lower the peak.
        self.flushed.fetch_sub(bytes as i64, r);
        LIVE.fetch_sub(bytes as i64, r);
    }
}
