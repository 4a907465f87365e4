//! The heaps you own (issue 6): `heapkeep::region::RegionHeap` against a shadow model of live
//! blocks (random alloc / dealloc / realloc, sizes 1 B – 32 KiB, alignments 1 – 4096, and 1 B –
//! 1 MiB in a model of its own, the full invariant walk `check()` after every step), exhaustion
//! and recovery, extension, large alignments on regions of any base alignment and alignments
//! beyond the region, the byte map, the locked `GlobalAlloc` wrapper; `Arena` growth and reset;
//! `Pool` bounds.
//!
//! Knob: `PROPTEST_CASES` overrides the number of cases of the model test.

use allocator_api2::vec::Vec as ApiVec;
use heapkeep::arena::Arena;
use heapkeep::pool::{Pool, Slot};
use heapkeep::region::{
    LockedRegionHeap, RegionHeap, BLOCK_OVERHEAD, GRANULE, HEAD_TABLE_BYTES, MIN_BLOCK,
};
use heapkeep_tests::{Pattern, KIB, MIB};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr::NonNull;

/// A heap over a buffer the test owns (dropped after the heap).
struct Owned {
    heap: RegionHeap,
    _buf: Vec<u8>,
    lo: usize,
    hi: usize,
}

fn owned(bytes: usize) -> Owned {
    let mut buf = vec![0u8; bytes];
    let mut heap = RegionHeap::empty();
    let (lo, hi) = (buf.as_ptr() as usize, buf.as_ptr() as usize + bytes);
    // SAFETY: the buffer outlives the heap (both in `Owned`, heap first) and nothing else uses it.
    let added = unsafe { heap.extend_raw(buf.as_mut_ptr(), bytes) };
    // The first region holds the head table, a region header and the base tag.
    assert!(added > bytes - HEAD_TABLE_BYTES - 128, "{added} of {bytes}");
    Owned {
        heap,
        _buf: buf,
        lo,
        hi,
    }
}

#[track_caller]
fn check(heap: &RegionHeap, context: &str) {
    if let Err(e) = heap.check() {
        panic!("RegionHeap::check failed ({context}): {e}");
    }
}

fn map(heap: &RegionHeap, width: usize) -> String {
    let mut s = String::new();
    heap.render_map(width, &mut s).unwrap();
    s
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: usize, align_log: u8 },
    Dealloc { which: Index },
    Realloc { which: Index, new_size: usize },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 1..=256usize, 3 => 257..=4096usize, 2 => 4097..=32 * KIB]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (size(), prop_oneof![6 => 0..=4u8, 1 => 5..=12u8])
            .prop_map(|(size, align_log)| Op::Alloc { size, align_log }),
        3 => any::<Index>().prop_map(|which| Op::Dealloc { which }),
        2 => (any::<Index>(), size()).prop_map(|(which, new_size)| Op::Realloc { which, new_size }),
    ]
}

struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    pattern: u32,
}

/// Runs `ops` on a heap of `bytes` and checks every step against the model.
fn run_model(bytes: usize, ops: &[Op]) {
    let mut o = owned(bytes);
    let capacity = o.heap.capacity();
    let patterns: Vec<Pattern> = (0..8).map(|i| Pattern::new(i * 7919 + 1)).collect();
    let mut live: Vec<Live> = Vec::new();
    // Start address -> end address of every live block.
    let mut spans: BTreeMap<usize, usize> = BTreeMap::new();
    let mut next_pattern = 0u32;

    let place = |spans: &mut BTreeMap<usize, usize>,
                 p: usize,
                 size: usize,
                 align: usize,
                 lo: usize,
                 hi: usize| {
        assert_eq!(p % align, 0, "block {p:#x} not aligned to {align}");
        let end = p + size.max(1);
        assert!(
            p >= lo && end <= hi,
            "block {p:#x}+{size} outside the region"
        );
        if let Some((&s, &e)) = spans.range(..end).next_back() {
            assert!(e <= p, "block {p:#x}+{size} overlaps live {s:#x}..{e:#x}");
        }
        spans.insert(p, end);
    };

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Alloc { size, align_log } => {
                let layout = Layout::from_size_align(*size, 1 << align_log).unwrap();
                let free_before = o.heap.free_bytes();
                match o.heap.alloc(layout) {
                    Some(p) => {
                        place(
                            &mut spans,
                            p.as_ptr() as usize,
                            *size,
                            layout.align(),
                            o.lo,
                            o.hi,
                        );
                        let pattern = next_pattern % 8;
                        next_pattern += 1;
                        // SAFETY: a fresh block of `size` bytes.
                        unsafe { patterns[pattern as usize].fill(p.as_ptr(), *size) };
                        live.push(Live {
                            ptr: p,
                            layout,
                            pattern,
                        });
                    }
                    None => {
                        // Failing is only allowed when no free block is big enough for the
                        // request plus the worst alignment slack.
                        let need = size + BLOCK_OVERHEAD + layout.align() + MIN_BLOCK;
                        assert!(
                            o.heap.largest_free() < need + need / 16 + GRANULE,
                            "step {step}: alloc {layout:?} failed with largest free {} (free {free_before})",
                            o.heap.largest_free()
                        );
                    }
                }
            }
            Op::Dealloc { which } => {
                if live.is_empty() {
                    continue;
                }
                let b = live.swap_remove(which.index(live.len()));
                // SAFETY: a live block of `layout.size()` bytes.
                unsafe {
                    assert_eq!(
                        patterns[b.pattern as usize].check(b.ptr.as_ptr(), b.layout.size()),
                        Ok(()),
                        "step {step}: contents"
                    );
                    o.heap.dealloc(b.ptr, b.layout);
                }
                spans.remove(&(b.ptr.as_ptr() as usize));
            }
            Op::Realloc { which, new_size } => {
                if live.is_empty() {
                    continue;
                }
                let i = which.index(live.len());
                let b = &mut live[i];
                // SAFETY: a live block allocated with `b.layout`.
                match unsafe { o.heap.realloc(b.ptr, b.layout, *new_size) } {
                    Some(p) => {
                        let keep = b.layout.size().min(*new_size);
                        // SAFETY: the block now has `new_size` bytes, the first `keep` kept.
                        unsafe {
                            assert_eq!(
                                patterns[b.pattern as usize].check(p.as_ptr(), keep),
                                Ok(()),
                                "step {step}: realloc lost contents"
                            );
                        }
                        spans.remove(&(b.ptr.as_ptr() as usize));
                        place(
                            &mut spans,
                            p.as_ptr() as usize,
                            *new_size,
                            b.layout.align(),
                            o.lo,
                            o.hi,
                        );
                        b.ptr = p;
                        b.layout = Layout::from_size_align(*new_size, b.layout.align()).unwrap();
                        // SAFETY: as above.
                        unsafe { patterns[b.pattern as usize].fill(p.as_ptr(), *new_size) };
                    }
                    None => {
                        // The block is untouched.
                        // SAFETY: still live with its old size.
                        unsafe {
                            assert_eq!(
                                patterns[b.pattern as usize].check(b.ptr.as_ptr(), b.layout.size()),
                                Ok(())
                            );
                        }
                    }
                }
            }
        }
        check(&o.heap, &format!("step {step}: {op:?}"));
        let used: usize = live.iter().map(|b| b.layout.size()).sum();
        assert!(o.heap.used_bytes() >= used);
        assert_eq!(o.heap.used_bytes() + o.heap.free_bytes(), capacity);
    }
    for b in live.drain(..) {
        // SAFETY: live blocks, each freed once.
        unsafe {
            assert_eq!(
                patterns[b.pattern as usize].check(b.ptr.as_ptr(), b.layout.size()),
                Ok(())
            );
            o.heap.dealloc(b.ptr, b.layout);
        }
    }
    check(&o.heap, "after freeing everything");
    assert_eq!(
        o.heap.largest_free(),
        capacity,
        "everything coalesces back into one block"
    );
    assert_eq!(o.heap.fragmentation(), 0.0);
}

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    Config {
        cases: cases.unwrap_or(default_cases),
        max_shrink_iters: 2000,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Room for a few dozen blocks: the heap fills up, fails, and recovers.
    #[test]
    fn model_small_heap(ops in proptest::collection::vec(op(), 1..300)) {
        run_model(256 * KIB, &ops);
    }

    /// Plenty of room: allocation never fails.
    #[test]
    fn model_large_heap(ops in proptest::collection::vec(op(), 1..200)) {
        run_model(8 * MIB, &ops);
    }
}

/// Operations whose allocations take alignments up to 1 MiB.
fn op_large_align() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (size(), prop_oneof![3 => 0..=4u8, 2 => 13..=20u8])
            .prop_map(|(size, align_log)| Op::Alloc { size, align_log }),
        3 => any::<Index>().prop_map(|which| Op::Dealloc { which }),
        2 => (any::<Index>(), size()).prop_map(|(which, new_size)| Op::Realloc { which, new_size }),
    ]
}

proptest! {
    #![proptest_config(config(32))]

    /// Alignments of 8 KiB to 1 MiB among ordinary ones: the heap fills with the gaps split
    /// off in front of aligned blocks, reuses them, and coalesces them back at the end.
    #[test]
    fn model_large_alignments(ops in proptest::collection::vec(op_large_align(), 1..120)) {
        run_model(16 * MIB, &ops);
    }
}

// ---------------------------------------------------------------------------------------------
// Exhaustion, extension, realloc in place, maps
// ---------------------------------------------------------------------------------------------

#[test]
fn exhaustion_and_recovery() {
    let mut o = owned(MIB);
    let capacity = o.heap.capacity();
    let mut rng = heapkeep_tests::Rng::new(6);
    let mut fill = |heap: &mut RegionHeap| {
        let mut blocks = Vec::new();
        loop {
            let layout = Layout::from_size_align(rng.range(1, 2048), 1 << rng.range(0, 6)).unwrap();
            match heap.alloc(layout) {
                Some(p) => blocks.push((p, layout)),
                None => break,
            }
        }
        blocks
    };
    let blocks = fill(&mut o.heap);
    check(&o.heap, "full");
    let requested: usize = blocks.iter().map(|b| b.1.size()).sum();
    // Full means nearly nothing is left and what is left is small.
    assert!(
        o.heap.free_bytes() < 8 * KIB,
        "free at exhaustion: {}",
        o.heap.free_bytes()
    );
    assert!(
        requested as f64 / capacity as f64 > 0.9,
        "requested {requested} of {capacity}"
    );
    // Free every other block: the holes do not merge, so fragmentation is high.
    let (odd, even): (Vec<_>, Vec<_>) = blocks
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 1);
    for (_, (p, l)) in &odd {
        // SAFETY: live blocks, freed once.
        unsafe { o.heap.dealloc(*p, *l) };
    }
    check(&o.heap, "half freed");
    assert!(
        o.heap.fragmentation() > 90.0,
        "fragmentation {}",
        o.heap.fragmentation()
    );
    for (_, (p, l)) in &even {
        // SAFETY: as above.
        unsafe { o.heap.dealloc(*p, *l) };
    }
    check(&o.heap, "all freed");
    assert_eq!(o.heap.free_bytes(), capacity);
    assert_eq!(o.heap.largest_free(), capacity);
    // The whole region can be taken again in one block.
    let all = Layout::from_size_align(capacity - BLOCK_OVERHEAD, 8).unwrap();
    let p = o.heap.alloc(all).expect("the whole heap in one block");
    assert!(o.heap.alloc(Layout::new::<u8>()).is_none());
    // SAFETY: live block.
    unsafe { o.heap.dealloc(p, all) };
    assert_eq!(o.heap.largest_free(), capacity);
}

#[test]
fn extension_with_new_and_adjacent_regions() {
    let first: &'static mut [u8] = Box::leak(vec![0u8; 64 * KIB].into_boxed_slice());
    let mut heap = RegionHeap::new(first);
    let cap1 = heap.capacity();
    let big = Layout::from_size_align(48 * KIB, 8).unwrap();
    let a = heap.alloc(big).unwrap();
    assert!(
        heap.alloc(big).is_none(),
        "no room for a second 48 KiB block"
    );
    // An independent region.
    let second: &'static mut [u8] = Box::leak(vec![0u8; 64 * KIB].into_boxed_slice());
    let range = second.as_ptr() as usize..second.as_ptr() as usize + second.len();
    let added = heap.extend(second);
    assert!(added > 63 * KIB);
    assert_eq!(heap.capacity(), cap1 + added);
    let b = heap.alloc(big).expect("fits in the new region");
    assert!(range.contains(&(b.as_ptr() as usize)));
    check(&heap, "two regions");
    assert_eq!(map(&heap, 4).lines().count(), 2, "one map line per region");
    // SAFETY: live blocks.
    unsafe {
        heap.dealloc(a, big);
        heap.dealloc(b, big);
    }
    check(&heap, "two regions, empty");
    assert_eq!(heap.largest_free(), cap1.max(added));

    // A slice right after a region's end merges into it: one region, one free block.
    let buf: &'static mut [u8] = Box::leak(vec![0u8; 128 * KIB].into_boxed_slice());
    let (lo, hi) = buf.split_at_mut(64 * KIB);
    let mut heap = RegionHeap::new(lo);
    let before = heap.capacity();
    let p = heap
        .alloc(Layout::from_size_align(100, 8).unwrap())
        .unwrap();
    let added = heap.extend(hi);
    assert!(added >= 64 * KIB - GRANULE, "merged {added}");
    check(&heap, "merged");
    assert_eq!(map(&heap, 8).lines().count(), 1);
    assert_eq!(
        heap.largest_free(),
        before + added - (100 + BLOCK_OVERHEAD).next_multiple_of(GRANULE),
        "the tail block grew"
    );
    // SAFETY: live block.
    unsafe { heap.dealloc(p, Layout::from_size_align(100, 8).unwrap()) };
    assert_eq!(heap.largest_free(), heap.capacity());
    // Too small to hold anything: nothing added.
    let mut tiny = [0u8; 40];
    // SAFETY: nothing is added, so the heap never uses the buffer.
    assert_eq!(unsafe { heap.extend_raw(tiny.as_mut_ptr(), tiny.len()) }, 0);
    check(&heap, "after a tiny slice");
}

#[test]
fn realloc_in_place_and_alignments() {
    let mut o = owned(256 * KIB);
    let l = Layout::from_size_align(1000, 8).unwrap();
    let a = o.heap.alloc(l).unwrap();
    let b = o.heap.alloc(l).unwrap();
    let c = o.heap.alloc(l).unwrap();
    let d = o.heap.alloc(l).unwrap();
    // SAFETY: live blocks throughout; sizes as allocated.
    unsafe {
        a.as_ptr().write_bytes(0xa1, 1000);
        o.heap.dealloc(b, l);
        // b's space is free: a grows into it without moving.
        let a2 = o.heap.realloc(a, l, 1900).unwrap();
        assert_eq!(a2, a);
        assert!(std::slice::from_raw_parts(a2.as_ptr(), 1000)
            .iter()
            .all(|&x| x == 0xa1));
        check(&o.heap, "grown in place");
        // Shrinking stays in place and frees the tail.
        let free = o.heap.free_bytes();
        let a3 = o
            .heap
            .realloc(a2, Layout::from_size_align(1900, 8).unwrap(), 100)
            .unwrap();
        assert_eq!(a3, a);
        assert!(o.heap.free_bytes() >= free + 1792);
        check(&o.heap, "shrunk in place");
        // d is in c's way: c moves, keeping its contents.
        c.as_ptr().write_bytes(0xc3, 1000);
        let c2 = o.heap.realloc(c, l, 40 * KIB).unwrap();
        assert_ne!(c2, c);
        o.heap.dealloc(d, l);
        // Now the rest of the heap follows c2: it grows in place.
        let c3 = o
            .heap
            .realloc(c2, Layout::from_size_align(40 * KIB, 8).unwrap(), 80 * KIB)
            .unwrap();
        assert_eq!(c3, c2);
        let c2 = c3;
        check(&o.heap, "moved and grown");
        assert!(std::slice::from_raw_parts(c2.as_ptr(), 1000)
            .iter()
            .all(|&x| x == 0xc3));
        o.heap
            .dealloc(c2, Layout::from_size_align(80 * KIB, 8).unwrap());
        o.heap.dealloc(a3, Layout::from_size_align(100, 8).unwrap());
    }
    check(&o.heap, "empty");
    // Every alignment up to 4096 (and zero-size requests) is served and disjoint.
    let mut blocks = Vec::new();
    for log in 0..=12 {
        for size in [0usize, 1, 24, 4096] {
            let l = Layout::from_size_align(size, 1 << log).unwrap();
            let p = o.heap.alloc(l).unwrap();
            assert_eq!(p.as_ptr() as usize % (1 << log), 0);
            blocks.push((p, l));
        }
    }
    check(&o.heap, "aligned blocks");
    let mut addrs: Vec<usize> = blocks.iter().map(|b| b.0.as_ptr() as usize).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(
        addrs.len(),
        blocks.len(),
        "distinct pointers, zero sizes included"
    );
    for (p, l) in blocks {
        // SAFETY: live blocks.
        unsafe { o.heap.dealloc(p, l) };
    }
    assert_eq!(o.heap.largest_free(), o.heap.capacity());
}

/// A block of 4 KiB or more that cannot grow into the block above moves down into the free block
/// below it (and the free block above, when there is one), copying its contents over its own old
/// place; when the block below would break the alignment, it moves elsewhere instead.
#[test]
fn realloc_grows_into_the_free_block_below() {
    let mut o = owned(256 * KIB);
    // 5,024-byte blocks.
    let l = Layout::from_size_align(5000, 8).unwrap();
    let fill = |p: NonNull<u8>, n: usize| {
        // SAFETY: `p` is live with at least `n` bytes.
        unsafe { (0..n).for_each(|i| *p.as_ptr().add(i) = (i % 251) as u8) }
    };
    let kept = |p: NonNull<u8>, n: usize| {
        // SAFETY: as `fill`.
        (0..n).all(|i| unsafe { *p.as_ptr().add(i) } == (i % 251) as u8)
    };
    // SAFETY: live blocks throughout; sizes and alignments as allocated.
    unsafe {
        let [a, b, c, d, e] = [(); 5].map(|_| o.heap.alloc(l).unwrap());
        fill(c, 5000);
        o.heap.dealloc(b, l);
        let free = o.heap.free_bytes();
        // d is used: c moves down over b's space and its own, which it fills exactly
        // (10,048 bytes: nothing is left free).
        let c2 = o.heap.realloc(c, l, 10040).unwrap();
        assert_eq!(c2, b, "moved into the block below");
        assert!(kept(c2, 5000), "contents kept across the overlapping move");
        assert_eq!(
            o.heap.free_bytes(),
            free - 5024,
            "a 10,048-byte block for 5,024"
        );
        check(&o.heap, "grown down, exactly");
        // With a and d free too: above c2 (10,048 B) are d's 5,024 bytes, too few for 16,032;
        // with a's 5,024 below, enough (4,064 stay free above).
        let l2 = Layout::from_size_align(10040, 8).unwrap();
        fill(c2, 10040);
        o.heap.dealloc(d, l);
        o.heap.dealloc(a, l);
        let c3 = o.heap.realloc(c2, l2, 16000).unwrap();
        assert_eq!(c3, a);
        assert!(kept(c3, 10040));
        check(&o.heap, "grown into both neighbours");
        o.heap
            .dealloc(c3, Layout::from_size_align(16000, 8).unwrap());
        o.heap.dealloc(e, l);
    }
    check(&o.heap, "empty");
    assert_eq!(o.heap.largest_free(), o.heap.capacity());
    // A block whose free neighbours together fit, but whose block below starts off its
    // alignment, moves elsewhere.
    // SAFETY: as above.
    unsafe {
        let small = Layout::from_size_align(100, 8).unwrap();
        let wide = Layout::from_size_align(5000, 256).unwrap();
        // The heap is one free block again, carved from the bottom: a probe finds where, and a
        // pad puts x (128 B) at 128 mod 256, so y (256-aligned) follows it with no gap.
        let probe = o
            .heap
            .alloc(Layout::from_size_align(24, 8).unwrap())
            .unwrap();
        let next = probe.as_ptr() as usize + 32;
        // The first address at 128 mod 256 from `next` on (both multiples of 32, so a pad is
        // 32 bytes or more).
        let at = (next + 127) / 256 * 256 + 128;
        let pad = (at != next).then(|| {
            let pl = Layout::from_size_align(at - next - 8, 8).unwrap();
            (o.heap.alloc(pl).unwrap(), pl)
        });
        let x = o.heap.alloc(small).unwrap();
        let y = o.heap.alloc(wide).unwrap();
        assert_eq!((x.as_ptr() as usize, y.as_ptr() as usize), (at, at + 128));
        // z (256 B) above y: y (5,024 B) with z alone is 5,280 B, with x too 5,408 B.
        let lz = Layout::from_size_align(248, 8).unwrap();
        let z = o.heap.alloc(lz).unwrap();
        let guard = o.heap.alloc(l).unwrap();
        fill(y, 5000);
        o.heap.dealloc(x, small);
        o.heap.dealloc(z, lz);
        let y2 = o.heap.realloc(y, wide, 5390).unwrap();
        assert_ne!(y2, x, "the block below is off the alignment");
        assert_eq!(y2.as_ptr() as usize % 256, 0);
        assert!(kept(y2, 5000));
        check(&o.heap, "moved elsewhere for its alignment");
        o.heap
            .dealloc(y2, Layout::from_size_align(5390, 256).unwrap());
        o.heap.dealloc(guard, l);
        o.heap
            .dealloc(probe, Layout::from_size_align(24, 8).unwrap());
        if let Some((p, pl)) = pad {
            o.heap.dealloc(p, pl);
        }
    }
    check(&o.heap, "empty again");
    assert_eq!(o.heap.largest_free(), o.heap.capacity());
}

/// Placement: a request whose first fitting class is far above it (here the rest of the region)
/// takes a free block of its own class that is big enough (the closer fit), so the big block
/// stays whole; one that fits no block of its own class is carved from the big block's bottom.
#[test]
fn a_free_block_of_the_requests_own_class_keeps_the_big_block_whole() {
    let mut o = owned(MIB);
    let hole = Layout::from_size_align(5000, 8).unwrap();
    let sep = Layout::from_size_align(100, 8).unwrap();
    let a = o.heap.alloc(hole).unwrap();
    let b = o.heap.alloc(sep).unwrap();
    // SAFETY: `a` is live, freed once.
    unsafe { o.heap.dealloc(a, hole) };
    check(&o.heap, "hole made");
    let largest = o.heap.largest_free();
    assert!(largest > 900 * KIB, "{largest}");
    // 4900 bytes take a smaller block than the hole's (5008 bytes rounded up), in the same
    // class; every class above holds blocks of at least 4900 bytes, and the only one with a
    // free block is the rest of the region's, many powers of two up.
    let near = Layout::from_size_align(4900, 8).unwrap();
    let p = o.heap.alloc(near).unwrap();
    assert_eq!(p, a, "the closer fit takes the hole");
    assert_eq!(o.heap.largest_free(), largest, "the big block stays whole");
    check(&o.heap, "closer fit");
    // Too big for the hole's class: from the big block, just above the separator.
    let big = Layout::from_size_align(6000, 8).unwrap();
    let q = o.heap.alloc(big).unwrap();
    let sep_block = (100 + BLOCK_OVERHEAD).next_multiple_of(GRANULE);
    assert_eq!(
        q.as_ptr() as usize,
        b.as_ptr() as usize + sep_block,
        "carved from the bottom"
    );
    // SAFETY: live blocks, each freed once.
    unsafe {
        o.heap.dealloc(p, near);
        o.heap.dealloc(q, big);
        o.heap.dealloc(b, sep);
    }
    assert_eq!(o.heap.largest_free(), o.heap.capacity());
}

#[test]
fn map_fragmentation_and_picture() {
    let mut o = owned(16 * KIB);
    let cap = o.heap.capacity();
    // Cells of `cell` bytes; blocks of exactly three cells each.
    let cell = (cap / 10) & !(GRANULE - 1);
    let l = Layout::from_size_align(3 * cell - BLOCK_OVERHEAD, 8).unwrap();
    let a = o.heap.alloc(l).unwrap();
    let b = o.heap.alloc(l).unwrap();
    let c = o.heap.alloc(l).unwrap();
    assert_eq!(map(&o.heap, 10), "aaabbbccc-\n");
    assert_eq!(o.heap.fragmentation(), 0.0);
    // SAFETY: live blocks, each freed once.
    unsafe { o.heap.dealloc(b, l) };
    assert_eq!(
        map(&o.heap, 10),
        "aaa---bbb-\n",
        "letters follow address order"
    );
    let free = o.heap.free_bytes();
    assert_eq!(free, cap - 6 * cell);
    assert_eq!(o.heap.largest_free(), 3 * cell);
    let expected = (1.0 - (3 * cell) as f64 / free as f64) * 100.0;
    assert!((o.heap.fragmentation() - expected).abs() < 1e-9);
    assert!(o.heap.fragmentation() > 20.0);
    // SAFETY: live block, freed once.
    unsafe { o.heap.dealloc(a, l) };
    assert_eq!(map(&o.heap, 10), "------aaa-\n");
    assert_eq!(map(&o.heap, 20), "------------aaaaaa--\n");
    let mut svg = String::new();
    o.heap.write_svg(400, &mut svg).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<rect").count(), 3, "free, used, free");
    assert_eq!(svg.matches("hsl(").count(), 1);
    // SAFETY: live block, freed once.
    unsafe { o.heap.dealloc(c, l) };
    assert_eq!(map(&o.heap, 10), "----------\n");
}

/// Deliberately corrupting a used block's tag, or a free block's fields, is caught by `check()`.
#[test]
fn check_detects_corruption() {
    let mut o = owned(16 * KIB);
    let l = Layout::from_size_align(64, 8).unwrap();
    let a = o.heap.alloc(l).unwrap();
    let b = o.heap.alloc(l).unwrap();
    let _c = o.heap.alloc(l).unwrap();
    check(&o.heap, "before");
    let block = (64 + BLOCK_OVERHEAD).next_multiple_of(GRANULE);
    // SAFETY: a used block's last word is its tag, and a free block's first granule holds its
    // fields (test-only corruption, each undone).
    unsafe {
        let tag = a.as_ptr().add(block - BLOCK_OVERHEAD).cast::<usize>();
        let saved = *tag;
        *tag = saved + GRANULE;
        assert!(o.heap.check().is_err(), "a wrong size must be found");
        *tag = saved & !1;
        assert!(
            o.heap.check().is_err(),
            "a used block that reads as free must be found"
        );
        *tag = saved | 2;
        assert!(
            o.heap.check().is_err(),
            "an ABOVE_FREE bit under a used block must be found"
        );
        *tag = saved;
        check(&o.heap, "restored");
        o.heap.dealloc(b, l);
        check(&o.heap, "b freed");
        let size = b.as_ptr().add(3 * BLOCK_OVERHEAD).cast::<usize>();
        *size += GRANULE;
        assert!(
            o.heap.check().is_err(),
            "a free block whose two size words differ must be found"
        );
        *size -= GRANULE;
        let next_of_prev = b.as_ptr().add(BLOCK_OVERHEAD).cast::<usize>();
        *next_of_prev += 8;
        assert!(o.heap.check().is_err(), "a wrong back link must be found");
        *next_of_prev -= 8;
    }
    check(&o.heap, "restored");
}

// ---------------------------------------------------------------------------------------------
// Large alignments
// ---------------------------------------------------------------------------------------------

/// A heap over `bytes` starting `offset` bytes past a multiple of 4 MiB, in a buffer the test
/// owns (freed when this is dropped, after the heap is no longer used).
struct Placed {
    heap: RegionHeap,
    buf: *mut u8,
    buf_layout: Layout,
    lo: usize,
    hi: usize,
}

impl Drop for Placed {
    fn drop(&mut self) {
        // SAFETY: allocated in `placed` with this layout; the heap is not used after this.
        unsafe { std::alloc::dealloc(self.buf, self.buf_layout) };
    }
}

fn placed(bytes: usize, offset: usize) -> Placed {
    let buf_layout = Layout::from_size_align(bytes + offset, 4 * MIB).unwrap();
    // SAFETY: a non-zero size.
    let buf = unsafe { std::alloc::alloc_zeroed(buf_layout) };
    assert!(!buf.is_null());
    let mut heap = RegionHeap::empty();
    // SAFETY: `buf + offset .. + bytes` lies in the buffer, which `Placed` frees only on drop;
    // nothing else uses it.
    let added = unsafe { heap.extend_raw(buf.add(offset), bytes) };
    assert!(added > bytes - HEAD_TABLE_BYTES - 128, "{added} of {bytes}");
    let lo = buf as usize + offset;
    Placed {
        heap,
        buf,
        buf_layout,
        lo,
        hi: lo + bytes,
    }
}

/// Alignments of 8 KiB, 64 KiB and 1 MiB, on regions whose base is 4 MiB-, 4 KiB-, 8-byte- and
/// 1-byte-aligned: each pointer is aligned, inside the region and writable over its whole size
/// without touching its neighbours; the invariant walk passes after every step; and freeing
/// everything coalesces the free blocks split off in front for alignment, restoring the single
/// free block of the start.
#[test]
fn alignments_up_to_1_mib_on_regions_of_any_base_alignment() {
    let patterns: Vec<Pattern> = (0..16).map(|i| Pattern::new(i * 104_729 + 3)).collect();
    for offset in [0, 4 * KIB, 24, 1] {
        let mut r = placed(16 * MIB, offset);
        let capacity = r.heap.capacity();
        assert_eq!(r.heap.free_bytes(), capacity);
        let ctx = |what: &str| format!("base {:#x} (offset {offset}): {what}", r.lo);
        // One block at a time on the empty heap: the gap in front of it stays free, and
        // freeing the block merges gap, block and the rest into one block again.
        for align in [8 * KIB, 64 * KIB, MIB] {
            let l = Layout::from_size_align(100, align).unwrap();
            let p = r.heap.alloc(l).expect("an aligned block in an empty heap");
            let a = p.as_ptr() as usize;
            assert_eq!(a % align, 0, "{}", ctx("alignment"));
            check(&r.heap, &ctx("one aligned block"));
            // Only the block itself is used: the gap in front of it is a free block.
            assert_eq!(
                r.heap.free_bytes(),
                capacity - (100 + BLOCK_OVERHEAD).next_multiple_of(GRANULE),
                "{}",
                ctx("the front gap stays free")
            );
            // No region here starts its first block on an 8 KiB boundary (the head table and
            // the region header come first), so there is a gap and the free space is in two.
            assert!(
                r.heap.largest_free() < r.heap.free_bytes(),
                "{}",
                ctx("the front gap and the rest are two free blocks")
            );
            // SAFETY: live block.
            unsafe { r.heap.dealloc(p, l) };
            check(&r.heap, &ctx("one aligned block freed"));
            assert_eq!(r.heap.largest_free(), capacity, "{}", ctx("coalesced"));
        }
        // Many at once, of sizes below, at and above the alignment.
        let mut live: Vec<(NonNull<u8>, Layout, usize)> = Vec::new();
        for align in [8 * KIB, 64 * KIB, MIB] {
            for size in [1, 100, align / 2, align, align + 1] {
                let l = Layout::from_size_align(size, align).unwrap();
                let p = r
                    .heap
                    .alloc(l)
                    .unwrap_or_else(|| panic!("{}", ctx(&format!("{l:?} failed"))));
                let a = p.as_ptr() as usize;
                assert_eq!(a % align, 0, "{}", ctx(&format!("{l:?} at {a:#x}")));
                assert!(
                    a >= r.lo && a + size <= r.hi,
                    "{}",
                    ctx("outside the region")
                );
                let pat = live.len() % patterns.len();
                // SAFETY: a fresh block of `size` bytes.
                unsafe {
                    patterns[pat].fill(p.as_ptr(), size);
                    assert_eq!(patterns[pat].check(p.as_ptr(), size), Ok(()));
                }
                live.push((p, l, pat));
                check(&r.heap, &ctx(&format!("after {l:?}")));
            }
        }
        // Nothing overwrote anything: every block still holds its own pattern.
        for &(p, l, pat) in &live {
            // SAFETY: live blocks.
            unsafe { assert_eq!(patterns[pat].check(p.as_ptr(), l.size()), Ok(()), "{l:?}") };
        }
        assert!(r.heap.free_bytes() < capacity);
        // Free every other block first (the holes stay apart), then the rest.
        let (first, second): (Vec<_>, Vec<_>) =
            live.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
        for (_, (p, l, pat)) in first.into_iter().chain(second) {
            // SAFETY: live blocks, each freed once.
            unsafe {
                assert_eq!(patterns[pat].check(p.as_ptr(), l.size()), Ok(()), "{l:?}");
                r.heap.dealloc(p, l);
            }
            check(&r.heap, &ctx(&format!("freed {l:?}")));
        }
        assert_eq!(r.heap.free_bytes(), capacity, "{}", ctx("all free"));
        assert_eq!(
            r.heap.largest_free(),
            capacity,
            "{}",
            ctx("everything coalesced into one block")
        );
    }
}

/// A region of 1 MiB that holds no multiple of 2 MiB: every alignment from 2 MiB up (to
/// 2^62) is refused with `None` (and a null pointer from the locked wrapper), never a panic,
/// even with small free blocks in the request's own class for the last-resort scan to test.
#[test]
fn an_alignment_beyond_the_region_is_refused() {
    // The region is [4 MiB * k + 4 KiB, 4 MiB * k + 1 MiB + 4 KiB).
    let mut r = placed(MIB, 4 * KIB);
    assert_eq!(r.lo % (4 * MIB), 4 * KIB);
    let capacity = r.heap.capacity();
    // Small free blocks between used ones.
    let small = Layout::from_size_align(24, 8).unwrap();
    let blocks: Vec<_> = (0..64).map(|_| r.heap.alloc(small).unwrap()).collect();
    for p in blocks.iter().step_by(2) {
        // SAFETY: live blocks, each freed once.
        unsafe { r.heap.dealloc(*p, small) };
    }
    check(&r.heap, "holes made");
    let free = r.heap.free_bytes();
    for log in 21..=62 {
        for size in [0, 1, 24, 4096] {
            let l = Layout::from_size_align(size, 1 << log).unwrap();
            assert_eq!(r.heap.alloc(l), None, "{l:?}");
        }
    }
    // Bigger than the region, ordinary alignment.
    assert_eq!(
        r.heap.alloc(Layout::from_size_align(2 * MIB, 8).unwrap()),
        None
    );
    check(&r.heap, "after the refusals");
    assert_eq!(r.heap.free_bytes(), free, "a refusal changes nothing");
    for p in blocks.iter().skip(1).step_by(2) {
        // SAFETY: the blocks still live.
        unsafe { r.heap.dealloc(*p, small) };
    }
    assert_eq!(r.heap.largest_free(), capacity);

    // The same through the locked wrapper's `GlobalAlloc`.
    let mut r = placed(MIB, 4 * KIB);
    let locked = LockedRegionHeap::empty();
    std::mem::swap(&mut *locked.lock(), &mut r.heap);
    for log in [21, 22, 30, 40, 62] {
        let l = Layout::from_size_align(1, 1 << log).unwrap();
        // SAFETY: a non-zero size.
        assert!(unsafe { GlobalAlloc::alloc(&locked, l) }.is_null(), "{l:?}");
    }
    check(&locked.lock(), "locked, after the refusals");
    let (largest, capacity) = {
        let heap = locked.lock();
        (heap.largest_free(), heap.capacity())
    };
    assert_eq!(largest, capacity);
    // `r` (and its buffer) is dropped after `locked`, declared later.
}

// ---------------------------------------------------------------------------------------------
// The locked wrapper
// ---------------------------------------------------------------------------------------------

static LOCKED: LockedRegionHeap = LockedRegionHeap::empty();

#[test]
fn locked_heap_as_global_alloc_and_allocator() {
    LOCKED.extend(Box::leak(vec![0u8; 4 * MIB].into_boxed_slice()));
    let capacity = LOCKED.lock().capacity();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            s.spawn(move || {
                let mut blocks = Vec::new();
                let mut rng = heapkeep_tests::Rng::new(t as u64);
                for i in 0..3000 {
                    let layout =
                        Layout::from_size_align(rng.range(1, 600), 1 << rng.range(0, 5)).unwrap();
                    // SAFETY: non-zero size; blocks freed or resized with their layouts.
                    unsafe {
                        let p = GlobalAlloc::alloc(&LOCKED, layout);
                        assert!(!p.is_null());
                        p.write_bytes(t, layout.size());
                        blocks.push((p, layout));
                        if i % 3 == 0 {
                            let (p, l) = blocks.swap_remove(rng.range(0, blocks.len() - 1));
                            assert!(std::slice::from_raw_parts(p, l.size())
                                .iter()
                                .all(|&x| x == t));
                            let q = GlobalAlloc::realloc(&LOCKED, p, l, l.size() * 2);
                            assert!(!q.is_null());
                            assert!(std::slice::from_raw_parts(q, l.size())
                                .iter()
                                .all(|&x| x == t));
                            GlobalAlloc::dealloc(
                                &LOCKED,
                                q,
                                Layout::from_size_align(l.size() * 2, l.align()).unwrap(),
                            );
                        }
                    }
                }
                for (p, l) in blocks {
                    // SAFETY: live blocks.
                    unsafe {
                        assert!(std::slice::from_raw_parts(p, l.size())
                            .iter()
                            .all(|&x| x == t));
                        GlobalAlloc::dealloc(&LOCKED, p, l);
                    }
                }
            });
        }
    });
    check(&LOCKED.lock(), "after 4 threads");
    assert_eq!(LOCKED.lock().free_bytes(), capacity);
    // As an allocator-api2 `Allocator`: a Vec grows in it (in place when it can).
    let mut v = ApiVec::new_in(&LOCKED);
    v.extend(0..100_000u32);
    assert_eq!(
        v.iter().map(|&x| x as u64).sum::<u64>(),
        99_999 * 100_000 / 2
    );
    assert!(LOCKED.lock().used_bytes() >= 400_000);
    drop(v);
    assert_eq!(LOCKED.lock().free_bytes(), capacity);
    // Out of memory is an error, not a panic.
    let huge = Layout::from_size_align(8 * MIB, 8).unwrap();
    // SAFETY: non-zero size.
    assert!(unsafe { GlobalAlloc::alloc(&LOCKED, huge) }.is_null());
}

/// The locked wrapper serves 8 KiB, 64 KiB and 1 MiB alignments through `GlobalAlloc` (from a
/// buffer with only the system allocator's 16-byte alignment), and `Allocator::grow` moves a
/// block to a larger alignment, keeping its contents.
#[test]
fn locked_heap_serves_large_alignments() {
    let mut buf = vec![0u8; 8 * MIB];
    let heap = LockedRegionHeap::empty();
    // SAFETY: `buf` outlives `heap` (declared before it) and nothing else uses it.
    unsafe { heap.lock().extend_raw(buf.as_mut_ptr(), buf.len()) };
    let capacity = heap.lock().capacity();
    let mut blocks = Vec::new();
    for align in [8 * KIB, 64 * KIB, MIB] {
        for size in [1, 3000, align] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero size.
            let p = unsafe { GlobalAlloc::alloc(&heap, l) };
            assert!(!p.is_null(), "{l:?}");
            assert_eq!(p as usize % align, 0, "{l:?}");
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.write_bytes(blocks.len() as u8, size) };
            blocks.push((p, l));
            check(&heap.lock(), &format!("after {l:?}"));
        }
    }
    for (i, (p, l)) in blocks.into_iter().enumerate() {
        // SAFETY: live blocks, each freed once.
        unsafe {
            assert!(std::slice::from_raw_parts(p, l.size())
                .iter()
                .all(|&x| x == i as u8));
            GlobalAlloc::dealloc(&heap, p, l);
        }
        check(&heap.lock(), &format!("freed {l:?}"));
    }
    assert_eq!(heap.lock().largest_free(), capacity);
    // `grow` to a larger alignment: a new, aligned block with the old contents.
    let old = Layout::from_size_align(100, 8).unwrap();
    let new = Layout::from_size_align(200, 64 * KIB).unwrap();
    let p = allocator_api2::alloc::Allocator::allocate(&heap, old).unwrap();
    // SAFETY: `p` is a live block of `old`, then of `new`.
    unsafe {
        p.cast::<u8>().as_ptr().write_bytes(0x5a, 100);
        let q = allocator_api2::alloc::Allocator::grow(&heap, p.cast(), old, new).unwrap();
        let q = q.cast::<u8>();
        assert_eq!(q.as_ptr() as usize % (64 * KIB), 0);
        assert!(std::slice::from_raw_parts(q.as_ptr(), 100)
            .iter()
            .all(|&x| x == 0x5a));
        allocator_api2::alloc::Allocator::deallocate(&heap, q, new);
    }
    check(&heap.lock(), "after grow");
    assert_eq!(heap.lock().largest_free(), capacity);
}

// ---------------------------------------------------------------------------------------------
// Arena and Pool
// ---------------------------------------------------------------------------------------------

#[test]
fn arena_grows_by_chunks_and_resets() {
    let mut arena = Arena::new();
    assert_eq!(arena.chunk_count(), 0);
    {
        let mut v = ApiVec::new_in(&arena);
        for i in 0..100_000u64 {
            v.push(i);
        }
        let small: Vec<&mut u32> = (0..1000).map(|i| arena.alloc(i).unwrap()).collect();
        assert!(small.iter().enumerate().all(|(i, x)| **x == i as u32));
        assert_eq!(v.iter().sum::<u64>(), 99_999 * 100_000 / 2);
    }
    assert!(
        arena.chunk_count() > 3,
        "grew by chunks: {}",
        arena.chunk_count()
    );
    let before = arena.allocated_bytes();
    assert!(before >= 800_000);
    arena.reset();
    assert_eq!(arena.chunk_count(), 1, "reset keeps only the newest chunk");
    let kept = arena.allocated_bytes();
    assert!(kept < before);
    // After a reset, allocations reuse the kept chunk: no new chunk until it is full.
    for i in 0..(kept / 64 - 2) {
        let l = Layout::from_size_align(64, 64).unwrap();
        let p = arena.alloc_layout(l).unwrap();
        assert_eq!(p.as_ptr() as usize % 64, 0, "alloc {i}");
    }
    assert_eq!(arena.chunk_count(), 1);
    // Over-aligned and larger-than-a-chunk requests.
    let l = Layout::from_size_align(10 * MIB, 4096).unwrap();
    assert_eq!(arena.alloc_layout(l).unwrap().as_ptr() as usize % 4096, 0);
    assert_eq!(arena.chunk_count(), 2);
}

#[test]
fn arena_over_a_region_heap() {
    let mut buf = vec![0u8; 256 * KIB];
    let heap = LockedRegionHeap::empty();
    // SAFETY: `buf` outlives `heap` (declared before it) and nothing else uses it.
    unsafe { heap.lock().extend_raw(buf.as_mut_ptr(), buf.len()) };
    let capacity = heap.lock().capacity();
    {
        let arena = Arena::new_in(&heap);
        let mut v = ApiVec::new_in(&arena);
        v.extend(0..10_000u32);
        assert!(heap.lock().used_bytes() >= 40_000);
        // The backing heap runs out: the arena reports it, it does not panic.
        assert!(arena
            .alloc_layout(Layout::from_size_align(MIB, 8).unwrap())
            .is_err());
    }
    assert_eq!(
        heap.lock().free_bytes(),
        capacity,
        "dropping the arena returns every chunk"
    );
}

#[test]
fn pool_bounds_take_and_give_back() {
    let drops = Cell::new(0);
    struct Counted<'a>(u32, &'a Cell<u32>);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.1.set(self.1.get() + 1);
        }
    }
    let mut slots = [const { Slot::new() }; 8];
    let pool = Pool::new(&mut slots);
    assert_eq!(pool.capacity(), 8);
    let mut taken: Vec<_> = (0..8)
        .map(|i| pool.take(Counted(i, &drops)).ok().unwrap())
        .collect();
    assert_eq!(pool.len(), 8);
    let refused = pool
        .take(Counted(99, &drops))
        .err()
        .expect("the pool is full");
    assert_eq!(refused.0, 99);
    drop(refused);
    assert_eq!(drops.get(), 1);
    // Give two back (one dropped, one taken out), take two again: the same slots.
    let addr = |p: &heapkeep::pool::Pooled<'_, Counted<'_>>| &**p as *const Counted<'_> as usize;
    let freed = [addr(&taken[2]), addr(&taken[5])];
    drop(taken.remove(5));
    assert_eq!(drops.get(), 2);
    let out = taken.remove(2).into_inner();
    assert_eq!(out.0, 2);
    assert_eq!(drops.get(), 2, "into_inner does not drop");
    assert_eq!(pool.len(), 6);
    let x = pool.take(Counted(10, &drops)).ok().unwrap();
    let y = pool.take(Counted(11, &drops)).ok().unwrap();
    let mut again = [addr(&x), addr(&y)];
    again.sort();
    let mut freed = freed;
    freed.sort();
    assert_eq!(again, freed, "given-back slots are reused");
    assert!(pool.take(Counted(12, &drops)).is_err());
    assert!(taken.iter().map(|p| p.0).eq([0, 1, 3, 4, 6, 7]));
    drop((x, y, taken, out));
    assert_eq!(pool.len(), 0);
    assert_eq!(drops.get(), 2 + 1 + 2 + 6 + 1);

    let pool = Pool::with_capacity(1000);
    let all: Vec<_> = (0..1000).map(|i| pool.take([i; 4]).ok().unwrap()).collect();
    assert!(pool.take([0; 4]).is_err());
    assert!(all.iter().enumerate().all(|(i, p)| p[3] == i));
}
