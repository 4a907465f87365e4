//! The sampled guard of fast mode (in the spirit of GWP-ASan): about one
//! allocation in N (option `HEAPKEEP_GUARD_SAMPLE`, 0 turns it off) of at
//! most one OS page is served from a pool of guarded slots instead of the
//! heap. The block ends where its page ends, and the page is followed and
//! preceded by inaccessible memory, so a read or write past its end (or
//! before its start) faults at once; when it is freed its page is made
//! inaccessible too, so a later access faults. The fault handler
//! (`check/fault.rs`) turns such faults into a report with the stacks that
//! allocated and freed the block, and aborts.
//!
//! The pool is one segment (so `free`, `realloc` and `usable_size` find the
//! block's page entry the usual way): slice 0 is the header, each slice
//! `1..64` is a slot whose second OS page holds the block; the rest of the
//! slot stays inaccessible. Its page entries have owner [`OWNER_GUARD`].
//! Sampling is decided on the heap's slow path (`heap.rs`: a per-heap
//! countdown lowered by the blocks each refill makes available), so the
//! fast paths do not change.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::check::stack::{self, Frames};
use crate::os::{self, PAGE_SIZE};
use crate::page::Page;
use crate::segment::{Kind, Segment, SEGMENT_SIZE, SLICE_COUNT, SLICE_SIZE};
use crate::sync::SpinLock;

/// `owner` value of the page entry of a guarded slot.
pub(crate) const OWNER_GUARD: usize = 4;

/// Largest block the guard samples.
const MAX_SIZE: usize = PAGE_SIZE;
/// Frames kept per sampled allocation and free.
const DEPTH: usize = 16;

/// Sample period (allocations); 0 = off. Set once at start-up.
static PERIOD: AtomicUsize = AtomicUsize::new(0);

/// One slot's history, for reports.
#[derive(Clone, Copy)]
struct Slot {
    /// The block (0: never used).
    block: usize,
    size: usize,
    live: bool,
    alloc_tid: u32,
    free_tid: u32,
    alloc: [usize; DEPTH],
    alloc_len: usize,
    free: [usize; DEPTH],
    free_len: usize,
}

const EMPTY_SLOT: Slot = Slot {
    block: 0,
    size: 0,
    live: false,
    alloc_tid: 0,
    free_tid: 0,
    alloc: [0; DEPTH],
    alloc_len: 0,
    free: [0; DEPTH],
    free_len: 0,
};

/// The pool. Invariant: `seg` is null or a mapped guard segment whose
/// slices `1..SLICE_COUNT` are inaccessible except the block page of each
/// live slot; `slots[i]` describes slice `i`.
struct Pool {
    seg: *mut Segment,
    next: usize,
    failed: bool,
    slots: [Slot; SLICE_COUNT],
}

// SAFETY: the pool is only reached through its lock.
unsafe impl Send for Pool {}

static POOL: SpinLock<Pool> = SpinLock::new(Pool {
    seg: ptr::null_mut(),
    next: 1,
    failed: false,
    slots: [EMPTY_SLOT; SLICE_COUNT],
});

/// Sets the sample period (start-up).
pub(crate) fn set_period(n: usize) {
    PERIOD.store(n, Ordering::Relaxed);
}

/// The sample period, 0 when the guard is off.
#[inline]
pub(crate) fn period() -> usize {
    PERIOD.load(Ordering::Relaxed)
}

/// The block page of slot `i` of `seg`.
fn block_page(seg: *mut Segment, i: usize) -> usize {
    seg as usize + i * SLICE_SIZE + PAGE_SIZE
}

fn new_pool() -> *mut Segment {
    let base = os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE);
    if base.is_null() {
        return ptr::null_mut();
    }
    let seg = base.cast::<Segment>();
    // SAFETY: a fresh zeroed mapping; all-zero is a valid header, then the
    // fields that differ. Everything past the header slice is made
    // inaccessible.
    unsafe {
        (*seg).kind = Kind::Guard;
        (*seg).map_size = SEGMENT_SIZE;
        for i in 1..SLICE_COUNT {
            let p: &mut Page = &mut (*seg).pages[i];
            p.owner.store(OWNER_GUARD, Ordering::Relaxed);
            p.slice_offset = 0;
            p.slice_count = 1;
        }
        os::protect(base.add(SLICE_SIZE), SEGMENT_SIZE - SLICE_SIZE, false);
    }
    seg
}

/// A sampled block of `size` bytes aligned to `align`, or null (not
/// eligible, or no slot free: the caller allocates normally).
pub(crate) fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    if size > MAX_SIZE || align > PAGE_SIZE {
        return ptr::null_mut();
    }
    let mut here = Frames::new();
    let m = &here as *const Frames as usize;
    stack::capture(&mut here, DEPTH, m);
    let mut pool = POOL.lock();
    if pool.seg.is_null() {
        if pool.failed {
            return ptr::null_mut();
        }
        pool.seg = new_pool();
        if pool.seg.is_null() {
            pool.failed = true;
            return ptr::null_mut();
        }
        crate::check::install_fault_handler();
    }
    let Some(i) = (0..SLICE_COUNT - 1)
        .map(|k| 1 + (pool.next - 1 + k) % (SLICE_COUNT - 1))
        .find(|&i| !pool.slots[i].live)
    else {
        return ptr::null_mut();
    };
    pool.next = i % (SLICE_COUNT - 1) + 1;
    let seg = pool.seg;
    let page = block_page(seg, i);
    let usable = size.max(1).next_multiple_of(16.max(align));
    let block = page + PAGE_SIZE - usable;
    // SAFETY: the block page lies inside our pool mapping; its entry is
    // ours under the pool lock.
    unsafe {
        os::protect(page as *mut u8, PAGE_SIZE, true);
        if zero {
            ptr::write_bytes(block as *mut u8, 0, usable);
        }
        let entry = &mut (*seg).pages[i];
        crate::page::set_block_size(entry, usable);
        entry.used = 1;
    }
    let slot = &mut pool.slots[i];
    *slot = EMPTY_SLOT;
    slot.block = block;
    slot.size = usable;
    slot.live = true;
    slot.alloc_tid = crate::check::thread_id();
    slot.alloc_len = here.len().min(DEPTH);
    slot.alloc[..slot.alloc_len].copy_from_slice(&here.as_slice()[..slot.alloc_len]);
    block as *mut u8
}

/// Frees sampled block `p` (its page entry is `page`): its page becomes
/// inaccessible until the slot is used again.
///
/// # Safety
/// `page` is the entry of a guard slot; `p` is the pointer being freed.
pub(crate) unsafe fn free(page: *mut Page, p: *mut u8) {
    let mut here = Frames::new();
    let m = &here as *const Frames as usize;
    stack::capture(&mut here, DEPTH, m);
    let mut pool = POOL.lock();
    let seg = pool.seg;
    // SAFETY: `page` is an entry of the pool segment (caller).
    let i = unsafe { (*seg).page_index(page) };
    let slot = &mut pool.slots[i];
    if !slot.live || slot.block != p as usize {
        drop(pool);
        crate::fatal_pointer(
            b"free of a sampled block that is not live (double free?)",
            p,
        );
    }
    slot.live = false;
    slot.free_tid = crate::check::thread_id();
    slot.free_len = here.len().min(DEPTH);
    slot.free[..slot.free_len].copy_from_slice(&here.as_slice()[..slot.free_len]);
    // SAFETY: the block page is inside our mapping; nobody may use it now.
    unsafe {
        (*page).used = 0;
        os::protect(block_page(seg, i) as *mut u8, PAGE_SIZE, false);
    }
}

/// If `addr` is in the guard pool, reports the access (one screen) and
/// returns true; the caller then aborts. `here` is the faulting stack.
pub(crate) fn report_fault(addr: usize, here: &[usize]) -> bool {
    let Some(pool) = POOL.lock_within(100_000) else {
        return false;
    };
    let seg = pool.seg as usize;
    if seg == 0 || addr < seg + SLICE_SIZE || addr >= seg + SEGMENT_SIZE {
        return false;
    }
    let i = (addr - seg) / SLICE_SIZE;
    let slot = pool.slots[i];
    drop(pool);
    let page = block_page(seg as *mut Segment, i);
    let class = if slot.block == 0 {
        "invalid-access"
    } else if (page..page + PAGE_SIZE).contains(&addr) && !slot.live {
        "use-after-free"
    } else if addr >= slot.block {
        "heap-overflow"
    } else {
        "heap-underflow"
    };
    let symbolize = crate::check::symbolize();
    let mut w = crate::writer::Writer::new();
    w.s("heapkeep: error: ")
        .s(class)
        .s(" on ")
        .x(addr)
        .s("\n  a ");
    w.d(slot.size)
        .s("-byte block at ")
        .x(slot.block)
        .s(" sampled by the guard, accessed at offset ");
    if addr >= slot.block {
        w.d(addr - slot.block);
    } else {
        w.s("-").d(slot.block - addr);
    }
    w.s("\n");
    let tid = crate::check::thread_id();
    stack::section(&mut w, "here", tid, here, symbolize);
    let alloc = &slot.alloc[..slot.alloc_len];
    stack::section(&mut w, "allocated", slot.alloc_tid, alloc, symbolize);
    if !slot.live {
        let free = &slot.free[..slot.free_len];
        stack::section(&mut w, "freed", slot.free_tid, free, symbolize);
    }
    w.s("heapkeep: aborting\n");
    w.flush();
    true
}

/// Calls `f` with the pool segment (if any) and, per slice, the size of
/// its live sampled block (0: none), holding the pool lock (heap walk).
/// The pool segment is never unmapped.
pub(crate) fn with_slots(f: impl FnOnce(*mut Segment, &[usize; SLICE_COUNT])) {
    let pool = POOL.lock();
    if pool.seg.is_null() {
        return;
    }
    let mut sizes = [0usize; SLICE_COUNT];
    for (size, slot) in sizes.iter_mut().zip(&pool.slots).skip(1) {
        if slot.live {
            *size = slot.size;
        }
    }
    f(pool.seg, &sizes);
}

/// Fork support: the pool lock is held across `fork()`.
pub(crate) fn fork_prepare() {
    POOL.raw_lock();
}

/// Fork support: releases the lock in parent and child.
///
/// # Safety
/// Only from the fork handlers, after `fork_prepare`.
pub(crate) unsafe fn fork_release() {
    // SAFETY: `fork_prepare` took the lock in this (or the parent) thread.
    unsafe { POOL.raw_unlock() };
}
