//! `larson`: server threads that free each other's objects.
//!
//! Modelled on the Larson server benchmark: four threads (even on two
//! cores) each own an array of slots. Each step replaces a random slot with
//! a new object of random size; every so often a thread pulls a batch of
//! objects out of its slots (refilling them) and sends it to another thread,
//! which frees the whole batch. Allocators with per-thread caches must
//! handle a steady stream of remote frees here.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread;

use super::{mix, timed, Outcome};
use crate::block::Block;
use crate::rng::{Rng, SEED};
use crate::Scale;

const THREADS: usize = 4;
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 1024;
/// Steps between two hand-offs.
const HANDOFF_EVERY: usize = 256;
/// Objects per hand-off.
const BATCH: usize = 64;
/// Steps between two checks of the incoming queue.
const DRAIN_EVERY: usize = 32;

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let slots = scale.pick(2_000, 8_000);
    let steps = scale.pick(3_500_000, 10_000_000);
    timed(|| {
        let mut senders: Vec<Sender<Vec<Block>>> = Vec::new();
        let mut receivers: Vec<Receiver<Vec<Block>>> = Vec::new();
        for _ in 0..THREADS {
            let (tx, rx) = channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let handles: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(id, rx)| {
                // Each thread gets senders to every other thread.
                let peers: Vec<Sender<Vec<Block>>> = (0..THREADS)
                    .filter(|&j| j != id)
                    .map(|j| senders[j].clone())
                    .collect();
                thread::spawn(move || server(id, slots, steps, peers, rx))
            })
            .collect();
        drop(senders);
        let mut sum = 0;
        for h in handles {
            sum = mix(sum, h.join().expect("larson thread panicked"));
        }
        sum
    })
}

/// One server thread; returns a checksum of what it allocated.
fn server(
    id: usize,
    slots: usize,
    steps: usize,
    peers: Vec<Sender<Vec<Block>>>,
    rx: Receiver<Vec<Block>>,
) -> u64 {
    let mut rng = Rng::stream(SEED, 100 + id as u64);
    let mut sum = 0u64;
    let alloc = |rng: &mut Rng, sum: &mut u64| {
        let size = rng.range(MIN_SIZE, MAX_SIZE);
        *sum = sum.wrapping_add(size as u64);
        Block::new(size, id as u8)
    };
    let mut table: Vec<Block> = (0..slots).map(|_| alloc(&mut rng, &mut sum)).collect();
    let mut received = 0u64;
    for step in 1..=steps {
        let i = rng.below(slots);
        table[i] = alloc(&mut rng, &mut sum);
        if step % HANDOFF_EVERY == 0 {
            let batch: Vec<Block> = (0..BATCH)
                .map(|_| {
                    let j = rng.below(slots);
                    std::mem::replace(&mut table[j], alloc(&mut rng, &mut sum))
                })
                .collect();
            let to = rng.below(peers.len());
            // The receiver only goes away after all senders are dropped.
            let _ = peers[to].send(batch);
        }
        if step % DRAIN_EVERY == 0 {
            while let Ok(batch) = rx.try_recv() {
                received += batch.len() as u64;
            }
        }
    }
    drop(table);
    // Done sending; free whatever the others still send until they finish.
    drop(peers);
    for batch in rx {
        received += batch.len() as u64;
    }
    // Which batches reach this thread is fixed by the senders' random
    // streams, so the count is deterministic too.
    mix(sum, received)
}
