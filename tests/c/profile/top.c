/* A program built to have known top sites for `heapkeep profile`
 * (tests/tests/profile.rs):
 * - big_site: 200 rounds x 1000 blocks of 1000 bytes, freed each round
 *   (most bytes allocated, most live at the peak: 1000 blocks);
 * - small_site: 200 x 100 blocks of 100 bytes, freed at once;
 * - leaky_site: 50 blocks of 4000 bytes never freed (the leak at exit).
 * Two threads run the rounds (half each), so samples come from both.
 * With the argument "fork", a child process also allocates and exits.
 * With the argument "large", only large_site runs: 400 blocks of 300 KiB
 * allocated and freed one at a time (about 123 MB), then 4 more leaked.
 * With the argument "lifetimes", only long_site and short_site run: 20
 * blocks of 1000 bytes that live 300 ms, 20 freed at once.
 * With the argument "remap", only remap_site runs: 8 huge blocks of 4 MiB,
 * each grown to 64 MiB by realloc (which moves most of them: the next
 * block is in the way), then all freed; stderr says how many moved.
 * With the argument "threads", only thread_site runs, in 16 threads at once
 * (each 100 rounds x 100 blocks of 1000 bytes: 160 MB in all), and while
 * they run the main thread forks a child that allocates 5 MB at child_site
 * and exits.
 * Every run prints "pid N" (its process id) to stderr. */
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *leaked[50];

__attribute__((noinline)) void *big_site(size_t n) {
    void *p = malloc(n);
    memset(p, 1, n);
    return p;
}

__attribute__((noinline)) void *small_site(size_t n) {
    void *p = malloc(n);
    memset(p, 2, n);
    return p;
}

__attribute__((noinline)) void *leaky_site(size_t n) {
    void *p = malloc(n);
    memset(p, 3, n);
    return p;
}

__attribute__((noinline)) void *large_site(size_t n) {
    void *p = malloc(n);
    memset(p, 4, 4096);
    return p;
}

__attribute__((noinline)) void *long_site(size_t n) {
    void *p = malloc(n);
    memset(p, 5, n);
    return p;
}

__attribute__((noinline)) void *short_site(size_t n) {
    void *p = malloc(n);
    memset(p, 6, n);
    return p;
}

static int lifetimes_only(void) {
    void *keep[20];
    for (int i = 0; i < 20; i++) keep[i] = long_site(1000);
    for (int i = 0; i < 20; i++) free(short_site(1000));
    usleep(300 * 1000);
    for (int i = 0; i < 20; i++) free(keep[i]);
    puts("done");
    return 0;
}

static int large_only(void) {
    for (int i = 0; i < 400; i++) free(large_site(300 << 10));
    for (int i = 0; i < 4; i++) leaked[i] = large_site(300 << 10);
    puts("done");
    return 0;
}

__attribute__((noinline)) void *remap_site(size_t n) {
    void *p = malloc(n);
    memset(p, 7, 4096);
    return p;
}

static int remap_only(void) {
    void *blocks[8];
    int moved = 0;
    for (int i = 0; i < 8; i++) blocks[i] = remap_site(4 << 20);
    for (int i = 0; i < 8; i++) {
        void *q = realloc(blocks[i], 64 << 20);
        if (!q) return 1;
        moved += q != blocks[i];
        memset(q, 8, 4096);
        blocks[i] = q;
    }
    for (int i = 0; i < 8; i++) free(blocks[i]);
    fprintf(stderr, "moved %d\n", moved);
    puts("done");
    return 0;
}

__attribute__((noinline)) void *fill_site(size_t n) {
    void *p = malloc(n);
    memset(p, 9, malloc_usable_size(p));
    return p;
}

__attribute__((noinline)) void *grow_site(void *p) {
    void *q = realloc(p, malloc_usable_size(p) * 2 + 1);
    if (q) memset(q, 10, malloc_usable_size(q));
    return q;
}

static int usable_only(void) {
    void *keep[64];
    for (int i = 0; i < 64; i++) keep[i] = fill_site(1 + 97 * (size_t)i);
    for (int i = 0; i < 64; i++) {
        keep[i] = grow_site(keep[i]);
        if (!keep[i]) return 1;
    }
    for (int i = 0; i < 32; i++) free(keep[i]);
    for (int i = 32; i < 64; i++) leaked[i - 32] = keep[i];
    puts("done");
    return 0;
}

__attribute__((noinline)) void *thread_site(size_t n) {
    void *p = malloc(n);
    memset(p, 11, n);
    return p;
}

__attribute__((noinline)) void *child_site(size_t n) {
    void *p = malloc(n);
    memset(p, 12, n);
    return p;
}

static volatile int started;

static void *thread_rounds(void *arg) {
    (void)arg;
    void *keep[100];
    __sync_fetch_and_add(&started, 1);
    for (int r = 0; r < 100; r++) {
        for (int i = 0; i < 100; i++) keep[i] = thread_site(1000);
        for (int i = 0; i < 100; i++) free(keep[i]);
    }
    return NULL;
}

static int threads_and_fork(void) {
    pthread_t t[16];
    for (int i = 0; i < 16; i++) pthread_create(&t[i], NULL, thread_rounds, NULL);
    while (started < 8) sched_yield();
    /* The others are allocating (and being sampled) as the fork happens. */
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < 1000; i++) free(child_site(5000));
        exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    for (int i = 0; i < 16; i++) pthread_join(t[i], NULL);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    puts("done");
    return 0;
}

static void *rounds(void *arg) {
    (void)arg;
    static __thread void *keep[1000];
    for (int r = 0; r < 100; r++) {
        for (int i = 0; i < 1000; i++) keep[i] = big_site(1000);
        for (int i = 0; i < 1000; i++) free(keep[i]);
        for (int i = 0; i < 100; i++) free(small_site(100));
    }
    return NULL;
}

int main(int argc, char **argv) {
    fprintf(stderr, "pid %d\n", (int)getpid());
    if (argc > 1 && strcmp(argv[1], "threads") == 0) return threads_and_fork();
    if (argc > 1 && strcmp(argv[1], "large") == 0) return large_only();
    if (argc > 1 && strcmp(argv[1], "lifetimes") == 0) return lifetimes_only();
    if (argc > 1 && strcmp(argv[1], "remap") == 0) return remap_only();
    if (argc > 1 && strcmp(argv[1], "usable") == 0) return usable_only();
    pthread_t t;
    pthread_create(&t, NULL, rounds, NULL);
    pthread_join(t, NULL);
    rounds(NULL);
    for (int i = 0; i < 50; i++) leaked[i] = leaky_site(4000);
    if (argc > 1 && strcmp(argv[1], "fork") == 0) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0; i < 1000; i++) free(big_site(5000));
            exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    }
    puts("done");
    return 0;
}
