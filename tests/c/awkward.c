/* Allocation in the awkward places of a process, under the preload library:
 * while libraries load (the linked plugin's constructor, before main),
 * dlopen/dlclose of a library that allocates, atfork handlers, thread-specific
 * data destructors, atexit handlers and destructors after main, and calls
 * that allocate inside libc (dlsym, dlerror, stdio, pthread_key_create).
 * Prints "ok" when all went well; the test also checks the exit status. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

char *plugin_greeting(int n); /* from the linked plugin */

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c); exit(1); } } while (0)

static void churn(int n) {
    void *p[32];
    for (int i = 0; i < 32; i++) { p[i] = malloc((size_t)(n + i) * 24); CHECK(p[i]); memset(p[i], i, (size_t)(n + i) * 24); }
    for (int i = 0; i < 32; i++) free(p[i]);
}

static void fork_prepare(void) { churn(1); }
static void fork_parent(void) { churn(2); }
static void fork_child(void) { churn(3); }

static pthread_key_t key;
static void key_destructor(void *v) {
    /* Runs at thread exit, after the thread's heap may be gone. */
    free(v);
    churn(4);
    void *again = malloc(100);
    CHECK(again);
    free(again);
}

static void *thread_main(void *arg) {
    (void)arg;
    CHECK(pthread_setspecific(key, malloc(300)) == 0);
    churn(5);
    return NULL;
}

static char *after_main_block;
static void at_exit_handler(void) {
    churn(6);
    free(after_main_block);
    after_main_block = malloc(4096);
    CHECK(after_main_block);
}

__attribute__((destructor)) static void last_words(void) {
    free(after_main_block);
    churn(7);
    char *s = strdup("destructor after main");
    CHECK(s && strlen(s) == 21);
    free(s);
}

int main(int argc, char **argv) {
    CHECK(argc == 2); /* argv[1]: path of the plugin to dlopen */

    /* The linked plugin's constructor allocated before main. */
    char *g = plugin_greeting(1);
    CHECK(strcmp(g, "hello 1 from 1000 bytes") == 0);
    free(g);

    /* dlopen/dlclose of a library that allocates, many times. */
    for (int i = 0; i < 50; i++) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        CHECK(h);
        char *(*greet)(int) = (char *(*)(int))dlsym(h, "plugin_greeting");
        CHECK(greet);
        char *s = greet(i);
        CHECK(strncmp(s, "hello ", 6) == 0);
        free(s);
        CHECK(dlclose(h) == 0);
    }
    /* dlerror allocates its message; dlsym with RTLD_NEXT recurses into libc. */
    CHECK(dlopen("/nonexistent/libnothing.so", RTLD_NOW) == NULL);
    CHECK(dlerror() != NULL);
    CHECK(dlsym(RTLD_NEXT, "malloc") != NULL);

    /* stdio buffers come from malloc. */
    FILE *f = tmpfile();
    CHECK(f);
    for (int i = 0; i < 10000; i++) fprintf(f, "%d %s\n", i, "line");
    rewind(f);
    int n = 0, x;
    char w[8];
    while (fscanf(f, "%d %7s", &x, w) == 2) n++;
    CHECK(n == 10000);
    fclose(f);

    /* Thread-specific data destructors that free and allocate. */
    CHECK(pthread_key_create(&key, key_destructor) == 0);
    for (int round = 0; round < 20; round++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, thread_main, NULL) == 0);
        for (int i = 0; i < 4; i++) CHECK(pthread_join(t[i], NULL) == 0);
    }

    /* atfork handlers that allocate, in parent and child. */
    CHECK(pthread_atfork(fork_prepare, fork_parent, fork_child) == 0);
    for (int i = 0; i < 5; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            churn(8);
            _exit(0);
        }
        int st;
        CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }

    /* Allocation after main returns: atexit handler, then destructors. */
    after_main_block = malloc(10);
    CHECK(atexit(at_exit_handler) == 0);
    printf("ok\n");
    return 0;
}
