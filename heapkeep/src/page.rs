//! Pages: a run of slices that serves blocks of one size from free lists.
//!
//! A page belongs to one thread heap (its `owner`), and only the thread that
//! currently runs that heap touches the page's lists, except `xthread`,
//! where other threads push the blocks they free.
//!
//! ## Free lists
//! - `free` (owner only): blocks the fast path pops from.
//! - `local_free` (owner only): blocks freed by the owner. They are moved onto
//!   `free` only when `free` runs dry, so the fast path runs dry at a steady
//!   cadence and the slow path gets its chance to do upkeep.
//! - `xthread` (atomic): blocks freed by other threads, pushed with one CAS;
//!   the word also carries their count, so the owner takes the whole list in
//!   one swap without walking it. A full page is out of its queue where the
//!   owner would not look, so its `xthread` holds the flag `XT_INBOX` instead
//!   and remote frees go to the owner heap's inbox (see `heap.rs`).
//!
//! Links are stored encoded: `stored = rotl(next ^ key, 23) + slot` where `key`
//! is the page's secret (process secret mixed with the page address) and `slot`
//! the address of the word holding the link. A heap overflow that overwrites a
//! link therefore cannot choose where the list goes, and a decoded link that
//! leaves the block's segment is reported as corruption instead of followed.
//!
//! ## Counts
//! `used` = blocks handed out and not yet back on `free`/`local_free`
//! (blocks waiting in `xthread` or an inbox count as used). `capacity` blocks have been
//! carved from the page so far (carving is lazy to keep resident memory low);
//! `reserved` blocks fit in the page. Invariant:
//! `used + len(free) + len(local_free) == capacity <= reserved`.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::segment::SEGMENT_SHIFT;

/// A free block: its first word holds the encoded link to the next one.
#[repr(C)]
pub(crate) struct Block {
    pub(crate) next: usize,
}

/// `owner` value of a slice that belongs to no page.
pub(crate) const OWNER_NONE: usize = 0;
/// `owner` value of the page of a huge block (one block, no heap).
pub(crate) const OWNER_HUGE: usize = 2;
/// Flag in `owner`: the page is full and out of its class queue.
pub(crate) const OWNER_FULL: usize = 1;

/// Largest number of bytes carved at once when a page is extended.
const EXTEND_BYTES: usize = 4096;

/// Metadata of a page. Lives in the segment header (one per slice; only the
/// first slice of a page, its head, is used as the page).
/// 128 bytes (`align(64)` rounds it up), so indexing is a shift.
#[repr(C, align(64))]
pub(crate) struct Page {
    // -- hot: read by the fast paths --
    /// Allocation list (encoded links). Owner only.
    pub(crate) free: *mut Block,
    /// See the module docs.
    pub(crate) used: u32,
    /// Number of `Page` entries back to this slice's page head (0 for a head).
    pub(crate) slice_offset: u16,
    /// Every block on `free` was carved from a span that read as zero and was
    /// never handed out: only its link word is non-zero, so `alloc_zeroed`
    /// clears one word instead of the block. Cleared as soon as a freed block
    /// can reach `free` (`refill` taking `local_free` or `xthread`).
    pub(crate) fresh: bool,
    /// Owning heap address, `| OWNER_FULL` while full; `OWNER_NONE` for a free
    /// slice; `OWNER_HUGE` for a huge block. Written only by the owner thread
    /// (or while no thread can reach the page); read by any thread.
    pub(crate) owner: AtomicUsize,
    /// Blocks freed by the owner (encoded links). Owner only.
    pub(crate) local_free: *mut Block,
    /// Secret for link encoding.
    pub(crate) key: usize,
    /// Bytes per block.
    pub(crate) block_size: usize,
    /// What the allocation fast path adds to its heap's counters for a
    /// block of this page, before the requested size is added in
    /// (`counters::alloc_unit(block_size)`). Invariant: kept in step with
    /// `block_size` by [`set_block_size`].
    pub(crate) alloc_unit: u64,
    /// What the free fast path adds to its heap's counters for a block of
    /// this page (`counters::free_unit(block_size)`, precomputed so the fast
    /// path adds a loaded word). Invariant: kept in step with `block_size`
    /// by [`set_block_size`]. Also keeps `xthread` off the first cache line.
    pub(crate) free_unit: u64,
    // -- second cache line: cold for the owner, written by other threads --
    /// Blocks freed by other threads: `head | count << XT_COUNT_SHIFT`, links
    /// encoded like the other lists; or exactly `XT_INBOX` when the page is
    /// full (or its heap retired) and remote frees must go to the heap inbox
    /// instead. Only ever changed by compare-and-swap or swap, so a freer and
    /// the owner always agree on which of the two a block went to.
    pub(crate) xthread: AtomicUsize,
    pub(crate) capacity: u32,
    pub(crate) reserved: u32,
    /// Slices this page spans (head only).
    pub(crate) slice_count: u32,
    /// Bin (see `size_class::BIN_COUNT`), or `LARGE_CLASS` for a single-block
    /// page. Slow paths only.
    pub(crate) class: u32,
    /// First block.
    pub(crate) start: *mut u8,
    /// Links in the heap's class queue.
    pub(crate) next: *mut Page,
    pub(crate) prev: *mut Page,
    /// Scratch mark of the invariant walk (which walk last saw the page
    /// queued); lives in padding, so it costs nothing otherwise.
    pub(crate) walk_mark: u32,
    /// A large page (`LARGE_CLASS`) whose block the profile sampled in
    /// place (`profile::sample_in_place`): freeing the block forgets the
    /// sample (`heap::page_empty`). Owner only; in padding.
    pub(crate) sampled: bool,
    /// The list heads when upkeep last saw this page empty (0: not seen),
    /// to tell an idle page from a busy one (see `heap::decay`).
    pub(crate) idle_mark: usize,
}

const _: () = assert!(core::mem::size_of::<Page>() == 128);
const _: () = assert!(core::mem::offset_of!(Page, xthread) == 64);
// `slice_offset` counts slices of one segment (and one past its end).
const _: () = assert!(crate::segment::SLICE_COUNT < u16::MAX as usize);

/// `xthread` flag: route remote frees of this page to the heap inbox.
pub(crate) const XT_INBOX: usize = 1;
/// `xthread`: position of the block count.
pub(crate) const XT_COUNT_SHIFT: u32 = 48;
/// `xthread`: the list head bits.
pub(crate) const XT_PTR_MASK: usize = ((1 << XT_COUNT_SHIFT) - 1) & !7;

/// `class` of a page holding one large block (the counters' index for large
/// blocks, one past the last bin).
pub(crate) const LARGE_CLASS: u32 = crate::size_class::BIN_COUNT as u32;

impl Page {
    /// A page that serves nothing: the direct table of a thread without a heap
    /// points here, so the fast path fails over to the slow path without a
    /// separate check.
    #[allow(clippy::declare_interior_mutable_const)] // only used to initialise statics
    pub(crate) const EMPTY: Page = Page {
        free: ptr::null_mut(),
        used: 0,
        slice_offset: 0,
        owner: AtomicUsize::new(OWNER_NONE),
        local_free: ptr::null_mut(),
        key: 0,
        block_size: 0,
        fresh: false,
        class: 0,
        alloc_unit: 0,
        free_unit: 0,
        xthread: AtomicUsize::new(0),
        capacity: 0,
        reserved: 0,
        slice_count: 0,
        start: ptr::null_mut(),
        next: ptr::null_mut(),
        prev: ptr::null_mut(),
        walk_mark: 0,
        sampled: false,
        idle_mark: 0,
    };
}

/// Encodes a link to `next` stored at `slot`.
#[inline(always)]
pub(crate) fn encode(next: *mut Block, slot: *mut Block, key: usize) -> usize {
    ((next as usize) ^ key)
        .rotate_left(23)
        .wrapping_add(slot as usize)
}

/// Decodes the link stored at `slot`.
#[inline(always)]
pub(crate) fn decode(stored: usize, slot: *mut Block, key: usize) -> *mut Block {
    (stored.wrapping_sub(slot as usize).rotate_right(23) ^ key) as *mut Block
}

/// Sets a page's block size and, with it, the words the fast paths add to
/// their heap's counters (`alloc_unit`, `free_unit`).
///
/// # Safety
/// `page` is a page entry the caller may write (its owner, or no thread can
/// reach it).
#[inline]
pub(crate) unsafe fn set_block_size(page: *mut Page, block_size: usize) {
    // SAFETY: forwarded from the caller; raw place writes, no reference.
    unsafe {
        (*page).block_size = block_size;
        (*page).alloc_unit = crate::counters::alloc_unit(block_size);
        (*page).free_unit = crate::counters::free_unit(block_size);
    }
}

/// Reads the next link of `block`, checking that it stays in the block's segment.
///
/// # Safety
/// `block` is a free block of a page whose links were encoded with `key`.
#[inline(always)]
pub(crate) unsafe fn next_of(block: *mut Block, key: usize) -> *mut Block {
    // SAFETY: forwarded from the caller.
    let next = unsafe { next_unchecked(block, key) };
    if !link_in_segment(block, next) {
        return end_or_corrupt(block, next);
    }
    next
}

/// Reads the next link of `block` without checking it: the caller passes it
/// through [`link_in_segment`] (and [`end_or_corrupt`] when that fails).
///
/// # Safety
/// As for [`next_of`].
#[inline(always)]
pub(crate) unsafe fn next_unchecked(block: *mut Block, key: usize) -> *mut Block {
    // SAFETY: the caller guarantees `block` is a free block we own, so its
    // first word is readable and holds a link.
    decode(unsafe { (*block).next }, block, key)
}

/// The one test on the fast path: a link into the block's own segment. The
/// end of the list (null) also fails it, once per list, and is sorted out off
/// line by [`end_or_corrupt`].
#[inline(always)]
pub(crate) fn link_in_segment(block: *mut Block, next: *mut Block) -> bool {
    ((next as usize) ^ (block as usize)) >> SEGMENT_SHIFT == 0
}

/// A link failed [`link_in_segment`]: the end of the list (null, returned) or
/// a corrupted link (abort).
#[cold]
#[inline(never)]
pub(crate) fn end_or_corrupt(block: *mut Block, next: *mut Block) -> *mut Block {
    if !next.is_null() {
        corrupt_list(block);
    }
    next
}

/// Stores the link `block -> next`.
///
/// # Safety
/// `block` is a block the caller owns and is putting on a list encoded with `key`.
#[inline(always)]
pub(crate) unsafe fn set_next(block: *mut Block, next: *mut Block, key: usize) {
    // SAFETY: the caller owns `block`, which is at least one word long.
    unsafe { (*block).next = encode(next, block, key) };
}

/// A decoded link left its segment: the heap was overwritten. Stop the process
/// with a clear message rather than hand out memory an attacker may choose.
#[cold]
#[inline(never)]
fn corrupt_list(block: *mut Block) -> ! {
    crate::writer::Writer::new()
        .s("heapkeep: fatal: corrupted free list at ")
        .x(block as usize)
        .s("\n")
        .flush();
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Prepares the head entry `page` as a fresh page of bin `class` over
/// `slices` slices starting at `area` (the page memory), its first block
/// `offset` bytes in.
///
/// Functions on pages take `*mut Page`, not `&mut Page`: other threads push on
/// `xthread` at any time, so no exclusive reference to a live page may exist.
///
/// # Safety
/// `area` is the page memory, unused by anyone; the caller owns the entry
/// and no other thread can reach the page yet.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn init(
    page: *mut Page,
    area: *mut u8,
    offset: usize,
    slices: usize,
    block_size: usize,
    class: u32,
    owner: usize,
    key: usize,
) {
    let bytes = slices << crate::segment::SLICE_SHIFT;
    // SAFETY: the caller owns the entry; raw place writes, no reference.
    unsafe {
        (*page).free = ptr::null_mut();
        (*page).local_free = ptr::null_mut();
        (*page).used = 0;
        (*page).slice_offset = 0;
        (*page).key = key ^ (area as usize).rotate_left(7);
        set_block_size(page, block_size);
        (*page).capacity = 0;
        (*page).reserved = ((bytes - offset) / block_size) as u32;
        (*page).class = class;
        (*page).slice_count = slices as u32;
        (*page).start = area.wrapping_add(offset);
        (*page).next = ptr::null_mut();
        (*page).prev = ptr::null_mut();
        (*page).idle_mark = 0;
        (*page).sampled = false;
        (*page).fresh = false;
        (*page).xthread.store(0, Ordering::Relaxed);
        (*page).owner.store(owner, Ordering::Relaxed);
    }
}

/// Makes free blocks available on `free`: first from `local_free`, then
/// from the remote frees in `xthread`, then by carving more of the page.
/// Returns false when the page is full.
///
/// # Safety
/// Called by the owner thread on an initialised page.
pub(crate) unsafe fn refill(page: *mut Page) -> bool {
    // SAFETY: the owner alone writes the non-atomic fields; `xthread` is
    // reached through its atomic API only.
    unsafe {
        if !(*page).free.is_null() {
            return true;
        }
        if !(*page).local_free.is_null() {
            (*page).free = (*page).local_free;
            (*page).local_free = ptr::null_mut();
            (*page).fresh = false;
            return true;
        }
        let x = (*page).xthread.load(Ordering::Relaxed);
        if x & XT_PTR_MASK != 0 {
            // Take every remote free at once: no walk, the count comes along.
            (*page).fresh = false;
            let x = (*page).xthread.swap(0, Ordering::Acquire);
            (*page).free = (x & XT_PTR_MASK) as *mut Block;
            (*page).used -= (x >> XT_COUNT_SHIFT) as u32;
            return true;
        }
        if (*page).capacity < (*page).reserved {
            extend(page);
            return true;
        }
        false
    }
}

/// Carves up to `EXTEND_BYTES` worth of new blocks onto `free`.
///
/// # Safety
/// Owner thread; `capacity < reserved`; `free` is empty.
unsafe fn extend(page: *mut Page) {
    // SAFETY: blocks `capacity .. capacity + n` lie inside the page memory
    // (capacity + n <= reserved) and were never handed out; the owner alone
    // writes these fields.
    unsafe {
        let bs = (*page).block_size;
        let left = ((*page).reserved - (*page).capacity) as usize;
        let n = (EXTEND_BYTES / bs).clamp(1, left);
        let key = (*page).key;
        let first = (*page).start.add((*page).capacity as usize * bs);
        let mut b = first;
        for _ in 1..n {
            let nb = b.add(bs);
            set_next(b.cast(), nb.cast(), key);
            b = nb;
        }
        set_next(b.cast(), ptr::null_mut(), key);
        (*page).free = first.cast();
        (*page).capacity += n as u32;
    }
}

impl Page {
    /// Bytes of page memory.
    #[cfg(any(test, feature = "invariants"))]
    pub(crate) fn area_bytes(&self) -> usize {
        (self.slice_count as usize) << crate::segment::SLICE_SHIFT
    }
}
