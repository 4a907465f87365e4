/* Threads whose stacks go to known depths, for `heapkeep run`'s stack
 * table. Each thread calls malloc first (so heapkeep sees it), names
 * itself, then recurses through 16 KiB frames until it has used the asked
 * number of bytes.
 *   deep:    4 MiB stack, goes 1 MiB deep
 *   shallow: 2 MiB stack, goes 64 KiB deep
 *   first:   1 MiB stack, goes 768 KiB deep, exits and is joined
 *   second:  1 MiB stack (glibc hands it first's cached stack), goes 32 KiB
 *   main:    goes 512 KiB deep
 * Prints "reused 1" when second ran on first's stack. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int __attribute__((noinline)) dig(size_t bytes) {
    volatile char buf[16384];
    for (size_t i = 0; i < sizeof buf; i += 1024) buf[i] = (char)i;
    if (bytes <= sizeof buf) return buf[1024];
    return dig(bytes - sizeof buf) + buf[2048];
}

struct job {
    const char *name;
    size_t stack;
    size_t depth;
    uintptr_t where; /* an address on the thread's stack */
};

static void *run(void *arg) {
    struct job *j = arg;
    void *p = malloc(16);
    if (!p) exit(2);
    pthread_setname_np(pthread_self(), j->name);
    j->where = (uintptr_t)&p;
    dig(j->depth);
    free(p);
    return NULL;
}

static void start(struct job *j, pthread_t *t) {
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, j->stack);
    if (pthread_create(t, &a, run, j) != 0) exit(3);
    pthread_attr_destroy(&a);
}

int main(void) {
    struct job deep = {"deep", 4 << 20, 1 << 20, 0};
    struct job shallow = {"shallow", 2 << 20, 64 << 10, 0};
    struct job first = {"first", 1 << 20, 768 << 10, 0};
    struct job second = {"second", 1 << 20, 32 << 10, 0};
    pthread_t a, b, c;
    start(&deep, &a);
    start(&shallow, &b);
    start(&first, &c);
    pthread_join(c, NULL);
    start(&second, &c);
    pthread_join(c, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    dig(512 << 10);
    uintptr_t d = first.where > second.where ? first.where - second.where
                                             : second.where - first.where;
    printf("reused %d\n", d < (64 << 10));
    return 0;
}
