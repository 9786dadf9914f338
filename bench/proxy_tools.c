/* Load tools for bench/bench_proxy.py, in C so that the measuring side is never the
 * bottleneck (a Python client tops out near the rates being measured).
 *
 *   proxy_tools echo  PORT                      epoll echo server on 127.0.0.1:PORT (0: any);
 *                                               prints the port, serves until killed
 *   proxy_tools short PORT SECONDS THREADS SRC  THREADS loops of connect / 64-byte echo /
 *                                               close from SRC; prints "count fail p50 p99 elapsed"
 *                                               (us; elapsed: seconds from the start to
 *                                               the last connection's end)
 *   proxy_tools tcpd-cat                        exec tcpd as an inetd would for /bin/cat
 *   proxy_tools flood PORT SECONDS SRC [RATE]   non-blocking connects from SRC, each abandoned
 *                                               (RST) after 20 ms, at most 4096 in flight;
 *                                               RATE connects/s (default: unpaced)
 * Every loop is bounded by SECONDS. Traffic goes to 127.0.0.1 only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in addr_of(const char *ip, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static int echo_server(int port) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = addr_of("127.0.0.1", port);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("listen"); return 1; }
    socklen_t len = sizeof a;
    getsockname(ls, (struct sockaddr *)&a, &len);
    printf("%d\n", ntohs(a.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) {
                if (write(fd, buf, r) < 0) { /* a client gone: closed on its next event */ }
            } else if (r == 0 || errno != EAGAIN) {
                close(fd);
            }
        }
    }
}

struct job { int port; double until; const char *src; long count, fail; double *lat; long cap; };

static void *short_loop(void *arg) {
    struct job *j = arg;
    struct sockaddr_in dst = addr_of("127.0.0.1", j->port), src = addr_of(j->src, 0);
    char msg[64], back[64];
    memset(msg, 'x', sizeof msg);
    int one = 1;
    struct timeval tv = {.tv_sec = 2};
    while (now() < j->until) {
        double t0 = now();
        int s = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one); /* port chosen at connect: 4-tuple unique */
        int ok = bind(s, (struct sockaddr *)&src, sizeof src) == 0 &&
                 connect(s, (struct sockaddr *)&dst, sizeof dst) == 0 && write(s, msg, 64) == 64;
        size_t got = 0;
        while (ok && got < 64) {
            ssize_t r = read(s, back + got, 64 - got);
            if (r <= 0) ok = 0; else got += r;
        }
        close(s);
        if (!ok) { j->fail++; continue; }
        if (j->count < j->cap) j->lat[j->count] = (now() - t0) * 1e6;
        j->count++;
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int short_clients(int port, double secs, int threads, const char *src) {
    pthread_t t[64];
    struct job jobs[64];
    double start = now(), until = start + secs;
    if (threads > 64) threads = 64;
    for (int i = 0; i < threads; i++) {
        jobs[i] = (struct job){port, until, src, 0, 0, malloc(sizeof(double) * 400000), 400000};
        pthread_create(&t[i], NULL, short_loop, &jobs[i]);
    }
    long count = 0, fail = 0, n = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        count += jobs[i].count;
        fail += jobs[i].fail;
    }
    double *all = malloc(sizeof(double) * (count + 1));
    for (int i = 0; i < threads; i++)
        for (long k = 0; k < jobs[i].count && k < jobs[i].cap; k++) all[n++] = jobs[i].lat[k];
    qsort(all, n, sizeof(double), cmp);
    double p50 = n ? all[n / 2] : 0, p99 = n ? all[(long)(n * 0.99)] : 0;
    printf("%ld %ld %.1f %.1f %.6f\n", count, fail, p50, p99, now() - start); /* the last loop ends after until */
    return 0;
}

static int flood(int port, double secs, const char *srcip, double rate) {
    struct sockaddr_in dst = addr_of("127.0.0.1", port), src = addr_of(srcip, 0);
    enum { CAP = 4096 };
    int fds[CAP];
    double born[CAP];
    int head = 0, n = 0;
    long made = 0;
    struct linger lg = {1, 0};
    double until = now() + secs, start = now();
    while (now() < until) {
        if (rate > 0 && made >= (now() - start) * rate) { /* paced: at most `rate` connects/s */
            usleep(200);
            continue;
        }
        while (n > 0 && (n == CAP || now() - born[head] > 0.020)) {
            setsockopt(fds[head], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(fds[head]);
            head = (head + 1) % CAP;
            n--;
        }
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
        if (s < 0) { usleep(1000); continue; }
        setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&src, sizeof src)) { close(s); usleep(1000); continue; }
        connect(s, (struct sockaddr *)&dst, sizeof dst);
        int tail = (head + n) % CAP;
        fds[tail] = s;
        born[tail] = now();
        n++;
        made++;
    }
    while (n-- > 0) { close(fds[head]); head = (head + 1) % CAP; }
    printf("%ld\n", made);
    return 0;
}

int main(int argc, char **argv) {
    /* inetd shim: run tcpd with argv[0] = /bin/cat, the way an inetd.conf line does
     * (xinetd's NAMEINARGS crashed its child on this machine) */
    if (argc >= 2 && !strcmp(argv[1], "tcpd-cat")) {
        char *args[] = {"/bin/cat", NULL};
        execv("/usr/sbin/tcpd", args);
        return 127;
    }
    if (argc >= 3 && !strcmp(argv[1], "echo")) return echo_server(atoi(argv[2]));
    if (argc >= 6 && !strcmp(argv[1], "short")) return short_clients(atoi(argv[2]), atof(argv[3]), atoi(argv[4]), argv[5]);
    if (argc >= 5 && !strcmp(argv[1], "flood")) return flood(atoi(argv[2]), atof(argv[3]), argv[4], argc >= 6 ? atof(argv[5]) : 0);
    fprintf(stderr, "usage: proxy_tools echo PORT | short PORT SECONDS THREADS SRC | flood PORT SECONDS SRC [RATE]\n");
    return 2;
}
