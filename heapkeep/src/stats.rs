//! `heapkeep::stats()`: the process-wide counts, summed from every heap's
//! [`Counters`] on demand (no lock, no stop-the-world; see `counters.rs` for
//! what is exact when).

use core::sync::atomic::Ordering;

use crate::counters::{Counters, ORPHAN, PEAK};
use crate::{os, thread};

/// What the process did with heapkeep, from its start until now.
///
/// Counts are of calls: an allocation is any `alloc`/`malloc`-family call
/// that returned a block (C `realloc(NULL, n)` counts as one), a free any
/// `dealloc`/`free` of a block (C `realloc(p, 0)` counts as one), and a
/// `realloc` a resize of a live block, whether in place or moved.
///
/// Byte figures are *usable* bytes (what `usable_size` reports: the size
/// class of the block), except `bytes_requested`. `live_bytes` is exact when
/// read; `peak_live_bytes` is seen by the allocation slow paths, so a high
/// point the fast path reached and left again before the thread's next
/// slow path can be missed by up to the blocks the thread's pages had
/// ready (a few KiB in practice; at most 2.1 MiB), and in a program with
/// several threads by up to 256 KiB more per allocating thread (see
/// `counters.rs`). It is never above the bytes in use at some point (up
/// to the heaps being read one after another), and never falls: a
/// reading's high is kept for the next.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Allocation calls.
    pub allocs: u64,
    /// Free calls.
    pub frees: u64,
    /// Reallocation calls.
    pub reallocs: u64,
    /// Sum of the sizes asked for by allocation and reallocation calls.
    pub bytes_requested: u64,
    /// Usable bytes handed out, in total (grows with every allocation).
    pub bytes_allocated: u64,
    /// Usable bytes in blocks allocated and not freed.
    pub live_bytes: u64,
    /// Blocks allocated and not freed.
    pub live_blocks: u64,
    /// Highest `live_bytes` so far.
    pub peak_live_bytes: u64,
    /// Bytes mapped from the OS now (resident or not).
    pub os_mapped_bytes: u64,
    /// Highest `os_mapped_bytes` so far.
    pub os_mapped_peak_bytes: u64,
    // The fields below come from a heap walk (`heapkeep::walk`), not from
    // the counters: exact when other threads are quiet, a snapshot over a
    // few microseconds per segment otherwise.
    /// Bytes of heap memory held from the OS: every segment (in a thread's
    /// heap, cached, the sampled guard's) and every huge block's mapping
    /// (live or cached). The rest of `os_mapped_bytes` is heapkeep's own
    /// books (thread heaps, check mode's and the profile's tables).
    pub held_bytes: u64,
    /// Of `held_bytes`, resident in RAM now (`mincore`).
    pub resident_bytes: u64,
    /// Held bytes not in a block in use: free blocks, pages not carved yet,
    /// free slices, cached segments and mappings, segment headers
    /// (`held_bytes` minus the usable bytes of the blocks in use).
    pub unused_bytes: u64,
    /// Resident bytes not in a block in use (at least this many: a page
    /// counts its resident bytes beyond the size of its blocks in use).
    pub unused_resident_bytes: u64,
    /// The largest run of free memory held: free slices of one segment, or
    /// a cached huge mapping.
    pub largest_free_run: u64,
}

/// Raw sums over all counters.
#[derive(Default)]
struct Sums {
    allocs: u64,
    frees: u64,
    requested: u64,
    reallocs: u64,
    moves: u64,
    bytes_out: u64,
    bytes_in: u64,
    /// Highest `hi - net` of one heap: how far above its current figure a
    /// heap has been since its last flush.
    max_rise: i64,
}

impl Sums {
    fn add(&mut self, c: &Counters, allocates: bool) {
        let t = c.totals();
        self.allocs += t.allocs;
        self.frees += t.frees;
        self.requested += t.requested;
        self.reallocs += t.reallocs;
        self.moves += t.moves;
        self.bytes_out += t.bytes_out;
        self.bytes_in += t.bytes_in;
        if allocates {
            let hi = c.hi.load(Ordering::Relaxed);
            self.max_rise = self.max_rise.max(hi - t.net());
        }
    }
}

/// Calls `f` on every set of counters whose counts the process's figures
/// sum (and `LIVE` holds the flushed part of): the heapless threads'
/// [`ORPHAN`] (`false`: it never keeps a high), check mode's, and every
/// heap's but the profile's own. Lock-free and allocation-free.
fn for_each_counted(mut f: impl FnMut(&Counters, bool)) {
    f(&ORPHAN, false);
    for c in crate::check::counters() {
        f(c, true);
    }
    thread::for_each_heap(|h| {
        // SAFETY: heaps are never freed; counters are atomics anyone may read.
        let c = unsafe { &(*h).counters };
        if !c.private.load(Ordering::Relaxed) {
            f(c, true);
        }
    });
}

/// What the counters other than `own` counted freed since their last
/// flush and not allocated again: the sum of their net figures' falls
/// below their flushed ones (0 or less). A flush that would raise `PEAK`
/// takes it off `LIVE`'s figure for them, since frees through the fast
/// path never flush (`counters.rs`, "The peak"). Counters read in the
/// middle of their own flush can count twice (the peak is then low, by at
/// most what that flush moved). Lock-free and allocation-free: called
/// from the allocation slow paths.
pub(crate) fn freed_since_flush(own: &Counters) -> i64 {
    let mut fall = 0;
    for_each_counted(|c, _| {
        if !core::ptr::eq(c, own) {
            fall += (c.totals().net() - c.flushed.load(Ordering::Relaxed)).min(0);
        }
    });
    fall
}

/// [`stats`] in C's way: copies the current counts into `*out`, at most
/// `size` bytes of them (a caller built against an older, shorter struct
/// gets the fields it knows), and returns the size of the full struct.
/// Behind C's `heapkeep_stats` and a second copy's report (`peer.rs`).
///
/// # Safety
/// `out` is valid for writes of `size` bytes (or null with `size` 0).
#[doc(hidden)]
pub unsafe extern "C" fn stats_into(out: *mut Stats, size: usize) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { copy_prefix(&stats(), out, size) }
}

/// [`thread_stats`] in C's way, as [`stats_into`] does for [`stats`]:
/// behind C's `heapkeep_thread_stats`.
///
/// # Safety
/// `out` is valid for writes of `size` bytes (or null with `size` 0).
#[doc(hidden)]
pub unsafe fn thread_stats_into(out: *mut ThreadStats, size: usize) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { copy_prefix(&thread_stats(), out, size) }
}

/// Copies the first `size` bytes of `*value` (at most all of it) to `out`
/// and returns the size of `T`.
///
/// # Safety
/// `out` is valid for writes of `size` bytes (or null with `size` 0).
unsafe fn copy_prefix<T: Copy>(value: &T, out: *mut T, size: usize) -> usize {
    let full = core::mem::size_of::<T>();
    // SAFETY: `out` has room for `size` bytes (caller); we copy no more than
    // the struct holds.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>(),
            out.cast::<u8>(),
            size.min(full),
        )
    };
    full
}

/// The current counts (see [`Stats`]). Allocation-free; safe from any
/// thread. The counts take no lock; the heap-walk figures hold the segment
/// cache's lock (and then the guard's and huge blocks') for the walk, so do
/// not call it from a signal handler.
pub fn stats() -> Stats {
    let mut s = Sums::default();
    for_each_counted(|c, allocates| s.add(c, allocates));
    let live = s.bytes_out.saturating_sub(s.bytes_in);
    // A heap's high point since its flush on top of the others' current
    // figures (see `counters.rs` for how exact). Kept in `PEAK`, so the
    // peak never falls between two readings: the figure seen here can be
    // above what the slow paths saw (the fast path's slack).
    let seen = live as i64 + s.max_rise;
    let peak = PEAK.fetch_max(seen, Ordering::Relaxed).max(seen) as u64;
    let w = crate::walk::totals();
    Stats {
        allocs: s.allocs.saturating_sub(s.moves),
        frees: s.frees.saturating_sub(s.moves),
        reallocs: s.reallocs,
        bytes_requested: s.requested,
        bytes_allocated: s.bytes_out,
        live_bytes: live,
        live_blocks: s.allocs.saturating_sub(s.frees),
        peak_live_bytes: peak,
        os_mapped_bytes: os::mapped_bytes() as u64,
        os_mapped_peak_bytes: os::mapped_peak_bytes() as u64,
        held_bytes: w.held,
        resident_bytes: w.resident,
        unused_bytes: w.held.saturating_sub(w.in_use),
        unused_resident_bytes: w.unused_resident,
        largest_free_run: w.largest_free_run,
    }
}

/// What one thread did with heapkeep since it started (see [`thread_stats`]).
///
/// Counted per thread heap: a thread's allocations, frees (of any block,
/// also one another thread allocated) and reallocations, and the usable
/// bytes it handed out and took back. `net_bytes` is their difference, so
/// a thread that frees what others allocate has a negative figure.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    /// The thread's kernel id (`gettid`).
    pub thread_id: u32,
    /// Allocation calls.
    pub allocs: u64,
    /// Free calls.
    pub frees: u64,
    /// Reallocation calls.
    pub reallocs: u64,
    /// Sum of the sizes asked for by allocation and reallocation calls.
    pub bytes_requested: u64,
    /// Usable bytes handed out.
    pub bytes_allocated: u64,
    /// Usable bytes taken back.
    pub bytes_freed: u64,
    /// `bytes_allocated - bytes_freed`.
    pub net_bytes: i64,
}

fn thread_stats_of(tid: u32, t: crate::counters::Totals) -> ThreadStats {
    ThreadStats {
        thread_id: tid,
        allocs: t.allocs.wrapping_sub(t.moves),
        frees: t.frees.wrapping_sub(t.moves),
        reallocs: t.reallocs,
        bytes_requested: t.requested,
        bytes_allocated: t.bytes_out,
        bytes_freed: t.bytes_in,
        net_bytes: t.net(),
    }
}

/// The calling thread's counts since it started. A thread that has not
/// allocated yet has no heap and reads zeros (with its id); so does every
/// thread in check mode, which keeps no per-thread heaps. Frees by a thread
/// without a heap are counted process-wide only ([`stats`]).
pub fn thread_stats() -> ThreadStats {
    let mut heap = thread::current();
    if crate::forbid::active() {
        heap = crate::forbid::kept_heap();
    }
    if heap == thread::empty_heap() {
        return ThreadStats {
            thread_id: os::thread_id(),
            ..ThreadStats::default()
        };
    }
    // SAFETY: heaps are never freed; counters are atomics anyone may read.
    let (tid, t) = unsafe { (*heap).counters.thread_totals() };
    thread_stats_of(tid, t)
}

/// Calls `f` with the counts of every thread running a heap now (threads
/// that have allocated and not exited), in no particular order.
/// Allocation-free; the figures of other threads are as of the moment each
/// is read.
pub fn for_each_thread(mut f: impl FnMut(&ThreadStats)) {
    thread::for_each_heap(|h| {
        // SAFETY: heaps are never freed; counters are atomics anyone may read.
        let c = unsafe { &(*h).counters };
        if c.private.load(Ordering::Relaxed) {
            return;
        }
        let (tid, t) = c.thread_totals();
        if tid != 0 {
            f(&thread_stats_of(tid, t));
        }
    });
}
