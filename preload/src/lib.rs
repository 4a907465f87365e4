//! heapkeep as the C heap: the malloc family and the C++ `operator new` /
//! `operator delete` family, exported from `libheapkeep_preload.so` so that
//! any program runs on heapkeep with `LD_PRELOAD`.
//!
//! Every entry point is a thin shim over `heapkeep::raw`, with the semantics
//! glibc programs rely on: `errno = ENOMEM` on failure, `EINVAL` for a bad
//! alignment, `calloc` overflow returns null, `malloc(0)` returns a unique
//! pointer, `realloc(NULL, n)` is `malloc(n)`, `realloc(p, 0)` frees `p` and
//! returns null (as glibc does), `free(NULL)` does nothing, and
//! `malloc_usable_size` reports exactly the writable size.
//!
//! No Rust panic can cross these functions: the heap never panics, and a
//! panic reaching an `extern "C"` function aborts the process.
//!
//! It also wraps `pthread_create` (`threads.rs`), so check mode sets each
//! new thread up before the thread's own code runs.
//!
//! Throwing `operator new` cannot throw `std::bad_alloc` from here; on
//! out-of-memory it prints a message and aborts (the nothrow forms return
//! null).
#![deny(unsafe_op_in_unsafe_fn)]

use core::ffi::{c_int, c_void};
use heapkeep::raw;

mod report;
mod threads;
pub use report::{
    heapkeep_class_stats, heapkeep_stats, heapkeep_thread_stats, heapkeep_version,
    heapkeep_write_snapshot,
};

/// Alignment of every `malloc` block, as glibc gives (`alignof(max_align_t)`).
const MIN_ALIGN: usize = 16;
/// Page size assumed by `valloc`/`pvalloc`.
const PAGE: usize = 4096;

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// `alloc` with C error reporting: heapkeep sets `errno` to `ENOMEM` itself
/// when it returns null, so this is the fast path and a tail call.
#[inline(always)]
fn alloc_or_enomem(size: usize, align: usize, zero: bool) -> *mut c_void {
    raw::alloc(size, align.max(MIN_ALIGN), zero).cast()
}

/// C `malloc`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    alloc_or_enomem(size, MIN_ALIGN, false)
}

/// C `calloc`: null with `ENOMEM` when `n * size` overflows.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => alloc_or_enomem(total, MIN_ALIGN, true),
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// C `free`.
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded from the caller.
    unsafe { raw::free(p.cast()) }
}

/// C `realloc`, glibc style: `realloc(NULL, n)` allocates, `realloc(p, 0)`
/// frees and returns null.
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: forwarded from the caller.
        unsafe { free(p) };
        return core::ptr::null_mut();
    }
    // SAFETY: `p` is a live block allocated with `MIN_ALIGN` or more.
    let q = unsafe { raw::realloc(p.cast(), MIN_ALIGN, size) };
    if q.is_null() {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

/// C `reallocarray`: `realloc(p, n * size)` with overflow checking.
///
/// # Safety
/// As for [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded from the caller.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// POSIX `posix_memalign`: `EINVAL` unless `align` is a power of two and a
/// multiple of `sizeof(void *)`; `ENOMEM` when out of memory. Leaves `errno`.
///
/// # Safety
/// `out` is valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let p = raw::alloc(size, align.max(MIN_ALIGN), false);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a writable slot.
    unsafe { *out = p.cast() };
    0
}

/// C11 `aligned_alloc`: `EINVAL` unless `align` is a power of two.
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    alloc_or_enomem(size, align, false)
}

/// `memalign`, glibc style: an alignment that is not a power of two is
/// rounded up to one; one too large to round is `EINVAL`.
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(a) => alloc_or_enomem(size, a, false),
        None => {
            set_errno(libc::EINVAL);
            core::ptr::null_mut()
        }
    }
}

/// `valloc`: page-aligned.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc_or_enomem(size, PAGE, false)
}

/// `pvalloc`: page-aligned, size rounded up to whole pages.
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(PAGE) {
        Some(s) => alloc_or_enomem(s, PAGE, false),
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `malloc_usable_size`: the exact writable size of a block; 0 for null.
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: forwarded from the caller.
    unsafe { heapkeep::usable_size(p.cast()) }
}

/// C23 `free_sized`.
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { free(p) }
}

/// C23 `free_aligned_sized`.
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { free(p) }
}

// ---------------------------------------------------------------------------
// C++ operator new / delete (Itanium ABI names)

/// Throwing `operator new`: aborts with a message when out of memory.
fn new_or_abort(size: usize, align: usize) -> *mut c_void {
    let p = raw::alloc(size, align.max(MIN_ALIGN), false);
    if p.is_null() {
        let msg = b"heapkeep: out of memory in operator new\n";
        // SAFETY: writes a static message; abort has no preconditions.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }
    p.cast()
}

/// Throwing `operator new(size_t)`.
#[no_mangle]
pub extern "C" fn _Znwm(size: usize) -> *mut c_void {
    new_or_abort(size, MIN_ALIGN)
}

/// Throwing `operator new[](size_t)`.
#[no_mangle]
pub extern "C" fn _Znam(size: usize) -> *mut c_void {
    new_or_abort(size, MIN_ALIGN)
}

/// `operator new(size_t, const nothrow_t&)`.
#[no_mangle]
pub extern "C" fn _ZnwmRKSt9nothrow_t(size: usize, _nt: *const c_void) -> *mut c_void {
    malloc(size)
}

/// `operator new[](size_t, const nothrow_t&)`.
#[no_mangle]
pub extern "C" fn _ZnamRKSt9nothrow_t(size: usize, _nt: *const c_void) -> *mut c_void {
    malloc(size)
}

/// `operator new(size_t, align_val_t)`.
#[no_mangle]
pub extern "C" fn _ZnwmSt11align_val_t(size: usize, align: usize) -> *mut c_void {
    new_or_abort(size, align)
}

/// `operator new[](size_t, align_val_t)`.
#[no_mangle]
pub extern "C" fn _ZnamSt11align_val_t(size: usize, align: usize) -> *mut c_void {
    new_or_abort(size, align)
}

/// `operator new(size_t, align_val_t, const nothrow_t&)`.
#[no_mangle]
pub extern "C" fn _ZnwmSt11align_val_tRKSt9nothrow_t(
    size: usize,
    align: usize,
    _nt: *const c_void,
) -> *mut c_void {
    aligned_alloc(align, size)
}

/// `operator new[](size_t, align_val_t, const nothrow_t&)`.
#[no_mangle]
pub extern "C" fn _ZnamSt11align_val_tRKSt9nothrow_t(
    size: usize,
    align: usize,
    _nt: *const c_void,
) -> *mut c_void {
    aligned_alloc(align, size)
}

/// Declares C++ deallocation functions, all of which free their first argument.
macro_rules! cxx_delete {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[doc = concat!("C++ `", stringify!($name), "` (operator delete family).")]
        ///
        /// # Safety
        /// `p` is null or a live block from this library.
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *mut c_void, $(_: $ty),*) {
            // SAFETY: forwarded from the caller.
            unsafe { free(p) }
        }
    )*};
}

cxx_delete! {
    _ZdlPv();
    _ZdaPv();
    _ZdlPvm(size: usize);
    _ZdaPvm(size: usize);
    _ZdlPvSt11align_val_t(align: usize);
    _ZdaPvSt11align_val_t(align: usize);
    _ZdlPvmSt11align_val_t(size: usize, align: usize);
    _ZdaPvmSt11align_val_t(size: usize, align: usize);
    _ZdlPvRKSt9nothrow_t(nt: *const c_void);
    _ZdaPvRKSt9nothrow_t(nt: *const c_void);
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: usize, nt: *const c_void);
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: usize, nt: *const c_void);
}
