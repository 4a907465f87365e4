/* Leaks exactly known for check mode's exit report. Compile with -g -O0
 * -fno-inline -pthread.
 *
 * Leaked (no pointer to them survives anywhere): 5 blocks, 1700 bytes,
 * allocated by a thread that drops every pointer and exits:
 *   leak_site_triple: 100 + 200 + 400 bytes (3 blocks, 700 bytes)
 *   leak_site_pair:   500 + 500 bytes       (2 blocks, 1000 bytes)
 * Still referenced from a global at exit (leaks only with leaks=all):
 *   keep_site: 50 + 50 bytes (2 blocks, 100 bytes)
 * Freed properly: churn_site's blocks.
 *
 * The leaking thread runs on a stack of our own (mmap'ed, unmapped after
 * the join): no stale copy of the pointers stays in a cached thread stack,
 * and glibc frees the thread's TLS bookkeeping (its DTV, a calloc'ed block)
 * at the join instead of keeping it with a cached stack. Each site is
 * called in a loop, so its blocks share one allocation stack. Prints
 * nothing; exits 0. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define NOINLINE __attribute__((noinline))

void *volatile kept[2];

NOINLINE static void *leak_site_triple(size_t n) {
    void *p = malloc(n);
    memset(p, 0x11, n);
    return p;
}

NOINLINE static void *leak_site_pair(size_t n) {
    void *p = malloc(n);
    memset(p, 0x22, n);
    return p;
}

NOINLINE static void *keep_site(size_t n) {
    void *p = malloc(n);
    memset(p, 0x33, n);
    return p;
}

NOINLINE static void *churn_site(size_t n) {
    void *p = malloc(n);
    memset(p, 0x44, n);
    return p;
}

static void *leaker(void *arg) {
    static const size_t triple[3] = {100, 200, 400};
    (void)arg;
    for (int i = 0; i < 3; i++) leak_site_triple(triple[i]);
    for (int i = 0; i < 2; i++) leak_site_pair(500);
    return NULL;
}

int main(void) {
    for (int i = 0; i < 2; i++) kept[i] = keep_site(50);
    for (int i = 0; i < 20; i++) free(churn_site(32 + 48 * i));

    size_t size = 1 << 20;
    void *stack = mmap(NULL, size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    pthread_attr_t attr;
    pthread_t t;
    if (pthread_attr_init(&attr) || pthread_attr_setstack(&attr, stack, size) ||
        pthread_create(&t, &attr, leaker, NULL) || pthread_join(t, NULL)) {
        fprintf(stderr, "leaks: cannot run the thread\n");
        return 2;
    }
    pthread_attr_destroy(&attr);
    munmap(stack, size);
    return 0;
}
