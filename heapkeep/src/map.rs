//! Heap map snapshots: the heap walk (`walk.rs`) written to a text file,
//! which `heapkeep map` turns into a picture. Asked for by environment
//! options (`check/options.rs`): `HEAPKEEP_MAP=exit|peak|signal`, the file
//! named by `HEAPKEEP_MAP_OUT` (`%p` becomes the process id; default
//! `heapkeep-map.<program>.<pid>.txt`), or by a call to
//! [`write_snapshot`] (C: `heapkeep_write_snapshot`).
//!
//! ## When
//! - `exit`: from an `atexit` handler registered at start-up (so it runs
//!   after the program's own handlers and static destructors).
//! - `peak`: whenever the process peak of bytes in use has grown by
//!   `HEAPKEEP_MAP_PEAK_STEP` percent (default 10) over the last snapshot's
//!   figure, the snapshot is rewritten, on the allocating thread, from the
//!   counters' flush that raised the peak (`counters.rs` calls [`on_peak`]:
//!   one load and compare unless a snapshot is due). The file therefore
//!   shows the heap within that step of its highest point. A program whose
//!   peak never reaches a flush (256 KiB) gets a snapshot at exit instead
//!   (`when exit`).
//! - `signal`: on `HEAPKEEP_MAP_SIGNAL` (default SIGUSR2). The handler only
//!   posts a semaphore (`sem_post` is async-signal-safe) and restores
//!   `errno`; a thread started for this (`heapkeep-map`, all signals
//!   blocked) waits on the semaphore and writes the snapshot. The walk must
//!   not run in the handler: the interrupted thread may hold a lock the walk
//!   takes. Each signal rewrites the file. A forked child has no such
//!   thread (signals to it are counted and ignored). A handler that was
//!   there before (the program's, or another copy of heapkeep's) is called
//!   after ours.
//!
//! Writing never allocates: lines are formatted into a fixed buffer
//! (`writer.rs`) and written to `<path>.tmp`, which is then renamed over
//! the path, so a reader never sees half a snapshot. One snapshot is written
//! at a time; a peak snapshot due while another is being written is
//! skipped (the next growth writes it).
//!
//! A process can hold two copies of heapkeep (a Rust program on heapkeep
//! run under the preload library, which serves its C code), both told to
//! write to the same path. A copy does not overwrite a snapshot another
//! copy in the same process wrote of a larger heap (the `pid`, `copy` and
//! `held` lines at the top of the file), so the copy that serves the
//! program wins.
//!
//! ## The file (version 1)
//! Text, one record per line, fields separated by spaces, numbers in decimal
//! except addresses and masks (`0x…`):
//! ```text
//! heapkeep-map 1
//! pid 4242
//! copy 0x7f0c2b412340            (which copy of heapkeep in the process wrote it)
//! held 12648448                   (held bytes, as in `totals`, read first)
//! program /usr/bin/python3
//! when exit                       (exit, peak, signal or call)
//! heap 0 0x7f0c2a400000 active    (index, address, state: active, retired, claimed, private)
//! segment 0x7f0c28000000 heap=0 free=0x… dirty=0x… resident=64,12,0,…
//!                                 (place heap=N, cache or guard; resident KiB per slice, 64 values)
//! span 1 1 blocks 7 128 510 510 300 0 64 full aligned
//!                                 (first slice, slices, kind blocks|large|guard, size class (blocks;
//!                                  else 0), block size, capacity, carved, used, pending remote
//!                                  frees, resident bytes; then the flags that hold)
//! huge 0x7f0c1c000000 8458240 8392704 live 8458240
//!                                 (mapping, bytes mapped, block bytes, live|cached, resident bytes)
//! totals held=… resident=… in_use=… unused_resident=… largest_free_run=… segments=… huge_live=… huge_cached=…
//! stats mapped=… mapped_peak=… live=… peak_live=… live_blocks=…
//! end
//! ```
//! Spans belong to the segment line above them. `totals` sums this walk;
//! `stats` are the counters (`heapkeep::stats()`) read just before. A file
//! without its `end` line is incomplete.

use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};

use crate::check::options::{self, id};
use crate::os;
use crate::walk::{self, Item, Place, SpanKind, Totals};
use crate::writer::{self, Writer};

/// When snapshots are written (`HEAPKEEP_MAP`; `MAP_NAMES` order).
const MODE_OFF: usize = 0;
const MODE_EXIT: usize = 1;
const MODE_PEAK: usize = 2;
const MODE_SIGNAL: usize = 3;

/// Why a snapshot was written (its `when` line).
#[derive(Clone, Copy)]
enum When {
    Exit,
    Peak,
    Signal,
    Call,
}

impl When {
    fn name(self) -> &'static str {
        match self {
            When::Exit => "exit",
            When::Peak => "peak",
            When::Signal => "signal",
            When::Call => "call",
        }
    }
}

/// The mode read at start-up.
static MODE: AtomicUsize = AtomicUsize::new(MODE_OFF);
/// The process that read the options (a forked child differs).
static PID: AtomicU32 = AtomicU32::new(0);
/// Peak mode: the peak of bytes in use that makes the next snapshot due
/// (`i64::MAX`: none, the mode is off).
static NEXT_PEAK: AtomicI64 = AtomicI64::new(i64::MAX);
/// Peak mode: a peak snapshot was written.
static PEAK_WRITTEN: AtomicBool = AtomicBool::new(false);
/// A snapshot is being written (one at a time).
static WRITING: AtomicBool = AtomicBool::new(false);

/// Reads the options. Called once during start-up, before any allocation.
pub(crate) fn init() {
    let mode = options::get(id::MAP);
    if mode == MODE_OFF {
        return;
    }
    // SAFETY: getpid has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    MODE.store(mode, Ordering::Relaxed);
    if mode == MODE_PEAK {
        NEXT_PEAK.store(0, Ordering::Relaxed);
    }
}

/// The rest of start-up (may allocate): the exit hook, the signal handler
/// and its thread.
pub(crate) fn start() {
    match MODE.load(Ordering::Relaxed) {
        MODE_EXIT | MODE_PEAK => {
            // SAFETY: registers a plain function.
            unsafe { libc::atexit(at_exit) };
        }
        MODE_SIGNAL => signal::start(options::get(id::MAP_SIGNAL) as i32),
        _ => {}
    }
}

/// The process peak of bytes in use may have risen to `peak` (called by the
/// counters' flush). Writes a peak snapshot when one is due.
#[inline]
pub(crate) fn on_peak(peak: i64) {
    if peak >= NEXT_PEAK.load(Ordering::Relaxed) {
        peak_snapshot(peak);
    }
}

#[cold]
#[inline(never)]
fn peak_snapshot(peak: i64) {
    if WRITING.load(Ordering::Relaxed) {
        return;
    }
    let step = options::get(id::MAP_PEAK_STEP) as i64;
    let next = peak.saturating_add((peak / 100).saturating_mul(step).max(1));
    NEXT_PEAK.fetch_max(next, Ordering::Relaxed);
    if write_default(When::Peak) {
        PEAK_WRITTEN.store(true, Ordering::Relaxed);
    }
}

extern "C" fn at_exit() {
    let mode = MODE.load(Ordering::Relaxed);
    if mode == MODE_EXIT || (mode == MODE_PEAK && !PEAK_WRITTEN.load(Ordering::Relaxed)) {
        // No more peak snapshots: this one is the last word.
        NEXT_PEAK.store(i64::MAX, Ordering::Relaxed);
        write_default(When::Exit);
    }
}

/// Writes a snapshot to the path the options name. False when nothing was
/// written (another copy of heapkeep serves the program, a forked child
/// without `%p` in the path, a snapshot in progress, or an error, which is
/// reported on stderr).
fn write_default(when: When) -> bool {
    if !crate::thread::served_anything() {
        // Another copy of heapkeep in this process served the program; it
        // writes the snapshot (this one would overwrite it with nothing).
        return false;
    }
    let mut path = [0u8; 512];
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    // Spare room for the ".tmp" of `<path>.tmp`.
    let Some(len) = writer::output_path(
        &mut path,
        b"HEAPKEEP_MAP_OUT\0",
        "map",
        "txt",
        pid,
        PID.load(Ordering::Relaxed),
        5,
    ) else {
        return false;
    };
    // SAFETY: `out_path` NUL-terminated the path.
    let path = unsafe { CStr::from_bytes_with_nul_unchecked(&path[..=len]) };
    write_to(path, when)
}

/// Writes a snapshot of the heap now to `path` (through `<path>.tmp`,
/// renamed when complete). Allocation-free. Returns false if it could not
/// be written (reported on stderr), another snapshot is being written, or
/// (unless `when` is `Call`) another copy of heapkeep in this process wrote
/// a snapshot of a larger heap there.
fn write_to(path: &CStr, when: When) -> bool {
    if WRITING.swap(true, Ordering::Acquire) {
        return false;
    }
    let ok = write_locked(path, when);
    WRITING.store(false, Ordering::Release);
    ok
}

/// This copy of heapkeep (a process can hold two: a Rust program on
/// heapkeep run under the preload library), named by a static's address.
fn copy_id() -> usize {
    &MODE as *const AtomicUsize as usize
}

/// Whether the snapshot at `path` was written by another copy of heapkeep
/// in this process (its `pid` and `copy` lines) for a heap that held more
/// than `held` bytes: that copy serves the program, and its snapshot stays.
fn other_copy_wrote_more(path: &CStr, held: u64) -> bool {
    let mut buf = [0u8; 512];
    let Some(n) = os::read_head(path, &mut buf) else {
        return false;
    };
    let (mut pid, mut copy, mut their_held) = (None, None, 0u64);
    for line in buf[..n].split(|&c| c == b'\n') {
        let mut words = line.splitn(2, |&c| c == b' ');
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let v = parse_number(value);
        match key {
            b"pid" => pid = v,
            b"copy" => copy = v,
            b"held" => their_held = v.unwrap_or(0),
            _ => {}
        }
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as u64;
    pid == Some(me) && copy.is_some_and(|c| c != copy_id() as u64) && their_held > held
}

/// A decimal or `0x` hexadecimal number.
fn parse_number(text: &[u8]) -> Option<u64> {
    let (digits, radix) = match text.strip_prefix(b"0x") {
        Some(h) => (h, 16),
        None => (text, 10),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |v, &d| {
        let d = (d as char).to_digit(radix)? as u64;
        Some(v * radix as u64 + d)
    })
}

fn write_locked(path: &CStr, when: When) -> bool {
    let stats = crate::stats();
    if !matches!(when, When::Call) && other_copy_wrote_more(path, stats.held_bytes) {
        return false;
    }
    let path = path.to_bytes();
    let mut tmp = [0u8; 520];
    if path.len() + 5 > tmp.len() {
        return false;
    }
    tmp[..path.len()].copy_from_slice(path);
    tmp[path.len()..path.len() + 5].copy_from_slice(b".tmp\0");
    let mut full = [0u8; 520];
    full[..path.len()].copy_from_slice(path);
    // SAFETY: `tmp` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            tmp.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        Writer::new()
            .s("heapkeep: map: cannot write ")
            .b(&tmp[..path.len() + 4])
            .s("\n");
        return false;
    }
    {
        let mut w = Writer::to_fd(fd);
        write_snapshot_text(&mut w, when, &stats);
    }
    // SAFETY: our descriptor; both paths are NUL-terminated.
    let renamed = unsafe {
        libc::close(fd);
        libc::rename(tmp.as_ptr().cast(), full.as_ptr().cast()) == 0
    };
    if !renamed {
        Writer::new()
            .s("heapkeep: map: cannot rename the snapshot to ")
            .b(path)
            .s("\n");
    }
    renamed
}

/// Formats a whole snapshot into `w` (see the module docs), with the
/// counters `s` read just before.
fn write_snapshot_text(w: &mut Writer, when: When, s: &crate::Stats) {
    let mut exe = [0u8; 256];
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as usize;
    w.s("heapkeep-map 1\npid ").d(pid);
    w.s("\ncopy ").x(copy_id());
    w.s("\nheld ").d(s.held_bytes as usize);
    let n = os::exe_path(&mut exe);
    w.s("\nprogram ").b(&exe[..n]);
    w.s("\nwhen ").s(when.name()).s("\n");
    let mut t = Totals::default();
    walk::walk(|item| {
        t.add(item);
        write_item(w, item);
    });
    w.s("totals held=").d(t.held as usize);
    w.s(" resident=").d(t.resident as usize);
    w.s(" in_use=").d(t.in_use as usize);
    w.s(" unused_resident=").d(t.unused_resident as usize);
    w.s(" largest_free_run=").d(t.largest_free_run as usize);
    w.s(" segments=").d(t.segments as usize);
    w.s(" huge_live=").d(t.huge_live as usize);
    w.s(" huge_cached=").d(t.huge_cached as usize);
    w.s("\nstats mapped=").d(s.os_mapped_bytes as usize);
    w.s(" mapped_peak=").d(s.os_mapped_peak_bytes as usize);
    w.s(" live=").d(s.live_bytes as usize);
    w.s(" peak_live=").d(s.peak_live_bytes as usize);
    w.s(" live_blocks=").d(s.live_blocks as usize);
    w.s("\nend\n");
}

/// One record of the walk as a line (a segment: its line and its spans').
fn write_item(w: &mut Writer, item: Item<'_>) {
    match item {
        Item::Heap(h) => {
            let state = match h.state {
                walk::HeapState::Active => "active",
                walk::HeapState::Retired => "retired",
                walk::HeapState::Claimed => "claimed",
                walk::HeapState::Private => "private",
            };
            w.s("heap ")
                .d(h.index)
                .s(" ")
                .x(h.addr)
                .s(" ")
                .s(state)
                .s("\n");
        }
        Item::Segment(s) => {
            w.s("segment ").x(s.base).s(" ");
            match s.place {
                Place::Heap(i) => w.s("heap=").d(i),
                Place::Cache => w.s("cache"),
                Place::Guard => w.s("guard"),
            };
            w.s(" free=").x(s.free_mask as usize);
            w.s(" dirty=").x(s.dirty_mask as usize);
            w.s(" resident=");
            for (i, r) in s.resident.iter().enumerate() {
                if i > 0 {
                    w.s(",");
                }
                w.d(*r as usize / 1024);
            }
            w.s("\n");
            for sp in s.spans() {
                let kind = match sp.kind {
                    SpanKind::Blocks => "blocks",
                    SpanKind::Large => "large",
                    SpanKind::Guard => "guard",
                };
                w.s("span ")
                    .d(sp.slice as usize)
                    .s(" ")
                    .d(sp.slices as usize);
                w.s(" ").s(kind).s(" ").d(sp.class as usize);
                w.s(" ").d(sp.block_size as usize);
                w.s(" ").d(sp.capacity as usize);
                w.s(" ").d(sp.carved as usize);
                w.s(" ").d(sp.used as usize);
                w.s(" ").d(sp.pending as usize);
                w.s(" ").d(sp.resident as usize);
                if sp.full {
                    w.s(" full");
                }
                if sp.aligned {
                    w.s(" aligned");
                }
                w.s("\n");
            }
        }
        Item::Huge(h) => {
            w.s("huge ").x(h.base).s(" ").d(h.map_size);
            w.s(" ").d(h.block_size);
            w.s(if h.live { " live " } else { " cached " });
            w.d(h.resident).s("\n");
        }
    }
}

/// Writes a heap map snapshot (the format `heapkeep map --from` reads; see
/// `docs/ARCHITECTURE.md`) to `path` now, through `<path>.tmp` renamed when
/// complete. Allocation-free; any thread, not from a signal handler.
/// Returns false if it could not be written (the reason is printed on
/// stderr) or a snapshot is being written by another thread.
pub fn write_snapshot(path: &CStr) -> bool {
    crate::thread::global_init();
    write_to(path, When::Call)
}

/// The signal mode: a handler that posts a semaphore, and a thread that
/// waits on it and writes the snapshots.
mod signal {
    use core::cell::UnsafeCell;
    use core::mem::MaybeUninit;

    /// The action our handler replaced (it is called after ours: another
    /// copy of heapkeep in the process, or the program's own handler).
    struct Old(UnsafeCell<MaybeUninit<libc::sigaction>>);
    // SAFETY: written once by `sigaction` while installing our handler,
    // only read afterwards (by the handler).
    unsafe impl Sync for Old {}

    static OLD: Old = Old(UnsafeCell::new(MaybeUninit::zeroed()));

    /// The semaphore the handler posts.
    struct Sem(UnsafeCell<MaybeUninit<libc::sem_t>>);
    // SAFETY: a POSIX semaphore is made to be shared between threads and
    // signal handlers; it is initialised once, before the handler exists.
    unsafe impl Sync for Sem {}

    static SEM: Sem = Sem(UnsafeCell::new(MaybeUninit::uninit()));

    fn sem() -> *mut libc::sem_t {
        SEM.0.get().cast()
    }

    /// Sets up the semaphore, the thread and the handler for `sig`.
    pub(super) fn start(sig: i32) {
        // SAFETY: one-time set-up at start-up: the semaphore is initialised
        // before the thread and the handler can use it. The thread is made
        // with every signal blocked (so the program's signals go to its own
        // threads), and the caller's mask is restored after.
        unsafe {
            if libc::sem_init(sem(), 0, 0) != 0 {
                return;
            }
            let mut all: libc::sigset_t = core::mem::zeroed();
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let mut attr: libc::pthread_attr_t = core::mem::zeroed();
            libc::pthread_attr_init(&mut attr);
            libc::pthread_attr_setstacksize(&mut attr, 256 << 10);
            libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
            let mut t: libc::pthread_t = 0;
            let rc = libc::pthread_create(&mut t, &attr, writer_thread, core::ptr::null_mut());
            libc::pthread_attr_destroy(&mut attr);
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
            if rc != 0 {
                crate::writer::Writer::new().s("heapkeep: map: cannot start the snapshot thread\n");
                return;
            }
            libc::pthread_setname_np(t, c"heapkeep-map".as_ptr());
            let mut act: libc::sigaction = core::mem::zeroed();
            act.sa_sigaction = on_signal
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as usize;
            act.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, OLD.0.get().cast());
        }
    }

    /// The handler: async-signal-safe (`sem_post`, `errno` kept), then the
    /// handler it replaced, if that was a function: a second copy of
    /// heapkeep in the process (a Rust program on heapkeep under the
    /// preload library; only one copy's handler can be installed, and the
    /// copy that serves the program must hear the signal), or the program's.
    extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: `__errno_location` and `sem_post` are async-signal-safe;
        // the semaphore was initialised before the handler was installed;
        // `OLD` was written by `sigaction` before this handler could run.
        // The old handler is called as the kernel would have called it.
        unsafe {
            let e = *libc::__errno_location();
            libc::sem_post(sem());
            *libc::__errno_location() = e;
            let old = &*OLD.0.get().cast::<libc::sigaction>();
            let f = old.sa_sigaction;
            if f == libc::SIG_DFL || f == libc::SIG_IGN {
                return;
            }
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    core::mem::transmute(f);
                f(sig, info, ctx);
            } else {
                let f: extern "C" fn(libc::c_int) = core::mem::transmute(f);
                f(sig);
            }
        }
    }

    /// Waits for signals and writes a snapshot for each (signals that come
    /// while one is written are folded into the next).
    extern "C" fn writer_thread(_: *mut libc::c_void) -> *mut libc::c_void {
        loop {
            // SAFETY: the semaphore is initialised (`start`).
            if unsafe { libc::sem_wait(sem()) } != 0 {
                continue; // EINTR
            }
            // SAFETY: as above; drain the posts that came meanwhile.
            while unsafe { libc::sem_trywait(sem()) } == 0 {}
            super::write_default(super::When::Signal);
        }
    }
}
