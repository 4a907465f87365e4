/* The sampled guard of fast mode, run with HEAPKEEP_GUARD_SAMPLE=1 (every
 * slow-path allocation sampled while a slot is free). Cases (argv[1]):
 *   overflow  - read one byte past malloc_usable_size of a sampled block
 *   uaf       - read a sampled block after freeing it
 *   clean     - heavy correct use (realloc, usable size, frees from another
 *               thread, calloc): must print "ok" and nothing else.
 * Sites: guard_alloc_site, guard_free_site, guard_bad_read_site. */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

NOINLINE static char *guard_alloc_site(size_t n) { return malloc(n); }
NOINLINE static void guard_free_site(void *p) { free(p); }
NOINLINE static int guard_bad_read_site(volatile char *p, size_t at) { return p[at]; }

static void *free_them(void *arg) {
    char **v = arg;
    for (int i = 0; i < 1000; i++) free(v[i]);
    return NULL;
}

int main(int argc, char **argv) {
    const char *c = argc > 1 ? argv[1] : "clean";
    /* The first slow-path allocation only starts the countdown: warm up. */
    for (int i = 0; i < 10; i++) free(malloc(64));
    if (!strcmp(c, "overflow")) {
        char *p = guard_alloc_site(100);
        guard_bad_read_site(p, malloc_usable_size(p));
    } else if (!strcmp(c, "uaf")) {
        char *p = guard_alloc_site(100);
        guard_free_site(p);
        guard_bad_read_site(p, 3);
    } else {
        static char *v[1000];
        for (int round = 0; round < 20; round++) {
            for (int i = 0; i < 1000; i++) {
                size_t n = (size_t)(i * 37 % 5000) + 1;
                v[i] = i % 3 ? malloc(n) : calloc(1, n);
                if (!v[i]) return 1;
                if (i % 3 == 0)
                    for (size_t k = 0; k < n; k++)
                        if (v[i][k]) return 2;
                size_t u = malloc_usable_size(v[i]);
                if (u < n) return 3;
                memset(v[i], i & 0xff, u);
                if (i % 7 == 0) {
                    v[i] = realloc(v[i], n * 2);
                    if (!v[i] || (unsigned char)v[i][0] != (i & 0xff)) return 4;
                    memset(v[i], i & 0xff, malloc_usable_size(v[i]));
                }
            }
            pthread_t t;
            if (pthread_create(&t, NULL, free_them, v) || pthread_join(t, NULL)) return 5;
        }
        puts("ok");
        return 0;
    }
    puts("not caught");
    return 0;
}
