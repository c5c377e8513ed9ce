/* The cheapest /proc collector there is, for `cargo xtask bench --compare`:
 * every interval it opens the stat file, reads it to the end, closes it and
 * prints one line (flushed, as a collector that emits each interval does).
 * Usage: bare-reader PATH INTERVAL_MS */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PATH INTERVAL_MS\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long interval_ns = atol(argv[2]) * 1000000L;
    static char buf[65536];
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        size_t len = 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n;
            while (len < sizeof buf && (n = read(fd, buf + len, sizeof buf - len)) > 0)
                len += (size_t)n;
            close(fd);
        }
        printf("synproxy bytes=%zu\n", len);
        fflush(stdout);
        next.tv_nsec += interval_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
