//! Two copies of heapkeep in one process: a Rust program that uses heapkeep
//! as its global allocator, run under `heapkeep run` or `heapkeep profile`,
//! which preload the C front (`libheapkeep_preload.so`) as its C heap.
//!
//! Each copy keeps its own heap and counts, so without this module the C
//! front's exit report counted only the C heap (a handful of calls from the
//! C library, none of the program's Rust allocations), and a copy whose
//! profile sampled nothing said so while the other wrote the profile.
//!
//! The C front marks itself ([`mark_c_front`], from its constructor) and
//! exports `heapkeep_peer_register`. Any other copy, at exit (an `atexit`
//! handler, so before the C front's `.fini_array` work), looks that symbol
//! up and hands the C front a [`PeerInfo`]: functions to read its counts
//! and to say whether it wrote a profile. The C front then adds the peer's
//! counts to its report and names its own profile apart from the peer's.
//! Nothing here runs in a process with one copy beyond one failed `dlsym`
//! at exit.

use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::stats::Stats;

/// What a copy of heapkeep tells the C front about itself. `#[repr(C)]`
/// and versioned: the two copies may come from different heapkeep
/// versions; fields are only ever appended.
#[repr(C)]
#[derive(Debug)]
pub struct PeerInfo {
    /// [`PEER_VERSION`] of the copy that made it.
    pub version: u32,
    /// Copies the copy's [`Stats`] into `out`, at most `size` bytes of them;
    /// returns the size of its full struct (as `heapkeep_stats`).
    pub stats: unsafe extern "C" fn(out: *mut Stats, size: usize) -> usize,
    /// 1 if the copy wrote a profile at exit (or will: it samples), else 0.
    pub profiled: extern "C" fn() -> c_int,
}

/// The layout of [`PeerInfo`] this copy writes and reads.
pub const PEER_VERSION: u32 = 1;

/// Set in the copy that is the process's C heap (the C front).
static C_FRONT: AtomicBool = AtomicBool::new(false);

/// In the C front: the other copy that registered, if any (a static of that
/// copy, valid until the process ends).
static PEER: AtomicPtr<PeerInfo> = AtomicPtr::new(core::ptr::null_mut());

/// This copy's own [`PeerInfo`].
static OURS: PeerInfo = PeerInfo {
    version: PEER_VERSION,
    stats: crate::stats::stats_into,
    profiled: our_profiled,
};

extern "C" fn our_profiled() -> c_int {
    crate::profile::sampled_anything() as c_int
}

/// Marks this copy as the process's C heap (the preload library's
/// constructor calls it). Not for programs.
#[doc(hidden)]
pub fn mark_c_front() {
    C_FRONT.store(true, Ordering::Relaxed);
}

/// Whether this copy is the process's C heap.
pub(crate) fn is_c_front() -> bool {
    C_FRONT.load(Ordering::Relaxed)
}

/// In the C front, behind `heapkeep_peer_register`: takes `info` from
/// another copy. False (and nothing kept) when `info` is this copy's own,
/// of a layout this copy does not know, or when a peer registered already.
///
/// # Safety
/// `info` is null or points to a `PeerInfo` that stays valid until the
/// process exits (another copy's static).
#[doc(hidden)]
pub unsafe fn accept(info: *const PeerInfo) -> bool {
    if info.is_null() || core::ptr::eq(info, &OURS) {
        return false;
    }
    // SAFETY: a valid `PeerInfo` (caller); `version` is its first field in
    // every layout.
    if unsafe { (*info).version } < PEER_VERSION {
        return false;
    }
    PEER.compare_exchange(
        core::ptr::null_mut(),
        info.cast_mut(),
        Ordering::AcqRel,
        Ordering::Relaxed,
    )
    .is_ok()
}

/// In the C front: the registered peer's counts, if a peer registered.
#[doc(hidden)]
pub fn peer_stats() -> Option<Stats> {
    let info = PEER.load(Ordering::Acquire);
    if info.is_null() {
        return None;
    }
    let mut s = Stats::default();
    // SAFETY: `info` is a peer's static `PeerInfo` (`accept`); its `stats`
    // writes at most `size_of::<Stats>()` bytes into `s`.
    unsafe { ((*info).stats)(&mut s, core::mem::size_of::<Stats>()) };
    Some(s)
}

/// In the C front: whether a registered peer wrote (or writes) a profile.
pub(crate) fn peer_profiled() -> bool {
    let info = PEER.load(Ordering::Acquire);
    // SAFETY: as in `peer_stats`.
    !info.is_null() && unsafe { ((*info).profiled)() } != 0
}

/// The C front's `heapkeep_peer_register`, if this process has a C front
/// and this copy is not it.
fn c_front_hook() -> Option<unsafe extern "C" fn(*const PeerInfo) -> c_int> {
    if is_c_front() {
        return None;
    }
    // SAFETY: dlsym with a NUL-terminated name; the symbol, when present,
    // is the C front's `heapkeep_peer_register` with this signature.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"heapkeep_peer_register".as_ptr());
        if f.is_null() {
            None
        } else {
            Some(core::mem::transmute::<
                *mut libc::c_void,
                unsafe extern "C" fn(*const PeerInfo) -> c_int,
            >(f))
        }
    }
}

/// Whether another copy of heapkeep in this process is the C heap (it then
/// writes the exit report and a profile of its own).
pub(crate) fn has_c_front() -> bool {
    c_front_hook().is_some()
}

/// Registers [`announce`] to run at exit (called once the heap is ready:
/// registering may allocate).
pub(crate) fn start() {
    // SAFETY: registers a plain function.
    unsafe { libc::atexit(announce) };
}

/// At exit, in a copy that is not the C front: hands the C front (if any)
/// this copy's [`PeerInfo`]. `atexit` handlers run before the C front's
/// `.fini_array` work, where it reads it.
extern "C" fn announce() {
    if let Some(register) = c_front_hook() {
        // SAFETY: `OURS` is a static; the hook takes a pointer to it.
        unsafe { register(&OURS) };
    }
}
