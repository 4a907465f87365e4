//! `prodcons`: one producer thread allocates, one consumer thread frees.
//!
//! The producer allocates small objects of random sizes (a mix of raw blocks,
//! `Box<[u8]>` and `Vec<u64>`), groups them in batches and sends the batches
//! over a bounded channel; the consumer reads one byte of each object and
//! drops it. Every single free is a remote free, which per-thread caches
//! have to route back to the producer's heap (or not).

use std::hint::black_box;
use std::sync::mpsc::sync_channel;
use std::thread;

use super::{mix, timed, Outcome};
use crate::block::Block;
use crate::rng::{Rng, SEED};
use crate::Scale;

const BATCH: usize = 256;
/// Batches in flight at most (bounded channel).
const IN_FLIGHT: usize = 32;

/// One produced object.
enum Item {
    Raw(Block),
    Boxed(Box<[u8]>),
    Words(Vec<u64>),
}

impl Item {
    fn peek(&self) -> u64 {
        match self {
            Item::Raw(b) => b.first() as u64 + b.size() as u64,
            Item::Boxed(b) => b[0] as u64 + b.len() as u64,
            Item::Words(v) => v[0] + v.len() as u64,
        }
    }
}

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let objects = scale.pick(8_000_000, 24_000_000);
    timed(|| {
        let (tx, rx) = sync_channel::<Vec<Item>>(IN_FLIGHT);
        let producer = thread::spawn(move || {
            let mut rng = Rng::stream(SEED, 200);
            let mut sum = 0u64;
            let mut left = objects;
            while left > 0 {
                let n = left.min(BATCH);
                left -= n;
                let batch: Vec<Item> = (0..n)
                    .map(|i| {
                        let size = rng.size_log(8, 1024);
                        let item = match rng.below(4) {
                            0 => Item::Boxed(vec![i as u8; size].into_boxed_slice()),
                            1 => Item::Words(vec![i as u64; size.div_ceil(8)]),
                            _ => Item::Raw(Block::new(size, i as u8)),
                        };
                        sum = sum.wrapping_add(item.peek());
                        item
                    })
                    .collect();
                tx.send(batch).expect("consumer hung up");
            }
            sum
        });
        let consumer = thread::spawn(move || {
            let mut sum = 0u64;
            for batch in rx {
                for item in batch {
                    sum = sum.wrapping_add(black_box(item).peek());
                }
            }
            sum
        });
        let produced = producer.join().expect("producer panicked");
        let consumed = consumer.join().expect("consumer panicked");
        assert_eq!(produced, consumed, "consumer saw different objects");
        mix(produced, objects as u64)
    })
}
