/* Exact statistics for a known allocation pattern, through heapkeep.h.
 * Usage: counts N STATUS -- does N allocations of 1000 bytes (held at once,
 * then freed), 3 reallocs, a calloc, realloc(NULL)/realloc(p, 0), checks
 * heapkeep_stats() after each step, prints "ok N", exits with STATUS.
 * Build with -fno-builtin: the compiler may drop malloc/free pairs it sees
 * through, and every call here must reach the library. */
#define _GNU_SOURCE
#include <malloc.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "heapkeep.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c); exit(99); } } while (0)

static heapkeep_stats_t now(void) {
    heapkeep_stats_t s;
    memset(&s, 0xff, sizeof s);
    CHECK(heapkeep_stats(&s, sizeof s) == sizeof s);
    return s;
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    long n = atol(argv[1]);
    int status = atoi(argv[2]);
    CHECK(heapkeep_version() && heapkeep_version()[0] != 0);

    /* The size classes, by heapkeep_class_stats (null, 0: how many), into
     * static arrays: an allocation here would change the counts below. */
    static heapkeep_class_stats_t ca[1024], cb[1024];
    size_t classes = heapkeep_class_stats(NULL, 0);
    CHECK(classes > 16 && classes <= 1024);

    CHECK(heapkeep_class_stats(ca, classes) == classes);
    heapkeep_stats_t a = now();
    void **p = malloc((size_t)(n + 1) * sizeof *p);
    size_t table = malloc_usable_size(p);
    for (long i = 0; i < n; i++) p[i] = malloc(1000);
    size_t u = n ? malloc_usable_size(p[0]) : 0;
    /* (All u, but for the blocks a sampled profile took: theirs differ.) */
    uint64_t sum_u = 0;
    for (long i = 0; i < n; i++) sum_u += malloc_usable_size(p[i]);
    heapkeep_stats_t b = now();
    CHECK(heapkeep_class_stats(cb, classes) == classes);
    /* The heap walk's figures: what it holds minus what is free is what
     * is in use, the counters' live bytes to the byte (one thread); the
     * class of the 1000-byte blocks gained n of them. Check mode serves
     * blocks from its own inner heap with redzones (its walk differs). */
    /* (A profile's blocks carry its record before the program's bytes:
     * held in use, not the program's.) */
    int profiled = getenv("HEAPKEEP_PROFILE") != NULL;
    if (!getenv("HEAPKEEP_CHECK")) {
        CHECK(b.held_bytes >= b.unused_bytes && b.held_bytes <= b.os_mapped_bytes);
        if (profiled) CHECK(b.held_bytes - b.unused_bytes >= b.live_bytes);
        else CHECK(b.held_bytes - b.unused_bytes == b.live_bytes);
        CHECK(b.resident_bytes > 0 && b.resident_bytes <= b.held_bytes);
        CHECK(b.unused_resident_bytes <= b.resident_bytes);
        CHECK(b.largest_free_run > 0 && b.largest_free_run <= b.unused_bytes);
        int found = profiled; /* (its blocks are a class bigger than u) */
        for (size_t c = 0; c < classes && !profiled; c++) {
            if (cb[c].block_size != u || n == 0) continue;
            found = 1;
            CHECK(cb[c].blocks_in_use - ca[c].blocks_in_use == (uint64_t)n);
            CHECK(cb[c].blocks_capacity >= cb[c].blocks_in_use);
            CHECK(cb[c].page_bytes >= cb[c].blocks_capacity * u);
        }
        CHECK(found || n == 0);
    }
    /* This (only) thread did all of it (check mode, and a profile that
     * records every allocation, keep no per-thread heaps: zeros there). */
    const char *rate = getenv("HEAPKEEP_PROFILE_RATE");
    int every = profiled && rate && strcmp(rate, "1") == 0;
    heapkeep_thread_stats_t t;
    CHECK(heapkeep_thread_stats(&t, sizeof t) == sizeof t);
    CHECK(t.thread_id == (uint32_t)gettid());
    if (!getenv("HEAPKEEP_CHECK") && !every) {
        CHECK(t.allocs == b.allocs && t.frees == b.frees);
        CHECK(t.net_bytes == (int64_t)b.live_bytes);
    } else {
        CHECK(t.allocs == 0);
    }
    CHECK(b.allocs - a.allocs == (uint64_t)n + 1);
    CHECK(b.frees == a.frees);
    CHECK(b.live_blocks - a.live_blocks == (uint64_t)n + 1);
    CHECK(b.live_bytes - a.live_bytes == sum_u + table);
    CHECK(b.bytes_requested - a.bytes_requested == (uint64_t)n * 1000 + (uint64_t)(n + 1) * sizeof *p);
    CHECK(b.bytes_allocated - a.bytes_allocated == sum_u + table);
    CHECK(b.peak_live_bytes >= b.live_bytes);
    if (b.live_bytes > a.peak_live_bytes) CHECK(b.peak_live_bytes == b.live_bytes);

    if (n >= 3) {
        size_t was = malloc_usable_size(p[0]) + malloc_usable_size(p[1]) + malloc_usable_size(p[2]);
        p[0] = realloc(p[0], 100000); /* moves to a larger class */
        p[1] = realloc(p[1], 990);    /* stays in place */
        p[2] = realloc(p[2], 3000);   /* moves */
        heapkeep_stats_t c = now();
        CHECK(c.reallocs - b.reallocs == 3);
        CHECK(c.allocs == b.allocs && c.frees == b.frees);
        CHECK(c.live_blocks == b.live_blocks);
        CHECK(c.live_bytes - b.live_bytes ==
              malloc_usable_size(p[0]) + malloc_usable_size(p[1]) + malloc_usable_size(p[2]) - was);
    }
    heapkeep_stats_t d = now();
    for (long i = 0; i < n; i++) free(p[i]);
    free(p);
    void *z = calloc(10, 10);
    void *r = realloc(NULL, 10); /* an allocation */
    CHECK(realloc(r, 0) == NULL); /* a free */
    free(z);
    heapkeep_stats_t e = now();
    if (!getenv("HEAPKEEP_CHECK") && !profiled) CHECK(e.held_bytes - e.unused_bytes == e.live_bytes);
    CHECK(e.frees - d.frees == (uint64_t)n + 1 + 2);
    CHECK(e.allocs - d.allocs == 2);
    CHECK(e.reallocs == d.reallocs);
    CHECK(e.live_blocks == a.live_blocks && e.live_bytes == a.live_bytes);
    if (n >= 3) CHECK(e.peak_live_bytes == d.peak_live_bytes); /* n blocks were the high */
    printf("ok %ld\n", n);
    return status;
}
