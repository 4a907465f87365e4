/* Heap misuse for check mode (HEAPKEEP_CHECK=1), one case per run: the
 * case's name is argv[1]. Compile with -g -O0 -fno-inline.
 *
 * Every block comes from a named allocation site and every free, access or
 * call that goes wrong happens in a named site of its own, so a test can
 * look for the names in the report's "allocated", "freed" and "here"
 * sections:
 *   alloc_site_small (100 bytes), alloc_site_large (1 MiB),
 *   free_site (a correct first free), free_again_site (the second free),
 *   invalid_free_site, invalid_realloc_site, usable_size_site,
 *   uaf_write_site, uaf_read_site, uaf_realloc_site,
 *   overflow_write_site, overflow_read_site, underflow_write_site,
 *   churn_site (correct traffic between two frees), reuse_mappings (large
 *   blocks freed until some leave the quarantine, so that the next large
 *   blocks reuse their mappings), stack_overflow_recurse
 *   (on the main thread, and on a thread that never calls the heap).
 * A case that check mode catches prints nothing of its own; if the program
 * is still running after a misuse that should have stopped it, it says so
 * on stderr (on a line that does not start with "heapkeep:"). */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#define SMALL 100
#define LARGE ((size_t)1 << 20)
#define NOINLINE __attribute__((noinline))

static char global_buf[64];
/* Keeps the overflowed block of overflow-small-exit referenced until exit. */
void *volatile kept_block;
volatile unsigned char sink;
static volatile int never = -1;

NOINLINE static void *alloc_site_small(size_t n) { return malloc(n); }
NOINLINE static void *alloc_site_large(size_t n) { return malloc(n); }
NOINLINE static void free_site(void *p) { free(p); }
NOINLINE static void free_again_site(void *p) { free(p); }
NOINLINE static void invalid_free_site(void *p) { free(p); }
NOINLINE static void *invalid_realloc_site(void *p, size_t n) { return realloc(p, n); }
NOINLINE static size_t usable_size_site(void *p) { return malloc_usable_size(p); }
NOINLINE static void *uaf_realloc_site(void *p, size_t n) { return realloc(p, n); }

/* Frees 96 large blocks (more than the quarantine's 64 MiB), each filled
 * with 0xee first: the oldest leave the quarantine and their mappings are
 * kept for the next large blocks. A block calloc then takes from a kept
 * mapping must still read as zero. */
NOINLINE static void reuse_mappings(void) {
    for (int i = 0; i < 96; i++) {
        void *p = malloc(LARGE);
        memset(p, 0xee, LARGE);
        free(p);
    }
    unsigned char *z = calloc(1, LARGE);
    for (size_t i = 0; i < LARGE; i++) {
        if (z[i] != 0) {
            fprintf(stderr, "calloc in a reused mapping: byte %zu is %d\n", i, z[i]);
            exit(3);
        }
    }
    free(z);
}

/* The complement of byte i of p: writing it back changes the byte whatever
 * it held. Only for bytes that can be read (not on a protected page). */
static unsigned char flipped(void *p, size_t i) {
    return (unsigned char)~((volatile unsigned char *)p)[i];
}

/* A plain write (no read first: on a large block the page is protected). */
NOINLINE static void uaf_write_site(void *p, size_t i, unsigned char v) {
    ((volatile unsigned char *)p)[i] = v;
}

NOINLINE static void uaf_read_site(void *p, size_t i) {
    volatile unsigned char *b = p;
    sink = b[i];
}

NOINLINE static void overflow_write_site(void *p, size_t i, unsigned char v) {
    ((volatile unsigned char *)p)[i] = v;
}

/* Writes the byte `back` bytes before p (a plain write, no read first: on a
 * large block the address is on a protected page). */
NOINLINE static void underflow_write_site(void *p, size_t back, unsigned char v) {
    *((volatile unsigned char *)p - back) = v;
}

/* Reads p[from], p[from + 1], ... up to p[to - 1]: the first byte on the
 * guard page after the block faults. */
NOINLINE static void overflow_read_site(void *p, size_t from, size_t to) {
    volatile unsigned char *b = p;
    for (size_t i = from; i < to; i++) sink = b[i];
}

/* Correct traffic: blocks of the freed block's size and others, allocated
 * and freed, some freed in another order than allocated. */
NOINLINE static void churn_site(void) {
    void *keep[64];
    for (int round = 0; round < 8; round++) {
        for (int i = 0; i < 64; i++) {
            keep[i] = malloc(i % 2 ? SMALL : 16 + 8 * i);
            memset(keep[i], i, 16);
        }
        for (int i = 0; i < 64; i += 2) free(keep[i]);
        for (int i = 1; i < 64; i += 2) free(keep[i]);
    }
}

NOINLINE static int stack_overflow_recurse(int depth) {
    volatile char frame[1024];
    frame[0] = (char)depth;
    frame[sizeof frame - 1] = (char)depth;
    if (depth == never) return frame[0];
    return stack_overflow_recurse(depth + 1) + frame[sizeof frame - 1];
}

/* A thread that overflows its stack before it ever calls the heap. */
static void *overflow_thread(void *arg) {
    (void)arg;
    sink = (unsigned char)stack_overflow_recurse(0);
    return NULL;
}

static size_t page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

/* Runs `name`; returns 1 if it is a misuse only found at exit (the program
 * then returns from main normally), 0 for one that should have stopped it
 * already, -1 for an unknown name. */
static int run_case(const char *name) {
    if (!strcmp(name, "double-free-small")) {
        void *p = alloc_site_small(SMALL);
        free_site(p);
        free_again_site(p);
    } else if (!strcmp(name, "double-free-small-later")) {
        void *p = alloc_site_small(SMALL);
        free_site(p);
        churn_site();
        free_again_site(p);
    } else if (!strcmp(name, "double-free-large")) {
        void *p = alloc_site_large(LARGE);
        free_site(p);
        free_again_site(p);
    } else if (!strcmp(name, "invalid-free-interior")) {
        char *p = alloc_site_small(SMALL);
        invalid_free_site(p + 16);
    } else if (!strcmp(name, "invalid-free-stack")) {
        char local[64];
        memset(local, 1, sizeof local);
        invalid_free_site(local);
    } else if (!strcmp(name, "invalid-free-global")) {
        invalid_free_site(global_buf);
    } else if (!strcmp(name, "invalid-free-wild")) {
        invalid_free_site((void *)(uintptr_t)0x12345678);
    } else if (!strcmp(name, "invalid-realloc-stack")) {
        char local[64];
        memset(local, 1, sizeof local);
        sink = invalid_realloc_site(local, 200) != NULL;
    } else if (!strcmp(name, "invalid-usable-size")) {
        sink = (unsigned char)usable_size_site(global_buf);
    } else if (!strcmp(name, "uaf-write-small")) {
        void *p = alloc_site_small(SMALL);
        free_site(p);
        uaf_write_site(p, 50, flipped(p, 50));
        return 1; /* the freed block is verified at exit */
    } else if (!strcmp(name, "uaf-read-large")) {
        void *p = alloc_site_large(LARGE);
        free_site(p);
        uaf_read_site(p, 3 * page_size() + 5);
    } else if (!strcmp(name, "uaf-read-large-reused")) {
        reuse_mappings();
        void *p = alloc_site_large(LARGE);
        free_site(p);
        uaf_read_site(p, 3 * page_size() + 5);
    } else if (!strcmp(name, "uaf-write-large")) {
        void *p = alloc_site_large(LARGE);
        free_site(p);
        uaf_write_site(p, 3 * page_size() + 5, 1);
    } else if (!strcmp(name, "uaf-realloc")) {
        void *p = alloc_site_small(SMALL);
        free_site(p);
        sink = uaf_realloc_site(p, 200) != NULL;
    } else if (!strcmp(name, "overflow-small")) {
        void *p = alloc_site_small(SMALL);
        overflow_write_site(p, SMALL, flipped(p, SMALL)); /* p[100] */
        free_site(p);
    } else if (!strcmp(name, "overflow-small-exit")) {
        void *p = alloc_site_small(SMALL);
        overflow_write_site(p, SMALL, flipped(p, SMALL));
        kept_block = p; /* never freed, still referenced: found at exit */
        return 1;
    } else if (!strcmp(name, "underflow-small")) {
        void *p = alloc_site_small(SMALL);
        underflow_write_site(p, 1, flipped((char *)p - 1, 0)); /* p[-1] */
        free_site(p);
    } else if (!strcmp(name, "overflow-large-read")) {
        void *p = alloc_site_large(LARGE);
        /* From p[1 MiB] on, up to two pages past the end: whatever slack
         * the block's last page has, the next page is its guard. */
        overflow_read_site(p, LARGE, LARGE + 2 * page_size());
    } else if (!strcmp(name, "overflow-large-reused-read")) {
        reuse_mappings();
        void *p = alloc_site_large(LARGE);
        memset(p, 1, LARGE);
        overflow_read_site(p, LARGE, LARGE + 2 * page_size());
    } else if (!strcmp(name, "underflow-large")) {
        void *p = alloc_site_large(LARGE);
        /* The middle of the page before the page p starts on: the guard
         * page in front of the block. */
        uintptr_t first_page = (uintptr_t)p & ~(uintptr_t)(page_size() - 1);
        uintptr_t target = first_page - page_size() / 2;
        underflow_write_site(p, (uintptr_t)p - target, 1);
    } else if (!strcmp(name, "stack-overflow-thread")) {
        pthread_attr_t attr;
        pthread_t t;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, (size_t)1 << 20);
        if (pthread_create(&t, &attr, overflow_thread, NULL) == 0) pthread_join(t, NULL);
    } else if (!strcmp(name, "stack-overflow")) {
        /* Bounded stack (in case the limit is "unlimited"): 8 MiB. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_STACK, &rl) == 0 &&
            (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > ((rlim_t)8 << 20))) {
            rl.rlim_cur = (rlim_t)8 << 20;
            setrlimit(RLIMIT_STACK, &rl);
        }
        sink = (unsigned char)stack_overflow_recurse(0);
    } else {
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE\n", argv[0]);
        return 2;
    }
    int r = run_case(argv[1]);
    if (r < 0) {
        fprintf(stderr, "misuse: unknown case %s\n", argv[1]);
        return 2;
    }
    if (r == 0) fprintf(stderr, "misuse: %s: still running after the misuse\n", argv[1]);
    return 0;
}
