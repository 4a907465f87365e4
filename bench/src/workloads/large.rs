//! `large`: big blocks allocated, touched and freed repeatedly.
//!
//! Blocks of 64 KiB to 16 MiB (log-uniform) are allocated, one byte of every
//! 4 KiB page is written, and the block is freed a few allocations later
//! (four are live at a time). Page faults dominate unless the allocator
//! keeps and reuses large free memory instead of returning it to the OS and
//! faulting it back in each time.

use std::collections::VecDeque;

use super::{mix, timed, Outcome};
use crate::block::Block;
use crate::rng::{Rng, SEED};
use crate::Scale;

const MIN_SIZE: usize = 64 * 1024;
const MAX_SIZE: usize = 16 * 1024 * 1024;
const LIVE: usize = 4;

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let blocks = scale.pick(2_000, 6_000);
    timed(|| {
        let mut rng = Rng::stream(SEED, 600);
        let mut live: VecDeque<Block> = VecDeque::with_capacity(LIVE + 1);
        let mut sum = 0u64;
        for i in 0..blocks {
            let size = rng.size_log(MIN_SIZE, MAX_SIZE);
            live.push_back(Block::new_touched(size, i as u8));
            if live.len() > LIVE {
                if let Some(old) = live.pop_front() {
                    sum = sum.wrapping_add(old.size() as u64 + old.last() as u64);
                }
            }
        }
        mix(sum, live.len() as u64)
    })
}
