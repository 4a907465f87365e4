/* small: many small, short-lived objects in one thread.
 * Immediate alloc/free pairs of 8..256 bytes, a FIFO window of 64 live
 * objects of mixed kinds, and binary trees built, walked and freed. */
#include "hk_common.h"

static uint64_t pairs(size_t n) {
    rng_t rng = rng_stream(HK_SEED, 1);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        size_t size = rng_size_log(&rng, 8, 256);
        unsigned char *b = blk_new(size, (unsigned char)i);
        sum += size + b[size - 1];
        blk_free(b);
    }
    return sum;
}

typedef struct {
    uint64_t id;
    uint64_t payload[3];
} msg_t;

typedef struct {
    int kind;
    void *p;
} obj_t;

#define WINDOW 64

static uint64_t window(size_t n) {
    rng_t rng = rng_stream(HK_SEED, 2);
    obj_t fifo[WINDOW + 1];
    size_t head = 0, len = 0;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++) {
        obj_t o;
        o.kind = (int)rng_below(&rng, 3);
        if (o.kind == 0) {
            msg_t *m = xmalloc(sizeof *m);
            m->id = i;
            m->payload[0] = i;
            m->payload[1] = i ^ 1;
            m->payload[2] = i ^ 2;
            o.p = m;
        } else if (o.kind == 1) {
            uint64_t *w = xmalloc(sizeof *w);
            *w = i;
            o.p = w;
        } else {
            o.p = blk_new(rng_size_log(&rng, 16, 128), (unsigned char)i);
        }
        fifo[(head + len) % (WINDOW + 1)] = o;
        len++;
        if (len > WINDOW) {
            obj_t old = fifo[head];
            head = (head + 1) % (WINDOW + 1);
            len--;
            if (old.kind == 0) {
                msg_t *m = old.p;
                sum += m->id ^ m->payload[2];
            } else if (old.kind == 1) {
                sum += *(uint64_t *)old.p;
            } else {
                sum += *(unsigned char *)old.p;
            }
            blk_free(old.p);
        }
    }
    while (len > 0) {
        blk_free(fifo[head].p);
        head = (head + 1) % (WINDOW + 1);
        len--;
        sum++;
    }
    return sum;
}

typedef struct node {
    struct node *left, *right;
} node_t;

static node_t *build(unsigned depth) {
    node_t *n = xmalloc(sizeof *n);
    if (depth == 0) {
        n->left = n->right = NULL;
    } else {
        n->left = build(depth - 1);
        n->right = build(depth - 1);
    }
    return n;
}

static uint64_t count(const node_t *n) {
    return 1 + (n->left ? count(n->left) : 0) + (n->right ? count(n->right) : 0);
}

static void drop(node_t *n) {
    if (n->left) drop(n->left);
    if (n->right) drop(n->right);
    blk_free(n);
}

static uint64_t trees(size_t trees, unsigned depth) {
    node_t *long_lived = build(depth - 2);
    uint64_t sum = 0;
    for (size_t i = 0; i < trees; i++) {
        if (i % 2 == 0) {
            node_t *t = build(depth);
            sum += count(t);
            drop(t);
        } else {
            for (int k = 0; k < 16; k++) {
                node_t *t = build(depth - 4);
                sum += count(t);
                drop(t);
            }
        }
    }
    sum += count(long_lived);
    drop(long_lived);
    return sum;
}

int main(void) {
    uint64_t sum = 0;
    sum = mix(sum, pairs(8000000));
    sum = mix(sum, window(8000000));
    sum = mix(sum, trees(60, 15));
    printf("small %016" PRIx64 "\n", sum);
    return 0;
}
