/* The sender of bench/bench_ebpf_filter.py: COUNT UDP datagrams of 32 bytes from SRC to
 * 127.0.0.1:PORT with sendmmsg(2) in batches of 256, and the wall-clock nanoseconds per
 * datagram (CLOCK_MONOTONIC). On loopback the receiving socket's filter runs inside the send
 * (the backlog softirq runs when the sender re-enables bottom halves), so the time per
 * datagram includes it; the benchmark takes differences between filters.
 *
 *   udpburst SRC PORT COUNT
 *
 * Written in C because a Python sendto loop costs about as much per datagram as the whole
 * kernel path, and its jitter hides a filter's hundred nanoseconds. Bounds: COUNT <= 10^8;
 * SRC must be in 127.0.0.0/8. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: udpburst SRC PORT COUNT\n");
        return 2;
    }
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    long count = atol(argv[3]);
    if (inet_pton(AF_INET, argv[1], &src.sin_addr) != 1 || (ntohl(src.sin_addr.s_addr) >> 24) != 127 ||
        count < 1 || count > 100000000) {
        fprintf(stderr, "udpburst: SRC must be in 127/8, 1 <= COUNT <= 10^8\n");
        return 2;
    }
    dst.sin_port = htons((unsigned short)atoi(argv[2]));
    dst.sin_addr.s_addr = htonl(0x7f000001);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0 || bind(s, (struct sockaddr *)&src, sizeof src) < 0) {
        perror("udpburst: socket/bind");
        return 1;
    }
    static char payload[32];
    struct iovec iov = {.iov_base = payload, .iov_len = sizeof payload};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_name = &dst;
        msgs[i].msg_hdr.msg_namelen = sizeof dst;
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    long sent = 0;
    while (sent < count) {
        int n = (int)(count - sent < BATCH ? count - sent : BATCH);
        int r = sendmmsg(s, msgs, (unsigned)n, 0);
        if (r < 0) {
            perror("udpburst: sendmmsg");
            return 1;
        }
        sent += r;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    printf("%.1f\n", ns / (double)count);
    close(s);
    return 0;
}
