//! Faults in check mode: a `SIGSEGV`/`SIGBUS` handler that turns an access
//! to a guard page or to a freed large block into a heap report, and a
//! fault on a thread's stack guard into a stack-overflow report. It runs on
//! an alternate signal stack (each thread gets one on its first call into
//! check mode), so it works when the thread's own stack is exhausted.
//! In fast mode the same handler is installed when the sampled guard
//! (`guard.rs`) places its first block, and reports only faults in the
//! guard's pool.
//!
//! Faults that are not heapkeep's are passed on: the handler puts back the
//! disposition it replaced and returns, so the faulting instruction runs
//! again and meets the program's own handler (or the default action).

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use super::stack::Frames;
use super::table::{FREED, LARGE};
use super::{capture_here, report, Error, SHARD};
use crate::os;

/// Bytes of each thread's alternate signal stack (reports symbolize on it).
const ALT_STACK: usize = 256 * 1024;

/// The dispositions of SIGSEGV and SIGBUS before ours.
struct Saved(UnsafeCell<MaybeUninit<[libc::sigaction; 2]>>);
// SAFETY: written once in `install` (before any fault can reach the
// handler), only read afterwards.
unsafe impl Sync for Saved {}
static SAVED: Saved = Saved(UnsafeCell::new(MaybeUninit::uninit()));

/// The pthread key whose destructor frees a thread's alternate stack.
static ALT_KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// Installs the handler (once, at start-up) and sets up the calling thread.
pub(super) fn install() {
    // SAFETY: plain system calls with valid arguments; SAVED is written here
    // only, before the handler can run.
    unsafe {
        let mut act: libc::sigaction = core::mem::zeroed();
        act.sa_sigaction = on_fault as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut act.sa_mask);
        let saved = (*SAVED.0.get()).as_mut_ptr().cast::<libc::sigaction>();
        libc::sigaction(libc::SIGSEGV, &act, saved);
        libc::sigaction(libc::SIGBUS, &act, saved.add(1));
        let mut key: libc::pthread_key_t = 0;
        if libc::pthread_key_create(&mut key, Some(free_alt_stack)) == 0 {
            ALT_KEY.store(key, Ordering::Relaxed);
        }
    }
}

/// Gives the calling thread an alternate signal stack.
pub(super) fn setup_thread() {
    let mem = os::map_aligned(ALT_STACK, os::PAGE_SIZE);
    if mem.is_null() {
        return;
    }
    // SAFETY: `mem` is our fresh mapping of ALT_STACK bytes; the key's
    // destructor unmaps it when the thread exits.
    unsafe {
        let ss = libc::stack_t {
            ss_sp: mem.cast(),
            ss_flags: 0,
            ss_size: ALT_STACK,
        };
        libc::sigaltstack(&ss, ptr::null_mut());
        let key = ALT_KEY.load(Ordering::Relaxed);
        if key != u32::MAX {
            libc::pthread_setspecific(key, mem.cast());
        }
    }
}

unsafe extern "C" fn free_alt_stack(mem: *mut c_void) {
    // SAFETY: `mem` is the alternate stack this thread installed; it is
    // switched off before it is unmapped. The thread is exiting and no
    // longer runs on it.
    unsafe {
        let ss = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        libc::sigaltstack(&ss, ptr::null_mut());
        os::unmap(mem.cast(), ALT_STACK);
    }
}

/// The heap error behind a fault at `addr`, if it hit a large block's
/// guard page or a freed large block.
/// Each shard is looked at in turn; one whose lock stays taken (the fault
/// may have hit inside the checker) is skipped.
fn heap_fault(addr: usize) -> Option<Error> {
    let (st, e) = SHARD.iter().find_map(|shard| {
        let st = shard.state.lock_within(100_000)?;
        let mut hit = None;
        st.table.for_each(|e| {
            if e.kind == LARGE && e.base <= addr && addr < e.base + e.extent {
                hit = Some(*e);
            }
        });
        Some((st, hit?))
    })?;
    let (class, what) = if addr < super::first_page(&e) {
        (
            "heap-underflow",
            " was accessed before its start, at offset -",
        )
    } else if addr >= super::end_page(&e) {
        ("heap-overflow", " was accessed past its end, at offset ")
    } else if e.state == FREED {
        (
            "use-after-free",
            " was accessed after it was freed, at offset ",
        )
    } else {
        return None;
    };
    let mut err = Error::new(class, addr).with_block(&st, &e);
    err.detail
        .s("a ")
        .d(e.size)
        .s("-byte block at ")
        .x(e.addr)
        .s(what);
    if addr < e.addr {
        err.detail.d(e.addr - addr);
    } else {
        err.detail.d(addr - e.addr);
    }
    Some(err)
}

/// The stack-overflow error behind a fault at `addr` with stack pointer
/// `sp`: the access was within 64 KiB of the stack pointer, which only an
/// exhausted stack makes fault.
fn stack_fault(addr: usize, sp: usize) -> Option<Error> {
    const NEAR: usize = 64 * 1024;
    if sp == 0 || addr.abs_diff(sp) > NEAR {
        return None;
    }
    let mut err = Error::new("stack-overflow", addr);
    err.detail
        .s("thread ")
        .d(super::this_thread() as usize)
        .s(" overflowed its stack");
    if let Some((lo, hi)) = crate::os::maps::near(addr, true) {
        // The stack is the mapping right above the guard it ran into; the
        // main thread's may still grow to its limit.
        let mut size = hi - lo;
        // SAFETY: getpid/gettid/getrlimit have no preconditions.
        unsafe {
            let mut lim: libc::rlimit = core::mem::zeroed();
            if libc::getpid() == libc::gettid()
                && libc::getrlimit(libc::RLIMIT_STACK, &mut lim) == 0
                && lim.rlim_cur != libc::RLIM_INFINITY
            {
                size = size.max(lim.rlim_cur as usize);
            }
        }
        err.detail
            .s(" of ")
            .d(size >> 10)
            .s(" KiB (")
            .x(lo)
            .s("-")
            .x(hi)
            .s(")");
    }
    Some(err)
}

/// The faulting instruction's address and the stack pointer at the fault
/// (`(0, 0)` where not known).
fn fault_regs(ctx: *mut c_void) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: for an SA_SIGINFO handler the third argument is the
        // interrupted context.
        let regs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        (
            regs[libc::REG_RIP as usize] as usize,
            regs[libc::REG_RSP as usize] as usize,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ctx;
        (0, 0)
    }
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let here = || {
        let mut here = Frames::new();
        capture_here(&mut here, 0);
        // Start at the faulting instruction: drop the handler's frames.
        let (pc, _) = fault_regs(ctx);
        if let Some(k) = here.as_slice().iter().position(|&ip| ip == pc) {
            here.drop_innermost(k);
        }
        here
    };
    if crate::guard::report_fault(addr, here().as_slice()) {
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() }
    }
    let err = if super::active() {
        heap_fault(addr).or_else(|| stack_fault(addr, fault_regs(ctx).1))
    } else {
        None
    };
    if let Some(err) = err {
        report(&err, &here());
        // Keep-going cannot resume a faulting access: end here.
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() }
    }
    // Not ours: put the previous disposition back and return, so the access
    // faults again and meets it.
    let idx = usize::from(sig == libc::SIGBUS);
    // SAFETY: SAVED was filled by `install`.
    unsafe {
        let saved = (*SAVED.0.get()).as_ptr().cast::<libc::sigaction>();
        libc::sigaction(sig, saved.add(idx), ptr::null_mut());
    }
}
