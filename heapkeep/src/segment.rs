//! Segments: 4 MiB, 4 MiB-aligned chunks of address space cut into 64 slices
//! of 64 KiB. Slice 0 holds this header; slices 1..63 are handed out as page
//! spans (one slice for a small page, eight for a medium page, up to 32 for a
//! large block).
//!
//! The header is found from any block pointer `p` by masking:
//! `segment = (p - 1) & !(SEGMENT_SIZE - 1)`. The `- 1` lets a huge block with
//! an alignment above 4 MiB start exactly one segment size after its header
//! (see `huge.rs`); an ordinary block never starts at a segment base because
//! the header is there. The page of `p` is `pages[(p - segment) >> 16]`
//! minus that entry's `slice_offset`.
//!
//! A normal segment belongs to one heap (`heap`), fixed while it is in that
//! heap; all its slice bookkeeping is touched only by the thread running that
//! heap. Empty segments go to a small global cache (spin lock) that purges
//! them after a delay and unmaps them after a longer one. A normal segment
//! is unmapped only after it left the cache under the cache lock (or, when
//! the cache is full, by `release` after it took the lock): the heap walk
//! (`walk.rs`) relies on this, see [`with_cache_held`].
//!
//! Invariants (normal segments):
//! - bit `i` of `free_mask` is set iff slice `i` belongs to no page
//!   (`pages[i].owner == OWNER_NONE`); bit 0 is never set;
//! - a page head at slice `i` spanning `n` slices has `pages[i + k].slice_offset
//!   == k` for `k < n`, and none of those slices is free;
//! - bit `i` of `dirty_mask` is clear only if slice `i` reads as zero and is
//!   not resident (never touched since mapping, or purged).

use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::os;
use crate::page::{Page, OWNER_NONE};
use crate::sync::SpinLock;

pub(crate) const SLICE_SHIFT: usize = 16;
pub(crate) const SLICE_SIZE: usize = 1 << SLICE_SHIFT;
pub(crate) const SEGMENT_SHIFT: usize = 22;
pub(crate) const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
pub(crate) const SLICE_COUNT: usize = SEGMENT_SIZE / SLICE_SIZE;
/// All slices but the header.
pub(crate) const ALL_FREE: u64 = !1u64;

/// How long a freed, still-resident span waits before it is purged, at
/// first (the delay adapts: see [`purge_delay`]).
const PURGE_DELAY_MS: u64 = 10;
/// Longest purge delay.
const PURGE_DELAY_MAX_MS: u64 = 1000;
/// Memory reused within this long of its purge counts as a needless purge.
const REFAULT_WINDOW_MS: u64 = 1000;
/// The delay halves after each interval this long without a needless purge.
const RELAX_MS: u64 = 1000;
/// How long an empty cached segment stays mapped.
const UNMAP_DELAY_MS: u64 = 1000;
/// Empty segments the global cache keeps.
const CACHE_SLOTS: usize = 16;
/// Resident bytes the segment cache may hold before purging at once.
const CACHE_DIRTY_MAX: usize = 8 << 20;

/// What a segment is used for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub(crate) enum Kind {
    /// Cut into page spans owned by one heap.
    Normal = 0,
    /// One huge block (see `huge.rs`).
    Huge = 1,
    /// The sampled guard's pool of slots (see `guard.rs`).
    Guard = 2,
}

/// The header at the start of every segment.
#[repr(C)]
pub(crate) struct Segment {
    pub(crate) kind: Kind,
    /// A huge segment whose block the profile sampled (`profile.rs`): its
    /// free must tell the profile. Cleared when the block is freed.
    pub(crate) sampled: bool,
    /// Heap owning every page of this segment (normal segments).
    pub(crate) heap: *mut crate::heap::Heap,
    /// See the module docs.
    pub(crate) free_mask: u64,
    pub(crate) dirty_mask: u64,
    /// Slices freed since the last decay pass: they are spared by the next
    /// aged purge, so a slice is purged only after a whole interval unused.
    pub(crate) fresh_mask: u64,
    /// When the free dirty slices should be purged (ms; 0: nothing pending).
    pub(crate) purge_at: u64,
    /// Slices purged and not taken since (normal segments), and when the
    /// last purge of this segment happened (ms; both kinds).
    pub(crate) purged_mask: u64,
    pub(crate) purged_at: u64,
    /// When this segment entered a cache (ms).
    pub(crate) cached_at: u64,
    /// Bytes mapped for this segment (huge segments can be larger).
    pub(crate) map_size: usize,
    /// Huge segments: offset of the block from the segment base.
    pub(crate) block_offset: usize,
    /// Links in the owning heap's segment list (huge segments: in
    /// `huge.rs`'s list of live huge blocks, under its lock).
    pub(crate) next: *mut Segment,
    pub(crate) prev: *mut Segment,
    /// One entry per slice, plus one for a huge block placed at `SEGMENT_SIZE`.
    pub(crate) pages: [Page; SLICE_COUNT + 1],
}

const _: () = assert!(core::mem::size_of::<Segment>() <= SLICE_SIZE);

/// The segment holding the block at `p`.
#[inline(always)]
pub(crate) fn segment_of(p: *const u8) -> *mut Segment {
    ((p as usize).wrapping_sub(1) & !(SEGMENT_SIZE - 1)) as *mut Segment
}

/// The page holding the block at `p`.
///
/// # Safety
/// `p` is a block heapkeep handed out (so its segment header is mapped).
#[inline(always)]
pub(crate) unsafe fn page_of(seg: *mut Segment, p: *const u8) -> *mut Page {
    let idx = (p as usize - seg as usize) >> SLICE_SHIFT;
    // SAFETY: `p` lies in the first SEGMENT_SIZE bytes after `seg` (or exactly
    // at SEGMENT_SIZE for an over-aligned huge block), so `idx <= SLICE_COUNT`
    // is inside `pages`, and the entry's `slice_offset` leads to its head.
    unsafe {
        let entry = ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(idx);
        entry.sub((*entry).slice_offset as usize)
    }
}

impl Segment {
    /// Address of slice `idx`.
    #[inline]
    pub(crate) fn slice_addr(&self, idx: usize) -> *mut u8 {
        (self as *const Segment as usize + (idx << SLICE_SHIFT)) as *mut u8
    }

    /// Index of the page entry `page` within this header.
    #[inline]
    pub(crate) fn page_index(&self, page: *const Page) -> usize {
        (page as usize - self.pages.as_ptr() as usize) / core::mem::size_of::<Page>()
    }

    /// True when slices `idx..idx + n` read as zero (never used or purged).
    pub(crate) fn span_is_clean(&self, idx: usize, n: usize) -> bool {
        self.dirty_mask & span_mask(idx, n) == 0
    }

    /// Bytes of slices `idx..idx + n` that may be resident.
    pub(crate) fn dirty_bytes_in(&self, idx: usize, n: usize) -> usize {
        (self.dirty_mask & span_mask(idx, n)).count_ones() as usize * SLICE_SIZE
    }

    /// Free slices still resident, in bytes.
    pub(crate) fn dirty_free_bytes(&self) -> usize {
        (self.free_mask & self.dirty_mask).count_ones() as usize * SLICE_SIZE
    }
}

// Functions that change a heap's segment take `*mut Segment`, not `&mut`:
// other threads load `owner` and push on `xthread` of its live pages at any
// time, so no exclusive reference to the whole header may exist. Fields are
// reached with raw place expressions; only the owning thread writes them.

/// Finds `n` contiguous free slices whose start is a multiple of
/// `align_slices`, preferring ones still resident (no page faults), and
/// takes them. Returns the first slice index.
///
/// # Safety
/// `seg` is a normal segment of the calling thread's heap (or one nobody else
/// can reach).
pub(crate) unsafe fn take_span(seg: *mut Segment, n: usize, align_slices: usize) -> Option<usize> {
    debug_assert!((1..SLICE_COUNT).contains(&n));
    // SAFETY: the caller owns the bookkeeping fields.
    unsafe {
        let free = (*seg).free_mask;
        if (free.count_ones() as usize) < n {
            return None;
        }
        let mut starts = run_starts(free, n);
        if align_slices > 1 {
            starts &= multiples_mask(align_slices);
        }
        if starts == 0 {
            return None;
        }
        let warm = starts & run_starts(free & (*seg).dirty_mask, n);
        let idx = if warm != 0 { warm } else { starts }.trailing_zeros() as usize;
        (*seg).free_mask = free & !span_mask(idx, n);
        Some(idx)
    }
}

/// Marks slices `idx..idx + n` as possibly holding data.
///
/// # Safety
/// As for [`take_span`].
pub(crate) unsafe fn mark_dirty(seg: *mut Segment, idx: usize, n: usize) {
    let span = span_mask(idx, n);
    // SAFETY: the caller owns the bookkeeping fields.
    unsafe {
        (*seg).dirty_mask |= span;
        if (*seg).purged_mask & span != 0 {
            (*seg).purged_mask &= !span;
            note_purged_reuse((*seg).purged_at, os::now_ms());
        }
    }
}

/// Gives slices `idx..idx + n` back (their page entries are reset).
///
/// # Safety
/// As for [`take_span`]; the slices hold no live block (so no other thread
/// can be using their page entries).
pub(crate) unsafe fn release_span(seg: *mut Segment, idx: usize, n: usize) {
    // SAFETY: the entries are inside the header; their page is dead.
    unsafe {
        let pages = ptr::addr_of_mut!((*seg).pages).cast::<Page>();
        for i in idx..idx + n {
            let e = pages.add(i);
            (*e).owner
                .store(OWNER_NONE, core::sync::atomic::Ordering::Relaxed);
            (*e).slice_offset = 0;
            (*e).free = ptr::null_mut();
            (*e).local_free = ptr::null_mut();
            (*e).used = 0;
        }
        (*seg).free_mask |= span_mask(idx, n);
        (*seg).fresh_mask |= span_mask(idx, n);
    }
}

/// Slices were just freed: schedule a purge pass one purge delay from now,
/// unless one is pending already.
///
/// # Safety
/// As for [`take_span`].
pub(crate) unsafe fn schedule_purge(seg: *mut Segment) {
    // SAFETY: the caller owns the bookkeeping fields.
    unsafe {
        if (*seg).purge_at == 0 {
            (*seg).purge_at = os::now_ms() + purge_delay();
        }
    }
}

/// Purges every free slice that is still resident. Returns bytes purged.
///
/// # Safety
/// As for [`take_span`].
pub(crate) unsafe fn purge_free(seg: *mut Segment) -> usize {
    // SAFETY: forwarded.
    unsafe {
        (*seg).fresh_mask = 0;
        purge_mask(seg, (*seg).free_mask & (*seg).dirty_mask)
    }
}

/// Purges the free resident slices that were already free at the previous
/// pass, and starts a new generation. Returns bytes purged.
///
/// # Safety
/// As for [`take_span`].
pub(crate) unsafe fn purge_aged(seg: *mut Segment) -> usize {
    // SAFETY: forwarded.
    unsafe {
        let aged = (*seg).free_mask & (*seg).dirty_mask & !(*seg).fresh_mask;
        (*seg).fresh_mask = 0;
        let n = purge_mask(seg, aged);
        if (*seg).dirty_free_bytes() > 0 {
            (*seg).purge_at = os::now_ms() + purge_delay();
        }
        n
    }
}

/// Purges the slices of `purge` (free and resident). Returns bytes purged.
///
/// # Safety
/// As for [`take_span`]; the slices of `purge` are free.
unsafe fn purge_mask(seg: *mut Segment, purge: u64) -> usize {
    let mut m = purge;
    let total = m.count_ones() as usize * SLICE_SIZE;
    let base = seg as usize;
    while m != 0 {
        let start = m.trailing_zeros() as usize;
        let len = (!(m >> start)).trailing_zeros() as usize;
        // SAFETY: the slices are free (no live data) and inside our mapping.
        unsafe {
            os::purge(
                (base + (start << SLICE_SHIFT)) as *mut u8,
                len << SLICE_SHIFT,
            )
        };
        m &= !span_mask(start, len);
    }
    // SAFETY: the caller owns the bookkeeping fields.
    unsafe {
        (*seg).dirty_mask &= !purge;
        (*seg).purged_mask |= purge;
        (*seg).purged_at = os::now_ms();
        (*seg).purge_at = 0;
    }
    total
}

/// Bits `idx..idx + n`.
#[inline]
pub(crate) fn span_mask(idx: usize, n: usize) -> u64 {
    let ones = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    ones << idx
}

/// Bit `i` set iff bits `i..i + n` of `free` are all set.
fn run_starts(free: u64, n: usize) -> u64 {
    let mut r = free;
    let mut len = 1;
    while len * 2 <= n {
        r &= r >> len;
        len *= 2;
    }
    if len < n {
        r &= r >> (n - len);
    }
    r
}

/// Bits at multiples of `a` (a power of two).
fn multiples_mask(a: usize) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < 64 {
        m |= 1 << i;
        i += a;
    }
    m
}

// ---------------------------------------------------------------------------
// Purge policy
//
// Purging free memory (`MADV_DONTNEED`) lowers the resident set, but memory
// reused after its purge costs a page fault (and a zeroed page) per 4 KiB
// touched. A program that frees and rebuilds its data every few hundred
// milliseconds (an interpreter between phases) pays that on every cycle with
// a short delay; a program that frees for good wants its memory back soon.
// So the delay adapts, process-wide: it starts at `PURGE_DELAY_MS`, doubles
// (up to `PURGE_DELAY_MAX_MS`) whenever purged memory is reused within
// `REFAULT_WINDOW_MS` of its purge, and halves after every `RELAX_MS`
// without such a reuse. Relaxed atomics: a lost update only shifts the
// delay by one step.

/// The current purge delay (ms).
static DELAY_MS: AtomicU64 = AtomicU64::new(PURGE_DELAY_MS);
/// When the delay last changed (ms).
static DELAY_CHANGED: AtomicU64 = AtomicU64::new(0);

/// How long free resident memory waits before it is purged (ms).
#[inline]
pub(crate) fn purge_delay() -> u64 {
    DELAY_MS.load(Ordering::Relaxed)
}

/// Memory purged at `purged_at` is being reused at `now`.
pub(crate) fn note_purged_reuse(purged_at: u64, now: u64) {
    if now.saturating_sub(purged_at) < REFAULT_WINDOW_MS {
        let d = DELAY_MS.load(Ordering::Relaxed);
        if d < PURGE_DELAY_MAX_MS {
            DELAY_MS.store((d * 2).min(PURGE_DELAY_MAX_MS), Ordering::Relaxed);
        }
        DELAY_CHANGED.store(now, Ordering::Relaxed);
    }
}

/// Halves the delay if no purge was needless for `RELAX_MS`.
fn relax_purge_delay(now: u64) {
    let d = DELAY_MS.load(Ordering::Relaxed);
    if d > PURGE_DELAY_MS && now >= DELAY_CHANGED.load(Ordering::Relaxed) + RELAX_MS {
        DELAY_MS.store((d / 2).max(PURGE_DELAY_MS), Ordering::Relaxed);
        DELAY_CHANGED.store(now, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Getting and returning whole segments

struct Cache {
    slots: [*mut Segment; CACHE_SLOTS],
    len: usize,
}

// SAFETY: the cached segments belong to no thread; the lock serialises access.
unsafe impl Send for Cache {}

static CACHE: SpinLock<Cache> = SpinLock::new(Cache {
    slots: [ptr::null_mut(); CACHE_SLOTS],
    len: 0,
});

/// A normal segment for `heap`, from the cache or the OS. Null when out of memory.
pub(crate) fn acquire(heap: *mut crate::heap::Heap) -> *mut Segment {
    let seg = {
        let mut c = CACHE.lock();
        if c.len > 0 {
            c.len -= 1;
            let i = c.len;
            let s = c.slots[i];
            // Cleared under the lock, so a heap walk that finds this
            // segment on our heap's list (which we link it into without
            // the lock) reads a null or current link, never one from its
            // last heap, which may point to a segment unmapped since
            // (`with_cache_held`; matters where stores may be reordered).
            // SAFETY: popped from the cache: ours alone, mapped.
            unsafe {
                (*s).next = ptr::null_mut();
                (*s).prev = ptr::null_mut();
            }
            s
        } else {
            ptr::null_mut()
        }
    };
    let seg = if seg.is_null() {
        let p = os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE) as *mut Segment;
        if p.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: fresh zeroed mapping; an all-zero `Segment` is valid (every
        // page entry zero means "no page", the lists are null). Set the rest.
        unsafe {
            (*p).kind = Kind::Normal;
            (*p).map_size = SEGMENT_SIZE;
            (*p).free_mask = ALL_FREE;
            (*p).dirty_mask = 1;
        }
        p
    } else {
        seg
    };
    // SAFETY: the segment is ours alone now (fresh, or popped from the cache).
    unsafe {
        (*seg).heap = heap;
        (*seg).next = ptr::null_mut();
        (*seg).prev = ptr::null_mut();
        // A cached segment may still hold resident free slices: age them out.
        (*seg).fresh_mask = 0;
        (*seg).purge_at = if (*seg).dirty_free_bytes() > 0 {
            os::now_ms() + purge_delay()
        } else {
            0
        };
    }
    seg
}

/// Returns an empty normal segment to the cache (or the OS).
///
/// # Safety
/// `seg` is a normal segment with every slice free, out of any heap list.
pub(crate) unsafe fn release(seg: *mut Segment) {
    // SAFETY: the caller gives us the segment whole.
    let s = unsafe { &mut *seg };
    debug_assert_eq!(s.free_mask, ALL_FREE);
    s.heap = ptr::null_mut();
    s.cached_at = os::now_ms();
    let evicted = {
        let mut c = CACHE.lock();
        let dirty: usize = c.slots[..c.len]
            .iter()
            // SAFETY: cached segments stay mapped while in the cache.
            .map(|&x| unsafe { (*x).dirty_free_bytes() })
            .sum();
        if dirty + s.dirty_free_bytes() > CACHE_DIRTY_MAX {
            // SAFETY: the segment is out of every heap: ours alone.
            unsafe { purge_free(seg) };
        }
        if c.len < CACHE_SLOTS {
            let i = c.len;
            c.slots[i] = seg;
            c.len += 1;
            ptr::null_mut()
        } else {
            seg
        }
    };
    if !evicted.is_null() {
        // SAFETY: not in the cache, not in a heap: nobody can reach it.
        unsafe { os::unmap(evicted.cast(), SEGMENT_SIZE) };
    }
}

/// Purges cached segments that waited the purge delay and unmaps those that
/// waited `UNMAP_DELAY_MS`; lets the purge delay relax.
pub(crate) fn decay(now: u64) {
    relax_purge_delay(now);
    sweep_cache(now);
}

/// Unmaps every cached segment (when an allocation would pass the memory cap).
pub(crate) fn drop_cache() {
    sweep_cache(u64::MAX);
}

/// Purges cached segments that waited the purge delay at `now` and unmaps
/// those that waited `UNMAP_DELAY_MS`.
fn sweep_cache(now: u64) {
    let delay = purge_delay();
    let mut unmap: [*mut Segment; CACHE_SLOTS] = [ptr::null_mut(); CACHE_SLOTS];
    let mut n_unmap = 0;
    {
        let mut c = CACHE.lock();
        let mut i = 0;
        while i < c.len {
            let seg = c.slots[i];
            // SAFETY: cached segments stay mapped while in the cache; we hold the lock.
            let s = unsafe { &mut *seg };
            if now >= s.cached_at + UNMAP_DELAY_MS {
                unmap[n_unmap] = seg;
                n_unmap += 1;
                c.len -= 1;
                let last = c.len;
                c.slots[i] = c.slots[last];
                continue;
            }
            if now >= s.cached_at + delay && s.dirty_free_bytes() > 0 {
                // SAFETY: cached: no heap owns it; we hold the cache lock.
                unsafe { purge_free(seg) };
            }
            i += 1;
        }
    }
    for &seg in &unmap[..n_unmap] {
        // SAFETY: removed from the cache above; nobody else can reach it.
        unsafe { os::unmap(seg.cast(), SEGMENT_SIZE) };
    }
}

/// Fork support: hold the cache lock across `fork()`.
pub(crate) fn fork_prepare() {
    CACHE.raw_lock();
}

/// Fork support: release the lock in parent and child.
///
/// # Safety
/// Only from the fork handlers, after `fork_prepare`.
pub(crate) unsafe fn fork_release() {
    // SAFETY: `fork_prepare` took the lock in this (or the parent) thread.
    unsafe { CACHE.raw_unlock() };
}

/// Calls `f` on every cached segment (invariant walk).
#[cfg(any(test, feature = "invariants"))]
pub(crate) fn for_each_cached(mut f: impl FnMut(&Segment)) {
    with_cache_held(|cached| {
        for &s in cached {
            // SAFETY: cached segments stay mapped while in the cache.
            f(unsafe { &*s });
        }
    });
}

/// Runs `f` holding the cache lock, with the cached segments.
///
/// While the lock is held no normal segment is unmapped: a segment leaves
/// a heap only through [`release`], which takes the lock before it may
/// unmap, and a cached one is unmapped only after it left the cache under
/// the lock. So `f` may read the header of any segment it finds on a heap's
/// segment list or in the cache (the heap walk, `walk.rs`), even one its
/// owner has just unlinked (its `release` waits for the lock). Nor does any
/// heap get a segment from the cache meanwhile ([`acquire`] waits); one it
/// got before links it into its list without the lock, but [`acquire`]
/// cleared its links under the lock, so `f` reads a null link or one into
/// that heap's list, never a link left from the segment's last heap. `f`
/// must not allocate: a slow path that needs a segment would wait for this
/// lock.
pub(crate) fn with_cache_held<R>(f: impl FnOnce(&[*mut Segment]) -> R) -> R {
    let c = CACHE.lock();
    f(&c.slots[..c.len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_starts_finds_runs() {
        let free = 0b0111_0110u64;
        assert_eq!(run_starts(free, 1), free);
        assert_eq!(run_starts(free, 2), 0b0011_0010);
        assert_eq!(run_starts(free, 3), 0b0001_0000);
        assert_eq!(run_starts(free, 4), 0);
        assert_eq!(run_starts(ALL_FREE, 63), 0b10);
    }

    #[test]
    fn multiples() {
        assert_eq!(multiples_mask(32), 1 | 1 << 32);
        assert_eq!(multiples_mask(1), u64::MAX);
    }

    #[test]
    fn span_masks() {
        assert_eq!(span_mask(1, 63), ALL_FREE);
        assert_eq!(span_mask(3, 2), 0b11000);
    }
}
