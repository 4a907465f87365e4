//! The full heap walk behind the `invariants` feature: checks every invariant
//! written on the data structures of `heap.rs`, `page.rs` and `segment.rs`.
//! Slow (touches every free block); tests call it between operations.

use core::sync::atomic::AtomicU32;
use core::sync::atomic::Ordering;
use std::format;
use std::string::String;

use crate::heap::{Heap, STATE_ACTIVE, STATE_CLAIMED, STATE_RETIRED};
use crate::page::{
    next_of, Block, Page, LARGE_CLASS, OWNER_FULL, OWNER_NONE, XT_COUNT_SHIFT, XT_INBOX,
    XT_PTR_MASK,
};
use crate::segment::{self, Kind, Segment, ALL_FREE, SLICE_COUNT, SLICE_SIZE};
use crate::size_class::{bin_stride, class_to_size, BIN_COUNT, CLASS_COUNT, DIRECT_COUNT};
use crate::thread;

type Res = Result<(), String>;

/// Numbers the walks; a page queued in walk `n` carries `walk_mark == n`.
/// The walk must not allocate (it would change the heap under its feet).
static WALK: AtomicU32 = AtomicU32::new(0);

/// Checks the current thread's heap, every retired heap (claimed for the
/// walk), and the segment cache.
pub(crate) fn check() -> Res {
    let me = thread::current();
    // SAFETY: the current heap is run by this thread.
    if unsafe { (*me).remote.state.load(Ordering::Relaxed) } == STATE_ACTIVE {
        check_heap(me)?;
    }
    let mut result = Ok(());
    thread::for_each_heap(|h| {
        if result.is_err() || h == me {
            return;
        }
        // SAFETY: heaps are never freed; CLAIMED gives exclusive access.
        let hr = unsafe { &*h };
        if hr
            .remote
            .state
            .compare_exchange(
                STATE_RETIRED,
                STATE_CLAIMED,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            result = check_heap(h);
            hr.remote.state.store(STATE_RETIRED, Ordering::Release);
        }
    });
    result?;
    let mut result = Ok(());
    segment::for_each_cached(|s| {
        if result.is_ok() {
            result = check_cached(s);
        }
    });
    result
}

fn check_cached(s: &Segment) -> Res {
    if s.kind != Kind::Normal || s.free_mask != ALL_FREE || !s.heap.is_null() {
        return Err(format!("cached segment {:p} not empty/normal", s));
    }
    Ok(())
}

fn check_heap(heap: *mut Heap) -> Res {
    // SAFETY: the caller has exclusive access to the heap.
    let h = unsafe { &*heap };
    let walk = WALK.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    let mut queued = 0usize;
    for class in 0..BIN_COUNT {
        let q = h.queues[class];
        let mut prev: *mut Page = core::ptr::null_mut();
        let mut p = q.first;
        while !p.is_null() {
            // SAFETY: queue links point at page entries in our segments; only
            // a shared reference (other threads may push on `xthread`).
            let pr = unsafe { &*p };
            if pr.prev != prev {
                return Err(format!("class {class}: page {p:p} has a bad prev link"));
            }
            if pr.class as usize != class {
                return Err(format!(
                    "page {p:p} in queue {class} has class {}",
                    pr.class
                ));
            }
            if pr.owner.load(Ordering::Relaxed) != heap as usize {
                return Err(format!("queued page {p:p} not owned plainly by its heap"));
            }
            if pr.walk_mark == walk {
                return Err(format!("page {p:p} queued twice"));
            }
            let next = pr.next;
            // SAFETY: `pr` is not used after this write; the owner (or the
            // claimer) alone writes `walk_mark`.
            unsafe { (*p).walk_mark = walk };
            queued += 1;
            prev = p;
            p = next;
        }
        if q.last != prev {
            return Err(format!("class {class}: bad queue tail"));
        }
        let want = if q.first.is_null() {
            thread::empty_page()
        } else {
            q.first
        };
        let size = if class < CLASS_COUNT {
            class_to_size(class)
        } else {
            usize::MAX
        };
        if size <= 1024 {
            let lo = if class == 0 {
                0
            } else {
                class_to_size(class - 1) / 8 + 1
            };
            for i in lo..=size / 8 {
                if i < DIRECT_COUNT && h.direct[i] != want {
                    return Err(format!(
                        "direct[{i}] does not point at the head of class {class}"
                    ));
                }
            }
        }
    }
    let mut seg = h.segments;
    let mut dirty = 0usize;
    let mut empty = 0usize;
    let mut pages_seen = 0usize;
    while !seg.is_null() {
        // SAFETY: segments in the heap list are mapped and ours.
        let s = unsafe { &*seg };
        check_segment(heap, s, walk, &mut pages_seen)?;
        dirty += s.dirty_free_bytes();
        if s.free_mask == ALL_FREE {
            empty += 1;
        }
        seg = s.next;
    }
    if pages_seen != queued {
        return Err(format!(
            "{queued} queued pages but {pages_seen} non-full small pages in segments"
        ));
    }
    if dirty != h.dirty_free {
        return Err(format!(
            "dirty_free is {} but segments hold {dirty}",
            h.dirty_free
        ));
    }
    if empty != h.empty_segments {
        return Err(format!(
            "empty_segments is {} but {empty} are empty",
            h.empty_segments
        ));
    }
    Ok(())
}

fn check_segment(heap: *mut Heap, s: &Segment, walk: u32, pages_seen: &mut usize) -> Res {
    if s.kind != Kind::Normal || s.heap != heap {
        return Err(format!(
            "segment {:p} in heap list has kind {:?} / another heap",
            s, s.kind
        ));
    }
    if s.free_mask & 1 != 0 {
        return Err(format!("segment {:p}: header slice marked free", s));
    }
    let mut i = 1;
    while i < SLICE_COUNT {
        let e = &s.pages[i];
        if s.free_mask & (1 << i) != 0 {
            if e.owner.load(Ordering::Relaxed) != OWNER_NONE || e.slice_offset != 0 {
                return Err(format!(
                    "segment {:p}: free slice {i} has an owner or offset",
                    s
                ));
            }
            i += 1;
            continue;
        }
        let owner = e.owner.load(Ordering::Relaxed);
        if owner & !OWNER_FULL != heap as usize || e.slice_offset != 0 {
            return Err(format!(
                "segment {:p}: slice {i} is not a page head of this heap",
                s
            ));
        }
        let n = e.slice_count as usize;
        if n == 0 || i + n > SLICE_COUNT {
            return Err(format!("segment {:p}: page at {i} spans {n} slices", s));
        }
        for k in 1..n {
            if s.free_mask & (1 << (i + k)) != 0 || s.pages[i + k].slice_offset as usize != k {
                return Err(format!(
                    "segment {:p}: slice {} of page {i} mislinked",
                    s,
                    i + k
                ));
            }
        }
        if s.dirty_mask & crate::segment::span_mask(i, n) != crate::segment::span_mask(i, n) {
            return Err(format!("segment {:p}: page at {i} not marked dirty", s));
        }
        check_page(s, e, owner)?;
        if e.class != LARGE_CLASS && owner & OWNER_FULL == 0 {
            if e.walk_mark != walk {
                return Err(format!(
                    "segment {:p}: page at {i} neither full nor queued (bin {}, used {}, cap {}, xthread {:#x})",
                    s,
                    e.class,
                    e.used,
                    e.capacity,
                    e.xthread.load(Ordering::Relaxed),
                ));
            }
            *pages_seen += 1;
        }
        i += n;
    }
    Ok(())
}

fn count_list(page: &Page, mut b: *mut Block, what: &str) -> Result<usize, String> {
    let mut n = 0usize;
    let start = page.start as usize;
    let end = start + page.capacity as usize * page.block_size;
    while !b.is_null() {
        let a = b as usize;
        if a < start || a >= end || (a - start) % page.block_size != 0 {
            return Err(format!(
                "page {:p}: {what} list holds {b:p}, not a carved block",
                page
            ));
        }
        n += 1;
        if n > page.capacity as usize {
            return Err(format!(
                "page {:p}: {what} list longer than capacity (cycle?)",
                page
            ));
        }
        // SAFETY: `b` is a carved block of the page on one of its free lists.
        b = unsafe { next_of(b, page.key) };
    }
    Ok(n)
}

fn check_page(s: &Segment, p: &Page, owner: usize) -> Res {
    let idx = s.page_index(p);
    let offset = (p.start as usize).wrapping_sub(s.slice_addr(idx) as usize);
    if offset % 64 != 0 || offset >= p.area_bytes() {
        return Err(format!("page {:p}: start is not in its slice", p));
    }
    if p.block_size == 0 || offset + p.reserved as usize * p.block_size > p.area_bytes() {
        return Err(format!("page {:p}: reserved blocks exceed the page", p));
    }
    if p.capacity > p.reserved {
        return Err(format!("page {:p}: capacity above reserved", p));
    }
    if p.alloc_unit != crate::counters::alloc_unit(p.block_size)
        || p.free_unit != crate::counters::free_unit(p.block_size)
    {
        return Err(format!(
            "page {:p}: counting units out of step with block size {}",
            p, p.block_size
        ));
    }
    if p.class == LARGE_CLASS {
        if p.used != 1 || p.block_size != p.slice_count as usize * SLICE_SIZE {
            return Err(format!(
                "large page {:p}: used {} block {}",
                p, p.used, p.block_size
            ));
        }
        return Ok(());
    }
    if bin_stride(p.class as usize) != p.block_size {
        return Err(format!("page {:p}: block size does not match class", p));
    }
    let nf = count_list(p, p.free, "free")?;
    let nl = count_list(p, p.local_free, "local_free")?;
    let x = p.xthread.load(Ordering::Acquire);
    if x & XT_INBOX != 0 {
        if x != XT_INBOX {
            return Err(format!(
                "page {:p}: xthread has blocks and the inbox flag",
                p
            ));
        }
    } else {
        let nx = count_list(p, (x & XT_PTR_MASK) as *mut Block, "xthread")?;
        if nx != x >> XT_COUNT_SHIFT || nx > p.used as usize {
            return Err(format!(
                "page {:p}: xthread count {} but {nx} blocks, used {}",
                p,
                x >> XT_COUNT_SHIFT,
                p.used
            ));
        }
        if owner & OWNER_FULL != 0 {
            return Err(format!(
                "page {:p}: full but remote frees may use its list",
                p
            ));
        }
    }
    if p.used as usize + nf + nl != p.capacity as usize {
        return Err(format!(
            "page {:p}: used {} + free {nf} + local {nl} != capacity {}",
            p, p.used, p.capacity
        ));
    }
    if owner & OWNER_FULL != 0 && (nf + nl > 0 || p.capacity < p.reserved) {
        return Err(format!("page {:p}: marked full but has free blocks", p));
    }
    Ok(())
}
