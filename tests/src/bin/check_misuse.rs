//! Heap misuse in Rust for check mode (`HEAPKEEP_CHECK=1`), on heapkeep as
//! the global allocator; one case per run, named by the first argument:
//!
//! - `double-free`: `dealloc` twice; `double-free-large`: the same, 1 MiB.
//! - `invalid-free-stack`: `dealloc` of a local's address;
//!   `invalid-free-interior`: of a pointer 16 bytes into a block.
//! - `uaf-read-large`: a byte of a freed 1 MiB block read (it faults).
//! - `overflow-large-read`: a byte read just past a 1 MiB block (guard page).
//! - `underflow`: the byte before a 100-byte block written, then `dealloc`.
//! - `stack-overflow`: unbounded recursion.
//! - `uaf-write`: a byte of a freed 100-byte block written; found at exit.
//! - `overflow`: the byte after a 100-byte block written, then `dealloc`.
//! - `layout-mismatch-size`: 100 bytes allocated, freed with size 64.
//! - `layout-mismatch-align`: allocated with align 64, freed with align 8.
//! - `realloc-layout-mismatch`: `realloc` given size 64 for a 100-byte block.
//! - `leak`: 5 boxes (1700 bytes) leaked and no longer referenced.
//! - `double-free-threads`, `double-free-large-threads`, `uaf-write-threads`:
//!   as above, but another thread makes the first free (so the block's
//!   check-mode shard is not the freeing thread's); in the large case
//!   another thread also maps a large block next to it first, which moves
//!   the shard hint of their address range to its own shard.
//! - `leak-threads`: 4 threads leak 2 boxes of 300 bytes each from one
//!   site (2400 bytes in 8 blocks, one site whichever shards hold them).
//! - `clean`: `Vec`, `HashMap`, `String` and `std::alloc` used correctly;
//!   prints `ok`.
//!
//! As in tests/c/check/misuse.c, every block comes from a named site
//! (`alloc_site_small`, `alloc_site_aligned`, `leak_site_triple`,
//! `leak_site_pair`) and every free or access from another (`free_site`,
//! `free_again_site`, `free_wrong_layout_site`, `realloc_wrong_layout_site`,
//! `uaf_write_site`, `overflow_write_site`), so a test can find the names in
//! the report. A misuse check mode catches prints nothing of ours; if the
//! program is still running after one that should have stopped it, it says
//! so on stderr (not on a `heapkeep:` line).

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::collections::HashMap;
use std::hint::black_box;
use std::ptr;

#[global_allocator]
static A: heapkeep::HeapKeep = heapkeep::HeapKeep;

const SMALL: usize = 100;
const LARGE: usize = 1 << 20;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("valid layout")
}

/// Code after a call, so an optimised build calls instead of jumping (a
/// tail call would take the site's own frame off the stack); `site` makes
/// each site's code its own (identical functions would be merged into one,
/// named after only one of them).
#[inline(always)]
fn keep_frame(site: u8) {
    black_box(site);
}

#[inline(never)]
fn alloc_site_small(size: usize) -> *mut u8 {
    // SAFETY: the layout is not zero-sized.
    let p = unsafe { alloc(layout(size, 8)) };
    assert!(!p.is_null());
    p
}

#[inline(never)]
fn alloc_site_aligned(size: usize, align: usize) -> *mut u8 {
    // SAFETY: the layout is not zero-sized.
    let p = unsafe { alloc(layout(size, align)) };
    assert!(!p.is_null());
    p
}

#[inline(never)]
fn alloc_site_large(size: usize) -> *mut u8 {
    // SAFETY: the layout is not zero-sized.
    let p = unsafe { alloc(layout(size, 16)) };
    assert!(!p.is_null());
    p
}

/// # Safety
/// None: this is the misuse (`p` is not a block).
#[inline(never)]
unsafe fn invalid_free_site(p: *mut u8, l: Layout) {
    unsafe { dealloc(p, l) };
    keep_frame(1);
}

/// Reads the byte at `p + i`.
///
/// # Safety
/// None: this is the misuse.
#[inline(never)]
unsafe fn bad_read_site(p: *mut u8, i: usize) -> u8 {
    unsafe { ptr::read_volatile(p.add(i)) }
}

/// Recurses until the stack runs out (`never` is never reached), with a
/// frame the optimiser cannot drop.
#[inline(never)]
fn stack_overflow_recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    if depth == black_box(u64::MAX) {
        return frame[0];
    }
    stack_overflow_recurse(depth + 1) + frame[63]
}

/// # Safety
/// `p` was allocated with `l` and is not freed yet (for a correct free).
#[inline(never)]
unsafe fn free_site(p: *mut u8, l: Layout) {
    unsafe { dealloc(p, l) };
    keep_frame(2);
}

/// # Safety
/// None: this is the misuse (a second free of `p`).
#[inline(never)]
unsafe fn free_again_site(p: *mut u8, l: Layout) {
    unsafe { dealloc(p, l) };
    keep_frame(3);
}

/// # Safety
/// None: this is the misuse (`l` is not the layout `p` was allocated with).
#[inline(never)]
unsafe fn free_wrong_layout_site(p: *mut u8, l: Layout) {
    unsafe { dealloc(p, l) };
    keep_frame(4);
}

/// # Safety
/// None: this is the misuse (`l` is not the layout `p` was allocated with).
#[inline(never)]
unsafe fn realloc_wrong_layout_site(p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
    let q = unsafe { realloc(p, l, new_size) };
    keep_frame(5);
    q
}

/// Writes `v` at `p + i`.
///
/// # Safety
/// None: this is the misuse (`p` was freed).
#[inline(never)]
unsafe fn uaf_write_site(p: *mut u8, i: usize, v: u8) {
    unsafe { ptr::write_volatile(p.add(i), v) }
}

/// Writes `v` at `p + i`.
///
/// # Safety
/// None: this is the misuse (`p + i` is past the block).
#[inline(never)]
unsafe fn overflow_write_site(p: *mut u8, i: usize, v: u8) {
    unsafe { ptr::write_volatile(p.add(i), v) }
}

/// The complement of the byte at `p + i`: writing it back always changes
/// the byte, whatever fill pattern was there.
///
/// # Safety
/// `p + i` must be readable (a freed small block or a redzone is).
unsafe fn flipped(p: *mut u8, i: usize) -> u8 {
    !unsafe { ptr::read_volatile(p.add(i)) }
}

/// Leaks a box of `n` bytes (its contents are no pointers).
#[inline(never)]
fn leak_site_triple(n: usize) {
    black_box(Box::leak(vec![0x11u8; n].into_boxed_slice()).len());
}

/// Leaks a box of `n` bytes (its contents are no pointers).
#[inline(never)]
fn leak_site_pair(n: usize) {
    black_box(Box::leak(vec![0x22u8; n].into_boxed_slice()).len());
}

/// Overwrites the stack below the caller with zeros, so no stale copy of a
/// leaked pointer survives where the leak sites ran (the exiting thread's
/// stack is a root of the leak search).
#[inline(never)]
fn scrub_stack() {
    let mut zeros = [0u8; 64 * 1024];
    black_box(&mut zeros);
}

/// 3 blocks of 100, 200 and 400 bytes and 2 of 500: 1700 bytes in 5
/// blocks, each site called in a loop so its blocks share one stack (the
/// trip counts are hidden from the optimiser: an unrolled loop would make
/// one call site, and so one stack, per block).
#[inline(never)]
fn leak() {
    let sizes = [100, 200, 400];
    for &n in black_box(&sizes[..]) {
        leak_site_triple(n);
    }
    for _ in 0..black_box(2) {
        leak_site_pair(500);
    }
    scrub_stack();
}

/// Runs `f` on a thread of its own and waits for it.
fn on_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f).join().expect("thread");
}

/// 4 threads, each leaking 2 boxes of 300 bytes from the same site.
#[inline(never)]
fn leak_threads() {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..black_box(2) {
                    leak_site_pair(300);
                }
                scrub_stack();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    scrub_stack();
}

fn clean() {
    let mut v: Vec<u64> = (0..10_000).collect();
    v.retain(|x| x % 3 != 0);
    let mut m: HashMap<String, Vec<usize>> = HashMap::new();
    for i in 0..5000 {
        m.entry(format!("key-{}", i % 257)).or_default().push(i);
    }
    let mut s = String::new();
    for (k, list) in &m {
        if list.len() > 19 {
            s.push_str(k);
        }
    }
    let boxes: Vec<Box<[u8]>> = (0..200)
        .map(|i| vec![i as u8; i * 37].into_boxed_slice())
        .collect();
    // SAFETY: each block is used within its layout and freed with it.
    unsafe {
        for (size, align) in [(100, 8), (100, 64), (5000, 4096), (1 << 20, 16)] {
            let l = layout(size, align);
            let p = alloc(l);
            assert!(!p.is_null() && (p as usize).is_multiple_of(align));
            ptr::write_bytes(p, 7, size);
            let q = realloc(p, l, size * 2);
            assert!(!q.is_null() && *q.add(size - 1) == 7);
            dealloc(q, layout(size * 2, align));
        }
    }
    let total: u64 = v.iter().sum::<u64>()
        + m.values().map(|l| l.len() as u64).sum::<u64>()
        + boxes.iter().map(|b| b.len() as u64).sum::<u64>()
        + s.len() as u64;
    black_box(total);
    println!("ok");
}

/// Runs `case`: `Some(true)` for a misuse only found at exit (main then
/// returns normally), `Some(false)` for one that should have stopped us,
/// `None` for an unknown case.
fn run_case(case: &str) -> Option<bool> {
    let small = layout(SMALL, 8);
    // SAFETY: none; the misuses are the point. Every access that is not the
    // misuse itself stays within a live or freed small block.
    unsafe {
        match case {
            "double-free" => {
                let p = alloc_site_small(SMALL);
                free_site(p, small);
                free_again_site(p, small);
            }
            "double-free-large" => {
                let p = alloc_site_large(LARGE);
                free_site(p, layout(LARGE, 16));
                free_again_site(p, layout(LARGE, 16));
            }
            "invalid-free-stack" => {
                let mut local = [0u8; 32];
                invalid_free_site(black_box(local.as_mut_ptr()), small);
            }
            "invalid-free-interior" => {
                let p = alloc_site_small(SMALL);
                invalid_free_site(p.add(16), small);
            }
            "uaf-read-large" => {
                let p = alloc_site_large(LARGE);
                free_site(p, layout(LARGE, 16));
                black_box(bad_read_site(p, 4096 * 3));
            }
            "overflow-large-read" => {
                let p = alloc_site_large(LARGE);
                black_box(bad_read_site(p, LARGE + 8));
            }
            "underflow" => {
                let p = alloc_site_small(SMALL);
                overflow_write_site(p.sub(1), 0, flipped(p.sub(1), 0));
                free_site(p, small);
            }
            "stack-overflow" => {
                black_box(stack_overflow_recurse(black_box(0)));
            }
            "uaf-write" => {
                let p = alloc_site_small(SMALL);
                free_site(p, small);
                uaf_write_site(p, 50, flipped(p, 50));
                return Some(true);
            }
            "overflow" => {
                let p = alloc_site_small(SMALL);
                overflow_write_site(p, SMALL, flipped(p, SMALL));
                free_site(p, small);
            }
            "layout-mismatch-size" => {
                let p = alloc_site_small(SMALL);
                free_wrong_layout_site(p, layout(64, 8));
            }
            "layout-mismatch-align" => {
                let p = alloc_site_aligned(SMALL, 64);
                free_wrong_layout_site(p, layout(SMALL, 8));
            }
            "realloc-layout-mismatch" => {
                let p = alloc_site_small(SMALL);
                black_box(realloc_wrong_layout_site(p, layout(64, 8), 200));
            }
            "leak" => {
                leak();
                return Some(true);
            }
            "leak-threads" => {
                leak_threads();
                return Some(true);
            }
            "double-free-threads" => {
                let p = alloc_site_small(SMALL) as usize;
                on_thread(move || free_site(p as *mut u8, layout(SMALL, 8)));
                free_again_site(p as *mut u8, small);
            }
            "double-free-large-threads" => {
                let p = alloc_site_large(LARGE) as usize;
                let l = layout(LARGE, 16);
                // Left live: another shard's block mapped beside `p`.
                on_thread(move || {
                    black_box(alloc_site_large(LARGE));
                });
                on_thread(move || free_site(p as *mut u8, l));
                free_again_site(p as *mut u8, l);
            }
            "uaf-write-threads" => {
                let p = alloc_site_small(SMALL) as usize;
                on_thread(move || free_site(p as *mut u8, layout(SMALL, 8)));
                let p = p as *mut u8;
                uaf_write_site(p, 50, flipped(p, 50));
                return Some(true);
            }
            "clean" => {
                clean();
                return Some(true);
            }
            _ => return None,
        }
    }
    Some(false)
}

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    match run_case(&case) {
        None => {
            eprintln!("check_misuse: unknown case {case:?}");
            std::process::exit(2);
        }
        Some(false) => eprintln!("check_misuse: {case}: still running after the misuse"),
        Some(true) => {}
    }
}
