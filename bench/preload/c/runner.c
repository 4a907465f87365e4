/* hk-runner: runs one program and reports its wall time and peak RSS.
 *
 *   hk-runner RESULT_FILE PRELOAD PROGRAM [ARGS...]
 *
 * Forks and executes PROGRAM with LD_PRELOAD=PRELOAD (or without
 * LD_PRELOAD when PRELOAD is "-"), waits for it with wait4 and writes
 * "status S signal G maxrss_kib K seconds T" to RESULT_FILE.
 *
 * Why a separate process: the kernel starts a child's ru_maxrss at the peak
 * RSS of the address space it had before exec, i.e. its parent's. Spawned
 * from the (much bigger) harness, small programs would all report the
 * harness's size; spawned from this tiny runner the floor is a few hundred
 * KiB. The runner itself never runs under LD_PRELOAD. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: hk-runner RESULT_FILE PRELOAD|- PROGRAM [ARGS...]\n");
        return 2;
    }
    const char *result = argv[1];
    const char *preload = argv[2];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("hk-runner: fork");
        return 2;
    }
    if (pid == 0) {
        if (strcmp(preload, "-") == 0)
            unsetenv("LD_PRELOAD");
        else
            setenv("LD_PRELOAD", preload, 1);
        execv(argv[3], argv + 3);
        fprintf(stderr, "hk-runner: cannot execute %s: %s\n", argv[3], strerror(errno));
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("hk-runner: wait4");
            return 2;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    FILE *f = fopen(result, "w");
    if (!f) {
        perror("hk-runner: result file");
        return 2;
    }
    fprintf(f, "status %d signal %d maxrss_kib %ld seconds %.9f\n",
            WIFEXITED(status) ? WEXITSTATUS(status) : -1,
            WIFSIGNALED(status) ? WTERMSIG(status) : 0, (long)ru.ru_maxrss, seconds);
    if (fclose(f) != 0) {
        perror("hk-runner: result file");
        return 2;
    }
    return 0;
}
