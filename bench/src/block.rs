//! A raw heap block obtained straight from the global allocator.
//!
//! [`Block`] is the object most workloads allocate: `size` bytes with 8-byte
//! alignment from `std::alloc::alloc` (which goes to whatever
//! `#[global_allocator]` the worker binary installed), with the first and the
//! last byte written so that the memory is really touched, and returned with
//! `dealloc` on drop. It is `Send`, so blocks can be freed by another thread
//! than the one that allocated them.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Page granularity used when touching large blocks.
pub const PAGE: usize = 4096;

/// An owned, initialised-at-the-ends heap block.
pub struct Block {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: a Block exclusively owns its memory; nothing about it is tied to
// the allocating thread (freeing from another thread is what we benchmark).
unsafe impl Send for Block {}

impl Block {
    const ALIGN: usize = 8;

    /// Allocates `size` bytes (`size >= 1`) and writes `tag` into the first
    /// and last byte.
    #[inline]
    pub fn new(size: usize, tag: u8) -> Block {
        let size = size.max(1);
        let layout = Self::layout(size);
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        // SAFETY: both offsets are within the `size` bytes just allocated.
        unsafe {
            ptr.as_ptr().write(tag);
            ptr.as_ptr().add(size - 1).write(tag);
        }
        Block { ptr, size }
    }

    /// Allocates `size` bytes and writes `tag` into one byte of every page
    /// (plus the last byte), forcing the memory to become resident.
    pub fn new_touched(size: usize, tag: u8) -> Block {
        let mut b = Block::new(size, tag);
        b.touch_pages(tag);
        b
    }

    #[inline]
    fn layout(size: usize) -> Layout {
        match Layout::from_size_align(size, Self::ALIGN) {
            Ok(l) => l,
            Err(_) => panic!("bad block size {size}"),
        }
    }

    /// Size in bytes.
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Address of the first byte (for reporting, never dereferenced).
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Reads the first byte (always initialised).
    #[inline]
    pub fn first(&self) -> u8 {
        // SAFETY: the first byte is written in `new`.
        unsafe { self.ptr.as_ptr().read() }
    }

    /// Reads the last byte (always initialised).
    #[inline]
    pub fn last(&self) -> u8 {
        // SAFETY: the last byte is written in `new`.
        unsafe { self.ptr.as_ptr().add(self.size - 1).read() }
    }

    /// Writes `v` at byte `i` (`i < size`) with a volatile store, so that
    /// repeated writes are all performed (used to provoke false sharing).
    #[inline]
    pub fn write_volatile(&mut self, i: usize, v: u8) {
        assert!(i < self.size, "offset {i} out of block of {}", self.size);
        // SAFETY: i < size.
        unsafe { self.ptr.as_ptr().add(i).write_volatile(v) }
    }

    /// Reads byte `i` (`i < size`) with a volatile load. Only meaningful for
    /// bytes written before (first/last byte or via `write_volatile`).
    #[inline]
    pub fn read_volatile(&self, i: usize) -> u8 {
        assert!(i < self.size, "offset {i} out of block of {}", self.size);
        // SAFETY: i < size; the byte was initialised by the caller.
        unsafe { self.ptr.as_ptr().add(i).read_volatile() }
    }

    /// Writes `tag` into one byte of each 4 KiB page and into the last byte.
    pub fn touch_pages(&mut self, tag: u8) {
        let p = self.ptr.as_ptr();
        let mut off = 0;
        while off < self.size {
            // SAFETY: off < size.
            unsafe { p.add(off).write_volatile(tag) };
            off += PAGE;
        }
        // SAFETY: last byte is in bounds.
        unsafe { p.add(self.size - 1).write_volatile(tag) };
    }
}

impl Drop for Block {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: ptr was allocated in `new` with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.size)) }
    }
}
