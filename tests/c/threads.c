/* Threads passing blocks to each other, and fork while they allocate. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define N 4
#define ROUNDS 2000
#define BATCH 64
static void *volatile slots[N][BATCH];
static pthread_mutex_t lock[N];
static volatile int stop = 0;

static void *worker(void *arg) {
    int me = (int)(long)arg;
    unsigned s = 12345u * (me + 1);
    for (int r = 0; r < ROUNDS && !stop; r++) {
        for (int i = 0; i < BATCH; i++) {
            s = s * 1103515245u + 12345u;
            size_t n = 8 + (s >> 8) % 2000;
            char *p = malloc(n);
            if (!p) { printf("malloc failed\n"); exit(2); }
            memset(p, me, n);
            int t = (s >> 4) % N; /* give it to thread t, which frees the previous one */
            pthread_mutex_lock(&lock[t]);
            void *old = slots[t][i];
            slots[t][i] = p;
            pthread_mutex_unlock(&lock[t]);
            free(old);
        }
    }
    return NULL;
}

int main(void) {
    pthread_t th[N];
    for (int i = 0; i < N; i++) pthread_mutex_init(&lock[i], NULL);
    for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, worker, (void *)(long)i);
    for (int k = 0; k < 5; k++) {
        usleep(2000);
        pid_t pid = fork();
        if (pid == 0) {
            /* child: only this thread exists; the heap must work */
            char *big = malloc(10 << 20);
            for (int i = 0; i < 1000; i++) { char *p = malloc(i + 1); memset(p, 7, i + 1); free(p); }
            big[0] = 1; big[(10 << 20) - 1] = 2;
            free(big);
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("child failed: %d\n", st); return 1; }
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int t = 0; t < N; t++) for (int i = 0; i < BATCH; i++) free(slots[t][i]);
    printf("ok\n");
    return 0;
}
