/* churn: thousands of short-lived threads, started in waves of four. Each
 * thread inherits the objects of one thread of the previous wave and frees
 * half of them (the other half is freed later by the main thread),
 * allocates 2000 objects of 16..512 bytes, replaces 4000 of them at random,
 * then exits handing half of its objects to the next wave and half to the
 * main thread. Per-thread state must be cheap to create and tear down, and
 * memory of dead threads must be handled. */
#include <pthread.h>

#include "hk_common.h"

#define WAVE 4
#define KEEP 2000
#define CHURN 4000
#define THREADS 800

typedef struct {
    void **v;
    size_t n;
} list_t;

typedef struct {
    uint64_t id;
    list_t inherited;
    uint64_t sum;
    list_t to_next;
    list_t to_main;
} life_t;

static void *life(void *p) {
    life_t *l = p;
    rng_t rng = rng_stream(HK_SEED, 700 + l->id);
    uint64_t sum = 0;
    size_t half = l->inherited.n / 2;
    /* Free the first half of what the previous thread left (allocated by a
     * thread that has exited); the second half goes on to main. */
    for (size_t i = 0; i < half; i++) {
        sum += *(unsigned char *)l->inherited.v[i];
        blk_free(l->inherited.v[i]);
    }
    void **objs = xmalloc(KEEP * sizeof *objs);
    for (size_t i = 0; i < KEEP; i++) {
        size_t size = rng_size_log(&rng, 16, 512);
        sum += size;
        objs[i] = blk_new(size, (unsigned char)l->id);
    }
    for (size_t k = 0; k < CHURN; k++) {
        size_t i = rng_below(&rng, KEEP);
        size_t size = rng_size_log(&rng, 16, 512);
        sum += size;
        blk_free(objs[i]);
        objs[i] = blk_new(size, (unsigned char)l->id);
    }
    size_t rest = l->inherited.n - half;
    l->to_next.n = KEEP / 2;
    l->to_next.v = xmalloc((KEEP / 2) * sizeof(void *));
    memcpy(l->to_next.v, objs, (KEEP / 2) * sizeof(void *));
    l->to_main.n = KEEP - KEEP / 2 + rest;
    l->to_main.v = xmalloc(l->to_main.n * sizeof(void *));
    memcpy(l->to_main.v, objs + KEEP / 2, (KEEP - KEEP / 2) * sizeof(void *));
    if (rest > 0) memcpy(l->to_main.v + (KEEP - KEEP / 2), l->inherited.v + half, rest * sizeof(void *));
    blk_free(objs);
    blk_free(l->inherited.v);
    l->inherited.v = NULL;
    l->sum = sum;
    return NULL;
}

static void free_list(list_t *l) {
    for (size_t i = 0; i < l->n; i++) blk_free(l->v[i]);
    blk_free(l->v);
    l->v = NULL;
    l->n = 0;
}

int main(void) {
    list_t inherited[WAVE] = {{0}};
    list_t later[WAVE] = {{0}};
    uint64_t sum = 0;
    size_t started = 0;
    while (started < THREADS) {
        size_t n = THREADS - started < WAVE ? THREADS - started : WAVE;
        pthread_t th[WAVE];
        life_t lives[WAVE];
        for (size_t k = 0; k < n; k++) {
            lives[k].id = started + k;
            lives[k].inherited = inherited[k];
            inherited[k].v = NULL;
            inherited[k].n = 0;
            if (pthread_create(&th[k], NULL, life, &lives[k]) != 0) {
                fprintf(stderr, "pthread_create failed\n");
                return 1;
            }
        }
        started += n;
        /* What the previous wave handed to main is freed now, while the
         * new threads run. */
        for (size_t k = 0; k < WAVE; k++) free_list(&later[k]);
        for (size_t k = 0; k < n; k++) {
            pthread_join(th[k], NULL);
            sum = mix(sum, lives[k].sum);
            inherited[k] = lives[k].to_next;
            later[k] = lives[k].to_main;
        }
    }
    for (size_t k = 0; k < WAVE; k++) {
        free_list(&later[k]);
        free_list(&inherited[k]);
    }
    printf("churn %016" PRIx64 "\n", sum);
    return 0;
}
