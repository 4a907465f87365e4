/* prodcons: one producer thread allocates small objects (8..1024 bytes) in
 * batches of 256 and sends them over a bounded queue (32 batches); a
 * consumer thread reads a byte of each and frees it: every free is remote. */
#include <pthread.h>

#include "hk_common.h"

#define BATCH 256
#define IN_FLIGHT 32
#define OBJECTS 3000000

typedef struct {
    size_t n;
    unsigned char *objs[BATCH];
    uint32_t sizes[BATCH];
} batch_t;

static batch_t *ring[IN_FLIGHT];
static size_t ring_head, ring_len;
static int done;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER;

static void send_batch(batch_t *b) {
    pthread_mutex_lock(&mu);
    while (ring_len == IN_FLIGHT) pthread_cond_wait(&not_full, &mu);
    ring[(ring_head + ring_len) % IN_FLIGHT] = b;
    ring_len++;
    pthread_cond_signal(&not_empty);
    pthread_mutex_unlock(&mu);
}

static batch_t *recv_batch(void) {
    pthread_mutex_lock(&mu);
    while (ring_len == 0 && !done) pthread_cond_wait(&not_empty, &mu);
    batch_t *b = NULL;
    if (ring_len > 0) {
        b = ring[ring_head];
        ring_head = (ring_head + 1) % IN_FLIGHT;
        ring_len--;
        pthread_cond_signal(&not_full);
    }
    pthread_mutex_unlock(&mu);
    return b;
}

static uint64_t produced, consumed;

static void *producer(void *unused) {
    (void)unused;
    rng_t rng = rng_stream(HK_SEED, 200);
    uint64_t sum = 0;
    size_t left = OBJECTS;
    while (left > 0) {
        size_t n = left < BATCH ? left : BATCH;
        left -= n;
        batch_t *b = xmalloc(sizeof *b);
        b->n = n;
        for (size_t i = 0; i < n; i++) {
            size_t size = rng_size_log(&rng, 8, 1024);
            b->objs[i] = blk_new(size, (unsigned char)i);
            b->sizes[i] = (uint32_t)size;
            sum += b->objs[i][0] + size;
        }
        send_batch(b);
    }
    pthread_mutex_lock(&mu);
    done = 1;
    pthread_cond_broadcast(&not_empty);
    pthread_mutex_unlock(&mu);
    produced = sum;
    return NULL;
}

static void *consumer(void *unused) {
    (void)unused;
    uint64_t sum = 0;
    batch_t *b;
    while ((b = recv_batch()) != NULL) {
        for (size_t i = 0; i < b->n; i++) {
            sum += b->objs[i][0] + b->sizes[i];
            blk_free(b->objs[i]);
        }
        blk_free(b);
    }
    consumed = sum;
    return NULL;
}

int main(void) {
    pthread_t p, c;
    if (pthread_create(&p, NULL, producer, NULL) || pthread_create(&c, NULL, consumer, NULL)) {
        fprintf(stderr, "pthread_create failed\n");
        return 1;
    }
    pthread_join(p, NULL);
    pthread_join(c, NULL);
    if (produced != consumed) {
        fprintf(stderr, "consumer saw different objects\n");
        return 1;
    }
    printf("prodcons %016" PRIx64 "\n", mix(produced, OBJECTS));
    return 0;
}
