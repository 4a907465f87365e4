//! Deterministic pseudo-random numbers for the workloads.
//!
//! A small xorshift64* generator seeded through splitmix64. Every workload
//! seeds it with fixed constants, so each allocator is given exactly the same
//! sequence of sizes and slot choices.

/// Seed shared by all workloads (each derives per-thread streams from it).
pub const SEED: u64 = 0x6865_6170_6b65_6570; // "heapkeep"

/// xorshift64* generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Creates a generator; different seeds give unrelated streams.
    pub fn new(seed: u64) -> Rng {
        // splitmix64 step so that nearby seeds diverge and the state is never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// Creates the generator for stream `stream` of workload seed `seed`.
    pub fn stream(seed: u64, stream: u64) -> Rng {
        Rng::new(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03))
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform integer in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform integer in `lo..=hi`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// Size in `lo..=hi` with a roughly log-uniform distribution: a power of
    /// two bucket is chosen uniformly, then a size uniformly inside it. Small
    /// sizes are common and large ones rare, as in real programs.
    #[inline]
    pub fn size_log(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(0 < lo && lo <= hi);
        let lo_bit = lo.ilog2() as usize;
        let hi_bit = hi.ilog2() as usize;
        let bit = self.range(lo_bit, hi_bit);
        let base = 1usize << bit;
        (base + self.below(base)).clamp(lo, hi)
    }

    /// `true` with probability `num / den`.
    #[inline]
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = Rng::new(SEED);
        let mut b = Rng::new(SEED);
        for _ in 0..10_000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let s = a.size_log(8, 32 * 1024);
            assert!((8..=32 * 1024).contains(&s));
            let r = a.range(3, 9);
            assert!((3..=9).contains(&r));
            b.size_log(8, 32 * 1024);
            b.range(3, 9);
        }
    }
}
