//! Per-heap operation counters: the raw material of `heapkeep::stats()`.
//!
//! Every heap carries a [`Counters`]. Only the thread running the heap writes
//! it, with relaxed loads and stores (plain `mov`/`add` on x86_64, no locked
//! instruction); any thread may read it at any time (`stats.rs` sums all
//! heaps, [`Counters::totals`]).
//!
//! ## One add per fast-path call
//! The fast paths are inlined into every Rust caller only while they stay
//! small (LLVM's inliner): one more branch, or a second counter update, and
//! `__rust_alloc`/`__rust_dealloc` become calls, which cost 10-16% on the
//! allocation-dense workloads. So each fast path adds one precomputed word
//! and nothing else:
//!
//! - an allocation of a `b`-byte block for a request of `s` bytes adds
//!   `(b << 40 | 1 << 23) + s` to [`Counters::out`]: requested bytes in
//!   bits 0-22, blocks in bits 23-39, usable bytes in bits 40-63 (the
//!   request is the low field so that the page's precomputed word and `s`
//!   are added as they are: a load-and-add and an add to memory);
//! - a free of a `b`-byte block adds `b << 30 | 1` to [`Counters::inn`]:
//!   blocks in bits 0-29, bytes in bits 30-63.
//!
//! The slow paths *drain* a word into the wide totals once one of its
//! fields is half full (the block count of `out`: a quarter full;
//! [`Counters::upkeep`]). Between two slow paths the
//! allocation fast path can only hand out what the free lists of the
//! direct table's pages hold: at most one 64 KiB page per size class up to
//! 1 KiB (33 classes), so at most 2.1 MiB and 23,000 blocks. Frees need no
//! slow path, so `inn` has wide fields (1 Gi blocks, 16 GiB) and is
//! drained from 4 GiB, also when an empty page is given back: it stays
//! exact while a thread frees less than 8 GiB of its own blocks (16 GiB
//! when none is smaller than 16 bytes) with neither a full upkeep (below:
//! at least one per 512 KiB allocated) nor a page given back in between
//! (a run of frees that empties no page other than one kept per size
//! class). A longer run of frees would drop multiples of 16 GiB from the
//! counts; no program seen has come near it, and a debug assertion in the
//! drain catches some of it.
//!
//! ## The slow paths' check
//! The full upkeep (drain test, peak, flush) costs about 60 instructions;
//! medium sizes (above 1 KiB) take the slow path on every call, so a slow
//! path adds its word and does the full upkeep only when needed:
//!
//! - an allocation compares `out` with `out_mark`, which the last upkeep
//!   set [`MARK_BYTES`] (512 KiB) of usable bytes above `out`. Bound: at
//!   a full upkeep no field is half full (the block count not a quarter
//!   full); until the next one each slow path found fewer than 512 KiB
//!   handed out since (so fewer than 64 Ki
//!   blocks of at least 8 bytes), then the fast path added at most 23,000
//!   blocks and 2.1 MiB, and one slow path one block below 1 MiB (larger
//!   ones are counted wide, with a full upkeep). So `out` stays below
//!   32 Ki + 64 Ki + 23,000 + 1 blocks (of 128 Ki), 4 + 0.5 + 2.1 + 1 MiB
//!   requested (of 8: a request is never more than its block) and
//!   8 + 0.5 + 2.1 + 1 MiB usable (of 16). Check mode's counters, whose
//!   blocks may have 0 bytes, keep `out_mark` at 0 (every call does it).
//! - it also computes its net figure as `net_base + out's bytes - inn's
//!   bytes` and, when that tops the least high worth keeping (`hi_rel`,
//!   relative to `net_base`: see "The peak"), raises `hi` on the spot,
//!   with the full upkeep only when the net figure is [`FLUSH_BYTES`]
//!   above `flushed` (`up_rel`). So `hi` is exactly as up to date, where
//!   it is kept, as when every slow path did the full upkeep.
//! - these tests are skipped below `alloc_mark`: the lowest of `out_mark`
//!   and the `out`s that would top `hi_rel` or `up_rel` given the frees
//!   counted when the mark was set. Frees only raise `inn`, so no `out`
//!   below it is a high to keep or due a flush; a slow path past it sets
//!   it again from the current `inn` (just above `out` after a new high,
//!   so a climbing net figure is checked on every slow path). So a slow
//!   path that is neither at a kept high nor at a mark costs the add and
//!   a sign test (see "The marks as biases").
//! - a free tests `inn` against `in_mark`: the point where the net figure
//!   would fall [`FLUSH_BYTES`] below `flushed` (at most 512 KiB on, and at
//!   most the 4 GiB drain point).
//!
//! ## The marks as biases
//! A slow path's test of its mark is the sign of its add: `out` holds the
//! packed count less `alloc_mark`, `inn` the packed count less `in_mark`
//! (both wrapping), so the add of a slow path's word leaves a negative
//! word below the mark and a non-negative one at or past it, and the test
//! is one `js`/`jns` on the add's result, with no load of the mark (a
//! remote free's count went from 7 instructions to 5). The sign never
//! lies while a packed count is less than 2^63 away from its mark: `out`
//! lies at most [`MARK_BYTES`] below `alloc_mark` (which is at most
//! `out_mark`) and, by the bounds above, a few MiB of the usable field
//! (bit 40 on) above it; `in_mark` is at most the 4 GiB drain point and
//! the free counts are exact only below 8 GiB (bit 63 of `inn`) anyway.
//! The fast paths add to the same words and never look.
//! Setting a mark rewrites its word too ([`rebias`]), under
//! `seq` like a drain, since readers add word and mark back together.
//!
//! Every full upkeep (the only place a drain happens) and every flush (one
//! from `measure` too) sets the marks again, so they never lag behind
//! `net_base`, `hi` or `flushed`. What is left for
//! the next full upkeep: a flush of a net figure that fell through fast
//! frees (at most 512 KiB of allocations later, or at a page given back;
//! before, the next slow path).
//!
//! Readers take the wide totals, the packed words and their marks under a
//! sequence number (`seq`, odd while the owner drains or sets marks), so a
//! drain or a new mark is never seen half done; the fast paths do not
//! touch `seq`.
//!
//! ## The peak
//! The bytes in use over the whole process would need one shared counter
//! updated on every call. Instead each heap remembers `flushed`, its net
//! figure when it last *flushed*, and `hi`, the highest net figure seen
//! since. A flush adds `net - flushed` to the global [`LIVE`] and raises
//! [`PEAK`] to `LIVE - flushed + hi` (the highest point this heap reached on
//! top of what the others had flushed). A heap flushes when its net figure
//! has moved [`FLUSH_BYTES`] away from `flushed`.
//!
//! Frees through the fast path test no mark, so a heap's `flushed` can lie
//! above its net figure by all it freed since its last slow path or page
//! given back (a page given back tests the free mark:
//! [`Counters::check_frees`]). Added to another heap's climb, that would
//! put `PEAK` above anything the program ever held. So a flush that would
//! raise `PEAK` takes off what the other heaps freed since their flushes
//! (`stats::freed_since_flush`: a walk of all counters, only at a new
//! process high). The peak is then never above the bytes in use,
//! but for the heaps being read one after another rather than at one
//! instant.
//!
//! `hi` is brought up to date by every allocation slow path, not by the
//! fast path (a compare there would cost the inlining). So the peak misses
//! at most what the fast path handed out since the thread's last slow path
//! and took back before the next one:
//! at most the free lists of the direct table's pages (the 2.1 MiB above;
//! a few KiB in practice, since a page refill carves 4 KiB at a time).
//!
//! A high only matters if it could raise `PEAK`: a net figure `n` adds
//! `LIVE - flushed + n` at a flush, so no `n` at or below
//! `PEAK - (LIVE - flushed)` does while the others' flushed figures stay
//! put. The marks are set against that floor (read at every full upkeep,
//! at least once per [`MARK_BYTES`] allocated, and when a thread adopts
//! the heap), so once a program has passed its peak the slow paths keep
//! no high; the test that did, on every slow path near `hi` (which every
//! flush resets), was a coin toss for the branch predictor (`random` lost
//! about 1% to it). Inside a `measure` scope (`exact_hi`) every high is
//! kept, for the scope's own peak.
//!
//! Consequences (documented on `Stats`): counts and bytes in use are exact
//! whenever read (all heaps' sums are added); the peak is exact up to that
//! fast-path slack for a single-threaded program. With several threads it
//! may be low by up to `FLUSH_BYTES` per allocating thread: at a flush
//! each other heap may be that far from its flushed figure, and a thread's
//! own high is not kept if the others' flushed figures rose after its
//! floor was read (so also for threads that ran one at a time: the first
//! upkeep after the others' rise, at most [`MARK_BYTES`] on, reads the
//! floor again). It is never high: a new high takes the others' falls
//! off, and `stats()` keeps a reading's high in `PEAK` (so the peak never
//! falls either), up to counters being read one after another.
//!
//! Threads without a heap (the static empty heap) count into [`ORPHAN`] with
//! atomic read-modify-writes on the wide totals, since several such threads
//! may count at once.

use core::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

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

/// Layout of [`Counters::out`] (see the module docs).
const OUT_BLOCKS_SHIFT: u32 = 23;
const OUT_BYTES_SHIFT: u32 = 40;
/// Layout of [`Counters::inn`].
const IN_BYTES_SHIFT: u32 = 30;
/// [`Counters::upkeep`] and [`Counters::check_frees`] drain `inn` from 4 GiB.
const IN_DRAIN_AT: u64 = 4 << (30 + IN_BYTES_SHIFT);
/// The top bit of each byte field of `out` and the top two of its block
/// count: [`Counters::upkeep`] drains it when one is set (a byte field half
/// full, the block count a quarter full).
const OUT_HALVES: u64 = 1 << 63 | 3 << (OUT_BYTES_SHIFT - 2) | 1 << (OUT_BLOCKS_SHIFT - 1);
/// The slow paths do the full upkeep at least once per this many bytes
/// handed out (and taken back): see "The slow paths' check".
const MARK_BYTES: i64 = 512 << 10;
/// The slow paths pack blocks below this size too (1 MiB: a field half
/// full plus [`MARK_BYTES`] plus the fast path's 2.1 MiB plus this stays in
/// bounds; see "The slow paths' check").
const SLOW_PACK_MAX: usize = 1 << 20;

/// What a free adds for a block of `bytes` usable bytes (pages keep it
/// precomputed for the free fast path: `page::set_block_size`).
#[inline(always)]
pub(crate) const fn free_unit(bytes: usize) -> u64 {
    ((bytes as u64) << IN_BYTES_SHIFT) | 1
}

/// What the allocation fast path adds for a block of `bytes` usable bytes,
/// before the request's `size` is added (pages keep it precomputed:
/// `page::set_block_size`). 0 for blocks the fast path never hands out
/// (16 MiB and more: they would not fit the usable-bytes field).
pub(crate) const fn alloc_unit(bytes: usize) -> u64 {
    if bytes < 1 << (64 - OUT_BYTES_SHIFT) {
        ((bytes as u64) << OUT_BYTES_SHIFT) | 1 << OUT_BLOCKS_SHIFT
    } else {
        0
    }
}

/// [`Counters::out`] as (blocks, requested bytes, usable bytes).
#[inline(always)]
fn unpack_out(v: u64) -> (u64, u64, u64) {
    let blocks = (v >> OUT_BLOCKS_SHIFT) & ((1 << (OUT_BYTES_SHIFT - OUT_BLOCKS_SHIFT)) - 1);
    (
        blocks,
        v & ((1 << OUT_BLOCKS_SHIFT) - 1),
        v >> OUT_BYTES_SHIFT,
    )
}

/// [`Counters::inn`] as (blocks, bytes).
#[inline(always)]
fn unpack_in(v: u64) -> (u64, u64) {
    (v & ((1 << IN_BYTES_SHIFT) - 1), v >> IN_BYTES_SHIFT)
}

/// Counters of one heap. The packed words are written by the heap's thread
/// only, the wide totals by that thread under `seq` (or with
/// read-modify-writes for [`ORPHAN`]); anyone reads.
///
/// Invariant (owner's view, between calls): the heap's totals are the wide
/// fields plus the unpacked `out` and `inn`, and no field of `out` or `inn`
/// has overflowed (see the module docs for the bounds).
#[repr(C)]
pub(crate) struct Counters {
    /// Packed blocks, requested and usable bytes handed out by the fast
    /// path since the last drain, less `alloc_mark` (wrapping: see "The
    /// marks as biases").
    out: AtomicU64,
    /// Packed blocks and bytes taken back by the fast path since the last
    /// drain, less `in_mark` (wrapping).
    inn: AtomicU64,
    /// The slow paths' marks (see "The slow paths' check" in the module
    /// docs), owner only. [`Counters::count_alloc`] does the full upkeep
    /// once `out` reaches `out_mark` (0 when the next slow path must).
    out_mark: AtomicU64,
    /// The lower of `out_mark` and the `out` at which a slow path would
    /// reach a new high ([`Counters::alloc_mark_for`]): below it a slow
    /// path's count is an add and a sign test. `out`'s bias: written by
    /// the owner under `seq`, read by anyone.
    alloc_mark: AtomicU64,
    /// [`Counters::count_free`] does the full upkeep once `inn` reaches
    /// `in_mark`. `inn`'s bias, as `alloc_mark` is `out`'s.
    in_mark: AtomicU64,
    /// The wide totals' net figure (`bytes_out - bytes_in`), so that the net
    /// figure is `net_base + (out's bytes) - (inn's bytes)`.
    net_base: AtomicI64,
    /// The least net figure worth keeping as `hi`, less `net_base`: `hi`,
    /// or outside a `measure` scope the process peak less the other heaps'
    /// flushed figures if that is higher (set by [`Counters::set_marks`]).
    /// A slow path whose packed net figure tops it raises `hi` and it.
    hi_rel: AtomicI64,
    /// `flushed + FLUSH_BYTES - net_base`: a slow path above it flushes.
    up_rel: AtomicI64,
    /// Odd while the owner moves packed counts into the wide totals.
    seq: AtomicU64,
    /// Blocks handed out, up to the last drain.
    allocs: AtomicU64,
    /// Sum of the sizes asked for by `alloc` and `realloc` calls, up to the
    /// last drain.
    requested: AtomicU64,
    /// Usable bytes handed out (and grown in place), up to the last drain.
    bytes_out: AtomicU64,
    /// Blocks taken back, up to the last drain.
    frees: AtomicU64,
    /// Usable bytes taken back (and shrunk in place), up to the last drain.
    bytes_in: AtomicU64,
    /// `realloc` calls.
    reallocs: AtomicU64,
    /// `realloc` calls that moved the block: their new and old block are also
    /// counted in `allocs`/`frees`, which `stats.rs` subtracts.
    realloc_moves: AtomicU64,
    /// Net figure (`bytes out - bytes in`) at the last flush.
    pub(crate) flushed: AtomicI64,
    /// Highest net figure seen by slow paths since the last flush, where
    /// it could raise the process peak (everywhere inside a `measure`
    /// scope); at least the net figure at the last flush or upkeep.
    pub(crate) hi: AtomicI64,
    /// Highest net figure seen at flushes since a `measure` scope began
    /// (flushes reset `hi`; this keeps the scope's high point).
    pub(crate) scope_hi: AtomicI64,
    /// Counts that are not the program's (check mode's inner heap, whose
    /// blocks carry redzones): never flushed into [`LIVE`]/[`PEAK`], left
    /// out of `stats()`.
    pub(crate) private: AtomicBool,
    /// Set while a `measure` scope runs on the heap's thread: the slow
    /// paths then keep `hi` exact, not only above the process peak (see
    /// "The peak"). Owner only; read when the marks are set.
    pub(crate) exact_hi: AtomicBool,
    /// Kernel id of the thread running the heap (0: none; set by the owner
    /// when it adopts the heap, cleared when it retires it).
    thread: AtomicU32,
    /// The totals when that thread started running the heap (a retired
    /// heap is adopted with the counts of the threads before).
    base: [AtomicU64; 7],
    /// The smallest block these counters see, in bytes: 8 for a heap's
    /// (usable sizes), 0 for check mode's, which counts the requested
    /// sizes (a free of a 1-byte block adds 1). Only the debug check of the
    /// free word's byte field uses it.
    min_block: u64,
    /// The static empty heap's counters: see [`Counters::count_free_unit`].
    /// Never drained, flushed or given marks, so `in_mark` stays 0.
    stand_in: bool,
}

/// A consistent reading of one heap's counters.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Totals {
    pub(crate) allocs: u64,
    pub(crate) frees: u64,
    pub(crate) bytes_out: u64,
    pub(crate) bytes_in: u64,
    pub(crate) requested: u64,
    pub(crate) reallocs: u64,
    pub(crate) moves: u64,
}

impl Totals {
    /// Net usable bytes handed out.
    pub(crate) fn net(&self) -> i64 {
        self.bytes_out.wrapping_sub(self.bytes_in) as i64
    }

    fn fields(&self) -> [u64; 7] {
        [
            self.allocs,
            self.frees,
            self.bytes_out,
            self.bytes_in,
            self.requested,
            self.reallocs,
            self.moves,
        ]
    }

    fn from_fields(f: [u64; 7]) -> Totals {
        let [allocs, frees, bytes_out, bytes_in, requested, reallocs, moves] = f;
        Totals {
            allocs,
            frees,
            bytes_out,
            bytes_in,
            requested,
            reallocs,
            moves,
        }
    }
}

/// Stores the packed count `packed` in `word` under the new mark `mark`
/// (the word less its mark: see "The marks as biases"). The owner only,
/// between [`Counters::begin_write`] and [`Counters::end_write`]: a reader
/// adds a word and its mark, so it must not see one changed without the
/// other.
fn rebias(word: &AtomicU64, mark_word: &AtomicU64, packed: u64, mark: u64) {
    mark_word.store(mark, Ordering::Relaxed);
    word.store(packed.wrapping_sub(mark), Ordering::Relaxed);
}

/// Adds `n` to `out` or `inn`, which hold their packed count less its
/// mark (see "The marks as biases"), and tells whether the count reached
/// the mark: the word is negative below it. Owner thread only.
#[inline(always)]
fn bump_to_mark(word: &AtomicU64, n: u64) -> bool {
    let biased = word.load(Ordering::Relaxed).wrapping_add(n);
    word.store(biased, Ordering::Relaxed);
    biased as i64 >= 0
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Counters {
    /// All zero, for usable sizes (every block at least 8 bytes).
    pub(crate) const fn new() -> Counters {
        Counters::with_min_block(8)
    }

    /// All zero, for requested sizes (blocks of any size, 0 included).
    pub(crate) const fn for_requested_sizes() -> Counters {
        Counters::with_min_block(0)
    }

    /// The static empty heap's counters (see [`Counters::count_free_unit`]).
    pub(crate) const fn stand_in() -> Counters {
        let mut c = Counters::new();
        c.stand_in = true;
        c
    }

    const fn with_min_block(min_block: u64) -> Counters {
        Counters {
            out: AtomicU64::new(0),
            inn: AtomicU64::new(0),
            out_mark: AtomicU64::new(0),
            alloc_mark: AtomicU64::new(0),
            in_mark: AtomicU64::new(0),
            net_base: AtomicI64::new(0),
            hi_rel: AtomicI64::new(0),
            up_rel: AtomicI64::new(FLUSH_BYTES),
            seq: AtomicU64::new(0),
            allocs: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            realloc_moves: AtomicU64::new(0),
            flushed: AtomicI64::new(0),
            hi: AtomicI64::new(0),
            scope_hi: AtomicI64::new(i64::MIN),
            private: AtomicBool::new(false),
            exact_hi: AtomicBool::new(false),
            thread: AtomicU32::new(0),
            base: [const { AtomicU64::new(0) }; 7],
            min_block,
            stand_in: false,
        }
    }

    /// Counts a block handed out by the allocation fast path for a request
    /// of `size` bytes (at most 1 KiB): `unit` is [`alloc_unit`] of its
    /// usable size, which the page keeps. Owner thread only.
    #[inline(always)]
    pub(crate) fn on_alloc_unit(&self, unit: u64, size: usize) {
        if ENABLED {
            bump(&self.out, unit + size as u64);
        }
    }

    /// Counts a block taken back by the free fast path: `unit` is
    /// [`free_unit`] of its usable size (at most 2 MiB), which the page
    /// keeps. Owner thread only.
    #[inline(always)]
    pub(crate) fn on_free_unit(&self, unit: u64) {
        if ENABLED {
            bump(&self.inn, unit);
        }
    }

    /// Counts an allocation of the slow paths (any size); the full upkeep
    /// ([`Counters::upkeep`]) only once `out` reaches `out_mark`. Owner
    /// thread only.
    #[inline(always)]
    pub(crate) fn count_alloc(&self, bytes: usize, size: usize) {
        if bytes < SLOW_PACK_MAX {
            self.count_alloc_unit(alloc_unit(bytes), size);
        } else if ENABLED {
            bump(&self.allocs, 1);
            bump(&self.requested, size as u64);
            bump(&self.bytes_out, bytes as u64);
            self.upkeep();
        }
    }

    /// [`Counters::count_alloc`] of a block below 1 MiB whose
    /// [`alloc_unit`] is `unit` (a page keeps it): an add and a sign test against
    /// `alloc_mark` unless the net figure may be at a new high or
    /// `out_mark` is reached. Owner thread only.
    #[inline(always)]
    pub(crate) fn count_alloc_unit(&self, unit: u64, size: usize) {
        if ENABLED && bump_to_mark(&self.out, unit + size as u64) {
            self.alloc_mark_reached();
        }
    }

    /// A slow path's `out` reached `alloc_mark`: keeps the net figure's
    /// high if it is one worth keeping, does the full upkeep if due, else
    /// sets the mark again. Owner thread only.
    #[cold]
    #[inline(never)]
    fn alloc_mark_reached(&self) {
        let r = Ordering::Relaxed;
        let out = self.out_packed();
        let inn_b = (self.in_packed() >> IN_BYTES_SHIFT) as i64;
        let rel = (out >> OUT_BYTES_SHIFT) as i64 - inn_b;
        if rel > self.hi_rel.load(r) {
            // A high worth keeping: `net_base + rel` is the net figure.
            self.hi_rel.store(rel, r);
            self.hi.store(self.net_base.load(r) + rel, r);
        }
        if rel > self.up_rel.load(r) || out >= self.out_mark.load(r) {
            self.upkeep();
            return;
        }
        // The mark again from here: just above `out` after a new high
        // (while the net figure climbs, every slow path checks), else
        // moved up by the frees since it was set.
        let s = self.begin_write();
        rebias(&self.out, &self.alloc_mark, out, self.alloc_mark_for(inn_b));
        self.end_write(s);
    }

    /// The `alloc_mark` to set: the lower of `out_mark` and the smallest
    /// `out` whose usable bytes, less the `inn_b` bytes taken back so far,
    /// top `hi_rel` or `up_rel`. Frees only raise `inn`, so until the mark
    /// is set again no `out` below it is a high to keep or due a flush.
    /// Owner thread only.
    fn alloc_mark_for(&self, inn_b: i64) -> u64 {
        let r = Ordering::Relaxed;
        // At least 1: `hi_rel` and `up_rel` are at least the packed net
        // figure, `out`'s bytes less `inn_b`.
        let high = (self.hi_rel.load(r).min(self.up_rel.load(r)) + inn_b + 1) as u64;
        let high_mark = if high < 1 << (64 - OUT_BYTES_SHIFT) {
            high << OUT_BYTES_SHIFT
        } else {
            u64::MAX
        };
        high_mark.min(self.out_mark.load(r))
    }

    /// `out`'s packed count: the word plus its bias. Exact for the owner;
    /// another thread reads it under `seq` (see [`Counters::totals`]).
    fn out_packed(&self) -> u64 {
        let r = Ordering::Relaxed;
        self.out.load(r).wrapping_add(self.alloc_mark.load(r))
    }

    /// `inn`'s packed count: the word plus its bias (as
    /// [`Counters::out_packed`]).
    fn in_packed(&self) -> u64 {
        let r = Ordering::Relaxed;
        self.inn.load(r).wrapping_add(self.in_mark.load(r))
    }

    /// Makes `seq` odd: readers retry until [`Counters::end_write`].
    /// Returns the even value it had. Owner thread only.
    fn begin_write(&self) -> u64 {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        s
    }

    /// Ends the write [`Counters::begin_write`] began (it returned `s`).
    fn end_write(&self, s: u64) {
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// Counts a free of the slow paths (any size); the full upkeep only
    /// once `inn` reaches `in_mark`. Owner thread only (any thread without
    /// a heap for the empty heap's stand-in, which passes it on to
    /// [`ORPHAN`]: see [`Counters::count_free_unit`]).
    #[inline(always)]
    pub(crate) fn count_free(&self, bytes: usize) {
        if bytes < SLOW_PACK_MAX {
            self.count_free_unit(free_unit(bytes));
        } else if ENABLED {
            if self.stand_in {
                ORPHAN.orphan_free(bytes);
                return;
            }
            bump(&self.frees, 1);
            bump(&self.bytes_in, bytes as u64);
            self.upkeep();
        }
    }

    /// [`Counters::count_free`] of a block of a page (at most 2 MiB), whose
    /// [`free_unit`] is `unit` (the page keeps it). Owner thread only
    /// (any thread without a heap for the stand-in below).
    ///
    /// The static empty heap's counters are a stand-in ([`Counters::stand_in`]):
    /// their `in_mark` stays 0, so every free lands in
    /// [`Counters::free_mark_reached`], which counts it into [`ORPHAN`]
    /// (its threads have no heap of their own), and the slow free path
    /// needs no test for the empty heap.
    #[inline(always)]
    pub(crate) fn count_free_unit(&self, unit: u64) {
        if ENABLED && bump_to_mark(&self.inn, unit) {
            self.free_mark_reached(unit);
        }
    }

    /// A slow path's `inn` reached `in_mark` after adding `unit`: the full
    /// upkeep, or for the stand-in an orphan's free (the stand-in's own
    /// words are written by any heapless thread and never read).
    #[cold]
    #[inline(never)]
    fn free_mark_reached(&self, unit: u64) {
        if self.stand_in {
            ORPHAN.orphan_free((unit >> IN_BYTES_SHIFT) as usize);
            // Its mark is 0, so its word must stay small to stay
            // non-negative (heapless threads race on it: any small value
            // will do).
            self.inn.store(0, Ordering::Relaxed);
        } else {
            self.upkeep();
        }
    }

    /// Slow-path care: drains packed words whose fields are half full,
    /// raises `hi`, flushes when the net figure moved [`FLUSH_BYTES`]
    /// from the last flush, and sets the marks for the next time. Owner
    /// thread only.
    #[cold]
    #[inline(never)]
    pub(crate) fn upkeep(&self) {
        if !ENABLED || self.stand_in {
            return;
        }
        let r = Ordering::Relaxed;
        if self.out_packed() & OUT_HALVES != 0 || self.in_packed() >= IN_DRAIN_AT {
            self.drain();
        }
        let net = self.net();
        if net > self.hi.load(r) {
            self.hi.store(net, r);
        }
        if (net - self.flushed.load(r)).abs() > FLUSH_BYTES {
            self.publish(net);
        }
        self.set_marks(net);
    }

    /// Sets the slow paths' marks from the state after an upkeep or a
    /// flush (`net` is the net figure): `hi >= net` and `net - flushed`
    /// lies in `-FLUSH_BYTES..=FLUSH_BYTES`. Owner thread only.
    fn set_marks(&self, net: i64) {
        let r = Ordering::Relaxed;
        let base = self.wide_net();
        let flushed = self.flushed.load(r);
        let hi = self.hi.load(r);
        // Outside a `measure` scope a high only matters if it could raise
        // the process peak: above `PEAK` less the others' flushed figures
        // (see "The peak").
        let keep = if self.exact_hi.load(r) || self.private.load(r) {
            hi
        } else {
            hi.max(PEAK.load(r) - (LIVE.load(r) - flushed))
        };
        self.net_base.store(base, r);
        self.hi_rel.store(keep - base, r);
        self.up_rel.store(flushed + FLUSH_BYTES - base, r);
        let (out, inn) = (self.out_packed(), self.in_packed());
        let s = self.begin_write();
        if self.min_block == 0 {
            // Blocks of 0 bytes: the byte fields do not bound the block
            // fields, so every call does the full upkeep (check mode).
            self.out_mark.store(0, r);
            rebias(&self.out, &self.alloc_mark, out, 0);
            rebias(&self.inn, &self.in_mark, inn, 0);
        } else {
            let fall = (net - flushed + FLUSH_BYTES + 1).min(MARK_BYTES) as u64;
            let out_b = (out >> OUT_BYTES_SHIFT) + MARK_BYTES as u64;
            let in_b = ((inn >> IN_BYTES_SHIFT) + fall).min(IN_DRAIN_AT >> IN_BYTES_SHIFT);
            self.out_mark.store(out_b << OUT_BYTES_SHIFT, r);
            let alloc_mark = self.alloc_mark_for((inn >> IN_BYTES_SHIFT) as i64);
            rebias(&self.out, &self.alloc_mark, out, alloc_mark);
            rebias(&self.inn, &self.in_mark, inn, in_b << IN_BYTES_SHIFT);
        }
        self.end_write(s);
    }

    /// For a page given back: the full upkeep once `inn` reached `in_mark`
    /// (which is at most the 4 GiB drain point), as a slow free would do.
    /// The fast-path frees that emptied the page do not test the mark, so
    /// without this a thread could free megabytes page by page and keep
    /// its old figure in `LIVE`, for another thread's flush to add to
    /// `PEAK` (see "The peak"). One load and a sign test. Owner thread only.
    #[inline]
    pub(crate) fn check_frees(&self) {
        if ENABLED && (self.inn.load(Ordering::Relaxed) as i64) >= 0 {
            self.upkeep();
        }
    }

    /// Moves the packed words into the wide totals, as one step readers
    /// see whole. Owner thread only.
    #[cold]
    #[inline(never)]
    fn drain(&self) {
        let r = Ordering::Relaxed;
        let s = self.begin_write();
        let (n, req, b) = unpack_out(self.out_packed());
        bump(&self.allocs, n);
        bump(&self.requested, req);
        bump(&self.bytes_out, b);
        let (n, b) = unpack_in(self.in_packed());
        // A block is at least `min_block` bytes: fewer bytes than that per
        // block means the byte field wrapped (see the module docs).
        debug_assert!(
            b >= self.min_block * n,
            "free counts wrapped: {n} blocks, {b} bytes"
        );
        bump(&self.frees, n);
        bump(&self.bytes_in, b);
        rebias(&self.out, &self.alloc_mark, 0, self.alloc_mark.load(r));
        rebias(&self.inn, &self.in_mark, 0, self.in_mark.load(r));
        self.end_write(s);
    }

    /// Net usable bytes in the wide totals (up to the last drain).
    fn wide_net(&self) -> i64 {
        let r = Ordering::Relaxed;
        self.bytes_out.load(r).wrapping_sub(self.bytes_in.load(r)) as i64
    }

    /// Net usable bytes this heap handed out (owner's view: exact).
    pub(crate) fn net(&self) -> i64 {
        let (_, _, o) = unpack_out(self.out_packed());
        let (_, i) = unpack_in(self.in_packed());
        self.wide_net()
            .wrapping_add(o as i64)
            .wrapping_sub(i as i64)
    }

    /// Counts a large or huge block changing size in place.
    pub(crate) fn on_resize(&self, old: usize, new: usize) {
        if !ENABLED {
            return;
        }
        if new >= old {
            bump(&self.bytes_out, (new - old) as u64);
        } else {
            bump(&self.bytes_in, (old - new) as u64);
        }
        self.upkeep();
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
    /// raises [`PEAK`]. Owner thread only.
    #[cold]
    #[inline(never)]
    pub(crate) fn flush(&self) {
        if ENABLED && !self.stand_in {
            let net = self.net();
            self.publish(net);
            self.set_marks(net);
        }
    }

    /// [`Counters::flush`] without the marks; `net` is the net figure.
    fn publish(&self, net: i64) {
        let r = Ordering::Relaxed;
        let flushed = self.flushed.load(r);
        let hi = self.hi.load(r).max(net);
        self.scope_hi.fetch_max(hi, r);
        if !self.private.load(r) {
            let base = LIVE.fetch_add(net - flushed, r);
            let mut peak = base - flushed + hi;
            if peak > PEAK.load(r) {
                // A new process high on top of the others' flushed
                // figures: less what they freed since (see "The peak").
                peak += crate::stats::freed_since_flush(self);
                PEAK.fetch_max(peak, r);
                crate::map::on_peak(peak);
            }
        }
        self.flushed.store(net, r);
        self.hi.store(net, r);
    }

    /// A consistent reading, from any thread (see the module docs). A reader
    /// that keeps meeting drains (it would have to interrupt its own
    /// thread's drain, from a signal handler) takes its last reading.
    pub(crate) fn totals(&self) -> Totals {
        let r = Ordering::Relaxed;
        let mut t = Totals::default();
        for _ in 0..64 {
            let s = self.seq.load(Ordering::Acquire);
            let (on, oreq, ob) = unpack_out(self.out_packed());
            let (i_n, ib) = unpack_in(self.in_packed());
            t = Totals {
                allocs: self.allocs.load(r).wrapping_add(on),
                frees: self.frees.load(r).wrapping_add(i_n),
                bytes_out: self.bytes_out.load(r).wrapping_add(ob),
                bytes_in: self.bytes_in.load(r).wrapping_add(ib),
                requested: self.requested.load(r).wrapping_add(oreq),
                reallocs: self.reallocs.load(r),
                moves: self.realloc_moves.load(r),
            };
            fence(Ordering::Acquire);
            if s & 1 == 0 && self.seq.load(r) == s {
                break;
            }
            core::hint::spin_loop();
        }
        t
    }

    /// The thread `tid` starts running this heap: its counts start from
    /// the current totals. Owner thread only.
    pub(crate) fn start_thread(&self, tid: u32) {
        let r = Ordering::Relaxed;
        for (b, v) in self.base.iter().zip(self.totals().fields()) {
            b.store(v, r);
        }
        self.thread.store(tid, Ordering::Release);
        // A heap adopted after a rest: its marks were set against an
        // older process peak.
        self.upkeep();
    }

    /// The heap's thread stopped running it (thread exit; other threads'
    /// heaps in a forked child).
    pub(crate) fn end_thread(&self) {
        self.thread.store(0, Ordering::Release);
    }

    /// The heap's thread goes on under a new id (a forked child), its
    /// counts kept.
    pub(crate) fn rename_thread(&self, tid: u32) {
        self.thread.store(tid, Ordering::Release);
    }

    /// The thread running this heap (0: none) and its counts since it
    /// started. From any thread; a heap changing hands meanwhile may give
    /// a mixed reading, which a caller sees as a thread id of 0 next time.
    pub(crate) fn thread_totals(&self) -> (u32, Totals) {
        let tid = self.thread.load(Ordering::Acquire);
        let now = self.totals().fields();
        let mut d = [0u64; 7];
        for (i, b) in self.base.iter().enumerate() {
            d[i] = now[i].wrapping_sub(b.load(Ordering::Relaxed));
        }
        (tid, Totals::from_fields(d))
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

    /// For [`ORPHAN`]: counts a `realloc` that moved its block, whose new
    /// block and the old one's free were counted already (as
    /// [`Counters::on_realloc`] with `moved`), with read-modify-writes.
    pub(crate) fn orphan_realloc_moved(&self) {
        if !ENABLED {
            return;
        }
        let r = Ordering::Relaxed;
        self.reallocs.fetch_add(1, r);
        self.realloc_moves.fetch_add(1, r);
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
