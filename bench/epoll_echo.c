/*
 * bench/epoll_echo.c: the C floor for bench/compare's echo scenarios.
 *
 * One thread, one epoll instance, edge-triggered. Each connection is
 * registered once for EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET and never
 * re-armed. Bytes are read into one shared 64 KiB buffer and written
 * straight back; only what the kernel does not take is kept, in a
 * per-connection buffer of at most 64 KiB allocated on first need. While
 * bytes are kept, the connection reads only into that buffer's free room,
 * and stops reading when it is full until EPOLLOUT drains it
 * (backpressure). A read shorter than asked ends the turn for that
 * connection without the extra recv() that would only say EAGAIN, unless
 * the peer half-closed. EMFILE pauses accepting until a connection closes.
 *
 * The invariant it keeps: no connection ever holds more than 64 KiB, and an
 * idle connection costs one small struct.
 *
 * Usage: epoll_echo [PORT [BIND_ADDR]]   (defaults: 0 and 127.0.0.1)
 * Prints "epoll_echo listening on IP:PORT" on stderr when ready; SIGTERM
 * or SIGINT ends it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define SCRATCH (64 * 1024)
#define PENDING_MAX (64 * 1024)
#define EVENTS 1024

struct conn {
    int fd;
    unsigned pending_len;  /* bytes kept for the peer */
    unsigned pending_off;  /* how many of them were written already */
    unsigned char *pending; /* PENDING_MAX bytes once needed, else NULL */
};

static unsigned char scratch[SCRATCH];
static volatile sig_atomic_t stop;
static int listen_paused;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void conn_close(int ep, struct conn *c, int listener) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
    if (listen_paused) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev) == 0) listen_paused = 0;
    }
}

/* Writes what is kept; returns -1 on error, else the bytes still kept. */
static long flush_pending(struct conn *c) {
    while (c->pending_off < c->pending_len) {
        ssize_t n = send(c->fd, c->pending + c->pending_off,
                         c->pending_len - c->pending_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        c->pending_off += (unsigned)n;
    }
    if (c->pending_off == c->pending_len) c->pending_len = c->pending_off = 0;
    return (long)(c->pending_len - c->pending_off);
}

/* Keeps bytes the kernel refused; the caller has checked the room. */
static int keep(struct conn *c, const unsigned char *bytes, size_t n) {
    if (!c->pending && !(c->pending = malloc(PENDING_MAX))) return -1;
    if (c->pending_off > 0) {
        memmove(c->pending, c->pending + c->pending_off, c->pending_len - c->pending_off);
        c->pending_len -= c->pending_off;
        c->pending_off = 0;
    }
    memcpy(c->pending + c->pending_len, bytes, n);
    c->pending_len += (unsigned)n;
    return 0;
}

/* Reads and echoes until EAGAIN, a short read, or no room; -1 closes. */
static int on_readable(struct conn *c, int rdhup) {
    for (;;) {
        size_t room = PENDING_MAX - (c->pending_len - c->pending_off);
        if (room == 0) return 0; /* backpressure: wait for EPOLLOUT */
        size_t want = room < SCRATCH ? room : SCRATCH;
        ssize_t n = recv(c->fd, scratch, want, 0);
        if (n == 0) return -1;
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? 0 : -1;
        }
        size_t off = 0;
        if (c->pending_len == c->pending_off) {
            ssize_t w = send(c->fd, scratch, (size_t)n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR) return -1;
            if (w > 0) off = (size_t)w;
        }
        if (off < (size_t)n && keep(c, scratch + off, (size_t)n - off) < 0) return -1;
        if ((size_t)n < want && !rdhup) return 0; /* short read: the socket is empty */
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    const char *bind_ip = argc > 2 ? argv[2] : "127.0.0.1";
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, bind_ip, &addr.sin_addr) != 1) {
        fprintf(stderr, "epoll_echo: bad address %s\n", bind_ip);
        return 2;
    }
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 4096) < 0) {
        perror("epoll_echo: bind/listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(listener, (struct sockaddr *)&addr, &len);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &addr.sin_addr, ip, sizeof ip);
    fprintf(stderr, "epoll_echo listening on %s:%d\n", ip, ntohs(addr.sin_port));

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, events, EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_echo: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) { /* the listener: accept everything waiting */
                for (;;) {
                    int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) {
                        if (errno == EMFILE || errno == ENFILE) {
                            epoll_ctl(ep, EPOLL_CTL_DEL, listener, NULL);
                            listen_paused = 1;
                        }
                        break;
                    }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) { close(fd); continue; }
                    nc->fd = fd;
                    struct epoll_event cev = {
                        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) { close(fd); free(nc); }
                }
                continue;
            }
            unsigned flags = events[i].events;
            if (flags & EPOLLERR) { conn_close(ep, c, listener); continue; }
            if ((flags & EPOLLOUT) && c->pending_len > c->pending_off) {
                long left = flush_pending(c);
                if (left < 0) { conn_close(ep, c, listener); continue; }
                /* Room again: read what waited behind the backpressure. */
                if (left < PENDING_MAX) flags |= EPOLLIN;
            }
            if (flags & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
                if (on_readable(c, (flags & (EPOLLRDHUP | EPOLLHUP)) != 0) < 0) {
                    conn_close(ep, c, listener);
                }
            }
        }
    }
    return 0;
}
