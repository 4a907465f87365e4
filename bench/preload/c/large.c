/* large: blocks of 64 KiB..16 MiB (log-uniform) allocated, one byte of
 * every 4 KiB page written, and freed a few allocations later (four live
 * at a time). Page faults dominate unless the allocator keeps and reuses
 * large free memory. */
#include "hk_common.h"

#define MIN_SIZE (64 * 1024)
#define MAX_SIZE (16 * 1024 * 1024)
#define LIVE 4
#define BLOCKS 1200

int main(void) {
    rng_t rng = rng_stream(HK_SEED, 600);
    unsigned char *live[LIVE + 1];
    size_t sizes[LIVE + 1];
    size_t head = 0, len = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < BLOCKS; i++) {
        size_t size = rng_size_log(&rng, MIN_SIZE, MAX_SIZE);
        unsigned char *b = blk_new(size, (unsigned char)i);
        blk_touch(b, size, (unsigned char)i);
        size_t at = (head + len) % (LIVE + 1);
        live[at] = b;
        sizes[at] = size;
        len++;
        if (len > LIVE) {
            sum += sizes[head] + live[head][sizes[head] - 1];
            blk_free(live[head]);
            head = (head + 1) % (LIVE + 1);
            len--;
        }
    }
    sum = mix(sum, len);
    while (len > 0) {
        blk_free(live[head]);
        head = (head + 1) % (LIVE + 1);
        len--;
    }
    printf("large %016" PRIx64 "\n", sum);
    return 0;
}
