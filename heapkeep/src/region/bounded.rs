//! Unit tests: `alloc`, `dealloc` and `realloc` do a bounded amount of work
//! however many free blocks the heap holds (the module's first rule).
//!
//! The work of an operation is counted in list steps (`RegionHeap::step`: a
//! free block read while searching, or one linked, unlinked or moved); the
//! tests build adversarial heaps (thousands of free blocks in the request's
//! own class that are just too small or misaligned, many populated classes)
//! and check each operation against a fixed bound, the same with 64 free
//! blocks as with thousands.

use super::*;
use std::vec::Vec;

/// `alloc`: two searches (the fast path, then `alloc_aligned`'s) of at most
/// two list heads each, the bounded scan (`EXACT_SCAN + 1` blocks), and at
/// most three list changes (the front gap unlinked and linked anew, the rest
/// linked).
const ALLOC_BOUND: usize = 2 + 2 + (EXACT_SCAN + 1) + 3;
/// `dealloc`: the free blocks above and below unlinked, the merged block
/// linked.
const FREE_BOUND: usize = 3;
/// `realloc`: a move is an `alloc` plus a `dealloc`'s list changes (growing
/// in place does fewer: at most two).
const REALLOC_BOUND: usize = ALLOC_BOUND + FREE_BOUND;

/// A heap over a buffer the test owns.
struct Owned {
    heap: RegionHeap,
    _buf: Vec<u8>,
}

fn owned(bytes: usize) -> Owned {
    let mut buf = std::vec![0u8; bytes];
    let mut heap = RegionHeap::empty();
    // SAFETY: the buffer's memory lives as long as `Owned` (moving the Vec
    // does not move it), and only the heap uses it.
    unsafe { heap.extend_raw(buf.as_mut_ptr(), bytes) };
    Owned { heap, _buf: buf }
}

/// The layout whose block is exactly `need` bytes (a multiple of
/// `GRANULE`), aligned to `align`.
fn exactly(need: usize, align: usize) -> Layout {
    assert!(need >= GRANULE && need % GRANULE == 0);
    let layout = Layout::from_size_align(need - W, align).unwrap();
    assert_eq!(block_size_for(layout.size()), Some(need));
    layout
}

#[track_caller]
fn check(heap: &RegionHeap, context: &str) {
    if let Err(e) = heap.check() {
        panic!("RegionHeap::check failed ({context}): {e}");
    }
}

/// Runs `op` and returns its result and the list steps it took.
fn steps<R>(heap: &mut RegionHeap, op: impl FnOnce(&mut RegionHeap) -> R) -> (R, usize) {
    heap.steps = 0;
    let r = op(heap);
    (r, heap.steps)
}

/// Takes all that is left of the heap's single free tail block.
fn take_tail(heap: &mut RegionHeap) -> Option<(NonNull<u8>, Layout)> {
    let tail = heap.largest_free();
    if tail == 0 {
        return None;
    }
    let l = exactly(tail, 8);
    Some((heap.alloc(l).expect("the tail block"), l))
}

/// The worst list steps seen per operation.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Worst {
    alloc: usize,
    dealloc: usize,
    realloc: usize,
}

/// `n` free blocks of `LINEAR_LIMIT` bytes, each between two used blocks of
/// one granule, all on one list, the class whose blocks go up to
/// `LINEAR_LIMIT + GRANULE`; at the far end of that list one block that is
/// big enough; nothing else free. A request for `LINEAR_LIMIT + GRANULE`
/// bytes finds no bigger class and only too-small blocks at the head of its
/// own: the worst case of the search, which must give up after
/// `EXACT_SCAN` steps. Returns the worst steps of every kind of operation.
fn too_small_blocks(n: usize) -> Worst {
    let (small, big) = (LINEAR_LIMIT, LINEAR_LIMIT + GRANULE);
    assert_eq!(
        class_of(small),
        class_of(big),
        "the big block shares the list"
    );
    let mut o = owned((n + 2) * (big + GRANULE) + 64 * 1024);
    let heap = &mut o.heap;
    let sep = exactly(GRANULE, 8);
    let fitting = heap.alloc(exactly(big, 8)).unwrap();
    let mut seps = std::vec![heap.alloc(sep).unwrap()];
    let mut smalls = Vec::new();
    for _ in 0..n {
        smalls.push(heap.alloc(exactly(small, 8)).unwrap());
        seps.push(heap.alloc(sep).unwrap());
    }
    // A used block between two used ones (to be grown by `realloc`), then
    // the rest of the heap, used.
    let pinned = heap.alloc(sep).unwrap();
    let last_sep = heap.alloc(sep).unwrap();
    let tail = take_tail(heap);
    assert_eq!(heap.free_bytes(), 0);
    // The fitting block first: `link` pushes at the head, so it ends up at
    // the far end of the list.
    // SAFETY: live blocks, each freed once with its layout.
    unsafe {
        heap.dealloc(fitting, exactly(big, 8));
        for &p in &smalls {
            heap.dealloc(p, exactly(small, 8));
        }
    }
    check(heap, "too-small list built");
    assert_eq!(heap.free_bytes(), big + n * small);

    let mut worst = Worst::default();
    let mut found = Vec::new();
    // The search gives up (or, without the bound, would walk to the end).
    let (p, s) = steps(heap, |h| h.alloc(exactly(big, 8)));
    assert!(s > EXACT_SCAN, "the scan ran: {s} steps");
    worst.alloc = worst.alloc.max(s);
    found.extend(p.map(|p| (p, exactly(big, 8))));
    // The same with an alignment (`alloc_aligned`'s own search first).
    let (p, s) = steps(heap, |h| h.alloc(exactly(big, 4 * GRANULE)));
    worst.alloc = worst.alloc.max(s);
    found.extend(p.map(|p| (p, exactly(big, 4 * GRANULE))));
    // `realloc` that cannot grow in place: a new block.
    // SAFETY: `pinned` is live with layout `sep`; on success it moved.
    let (moved, s) = steps(heap, |h| unsafe { h.realloc(pinned, sep, big - W) });
    assert!(s > EXACT_SCAN, "the move's search ran: {s} steps");
    worst.realloc = worst.realloc.max(s);
    let pinned = match moved {
        Some(p) => (p, exactly(big, 8)),
        None => (pinned, sep),
    };
    check(heap, "after the searches");
    // A request the head fits takes it at once.
    let (p, s) = steps(heap, |h| h.alloc(exactly(small, 8)));
    let p = p.expect("the head of the list fits");
    assert!(s <= 4, "a fitting head took {s} steps");
    // SAFETY: live block.
    let (_, s) = steps(heap, |h| unsafe { h.dealloc(p, exactly(small, 8)) });
    worst.dealloc = worst.dealloc.max(s);
    // Freeing the separators merges two free blocks each time.
    for (i, &p) in seps.iter().enumerate() {
        // SAFETY: live blocks, each freed once.
        let (_, s) = steps(heap, |h| unsafe { h.dealloc(p, sep) });
        worst.dealloc = worst.dealloc.max(s);
        if i % 512 == 0 {
            check(heap, "separators freed");
        }
    }
    // SAFETY: live blocks.
    unsafe {
        for (p, l) in found {
            heap.dealloc(p, l);
        }
        heap.dealloc(pinned.0, pinned.1);
        heap.dealloc(last_sep, sep);
        if let Some((p, l)) = tail {
            heap.dealloc(p, l);
        }
    }
    check(heap, "all freed");
    assert_eq!(heap.largest_free(), heap.capacity());
    worst
}

/// `n` free blocks of `LINEAR_LIMIT` bytes one granule past a multiple of
/// `LINEAR_LIMIT`, each between used blocks, nothing else free: an
/// allocation of `LINEAR_LIMIT` bytes aligned to `LINEAR_LIMIT` fits every
/// one of them by size and none by alignment.
fn misaligned_blocks(n: usize) -> Worst {
    let block = LINEAR_LIMIT;
    let aligned = exactly(block, LINEAR_LIMIT);
    let mut o = owned((n + 4) * 2 * block + 64 * 1024);
    let heap = &mut o.heap;
    let sep = exactly(GRANULE, 8);
    // Start the pattern at a multiple of `LINEAR_LIMIT`.
    let probe = heap.alloc(sep).unwrap();
    let pad = align_gap(probe.as_ptr(), LINEAR_LIMIT);
    // SAFETY: live block.
    unsafe { heap.dealloc(probe, sep) };
    let pad = (pad != 0).then(|| {
        let l = exactly(pad, 8);
        (heap.alloc(l).unwrap(), l)
    });
    // [sep][block][filler] fills 2 * LINEAR_LIMIT: every block starts one
    // granule past a multiple of LINEAR_LIMIT.
    let filler = exactly(block - GRANULE, 8);
    let mut used = Vec::new();
    let mut blocks = Vec::new();
    for _ in 0..n {
        used.push((heap.alloc(sep).unwrap(), sep));
        let b = heap.alloc(exactly(block, 8)).unwrap();
        assert_eq!(b.as_ptr() as usize % LINEAR_LIMIT, GRANULE);
        blocks.push(b);
        used.push((heap.alloc(filler).unwrap(), filler));
    }
    // An aligned used block between used ones, to be grown by `realloc`.
    let pinned_layout = exactly(GRANULE, LINEAR_LIMIT);
    let pinned = heap.alloc(pinned_layout).unwrap();
    used.push((heap.alloc(sep).unwrap(), sep));
    used.extend(take_tail(heap));
    assert_eq!(heap.free_bytes(), 0);
    for &b in &blocks {
        // SAFETY: live blocks, each freed once.
        unsafe { heap.dealloc(b, exactly(block, 8)) };
    }
    check(heap, "misaligned list built");

    let mut worst = Worst::default();
    let (p, s) = steps(heap, |h| h.alloc(aligned));
    assert!(p.is_none(), "no free block has an aligned address");
    assert!(s > EXACT_SCAN, "the scan ran: {s} steps");
    worst.alloc = s;
    // SAFETY: `pinned` is live with `pinned_layout`; it cannot move.
    let (p, s) = steps(heap, |h| unsafe {
        h.realloc(pinned, pinned_layout, block - W)
    });
    assert!(p.is_none(), "nowhere to move to");
    assert!(s > EXACT_SCAN, "the move's search ran: {s} steps");
    worst.realloc = s;
    check(heap, "after the searches");
    for (p, l) in used {
        // SAFETY: live blocks, each freed once.
        let (_, s) = steps(heap, |h| unsafe { h.dealloc(p, l) });
        worst.dealloc = worst.dealloc.max(s);
    }
    // SAFETY: live blocks.
    unsafe {
        heap.dealloc(pinned, pinned_layout);
        if let Some((p, l)) = pad {
            heap.dealloc(p, l);
        }
    }
    check(heap, "all freed");
    assert_eq!(heap.largest_free(), heap.capacity());
    worst
}

#[track_caller]
fn assert_bounded(worst: Worst, what: &str) {
    assert!(
        worst.alloc <= ALLOC_BOUND,
        "{what}: alloc took {} list steps (bound {ALLOC_BOUND})",
        worst.alloc
    );
    assert!(
        worst.dealloc <= FREE_BOUND,
        "{what}: dealloc took {} list steps (bound {FREE_BOUND})",
        worst.dealloc
    );
    assert!(
        worst.realloc <= REALLOC_BOUND,
        "{what}: realloc took {} list steps (bound {REALLOC_BOUND})",
        worst.realloc
    );
}

/// `heap_of(n)` with 64 and with 4096 free blocks: both within the bounds,
/// and the same work (it does not grow with the free blocks).
fn assert_bounded_and_flat(heap_of: fn(usize) -> Worst) {
    let few = heap_of(64);
    let many = heap_of(4096);
    assert_bounded(few, "64 free blocks");
    assert_bounded(many, "4096 free blocks");
    assert_eq!(few, many, "the work does not grow with the free blocks");
}

#[test]
fn a_long_list_of_too_small_blocks_costs_a_bounded_search() {
    assert_bounded_and_flat(too_small_blocks);
}

#[test]
fn a_long_list_of_misaligned_blocks_costs_a_bounded_search() {
    assert_bounded_and_flat(misaligned_blocks);
}

/// Free blocks in every class up to 16 KiB, many per class, the smallest
/// size of their class: every request, aligned or not, near each class
/// boundary, is served (or refused) within the bounds.
#[test]
fn many_populated_classes_cost_bounded_operations() {
    const PER_CLASS: usize = 3 * EXACT_SCAN;
    let top = class_of(16 * 1024);
    let sizes: Vec<usize> = (1..=top).map(class_lower).collect();
    let total: usize = sizes.iter().map(|s| PER_CLASS * (s + GRANULE)).sum();
    let mut o = owned(total + 1024 * 1024);
    let heap = &mut o.heap;
    let sep = exactly(GRANULE, 8);
    let mut free_later = Vec::new();
    let mut seps = Vec::new();
    for &s in &sizes {
        for _ in 0..PER_CLASS {
            free_later.push((heap.alloc(exactly(s, 8)).unwrap(), exactly(s, 8)));
            seps.push(heap.alloc(sep).unwrap());
        }
    }
    let tail = take_tail(heap);
    for &(p, l) in &free_later {
        // SAFETY: live blocks, each freed once.
        unsafe { heap.dealloc(p, l) };
    }
    check(heap, "classes populated");
    let mut worst = Worst::default();
    let mut live = Vec::new();
    for &s in &sizes {
        for need in [s, s + GRANULE] {
            for align in [8, 4 * GRANULE, 4096] {
                let l = exactly(need, align);
                let (p, st) = steps(heap, |h| h.alloc(l));
                worst.alloc = worst.alloc.max(st);
                if let Some(p) = p {
                    assert_eq!(p.as_ptr() as usize % align, 0);
                    live.push((p, l));
                }
            }
        }
    }
    assert!(!live.is_empty());
    check(heap, "after the requests");
    // Grow each live block a little (in place or moving), then
    // free everything.
    for (p, l) in live.iter_mut() {
        let new_size = l.size() + 2 * GRANULE;
        // SAFETY: a live block with its layout.
        let (q, st) = steps(heap, |h| unsafe { h.realloc(*p, *l, new_size) });
        worst.realloc = worst.realloc.max(st);
        if let Some(q) = q {
            *p = q;
            *l = Layout::from_size_align(new_size, l.align()).unwrap();
        }
    }
    check(heap, "after the reallocs");
    for (p, l) in live.into_iter().chain(seps.into_iter().map(|p| (p, sep))) {
        // SAFETY: live blocks, each freed once.
        let (_, st) = steps(heap, |h| unsafe { h.dealloc(p, l) });
        worst.dealloc = worst.dealloc.max(st);
    }
    if let Some((p, l)) = tail {
        // SAFETY: live block.
        unsafe { heap.dealloc(p, l) };
    }
    check(heap, "all freed");
    assert_eq!(heap.largest_free(), heap.capacity());
    assert_bounded(worst, "many classes");
}
