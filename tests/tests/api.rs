//! Edge cases of `heapkeep::HeapKeep` through `GlobalAlloc`: zero-size layouts, impossible
//! layouts and huge alignments, realloc overflow, every alignment 1 B .. 64 MiB, realloc across
//! size classes, alloc_zeroed on reused dirty memory, usable_size >= requested.

use heapkeep::usable_size;
use heapkeep::HeapKeep;
use heapkeep_tests::{check_zero, Pattern, KIB, MIB};
use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;

#[track_caller]
fn invariants(context: &str) {
    heapkeep_tests::assert_invariants(context);
}

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align)
        .unwrap_or_else(|e| panic!("bad test layout {size}/{align}: {e}"))
}

/// Allocates (optionally zeroed) and checks non-null, alignment and usable_size.
#[track_caller]
fn alloc_checked(l: Layout, zeroed: bool) -> *mut u8 {
    let p = unsafe {
        if zeroed {
            HeapKeep.alloc_zeroed(l)
        } else {
            HeapKeep.alloc(l)
        }
    };
    assert!(
        !p.is_null(),
        "alloc{}({l:?}) returned null",
        if zeroed { "_zeroed" } else { "" }
    );
    assert_eq!(
        p as usize % l.align(),
        0,
        "alloc({l:?}) = {p:p} is misaligned"
    );
    check_usable(p, l.size());
    p
}

#[track_caller]
fn check_usable(p: *mut u8, size: usize) {
    if size > 0 {
        let u = unsafe { usable_size(p) };
        assert!(u >= size, "usable_size({p:p}) = {u} < requested {size}");
    }
}

#[track_caller]
fn check_pattern(pat: &Pattern, p: *const u8, len: usize, what: &str) {
    if let Err(off) = unsafe { pat.check(p, len) } {
        panic!(
            "{what}: block {p:p} corrupted at offset {off} of {len}: {:#04x} != expected {:#04x}",
            unsafe { *p.add(off) },
            pat.byte(off)
        );
    }
}

/// Asserts that the byte ranges `[addr, addr + max(len, 1))` are pairwise disjoint.
#[track_caller]
fn assert_disjoint(blocks: &[(*mut u8, usize)], what: &str) {
    let mut v: Vec<(usize, usize)> = blocks
        .iter()
        .map(|&(p, n)| (p as usize, p as usize + n.max(1)))
        .collect();
    v.sort_unstable();
    for w in v.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "{what}: [{:#x}, {:#x}) overlaps [{:#x}, {:#x})",
            w[0].0,
            w[0].1,
            w[1].0,
            w[1].1
        );
    }
}

#[test]
fn zero_size_layouts_are_distinct_aligned_and_non_null() {
    let mut live: Vec<(*mut u8, Layout)> = Vec::new();
    for align_log in 0..=12 {
        for i in 0..48 {
            let l = layout(0, 1 << align_log);
            live.push((alloc_checked(l, i % 3 == 0), l));
            if i % 8 == 0 {
                // Interleave real one-byte blocks: a zero-size pointer must not alias them either.
                let l1 = layout(1, 1 << align_log);
                let p = alloc_checked(l1, false);
                unsafe { p.write(0x5A) };
                live.push((p, l1));
            }
        }
    }
    let mut seen = HashSet::new();
    for &(p, l) in &live {
        assert!(
            seen.insert(p as usize),
            "pointer {p:p} ({l:?}) handed out twice while live"
        );
    }
    // Free half, allocate again: still distinct from everything live.
    let (keep, free): (Vec<_>, Vec<_>) =
        live.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, (p, l)) in free {
        unsafe { HeapKeep.dealloc(p, l) };
    }
    let mut live: Vec<(*mut u8, Layout)> = keep.into_iter().map(|(_, b)| b).collect();
    let mut seen: HashSet<usize> = live.iter().map(|&(p, _)| p as usize).collect();
    for _ in 0..200 {
        let l = layout(0, 8);
        let p = alloc_checked(l, false);
        assert!(
            seen.insert(p as usize),
            "zero-size alloc returned live pointer {p:p}"
        );
        live.push((p, l));
    }
    for (p, l) in live {
        if l.size() == 1 {
            assert_eq!(unsafe { p.read() }, 0x5A, "one-byte block {p:p} clobbered");
        }
        unsafe { HeapKeep.dealloc(p, l) };
    }
    invariants("after zero-size allocations");
}

#[test]
fn realloc_from_zero_size_block() {
    for align in [1, 8, 64, 4096] {
        let pat = Pattern::new(align as u32);
        let (mut p, mut old) = (alloc_checked(layout(0, align), false), 0);
        for new in [10, 5000, 3, 70_000] {
            let q = unsafe { HeapKeep.realloc(p, layout(old, align), new) };
            let what = format!("realloc({old} -> {new}, align {align})");
            assert!(!q.is_null(), "{what} returned null");
            assert_eq!(q as usize % align, 0, "{what} = {q:p} is misaligned");
            check_usable(q, new);
            check_pattern(&pat, q, old.min(new), &what);
            unsafe { pat.fill(q, new) };
            (p, old) = (q, new);
        }
        unsafe { HeapKeep.dealloc(p, layout(old, align)) };
    }
    invariants("after realloc from zero-size");
}

/// Valid `Layout`s that no allocator can satisfy on a 64-bit machine.
fn impossible_layouts() -> Vec<Layout> {
    let max = isize::MAX as usize;
    let mut v = Vec::new();
    for align_log in [0, 3, 4, 6, 12, 16, 21, 26, 30, 40] {
        let align = 1usize << align_log;
        let largest = max - (align - 1); // largest size Layout accepts for this alignment
        for size in [
            largest,
            largest - 10,
            max - 10,
            max / 2 + 1,
            1 << 62,
            (1 << 62) + 12_345,
            1 << 61,
        ] {
            if let Ok(l) = Layout::from_size_align(size, align) {
                v.push(l);
            }
        }
    }
    assert!(v.contains(&Layout::from_size_align(max - 10, 8).unwrap()));
    v
}

#[test]
fn impossible_layouts_return_null() {
    for l in impossible_layouts() {
        let p = unsafe { HeapKeep.alloc(l) };
        assert!(p.is_null(), "alloc({l:?}) returned {p:p}, expected null");
        let p = unsafe { HeapKeep.alloc_zeroed(l) };
        assert!(
            p.is_null(),
            "alloc_zeroed({l:?}) returned {p:p}, expected null"
        );
    }
    // The heap still works afterwards.
    let l = layout(100, 16);
    let p = alloc_checked(l, true);
    unsafe { HeapKeep.dealloc(p, l) };
    invariants("after impossible layouts");
}

#[test]
fn huge_alignment_small_size_is_aligned_or_null() {
    for align_log in [27, 28, 30, 33, 36, 40, 44, 47, 50, 55, 62] {
        for size in [1usize, 64, 4096] {
            let l = layout(size, 1 << align_log);
            for zeroed in [false, true] {
                let p = unsafe {
                    if zeroed {
                        HeapKeep.alloc_zeroed(l)
                    } else {
                        HeapKeep.alloc(l)
                    }
                };
                if p.is_null() {
                    continue;
                }
                assert_eq!(
                    p as usize % l.align(),
                    0,
                    "alloc({l:?}) = {p:p} is misaligned"
                );
                check_usable(p, size);
                unsafe {
                    if zeroed {
                        assert_eq!(
                            check_zero(p, size),
                            Ok(()),
                            "alloc_zeroed({l:?}) not zeroed"
                        );
                    }
                    p.write(0xC3);
                    p.add(size - 1).write(0x3C);
                    assert_eq!(
                        (p.read(), p.add(size - 1).read()),
                        if size == 1 {
                            (0x3C, 0x3C)
                        } else {
                            (0xC3, 0x3C)
                        }
                    );
                    HeapKeep.dealloc(p, l);
                }
            }
        }
    }
    invariants("after huge alignments");
}

#[test]
fn realloc_to_impossible_size_returns_null_and_keeps_block() {
    let max = isize::MAX as usize;
    for (i, (size, align)) in [
        (64, 8),
        (1, 1),
        (5000, 16),
        (300_000, 4096),
        (5 * MIB, 64),
        (3 * MIB, 2 * MIB),
    ]
    .into_iter()
    .enumerate()
    {
        let l = layout(size, align);
        let p = alloc_checked(l, false);
        let pat = Pattern::new(1000 + i as u32);
        unsafe { pat.fill(p, size) };
        // new_size rounded up to `align` must not exceed isize::MAX (GlobalAlloc contract).
        let largest = max + 1 - align;
        let mut targets = vec![largest, largest - align, 1 << 62, max / 2 + 1];
        if align <= 8 {
            targets.push(max - 10);
        }
        for new_size in targets {
            let q = unsafe { HeapKeep.realloc(p, l, new_size) };
            assert!(
                q.is_null(),
                "realloc({l:?} -> {new_size}) returned {q:p}, expected null"
            );
            check_pattern(
                &pat,
                p,
                size,
                &format!("old block after failed realloc to {new_size}"),
            );
            check_usable(p, size);
        }
        // The old block is still a normal, live block: it can grow and be freed.
        let q = unsafe { HeapKeep.realloc(p, l, size * 2) };
        assert!(
            !q.is_null() && (q as usize).is_multiple_of(align),
            "realloc after failure: {q:p}"
        );
        check_pattern(&pat, q, size, "block grown after a failed realloc");
        unsafe { HeapKeep.dealloc(q, layout(size * 2, align)) };
    }
    invariants("after failed reallocs");
}

#[test]
fn every_alignment_up_to_64_mib() {
    for align_log in 0..=26u32 {
        let align = 1usize << align_log;
        let sizes = [
            0,
            1,
            7,
            100,
            4095,
            4097,
            100_000,
            3 * MIB + 5,
            align.min(4 * MIB),
            align.min(MIB) + 1,
        ];
        let mut live = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let l = layout(size, align);
            let zeroed = i % 2 == 1;
            let p = alloc_checked(l, zeroed);
            if zeroed {
                if let Err(off) = unsafe { check_zero(p, size) } {
                    panic!("alloc_zeroed({l:?}) = {p:p}: byte {off} not zero");
                }
            }
            live.push((p, l, Pattern::new(align_log * 100 + i as u32)));
        }
        assert_disjoint(
            &live
                .iter()
                .map(|&(p, l, _)| (p, l.size()))
                .collect::<Vec<_>>(),
            "same alignment",
        );
        for (p, l, pat) in &live {
            unsafe { pat.fill(*p, l.size()) };
        }
        for (p, l, pat) in &live {
            check_pattern(pat, *p, l.size(), &format!("{l:?}"));
        }
        for (p, l, _) in live {
            unsafe { HeapKeep.dealloc(p, l) };
        }
    }
    invariants("after every alignment");
}

#[test]
fn realloc_preserves_contents_across_size_classes() {
    let ladder = [
        1,
        8,
        9,
        16,
        24,
        100,
        512,
        1000,
        4096,
        4097,
        10_000,
        65_536,
        65_537,
        300_000,
        MIB,
        5 * MIB,
        33 * MIB,
        2 * MIB,
        50_000,
        700,
        3,
        1,
        40 * MIB,
        17,
    ];
    let mut seed = 0u32;
    for align in [1, 8, 16, 64, 4096, 64 * KIB, 2 * MIB] {
        let mut neighbours = Vec::new();
        let mut size = ladder[0];
        let mut p = alloc_checked(layout(size, align), false);
        let mut pat = Pattern::new(seed);
        unsafe { pat.fill(p, size) };
        for &new in &ladder[1..] {
            let q = unsafe { HeapKeep.realloc(p, layout(size, align), new) };
            let what = format!("realloc({size} -> {new}, align {align})");
            assert!(!q.is_null(), "{what} returned null");
            assert_eq!(q as usize % align, 0, "{what} = {q:p} is misaligned");
            check_usable(q, new);
            check_pattern(&pat, q, size.min(new), &what);
            seed += 1;
            pat = Pattern::new(seed);
            unsafe { pat.fill(q, new) };
            (p, size) = (q, new);
            // Neighbours allocated around the moving block must be left alone.
            let nl = layout(48, 16);
            let n = alloc_checked(nl, false);
            let npat = Pattern::new(seed + 50_000);
            unsafe { npat.fill(n, 48) };
            neighbours.push((n, npat));
        }
        check_pattern(&pat, p, size, "final block");
        unsafe { HeapKeep.dealloc(p, layout(size, align)) };
        for (n, npat) in neighbours {
            check_pattern(&npat, n, 48, "neighbour of a realloc'd block");
            unsafe { HeapKeep.dealloc(n, layout(48, 16)) };
        }
    }
    invariants("after realloc ladder");
}

#[test]
fn realloc_one_byte_at_a_time() {
    const TOP: usize = 20_000;
    let pat = Pattern::new(77);
    for align in [1, 16, 256] {
        let mut p = alloc_checked(layout(1, align), false);
        unsafe { p.write(pat.byte(0)) };
        for size in 1..TOP {
            p = unsafe { HeapKeep.realloc(p, layout(size, align), size + 1) };
            assert!(
                !p.is_null() && (p as usize).is_multiple_of(align),
                "realloc({size} -> {})",
                size + 1
            );
            unsafe {
                assert_eq!(
                    *p.add(size - 1),
                    pat.byte(size - 1),
                    "growing {size} -> {}: last byte lost",
                    size + 1
                );
                p.add(size).write(pat.byte(size));
            }
            if size % 997 == 0 {
                check_pattern(&pat, p, size + 1, "growing by one byte");
            }
        }
        for size in (2..=TOP).rev() {
            p = unsafe { HeapKeep.realloc(p, layout(size, align), size - 1) };
            assert!(
                !p.is_null() && (p as usize).is_multiple_of(align),
                "realloc({size} -> {})",
                size - 1
            );
            unsafe {
                assert_eq!(
                    *p.add(size - 2),
                    pat.byte(size - 2),
                    "shrinking {size} -> {}",
                    size - 1
                )
            };
            if size % 991 == 0 {
                check_pattern(&pat, p, size - 1, "shrinking by one byte");
            }
        }
        unsafe { HeapKeep.dealloc(p, layout(1, align)) };
    }
    invariants("after one-byte reallocs");
}

#[test]
fn alloc_zeroed_after_reuse_of_dirty_memory() {
    for align in [1, 16, 64, 4096] {
        for size in [
            1,
            8,
            16,
            48,
            100,
            512,
            4096,
            10_000,
            65_536,
            300_000,
            2 * MIB,
            9 * MIB,
        ] {
            let count = (16 * MIB / size).clamp(2, 64);
            let l = layout(size, align);
            let dirty: Vec<*mut u8> = (0..count).map(|_| alloc_checked(l, false)).collect();
            for &p in &dirty {
                unsafe { p.write_bytes(0xA5, size) };
            }
            for p in dirty {
                unsafe { HeapKeep.dealloc(p, l) };
            }
            let clean: Vec<*mut u8> = (0..count).map(|_| alloc_checked(l, true)).collect();
            for &p in &clean {
                if let Err(off) = unsafe { check_zero(p, size) } {
                    panic!(
                        "alloc_zeroed({l:?}) = {p:p} after reuse: byte {off} = {:#04x}",
                        unsafe { *p.add(off) }
                    );
                }
                unsafe { p.write_bytes(0x5A, size) }; // dirty again for the next round
            }
            for p in clean {
                unsafe { HeapKeep.dealloc(p, l) };
            }
        }
    }
    invariants("after alloc_zeroed reuse");
}

#[test]
fn usable_size_covers_request_and_is_writable() {
    let mut sizes: Vec<(usize, usize)> = (1..=2048).map(|s| (s, 1)).collect();
    for s in [
        4095,
        4096,
        4097,
        8191,
        65_535,
        65_536,
        65_537,
        262_145,
        MIB - 1,
        MIB + 1,
        3 * MIB + 7,
        17 * MIB + 1,
    ] {
        for align in [1, 16, 128, 4096, 64 * KIB] {
            sizes.push((s, align));
        }
    }
    let mut live = Vec::new();
    for (i, &(size, align)) in sizes.iter().enumerate() {
        let l = layout(size, align);
        let p = alloc_checked(l, false);
        // Every usable byte belongs to this block alone, so fill all of them.
        let len = unsafe { usable_size(p) };
        let pat = Pattern::new(i as u32);
        unsafe { pat.fill(p, len) };
        live.push((p, l, len, pat));
    }
    assert_disjoint(
        &live
            .iter()
            .map(|&(p, _, len, _)| (p, len))
            .collect::<Vec<_>>(),
        "usable ranges",
    );
    for (p, l, len, pat) in live {
        check_pattern(&pat, p, len, &format!("usable bytes of {l:?}"));
        unsafe { HeapKeep.dealloc(p, l) };
    }
    invariants("after usable_size checks");
}
