//! `heapkeep::measure`: what a closure did on the calling thread, with
//! heapkeep as the global allocator.

use std::hint::black_box;

use heapkeep::{measure, Measured};

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

#[test]
fn counts_calls_bytes_and_peak_of_the_closure() {
    let (_, m) = measure(|| {
        let v: Vec<u8> = Vec::with_capacity(1000);
        black_box(&v);
    });
    assert_eq!((m.allocs, m.frees, m.reallocs), (1, 1, 0), "{m:?}");
    assert!(
        m.bytes_allocated >= 1000 && m.bytes_allocated < 1200,
        "{m:?}"
    );
    assert!(m.peak_bytes >= 1000 && m.peak_bytes < 1200, "{m:?}");

    // Growth by push: reallocs, and a peak of the final size (plus the
    // block being moved out of, at most), though nothing is live after.
    let (len, m) = measure(|| {
        let mut v = Vec::new();
        for i in 0..100_000u32 {
            v.push(i);
        }
        v.len()
    });
    assert_eq!(len, 100_000);
    assert_eq!(m.allocs, 1, "{m:?}");
    assert_eq!(m.frees, 1, "{m:?}");
    assert!(m.reallocs >= 10, "{m:?}");
    assert!(
        m.peak_bytes >= 400_000 && m.peak_bytes <= 3 * 400_000,
        "{m:?}"
    );
}

#[test]
fn the_peak_is_found_past_many_flushes_and_is_relative_to_the_start() {
    // Something live before the scope does not count in its peak.
    let keep: Vec<Box<[u8]>> = (0..64)
        .map(|_| vec![1u8; 64 << 10].into_boxed_slice())
        .collect();
    let (_, m) = measure(|| {
        // Climb to 8 MiB in 64 KiB steps (the counters flush every 256 KiB),
        // fall back, climb to 2 MiB.
        let mut v: Vec<Box<[u8]>> = (0..128)
            .map(|_| vec![2u8; 64 << 10].into_boxed_slice())
            .collect();
        v.clear();
        let w: Vec<Box<[u8]>> = (0..32)
            .map(|_| vec![3u8; 64 << 10].into_boxed_slice())
            .collect();
        black_box(&w);
    });
    black_box(&keep);
    let eight = 128 * (64 << 10);
    assert!(
        m.peak_bytes >= eight && m.peak_bytes < eight + (256 << 10),
        "{m:?}"
    );
    assert_eq!(m.allocs, m.frees, "{m:?}");
}

#[test]
fn scopes_nest_and_other_threads_do_not_count() {
    let ((_, inner), outer) = measure(|| {
        let a = vec![0u8; 10_000];
        let r = measure(|| {
            let b = vec![0u8; 50_000];
            black_box(&b);
        });
        black_box(&a);
        r
    });
    assert_eq!(inner.allocs, 1, "{inner:?}");
    assert!(inner.peak_bytes >= 50_000, "{inner:?}");
    assert_eq!(outer.allocs, 2, "{outer:?}");
    // The outer high point had both blocks live.
    assert!(outer.peak_bytes >= 60_000, "{outer:?}");

    let (_, m) = measure(|| {
        std::thread::spawn(|| black_box(vec![0u8; 8 << 20]).len())
            .join()
            .unwrap()
    });
    assert!(
        m.bytes_allocated < 1 << 20,
        "another thread's 8 MiB counted: {m:?}"
    );
    let none = measure(|| 1 + 1).1;
    assert_eq!(none, Measured::default());
}

#[test]
fn the_peak_of_medium_blocks_is_exact() {
    // Blocks above 1 KiB take the slow path on every call, which raises
    // the high point on the spot (most calls skip the full upkeep): with
    // 300 blocks of 3000 bytes live at once the peak is every byte handed
    // out, across several flushes (every 256 KiB) and marks (128 KiB).
    // Also below the process peak, where outside a scope the slow paths
    // keep no highs: 4 MiB live and gone first.
    drop(black_box(vec![1u8; 4 << 20]));
    let mut v: Vec<Vec<u8>> = Vec::with_capacity(300);
    let (_, m) = measure(|| {
        for i in 0..300 {
            v.push(vec![i as u8; 3000]);
        }
        v.clear();
    });
    assert_eq!((m.allocs, m.frees), (300, 300), "{m:?}");
    if heapkeep::STATS_ENABLED {
        assert!(m.bytes_allocated >= 300 * 3000, "{m:?}");
        assert_eq!(m.peak_bytes, m.bytes_allocated, "{m:?}");
    }
}
