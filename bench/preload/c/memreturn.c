/* memreturn: does freed memory go back to the operating system?
 * Allocates about 256 MiB in a mix of small (16..512 B), medium
 * (1..64 KiB) and large (128 KiB..4 MiB) blocks, about a third of the bytes
 * each, touching every page; then frees ~90% of the blocks in random
 * order. Afterwards the program "keeps running" for a moment (a 50 ms
 * pause and a few thousand small allocations) and prints its resident set
 * on stderr ("rss_after_kib N"); stdout holds only the checksum. */
#include <time.h>
#include <unistd.h>

#include "hk_common.h"

#define TARGET ((size_t)256 << 20)
#define FREED_PERCENT 90

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(void) {
    rng_t rng = rng_stream(HK_SEED, 800);
    size_t class_bytes[3] = {0, 0, 0};
    size_t cap = 1 << 16, n = 0;
    unsigned char **blocks = xmalloc(cap * sizeof *blocks);
    size_t *sizes = xmalloc(cap * sizeof *sizes);
    uint64_t sum = 0;
    while (class_bytes[0] + class_bytes[1] + class_bytes[2] < TARGET) {
        int c = 0;
        for (int k = 1; k < 3; k++)
            if (class_bytes[k] < class_bytes[c]) c = k;
        size_t size = c == 0 ? rng_size_log(&rng, 16, 512)
                    : c == 1 ? rng_size_log(&rng, 1024, 64 * 1024)
                             : rng_size_log(&rng, 128 * 1024, 4 * 1024 * 1024);
        class_bytes[c] += size;
        sum += size;
        if (n == cap) {
            cap *= 2;
            blocks = xrealloc(blocks, cap * sizeof *blocks);
            sizes = xrealloc(sizes, cap * sizeof *sizes);
        }
        blocks[n] = blk_new(size, (unsigned char)n);
        blk_touch(blocks[n], size, (unsigned char)n);
        sizes[n] = size;
        n++;
    }
    size_t *order = xmalloc(n * sizeof *order);
    for (size_t i = 0; i < n; i++) order[i] = i;
    rng_shuffle(&rng, order, n);
    size_t freed = n * FREED_PERCENT / 100;
    for (size_t k = 0; k < freed; k++) {
        size_t i = order[k];
        sum += blocks[i][sizes[i] - 1];
        blk_free(blocks[i]);
        blocks[i] = NULL;
    }
    blk_free(order);

    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
    for (int i = 0; i < 4096; i++) {
        unsigned char *b = blk_new(rng_size_log(&rng, 16, 256), (unsigned char)i);
        sum += b[0];
        blk_free(b);
    }
    fprintf(stderr, "rss_after_kib %ld\n", rss_kib());

    uint64_t survivors = 0;
    for (size_t i = 0; i < n; i++)
        if (blocks[i]) {
            survivors++;
            blk_free(blocks[i]);
        }
    blk_free(blocks);
    blk_free(sizes);
    printf("memreturn %016" PRIx64 "\n", mix(sum, survivors));
    return 0;
}
