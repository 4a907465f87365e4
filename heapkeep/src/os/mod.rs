//! The OS layer: the only module that talks to the kernel.
//!
//! Everything above asks this layer for address space and gives it back; nothing
//! above calls `libc` for memory. A new platform is one new file beside
//! `linux.rs` implementing the same functions.
//!
//! ## Contract (what every platform file provides)
//! - `map_aligned(size, align)`: a fresh read-write mapping of `size` bytes whose
//!   address is a multiple of `align` (a power of two ≥ the OS page size). The
//!   memory reads as zero and is not resident until touched. Null on failure,
//!   also when the mapping would pass the memory cap ([`reserve`]).
//! - `unmap(ptr, size)`: returns a range previously obtained from this layer
//!   (or a page-aligned sub-range of one) to the OS.
//! - `purge(ptr, size)`: the range stays mapped but its contents are dropped:
//!   it stops counting as resident and reads as zero the next time it is touched.
//! - `remap_in_place(ptr, old, new)`: grow or shrink a mapping without moving it;
//!   false when the neighbouring address space is taken.
//! - `remap_aligned(ptr, old, new, align)`: move a mapping to a new `align`-aligned
//!   address without copying its pages; null on failure (the old mapping is intact).
//! - `count_resident(ptr, len, piece, out)`: how many bytes of each `piece` of
//!   a range of ours are resident now (the heap walk's resident figures).
//! - `lowest_resident(ptr, len)`, `no_huge_pages(lo, hi)`, `on_signal_stack()`,
//!   `main_stack_limit()`: what `stacks.rs` needs to measure a thread's stack
//!   depth; `maps.rs` reads `/proc/self/maps`.
//! - `read_head(path, buf)`: the first bytes of a small file (`/proc` files,
//!   our own snapshot headers) in one read.
//! - `now_ms()`: a cheap monotonic clock in milliseconds (coarse is fine);
//!   `now_us()` and `coarse_now_us()`, microseconds of the fine and of the
//!   coarse clock; `ticks(tsc)`, the time-stamp counter where it is steady.
//! - `random_u64()`: a secret from the kernel's random source.
//! - thread-exit and fork hooks; `write_fd` for messages and files without allocating;
//!   `set_errno_nomem()` for a failed allocation.
//!
//! No function here allocates from the heap, so the heap can call any of them
//! at any time, including during its own initialisation.

use core::sync::atomic::{AtomicUsize, Ordering};

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) mod maps;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

/// Bytes currently mapped from the OS by heapkeep (all mappings, resident or not).
static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// The highest value `MAPPED` has reached.
static MAPPED_PEAK: AtomicUsize = AtomicUsize::new(0);

/// The most bytes `MAPPED` may reach (the memory cap; `usize::MAX`: none).
/// Every mapping reserves its size against it first ([`reserve`]).
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Sets the memory cap: at most `bytes` mapped from the OS (0: no cap).
/// Mappings already made stay; only new ones are refused.
pub(crate) fn set_cap(bytes: usize) {
    let cap = if bytes == 0 { usize::MAX } else { bytes };
    CAP.store(cap, Ordering::Relaxed);
}

/// The memory cap in bytes (0: none).
pub(crate) fn cap() -> usize {
    match CAP.load(Ordering::Relaxed) {
        usize::MAX => 0,
        c => c,
    }
}

/// Counts `size` more bytes mapped, unless that would pass the memory cap:
/// then nothing changes and the answer is false. A caller whose mapping then
/// fails gives the bytes back with [`note_unmapped`].
#[must_use]
pub(crate) fn reserve(size: usize) -> bool {
    let cap = CAP.load(Ordering::Relaxed);
    let mut now = MAPPED.load(Ordering::Relaxed);
    loop {
        let Some(next) = now.checked_add(size).filter(|&n| n <= cap) else {
            return false;
        };
        match MAPPED.compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                MAPPED_PEAK.fetch_max(next, Ordering::Relaxed);
                return true;
            }
            Err(seen) => now = seen,
        }
    }
}

/// Records `size` bytes given back.
#[inline]
pub(crate) fn note_unmapped(size: usize) {
    MAPPED.fetch_sub(size, Ordering::Relaxed);
}

/// Bytes currently mapped from the OS.
pub(crate) fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// The peak of [`mapped_bytes`] since the process started.
pub(crate) fn mapped_peak_bytes() -> usize {
    MAPPED_PEAK.load(Ordering::Relaxed)
}

/// Size of an OS page; heapkeep assumes 4 KiB pages at most for its layout
/// arithmetic and checks the real value at start-up.
pub(crate) const PAGE_SIZE: usize = 4096;
