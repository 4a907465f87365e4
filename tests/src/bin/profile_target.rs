//! A Rust program with a known top allocation site, `hot_site`, for the
//! profile run with `HEAPKEEP_PROFILE=1` (tests/tests/profile.rs).

use std::hint::black_box;

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

#[inline(never)]
fn hot_site(n: usize) -> Vec<u8> {
    vec![1u8; n]
}

#[inline(never)]
fn cold_site(n: usize) -> Vec<u8> {
    vec![2u8; n]
}

fn main() {
    let mut total = 0usize;
    for _ in 0..20_000 {
        total += black_box(hot_site(5000)).len();
        total += black_box(cold_site(50)).len();
    }
    println!("done {total}");
}
