/* The denied source of bench/bench_flood.py: one process making unpaced non-blocking TCP
 * connects from SRC to 127.0.0.1:PORT, each abandoned (closed with SO_LINGER 0, so an
 * established one is reset) ABANDON_MS after it was started.
 *
 *   flood PORT SRC START STOP MAX_ATTEMPTS ABANDON_MS WINDOW
 *
 * START and STOP are CLOCK_MONOTONIC seconds (the same clock as Python's time.monotonic()),
 * so the flood can be lined up with the allowed clients of another process. At most WINDOW
 * connects are in flight: when the window is full the flood waits for the oldest one's
 * deadline instead of abandoning it early, so every connect lives its full ABANDON_MS.
 * Prints one JSON line: attempts, attempts per second of [START, STOP], connect errors by
 * kind, how often the window was full, and the CPU it used (user + system, which on loopback
 * includes the kernel's receive path of its packets) as a share of one CPU.
 *
 * Written in C because a Python loop reaches only ~10-40k connects/s on a shared 2-core
 * machine, too slow to overflow the accept queue of a Python accept-then-close server, which
 * is the effect the benchmark is about. Bounds: STOP - START <= 120 s, MAX_ATTEMPTS, WINDOW
 * <= 65536; SRC and the destination must be in 127.0.0.0/8. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
    double d = t - mono();
    if (d <= 0) return;
    struct timespec ts = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
    nanosleep(&ts, NULL);
}

static int loopback(const char *ip, struct in_addr *out) {
    return inet_pton(AF_INET, ip, out) == 1 && (ntohl(out->s_addr) >> 24) == 127;
}

struct counts { long attempts, eaddrnotavail, emfile, other, window_full; };

static void abandon(int fd) {
    close(fd); /* SO_LINGER {1, 0} was set at creation: an established connect is reset */
}

static int one_connect(const struct sockaddr_in *src, const struct sockaddr_in *dst, struct counts *c) {
    static const struct linger lg = {1, 0};
    int one = 1, s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0) {
        if (errno == EMFILE || errno == ENFILE) {
            c->emfile++;
            return -2;
        }
        c->other++;
        return -1;
    }
    setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(s, (const struct sockaddr *)src, sizeof *src) == 0
        && (connect(s, (const struct sockaddr *)dst, sizeof *dst) == 0 || errno == EINPROGRESS)) {
        c->attempts++;
        return s;
    }
    int resource = errno == EADDRNOTAVAIL || errno == EAGAIN;
    if (resource) c->eaddrnotavail++; else c->other++;
    close(s);
    return resource ? -2 : -1;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: flood PORT SRC START STOP MAX_ATTEMPTS ABANDON_MS WINDOW\n");
        return 2;
    }
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    int port = atoi(argv[1]);
    double start = atof(argv[3]), stop = atof(argv[4]), abandon_s = atof(argv[6]) / 1000.0;
    long max_attempts = atol(argv[5]);
    int window = atoi(argv[7]);
    if (port <= 0 || port > 65535 || !loopback(argv[2], &src.sin_addr) || !loopback("127.0.0.1", &dst.sin_addr)
        || stop <= start || stop - start > 120.0 || max_attempts <= 0 || abandon_s <= 0 || abandon_s > 1.0
        || window <= 0 || window > 65536) {
        fprintf(stderr, "flood: bad arguments (loopback only, at most 120 s, window 1..65536)\n");
        return 2;
    }
    dst.sin_port = htons((unsigned short)port);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)window + 64) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)window + 64 ? rl.rlim_max : (rlim_t)window + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int *fds = calloc((size_t)window, sizeof *fds);
    double *deadline = calloc((size_t)window, sizeof *deadline);
    if (!fds || !deadline) return 1;
    int head = 0, n = 0;
    struct counts c = {0};
    sleep_until(start);
    double now = mono();
    while (now < stop && c.attempts < max_attempts) {
        while (n > 0 && deadline[head] <= now) { /* abandon the expired, oldest first */
            abandon(fds[head]);
            head = (head + 1) % window;
            n--;
        }
        if (n == window) { /* full: wait for the oldest one's deadline, never abandon early */
            c.window_full++;
            sleep_until(deadline[head] < stop ? deadline[head] : stop);
        } else {
            int s = one_connect(&src, &dst, &c);
            if (s >= 0) {
                int tail = (head + n) % window;
                fds[tail] = s;
                deadline[tail] = mono() + abandon_s;
                n++;
            } else if (s == -2 && n > 0) {
                sleep_until(deadline[head] < stop ? deadline[head] : stop); /* out of fds or ports */
            }
        }
        now = mono();
    }
    double end = mono(), span = (end < stop ? end : stop) - start;
    while (n > 0) {
        abandon(fds[head]);
        head = (head + 1) % window;
        n--;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    printf("{\"attempts\": %ld, \"rate\": %.1f, \"eaddrnotavail\": %ld, \"emfile\": %ld, \"other_errors\": %ld,"
           " \"window_full\": %ld, \"window\": %d, \"cpu_share\": %.3f}\n",
           c.attempts, span > 0 ? c.attempts / span : 0.0, c.eaddrnotavail, c.emfile, c.other, c.window_full, window,
           span > 0 ? cpu / span : 0.0);
    free(fds);
    free(deadline);
    return 0;
}
