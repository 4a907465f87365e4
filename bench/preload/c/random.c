/* random: random sizes from 8 B to 32 KiB over a large live set. A table of
 * 50 000 slots is filled with blocks of log-uniform random sizes, then
 * random slots are replaced over and over (fragmentation, no locality). */
#include "hk_common.h"

#define SLOTS 50000
#define REPLACEMENTS 3000000
#define MIN_SIZE 8
#define MAX_SIZE (32 * 1024)

int main(void) {
    rng_t rng = rng_stream(HK_SEED, 400);
    uint64_t sum = 0;
    unsigned char **table = xmalloc(SLOTS * sizeof *table);
    size_t *sizes = xmalloc(SLOTS * sizeof *sizes);
    for (size_t i = 0; i < SLOTS; i++) {
        sizes[i] = rng_size_log(&rng, MIN_SIZE, MAX_SIZE);
        sum += sizes[i];
        table[i] = blk_new(sizes[i], (unsigned char)i);
    }
    for (size_t i = 0; i < REPLACEMENTS; i++) {
        size_t slot = rng_below(&rng, SLOTS);
        size_t size = rng_size_log(&rng, MIN_SIZE, MAX_SIZE);
        sum += table[slot][sizes[slot] - 1] + size;
        blk_free(table[slot]);
        table[slot] = blk_new(size, (unsigned char)i);
        sizes[slot] = size;
    }
    for (size_t i = 0; i < SLOTS; i++) blk_free(table[i]);
    blk_free(table);
    blk_free(sizes);
    printf("random %016" PRIx64 "\n", mix(sum, SLOTS));
    return 0;
}
