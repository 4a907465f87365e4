//! `false-sharing`: threads writing into neighbouring small blocks.
//!
//! Four threads each work on a handful of small blocks, writing into them
//! over and over. Two situations are provoked, after Hoard's cache-thrash and
//! cache-scratch tests:
//!
//! * passive: the main thread allocates all the initial blocks back to back
//!   and hands them out round-robin; each thread frees them and from then on
//!   allocates its own blocks of the same size. An allocator that gives the
//!   freed blocks (next to other threads' blocks) straight back puts several
//!   threads' hot data in one cache line;
//! * active: all threads allocate, write and free their small blocks at the
//!   same time; an allocator that serves concurrent threads from one shared
//!   run of small blocks interleaves them.
//!
//! The blocks' bytes are used as counters bumped with volatile
//! read-modify-writes, so every access reaches the cache; with false sharing
//! the cache line bounces between cores.

use std::sync::{Arc, Barrier};
use std::thread;

use super::{mix, timed, Outcome};
use crate::block::Block;
use crate::Scale;

const THREADS: usize = 4;
/// Blocks each thread works on at a time.
const PER_THREAD: usize = 4;
/// Size of every block: one small size class, several blocks per line.
const SIZE: usize = 16;
/// Read-modify-writes into each block per round.
const BUMPS: usize = 500;

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let rounds = scale.pick(90_000, 250_000);
    timed(|| {
        // Passive setup: the main thread allocates every initial block, back
        // to back, and deals them out round-robin.
        let mut dealt: Vec<Vec<Block>> = (0..THREADS).map(|_| Vec::new()).collect();
        for i in 0..THREADS * PER_THREAD {
            dealt[i % THREADS].push(Block::new(SIZE, 0));
        }
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = dealt
            .into_iter()
            .enumerate()
            .map(|(id, given)| {
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || worker(id, given, rounds, &barrier))
            })
            .collect();
        let mut sum = 0;
        for h in handles {
            sum = mix(sum, h.join().expect("false-sharing thread panicked"));
        }
        sum
    })
}

fn worker(id: usize, given: Vec<Block>, rounds: usize, barrier: &Barrier) -> u64 {
    barrier.wait();
    // Free the blocks main allocated; from now on, every round, allocate our
    // own blocks, bump counters in all of them, and free them again.
    drop(given);
    let mut sum = 0u64;
    for round in 0..rounds {
        let mut blocks: Vec<Block> = (0..PER_THREAD)
            .map(|_| Block::new(SIZE, id as u8))
            .collect();
        // The first eight bytes of each block are counters, bumped with
        // volatile read-modify-writes, all blocks in turn.
        for b in blocks.iter_mut() {
            for i in 0..8 {
                b.write_volatile(i, round as u8);
            }
        }
        for w in 0..BUMPS {
            for b in blocks.iter_mut() {
                let v = b.read_volatile(w & 7);
                b.write_volatile(w & 7, v.wrapping_add(1));
            }
        }
        for b in &blocks {
            sum = sum.wrapping_add(b.read_volatile(round & 7) as u64);
        }
    }
    sum
}
