//! A Rust program with a known top allocation site, `hot_site`, for the
//! profile run with `HEAPKEEP_PROFILE=1` (tests/tests/profile.rs). With
//! the argument `churn` it instead checks the contents of sampled blocks
//! that are freed and taken again (the profile keeps some for reuse).

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

/// Zeroed blocks of many sizes, each filled with its own pattern, freed
/// in a shuffled order while others are made: a zeroed block must read
/// zero, and no block may change while it is live (two owners of one
/// block would overwrite each other's pattern). Exits non-zero on a fault.
fn churn() {
    let mut live: Vec<(Vec<u8>, u8)> = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..60_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = 16 + (x % 20_000) as usize;
        let v = vec![0u8; n];
        if let Some(at) = v.iter().position(|&b| b != 0) {
            eprintln!("churn: a zeroed block of {n} bytes reads {} at {at}", v[at]);
            std::process::exit(1);
        }
        let mut v = v;
        let tag = (i % 251) as u8 + 1;
        v.fill(tag);
        live.push((v, tag));
        if live.len() > 64 {
            let (old, tag) = live.swap_remove((x >> 32) as usize % live.len());
            if let Some(at) = old.iter().position(|&b| b != tag) {
                eprintln!("churn: a live block changed at {at}: {} for {tag}", old[at]);
                std::process::exit(1);
            }
        }
    }
    println!("churn ok {}", live.len());
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("churn") {
        churn();
        return;
    }
    let mut total = 0usize;
    for _ in 0..20_000 {
        total += black_box(hot_site(5000)).len();
        total += black_box(cold_site(50)).len();
    }
    println!("done {total}");
}
