//! Allocation-free regions in a process of their own, for the modes that
//! end or outlive a test: `abort`, `log`, `env` (the mode from
//! `HEAPKEEP_FORBID_ALLOC`) and `panic` (run in check mode by the tests).
//! Used by tests/tests/forbid.rs.

use std::hint::black_box;

use heapkeep::{forbid_alloc, forbid_alloc_with, OnAlloc};

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

/// The offending allocation, in a function of its own so its name is in
/// the reported stack.
#[inline(never)]
fn allocate_inside(n: usize) -> usize {
    let v = black_box(vec![7u8; n]);
    v.len()
}

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    let total: usize = match case.as_str() {
        "abort" => forbid_alloc_with(OnAlloc::Abort, || allocate_inside(100)),
        "log" => forbid_alloc_with(OnAlloc::Log, || (0..20).map(|_| allocate_inside(100)).sum()),
        "env" => forbid_alloc(|| allocate_inside(100)),
        "panic" => forbid_alloc_with(OnAlloc::Panic, || allocate_inside(100)),
        other => panic!("unknown case {other:?}"),
    };
    println!("done {total}");
}
