//! Threads and their heaps: which heap the calling thread runs, how a thread
//! gets one, and what happens to it when the thread exits or the process forks.
//!
//! - A thread starts with its thread-local pointer on the static empty heap,
//!   whose direct table points at an empty page, so its first allocation takes
//!   the slow path, which calls [`init_current`].
//! - `init_current` adopts a retired heap from the pool (with every block and
//!   pending remote free it holds) or makes a new one, and registers a
//!   thread-exit destructor (a `pthread` key) for it.
//! - At thread exit the destructor collects the heap (drains its inbox, gives
//!   back empty pages and segments, purges) and retires it into the pool.
//!   Its live blocks stay where they are; frees of them from other threads go
//!   to its inbox, which the next adopter drains (or a freeing thread reclaims,
//!   see `heap::reclaim`).
//! - Heaps are never destroyed, so a pointer to a heap is always valid memory;
//!   their number is bounded by the peak number of threads.
//! - Fork: handlers take every global lock before `fork()` and release them in
//!   parent and child. The child keeps the forking thread's heap; other
//!   threads' heaps stay allocated but unused (their blocks can still be freed:
//!   frees go to those heaps' inboxes).

use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::heap::{self, Heap, STATE_ACTIVE, STATE_EMPTY, STATE_RETIRED};
use crate::os;
use crate::page::Page;
use crate::sync::SpinLock;

/// A static that threads share read-only (the empty heap and page).
#[repr(transparent)]
struct Shared<T>(UnsafeCell<T>);
// SAFETY: the empty page and heap are never written: the fast paths only write
// a page after popping a block, and the empty page has none; the slow path
// replaces the empty heap before touching heap state.
unsafe impl<T> Sync for Shared<T> {}

static EMPTY_PAGE: Shared<Page> = Shared(UnsafeCell::new(Page::EMPTY));
static EMPTY_HEAP: Shared<Heap> =
    Shared(UnsafeCell::new(Heap::new(EMPTY_PAGE.0.get(), STATE_EMPTY)));

/// The thread-local slot holding the heap this thread runs (the empty heap
/// until its first allocation).
///
/// On x86_64 Linux the slot is an initial-exec TLS variable written in
/// assembly: reading it is `mov` from the GOT plus one `%fs`-relative load,
/// in an executable and in the preload library alike. (Rust's `thread_local!`
/// in a shared library uses the general-dynamic model: a call to
/// `__tls_get_addr` on every `malloc` and `free`.) Initial-exec makes the
/// linker mark the library `DF_STATIC_TLS`, so the loader places the slot in
/// the static TLS block, at the same offset from the thread pointer in every
/// thread, also when the library is `dlopen`ed. Elsewhere: `thread_local!`.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod slot {
    use super::{Heap, EMPTY_HEAP};

    // The slot: 8 bytes of `.tdata` whose initial value (relocated by the
    // loader before any thread's TLS block is copied from it) is the empty
    // heap. Global but hidden: inlined readers in other crates of the same
    // link refer to it by name; it is not exported from a shared library.
    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".globl __heapkeep_thread_heap",
        ".hidden __heapkeep_thread_heap",
        ".type __heapkeep_thread_heap,@object",
        ".size __heapkeep_thread_heap,8",
        "__heapkeep_thread_heap:",
        ".quad {empty}",
        ".popsection",
        empty = sym EMPTY_HEAP,
    );

    /// The calling thread's slot value.
    #[inline(always)]
    pub(super) fn get() -> *mut Heap {
        let h: *mut Heap;
        // SAFETY: reads the calling thread's own 8-byte slot: the GOT entry
        // holds its (negative) offset from the thread pointer in `%fs`.
        // `pure, readonly`: the result depends only on memory, which `set`
        // (not `readonly`) is assumed to change.
        unsafe {
            core::arch::asm!(
                "mov {h}, qword ptr [rip + __heapkeep_thread_heap@GOTTPOFF]",
                "mov {h}, qword ptr fs:[{h}]",
                h = out(reg) h,
                options(nostack, readonly, pure, preserves_flags),
            );
        }
        h
    }

    /// Sets the calling thread's slot.
    #[inline]
    pub(super) fn set(heap: *mut Heap) {
        // SAFETY: writes the calling thread's own slot (see `get`).
        unsafe {
            core::arch::asm!(
                "mov {t}, qword ptr [rip + __heapkeep_thread_heap@GOTTPOFF]",
                "mov qword ptr fs:[{t}], {h}",
                t = out(reg) _,
                h = in(reg) heap,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod slot {
    use super::{Heap, EMPTY_HEAP};
    use core::cell::Cell;

    thread_local! {
        static HEAP: Cell<*mut Heap> = const { Cell::new(EMPTY_HEAP.0.get()) };
    }

    /// The calling thread's slot value.
    #[inline(always)]
    pub(super) fn get() -> *mut Heap {
        HEAP.with(|h| h.get())
    }

    /// Sets the calling thread's slot.
    #[inline]
    pub(super) fn set(heap: *mut Heap) {
        HEAP.with(|h| h.set(heap));
    }
}

/// The static page with no blocks.
#[inline]
pub(crate) fn empty_page() -> *mut Page {
    EMPTY_PAGE.0.get()
}

/// The static empty heap (a thread's heap until its first allocation; in
/// check mode, for good).
#[inline(always)]
pub(crate) fn empty_heap() -> *mut Heap {
    EMPTY_HEAP.0.get()
}

/// The calling thread's heap (the static empty heap if it has none yet).
#[inline(always)]
pub(crate) fn current() -> *mut Heap {
    slot::get()
}

/// Points the calling thread's slot at `heap` (its own heap, or the empty
/// heap while an allocation-free region is open: `forbid.rs`).
#[inline]
pub(crate) fn set_current(heap: *mut Heap) {
    slot::set(heap);
}

const UNINIT: u8 = 0;
const RUNNING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

static INIT: AtomicU8 = AtomicU8::new(UNINIT);
/// The process secret for free-list encoding.
static SECRET: AtomicUsize = AtomicUsize::new(0);
static EXIT_KEY: AtomicU32 = AtomicU32::new(0);
/// Every heap ever made (linked through `all_next`; never unlinked).
static ALL_HEAPS: AtomicPtr<Heap> = AtomicPtr::new(ptr::null_mut());
/// Retired heaps waiting for a thread (linked through `pool_next`).
static POOL: SpinLock<PoolList> = SpinLock::new(PoolList(ptr::null_mut()));
/// Memory heaps are carved from: `(next, end)`.
static ARENA: SpinLock<(usize, usize)> = SpinLock::new((0, 0));

/// Whether this copy of heapkeep ever made a heap, i.e. served an
/// allocation. (A process can load two copies, say a Rust program on
/// heapkeep under heapkeep's preload library: only one serves `malloc`.)
pub(crate) fn served_anything() -> bool {
    !ALL_HEAPS.load(Ordering::Acquire).is_null()
}

struct PoolList(*mut Heap);
// SAFETY: retired heaps belong to no thread; the lock serialises access.
unsafe impl Send for PoolList {}

/// One-time process set-up. False if the platform cannot run heapkeep.
#[cold]
pub(crate) fn global_init() -> bool {
    loop {
        match INIT.load(Ordering::Acquire) {
            READY => return true,
            FAILED => return false,
            UNINIT => {
                if INIT
                    .compare_exchange(UNINIT, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    break;
                }
            }
            _ => os::yield_now(),
        }
    }
    let ok = os::page_size_ok();
    let key = if ok {
        os::create_thread_exit_key(thread_exit)
    } else {
        None
    };
    let Some(key) = key else {
        INIT.store(FAILED, Ordering::Release);
        return false;
    };
    SECRET.store(os::random_u64() as usize, Ordering::Relaxed);
    EXIT_KEY.store(key, Ordering::Relaxed);
    crate::check::init();
    crate::profile::init();
    crate::map::init();
    crate::stacks::init();
    INIT.store(READY, Ordering::Release);
    // After READY: registering may allocate (glibc), which must find us ready.
    os::register_fork_handlers(fork_prepare, fork_parent, fork_child);
    crate::check::start();
    // Before the profile's handler, so that it runs after it (a peer's
    // profile is written when the C front asks whether there is one).
    crate::peer::start();
    crate::profile::start();
    crate::map::start();
    true
}

/// Gives the calling thread a heap (adopted or new). Null when out of memory.
#[cold]
#[inline(never)]
pub(crate) fn init_current() -> *mut Heap {
    if !global_init() {
        return ptr::null_mut();
    }
    let heap = match pool_take() {
        Some(h) => {
            // SAFETY: we just adopted `h`. Open the queued pages first: the
            // drain below puts pages that were full back in their queues
            // already open, and remote frees may reach those at once.
            unsafe {
                heap::open_pages_remote(h);
                heap::collect(h, false);
            }
            h
        }
        None => new_heap(),
    };
    if heap.is_null() {
        return heap;
    }
    slot::set(heap);
    os::set_thread_value(EXIT_KEY.load(Ordering::Relaxed), heap.cast());
    // SAFETY: this thread runs `heap` from now on; heaps are never freed.
    unsafe { (*heap).counters.start_thread(os::thread_id()) };
    if crate::stacks::on() {
        crate::stacks::begin_thread(heap);
    }
    heap
}

/// Takes a retired heap from the pool, making it active.
fn pool_take() -> Option<*mut Heap> {
    let mut pool = POOL.lock();
    let mut prev: *mut Heap = ptr::null_mut();
    let mut h = pool.0;
    while !h.is_null() {
        // SAFETY: heaps in the pool are valid; the lock guards the links.
        unsafe {
            let next = (*h).pool_next;
            if (*h)
                .remote
                .state
                .compare_exchange(
                    STATE_RETIRED,
                    STATE_ACTIVE,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                if prev.is_null() {
                    pool.0 = next;
                } else {
                    (*prev).pool_next = next;
                }
                (*h).pool_next = ptr::null_mut();
                return Some(h);
            }
            prev = h;
            h = next;
        }
    }
    None
}

/// Makes a new active heap from the heap arena.
pub(crate) fn new_heap() -> *mut Heap {
    let size = core::mem::size_of::<Heap>().next_multiple_of(64);
    let mem = {
        let mut a = ARENA.lock();
        if a.1 - a.0 < size {
            const CHUNK: usize = 256 * 1024;
            let p = os::map_aligned(CHUNK, os::PAGE_SIZE);
            if p.is_null() {
                return ptr::null_mut();
            }
            *a = (p as usize, p as usize + CHUNK);
        }
        let m = a.0;
        a.0 += size;
        m as *mut Heap
    };
    // SAFETY: `mem` is fresh, suitably aligned (64) memory of `size` bytes that
    // no one else has.
    unsafe {
        mem.write(Heap::new(empty_page(), STATE_ACTIVE));
        (*mem).key = SECRET.load(Ordering::Relaxed) ^ (mem as usize).rotate_left(29);
        (*mem).remote.key = (*mem).key;
        // The profile's options are read before any heap is made.
        (*mem).profile_at = if crate::profile::on() {
            crate::profile::rate()
        } else {
            usize::MAX
        };
        let mut head = ALL_HEAPS.load(Ordering::Relaxed);
        loop {
            (*mem).all_next = head;
            match ALL_HEAPS.compare_exchange_weak(head, mem, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
    }
    mem
}

/// Thread-exit destructor: collect the heap and retire it into the pool.
unsafe extern "C" fn thread_exit(value: *mut libc::c_void) {
    let heap = value as *mut Heap;
    if heap.is_null() {
        return;
    }
    slot::set(EMPTY_HEAP.0.get());
    if crate::stacks::on() {
        crate::stacks::end_thread(heap);
    }
    // SAFETY: the exiting thread ran `heap` and stopped running it just now.
    unsafe {
        (*heap).counters.end_thread();
        heap::collect(heap, true);
        (*heap).remote.retired_frees.store(0, Ordering::Relaxed);
        (*heap).remote.state.store(STATE_RETIRED, Ordering::Release);
    }
    let mut pool = POOL.lock();
    // SAFETY: the heap is not in the pool (it was active); the lock guards links.
    unsafe { (*heap).pool_next = pool.0 };
    pool.0 = heap;
}

unsafe extern "C" fn fork_prepare() {
    crate::check::fork_prepare();
    crate::profile::fork_prepare();
    crate::guard::fork_prepare();
    POOL.raw_lock();
    ARENA.raw_lock();
    crate::segment::fork_prepare();
    crate::huge::fork_prepare();
}

unsafe extern "C" fn fork_parent() {
    // SAFETY: `fork_prepare` took these locks in this thread.
    unsafe {
        crate::huge::fork_release();
        crate::segment::fork_release();
        ARENA.raw_unlock();
        POOL.raw_unlock();
        crate::guard::fork_release();
        crate::profile::fork_release();
        crate::check::fork_release();
    }
}

unsafe extern "C" fn fork_child() {
    // SAFETY: the child's only thread is the one that took the locks.
    unsafe {
        crate::huge::fork_release();
        crate::segment::fork_release();
        ARENA.force_unlock();
        POOL.force_unlock();
        crate::guard::fork_release();
        crate::profile::fork_release();
        crate::check::fork_release();
    }
    crate::check::fork_child();
    // Only the forking thread lives on in the child.
    let me = current();
    for_each_heap(|h| {
        // SAFETY: heaps are never freed; this thread runs `me`.
        unsafe {
            if h == me {
                (*h).counters.rename_thread(os::thread_id());
            } else {
                (*h).counters.end_thread();
            }
        }
    });
    if crate::stacks::on() {
        crate::stacks::fork_child(me);
    }
}

/// When the next sweep of retired heaps may run (ms).
static NEXT_SWEEP: AtomicU64 = AtomicU64::new(0);
/// Minimum time between two sweeps (ms).
const SWEEP_INTERVAL_MS: u64 = 20;

/// Reclaims retired heaps that have frees waiting in their inbox, so memory
/// of exited threads returns even when no thread adopts their heaps and the
/// frees are too few to trigger `heap::reclaim` themselves. Runs from any
/// thread's upkeep, at most once per `SWEEP_INTERVAL_MS` process-wide.
pub(crate) fn sweep_retired(now: u64) {
    let next = NEXT_SWEEP.load(Ordering::Relaxed);
    if now < next
        || NEXT_SWEEP
            .compare_exchange(
                next,
                now + SWEEP_INTERVAL_MS,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    {
        return;
    }
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: heaps are never freed; `all_next` is written before publication.
        unsafe {
            let r = &(*h).remote;
            if r.state.load(Ordering::Relaxed) == STATE_RETIRED
                && r.inbox.load(Ordering::Relaxed) != 0
            {
                heap::reclaim(h);
            }
            h = (*h).all_next;
        }
    }
}

/// Calls `f` on every heap ever made (invariant walk, statistics).
pub(crate) fn for_each_heap(mut f: impl FnMut(*mut Heap)) {
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() {
        f(h);
        // SAFETY: heaps are never freed; `all_next` is written before publication.
        h = unsafe { (*h).all_next };
    }
}
