//! Unit tests of the heap's internals: pages and free lists, segments and
//! spans, remote frees, thread exit, with the invariant walk after each step.

use core::alloc::{GlobalAlloc, Layout};
use std::vec::Vec;

use crate::heap::LARGE_MAX;
use crate::page::{self, Block, Page, LARGE_CLASS, OWNER_FULL, OWNER_HUGE};
use crate::segment::{page_of, segment_of, SEGMENT_SIZE, SLICE_SIZE};
use crate::size_class::{class_to_size, size_to_class};
use crate::{check_invariants, thread, HeapKeep};

fn lay(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

fn page_at(p: *mut u8) -> &'static Page {
    // SAFETY: tests pass live blocks.
    unsafe { &*page_of(segment_of(p), p) }
}

#[test]
fn encoded_links_round_trip_and_hide_the_pointer() {
    let key = 0x1234_5678_9abc_def1usize;
    let slot = 0x7000_0000_1000usize as *mut Block;
    let next = 0x7000_0000_2000usize as *mut Block;
    let stored = page::encode(next, slot, key);
    assert_ne!(stored, next as usize);
    assert_eq!(page::decode(stored, slot, key), next);
    // the same stored word at another slot decodes elsewhere
    let other = (slot as usize + 16) as *mut Block;
    assert_ne!(page::decode(stored, other, key), next);
}

#[test]
fn small_blocks_come_from_one_page_of_their_class() {
    let l = lay(40, 8);
    let mut ps = Vec::new();
    for _ in 0..100 {
        // SAFETY: non-zero layout.
        let p = unsafe { HeapKeep.alloc(l) };
        assert!(!p.is_null());
        ps.push(p);
    }
    let pg = page_at(ps[0]);
    assert_eq!(pg.block_size, class_to_size(size_to_class(40)));
    assert_eq!(
        pg.owner.load(core::sync::atomic::Ordering::Relaxed),
        thread::current() as usize
    );
    for w in ps.windows(2) {
        assert!(!core::ptr::eq(w[1], w[0]));
    }
    check_invariants().unwrap();
    for p in ps {
        // SAFETY: allocated above with `l`.
        unsafe { HeapKeep.dealloc(p, l) };
    }
    check_invariants().unwrap();
}

#[test]
fn freed_blocks_are_reused_after_the_free_list_runs_dry() {
    let l = lay(24, 8);
    // SAFETY: plain allocations and frees of blocks we own.
    unsafe {
        let a = HeapKeep.alloc(l);
        let pg = page_at(a);
        let used = pg.used;
        HeapKeep.dealloc(a, l);
        assert_eq!(page_at(a).used, used - 1);
        let mut seen = false;
        let mut held = Vec::new();
        for _ in 0..(pg.reserved as usize + 10) {
            let b = HeapKeep.alloc(l);
            if b == a {
                seen = true;
            }
            held.push(b);
        }
        assert!(seen, "a freed block was never handed out again");
        check_invariants().unwrap();
        for b in held {
            HeapKeep.dealloc(b, l);
        }
    }
    check_invariants().unwrap();
}

#[test]
fn full_pages_leave_the_queue_and_come_back() {
    let l = lay(4096, 8);
    // SAFETY: blocks we own.
    unsafe {
        let mut ps = Vec::new();
        for _ in 0..64 {
            ps.push(HeapKeep.alloc(l));
        }
        let first = page_at(ps[0]);
        let owner = first.owner.load(core::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            owner & OWNER_FULL,
            OWNER_FULL,
            "first page should be full and out of the queue"
        );
        check_invariants().unwrap();
        HeapKeep.dealloc(ps[0], l);
        let owner = first.owner.load(core::sync::atomic::Ordering::Relaxed);
        assert_eq!(owner & OWNER_FULL, 0);
        check_invariants().unwrap();
        for p in &ps[1..] {
            HeapKeep.dealloc(*p, l);
        }
    }
    check_invariants().unwrap();
}

#[test]
fn large_blocks_are_spans_and_resize_in_place() {
    // SAFETY: blocks we own, sizes within bounds.
    unsafe {
        let l = lay(300 * 1024, 8);
        let p = HeapKeep.alloc(l);
        assert!(!p.is_null());
        let pg = page_at(p);
        assert_eq!(pg.class, LARGE_CLASS);
        assert_eq!(pg.block_size, 320 * 1024);
        p.write_bytes(0xab, l.size());
        check_invariants().unwrap();
        // grow within the segment: the next slices are free
        let q = HeapKeep.realloc(p, l, 900 * 1024);
        assert_eq!(
            q, p,
            "large realloc should grow in place when the neighbours are free"
        );
        assert!(crate::usable_size(q) >= 900 * 1024);
        assert_eq!(*q.add(300 * 1024 - 1), 0xab);
        check_invariants().unwrap();
        let r = HeapKeep.realloc(q, lay(900 * 1024, 8), 200 * 1024);
        assert_eq!(r, q);
        assert_eq!(crate::usable_size(r), 256 * 1024);
        check_invariants().unwrap();
        HeapKeep.dealloc(r, lay(200 * 1024, 8));
    }
    check_invariants().unwrap();
}

#[test]
fn huge_blocks_have_their_own_segment_and_remap() {
    // SAFETY: blocks we own.
    unsafe {
        let l = lay(LARGE_MAX + 1, 8);
        let p = HeapKeep.alloc(l);
        assert!(!p.is_null());
        assert_eq!(
            page_at(p).owner.load(core::sync::atomic::Ordering::Relaxed),
            OWNER_HUGE
        );
        *p = 7;
        *p.add(l.size() - 1) = 9;
        let q = HeapKeep.realloc(p, l, 64 << 20);
        assert!(!q.is_null());
        assert_eq!((*q, *q.add(l.size() - 1)), (7, 9));
        assert_eq!(segment_of(q) as usize % SEGMENT_SIZE, 0);
        *q.add((64 << 20) - 1) = 1;
        HeapKeep.dealloc(q, lay(64 << 20, 8));
    }
}

#[test]
fn zeroed_memory_is_zero_after_reuse() {
    // SAFETY: blocks we own.
    unsafe {
        for size in [8usize, 100, 5000, 70_000, 500_000, 3 << 20] {
            let l = lay(size, 8);
            let p = HeapKeep.alloc(l);
            p.write_bytes(0xff, size);
            HeapKeep.dealloc(p, l);
            let z = HeapKeep.alloc_zeroed(l);
            assert!(
                (0..size)
                    .step_by(61)
                    .chain([size - 1])
                    .all(|i| *z.add(i) == 0),
                "size {size}"
            );
            HeapKeep.dealloc(z, l);
        }
    }
    check_invariants().unwrap();
}

#[test]
fn alignments_up_to_huge() {
    let mut align = 1usize;
    while align <= 64 << 20 {
        for size in [0usize, 1, 48, 4000, 100_000, 3 << 20] {
            let l = lay(size, align);
            // SAFETY: blocks we own.
            unsafe {
                let p = HeapKeep.alloc(l);
                assert!(!p.is_null(), "size {size} align {align}");
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                assert!(crate::usable_size(p) >= size);
                if size > 0 {
                    *p.add(size - 1) = 1;
                }
                HeapKeep.dealloc(p, l);
            }
        }
        align *= 2;
    }
    check_invariants().unwrap();
}

#[test]
fn impossible_sizes_return_null() {
    // SAFETY: requests that must fail cleanly.
    unsafe {
        let l = lay(isize::MAX as usize - 4096, 8);
        assert!(HeapKeep.alloc(l).is_null());
        let l = lay(1 << 62, 4096);
        assert!(HeapKeep.alloc(l).is_null());
        let p = HeapKeep.alloc(lay(16, 8));
        assert!(HeapKeep
            .realloc(p, lay(16, 8), isize::MAX as usize - 8)
            .is_null());
        HeapKeep.dealloc(p, lay(16, 8));
    }
}

#[test]
fn remote_frees_reach_the_owner() {
    let l = lay(64, 8);
    let ptrs: Vec<usize> = (0..1000)
        // SAFETY: non-zero layout.
        .map(|_| unsafe { HeapKeep.alloc(l) } as usize)
        .collect();
    std::thread::spawn(move || {
        for p in ptrs {
            // SAFETY: blocks allocated by the main test thread, freed here once.
            unsafe { HeapKeep.dealloc(p as *mut u8, l) };
        }
    })
    .join()
    .unwrap();
    // The owner drains its inbox in its slow path: allocate until it does.
    let mut held = Vec::new();
    for _ in 0..5000 {
        // SAFETY: non-zero layout.
        held.push(unsafe { HeapKeep.alloc(l) });
    }
    check_invariants().unwrap();
    for p in held {
        // SAFETY: ours.
        unsafe { HeapKeep.dealloc(p, l) };
    }
    check_invariants().unwrap();
}

#[test]
fn exited_threads_heaps_are_retired_clean_and_adopted() {
    for _ in 0..20 {
        std::thread::spawn(|| {
            let v: Vec<Vec<u8>> = (0..200).map(|i| std::vec![i as u8; i * 10]).collect();
            assert_eq!(v[199][0], 199);
        })
        .join()
        .unwrap();
    }
    check_invariants().unwrap();
}

#[test]
fn slice_size_is_what_the_docs_say() {
    assert_eq!(SLICE_SIZE, 64 * 1024);
    assert_eq!(SEGMENT_SIZE, 4 << 20);
}

#[test]
fn remote_frees_of_mixed_batches_keep_the_invariants() {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, usize)>>(1);
    let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let freer = std::thread::spawn(move || {
        for batch in rx {
            for (p, size) in batch {
                // SAFETY: blocks allocated by the test thread with this layout.
                unsafe { HeapKeep.dealloc(p as *mut u8, lay(size, 1)) };
            }
            ack_tx.send(()).unwrap();
        }
    });
    let mut seed = 12345u64;
    for round in 0..60 {
        let batch: Vec<(usize, usize)> = (0..2000)
            .map(|i| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let size = if i % 50 == 0 {
                    4096 + (seed as usize % 60_000)
                } else {
                    16 + (seed as usize % 1000)
                };
                // SAFETY: non-zero layout.
                (unsafe { HeapKeep.alloc(lay(size, 1)) } as usize, size)
            })
            .collect();
        tx.send(batch).unwrap();
        ack_rx.recv().unwrap();
        if let Err(e) = check_invariants() {
            panic!("round {round}: {e}");
        }
    }
    drop(tx);
    freer.join().unwrap();
}

/// A heap overflow that overwrites the link of the next free block must be
/// detected (abort with a message), never followed. Runs itself as a child
/// process, since the expected outcome is an abort.
#[test]
fn corrupted_free_list_is_detected_not_followed() {
    const CHILD: &str = "HEAPKEEP_TEST_CORRUPT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let l = lay(720, 8);
        // SAFETY: deliberately not: we overflow block 0 into block 1's link
        // word, exactly what a buggy program would do.
        unsafe {
            let a = HeapKeep.alloc(l);
            let stride = page_at(a).block_size;
            (a.add(stride) as *mut u64).write_unaligned(0x4141_4141_4141_4141);
            let b = HeapKeep.alloc(l);
            let c = HeapKeep.alloc(l);
            std::println!("not detected: {b:p} {c:p}");
        }
        std::process::exit(0);
    }
    let out = run_child(
        "tests_internal::corrupted_free_list_is_detected_not_followed",
        CHILD,
    );
    let stderr = std::string::String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "child status {:?}, stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("heapkeep: fatal: corrupted free list"),
        "stderr: {stderr}"
    );
}

/// When the OS refuses memory, allocation returns null (no abort, no panic)
/// and the heap keeps working. Runs as a child process whose address space is
/// capped with `RLIMIT_AS`.
#[test]
fn out_of_memory_returns_null_and_the_heap_survives() {
    const CHILD: &str = "HEAPKEEP_TEST_OOM_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let cap = vm_kib * 1024 + (256 << 20);
        let lim = libc::rlimit {
            rlim_cur: cap,
            rlim_max: cap,
        };
        // SAFETY: plain system call on our own process.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
        let mut held = Vec::with_capacity(4096);
        let mut failed = [false; 3];
        for (k, size) in [1usize << 30, 1 << 20, 100].into_iter().enumerate() {
            for _ in 0..4096 {
                // SAFETY: non-zero layout.
                let p = unsafe { HeapKeep.alloc(lay(size, 8)) };
                if p.is_null() {
                    failed[k] = true;
                    break;
                }
                // SAFETY: `p` holds `size` bytes.
                unsafe { p.write_bytes(1, size.min(4096)) };
                held.push((p, size));
            }
        }
        assert!(
            failed[0] && failed[1],
            "allocations never failed under the cap: {failed:?}"
        );
        for (p, size) in held.drain(..) {
            // SAFETY: ours.
            unsafe { HeapKeep.dealloc(p, lay(size, 8)) };
        }
        // The heap still works after running out.
        for _ in 0..1000 {
            // SAFETY: non-zero layout; freed right away.
            unsafe {
                let p = HeapKeep.alloc(lay(64 << 10, 8));
                assert!(!p.is_null(), "heap unusable after out-of-memory");
                HeapKeep.dealloc(p, lay(64 << 10, 8));
            }
        }
        check_invariants().unwrap();
        std::process::exit(0);
    }
    let out = run_child(
        "tests_internal::out_of_memory_returns_null_and_the_heap_survives",
        CHILD,
    );
    assert!(
        out.status.success(),
        "child {:?}: {}{}",
        out.status,
        std::string::String::from_utf8_lossy(&out.stdout),
        std::string::String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the named test of this binary in a child process with `var` set and
/// asserts that it succeeds: for tests that need a pristine heap or expect
/// to end the process.
fn run_child(test: &str, var: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(var, "1")
        .output()
        .unwrap()
}

/// True in the child process; in the parent, runs the test `test` in a child
/// (with `var` set), asserts it passed, and returns false.
fn in_child(test: &str, var: &str) -> bool {
    if std::env::var_os(var).is_some() {
        return true;
    }
    let out = run_child(test, var);
    assert!(
        out.status.success(),
        "child {:?}: {}",
        out.status,
        std::string::String::from_utf8_lossy(&out.stderr)
    );
    false
}

#[test]
fn fresh_pages_skip_clearing_until_a_block_comes_back() {
    // In a child process: a pristine heap whose first segment is fresh from
    // the OS (here, the test thread may adopt a used heap).
    if !in_child(
        "tests_internal::fresh_pages_skip_clearing_until_a_block_comes_back",
        "HEAPKEEP_TEST_FRESH_CHILD",
    ) {
        return;
    }
    let l = lay(2900, 8);
    // SAFETY: blocks we own.
    unsafe {
        let a = HeapKeep.alloc_zeroed(l);
        let page = page_at(a);
        assert!(page.fresh, "a page over a clean span should start fresh");
        assert!((0..2900).all(|i| *a.add(i) == 0));
        a.write_bytes(0xee, 2900);
        HeapKeep.dealloc(a, l);
        // Allocate until the freed (dirty) block comes back: it must be zeroed.
        let mut held = std::vec::Vec::new();
        loop {
            let b = HeapKeep.alloc_zeroed(l);
            assert!((0..2900).all(|i| *b.add(i) == 0), "zeroed block not zero");
            held.push(b);
            if b == a {
                break;
            }
        }
        assert!(
            !page_at(a).fresh,
            "a page whose free list got a used block is not fresh"
        );
        for b in held {
            HeapKeep.dealloc(b, l);
        }
    }
    check_invariants().unwrap();
}

#[test]
fn zeroed_huge_block_grown_from_a_dirty_cached_one_is_zero() {
    // SAFETY: blocks we own.
    unsafe {
        for (small, big) in [(3usize << 20, 8usize << 20), (5 << 20, 6 << 20)] {
            let l = lay(small, 8);
            let p = HeapKeep.alloc(l);
            p.write_bytes(0xcd, small);
            HeapKeep.dealloc(p, l);
            let lz = lay(big, 8);
            let z = HeapKeep.alloc_zeroed(lz);
            assert!(!z.is_null());
            let bad = (0..big)
                .step_by(4093)
                .chain([small - 1, small, big - 1])
                .find(|&i| *z.add(i) != 0);
            assert_eq!(
                bad, None,
                "alloc_zeroed({big}) after a dirty {small} block: non-zero byte"
            );
            HeapKeep.dealloc(z, lz);
        }
    }
}

/// `LIVE` is the sum of every heap's `flushed` figure (and the orphan's).
#[cfg(feature = "stats")]
fn assert_flushes_add_up() {
    use core::sync::atomic::Ordering::Relaxed;
    let mut sum = crate::counters::ORPHAN.flushed.load(Relaxed);
    thread::for_each_heap(|h| {
        // SAFETY: heaps are never freed.
        sum += unsafe { (*h).counters.flushed.load(Relaxed) };
    });
    assert_eq!(crate::counters::LIVE.load(Relaxed), sum);
}

#[cfg(feature = "stats")]
#[test]
fn stats_count_every_call_exactly() {
    // In a child process: no other test allocates from heapkeep meanwhile.
    if !in_child(
        "tests_internal::stats_count_every_call_exactly",
        "HEAPKEEP_TEST_STATS_CHILD",
    ) {
        return;
    }
    let s0 = crate::stats();
    let small = lay(100, 8);
    let stride = class_to_size(size_to_class(100)) as u64;
    let large = lay(300 << 10, 8);
    let huge = lay(5 << 20, 8);
    // SAFETY: blocks we own, freed once with their layouts.
    unsafe {
        let mut ps: Vec<*mut u8> = (0..1000).map(|_| HeapKeep.alloc(small)).collect();
        let l = HeapKeep.alloc(large);
        let h = HeapKeep.alloc_zeroed(huge);
        let s1 = crate::stats();
        assert_eq!(s1.allocs - s0.allocs, 1002);
        assert_eq!(s1.frees, s0.frees);
        let big = (crate::usable_size(l) + crate::usable_size(h)) as u64;
        assert_eq!(s1.live_bytes - s0.live_bytes, 1000 * stride + big);
        assert_eq!(s1.live_blocks - s0.live_blocks, 1002);
        assert_eq!(
            s1.bytes_requested - s0.bytes_requested,
            100_000 + (300 << 10) + (5 << 20)
        );
        assert_eq!(s1.peak_live_bytes, s1.live_bytes, "a new high is the peak");
        assert_flushes_add_up();

        // realloc: small in place, small moved, huge grown (mremap).
        ps[0] = HeapKeep.realloc(ps[0], small, 90);
        ps[1] = HeapKeep.realloc(ps[1], small, 5000);
        let h2 = HeapKeep.realloc(h, huge, 9 << 20);
        let s2 = crate::stats();
        assert_eq!(s2.reallocs - s1.reallocs, 3);
        assert_eq!(s2.allocs, s1.allocs);
        assert_eq!(s2.frees, s1.frees);
        assert_eq!(s2.live_blocks, s1.live_blocks);
        // `h` is gone; its usable size was the part of `big` that `l` is not.
        let live2 = s1.live_bytes - stride + crate::usable_size(ps[1]) as u64
            - (big - crate::usable_size(l) as u64)
            + crate::usable_size(h2) as u64;
        assert_eq!(s2.live_bytes, live2);

        // Frees: half here, half from a thread that never allocates (no heap).
        let keep: Vec<usize> = ps.split_off(500).into_iter().map(|p| p as usize).collect();
        for (i, p) in ps.into_iter().enumerate() {
            let lay_i = if i == 1 {
                lay(5000, 8)
            } else if i == 0 {
                lay(90, 8)
            } else {
                small
            };
            HeapKeep.dealloc(p, lay_i);
        }
        std::thread::spawn(move || {
            for p in keep {
                HeapKeep.dealloc(p as *mut u8, small);
            }
        })
        .join()
        .unwrap();
        HeapKeep.dealloc(l, large);
        HeapKeep.dealloc(h2, lay(9 << 20, 8));
        let s3 = crate::stats();
        assert_eq!(s3.frees - s0.frees, 1002);
        assert_eq!(s3.allocs - s0.allocs, 1002);
        assert_eq!(s3.live_blocks, s0.live_blocks);
        assert_eq!(s3.live_bytes, s0.live_bytes);
        assert_eq!(
            s3.peak_live_bytes,
            s2.peak_live_bytes.max(s1.peak_live_bytes)
        );
        assert_flushes_add_up();
    }
}

/// Outside `measure`, a thread's slow paths keep only highs that could
/// raise the process peak: above `PEAK` less the other heaps' flushed
/// bytes (`counters.rs`, "The peak"). A climb of medium blocks to a new
/// process high, made while another (finished) thread's blocks are live,
/// must still give the exact peak; a floor that left out the other heap's
/// bytes would skip it.
#[cfg(feature = "stats")]
#[test]
fn a_new_process_high_is_kept_with_another_heaps_bytes_live() {
    if !in_child(
        "tests_internal::a_new_process_high_is_kept_with_another_heaps_bytes_live",
        "HEAPKEEP_TEST_PEAK_FLOOR_CHILD",
    ) {
        return;
    }
    const CLIMB: usize = 60;
    let medium = lay(3000, 8);
    let mut ps: Vec<*mut u8> = Vec::with_capacity(CLIMB);
    // This thread's heap first (the other's, retired, would be adopted).
    // SAFETY: a block we own, freed once with its layout.
    unsafe { HeapKeep.dealloc(HeapKeep.alloc(medium), medium) };
    // Another thread leaves 2.5 MiB live and ends: its heap's flushes put
    // it in `LIVE`, so it is part of the floor's "others".
    let kept: Vec<usize> = std::thread::spawn(|| {
        // SAFETY: blocks kept live to the end of the test, then freed.
        (0..40)
            .map(|_| unsafe { HeapKeep.alloc(lay(64 << 10, 8)) } as usize)
            .collect()
    })
    .join()
    .unwrap();
    // SAFETY: blocks we own, each freed once with its layout.
    unsafe {
        // 1.2 MB of allocations and frees, one block live at a time: full
        // upkeeps (one per 512 KiB) read the floor with that heap counted.
        for _ in 0..400 {
            let p = HeapKeep.alloc(medium);
            HeapKeep.dealloc(p, medium);
        }
        let s1 = crate::stats();
        for _ in 0..CLIMB {
            ps.push(HeapKeep.alloc(medium));
        }
        let climb = (CLIMB * crate::usable_size(ps[0])) as u64;
        for p in ps.drain(..) {
            HeapKeep.dealloc(p, medium);
        }
        let s2 = crate::stats();
        assert!(s1.live_bytes + climb > s1.peak_live_bytes, "{s1:?}");
        assert_eq!(s2.live_bytes, s1.live_bytes);
        assert_eq!(s2.peak_live_bytes, s1.live_bytes + climb, "{s1:?} {s2:?}");
        for p in kept {
            HeapKeep.dealloc(p as *mut u8, lay(64 << 10, 8));
        }
    }
}

/// The peak is not above the truth when a thread frees through the fast
/// path (every page's first free, from full, takes the slow path; the
/// rest do not, so they never flush) and another thread then climbs
/// (`counters.rs`, "The peak"). One thread holds 4 MiB of 64-byte blocks
/// and frees every other one, then the rest: first all of them (each page
/// given back checks the free mark, so `LIVE` catches up), then all but
/// one per page (no page given back: the climbing thread's flush takes
/// the fall off). Each time another thread then climbs 3.5 MiB; the true
/// peak stays the first thread's 4 MiB.
#[cfg(feature = "stats")]
#[test]
fn frees_through_the_fast_path_leave_no_stale_figure_for_the_peak() {
    use crate::counters::{FLUSH_BYTES, LIVE};
    if !in_child(
        "tests_internal::frees_through_the_fast_path_leave_no_stale_figure_for_the_peak",
        "HEAPKEEP_TEST_STALE_FLUSH_CHILD",
    ) {
        return;
    }
    let small = lay(64, 8);
    let s0 = crate::stats();
    let mut peak = 0;
    for keep_one_per_page in [false, true] {
        // SAFETY: blocks we own, each freed once with its layout.
        let kept: Vec<usize> = unsafe {
            let ps: Vec<usize> = (0..(4 << 20) / 64)
                .map(|_| HeapKeep.alloc(small) as usize)
                .collect();
            let s1 = crate::stats();
            assert_eq!(s1.live_bytes, s0.live_bytes + (4 << 20));
            peak = peak.max(s1.peak_live_bytes);
            for &p in ps.iter().skip(1).step_by(2) {
                HeapKeep.dealloc(p as *mut u8, small);
            }
            let mut keep = Vec::new();
            for &p in ps.iter().step_by(2) {
                let page: *const Page = page_at(p as *mut u8);
                if keep_one_per_page
                    && keep.last().map(|&k| page_at(k as *mut u8) as *const Page) != Some(page)
                {
                    keep.push(p);
                } else {
                    HeapKeep.dealloc(p as *mut u8, small);
                }
            }
            keep
        };
        // The 4 MiB spans at least 64 pages of 64 KiB: a block kept on each.
        assert!(!keep_one_per_page || kept.len() >= 64, "{}", kept.len());
        let live = s0.live_bytes as i64 + 64 * kept.len() as i64;
        if !keep_one_per_page {
            // Within a flush step and a page of the truth.
            let stale = LIVE.load(core::sync::atomic::Ordering::Relaxed) - live;
            assert!(stale <= FLUSH_BYTES + (64 << 10), "{stale}");
        }
        std::thread::spawn(move || {
            // SAFETY: as above.
            unsafe {
                let ps: Vec<usize> = (0..(7 << 19) / 64)
                    .map(|_| HeapKeep.alloc(small) as usize)
                    .collect();
                for p in ps {
                    HeapKeep.dealloc(p as *mut u8, small);
                }
            }
        })
        .join()
        .unwrap();
        let s2 = crate::stats();
        assert_eq!(s2.live_bytes as i64, live);
        // The climb tops out 512 KiB below the first thread's 4 MiB.
        assert_eq!(
            s2.peak_live_bytes, peak,
            "keep one per page: {keep_one_per_page} {s2:?}"
        );
        for p in kept {
            // SAFETY: as above.
            unsafe { HeapKeep.dealloc(p as *mut u8, small) };
        }
    }
}

#[test]
fn purge_delay_grows_when_purged_memory_comes_back_and_relaxes() {
    use crate::segment::{self, note_purged_reuse, purge_delay};
    // In a child process: the delay is process-wide state.
    if !in_child(
        "tests_internal::purge_delay_grows_when_purged_memory_comes_back_and_relaxes",
        "HEAPKEEP_TEST_PURGE_DELAY_CHILD",
    ) {
        return;
    }
    let base = purge_delay();
    assert_eq!(base, 10);
    // A large block, freed and purged, then the same size again: the span
    // it gets was purged moments ago.
    let l = lay(1 << 20, 8);
    // SAFETY: blocks we own; the calling thread runs `heap`.
    unsafe {
        let p = HeapKeep.alloc(l);
        p.write_bytes(1, 1 << 20);
        HeapKeep.dealloc(p, l);
        crate::heap::purge_all(thread::current());
        assert_eq!(purge_delay(), base, "a purge alone changes nothing");
        let q = HeapKeep.alloc(l);
        assert_eq!(purge_delay(), 2 * base, "purged memory reused at once");
        assert!((0..1 << 20).step_by(4096).all(|i| *q.add(i) == 0));
        HeapKeep.dealloc(q, l);
    }
    // Doubling stops at the cap; reuse long after the purge counts for nothing.
    let now = crate::os::now_ms();
    for _ in 0..20 {
        note_purged_reuse(now, now + 1);
    }
    let cap = purge_delay();
    assert!((500..=2000).contains(&cap), "cap {cap}");
    note_purged_reuse(now, now + 60_000);
    assert_eq!(purge_delay(), cap);
    // Quiet time halves it, one step per interval, down to the base.
    segment::decay(now + 500);
    assert_eq!(purge_delay(), cap, "too soon to relax");
    let mut t = now + 1 + 1000; // the last change was at `now + 1`
    let mut expect = cap;
    while expect > base {
        segment::decay(t);
        expect = (expect / 2).max(base);
        assert_eq!(purge_delay(), expect);
        t += 1000;
    }
    check_invariants().unwrap();
}

/// Check mode counts requested sizes, so its blocks can be 0 or 1 byte:
/// drains of a free word holding fewer than 8 bytes per block must neither
/// trip the wrap check nor lose counts (a debug assertion assumed usable
/// sizes and fired in check mode's CI run).
#[cfg(feature = "stats")]
#[test]
fn requested_size_counts_take_tiny_blocks() {
    let c = crate::counters::Counters::for_requested_sizes();
    c.private.store(true, core::sync::atomic::Ordering::Relaxed);
    let (mut bytes, mut n) = (0u64, 0u64);
    // Enough pairs to fill the packed words' halves many times over.
    for i in 0..300_000u64 {
        let size = (i % 3) as usize; // 0, 1 and 2 bytes
        c.count_alloc(size, size);
        c.count_free(size);
        bytes += size as u64;
        n += 1;
    }
    let t = c.totals();
    assert_eq!((t.allocs, t.frees), (n, n));
    assert_eq!(
        (t.bytes_out, t.bytes_in, t.requested),
        (bytes, bytes, bytes)
    );
    assert_eq!(t.net(), 0);
}

/// The packed counters (`counters.rs`) stay exact through many drains, a
/// long run of frees in random order, and a reader on another thread never
/// sees a drain half done.
#[cfg(feature = "stats")]
#[test]
fn packed_counts_stay_exact_and_whole() {
    if !in_child(
        "tests_internal::packed_counts_stay_exact_and_whole",
        "HEAPKEEP_TEST_PACKED_CHILD",
    ) {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;

    // Sizes from every path: fast (up to 1 KiB), medium, large.
    const N: usize = 200_000;
    let size_of = |i: usize| match i % 100 {
        0 => 3000 + i % 60_000,
        1 if i % 1000 == 1 => 200_000 + i,
        _ => 1 + (i * 7919) % 1024,
    };
    let mut ps: Vec<(usize, usize)> = Vec::with_capacity(N);
    let s0 = crate::stats();
    let (mut requested, mut usable) = (0u64, 0u64);
    // SAFETY: blocks we own, each freed once with its layout.
    unsafe {
        for i in 0..N {
            let size = size_of(i);
            let p = HeapKeep.alloc(lay(size, 8));
            assert!(!p.is_null());
            requested += size as u64;
            usable += crate::usable_size(p) as u64;
            ps.push((p as usize, size));
        }
    }
    // `ps` itself is one block (allocated before s0), so it is not counted.
    let s1 = crate::stats();
    assert_eq!(s1.allocs - s0.allocs, N as u64);
    assert_eq!(s1.bytes_requested - s0.bytes_requested, requested);
    assert_eq!(s1.bytes_allocated - s0.bytes_allocated, usable);
    assert_eq!(s1.live_bytes - s0.live_bytes, usable);
    assert_eq!(s1.live_blocks - s0.live_blocks, N as u64);
    assert!(s1.peak_live_bytes >= s1.live_bytes);

    // A reader on another thread while this one allocates and frees: the
    // totals only grow, and what is live stays within what this thread
    // can hold (a reading that saw a drain half done would break both).
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads) = (stop.clone(), reads.clone());
        std::thread::spawn(move || {
            let mut last = crate::stats();
            while !stop.load(Relaxed) {
                let s = crate::stats();
                assert!(s.allocs >= last.allocs, "{s:?} after {last:?}");
                assert!(s.frees >= last.frees, "{s:?} after {last:?}");
                assert!(s.bytes_allocated >= last.bytes_allocated);
                assert!(s.bytes_requested >= last.bytes_requested);
                assert!(s.live_blocks <= 2 * N as u64 + 1000, "{s:?}");
                last = s;
                reads.fetch_add(1, Relaxed);
            }
        })
    };
    // Free in a scrambled order (a long run of frees), then churn.
    let mut order: Vec<usize> = (0..N).collect();
    let mut x = 0x9e37_79b9_u64;
    for i in (1..N).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    // SAFETY: as above.
    unsafe {
        for &i in &order {
            let (p, size) = ps[i];
            HeapKeep.dealloc(p as *mut u8, lay(size, 8));
        }
        for i in 0..1_000_000 {
            let l = lay(size_of(i), 8);
            let p = HeapKeep.alloc(l);
            HeapKeep.dealloc(p, l);
        }
    }
    // On a loaded machine the reader may not have run yet: let it read
    // at least once before it is told to stop.
    while reads.load(Relaxed) == 0 && !reader.is_finished() {
        std::thread::yield_now();
    }
    stop.store(true, Relaxed);
    reader.join().unwrap();
    assert!(reads.load(Relaxed) > 0);
    drop(order);
    drop(ps);
    let s2 = crate::stats();
    // The reader thread's own calls (its stack, its thread record) are
    // freed by now: everything is back where it started.
    assert_eq!(s2.allocs - s1.allocs, s2.frees - s1.frees - N as u64);
    assert_eq!(s2.live_bytes, s0.live_bytes);
    assert_eq!(s2.live_blocks, s0.live_blocks);
}
