//! `memreturn`: does freed memory go back to the operating system?
//!
//! Allocates about 1 GiB (384 MiB at quick scale) in a mix of small
//! (16..512 B), medium (1..64 KiB) and large (128 KiB..4 MiB) blocks, about
//! a third of the bytes each, touching every page. Then ~90% of the blocks,
//! chosen at random, are freed in random order. The timed part is the
//! allocation and the frees. Afterwards the program "keeps running" for a
//! moment (a 50 ms pause and a few thousand small allocations, giving
//! allocators that purge lazily their normal chance to do so) and the
//! resident set is read from `/proc/self/statm`: that is `rss_after`.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use super::{mix, Outcome};
use crate::block::Block;
use crate::procmem;
use crate::rng::{Rng, SEED};
use crate::Scale;

/// Fraction of the blocks freed, in percent.
const FREED_PERCENT: usize = 90;

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let target: usize = scale.pick(384, 1024) << 20;
    let mut rng = Rng::stream(SEED, 800);
    let start = Instant::now();

    // Allocate: always top up the class with the fewest bytes so far, so
    // each class gets about a third of the total.
    let mut class_bytes = [0usize; 3];
    let mut blocks: Vec<Option<Block>> = Vec::new();
    let mut sum = 0u64;
    while class_bytes.iter().sum::<usize>() < target {
        let class = (0..3).min_by_key(|&c| class_bytes[c]).unwrap_or(0);
        let size = match class {
            0 => rng.size_log(16, 512),
            1 => rng.size_log(1024, 64 * 1024),
            _ => rng.size_log(128 * 1024, 4 * 1024 * 1024),
        };
        class_bytes[class] += size;
        sum = sum.wrapping_add(size as u64);
        blocks.push(Some(Block::new_touched(size, blocks.len() as u8)));
    }

    // Free ~90% of the blocks, picked and ordered at random.
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    rng.shuffle(&mut order);
    let freed = order.len() * FREED_PERCENT / 100;
    for &i in &order[..freed] {
        if let Some(b) = blocks[i].take() {
            sum = sum.wrapping_add(b.last() as u64);
        }
    }
    let seconds = start.elapsed().as_secs_f64();

    // The program goes on a little: pause, then light small-object traffic.
    thread::sleep(Duration::from_millis(50));
    for i in 0..4_096 {
        let b = black_box(Block::new(rng.size_log(16, 256), i as u8));
        sum = sum.wrapping_add(b.first() as u64);
    }
    let rss_after = procmem::rss_kib();

    let survivors = blocks.iter().flatten().count() as u64;
    drop(blocks);
    Outcome {
        seconds,
        checksum: mix(sum, survivors),
        rss_after_kib: Some(rss_after),
    }
}
