//! `small`: many small, short-lived objects in a single thread.
//!
//! Three phases, all on one thread: immediate alloc/free pairs of random
//! small sizes, a short FIFO window of small `Box`es (objects live for a few
//! dozen allocations), and binary trees of `Box`ed nodes built, walked and
//! dropped. This is the fast path every allocator is judged on first.

use std::collections::VecDeque;
use std::hint::black_box;

use super::{mix, timed, Outcome};
use crate::block::Block;
use crate::rng::{Rng, SEED};
use crate::Scale;

/// Parameters of the workload.
struct Params {
    pairs: usize,
    window_ops: usize,
    trees: usize,
    depth: u32,
}

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let p = scale.pick(
        Params {
            pairs: 15_000_000,
            window_ops: 15_000_000,
            trees: 120,
            depth: 15,
        },
        Params {
            pairs: 40_000_000,
            window_ops: 40_000_000,
            trees: 160,
            depth: 16,
        },
    );
    timed(|| {
        let mut sum = 0;
        sum = mix(sum, pairs(p.pairs));
        sum = mix(sum, window(p.window_ops));
        sum = mix(sum, trees(p.trees, p.depth));
        sum
    })
}

/// Immediate alloc/free pairs of 8..256 bytes.
fn pairs(n: usize) -> u64 {
    let mut rng = Rng::stream(SEED, 1);
    let mut sum = 0u64;
    for i in 0..n {
        let b = Block::new(rng.size_log(8, 256), i as u8);
        let b = black_box(b);
        sum = sum.wrapping_add(b.size() as u64 + b.last() as u64);
    }
    sum
}

/// A small message-like object.
struct Msg {
    id: u64,
    payload: [u64; 3],
}

/// FIFO of 64 live small objects of mixed kinds; each step pushes a new one
/// and drops the oldest.
fn window(n: usize) -> u64 {
    enum Obj {
        Msg(Box<Msg>),
        Word(Box<u64>),
        Bytes(Block),
    }
    let mut rng = Rng::stream(SEED, 2);
    let mut fifo: VecDeque<Obj> = VecDeque::with_capacity(64);
    let mut sum = 0u64;
    for i in 0..n as u64 {
        let o = match rng.below(3) {
            0 => Obj::Msg(Box::new(Msg {
                id: i,
                payload: [i, i ^ 1, i ^ 2],
            })),
            1 => Obj::Word(Box::new(i)),
            _ => Obj::Bytes(Block::new(rng.size_log(16, 128), i as u8)),
        };
        fifo.push_back(black_box(o));
        if fifo.len() > 64 {
            if let Some(old) = fifo.pop_front() {
                sum = sum.wrapping_add(match old {
                    Obj::Msg(m) => m.id ^ m.payload[2],
                    Obj::Word(w) => *w,
                    Obj::Bytes(b) => b.first() as u64,
                });
            }
        }
    }
    sum.wrapping_add(fifo.len() as u64)
}

/// Binary tree node.
struct Node {
    left: Option<Box<Node>>,
    right: Option<Box<Node>>,
}

fn build(depth: u32) -> Box<Node> {
    if depth == 0 {
        Box::new(Node {
            left: None,
            right: None,
        })
    } else {
        Box::new(Node {
            left: Some(build(depth - 1)),
            right: Some(build(depth - 1)),
        })
    }
}

fn count(n: &Node) -> u64 {
    1 + n.left.as_deref().map_or(0, count) + n.right.as_deref().map_or(0, count)
}

/// Builds `trees` full binary trees of depth `depth` (plus a long-lived one
/// kept across them), counts and drops them.
fn trees(trees: usize, depth: u32) -> u64 {
    let long_lived = build(depth - 2);
    let mut sum = 0u64;
    for i in 0..trees {
        // Alternate between one big tree and many small ones.
        if i % 2 == 0 {
            let t = black_box(build(depth));
            sum = sum.wrapping_add(count(&t));
        } else {
            for _ in 0..16 {
                let t = black_box(build(depth - 4));
                sum = sum.wrapping_add(count(&t));
            }
        }
    }
    sum.wrapping_add(count(&long_lived))
}
