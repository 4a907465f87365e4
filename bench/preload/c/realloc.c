/* realloc: growing and shrinking arrays and strings with realloc.
 * Many arrays grow side by side with capacity doubling (their reallocs
 * interleave, so growing in place is not free), strings grow by small
 * appends with an exact-size realloc on every append (the common C idiom),
 * buffers grow in 256-byte steps (one realloc each), and at the end
 * everything is cut down and shrunk with realloc. */
#include "hk_common.h"

#define REPS 12

static uint64_t vectors(rng_t *rng, size_t count, size_t max_len) {
    size_t *targets = xmalloc(count * sizeof *targets);
    size_t *lens = xmalloc(count * sizeof *lens);
    size_t *caps = xmalloc(count * sizeof *caps);
    uint32_t **vecs = xmalloc(count * sizeof *vecs);
    size_t longest = 0;
    for (size_t i = 0; i < count; i++) {
        targets[i] = rng_size_log(rng, 1, max_len);
        if (targets[i] > longest) longest = targets[i];
        lens[i] = caps[i] = 0;
        vecs[i] = NULL;
    }
    for (size_t step = 0; step < longest; step++) {
        for (size_t i = 0; i < count; i++) {
            if (step >= targets[i]) continue;
            if (lens[i] == caps[i]) {
                caps[i] = caps[i] ? caps[i] * 2 : 4;
                vecs[i] = xrealloc(vecs[i], caps[i] * sizeof(uint32_t));
            }
            vecs[i][lens[i]++] = (uint32_t)step;
        }
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < count; i++) {
        lens[i] = (lens[i] + 3) / 4;
        vecs[i] = xrealloc(vecs[i], lens[i] * sizeof(uint32_t));
        sum += lens[i] + vecs[i][lens[i] - 1];
        blk_free(vecs[i]);
    }
    blk_free(targets);
    blk_free(lens);
    blk_free(caps);
    blk_free(vecs);
    return sum;
}

static uint64_t strings(rng_t *rng, size_t count, size_t max_len) {
    static const char text[] = "the quick brown fox jumps over the lazy dog";
    size_t *targets = xmalloc(count * sizeof *targets);
    size_t *lens = xmalloc(count * sizeof *lens);
    char **strs = xmalloc(count * sizeof *strs);
    size_t *active = xmalloc(count * sizeof *active);
    size_t n_active = count;
    for (size_t i = 0; i < count; i++) {
        targets[i] = rng_size_log(rng, 16, max_len);
        lens[i] = 0;
        strs[i] = xmalloc(1);
        strs[i][0] = 0;
        active[i] = i;
    }
    while (n_active > 0) {
        size_t kept = 0;
        for (size_t k = 0; k < n_active; k++) {
            size_t i = active[k];
            size_t piece = rng_range(rng, 1, 16);
            strs[i] = xrealloc(strs[i], lens[i] + piece + 1);
            memcpy(strs[i] + lens[i], text, piece);
            lens[i] += piece;
            strs[i][lens[i]] = 0;
            if (lens[i] < targets[i]) active[kept++] = i;
        }
        n_active = kept;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < count; i++) {
        lens[i] /= 2;
        strs[i] = xrealloc(strs[i], lens[i] + 1);
        strs[i][lens[i]] = 0;
        sum += strlen(strs[i]);
        blk_free(strs[i]);
    }
    blk_free(targets);
    blk_free(lens);
    blk_free(strs);
    blk_free(active);
    return sum;
}

static uint64_t exact_steps(rng_t *rng, size_t count, size_t max_len, size_t step) {
    unsigned char **bufs = xmalloc(count * sizeof *bufs);
    for (size_t i = 0; i < count; i++) bufs[i] = NULL;
    size_t len = 0;
    while (len < max_len) {
        size_t old = len;
        len += step;
        for (size_t i = 0; i < count; i++) {
            bufs[i] = xrealloc(bufs[i], len);
            memset(bufs[i] + old, (int)(len & 0xff), step);
        }
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < count; i++) {
        size_t cut = rng_range(rng, 1, max_len / 2);
        bufs[i] = xrealloc(bufs[i], cut);
        sum += cut + bufs[i][cut - 1];
        blk_free(bufs[i]);
    }
    blk_free(bufs);
    return sum;
}

int main(void) {
    rng_t rng = rng_stream(HK_SEED, 500);
    uint64_t sum = 0;
    for (int r = 0; r < REPS; r++) {
        sum = mix(sum, vectors(&rng, 2000, 4096));
        sum = mix(sum, strings(&rng, 1000, 16 * 1024));
        sum = mix(sum, exact_steps(&rng, 8, 64 * 1024, 256));
    }
    printf("realloc %016" PRIx64 "\n", sum);
    return 0;
}
