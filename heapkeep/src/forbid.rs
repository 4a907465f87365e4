//! Allocation-free regions: `heapkeep::forbid_alloc(|| work)` and
//! `heapkeep::permit_alloc(|| work)`, with guard-object forms.
//!
//! ## How a region costs the fast paths nothing
//! Entering a region points the thread's heap slot at the static empty heap
//! and keeps the thread's real heap here. The empty heap's direct table holds
//! only the empty page, so every allocation of the thread falls to the slow
//! path, which asks [`active`] first and hands the call to [`alloc`]: that
//! reports it (by the region's [`OnAlloc`]) and then serves it from the real
//! heap. Frees reach `heap::free_heapless`, which frees into the real heap
//! ([`kept_heap`]). Leaving the outermost region (or entering `permit_alloc`)
//! puts the real heap back in the slot. Only the calling thread is affected.
//!
//! ## Why a panic waits for the end of the region
//! `GlobalAlloc` methods must not unwind. In [`OnAlloc::Panic`] mode the
//! offending allocation is recorded (its stack and size) and served; the
//! panic is raised when the region ends, from `ForbidAlloc`'s `drop` (not
//! while the thread is already unwinding). The recorded stack is printed to
//! stderr first, so the message points at the allocation, not at the end of
//! the region.
//!
//! Check mode: threads never leave the empty heap there, so regions only
//! mark the thread; allocations go to check mode after the report.

use core::cell::{Cell, UnsafeCell};
use core::marker::PhantomData;
use core::ptr;

use crate::check::options::{self, id};
use crate::check::stack::{self, Frames};
use crate::heap::{self, Heap};
use crate::thread;
use crate::writer::Writer;

/// What an allocation inside a [`forbid_alloc`] region does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnAlloc {
    /// Print the allocation's size and stack on stderr, then abort the
    /// process (SIGABRT).
    Abort,
    /// Serve the allocation, remember its stack, and panic when the region
    /// ends (so a test that breaks the rule fails, and only that test).
    Panic,
    /// Print the allocation's size and stack on stderr (the first
    /// [`LOG_LIMIT`] per thread) and serve it.
    Log,
}

impl OnAlloc {
    /// The mode `HEAPKEEP_FORBID_ALLOC` names (`abort`, the default, `panic`
    /// or `log`).
    pub fn from_env() -> OnAlloc {
        thread::global_init();
        match options::get(id::FORBID_ALLOC) {
            1 => OnAlloc::Panic,
            2 => OnAlloc::Log,
            _ => OnAlloc::Abort,
        }
    }
}

/// Allocations [`OnAlloc::Log`] prints per thread; later ones are only counted.
pub const LOG_LIMIT: u64 = 16;

/// Frames recorded for the allocation a panic names.
const DEPTH: usize = 16;

/// The calling thread's regions.
struct Regions {
    /// Forbidding regions entered and not left, not counting those a
    /// `permit_alloc` inside them has lifted. Non-zero iff the slot holds
    /// the empty heap on the region's account.
    depth: Cell<u32>,
    /// The thread's heap while `depth > 0` (the empty heap if it has none yet).
    real: Cell<*mut Heap>,
    /// The innermost region's mode.
    mode: Cell<OnAlloc>,
    /// Allocations made inside forbidding regions, ever.
    count: Cell<u64>,
    /// No allocation was recorded since the innermost region began.
    armed: Cell<bool>,
    /// Size of the allocation recorded in `first`.
    first_size: Cell<usize>,
    /// Stack of the first allocation recorded since the innermost armed
    /// region began (an inner region re-arms, so an outer region that
    /// already had one may name the inner's instead). Written only by this
    /// thread, outside any borrow.
    first: UnsafeCell<Frames>,
    /// A report is being written: allocations it makes are not reported.
    busy: Cell<bool>,
}

thread_local! {
    static REGIONS: Regions = const {
        Regions {
            depth: Cell::new(0),
            real: Cell::new(ptr::null_mut()),
            mode: Cell::new(OnAlloc::Abort),
            count: Cell::new(0),
            armed: Cell::new(false),
            first_size: Cell::new(0),
            first: UnsafeCell::new(Frames::new()),
            busy: Cell::new(false),
        }
    };
}

/// Whether the calling thread is inside a forbidding region (its slot then
/// holds the empty heap). Cold paths only: a thread-local lookup.
#[inline]
pub(crate) fn active() -> bool {
    REGIONS.try_with(|r| r.depth.get() > 0).unwrap_or(false)
}

/// The heap the calling thread's region keeps aside (the empty heap if the
/// thread has none yet). Only meaningful while [`active`].
pub(crate) fn kept_heap() -> *mut Heap {
    REGIONS.with(|r| r.real.get())
}

/// The calling thread's own heap, made now if it has none: inside a region
/// the one kept aside (the slot keeps the empty heap), else the slot's.
/// Null when out of memory. Not in check mode (no per-thread heaps).
pub(crate) fn own_heap() -> *mut Heap {
    if active() {
        real_heap()
    } else {
        thread::init_current()
    }
}

/// [`own_heap`] inside a region.
fn real_heap() -> *mut Heap {
    let h = kept_heap();
    if h != thread::empty_heap() {
        return h;
    }
    let h = thread::init_current();
    if !h.is_null() {
        REGIONS.with(|r| r.real.set(h));
        thread::set_current(thread::empty_heap());
    }
    h
}

/// An allocation inside a forbidding region: reported, then served.
#[cold]
#[inline(never)]
pub(crate) fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    let marker = 0u8;
    report(size, align, &marker as *const u8 as usize);
    if crate::check::active() {
        return crate::check::alloc(size, align, zero);
    }
    let heap = real_heap();
    if heap.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: `heap` is the calling thread's own heap (its slot holds the
    // empty heap only for the region), which no other thread runs.
    unsafe { heap::alloc_in(heap, size, align, zero) }
}

/// A `realloc` inside a forbidding region in check mode (which has no
/// in-place growth) that would allocate: reported like an allocation.
#[cold]
pub(crate) fn note_realloc(new_size: usize, align: usize) {
    let marker = 0u8;
    report(new_size, align, &marker as *const u8 as usize);
}

/// Counts and reports one allocation by the region's mode (aborting in
/// [`OnAlloc::Abort`]). `marker`: the address of a local of the entry point,
/// whose frame and those below it are left out of the stack.
fn report(size: usize, align: usize, marker: usize) {
    let Ok((mode, n, busy)) = REGIONS.try_with(|r| {
        let n = r.count.get() + 1;
        r.count.set(n);
        (r.mode.get(), n, r.busy.replace(true))
    }) else {
        return;
    };
    if busy {
        return;
    }
    let mut here = Frames::new();
    stack::capture(&mut here, DEPTH, marker);
    // Recorded in every mode: an enclosing panicking region names it.
    REGIONS.with(|r| {
        if r.armed.replace(false) {
            r.first_size.set(size);
            // SAFETY: only this thread touches `first`, and no reference to
            // it is alive (`ForbidAlloc::drop` copies it out).
            unsafe { *r.first.get() = here };
        }
    });
    match mode {
        OnAlloc::Panic => {}
        OnAlloc::Abort | OnAlloc::Log => {
            if mode == OnAlloc::Log && n > LOG_LIMIT {
                REGIONS.with(|r| r.busy.set(false));
                return;
            }
            let mut w = Writer::new();
            w.s(if mode == OnAlloc::Abort {
                "heapkeep: error: "
            } else {
                "heapkeep: warning: "
            });
            w.s("allocation of ")
                .d(size)
                .s(" bytes (align ")
                .d(align)
                .s(") inside forbid_alloc\n");
            stack::section(
                &mut w,
                "here",
                crate::check::thread_id(),
                here.as_slice(),
                crate::check::symbolize(),
            );
            if mode == OnAlloc::Abort {
                w.s("heapkeep: aborting\n").flush();
                // SAFETY: abort has no preconditions.
                unsafe { libc::abort() }
            }
            if n == LOG_LIMIT {
                w.s("heapkeep: (later allocations inside forbid_alloc on this thread are not printed)\n");
            }
            w.flush();
        }
    }
    REGIONS.with(|r| r.busy.set(false));
}

/// Runs `f` with allocation forbidden on the calling thread; an allocation
/// inside does what `HEAPKEEP_FORBID_ALLOC` says ([`OnAlloc::from_env`]:
/// abort by default). Frees are allowed. Other threads are not affected.
/// Regions nest; [`permit_alloc`] lifts the rule inside.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;
///
/// let mut buf = Vec::with_capacity(64);
/// heapkeep::forbid_alloc(|| {
///     for i in 0..64u32 {
///         buf.push(i); // within capacity: no allocation
///     }
/// });
/// assert_eq!(buf.len(), 64);
/// ```
pub fn forbid_alloc<R>(f: impl FnOnce() -> R) -> R {
    let _region = ForbidAlloc::new();
    f()
}

/// [`forbid_alloc`] with the mode given here rather than by the environment.
///
/// ```should_panic
/// #[global_allocator]
/// static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;
///
/// heapkeep::forbid_alloc_with(heapkeep::OnAlloc::Panic, || {
///     std::hint::black_box(vec![1u8; 100]); // panics when the region ends
/// });
/// ```
pub fn forbid_alloc_with<R>(mode: OnAlloc, f: impl FnOnce() -> R) -> R {
    let _region = ForbidAlloc::with(mode);
    f()
}

/// Runs `f` with allocation allowed again inside a [`forbid_alloc`] region
/// (one known spot, say a log line). Outside any region it just runs `f`.
pub fn permit_alloc<R>(f: impl FnOnce() -> R) -> R {
    let _permit = PermitAlloc::new();
    f()
}

/// The guard-object form of [`forbid_alloc`]: allocation is forbidden on
/// this thread from `new` until the guard is dropped. Not `Send`: a region
/// belongs to the thread that opened it. Drop guards in reverse order of
/// creation.
#[must_use = "the region ends when the guard is dropped"]
pub struct ForbidAlloc {
    mode_before: OnAlloc,
    armed_before: bool,
    count_before: u64,
    _thread_bound: PhantomData<*const ()>,
}

impl ForbidAlloc {
    /// Opens a region whose mode comes from the environment ([`OnAlloc::from_env`]).
    pub fn new() -> ForbidAlloc {
        ForbidAlloc::with(OnAlloc::from_env())
    }

    /// Opens a region with the given mode.
    pub fn with(mode: OnAlloc) -> ForbidAlloc {
        thread::global_init();
        REGIONS.with(|r| {
            let region = ForbidAlloc {
                mode_before: r.mode.replace(mode),
                armed_before: r.armed.replace(true),
                count_before: r.count.get(),
                _thread_bound: PhantomData,
            };
            if r.depth.get() == 0 {
                r.real.set(thread::current());
                thread::set_current(thread::empty_heap());
            }
            r.depth.set(r.depth.get() + 1);
            region
        })
    }
}

impl Default for ForbidAlloc {
    fn default() -> ForbidAlloc {
        ForbidAlloc::new()
    }
}

impl Drop for ForbidAlloc {
    fn drop(&mut self) {
        let (mode, made, size, first) = REGIONS.with(|r| {
            let depth = r.depth.get();
            debug_assert!(depth > 0, "ForbidAlloc dropped out of order");
            r.depth.set(depth.saturating_sub(1));
            if depth == 1 {
                thread::set_current(r.real.get());
            }
            let mode = r.mode.replace(self.mode_before);
            // Still armed: nothing was recorded inside, and the enclosing
            // region stays as it was; else it has a record too (this one).
            let recorded = !r.armed.get();
            r.armed.set(self.armed_before && !recorded);
            let made = r.count.get() - self.count_before;
            let first = if recorded {
                // SAFETY: only this thread touches `first`; copied out here
                // (without allocating: the thread may still be in a region).
                unsafe { *r.first.get() }
            } else {
                Frames::new()
            };
            (mode, made, r.first_size.get(), first)
        });
        if mode != OnAlloc::Panic || made == 0 || std::thread::panicking() {
            return;
        }
        let mut w = Writer::new();
        w.s("heapkeep: ")
            .d(made as usize)
            .s(" allocation(s) inside forbid_alloc; the first, of ")
            .d(size)
            .s(" bytes:\n");
        stack::section(
            &mut w,
            "here",
            crate::check::thread_id(),
            first.as_slice(),
            crate::check::symbolize(),
        );
        w.flush();
        // The panic allocates its message: not on an enclosing region's account.
        let _permit = PermitAlloc::new();
        panic!(
            "heapkeep: {made} allocation(s) inside forbid_alloc (the first, of {size} bytes, \
             is shown on stderr)"
        );
    }
}

/// The guard-object form of [`permit_alloc`]: allocation is allowed on this
/// thread from `new` until the guard is dropped, also inside a region.
#[must_use = "allocation is forbidden again when the guard is dropped"]
pub struct PermitAlloc {
    /// The depth lifted (0: there was no region).
    depth: u32,
    _thread_bound: PhantomData<*const ()>,
}

impl PermitAlloc {
    /// Lifts the calling thread's regions until the guard is dropped.
    pub fn new() -> PermitAlloc {
        REGIONS.with(|r| {
            let depth = r.depth.replace(0);
            if depth > 0 {
                thread::set_current(r.real.get());
            }
            PermitAlloc {
                depth,
                _thread_bound: PhantomData,
            }
        })
    }
}

impl Default for PermitAlloc {
    fn default() -> PermitAlloc {
        PermitAlloc::new()
    }
}

impl Drop for PermitAlloc {
    fn drop(&mut self) {
        if self.depth == 0 {
            return;
        }
        REGIONS.with(|r| {
            // The thread may have got its heap inside.
            r.real.set(thread::current());
            thread::set_current(thread::empty_heap());
            r.depth.set(self.depth);
        });
    }
}
