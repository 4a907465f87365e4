//! Linux implementation of the OS layer contract (see `os/mod.rs`).
//!
//! Uses `mmap`/`munmap`/`madvise`/`mremap` through the `libc` crate. All
//! functions are safe to call from any thread at any time and never allocate.

use super::{note_unmapped, reserve, PAGE_SIZE};
use core::ptr;

/// Maps `size` bytes (a multiple of the page size) aligned to `align`.
/// Returns null when the kernel refuses.
pub(crate) fn map_aligned(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE);
    debug_assert!(size % PAGE_SIZE == 0 && size > 0);
    if !reserve(size) {
        return ptr::null_mut();
    }
    let p = map_aligned_raw(size, align);
    if p.is_null() {
        note_unmapped(size);
    }
    p
}

/// [`map_aligned`] without the accounting.
fn map_aligned_raw(size: usize, align: usize) -> *mut u8 {
    // First try the exact size: the kernel often hands out aligned addresses
    // for large requests, and then there is nothing to trim.
    let p = raw_map(size);
    if p.is_null() {
        return ptr::null_mut();
    }
    if (p as usize) & (align - 1) == 0 {
        return p;
    }
    // SAFETY: `p` is a mapping of `size` bytes we just made and nobody else knows.
    unsafe { raw_unmap(p, size) };
    // Over-map by `align` and trim both ends to the aligned window.
    let Some(total) = size.checked_add(align) else {
        return ptr::null_mut();
    };
    let p = raw_map(total);
    if p.is_null() {
        return ptr::null_mut();
    }
    let start = (p as usize + align - 1) & !(align - 1);
    // SAFETY: `[p, p + total)` is our fresh mapping and the window lies inside it.
    unsafe { trim_to_window(p, total, start, size) };
    start as *mut u8
}

/// Unmaps the parts of the fresh mapping `[r, r + total)` outside the window
/// `[keep, keep + size)`.
///
/// # Safety
/// The mapping is ours and unused; the window lies inside it.
unsafe fn trim_to_window(r: *mut u8, total: usize, keep: usize, size: usize) {
    let head = keep - r as usize;
    let tail = total - head - size;
    // SAFETY: both ranges lie inside the caller's mapping, outside the window.
    unsafe {
        if head > 0 {
            raw_unmap(r, head);
        }
        if tail > 0 {
            raw_unmap((keep + size) as *mut u8, tail);
        }
    }
}

fn raw_map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at a kernel-chosen address touches
    // no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// # Safety
/// `[p, p + size)` must be mapped by this layer and unused by anyone.
unsafe fn raw_unmap(p: *mut u8, size: usize) {
    // SAFETY: the caller owns the range. munmap of a valid range cannot fail
    // except for bad arguments, which the debug assertion catches.
    let rc = unsafe { libc::munmap(p.cast(), size) };
    debug_assert_eq!(rc, 0, "munmap failed");
}

/// Returns `[p, p + size)` to the OS.
///
/// # Safety
/// The range was obtained from this layer and nothing uses it any more.
pub(crate) unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { raw_unmap(p, size) };
    note_unmapped(size);
}

/// Drops the contents of `[p, p + size)`: not resident, reads as zero after.
///
/// # Safety
/// The range lies in a mapping of this layer and holds no live data.
pub(crate) unsafe fn purge(p: *mut u8, size: usize) {
    debug_assert!(p as usize % PAGE_SIZE == 0 && size % PAGE_SIZE == 0);
    // SAFETY: MADV_DONTNEED on private anonymous memory we own only discards
    // contents the caller says are dead.
    unsafe { libc::madvise(p.cast(), size, libc::MADV_DONTNEED) };
}

/// Grows or shrinks a mapping without moving it.
///
/// # Safety
/// `[p, p + old)` is a whole mapping of this layer.
pub(crate) unsafe fn remap_in_place(p: *mut u8, old: usize, new: usize) -> bool {
    if !reserve_growth(old, new) {
        return false;
    }
    // SAFETY: without MREMAP_MAYMOVE the kernel either resizes in place or fails.
    let q = unsafe { libc::mremap(p.cast(), old, new, 0) };
    settle_resize(old, new, q != libc::MAP_FAILED)
}

/// Moves a mapping to a fresh `align`-aligned address of size `new`, keeping
/// its pages (no copy). Returns null on failure; the old mapping is then intact.
///
/// # Safety
/// `[p, p + old)` is a whole mapping of this layer; on success it is gone.
pub(crate) unsafe fn remap_aligned(p: *mut u8, old: usize, new: usize, align: usize) -> *mut u8 {
    if !reserve_growth(old, new) {
        return ptr::null_mut();
    }
    // SAFETY: forwarded from the caller.
    let q = unsafe { remap_aligned_raw(p, old, new, align) };
    settle_resize(old, new, !q.is_null());
    q
}

/// Before a mapping is resized from `old` to `new` bytes: reserves the
/// growth against the memory cap (false: refused, nothing counted).
fn reserve_growth(old: usize, new: usize) -> bool {
    new <= old || reserve(new - old)
}

/// After a resize from `old` to `new` bytes that succeeded (`done`) or not:
/// counts the bytes a shrink gave back, or returns a failed growth's
/// reservation. Returns `done`.
fn settle_resize(old: usize, new: usize, done: bool) -> bool {
    if done && new < old {
        note_unmapped(old - new);
    } else if !done && new > old {
        note_unmapped(new - old);
    }
    done
}

/// [`remap_aligned`] without the accounting.
///
/// # Safety
/// As for [`remap_aligned`].
unsafe fn remap_aligned_raw(p: *mut u8, old: usize, new: usize, align: usize) -> *mut u8 {
    // Reserve an aligned window first, then move the pages onto it.
    let Some(total) = new.checked_add(align) else {
        return ptr::null_mut();
    };
    let r = raw_map(total);
    if r.is_null() {
        return ptr::null_mut();
    }
    let dest = (r as usize + align - 1) & !(align - 1);
    // SAFETY: `dest..dest+new` lies inside our reservation `r`, which MREMAP_FIXED
    // replaces; `p` is the caller's mapping.
    let q = unsafe {
        libc::mremap(
            p.cast(),
            old,
            new,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dest as *mut libc::c_void,
        )
    };
    // SAFETY: the reservation is ours; `dest..dest+new` lies inside it.
    unsafe { trim_to_window(r, total, dest, new) };
    if q == libc::MAP_FAILED {
        // SAFETY: the aligned window still belongs to our reservation.
        unsafe { raw_unmap(dest as *mut u8, new) };
        return ptr::null_mut();
    }
    q.cast()
}

/// The program's path (`/proc/self/exe`) written into `buf`; its length
/// (0 if it cannot be read; cut to `buf.len() - 1` bytes).
pub(crate) fn exe_path(buf: &mut [u8]) -> usize {
    // SAFETY: readlink writes at most `len - 1` bytes into our buffer.
    let n = unsafe {
        libc::readlink(
            c"/proc/self/exe".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len().saturating_sub(1),
        )
    };
    n.max(0) as usize
}

/// The calling thread's kernel id.
pub(crate) fn thread_id() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Milliseconds from a coarse monotonic clock (vDSO, no system call).
pub(crate) fn now_ms() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE) / 1_000_000
}

/// Nanoseconds from the clock `id` (vDSO, no system call).
fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A 64-bit secret from the kernel (falls back to address and time entropy).
pub(crate) fn random_u64() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: writes at most 8 bytes into `v`.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, libc::GRND_NONBLOCK) };
    if n != 8 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        v = (ts.tv_nsec as u64) ^ ((&v as *const u64 as u64) << 17) ^ 0x9e37_79b9_7f4a_7c15;
    }
    v | 1
}

/// Sets the calling thread's `errno` to `ENOMEM` (a failed allocation).
pub(crate) fn set_errno_nomem() {
    // SAFETY: `__errno_location` returns this thread's errno slot.
    unsafe { *libc::__errno_location() = libc::ENOMEM };
}

/// Writes all of `bytes` to the file descriptor `fd` (gives up on an error).
pub(crate) fn write_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a valid slice to a descriptor the caller owns.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Microseconds from the monotonic clock (vDSO, no system call).
pub(crate) fn now_us() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) / 1000
}

/// Microseconds from the coarse monotonic clock: the kernel's last tick
/// (1-4 ms steps), read from the vDSO's data page (no system call, no
/// time-stamp counter read).
pub(crate) fn coarse_now_us() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE) / 1000
}

/// Whether [`ticks`] reads the CPU's time-stamp counter: an x86_64 CPU
/// whose counter runs at one rate in every power state ("invariant TSC",
/// CPUID 0x8000_0007 EDX bit 8; Linux's `nonstop_tsc`). Asked once.
pub(crate) fn ticks_are_tsc() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::__cpuid;
        // The extended leaf is read only when the highest one reaches it.
        __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A cheap monotonic count for timing intervals: the time-stamp counter
/// when `tsc` (what [`ticks_are_tsc`] said), else microseconds of the
/// monotonic clock. A reader converts tick intervals to time with the rate
/// seen between two readings of both clocks.
#[inline]
pub(crate) fn ticks(tsc: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if tsc {
        // SAFETY: RDTSC exists on every x86_64 CPU and has no preconditions.
        return unsafe { core::arch::x86_64::_rdtsc() };
    }
    let _ = tsc;
    now_us()
}

/// Registers `dtor` to run with a thread's value when that thread exits.
/// Returns the key to pass to [`set_thread_value`], or `None`.
pub(crate) fn create_thread_exit_key(dtor: unsafe extern "C" fn(*mut libc::c_void)) -> Option<u32> {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; glibc does not allocate here.
    let rc = unsafe { libc::pthread_key_create(&mut key, Some(dtor)) };
    (rc == 0).then_some(key)
}

/// Sets this thread's value for `key`; the destructor runs at exit if non-null.
pub(crate) fn set_thread_value(key: u32, value: *mut u8) {
    // SAFETY: `key` came from `create_thread_exit_key`.
    unsafe { libc::pthread_setspecific(key, value.cast()) };
}

/// Installs fork handlers. They run around `fork()` in the forking thread.
pub(crate) fn register_fork_handlers(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) {
    // SAFETY: registering plain function pointers.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Yields the processor to another thread (used by spin locks under contention).
pub(crate) fn yield_now() {
    // SAFETY: no preconditions.
    unsafe { libc::sched_yield() };
}

/// Checks the platform assumptions the layout arithmetic relies on.
pub(crate) fn page_size_ok() -> bool {
    // SAFETY: no preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    ps > 0 && (ps as usize) <= PAGE_SIZE * 16 && (ps as usize).is_power_of_two()
}

/// The value of environment variable `name` (NUL-terminated), without
/// allocating; `None` when unset.
pub(crate) fn getenv(name: &[u8]) -> Option<&'static [u8]> {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: `name` is NUL-terminated; getenv reads the environment block,
    // which lives for the whole process (heapkeep never calls setenv).
    unsafe {
        let v = libc::getenv(name.as_ptr().cast());
        if v.is_null() {
            None
        } else {
            Some(core::ffi::CStr::from_ptr(v).to_bytes())
        }
    }
}

/// Makes `[p, p + len)` (page-aligned, inside a mapping of ours)
/// read-write (`access`) or inaccessible.
///
/// # Safety
/// The range belongs to a mapping from this layer, and nothing of
/// heapkeep's own lives in it when it is made inaccessible.
pub(crate) unsafe fn protect(p: *mut u8, len: usize, access: bool) {
    let prot = if access {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // SAFETY: forwarded from the caller.
    unsafe { libc::mprotect(p.cast(), len, prot) };
}

/// The OS page size (read once; `sysconf` does not allocate).
fn os_page_size() -> usize {
    static SIZE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    let s = SIZE.load(core::sync::atomic::Ordering::Relaxed);
    if s != 0 {
        return s;
    }
    // SAFETY: no preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let ps = if ps > 0 { ps as usize } else { PAGE_SIZE };
    SIZE.store(ps, core::sync::atomic::Ordering::Relaxed);
    ps
}

/// Calls `f(offset)` for each resident page of `[p, p + len)` (`p`
/// page-aligned), in address order, until `f` says stop (false). One
/// `mincore` call per 1024 pages, into a stack buffer. False when part of
/// the range is not mapped (the pages before it were seen).
fn each_resident_page(p: *const u8, len: usize, mut f: impl FnMut(usize) -> bool) -> bool {
    const WINDOW: usize = 1024;
    let ps = os_page_size();
    debug_assert!(p as usize % ps == 0);
    let mut vec = [0u8; WINDOW];
    let mut off = 0;
    while off < len {
        let n = (len - off).div_ceil(ps).min(WINDOW);
        // SAFETY: `mincore` only reads the page tables of the range and
        // writes one byte per page into `vec`, which has room for `n`; an
        // unmapped range makes it fail (ENOMEM), it never faults.
        let rc = unsafe {
            libc::mincore(
                p.wrapping_add(off) as *mut libc::c_void,
                (n * ps).min(len - off),
                vec.as_mut_ptr().cast(),
            )
        };
        if rc != 0 {
            return false;
        }
        for (i, v) in vec[..n].iter().enumerate() {
            if v & 1 != 0 && !f(off + i * ps) {
                return true;
            }
        }
        off += n * ps;
    }
    true
}

/// Counts the resident bytes of `[p, p + len)` (`p` page-aligned) piece by
/// piece: `out[i]` gains the resident bytes of the `i`-th run of `piece`
/// bytes (`piece` a multiple of the page size). False when part of the
/// range is not mapped (the counts are then partial).
pub(crate) fn count_resident(p: *const u8, len: usize, piece: usize, out: &mut [usize]) -> bool {
    let ps = os_page_size();
    debug_assert!(piece % ps == 0 && piece > 0);
    each_resident_page(p, len, |off| {
        if let Some(slot) = out.get_mut(off / piece) {
            *slot += ps;
        }
        true
    })
}

/// The offset of the lowest resident page of `[p, p + len)` (`p`
/// page-aligned): `None` when no page is resident or part of the range is
/// not mapped.
pub(crate) fn lowest_resident(p: *const u8, len: usize) -> Option<usize> {
    let mut lowest = None;
    let mapped = each_resident_page(p, len, |off| {
        lowest = Some(off);
        false
    });
    lowest.filter(|_| mapped)
}

/// Asks the kernel never to back `[lo, hi)` (a thread's stack) with huge
/// pages, so that its resident pages are the ones it touched (`stacks.rs`).
pub(crate) fn no_huge_pages(lo: usize, hi: usize) {
    // SAFETY: MADV_NOHUGEPAGE only changes how future faults of the range
    // are served; its contents stay as they are.
    unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_NOHUGEPAGE) };
}

/// Asks the kernel to back `[p, p + len)` with huge pages where it can: a
/// big table read at random spends less on address translation.
pub(crate) fn want_huge_pages(p: *mut u8, len: usize) {
    // SAFETY: MADV_HUGEPAGE only changes how faults of the range are
    // served; its contents stay as they are.
    unsafe { libc::madvise(p.cast(), len, libc::MADV_HUGEPAGE) };
}

/// Whether the calling thread runs on its alternate signal stack now.
pub(crate) fn on_signal_stack() -> bool {
    // SAFETY: stack_t is plain data (a pointer, an int, a size): all zero
    // is a valid value.
    let mut old: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: with a null new stack, sigaltstack only fills `old`.
    let rc = unsafe { libc::sigaltstack(core::ptr::null(), &mut old) };
    rc == 0 && old.ss_flags & libc::SS_ONSTACK != 0
}

/// The main thread's stack limit (`RLIMIT_STACK`'s soft value), or `None`
/// when unlimited.
pub(crate) fn main_stack_limit() -> Option<usize> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur as usize)
}

/// The first bytes of the file at `path` (one `read`, at most
/// `buf.len()`) into `buf`; their count, or `None` when the file cannot be
/// opened. Small `/proc` files (a command line, a thread's name) and our
/// own snapshot headers.
pub(crate) fn read_head(path: &core::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: plain system calls on a NUL-terminated path, our own
    // descriptor and buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        Some(n.max(0) as usize)
    }
}
