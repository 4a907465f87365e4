//! `heapkeep::thread_stats` and `heapkeep::for_each_thread`: per-thread
//! counts, with heapkeep as the global allocator.

use std::hint::black_box;
use std::sync::mpsc;

use heapkeep::{for_each_thread, thread_stats, ThreadStats};

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

fn delta(a: &ThreadStats, b: &ThreadStats) -> (u64, u64, u64, u64) {
    (
        b.allocs - a.allocs,
        b.frees - a.frees,
        b.reallocs - a.reallocs,
        b.bytes_requested - a.bytes_requested,
    )
}

#[test]
fn a_thread_counts_its_own_calls_exactly() {
    std::thread::spawn(|| {
        let a = thread_stats();
        assert_eq!(a.thread_id, gettid());
        let mut v: Vec<Box<[u8; 100]>> = (0..1000).map(|_| Box::new([1u8; 100])).collect();
        let mut s = String::with_capacity(10);
        s.reserve_exact(5000); // a realloc to 5000 bytes that moves
        black_box(&s);
        v.truncate(500);
        let b = thread_stats();
        // 1000 boxes + the Vec's buffer + the String; 500 boxes freed; one realloc.
        assert_eq!(
            delta(&a, &b),
            (1002, 500, 1, 100_000 + 1000 * 8 + 10 + 5000),
            "{b:?}"
        );
        assert!(b.net_bytes - a.net_bytes >= 500 * 100 + 5000, "{b:?}");
        assert_eq!(
            b.bytes_allocated - a.bytes_allocated - (b.bytes_freed - a.bytes_freed),
            (b.net_bytes - a.net_bytes) as u64
        );
        drop((v, s));
    })
    .join()
    .unwrap();
}

#[test]
fn a_new_thread_starts_from_zero_on_an_adopted_heap() {
    // The first thread allocates a lot and exits: its heap is retired and
    // the next new thread adopts it, but not its counts.
    std::thread::spawn(|| {
        for _ in 0..50_000 {
            black_box(Box::new(7u64));
        }
        assert!(thread_stats().allocs >= 50_000);
    })
    .join()
    .unwrap();
    std::thread::spawn(|| {
        black_box(Box::new(1u8));
        let s = thread_stats();
        assert_eq!(s.thread_id, gettid());
        assert!(s.allocs < 100, "counts of the heap's earlier thread: {s:?}");
    })
    .join()
    .unwrap();
}

#[test]
fn frees_of_other_threads_blocks_count_for_the_freer() {
    let (tx, rx) = mpsc::channel::<Vec<Box<[u8; 64]>>>();
    let freer = std::thread::spawn(move || {
        black_box(Box::new(0u8)); // a heap of its own
        let blocks = rx.recv().unwrap();
        // Read after `recv`, which allocates when it has to wait (the
        // channel's waiter context), which the sender's timing decides.
        let a = thread_stats();
        drop(blocks);
        let b = thread_stats();
        // 2000 boxes and the Vec's buffer, none of them allocated here.
        assert_eq!(b.frees - a.frees, 2001, "{b:?}");
        assert_eq!(b.allocs - a.allocs, 0, "{b:?}");
        assert!(b.net_bytes - a.net_bytes <= -(2000 * 64), "{b:?}");
    });
    let blocks: Vec<Box<[u8; 64]>> = (0..2000).map(|_| Box::new([0u8; 64])).collect();
    tx.send(blocks).unwrap();
    freer.join().unwrap();
}

#[test]
fn every_running_thread_is_listed_with_its_counts() {
    let (ready_tx, ready_rx) = mpsc::channel::<u32>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let keep: Vec<Box<u64>> = (0..3000).map(Box::new).collect();
        ready_tx.send(gettid()).unwrap();
        done_rx.recv().unwrap();
        drop(keep);
    });
    let tid = ready_rx.recv().unwrap();
    black_box(Box::new(1u8));
    let me = gettid();
    let mut seen = Vec::new();
    for_each_thread(|t| seen.push(*t));
    done_tx.send(()).unwrap();
    worker.join().unwrap();
    let w = seen
        .iter()
        .find(|t| t.thread_id == tid)
        .expect("worker listed");
    assert!(w.allocs >= 3000 && w.net_bytes >= 3000 * 8, "{w:?}");
    assert!(seen.iter().any(|t| t.thread_id == me), "{seen:?}");
    let mut ids: Vec<u32> = seen.iter().map(|t| t.thread_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "a thread listed twice: {seen:?}");
    // Once it has exited, the worker is no longer listed.
    let mut after = Vec::new();
    for_each_thread(|t| after.push(t.thread_id));
    assert!(!after.contains(&tid), "{after:?}");
}
