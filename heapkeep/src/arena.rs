//! `Arena`: bump allocation. Allocations are carved downward from the end of
//! the current chunk; freeing does nothing (except for the most recent
//! block); `reset()` takes everything back at once. When a chunk is full the
//! arena asks its backing allocator for a new one, twice as big.
//!
//! Rules:
//! - Chunks come from a backing `allocator_api2` [`Allocator`]: the global
//!   heap (`Arena::new()`, feature `alloc`), or any other, for instance a
//!   [`LockedRegionHeap`](crate::region::LockedRegionHeap) on a device with
//!   no OS (`Arena::new_in(&HEAP)`).
//! - Values placed in the arena are never dropped; `reset` and drop only
//!   return memory.
//! - An `Arena` is single-threaded (`!Sync`): `&Arena` is the allocator
//!   handed to collections (`Vec::new_in(&arena)`), and `reset` needs
//!   `&mut self`, so nothing allocated can outlive it.
//! - The fast path is a subtraction, a mask and a compare, inline; the chunk
//!   refill is out of line and cold.

use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::{self, NonNull};

#[cfg(feature = "alloc")]
use allocator_api2::alloc::Global;
use allocator_api2::alloc::{AllocError, Allocator};

/// Size of the first chunk unless told otherwise.
const FIRST_CHUNK: usize = 4096;
/// Alignment of chunks (and of the header at their start).
const CHUNK_ALIGN: usize = 16;
/// Chunks stop doubling at this size (larger requests still get a chunk
/// big enough).
const MAX_DOUBLING: usize = 1 << 30;

/// The start of every chunk: a link to the older chunks.
#[repr(C)]
struct Chunk {
    /// The chunk allocated before this one (null: the oldest).
    prev: *mut Chunk,
    /// The chunk's size, as allocated (header included).
    size: usize,
}

/// Space for the header, rounded to the chunk alignment.
const HEADER: usize = (core::mem::size_of::<Chunk>() + CHUNK_ALIGN - 1) & !(CHUNK_ALIGN - 1);

/// A bump allocator over chunks from a backing allocator `A`.
///
/// ```
/// use heapkeep::arena::Arena;
/// use allocator_api2::vec::Vec;
///
/// let mut arena = Arena::new();
/// let mut v = Vec::new_in(&arena);
/// v.extend(0..1000u32);
/// assert_eq!(v.iter().sum::<u32>(), 999 * 500);
/// drop(v);
/// arena.reset();
/// ```
pub struct Arena<A: Allocator> {
    /// The lowest byte handed out from the current chunk: the next block
    /// ends at or below it. `start <= ptr`, both inside the current chunk
    /// (both dangling with no chunk, where `start` is above `ptr`).
    ptr: Cell<*mut u8>,
    /// The lowest byte of the current chunk that may be handed out.
    start: Cell<*mut u8>,
    /// The current (newest, largest) chunk; older ones hang off `prev`.
    chunk: Cell<*mut Chunk>,
    /// The size of the next chunk to ask for.
    next_size: Cell<usize>,
    backing: A,
}

#[cfg(feature = "alloc")]
impl Arena<Global> {
    /// An arena over the global heap, first chunk 4 KiB.
    pub fn new() -> Self {
        Self::new_in(Global)
    }

    /// An arena over the global heap whose first chunk holds `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        Self::with_capacity_in(bytes, Global)
    }
}

#[cfg(feature = "alloc")]
impl Default for Arena<Global> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Allocator> core::fmt::Debug for Arena<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Arena")
            .field("allocated_bytes", &self.allocated_bytes())
            .finish_non_exhaustive()
    }
}

impl<A: Allocator> Arena<A> {
    /// An arena whose chunks come from `backing`; no chunk until the first
    /// allocation.
    pub fn new_in(backing: A) -> Self {
        Self {
            ptr: Cell::new(ptr::null_mut()),
            start: Cell::new(ptr::without_provenance_mut(1)),
            chunk: Cell::new(ptr::null_mut()),
            next_size: Cell::new(FIRST_CHUNK),
            backing,
        }
    }

    /// An arena whose first chunk (asked for at the first allocation)
    /// holds at least `bytes`.
    pub fn with_capacity_in(bytes: usize, backing: A) -> Self {
        let arena = Self::new_in(backing);
        arena
            .next_size
            .set(bytes.saturating_add(HEADER).max(FIRST_CHUNK));
        arena
    }

    /// Allocates a block for `layout`; fails only when the backing
    /// allocator does.
    #[inline(always)]
    pub fn alloc_layout(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let ptr = self.ptr.get();
        let addr = ptr as usize;
        if let Some(low) = addr.checked_sub(layout.size()) {
            let low = low & !(layout.align() - 1);
            if low >= self.start.get() as usize {
                let p = ptr.wrapping_sub(addr - low);
                self.ptr.set(p);
                // SAFETY: `p >= start > 0`.
                return Ok(unsafe { NonNull::new_unchecked(p) });
            }
        }
        self.alloc_in_new_chunk(layout)
    }

    /// Moves `value` into the arena; gives it back if the backing allocator
    /// fails. It is never dropped.
    #[inline(always)]
    // Each call returns a new block, never one already handed out.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc<T>(&self, value: T) -> Result<&mut T, T> {
        match self.alloc_layout(Layout::new::<T>()) {
            Ok(p) => {
                let p = p.cast::<T>();
                // SAFETY: a fresh block for a `T`, handed out once.
                unsafe {
                    p.as_ptr().write(value);
                    Ok(&mut *p.as_ptr())
                }
            }
            Err(AllocError) => Err(value),
        }
    }

    /// The slow path: a new chunk big enough for `layout`, then the block.
    #[cold]
    #[inline(never)]
    fn alloc_in_new_chunk(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let need = layout
            .size()
            .checked_add(layout.align())
            .and_then(|n| n.checked_add(HEADER))
            .ok_or(AllocError)?;
        let size = self.next_size.get().max(need);
        let chunk_layout = Layout::from_size_align(size, CHUNK_ALIGN).map_err(|_| AllocError)?;
        let base = self.backing.allocate(chunk_layout)?.cast::<u8>().as_ptr();
        let chunk = base.cast::<Chunk>();
        // SAFETY: a fresh allocation of `size >= HEADER` bytes, aligned for
        // a `Chunk`.
        unsafe {
            chunk.write(Chunk {
                prev: self.chunk.get(),
                size,
            });
            self.start.set(base.add(HEADER));
            self.ptr.set(base.add(size));
        }
        self.chunk.set(chunk);
        self.next_size
            .set(size.saturating_mul(2).min(MAX_DOUBLING.max(size)));
        let ptr = self.ptr.get();
        let addr = ptr as usize;
        let low = (addr - layout.size()) & !(layout.align() - 1);
        debug_assert!(low >= self.start.get() as usize);
        // SAFETY: the chunk holds `size + align` bytes past its header, so
        // `low` is inside it and above `start`.
        Ok(unsafe {
            let p = ptr.sub(addr - low);
            self.ptr.set(p);
            NonNull::new_unchecked(p)
        })
    }

    /// Takes back everything allocated. Keeps the newest (largest) chunk for
    /// the next allocations and returns the others to the backing allocator.
    pub fn reset(&mut self) {
        let chunk = self.chunk.get();
        if chunk.is_null() {
            return;
        }
        // SAFETY: our chunks, each allocated from `backing` with its size;
        // `&mut self` means nothing allocated from the arena is alive.
        unsafe {
            let mut old = (*chunk).prev;
            (*chunk).prev = ptr::null_mut();
            while !old.is_null() {
                let prev = (*old).prev;
                self.free_chunk(old);
                old = prev;
            }
            self.ptr.set(chunk.cast::<u8>().add((*chunk).size));
        }
    }

    /// Bytes of chunk space the arena holds (headers included).
    pub fn allocated_bytes(&self) -> usize {
        let mut total = 0;
        let mut c = self.chunk.get();
        while !c.is_null() {
            // SAFETY: walking our chunk list.
            unsafe {
                total += (*c).size;
                c = (*c).prev;
            }
        }
        total
    }

    /// How many chunks the arena holds.
    pub fn chunk_count(&self) -> usize {
        let mut n = 0;
        let mut c = self.chunk.get();
        while !c.is_null() {
            n += 1;
            // SAFETY: walking our chunk list.
            c = unsafe { (*c).prev };
        }
        n
    }

    /// Returns one chunk to the backing allocator.
    ///
    /// # Safety
    /// `c` is a chunk of ours, off the list, with nothing alive in it.
    unsafe fn free_chunk(&self, c: *mut Chunk) {
        // SAFETY: allocated from `backing` with this layout (the caller's
        // promise that it is ours).
        unsafe {
            let layout = Layout::from_size_align_unchecked((*c).size, CHUNK_ALIGN);
            self.backing
                .deallocate(NonNull::new_unchecked(c.cast()), layout);
        }
    }
}

impl<A: Allocator> Drop for Arena<A> {
    fn drop(&mut self) {
        let mut c = self.chunk.get();
        while !c.is_null() {
            // SAFETY: our chunks; dropping the arena ends every borrow.
            unsafe {
                let prev = (*c).prev;
                self.free_chunk(c);
                c = prev;
            }
        }
    }
}

// SAFETY: blocks are carved from chunks the arena keeps until `reset` (which
// needs `&mut self`, so no `&Arena` allocator is in use) or drop; each block
// is handed out once and is as large and aligned as asked.
unsafe impl<A: Allocator> Allocator for Arena<A> {
    #[inline(always)]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = self.alloc_layout(layout)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    /// Takes the block back only if it is the most recent one.
    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if ptr.as_ptr() == self.ptr.get() {
            // SAFETY: the block `ptr..ptr + size` lies in the current chunk.
            self.ptr.set(unsafe { ptr.as_ptr().add(layout.size()) });
        }
    }

    /// The most recent block grows in place (moved down within its chunk);
    /// any other is copied to a new block.
    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let p = ptr.as_ptr();
        if p == self.ptr.get() {
            let end = p as usize + old.size();
            if let Some(low) = end.checked_sub(new.size()) {
                let low = low & !(new.align() - 1);
                if low >= self.start.get() as usize {
                    let q = p.wrapping_sub(p as usize - low);
                    // SAFETY: `q..q + new.size()` lies between `start` and the
                    // end of the old block, in the current chunk, all of it
                    // free or the old block, which moves down (overlapping).
                    unsafe { ptr::copy(p, q, old.size()) };
                    self.ptr.set(q);
                    // SAFETY: `q >= start > 0`.
                    let q = unsafe { NonNull::new_unchecked(q) };
                    return Ok(NonNull::slice_from_raw_parts(q, new.size()));
                }
            }
        }
        let q = self.alloc_layout(new)?;
        // SAFETY: distinct blocks (`q` is new), each at least `old.size()`.
        unsafe { ptr::copy_nonoverlapping(p, q.as_ptr(), old.size()) };
        Ok(NonNull::slice_from_raw_parts(q, new.size()))
    }

    /// Stays in place when the alignment allows.
    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if ptr.as_ptr() as usize % new.align() == 0 {
            return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
        }
        let q = self.alloc_layout(new)?;
        // SAFETY: distinct blocks, `new.size() <= old.size()` bytes copied.
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), q.as_ptr(), new.size().min(old.size())) };
        Ok(NonNull::slice_from_raw_parts(q, new.size()))
    }
}
