//! `Pool<T>`: a bounded pool of same-typed objects. Its capacity is fixed
//! when it is made (over slots the program gives it, or allocated once);
//! taking a slot and giving it back are O(1) and never allocate.
//!
//! Rules:
//! - A free slot holds the link of the free list; a taken one holds a `T`.
//!   Slots never handed out yet are taken in order (`fresh`), so making a
//!   pool does not touch its slots.
//! - `take` hands out a [`Pooled`] guard that borrows the pool; dropping the
//!   guard drops the value and gives the slot back, so a pool can never be
//!   dropped with live objects. A guard passed to `mem::forget` leaks its
//!   slot (and never drops its value).
//! - A pool is single-threaded (`!Sync`).

use core::cell::{Cell, UnsafeCell};
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

/// One slot of a [`Pool`]: room for a `T` or a free-list link.
pub struct Slot<T>(UnsafeCell<SlotInner<T>>);

union SlotInner<T> {
    value: ManuallyDrop<T>,
    next: *mut Slot<T>,
}

impl<T> Slot<T> {
    /// An empty slot, for arrays handed to [`Pool::new`]:
    /// `[const { Slot::new() }; 64]`.
    pub const fn new() -> Self {
        Self(UnsafeCell::new(SlotInner {
            next: ptr::null_mut(),
        }))
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A bounded object pool (see the module documentation).
///
/// ```
/// use heapkeep::pool::{Pool, Slot};
///
/// let mut slots = [const { Slot::new() }; 2];
/// let pool = Pool::new(&mut slots);
/// let a = pool.take(String::from("a")).unwrap();
/// let b = pool.take(String::from("b")).unwrap();
/// assert!(pool.take(String::from("c")).is_err()); // full
/// drop(a);
/// let c = pool.take(String::from("c")).unwrap(); // a's slot again
/// assert_eq!((b.as_str(), c.as_str()), ("b", "c"));
/// ```
pub struct Pool<'a, T> {
    /// The first of `capacity` slots.
    slots: NonNull<Slot<T>>,
    capacity: usize,
    /// Slots `fresh..capacity` have never been handed out (and are on no
    /// list).
    fresh: Cell<usize>,
    /// Given-back slots, linked through `SlotInner::next` (null: none).
    free: Cell<*mut Slot<T>>,
    /// Slots handed out and not given back.
    live: Cell<usize>,
    /// Whether `slots` was allocated by `with_capacity` (and is freed on drop).
    #[cfg(feature = "alloc")]
    owned: bool,
    _slots: PhantomData<&'a mut [Slot<T>]>,
}

/// A value in a [`Pool`] slot; gives the slot back when dropped.
pub struct Pooled<'p, T> {
    slot: NonNull<Slot<T>>,
    free: &'p Cell<*mut Slot<T>>,
    live: &'p Cell<usize>,
}

impl<'a, T> Pool<'a, T> {
    /// A pool over `slots`: at most `slots.len()` objects at once.
    pub fn new(slots: &'a mut [Slot<T>]) -> Self {
        Self {
            capacity: slots.len(),
            // SAFETY: a slice pointer is never null.
            slots: unsafe { NonNull::new_unchecked(slots.as_mut_ptr()) },
            fresh: Cell::new(0),
            free: Cell::new(ptr::null_mut()),
            live: Cell::new(0),
            #[cfg(feature = "alloc")]
            owned: false,
            _slots: PhantomData,
        }
    }

    /// How many objects the pool can hold at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many objects are in the pool now.
    pub fn len(&self) -> usize {
        self.live.get()
    }

    /// Whether no object is in the pool.
    pub fn is_empty(&self) -> bool {
        self.live.get() == 0
    }

    /// Puts `value` in a free slot; `Err(value)` when all `capacity` slots
    /// are taken. O(1).
    #[inline]
    pub fn take(&self, value: T) -> Result<Pooled<'_, T>, T> {
        let head = self.free.get();
        let slot = if !head.is_null() {
            // SAFETY: a slot on the free list holds a link.
            self.free.set(unsafe { (*(*head).0.get()).next });
            head
        } else if self.fresh.get() < self.capacity {
            let i = self.fresh.get();
            self.fresh.set(i + 1);
            // SAFETY: `i < capacity`: inside the slot slice.
            unsafe { self.slots.as_ptr().add(i) }
        } else {
            return Err(value);
        };
        // SAFETY: the slot is ours and free; it now holds the value.
        unsafe {
            (*slot).0.get().write(SlotInner {
                value: ManuallyDrop::new(value),
            });
        }
        self.live.set(self.live.get() + 1);
        Ok(Pooled {
            // SAFETY: a slot pointer is never null.
            slot: unsafe { NonNull::new_unchecked(slot) },
            free: &self.free,
            live: &self.live,
        })
    }
}

#[cfg(feature = "alloc")]
impl<T> Pool<'static, T> {
    /// A pool of `capacity` slots allocated once from the global heap.
    pub fn with_capacity(capacity: usize) -> Self {
        let slots: alloc::boxed::Box<[Slot<T>]> = (0..capacity).map(|_| Slot::new()).collect();
        let slots = alloc::boxed::Box::leak(slots);
        let mut pool = Pool::new(slots);
        pool.owned = true;
        pool
    }
}

impl<T> Drop for Pool<'_, T> {
    fn drop(&mut self) {
        #[cfg(feature = "alloc")]
        if self.owned {
            let slots = ptr::slice_from_raw_parts_mut(self.slots.as_ptr(), self.capacity);
            // SAFETY: leaked from a `Box<[Slot<T>]>` in `with_capacity`; no
            // `Pooled` borrows the pool any more. Slots hold no `Drop` data.
            drop(unsafe { alloc::boxed::Box::from_raw(slots) });
        }
    }
}

impl<T> Pooled<'_, T> {
    /// Takes the value out and gives the slot back.
    pub fn into_inner(self) -> T {
        let this = ManuallyDrop::new(self);
        // SAFETY: the slot holds our value; it is read once, then the slot
        // goes back on the free list (and `Drop` does not run).
        unsafe {
            let value = ManuallyDrop::take(&mut (*(*this.slot.as_ptr()).0.get()).value);
            this.give_back();
            value
        }
    }

    /// Pushes the (now empty) slot on the pool's free list.
    ///
    /// # Safety
    /// The slot's value has been moved out or dropped.
    unsafe fn give_back(&self) {
        let slot = self.slot.as_ptr();
        // SAFETY: the slot is ours and empty: it now holds a link.
        unsafe {
            (*slot).0.get().write(SlotInner {
                next: self.free.get(),
            })
        };
        self.free.set(slot);
        self.live.set(self.live.get() - 1);
    }
}

impl<T> Deref for Pooled<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the slot holds our value while the guard lives.
        unsafe { &(*(*self.slot.as_ptr()).0.get()).value }
    }
}

impl<T> DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as `deref`; the guard is the only access to the slot.
        unsafe { &mut (*(*self.slot.as_ptr()).0.get()).value }
    }
}

impl<T> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the slot holds our value: drop it, then give the slot back.
        unsafe {
            ManuallyDrop::drop(&mut (*(*self.slot.as_ptr()).0.get()).value);
            self.give_back();
        }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Pooled<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T> core::fmt::Debug for Pool<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("capacity", &self.capacity)
            .field("len", &self.live.get())
            .finish()
    }
}
