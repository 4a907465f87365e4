//! The `no_std` library's `#[global_allocator]` (heapkeep's `LockedRegionHeap` over a static
//! region) serves this whole std test binary, the test harness's own allocations included:
//! blocks lie in the static region, the heap's statistics follow a big `Vec`, and a request
//! larger than the region is a null pointer, not an abort.
//!
//! One test on purpose: the byte counts are those of the whole process's heap, so no other test
//! may allocate between two readings. The harness's main thread does allocate once more just
//! after starting the test (it records the running test), then only waits for it: a check of
//! exact counts that overlapped that is run again (`exact_round`), up to `ROUNDS` times.

use heapkeep_nostd_global::{exercise, init, region, HEAP, REGION_BYTES};
use std::alloc::Layout;

const MIB: usize = 1 << 20;
const ROUNDS: usize = 5;

fn free_bytes() -> usize {
    HEAP.heap().lock().free_bytes()
}

/// Runs `round` until it returns `Ok` (its exact counts held), at most `ROUNDS` times; panics
/// with the last round's error.
#[track_caller]
fn exact_round(what: &str, mut round: impl FnMut() -> Result<(), String>) {
    let mut last = String::new();
    for _ in 0..ROUNDS {
        match round() {
            Ok(()) => return,
            Err(e) => last = e,
        }
    }
    panic!("{what}: not exact in {ROUNDS} rounds; the last: {last}");
}

#[test]
fn the_static_region_is_the_heap_of_the_whole_test_binary() {
    let range = region();
    assert_eq!(range.len(), REGION_BYTES);
    // The harness allocated long before this test ran (its arguments, the test list, this
    // thread): the first of those allocations handed the region to the heap.
    let (capacity, used) = {
        let heap = HEAP.heap().lock();
        (heap.capacity(), heap.used_bytes())
    };
    assert!(
        capacity > REGION_BYTES - 8 * 1024,
        "capacity {capacity} of {REGION_BYTES}"
    );
    assert!(used > 0, "the harness's blocks are on the region heap");
    assert_eq!(init(), 0, "the region is handed over once only");

    // Blocks of this test lie in the region.
    let boxed = Box::new(0x1234_5678_u64);
    let numbers: Vec<u32> = (0..10_000).collect();
    let text = "region".repeat(1000);
    for (what, at, len) in [
        ("Box", &*boxed as *const u64 as usize, 8),
        ("Vec", numbers.as_ptr() as usize, numbers.len() * 4),
        ("String", text.as_ptr() as usize, text.len()),
    ] {
        assert!(
            range.contains(&at) && at + len <= range.end,
            "{what} at {at:#x}+{len} is outside the region {range:#x?}"
        );
    }
    drop((boxed, numbers, text));

    // The free bytes fall by at least a big Vec's size while it lives, and come back exactly
    // when it is freed.
    exact_round("an 8 MiB Vec", || {
        let before = free_bytes();
        let big = vec![7u64; MIB];
        let during = free_bytes();
        assert!(range.contains(&(big.as_ptr() as usize)));
        assert!(
            during + 8 * MIB <= before,
            "free bytes {before} -> {during} with an 8 MiB Vec alive"
        );
        assert_eq!(big.iter().sum::<u64>(), 7 * MIB as u64);
        drop(big);
        let after = free_bytes();
        (after == before).then_some(()).ok_or(format!(
            "free bytes {before} before the Vec, {after} after it"
        ))
    });

    // Larger than the region (or aligned beyond any address in it): a null pointer, which
    // `std::alloc::alloc` returns as is (no `handle_alloc_error`, no abort).
    exact_round("refusals", || {
        let before = free_bytes();
        for (size, align) in [
            (REGION_BYTES + 1, 8),
            (2 * REGION_BYTES, 4096),
            (usize::MAX / 4, 16),
            (1, 1 << 40),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            assert!(p.is_null(), "{layout:?} gave {p:?}");
        }
        let after = free_bytes();
        (after == before).then_some(()).ok_or(format!(
            "a refusal changed the free bytes: {before} -> {after}"
        ))
    });

    // The library's own workout: Vec, String and Box growth and frees, all given back.
    let n = 20_000;
    let text_len: usize = (0..n).map(|i| i.to_string().len() + 1).sum();
    exact_round("the library's workout", || {
        let e = exercise(n);
        assert_eq!(e.sum, u64::from(n) * u64::from(n - 1) / 2);
        assert_eq!(e.text_len, text_len);
        assert_eq!(e.even_sum, (0..1000u64).step_by(2).sum::<u64>());
        assert!(
            e.used_peak >= e.used_before + n as usize * 8 + text_len,
            "{e:?}"
        );
        (e.used_after == e.used_before)
            .then_some(())
            .ok_or(format!("{e:?}"))
    });

    // The whole process's heap passes the invariant walk (the lock is released before any
    // panic message is formatted: that allocates).
    let walk = HEAP.heap().lock().check();
    assert_eq!(walk, Ok(()));
}
