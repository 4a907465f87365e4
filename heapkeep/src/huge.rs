//! Huge blocks: requests above `LARGE_MAX` (or with an alignment a segment
//! cannot give) get a segment of their own, sized to the block.
//!
//! Layout: the header (a `Segment` of kind `Huge`) sits at the 4 MiB-aligned
//! base; the block starts at `block_offset`: one slice in (64 KiB) normally,
//! `align` for alignments up to 4 MiB, and exactly `SEGMENT_SIZE` for larger
//! alignments (so `segment_of`'s `p - 1` masking finds the header). The page
//! entry of the block's first slice leads back to `pages[0]`, whose `owner`
//! is `OWNER_HUGE`.
//!
//! A huge block belongs to no heap: any thread may free it. Freed huge
//! segments wait in a small global cache (so a program that allocates and
//! frees the same big buffer in a loop does not map and unmap it every time),
//! are purged after the purge delay (see `segment.rs`) and unmapped after `UNMAP_DELAY_MS`.
//! `realloc` resizes in place with `mremap`, or moves the pages to a new
//! aligned address without copying them.
//!
//! Live huge segments are linked in one global list ([`LIVE`], through the
//! header's `next`/`prev`, which only normal segments use otherwise) so the
//! heap walk (`walk.rs`) can find them. Invariant: a huge segment is in
//! `LIVE` iff its block is live and its header is not being moved or
//! trimmed; every unmap, trim or move of a live block's mapping happens
//! while it is out of the list (unlinked under the lock), so a walker
//! holding the lock may read any listed header. Linking costs one
//! uncontended spin lock on each huge allocation, free and resize, next to
//! a system call or a cache lookup that takes a lock anyway.
//!
//! No transparent-huge-page hint (`MADV_HUGEPAGE`): with the kernel's usual
//! `defrag=madvise` setting, faults in hinted ranges may stall on synchronous
//! compaction; measured here it made a 1 GiB allocate-and-free workload vary
//! between 0.49 and 0.89 s (0.57 s steady without it), and with the cache
//! above there are few faults left to save.

use core::ptr;

use crate::os;
use crate::page::OWNER_HUGE;
use crate::segment::{self, Kind, Segment, SEGMENT_SIZE, SLICE_SHIFT, SLICE_SIZE};
use crate::sync::SpinLock;

/// How long a cached huge segment stays mapped.
const UNMAP_DELAY_MS: u64 = 1000;
/// Huge segments the cache keeps.
const CACHE_SLOTS: usize = 16;
/// Resident bytes the cache may hold before purging at once (64 MiB held too
/// few 16 MiB buffers: the `large` benchmark faulted 35x more pages).
const CACHE_DIRTY_MAX: usize = 128 << 20;
/// Mapped bytes the cache may hold.
const CACHE_MAPPED_MAX: usize = 256 << 20;

/// Mapping granularity of huge segments: the OS page on x86_64; 64 KiB
/// elsewhere, which covers aarch64 kernels with 16 or 64 KiB pages.
#[cfg(target_arch = "x86_64")]
const GRANULE: usize = os::PAGE_SIZE;
#[cfg(not(target_arch = "x86_64"))]
const GRANULE: usize = SLICE_SIZE;

#[derive(Clone, Copy)]
struct Entry {
    seg: *mut Segment,
    /// Still resident (not purged since it was freed).
    dirty: bool,
}

struct Cache {
    slots: [Entry; CACHE_SLOTS],
    len: usize,
}

// SAFETY: cached segments belong to no thread; the lock serialises access.
unsafe impl Send for Cache {}

static CACHE: SpinLock<Cache> = SpinLock::new(Cache {
    slots: [Entry {
        seg: ptr::null_mut(),
        dirty: false,
    }; CACHE_SLOTS],
    len: 0,
});

/// Head of the list of live huge segments (see the module docs).
struct LiveList(*mut Segment);

// SAFETY: the listed segments belong to no thread; the lock serialises access.
unsafe impl Send for LiveList {}

static LIVE: SpinLock<LiveList> = SpinLock::new(LiveList(ptr::null_mut()));

/// Puts the huge segment `seg` (with a live block) on the live list.
///
/// # Safety
/// `seg` is a mapped huge segment, not on the list, whose block the caller
/// is about to hand out (or keeps live).
unsafe fn link_live(seg: *mut Segment) {
    let mut l = LIVE.lock();
    // SAFETY: the header is ours (caller); listed headers are written only
    // under the lock.
    unsafe {
        (*seg).prev = ptr::null_mut();
        (*seg).next = l.0;
        if !l.0.is_null() {
            (*l.0).prev = seg;
        }
    }
    l.0 = seg;
}

/// Takes the huge segment `seg` off the live list (before its block is
/// freed, or its mapping trimmed or moved).
///
/// # Safety
/// `seg` is on the live list.
unsafe fn unlink_live(seg: *mut Segment) {
    let mut l = LIVE.lock();
    // SAFETY: listed headers are mapped and written only under the lock.
    unsafe {
        let (prev, next) = ((*seg).prev, (*seg).next);
        if prev.is_null() {
            l.0 = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        (*seg).next = ptr::null_mut();
        (*seg).prev = ptr::null_mut();
    }
}

/// Calls `f` on every live huge segment, holding the list's lock (so none
/// is freed, trimmed or moved meanwhile). `f` must not allocate a huge
/// block or free one (it would wait for the lock it is called under).
pub(crate) fn for_each_live(mut f: impl FnMut(&Segment)) {
    let l = LIVE.lock();
    let mut s = l.0;
    while !s.is_null() {
        // SAFETY: listed segments stay mapped and unchanged while listed and
        // we hold the lock.
        unsafe {
            f(&*s);
            s = (*s).next;
        }
    }
}

/// Calls `f` on every cached huge segment with whether its block area may
/// still be resident, holding the cache lock (cached segments stay mapped
/// while cached). `f` must not allocate or free a huge block.
pub(crate) fn for_each_cached(mut f: impl FnMut(&Segment, bool)) {
    let c = CACHE.lock();
    for e in &c.slots[..c.len] {
        // SAFETY: cached segments stay mapped while cached; we hold the lock.
        f(unsafe { &*e.seg }, e.dirty);
    }
}

fn round_up(x: usize, to: usize) -> Option<usize> {
    Some(x.checked_add(to - 1)? & !(to - 1))
}

/// Offset of the block from its segment base for alignment `align`.
fn offset_for(align: usize) -> usize {
    if align <= SLICE_SIZE {
        SLICE_SIZE
    } else if align <= SEGMENT_SIZE {
        align
    } else {
        SEGMENT_SIZE
    }
}

/// Allocates a huge block. Null when the OS refuses or the size is impossible.
pub(crate) fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    let offset = offset_for(align);
    let Some(map_size) = size.checked_add(offset).and_then(|s| round_up(s, GRANULE)) else {
        return ptr::null_mut();
    };
    if map_size > isize::MAX as usize {
        return ptr::null_mut();
    }
    if offset == SLICE_SIZE {
        if let Some((seg, dirty_len)) = take_cached(map_size) {
            // SAFETY: `seg` came out of the cache: mapped, ours alone; the
            // first `dirty_len` bytes of the block may hold old data, the
            // rest (grown by mremap, or purged) reads as zero.
            unsafe {
                let p = (*seg).slice_addr(0).add(offset);
                if zero && dirty_len > 0 {
                    ptr::write_bytes(p, 0, size.min(dirty_len));
                }
                link_live(seg);
                return p;
            }
        }
    }
    let base = if align <= SEGMENT_SIZE {
        os::map_aligned(map_size, SEGMENT_SIZE)
    } else {
        map_over_aligned(map_size, align)
    };
    if base.is_null() {
        return ptr::null_mut();
    }
    let seg = base as *mut Segment;
    // SAFETY: a fresh zeroed mapping large enough for the header; all-zero is
    // a valid header, then we set the fields that differ.
    unsafe {
        (*seg).kind = Kind::Huge;
        (*seg).map_size = map_size;
        (*seg).block_offset = offset;
        init_entries(seg);
        link_live(seg);
        (*seg).slice_addr(0).add(offset)
    }
}

/// Maps `[base, base + map_size)` with `base` 4 MiB-aligned and
/// `base + SEGMENT_SIZE` aligned to `align` (> 4 MiB).
fn map_over_aligned(map_size: usize, align: usize) -> *mut u8 {
    let Some(total) = map_size.checked_add(align) else {
        return ptr::null_mut();
    };
    let r = os::map_aligned(total, SEGMENT_SIZE);
    if r.is_null() {
        return ptr::null_mut();
    }
    let block = (r as usize + SEGMENT_SIZE + align - 1) & !(align - 1);
    let base = block - SEGMENT_SIZE;
    let head = base - r as usize;
    let tail = total - head - map_size;
    // SAFETY: both trimmed ranges are parts of our fresh mapping outside the window.
    unsafe {
        if head > 0 {
            os::unmap(r, head);
        }
        if tail > 0 {
            os::unmap((base + map_size) as *mut u8, tail);
        }
    }
    base as *mut u8
}

/// Sets the page entries so `page_of` leads from the block to `pages[0]`.
///
/// # Safety
/// `seg` is a huge segment header we own with `block_offset` set.
unsafe fn init_entries(seg: *mut Segment) {
    // SAFETY: the caller owns the header.
    let s = unsafe { &mut *seg };
    let idx = s.block_offset >> SLICE_SHIFT;
    s.pages[0]
        .owner
        .store(OWNER_HUGE, core::sync::atomic::Ordering::Relaxed);
    s.pages[0].slice_offset = 0;
    s.pages[idx].slice_offset = idx as u16;
}

/// Usable bytes of the huge block in `seg`.
pub(crate) fn usable(seg: &Segment) -> usize {
    seg.map_size - seg.block_offset
}

/// Frees the huge block of `seg`.
///
/// # Safety
/// `seg` is a huge segment whose block is live and now freed by the caller.
pub(crate) unsafe fn free(seg: *mut Segment) {
    // SAFETY: a live block's segment is on the live list.
    unsafe { unlink_live(seg) };
    // SAFETY: the caller owns the block, hence the whole segment.
    let s = unsafe { &mut *seg };
    if s.block_offset != SLICE_SIZE || s.map_size > CACHE_MAPPED_MAX {
        // Over-aligned mappings are rare, and one bigger than the whole cache
        // may hold would only be evicted: give them straight back.
        // SAFETY: the whole mapping `[seg, seg + map_size)` is ours and dead.
        unsafe { os::unmap(seg.cast(), s.map_size) };
        return;
    }
    s.cached_at = os::now_ms();
    let mut evict: [Entry; CACHE_SLOTS + 1] = [Entry {
        seg: ptr::null_mut(),
        dirty: false,
    }; CACHE_SLOTS + 1];
    let mut n_evict = 0;
    {
        let mut c = CACHE.lock();
        if c.len == CACHE_SLOTS {
            // Evict the oldest (slot 0); slots are kept in freeing order.
            evict[n_evict] = c.slots[0];
            n_evict += 1;
            c.slots.copy_within(1.., 0);
            c.len -= 1;
        }
        let i = c.len;
        c.slots[i] = Entry { seg, dirty: true };
        c.len += 1;
        // Keep the mapped and resident totals bounded: purge, then evict, oldest first.
        loop {
            let (mut dirty, mut mapped) = (0usize, 0usize);
            for e in &c.slots[..c.len] {
                // SAFETY: cached segments stay mapped while cached.
                let m = unsafe { (*e.seg).map_size };
                mapped += m;
                if e.dirty {
                    dirty += m;
                }
            }
            if mapped > CACHE_MAPPED_MAX && c.len > 1 {
                evict[n_evict] = c.slots[0];
                n_evict += 1;
                c.slots.copy_within(1.., 0);
                c.len -= 1;
                continue;
            }
            if dirty > CACHE_DIRTY_MAX {
                let len = c.len;
                if let Some(e) = c.slots[..len].iter_mut().find(|e| e.dirty) {
                    // SAFETY: a cached segment's block is dead; purge keeps the mapping.
                    unsafe { purge_block(e.seg) };
                    e.dirty = false;
                    continue;
                }
            }
            break;
        }
    }
    for e in &evict[..n_evict] {
        // SAFETY: removed from the cache: nobody can reach it.
        unsafe { os::unmap(e.seg.cast(), (*e.seg).map_size) };
    }
}

/// Purges the block area of a cached huge segment (the header stays).
///
/// # Safety
/// The segment's block is dead.
unsafe fn purge_block(seg: *mut Segment) {
    // SAFETY: forwarded; the block area starts one slice in, page-aligned.
    unsafe {
        let s = &mut *seg;
        os::purge(
            s.slice_addr(0).add(s.block_offset),
            s.map_size - s.block_offset,
        );
        s.purged_at = os::now_ms();
    }
}

/// Takes a cached segment for a block needing `map_size` bytes of mapping:
/// the best fit of at least that size (trimming one more than 8x too big:
/// trimming at 2x made a random-size workload refault 1 GB of pages),
/// else the largest smaller one grown with `mremap` (its resident pages are
/// kept, so fewer page faults than a fresh mapping). Returns the segment and
/// how many leading bytes of its block may hold old data (0 if purged).
fn take_cached(map_size: usize) -> Option<(*mut Segment, usize)> {
    let (seg, dirty) = {
        let mut c = CACHE.lock();
        let mut best: Option<(usize, usize)> = None; // (slot, size) of the best fit
        let mut biggest_below: Option<(usize, usize)> = None;
        for i in 0..c.len {
            // SAFETY: cached segments stay mapped while cached.
            let m = unsafe { (*c.slots[i].seg).map_size };
            if m >= map_size {
                if best.is_none_or(|(_, b)| m < b) {
                    best = Some((i, m));
                }
            } else if biggest_below.is_none_or(|(_, b)| m > b) {
                biggest_below = Some((i, m));
            }
        }
        let (i, _) = best.or(biggest_below)?;
        let e = c.slots[i];
        c.slots.copy_within(i + 1.., i);
        c.len -= 1;
        (e.seg, e.dirty)
    };
    // SAFETY: the segment is ours now.
    let s = unsafe { &mut *seg };
    let dirty_len = if dirty {
        s.map_size - s.block_offset
    } else {
        segment::note_purged_reuse(s.purged_at, os::now_ms());
        0
    };
    if s.map_size > map_size.saturating_mul(8) {
        // Far too big: give the tail back instead of holding it.
        // SAFETY: the tail is page-aligned, inside the mapping and dead.
        unsafe { os::unmap(s.slice_addr(0).add(map_size), s.map_size - map_size) };
        s.map_size = map_size;
    } else if s.map_size < map_size {
        let old_map = s.map_size;
        // SAFETY: the segment is a whole mapping of ours with a dead block;
        // `s` is not used after `resize` (which may move the header).
        let grown = unsafe { resize_mapping(seg, map_size - s.block_offset) };
        if grown.is_null() {
            // SAFETY: not in the cache any more; nobody can reach it.
            unsafe { os::unmap(seg.cast(), old_map) };
            return None;
        }
        return Some((segment_of_block(grown), dirty_len));
    }
    Some((seg, dirty_len))
}

/// The header of a huge block at the standard offset.
fn segment_of_block(p: *mut u8) -> *mut Segment {
    crate::segment::segment_of(p)
}

/// Resizes the live huge block of `seg` to `new_size` without copying its
/// bytes. Returns the (possibly moved) block, or null if that is not
/// possible (the block is then unchanged).
///
/// # Safety
/// `seg` is a huge segment with a live block owned by the caller.
pub(crate) unsafe fn resize(seg: *mut Segment, new_size: usize) -> *mut u8 {
    // SAFETY: forwarded; off the live list while its mapping changes, back
    // on it (moved or not) afterwards.
    unsafe {
        unlink_live(seg);
        let p = resize_mapping(seg, new_size);
        link_live(if p.is_null() {
            seg
        } else {
            segment_of_block(p)
        });
        p
    }
}

/// [`resize`] of a segment that is not on the live list (a cached one, or a
/// live one the caller has unlinked).
///
/// # Safety
/// `seg` is a huge segment owned by the caller, off the live list.
unsafe fn resize_mapping(seg: *mut Segment, new_size: usize) -> *mut u8 {
    // SAFETY: the caller owns the block, hence the segment.
    let s = unsafe { &mut *seg };
    let offset = s.block_offset;
    if offset > SEGMENT_SIZE / 2 {
        return ptr::null_mut(); // over-aligned: the caller copies
    }
    let Some(new_map) = new_size
        .checked_add(offset)
        .and_then(|x| round_up(x, GRANULE))
    else {
        return ptr::null_mut();
    };
    if new_map > isize::MAX as usize {
        return ptr::null_mut();
    }
    let old_map = s.map_size;
    if new_map == old_map {
        return s.slice_addr(0).wrapping_add(offset);
    }
    if new_map < old_map {
        // SAFETY: the tail beyond the new size is dead.
        unsafe { os::unmap(s.slice_addr(0).add(new_map), old_map - new_map) };
        s.map_size = new_map;
        return s.slice_addr(0).wrapping_add(offset);
    }
    // SAFETY: `seg` is a whole mapping of ours.
    if unsafe { os::remap_in_place(seg.cast(), old_map, new_map) } {
        s.map_size = new_map;
        return s.slice_addr(0).wrapping_add(offset);
    }
    // SAFETY: `seg` is a whole mapping of ours; on success it moves.
    let q = unsafe { os::remap_aligned(seg.cast(), old_map, new_map, SEGMENT_SIZE) };
    if q.is_null() {
        return ptr::null_mut();
    }
    let ns = q as *mut Segment;
    // SAFETY: the header moved with the mapping.
    unsafe {
        (*ns).map_size = new_map;
        q.add(offset)
    }
}

/// Purges cached huge segments that waited the purge delay and unmaps those
/// that waited `UNMAP_DELAY_MS`.
pub(crate) fn decay(now: u64) {
    let mut evict: [*mut Segment; CACHE_SLOTS] = [ptr::null_mut(); CACHE_SLOTS];
    let mut n = 0;
    let delay = segment::purge_delay();
    {
        let mut c = CACHE.lock();
        let mut i = 0;
        while i < c.len {
            let e = c.slots[i];
            // SAFETY: cached segments stay mapped while cached.
            let at = unsafe { (*e.seg).cached_at };
            if now >= at + UNMAP_DELAY_MS {
                evict[n] = e.seg;
                n += 1;
                c.slots.copy_within(i + 1.., i);
                c.len -= 1;
                continue;
            }
            if e.dirty && now >= at + delay {
                // SAFETY: a cached segment's block is dead.
                unsafe { purge_block(e.seg) };
                c.slots[i].dirty = false;
            }
            i += 1;
        }
    }
    for &seg in &evict[..n] {
        // SAFETY: removed from the cache: nobody can reach it.
        unsafe { os::unmap(seg.cast(), (*seg).map_size) };
    }
}

/// Unmaps every cached huge segment (when an allocation would pass the
/// memory cap).
pub(crate) fn drop_cache() {
    // Every cached segment is older than `UNMAP_DELAY_MS` at the end of time.
    decay(u64::MAX);
}

/// Fork support: hold the cache lock across `fork()`.
pub(crate) fn fork_prepare() {
    CACHE.raw_lock();
    LIVE.raw_lock();
}

/// Fork support: release the lock in parent and child.
///
/// # Safety
/// Only from the fork handlers, after `fork_prepare`.
pub(crate) unsafe fn fork_release() {
    // SAFETY: `fork_prepare` took the locks.
    unsafe {
        LIVE.raw_unlock();
        CACHE.raw_unlock();
    }
}
