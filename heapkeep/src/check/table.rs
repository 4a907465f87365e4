//! The side table of check mode: what is known about every block handed out
//! (live) or held in quarantine (freed), keyed by the address the program
//! got. It lives in its own mappings, away from user memory, so a program
//! that writes out of bounds cannot corrupt it, and a bad pointer is looked
//! up here without ever being dereferenced.
//!
//! Open addressing with linear probing; a removal moves the entries after
//! it back (no tombstones); the table doubles (rehashing into a fresh
//! mapping) when its entries pass half of its capacity. Only the holder of
//! its owner's lock (a check shard's, or the profile's) touches it.

use core::ptr;

use crate::os;

/// A block handed out and not yet freed.
pub(crate) const LIVE: u8 = 1;
/// A freed block in quarantine.
pub(crate) const FREED: u8 = 2;

/// A block carved from the inner heap, with redzones on both sides.
pub(crate) const SMALL: u8 = 0;
/// A block with a mapping of its own and guard pages on both sides.
pub(crate) const LARGE: u8 = 1;

/// A huge page: tables this big or bigger ask for them (a lookup lands
/// anywhere in the table; with small pages nearly every one of a big
/// table's lookups also misses the address translation cache).
const HUGE_PAGE: usize = 2 << 20;

/// Key of a slot never used.
const EMPTY: usize = 0;
/// A key no entry may have (reserved: the lowest real key is above it).
const RESERVED: usize = 1;

/// What check mode knows about one block.
///
/// Invariant: for a `SMALL` block, `base .. base + extent` is the inner
/// heap's block holding `[redzone][addr .. addr + size][redzone]`; for a
/// `LARGE` block it is the whole mapping, guard pages included.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct Entry {
    /// The address the program got (the key).
    pub(crate) addr: usize,
    /// The size the program asked for.
    pub(crate) size: usize,
    /// Start of the memory behind the block (inner block or mapping).
    pub(crate) base: usize,
    /// Bytes of the memory behind the block.
    pub(crate) extent: usize,
    /// The alignment the program asked for.
    pub(crate) align: usize,
    /// `LIVE` or `FREED`.
    pub(crate) state: u8,
    /// `SMALL` or `LARGE`.
    pub(crate) kind: u8,
    /// Thread that allocated the block (kernel thread id).
    pub(crate) alloc_tid: u32,
    /// Thread that freed it (0 while live).
    pub(crate) free_tid: u32,
    /// Stack of the allocation (a depot id, 0 = none).
    pub(crate) alloc_stack: u32,
    /// Stack of the free (a depot id, 0 = none).
    pub(crate) free_stack: u32,
}

#[cfg(test)]
impl Entry {
    const VACANT: Entry = Entry {
        addr: EMPTY,
        size: 0,
        base: 0,
        extent: 0,
        align: 0,
        state: 0,
        kind: 0,
        alloc_tid: 0,
        free_tid: 0,
        alloc_stack: 0,
        free_stack: 0,
    };
}

/// An entry type of a [`Table`]: a plain record whose key is an address
/// (0 and 1 are reserved: 0 marks an empty slot).
pub(crate) trait Keyed: Copy {
    /// The address the entry is kept under.
    fn key(&self) -> usize;
    /// Changes the key (to mark the slot empty).
    fn set_key(&mut self, key: usize);
}

impl Keyed for Entry {
    #[inline]
    fn key(&self) -> usize {
        self.addr
    }
    #[inline]
    fn set_key(&mut self, key: usize) {
        self.addr = key;
    }
}

/// The table. Invariant: `slots` points to `cap` entries (a power of two)
/// in a mapping of its own, or is null with `cap == 0`; `used` counts
/// occupied slots and stays below `cap / 2`; every entry sits on the probe
/// run from its home slot (`hash(key) & (cap - 1)`) with no empty slot
/// between (what `get` relies on, and `take` keeps).
pub(crate) struct Table<E: Keyed = Entry> {
    slots: *mut E,
    cap: usize,
    used: usize,
    len: usize,
    /// Capacity of the first mapping (a power of two).
    first: usize,
}

// SAFETY: a table is only reached through its owner's lock (a check shard's or the profile's).
unsafe impl<E: Keyed> Send for Table<E> {}

#[inline]
fn hash(addr: usize) -> usize {
    // The product's high bits depend on every address bit; fold them down.
    let h = (addr >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 32)
}

impl<E: Keyed> Table<E> {
    /// An empty table whose first mapping holds 16 Ki entries (check
    /// mode: it knows every block).
    pub(crate) const fn new() -> Table<E> {
        Table::with_first_capacity(1 << 14)
    }

    /// An empty table whose first mapping holds `first` entries (a power
    /// of two): a table that usually stays small (the profile's samples)
    /// then stays in a few cache lines and pages.
    pub(crate) const fn with_first_capacity(first: usize) -> Table<E> {
        assert!(first.is_power_of_two() && first >= 2);
        Table {
            slots: ptr::null_mut(),
            cap: 0,
            used: 0,
            len: 0,
            first,
        }
    }

    /// The table's own mapping `(start, bytes)` (`(0, 0)` before the first).
    pub(crate) fn mapping(&self) -> (usize, usize) {
        (self.slots as usize, Self::mapped_bytes(self.cap))
    }

    /// Entries present (live and freed).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn slot(&self, i: usize) -> *mut E {
        debug_assert!(i < self.cap);
        // SAFETY: `i < cap` and `slots` holds `cap` entries (invariant).
        unsafe { self.slots.add(i) }
    }

    /// The slot holding the entry for `addr`, if any.
    fn position(&self, addr: usize) -> Option<usize> {
        if self.cap == 0 || addr <= RESERVED {
            return None;
        }
        let mask = self.cap - 1;
        let mut i = hash(addr) & mask;
        loop {
            // SAFETY: `slot` is in bounds; the table is ours (its owner's lock).
            let k = unsafe { (*self.slot(i)).key() };
            if k == addr {
                return Some(i);
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Hints the cache to load the home slot of `addr` (which a lookup of
    /// `addr` reads first), ahead of that lookup.
    #[inline]
    pub(crate) fn prefetch(&self, addr: usize) {
        if self.cap != 0 {
            crate::hint::prefetch(self.slot(hash(addr) & (self.cap - 1)).cast());
        }
    }

    /// The entry for `addr`, if any.
    pub(crate) fn get(&mut self, addr: usize) -> Option<&mut E> {
        let i = self.position(addr)?;
        // SAFETY: in bounds (`position`); the table is ours (its owner's lock).
        Some(unsafe { &mut *self.slot(i) })
    }

    /// Adds `entry` (its key must not be present). False when out of memory.
    pub(crate) fn insert(&mut self, entry: E) -> bool {
        match self.replace(entry) {
            Ok(old) => {
                debug_assert!(old.is_none(), "key inserted twice");
                true
            }
            Err(()) => false,
        }
    }

    /// Adds `entry`, or overwrites the entry with its key and returns the
    /// one overwritten: one probe where a `take` and an `insert` make two.
    /// `Err(())` when out of memory (nothing changed).
    pub(crate) fn replace(&mut self, entry: E) -> Result<Option<E>, ()> {
        debug_assert!(entry.key() > RESERVED);
        if (self.used + 1) * 2 > self.cap && !self.grow() {
            return Err(());
        }
        let mask = self.cap - 1;
        let mut i = hash(entry.key()) & mask;
        loop {
            // SAFETY: in bounds; ours.
            let e = unsafe { &mut *self.slot(i) };
            if e.key() == entry.key() {
                return Ok(Some(core::mem::replace(e, entry)));
            }
            if e.key() == EMPTY {
                self.used += 1;
                *e = entry;
                self.len += 1;
                return Ok(None);
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes the entry for `addr`.
    pub(crate) fn remove(&mut self, addr: usize) {
        self.take(addr);
    }

    /// Removes the entry for `addr` and returns it. The entries after it in
    /// its probe run move back into the hole (backward-shift deletion), so
    /// removal leaves no tombstone: a table with many inserts and removals
    /// (the profile's samples, check mode's quarantine) keeps short probes.
    pub(crate) fn take(&mut self, addr: usize) -> Option<E> {
        let i = self.position(addr)?;
        let mask = self.cap - 1;
        // SAFETY: in bounds (`position`); ours.
        let found = unsafe { *self.slot(i) };
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            // SAFETY: in bounds; ours.
            let k = unsafe { (*self.slot(j)).key() };
            if k == EMPTY {
                break;
            }
            // An entry may fill the hole if the hole lies on its probe path
            // (from its home slot up to where it is now).
            let home = hash(k) & mask;
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                // SAFETY: both in bounds; ours; distinct slots.
                unsafe { *self.slot(hole) = *self.slot(j) };
                hole = j;
            }
        }
        // SAFETY: in bounds; ours.
        unsafe { (*self.slot(hole)).set_key(EMPTY) };
        self.used -= 1;
        self.len -= 1;
        Some(found)
    }

    /// Calls `f` on every entry.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&E)) {
        for i in 0..self.cap {
            // SAFETY: in bounds; ours.
            let e = unsafe { &*self.slot(i) };
            if e.key() > RESERVED {
                f(e);
            }
        }
    }

    /// Bytes of the mapping holding `cap` entries (whole pages).
    fn mapped_bytes(cap: usize) -> usize {
        (cap * core::mem::size_of::<E>()).next_multiple_of(os::PAGE_SIZE)
    }

    /// Doubles the capacity (or sizes a first table).
    fn grow(&mut self) -> bool {
        let cap = if self.cap == 0 {
            self.first
        } else {
            self.cap * 2
        };
        let bytes = Self::mapped_bytes(cap);
        let huge = bytes >= HUGE_PAGE;
        let mem = os::map_aligned(bytes, if huge { HUGE_PAGE } else { os::PAGE_SIZE });
        if mem.is_null() {
            return false;
        }
        if huge {
            os::want_huge_pages(mem, bytes);
        }
        let mem = mem.cast::<E>();
        let old = core::mem::replace(
            self,
            Table {
                slots: mem,
                cap,
                used: 0,
                len: 0,
                first: self.first,
            },
        );
        // Fresh mappings read as zero: every slot is EMPTY (key 0), which
        // `Keyed` entries (plain records) must read as.
        old.for_each(|e| {
            let ok = self.insert(*e);
            debug_assert!(ok);
        });
        if old.cap > 0 {
            // SAFETY: the old slots are our mapping of exactly this size.
            unsafe { os::unmap(old.slots.cast(), Self::mapped_bytes(old.cap)) };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: usize) -> Entry {
        Entry {
            addr,
            size: addr / 16,
            ..Entry::VACANT
        }
    }

    #[test]
    fn insert_get_remove_and_grow() {
        let mut t = Table::new();
        let n = 40_000; // past the first capacity (16K slots, half full)
        for k in 0..n {
            assert!(t.insert(entry(0x1000 + k * 16)));
        }
        assert_eq!(t.len(), n);
        for k in 0..n {
            assert_eq!(
                t.get(0x1000 + k * 16).map(|e| e.size),
                Some((0x1000 + k * 16) / 16)
            );
        }
        assert!(t.get(0x1008).is_none());
        for k in (0..n).step_by(2) {
            t.remove(0x1000 + k * 16);
        }
        assert_eq!(t.len(), n / 2);
        assert!(t.get(0x1000).is_none());
        assert!(t.get(0x1010).is_some());
        let mut seen = 0;
        t.for_each(|_| seen += 1);
        assert_eq!(seen, n / 2);
        // Churn without the table growing without bound.
        for k in 0..200_000usize {
            let a = 0x10_0000_0000 + k * 16;
            assert!(t.insert(entry(a)));
            t.remove(a);
        }
        assert!(t.cap <= 1 << 17, "cap {}", t.cap);
    }

    /// Random inserts and removals, many of them into one crowded run of
    /// slots, checked against a shadow map after every step.
    #[test]
    fn removals_keep_every_other_entry_reachable() {
        let mut t: Table<Entry> = Table::new();
        let mut shadow = std::collections::BTreeMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..60_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Up to 7,500 keys in 16K slots (no growth): long runs, and
            // removals hit their middles.
            let addr = 0x4000 + (x % 7_500) as usize * 16;
            if let Some(size) = shadow.remove(&addr) {
                let e = t.take(addr).expect("present key taken");
                assert_eq!(e.size, size, "step {step}");
                assert!(t.get(addr).is_none());
            } else {
                assert!(t.insert(entry(addr)));
                shadow.insert(addr, addr / 16);
            }
            if step % 997 == 0 {
                for (&a, &size) in &shadow {
                    assert_eq!(t.get(a).map(|e| e.size), Some(size), "step {step}");
                }
                assert_eq!(t.len(), shadow.len());
                assert_eq!(t.used, t.len);
            }
        }
        assert!(t.take(0x3000).is_none());
    }

    #[test]
    fn replace_overwrites_or_adds_and_a_small_table_grows() {
        let mut t: Table<Entry> = Table::with_first_capacity(4);
        // Past the first capacity many times over.
        for k in 1..=1000usize {
            assert!(matches!(t.replace(entry(k * 32)), Ok(None)));
        }
        assert_eq!(t.len(), 1000);
        assert!(t.cap >= 2048 && t.cap.is_power_of_two());
        for k in (1..=1000usize).step_by(3) {
            let newer = Entry {
                size: 7,
                ..entry(k * 32)
            };
            let old = t.replace(newer).unwrap().expect("present key");
            assert_eq!(old.size, k * 2);
        }
        assert_eq!(t.len(), 1000);
        for k in 1..=1000usize {
            let want = if (k - 1) % 3 == 0 { 7 } else { k * 2 };
            assert_eq!(t.get(k * 32).map(|e| e.size), Some(want), "key {k}");
        }
    }
}
