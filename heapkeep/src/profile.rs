//! Sampling heap profiles (`heapkeep profile -- PROGRAM`, or
//! `HEAPKEEP_PROFILE=1` for a Rust program on heapkeep): which allocation
//! sites allocate the most bytes, hold the most at the peak, and leak at
//! exit, written at exit as a DHAT profile (`dh_view.html` opens it) and as
//! a text table on stderr.
//!
//! ## Sampling without touching the fast paths
//! Each heap adds up, in `profile_due`, the bytes its slow path makes
//! available to the fast path (a refilled page's free blocks, a large
//! block). When that passes the rate (`HEAPKEEP_PROFILE_RATE`, default
//! 512 KiB), the next slow-path allocation is sampled and stands for those
//! bytes (and for itself): on average one sample per rate bytes allocated.
//! A sampled small or medium block comes from this module's own heap, so
//! its page's owner is not the freeing thread's heap and its free reaches
//! `heap::free_slow`, which hands it back here (where the freeing thread's
//! heap holds it back until that thread's next sample: [`Pending`]); a
//! large block is sampled in place ([`sample_in_place`]: its page's
//! `sampled` flag sends its free here from `heap::page_empty`), and so is
//! a huge one (a flag in its segment). The fast paths are the same
//! instructions as without profiling. With rate 1 every allocation is
//! recorded: threads then stay on the empty heap (as in check mode) and
//! every call comes here.
//!
//! ## What is kept
//! Under one lock: each sampled block's record (site, weight, birth time),
//! in 32 bytes just before the pointer the program gets when the block is
//! of this module's heap ([`Prefix`]; `heap::block_usable` leaves them
//! out), else (blocks sampled in place) in an open-addressing table by
//! address; the sites (distinct stacks, from the
//! check-mode depot) in a dense array with an index by stack, and the
//! running totals DHAT wants per site: total bytes and blocks, total
//! lifetime, the site's own maximum, its bytes at the global maximum (the
//! moment the profiled live bytes peaked) and at exit. A sample of size `s`
//! and weight `w` counts as `w / s` blocks of `s` bytes. All memory is
//! mapped here, never taken from the heap being profiled; stacks are
//! captured and symbolized without allocating.
//!
//! Fork: the lock is held across `fork()`; a child keeps its parent's
//! samples and writes its own profile at exit only if the output path has
//! `%p` in it (replaced by the process id) or is the default (which names
//! the pid).

use core::ptr;
use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

use crate::check::options::{self, id};
use crate::check::stack::{self, Depot, Frames, Loc};
use crate::check::table::{Keyed, Table};
use crate::counters::ORPHAN;
use crate::heap::{self, Heap};
use crate::os;
use crate::page::OWNER_FULL;
use crate::segment::{page_of, segment_of};
use crate::size_class::{class_to_size, size_align_to_bin, CLASS_COUNT};
use crate::sync::SpinLock;
use crate::writer::{self, Writer};

/// Profiling is on (decided at start-up).
static ON: AtomicBool = AtomicBool::new(false);
/// Every allocation is recorded (rate 1).
static EVERY: AtomicBool = AtomicBool::new(false);
/// Bytes allocated per sample.
static RATE: AtomicUsize = AtomicUsize::new(0);
/// The profile's clock and its reading at the start (`State::clock`,
/// `State::start_ticks`), for frees that do not take the lock. Set once
/// by `init`, before `ON`.
static CLOCK: AtomicU32 = AtomicU32::new(Clock::Fine as u32);
static START_TICKS: AtomicU64 = AtomicU64::new(0);
/// The profile's heap (null until the first sample): frees test a page's
/// owner against it without taking the lock.
static HEAP: AtomicPtr<Heap> = AtomicPtr::new(ptr::null_mut());
/// The process that started profiling (a forked child differs).
static PID: AtomicU32 = AtomicU32::new(0);

/// Frames kept per sampled allocation.
const DEPTH: usize = 24;
/// Distinct sites kept; later new stacks count under the last one.
const MAX_SITES: usize = 1 << 16;

/// Whether profiling is on.
#[inline]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether every allocation is recorded (threads keep the empty heap).
#[inline]
pub(crate) fn every() -> bool {
    EVERY.load(Ordering::Relaxed)
}

/// Bytes allocated per sample (0: profiling is off).
#[inline]
pub(crate) fn rate() -> usize {
    RATE.load(Ordering::Relaxed)
}

/// Reads the options. Called once during start-up, before any allocation.
pub(crate) fn init() {
    // Check mode records every block already, in its own way.
    if options::get(id::PROFILE) != 1 || options::get(id::CHECK) == 1 {
        return;
    }
    let rate = options::get(id::PROFILE_RATE).max(1);
    RATE.store(rate, Ordering::Relaxed);
    EVERY.store(rate == 1, Ordering::Relaxed);
    // SAFETY: getpid has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    {
        let mut st = ST.lock();
        st.clock = if rate != 1 {
            Clock::Coarse
        } else if os::ticks_are_tsc() {
            Clock::Tsc
        } else {
            Clock::Fine
        };
        st.start_us = os::now_us();
        st.start_ticks = st.clock.read();
        CLOCK.store(st.clock as u32, Ordering::Relaxed);
        START_TICKS.store(st.start_ticks, Ordering::Relaxed);
    }
    ON.store(true, Ordering::Release);
}

/// The rest of start-up (may allocate): the exit hook.
pub(crate) fn start() {
    if on() {
        // SAFETY: registers a plain function.
        unsafe { libc::atexit(at_exit) };
    }
}

/// One sampled block. A plain record (all-zero = vacant).
#[derive(Clone, Copy)]
#[repr(C)]
struct Sample {
    /// The block's address (the key).
    addr: usize,
    /// Index of its site in `State::sites`.
    site: u32,
    /// Blocks it stands for.
    blocks: u32,
    /// Bytes it stands for (its weight, at least its size).
    bytes: u64,
    /// When it was allocated (µs since start).
    born: u64,
}

impl Keyed for Sample {
    fn key(&self) -> usize {
        self.addr
    }
    fn set_key(&mut self, key: usize) {
        self.addr = key;
    }
}

/// The record of a sampled block of the profile heap, kept in the block
/// itself: the last [`PREFIX`] bytes before the pointer the program gets.
/// A table entry would cost two cache misses per sample (its insert and
/// its lookup at free: the table is cold between samples, about half the
/// profile's cost on `random`); the block's first lines are touched anyway
/// (its free-list link at allocation and at free).
///
/// Invariant: every block of the profile heap that the program holds (or
/// freed and is held back in [`Pending`]) has one, at `p - PREFIX`, and
/// its block starts at `p - hdr`; unless the profile was frozen when the
/// block was made, its figures are counted in its site (`Site::pb`).
#[repr(C)]
struct Prefix {
    born: u64,
    bytes: u64,
    site: u32,
    blocks: u32,
    /// Bytes from the block's start to the program's pointer (at least
    /// [`PREFIX`]; the alignment when that is larger).
    hdr: u32,
    /// The class of the block's page (the stash keeps freed blocks by it).
    bin: u32,
}

/// Bytes of [`Prefix`], a multiple of 16 (C's alignment).
const PREFIX: usize = core::mem::size_of::<Prefix>();
const _: () = assert!(PREFIX == 32);

/// The prefix of the profile heap's block whose program pointer is `p`.
fn prefix_of(p: *const u8) -> *mut Prefix {
    p.wrapping_sub(PREFIX).cast_mut().cast()
}

/// Bytes before `p` in its block when the block's page is owned by
/// `owner` (its owner word, flags included): the prefix for blocks of the
/// profile heap, else 0.
///
/// # Safety
/// `p` is a live block (or one held back in [`Pending`]) whose page's
/// owner word is `owner`.
#[inline]
pub(crate) unsafe fn prefix_len(owner: usize, p: *const u8) -> usize {
    let heap = HEAP.load(Ordering::Relaxed) as usize;
    if heap == 0 || owner & !OWNER_FULL != heap {
        return 0;
    }
    // SAFETY: a block of the profile heap has its prefix (`Prefix`).
    unsafe { (*prefix_of(p)).hdr as usize }
}

/// Whether `heap` is the profile's heap.
#[inline]
pub(crate) fn is_heap(heap: *mut Heap) -> bool {
    !heap.is_null() && heap == HEAP.load(Ordering::Acquire)
}

/// DHAT's figures for one allocation site (a distinct stack).
#[derive(Clone, Copy)]
#[repr(C)]
struct Site {
    /// The site's stack (a depot id).
    stack: u32,
    /// Total bytes and blocks allocated here.
    tb: u64,
    tbk: u64,
    /// Sum of the lifetimes of the blocks freed (or alive at exit), in
    /// ticks (see `State::now`; wide: ticks run at GHz rates).
    tl: u128,
    /// Bytes and blocks live now.
    cb: u64,
    cbk: u64,
    /// The site's own highest live bytes (and blocks then).
    mb: u64,
    mbk: u64,
    /// Live bytes and blocks at the global maximum.
    gb: u64,
    gbk: u64,
    /// The live samples that keep their record in a prefix (`Prefix`):
    /// the sum of their birth times, each times its blocks, and their
    /// blocks; at exit they add `now * pbk - pb` to `tl`.
    pb: u128,
    pbk: u64,
    /// Frames of the stack as written to the profile (at exit).
    frames: u32,
}

/// Everything the profile keeps. Invariant: `sites[..n_sites]` are the
/// sites; `index` maps a stack id to its site's position + 1 (0 = none),
/// open addressing over `INDEX_CAP` slots of `(stack, position + 1)`.
struct State {
    /// The heap sampled blocks come from (only used under this lock).
    heap: *mut Heap,
    /// Samples in place (large and huge blocks), by address; the profile
    /// heap's keep their record in the block ([`Prefix`]).
    samples: Table<Sample>,
    depot: Depot,
    sites: *mut Site,
    n_sites: usize,
    index: *mut [u32; 2],
    /// Live bytes and blocks over all sites, and their highest figure.
    live: u64,
    peak: u64,
    /// When `peak` was reached (ticks since start).
    t_peak: u64,
    /// Samples taken (blocks recorded), for the summary.
    taken: u64,
    /// The clocks when profiling started: times are kept in ticks of
    /// `clock` (a sample and its free each read it) and turned into µs at
    /// exit (with the rate seen since, for the time-stamp counter).
    start_us: u64,
    start_ticks: u64,
    clock: Clock,
    /// The clocks at exit, since the start (`stop_clock`).
    end_ticks: u64,
    end_us: u64,
    /// Set at exit, before the profile is written without the lock (the
    /// writer runs `addr2line`, and `fork` takes this lock): from then on
    /// nothing here changes (blocks are still served and freed).
    frozen: bool,
}

const INDEX_CAP: usize = MAX_SITES * 2;

/// What times a sample's lifetime (DHAT's `tl`).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Clock {
    /// The CPU's time-stamp counter, converted to µs at exit: exact to the
    /// nanosecond. Used when every allocation is recorded.
    Tsc,
    /// µs of the monotonic clock: the same where there is no steady
    /// time-stamp counter.
    Fine,
    /// µs of the coarse monotonic clock (the kernel's tick, 1-4 ms, read
    /// from memory): sampled profiles. Reading the time-stamp counter twice
    /// per sample cost about 1.2% of `random`'s time at the default rate
    /// (worker A/B, medians of 21 runs: profile/fast 1.053 with the counter,
    /// 1.041 with this clock). A lifetime is then a whole number of ticks,
    /// but the count of ticks a block lives through is unbiased: a block of
    /// lifetime `L` sees a tick with probability `L / tick` (for `L` below
    /// a tick), so a site's total lifetime, over its samples, is right on
    /// average; a short-lived site with few samples reads noisily (0 or a
    /// tick), a long-lived one within a tick per block.
    Coarse,
}

impl Clock {
    /// The clock `init` chose, read without the lock: ticks since the start.
    fn now() -> u64 {
        let clock = match CLOCK.load(Ordering::Relaxed) {
            c if c == Clock::Tsc as u32 => Clock::Tsc,
            c if c == Clock::Coarse as u32 => Clock::Coarse,
            _ => Clock::Fine,
        };
        clock
            .read()
            .wrapping_sub(START_TICKS.load(Ordering::Relaxed))
    }

    #[inline(always)]
    fn read(self) -> u64 {
        match self {
            Clock::Tsc => os::ticks(true),
            Clock::Fine => os::now_us(),
            Clock::Coarse => os::coarse_now_us(),
        }
    }
}

/// Blocks a stash keeps per size class.
const STASH_DEPTH: usize = 4;
/// Bytes a stash keeps in all.
const STASH_BYTES: usize = 512 * 1024;

/// Sampled blocks of the profile heap that the program freed, kept (still
/// allocated in that heap) for the next samples of their class. Samples of
/// one class come far apart, so the heap's slow path would find that
/// class's page cold on every one, and its free would often empty the page
/// again; a stash hit takes a pointer from an array, and
/// neither keeping nor taking a block touches the block itself.
///
/// Invariant: `kept[c][..n[c]]` are blocks of the profile heap on coloured
/// pages of class `c` (16-byte aligned, at least `class_to_size(c)` usable
/// bytes) that no one else holds; `bytes` is the sum of `class_to_size`
/// over them, at most [`STASH_BYTES`].
///
/// Only the holder of [`ST`]'s lock changes it or takes from it; it lives
/// outside [`State`], in atomics (relaxed), so that [`warm`] may read it
/// without the lock (for a prefetch: a stale reading is harmless).
struct Stash {
    kept: [[AtomicPtr<u8>; STASH_DEPTH]; CLASS_COUNT],
    n: [AtomicU8; CLASS_COUNT],
    bytes: AtomicUsize,
}

/// Freed sampled blocks kept for the next samples of their class.
static STASH: Stash = Stash::new();

impl Stash {
    const fn new() -> Stash {
        Stash {
            kept: [const { [const { AtomicPtr::new(ptr::null_mut()) }; STASH_DEPTH] }; CLASS_COUNT],
            n: [const { AtomicU8::new(0) }; CLASS_COUNT],
            bytes: AtomicUsize::new(0),
        }
    }

    /// A kept block of bin `bin` (`size_align_to_bin` of the request) and
    /// its page's class (`bin`), if there is one.
    fn take(&self, _lock: &State, bin: Option<usize>) -> Option<(*mut u8, u32)> {
        let c = bin.filter(|&b| b < CLASS_COUNT)?;
        let n = self.n[c].load(Ordering::Relaxed) as usize;
        if n == 0 {
            return None;
        }
        self.n[c].store(n as u8 - 1, Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.bytes
            .store(bytes - class_to_size(c), Ordering::Relaxed);
        Some((self.kept[c][n - 1].load(Ordering::Relaxed), c as u32))
    }

    /// The block [`Stash::take`] would give for class `c` now, read
    /// without the lock: possibly stale, so only for a prefetch.
    fn peek(&self, c: usize) -> *mut u8 {
        let n = self.n[c].load(Ordering::Relaxed) as usize;
        match n.checked_sub(1) {
            Some(i) if i < STASH_DEPTH => self.kept[c][i].load(Ordering::Relaxed),
            _ => ptr::null_mut(),
        }
    }

    /// Keeps the block `p`, which the program just freed, of a page of
    /// bin `bin`, if its class has room. False: the caller frees it.
    fn put(&self, _lock: &State, p: *mut u8, bin: usize) -> bool {
        if bin >= CLASS_COUNT {
            return false;
        }
        let n = self.n[bin].load(Ordering::Relaxed);
        let size = class_to_size(bin);
        let bytes = self.bytes.load(Ordering::Relaxed);
        if n as usize >= STASH_DEPTH || bytes + size > STASH_BYTES {
            return false;
        }
        self.kept[bin][n as usize].store(p, Ordering::Relaxed);
        self.n[bin].store(n + 1, Ordering::Relaxed);
        self.bytes.store(bytes + size, Ordering::Relaxed);
        true
    }
}

/// Freed sampled blocks a heap holds back before taking the profile's lock.
pub(crate) const PENDING: usize = 4;

/// Sampled blocks that a heap's thread freed and the profile has not taken
/// off yet. Taking the profile's lock is an atomic exchange, which waits
/// for the thread's earlier stores to drain; doing it in each sampled
/// block's free as well as in each sample cost about 0.5% of `random`'s
/// time. So a free leaves the block here, with the time it was freed, and
/// the thread's next sample (or a free that finds this full) settles them
/// all under the lock it takes anyway. A single-threaded program's figures
/// are as exact as before (its pending frees are settled before any new
/// sample counts towards the peak); in a program whose threads free each
/// other's samples, the live figures may lag by up to `PENDING` samples per
/// thread until that thread samples or fills this.
///
/// Invariant: `at[..n]` are `(block, time freed)` pairs of blocks of the
/// profile heap that the program freed, each still allocated in that heap
/// and (unless the profile is frozen) still recorded in its prefix. Only the
/// heap's owner thread writes: an entry before publishing it with a
/// release store of `n`. It is read under the profile lock, by the owner
/// (which then sets `n` to 0), or at exit by the thread that writes the
/// profile (which reads `n` with acquire, and never writes: the profile is
/// frozen from then on).
pub(crate) struct Pending {
    n: AtomicUsize,
    at: [(AtomicUsize, AtomicU64); PENDING],
}

impl Pending {
    pub(crate) const fn new() -> Pending {
        Pending {
            n: AtomicUsize::new(0),
            at: [const { (AtomicUsize::new(0), AtomicU64::new(0)) }; PENDING],
        }
    }
}

// SAFETY: the state is only reached through the `ST` lock.
unsafe impl Send for State {}

static ST: SpinLock<State> = SpinLock::new(State {
    heap: ptr::null_mut(),
    // A few hundred samples are live at a time in most programs: a small
    // first table stays in cache (it grows when needed).
    samples: Table::with_first_capacity(1 << 9),
    depot: Depot::new(),
    sites: ptr::null_mut(),
    n_sites: 0,
    index: ptr::null_mut(),
    live: 0,
    peak: 0,
    t_peak: 0,
    start_us: 0,
    start_ticks: 0,
    clock: Clock::Fine,
    end_ticks: 0,
    end_us: 0,
    taken: 0,
    frozen: false,
});

impl State {
    /// Maps the site arrays and makes the heap on first use.
    fn ready(&mut self) -> bool {
        if self.sites.is_null() && !self.frozen {
            let sites = os::map_aligned(
                (MAX_SITES * core::mem::size_of::<Site>()).next_multiple_of(os::PAGE_SIZE),
                os::PAGE_SIZE,
            );
            let index = os::map_aligned(INDEX_CAP * 8, os::PAGE_SIZE);
            if sites.is_null() || index.is_null() {
                return false;
            }
            self.sites = sites.cast();
            self.index = index.cast();
        }
        if self.heap.is_null() {
            self.heap = crate::thread::new_heap();
            if self.heap.is_null() {
                return false;
            }
            // SAFETY: ours under the lock. Its counts are not the program's:
            // the calling thread's heap (or ORPHAN) counts sampled blocks.
            unsafe { heap::make_private(self.heap) };
            HEAP.store(self.heap, Ordering::Release);
        }
        true
    }

    /// The position in `sites` of the site of `stack` (made if new; the
    /// last site when full).
    fn site_of(&mut self, stack: u32) -> usize {
        let mask = INDEX_CAP - 1;
        let mut i = (stack as usize).wrapping_mul(0x9e37_79b9) & mask;
        loop {
            // SAFETY: `i < INDEX_CAP`, the mapping's length (`ready`).
            let slot = unsafe { &mut *self.index.add(i) };
            if slot[1] == 0 {
                if self.n_sites == MAX_SITES {
                    return MAX_SITES - 1;
                }
                let pos = self.n_sites;
                self.n_sites += 1;
                *slot = [stack, pos as u32 + 1];
                // SAFETY: `pos < MAX_SITES`; fresh mappings read as zero.
                unsafe { (*self.sites.add(pos)).stack = stack };
                return pos;
            }
            if slot[0] == stack {
                return slot[1] as usize - 1;
            }
            i = (i + 1) & mask;
        }
    }

    fn sites(&self) -> &[Site] {
        if self.sites.is_null() {
            return &[];
        }
        // SAFETY: the first `n_sites` entries are sites (invariant).
        unsafe { core::slice::from_raw_parts(self.sites, self.n_sites) }
    }

    /// A sample at the stack `frames` of a block at `addr` of `size` bytes
    /// standing for `weight` bytes, allocated now (not counted yet).
    fn sample(&mut self, addr: usize, size: usize, weight: usize, frames: &Frames) -> Sample {
        let now = self.now();
        self.taken += 1;
        let stack = self.depot.intern_frames(frames);
        let size = size.max(1);
        let bytes = weight.max(size) as u64;
        let blocks = (bytes / size as u64).clamp(1, u32::MAX as u64);
        let pos = self.site_of(stack);
        Sample {
            addr,
            site: pos as u32,
            blocks: blocks as u32,
            bytes,
            born: now,
        }
    }

    /// Records a sampled block allocated at the stack `frames`, in the
    /// table (blocks sampled in place). A sample still recorded at `addr`
    /// (a free the profile missed: none known) is replaced and counted as
    /// freed, so no address is in the table twice.
    fn record(&mut self, addr: usize, size: usize, weight: usize, frames: &Frames) {
        let sample = self.sample(addr, size, weight, frames);
        match self.samples.replace(sample) {
            Ok(None) => {}
            Ok(Some(stale)) => self.retire(stale, sample.born),
            // Out of memory for the table: the block goes unrecorded.
            Err(()) => return,
        }
        self.count(&sample);
    }

    /// Records the profile heap's block at `p` (the program's pointer) in
    /// its prefix, which has its `hdr` set.
    ///
    /// # Safety
    /// `p` is a block of the profile heap just made, with its prefix.
    unsafe fn record_prefix(&mut self, p: *mut u8, size: usize, weight: usize, frames: &Frames) {
        let s = self.sample(p as usize, size, weight, frames);
        // SAFETY: the prefix is ours (caller); `s.site < n_sites`.
        unsafe {
            let pre = &mut *prefix_of(p);
            pre.born = s.born;
            pre.bytes = s.bytes;
            pre.site = s.site;
            pre.blocks = s.blocks;
            let site = &mut *self.sites.add(s.site as usize);
            site.pb += s.born as u128 * s.blocks as u128;
            site.pbk += s.blocks as u64;
        }
        self.count(&s);
    }

    /// Adds the sample `s`, just recorded, to its site and the totals.
    fn count(&mut self, s: &Sample) {
        let (bytes, blocks) = (s.bytes, s.blocks as u64);
        // SAFETY: `s.site < n_sites <= MAX_SITES` (`site_of`); ours under the lock.
        let site = unsafe { &mut *self.sites.add(s.site as usize) };
        site.tb += bytes;
        site.tbk += blocks;
        site.cb += bytes;
        site.cbk += blocks;
        if site.cb > site.mb {
            site.mb = site.cb;
            site.mbk = site.cbk;
        }
        self.live += bytes;
        if self.live > self.peak {
            self.peak = self.live;
            self.t_peak = s.born;
            // SAFETY: `n_sites` sites (invariant); ours under the lock.
            let sites = unsafe { core::slice::from_raw_parts_mut(self.sites, self.n_sites) };
            for s in sites {
                s.gb = s.cb;
                s.gbk = s.cbk;
            }
        }
    }

    /// Forgets the sampled block at `addr` (if it is one), freed at `now`.
    fn forget(&mut self, addr: usize, now: u64) {
        if let Some(s) = self.samples.take(addr) {
            self.retire(s, now);
        }
    }

    /// Takes the profile heap's block at `p` (the program's pointer),
    /// freed at `now`, off its site.
    ///
    /// # Safety
    /// `p` is a block of the profile heap recorded by
    /// [`State::record_prefix`] and not forgotten since.
    unsafe fn forget_prefix(&mut self, p: *mut u8, now: u64) {
        // SAFETY: the block keeps its prefix (caller).
        let pre = unsafe { &*prefix_of(p) };
        let s = Sample {
            addr: p as usize,
            site: pre.site,
            blocks: pre.blocks,
            bytes: pre.bytes,
            born: pre.born,
        };
        // SAFETY: `s.site < n_sites` (recorded); ours under the lock.
        let site = unsafe { &mut *self.sites.add(s.site as usize) };
        site.pb -= s.born as u128 * s.blocks as u128;
        site.pbk -= s.blocks as u64;
        self.retire(s, now);
    }

    /// Takes the freed block `p` (the program's pointer) of the profile
    /// heap, freed at `now`, off the profile, and keeps its block in the
    /// stash or frees it in the profile heap. Once frozen, only frees it.
    ///
    /// # Safety
    /// `p` is a block of the profile heap that the program freed, not yet
    /// settled.
    unsafe fn settle(&mut self, p: *mut u8, now: u64) {
        // SAFETY: the block keeps its prefix until freed here.
        let block = unsafe { p.sub((*prefix_of(p)).hdr as usize) };
        if !self.frozen {
            // SAFETY: made while not frozen, so recorded (`Prefix`).
            unsafe { self.forget_prefix(p, now) };
            // SAFETY: the prefix is intact until the block is freed here.
            let bin = unsafe { (*prefix_of(p)).bin } as usize;
            // (Checked in debug builds with an abort, not a panic: the
            // panic would allocate under this lock and wait for it.)
            // SAFETY: the block is still allocated in the profile heap, so
            // its segment and page entry are mapped.
            if cfg!(debug_assertions)
                && unsafe { (*page_of(segment_of(block), block)).class } as usize != bin
            {
                crate::fatal_pointer(b"profile: a sample's prefix names another class", block);
            }
            if STASH.put(self, block, bin) {
                return;
            }
        }
        // SAFETY: a live block of the profile heap, which we run under the lock.
        unsafe { heap::free_in(self.heap, block) };
    }

    /// Settles the blocks `heap`'s thread holds back ([`Pending`]).
    ///
    /// # Safety
    /// The calling thread runs `heap`, a heap of the program's (not the
    /// static empty heap).
    unsafe fn settle_pending(&mut self, heap: *mut Heap) {
        // SAFETY: `heap` is live (caller).
        let pend = unsafe { &(*heap).profile_pending };
        let n = pend.n.load(Ordering::Relaxed);
        for (p, at) in &pend.at[..n] {
            let p = p.load(Ordering::Relaxed) as *mut u8;
            // SAFETY: entries before `n` are freed blocks of the profile
            // heap, not settled yet (`Pending`'s invariant).
            unsafe { self.settle(p, at.load(Ordering::Relaxed)) };
        }
        pend.n.store(0, Ordering::Relaxed);
    }

    /// Takes the sample `s`, just removed from the table, off its site's
    /// live figures and adds its lifetime.
    fn retire(&mut self, s: Sample, now: u64) {
        // SAFETY: `s.site < n_sites`.
        let site = unsafe { &mut *self.sites.add(s.site as usize) };
        site.cb -= s.bytes;
        site.cbk -= s.blocks as u64;
        site.tl += (now.saturating_sub(s.born) as u128) * s.blocks as u128;
        self.live -= s.bytes;
    }

    /// Ticks since profiling started.
    fn now(&self) -> u64 {
        self.clock.read().wrapping_sub(self.start_ticks)
    }

    /// Stops the clock (at exit): later [`State::us`] conversions use
    /// the rate seen from the start to now. Returns now, in ticks.
    fn stop_clock(&mut self) -> u64 {
        self.end_ticks = self.now();
        self.end_us = os::now_us().saturating_sub(self.start_us);
        self.end_ticks
    }

    /// A tick interval in µs (after [`State::stop_clock`]).
    fn us(&self, ticks: u128) -> u64 {
        if self.clock != Clock::Tsc {
            return ticks as u64;
        }
        (ticks * self.end_us as u128 / (self.end_ticks as u128).max(1)) as u64
    }
}

/// The calling thread's stack (up to [`DEPTH`] frames) above the function
/// this is inlined into, whose local is the marker: a sample's site.
/// It fills the caller's `out` (a returned value was copied: 528 bytes).
#[inline(always)]
fn capture(out: &mut Frames) {
    let marker = 0u8;
    crate::check::capture_fast(out, DEPTH, &marker as *const u8 as usize);
}

/// Starts loading what a sample whose block is of class `bin` (none:
/// huge, or no class) will touch under the lock: the lock, the state's
/// lines it reads, the prefixes of the blocks `heap`'s thread holds back
/// (settled first), and the block the stash would give now, so that these
/// misses overlap the stack walk instead of following it. Reads only the
/// thread's own [`Pending`] and the stash's atomics.
///
/// # Safety
/// `heap` is null or the calling thread's heap.
#[inline(always)]
unsafe fn warm(heap: *mut Heap, bin: Option<usize>) {
    if let Some(c) = bin.filter(|&c| c < CLASS_COUNT) {
        let kept = STASH.peek(c);
        if !kept.is_null() {
            // Its prefix's line (with the usual `hdr` of 32 bytes): the
            // store that writes it would wait for the page walk of a cold
            // page.
            crate::hint::prefetch(kept);
        }
    }
    ST.prefetch(&[
        core::mem::offset_of!(State, heap),
        core::mem::offset_of!(State, live),
    ]);
    if !heap.is_null() {
        // SAFETY: the calling thread runs `heap` (caller).
        let pend = unsafe { &(*heap).profile_pending };
        let n = pend.n.load(Ordering::Relaxed).min(PENDING);
        for (p, _) in &pend.at[..n] {
            crate::hint::prefetch(prefix_of(p.load(Ordering::Relaxed) as *const u8).cast());
        }
    }
}

/// A sampled allocation of `size` bytes standing for `weight` bytes of the
/// program's allocations (0: just this one), for the thread running `heap`
/// (null when it runs none: every allocation is recorded). Null when out
/// of memory.
///
/// # Safety
/// `heap` is null or the calling thread's heap (not the static empty heap).
#[cold]
#[inline(never)]
pub(crate) unsafe fn alloc(
    heap: *mut Heap,
    size: usize,
    align: usize,
    zero: bool,
    weight: usize,
) -> *mut u8 {
    // A block of the profile heap keeps its record before the program's
    // pointer (`Prefix`): `big` bytes, of class `bin`; a block that is
    // huge once the prefix is added is sampled in place.
    let hdr = PREFIX.max(align);
    let big = size.checked_add(hdr).filter(|&b| !heap::is_huge(b, align));
    let bin = big.and_then(|b| size_align_to_bin(b, align));
    // SAFETY: the caller's promise.
    unsafe { warm(heap, bin) };
    let mut here = Frames::new();
    capture(&mut here);
    let p = {
        let mut st = ST.lock();
        if !st.ready() || st.sites.is_null() {
            return ptr::null_mut();
        }
        if !heap.is_null() {
            // Before this sample counts towards the peak.
            // SAFETY: the caller's promise.
            unsafe { st.settle_pending(heap) };
        }
        if let Some(big) = big {
            // The block and its page's class: a kept block's is the class
            // it was kept under (`Stash`'s invariant); a new block's page
            // was just used, so reading its class costs no miss.
            let (block, class) = match STASH.take(&st, bin) {
                Some((b, c)) => {
                    if zero {
                        // SAFETY: a kept block of at least `big` bytes, ours.
                        unsafe { ptr::write_bytes(b.add(hdr), 0, size) };
                    }
                    (b, c)
                }
                None => {
                    // SAFETY: the profile heap is ours while we hold its lock.
                    let b = unsafe { heap::alloc_in(st.heap, big, align, zero) };
                    if b.is_null() {
                        return b;
                    }
                    // SAFETY: a live block: its segment and page are mapped.
                    (b, unsafe { (*page_of(segment_of(b), b)).class })
                }
            };
            // SAFETY: `block` has `big = hdr + size` bytes; `hdr >= PREFIX`
            // and a multiple of `align`, so `p` is aligned and its prefix
            // lies in the block.
            unsafe {
                let p = block.add(hdr);
                (*prefix_of(p)).hdr = hdr as u32;
                (*prefix_of(p)).bin = class;
                if !st.frozen {
                    st.record_prefix(p, size, weight, &here);
                }
                p
            }
        } else {
            // Huge once the prefix is added: a huge block without one,
            // sampled in place (its segment says so; the table keeps it),
            // also when `size` alone would not be huge.
            let p = crate::huge::alloc(size, align, zero);
            if !p.is_null() && !st.frozen {
                // SAFETY: a live huge block: its segment is its own.
                unsafe { (*segment_of(p)).sampled = true };
                st.record(p as usize, size, weight, &here);
            }
            p
        }
    };
    if every() && !p.is_null() {
        // SAFETY: `p` is a live block we just made.
        ORPHAN.orphan_alloc(unsafe { heap::block_usable(p) }, size);
    }
    p
}

/// Frees a sampled block of the profile heap at `p` (the program's
/// pointer), for the thread running `heap`: held back in `heap`
/// ([`Pending`]) or, when that is full or the thread runs no heap, settled
/// at once.
///
/// # Safety
/// `p` is a live block of the profile heap, given out by [`alloc`]; the
/// calling thread runs `heap` (possibly the static empty heap).
pub(crate) unsafe fn free_sampled(heap: *mut Heap, p: *mut u8) {
    let own = heap != crate::thread::empty_heap();
    if own {
        // SAFETY: the calling thread runs `heap` (caller).
        let pend = unsafe { &(*heap).profile_pending };
        let n = pend.n.load(Ordering::Relaxed);
        if n < PENDING {
            pend.at[n].0.store(p as usize, Ordering::Relaxed);
            pend.at[n].1.store(Clock::now(), Ordering::Relaxed);
            pend.n.store(n + 1, Ordering::Release);
            return;
        }
    }
    let mut st = ST.lock();
    let now = st.now();
    // SAFETY: the calling thread runs `heap`; `p` is a freed block of the
    // profile heap, not held back.
    unsafe {
        if own {
            st.settle_pending(heap);
        }
        st.settle(p, now);
    }
}

/// Records the block `p` of `size` bytes, just allocated by the calling
/// thread's heap, as a sample standing for `weight` bytes. False when the
/// profile is not recording (the caller then does not mark the block).
#[cold]
#[inline(never)]
pub(crate) fn sample_in_place(p: *mut u8, size: usize, weight: usize) -> bool {
    let mut here = Frames::new();
    capture(&mut here);
    let mut st = ST.lock();
    if !st.ready() || st.sites.is_null() || st.frozen {
        return false;
    }
    st.record(p as usize, size, weight, &here);
    true
}

/// A block sampled in place (a huge block, whose segment says so, or a
/// large one, whose page does) is being freed.
pub(crate) fn forget_in_place(p: *mut u8) {
    let mut st = ST.lock();
    if !st.frozen {
        let now = st.now();
        st.forget(p as usize, now);
    }
}

/// `realloc` when every allocation is recorded: a new recorded block, the
/// contents copied, the old block freed.
///
/// # Safety
/// `p` is a live block; `old_size` its size (or `usize::MAX`: unknown).
pub(crate) unsafe fn realloc(
    p: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    // SAFETY: null: every allocation is recorded, so the thread runs no heap.
    let q = unsafe { alloc(ptr::null_mut(), new_size, align, false, 0) };
    if !q.is_null() {
        // SAFETY: `p` is live (caller); both blocks are live and distinct,
        // and `old` and `new_size` bound what each holds.
        unsafe {
            let old = heap::block_usable(p).min(old_size);
            ptr::copy_nonoverlapping(p, q, old.min(new_size));
            heap::free(p);
        }
        // One call of the program's: a realloc, not the allocation and
        // free counted above.
        ORPHAN.orphan_realloc_moved();
    }
    q
}

/// Fork support: the lock is held across `fork()`.
pub(crate) fn fork_prepare() {
    ST.raw_lock();
}

/// Fork support: releases the lock in parent and child.
///
/// # Safety
/// Only from the fork handlers, after `fork_prepare`.
pub(crate) unsafe fn fork_release() {
    // SAFETY: `fork_prepare` took the lock.
    unsafe { ST.raw_unlock() };
}

// ---------------------------------------------------------------------------
// Output at exit

extern "C" fn at_exit() {
    // The C front writes from its `.fini_array` (`c_front_exit`), once any
    // other copy in the process has said whether it wrote a profile.
    if !crate::peer::is_c_front() {
        write_at_exit();
    }
}

/// Whether this copy's profile sampled anything (so wrote, or will write,
/// a profile at exit).
pub(crate) fn sampled_anything() -> bool {
    // The profile heap is made at the first sample (`State::ready`).
    !HEAP.load(Ordering::Acquire).is_null()
}

/// Writes the profile and its table, once (later calls find it frozen).
pub(crate) fn write_at_exit() {
    if !on() || !crate::thread::served_anything() {
        // Another copy of heapkeep in this process served the program; it
        // writes the profile (this one would overwrite it with nothing).
        return;
    }
    let mut path = [0u8; 512];
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let Some(mut len) = writer::output_path(
        &mut path,
        b"HEAPKEEP_PROFILE_OUT\0",
        "profile",
        "json",
        pid,
        PID.load(Ordering::Relaxed),
        0,
    ) else {
        return;
    };
    // Two copies of heapkeep in the process (a Rust program on heapkeep,
    // run under `heapkeep profile`): the program's own copy writes the
    // path; the C front, when both sampled, writes beside it.
    let c_front_with_peer = crate::peer::is_c_front() && crate::peer::peer_profiled();
    if c_front_with_peer {
        match c_heap_path(&mut path, len) {
            Some(l) => len = l,
            None => return,
        }
    }
    let (st, now) = {
        let mut st = ST.lock();
        if st.frozen {
            return;
        }
        if st.heap.is_null() {
            // Nothing sampled: no profile (which also keeps a second copy of
            // heapkeep in the process from overwriting the first's), and
            // a word about it unless the other copy has a profile to show.
            drop(st);
            if c_front_with_peer || (!crate::peer::is_c_front() && crate::peer::has_c_front()) {
                return;
            }
            Writer::new()
                .s("heapkeep: profile: no allocation was sampled (fewer than ")
                .d(rate())
                .s(" bytes allocated?); nothing written\n");
            return;
        }
        let now = st.stop_clock();
        // Blocks that threads freed and hold back were freed when they say.
        crate::thread::for_each_heap(|h| {
            // SAFETY: heaps are never freed. Entries before `n` (read with
            // acquire) are published and stay valid (`Pending`); their
            // owner never touches them again without this lock, and finds
            // the profile frozen when it does.
            let pend = unsafe { &(*h).profile_pending };
            let n = pend.n.load(Ordering::Acquire);
            for (p, at) in &pend.at[..n] {
                // SAFETY: a held-back block of the profile heap, made
                // before the freeze, so recorded (`Prefix`).
                unsafe {
                    st.forget_prefix(
                        p.load(Ordering::Relaxed) as *mut u8,
                        at.load(Ordering::Relaxed),
                    )
                };
            }
        });
        st.frozen = true;
        // Blocks alive at exit count their lifetime up to now.
        let sites = st.sites;
        // SAFETY: `n_sites` sites (invariant); ours under the lock.
        for site in unsafe { core::slice::from_raw_parts_mut(sites, st.n_sites) } {
            site.tl += now as u128 * site.pbk as u128 - site.pb;
        }
        st.samples.for_each(|b| {
            // SAFETY: `b.site < n_sites`; ours under the lock.
            unsafe {
                (*sites.add(b.site as usize)).tl +=
                    (now.saturating_sub(b.born) as u128) * b.blocks as u128
            };
        });
        let frozen: *mut State = &mut *st;
        // SAFETY: the state is a static, and frozen: nothing else writes the
        // fields the writers read (sites, depot, figures) from now on.
        (unsafe { &mut *frozen }, now)
    };
    // SAFETY: `path[..len]` is a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    let shown = &path[..len];
    if fd < 0 {
        Writer::new()
            .s("heapkeep: profile: cannot write ")
            .b(shown)
            .s("\n");
        return;
    }
    write_dhat(st, fd, pid, now);
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    write_table(st, shown);
}

/// Turns the profile path `path[..len]` (NUL-terminated) into the C
/// heap's: `.c-heap` before a final `.json`, else at the end. The new
/// length (without the NUL), or `None` if it does not fit.
fn c_heap_path(path: &mut [u8], len: usize) -> Option<usize> {
    const TAG: &[u8] = b".c-heap";
    let at = if path[..len].ends_with(b".json") {
        len - 5
    } else {
        len
    };
    let new_len = len + TAG.len();
    if new_len + 1 > path.len() {
        return None;
    }
    path.copy_within(at..len + 1, at + TAG.len());
    path[at..at + TAG.len()].copy_from_slice(TAG);
    Some(new_len)
}

/// Writes `s` as the body of a JSON string (quotes, backslashes and control
/// characters escaped).
fn json_str(w: &mut Writer, s: &[u8]) {
    for &c in s {
        match c {
            b'"' => w.s("\\\""),
            b'\\' => w.s("\\\\"),
            0..=0x1f => w.s("\\u00").b(&[
                b"0123456789abcdef"[(c >> 4) as usize],
                b"0123456789abcdef"[(c & 15) as usize],
            ]),
            _ => w.b(&[c]),
        };
    }
}

/// Writes the DHAT profile (format of valgrind's `dhat/dh_main.c`, version
/// 2) to `fd`: the frame table first (recording how many frames each site
/// has; a frame shared by sites is listed once per site, which the format
/// allows), then the sites.
fn write_dhat(st: &mut State, fd: i32, pid: u32, now: u64) {
    let symbolize = crate::check::symbolize();
    let mut w = Writer::to_fd(fd);
    w.s("{\"dhatFileVersion\":2,\"mode\":\"heapkeep\",\"verb\":\"Allocated\",")
        .s("\"bklt\":true,\"bkacc\":false,\"tu\":\"µs\",\"Mtu\":\"s\",\"tuth\":10,\"cmd\":\"");
    write_cmdline(&mut w);
    w.s("\",\"pid\":").d(pid as usize);
    w.s(",\"tg\":").d(st.us(st.t_peak as u128) as usize);
    w.s(",\"te\":").d(st.us(now as u128) as usize);
    w.s(",\"ftbl\":[\"[root]\"");
    for k in 0..st.n_sites {
        // SAFETY: `k < n_sites`.
        let site = unsafe { &mut *st.sites.add(k) };
        let mut n = 0;
        stack::describe(st.depot.get(site.stack), symbolize, |ip, func, loc| {
            n += 1;
            w.s(",\"").x(ip).s(": ");
            json_str(&mut w, func);
            match loc {
                Loc::Line(l) => {
                    w.s(" (");
                    json_str(&mut w, l);
                    w.s(")");
                }
                Loc::Module(m, off) => {
                    w.s(" (");
                    json_str(&mut w, m);
                    w.s("+").x(off).s(")");
                }
                Loc::None => {}
            }
            w.s("\"");
        });
        site.frames = n;
    }
    w.s("],\"pps\":[");
    // Frame numbers: 0 is "[root]", then each site's frames in order.
    let mut next_frame = 1usize;
    for (k, s) in st.sites().iter().enumerate() {
        if k > 0 {
            w.s(",");
        }
        w.s("{\"tb\":")
            .d(s.tb as usize)
            .s(",\"tbk\":")
            .d(s.tbk as usize);
        w.s(",\"tl\":").d(st.us(s.tl) as usize);
        w.s(",\"mb\":")
            .d(s.mb as usize)
            .s(",\"mbk\":")
            .d(s.mbk as usize);
        w.s(",\"gb\":")
            .d(s.gb as usize)
            .s(",\"gbk\":")
            .d(s.gbk as usize);
        w.s(",\"eb\":")
            .d(s.cb as usize)
            .s(",\"ebk\":")
            .d(s.cbk as usize);
        w.s(",\"fs\":[");
        for i in 0..s.frames as usize {
            if i > 0 {
                w.s(",");
            }
            w.d(next_frame + i);
        }
        next_frame += s.frames as usize;
        w.s("]}");
    }
    w.s("]}\n");
    w.flush();
}

/// The program's command line, JSON-escaped, arguments joined by spaces.
fn write_cmdline(w: &mut Writer) {
    let mut buf = [0u8; 1024];
    let Some(n) = os::read_head(c"/proc/self/cmdline", &mut buf) else {
        return;
    };
    let text = &buf[..n];
    let text = text.strip_suffix(&[0]).unwrap_or(text);
    for (i, arg) in text.split(|&c| c == 0).enumerate() {
        if i > 0 {
            w.s(" ");
        }
        json_str(w, arg);
    }
}

/// The top sites on stderr: by bytes allocated, at the peak, at exit.
fn write_table(st: &State, path: &[u8]) {
    let mut w = Writer::new();
    let total: u64 = st.sites().iter().map(|s| s.tb).sum();
    let at_exit: u64 = st.sites().iter().map(|s| s.cb).sum();
    w.s("heapkeep: profile: ")
        .b(path)
        .s(" (open it in DHAT's dh_view.html); ")
        .d(st.sites().len())
        .s(" sites, ")
        .d(total as usize)
        .s(" bytes allocated, ")
        .d(st.peak as usize)
        .s(" live at the peak, ")
        .d(at_exit as usize)
        .s(" at exit (");
    if every() {
        w.s("every allocation recorded: ")
            .d(st.taken as usize)
            .s(" blocks)\n");
    } else {
        w.s("estimated from ")
            .d(st.taken as usize)
            .s(" samples, one per ")
            .d(rate())
            .s(" bytes allocated on average)\n");
    }
    type Key = fn(&Site) -> u64;
    let tables: [(&str, Key); 3] = [
        ("allocated", |s| s.tb),
        ("live at the peak", |s| s.gb),
        ("leaked at exit", |s| s.cb),
    ];
    for (title, key) in tables {
        // The five largest, by selection (no allocation).
        let mut shown = [usize::MAX; 5];
        for slot in 0..shown.len() {
            let best = st
                .sites()
                .iter()
                .enumerate()
                .filter(|(i, s)| key(s) > 0 && !shown.contains(i))
                .max_by_key(|(_, s)| key(s));
            let Some((i, s)) = best else { break };
            shown[slot] = i;
            if slot == 0 {
                w.s("  top sites by bytes ").s(title).s(":\n");
            }
            w.s("  ").d(key(s) as usize).s(" bytes at:\n");
            let mut frames = 0;
            stack::describe(
                st.depot.get(s.stack),
                crate::check::symbolize(),
                |ip, func, loc| {
                    if frames < 3 {
                        w.s("      ").x(ip).s(" in ").b(func);
                        if let Loc::Line(l) = loc {
                            w.s(" ").b(l);
                        }
                        w.s("\n");
                    }
                    frames += 1;
                },
            );
        }
    }
    w.flush();
}
