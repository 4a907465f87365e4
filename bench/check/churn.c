/* Allocation churn for comparing checkers: random small blocks replaced in
 * a window of live slots, as the harness's `small` and `larson` workloads
 * do, on 1 or more threads. Prints nanoseconds per malloc/free pair.
 *
 *     churn THREADS PAIRS_PER_THREAD
 *
 * Built plainly (run on glibc, on heapkeep with LD_PRELOAD, in heapkeep's
 * check mode) and with -fsanitize=address by bench/check/asan.py. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 256

static long pairs;

static void *run(void *arg) {
    unsigned x = (unsigned)(size_t)arg * 2654435761u + 1;
    void *live[SLOTS] = {0};
    for (long i = 0; i < pairs; i++) {
        x = x * 1103515245u + 12345u;
        unsigned k = (x >> 8) % SLOTS;
        free(live[k]);
        size_t n = 16 + ((x >> 16) % 241);
        char *p = malloc(n);
        p[0] = (char)i;
        p[n - 1] = (char)k;
        live[k] = p;
    }
    for (int k = 0; k < SLOTS; k++) free(live[k]);
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    pairs = argc > 2 ? atol(argv[2]) : 2000000;
    if (threads < 1 || threads > 64 || pairs < 1) {
        fprintf(stderr, "usage: churn THREADS PAIRS_PER_THREAD\n");
        return 2;
    }
    pthread_t t[64];
    double start = now();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, (void *)(size_t)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double secs = now() - start;
    printf("%.1f\n", secs * 1e9 / ((double)pairs * threads));
    return 0;
}
