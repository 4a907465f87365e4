//! `random`: random sizes from 8 B to 32 KiB over a large live set.
//!
//! A table of live slots (30 000 quick, 100 000 full) is filled with blocks
//! of log-uniformly random sizes between 8 bytes and 32 KiB, then random
//! slots are replaced over and over. The heap stays big and fragmented, and
//! the accesses have no locality: this tests size-class coverage, reuse of
//! freed memory across classes and cache/TLB behaviour of the metadata.

use super::{mix, timed, Outcome};
use crate::block::Block;
use crate::rng::{Rng, SEED};
use crate::Scale;

const MIN_SIZE: usize = 8;
const MAX_SIZE: usize = 32 * 1024;

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let slots = scale.pick(30_000, 100_000);
    let replacements = scale.pick(6_000_000, 15_000_000);
    timed(|| {
        let mut rng = Rng::stream(SEED, 400);
        let mut sum = 0u64;
        let mut table: Vec<Block> = (0..slots)
            .map(|i| {
                let size = rng.size_log(MIN_SIZE, MAX_SIZE);
                sum = sum.wrapping_add(size as u64);
                Block::new(size, i as u8)
            })
            .collect();
        for i in 0..replacements {
            let slot = rng.below(slots);
            let size = rng.size_log(MIN_SIZE, MAX_SIZE);
            let old = std::mem::replace(&mut table[slot], Block::new(size, i as u8));
            sum = sum.wrapping_add(old.last() as u64 + size as u64);
        }
        mix(sum, table.len() as u64)
    })
}
