//! heapkeep: a fast, thread-caching memory allocator.
//!
//! Install it as the global allocator of a Rust program:
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     assert_eq!(v.iter().sum::<u64>(), 999 * 1000 / 2);
//! }
//! ```
//!
//! ## Layers (see `docs/ARCHITECTURE.md`)
//! `os` (the kernel) → `segment` (4 MiB chunks cut into 64 KiB slices) and
//! `huge` (blocks with a mapping of their own) → `page` (free lists of one
//! block size) → `heap` (one per thread: size-class queues, fast paths, remote
//! frees) → `thread` (which heap a thread runs; thread exit; fork) → this file,
//! the global front. Each layer uses only the ones before it.
//!
//! ## Behaviour beyond `GlobalAlloc`'s contract
//! - A zero-size layout is accepted and gets a unique, non-null pointer.
//! - Impossible layouts and out-of-memory return null; heapkeep never panics,
//!   aborts on a valid request, or allocates recursively inside itself.
//! - Every power-of-two alignment is served.
//! - Memory from `alloc_zeroed` that comes fresh from the OS is not cleared again.
//!
//! ## Heaps you own (no OS needed)
//! [`region`] (a fixed-region TLSF heap with a locked `GlobalAlloc` wrapper),
//! [`arena`] (bump allocation) and [`pool`] (fixed-size objects) manage memory
//! the program hands them. They use none of the layers above and build
//! without `std` (cargo feature `os` off, `#![no_std]`).
#![cfg_attr(not(any(feature = "os", test)), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "os")]
use core::alloc::{GlobalAlloc, Layout};

pub mod arena;
mod hint;
pub mod pool;
pub mod region;

#[cfg(feature = "os")]
pub mod check;
#[cfg(feature = "os")]
mod counters;
#[cfg(feature = "os")]
mod forbid;
#[cfg(feature = "os")]
mod guard;
#[cfg(feature = "os")]
mod heap;
#[cfg(feature = "os")]
mod huge;
#[cfg(all(feature = "os", any(test, feature = "invariants")))]
mod invariants;
#[cfg(feature = "os")]
mod map;
#[cfg(feature = "os")]
mod measure;
#[cfg(feature = "os")]
mod os;
#[cfg(feature = "os")]
mod page;
#[cfg(feature = "os")]
#[doc(hidden)]
pub mod peer;
#[cfg(feature = "os")]
mod profile;
#[cfg(feature = "os")]
mod segment;
#[cfg(feature = "os")]
mod size_class;
#[cfg(feature = "os")]
mod stacks;
#[cfg(feature = "os")]
mod stats;
#[cfg(feature = "os")]
mod sync;
#[cfg(all(feature = "os", test))]
mod tests_internal;
#[cfg(feature = "os")]
mod thread;
#[cfg(feature = "os")]
pub mod walk;
#[cfg(feature = "os")]
mod writer;

#[cfg(feature = "os")]
pub use forbid::{
    forbid_alloc, forbid_alloc_with, permit_alloc, ForbidAlloc, OnAlloc, PermitAlloc, LOG_LIMIT,
};
#[cfg(feature = "os")]
pub use map::write_snapshot;
#[cfg(feature = "os")]
pub use measure::{measure, Measured};
#[cfg(feature = "os")]
pub use stacks::{stack_peaks, StackPeak, StackPeaks};
#[cfg(feature = "os")]
pub use stats::{
    for_each_thread, stats, stats_into, thread_stats, thread_stats_into, Stats, ThreadStats,
};
#[cfg(feature = "os")]
pub use walk::{class_stats, ClassStats};

#[cfg(feature = "os")]
/// The C front's exit work (the preload library's `.fini_array` calls it,
/// after every `atexit` handler, so after other copies of heapkeep have
/// registered): writes the profile if one is being taken. Not for programs.
#[doc(hidden)]
pub fn c_front_exit() {
    profile::write_at_exit();
}

#[cfg(feature = "os")]
/// Whether this build counts operations (cargo feature `stats`, on by
/// default). Without it, [`stats`] reports zero calls and bytes.
pub const STATS_ENABLED: bool = counters::ENABLED;

#[cfg(feature = "os")]
/// The heapkeep allocator. A unit struct: all state is global and per thread.
///
/// ```
/// use std::alloc::{GlobalAlloc, Layout};
/// let layout = Layout::from_size_align(100, 8).unwrap();
/// // SAFETY: the layout has a non-zero size; the block is freed with it.
/// unsafe {
///     let p = heapkeep::HeapKeep.alloc(layout);
///     assert!(!p.is_null());
///     heapkeep::HeapKeep.dealloc(p, layout);
/// }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapKeep;

#[cfg(feature = "os")]
// SAFETY: every method returns blocks that are valid for the layout asked,
// disjoint from every other live block, and aligned as asked (or null); they
// stay valid until passed to `dealloc`/`realloc`. See `heap.rs` for how.
unsafe impl GlobalAlloc for HeapKeep {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        heap::alloc(layout.size(), layout.align(), false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        heap::alloc(layout.size(), layout.align(), true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a live block of this allocator; the
        // layout only matters to check mode (layout-mismatch reports).
        unsafe { heap::free_layout(ptr, layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a live block allocated with `layout`.
        unsafe { heap::realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}

#[cfg(feature = "os")]
/// The number of bytes usable at `ptr`: at least the size it was allocated
/// with, and writable in full.
///
/// # Safety
/// `ptr` is a live block returned by [`HeapKeep`].
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { heap::usable_size(ptr) }
}

#[cfg(feature = "os")]
/// Untyped entry points, for fronts that have no `Layout` (the C library in
/// `preload/`). Same heap, same fast paths as [`HeapKeep`].
pub mod raw {
    /// Allocates `size` bytes aligned to `align` (a power of two), zeroed if
    /// `zero`. Null when out of memory or impossible.
    #[inline]
    pub fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
        debug_assert!(align.is_power_of_two());
        crate::heap::alloc(size, align, zero)
    }

    /// Frees a block; null is ignored.
    ///
    /// # Safety
    /// `ptr` is null or a live block of this allocator.
    #[inline]
    pub unsafe fn free(ptr: *mut u8) {
        if !ptr.is_null() {
            // SAFETY: forwarded from the caller.
            unsafe { crate::heap::free(ptr) }
        }
    }

    /// Resizes a live block allocated with alignment `align`, keeping its
    /// contents up to the smaller size; null when out of memory (the block is
    /// then untouched).
    ///
    /// # Safety
    /// `ptr` is a live block of this allocator allocated with `align`.
    #[inline]
    pub unsafe fn realloc(ptr: *mut u8, align: usize, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; with the old size unknown (`usize::MAX`), the
        // usable size bounds what is copied.
        unsafe { crate::heap::realloc(ptr, usize::MAX, align, new_size) }
    }

    /// Whether a front that creates threads should call [`thread_started`]
    /// in each new thread (check mode is on).
    #[inline]
    pub fn wants_thread_started() -> bool {
        crate::check::enabled()
    }

    /// Called first thing in a thread the front creates: check mode sets
    /// the thread up (its alternate signal stack, so a stack overflow
    /// before the thread's first heap call is reported).
    pub fn thread_started() {
        crate::check::thread_started();
    }
}

#[cfg(feature = "os")]
/// Starts heapkeep when the program (or the preload library) is loaded,
/// before `main`: options are read and check mode's fault handler is in
/// place even for a program whose first heap call comes late, or never.
#[used]
#[link_section = ".init_array"]
static START_AT_LOAD: extern "C" fn() = start_at_load;

#[cfg(feature = "os")]
extern "C" fn start_at_load() {
    thread::global_init();
}

#[cfg(feature = "os")]
/// Bytes currently mapped from the OS by heapkeep (resident or not).
pub fn os_mapped_bytes() -> usize {
    os::mapped_bytes()
}

#[cfg(feature = "os")]
/// The highest [`os_mapped_bytes`] seen since the process started.
pub fn os_mapped_peak_bytes() -> usize {
    os::mapped_peak_bytes()
}

#[cfg(feature = "os")]
/// Caps the memory heapkeep maps from the OS at `bytes` (0: no cap; the
/// environment option `HEAPKEEP_MEMORY_CAP` sets it at start-up, e.g. `512M`).
/// Beyond the cap allocations fail (null; `ENOMEM` in C) instead of taking
/// the machine down. The cap counts every byte mapped, including memory
/// heapkeep keeps cached for reuse; before failing an allocation, heapkeep
/// returns its caches to the OS and tries again. Lowering the cap below
/// what is mapped now frees nothing; it only refuses new mappings.
pub fn set_memory_cap(bytes: usize) {
    thread::global_init();
    os::set_cap(bytes);
}

#[cfg(feature = "os")]
/// The memory cap in bytes (0: none). See [`set_memory_cap`].
pub fn memory_cap() -> usize {
    thread::global_init();
    os::cap()
}

/// Walks the heap and checks its invariants: the calling thread's heap, every
/// retired heap, and the global caches. Returns a description of the first
/// broken invariant. Slow; for tests and fuzzing (feature `invariants`).
#[cfg(all(feature = "os", any(test, feature = "invariants")))]
pub fn check_invariants() -> Result<(), String> {
    invariants::check()
}

#[cfg(feature = "os")]
/// Reports a pointer heapkeep cannot accept and aborts.
#[cold]
#[inline(never)]
pub(crate) fn fatal_pointer(what: &[u8], p: *const u8) -> ! {
    writer::Writer::new()
        .s("heapkeep: fatal: ")
        .b(what)
        .s(" at ")
        .x(p as usize)
        .s("\n")
        .flush();
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}
