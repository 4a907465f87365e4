//! A `no_std` library that makes heapkeep's fixed-region heap the global
//! allocator of whatever program links it: `HEAP` below is the program's
//! `#[global_allocator]`, a `heapkeep::region::LockedRegionHeap` over a static
//! buffer of [`REGION_BYTES`]. CI builds it for a bare-metal target
//! (`thumbv7em-none-eabihf`, .ci/run's no_std step); its host test
//! (tests/global.rs) links it into a std test binary, so that every
//! allocation of that binary, the test harness's included, comes from the
//! region.
//!
//! A bare-metal program calls [`init`] at start-up, before its first
//! allocation. A program that cannot (a std program allocates before `main`)
//! needs nothing: the first allocation that finds the heap empty hands the
//! buffer over itself, under the heap's lock, and tries again. So the
//! buffer's `&'static mut` is made exactly once, whoever asks first.
//!
//! Rules: `MEMORY` is reached only through `take_region` (its one `&mut`,
//! made once) and `region` (its address, no reference); the heap's lock is
//! held while the buffer is handed over, so no allocation can see the heap
//! half-extended.
#![no_std]

extern crate alloc;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;
use core::ops::Range;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use heapkeep::region::{LockedRegionHeap, RegionGuard};

/// Bytes of the static region: 128 MiB on an operating system, 64 KiB on a
/// bare-metal target. The host test needs a few MiB; but a panic there with
/// `RUST_BACKTRACE` set reads the test binary's debug information on this
/// heap (tens of MiB), and running out of memory inside that would hang the
/// panic (the allocation-error hook waits for the backtrace lock the panic
/// holds). Zeroed memory in `.bss`: pages never touched cost nothing.
pub const REGION_BYTES: usize = if cfg!(target_os = "none") {
    64 * 1024
} else {
    128 * 1024 * 1024
};

/// The heap's memory (zeroed, so it costs nothing in the image: `.bss`).
static mut MEMORY: [u8; REGION_BYTES] = [0; REGION_BYTES];

/// Set by the first [`take_region`]: `MEMORY` has been handed out.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// `MEMORY` as a `&'static mut` slice, the first time it is asked for;
/// `None` ever after.
fn take_region() -> Option<&'static mut [u8]> {
    if TAKEN.load(Ordering::Relaxed) || TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    let memory: *mut [u8; REGION_BYTES] = &raw mut MEMORY;
    // SAFETY: only the one caller whose swap turned `TAKEN` from false to
    // true gets here, once in the program's life, so this is the only
    // reference to `MEMORY` ever made; nothing else reads or writes it
    // (`region` takes its address only), and a static lives for ever.
    Some(unsafe { &mut *memory })
}

/// The address range of the static region (every block of the global heap
/// lies in it).
pub fn region() -> Range<usize> {
    let start = &raw const MEMORY as usize;
    start..start + REGION_BYTES
}

/// The program's global allocator: a [`LockedRegionHeap`] that takes the
/// static region on its first allocation (or at [`init`]).
#[global_allocator]
pub static HEAP: StaticRegionHeap = StaticRegionHeap {
    heap: LockedRegionHeap::empty(),
};

/// A [`LockedRegionHeap`] over the static region (the type of [`HEAP`]):
/// its `GlobalAlloc` is the locked heap's, plus the hand-over of the region
/// on the first allocation that finds the heap empty.
pub struct StaticRegionHeap {
    heap: LockedRegionHeap,
}

impl StaticRegionHeap {
    /// The locked heap, for its statistics (`HEAP.heap().lock().free_bytes()`)
    /// or to `extend` it with more memory. Do not allocate while holding its
    /// lock: the allocation would wait for the lock for ever.
    pub fn heap(&self) -> &LockedRegionHeap {
        &self.heap
    }

    /// Hands the static region to the heap under `guard` if nobody has
    /// yet; returns the bytes of block space added (0: handed over before).
    fn claim(guard: &mut RegionGuard<'_>) -> usize {
        take_region().map_or(0, |memory| guard.extend(memory))
    }

    /// The allocation that failed: under the lock, hand over the region if
    /// that has not happened (the heap was empty), and try once more.
    #[cold]
    fn alloc_after_claim(&self, layout: Layout) -> *mut u8 {
        let mut heap = self.heap.lock();
        Self::claim(&mut heap);
        heap.alloc(layout).map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}

/// Hands the static region to the global heap (what a bare-metal program
/// does at start-up); returns the bytes of block space added, 0 if the
/// region was handed over already (by an earlier `init` or allocation).
pub fn init() -> usize {
    StaticRegionHeap::claim(&mut HEAP.heap.lock())
}

// SAFETY: every block comes from the `LockedRegionHeap`, whose `GlobalAlloc`
// is sound; the only addition is `alloc_after_claim`, which extends the same
// heap with memory nothing else uses and returns its block or null.
unsafe impl GlobalAlloc for StaticRegionHeap {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from our caller (`layout` has a non-zero size).
        let p = unsafe { GlobalAlloc::alloc(&self.heap, layout) };
        if p.is_null() {
            self.alloc_after_claim(layout)
        } else {
            p
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded: `ptr` is a live block of this heap (every block
        // of ours is the locked heap's) allocated with `layout`.
        unsafe { GlobalAlloc::dealloc(&self.heap, ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded, as `dealloc`; a live block means the region
        // was handed over already, so there is nothing to claim here.
        unsafe { GlobalAlloc::realloc(&self.heap, ptr, layout, new_size) }
    }
}

/// What [`exercise`] computed and saw of the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exercised {
    /// Sum of `0..n` (kept in a `Vec<u64>` grown one push at a time).
    pub sum: u64,
    /// Length of `"0,1,…,n-1,"` (a `String` grown one number at a time).
    pub text_len: usize,
    /// Sum of the even numbers below `min(n, 1000)`, each in its own `Box`
    /// (the odd ones freed in between).
    pub even_sum: u64,
    /// The heap's used bytes before, at the peak and after everything was
    /// dropped.
    pub used_before: usize,
    pub used_peak: usize,
    pub used_after: usize,
}

/// Grows a `Vec`, a `String` and a `Vec` of `Box`es on the global heap,
/// shrinks and frees part of them, then frees everything; returns what it
/// computed and the heap's used bytes along the way.
pub fn exercise(n: u32) -> Exercised {
    let used = || HEAP.heap.lock().used_bytes();
    let used_before = used();
    let mut numbers = Vec::new();
    let mut text = String::new();
    for i in 0..n {
        numbers.push(u64::from(i));
        write!(text, "{i},").expect("a String takes any text");
    }
    let mut boxes: Vec<Box<u32>> = (0..n.min(1000)).map(Box::new).collect();
    let used_peak = used();
    let sum = numbers.iter().sum();
    // Shrinking in place, and frees of scattered blocks.
    numbers.truncate(numbers.len() / 2);
    numbers.shrink_to_fit();
    boxes.retain(|b| **b % 2 == 0);
    let even_sum = boxes.iter().map(|b| u64::from(**b)).sum();
    let text_len = text.len();
    drop((numbers, text, boxes));
    Exercised {
        sum,
        text_len,
        even_sum,
        used_before,
        used_peak,
        used_after: used(),
    }
}
