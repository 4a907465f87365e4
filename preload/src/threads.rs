//! `pthread_create`, wrapped: in check mode each new thread is set up
//! (`heapkeep::raw::thread_started`: its alternate signal stack) before its
//! start routine runs, so a thread that overflows its stack before its
//! first heap call gets a stack-overflow report instead of dying of a bare
//! SIGSEGV (the kernel cannot run a handler on an exhausted stack). In fast
//! mode the call goes straight to the C library's `pthread_create`.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};

use heapkeep::raw;

type Start = extern "C" fn(*mut c_void) -> *mut c_void;
type Create = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    Start,
    *mut c_void,
) -> c_int;

/// Threads with a smaller stack are not wrapped: check mode's calls need
/// tens of KiB of stack (a tiny-stack thread, such as some of node's, would
/// overflow in the wrapper's own bookkeeping); they are set up at their
/// first heap call, as without the wrapper.
const MIN_WRAPPED_STACK: usize = 256 << 10;

/// The C library's `pthread_create` (0: not looked up yet).
static REAL: AtomicUsize = AtomicUsize::new(0);

/// The next `pthread_create` after this library's, or `None`.
fn real() -> Option<Create> {
    let mut f = REAL.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: a NUL-terminated name; RTLD_NEXT searches the objects
        // loaded after this one (the C library).
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"pthread_create".as_ptr()) } as usize;
        REAL.store(f, Ordering::Release);
    }
    // SAFETY: a non-null `pthread_create` has this signature (POSIX).
    (f != 0).then(|| unsafe { core::mem::transmute::<usize, Create>(f) })
}

/// What the new thread runs: its start routine and argument.
#[repr(C)]
struct Job {
    start: Start,
    arg: *mut c_void,
}

extern "C" fn run(job: *mut c_void) -> *mut c_void {
    raw::thread_started();
    // SAFETY: `job` is the live block `pthread_create` filled in and handed
    // to this thread alone; it is read once and freed.
    let Job { start, arg } = unsafe { job.cast::<Job>().read() };
    // SAFETY: as above: ours, from this library's malloc.
    unsafe { raw::free(job.cast()) };
    start(arg)
}

/// The stack size a thread created with `attr` gets (`usize::MAX` for the
/// default, which follows the stack limit: megabytes).
///
/// # Safety
/// `attr` is null or an initialized attribute object.
unsafe fn stack_size(attr: *const libc::pthread_attr_t) -> usize {
    if attr.is_null() {
        return usize::MAX;
    }
    let mut size = 0;
    // SAFETY: an initialized attribute object (caller); `size` is writable.
    if unsafe { libc::pthread_attr_getstacksize(attr, &mut size) } != 0 {
        return 0;
    }
    size
}

/// POSIX `pthread_create`.
///
/// # Safety
/// As for the C library's: `thread` is writable, `attr` null or an
/// initialized attribute object, `start` a thread start routine.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: Start,
    arg: *mut c_void,
) -> c_int {
    let Some(create) = real() else {
        return libc::EAGAIN;
    };
    // SAFETY: `attr` is null or initialized (caller).
    if raw::wants_thread_started() && unsafe { stack_size(attr) } >= MIN_WRAPPED_STACK {
        let job = raw::alloc(core::mem::size_of::<Job>(), 16, false).cast::<Job>();
        if !job.is_null() {
            // SAFETY: `job` is a fresh block of a `Job`'s size and alignment.
            unsafe { job.write(Job { start, arg }) };
            // SAFETY: the caller's arguments, with our start routine and its
            // job; the new thread owns `job` (freed here only if it never
            // started).
            let rc = unsafe { create(thread, attr, run, job.cast()) };
            if rc != 0 {
                // SAFETY: no thread took it.
                unsafe { raw::free(job.cast()) };
            }
            return rc;
        }
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { create(thread, attr, start, arg) }
}
