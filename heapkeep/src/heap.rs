//! Thread heaps: the per-thread part of the allocator.
//!
//! Each thread runs one `Heap` (see `thread.rs` for how it gets one). The heap
//! owns segments (`segment.rs`), the pages cut from them (`page.rs`), and a
//! queue of non-full pages per size class. Only the thread running a heap
//! touches its queues, pages and segments, so the fast paths take no lock and
//! do no atomic read-modify-write.
//!
//! ## Paths
//! - **alloc fast path** (`alloc`): `direct[(size + 7) / 8]` is a page of the
//!   right class; pop its `free` list. One branch to the cold path.
//! - **local free** (`free`): the block's page is found by masking; if the page's
//!   `owner` equals this thread's heap (no flag set), push on `local_free` and
//!   decrement `used`; when `used` reaches 0 the page may be given back.
//! - **remote free** (`free_slow`): another thread's block is pushed on its
//!   owner heap's `inbox` (one CAS). The owner drains the inbox in its slow path.
//!   Heaps are never destroyed (`thread.rs`), so the push is always to live memory.
//! - **slow path** (`alloc_slow`): drain the inbox, do time-based upkeep
//!   (purging), find or make a page with free blocks, serve large blocks from
//!   page spans and huge ones from `huge.rs`.
//!
//! ## Invariants
//! - `direct[i]` is the first page of the queue of the class serving sizes
//!   `8(i-1)+1 ..= 8i`, or the static empty page when that queue is empty.
//! - a page is in `queues[class]` iff its `owner` is exactly this heap and it
//!   is not a large page; a full page is out of the queue with `OWNER_FULL` set.
//! - `dirty_free` is the sum of `dirty_free_bytes()` over `segments`.
//! - `empty_segments` counts segments in `segments` with every slice free.

use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::counters::Counters;
use crate::forbid;
use crate::guard;
use crate::huge;
use crate::os;
use crate::page::{
    self, next_of, set_next, Block, Page, LARGE_CLASS, OWNER_FULL, OWNER_HUGE, OWNER_NONE,
    XT_COUNT_SHIFT, XT_INBOX, XT_PTR_MASK,
};
use crate::profile;
use crate::segment::{
    self, page_of, segment_of, span_mask, Segment, ALL_FREE, SLICE_SHIFT, SLICE_SIZE,
};
use crate::size_class::{
    bin_class, bin_stride, class_page_slices, class_to_size, size_align_to_bin, BIN_COUNT,
    CLASS_COUNT, DIRECT_COUNT, DIRECT_MAX, MEDIUM_MAX,
};
use crate::thread;

/// Largest request served from a span in a segment; above it, `huge.rs`.
pub(crate) const LARGE_MAX: usize = 2 << 20;
/// Largest alignment served from a span in a segment.
pub(crate) const LARGE_ALIGN_MAX: usize = 2 << 20;
/// Resident free bytes a heap keeps before purging them at once. Below this,
/// free slices are purged by age (see `segment::purge_delay`). 16 MiB made a workload that frees
/// and rebuilds ~48 MiB of vectors refault 280K pages (1.2x glibc's time).
const DIRTY_MAX: usize = 64 << 20;
/// Resident free bytes a retiring heap may keep unpurged.
const RETIRE_DIRTY_MAX: usize = 2 << 20;
/// Minimum time between two upkeep passes of one heap (ms).
const DECAY_INTERVAL_MS: u64 = 5;
/// The allocation slow path reads the clock (to see whether upkeep is due)
/// on one call in this many: a read cost about as much as the rest of a
/// medium-size allocation, which takes the slow path every time (2% of
/// `random`'s time in fast mode went to `clock_gettime`).
const CLOCK_EVERY: u32 = 16;
/// Empty segments a running heap keeps for reuse.
const SPARE_SEGMENTS: usize = 1;

/// The heap is the static empty heap (a thread without a heap points to it).
pub(crate) const STATE_EMPTY: u32 = 0;
/// A thread runs the heap.
pub(crate) const STATE_ACTIVE: u32 = 1;
/// No thread runs the heap; it waits in the pool to be adopted.
pub(crate) const STATE_RETIRED: u32 = 2;
/// A thread is collecting a retired heap's inbox without adopting it.
pub(crate) const STATE_CLAIMED: u32 = 3;

/// A doubly linked queue of pages of one class.
#[derive(Clone, Copy)]
pub(crate) struct PageQueue {
    pub(crate) first: *mut Page,
    pub(crate) last: *mut Page,
}

/// The part of a heap that other threads write.
#[repr(C, align(64))]
pub(crate) struct Remote {
    /// Blocks freed by other threads (links are `next ^ key`).
    pub(crate) inbox: AtomicUsize,
    pub(crate) state: AtomicU32,
    /// Remote frees into this heap while retired (to pace reclaiming).
    pub(crate) retired_frees: AtomicU32,
    /// Copy of the heap's key (read by remote freers).
    pub(crate) key: usize,
}

/// A thread heap. See the module docs for the invariants.
#[repr(C)]
pub(crate) struct Heap {
    pub(crate) direct: [*mut Page; DIRECT_COUNT],
    pub(crate) queues: [PageQueue; BIN_COUNT],
    /// The fields other threads touch, on a cache line of their own so remote
    /// frees do not fight the owner's writes to its bookkeeping.
    pub(crate) remote: Remote,
    /// Normal segments owned by this heap.
    pub(crate) segments: *mut Segment,
    pub(crate) empty_segments: usize,
    pub(crate) dirty_free: usize,
    /// Secret for page keys and inbox links.
    pub(crate) key: usize,
    /// When upkeep is due next (ms, see `decay`).
    pub(crate) next_decay: u64,
    /// Slow-path allocations left before the clock is read again
    /// (`CLOCK_EVERY`).
    pub(crate) clock_skip: u32,
    /// Rotates the cache colour of new pages.
    pub(crate) color: usize,
    /// Registry of all heaps ever made (never unlinked).
    pub(crate) all_next: *mut Heap,
    /// Link in the pool of retired heaps.
    pub(crate) pool_next: *mut Heap,
    /// What this heap's thread(s) did (`counters.rs`).
    pub(crate) counters: Counters,
    /// Allocations (estimated on the slow path) until the sampled guard
    /// takes one (`guard.rs`).
    pub(crate) sample_left: isize,
    /// Bytes the slow path made available to the fast path since the last
    /// profile sample (`profile.rs`).
    pub(crate) profile_due: usize,
    /// The `profile_due` at which the slow path takes a sample: the
    /// profile's rate, or `usize::MAX` for a heap that samples nothing (the
    /// profile is off, or the heap is private: [`make_private`]). One
    /// compare on every slow-path call, where testing the three took four
    /// loads.
    pub(crate) profile_at: usize,
    /// Sampled blocks this heap's thread freed, held back from the
    /// profile until its next sample (`profile::Pending`).
    pub(crate) profile_pending: profile::Pending,
    /// Where this heap's thread has its stack (`stacks.rs`).
    pub(crate) stack: crate::stacks::ThreadStack,
}

impl Heap {
    /// A heap with no pages whose direct table points at `empty_page`.
    pub(crate) const fn new(empty_page: *mut Page, state: u32) -> Heap {
        Heap {
            direct: [empty_page; DIRECT_COUNT],
            queues: [PageQueue {
                first: ptr::null_mut(),
                last: ptr::null_mut(),
            }; BIN_COUNT],
            remote: Remote {
                inbox: AtomicUsize::new(0),
                state: AtomicU32::new(state),
                retired_frees: AtomicU32::new(0),
                key: 0,
            },
            segments: ptr::null_mut(),
            empty_segments: 0,
            dirty_free: 0,
            key: 0,
            next_decay: 0,
            clock_skip: 0,
            color: 0,
            all_next: ptr::null_mut(),
            pool_next: ptr::null_mut(),
            counters: if state == STATE_EMPTY {
                Counters::stand_in()
            } else {
                Counters::new()
            },
            sample_left: 0,
            profile_due: 0,
            profile_at: usize::MAX,
            profile_pending: profile::Pending::new(),
            stack: crate::stacks::ThreadStack::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Fast paths

/// Allocates `size` bytes aligned to `align` from the calling thread's heap.
/// Returns null when out of memory or when the request is impossible.
#[inline(always)]
pub(crate) fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: the calling thread runs its current heap.
    unsafe { alloc_in(thread::current(), size, align, zero) }
}

/// [`alloc`] from `heap`.
///
/// # Safety
/// The calling thread runs `heap` (or holds the lock that serialises its
/// use: check mode's inner heap); `heap` may be the static empty heap.
#[inline(always)]
pub(crate) unsafe fn alloc_in(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    if size <= DIRECT_MAX && align <= 16 {
        let idx = (size.max(align) + 7) >> 3;
        // SAFETY: `heap` is this thread's heap (or the static empty heap) and
        // only this thread touches it; `idx < DIRECT_COUNT` because
        // `size, align <= DIRECT_MAX`; direct entries always point to a valid
        // page (a queue head of this heap or the static empty page, whose
        // `free` is null), whose free blocks are owned by this heap.
        unsafe {
            let page = *(*heap).direct.get_unchecked(idx);
            let block = (*page).free;
            if !block.is_null() {
                let next = page::next_unchecked(block, (*page).key);
                if !page::link_in_segment(block, next) {
                    // The page's last block (or a corrupt link): out of line
                    // and a tail call, so the fast path saves no registers.
                    return alloc_last(heap, page, block, next, size, zero);
                }
                (*page).free = next;
                return take_block(heap, page, block, size, zero);
            }
        }
    }
    // SAFETY: `heap` is the current thread's heap.
    unsafe { alloc_slow(heap, size, align, zero) }
}

/// The rest of the fast path once `block` is off its page's free list:
/// counts it, clears it if asked.
///
/// # Safety
/// The calling thread runs `heap`; `block` was just popped from `page`.
#[inline(always)]
unsafe fn take_block(
    heap: *mut Heap,
    page: *mut Page,
    block: *mut Block,
    size: usize,
    zero: bool,
) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    unsafe {
        (*page).used += 1;
        (*heap).counters.on_alloc_unit((*page).alloc_unit, size);
        if zero {
            clear_block(page, block, size);
        }
        block.cast()
    }
}

/// The fast path found `block` to be the last of its page's free list (its
/// link `next` leaves the segment: null, else a corrupt link, which aborts).
///
/// # Safety
/// As for [`take_block`], before the pop: `block` is `page`'s first free block.
#[cold]
#[inline(never)]
unsafe fn alloc_last(
    heap: *mut Heap,
    page: *mut Page,
    block: *mut Block,
    next: *mut Block,
    size: usize,
    zero: bool,
) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    unsafe {
        (*page).free = page::end_or_corrupt(block, next);
        take_block(heap, page, block, size, zero)
    }
}

/// Zeroes the first `size` bytes of `block`, just popped from `page`: only
/// its link word when the page is fresh (see `Page::fresh`).
///
/// # Safety
/// `block` was just popped from `page`'s free list by its owner.
#[inline(always)]
unsafe fn clear_block(page: *mut Page, block: *mut Block, size: usize) {
    // SAFETY: the block is ours and at least one word (and `size`) long.
    unsafe {
        if (*page).fresh {
            (*block).next = 0;
        } else {
            ptr::write_bytes(block.cast::<u8>(), 0, size);
        }
    }
}

/// Frees the block at `p`.
///
/// # Safety
/// `p` was returned by this allocator and is not freed yet.
#[inline(always)]
pub(crate) unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded from the caller; align 0 says "layout not known".
    unsafe { free_layout(p, 0, 0) }
}

/// Frees the block at `p`, which Rust code allocated with the layout
/// `size`/`align` (align 0: not known). Only check mode looks at the layout.
///
/// # Safety
/// `p` was returned by this allocator and is not freed yet.
#[inline(always)]
pub(crate) unsafe fn free_layout(p: *mut u8, size: usize, align: usize) {
    let heap = thread::current();
    if heap == thread::empty_heap() {
        // A thread without a heap (always so in check mode): before the
        // block's headers are read, since check mode trusts no pointer.
        // SAFETY: forwarded from the caller.
        return unsafe { free_heapless(p, size, align) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { free_in(heap, p) }
}

/// [`free`] of a block to a thread whose heap is `heap`.
///
/// # Safety
/// As for [`free`]; the calling thread runs `heap` (or holds the lock that
/// serialises its use), which is not the static empty heap.
#[inline(always)]
pub(crate) unsafe fn free_in(heap: *mut Heap, p: *mut u8) {
    let seg = segment_of(p);
    // SAFETY: `p` is a live heapkeep block (caller), so its segment header is mapped.
    let page = unsafe { page_of(seg, p) };
    let block = p.cast::<Block>();
    // SAFETY: if the owner is this thread's heap, the page's lists are ours to
    // change; `block` is live and becomes free here.
    unsafe {
        if (*page).owner.load(Ordering::Relaxed) == heap as usize {
            (*heap).counters.on_free_unit((*page).free_unit);
            set_next(block, (*page).local_free, (*page).key);
            (*page).local_free = block;
            (*page).used -= 1;
            if (*page).used == 0 {
                page_empty(heap, page);
            }
        } else {
            free_slow(heap, page, block);
        }
    }
}

// ---------------------------------------------------------------------------
// Freeing, cold parts

/// [`free_layout`] on a thread that has no heap: check mode's free, or a
/// remote free from a thread that never allocated.
///
/// # Safety
/// As for [`free`] (in check mode `p` may be anything: it is looked up).
#[cold]
#[inline(never)]
unsafe fn free_heapless(p: *mut u8, size: usize, align: usize) {
    if crate::check::enabled() {
        // SAFETY: check mode validates `p` before any use.
        return unsafe { crate::check::free(p, size, align) };
    }
    if forbid::active() {
        // Inside an allocation-free region: the thread's heap is set aside.
        let heap = forbid::kept_heap();
        if heap != thread::empty_heap() {
            // SAFETY: the calling thread's own heap; `p` is live (caller).
            return unsafe { free_in(heap, p) };
        }
    }
    // SAFETY: `p` is a live block (caller), so its headers are mapped.
    unsafe {
        let page = page_of(segment_of(p), p);
        free_slow(thread::empty_heap(), page, p.cast());
    }
}

/// Frees a block whose page is not simply "ours": a full page of ours, a page
/// of another heap, or a huge block.
///
/// # Safety
/// As for [`free`]; `page` is the block's page.
#[cold]
#[inline(never)]
unsafe fn free_slow(heap: *mut Heap, page: *mut Page, block: *mut Block) {
    // SAFETY: the page entry is mapped (the block is live).
    let owner = unsafe { (*page).owner.load(Ordering::Acquire) };
    if owner == OWNER_NONE {
        crate::fatal_pointer(
            b"free of a pointer heapkeep does not own (double free?)",
            block.cast(),
        );
    }
    if owner == guard::OWNER_GUARD {
        // SAFETY: a sampled block's page entry; the block is freed here.
        unsafe {
            (*heap).counters.count_free((*page).block_size);
            guard::free(page, block.cast());
        }
        return;
    }
    let target = (owner & !OWNER_FULL) as *mut Heap;
    // A sampled block of the profile's heap (not when the profile frees
    // into its own heap: a full page): it starts before `block` and counts
    // without its prefix.
    if target != heap && profile::on() && profile::is_heap(target) {
        // SAFETY: a live block of the profile heap, freed here once.
        unsafe {
            (*heap)
                .counters
                .count_free(page_usable(page, owner, block.cast()));
            profile::free_sampled(heap, block.cast());
        }
        return;
    }
    // SAFETY: the block is live, so its page (or huge segment) is mapped.
    unsafe {
        if owner == OWNER_HUGE {
            let seg = segment_of(block.cast());
            (*heap).counters.count_free(huge::usable(&*seg));
            if (*seg).sampled {
                (*seg).sampled = false;
                profile::forget_in_place(block.cast());
            }
            // A live huge block; freeing it frees its segment.
            huge::free(seg);
            return;
        }
    }
    // SAFETY: our own (full) page, or another heap's page whose block we give
    // up; heaps are never destroyed, so `target` is valid memory.
    unsafe {
        // A page's block counts its precomputed word; the empty heap's
        // counters pass it on to `ORPHAN` (see `Counters::count_free_unit`).
        // Read before a push: the page may be gone after it.
        let unit = (*page).free_unit;
        if target == heap {
            (*heap).counters.count_free_unit(unit);
            free_local(heap, page, block);
        } else {
            if (*page).class == LARGE_CLASS {
                push_remote(target, block);
            } else {
                push_page_remote(target, page, block);
            }
            // After the push, so the branch to it is taken before the count.
            (*heap).counters.count_free_unit(unit);
        }
    }
}

/// Pushes `block` on its page's `xthread` list, or on the owner's inbox when
/// the page says so (`XT_INBOX`: full, or its heap retired).
///
/// # Safety
/// `page` is a live page of `target` (it holds `block`, a live block the
/// caller gives up).
unsafe fn push_page_remote(target: *mut Heap, page: *mut Page, block: *mut Block) {
    // SAFETY: the page cannot be freed while `block` is live; `key` is fixed
    // for the page's life; the block is ours to write until pushed.
    unsafe {
        let p = &*page;
        let mut old = p.xthread.load(Ordering::Relaxed);
        loop {
            if old & XT_INBOX != 0 {
                push_remote(target, block);
                return;
            }
            set_next(block, (old & XT_PTR_MASK) as *mut Block, p.key);
            let new = block as usize | (((old >> XT_COUNT_SHIFT) + 1) << XT_COUNT_SHIFT);
            match p
                .xthread
                .compare_exchange_weak(old, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }
}

/// Frees a block of a page owned by `heap`, which the calling thread runs.
///
/// # Safety
/// `page` is owned by `heap`, run by this thread; `block` is a live block of it.
unsafe fn free_local(heap: *mut Heap, page: *mut Page, block: *mut Block) {
    // SAFETY: forwarded from the caller.
    unsafe {
        set_next(block, (*page).local_free, (*page).key);
        (*page).local_free = block;
        (*page).used -= 1;
        let owner = (*page).owner.load(Ordering::Relaxed);
        if owner & OWNER_FULL != 0 {
            // Back into its queue, at the end: it has few free blocks. Remote
            // frees may use the page list again (while `XT_INBOX` was set no
            // freer changed the word, so storing is safe).
            (*page).owner.store(owner & !OWNER_FULL, Ordering::Relaxed);
            // A retired heap keeps every page on the inbox (see `collect`).
            let open = (*heap).remote.state.load(Ordering::Relaxed) == STATE_ACTIVE;
            (*page)
                .xthread
                .store(if open { 0 } else { XT_INBOX }, Ordering::Release);
            queue_push_back(heap, page);
        }
        if (*page).used == 0 {
            page_empty(heap, page);
        }
    }
}

/// Pushes `block` on `target`'s inbox.
///
/// # Safety
/// `target` is a heap; `block` is a live block of one of its pages, owned by
/// the caller and given up here.
unsafe fn push_remote(target: *mut Heap, block: *mut Block) {
    // SAFETY: heaps are never freed; the block is ours to write until pushed.
    unsafe {
        let t = &(*target).remote;
        let mut old = t.inbox.load(Ordering::Relaxed);
        loop {
            (*block).next = old ^ t.key;
            match t.inbox.compare_exchange_weak(
                old,
                block as usize,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(cur) => old = cur,
            }
        }
        if t.state.load(Ordering::Relaxed) == STATE_RETIRED
            && t.retired_frees.fetch_add(1, Ordering::Relaxed) % 64 == 63
        {
            reclaim(target);
        }
    }
}

/// Collects the inbox of a retired heap from another thread, so memory freed
/// into a heap whose thread has exited is not held until some thread adopts it.
/// Called every 64 remote frees into a retired heap, and by the periodic sweep
/// (`thread::sweep_retired`) for heaps with pending frees.
#[cold]
pub(crate) fn reclaim(heap: *mut Heap) {
    // SAFETY: heaps are never freed.
    let h = unsafe { &(*heap).remote };
    if h.state
        .compare_exchange(
            STATE_RETIRED,
            STATE_CLAIMED,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return;
    }
    // SAFETY: CLAIMED gives us the heap exclusively until we store RETIRED.
    unsafe { collect(heap, true) };
    h.state.store(STATE_RETIRED, Ordering::Release);
}

/// Drains the inbox: frees every block in it locally.
///
/// # Safety
/// The calling thread runs (or has claimed) `heap`.
unsafe fn drain_inbox(heap: *mut Heap) {
    // SAFETY: heap is ours (caller).
    let h = unsafe { &(*heap).remote };
    if h.inbox.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut b = h.inbox.swap(0, Ordering::Acquire) as *mut Block;
    while !b.is_null() {
        // SAFETY: every inbox block is a live block of one of our pages, given
        // up by its freer; the acquire swap orders its link write before us.
        unsafe {
            let next = ((*b).next ^ h.key) as *mut Block;
            let page = page_of(segment_of(b.cast()), b.cast());
            debug_assert_eq!(
                (*page).owner.load(Ordering::Relaxed) & !OWNER_FULL,
                heap as usize
            );
            free_local(heap, page, b);
            b = next;
        }
    }
}

/// A page of `heap` has no block in use: keep it if it is the only page of its
/// class (so alloc/free pairs do not thrash), else give its slices back.
///
/// # Safety
/// The calling thread runs `heap`; `page` is its page with `used == 0`.
#[cold]
#[inline(never)]
unsafe fn page_empty(heap: *mut Heap, page: *mut Page) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let class = (*page).class;
        if class == LARGE_CLASS && (*page).sampled {
            // Its one block, sampled in place, is the one freed.
            (*page).sampled = false;
            profile::forget_in_place((*page).start);
        }
        if class != LARGE_CLASS {
            let q = &(*heap).queues[class as usize];
            if q.first == page
                && q.last == page
                && (*heap).remote.state.load(Ordering::Relaxed) == STATE_ACTIVE
            {
                return;
            }
            queue_remove(heap, page);
        }
        // Not for the kept page above (an alloc/free loop's every free):
        // only a page given back bounds a long run of frees.
        (*heap).counters.check_frees();
        free_page(heap, page);
    }
}

/// Gives the slices of `page` back to its segment.
///
/// # Safety
/// The calling thread runs `heap`; `page` is an empty page of it, out of any queue.
unsafe fn free_page(heap: *mut Heap, page: *mut Page) {
    // SAFETY: page entries live in their segment's header.
    unsafe {
        let seg = segment_of(page.cast());
        let idx = (*seg).page_index(page);
        let n = (*page).slice_count as usize;
        let dirty_before = (*seg).dirty_free_bytes();
        segment::release_span(seg, idx, n);
        (*heap).dirty_free += (*seg).dirty_free_bytes() - dirty_before;
        // Age the freed slices out (a spare empty segment too).
        segment::schedule_purge(seg);
        if (*seg).free_mask == ALL_FREE {
            (*heap).empty_segments += 1;
            if (*heap).empty_segments > SPARE_SEGMENTS
                || (*heap).remote.state.load(Ordering::Relaxed) != STATE_ACTIVE
            {
                release_segment(heap, seg);
            }
        }
        if (*heap).dirty_free > DIRTY_MAX {
            purge_all(heap);
        }
    }
}

/// Takes an empty segment out of `heap` and gives it to the global cache.
///
/// # Safety
/// The calling thread runs `heap`; `seg` is an empty segment in its list.
unsafe fn release_segment(heap: *mut Heap, seg: *mut Segment) {
    // SAFETY: forwarded from the caller.
    unsafe {
        (*heap).dirty_free -= (*seg).dirty_free_bytes();
        (*heap).empty_segments -= 1;
        if (*seg).prev.is_null() {
            (*heap).segments = (*seg).next;
        } else {
            (*(*seg).prev).next = (*seg).next;
        }
        if !(*seg).next.is_null() {
            (*(*seg).next).prev = (*seg).prev;
        }
        segment::release(seg);
    }
}

/// Purges every free resident slice of `heap`'s segments.
///
/// # Safety
/// The calling thread runs `heap`.
pub(crate) unsafe fn purge_all(heap: *mut Heap) {
    // SAFETY: forwarded; the segment list is ours.
    unsafe {
        let mut s = (*heap).segments;
        while !s.is_null() {
            (*heap).dirty_free -= segment::purge_free(s);
            s = (*s).next;
        }
    }
}

/// Time-based upkeep: give back the empty pages kept at the head of their
/// queues (kept so alloc/free pairs do not thrash; if one is still empty a
/// whole interval later, the heap is idle in that class and the page would
/// otherwise pin its segment), purge slices that have been free for a while,
/// and let the global caches age.
///
/// # Safety
/// The calling thread runs `heap`.
unsafe fn decay(heap: *mut Heap, now: u64) {
    // SAFETY: forwarded; the queues and segment list are ours.
    unsafe {
        for bin in 0..BIN_COUNT {
            let p = (*heap).queues[bin].first;
            if !p.is_null() && (*p).used == 0 && (*p).next.is_null() {
                // Any alloc/free since the last pass moves the list heads.
                let mark = ((*p).free as usize ^ ((*p).local_free as usize).rotate_left(1)) | 1;
                if (*p).idle_mark == mark {
                    queue_remove(heap, p);
                    free_page(heap, p);
                } else {
                    (*p).idle_mark = mark;
                }
            }
        }
        let mut s = (*heap).segments;
        while !s.is_null() {
            if (*s).purge_at != 0 && now >= (*s).purge_at {
                (*heap).dirty_free -= segment::purge_aged(s);
            }
            s = (*s).next;
        }
    }
    segment::decay(now);
    huge::decay(now);
    thread::sweep_retired(now);
}

/// Frees what can be freed: drains the inbox; with `all`, also gives back
/// every empty page and every empty segment, and purges resident free memory.
/// Used when a thread exits and when a retired heap is reclaimed.
///
/// # Safety
/// The calling thread runs or has claimed `heap`.
pub(crate) unsafe fn collect(heap: *mut Heap, all: bool) {
    // SAFETY: forwarded from the caller.
    unsafe {
        drain_inbox(heap);
        if !all {
            return;
        }
        for bin in 0..BIN_COUNT {
            let mut p = (*heap).queues[bin].first;
            while !p.is_null() {
                let next = (*p).next;
                // From now on remote frees of this page go to the inbox, where
                // a reclaiming thread (or the next adopter) finds them.
                close_page_remote(p);
                if (*p).used == 0 {
                    queue_remove(heap, p);
                    free_page(heap, p);
                }
                p = next;
            }
        }
        let mut s = (*heap).segments;
        while !s.is_null() {
            let next = (*s).next;
            if (*s).free_mask == ALL_FREE {
                release_segment(heap, s);
            }
            s = next;
        }
        // Purging makes every core flush its TLB; skip it when little is
        // held: the next thread to adopt this heap reuses that memory warm.
        if (*heap).dirty_free > RETIRE_DIRTY_MAX {
            purge_all(heap);
        }
        let now = os::now_ms();
        segment::decay(now);
        huge::decay(now);
    }
}

/// Frees the blocks on `page`'s `xthread` list locally and sets `XT_INBOX`,
/// so later remote frees of the page go to the heap inbox.
///
/// # Safety
/// The calling thread runs or has claimed `heap`; `page` is queued in it.
unsafe fn close_page_remote(page: *mut Page) {
    // SAFETY: forwarded; blocks on the list are live blocks of the page given
    // up by their freers (acquire swap orders their link writes before us).
    unsafe {
        loop {
            let x = (*page).xthread.load(Ordering::Relaxed);
            if x & XT_INBOX != 0 {
                return;
            }
            if (*page)
                .xthread
                .compare_exchange(x, XT_INBOX, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let list = (x & XT_PTR_MASK) as *mut Block;
            (*page).used -= (x >> XT_COUNT_SHIFT) as u32;
            // Splice without touching the (cold) blocks when a list is empty.
            if (*page).free.is_null() {
                (*page).free = list;
                (*page).fresh = false;
            } else if (*page).local_free.is_null() {
                (*page).local_free = list;
            } else {
                let mut b = list;
                while !b.is_null() {
                    let next = next_of(b, (*page).key);
                    set_next(b, (*page).local_free, (*page).key);
                    (*page).local_free = b;
                    b = next;
                }
            }
            return;
        }
    }
}

/// Lets remote frees of `heap`'s queued pages use the page lists again (after
/// a thread adopts the heap).
///
/// # Safety
/// The calling thread has just adopted `heap`.
pub(crate) unsafe fn open_pages_remote(heap: *mut Heap) {
    // SAFETY: the heap is ours. Only `XT_INBOX` is turned into an empty list,
    // by CAS: a page already open (with remote frees on it) is left alone.
    unsafe {
        for bin in 0..BIN_COUNT {
            let mut p = (*heap).queues[bin].first;
            while !p.is_null() {
                let _ =
                    (*p).xthread
                        .compare_exchange(XT_INBOX, 0, Ordering::AcqRel, Ordering::Relaxed);
                p = (*p).next;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Page queues

/// Points the direct entries of `class` at its queue head (or the empty page).
///
/// # Safety
/// The calling thread runs `heap`.
unsafe fn update_direct(heap: *mut Heap, class: usize) {
    if class >= CLASS_COUNT {
        return; // plain bins are not in the direct table
    }
    let size = class_to_size(class);
    if size > DIRECT_MAX {
        return;
    }
    let lo = if class == 0 {
        0
    } else {
        class_to_size(class - 1) / 8 + 1
    };
    let hi = size / 8;
    // SAFETY: the heap is ours; indices are within the direct table.
    unsafe {
        let first = (*heap).queues[class].first;
        let target = if first.is_null() {
            thread::empty_page()
        } else {
            first
        };
        for i in lo..=hi {
            (*heap).direct[i] = target;
        }
    }
}

/// # Safety
/// The calling thread runs `heap`; `page` is in its class queue.
unsafe fn queue_remove(heap: *mut Heap, page: *mut Page) {
    // SAFETY: forwarded; links of pages in a queue are valid.
    unsafe {
        let class = (*page).class as usize;
        let q = &mut (*heap).queues[class];
        let (prev, next) = ((*page).prev, (*page).next);
        if prev.is_null() {
            q.first = next;
        } else {
            (*prev).next = next;
        }
        if next.is_null() {
            q.last = prev;
        } else {
            (*next).prev = prev;
        }
        (*page).next = ptr::null_mut();
        (*page).prev = ptr::null_mut();
        update_direct(heap, class);
    }
}

/// # Safety
/// The calling thread runs `heap`; `page` is its page, in no queue.
unsafe fn queue_push_front(heap: *mut Heap, page: *mut Page) {
    // SAFETY: forwarded.
    unsafe {
        debug_assert!(
            (*page).xthread.load(Ordering::Relaxed) & XT_INBOX == 0
                || (*heap).remote.state.load(Ordering::Relaxed) != STATE_ACTIVE
        );
        let class = (*page).class as usize;
        let q = &mut (*heap).queues[class];
        (*page).prev = ptr::null_mut();
        (*page).next = q.first;
        if q.first.is_null() {
            q.last = page;
        } else {
            (*q.first).prev = page;
        }
        q.first = page;
        update_direct(heap, class);
    }
}

/// # Safety
/// The calling thread runs `heap`; `page` is its page, in no queue.
unsafe fn queue_push_back(heap: *mut Heap, page: *mut Page) {
    // SAFETY: forwarded.
    unsafe {
        let class = (*page).class as usize;
        let q = &mut (*heap).queues[class];
        (*page).next = ptr::null_mut();
        (*page).prev = q.last;
        if q.last.is_null() {
            q.first = page;
            q.last = page;
            update_direct(heap, class);
        } else {
            (*q.last).next = page;
            q.last = page;
        }
    }
}

// ---------------------------------------------------------------------------
// The slow path

/// Everything the fast path does not do. Returns null, with `errno` set to
/// `ENOMEM` as the C heap does, when out of memory or the size is impossible
/// (so the C front's `malloc` is this function's tail call, with nothing to
/// do after it).
///
/// # Safety
/// `heap` is the calling thread's current heap (possibly the empty heap).
#[cold]
#[inline(never)]
unsafe fn alloc_slow(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    let p = unsafe { alloc_refill(heap, size, align, zero) };
    if p.is_null() {
        // SAFETY: as above.
        return unsafe { alloc_failed(heap, size, align, zero) };
    }
    p
}

/// An allocation failed: under a memory cap, returns the caches to the OS
/// and tries once more; otherwise (or again) null with `ENOMEM`.
///
/// # Safety
/// As for [`alloc_slow`].
#[cold]
#[inline(never)]
unsafe fn alloc_failed(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    if os::cap() != 0 {
        segment::drop_cache();
        huge::drop_cache();
        // A thread's first allocation may have made its heap before failing.
        let heap = if heap == thread::empty_heap() {
            thread::current()
        } else {
            heap
        };
        // SAFETY: forwarded from the caller.
        let p = unsafe { alloc_refill(heap, size, align, zero) };
        if !p.is_null() {
            return p;
        }
    }
    os::set_errno_nomem();
    ptr::null_mut()
}

/// The body of [`alloc_slow`].
///
/// # Safety
/// As for [`alloc_slow`].
#[inline(always)]
unsafe fn alloc_refill(mut heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: `heap` is this thread's (caller); the empty heap is replaced first.
    unsafe {
        if (*heap).remote.state.load(Ordering::Relaxed) == STATE_EMPTY {
            if !thread::global_init() {
                return ptr::null_mut();
            }
            if forbid::active() {
                return forbid::alloc(size, align, zero);
            }
            if crate::check::active() {
                return crate::check::alloc(size, align, zero);
            }
            if profile::every() {
                return profile::alloc(ptr::null_mut(), size, align, zero, 0);
            }
            heap = thread::init_current();
            if heap.is_null() {
                return ptr::null_mut();
            }
        }
        drain_inbox(heap);
        if (*heap).clock_skip == 0 {
            (*heap).clock_skip = CLOCK_EVERY;
            let now = os::now_ms();
            if now >= (*heap).next_decay {
                (*heap).next_decay = now + DECAY_INTERVAL_MS;
                decay(heap, now);
            }
        }
        (*heap).clock_skip -= 1;
        // Heaps of check mode and of the profile serve sampled blocks
        // themselves: they sample nothing.
        let private = (*heap).counters.private.load(Ordering::Relaxed);
        // The profile: a sample once the refills made `rate` bytes available.
        if (*heap).profile_due >= (*heap).profile_at {
            // The sample stands for the bytes made available since the
            // last one and for itself (leaving its own bytes out would
            // under-count by one block per sample: a third when every
            // third block is sampled).
            let weight = (*heap).profile_due + size;
            (*heap).profile_due = 0;
            // A large block is sampled where it is (its page remembers),
            // so it reuses the memory this heap just freed; smaller ones
            // come from the profile's heap, which tells them apart at free.
            let p = if size_align_to_bin(size, align).is_none() && is_large(size, align) {
                let p = alloc_large(heap, size, align, zero);
                if !p.is_null() && profile::sample_in_place(p, size, weight) {
                    (*page_of(segment_of(p), p)).sampled = true;
                }
                p
            } else {
                profile::alloc(heap, size, align, zero, weight)
            };
            if !p.is_null() {
                (*heap).counters.count_alloc(block_usable(p), size);
                return p;
            }
        }
        // The sampled guard: its countdown falls by the blocks each refill
        // makes available (below), so it takes about one allocation in N.
        let period = guard::period();
        if period != 0 && !private && (*heap).sample_left <= 0 {
            // A heap starts at 0: its first countdown begins now, so a new
            // thread's first allocation is not always the one sampled.
            let due = (*heap).sample_left < 0;
            (*heap).sample_left = next_sample(heap, period);
            let p = if due {
                guard::alloc(size, align, zero)
            } else {
                ptr::null_mut()
            };
            if !p.is_null() {
                (*heap).counters.count_alloc(block_usable(p), size);
                return p;
            }
        }
        // Medium sizes take this path on every call: the small branch knows
        // its block size, only large and huge blocks look theirs up.
        if let Some(bin) = size_align_to_bin(size, align) {
            let page = find_page(heap, bin);
            if page.is_null() {
                return ptr::null_mut();
            }
            let block = (*page).free;
            (*page).free = next_of(block, (*page).key);
            (*page).used += 1;
            // Blocks this call makes available: the page's free list, when
            // the fast path serves this size (it found the list empty);
            // else (medium sizes, large alignments: this path on every
            // call) just this block.
            let avail = if size <= DIRECT_MAX && align <= 16 {
                (*page).capacity as usize - (*page).used as usize + 1
            } else {
                1
            };
            (*heap).sample_left -= avail as isize;
            (*heap).profile_due += avail * (*page).block_size;
            if zero {
                clear_block(page, block, size);
            }
            (*heap).counters.count_alloc_unit((*page).alloc_unit, size);
            block.cast()
        } else {
            let p = if is_large(size, align) {
                alloc_large(heap, size, align, zero)
            } else {
                huge::alloc(size, align, zero)
            };
            if p.is_null() {
                return p;
            }
            (*heap).sample_left -= 1;
            let usable = block_usable(p);
            (*heap).profile_due += usable;
            (*heap).counters.count_alloc(usable, size);
            p
        }
    }
}

/// Marks `heap` as one that serves check mode or the profile: its
/// counts are not the program's, and it samples nothing.
///
/// # Safety
/// `heap` is a live heap made by `thread::new_heap` that no thread has
/// allocated from yet, or one the caller runs under its lock.
pub(crate) unsafe fn make_private(heap: *mut Heap) {
    // SAFETY: the caller runs `heap`.
    unsafe {
        (*heap).counters.private.store(true, Ordering::Relaxed);
        (*heap).profile_at = usize::MAX;
    }
}

/// Whether a request gets a huge block of its own (no size class or large
/// page serves it).
pub(crate) fn is_huge(size: usize, align: usize) -> bool {
    size_align_to_bin(size, align).is_none() && !is_large(size, align)
}

/// Whether a request no size class serves gets a large page (else a huge
/// block of its own).
#[inline]
fn is_large(size: usize, align: usize) -> bool {
    size <= LARGE_MAX && align <= LARGE_ALIGN_MAX
}

/// The next sampled-guard countdown: `period` allocations, give or take a
/// quarter (from the heap's key and the clock), so sampling does not lock
/// onto a program's own periods.
fn next_sample(heap: *mut Heap, period: usize) -> isize {
    // SAFETY: reads the calling thread's heap's key.
    let mix = unsafe { (*heap).key } ^ os::now_ms() as usize;
    let jitter = (mix.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % (period / 2 + 1);
    (period - period / 4 + jitter) as isize
}

/// A page of bin `class` with a free block, at the head of its queue.
///
/// # Safety
/// The calling thread runs `heap`.
unsafe fn find_page(heap: *mut Heap, class: usize) -> *mut Page {
    // SAFETY: the queues and pages are ours.
    unsafe {
        let mut page = (*heap).queues[class].first;
        while !page.is_null() {
            let next = (*page).next;
            if page::refill(page) {
                if page != (*heap).queues[class].first {
                    queue_remove(heap, page);
                    queue_push_front(heap, page);
                }
                return page;
            }
            // Full, unless a remote free lands right now: the CAS decides.
            if let Err(x) =
                (*page)
                    .xthread
                    .compare_exchange(0, XT_INBOX, Ordering::AcqRel, Ordering::Relaxed)
            {
                if x & XT_PTR_MASK != 0 {
                    continue; // a remote free arrived: `refill` will take it
                }
                debug_assert_eq!(x, XT_INBOX);
            }
            // Out of the queue until a block comes back (through the inbox).
            queue_remove(heap, page);
            (*page)
                .owner
                .store(heap as usize | OWNER_FULL, Ordering::Relaxed);
            page = next;
        }
        let page = new_page(heap, class);
        if !page.is_null() {
            let ok = page::refill(page);
            debug_assert!(ok);
        }
        page
    }
}

/// Takes `n` slices (start a multiple of `align_slices`) from the heap's
/// segments, getting a new segment if needed.
///
/// # Safety
/// The calling thread runs `heap`.
unsafe fn take_span(
    heap: *mut Heap,
    n: usize,
    align_slices: usize,
) -> Option<(*mut Segment, usize)> {
    // SAFETY: the segment list is ours.
    unsafe {
        let mut s = (*heap).segments;
        while !s.is_null() {
            let was_empty = (*s).free_mask == ALL_FREE;
            if let Some(idx) = segment::take_span(s, n, align_slices) {
                if was_empty {
                    (*heap).empty_segments -= 1;
                }
                (*heap).dirty_free -= (*s).dirty_bytes_in(idx, n);
                return Some((s, idx));
            }
            s = (*s).next;
        }
        let s = segment::acquire(heap);
        if s.is_null() {
            return None;
        }
        // A cached segment may come with resident free slices.
        (*heap).dirty_free += (*s).dirty_free_bytes();
        (*s).next = (*heap).segments;
        if !(*heap).segments.is_null() {
            (*(*heap).segments).prev = s;
        }
        (*heap).segments = s;
        let idx = segment::take_span(s, n, align_slices)?;
        (*heap).dirty_free -= (*s).dirty_bytes_in(idx, n);
        Some((s, idx))
    }
}

/// Points the page entries of slices `idx+1 .. idx+n` at the head `idx`.
///
/// # Safety
/// The calling thread owns `seg` and the span `idx..idx + n` (not yet in use).
unsafe fn link_span(seg: *mut Segment, idx: usize, n: usize) {
    // SAFETY: the entries are inside the header and belong to our new span.
    unsafe {
        let pages = page_entry(seg, 0);
        for k in 1..n {
            (*pages.add(idx + k)).slice_offset = k as u16;
        }
    }
}

/// The page entry of slice `idx` of `seg` (a raw pointer, no reference).
///
/// # Safety
/// `seg` is a mapped segment header; `idx <= SLICE_COUNT`.
unsafe fn page_entry(seg: *mut Segment, idx: usize) -> *mut Page {
    // SAFETY: forwarded; `pages` has `SLICE_COUNT + 1` entries.
    unsafe { ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(idx) }
}

/// Makes the span `idx..idx + n` of `seg` a page of `heap` (bin or
/// `LARGE_CLASS`, blocks of `block_size` from `offset` bytes in). Returns the
/// page and whether its memory read as zero.
///
/// # Safety
/// The calling thread runs `heap` and has just taken the span from `seg`.
unsafe fn claim_span(
    heap: *mut Heap,
    seg: *mut Segment,
    idx: usize,
    n: usize,
    offset: usize,
    block_size: usize,
    class: u32,
) -> (*mut Page, bool) {
    // SAFETY: forwarded; the span and its head entry are unused.
    unsafe {
        let clean = (*seg).span_is_clean(idx, n);
        segment::mark_dirty(seg, idx, n);
        link_span(seg, idx, n);
        let page = page_entry(seg, idx);
        page::init(
            page,
            (*seg).slice_addr(idx),
            offset,
            n,
            block_size,
            class,
            heap as usize,
            (*heap).key,
        );
        (*page).fresh = false;
        (page, clean)
    }
}

/// A new page of bin `bin`, in front of its queue.
///
/// # Safety
/// The calling thread runs `heap`.
unsafe fn new_page(heap: *mut Heap, bin: usize) -> *mut Page {
    let n = class_page_slices(bin_class(bin));
    // SAFETY: the heap is ours.
    let Some((seg, idx)) = (unsafe { take_span(heap, n, 1) }) else {
        return ptr::null_mut();
    };
    let stride = bin_stride(bin);
    let bytes = n * SLICE_SIZE;
    // SAFETY: the span is ours now; its head entry is unused.
    unsafe {
        // Coloured bins start a rotating number of cache lines into the page
        // (within the slack the blocks leave), see `size_class::BIN_COUNT`.
        let offset = if bin < CLASS_COUNT {
            let colors = (bytes % stride) / 64 + 1;
            (*heap).color = (*heap).color.wrapping_add(1);
            ((*heap).color % colors) * 64
        } else {
            0
        };
        let (page, clean) = claim_span(heap, seg, idx, n, offset, stride, bin as u32);
        (*page).fresh = clean;
        queue_push_front(heap, page);
        page
    }
}

/// A large block: a span of its own in one of the heap's segments.
///
/// # Safety
/// The calling thread runs `heap`; `size <= LARGE_MAX`, `align <= LARGE_ALIGN_MAX`.
unsafe fn alloc_large(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    let n = size.max(1).div_ceil(SLICE_SIZE);
    let a = (align >> SLICE_SHIFT).max(1);
    // SAFETY: the heap is ours.
    let Some((seg, idx)) = (unsafe { take_span(heap, n, a) }) else {
        return ptr::null_mut();
    };
    // SAFETY: the span is ours now.
    unsafe {
        let (page, clean) = claim_span(heap, seg, idx, n, 0, n * SLICE_SIZE, LARGE_CLASS);
        let area = (*page).start;
        (*page).reserved = 1;
        (*page).capacity = 1;
        (*page).used = 1;
        if zero && !clean {
            ptr::write_bytes(area, 0, size);
        }
        area
    }
}

// ---------------------------------------------------------------------------
// Sizes and realloc

/// Usable bytes of the live block at `p`.
///
/// # Safety
/// `p` is a live block of this allocator.
pub(crate) unsafe fn usable_size(p: *const u8) -> usize {
    if thread::current() == thread::empty_heap() && crate::check::enabled() {
        // SAFETY: check mode validates `p` before any use.
        return unsafe { crate::check::usable_size(p) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { block_usable(p) }
}

/// Usable bytes of the live block at `p`, from its headers (no check-mode
/// routing: for check mode's own inner blocks).
///
/// # Safety
/// `p` is a live block of this allocator.
pub(crate) unsafe fn block_usable(p: *const u8) -> usize {
    let seg = segment_of(p);
    // SAFETY: the block is live, so its headers are mapped.
    unsafe {
        let page = page_of(seg, p);
        let owner = (*page).owner.load(Ordering::Relaxed);
        if owner == OWNER_HUGE {
            huge::usable(&*seg)
        } else {
            page_usable(page, owner, p)
        }
    }
}

/// Usable bytes of the block at `p` (the program's pointer) of `page`, not
/// a huge block's, whose owner word is `owner`: the page's block size, less
/// the profile's prefix for a block of the profile heap.
///
/// # Safety
/// `p` is a live block of `page` (its page entry is mapped).
#[inline]
unsafe fn page_usable(page: *const Page, owner: usize, p: *const u8) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { (*page).block_size - profile::prefix_len(owner, p) }
}

/// Resizes the block at `p` (old size `old_size`, `usize::MAX` when not
/// known; alignment `align`) to `new_size`, in place when it can. Null when out of memory (the old block
/// is then untouched).
///
/// # Safety
/// `p` is a live block of this allocator allocated with alignment `align`.
pub(crate) unsafe fn realloc(
    p: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    let seg = segment_of(p);
    let mut heap = thread::current();
    // SAFETY: the block is live; `heap` is the calling thread's.
    unsafe {
        if (*heap).remote.state.load(Ordering::Relaxed) == STATE_EMPTY {
            if profile::every() && !forbid::active() {
                return profile::realloc(p, old_size, align, new_size);
            }
            if crate::check::enabled() {
                if forbid::active() && new_size > crate::check::usable_size(p) {
                    forbid::note_realloc(new_size, align);
                }
                return crate::check::realloc(p, old_size, align, new_size);
            }
            // The counts below need a heap of this thread (inside an
            // allocation-free region its own: a move then allocates through
            // the slot, which reports it).
            heap = forbid::own_heap();
            if heap.is_null() {
                return ptr::null_mut();
            }
        }
        let page = page_of(seg, p);
        let owner = (*page).owner.load(Ordering::Relaxed);
        let mut in_place = ptr::null_mut();
        let usable;
        if owner == OWNER_HUGE {
            usable = huge::usable(&*seg);
            if new_size > LARGE_MAX {
                in_place = huge::resize(seg, new_size);
                let moved = segment_of(in_place);
                if !in_place.is_null() && in_place != p && (*moved).sampled {
                    // A sample is kept by address: the moved block stops
                    // being one (counted as freed here).
                    (*moved).sampled = false;
                    profile::forget_in_place(p);
                }
            } else if new_size <= usable && new_size >= usable / 2 {
                in_place = p;
            }
        } else {
            usable = page_usable(page, owner, p);
            if (*page).class == LARGE_CLASS {
                if new_size <= LARGE_MAX
                    && new_size > MEDIUM_MAX
                    && owner == heap as usize
                    && resize_large(seg, page, new_size)
                {
                    in_place = p;
                }
            } else if new_size <= usable && (new_size >= usable / 2 || usable <= 64) {
                in_place = p;
            }
        }
        let c = &(*heap).counters;
        if !in_place.is_null() {
            c.on_realloc(new_size, false);
            c.on_resize(usable, block_usable(in_place));
            return in_place;
        }
        let q = alloc(new_size, align, false);
        if q.is_null() {
            return q;
        }
        let old_size = if old_size == usize::MAX {
            usable
        } else {
            old_size
        };
        ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
        free(p);
        // The new block (and its size) and the free are counted already.
        c.on_realloc(0, true);
        q
    }
}

/// Grows or shrinks a large page in place to hold `new_size` bytes.
///
/// # Safety
/// The calling thread runs the page's heap; the page is large with a live block.
unsafe fn resize_large(seg: *mut Segment, page: *mut Page, new_size: usize) -> bool {
    // SAFETY: forwarded; the segment belongs to the calling thread's heap.
    unsafe {
        let heap = (*seg).heap;
        let idx = (*seg).page_index(page);
        let n = (*page).slice_count as usize;
        let n2 = new_size.div_ceil(SLICE_SIZE);
        if n2 == n {
            return true;
        }
        if n2 < n {
            let dirty_before = (*seg).dirty_free_bytes();
            segment::release_span(seg, idx + n2, n - n2);
            (*heap).dirty_free += (*seg).dirty_free_bytes() - dirty_before;
            segment::schedule_purge(seg);
        } else {
            if idx + n2 > segment::SLICE_COUNT {
                return false;
            }
            let grow = span_mask(idx + n, n2 - n);
            if (*seg).free_mask & grow != grow {
                return false;
            }
            (*heap).dirty_free -= (*seg).dirty_bytes_in(idx + n, n2 - n);
            (*seg).free_mask &= !grow;
            segment::mark_dirty(seg, idx + n, n2 - n);
            link_span(seg, idx, n2);
        }
        (*page).slice_count = n2 as u32;
        page::set_block_size(page, n2 * SLICE_SIZE);
        true
    }
}
