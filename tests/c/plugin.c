/* A shared library that allocates while it is loaded and unloaded: built
 * twice by the tests, once linked into awkward.c (its constructor runs while
 * the program is being loaded, before main) and once dlopen'ed/dlclose'd in
 * a loop. */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

static char *held;       /* allocated by the constructor, freed by the destructor */
static void *blocks[64];

__attribute__((constructor)) static void plugin_init(void) {
    held = malloc(1000);
    memset(held, 'p', 999);
    held[999] = 0;
    for (int i = 0; i < 64; i++) blocks[i] = malloc(16 << (i % 12));
}

__attribute__((destructor)) static void plugin_fini(void) {
    for (int i = 0; i < 64; i++) free(blocks[i]);
    if (strlen(held) != 999) abort();
    free(held);
}

/* Returns a malloc'd string the caller frees. */
char *plugin_greeting(int n) {
    char *s = malloc(64);
    snprintf(s, 64, "hello %d from %zu bytes", n, strlen(held) + 1);
    return s;
}
