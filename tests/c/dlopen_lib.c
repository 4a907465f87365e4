/* The heapkeep library loaded late, with dlopen, by a program that runs on
 * glibc's malloc: its thread-local heap slot must still work (the library
 * asks for static TLS, which the loader gives from its reserve), in the main
 * thread and in threads started before and after the dlopen. The program
 * calls heapkeep's functions through dlsym and checks blocks from every
 * thread; it also frees blocks across threads. Prints "ok". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c); exit(1); } } while (0)

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);
typedef size_t (*usable_fn)(void *);

static malloc_fn hk_malloc;
static free_fn hk_free;
static usable_fn hk_usable;
static pthread_barrier_t loaded;

#define THREADS 4
#define BLOCKS 2000
static void *handed[THREADS][BLOCKS];

static void *work(void *arg) {
    int id = (int)(intptr_t)arg;
    pthread_barrier_wait(&loaded);
    for (int round = 0; round < 20; round++) {
        void *mine[BLOCKS];
        for (int i = 0; i < BLOCKS; i++) {
            size_t n = (size_t)(i % 700) + 1 + (size_t)id;
            mine[i] = hk_malloc(n);
            CHECK(mine[i] != NULL);
            CHECK(((uintptr_t)mine[i] & 15) == 0);
            CHECK(hk_usable(mine[i]) >= n);
            memset(mine[i], id + 1, n);
        }
        for (int i = 0; i < BLOCKS; i++) {
            size_t n = (size_t)(i % 700) + 1 + (size_t)id;
            CHECK(((unsigned char *)mine[i])[n - 1] == id + 1);
            hk_free(mine[i]);
        }
    }
    /* Blocks for another thread to free. */
    for (int i = 0; i < BLOCKS; i++) {
        handed[id][i] = hk_malloc(64);
        CHECK(handed[id][i] != NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    pthread_t t[THREADS];
    CHECK(pthread_barrier_init(&loaded, NULL, THREADS + 1) == 0);
    /* Half the threads exist before the library is loaded. */
    for (int i = 0; i < THREADS / 2; i++)
        CHECK(pthread_create(&t[i], NULL, work, (void *)(intptr_t)i) == 0);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    hk_malloc = (malloc_fn)dlsym(lib, "malloc");
    hk_free = (free_fn)dlsym(lib, "free");
    hk_usable = (usable_fn)dlsym(lib, "malloc_usable_size");
    CHECK(hk_malloc && hk_free && hk_usable);
    CHECK((void *)hk_malloc != (void *)malloc); /* really the library's */
    for (int i = THREADS / 2; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, work, (void *)(intptr_t)i) == 0);
    void *p = hk_malloc(100);
    CHECK(p != NULL);
    pthread_barrier_wait(&loaded);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    /* The main thread frees every thread's blocks (they have exited). */
    for (int i = 0; i < THREADS; i++)
        for (int j = 0; j < BLOCKS; j++) hk_free(handed[i][j]);
    hk_free(p);
    puts("ok");
    return 0;
}
