/* larson: four server threads (even on two cores) each own an array of
 * slots and replace random slots with new objects of 16..1024 bytes; every
 * 256 steps a thread pulls a batch of 64 objects out of its slots and hands
 * it to another thread, which frees the whole batch (remote frees). */
#include <pthread.h>

#include "hk_common.h"

#define THREADS 4
#define MIN_SIZE 16
#define MAX_SIZE 1024
#define HANDOFF_EVERY 256
#define BATCH 64
#define DRAIN_EVERY 32
#define SLOTS 4000
#define STEPS 1500000

typedef struct batch {
    struct batch *next;
    void *objs[BATCH];
} batch_t;

typedef struct {
    pthread_mutex_t mu;
    batch_t *head;
} queue_t;

static queue_t queues[THREADS];
static pthread_barrier_t sent_all;

static void push(int to, batch_t *b) {
    pthread_mutex_lock(&queues[to].mu);
    b->next = queues[to].head;
    queues[to].head = b;
    pthread_mutex_unlock(&queues[to].mu);
}

/* Frees every batch waiting for thread `id`; returns the objects freed. */
static uint64_t drain(int id) {
    pthread_mutex_lock(&queues[id].mu);
    batch_t *b = queues[id].head;
    queues[id].head = NULL;
    pthread_mutex_unlock(&queues[id].mu);
    uint64_t n = 0;
    while (b) {
        batch_t *next = b->next;
        for (int k = 0; k < BATCH; k++) blk_free(b->objs[k]);
        n += BATCH;
        blk_free(b);
        b = next;
    }
    return n;
}

typedef struct {
    int id;
    uint64_t result;
} arg_t;

static void *alloc_obj(rng_t *rng, uint64_t *sum, int id) {
    size_t size = rng_range(rng, MIN_SIZE, MAX_SIZE);
    *sum += size;
    return blk_new(size, (unsigned char)id);
}

static void *server(void *p) {
    arg_t *a = p;
    int id = a->id;
    rng_t rng = rng_stream(HK_SEED, 100 + (uint64_t)id);
    uint64_t sum = 0, received = 0;
    void **table = xmalloc(SLOTS * sizeof *table);
    for (size_t i = 0; i < SLOTS; i++) table[i] = alloc_obj(&rng, &sum, id);
    for (size_t step = 1; step <= STEPS; step++) {
        size_t i = rng_below(&rng, SLOTS);
        blk_free(table[i]);
        table[i] = alloc_obj(&rng, &sum, id);
        if (step % HANDOFF_EVERY == 0) {
            batch_t *b = xmalloc(sizeof *b);
            for (int k = 0; k < BATCH; k++) {
                size_t j = rng_below(&rng, SLOTS);
                b->objs[k] = table[j];
                table[j] = alloc_obj(&rng, &sum, id);
            }
            int to = (int)rng_below(&rng, THREADS - 1);
            if (to >= id) to++;
            push(to, b);
        }
        if (step % DRAIN_EVERY == 0) received += drain(id);
    }
    for (size_t i = 0; i < SLOTS; i++) blk_free(table[i]);
    blk_free(table);
    pthread_barrier_wait(&sent_all);
    received += drain(id);
    a->result = mix(sum, received);
    return NULL;
}

int main(void) {
    pthread_t th[THREADS];
    arg_t args[THREADS];
    pthread_barrier_init(&sent_all, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        pthread_mutex_init(&queues[i].mu, NULL);
        queues[i].head = NULL;
    }
    for (int i = 0; i < THREADS; i++) {
        args[i].id = i;
        if (pthread_create(&th[i], NULL, server, &args[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    uint64_t sum = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        sum = mix(sum, args[i].result);
    }
    printf("larson %016" PRIx64 "\n", sum);
    return 0;
}
