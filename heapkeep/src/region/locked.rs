//! `LockedRegionHeap`: a `RegionHeap` behind a spin lock, so it can be shared
//! between threads (or interrupt-free contexts) and installed as the global
//! allocator of a `no_std` program. Also an `allocator-api2` `Allocator`, so
//! collections and `Arena` can draw from it.
//!
//! Rules: every access to the heap goes through `lock()`; the lock is a plain
//! test-and-test-and-set spin lock (no OS to sleep on), held only for one heap
//! operation, never across a call out. Do not allocate from an interrupt
//! handler that may have interrupted a holder of the lock on the same core: it
//! would spin for ever.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use allocator_api2::alloc::{AllocError, Allocator};

use super::RegionHeap;

/// A [`RegionHeap`] behind a spin lock: a `GlobalAlloc` for `no_std` programs.
///
/// ```
/// use heapkeep::region::LockedRegionHeap;
///
/// static HEAP: LockedRegionHeap = LockedRegionHeap::empty();
/// // In a `no_std` program: `#[global_allocator] static HEAP: ...`, and
/// // at start-up, before the first allocation:
/// HEAP.extend(Box::leak(vec![0u8; 1 << 16].into_boxed_slice()));
/// let v = allocator_api2::vec::Vec::<u32, _>::with_capacity_in(100, &HEAP);
/// assert!(HEAP.lock().used_bytes() >= 400);
/// drop(v);
/// assert_eq!(HEAP.lock().used_bytes(), 0);
/// ```
pub struct LockedRegionHeap {
    /// True while a `RegionGuard` exists; `heap` is touched only then.
    locked: AtomicBool,
    heap: UnsafeCell<RegionHeap>,
}

// SAFETY: the heap inside is reached only through `lock()`, which gives one
// thread at a time exclusive access; `RegionHeap` is `Send`.
unsafe impl Sync for LockedRegionHeap {}

impl Default for LockedRegionHeap {
    fn default() -> Self {
        Self::empty()
    }
}

impl core::fmt::Debug for LockedRegionHeap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LockedRegionHeap").finish_non_exhaustive()
    }
}

/// Exclusive access to the heap of a [`LockedRegionHeap`]; unlocks on drop.
pub struct RegionGuard<'a> {
    owner: &'a LockedRegionHeap,
}

impl LockedRegionHeap {
    /// A locked heap with no memory yet (usable in a `static`).
    pub const fn empty() -> Self {
        Self {
            locked: AtomicBool::new(false),
            heap: UnsafeCell::new(RegionHeap::empty()),
        }
    }

    /// A locked heap over `memory`.
    pub fn new(memory: &'static mut [u8]) -> Self {
        Self {
            locked: AtomicBool::new(false),
            heap: UnsafeCell::new(RegionHeap::new(memory)),
        }
    }

    /// Gives the heap another region (see [`RegionHeap::extend`]).
    pub fn extend(&self, memory: &'static mut [u8]) -> usize {
        self.lock().extend(memory)
    }

    /// Waits for the lock and returns the heap.
    #[inline]
    pub fn lock(&self) -> RegionGuard<'_> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// The heap if the lock is free now.
    #[inline]
    pub fn try_lock(&self) -> Option<RegionGuard<'_>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| RegionGuard { owner: self })
    }
}

impl Deref for RegionGuard<'_> {
    type Target = RegionHeap;
    fn deref(&self) -> &RegionHeap {
        // SAFETY: the guard holds the lock: no other reference exists.
        unsafe { &*self.owner.heap.get() }
    }
}

impl DerefMut for RegionGuard<'_> {
    fn deref_mut(&mut self) -> &mut RegionHeap {
        // SAFETY: the guard holds the lock: no other reference exists.
        unsafe { &mut *self.owner.heap.get() }
    }
}

impl Drop for RegionGuard<'_> {
    fn drop(&mut self) {
        self.owner.locked.store(false, Ordering::Release);
    }
}

// SAFETY: blocks come from the `RegionHeap`, which returns disjoint blocks
// of at least the layout's size and alignment, valid until freed; null on
// failure.
unsafe impl GlobalAlloc for LockedRegionHeap {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.lock()
            .alloc(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `GlobalAlloc`'s caller passes a live, non-null block of
        // ours with its layout.
        unsafe { self.lock().dealloc(NonNull::new_unchecked(ptr), layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`; `GlobalAlloc::realloc`'s contract bounds
        // `new_size` as `RegionHeap::realloc` needs.
        unsafe {
            self.lock()
                .realloc(NonNull::new_unchecked(ptr), layout, new_size)
                .map_or(ptr::null_mut(), NonNull::as_ptr)
        }
    }
}

// SAFETY: as for `GlobalAlloc`: blocks are valid for their layout until
// deallocated, and may be moved between clones of the (shared) reference.
unsafe impl Allocator for LockedRegionHeap {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = self.lock().alloc(layout).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: `Allocator`'s caller passes a block allocated here.
        unsafe { self.lock().dealloc(ptr, layout) }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: a block of ours allocated with `old`; `new` is a valid
        // layout, so its size is in bounds.
        unsafe { self.resize(ptr, old, new) }
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as `grow`.
        unsafe { self.resize(ptr, old, new) }
    }
}

impl LockedRegionHeap {
    /// `grow`/`shrink`: `realloc` (in place when it can) when the alignment
    /// stays; a new block and a copy when it rises.
    ///
    /// # Safety
    /// `ptr` is a live block of this heap allocated with `old`.
    unsafe fn resize(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let mut heap = self.lock();
        let p = if new.align() <= old.align() || ptr.as_ptr() as usize % new.align() == 0 {
            // SAFETY: the caller's block; `new.size()` comes from a layout.
            unsafe { heap.realloc(ptr, old, new.size()) }
        } else {
            let p = heap.alloc(new);
            if let Some(p) = p {
                // SAFETY: two distinct live blocks, each at least as long
                // as the bytes copied; then the old one is freed.
                unsafe {
                    ptr::copy_nonoverlapping(ptr.as_ptr(), p.as_ptr(), old.size().min(new.size()));
                    heap.dealloc(ptr, old);
                }
            }
            p
        };
        p.map(|p| NonNull::slice_from_raw_parts(p, new.size()))
            .ok_or(AllocError)
    }
}
