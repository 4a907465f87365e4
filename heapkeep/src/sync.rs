//! A tiny spin lock for the few global structures (segment cache, huge cache,
//! heap pool). Only cold paths take it; the fast paths take no lock.
//!
//! It never allocates, so it is usable inside the allocator. Fork handlers
//! take every global lock before `fork()` and release them in both processes,
//! so the child never inherits a lock held by a thread that does not exist.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// A spin lock protecting a `T`.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked` (acquire on lock,
// release on unlock), so sharing the lock between threads is sound when the
// value itself may be sent between threads.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Starts loading the lock word's line and the lines of the value at
    /// byte offsets `at`, ahead of a [`lock`](Self::lock): a lock taken
    /// rarely is cold, and its swap waits for the line. Reads nothing.
    #[inline(always)]
    pub(crate) fn prefetch(&self, at: &[usize]) {
        crate::hint::prefetch((&self.locked as *const AtomicBool).cast());
        let base = self.value.get().cast::<u8>().cast_const();
        for &off in at {
            crate::hint::prefetch(base.wrapping_add(off));
        }
    }

    /// Takes the lock, spinning and then yielding while another thread holds it.
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        self.raw_lock();
        SpinGuard { lock: self }
    }

    /// Takes the lock if it comes free within `attempts` tries (each after
    /// a yield); `None` otherwise. For a fault handler, which must not wait
    /// forever on a lock its own thread may hold.
    pub(crate) fn lock_within(&self, attempts: u32) -> Option<SpinGuard<'_, T>> {
        for _ in 0..attempts {
            if !self.locked.swap(true, Ordering::Acquire) {
                return Some(SpinGuard { lock: self });
            }
            crate::os::yield_now();
        }
        None
    }

    /// Takes the lock without producing a guard (fork handlers).
    pub(crate) fn raw_lock(&self) {
        let mut spins = 0u32;
        loop {
            if !self.locked.swap(true, Ordering::Acquire) {
                return;
            }
            while self.locked.load(Ordering::Relaxed) {
                spins += 1;
                if spins < 64 {
                    core::hint::spin_loop();
                } else {
                    crate::os::yield_now();
                }
            }
        }
    }

    /// Releases a lock taken by [`raw_lock`](Self::raw_lock).
    ///
    /// # Safety
    /// The calling context must hold the lock through `raw_lock` and no guard
    /// may exist for it.
    pub(crate) unsafe fn raw_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Resets the lock in a forked child, where its holder no longer exists.
    ///
    /// # Safety
    /// Only in the child right after `fork()`, with no other thread running.
    pub(crate) unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// Holds a [`SpinLock`]; releases it on drop.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no other reference exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and the guard is borrowed mutably.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}
