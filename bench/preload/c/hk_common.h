/* Shared helpers of the preload-mode C workloads: the same xorshift64*
 * generator (seeded through splitmix64) and checksum mix as the Rust harness
 * (bench/src/rng.rs, bench/src/workloads/mod.rs), and heap blocks whose
 * first and last bytes are written so the memory is really touched.
 *
 * Every workload prints one line "<name> <checksum>" on stdout: it depends
 * only on the work done, never on addresses or timing, so it must be
 * identical under every allocator. */
#ifndef HK_COMMON_H
#define HK_COMMON_H

#define _GNU_SOURCE
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HK_SEED 0x686561706b656570ULL /* "heapkeep" */
#define HK_PAGE 4096

typedef struct {
    uint64_t s;
} rng_t;

static inline rng_t rng_new(uint64_t seed) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    rng_t r = {z ? z : 0x2545f4914f6cdd1dULL};
    return r;
}

static inline rng_t rng_stream(uint64_t seed, uint64_t stream) {
    return rng_new(seed ^ (stream * 0xd1b54a32d192ed03ULL));
}

static inline uint64_t rng_next(rng_t *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Uniform in 0..n-1 (n < 2^32). */
static inline size_t rng_below(rng_t *r, size_t n) {
    return (size_t)(((rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in lo..=hi. */
static inline size_t rng_range(rng_t *r, size_t lo, size_t hi) {
    return lo + rng_below(r, hi - lo + 1);
}

static inline unsigned ilog2z(size_t v) { return 63u - (unsigned)__builtin_clzll((unsigned long long)v); }

/* Roughly log-uniform size in lo..=hi: a power-of-two bucket, then a size in it. */
static inline size_t rng_size_log(rng_t *r, size_t lo, size_t hi) {
    unsigned bit = (unsigned)rng_range(r, ilog2z(lo), ilog2z(hi));
    size_t base = (size_t)1 << bit;
    size_t s = base + rng_below(r, base);
    return s < lo ? lo : (s > hi ? hi : s);
}

static inline void rng_shuffle(rng_t *r, size_t *v, size_t n) {
    for (size_t i = n; i-- > 1;) {
        size_t j = rng_below(r, i + 1);
        size_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

static inline uint64_t mix(uint64_t acc, uint64_t v) {
    uint64_t x = (acc ^ v) * 0x00000100000001b3ULL;
    return (x << 7) | (x >> 57);
}

/* Keeps the compiler from proving a block unused (GCC deletes malloc/free
 * pairs whose memory never escapes). */
static inline void escape(void *p) { __asm__ volatile("" : : "g"(p) : "memory"); }

static inline void *xmalloc(size_t size) {
    void *p = malloc(size);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", size);
        abort();
    }
    escape(p);
    return p;
}

static inline void *xrealloc(void *old, size_t size) {
    void *p = realloc(old, size);
    if (!p) {
        fprintf(stderr, "out of memory (realloc %zu bytes)\n", size);
        abort();
    }
    escape(p);
    return p;
}

/* `size` bytes (>= 1) with `tag` in the first and the last byte. */
static inline unsigned char *blk_new(size_t size, unsigned char tag) {
    if (size == 0) size = 1;
    unsigned char *p = xmalloc(size);
    p[0] = tag;
    p[size - 1] = tag;
    return p;
}

/* Writes one byte of every page, so the whole block becomes resident. */
static inline void blk_touch(unsigned char *p, size_t size, unsigned char tag) {
    for (size_t i = 0; i < size; i += HK_PAGE) p[i] = tag;
    p[size - 1] = tag;
}

static inline void blk_free(void *p) {
    escape(p);
    free(p);
}

#endif
