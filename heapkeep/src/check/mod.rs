//! Check mode: catches heap misuse (double and invalid frees, use after
//! free, overflows and underflows, layout mismatches, stack overflows,
//! leaks) and reports each with the stacks that allocated and freed the
//! block. Turned on by `HEAPKEEP_CHECK=1` (`heapkeep check` sets it); the
//! other options are in [`OPTIONS`].
//!
//! ## How it hooks into the heap
//! In check mode no thread ever gets a heap of its own: every thread stays
//! on the static empty heap, so its allocations always miss the fast path
//! and its frees take the heapless branch; `heap.rs` hands both to this
//! module (`alloc`, `free`, `realloc`, `usable_size`). Fast mode pays one
//! compare in `free` for this.
//!
//! ## Blocks
//! - Small blocks (up to [`LARGE_MIN`]) come from their shard's inner heap, used only
//!   under its shard's lock, with a redzone of pattern bytes before and after
//!   the requested bytes (checked on free, realloc and exit).
//! - Large blocks get a mapping of their own: the block ends at the end of
//!   its last data page, with an inaccessible guard page on each side, so a
//!   read or write past the end faults and the fault handler reports it.
//! - Freed blocks go to a quarantine (a FIFO bounded in bytes) instead of
//!   back to the heap: small ones are filled with a pattern, verified when
//!   they leave it and at exit; large ones are made inaccessible.
//! - What is known about each block lives in a side table ([`table`]), so
//!   bad pointers are looked up there, never dereferenced.
//!
//! ## Shards
//! The state (inner heap, side table, stack depot, quarantine) is split in
//! [`SHARDS`] shards, each behind its own lock. A thread allocates through
//! its home shard (its kernel id modulo [`SHARDS`]), and the block belongs
//! to that shard until it leaves the quarantine: its entry is in that
//! shard's table, its stacks in that shard's depot, its memory in that
//! shard's inner heap, and its free (from any thread) goes to that shard's
//! quarantine. So every call locks one shard, and threads with different
//! homes never wait for each other. A free finds the shard through a hint
//! (the shard that last allocated in the pointer's 4 MiB granule), then,
//! if the block is not there, by looking in the other shards: a hint can
//! be wrong (a granule reused by another shard), never the table.
//! Mappings of large blocks kept for reuse ([`Kept`]) are shared, under a
//! lock of their own that is only taken while holding a shard's.

mod fault;
mod leaks;
pub(crate) mod options;
pub(crate) mod stack;
pub(crate) mod table;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod unwind;

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};

pub use options::{CheckOption, OPTIONS};

use crate::counters::Counters;
use crate::heap::{self, Heap};
use crate::os;
use crate::sync::{SpinGuard, SpinLock};
use crate::writer::Writer;
use options::id;
use stack::{Depot, Frames};
use table::{Entry, Table, FREED, LARGE, LIVE, SMALL};

/// Blocks larger than this get a mapping of their own with guard pages.
pub(crate) const LARGE_MIN: usize = 64 * 1024;
/// Byte of the redzones around small blocks (and the slack of large ones).
const REDZONE_BYTE: u8 = 0xab;
/// Byte freed small blocks are filled with.
const FREED_BYTE: u8 = 0xdf;
/// Alignment of every check-mode block (as the C heap gives).
const MIN_ALIGN: usize = 16;

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The process that turned check mode on (forked children skip the leak
/// report: their heap is a copy of the parent's).
static PID: AtomicU32 = AtomicU32::new(0);

/// One shard's state, behind its lock.
///
/// Invariant: every entry of `table` is a block carved from `heap` (small)
/// or mapped for this shard (large); its stack ids are ids of `depot`; the
/// freed ones are exactly the blocks `quarantine` holds.
struct State {
    /// The inner heap small blocks come from (null until first use).
    heap: *mut Heap,
    table: Table,
    depot: Depot,
    quarantine: Quarantine,
}

// SAFETY: a state is only reached through its shard's lock; the inner heap
// is used by whichever thread holds it.
unsafe impl Send for State {}

impl State {
    const fn new() -> State {
        State {
            heap: ptr::null_mut(),
            table: Table::new(),
            depot: Depot::new(),
            quarantine: Quarantine::new(),
        }
    }
}

/// How many shards the check state is split into (a power of two; see
/// "Shards" in the module docs).
pub(crate) const SHARDS: usize = 8;

/// One shard: its state, and what the program did through it, counted with
/// the sizes it asked for (the inner heap's own counters, redzones
/// included, are private). `user` is written under `state`'s lock only.
/// Each shard has cache lines of its own.
#[repr(align(128))]
struct Shard {
    state: SpinLock<State>,
    user: Counters,
}

static SHARD: [Shard; SHARDS] = [const {
    Shard {
        state: SpinLock::new(State::new()),
        user: Counters::for_requested_sizes(),
    }
}; SHARDS];

/// The shard a thread allocates through.
fn home(tid: u32) -> usize {
    tid as usize % SHARDS
}

/// Check mode's counts of the program's calls (one per shard), for `stats()`.
pub(crate) fn counters() -> impl Iterator<Item = &'static Counters> {
    SHARD.iter().map(|s| &s.user)
}

/// Slots of [`HINTS`] (a power of two).
const HINT_SLOTS: usize = 1 << 12;
/// The granule of the address space a hint speaks for: 4 MiB, the inner
/// heaps' segment size.
const HINT_SHIFT: usize = crate::segment::SEGMENT_SHIFT;

/// Where a free looks first: for each 4 MiB granule of the address space
/// (hashed by its number), the shard that last allocated a block there,
/// plus one (0: none yet). Only a hint, read and written without order:
/// [`find`] falls back on every shard.
static HINTS: [AtomicU8; HINT_SLOTS] = [const { AtomicU8::new(0) }; HINT_SLOTS];

fn hint_slot(addr: usize) -> &'static AtomicU8 {
    &HINTS[(addr >> HINT_SHIFT) & (HINT_SLOTS - 1)]
}

/// Records that shard `s` allocated a block at `addr`.
fn set_hint(addr: usize, s: usize) {
    let h = hint_slot(addr);
    // Stored only when it changes, so a shared line stays shared.
    if h.load(Ordering::Relaxed) != s as u8 + 1 {
        h.store(s as u8 + 1, Ordering::Relaxed);
    }
}

/// The shard whose table has an entry (live or freed) for `addr`, locked,
/// with a copy of the entry; `None` when no shard knows the address. The
/// hinted shard is tried first, then the others in turn, one lock at a time.
fn find(addr: usize) -> Option<(usize, SpinGuard<'static, State>, Entry)> {
    let first = (hint_slot(addr).load(Ordering::Relaxed) as usize).wrapping_sub(1) % SHARDS;
    (0..SHARDS).find_map(|k| {
        let s = (first + k) % SHARDS;
        let mut st = SHARD[s].state.lock();
        let e = st.table.get(addr).copied()?;
        Some((s, st, e))
    })
}

/// Bytes held in all shards' quarantines. A shard evicts its oldest blocks
/// while this is above the limit and it holds more than its share of the
/// limit (limit / [`SHARDS`]): one thread's frees get the whole limit, many
/// threads' share it, and the sum stays below twice the limit (shards that
/// stopped freeing keep what they hold, at most the limit in all, plus a
/// share for each other shard).
static QUARANTINED: AtomicUsize = AtomicUsize::new(0);

/// Mappings of large blocks kept for reuse, shared by the shards. Locked
/// only by a thread that holds a shard's lock (so all shards' locks exclude
/// it too: `fork_prepare`).
static KEPT: SpinLock<Kept> = SpinLock::new(Kept::new());

/// Per-thread state of check mode.
struct ThreadState {
    /// Kernel thread id (0 until known).
    tid: Cell<u32>,
    /// Inside the checker (capturing a stack or reporting): a nested
    /// allocation skips its stack capture instead of recursing.
    busy: Cell<bool>,
    /// The thread's alternate signal stack is set up.
    ready: Cell<bool>,
    /// The top of the thread's stack mapping (0: not looked up yet;
    /// `usize::MAX`: not found), bounding the fast unwinder's loads.
    stack_top: Cell<usize>,
    /// Captures [`capture_fast`] made with the platform unwinder before
    /// looking the stack bound up.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    slow_captures: Cell<u8>,
    /// The thread's [`unwind::Memo`]: 0 until its first fast walk maps it,
    /// [`MEMO_GONE`] once the thread-exit destructor unmapped it. (Out of
    /// the thread-local block, which a library loaded late with `dlopen`
    /// must fit into glibc's small static TLS reserve.)
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    memo: Cell<usize>,
}

/// [`ThreadState::memo`] of a thread whose memo is gone (it is exiting).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const MEMO_GONE: usize = 1;

/// The key whose destructor unmaps a thread's memo (`u32::MAX`: none; then
/// no thread maps one, and walks take the platform unwinder).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
static MEMO_KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// The calling thread's memo, mapped on first use; `None` when it cannot be
/// had (no key, out of memory, or the thread is exiting).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn thread_memo(t: &ThreadState) -> Option<&unwind::Memo> {
    let mut p = t.memo.get();
    if p == 0 {
        let key = MEMO_KEY.load(Ordering::Relaxed);
        if key == u32::MAX {
            return None;
        }
        p = unwind::Memo::map() as usize;
        if p == 0 {
            return None;
        }
        t.memo.set(p);
        os::set_thread_value(key, p as *mut u8);
    }
    // SAFETY: `p` is this thread's memo, mapped above or by an earlier
    // call, and unmapped only by its exit destructor, which marks it gone
    // first; the reference lives no longer than this capture.
    (p != MEMO_GONE).then(|| unsafe { &*(p as *const unwind::Memo) })
}

/// Thread-exit destructor of a thread's memo.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe extern "C" fn drop_memo(p: *mut core::ffi::c_void) {
    THREAD.with(|t| t.memo.set(MEMO_GONE));
    // SAFETY: `p` is the memo this exiting thread mapped; it is marked gone
    // above, so no later walk of the thread reads it.
    unsafe { unwind::Memo::unmap(p.cast()) };
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            tid: Cell::new(0),
            busy: Cell::new(false),
            ready: Cell::new(false),
            stack_top: Cell::new(0),
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            slow_captures: Cell::new(0),
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            memo: Cell::new(0),
        }
    };
}

/// Whether check mode is on (decided once, at start-up).
#[inline]
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Whether reports name functions, files and lines (option `symbolize`).
pub(crate) fn symbolize() -> bool {
    options::get(id::SYMBOLIZE) == 1
}

/// Whether check mode is on, starting heapkeep first if nothing did yet
/// (a program's first heap call may be a free or a realloc).
pub(crate) fn enabled() -> bool {
    crate::thread::global_init() && active()
}

/// Reads the options; turns check mode on if asked. Called once during
/// heapkeep's start-up, before any block is handed out.
pub(crate) fn init() {
    options::read_all();
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if let Some(key) = os::create_thread_exit_key(drop_memo) {
        MEMO_KEY.store(key, Ordering::Relaxed);
    }
    // The sampled guard is for fast mode; check mode guards every block.
    if options::get(id::CHECK) != 1 {
        crate::guard::set_period(options::get(id::GUARD_SAMPLE));
    }
    crate::os::set_cap(options::get(id::MEMORY_CAP));
    if options::get(id::CHECK) == 1 {
        // SAFETY: getpid has no preconditions.
        PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
        ACTIVE.store(true, Ordering::Release);
    }
}

/// The rest of start-up, once the heap can serve allocations (these calls
/// may allocate): the exit hook and the fault handler.
pub(crate) fn start() {
    if active() {
        // SAFETY: registers a plain function.
        unsafe { libc::atexit(at_exit) };
        install_fault_handler();
        this_thread(); // the starting thread's alternate signal stack
    }
}

/// The calling thread has just started (the preload library's
/// `pthread_create` calls this before the thread's own start routine): in
/// check mode it gets its alternate signal stack now, so a stack overflow
/// before its first heap call is still reported, not a bare SIGSEGV.
pub(crate) fn thread_started() {
    if enabled() {
        this_thread();
    }
}

/// Installs the fault handler (once): at start-up in check mode, at the
/// first sampled block in fast mode.
pub(crate) fn install_fault_handler() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !DONE.swap(true, Ordering::AcqRel) {
        fault::install();
    }
}

/// The calling thread's kernel id (cached).
pub(crate) fn thread_id() -> u32 {
    THREAD.with(|t| {
        let mut tid = t.tid.get();
        if tid == 0 {
            // SAFETY: gettid has no preconditions.
            tid = unsafe { libc::gettid() } as u32;
            t.tid.set(tid);
        }
        tid
    })
}

extern "C" fn at_exit() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } as u32 != PID.load(Ordering::Relaxed) {
        return;
    }
    leaks::at_exit();
}

/// The calling thread's id, set-up done on first use.
fn this_thread() -> u32 {
    THREAD.with(|t| {
        if !t.ready.get() {
            t.ready.set(true);
            t.busy.set(true);
            fault::setup_thread();
            let local = 0u8;
            let here = core::hint::black_box(&local) as *const u8 as usize;
            if let Some((_, hi)) = os::maps::near(here, false) {
                t.stack_top.set(hi);
            }
            t.busy.set(false);
        }
    });
    thread_id()
}

/// Captures the stack of the checker's caller unless the thread is already
/// inside the checker (then the stack stays empty). `marker` is the address
/// of a local of the checker's entry point: frames below it are left out.
#[inline(never)]
fn capture_here(frames: &mut Frames, marker: usize) {
    frames.clear();
    THREAD.with(|t| {
        if !t.busy.get() {
            t.busy.set(true);
            // A few more than asked: the allocator's own frames above the
            // entry point (malloc, the slow path) are dropped when printed.
            let depth = options::get(id::STACK_DEPTH) + 3;
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            let done = {
                let top = t.stack_top.get();
                top != 0
                    && top != usize::MAX
                    && thread_memo(t).is_some_and(|m| unwind::walk(frames, depth, marker, top, m))
            };
            #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
            let done = false;
            if !done {
                stack::capture(frames, depth, marker);
            }
            t.busy.set(false);
        }
    });
}

/// How many captures of a thread [`capture_fast`] makes with the platform
/// unwinder before it reads the thread's stack bound.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const SLOW_CAPTURES: u8 = 4;

/// Captures up to `depth` frames of the calling thread's stack above
/// `marker` (see [`stack::capture`]) with the cached unwinder when it can
/// (for the sampling profile, outside check mode). The thread's stack
/// bound is looked up once per thread (`/proc/self/maps`), after its first
/// [`SLOW_CAPTURES`] captures.
pub(crate) fn capture_fast(frames: &mut Frames, depth: usize, marker: usize) {
    frames.clear();
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    let done = THREAD.with(|t| {
        if t.stack_top.get() == 0 {
            // A thread's first few captures take the platform unwinder:
            // short-lived threads then never pay for reading the maps.
            let n = t.slow_captures.get();
            if n < SLOW_CAPTURES {
                t.slow_captures.set(n + 1);
                return false;
            }
            let local = 0u8;
            let here = core::hint::black_box(&local) as *const u8 as usize;
            t.stack_top
                .set(os::maps::near(here, false).map_or(usize::MAX, |(_, hi)| hi));
        }
        let top = t.stack_top.get();
        top != usize::MAX
            && thread_memo(t).is_some_and(|m| unwind::walk(frames, depth, marker, top, m))
    });
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    let done = false;
    if !done {
        stack::capture(frames, depth, marker);
    }
}

/// The address of `x`, as a stack marker for [`capture_here`].
#[inline(always)]
fn marker<T>(x: &T) -> usize {
    x as *const T as usize
}

/// A detected error, carried out of the lock to be reported.
struct Error {
    class: &'static str,
    addr: usize,
    detail: Writer,
    block: Option<Entry>,
    alloc: Frames,
    free: Frames,
}

impl Error {
    fn new(class: &'static str, addr: usize) -> Error {
        Error {
            class,
            addr,
            detail: Writer::buffer(),
            block: None,
            alloc: Frames::new(),
            free: Frames::new(),
        }
    }

    /// Attaches the block `e` (its stacks copied out of the depot).
    fn with_block(mut self, st: &State, e: &Entry) -> Error {
        self.alloc.set(st.depot.get(e.alloc_stack));
        self.free.set(st.depot.get(e.free_stack));
        self.block = Some(*e);
        self
    }
}

/// Prints `err` (one screen) and aborts, unless the keep-going option is
/// set. `here` is the stack of the call that found it (may be empty).
#[cold]
fn report(err: &Error, here: &Frames) {
    THREAD.with(|t| t.busy.set(true));
    let symbolize = symbolize();
    let tid = this_thread();
    let mut w = Writer::new();
    w.s("heapkeep: error: ")
        .s(err.class)
        .s(" on ")
        .x(err.addr)
        .s("\n  ")
        .b(err.detail.as_bytes())
        .s("\n");
    if !here.is_empty() {
        stack::section(&mut w, "here", tid, here.as_slice(), symbolize);
    }
    if let Some(e) = &err.block {
        stack::section(
            &mut w,
            "allocated",
            e.alloc_tid,
            err.alloc.as_slice(),
            symbolize,
        );
        if e.state == FREED {
            stack::section(&mut w, "freed", e.free_tid, err.free.as_slice(), symbolize);
        }
    }
    if options::get(id::KEEP_GOING) == 1 {
        w.flush();
        THREAD.with(|t| t.busy.set(false));
        return;
    }
    w.s("heapkeep: aborting\n");
    w.flush();
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

// ---------------------------------------------------------------------------
// The quarantine

/// Freed blocks held back from reuse, oldest first: a ring of block
/// addresses (their entries, `FREED`, are in the table) and their bytes.
///
/// Invariant: `ring` maps `cap` words (0 = not mapped yet); the `len`
/// addresses from `head` on are the quarantined blocks, in free order;
/// `bytes` is the sum of their extents.
struct Quarantine {
    pub(crate) ring: *mut usize,
    pub(crate) cap: usize,
    head: usize,
    len: usize,
    bytes: usize,
}

impl Quarantine {
    const fn new() -> Quarantine {
        Quarantine {
            ring: ptr::null_mut(),
            cap: 0,
            head: 0,
            len: 0,
            bytes: 0,
        }
    }

    /// Adds `addr` at the back; false if there is no room at all.
    fn push(&mut self, addr: usize, bytes: usize) -> bool {
        if self.cap == 0 {
            let cap = 1 << 20;
            let mem = os::map_aligned(cap * 8, os::PAGE_SIZE);
            if mem.is_null() {
                return false;
            }
            self.ring = mem.cast();
            self.cap = cap;
        }
        if self.len == self.cap {
            return false;
        }
        // SAFETY: the index is below `cap`; the ring is our mapping.
        unsafe { *self.ring.add((self.head + self.len) % self.cap) = addr };
        self.len += 1;
        self.bytes += bytes;
        true
    }

    /// The address `k` places behind the oldest, if that many are held.
    fn peek(&self, k: usize) -> Option<usize> {
        // SAFETY: the index is below `cap` and names a filled slot.
        (k < self.len).then(|| unsafe { *self.ring.add((self.head + k) % self.cap) })
    }

    /// Takes the oldest address.
    fn pop(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        // SAFETY: `head < cap`, a filled slot.
        let a = unsafe { *self.ring.add(self.head) };
        self.head = (self.head + 1) % self.cap;
        self.len -= 1;
        Some(a)
    }
}

/// Mappings kept for reuse.
const KEPT_MAPS: usize = 8;
/// Bytes of mappings kept for reuse at most.
const KEPT_BYTES: usize = 64 << 20;

/// Mappings of large blocks that left the quarantine, kept for the next
/// large blocks: their pages stay resident (inaccessible), so a block
/// placed in one costs one `mprotect`, where a fresh mapping costs `mmap`,
/// two `mprotect`s, a page fault per page the program touches, and
/// `munmap` when it leaves the quarantine.
///
/// Invariant: `maps[..n]` are whole mappings `(base, bytes)` of ours, all
/// inaccessible, oldest first, `bytes` in all, at most `KEPT_BYTES`.
struct Kept {
    maps: [(usize, usize); KEPT_MAPS],
    n: usize,
    bytes: usize,
}

impl Kept {
    const fn new() -> Kept {
        Kept {
            maps: [(0, 0); KEPT_MAPS],
            n: 0,
            bytes: 0,
        }
    }

    /// Takes the smallest kept mapping of at least `need` bytes (and not
    /// more than twice that, so a small block does not pin a big mapping).
    fn take(&mut self, need: usize) -> Option<(usize, usize)> {
        let (i, _) = self.maps[..self.n]
            .iter()
            .enumerate()
            .filter(|(_, &(_, len))| len >= need && len / 2 <= need)
            .min_by_key(|(_, &(_, len))| len)?;
        Some(self.remove(i))
    }

    /// Takes kept mapping `i` out of the list.
    fn remove(&mut self, i: usize) -> (usize, usize) {
        let m = self.maps[i];
        self.maps.copy_within(i + 1..self.n, i);
        self.n -= 1;
        self.bytes -= m.1;
        m
    }

    /// Keeps mapping `(base, len)` (inaccessible), unmapping the oldest
    /// kept ones to make room, or this one if it is too big to keep.
    fn put(&mut self, base: usize, len: usize) {
        if len > KEPT_BYTES {
            // SAFETY: the mapping is ours and nothing refers to it any more.
            unsafe { os::unmap(base as *mut u8, len) };
            return;
        }
        while self.n == KEPT_MAPS || self.bytes + len > KEPT_BYTES {
            let (b, l) = self.remove(0);
            // SAFETY: a kept mapping is ours, and no block lives in it.
            unsafe { os::unmap(b as *mut u8, l) };
        }
        self.maps[self.n] = (base, len);
        self.n += 1;
        self.bytes += len;
    }
}

// ---------------------------------------------------------------------------
// Pattern checks

/// The first byte in `[from, to)` that is not `byte`, as an address.
///
/// # Safety
/// The range is readable.
unsafe fn first_not(from: usize, to: usize, byte: u8) -> Option<usize> {
    let mut a = from;
    let word = usize::from_ne_bytes([byte; 8]);
    // SAFETY: reads inside the range (caller).
    unsafe {
        while a < to && a % 8 != 0 {
            if *(a as *const u8) != byte {
                return Some(a);
            }
            a += 1;
        }
        while a + 8 <= to {
            if *(a as *const usize) != word {
                break;
            }
            a += 8;
        }
        while a < to {
            if *(a as *const u8) != byte {
                return Some(a);
            }
            a += 1;
        }
    }
    None
}

/// The edges of a block's data pages: `[lo, hi)` around the requested
/// bytes, where the pattern must be intact (redzones of a small block, the
/// slack in the first and last page of a large one).
fn pattern_edges(e: &Entry) -> (usize, usize) {
    if e.kind == SMALL {
        (e.base, e.base + e.extent)
    } else {
        (first_page(e), end_page(e))
    }
}

/// The first data page of large block `e` (all before it is inaccessible).
fn first_page(e: &Entry) -> usize {
    e.addr & !(os::PAGE_SIZE - 1)
}

/// The end of large block `e`'s last data page (all after it is
/// inaccessible).
fn end_page(e: &Entry) -> usize {
    (e.addr + e.size.max(1)).next_multiple_of(os::PAGE_SIZE)
}

/// Checks the redzones of live block `e`: puts an error in `out` if a byte
/// before or after the requested bytes changed. (Errors are written in
/// place: an `Error` is large, and the checks run on every free.)
fn check_redzones(st: &State, e: &Entry, out: &mut Option<Error>) {
    let (lo, hi) = pattern_edges(e);
    // SAFETY: both ranges are inside the block's memory, which is ours and
    // accessible while the block is live.
    let bad = unsafe {
        first_not(lo, e.addr, REDZONE_BYTE).or_else(|| first_not(e.addr + e.size, hi, REDZONE_BYTE))
    };
    if let Some(bad) = bad {
        *out = Some(redzone_error(st, e, bad));
    }
}

/// The report of a damaged redzone byte at `bad`.
#[cold]
fn redzone_error(st: &State, e: &Entry, bad: usize) -> Error {
    {
        if bad < e.addr {
            let mut err = Error::new("heap-underflow", bad).with_block(st, e);
            err.detail
                .s("a ")
                .d(e.size)
                .s("-byte block at ")
                .x(e.addr)
                .s(" was written ")
                .d(e.addr - bad)
                .s(" bytes before its start (offset -")
                .d(e.addr - bad)
                .s(")");
            return err;
        }
        let mut err = Error::new("heap-overflow", bad).with_block(st, e);
        err.detail
            .s("a ")
            .d(e.size)
            .s("-byte block at ")
            .x(e.addr)
            .s(" was written past its end, at offset ")
            .d(bad - e.addr);
        err
    }
}

/// Checks that freed small block `e` still holds the freed pattern (and its
/// redzones); puts an error in `out` if not.
fn check_freed(st: &State, e: &Entry, out: &mut Option<Error>) {
    if e.kind != SMALL {
        return; // inaccessible while freed: a write would have faulted
    }
    // SAFETY: the block's memory is ours (quarantined) and accessible.
    let bad = unsafe { first_not(e.addr, e.addr + e.size, FREED_BYTE) };
    if let Some(bad) = bad {
        *out = Some(freed_error(st, e, bad));
        return;
    }
    check_redzones(st, e, out)
}

/// The report of a freed block written at `bad`.
#[cold]
fn freed_error(st: &State, e: &Entry, bad: usize) -> Error {
    let mut err = Error::new("use-after-free", bad).with_block(st, e);
    err.detail
        .s("a ")
        .d(e.size)
        .s("-byte block at ")
        .x(e.addr)
        .s(" was written after it was freed, at offset ")
        .d(bad - e.addr);
    err
}

// ---------------------------------------------------------------------------
// Allocation

/// The mapping length of a large block: its data pages (room for `size`
/// bytes at any `align`ment) and a guard page on each side.
fn large_mapping(size: usize, align: usize) -> Option<usize> {
    let page = os::PAGE_SIZE;
    let data = if align > page {
        size.checked_add(align)?.checked_next_multiple_of(page)?
    } else {
        size.max(1).checked_next_multiple_of(page)?
    };
    let total = data.checked_add(2 * page)?;
    (total <= isize::MAX as usize).then_some(total)
}

/// Takes a new block (not yet in the table). Null when out of memory.
fn take_block(st: &mut State, size: usize, align: usize, zero: bool) -> Option<Entry> {
    let align = align.max(MIN_ALIGN);
    let redzone = options::get(id::REDZONE);
    let mut e = Entry {
        addr: 0,
        size,
        base: 0,
        extent: 0,
        align: 0,
        state: LIVE,
        kind: SMALL,
        alloc_tid: 0,
        free_tid: 0,
        alloc_stack: 0,
        free_stack: 0,
    };
    if size <= LARGE_MIN && align <= LARGE_MIN {
        if st.heap.is_null() {
            st.heap = crate::thread::new_heap();
            if st.heap.is_null() {
                return None;
            }
            // SAFETY: the inner heap is ours under the lock.
            unsafe { heap::make_private(st.heap) };
        }
        let front = redzone.next_multiple_of(align);
        // SAFETY: the inner heap is ours while we hold its shard's lock.
        let base = unsafe { heap::alloc_in(st.heap, front + size + redzone, align, zero) };
        if base.is_null() {
            return None;
        }
        e.base = base as usize;
        // SAFETY: `base` is a live inner block.
        e.extent = unsafe { heap::block_usable(base) };
        e.addr = e.base + front;
    } else {
        let need = large_mapping(size, align)?;
        let kept = KEPT.lock().take(need);
        let (base, total) = match kept {
            Some((base, total)) => (base as *mut u8, total),
            None => (os::map_aligned(need, os::PAGE_SIZE), need),
        };
        if base.is_null() {
            return None;
        }
        let page = os::PAGE_SIZE;
        e.kind = LARGE;
        e.base = base as usize;
        e.extent = total;
        // As close to the trailing guard page as the alignment allows;
        // everything outside the block's own pages is inaccessible (at
        // least a page on each side; more for big alignments).
        e.addr = (e.base + total - page - size) & !(align - 1);
        let (lo, hi) = (first_page(&e), end_page(&e));
        if kept.is_some() {
            // SAFETY: the data pages lie inside the kept mapping, ours and
            // all inaccessible; they hold an old block's bytes.
            unsafe {
                os::protect(lo as *mut u8, hi - lo, true);
                if zero {
                    ptr::write_bytes(e.addr as *mut u8, 0, size);
                }
            }
        } else {
            // SAFETY: both ranges lie inside our fresh mapping.
            unsafe {
                os::protect(base, lo - e.base, false);
                os::protect(hi as *mut u8, e.base + total - hi, false);
            }
        }
    }
    let (lo, hi) = pattern_edges(&e);
    // SAFETY: the redzones lie in memory we just took for this block.
    unsafe {
        ptr::write_bytes(lo as *mut u8, REDZONE_BYTE, e.addr - lo);
        ptr::write_bytes((e.addr + size) as *mut u8, REDZONE_BYTE, hi - e.addr - size);
    }
    Some(e)
}

/// Returns a block's memory for good (it leaves the quarantine).
fn release(st: &mut State, e: &Entry) {
    if e.kind == SMALL {
        // SAFETY: `base` is a live block of the inner heap, ours under the lock.
        unsafe { heap::free_in(st.heap, e.base as *mut u8) };
    } else {
        // The whole mapping belonged to this block, which is gone; all of
        // it is inaccessible since the block was freed.
        KEPT.lock().put(e.base, e.extent);
    }
}

/// Allocates a checked block. Null when out of memory or impossible.
pub(crate) fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    let tid = this_thread();
    let mut here = Frames::new();
    let m = marker(&here);
    capture_here(&mut here, m);
    alloc_with(size, align, zero, tid, &here, false)
}

/// [`alloc`] once the stack is captured, through the thread's home shard.
/// `moved`: the block is a `realloc`'s new home (counted as a move too).
fn alloc_with(
    size: usize,
    align: usize,
    zero: bool,
    tid: u32,
    here: &Frames,
    moved: bool,
) -> *mut u8 {
    if size > isize::MAX as usize / 2 || !align.is_power_of_two() {
        return ptr::null_mut();
    }
    let s = home(tid);
    let mut st = SHARD[s].state.lock();
    let Some(mut e) = take_block(&mut st, size, align, zero) else {
        return ptr::null_mut();
    };
    e.align = align;
    e.alloc_tid = tid;
    e.alloc_stack = st.depot.intern_frames(here);
    if !st.table.insert(e) {
        release(&mut st, &e);
        return ptr::null_mut();
    }
    set_hint(e.addr, s);
    let user = &SHARD[s].user;
    user.count_alloc(size, size);
    if moved {
        // Before the old block's free is counted (in its own shard): a
        // reader in between sees one free fewer than there will be
        // (`stats()` reports frees less moves).
        user.on_realloc(0, true);
    }
    e.addr as *mut u8
}

// ---------------------------------------------------------------------------
// Free

/// The error for a pointer that is not a block (`op` names the call).
/// Locks each shard in turn.
fn not_a_block(addr: usize, op: &str) -> Error {
    // A pointer into a block is worth naming.
    for shard in &SHARD {
        let st = shard.state.lock();
        let mut inside: Option<Entry> = None;
        st.table.for_each(|e| {
            if e.addr <= addr && addr < e.addr + e.size.max(1) {
                inside = Some(*e);
            }
        });
        if let Some(e) = inside {
            let mut err = Error::new("invalid-free", addr).with_block(&st, &e);
            err.detail
                .s(op)
                .s(" of a pointer ")
                .d(addr - e.addr)
                .s(" bytes inside a ")
                .d(e.size)
                .s("-byte block at ")
                .x(e.addr)
                .s(if e.state == FREED { " (freed)" } else { "" });
            return err;
        }
    }
    let mut err = Error::new("invalid-free", addr);
    err.detail
        .s(op)
        .s(" of a pointer heapkeep did not return (not the start of any block)");
    err
}

/// Frees a checked block. `size`/`align` are the Rust layout of the call
/// (align 0: not known, as from C).
///
/// # Safety
/// None beyond check mode being on: `p` is looked up, never trusted.
pub(crate) unsafe fn free(p: *mut u8, size: usize, align: usize) {
    let tid = this_thread();
    let mut here = Frames::new();
    let m = marker(&here);
    capture_here(&mut here, m);
    free_with(p as usize, size, align, tid, &here, "free");
}

fn free_with(addr: usize, size: usize, align: usize, tid: u32, here: &Frames, op: &str) {
    let mut errors = [None, None];
    let [found, evicted] = &mut errors;
    match find(addr) {
        Some((s, mut st, e)) => {
            let user = &SHARD[s].user;
            free_locked(&mut st, user, e, size, align, tid, here, op, found, evicted);
        }
        None => *found = Some(not_a_block(addr, op)),
    }
    for e in errors.iter().flatten() {
        report(e, here);
    }
}

/// The free itself, under the lock of the shard whose table holds `e` (the
/// entry of the block freed) and counts in `user`. `found` receives the
/// error found on the block (if any), `evicted` one found on a block
/// leaving the quarantine.
#[allow(clippy::too_many_arguments)]
fn free_locked(
    st: &mut State,
    user: &Counters,
    e: Entry,
    size: usize,
    align: usize,
    tid: u32,
    here: &Frames,
    op: &str,
    found: &mut Option<Error>,
    evicted: &mut Option<Error>,
) {
    let addr = e.addr;
    if e.state == FREED {
        let mut err = Error::new("double-free", addr).with_block(st, &e);
        err.detail
            .s(op)
            .s(" of a ")
            .d(e.size)
            .s("-byte block that was already freed");
        *found = Some(err);
        return;
    }
    if align != 0 && (size != e.size || align != e.align) {
        let mut err = Error::new("layout-mismatch", addr).with_block(st, &e);
        err.detail
            .s(op)
            .s(" with Layout { size: ")
            .d(size)
            .s(", align: ")
            .d(align)
            .s(" } of a block allocated with { size: ")
            .d(e.size)
            .s(", align: ")
            .d(e.align)
            .s(" }");
        *found = Some(err);
    }
    if found.is_none() {
        check_redzones(st, &e, found);
    }
    let free_stack = st.depot.intern_frames(here);
    let Some(slot) = st.table.get(addr) else {
        return;
    };
    slot.state = FREED;
    slot.free_tid = tid;
    slot.free_stack = free_stack;
    user.count_free(e.size);
    // SAFETY: the block is ours (just freed); for a large block the data
    // pages lie strictly inside its mapping.
    unsafe {
        if e.kind == SMALL {
            ptr::write_bytes(addr as *mut u8, FREED_BYTE, e.size);
        } else {
            let lo = first_page(&e);
            os::protect(lo as *mut u8, end_page(&e) - lo, false);
        }
    }
    let limit = options::get(id::QUARANTINE_MB) << 20;
    // The blocks leaving the quarantine a few frees from now: their table
    // slots and first lines are cold (freed long ago); loading them while
    // the program runs on hides most of the wait for them then.
    if let Some(soon) = st.quarantine.peek(EVICT_AHEAD) {
        st.table.prefetch(soon);
        crate::hint::prefetch(soon as *const u8);
    }
    if st.quarantine.push(addr, e.extent) {
        QUARANTINED.fetch_add(e.extent, Ordering::Relaxed);
    } else {
        evict_one(st, addr, evicted); // no room to hold it: it leaves now
    }
    // See `QUARANTINED` for the bound.
    while QUARANTINED.load(Ordering::Relaxed) > limit && st.quarantine.bytes > limit / SHARDS {
        let Some(old) = st.quarantine.pop() else {
            break;
        };
        let bytes = evict_one(st, old, evicted);
        st.quarantine.bytes -= bytes;
        QUARANTINED.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// How many blocks ahead of the next to leave the quarantine a free loads
/// the one that leaves then.
const EVICT_AHEAD: usize = 32;

/// Takes freed block `addr` out of the table: verifies it, gives its
/// memory back, forgets it. Returns its extent (the bytes it held in the
/// quarantine, for the caller to take off the ring's counts).
fn evict_one(st: &mut State, addr: usize, found: &mut Option<Error>) -> usize {
    let Some(e) = st.table.get(addr).copied() else {
        return 0;
    };
    if found.is_none() {
        check_freed(st, &e, found);
    }
    st.table.remove(addr);
    release(st, &e);
    e.extent
}

// ---------------------------------------------------------------------------
// Realloc and usable size

/// Resizes a checked block: always to a new block (so stale pointers to the
/// old one are caught), the old one goes to the quarantine. `old_size` is
/// the Rust layout's size (`usize::MAX`: not known, as from C).
///
/// # Safety
/// None beyond check mode being on: `p` is looked up, never trusted.
pub(crate) unsafe fn realloc(
    p: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    let tid = this_thread();
    let mut here = Frames::new();
    let m = marker(&here);
    capture_here(&mut here, m);
    let addr = p as usize;
    let (known, err) = match find(addr) {
        None => (None, Some(not_a_block(addr, "realloc"))),
        Some((_, st, e)) if e.state == FREED => {
            let mut err = Error::new("use-after-free", addr).with_block(&st, &e);
            err.detail
                .s("realloc of a ")
                .d(e.size)
                .s("-byte block that was already freed");
            (None, Some(err))
        }
        Some((_, _, e)) => (Some(e), None),
    };
    if let Some(err) = err {
        report(&err, &here);
        return ptr::null_mut();
    }
    let Some(e) = known else {
        return ptr::null_mut();
    };
    let q = alloc_with(new_size, e.align, false, tid, &here, true);
    if q.is_null() {
        return q;
    }
    // SAFETY: both blocks are live and distinct; `e.size` bytes are readable
    // at `p`, `new_size` writable at `q`.
    unsafe { ptr::copy_nonoverlapping(p, q, e.size.min(new_size)) };
    let (size, align) = if old_size == usize::MAX {
        (0, 0)
    } else {
        (old_size, align)
    };
    free_with(addr, size, align, tid, &here, "realloc");
    q
}

/// The usable size of a checked block: exactly the size asked for (the
/// redzone starts right after it).
///
/// # Safety
/// None beyond check mode being on: `p` is looked up, never trusted.
pub(crate) unsafe fn usable_size(p: *const u8) -> usize {
    let addr = p as usize;
    let (size, err) = match find(addr) {
        Some((_, _, e)) if e.state == LIVE => (e.size, None),
        Some((_, st, e)) => {
            let mut err = Error::new("use-after-free", addr).with_block(&st, &e);
            err.detail
                .s("malloc_usable_size of a ")
                .d(e.size)
                .s("-byte block that was already freed");
            (0, Some(err))
        }
        None => (0, Some(not_a_block(addr, "malloc_usable_size"))),
    };
    if let Some(err) = err {
        let mut here = Frames::new();
        let m = marker(&here);
        capture_here(&mut here, m);
        report(&err, &here);
    }
    size
}

// ---------------------------------------------------------------------------
// Fork

/// Fork support (see `thread.rs`): every shard's lock is held across
/// `fork()`, taken in order (as `lock_all` does; no thread holds two
/// otherwise). `KEPT` needs no locking: only a shard's holder takes it.
pub(crate) fn fork_prepare() {
    for shard in &SHARD {
        shard.state.raw_lock();
    }
}

/// Fork support: releases the locks in parent and child.
///
/// # Safety
/// Only from the fork handlers, after `fork_prepare`.
pub(crate) unsafe fn fork_release() {
    for shard in SHARD.iter().rev() {
        // SAFETY: `fork_prepare` took the lock in this (or the parent) thread.
        unsafe { shard.state.raw_unlock() };
    }
}

/// Every shard's state, locked in order (for the exit-time checks).
fn lock_all() -> [SpinGuard<'static, State>; SHARDS] {
    core::array::from_fn(|s| SHARD[s].state.lock())
}

/// Calls `f` with each shard's state in turn, locked one at a time.
fn each_shard(mut f: impl FnMut(&mut State)) {
    for shard in &SHARD {
        f(&mut shard.state.lock());
    }
}

/// Fork support, in the child: its thread has a new kernel id.
pub(crate) fn fork_child() {
    THREAD.with(|t| t.tid.set(0));
}
