//! A Rust program on heapkeep for the heap map snapshots written by the
//! environment options (tests/tests/map.rs): it grows to a peak of about
//! 24 MiB in 24,576 blocks of 1000 bytes (class 1 KiB), keeps 1000 of them
//! and exits.

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

fn main() {
    let mut v: Vec<Vec<u8>> = Vec::with_capacity(24 * 1024);
    for i in 0..24 * 1024 {
        v.push(vec![i as u8; 1000]);
    }
    v.truncate(1000);
    println!("done {}", v.len());
}
