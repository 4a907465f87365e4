//! A heap over memory the program owns: two-level segregated fit (TLSF) over
//! one or more fixed regions, for devices with no OS and programs that want a
//! bounded block of memory. Needs nothing from the OS and builds `no_std`.
//!
//! ## Rules
//! - `alloc`, `dealloc` and `realloc` run in bounded time whatever the heap
//!   holds: a class lookup by two bitmap scans, list pushes and pops, and at
//!   most [`EXACT_SCAN`] list steps on the last-resort path before failing.
//!   No operation walks the heap (the statistics in `view.rs` may). The
//!   unit tests in `bounded.rs` count each operation's list steps on
//!   adversarial heaps.
//! - Free blocks are coalesced with both physical neighbours at once, so no
//!   two free blocks are ever adjacent.
//! - `dealloc` and `realloc` find a block's end from the layout it was
//!   allocated with (as `GlobalAlloc` and `Allocator` promise): a used block
//!   has no header, only a tag in its last word.
//! - `RegionHeap` is a plain single-owner value (`&mut self` everywhere);
//!   sharing it between threads, or installing it as the global allocator, is
//!   `LockedRegionHeap`'s job (`locked.rs`). It may be moved freely: nothing
//!   points into it (the list heads live in the first region).
//!
//! ## Memory layout
//! A region starts with a `RegionHdr` (its link in the heap's region list;
//! the first region also holds the table of list heads), then a *base tag*
//! (a word that reads as the tag of a used block of size 0, so nothing
//! coalesces below the first block), then blocks laid end to end up to the
//! region's `limit`.
//!
//! ```text
//!  used:  [ payload .................................. ][ tag: size | ABOVE_FREE | USED ]
//!  free:  [ next ][ next_of_prev ][ class ][ size ] .......................... [ size ]
//! ```
//!
//! Every block starts at a multiple of [`GRANULE`] (four words) and its size
//! is a multiple of `GRANULE`, so the payload of a used block is the block
//! itself: any alignment up to `GRANULE` is free, a larger one is a free
//! block split off in front. A used block costs one word, its *tag*, in its
//! last word ([`BLOCK_OVERHEAD`]); a request of `n` bytes takes `n + W`
//! rounded up to `GRANULE`, so the tag's address follows from the layout and
//! every remainder left by a split is a valid free block (no slack).
//!
//! The word just below a block tells what is below: a used block's tag has
//! bit `USED` set; a free block's last word is its size, a multiple of
//! `GRANULE` with that bit clear. What is above is the `ABOVE_FREE` bit of
//! the block's own tag (the word above is not ours to read: it may be a
//! used block's payload). A free block keeps its list links, its class and
//! its size in its first granule (one cache line), and its size again in
//! its last word; in a block of one granule the two size words are the same.
//!
//! ## Classes
//! Sizes below `LINEAR_LIMIT` (128 granules: 4 KiB on 64-bit) have one
//! class per granule. Above, each power of two is cut into `SL_COUNT` (16)
//! classes of equal width; sizes past the last level share the top class.
//! A class `c` is first level `c >> SL_BITS`, second level the low bits
//! (the linear classes fill the first eight levels). A request below
//! `LINEAR_LIMIT` first takes the head of its own class if there is one
//! (an exact fit). Otherwise it takes the head of the first non-empty
//! class whose every block fits (found with the bitmaps); when that class
//! is a power of two or more above the request (or there is none) and the
//! request is above `LINEAR_LIMIT` (below it a class holds one size), it
//! first tries the head of its own class (a closer fit); and only before
//! failing looks a few steps down its own class's list. A block taken
//! from a list's head leaves it by a pop from the front.

use crate::hint::prefetch;
use core::alloc::Layout;
use core::mem::size_of;
use core::ptr::{self, NonNull};

#[cfg(test)]
mod bounded;
mod locked;
mod view;

pub use locked::{LockedRegionHeap, RegionGuard};
pub use view::CheckError;

/// A machine word.
const W: usize = size_of::<usize>();
/// Block sizes and block addresses (which are payload addresses) are
/// multiples of this: four words, the bookkeeping of a free block.
pub const GRANULE: usize = 4 * W;
const GRANULE_SHIFT: u32 = GRANULE.trailing_zeros();
/// Bytes a live block costs beyond what was asked for (before rounding up to
/// [`GRANULE`]): its tag word.
pub const BLOCK_OVERHEAD: usize = W;
/// The smallest block (free or used): one granule.
pub const MIN_BLOCK: usize = GRANULE;
/// Bytes the first region gives up to the table of list heads (one word per
/// class), beside its region header.
pub const HEAD_TABLE_BYTES: usize = CLASS_COUNT * W;
/// Second-level classes per power of two (above `LINEAR_LIMIT`).
const SL_BITS: u32 = 4;
const SL_COUNT: usize = 1 << SL_BITS;
/// Classes one granule wide, below `LINEAR_LIMIT` (a whole number of
/// first levels). 128: a request below 4 KiB finds its class with a
/// shift, and the branch that picks the formula is one-sided for every
/// size range of the region benchmark up to 4 KiB (with 32, a coin toss
/// at 4 KiB cost 3-5% of throughput there; see BENCHMARKS.md).
const LINEAR_CLASSES: usize = 128;
/// Below this (4 KiB on 64-bit, 2 KiB on 32-bit), one class per granule.
const LINEAR_LIMIT: usize = LINEAR_CLASSES * GRANULE;
const LINEAR_SHIFT: u32 = LINEAR_LIMIT.trailing_zeros();
/// First-level classes: the linear ones, then one per power of two from
/// `LINEAR_LIMIT` (20 of them, up to 4 GiB on 64-bit and 2 GiB on 32-bit);
/// larger sizes share the top class.
const FL_COUNT: usize = LINEAR_CLASSES / SL_COUNT + 20;
/// Number of free lists; a class is `fl << SL_BITS | sl`.
const CLASS_COUNT: usize = FL_COUNT * SL_COUNT;
const TOP_CLASS: usize = CLASS_COUNT - 1;
/// How many blocks of its own class a request looks at, past the head, when
/// no bigger class has a block: bounded, so allocation stays O(1).
pub const EXACT_SCAN: usize = 16;

/// Tag bit: this word is the tag of a used block (a free block's last word,
/// its size, never has it).
const USED: usize = 1;
/// Tag bit: the block physically above this used block is free.
const ABOVE_FREE: usize = 2;
const FLAGS: usize = USED | ABOVE_FREE;

const _: () = assert!(FL_COUNT <= 32, "fl_bitmap is a u32");
const _: () = assert!(
    LINEAR_CLASSES % SL_COUNT == 0 && LINEAR_CLASSES >= SL_COUNT,
    "the linear classes fill whole first levels"
);
const _: () = assert!(SL_COUNT <= 32, "sl_bitmap entries are u32");
const _: () = assert!(
    size_of::<Gap>() == GRANULE,
    "a free block's fields fill one granule"
);
const _: () = assert!(GRANULE > FLAGS, "sizes leave room for the flag bits");

/// The first granule of a free block. The block's size is also in its last
/// word (the same word as `size` in a block of one granule).
#[repr(C)]
struct Gap {
    /// The next free block of the same class, or null.
    next: *mut Gap,
    /// Where this block is linked from: the `next` field of the block before
    /// it on its list, or its class's slot in the head table.
    next_of_prev: *mut *mut Gap,
    /// Its class (`class_of(size)`), kept so unlinking needs no lookup.
    class: usize,
    /// Its size in bytes, a multiple of `GRANULE`.
    size: usize,
}

/// The first bytes of every region: the heap's list of regions.
#[repr(C)]
struct RegionHdr {
    next: *mut RegionHdr,
    /// One past the last byte the region was given (extension merges a new
    /// slice that starts exactly here).
    end: usize,
    /// The first block (the base tag is the word before it).
    first: *mut u8,
    /// One past the last block: `GRANULE`-aligned, at most `end`.
    limit: *mut u8,
}

/// A TLSF heap over memory given to it (see the module documentation).
///
/// ```
/// use core::alloc::Layout;
/// use heapkeep::region::RegionHeap;
///
/// let memory: &'static mut [u8] = Box::leak(vec![0u8; 64 * 1024].into_boxed_slice());
/// let mut heap = RegionHeap::new(memory);
/// let layout = Layout::from_size_align(100, 64).unwrap();
/// let p = heap.alloc(layout).unwrap();
/// assert_eq!(p.as_ptr() as usize % 64, 0);
/// // SAFETY: `p` is live and was allocated with `layout`.
/// unsafe { heap.dealloc(p, layout) };
/// assert_eq!(heap.largest_free(), heap.capacity());
/// heap.check().unwrap();
/// ```
pub struct RegionHeap {
    /// Bit `fl` is set iff `sl_bitmap[fl] != 0`.
    fl_bitmap: u32,
    /// Bit `sl` of `sl_bitmap[fl]` is set iff the list of class
    /// `fl << SL_BITS | sl` is not empty.
    sl_bitmap: [u32; FL_COUNT],
    /// `CLASS_COUNT` list heads (null: empty list), in the first region;
    /// while the heap has no region, the static all-null [`NO_HEADS`]
    /// (never written: every list stays empty and the bitmaps all zero),
    /// so the exact-fit test in `alloc` may read a head without a test of
    /// its own.
    /// Every block on list `c` (linked by `next`, each `next_of_prev`
    /// pointing at the field that points at it) is free, has `class == c ==
    /// class_of(size)`; every free block is on exactly one list.
    heads: *mut *mut Gap,
    /// The regions, newest first (null: none yet).
    regions: *mut RegionHdr,
    /// Sum of the sizes of all used blocks (so the free bytes are
    /// `capacity - used`). Kept per call, not per list change: one update
    /// per operation.
    used: usize,
    /// Sum of the sizes of all blocks, free and used, in every region.
    capacity: usize,
    /// Written, never read: `link` stores the old head's back-link here
    /// when the list was empty (no old head), so that it needs no branch
    /// on it.
    sink: *mut *mut Gap,
    /// Unit tests only: list steps taken so far (see [`RegionHeap::step`]),
    /// so the tests can bound the work of one operation.
    #[cfg(test)]
    steps: usize,
}

// SAFETY: a `RegionHeap` owns its regions exclusively (`new`/`extend` take
// `&'static mut`, `extend_raw`'s caller promises the same); nothing in it is
// tied to a thread.
unsafe impl Send for RegionHeap {}

impl Default for RegionHeap {
    fn default() -> Self {
        Self::empty()
    }
}

impl core::fmt::Debug for RegionHeap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RegionHeap")
            .field("capacity", &self.capacity)
            .field("used", &self.used)
            .finish()
    }
}

/// The class whose list holds a free block of `size` bytes: one class per
/// granule below `LINEAR_LIMIT`; above it, `SL_COUNT` classes of equal
/// width per power of two; past the last level, the top class.
///
/// From `LINEAR_LIMIT` up, the size's top `SL_BITS + 1` bits (`SL_COUNT..2
/// * SL_COUNT`) plus `SL_COUNT` per power of two above `LINEAR_LIMIT`, plus
/// the linear classes less `SL_COUNT`, is the class.
#[inline(always)]
fn class_of(size: usize) -> usize {
    // The one-granule classes by a shift alone: the common sizes, and a
    // well-predicted branch costs less than the general formula (measured
    // on the region benchmark).
    if size < LINEAR_LIMIT {
        return size >> GRANULE_SHIFT;
    }
    // `size | LINEAR_LIMIT` is never zero, so `ilog2` is a bare `bsr`.
    let log = (size | LINEAR_LIMIT).ilog2();
    ((size >> (log - SL_BITS))
        + (((log - LINEAR_SHIFT) as usize) << SL_BITS)
        + (LINEAR_CLASSES - SL_COUNT))
        .min(TOP_CLASS)
}

/// For each class `c`: its bit in `sl_bitmap[c >> SL_BITS]` (low half) and
/// its first level's bit in `fl_bitmap` (high half), so `link` sets both
/// with a load and two ORs (the shifts cost more on baseline x86_64).
static CLASS_BITS: [u64; CLASS_COUNT] = {
    let mut t = [0u64; CLASS_COUNT];
    let mut c = 0;
    while c < CLASS_COUNT {
        t[c] = (1u64 << (c & (SL_COUNT - 1))) | (1u64 << (32 + (c >> SL_BITS)));
        c += 1;
    }
    t
};

/// The list heads of a heap with no region: all empty. Only ever read
/// (see [`RegionHeap::heads`]).
static NO_HEADS: [usize; CLASS_COUNT] = [0; CLASS_COUNT];

/// The smallest block size of class `c` (`c < CLASS_COUNT`).
#[cfg(test)]
const fn class_lower(c: usize) -> usize {
    if c < LINEAR_CLASSES {
        c * GRANULE
    } else {
        let k = c - LINEAR_CLASSES;
        (SL_COUNT + (k & (SL_COUNT - 1))) << (LINEAR_SHIFT - SL_BITS + (k >> SL_BITS) as u32)
    }
}

/// Requests up to this size have a class all of whose blocks fit them.
#[cfg(test)]
const TOP_LOWER: usize = class_lower(TOP_CLASS);

/// The lowest class all of whose blocks are at least `size` bytes (`size`
/// rounded up to a class boundary), or `CLASS_COUNT` if there is none
/// (`size > TOP_LOWER`). `size` is at least 1.
///
/// The class above that of `size - 1`: if `size` is a class's lower bound,
/// `size - 1` is in the class below; otherwise both are in the class that
/// also holds smaller blocks. Either way the answer is one up, and the top
/// class plus one is `CLASS_COUNT`. So the class below the answer is the
/// request's own class (when `size` is not a lower bound) or a class all
/// of whose blocks are too small.
#[inline(always)]
fn class_at_least(size: usize) -> usize {
    class_of(size - 1) + 1
}

/// Whether a request for `need` bytes, whose first fitting class is
/// `at_least` and first non-empty one of those `found`, should look at its
/// own class first (`RegionHeap::closer_fit`): when `found` is a power of
/// two or more above it, or there is none. Below `LINEAR_LIMIT` a class
/// holds one size, so the class under `at_least` holds only blocks too
/// small: no closer fit to try.
#[inline(always)]
fn wants_closer_fit(need: usize, at_least: usize, found: Option<usize>) -> bool {
    need > LINEAR_LIMIT && found.is_none_or(|f| f >> SL_BITS > at_least >> SL_BITS)
}

/// The block size serving a request of `size` bytes: the size plus the tag,
/// rounded up to the granule; `None` if that overflows.
#[inline(always)]
fn block_size_for(size: usize) -> Option<usize> {
    Some(size.checked_add(W + GRANULE - 1)? & !(GRANULE - 1))
}

/// Bytes from `p` up to the next multiple of `align` (a power of two).
#[inline(always)]
fn align_gap(p: *mut u8, align: usize) -> usize {
    (p as usize).wrapping_neg() & (align - 1)
}

/// The word just below `p` (a tag, a free block's size or the base tag).
///
/// # Safety
/// `p` is a block (or a region's `limit`) of a heap's regions.
#[inline(always)]
unsafe fn word_below(p: *mut u8) -> *mut usize {
    // SAFETY: the word before a block is inside its region (the base tag at
    // worst).
    unsafe { p.sub(W).cast() }
}

/// Writes the tag of a used block `base..base + size`.
///
/// # Safety
/// `base..base + size` lies in a region of ours and is not a live payload.
#[inline(always)]
unsafe fn set_tag(base: *mut u8, size: usize, above_free: bool) {
    // SAFETY: the block's last word (`size >= GRANULE`).
    unsafe { *word_below(base.add(size)) = size | USED | if above_free { ABOVE_FREE } else { 0 } };
}

impl RegionHeap {
    /// A heap with no memory: every allocation fails until [`extend`](Self::extend).
    pub const fn empty() -> Self {
        Self {
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: ptr::addr_of!(NO_HEADS).cast::<*mut Gap>().cast_mut(),
            regions: ptr::null_mut(),
            used: 0,
            capacity: 0,
            sink: ptr::null_mut(),
            #[cfg(test)]
            steps: 0,
        }
    }

    /// Counts one list step: a free block read while searching (a list head,
    /// or one step of the bounded scan), or one free block linked, unlinked
    /// or moved on its list. Every loop over free blocks, and every list
    /// change, calls it; so the steps of one `alloc`, `dealloc` or
    /// `realloc` bound its work (the rest is straight-line code and bitmap
    /// scans). Compiled to nothing outside this crate's unit tests.
    #[inline(always)]
    fn step(&mut self) {
        #[cfg(test)]
        {
            self.steps += 1;
        }
    }

    /// A heap over `memory`. The first region also holds the table of list
    /// heads (`CLASS_COUNT` words: 3.5 KiB on 64-bit, 1.75 KiB on 32-bit); a
    /// slice too small for it, a region header and one block gives an empty
    /// heap.
    pub fn new(memory: &'static mut [u8]) -> Self {
        let mut heap = Self::empty();
        heap.extend(memory);
        heap
    }

    /// Gives the heap another region; returns the bytes of block space added
    /// (0 if `memory` is too small to use). A slice that starts exactly where
    /// an earlier region ends is merged into it (its last free block grows).
    pub fn extend(&mut self, memory: &'static mut [u8]) -> usize {
        // SAFETY: a `&'static mut` slice is valid and ours for ever.
        unsafe { self.extend_raw(memory.as_mut_ptr(), memory.len()) }
    }

    /// [`extend`](Self::extend) with memory that is not `'static`.
    ///
    /// # Safety
    /// `start..start + len` is valid for reads and writes, and nothing else
    /// uses it while the heap, or any block allocated from it, is alive.
    pub unsafe fn extend_raw(&mut self, start: *mut u8, len: usize) -> usize {
        let base = start as usize;
        let Some(end) = base.checked_add(len) else {
            return 0;
        };
        let mut r = self.regions;
        while !r.is_null() {
            // SAFETY: region headers stay valid while the heap lives.
            let region = unsafe { &mut *r };
            if region.end == base {
                // SAFETY: forwarded from the caller.
                return unsafe { self.merge_after(region, end) };
            }
            r = region.next;
        }
        let table = if !self.has_table() {
            HEAD_TABLE_BYTES
        } else {
            0
        };
        let hdr_at = (base + (core::mem::align_of::<RegionHdr>() - 1))
            & !(core::mem::align_of::<RegionHdr>() - 1);
        let Some(first_at) = hdr_at
            .checked_add(size_of::<RegionHdr>() + table + W + GRANULE - 1)
            .map(|a| a & !(GRANULE - 1))
        else {
            return 0;
        };
        let limit_at = end & !(GRANULE - 1);
        if limit_at < first_at || limit_at - first_at < MIN_BLOCK {
            return 0;
        }
        let size = limit_at - first_at;
        let hdr = start.wrapping_add(hdr_at - base).cast::<RegionHdr>();
        let first = start.wrapping_add(first_at - base);
        let limit = start.wrapping_add(limit_at - base);
        // SAFETY: the header, the table, the base tag and the block all lie
        // inside the caller's memory (computed above), aligned to a word.
        unsafe {
            hdr.write(RegionHdr {
                next: self.regions,
                end,
                first,
                limit,
            });
            if table != 0 {
                let heads = hdr.add(1).cast::<*mut Gap>();
                for c in 0..CLASS_COUNT {
                    heads.add(c).write(ptr::null_mut());
                }
                self.heads = heads;
            }
            *word_below(first) = USED | ABOVE_FREE;
            self.link(first, size, class_of(size));
        }
        self.regions = hdr;
        self.capacity += size;
        size
    }

    /// Grows `region` by the memory `region.end..end`: the new block space
    /// is freed as if it were a used block (so it merges with a free last
    /// block).
    ///
    /// # Safety
    /// As [`extend_raw`](Self::extend_raw), for `region.end..end`.
    unsafe fn merge_after(&mut self, region: &mut RegionHdr, end: usize) -> usize {
        let old = region.limit;
        let limit_at = end & !(GRANULE - 1);
        if limit_at <= old as usize {
            return 0;
        }
        let size = limit_at - old as usize;
        // SAFETY: `old..old + size` is the caller's memory (and the few bytes
        // between the old limit and the old end, ours); nothing is above it.
        unsafe { self.free_range(old, old.add(size), false) };
        self.capacity += size;
        region.end = end;
        region.limit = old.wrapping_add(size);
        size
    }

    /// Whether the head table exists (in the first region), rather than
    /// the static [`NO_HEADS`].
    fn has_table(&self) -> bool {
        !ptr::eq(self.heads.cast_const().cast::<usize>(), NO_HEADS.as_ptr())
    }

    /// Total bytes of block space (free and used) in all regions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Allocates a block for `layout` (any size, any power-of-two alignment;
    /// size 0 gets a unique minimum block). `None` when no free block fits.
    #[inline]
    pub fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let need = block_size_for(layout.size())?;
        if layout.align() <= GRANULE {
            // Below `LINEAR_LIMIT` a class holds one size: a block on the
            // request's own list fits exactly, with no bitmap search and
            // nothing to split (most requests on the region benchmark up
            // to 4 KiB).
            if need < LINEAR_LIMIT {
                let c = need >> GRANULE_SHIFT;
                // SAFETY: `c < LINEAR_CLASSES <= CLASS_COUNT` indexes the
                // head table (or `NO_HEADS`, all null).
                unsafe {
                    let slot = self.heads.add(c);
                    let g = *slot;
                    if !g.is_null() {
                        // `g` heads list `c`: a free block of ours of
                        // exactly `need` bytes.
                        return Some(self.take_head(slot, g, c, need));
                    }
                }
            }
        }
        // Out of line (and a tail call), so the exact fit above saves no
        // registers.
        self.alloc_fit(need, layout.align())
    }

    /// [`RegionHeap::alloc`] past the exact fit: a search of the bitmaps
    /// and a split, or an aligned block.
    /// Its only calls are tail calls, so it saves no registers.
    #[inline(never)]
    fn alloc_fit(&mut self, need: usize, align: usize) -> Option<NonNull<u8>> {
        if align <= GRANULE {
            // `take_free_fast`, with the closer fit out of line.
            let at_least = class_at_least(need);
            let found = self.first_class_from(at_least);
            if wants_closer_fit(need, at_least, found) {
                return self.alloc_closer(need, at_least, found);
            }
            if let Some(c) = found {
                self.step();
                // SAFETY: list `c` is not empty and all its blocks have at
                // least `need` bytes.
                return Some(unsafe { self.carve_head(c, need) });
            }
        }
        self.alloc_aligned(need, align.max(GRANULE))
    }

    /// [`RegionHeap::alloc_fit`] when the closer fit is worth a look.
    #[inline(never)]
    fn alloc_closer(
        &mut self,
        need: usize,
        at_least: usize,
        found: Option<usize>,
    ) -> Option<NonNull<u8>> {
        match self.closer_fit(need, at_least, found) {
            // SAFETY: list `c` is not empty and its head has at least
            // `need` bytes.
            Some(c) => Some(unsafe { self.carve_head(c, need) }),
            None => self.alloc_aligned(need, GRANULE),
        }
    }

    /// Allocates `need` block bytes at an address aligned to `align` (at
    /// least `GRANULE`; for `GRANULE` itself this is `alloc`'s last resort,
    /// the bounded scan of the own class). Block addresses are multiples of
    /// `GRANULE`, so the offset to the next `align` boundary is at most
    /// `align - GRANULE`: a block that big plus `need` always serves. The
    /// offset, a multiple of the granule, stays a free block in front.
    #[cold]
    fn alloc_aligned(&mut self, need: usize, align: usize) -> Option<NonNull<u8>> {
        let g = match need
            .checked_add(align - GRANULE)
            .and_then(|search| self.take_free_fast(search))
        {
            // SAFETY: the list of class `c` is not empty.
            Some(c) => unsafe { *self.heads.add(c) },
            None => self.scan_own_class(need, align)?,
        };
        // SAFETY: `g` is a free block of ours, linked, in which an
        // `align`-aligned block of `need` bytes fits (the bound above, or the
        // scan's test).
        unsafe {
            let base = g.cast::<u8>();
            let offset = align_gap(base, align);
            if offset == 0 {
                return Some(self.carve(g, need));
            }
            let size = (*g).size;
            let block = base.add(offset);
            let rest = size - offset - need;
            // The front part stays free where it is (the block below it
            // keeps its ABOVE_FREE bit).
            let c = class_of(offset);
            if c == (*g).class {
                (*g).size = offset;
                *word_below(block) = offset;
            } else {
                self.unlink(g);
                self.link(base, offset, c);
            }
            if rest != 0 {
                self.link(block.add(need), rest, class_of(rest));
            }
            set_tag(block, need, rest != 0);
            self.used += need;
            Some(NonNull::new_unchecked(block))
        }
    }

    /// Makes `g`, the head of list `c` (whose slot is `slot`), a used
    /// block of its whole size: the exact fit of [`RegionHeap::alloc`].
    /// A pop from the front, so unlike `unlink` it reads neither `g`'s
    /// back-link nor its class.
    ///
    /// # Safety
    /// `slot` is list `c`'s slot in the head table, `g` its (non-null)
    /// head and `size` its size.
    #[inline(always)]
    unsafe fn take_head(
        &mut self,
        slot: *mut *mut Gap,
        g: *mut Gap,
        c: usize,
        size: usize,
    ) -> NonNull<u8> {
        // SAFETY: the caller's promise; `g` is free, so the blocks on both
        // sides are used (no two free blocks are adjacent): the word below
        // it is a tag, and the block above needs no ABOVE_FREE bit.
        unsafe {
            debug_assert_eq!((*g).size, size);
            self.pop_head(slot, g, c);
            self.mark_used(g.cast(), size, false)
        }
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `ptr` is a live block of this heap, allocated (or last reallocated)
    /// with `layout`.
    #[inline]
    pub unsafe fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let base = ptr.as_ptr();
        // A layout's size is at most `isize::MAX`: no overflow.
        let size = (layout.size() + (W + GRANULE - 1)) & !(GRANULE - 1);
        // SAFETY: the caller passes a live block of ours with its layout, so
        // `base..base + size` is that block and its last word its tag.
        unsafe {
            let end = base.add(size);
            // The block above, if free, is needed soon (and its first line
            // is the tag's only half the time).
            prefetch(end);
            let tag = *word_below(end);
            debug_assert_eq!(tag & !ABOVE_FREE, size | USED, "dealloc: wrong layout");
            self.used -= size;
            self.free_range(base, end, tag & ABOVE_FREE != 0);
        }
    }

    /// Resizes a live block to `new_size` bytes, keeping its contents up to
    /// the smaller size and its alignment. In place when shrinking or when
    /// the next block is free and big enough; for a block of `LINEAR_LIMIT`
    /// (4 KiB; 2 KiB on 32-bit) or more, next, down into the free block
    /// below (see [`RegionHeap::grow_down`]); otherwise allocates, copies
    /// and frees. `None` when out of memory: the
    /// block is then untouched.
    ///
    /// # Safety
    /// `ptr` is a live block of this heap allocated with `layout`, and
    /// `new_size` rounded up to `layout.align()` does not overflow `isize`.
    pub unsafe fn realloc(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let base = ptr.as_ptr();
        let size = (layout.size() + (W + GRANULE - 1)) & !(GRANULE - 1);
        let need = block_size_for(new_size)?;
        // SAFETY: `base..base + size` is a live block of ours (the caller's
        // promise), its last word its tag; a set ABOVE_FREE bit means a free
        // block starts at its end.
        unsafe {
            let end = base.add(size);
            let tag = *word_below(end);
            debug_assert_eq!(tag & !ABOVE_FREE, size | USED, "realloc: wrong layout");
            let above_free = tag & ABOVE_FREE != 0;
            if need <= size {
                if need < size {
                    set_tag(base, need, true);
                    self.free_tail(base.add(need), end, above_free);
                    self.used -= size - need;
                }
                return Some(ptr);
            }
            if above_free {
                let above = end.cast::<Gap>();
                let total = size + (*above).size;
                if total >= need {
                    let rest = total - need;
                    if rest == 0 {
                        self.unlink(above);
                    } else {
                        self.shift_gap(above, base.add(need), rest);
                    }
                    set_tag(base, need, rest != 0);
                    self.used += need - size;
                    return Some(ptr);
                }
            }
            // Below 4 KiB the test's read of the word below (a line the
            // move may not touch otherwise) costs more than the overlap saves:
            // with it, 1-2% less throughput at 4 KiB in the region benchmark.
            if size >= LINEAR_LIMIT {
                if let Some(low) = self.grow_down(base, end, above_free, need, layout) {
                    return Some(low);
                }
            }
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()))?;
            ptr::copy_nonoverlapping(base, new.as_ptr(), layout.size().min(new_size));
            // Read again: the new block may have come out of the free block
            // above, which clears the bit.
            let above_free = *word_below(end) & ABOVE_FREE != 0;
            self.used -= size;
            self.free_range(base, end, above_free);
            Some(new)
        }
    }

    /// `realloc`'s second try: when the free block below (with the free
    /// block above, if any) and the block itself together hold `need`
    /// bytes at an address of the layout's alignment, the contents move
    /// down into them (a copy that overlaps its source unless the block
    /// below alone holds them: its destination is then mostly lines it has
    /// just read) and what is left above stays free. `None` (nothing changed) otherwise. Out of line: inlined,
    /// it cost `realloc` registers on every call (the region benchmark's
    /// p99 at 1 KiB read 0.933-0.975 of rlsf's, against 0.809-0.896 in
    /// the paired runs without it).
    ///
    /// # Safety
    /// `base..end` is a live block of ours allocated with `layout`, `need >
    /// end - base` is a block size (a multiple of `GRANULE`), and a free
    /// block starts at `end` iff `above_free`.
    #[inline(never)]
    unsafe fn grow_down(
        &mut self,
        base: *mut u8,
        end: *mut u8,
        above_free: bool,
        need: usize,
        layout: Layout,
    ) -> Option<NonNull<u8>> {
        // SAFETY: the word below a block is a tag or a free block's size
        // (the free block ending at `base`); the free block above starts at
        // `end`. Both leave their lists before the copy overwrites the one
        // below, and the rest is linked after it (it may overlap the
        // source).
        unsafe {
            let below = *word_below(base);
            if below & USED != 0 {
                return None;
            }
            let low = base.sub(below);
            let above = if above_free {
                (*end.cast::<Gap>()).size
            } else {
                0
            };
            let total = below + (end as usize - base as usize) + above;
            if total < need || align_gap(low, layout.align()) != 0 {
                return None;
            }
            self.unlink(low.cast());
            if above_free {
                self.unlink(end.cast());
            }
            ptr::copy(base, low, layout.size());
            let rest = total - need;
            if rest != 0 {
                self.link(low.add(need), rest, class_of(rest));
            }
            self.used -= end as usize - base as usize;
            // `low..low + need` spans the old free block below, the old
            // block and part of the free block above, not one free block as
            // `mark_used` describes; what it needs holds: the word below
            // `low` is a used block's tag (`low` was a free block), and the
            // range is ours and holds nothing live but the moved contents.
            Some(self.mark_used(low, need, rest != 0))
        }
    }

    /// The O(1) search for a free block of at least `need` bytes: the class
    /// whose list head to take (still linked: `carve_head` takes it off).
    /// The first non-empty class whose every block fits; but when that
    /// class is a power of two or more above the request, the request's own
    /// class if its head is big enough (a closer fit, which keeps big
    /// blocks whole). Testing the own class first on every request cost
    /// more in mispredicted branches than it saved. Only a class comes
    /// back, in a register (a block and its class came back through the
    /// stack).
    #[inline(always)]
    fn take_free_fast(&mut self, need: usize) -> Option<usize> {
        let at_least = class_at_least(need);
        let found = self.first_class_from(at_least);
        if wants_closer_fit(need, at_least, found) {
            return self.closer_fit(need, at_least, found);
        }
        self.step();
        found
    }

    /// [`RegionHeap::take_free_fast`] when the first class that fits
    /// (`found`) is a power of two or more above `need` (or there is none):
    /// `need`'s own class if its head is big enough, else `found`. Only on
    /// out-of-line paths (`alloc_closer`, `alloc_aligned`): inlined into
    /// `alloc`, this cost 2-3% of the region benchmark's throughput even at
    /// sizes that never reach it.
    #[inline(always)]
    fn closer_fit(&mut self, need: usize, at_least: usize, found: Option<usize>) -> Option<usize> {
        // `need`'s own class (see `class_at_least`; `at_least >= 1`
        // because `need >= GRANULE`).
        let c = at_least - 1;
        if self.sl_bitmap[c >> SL_BITS] & (1 << (c & (SL_COUNT - 1))) != 0 {
            // SAFETY: the bitmap says list `c` is not empty (so the table
            // exists), and its head is a free block of ours.
            unsafe {
                let head = *self.heads.add(c);
                self.step();
                if (*head).size >= need {
                    return Some(c);
                }
            }
        }
        self.step();
        found
    }

    /// The last resort before failing: the head of the request's own class
    /// and up to `EXACT_SCAN` blocks after it, the first in which `need`
    /// bytes fit at an `align`-aligned address.
    #[cold]
    fn scan_own_class(&mut self, need: usize, align: usize) -> Option<*mut Gap> {
        let c = class_of(need);
        if self.sl_bitmap[c >> SL_BITS] & (1 << (c & (SL_COUNT - 1))) == 0 {
            return None;
        }
        // SAFETY: walking one non-empty free list of ours.
        unsafe {
            let mut g = *self.heads.add(c);
            for _ in 0..=EXACT_SCAN {
                if g.is_null() {
                    break;
                }
                self.step();
                let offset = align_gap(g.cast(), align);
                if (*g).size >= need && (*g).size - need >= offset {
                    return Some(g);
                }
                g = (*g).next;
            }
        }
        None
    }

    /// The first non-empty class at or above `c` (`CLASS_COUNT`: none).
    #[inline(always)]
    fn first_class_from(&self, c: usize) -> Option<usize> {
        if c >= CLASS_COUNT {
            return None;
        }
        let (fl, sl) = (c >> SL_BITS, c & (SL_COUNT - 1));
        let here = self.sl_bitmap[fl] & (u32::MAX << sl);
        if here != 0 {
            return Some((fl << SL_BITS) | here.trailing_zeros() as usize);
        }
        let above = self.fl_bitmap & (u32::MAX.checked_shl(fl as u32 + 1).unwrap_or(0));
        if above == 0 {
            return None;
        }
        let fl = above.trailing_zeros() as usize;
        // SAFETY: `fl_bitmap` has bits only below `FL_COUNT` (its
        // invariant), so `fl` indexes `sl_bitmap`.
        let sl = unsafe { self.sl_bitmap.get_unchecked(fl) }.trailing_zeros();
        Some((fl << SL_BITS) | sl as usize)
    }

    /// Makes the front `need` bytes of free block `g` (still linked, at
    /// least `need` bytes) a used block; the rest, if any, stays free above
    /// it. Returns the block.
    ///
    /// # Safety
    /// As described.
    #[inline(always)]
    unsafe fn carve(&mut self, g: *mut Gap, need: usize) -> NonNull<u8> {
        // SAFETY: `g` is a free block of ours: the word below it is the tag
        // of a used block (no two free blocks are adjacent), and everything
        // written lies inside `g`.
        unsafe {
            let base = g.cast::<u8>();
            let rest = (*g).size - need;
            if rest == 0 {
                self.unlink(g);
            } else {
                self.shift_gap(g, base.add(need), rest);
            }
            self.mark_used(base, need, rest != 0)
        }
    }

    /// [`RegionHeap::carve`] of the head of list `c`: it leaves its list
    /// by a pop from the front (see [`RegionHeap::pop_head`]).
    ///
    /// # Safety
    /// List `c` is not empty and its head has at least `need` bytes.
    #[inline(always)]
    unsafe fn carve_head(&mut self, c: usize, need: usize) -> NonNull<u8> {
        // SAFETY: as `carve`; `c`'s slot is in the head table (`c` is a
        // list's class).
        unsafe {
            let slot = self.heads.add(c);
            let g = *slot;
            let base = g.cast::<u8>();
            let rest = (*g).size - need;
            if rest == 0 {
                self.pop_head(slot, g, c);
            } else {
                let rc = class_of(rest);
                let to = base.add(need);
                if rc == c {
                    self.move_gap(g, to, rest, c);
                } else {
                    self.pop_head(slot, g, c);
                    self.link(to, rest, rc);
                }
            }
            self.mark_used(base, need, rest != 0)
        }
    }

    /// Makes `base..base + size`, the front of a free block just taken off
    /// its list, a used block (the rest of that free block, if any, free
    /// above it iff `above_free`), and counts it. Returns the block.
    ///
    /// # Safety
    /// `base` was a free block of ours, so the word below it is the tag of
    /// a used block (no two free blocks are adjacent); `base..base + size`
    /// lies in it.
    #[inline(always)]
    unsafe fn mark_used(&mut self, base: *mut u8, size: usize, above_free: bool) -> NonNull<u8> {
        // SAFETY: the caller's promise.
        unsafe {
            *word_below(base) &= !ABOVE_FREE;
            set_tag(base, size, above_free);
            self.used += size;
            NonNull::new_unchecked(base)
        }
    }

    /// Takes `g`, the head of list `c` whose slot is `slot`, off its list:
    /// unlike `unlink`, it reads neither `g`'s back-link (the slot) nor its
    /// class.
    ///
    /// # Safety
    /// `slot` is list `c`'s slot in the head table and `g` its (non-null)
    /// head.
    #[inline(always)]
    unsafe fn pop_head(&mut self, slot: *mut *mut Gap, g: *mut Gap, c: usize) {
        self.step();
        // SAFETY: the caller's promise; the next block, if any, is free
        // and on the same list.
        unsafe {
            let next = (*g).next;
            *slot = next;
            if next.is_null() {
                self.clear_class_bit(c);
            } else {
                (*next).next_of_prev = slot;
            }
        }
    }

    /// Frees the used block `base..end`, merging it with free neighbours on
    /// both sides.
    ///
    /// # Safety
    /// `base..end` is a used block of ours (or new block space at a region's
    /// end, not yet counted as free), and `above_free` says whether a free
    /// block starts at `end`.
    #[inline(always)]
    unsafe fn free_range(&mut self, base: *mut u8, end: *mut u8, above_free: bool) {
        // SAFETY: the word below a block is a tag or a free block's size; a
        // free block below is `below` bytes long and ends at `base`; a free
        // block above starts at `end`.
        unsafe {
            let below = *word_below(base);
            if below & USED == 0 {
                let low = base.sub(below).cast::<Gap>();
                let mut top = end;
                if above_free {
                    let above = end.cast::<Gap>();
                    top = end.add((*above).size);
                    self.unlink(above);
                }
                let total = top as usize - low as usize;
                let c = class_of(total);
                if c == (*low).class {
                    // Same list: the block below grows where it is.
                    (*low).size = total;
                    *word_below(top) = total;
                } else {
                    self.unlink(low);
                    self.link(low.cast(), total, c);
                }
            } else {
                *word_below(base) = below | ABOVE_FREE;
                self.free_tail(base, end, above_free);
            }
        }
    }

    /// Frees `base..end`, whose block below is used (and already marked
    /// ABOVE_FREE), merging it with the free block at `end` if `above_free`.
    ///
    /// # Safety
    /// `base..end` lies in a region of ours, holds nothing live, and is
    /// followed by a free block iff `above_free`.
    #[inline(always)]
    unsafe fn free_tail(&mut self, base: *mut u8, end: *mut u8, above_free: bool) {
        // SAFETY: the caller's promise.
        unsafe {
            if above_free {
                let above = end.cast::<Gap>();
                let total = (*above).size + (end as usize - base as usize);
                self.shift_gap(above, base, total);
            } else {
                let size = end as usize - base as usize;
                self.link(base, size, class_of(size));
            }
        }
    }

    /// Moves the linked free block `g` to `to` with `size` bytes (the two
    /// may not overlap in their first granule): in place on its list when
    /// the class stays, else unlinked and linked anew.
    ///
    /// # Safety
    /// `g` is on a free list of ours; `to..to + size` lies in a region of
    /// ours, holds nothing live, and is bounded by used blocks (or region
    /// ends) once `g` is gone.
    #[inline(always)]
    unsafe fn shift_gap(&mut self, g: *mut Gap, to: *mut u8, size: usize) {
        let c = class_of(size);
        // SAFETY: the caller's promise; list neighbours are free blocks or
        // the head table.
        unsafe {
            if c == (*g).class {
                self.move_gap(g, to, size, c);
            } else {
                self.unlink(g);
                self.link(to, size, c);
            }
        }
    }

    /// Moves the linked free block `g` of class `c` to `to` with `size`
    /// bytes, in its place on its list.
    ///
    /// # Safety
    /// As [`RegionHeap::shift_gap`], and `class_of(size) == c == g`'s class.
    #[inline(always)]
    unsafe fn move_gap(&mut self, g: *mut Gap, to: *mut u8, size: usize, c: usize) {
        self.step();
        // SAFETY: the caller's promise; list neighbours are free blocks or
        // the head table.
        unsafe {
            let Gap {
                next, next_of_prev, ..
            } = g.read();
            let to = to.cast::<Gap>();
            to.write(Gap {
                next,
                next_of_prev,
                class: c,
                size,
            });
            *next_of_prev = to;
            if !next.is_null() {
                (*next).next_of_prev = ptr::addr_of_mut!((*to).next);
            }
            *word_below(to.cast::<u8>().add(size)) = size;
        }
    }

    /// Writes a free block of `size` bytes at `b` (its fields and last word)
    /// and pushes it on list `c`.
    ///
    /// # Safety
    /// `b..b + size` lies in a region of ours and holds nothing live; `c ==
    /// class_of(size)`; the heap has its head table.
    #[inline(always)]
    unsafe fn link(&mut self, b: *mut u8, size: usize, c: usize) {
        self.step();
        // SAFETY: the caller's promise; `b` is GRANULE-aligned and `size >=
        // GRANULE` leaves room for the fields.
        unsafe {
            let slot = self.heads.add(c);
            let head = *slot;
            let g = b.cast::<Gap>();
            g.write(Gap {
                next: head,
                next_of_prev: slot,
                class: c,
                size,
            });
            *word_below(b.add(size)) = size;
            // No branch on whether the list was empty: above 4 KiB lists are
            // short and that was a coin toss (46% mispredicted on the 32 KiB
            // region benchmark, under cachegrind's branch model). The bits
            // are set every time (again, if the list had blocks), and the old
            // head's back-link goes to `sink` when there is no old head (a
            // select: `cmov` in the x86_64 code). `c == class_of(size) <
            // CLASS_COUNT`, so both indexes are in bounds.
            let bits = *CLASS_BITS.get_unchecked(c);
            *self.sl_bitmap.get_unchecked_mut(c >> SL_BITS) |= bits as u32;
            self.fl_bitmap |= (bits >> 32) as u32;
            let sink = ptr::addr_of_mut!(self.sink);
            // Only an address: `wrapping_add` makes no claim about a null
            // `head`.
            let field = head
                .cast::<u8>()
                .wrapping_add(core::mem::offset_of!(Gap, next_of_prev))
                .cast::<*mut *mut Gap>();
            *(if head.is_null() { sink } else { field }) = ptr::addr_of_mut!((*g).next);
            *slot = g;
        }
    }

    /// Unlinks free block `g` from its list (its memory is then the
    /// caller's).
    ///
    /// # Safety
    /// `g` is on a free list of ours.
    #[inline(always)]
    unsafe fn unlink(&mut self, g: *mut Gap) {
        self.step();
        // SAFETY: the caller's promise; list neighbours are free blocks or
        // the head table.
        unsafe {
            let Gap {
                next,
                next_of_prev,
                class,
                ..
            } = g.read();
            *next_of_prev = next;
            if !next.is_null() {
                (*next).next_of_prev = next_of_prev;
            } else if next_of_prev == self.heads.add(class) {
                // It was alone on its list.
                self.clear_class_bit(class);
            }
        }
    }

    /// List `c` has just become empty: clears its bit, and its first
    /// level's when that was the level's last non-empty list.
    ///
    /// # Safety
    /// `c < CLASS_COUNT` (every list's class is).
    #[inline(always)]
    unsafe fn clear_class_bit(&mut self, c: usize) {
        let (fl, sl) = (c >> SL_BITS, c & (SL_COUNT - 1));
        // SAFETY: `c < CLASS_COUNT` (caller), so `fl < FL_COUNT`.
        let bits = unsafe { self.sl_bitmap.get_unchecked_mut(fl) };
        *bits &= !(1 << sl);
        if *bits == 0 {
            self.fl_bitmap &= !(1 << fl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap with no region reads its (static, all-null) head table on
    /// every small request and fails them all, at every size and
    /// alignment; once extended it serves them, and the table it then
    /// uses is the region's.
    #[test]
    fn a_heap_without_regions_fails_every_request_then_serves_once_extended() {
        let mut heap = RegionHeap::empty();
        assert!(!heap.has_table());
        for size in (0..LINEAR_LIMIT + 64).step_by(8) {
            for align in [1, 16, GRANULE, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                assert!(heap.alloc(layout).is_none(), "{size}/{align}");
            }
        }
        heap.check().unwrap();
        let memory: &'static mut [u8] = Box::leak(vec![0u8; 64 * 1024].into_boxed_slice());
        let range = memory.as_ptr_range();
        assert!(heap.extend(memory) > 0);
        assert!(heap.has_table());
        assert!(range.contains(&heap.heads.cast_const().cast::<u8>()));
        let layout = Layout::from_size_align(100, 8).unwrap();
        let p = heap.alloc(layout).unwrap();
        let q = heap.alloc(layout).unwrap();
        // SAFETY: `p` is live and was allocated with `layout`.
        unsafe { heap.dealloc(p, layout) };
        // `q` above it is used: `p` is alone on its own list, and the next
        // request of its size takes it whole (the exact fit).
        assert_eq!(heap.alloc(layout), Some(p));
        assert_ne!(p, q);
        heap.check().unwrap();
    }

    #[test]
    fn classes_bound_their_sizes() {
        let mut last = 0;
        let mut s = MIN_BLOCK;
        while s < TOP_LOWER * 2 {
            let c = class_of(s);
            assert!(c >= last, "class of {s} went down");
            assert!(class_lower(c) <= s);
            assert!(c == TOP_CLASS || class_lower(c + 1) > s, "{s}: class {c}");
            last = c;
            // Every block in `class_at_least(s)` is at least `s`.
            let c = class_at_least(s);
            if s <= TOP_LOWER {
                assert!(class_lower(c) >= s, "{s}: class {c}");
                // ... and it is the lowest such class.
                assert!(c == 0 || class_lower(c - 1) < s);
            } else {
                assert_eq!(c, CLASS_COUNT);
            }
            s += GRANULE * (1 + s / 256);
        }
        assert_eq!(class_of(usize::MAX & !(GRANULE - 1)), TOP_CLASS);
        assert_eq!(class_at_least(usize::MAX - 10), CLASS_COUNT);
    }
}
