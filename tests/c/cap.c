/* The memory cap from the environment (HEAPKEEP_MEMORY_CAP=64M, set by
 * tests/tests/preload.rs): requests beyond it fail with NULL and ENOMEM,
 * many blocks stop near the cap, memory freed (and held in heapkeep's
 * caches) serves new requests, and the C API reads and changes the cap.
 * Prints "ok" when all holds. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB ((size_t)1 << 20)

static int fail(const char *what) {
    printf("FAIL: %s\n", what);
    return 1;
}

int main(void) {
    size_t (*get_cap)(void) = (size_t (*)(void))dlsym(RTLD_DEFAULT, "heapkeep_memory_cap");
    void (*set_cap)(size_t) = (void (*)(size_t))dlsym(RTLD_DEFAULT, "heapkeep_set_memory_cap");
    if (!get_cap || !set_cap) return fail("heapkeep_memory_cap not found");
    if (get_cap() != 64 * MIB) return fail("cap from HEAPKEEP_MEMORY_CAP");

    errno = 0;
    void *big = malloc(100 * MIB);
    if (big != NULL || errno != ENOMEM) return fail("malloc beyond the cap");
    if (calloc(200, MIB) != NULL) return fail("calloc beyond the cap");

    /* 1 MiB blocks until the cap stops them. */
    static void *blocks[256];
    int n = 0;
    while (n < 256 && (blocks[n] = malloc(MIB)) != NULL) {
        memset(blocks[n], n, MIB);
        n++;
    }
    if (n >= 64 || n < 40) {
        printf("FAIL: %d blocks of 1 MiB under a 64 MiB cap\n", n);
        return 1;
    }
    for (int i = 0; i < n; i++) free(blocks[i]);

    /* Freed memory serves a different shape: one 48 MiB block, then (with
     * that block cached after its free) 1 MiB blocks again. */
    void *one = malloc(48 * MIB);
    if (!one) return fail("48 MiB after freeing");
    memset(one, 1, 48 * MIB);
    free(one);
    int m = 0;
    while (m < 40 && (blocks[m] = malloc(MIB)) != NULL) m++;
    if (m < 40) {
        printf("FAIL: only %d blocks of 1 MiB after a cached 48 MiB block\n", m);
        return 1;
    }
    for (int i = 0; i < m; i++) free(blocks[i]);

    set_cap(0);
    if (get_cap() != 0) return fail("cap lifted");
    big = malloc(100 * MIB);
    if (!big) return fail("malloc with no cap");
    free(big);
    printf("ok\n");
    return 0;
}
