//! `realloc`: growing and shrinking `Vec`s and `String`s.
//!
//! Many vectors grow side by side one `push` at a time (so their reallocs
//! interleave and in-place growth is not free), strings grow by small
//! `push_str` pieces, buffers grow in fixed 256-byte steps with
//! `reserve_exact` (a realloc on every step), and finally everything is
//! truncated and `shrink_to_fit`. This measures `realloc`: in-place growth,
//! copying, and shrinking.

use std::hint::black_box;

use super::{mix, timed, Outcome};
use crate::rng::{Rng, SEED};
use crate::Scale;

/// Runs the workload.
pub fn run(scale: Scale) -> Outcome {
    let reps = scale.pick(30, 80);
    timed(|| {
        let mut rng = Rng::stream(SEED, 500);
        let mut sum = 0u64;
        for _ in 0..reps {
            sum = mix(sum, vectors(&mut rng, 2_000, 4_096));
            sum = mix(sum, strings(&mut rng, 1_000, 16 * 1024));
            sum = mix(sum, exact_steps(&mut rng, 8, 64 * 1024, 256));
        }
        sum
    })
}

/// `count` `Vec<u32>`s pushed round-robin to random lengths up to `max_len`,
/// then cut to a quarter and shrunk.
fn vectors(rng: &mut Rng, count: usize, max_len: usize) -> u64 {
    let targets: Vec<usize> = (0..count).map(|_| rng.size_log(1, max_len)).collect();
    let longest = targets.iter().copied().max().unwrap_or(0);
    let mut vecs: Vec<Vec<u32>> = (0..count).map(|_| Vec::new()).collect();
    for step in 0..longest {
        for (v, &t) in vecs.iter_mut().zip(&targets) {
            if step < t {
                v.push(step as u32);
            }
        }
    }
    let mut sum = 0u64;
    for v in vecs.iter_mut() {
        v.truncate(v.len().div_ceil(4));
        v.shrink_to_fit();
        sum = sum.wrapping_add(v.len() as u64 + *v.last().unwrap_or(&0) as u64);
    }
    black_box(vecs);
    sum
}

/// `count` `String`s grown round-robin by pieces of 1..=16 bytes to random
/// lengths up to `max_len`, then halved and shrunk.
fn strings(rng: &mut Rng, count: usize, max_len: usize) -> u64 {
    const TEXT: &str = "the quick brown fox jumps over the lazy dog";
    let targets: Vec<usize> = (0..count).map(|_| rng.size_log(16, max_len)).collect();
    let mut strs: Vec<String> = (0..count).map(|_| String::new()).collect();
    let mut active: Vec<usize> = (0..count).collect();
    while !active.is_empty() {
        active.retain(|&i| {
            let piece = &TEXT[..rng.range(1, 16)];
            strs[i].push_str(piece);
            strs[i].len() < targets[i]
        });
    }
    let mut sum = 0u64;
    for s in strs.iter_mut() {
        s.truncate(s.len() / 2);
        s.shrink_to_fit();
        sum = sum.wrapping_add(s.len() as u64);
    }
    black_box(strs);
    sum
}

/// `count` byte buffers grown side by side by `step` bytes at a time with
/// `reserve_exact` up to `max_len` (one realloc per step), then shrunk.
fn exact_steps(rng: &mut Rng, count: usize, max_len: usize, step: usize) -> u64 {
    let mut bufs: Vec<Vec<u8>> = (0..count).map(|_| Vec::new()).collect();
    let mut len = 0;
    while len < max_len {
        len += step;
        for b in bufs.iter_mut() {
            b.reserve_exact(step);
            b.resize(len, len as u8);
        }
    }
    let mut sum = 0u64;
    for b in bufs.iter_mut() {
        b.truncate(rng.range(1, max_len / 2));
        b.shrink_to_fit();
        sum = sum.wrapping_add(b.len() as u64 + b[b.len() - 1] as u64);
    }
    black_box(bufs);
    sum
}
