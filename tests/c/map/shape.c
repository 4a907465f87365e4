/* A heap of a known shape for `heapkeep map` (tests/tests/map.rs), in one
 * thread, quiet at exit:
 *   - LIVE_SMALL blocks of 176 bytes and LIVE_MID blocks of 720 bytes,
 *     kept live;
 *   - FREED blocks of 3000 bytes, allocated and then freed;
 *   - one huge block of 8 MiB kept live (written, so resident), and one of
 *     3 MiB freed (it waits in the huge cache).
 * Prints "done" and exits 0. With the argument "signal" it raises SIGUSR2
 * first (heapkeep's thread writes the snapshot) and waits until the file
 * HEAPKEEP_MAP_OUT names exists; with "call FILE" it writes a snapshot
 * itself (heapkeep_write_snapshot).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "heapkeep.h"

#define LIVE_SMALL 1000
#define LIVE_MID 300
#define FREED 500

/* Whether the snapshot HEAPKEEP_MAP_OUT names (%p: our pid) exists. */
static int snapshot_written(void) {
    const char *pat = getenv("HEAPKEEP_MAP_OUT");
    char path[4096];
    size_t n = 0;
    if (!pat)
        return 0;
    for (const char *c = pat; *c && n < sizeof path - 24; c++) {
        if (c[0] == '%' && c[1] == 'p') {
            n += snprintf(path + n, sizeof path - n, "%d", (int)getpid());
            c++;
        } else {
            path[n++] = *c;
        }
    }
    path[n] = 0;
    return access(path, F_OK) == 0;
}

static void *keep_small[LIVE_SMALL];
static void *keep_mid[LIVE_MID];
static void *gone[FREED];
void *keep_huge;

int main(int argc, char **argv) {
    for (int i = 0; i < LIVE_SMALL; i++) {
        keep_small[i] = malloc(176);
        memset(keep_small[i], 1, 176);
    }
    for (int i = 0; i < FREED; i++)
        gone[i] = malloc(3000);
    for (int i = 0; i < LIVE_MID; i++)
        keep_mid[i] = malloc(720);
    for (int i = 0; i < FREED; i++)
        free(gone[i]);
    keep_huge = malloc(8 << 20);
    memset(keep_huge, 2, 8 << 20);
    void *cached = malloc(3 << 20);
    memset(cached, 3, 3 << 20);
    free(cached);
    if (argc > 1 && strcmp(argv[1], "signal") == 0) {
        raise(SIGUSR2);
        /* Up to a minute: the snapshot thread may wait for a busy CPU. */
        for (int i = 0; i < 6000 && !snapshot_written(); i++)
            usleep(10000);
    }
    if (argc > 2 && strcmp(argv[1], "call") == 0 && !heapkeep_write_snapshot(argv[2]))
        return 1;
    puts("done");
    return 0;
}
