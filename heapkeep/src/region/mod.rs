//! A heap over memory the program owns: two-level segregated fit (TLSF) over
//! one or more fixed regions, for devices with no OS and programs that want a
//! bounded block of memory. Needs nothing from the OS and builds `no_std`.
//!
//! ## Rules
//! - `alloc`, `dealloc` and `realloc` run in bounded time whatever the heap
//!   holds: a class lookup by two bitmap scans, list pushes and pops, and at
//!   most [`EXACT_SCAN`] list steps on the last-resort path before failing.
//!   No operation walks the heap (the statistics in `view.rs` may).
//! - Free blocks are coalesced with both physical neighbours at once, so no
//!   two free blocks are ever adjacent.
//! - `RegionHeap` is a plain single-owner value (`&mut self` everywhere);
//!   sharing it between threads, or installing it as the global allocator, is
//!   `LockedRegionHeap`'s job (`locked.rs`).
//!
//! ## Memory layout
//! A region starts with a `RegionHdr` (its link in the heap's region list),
//! then blocks laid end to end, then a *sentinel*: a header word with size 0
//! that reads as a used block, so nothing coalesces past the end.
//!
//! ```text
//!  block:  [ header: size | PREV_FREE | FREE ][ payload ...................... ]
//!  free:   [ header ][ next free ][ prev free ] ........... [ footer: own addr ]
//! ```
//!
//! Every block header sits at an address `≡ W (mod GRANULE)` (W: a machine
//! word) and every block size is a multiple of `GRANULE` (two words), so
//! every payload (header + W) is `GRANULE`-aligned. A used block costs one
//! header word ([`BLOCK_OVERHEAD`]); its payload runs to the next header. A
//! free block also holds its list links and, in its last word, a *footer*
//! (its own address), which the next block reads when its `PREV_FREE` bit is
//! set to find and merge with it in O(1).
//!
//! An over-aligned request takes a block with room for the worst offset to
//! the alignment. An offset big enough for a free block is split off in front
//! of the used block; a smaller one (one granule) stays inside it, and the
//! word before the shifted payload then holds the offset or'ed with
//! `SHIFTED` instead of the header, so `dealloc` still finds the header.
//!
//! ## Classes
//! Sizes below `SMALL_LIMIT` (32 granules) have one class per granule
//! (first level 0). Above, first level `fl` covers `[2^(fl+k-1), 2^(fl+k))`
//! (`k = log2(SMALL_LIMIT)`), cut into 32 second-level classes of equal width.
//! A request first tries the head of its own class (it fits if big enough,
//! which helps a full heap), then the first non-empty class whose every block
//! fits (found with the bitmaps), and only then looks a few steps down its own
//! class's list.

use core::alloc::Layout;
use core::mem::size_of;
use core::ptr::{self, NonNull};

mod locked;
mod view;

pub use locked::{LockedRegionHeap, RegionGuard};
pub use view::CheckError;

/// A machine word.
const W: usize = size_of::<usize>();
/// Block sizes, and payload addresses, are multiples of this (two words).
pub const GRANULE: usize = 2 * W;
/// Bytes a live block costs beyond what was asked for (before rounding up to
/// [`GRANULE`]): its header word.
pub const BLOCK_OVERHEAD: usize = W;
/// The smallest block: header, two list links and a footer when free.
pub const MIN_BLOCK: usize = 2 * GRANULE;
/// Second-level classes per power of two.
const SL_BITS: u32 = 5;
const SL_COUNT: usize = 1 << SL_BITS;
/// Below this, one class per granule (first level 0).
const SMALL_LIMIT: usize = SL_COUNT * GRANULE;
const SMALL_SHIFT: u32 = SMALL_LIMIT.trailing_zeros();
/// First-level classes: level 0 plus one per power of two from `SMALL_LIMIT`.
const FL_COUNT: usize = (usize::BITS - SMALL_SHIFT + 1) as usize;
/// How many blocks of its own class a request looks at, past the head, when
/// no bigger class has a block: bounded, so allocation stays O(1).
pub const EXACT_SCAN: usize = 16;

/// Header bit: this block is free (on a list).
const FREE: usize = 1;
/// Header bit: the block physically before this one is free; the word just
/// before this header is then that block's footer (its address).
const PREV_FREE: usize = 2;
/// Not a header bit: marks the word before a shifted payload (`block_of`).
/// Headers never have it (sizes are multiples of `GRANULE >= 8`).
const SHIFTED: usize = 4;
const FLAGS: usize = FREE | PREV_FREE | SHIFTED;

const _: () = assert!(FL_COUNT <= 64, "fl_bitmap is a u64");
const _: () = assert!(SL_COUNT <= 32, "sl_bitmap entries are u32");
const _: () = assert!(
    MIN_BLOCK >= size_of::<Block>() + W,
    "a free block holds links and a footer"
);
const _: () = assert!(GRANULE > FLAGS, "sizes leave room for the flag bits");

/// The start of a block. Only `header` exists for a used block; `next` and
/// `prev` are the free-list links of a free one (they overlap the payload).
#[repr(C)]
struct Block {
    /// Size of the block in bytes (a multiple of `GRANULE`, the header
    /// included), or'ed with `FREE` and `PREV_FREE`.
    header: usize,
    next: *mut Block,
    prev: *mut Block,
}

/// The first bytes of every region: the heap's list of regions.
#[repr(C)]
struct RegionHdr {
    next: *mut RegionHdr,
    /// One past the last byte the region was given (extension merges a new
    /// slice that starts exactly here).
    end: usize,
    /// The first block.
    first: *mut Block,
    /// The size-0 used block that closes the region.
    sentinel: *mut Block,
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
    fl_bitmap: u64,
    /// Bit `sl` of `sl_bitmap[fl]` is set iff `heads[fl][sl]` is not null.
    sl_bitmap: [u32; FL_COUNT],
    /// `heads[fl][sl]`: the first free block of class `(fl, sl)`, or null.
    /// Every block on that list (linked by `next`/`prev`, `prev` of the head
    /// null) is free and its size maps to `(fl, sl)` by `class_of`; every
    /// free block is on exactly one list.
    heads: [[*mut Block; SL_COUNT]; FL_COUNT],
    /// The regions, newest first (null: none yet).
    regions: *mut RegionHdr,
    /// Sum of the sizes of all free blocks.
    free: usize,
    /// Sum of the sizes of all blocks, free and used, in every region.
    capacity: usize,
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
            .field("free", &self.free)
            .finish()
    }
}

/// `log2` of the class width around `size` (a multiple of `GRANULE`): the
/// granule below `SMALL_LIMIT`, `2^(log2(size) - SL_BITS)` above. Branch-free
/// (a mispredicted "is it small?" test cost more than the whole lookup):
/// or-ing in `SMALL_LIMIT / 2` makes every small size look like the top
/// power of two below `SMALL_LIMIT`, whose shift is one less than the
/// granule's.
#[inline(always)]
fn class_shift(size: usize) -> (u32, u32) {
    // Never zero, so `ilog2` is a bare `bsr`/`clz`.
    let log = (size | (SMALL_LIMIT / 2)).ilog2();
    (log, log.max(SMALL_SHIFT) - SL_BITS)
}

/// The class whose list holds a free block of `size` bytes: first level 0
/// and one class per granule below `SMALL_LIMIT`; above it, first level
/// `log2(size) - log2(SMALL_LIMIT) + 1` and the next `SL_BITS` bits of size.
#[inline(always)]
fn class_of(size: usize) -> (usize, usize) {
    let (log, shift) = class_shift(size);
    let fl = (log - (SMALL_SHIFT - 1)) as usize;
    // Above `SMALL_LIMIT`, `size >> shift` is in `SL_COUNT..2 * SL_COUNT`
    // (the mask drops the leading 1); below, in `0..SL_COUNT`. The `min`
    // (a no-op, `log < usize::BITS`) lets the compiler drop bounds checks.
    (fl.min(FL_COUNT - 1), (size >> shift) & (SL_COUNT - 1))
}

/// The lowest class all of whose blocks are at least `size` bytes (`size`
/// rounded up to a class boundary); `None` if there is no such class.
#[inline(always)]
fn class_at_least(size: usize) -> Option<(usize, usize)> {
    // Below `SMALL_LIMIT` classes are exact and `size` a multiple of the
    // granule, so adding `granule - 1` changes nothing there.
    let (_, shift) = class_shift(size);
    Some(class_of(size.checked_add((1 << shift) - 1)?))
}

/// The block size serving a request of `size` bytes, `None` if too big.
#[inline(always)]
fn block_size_for(size: usize) -> Option<usize> {
    let s = size.checked_add(W + GRANULE - 1)? & !(GRANULE - 1);
    Some(if s < MIN_BLOCK { MIN_BLOCK } else { s })
}

/// Hints the cache to load the line at `p` (no effect on correctness; any
/// address will do).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The block whose payload is `ptr`, and how far `ptr` is past the
/// block's normal payload: the word before a payload is the block's header,
/// or, for an aligned block whose payload was shifted by a gap too small to
/// free, that offset or'ed with `SHIFTED`.
///
/// # Safety
/// `ptr` is a live block of a `RegionHeap`.
#[inline(always)]
unsafe fn block_of(ptr: NonNull<u8>) -> (*mut Block, usize) {
    let word = ptr.as_ptr().wrapping_sub(W);
    // SAFETY: the word before a live payload is a header or a shift marker.
    let w = unsafe { *word.cast::<usize>() };
    if w & SHIFTED == 0 {
        (word.cast(), 0)
    } else {
        let offset = w & !FLAGS;
        (word.wrapping_sub(offset).cast(), offset)
    }
}

/// The payload of block `b`.
///
/// # Safety
/// `b` is a block header inside a region.
#[inline(always)]
unsafe fn payload_of(b: *mut Block) -> NonNull<u8> {
    // SAFETY: a header inside a region is not at address 0, nor its payload.
    unsafe { NonNull::new_unchecked(b.cast::<u8>().add(W)) }
}

/// The header word of block `b`.
///
/// # Safety
/// `b` is a block header inside one of the heap's regions (the sentinel
/// included).
#[inline(always)]
unsafe fn header(b: *mut Block) -> usize {
    // SAFETY: the caller's promise.
    unsafe { (*b).header }
}

/// The size of block `b`, its header included.
///
/// # Safety
/// As `header`.
#[inline(always)]
unsafe fn size_of_block(b: *mut Block) -> usize {
    // SAFETY: forwarded.
    unsafe { header(b) & !FLAGS }
}

/// The block physically after `b` (or the sentinel).
///
/// # Safety
/// `b` is a block of the heap's regions, not the sentinel.
#[inline(always)]
unsafe fn next_phys(b: *mut Block) -> *mut Block {
    // SAFETY: forwarded; a block's end is the next header or the sentinel.
    unsafe { b.cast::<u8>().add(size_of_block(b)).cast() }
}

/// Sets or clears the `PREV_FREE` bit of `b`.
///
/// # Safety
/// As `header`, and the bit then tells the truth about the block before.
#[inline(always)]
unsafe fn set_prev_free(b: *mut Block, on: bool) {
    // SAFETY: forwarded.
    unsafe {
        if on {
            (*b).header |= PREV_FREE;
        } else {
            (*b).header &= !PREV_FREE;
        }
    }
}

impl RegionHeap {
    /// A heap with no memory: every allocation fails until [`extend`](Self::extend).
    pub const fn empty() -> Self {
        Self {
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: [[ptr::null_mut(); SL_COUNT]; FL_COUNT],
            regions: ptr::null_mut(),
            free: 0,
            capacity: 0,
        }
    }

    /// A heap over `memory`. A slice too small to hold a header, one block
    /// and the sentinel (under 80 bytes on 64-bit) gives an empty heap.
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
        // The sentinel's header: the last word of the last granule.
        let sentinel_at = (end & !(GRANULE - 1)).wrapping_sub(W);
        // SAFETY: walking our own region list.
        let mut r = self.regions;
        while !r.is_null() {
            // SAFETY: region headers stay valid while the heap lives.
            let region = unsafe { &mut *r };
            if region.end == base {
                // SAFETY: forwarded from the caller.
                return unsafe { self.merge_after(region, end, sentinel_at) };
            }
            r = region.next;
        }
        let hdr_at = (base + (core::mem::align_of::<RegionHdr>() - 1))
            & !(core::mem::align_of::<RegionHdr>() - 1);
        let Some(first_at) = hdr_at
            .checked_add(size_of::<RegionHdr>() + W + GRANULE - 1)
            .map(|a| (a & !(GRANULE - 1)) - W)
        else {
            return 0;
        };
        if end < GRANULE || sentinel_at < first_at || sentinel_at - first_at < MIN_BLOCK {
            return 0;
        }
        let size = sentinel_at - first_at;
        let hdr = start.wrapping_add(hdr_at - base).cast::<RegionHdr>();
        let first = start.wrapping_add(first_at - base).cast::<Block>();
        let sentinel = start.wrapping_add(sentinel_at - base).cast::<Block>();
        // SAFETY: all three lie inside the caller's memory (computed above),
        // aligned to a word.
        unsafe {
            hdr.write(RegionHdr {
                next: self.regions,
                end,
                first,
                sentinel,
            });
            (*sentinel).header = 0;
            self.insert_free(first, size);
        }
        self.regions = hdr;
        self.capacity += size;
        size
    }

    /// Grows `region` by the memory `region.end..end`: the old sentinel
    /// becomes a block, freed (and so merged with a free last block).
    ///
    /// # Safety
    /// As [`extend_raw`](Self::extend_raw), for `region.end..end`.
    unsafe fn merge_after(
        &mut self,
        region: &mut RegionHdr,
        end: usize,
        sentinel_at: usize,
    ) -> usize {
        let old = region.sentinel;
        let old_at = old as usize;
        if sentinel_at <= old_at || sentinel_at - old_at < MIN_BLOCK {
            return 0;
        }
        let size = sentinel_at - old_at;
        let sentinel = old.cast::<u8>().wrapping_add(size).cast::<Block>();
        // SAFETY: the old sentinel is ours; the new one lies in the caller's
        // memory. The old sentinel becomes a used block of `size` bytes
        // (keeping its PREV_FREE bit), which `free_block` then frees.
        unsafe {
            (*sentinel).header = 0;
            (*old).header = size | (header(old) & PREV_FREE);
            self.capacity += size;
            self.free_block(old);
        }
        region.end = end;
        region.sentinel = sentinel;
        size
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
            let b = self.take_free(need)?;
            // SAFETY: `b` is a free block just taken off its list, of at least
            // `need` bytes; its neighbours are used (no adjacent free blocks).
            unsafe {
                self.carve(b, size_of_block(b), need);
                Some(payload_of(b))
            }
        } else {
            self.alloc_aligned(need, layout.align())
        }
    }

    /// Allocates `need` block bytes whose payload is aligned to `align`
    /// (above `GRANULE`). The payload is GRANULE-aligned already, so the
    /// offset to the next `align` boundary is at most `align - GRANULE`: a
    /// block that big plus `need` always serves. An offset big enough for a
    /// free block is split off in front; a smaller one stays inside the used
    /// block, whose payload is then *shifted* (see `block_of`).
    #[cold]
    fn alloc_aligned(&mut self, need: usize, align: usize) -> Option<NonNull<u8>> {
        let search = need.checked_add(align - GRANULE)?;
        let b = self.take_free(search)?;
        // SAFETY: `b` is a free block of at least `search` bytes just taken
        // off its list, with used neighbours; the offset and the aligned
        // block both lie inside it (the bound above).
        unsafe {
            let size = size_of_block(b);
            let payload = b.cast::<u8>().add(W);
            let offset = payload.align_offset(align);
            if offset == 0 {
                self.carve(b, size, need);
                Some(payload_of(b))
            } else if offset >= MIN_BLOCK {
                let block = b.cast::<u8>().add(offset).cast::<Block>();
                (*block).header = size - offset;
                // The gap's neighbour before it is used (b was free), after
                // it `block`, about to be used: a plain free block.
                self.insert_free(b, offset);
                self.carve(block, size - offset, need);
                Some(payload_of(block))
            } else {
                self.carve(b, size, need + offset);
                let shifted = payload.add(offset);
                *shifted.cast::<usize>().sub(1) = offset | SHIFTED;
                Some(NonNull::new_unchecked(shifted))
            }
        }
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `ptr` is a live block of this heap, allocated (or last reallocated)
    /// with `layout`'s alignment.
    #[inline]
    pub unsafe fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // The next block's header, where it most likely is: loading it
        // alongside our own header, instead of after it, hides a miss.
        prefetch(
            ptr.as_ptr()
                .wrapping_add(layout.size().wrapping_add(GRANULE - 1) & !(GRANULE - 1)),
        );
        // SAFETY: the caller passes a live block of ours.
        unsafe { self.free_block(block_of(ptr).0) }
    }

    /// Resizes a live block to `new_size` bytes, keeping its contents up to
    /// the smaller size and its alignment. In place when shrinking or when
    /// the next block is free and big enough; otherwise allocates, copies and
    /// frees. `None` when out of memory: the block is then untouched.
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
        // As in `dealloc`.
        prefetch(
            ptr.as_ptr()
                .wrapping_add(layout.size().wrapping_add(GRANULE - 1) & !(GRANULE - 1)),
        );
        // SAFETY: `ptr` is a live block of ours (the caller's promise); so
        // is `b`, and its next physical block is a block or the sentinel,
        // whose header reads as used.
        unsafe {
            let (b, offset) = block_of(ptr);
            let need = block_size_for(new_size)?.checked_add(offset)?;
            let size = size_of_block(b);
            let next = next_phys(b);
            let next_free = header(next) & FREE != 0;
            if need <= size {
                if next_free {
                    // Give the tail to the free neighbour, however small.
                    let total = size + size_of_block(next);
                    self.remove_free(next);
                    (*b).header = need | (header(b) & PREV_FREE);
                    self.insert_free(b.cast::<u8>().add(need).cast(), total - need);
                } else if size - need >= MIN_BLOCK {
                    (*b).header = need | (header(b) & PREV_FREE);
                    self.insert_free(b.cast::<u8>().add(need).cast(), size - need);
                }
                return Some(ptr);
            }
            if next_free && size + size_of_block(next) >= need {
                let total = size + size_of_block(next);
                self.remove_free(next);
                self.carve(b, total, need);
                return Some(ptr);
            }
            if header(b) & PREV_FREE != 0 && offset == 0 {
                // Slide down into the free block before (and take the free
                // one after, if any): no search, and it fills a hole.
                let prev = *b.cast::<*mut Block>().sub(1);
                let after = if next_free { size_of_block(next) } else { 0 };
                let total = size_of_block(prev) + size + after;
                let moved = payload_of(prev);
                if total >= need && moved.as_ptr() as usize & (layout.align() - 1) == 0 {
                    self.remove_free(prev);
                    if next_free {
                        self.remove_free(next);
                    }
                    // `prev` is free, so the block before it is used.
                    (*prev).header = total;
                    // Overlapping; the tail `carve` frees lies past the copy
                    // (`need >= new_size + W`).
                    ptr::copy(ptr.as_ptr(), moved.as_ptr(), layout.size().min(new_size));
                    self.carve(prev, total, need);
                    return Some(moved);
                }
            }
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout)?;
            ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), layout.size().min(new_size));
            self.free_block(b);
            Some(new)
        }
    }

    /// Takes a free block of at least `need` bytes off its list.
    #[inline(always)]
    fn take_free(&mut self, need: usize) -> Option<*mut Block> {
        let (fl, sl) = class_of(need);
        let head = self.heads[fl][sl];
        // SAFETY: a list head is a free block of ours.
        if !head.is_null() && unsafe { size_of_block(head) } >= need {
            // SAFETY: as above.
            unsafe { self.remove_free_in(head, fl, sl) };
            return Some(head);
        }
        if let Some((fl, sl)) =
            class_at_least(need).and_then(|(fl, sl)| self.first_class_from(fl, sl))
        {
            let b = self.heads[fl][sl];
            // SAFETY: the bitmap says this list is not empty.
            unsafe { self.remove_free_in(b, fl, sl) };
            return Some(b);
        }
        self.scan_own_class(fl, sl, need)
    }

    /// The last resort before failing: up to `EXACT_SCAN` blocks of the
    /// request's own class after the head, which may be big enough.
    #[cold]
    fn scan_own_class(&mut self, fl: usize, sl: usize, need: usize) -> Option<*mut Block> {
        let head = self.heads[fl][sl];
        if head.is_null() {
            return None;
        }
        // SAFETY: walking one free list of ours.
        unsafe {
            let mut b = (*head).next;
            for _ in 0..EXACT_SCAN {
                if b.is_null() {
                    break;
                }
                if size_of_block(b) >= need {
                    self.remove_free(b);
                    return Some(b);
                }
                b = (*b).next;
            }
        }
        None
    }

    /// The first non-empty class at or above `(fl, sl)`.
    #[inline(always)]
    fn first_class_from(&self, fl: usize, sl: usize) -> Option<(usize, usize)> {
        let here = self.sl_bitmap[fl] & (u32::MAX << sl);
        if here != 0 {
            return Some((fl, here.trailing_zeros() as usize));
        }
        let above = self.fl_bitmap & (u64::MAX << (fl + 1));
        if above == 0 {
            return None;
        }
        let fl = above.trailing_zeros() as usize;
        Some((fl, self.sl_bitmap[fl].trailing_zeros() as usize))
    }

    /// Makes `b` (off every list, `size` bytes, PREV_FREE bit right, its next
    /// neighbour used) a used block of `need` bytes, freeing the tail as a
    /// block of its own when it is big enough.
    ///
    /// # Safety
    /// As described; `need <= size`, both multiples of `GRANULE`.
    #[inline(always)]
    unsafe fn carve(&mut self, b: *mut Block, size: usize, need: usize) {
        // SAFETY: `b..b + size` is one block of ours (the caller's promise).
        unsafe {
            let prev_free = header(b) & PREV_FREE;
            if size - need >= MIN_BLOCK {
                (*b).header = need | prev_free;
                self.insert_free(b.cast::<u8>().add(need).cast(), size - need);
            } else {
                (*b).header = size | prev_free;
                set_prev_free(b.cast::<u8>().add(size).cast(), false);
            }
        }
    }

    /// Frees used block `b`, merging it with free neighbours on both sides.
    ///
    /// # Safety
    /// `b` is a used block of ours.
    #[inline(always)]
    unsafe fn free_block(&mut self, mut b: *mut Block) {
        // SAFETY: `b` is used; its neighbours are blocks (or the sentinel)
        // of the same region; a set PREV_FREE bit means the word before `b`
        // is the footer of the free block before it.
        unsafe {
            let mut size = size_of_block(b);
            let next = next_phys(b);
            if header(next) & FREE != 0 {
                size += size_of_block(next);
                self.remove_free(next);
            }
            if header(b) & PREV_FREE != 0 {
                let prev = *b.cast::<*mut Block>().sub(1);
                let prev_size = size_of_block(prev);
                let total = prev_size + size;
                let prev_class = class_of(prev_size);
                if class_of(total) == prev_class {
                    // Same list: `prev` grows where it is.
                    (*prev).header = total | FREE;
                    let end = prev.cast::<u8>().add(total);
                    *end.cast::<*mut Block>().sub(1) = prev;
                    set_prev_free(end.cast(), true);
                    self.free += size;
                    return;
                }
                self.remove_free_in(prev, prev_class.0, prev_class.1);
                size = total;
                b = prev;
            }
            self.insert_free(b, size);
        }
    }

    /// Writes a free block of `size` bytes at `b` (header, footer) and pushes
    /// it on its list. Its previous neighbour must be used (free blocks are
    /// never adjacent), so PREV_FREE is clear; the next one learns it.
    ///
    /// # Safety
    /// `b..b + size` lies in a region of ours and is followed by a block
    /// header or the sentinel; nothing there is live.
    #[inline(always)]
    unsafe fn insert_free(&mut self, b: *mut Block, size: usize) {
        let (fl, sl) = class_of(size);
        let head = self.heads[fl][sl];
        // SAFETY: the caller's promise; `b` is GRANULE-aligned plus W, and
        // `size >= MIN_BLOCK` leaves room for links and footer.
        unsafe {
            (*b).header = size | FREE;
            (*b).next = head;
            (*b).prev = ptr::null_mut();
            if !head.is_null() {
                (*head).prev = b;
            }
            let end = b.cast::<u8>().add(size);
            *end.cast::<*mut Block>().sub(1) = b;
            set_prev_free(end.cast(), true);
        }
        self.heads[fl][sl] = b;
        self.sl_bitmap[fl] |= 1 << sl;
        self.fl_bitmap |= 1 << fl;
        self.free += size;
    }

    /// Unlinks free block `b` from its list (it stays marked free; the
    /// caller rewrites its header).
    ///
    /// # Safety
    /// `b` is on a free list of ours.
    #[inline(always)]
    unsafe fn remove_free(&mut self, b: *mut Block) {
        // SAFETY: forwarded.
        unsafe {
            let (fl, sl) = class_of(size_of_block(b));
            self.remove_free_in(b, fl, sl);
        }
    }

    /// `remove_free` for a caller that knows the class.
    ///
    /// # Safety
    /// `b` is on the free list `(fl, sl)` of ours.
    #[inline(always)]
    unsafe fn remove_free_in(&mut self, b: *mut Block, fl: usize, sl: usize) {
        // SAFETY: the caller's promise; list neighbours are free blocks.
        unsafe {
            let size = size_of_block(b);
            debug_assert_eq!(class_of(size), (fl, sl));
            let (next, prev) = ((*b).next, (*b).prev);
            if !next.is_null() {
                (*next).prev = prev;
            }
            if prev.is_null() {
                self.heads[fl][sl] = next;
                if next.is_null() {
                    self.sl_bitmap[fl] &= !(1 << sl);
                    if self.sl_bitmap[fl] == 0 {
                        self.fl_bitmap &= !(1 << fl);
                    }
                }
            } else {
                (*prev).next = next;
            }
            self.free -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest block size mapping to class `(fl, sl)`.
    fn class_lower(fl: usize, sl: usize) -> usize {
        if fl == 0 {
            sl * GRANULE
        } else {
            (SL_COUNT + sl) << (fl - 1 + (SMALL_SHIFT - SL_BITS) as usize)
        }
    }

    #[test]
    fn classes_bound_their_sizes() {
        let mut last = (0, 0);
        let mut s = MIN_BLOCK;
        while s < 1 << 26 {
            let c = class_of(s);
            assert!(c >= last, "class of {s} went down");
            assert!(class_lower(c.0, c.1) <= s);
            last = c;
            // Every block in `class_at_least(s)` is at least `s`.
            let (fl, sl) = class_at_least(s).unwrap();
            assert!(class_lower(fl, sl) >= s, "{s}: class ({fl}, {sl})");
            // ... and it is the lowest such class: the one below has a
            // lower bound under `s`.
            assert!((fl, sl) <= class_of(s + s / 16 + GRANULE));
            s += GRANULE * (1 + s / 512);
        }
        assert!(class_of(usize::MAX & !(GRANULE - 1)).0 < FL_COUNT);
        assert_eq!(class_at_least(usize::MAX - 10), None);
    }
}
