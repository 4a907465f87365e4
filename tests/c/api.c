/* C API edge cases of the malloc family, run under LD_PRELOAD of heapkeep. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(c) do { if (!(c)) { printf("FAIL line %d: %s\n", __LINE__, #c); failures++; } } while (0)

int main(void) {
    volatile size_t huge = (size_t)1 << 62, max = SIZE_MAX - 4096, half = SIZE_MAX / 2;
    /* the malloc in use is heapkeep's */
    Dl_info info;
    CHECK(dladdr((void *)malloc, &info) && info.dli_fname && strstr(info.dli_fname, "heapkeep"));

    void *a = malloc(0), *b = malloc(0);
    CHECK(a && b && a != b);
    free(a); free(b);
    free(NULL);

    for (size_t n = 1; n < 5000; n += 7) {
        unsigned char *p = malloc(n);
        CHECK(p && ((uintptr_t)p % 16 == 0 || n <= 8));
        size_t u = malloc_usable_size(p);
        CHECK(u >= n);
        memset(p, 0xab, u); /* the whole usable size is writable */
        free(p);
    }
    CHECK(malloc_usable_size(NULL) == 0);

    errno = 0;
    CHECK(calloc(huge, 16) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(max) == NULL && errno == ENOMEM);
    unsigned char *z = calloc(1000, 8);
    int zero = 1;
    for (int i = 0; i < 8000; i++) zero &= z[i] == 0;
    CHECK(zero);
    free(z);

    char *r = realloc(NULL, 10);
    CHECK(r != NULL);
    strcpy(r, "heapkeep");
    r = realloc(r, 100000);
    CHECK(r && strcmp(r, "heapkeep") == 0);
    r = realloc(r, 5);
    CHECK(r && memcmp(r, "heapk", 5) == 0);
    CHECK(realloc(r, 0) == NULL); /* glibc: frees and returns NULL */
    errno = 0;
    CHECK(reallocarray(NULL, half, 4) == NULL && errno == ENOMEM);
    void *ra = reallocarray(NULL, 10, 10);
    CHECK(ra != NULL);
    free(ra);

    void *pm = NULL;
    CHECK(posix_memalign(&pm, 3, 10) == EINVAL);
    CHECK(posix_memalign(&pm, 4, 10) == EINVAL); /* not a multiple of sizeof(void*) */
    for (size_t al = 8; al <= ((size_t)1 << 22); al <<= 1) {
        CHECK(posix_memalign(&pm, al, 100) == 0 && (uintptr_t)pm % al == 0);
        free(pm);
    }
    errno = 0;
    CHECK(aligned_alloc(24, 48) == NULL && errno == EINVAL);
    void *aa = aligned_alloc(4096, 4096);
    CHECK(aa && (uintptr_t)aa % 4096 == 0);
    free(aa);
    void *ma = memalign(3, 10); /* glibc rounds the alignment up to 4 */
    CHECK(ma && (uintptr_t)ma % 4 == 0);
    free(ma);
    void *va = valloc(100);
    CHECK(va && (uintptr_t)va % 4096 == 0);
    free(va);
    void *pv = pvalloc(100);
    CHECK(pv && (uintptr_t)pv % 4096 == 0 && malloc_usable_size(pv) >= 4096);
    free(pv);
    /* C23's free_sized is newer than this libc: look it up (heapkeep has it) */
    void (*fsz)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    CHECK(fsz != NULL);
    if (fsz) fsz(malloc(64), 64);

    /* large and huge blocks */
    for (size_t n = 100000; n <= (64u << 20); n *= 3) {
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        p[0] = 1; p[n - 1] = 2;
        p = realloc(p, n * 2);
        CHECK(p && p[0] == 1 && p[n - 1] == 2);
        free(p);
    }
    if (failures == 0) printf("ok\n");
    return failures != 0;
}
