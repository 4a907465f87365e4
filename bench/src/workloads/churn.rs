//! `churn`: thread churn, thousands of short-lived threads.
//!
//! Threads are started in waves of four. Each thread inherits the objects
//! of one thread of the previous wave and frees half of them (the other
//! half is freed later by the main thread), allocates a fresh set, does some
//! alloc/free churn on it, then exits handing half of its objects to the
//! next wave and half to the main thread. Allocators must create and tear
//! down per-thread state cheaply and cope with memory owned by dead threads.

use std::thread;

use super::{mix, timed, Outcome};
use crate::block::Block;
use crate::rng::{Rng, SEED};
use crate::Scale;

const WAVE: usize = 4;
/// Objects each thread allocates and keeps until it exits.
const KEEP: usize = 2_000;
/// Extra replace operations each thread performs on its set.
const CHURN: usize = 4_000;

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let threads = scale.pick(1_500, 4_000);
    timed(|| {
        let mut inherited: Vec<Vec<Block>> = (0..WAVE).map(|_| Vec::new()).collect();
        let mut to_free_later: Vec<Vec<Block>> = Vec::new();
        let mut sum = 0u64;
        let mut started = 0;
        while started < threads {
            let n = WAVE.min(threads - started);
            let handles: Vec<_> = inherited
                .drain(..)
                .take(n)
                .enumerate()
                .map(|(k, objs)| {
                    let id = (started + k) as u64;
                    thread::spawn(move || life(id, objs))
                })
                .collect();
            started += n;
            // Objects handed to main in the previous wave are freed now,
            // while the new threads run.
            to_free_later.clear();
            for h in handles {
                let (s, to_next, to_main) = h.join().expect("churn thread panicked");
                sum = mix(sum, s);
                inherited.push(to_next);
                to_free_later.push(to_main);
            }
        }
        sum
    })
}

/// The life of one thread: returns (checksum, objects for the next wave,
/// objects for main).
fn life(id: u64, mut inherited: Vec<Block>) -> (u64, Vec<Block>, Vec<Block>) {
    let mut rng = Rng::stream(SEED, 700 + id);
    let mut sum = 0u64;
    // Free half of what the previous thread left us (it was allocated by a
    // thread that has exited); the rest goes on to main.
    let keep_for_main = inherited.split_off(inherited.len() / 2);
    for b in inherited {
        sum = sum.wrapping_add(b.first() as u64);
    }
    let mut objs: Vec<Block> = (0..KEEP)
        .map(|_| {
            let size = rng.size_log(16, 512);
            sum = sum.wrapping_add(size as u64);
            Block::new(size, id as u8)
        })
        .collect();
    for _ in 0..CHURN {
        let i = rng.below(KEEP);
        let size = rng.size_log(16, 512);
        sum = sum.wrapping_add(size as u64);
        objs[i] = Block::new(size, id as u8);
    }
    let mut to_main = objs.split_off(KEEP / 2);
    to_main.extend(keep_for_main);
    (sum, objs, to_main)
}
