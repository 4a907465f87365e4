//! How deep each thread's stack went (option `HEAPKEEP_STACKS`, which
//! `heapkeep run` sets; its summary lists the deepest threads).
//!
//! A thread's stack is one mapping. When a thread first calls the heap
//! ([`begin_thread`]) we find that mapping in `/proc/self/maps` and note
//! its bounds in the thread's heap. From then on every page the stack
//! reaches becomes resident and stays so (anonymous memory stays resident
//! while mapped unless it is swapped out), so the depth the stack reached
//! is the distance from the top of the mapping to its lowest resident page
//! (`mincore`). That is read when the thread exits (its heap's exit hook,
//! [`end_thread`]) and, for threads still running, when [`stack_peaks`] is
//! called (the exit report calls it).
//!
//! Pages an earlier thread touched do not count for a new one: glibc
//! hands the stacks of exited threads to new threads, but drops their
//! pages (`MADV_DONTNEED`) when the old thread exits, after our exit hook
//! has measured it (tests/c/stacks.c checks a reused stack). Transparent
//! huge pages could make 2 MiB resident for one touch: the stack gets
//! `MADV_NOHUGEPAGE`.
//!
//! The main thread's stack (`[stack]`) grows down on demand; its size is
//! the `RLIMIT_STACK` soft limit. The top of a thread's mapping also holds
//! glibc's thread descriptor and TLS (a few KiB, counted as used). Not
//! seen: threads that never call the heap, and a thread whose first heap
//! call runs on its alternate signal stack.

use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use crate::check::options::{self, id};
use crate::heap::Heap;
use crate::os::{self, maps};
use crate::sync::SpinLock;
use crate::thread;
use crate::writer::Writer;

/// How many threads [`StackPeaks`] lists (the deepest ones).
const LISTED: usize = 64;

/// Whether stacks are measured (read at start-up).
static ON: AtomicBool = AtomicBool::new(false);

/// The threads that exited, measured as they left.
static EXITED: SpinLock<StackPeaks> = SpinLock::new(StackPeaks::new());

/// How deep one thread's stack went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackPeak {
    /// The thread's id (`gettid`).
    pub thread_id: u32,
    /// The thread's name (`/proc/self/task/<id>/comm`), NUL-padded.
    pub name: [u8; 16],
    /// Bytes from the top of the stack to the deepest page it touched.
    pub peak_bytes: usize,
    /// The stack's size: its mapping, or for the main thread the
    /// `RLIMIT_STACK` soft limit (the mapping when unlimited).
    pub size_bytes: usize,
    /// Still running when measured (else measured as it exited).
    pub running: bool,
    /// The process's main thread.
    pub main: bool,
}

impl StackPeak {
    /// The thread's name as text (empty when unknown).
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&c| c == 0).unwrap_or(16);
        core::str::from_utf8(&self.name[..len]).unwrap_or("")
    }
}

/// The deepest stacks of the threads measured so far, deepest first.
#[derive(Clone, Copy, Debug)]
pub struct StackPeaks {
    /// Threads measured (exited and running), listed or not.
    pub threads: usize,
    len: usize,
    rows: [StackPeak; LISTED],
}

impl StackPeaks {
    const fn new() -> StackPeaks {
        StackPeaks {
            threads: 0,
            len: 0,
            rows: [StackPeak {
                thread_id: 0,
                name: [0; 16],
                peak_bytes: 0,
                size_bytes: 0,
                running: false,
                main: false,
            }; LISTED],
        }
    }

    /// The listed threads, deepest first (at most 64).
    pub fn deepest(&self) -> &[StackPeak] {
        &self.rows[..self.len]
    }

    /// Counts `p` and lists it if it is among the deepest.
    fn add(&mut self, p: StackPeak) {
        self.threads += 1;
        if self.len < LISTED {
            self.rows[self.len] = p;
            self.len += 1;
            return;
        }
        let (low, shallowest) = self
            .rows
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.peak_bytes)
            .map(|(i, r)| (i, r.peak_bytes))
            .unwrap_or((0, 0));
        if p.peak_bytes > shallowest {
            self.rows[low] = p;
        }
    }
}

/// Where a heap's thread has its stack.
///
/// Invariant: `hi` is 0 when no running thread is measured on this heap;
/// otherwise `[lo, hi)` was the stack mapping of thread `tid` when it
/// started (the main stack's `lo` only moves down later). Written by the
/// owning thread (`hi` last, with release), read by any thread.
pub(crate) struct ThreadStack {
    lo: AtomicUsize,
    hi: AtomicUsize,
    tid: AtomicU32,
    main: AtomicBool,
}

impl ThreadStack {
    pub(crate) const fn new() -> ThreadStack {
        ThreadStack {
            lo: AtomicUsize::new(0),
            hi: AtomicUsize::new(0),
            tid: AtomicU32::new(0),
            main: AtomicBool::new(false),
        }
    }

    /// The recorded stack, if any: (lo, hi, tid, main).
    fn read(&self) -> Option<(usize, usize, u32, bool)> {
        let hi = self.hi.load(Ordering::Acquire);
        if hi == 0 {
            return None;
        }
        let r = (
            self.lo.load(Ordering::Relaxed),
            hi,
            self.tid.load(Ordering::Relaxed),
            self.main.load(Ordering::Relaxed),
        );
        // A thread that left meanwhile: its figures may be half replaced.
        (self.hi.load(Ordering::Acquire) == hi).then_some(r)
    }
}

/// Reads the option. Called once during start-up, before any allocation.
pub(crate) fn init() {
    // Check mode runs no thread heaps.
    let on = options::get(id::STACKS) == 1 && options::get(id::CHECK) != 1;
    ON.store(on, Ordering::Relaxed);
}

/// Whether stacks are measured.
#[inline]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Notes the calling thread's stack in `heap`, the heap it now runs.
#[cold]
pub(crate) fn begin_thread(heap: *mut Heap) {
    let marker = 0u8;
    let sp = core::hint::black_box(&marker) as *const u8 as usize;
    if os::on_signal_stack() {
        return;
    }
    let Some(m) = maps::holding(sp) else { return };
    os::no_huge_pages(m.lo, m.hi);
    // SAFETY: heaps are never freed; this thread runs `heap`.
    let st = unsafe { &(*heap).stack };
    st.lo.store(m.lo, Ordering::Relaxed);
    st.tid.store(os::thread_id(), Ordering::Relaxed);
    st.main.store(m.main_stack, Ordering::Relaxed);
    st.hi.store(m.hi, Ordering::Release);
}

/// Measures the stack of the thread leaving `heap` and keeps the figure.
#[cold]
pub(crate) fn end_thread(heap: *mut Heap) {
    // SAFETY: heaps are never freed; this thread ran `heap` until now.
    let st = unsafe { &(*heap).stack };
    if let Some((lo, hi, tid, main)) = st.read() {
        if let Some(p) = measure(lo, hi, tid, main, false) {
            EXITED.lock().add(p);
        }
    }
    st.hi.store(0, Ordering::Release);
}

/// In a forked child: only the calling thread lives on (running `me`), and
/// the threads measured in the parent are the parent's.
pub(crate) fn fork_child(me: *mut Heap) {
    // SAFETY: the child's only thread; no one else holds the lock.
    unsafe { EXITED.force_unlock() };
    *EXITED.lock() = StackPeaks::new();
    thread::for_each_heap(|h| {
        // SAFETY: heaps are never freed.
        let st = unsafe { &(*h).stack };
        if h == me {
            st.tid.store(os::thread_id(), Ordering::Relaxed);
        } else {
            st.hi.store(0, Ordering::Release);
        }
    });
}

/// How deep the stack `[lo, hi)` of thread `tid` went.
fn measure(lo: usize, hi: usize, tid: u32, main: bool, running: bool) -> Option<StackPeak> {
    let (lo, size) = if main {
        // The main stack grew down since it was noted.
        let m = maps::holding(hi - 1)?;
        let limit = os::main_stack_limit().unwrap_or(0);
        (m.lo, limit.max(m.hi - m.lo))
    } else {
        (lo, hi - lo)
    };
    let low = os::lowest_resident(lo as *const u8, hi - lo)?;
    let mut p = StackPeak {
        thread_id: tid,
        peak_bytes: hi - lo - low,
        size_bytes: size,
        running,
        main,
        ..StackPeak::default()
    };
    thread_name(tid, &mut p.name);
    Some(p)
}

/// Reads thread `tid`'s name (`/proc/self/task/<tid>/comm`) into `out`,
/// NUL-padded (empty when it cannot be read).
fn thread_name(tid: u32, out: &mut [u8; 16]) {
    let mut path = Writer::buffer();
    path.s("/proc/self/task/").d(tid as usize).s("/comm\0");
    let Ok(path) = CStr::from_bytes_with_nul(path.as_bytes()) else {
        return;
    };
    *out = [0; 16];
    let mut n = os::read_head(path, out).unwrap_or(0);
    // The kernel ends the name with a newline.
    while n > 0 && (out[n - 1] == b'\n' || out[n - 1] == 0) {
        n -= 1;
        out[n] = 0;
    }
}

/// The deepest stacks of the threads measured so far (those that exited,
/// and those running now, measured now), deepest first. Empty unless the
/// option `HEAPKEEP_STACKS` is 1 (`heapkeep run` sets it). Never allocates;
/// any thread, not from a signal handler.
pub fn stack_peaks() -> StackPeaks {
    let mut all = *EXITED.lock();
    if on() {
        thread::for_each_heap(|h| {
            // SAFETY: heaps are never freed.
            let st = unsafe { &(*h).stack };
            if let Some((lo, hi, tid, main)) = st.read() {
                if let Some(p) = measure(lo, hi, tid, main, true) {
                    all.add(p);
                }
            }
        });
    }
    let len = all.len;
    all.rows[..len].sort_unstable_by_key(|p| core::cmp::Reverse(p.peak_bytes));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peak(tid: u32, bytes: usize) -> StackPeak {
        StackPeak {
            thread_id: tid,
            peak_bytes: bytes,
            ..StackPeak::default()
        }
    }

    #[test]
    fn the_table_keeps_the_deepest() {
        let mut t = StackPeaks::new();
        for i in 0..(LISTED as u32 * 3) {
            // Depths in a scrambled order.
            t.add(peak(i, ((i as usize * 37) % 1000) * 100));
        }
        assert_eq!(t.threads, LISTED * 3);
        assert_eq!(t.deepest().len(), LISTED);
        let mut all: Vec<usize> = (0..LISTED * 3).map(|i| ((i * 37) % 1000) * 100).collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept: Vec<usize> = t.deepest().iter().map(|p| p.peak_bytes).collect();
        kept.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(kept, all[..LISTED]);
    }

    #[test]
    fn names_read_as_text() {
        let mut p = peak(1, 0);
        assert_eq!(p.name(), "");
        p.name[..6].copy_from_slice(b"worker");
        assert_eq!(p.name(), "worker");
        p.name = *b"sixteen-letters!";
        assert_eq!(p.name(), "sixteen-letters!");
    }
}
