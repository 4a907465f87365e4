//! The heap walk: every piece of memory heapkeep holds for blocks, read from
//! any thread at any time, without allocating and without stopping the
//! program. [`crate::stats()`]'s memory figures, [`crate::class_stats()`]
//! and the map snapshots (`map.rs`) are built on it; [`walk`] hands the same
//! records to any caller.
//!
//! ## What it visits, in order
//! 1. Every heap ([`thread::for_each_heap`]: active, retired, and the
//!    private heaps of check mode and the profile), each followed by the
//!    normal segments on its list, and then the segment cache: all under
//!    the segment cache's lock (see below).
//! 2. The sampled guard's pool segment, under the guard's lock.
//! 3. Live huge blocks (`huge.rs` keeps them on a list for this), under
//!    that list's lock, then cached huge mappings under the huge cache's
//!    lock.
//!
//! For each segment: per slice whether it is free, possibly dirty (the
//! segment's `dirty_mask`) and how many of its bytes are resident
//! (`mincore`), and each page span with its size class, block size, blocks
//! it can hold, blocks carved, blocks used and blocks freed remotely but
//! not yet collected.
//!
//! ## Why reading is safe
//! - **Nothing is unmapped under the walk.** A heap's segments leave it
//!   only through `segment::release`, which takes the cache lock before it
//!   may unmap one, and cached segments are unmapped only after they left
//!   the cache under that lock. The walk holds the lock
//!   (`segment::with_cache_held`) while it follows heap lists and the
//!   cache, so every segment pointer it reads, even one its owner has just
//!   unlinked, points to a mapped header. Heaps themselves are never freed.
//!   Live huge segments are on `huge.rs`'s list only while their mapping is
//!   not being freed, trimmed or moved (they are unlinked first, under the
//!   list's lock, which the walk holds); cached huge segments stay mapped
//!   while cached (its lock); the guard's pool is never unmapped. The walk
//!   reads only headers (slice 0 of a segment), never block memory, and
//!   asks `mincore` (which fails instead of faulting) about residency.
//! - **Racy fields are read as words.** The owner thread writes its heap's
//!   segment list, masks and page entries with plain stores while the walk
//!   reads them. The walk reads each such field once with a volatile load
//!   of an aligned word (one instruction: never torn on the targets
//!   heapkeep supports) and treats the value as a hint: list pointers are
//!   checked for segment alignment and the list length is bounded; counts
//!   are clamped (`used <= carved <= capacity`, spans inside their
//!   segment); a slice whose entry disagrees with the masks is reported
//!   neither free nor in a span. Atomics (`owner`, `xthread`, heap state)
//!   are read as atomics.
//! - **No lock order problem.** The locks are taken one at a time, never
//!   nested, and the walk allocates nothing, so it never waits on a lock
//!   its own thread holds: it must not be called from a signal handler
//!   (the interrupted thread may hold one of these locks) nor while the
//!   caller holds one (no caller does).
//!
//! While the walk holds the segment cache lock, threads that need a new
//! segment or give one back wait (their other allocations and frees go
//! on): this is no stop-the-world, and it lasts about a microsecond per
//! segment walked (mostly the `mincore` call).
//!
//! ## Exact or approximate
//! When the other threads are quiet (at exit, or a single-threaded
//! program), every figure is exact. While threads allocate and free, each
//! segment is a snapshot taken over a few microseconds, and pages of
//! different segments are seen at slightly different moments. Blocks freed
//! by other threads count as used until their owner collects them: those
//! on a page's `xthread` list are known (`Span::pending`) and left out of
//! the in-use figures; those in a heap's inbox (frees into full pages and
//! large blocks) are not. Resident figures are `mincore`'s (exact for the
//! moment of the call).

use core::ptr;
use core::sync::atomic::Ordering;

use crate::guard;
use crate::heap::{Heap, STATE_ACTIVE, STATE_CLAIMED, STATE_RETIRED};
use crate::huge;
use crate::os;
use crate::page::{Page, LARGE_CLASS, OWNER_FULL, OWNER_NONE, XT_COUNT_SHIFT, XT_INBOX};
use crate::segment::{self, Kind, Segment, SEGMENT_SIZE, SLICE_COUNT, SLICE_SIZE};
use crate::size_class::{bin_class, class_to_size, BIN_COUNT, CLASS_COUNT};
use crate::thread;

/// Slices per segment (slice 0 holds the segment's header).
pub const SLICES: usize = SLICE_COUNT;
/// Bytes per slice.
pub const SLICE_BYTES: usize = SLICE_SIZE;
/// Bytes per segment.
pub const SEGMENT_BYTES: usize = SEGMENT_SIZE;
/// Number of size classes (blocks of up to 128 KiB on pages of many blocks).
pub const SIZE_CLASSES: usize = CLASS_COUNT;

/// The block size of size class `class` (`class < SIZE_CLASSES`).
pub fn class_block_size(class: usize) -> usize {
    class_to_size(class)
}

/// What a heap is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapState {
    /// A thread runs it.
    Active,
    /// Its thread exited; it waits in the pool for a new thread.
    Retired,
    /// A thread is collecting its remote frees without adopting it.
    Claimed,
    /// Check mode's or the profile's own heap (blocks the program sees
    /// through those layers).
    Private,
}

/// One heap.
#[derive(Clone, Copy, Debug)]
pub struct HeapInfo {
    /// Position in this walk (0 for the first heap visited).
    pub index: usize,
    /// Address of the heap (stable for the life of the process).
    pub addr: usize,
    /// What it is doing.
    pub state: HeapState,
}

/// Where a segment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// On the list of the heap with this [`HeapInfo::index`].
    Heap(usize),
    /// Empty, in the global segment cache.
    Cache,
    /// The sampled guard's pool (`HEAPKEEP_GUARD_SAMPLE`).
    Guard,
}

/// What a page span holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpanKind {
    /// Blocks of size class `Span::class` (up to 128 KiB).
    #[default]
    Blocks,
    /// One large block (128 KiB to 2 MiB).
    Large,
    /// One slot of the sampled guard (`used` is 1 when its block is live).
    Guard,
}

/// A page span: slices `slice .. slice + slices` of a segment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Span {
    /// First slice (1..64).
    pub slice: u8,
    /// Slices spanned.
    pub slices: u8,
    /// What it holds.
    pub kind: SpanKind,
    /// Size class (`Blocks`; 0 otherwise).
    pub class: u8,
    /// The page serves requests aligned above 16 bytes (blocks at the page
    /// start, stride equal to the class size).
    pub aligned: bool,
    /// The page is full and out of its heap's queue.
    pub full: bool,
    /// Usable bytes per block (the stride; a large block's span).
    pub block_size: u32,
    /// Blocks the page holds when every one is carved.
    pub capacity: u32,
    /// Blocks carved so far (pages are carved lazily).
    pub carved: u32,
    /// Blocks handed out and not back on the owner's lists, including the
    /// `pending` ones.
    pub used: u32,
    /// Blocks freed by other threads, waiting on the page for the owner.
    pub pending: u32,
    /// Resident bytes of the span.
    pub resident: u32,
}

impl Span {
    /// Blocks in use: `used - pending`.
    pub fn in_use(&self) -> u32 {
        self.used - self.pending
    }

    /// Bytes in blocks in use.
    pub fn in_use_bytes(&self) -> u64 {
        self.in_use() as u64 * self.block_size as u64
    }

    /// Bytes of the span.
    pub fn bytes(&self) -> usize {
        self.slices as usize * SLICE_SIZE
    }
}

/// One segment (4 MiB: 64 slices of 64 KiB, slice 0 its header).
#[derive(Clone, Copy, Debug)]
pub struct SegmentInfo {
    /// Its address.
    pub base: usize,
    /// Where it is.
    pub place: Place,
    /// Bit `i`: slice `i` belongs to no page.
    pub free_mask: u64,
    /// Bit `i`: slice `i` may hold data (clear: never touched or purged).
    pub dirty_mask: u64,
    /// Resident bytes per slice (`mincore`).
    pub resident: [u32; SLICES],
    spans: [Span; SLICES - 1],
    n_spans: usize,
}

impl SegmentInfo {
    const fn empty(base: usize, place: Place) -> SegmentInfo {
        SegmentInfo {
            base,
            place,
            free_mask: 0,
            dirty_mask: 0,
            resident: [0; SLICES],
            spans: [Span {
                slice: 0,
                slices: 0,
                kind: SpanKind::Blocks,
                class: 0,
                aligned: false,
                full: false,
                block_size: 0,
                capacity: 0,
                carved: 0,
                used: 0,
                pending: 0,
                resident: 0,
            }; SLICES - 1],
            n_spans: 0,
        }
    }

    /// The page spans, in slice order.
    pub fn spans(&self) -> &[Span] {
        &self.spans[..self.n_spans]
    }

    /// Resident bytes of the whole segment.
    pub fn resident_bytes(&self) -> u64 {
        self.resident.iter().map(|&r| r as u64).sum()
    }

    /// Slices in the longest run of free slices.
    pub fn longest_free_run(&self) -> usize {
        longest_run(self.free_mask)
    }
}

/// A huge block's mapping (a block above 2 MiB, or aligned above 2 MiB).
#[derive(Clone, Copy, Debug)]
pub struct HugeInfo {
    /// Address of the mapping (its header).
    pub base: usize,
    /// Bytes mapped.
    pub map_size: usize,
    /// Usable bytes of the block (`map_size` minus the header and any
    /// alignment offset).
    pub block_size: usize,
    /// The block is live (else the mapping waits in the huge cache).
    pub live: bool,
    /// Resident bytes of the mapping (`mincore`).
    pub resident: usize,
}

/// One record of the walk.
#[derive(Clone, Copy, Debug)]
pub enum Item<'a> {
    /// A heap; the segments that follow with `Place::Heap(index)` are its.
    Heap(&'a HeapInfo),
    /// A segment and its page spans.
    Segment(&'a SegmentInfo),
    /// A huge block's mapping, live or cached.
    Huge(&'a HugeInfo),
}

/// Walks all memory heapkeep holds for blocks, calling `f` with each record
/// (see the module docs for the order and what is exact). Allocation-free;
/// any thread, at any time, but not from a signal handler. `f` runs while
/// the walk holds one of heapkeep's global locks: it must not allocate
/// (copy what it needs into memory of its own, write it to a file
/// descriptor, or sum it).
pub fn walk(mut f: impl FnMut(Item<'_>)) {
    if !thread::served_anything() {
        return; // this copy of heapkeep holds nothing (and may not be set up)
    }
    // The record is large (≈ 3 KiB): one, reused.
    let mut info = SegmentInfo::empty(0, Place::Cache);
    segment::with_cache_held(|cached| {
        // Bound list walks: a racy read cannot make the walk loop forever.
        let max_steps = os::mapped_bytes() / SEGMENT_SIZE + 64;
        let mut index = 0;
        thread::for_each_heap(|h| {
            let heap = HeapInfo {
                index,
                addr: h as usize,
                state: heap_state(h),
            };
            f(Item::Heap(&heap));
            // SAFETY: heaps are never freed; `segments` is a word read once.
            let mut s = unsafe { racy(ptr::addr_of!((*h).segments)) };
            let mut steps = 0;
            while !s.is_null() && (s as usize) % SEGMENT_SIZE == 0 && steps < max_steps {
                // SAFETY: a pointer read from a heap's list while the cache
                // lock is held: a mapped segment header (module docs).
                unsafe {
                    if racy(ptr::addr_of!((*s).kind).cast::<u32>()) == Kind::Normal as u32 {
                        read_segment(s, Place::Heap(index), &mut info);
                        f(Item::Segment(&info));
                    }
                    s = racy(ptr::addr_of!((*s).next));
                }
                steps += 1;
            }
            index += 1;
        });
        for &s in cached {
            // SAFETY: cached segments are mapped while the lock is held.
            unsafe { read_segment(s, Place::Cache, &mut info) };
            f(Item::Segment(&info));
        }
    });
    guard::with_slots(|seg, sizes| {
        read_guard(seg, sizes, &mut info);
        f(Item::Segment(&info));
    });
    huge::for_each_live(|s| f(Item::Huge(&read_huge(s, true))));
    huge::for_each_cached(|s, _| f(Item::Huge(&read_huge(s, false))));
}

/// Reads a plain field another thread may be writing, as one load.
///
/// # Safety
/// `p` is aligned and points into mapped memory; `T` is a word-sized (or
/// smaller) integer or raw pointer (every bit pattern is valid).
#[inline]
unsafe fn racy<T: Copy>(p: *const T) -> T {
    // SAFETY: forwarded; a volatile load of an aligned word is one
    // instruction, so the value is one that some store wrote.
    unsafe { ptr::read_volatile(p) }
}

fn heap_state(h: *mut Heap) -> HeapState {
    // SAFETY: heaps are never freed; these fields are atomics.
    let (state, private) = unsafe {
        (
            (*h).remote.state.load(Ordering::Relaxed),
            (*h).counters.private.load(Ordering::Relaxed),
        )
    };
    if private {
        return HeapState::Private;
    }
    match state {
        STATE_ACTIVE => HeapState::Active,
        STATE_RETIRED => HeapState::Retired,
        STATE_CLAIMED => HeapState::Claimed,
        _ => HeapState::Active,
    }
}

/// Reads the normal segment `seg` into `info`.
///
/// # Safety
/// `seg` is a mapped segment header that stays mapped during the call.
unsafe fn read_segment(seg: *const Segment, place: Place, info: &mut SegmentInfo) {
    info.base = seg as usize;
    info.place = place;
    info.n_spans = 0;
    // SAFETY: the header is mapped (caller); the masks are words.
    let (free, dirty) = unsafe {
        (
            racy(ptr::addr_of!((*seg).free_mask)),
            racy(ptr::addr_of!((*seg).dirty_mask)),
        )
    };
    info.dirty_mask = dirty;
    read_resident(seg as usize, info);
    // SAFETY: the header is mapped; the entries are read field by field.
    let pages = unsafe { ptr::addr_of!((*seg).pages).cast::<Page>() };
    let mut free_seen = 0u64;
    let mut i = 1;
    while i < SLICES {
        if free & (1 << i) != 0 {
            free_seen |= 1 << i;
            i += 1;
            continue;
        }
        // SAFETY: `i < SLICES`: an entry inside the header.
        let span = unsafe { read_page(pages.add(i), i) };
        match span {
            Some(mut span) => {
                span.resident = info.resident[i..i + span.slices as usize].iter().sum();
                info.spans[info.n_spans] = span;
                info.n_spans += 1;
                i += span.slices as usize;
            }
            None => {
                // SAFETY: as above.
                if unsafe { (*pages.add(i)).owner.load(Ordering::Relaxed) } == OWNER_NONE {
                    free_seen |= 1 << i; // freed between the two reads
                }
                i += 1;
            }
        }
    }
    info.free_mask = free_seen;
}

/// Reads the page entry `page` at slice `i` as a span, `None` if it is no
/// page head (a free slice, or the middle of a span that changed under us).
///
/// # Safety
/// `page` is the entry of slice `i` in a mapped segment header.
unsafe fn read_page(page: *const Page, i: usize) -> Option<Span> {
    // SAFETY: the entry is mapped (caller); `owner` and `xthread` are
    // atomics, the rest words read once each.
    let (owner, offset, n, block_size, class, reserved, carved, used, xt) = unsafe {
        (
            (*page).owner.load(Ordering::Acquire),
            racy(ptr::addr_of!((*page).slice_offset)),
            racy(ptr::addr_of!((*page).slice_count)),
            racy(ptr::addr_of!((*page).block_size)),
            racy(ptr::addr_of!((*page).class)),
            racy(ptr::addr_of!((*page).reserved)),
            racy(ptr::addr_of!((*page).capacity)),
            racy(ptr::addr_of!((*page).used)),
            (*page).xthread.load(Ordering::Relaxed),
        )
    };
    if owner == OWNER_NONE || offset != 0 || n == 0 {
        return None;
    }
    let slices = (n as usize).min(SLICES - i);
    let (kind, class_idx, aligned) = if class == LARGE_CLASS {
        (SpanKind::Large, 0, false)
    } else if (class as usize) < BIN_COUNT {
        (
            SpanKind::Blocks,
            bin_class(class as usize),
            class as usize >= CLASS_COUNT,
        )
    } else {
        return None;
    };
    let block_size = block_size.clamp(1, slices * SLICE_SIZE) as u32;
    let capacity = reserved.min((slices * SLICE_SIZE) as u32 / block_size);
    let carved = carved.min(capacity);
    let used = used.min(carved);
    let pending = if xt & XT_INBOX != 0 {
        0
    } else {
        ((xt >> XT_COUNT_SHIFT) as u32).min(used)
    };
    Some(Span {
        slice: i as u8,
        slices: slices as u8,
        kind,
        class: class_idx as u8,
        aligned,
        full: owner & OWNER_FULL != 0,
        block_size,
        capacity,
        carved,
        used,
        pending,
        resident: 0,
    })
}

/// Fills `info.resident` for the segment at `base`.
fn read_resident(base: usize, info: &mut SegmentInfo) {
    let mut counts = [0usize; SLICES];
    if !os::count_resident(base as *const u8, SEGMENT_SIZE, SLICE_SIZE, &mut counts) {
        counts = [0; SLICES];
    }
    for (r, c) in info.resident.iter_mut().zip(counts) {
        *r = c as u32;
    }
}

/// Reads the guard's pool segment (live slot sizes from the pool's books).
fn read_guard(seg: *mut Segment, sizes: &[usize; SLICES], info: &mut SegmentInfo) {
    info.base = seg as usize;
    info.place = Place::Guard;
    info.n_spans = 0;
    info.free_mask = 0;
    info.dirty_mask = 0;
    read_resident(seg as usize, info);
    for (i, &size) in sizes.iter().enumerate().skip(1) {
        info.spans[info.n_spans] = Span {
            slice: i as u8,
            slices: 1,
            kind: SpanKind::Guard,
            class: 0,
            aligned: false,
            full: size != 0,
            block_size: size as u32,
            capacity: 1,
            carved: 1,
            used: (size != 0) as u32,
            pending: 0,
            resident: info.resident[i],
        };
        info.n_spans += 1;
    }
}

/// Reads a huge segment the caller's lock keeps mapped and unchanged.
fn read_huge(s: &Segment, live: bool) -> HugeInfo {
    let base = s as *const Segment as usize;
    let mut resident = [0usize; 1];
    // The whole mapping as one piece (`map_size` is a page multiple).
    if !os::count_resident(base as *const u8, s.map_size, s.map_size, &mut resident) {
        resident[0] = 0;
    }
    HugeInfo {
        base,
        map_size: s.map_size,
        block_size: huge::usable(s),
        live,
        resident: resident[0],
    }
}

/// Slices in the longest run of set bits of `mask`.
fn longest_run(mut mask: u64) -> usize {
    let mut n = 0;
    while mask != 0 {
        mask &= mask << 1;
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------
// Figures from a walk

/// Sums of one walk (what [`crate::stats()`] adds to its counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes of every segment and huge mapping (in heaps, cached, guard).
    pub held: u64,
    /// Of those, resident now.
    pub resident: u64,
    /// Bytes in blocks in use (usable sizes).
    pub in_use: u64,
    /// Resident bytes that hold no block in use (a lower bound: a span
    /// counts its resident bytes beyond its blocks in use).
    pub unused_resident: u64,
    /// Largest run of free memory: free slices of one segment, or a cached
    /// huge mapping.
    pub largest_free_run: u64,
    /// Normal segments seen (in heaps and cached).
    pub segments: u64,
    /// Live huge blocks seen.
    pub huge_live: u64,
    /// Cached huge mappings seen.
    pub huge_cached: u64,
}

impl Totals {
    /// Adds one record of a walk.
    pub fn add(&mut self, item: Item<'_>) {
        match item {
            Item::Heap(_) => {}
            Item::Segment(s) => {
                self.held += SEGMENT_SIZE as u64;
                let resident = s.resident_bytes();
                self.resident += resident;
                let mut busy = 0u64;
                for sp in s.spans() {
                    let used = sp.in_use_bytes();
                    self.in_use += used;
                    busy += (sp.resident as u64).min(used);
                }
                self.unused_resident += resident - busy;
                if s.place != Place::Guard {
                    self.segments += 1;
                    let run = (s.longest_free_run() * SLICE_SIZE) as u64;
                    self.largest_free_run = self.largest_free_run.max(run);
                }
            }
            Item::Huge(h) => {
                self.held += h.map_size as u64;
                self.resident += h.resident as u64;
                if h.live {
                    self.huge_live += 1;
                    self.in_use += h.block_size as u64;
                    self.unused_resident += h.resident.saturating_sub(h.block_size) as u64;
                } else {
                    self.huge_cached += 1;
                    self.unused_resident += h.resident as u64;
                    self.largest_free_run = self.largest_free_run.max(h.block_size as u64);
                }
            }
        }
    }
}

/// The [`Totals`] of a walk now.
pub fn totals() -> Totals {
    let mut t = Totals::default();
    walk(|item| t.add(item));
    t
}

/// Blocks of one size class, over all heaps (`heapkeep::class_stats()`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Usable bytes per block (the class size; coloured pages of classes
    /// that are multiples of 1 KiB use a stride one cache line longer).
    pub block_size: u64,
    /// Blocks in use (handed out, not freed).
    pub blocks_in_use: u64,
    /// Blocks the class's pages hold when full.
    pub blocks_capacity: u64,
    /// Pages of the class.
    pub pages: u64,
    /// Bytes of those pages.
    pub page_bytes: u64,
}

/// Per size class figures of a walk now, indexed by class.
pub fn class_stats() -> [ClassStats; SIZE_CLASSES] {
    let mut out = [ClassStats::default(); SIZE_CLASSES];
    for (c, o) in out.iter_mut().enumerate() {
        o.block_size = class_to_size(c) as u64;
    }
    walk(|item| {
        if let Item::Segment(s) = item {
            for sp in s.spans() {
                if sp.kind == SpanKind::Blocks {
                    let o = &mut out[sp.class as usize];
                    o.blocks_in_use += sp.in_use() as u64;
                    o.blocks_capacity += sp.capacity as u64;
                    o.pages += 1;
                    o.page_bytes += sp.bytes() as u64;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_runs() {
        assert_eq!(longest_run(0), 0);
        assert_eq!(longest_run(0b1011_1000), 3);
        assert_eq!(longest_run(!1), 63);
    }
}
