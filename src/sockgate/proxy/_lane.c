/* sockgate.proxy._lane: the proxy's per-connection path (accept, connect, relay) in C.
 *
 * Why hand-written C. With one worker the proxy's process is the short-connection path's
 * bottleneck, and what it spends over haproxy is the Python interpreter on that path
 * (docs/benchmarks.md, issue 16: ~170,000-200,000 user-space instructions per connection
 * against haproxy's ~22,000-25,000, with fewer system calls than haproxy). Every Python-level
 * lever was tried; what is left is taking the per-connection path out of the interpreter. No
 * library gives an epoll relay that a Python program can drive per connection (uvloop was
 * measured slower than the proxy's own loop), so this module is that relay, kept small.
 *
 * Python stays the sole authority on decisions: for every accepted client this module calls
 * ONE Python callback, admit(fd, addr), whose answer says relay it (a token, kept while the
 * connection lives), refuse it (False: reset and close here) or "Python took the descriptor"
 * (None). When a connection ends, finished(token, how, up, down) is called once. The one
 * exception is a decision Python made before and handed over: a client from an IPv4 source in
 * its service's Book (Python's memo of admissions that only the address decided) is admitted,
 * counted and logged here without either call ("the remembered path" below): the interpreter was
 * what a single-process proxy spent over haproxy on a short connection (docs/benchmarks.md,
 * "Issue 16: the remembered path in C").
 *
 * A Lane works on the epoll set of the proxy's loop (proxy/loop.py): poll() waits on it,
 * handles every event of a descriptor the lane owns (listeners, relay sockets, connecting
 * backend sockets) and returns the others as (fd, events) for Python to dispatch. Relay
 * sockets are registered once, edge-triggered; the kernel removes them when they are closed.
 * Every registration carries a generation in the upper half of its epoll data, so an event
 * queued for a closed descriptor whose number was reused in the same batch is recognised.
 *
 * The relay is a port of proxy/relay.py's _Pump/Relay (read its module docstring): copy first
 * through one shared scratch buffer, splice after a read that filled it, edge-triggered
 * reading rules, backpressure, half-close, resets propagated, urgent data in line, a burst
 * bound with continuations run at the next poll. The Python relay is the oracle the tests
 * compare this one with (tests/kernel/test_relay_both.py).
 *
 * Memory safety: every address is read within the length the kernel returned, clamped to the
 * buffer; every descriptor the lane owns is closed on exactly one path (conn_close); a
 * connection's memory is freed only when no C frame can still hold it (the graveyard, emptied
 * when the outermost entry into the lane returns). The GIL is held except around epoll_wait.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef F_SETPIPE_SZ
#define F_SETPIPE_SZ 1031
#endif
#ifndef SIOCATMARK
#define SIOCATMARK 0x8905
#endif

#define COPY_SIZE 65536
#define BURST 16
#define ACCEPT_BURST 64
#define MAX_EVENTS 256
#define DEFAULT_SLOTS 16
#define WATCH (EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET)
#define HANGUP (EPOLLRDHUP | EPOLLHUP | EPOLLERR)
#define INPUT (EPOLLIN | EPOLLPRI | HANGUP)
#define OUTPUT (EPOLLOUT | EPOLLHUP | EPOLLERR)

enum { S_FREE, S_LISTENER, S_CLIENT, S_BACKEND };
enum { R_AGAIN = -1, R_ERROR = -2 };

struct Conn;

typedef struct Pump {
    struct Conn *conn;
    int sfd, dfd;
    int pr, pw, slots; /* the pipe (splice), pr < 0: none */
    size_t pending, off;
    char *own; /* copy: unsent bytes kept here; NULL: they are in the scratch buffer */
    uint64_t bytes;
    unsigned readable : 1, hangup : 1, blocked : 1, queued : 1, eof : 1, done : 1, urgent : 1, plain_end : 1,
        clean_end : 1, splice : 1, may_splice : 1, inl : 1, tcp : 1, bulk : 1;
    struct Pump *qnext, *qprev; /* the continuation queue */
} Pump;

typedef struct Conn {
    struct Conn *next, *prev; /* live connections, or the graveyard */
    int cfd, bfd;
    uint32_t cgen, bgen;
    unsigned connecting : 1, closed : 1, nonblock : 1, client_inline : 1, client_tcp : 1;
    int64_t started, last; /* CLOCK_MONOTONIC ns */
    PyObject *token, *finished;
    struct Book *book; /* admitted from its memo (token: the memo's entry), else NULL */
    PyObject *key, *label; /* with a book: the source's text and "a.b.c.d:port" */
    Pump up, down;
} Conn;

typedef struct Listener {
    int fd;
    uint32_t gen;
    int busy, dead;
    int client_inline;
    int family;
    socklen_t alen;
    struct sockaddr_storage addr; /* the backend */
    PyObject *admit, *failed, *finished;
    struct Book *book; /* NULL: every client goes to admit */
} Listener;

/* The remembered admissions of one proxied service (service.Runner), replayed here without a
 * call into Python: see "The remembered path" below. */
typedef struct Book {
    PyObject_HEAD
    PyObject *memo;       /* dict: IPv4 text -> the records' parts (book_admit), filled by Python */
    PyObject *conns;      /* the runner's connections (dict) and name lookups (set): counted */
    PyObject *tasks;
    PyObject *per_source; /* dict: source text -> open connections, shared with the runner */
    PyObject *add;        /* Log.add_line(t, line) */
    PyObject *ending;     /* ending(how, failed_connect) -> the end= value of a close record */
    long max_conns, max_per_source;
    PyObject *closed;     /* ending("closed", False), once known */
    long open;            /* connections admitted here and not closed yet */
    int64_t stamp_ms;
    char stamp[40];
} Book;

typedef struct {
    uint32_t gen;
    uint8_t kind;
    void *p;
} Slot;

typedef struct {
    int r, w, slots;
} Pipe;

typedef struct {
    PyObject_HEAD
    int epfd;
    PyObject *report;
    Slot *slots;
    int nslots;
    uint32_t gen;
    Conn live;      /* list heads (sentinels) */
    Conn grave;
    Py_ssize_t count;
    Pump queue;     /* sentinel */
    int depth;
    char *scratch;
    /* the pipe pool (relay.PipePool) */
    int splice;
    char cc[16]; /* a bulk loopback leg's congestion control (pacing.py); "": keep */
    int pipe_size, keep, big, in_use, nidle;
    Pipe *idle;
    int closed;
    PyObject *lines;     /* records written by books, in order, not yet handed to lines_add */
    PyObject *lines_add; /* the Log.add_line they go to (book_write) */
} Lane;

static int check_open(Lane *L);
static PyTypeObject BookType;
static void lane_flush(Lane *L);
static void book_closed(Lane *L, Conn *c, const char *how, int failed_connect);
static void book_release(Conn *c);

/* -- small helpers ------------------------------------------------------------------------ */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void set_inline(int fd) {
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof one); /* failing: its next read says */
}

static void reset_close(int fd) {
    struct linger l = {1, 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

static int is_reset(int err) {
    return err == ECONNRESET || err == EPIPE || err == ETIMEDOUT || err == EHOSTUNREACH || err == ENETUNREACH ||
           err == ENOTCONN;
}

static void report(Lane *L, const char *what) {
    /* A callback raised: hand the exception to Python's report(message, exception). */
    lane_flush(L); /* (a call into Python) */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value == NULL) {
        value = Py_None;
        Py_INCREF(value);
    }
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *r = L->report != NULL ? PyObject_CallFunction(L->report, "sO", what, value) : NULL;
    if (r == NULL) {
        if (PyErr_Occurred())
            PyErr_WriteUnraisable(L->report);
    } else {
        Py_DECREF(r);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* -- the descriptor table -------------------------------------------------------------------- */

static Slot *slot_of(Lane *L, int fd) {
    return fd >= 0 && fd < L->nslots ? &L->slots[fd] : NULL;
}

static void listener_free(Listener *l);

/* The slot of descriptor fd (the table grown to hold it), now holding p; NULL with errno set:
 * EBADF for a number that is no open descriptor (checked only when the table must grow, so a
 * made-up number can never size it), ENOMEM. */
static Slot *slot_claim(Lane *L, int fd, uint8_t kind, void *p) {
    if (fd < 0) {
        errno = EBADF;
        return NULL;
    }
    if (fd >= L->nslots) {
        if (fcntl(fd, F_GETFD) < 0) {
            errno = EBADF;
            return NULL;
        }
        size_t n = L->nslots ? (size_t)L->nslots : 1024;
        while (n <= (size_t)fd) /* fd < INT_MAX: n stays below 2^32 in a size_t */
            n *= 2;
        if (n > (size_t)INT_MAX)
            n = (size_t)fd + 1;
        Slot *s = PyMem_Realloc(L->slots, n * sizeof(Slot));
        if (s == NULL) {
            errno = ENOMEM;
            return NULL;
        }
        memset(s + L->nslots, 0, (n - (size_t)L->nslots) * sizeof(Slot));
        L->slots = s;
        L->nslots = (int)n;
    }
    Slot *s = &L->slots[fd];
    if (s->kind == S_LISTENER) {
        /* its descriptor was closed without unlisten and the number reused: drop it */
        Listener *old = s->p;
        if (old->busy)
            old->dead = 1;
        else
            listener_free(old);
    }
    s->kind = kind;
    s->p = p;
    s->gen = ++L->gen;
    if (s->gen == 0)
        s->gen = ++L->gen;
    return s;
}

static void slot_release(Lane *L, int fd, void *p) {
    Slot *s = slot_of(L, fd);
    if (s != NULL && s->p == p) {
        s->kind = S_FREE;
        s->p = NULL;
    }
}

static int watch(Lane *L, int fd, uint32_t gen, uint32_t events) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = ((uint64_t)gen << 32) | (uint32_t)fd;
    return epoll_ctl(L->epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* -- pipes (relay.PipePool) ------------------------------------------------------------------ */

static int pipe_acquire(Lane *L, Pump *p) {
    L->in_use++;
    if (L->nidle > 0) {
        Pipe *q = &L->idle[--L->nidle];
        p->pr = q->r, p->pw = q->w, p->slots = q->slots;
        return 0;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        L->in_use--;
        return -1;
    }
    int slots = DEFAULT_SLOTS;
    if (L->in_use <= L->big) {
        int n = fcntl(fds[1], F_SETPIPE_SZ, L->pipe_size);
        if (n > 0)
            slots = n / (int)sysconf(_SC_PAGESIZE);
    }
    p->pr = fds[0], p->pw = fds[1], p->slots = slots;
    return 0;
}

static void pipe_drop(Lane *L, Pump *p, int keep) {
    if (p->pr < 0)
        return;
    L->in_use--;
    if (keep && L->nidle < L->keep) {
        L->idle[L->nidle++] = (Pipe){p->pr, p->pw, p->slots};
    } else {
        close(p->pr);
        close(p->pw);
    }
    p->pr = p->pw = -1;
}

/* -- connections ------------------------------------------------------------------------------ */

static void queue_remove(Pump *p) {
    if (p->qnext != NULL) {
        p->qprev->qnext = p->qnext;
        p->qnext->qprev = p->qprev;
        p->qnext = p->qprev = NULL;
    }
    p->queued = 0;
}

static void pump_init(Lane *L, Conn *c, Pump *p, int sfd, int dfd, int tcp, int inl) {
    memset(p, 0, sizeof *p);
    p->conn = c;
    p->sfd = sfd, p->dfd = dfd;
    p->pr = p->pw = -1;
    p->tcp = tcp ? 1 : 0;
    p->inl = inl ? 1 : 0;
    p->may_splice = L->splice ? 1 : 0;
    if (!tcp && !inl) {
        set_inline(sfd); /* Unix stream: in line from the start (relay.py) */
        p->inl = 1;
    }
}

static void pump_stop(Lane *L, Pump *p) {
    p->done = 1;
    PyMem_Free(p->own);
    p->own = NULL;
    if (p->pr >= 0)
        pipe_drop(L, p, p->pending == 0);
    queue_remove(p);
}

static void conn_unlink(Conn *c) {
    c->prev->next = c->next;
    c->next->prev = c->prev;
}

static void conn_link(Conn *head, Conn *c) {
    c->next = head->next;
    c->prev = head;
    head->next->prev = c;
    head->next = c;
}

static void grave_empty(Lane *L) {
    while (L->grave.next != &L->grave) {
        Conn *c = L->grave.next;
        conn_unlink(c);
        PyMem_Free(c);
    }
}

/* The one path that closes a connection's descriptors and ends it. up < 0: the backend
 * connection failed ("how" is why). The callback runs last; c stays readable until the
 * outermost entry into the lane returns. */
static void conn_close(Lane *L, Conn *c, const char *how, int reset, int failed_connect) {
    if (c->closed)
        return;
    c->closed = 1;
    pump_stop(L, &c->up);
    pump_stop(L, &c->down);
    slot_release(L, c->cfd, c);
    if (c->bfd >= 0)
        slot_release(L, c->bfd, c);
    if (reset) {
        reset_close(c->cfd);
        if (c->bfd >= 0)
            reset_close(c->bfd);
    } else {
        close(c->cfd);
        if (c->bfd >= 0)
            close(c->bfd);
    }
    c->cfd = c->bfd = -1;
    conn_unlink(c);
    conn_link(&L->grave, c);
    L->count--;
    if (c->book != NULL) {
        book_closed(L, c, how, failed_connect);
        book_release(c);
        return;
    }
    long long up = failed_connect ? -1 : (long long)c->up.bytes;
    long long down = failed_connect ? -1 : (long long)c->down.bytes;
    lane_flush(L); /* (a call into Python) */
    PyObject *token = c->token, *finished = c->finished;
    c->token = c->finished = NULL;
    PyObject *h = PyUnicode_FromString(how), *u = PyLong_FromLongLong(up), *d = PyLong_FromLongLong(down);
    PyObject *r = NULL;
    if (h != NULL && u != NULL && d != NULL) {
        PyObject *stack[5] = {NULL, token, h, u, d}; /* (slot 0: room for a bound method's self) */
        r = PyObject_Vectorcall(finished, stack + 1, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_XDECREF(h);
    Py_XDECREF(u);
    Py_XDECREF(d);
    if (r == NULL)
        report(L, "the proxy's finished callback failed");
    else
        Py_DECREF(r);
    Py_DECREF(token);
    Py_DECREF(finished);
}

static void conn_fail(Lane *L, Conn *c, int err, int side_fd) {
    char how[128];
    if (!is_reset(err))
        snprintf(how, sizeof how, "error: %s", strerror(err));
    else
        snprintf(how, sizeof how, "reset by %s", side_fd == c->cfd ? "client" : "backend");
    conn_close(L, c, how, 1, 0);
}

static Conn *conn_new(Lane *L, int cfd, PyObject *token, PyObject *finished) {
    Conn *c = PyMem_Calloc(1, sizeof(Conn));
    if (c == NULL)
        return NULL;
    c->cfd = cfd;
    c->bfd = -1;
    c->started = c->last = now_ns();
    Py_INCREF(token);
    Py_INCREF(finished);
    c->token = token;
    c->finished = finished;
    c->up.pr = c->up.pw = c->down.pr = c->down.pw = -1;
    conn_link(&L->live, c);
    L->count++;
    /* the client's slot from the start, unwatched until the relay begins: abort and find
     * reach a connecting client in one look-up (no slot: find's scan still does) */
    (void)slot_claim(L, cfd, S_CLIENT, c);
    return c;
}

/* -- the pumps (relay._Pump) -------------------------------------------------------------------- */

static void pump_urgent(Pump *p) {
    p->urgent = 1;
    if (!p->inl) {
        set_inline(p->sfd);
        p->inl = 1;
    }
}

static void pump_to_copy(Lane *L, Pump *p) {
    if (p->pr >= 0)
        pipe_drop(L, p, 1);
    p->splice = 0;
    p->may_splice = 0;
}

static void set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
        (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void pump_to_splice(Pump *p) {
    Conn *c = p->conn;
    if (!c->nonblock) { /* a splice from a blocking socket waits (relay.py) */
        set_nonblock(c->cfd);
        set_nonblock(c->bfd);
        c->nonblock = 1;
    }
    p->splice = 1;
}

/* A loopback leg BBR paces switches to L->cc once it carries bulk data (pacing.py). Whether
 * a peer is this host, from the two addresses of a socket (pacing.same_host: a loopback
 * address, IPv4-mapped or not, or the socket's own address; zones are not compared). */
static int addr_same_host(const struct sockaddr_storage *peer, socklen_t plen, const struct sockaddr_storage *self,
                          socklen_t slen) {
    if (plen > sizeof *peer || slen > sizeof *self)
        return 0;
    if (peer->ss_family == AF_INET && plen >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)peer;
        if ((ntohl(a->sin_addr.s_addr) >> 24) == 127)
            return 1;
        if (self->ss_family != AF_INET || slen < sizeof(struct sockaddr_in))
            return 0;
        return a->sin_addr.s_addr == ((const struct sockaddr_in *)self)->sin_addr.s_addr;
    }
    if (peer->ss_family == AF_INET6 && plen >= sizeof(struct sockaddr_in6)) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)peer)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127))
            return 1;
        if (self->ss_family != AF_INET6 || slen < sizeof(struct sockaddr_in6))
            return 0;
        return memcmp(a, &((const struct sockaddr_in6 *)self)->sin6_addr, sizeof *a) == 0;
    }
    return 0;
}

static int same_host(int fd) {
    struct sockaddr_storage peer, self;
    socklen_t plen = sizeof peer, slen = sizeof self;
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) < 0 || getsockname(fd, (struct sockaddr *)&self, &slen) < 0)
        return 0;
    return addr_same_host(&peer, plen, &self, slen);
}

/* The same decision on two addresses given as struct sockaddr bytes (lane.sockaddr): the
 * tests hold it to pacing.same_host. */
static PyObject *lane_same_host(PyObject *Py_UNUSED(mod), PyObject *args) {
    const char *p, *q;
    Py_ssize_t plen, qlen;
    struct sockaddr_storage peer, self;
    if (!PyArg_ParseTuple(args, "y#y#", &p, &plen, &q, &qlen))
        return NULL;
    if (plen > (Py_ssize_t)sizeof peer || qlen > (Py_ssize_t)sizeof self || plen < 2 || qlen < 2) {
        PyErr_SetString(PyExc_ValueError, "not a socket address");
        return NULL;
    }
    memset(&peer, 0, sizeof peer);
    memset(&self, 0, sizeof self);
    memcpy(&peer, p, (size_t)plen);
    memcpy(&self, q, (size_t)qlen);
    return PyBool_FromLong(addr_same_host(&peer, (socklen_t)plen, &self, (socklen_t)qlen));
}

static void pump_bulk(Lane *L, Pump *p) {
    Conn *c = p->conn;
    Pump *other = p == &c->up ? &c->down : &c->up;
    char now[16] = {0};
    socklen_t len = sizeof now - 1;
    p->bulk = 1;
    if (!L->cc[0] || !other->tcp)
        return;
    if (getsockopt(p->dfd, IPPROTO_TCP, TCP_CONGESTION, now, &len) < 0 || strncmp(now, "bbr", 3) != 0)
        return;
    if (same_host(p->dfd)) /* failing: the socket keeps what it had (speed only, not safety) */
        (void)setsockopt(p->dfd, IPPROTO_TCP, TCP_CONGESTION, L->cc, (socklen_t)strlen(L->cc));
}

/* Read once from src: bytes read, 0 at EOF, R_AGAIN, or R_ERROR (errno set). */
static ssize_t pump_fill(Lane *L, Pump *p) {
    ssize_t n;
    if (p->splice && p->urgent && !p->pending)
        pump_to_copy(L, p); /* splice cannot pass an urgent mark */
    if (p->splice) {
        if (p->pr < 0 && pipe_acquire(L, p) < 0)
            return R_ERROR;
        do
            n = splice(p->sfd, NULL, p->pw, NULL, (size_t)L->pipe_size, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno == EAGAIN)
                return R_AGAIN;
            if (errno != EINVAL || p->pending)
                return R_ERROR;
            pump_to_copy(L, p);
            return pump_fill(L, p);
        }
    } else {
        if (!p->inl && p->bytes && !p->plain_end) {
            set_inline(p->sfd); /* not the first read: it might start at a mark */
            p->inl = 1;
        }
        PyMem_Free(p->own);
        p->own = NULL;
        do
            n = recv(p->sfd, L->scratch, COPY_SIZE, MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return errno == EAGAIN ? R_AGAIN : R_ERROR;
        p->off = 0;
    }
    p->pending += (size_t)n;
    p->bytes += (uint64_t)n;
    return n;
}

/* Write what is pending: 1 done, 0 the destination would block, R_ERROR (errno set). */
static int pump_drain(Pump *p, Lane *L) {
    while (p->pending) {
        ssize_t n;
        if (p->splice) {
            n = splice(p->pr, NULL, p->dfd, NULL, p->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        } else {
            const char *b = p->own != NULL ? p->own : L->scratch;
            n = send(p->dfd, b + p->off, p->pending, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0)
                p->off += (size_t)n;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return R_ERROR;
            if (!p->splice && p->own == NULL) {
                /* the scratch buffer is the next read's: keep what is left in our own */
                char *o = PyMem_Malloc(p->pending);
                if (o == NULL) {
                    errno = ENOMEM;
                    return R_ERROR;
                }
                memcpy(o, L->scratch + p->off, p->pending);
                p->own = o;
                p->off = 0;
            }
            return 0;
        }
        p->pending -= (size_t)n;
    }
    return 1;
}

static size_t empty_below(Pump *p) {
    if (!p->tcp || p->urgent)
        return 0;
    if (!p->splice)
        return COPY_SIZE;
    if (p->pr >= 0)
        return (size_t)p->slots;
    return 0;
}

static int at_urgent_mark(int fd) {
    int mark = 0;
    if (ioctl(fd, SIOCATMARK, &mark) < 0)
        return -1;
    return mark != 0;
}

static void queue_push(Lane *L, Pump *p) {
    p->queued = 1;
    p->qprev = L->queue.qprev;
    p->qnext = &L->queue;
    L->queue.qprev->qnext = p;
    L->queue.qprev = p;
}

static void pump_finish(Lane *L, Pump *p) {
    Conn *c = p->conn;
    p->done = 1;
    PyMem_Free(p->own);
    p->own = NULL;
    if (p->pr >= 0)
        pipe_drop(L, p, 1);
    Pump *other = p == &c->up ? &c->down : &c->up;
    if (!other->done)
        (void)shutdown(p->dfd, SHUT_WR); /* failing: the other side is gone; its pump notices */
    else
        conn_close(L, c, "closed", 0, 0);
}

/* What is pending written to the destination: 1 when all of it went, 0 when the pump stopped
 * (the destination would block: it waits for its output edge; or it failed: closed). */
static int pump_flush(Lane *L, Pump *p) {
    int r = pump_drain(p, L);
    if (r == R_ERROR) {
        conn_fail(L, p->conn, errno, p->dfd);
        return 0;
    }
    if (r == 0) {
        p->blocked = 1;
        return 0;
    }
    return 1;
}

static void pump_run(Lane *L, Pump *p) {
    Conn *c = p->conn;
    if (p->done || c->closed)
        return;
    c->last = now_ns();
    if (p->pending && !pump_flush(L, p))
        return;
    int i;
    for (i = 0; i < BURST; i++) {
        if (!p->readable || p->eof)
            break;
        ssize_t n = pump_fill(L, p);
        if (n == R_AGAIN) {
            p->readable = 0;
            break;
        }
        if (n == R_ERROR)
            return conn_fail(L, c, errno, p->sfd);
        if (n == 0) {
            if (p->splice && p->tcp && !p->plain_end) {
                int mark = at_urgent_mark(p->sfd);
                if (mark < 0)
                    return conn_fail(L, c, errno, p->sfd);
                if (mark) {
                    pump_urgent(p); /* splice returns 0 at a mark with a FIN behind it: not the end */
                    continue;
                }
            }
            if (!p->clean_end) {
                int err = 0;
                socklen_t len = sizeof err;
                if (getsockopt(p->sfd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                    err = errno;
                if (err)
                    return conn_fail(L, c, err, p->sfd);
            }
            p->eof = 1;
            break;
        }
        if (!pump_flush(L, p))
            return;
        if (n == COPY_SIZE && !p->bulk)
            pump_bulk(L, p); /* a full buffer: a bulk transfer */
        if (n == COPY_SIZE && !p->splice && p->may_splice && !p->urgent)
            pump_to_splice(p); /* ... enough traffic to pay for a pipe */
        if (!p->hangup && (size_t)n < empty_below(p)) {
            p->readable = 0; /* the read emptied the socket */
            break;
        }
    }
    if (i == BURST) {
        if (p->readable && !p->queued)
            queue_push(L, p);
        return;
    }
    if (p->eof)
        pump_finish(L, p);
    else if (p->pr >= 0 && p->pending == 0)
        pipe_drop(L, p, 1);
}

static void pump_input(Lane *L, Pump *p, uint32_t ev) {
    p->readable = 1;
    if (ev & HANGUP) {
        p->hangup = 1;
        if (!(ev & EPOLLPRI))
            p->plain_end = 1;
        p->clean_end = !(ev & EPOLLERR);
    }
    if ((ev & EPOLLPRI) && !p->urgent)
        pump_urgent(p);
    if (!p->blocked)
        pump_run(L, p);
}

static void pump_output(Lane *L, Pump *p) {
    if (p->blocked) {
        p->blocked = 0;
        pump_run(L, p);
    }
}

/* -- relaying ------------------------------------------------------------------------------------ */

/* Both sockets connected: watch them (the backend may already be watched) and read the
 * client at once (Relay.start). */
static void relay_begin(Lane *L, Conn *c, int backend_tcp, int backend_watched) {
    pump_init(L, c, &c->up, c->cfd, c->bfd, c->client_tcp, c->client_inline);
    pump_init(L, c, &c->down, c->bfd, c->cfd, backend_tcp, 0);
    Slot *s = slot_claim(L, c->cfd, S_CLIENT, c);
    if (s == NULL || watch(L, c->cfd, s->gen, WATCH) < 0)
        return conn_fail(L, c, errno, c->cfd);
    c->cgen = s->gen;
    if (!backend_watched) {
        s = slot_claim(L, c->bfd, S_BACKEND, c);
        if (s == NULL || watch(L, c->bfd, s->gen, WATCH) < 0)
            return conn_fail(L, c, errno, c->bfd);
        c->bgen = s->gen;
    }
    if (!c->up.inl) {
        set_inline(c->cfd); /* this first read comes from no event */
        c->up.inl = 1;
    }
    pump_input(L, &c->up, EPOLLIN);
}

static void client_event(Lane *L, Conn *c, uint32_t ev) {
    if ((ev & OUTPUT) && c->down.blocked)
        pump_output(L, &c->down);
    if (!c->closed && (ev & INPUT) && !c->up.done)
        pump_input(L, &c->up, ev);
}

static void connect_failed(Lane *L, Conn *c, const char *why) {
    conn_close(L, c, why, 0, 1); /* the client: a plain close (service._drop) */
}

static void backend_event(Lane *L, Conn *c, uint32_t ev) {
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->bfd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err)
            return connect_failed(L, c, strerror(err));
        if (!(ev & EPOLLOUT))
            return;
        c->connecting = 0;
        relay_begin(L, c, c->down.tcp, 1);
        if (c->closed)
            return;
        ev &= ~(uint32_t)EPOLLOUT;
    }
    if ((ev & OUTPUT) && c->up.blocked)
        pump_output(L, &c->up);
    if (!c->closed && (ev & INPUT) && !c->down.done)
        pump_input(L, &c->down, ev);
}

static int established(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    return getpeername(fd, (struct sockaddr *)&ss, &len) == 0;
}

/* Connect c's backend (service._connect): c is live with no backend yet. */
static void conn_connect(Lane *L, Conn *c, int family, const struct sockaddr *addr, socklen_t alen) {
    int b = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (b < 0) {
        char why[96];
        snprintf(why, sizeof why, "socket: %s", strerror(errno));
        return connect_failed(L, c, why);
    }
    c->bfd = b;
    int tcp = family != AF_UNIX;
    if (tcp) {
        int one = 1;
        (void)setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    int err = connect(b, addr, alen) == 0 ? 0 : errno;
    if (err == EINTR)
        err = EINPROGRESS;
    if (err == EINPROGRESS && tcp && established(b))
        err = 0; /* loopback: the handshake completed inside connect() */
    if (err == 0)
        return relay_begin(L, c, tcp, 0);
    if (err != EINPROGRESS)
        return connect_failed(L, c, strerror(err));
    Slot *s = slot_claim(L, b, S_BACKEND, c);
    if (s == NULL || watch(L, b, s->gen, WATCH) < 0)
        return connect_failed(L, c, strerror(errno));
    c->bgen = s->gen;
    c->connecting = 1;
    c->down.tcp = tcp ? 1 : 0; /* (read by relay_begin once connected) */
}

/* -- accepting ------------------------------------------------------------------------------------ */

static void listener_free(Listener *l) {
    Py_XDECREF(l->admit);
    Py_XDECREF(l->failed);
    Py_XDECREF(l->finished);
    Py_XDECREF(l->book);
    PyMem_Free(l);
}

/* What Python's socket.accept() gives as the address (socketmodule.c makesockaddr). */
static PyObject *address(const struct sockaddr_storage *ss, socklen_t len) {
    if (len > (socklen_t)sizeof *ss)
        len = sizeof *ss;
    switch (ss->ss_family) {
    case AF_INET: {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        char buf[INET_ADDRSTRLEN];
        if (len < (socklen_t)sizeof *a || inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf) == NULL)
            break;
        return Py_BuildValue("(si)", buf, ntohs(a->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        char buf[NI_MAXHOST];
        if (len < (socklen_t)sizeof *a ||
            getnameinfo((const struct sockaddr *)a, sizeof *a, buf, sizeof buf, NULL, 0, NI_NUMERICHOST) != 0)
            break;
        return Py_BuildValue("(siII)", buf, ntohs(a->sin6_port), (unsigned)ntohl(a->sin6_flowinfo),
                             (unsigned)a->sin6_scope_id);
    }
    case AF_UNIX: {
        const struct sockaddr_un *a = (const struct sockaddr_un *)ss;
        size_t n = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (n > sizeof a->sun_path)
            n = sizeof a->sun_path;
        if (n > 0 && a->sun_path[0] == 0)
            return PyBytes_FromStringAndSize(a->sun_path, (Py_ssize_t)n); /* abstract */
        return PyUnicode_DecodeFSDefaultAndSize(a->sun_path, (Py_ssize_t)strnlen(a->sun_path, n));
    }
    default:
        break;
    }
    return Py_BuildValue("");
}


/* -- the remembered path (a Book) ------------------------------------------------------------------
 *
 * Python decides; this replays a decision it made. service.Runner puts into a Book's memo an
 * IPv4 source whose admission it remembered as "allowed, no limiter to consult" (the address
 * alone decided it: admission.Admission.remembered), with the two records' rendered middles, and
 * empties the memo whenever the policy changes (Runner.install). A client from a source in the
 * memo is admitted here: the runner's connection limits are checked on the runner's own counts
 * (its table, its name lookups, its per-source dict, which this path keeps too) plus this path's,
 * its decision and close records are written through the runner's Log as Log.allowed and
 * Log.closed write them, and Python is not called. Anything else, or any failure before the
 * client is taken (a full table, a source at its limit, memory), goes to the admit callback as
 * before, which decides, refuses and logs. So this path admits nothing Python would not. */

static int book_traverse(Book *B, visitproc visit, void *arg) {
    PyObject *v[7] = {B->memo, B->conns, B->tasks, B->per_source, B->add, B->ending, B->closed};
    for (int i = 0; i < 7; i++)
        Py_VISIT(v[i]);
    return 0;
}

static int book_clear(Book *B) {
    Py_CLEAR(B->memo);
    Py_CLEAR(B->conns);
    Py_CLEAR(B->tasks);
    Py_CLEAR(B->per_source);
    Py_CLEAR(B->add);
    Py_CLEAR(B->ending);
    Py_CLEAR(B->closed);
    return 0;
}

static void book_dealloc(Book *B) {
    PyObject_GC_UnTrack(B);
    book_clear(B);
    Py_TYPE(B)->tp_free((PyObject *)B);
}

static int book_init(Book *B, PyObject *args, PyObject *kw) {
    static char *names[] = {"memo", "conns", "tasks", "per_source", "add", "ending", "max_connections",
                            "max_per_source", NULL};
    PyObject *memo, *conns, *tasks, *per_source, *add, *ending;
    long mc, mps;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!OOll", names, &PyDict_Type, &memo, &PyDict_Type, &conns,
                                     &PySet_Type, &tasks, &PyDict_Type, &per_source, &add, &ending, &mc, &mps))
        return -1;
    if (B->memo != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Book is set up once");
        return -1;
    }
    PyObject *v[6] = {memo, conns, tasks, per_source, add, ending};
    for (int i = 0; i < 6; i++)
        Py_INCREF(v[i]);
    B->memo = memo, B->conns = conns, B->tasks = tasks, B->per_source = per_source;
    B->add = add, B->ending = ending;
    B->max_conns = mc, B->max_per_source = mps;
    B->stamp_ms = -1;
    return 0;
}

static PyObject *book_count(Book *B, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLong(B->open); }

/* The wall-clock stamp as Log._now renders it (UTC, milliseconds), once per millisecond. */
static const char *book_stamp(Book *B) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (ms != B->stamp_ms) {
        time_t sec = (time_t)(ms / 1000);
        struct tm tm;
        char day[32];
        if (gmtime_r(&sec, &tm) == NULL || strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
            day[0] = 0;
        snprintf(B->stamp, sizeof B->stamp, "%s.%03dZ", day, (int)(ms % 1000));
        B->stamp_ms = ms;
    }
    return B->stamp;
}

/* One record, queued for Log.add_line: the lane hands its lines over, in the order they were
 * written, before it calls into Python for anything else and whenever it returns to Python
 * (lane_flush), so the log's order is the order things happened in; lines for another log
 * first hand over those queued. 0, or -1 with a Python error set. */
static int book_write(Lane *L, Book *B, PyObject *line) {
    if (line == NULL)
        return -1;
    if (L->lines_add != NULL && L->lines_add != B->add) {
        int same = PyObject_RichCompareBool(L->lines_add, B->add, Py_EQ); /* (bound methods of one log) */
        if (same < 0)
            return -1;
        if (!same)
            lane_flush(L);
    }
    if (L->lines == NULL && (L->lines = PyList_New(0)) == NULL)
        return -1;
    if (PyList_Append(L->lines, line) < 0)
        return -1;
    if (L->lines_add == NULL) {
        Py_INCREF(B->add);
        L->lines_add = B->add;
    }
    return 0;
}

/* Every queued line to its log (see book_write), in one call; a log that raises is reported
 * (its lines are lost, nothing else is). Any exception being handled is kept. */
static void lane_flush(Lane *L) {
    if (L->lines_add == NULL)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *add = L->lines_add, *lines = L->lines, *r = NULL;
    L->lines_add = NULL, L->lines = NULL; /* detached: a report from here finds nothing queued */
    PyObject *empty = PyUnicode_New(0, 0), *text = NULL, *t = PyFloat_FromDouble((double)now_ns() / 1e9);
    if (empty != NULL && lines != NULL && t != NULL)
        text = PyUnicode_Join(empty, lines);
    if (text != NULL) {
        PyObject *stack[3] = {NULL, t, text};
        r = PyObject_Vectorcall(add, stack + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (r == NULL)
        report(L, "the proxy's log failed");
    Py_XDECREF(r), Py_XDECREF(empty), Py_XDECREF(text), Py_XDECREF(t), Py_XDECREF(lines);
    Py_DECREF(add);
    PyErr_Restore(type, value, tb);
}

/* repr(round(secs, 6)), as Log.closed writes a duration: PyOS_double_to_string's 'f' rounds
 * correctly to 6 places as round() does (both _Py_dg_dtoa mode 3), 'r' is repr. */
static PyObject *duration_text(double secs) {
    char *f = PyOS_double_to_string(secs, 'f', 6, 0, NULL);
    if (f == NULL)
        return NULL;
    double rounded = PyOS_string_to_double(f, NULL, NULL);
    PyMem_Free(f);
    if (rounded == -1.0 && PyErr_Occurred())
        return NULL;
    char *r = PyOS_double_to_string(rounded, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (r == NULL)
        return NULL;
    PyObject *out = PyUnicode_FromString(r);
    PyMem_Free(r);
    return out;
}

static PyObject *lane_duration(PyObject *Py_UNUSED(module), PyObject *arg) {
    double secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred())
        return NULL;
    return duration_text(secs);
}

/* The per-source count of `key` moved by `by` (an entry at 0 is removed, as Runner._forget does). */
static int book_source(Book *B, PyObject *key, long by) {
    PyObject *cur = PyDict_GetItemWithError(B->per_source, key);
    if (cur == NULL && PyErr_Occurred())
        return -1;
    long n = cur == NULL ? 0 : PyLong_AsLong(cur);
    if (n == -1 && PyErr_Occurred())
        return -1;
    n += by;
    if (n <= 0)
        return cur == NULL ? 0 : PyDict_DelItem(B->per_source, key);
    PyObject *v = PyLong_FromLong(n);
    int r = v == NULL ? -1 : PyDict_SetItem(B->per_source, key, v);
    Py_XDECREF(v);
    return r;
}

/* A memo entry: four strings. */
static int parts(PyObject *hit) {
    if (hit == NULL || !PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 4)
        return 0;
    for (int i = 0; i < 4; i++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(hit, i)))
            return 0;
    return 1;
}

/* A client from a remembered source, admitted here: its Conn (connect it), NULL with *taken 0
 * (ask Python: not remembered, over a limit, or a failure, with no trace left), or NULL with
 * *taken 1 (admitted and logged, but out of memory: reset, as admit_one does). */
static Conn *book_admit(Lane *L, Book *B, int fd, const struct sockaddr_in *a, int *taken) {
    char host[INET_ADDRSTRLEN];
    *taken = 0;
    if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host) == NULL)
        return NULL;
    PyObject *key = PyUnicode_FromString(host), *hit = NULL, *label = NULL, *line = NULL;
    if (key == NULL)
        goto no;
    /* the memo's entry: Log.allowed's line around the peer's label (head, tail) and Log.closed's
     * up to its byte counts (head, middle) */
    hit = PyDict_GetItemWithError(B->memo, key); /* (borrowed until the INCREF below) */
    if (!parts(hit)) {
        hit = NULL;
        goto no;
    }
    Py_INCREF(hit);
    /* Runner._over_limits, on the runner's counts and this path's */
    if (PyDict_GET_SIZE(B->conns) + PySet_GET_SIZE(B->tasks) + B->open >= B->max_conns)
        goto no;
    PyObject *cur = PyDict_GetItemWithError(B->per_source, key);
    long n = cur == NULL ? 0 : PyLong_AsLong(cur);
    if (PyErr_Occurred() || n >= B->max_per_source)
        goto no;
    label = PyUnicode_FromFormat("%s:%d", host, (int)ntohs(a->sin_port));
    if (label == NULL)
        goto no;
    line = PyUnicode_FromFormat("%s%U%U%U", book_stamp(B), PyTuple_GET_ITEM(hit, 0), label, PyTuple_GET_ITEM(hit, 1));
    if (line == NULL || book_source(B, key, 1) < 0)
        goto no;
    if (book_write(L, B, line) < 0) { /* not written: Python decides (and logs) */
        PyErr_Clear();
        (void)book_source(B, key, -1);
        goto no;
    }
    Py_CLEAR(line);
    *taken = 1;
    Conn *c = conn_new(L, fd, hit, Py_None);
    if (c == NULL) { /* admitted and logged: its close record too (admit_one resets it) */
        PyErr_Clear();
        (void)book_source(B, key, -1);
        PyObject *end = PyUnicode_FromFormat("%s%U%U%U0 bytes_down=0 duration=0.0 end=\"error: out of memory\"\n",
                                             book_stamp(B), PyTuple_GET_ITEM(hit, 2), label, PyTuple_GET_ITEM(hit, 3));
        if (book_write(L, B, end) < 0)
            PyErr_Clear();
        Py_XDECREF(end);
        Py_DECREF(hit);
        Py_DECREF(key);
        Py_DECREF(label);
        return NULL;
    }
    Py_DECREF(hit);
    Py_INCREF(B);
    c->book = B, c->key = key, c->label = label;
    B->open++;
    return c;
no:
    PyErr_Clear();
    Py_XDECREF(key);
    Py_XDECREF(hit);
    Py_XDECREF(label);
    Py_XDECREF(line);
    return NULL;
}

/* The close record of a connection admitted from a book (Log.closed's line), its counts given
 * back. A failure here loses the record (reported), never the connection's accounting. */
static void book_closed(Lane *L, Conn *c, const char *how, int failed_connect) {
    Book *B = c->book;
    B->open--;
    if (book_source(B, c->key, -1) < 0)
        report(L, "the proxy's per-source count failed");
    long long up = failed_connect ? 0 : (long long)c->up.bytes, down = failed_connect ? 0 : (long long)c->down.bytes;
    double secs = (double)(now_ns() - c->started) / 1e9;
    PyObject *end = NULL, *text = NULL, *line = NULL;
    if (!failed_connect && strcmp(how, "closed") == 0 && B->closed != NULL) {
        end = B->closed;
        Py_INCREF(end);
    } else {
        lane_flush(L); /* (a call into Python) */
        PyObject *h = PyUnicode_FromString(how), *f = PyBool_FromLong(failed_connect);
        if (h != NULL && f != NULL) {
            PyObject *stack[3] = {NULL, h, f};
            end = PyObject_Vectorcall(B->ending, stack + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
        Py_XDECREF(h), Py_XDECREF(f);
        if (end != NULL && !failed_connect && strcmp(how, "closed") == 0 && B->closed == NULL) {
            Py_INCREF(end);
            B->closed = end;
        }
    }
    if (end != NULL)
        text = duration_text(secs);
    if (end != NULL && text != NULL)
        line = PyUnicode_FromFormat("%s%U%U%U%lld bytes_down=%lld duration=%U end=%S\n", book_stamp(B),
                                    PyTuple_GET_ITEM(c->token, 2), c->label, PyTuple_GET_ITEM(c->token, 3), up, down, text, end);
    if (line == NULL || book_write(L, B, line) < 0)
        report(L, "the proxy's close record failed");
    Py_XDECREF(end), Py_XDECREF(text), Py_XDECREF(line);
}

static void book_release(Conn *c) {
    PyObject *token = c->token, *finished = c->finished;
    Book *B = c->book;
    c->token = c->finished = NULL, c->book = NULL;
    Py_CLEAR(c->key);
    Py_CLEAR(c->label);
    Py_XDECREF(token);
    Py_XDECREF(finished);
    Py_DECREF(B);
}

/* An admitted client: connect its backend. */
static void admitted(Lane *L, Listener *l, Conn *c, const struct sockaddr_storage *ss) {
    c->client_tcp = ss->ss_family != AF_UNIX;
    c->client_inline = c->client_tcp && l->client_inline;
    c->nonblock = 1; /* accepted with SOCK_NONBLOCK, and so is the backend made */
    conn_connect(L, c, l->family, (const struct sockaddr *)&l->addr, l->alen);
}

/* One accepted client: ask Python, then relay, refuse, or let go. */
static void admit_one(Lane *L, Listener *l, int fd, const struct sockaddr_storage *ss, socklen_t len) {
    if (l->book != NULL && ss->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        int taken;
        Conn *c = book_admit(L, l->book, fd, (const struct sockaddr_in *)ss, &taken);
        if (c != NULL)
            return admitted(L, l, c, ss);
        if (taken) {
            PyErr_NoMemory();
            report(L, "the lane is out of memory");
            reset_close(fd);
            return;
        }
    }
    lane_flush(L); /* (a call into Python) */
    PyObject *addr = address(ss, len), *f = PyLong_FromLong(fd);
    PyObject *r = NULL;
    if (addr != NULL && f != NULL) {
        PyObject *stack[3] = {NULL, f, addr};
        r = PyObject_Vectorcall(l->admit, stack + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_XDECREF(addr);
    Py_XDECREF(f);
    if (r == NULL) {
        report(L, "the proxy's admit callback failed");
        reset_close(fd);
        return;
    }
    if (r == Py_None) { /* Python took the descriptor */
        Py_DECREF(r);
        return;
    }
    if (r == Py_False) {
        Py_DECREF(r);
        reset_close(fd);
        return;
    }
    Conn *c = conn_new(L, fd, r, l->finished);
    Py_DECREF(r);
    if (c == NULL) {
        PyErr_NoMemory();
        report(L, "the lane is out of memory");
        reset_close(fd);
        return;
    }
    admitted(L, l, c, ss);
}

static void listener_event(Lane *L, Listener *l) {
    l->busy++; /* a count: a callback may reach another burst of it (never through poll, refused) */
    for (int i = 0; i < ACCEPT_BURST && !l->dead; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        memset(&ss, 0, sizeof ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            int err = errno;
            if (err == EINTR || err == ECONNABORTED || err == EPROTO || err == EPERM)
                continue;
            if (err == EAGAIN)
                break;
            /* out of descriptors or memory, or worse: Python decides (stop for a moment) */
            lane_flush(L);
            PyObject *r = PyObject_CallFunction(l->failed, "i", err);
            if (r == NULL)
                report(L, "the proxy's accept-failed callback failed");
            else
                Py_DECREF(r);
            break;
        }
        admit_one(L, l, fd, &ss, len);
    }
    if (--l->busy == 0 && l->dead)
        listener_free(l);
}

/* -- dispatch ---------------------------------------------------------------------------------------- */

static void run_queue(Lane *L) {
    /* the continuations queued so far, moved to a list of their own: those they queue again
     * run at the next poll; a connection closed meanwhile takes its pumps out of it */
    if (L->queue.qnext == &L->queue)
        return;
    Pump now;
    now.qnext = L->queue.qnext;
    now.qprev = L->queue.qprev;
    now.qnext->qprev = &now;
    now.qprev->qnext = &now;
    L->queue.qnext = L->queue.qprev = &L->queue;
    while (now.qnext != &now) {
        Pump *p = now.qnext;
        queue_remove(p);
        if (!p->blocked)
            pump_run(L, p);
    }
}

static void enter(Lane *L) { L->depth++; }

static void leave(Lane *L) {
    lane_flush(L); /* back to Python: every line written so far to its log */
    if (--L->depth == 0)
        grave_empty(L);
}

static PyObject *Lane_poll(Lane *L, PyObject *arg) {
    long t = PyLong_AsLong(arg);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    int timeout = t > INT32_MAX ? INT32_MAX : t < 0 ? -1 : (int)t;
    if (check_open(L) < 0)
        return NULL;
    if (L->depth > 0) { /* from one of its callbacks: the state under it is mid-change */
        PyErr_SetString(PyExc_RuntimeError, "lane.poll called from a lane callback");
        return NULL;
    }
    if (L->queue.qnext != &L->queue)
        timeout = 0;
    struct epoll_event evs[MAX_EVENTS];
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = epoll_wait(L->epfd, evs, MAX_EVENTS, timeout);
    Py_END_ALLOW_THREADS
    if (n < 0) {
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0)
            return NULL;
        n = 0;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    enter(L);
    for (int i = 0; i < n; i++) {
        int fd = (int)(uint32_t)evs[i].data.u64;
        uint32_t gen = (uint32_t)(evs[i].data.u64 >> 32);
        uint32_t ev = evs[i].events;
        Slot *s = slot_of(L, fd);
        if (s == NULL || s->kind == S_FREE) {
            PyObject *t = Py_BuildValue("(iI)", fd, ev);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                report(L, "the lane could not return an event");
                continue;
            }
            Py_DECREF(t);
            continue;
        }
        if (s->gen != gen)
            continue; /* queued for a closed descriptor whose number was reused */
        switch (s->kind) {
        case S_LISTENER:
            listener_event(L, s->p);
            break;
        case S_CLIENT:
            client_event(L, s->p, ev);
            break;
        case S_BACKEND:
            backend_event(L, s->p, ev);
            break;
        }
    }
    run_queue(L);
    leave(L);
    return out;
}

/* -- the Python API ---------------------------------------------------------------------------------- */

static int parse_target(Py_buffer *b, int family, struct sockaddr_storage *ss, socklen_t *alen) {
    if (b->len < (Py_ssize_t)sizeof(sa_family_t) || b->len > (Py_ssize_t)sizeof *ss) {
        PyErr_SetString(PyExc_ValueError, "bad socket address");
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    memcpy(ss, b->buf, (size_t)b->len);
    if (ss->ss_family != family || (family != AF_INET && family != AF_INET6 && family != AF_UNIX)) {
        PyErr_SetString(PyExc_ValueError, "socket address of another family");
        return -1;
    }
    *alen = (socklen_t)b->len;
    return 0;
}

static int check_open(Lane *L) {
    if (L->closed || L->scratch == NULL) {
        PyErr_SetString(PyExc_ValueError, "the lane is closed");
        return -1;
    }
    return 0;
}

static PyObject *Lane_listen(Lane *L, PyObject *args) {
    int fd, family, inl;
    PyObject *admit, *failed, *finished, *book = Py_None;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "iOOOiy*p|O", &fd, &admit, &failed, &finished, &family, &b, &inl, &book))
        return NULL;
    if (book != Py_None && (!PyObject_TypeCheck(book, &BookType) || ((Book *)book)->memo == NULL)) {
        PyBuffer_Release(&b);
        return PyErr_Format(PyExc_TypeError, "book: a Book set up by its constructor, or None");
    }
    if (check_open(L) < 0 || fd < 0) {
        PyBuffer_Release(&b);
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "bad descriptor %d", fd);
        return NULL;
    }
    Listener *l = PyMem_Calloc(1, sizeof(Listener));
    if (l == NULL) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    int bad = parse_target(&b, family, &l->addr, &l->alen);
    PyBuffer_Release(&b);
    if (bad) {
        PyMem_Free(l);
        return NULL;
    }
    l->fd = fd;
    l->family = family;
    l->client_inline = inl;
    Py_INCREF(admit), Py_INCREF(failed), Py_INCREF(finished);
    l->admit = admit, l->failed = failed, l->finished = finished;
    if (book != Py_None) {
        Py_INCREF(book);
        l->book = (Book *)book;
    }
    Slot *s = slot_of(L, fd);
    int known = s != NULL && s->kind == S_LISTENER;
    if (s != NULL && (s->kind == S_CLIENT || s->kind == S_BACKEND)) {
        listener_free(l);
        return PyErr_Format(PyExc_ValueError, "descriptor %d is a relay's", fd);
    }
    s = slot_claim(L, fd, S_LISTENER, l); /* (a listener there before: replaced, its target too) */
    if (s == NULL) {
        int err = errno;
        listener_free(l);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    l->gen = s->gen;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)fd;
    if (epoll_ctl(L->epfd, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) < 0) {
        int err = errno;
        s->kind = S_FREE, s->p = NULL;
        listener_free(l);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* A descriptor number from Python: an int in [0, INT_MAX], else ValueError/OverflowError. */
static int fd_arg(PyObject *arg, int *fd) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "not a descriptor: %ld", v);
        return -1;
    }
    *fd = (int)v;
    return 0;
}

static PyObject *Lane_unlisten(Lane *L, PyObject *arg) {
    int fd;
    if (fd_arg(arg, &fd) < 0)
        return NULL;
    Slot *s = slot_of(L, fd);
    if (s == NULL || s->kind != S_LISTENER)
        Py_RETURN_FALSE;
    Listener *l = s->p;
    s->kind = S_FREE, s->p = NULL;
    (void)epoll_ctl(L->epfd, EPOLL_CTL_DEL, fd, NULL);
    if (l->busy)
        l->dead = 1;
    else
        listener_free(l);
    Py_RETURN_TRUE;
}

/* start(client_fd, token, finished, family, backend address, client_inline): the lane owns
 * client_fd from now on (even when this raises), connects the backend and relays. */
static PyObject *Lane_start(Lane *L, PyObject *args) {
    int fd, family, inl;
    PyObject *token, *finished;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "iOOiy*p", &fd, &token, &finished, &family, &b, &inl))
        return NULL;
    struct sockaddr_storage ss;
    socklen_t alen;
    int bad = check_open(L) < 0 || parse_target(&b, family, &ss, &alen) < 0;
    PyBuffer_Release(&b);
    if (bad) {
        if (fd >= 0)
            reset_close(fd);
        return NULL;
    }
    int dom = AF_INET;
    socklen_t dl = sizeof dom;
    (void)getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl);
    Conn *c = conn_new(L, fd, token, finished);
    if (c == NULL) {
        reset_close(fd);
        return PyErr_NoMemory();
    }
    c->client_tcp = dom != AF_UNIX;
    c->client_inline = c->client_tcp && inl;
    c->nonblock = 0; /* the client may be blocking (relay.py _to_splice checks both) */
    enter(L);
    conn_connect(L, c, family, (const struct sockaddr *)&ss, alen);
    leave(L);
    Py_RETURN_NONE;
}

/* relay(client_fd, backend_fd, token, finished, client_inline): both connected; the lane
 * owns both descriptors from now on. */
static PyObject *Lane_relay(Lane *L, PyObject *args) {
    int cfd, bfd, inl;
    PyObject *token, *finished;
    if (!PyArg_ParseTuple(args, "iiOOp", &cfd, &bfd, &token, &finished, &inl))
        return NULL;
    if (check_open(L) < 0 || cfd < 0 || bfd < 0 || cfd == bfd) {
        if (cfd >= 0)
            reset_close(cfd);
        if (bfd >= 0 && bfd != cfd)
            reset_close(bfd);
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "bad descriptors");
    }
    int cdom = AF_INET, bdom = AF_INET;
    socklen_t dl = sizeof cdom;
    (void)getsockopt(cfd, SOL_SOCKET, SO_DOMAIN, &cdom, &dl);
    dl = sizeof bdom;
    (void)getsockopt(bfd, SOL_SOCKET, SO_DOMAIN, &bdom, &dl);
    Conn *c = conn_new(L, cfd, token, finished);
    if (c == NULL) {
        reset_close(cfd);
        reset_close(bfd);
        return PyErr_NoMemory();
    }
    c->bfd = bfd;
    c->client_tcp = cdom != AF_UNIX;
    c->client_inline = c->client_tcp && inl;
    enter(L);
    relay_begin(L, c, bdom != AF_UNIX, 0);
    leave(L);
    Py_RETURN_NONE;
}

static Conn *find(Lane *L, int fd) {
    Slot *s = slot_of(L, fd);
    if (s != NULL && (s->kind == S_CLIENT || s->kind == S_BACKEND))
        return s->p;
    for (Conn *c = L->live.next; c != &L->live; c = c->next) /* a connecting client: not watched */
        if (c->cfd == fd)
            return c;
    return NULL;
}

/* abort(client_fd, reason): end that connection now (reset; a plain close if it was still
 * connecting, as service._drop). False: no such connection. */
static PyObject *Lane_abort(Lane *L, PyObject *args) {
    int fd;
    const char *reason;
    if (!PyArg_ParseTuple(args, "is", &fd, &reason))
        return NULL;
    Conn *c = find(L, fd);
    if (c == NULL || c->closed)
        Py_RETURN_FALSE;
    enter(L);
    conn_close(L, c, reason, !c->connecting, 0);
    leave(L);
    Py_RETURN_TRUE;
}

/* Every live connection, for a pass that may close some (closing defers the free). */
static Conn **snapshot(Lane *L, Py_ssize_t *n) {
    Conn **v = PyMem_Malloc((size_t)(L->count + 1) * sizeof(Conn *));
    *n = 0;
    if (v == NULL)
        return NULL;
    for (Conn *c = L->live.next; c != &L->live && *n < L->count; c = c->next)
        v[(*n)++] = c;
    return v;
}

/* sweep(connect_timeout, idle_timeout): end the overdue connections (seconds). */
static PyObject *Lane_sweep(Lane *L, PyObject *args) {
    double ct, it;
    if (!PyArg_ParseTuple(args, "dd", &ct, &it))
        return NULL;
    int64_t now = now_ns();
    Py_ssize_t n;
    enter(L);
    Conn **v = snapshot(L, &n);
    if (v == NULL) {
        leave(L);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Conn *c = v[i];
        if (c->closed)
            continue;
        if (c->connecting && (double)(now - c->started) > ct * 1e9)
            connect_failed(L, c, "connect timeout");
        else if (!c->connecting && (double)(now - c->last) > it * 1e9)
            conn_close(L, c, "idle timeout", 1, 0);
    }
    PyMem_Free(v);
    leave(L);
    Py_RETURN_NONE;
}

/* abort_book(book, reason): end every connection admitted from that book now (as abort). */
static PyObject *Lane_abort_book(Lane *L, PyObject *args) {
    PyObject *book;
    const char *reason;
    if (!PyArg_ParseTuple(args, "O!s", &BookType, &book, &reason))
        return NULL;
    Py_ssize_t n;
    enter(L);
    Conn **v = snapshot(L, &n);
    if (v == NULL) {
        leave(L);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!v[i]->closed && v[i]->book == (Book *)book)
            conn_close(L, v[i], reason, !v[i]->connecting, 0);
    PyMem_Free(v);
    leave(L);
    Py_RETURN_NONE;
}

static PyObject *Lane_count(Lane *L, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(L->count);
}

static PyObject *Lane_pipes(Lane *L, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(ii)", L->in_use, L->nidle);
}

/* stats(client_fd): (up, down, splicing up, splicing down) of a live connection, or None. */
static PyObject *Lane_stats(Lane *L, PyObject *arg) {
    int fd;
    if (fd_arg(arg, &fd) < 0)
        return NULL;
    Conn *c = find(L, fd);
    if (c == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(KKOO)", (unsigned long long)c->up.bytes, (unsigned long long)c->down.bytes,
                         c->up.splice ? Py_True : Py_False, c->down.splice ? Py_True : Py_False);
}

/* close(): every connection reset and closed without callbacks (the loop is going away),
 * every listener forgotten, the idle pipes closed. */
static void lane_shutdown(Lane *L) {
    if (L->closed)
        return;
    L->closed = 1;
    enter(L);
    lane_flush(L);
    while (L->live.next != &L->live) {
        Conn *c = L->live.next;
        c->closed = 1;
        pump_stop(L, &c->up);
        pump_stop(L, &c->down);
        slot_release(L, c->cfd, c);
        reset_close(c->cfd);
        if (c->bfd >= 0) {
            slot_release(L, c->bfd, c);
            reset_close(c->bfd);
        }
        if (c->book != NULL) { /* no record ("no callbacks"), but the counts given back */
            c->book->open--;
            if (book_source(c->book, c->key, -1) < 0)
                PyErr_Clear();
            book_release(c);
        }
        Py_CLEAR(c->token);
        Py_CLEAR(c->finished);
        conn_unlink(c);
        conn_link(&L->grave, c);
        L->count--;
    }
    for (int fd = 0; fd < L->nslots; fd++) {
        if (L->slots[fd].kind == S_LISTENER) {
            Listener *l = L->slots[fd].p;
            L->slots[fd].kind = S_FREE;
            L->slots[fd].p = NULL;
            (void)epoll_ctl(L->epfd, EPOLL_CTL_DEL, fd, NULL);
            if (l->busy)
                l->dead = 1;
            else
                listener_free(l);
        }
    }
    while (L->nidle > 0) {
        Pipe *q = &L->idle[--L->nidle];
        close(q->r);
        close(q->w);
    }
    leave(L);
}

static PyObject *Lane_close(Lane *L, PyObject *Py_UNUSED(ignored)) {
    if (L->depth > 0) {
        PyErr_SetString(PyExc_RuntimeError, "the lane cannot close from its own callback");
        return NULL;
    }
    lane_shutdown(L);
    Py_RETURN_NONE;
}

static int Lane_init(Lane *L, PyObject *args, PyObject *kw) {
    static char *names[] = {"epfd", "report", "splice", "pipe_size", "keep", "big", "cc", NULL};
    int epfd, splice = 1, size = 1 << 20, keep = 64, big = 256;
    const char *cc = "";
    Py_ssize_t cclen = 0;
    PyObject *rep;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO|piiiy#", names, &epfd, &rep, &splice, &size, &keep, &big, &cc, &cclen))
        return -1;
    if (cclen >= (Py_ssize_t)sizeof L->cc) {
        PyErr_SetString(PyExc_ValueError, "bad congestion control name");
        return -1;
    }
    for (Py_ssize_t i = 0; i < cclen; i++) { /* pacing._CC_NAME: [a-z0-9_], no NUL */
        char ch = cc[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) {
            PyErr_SetString(PyExc_ValueError, "bad congestion control name");
            return -1;
        }
    }
    if (L->scratch != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a lane is set up once");
        return -1;
    }
    if (epfd < 0 || size < 4096 || keep < 0 || keep > 4096 || big < 0) {
        PyErr_SetString(PyExc_ValueError, "bad lane settings");
        return -1;
    }
    L->scratch = PyMem_Malloc(COPY_SIZE);
    L->idle = PyMem_Calloc((size_t)keep + 1, sizeof(Pipe));
    if (L->scratch == NULL || L->idle == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    L->epfd = epfd;
    Py_INCREF(rep);
    L->report = rep;
    L->splice = splice;
    L->pipe_size = size, L->keep = keep, L->big = big;
    memcpy(L->cc, cc, (size_t)cclen);
    L->cc[cclen] = '\0';
    return 0;
}

static PyObject *Lane_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kw)) {
    Lane *L = (Lane *)type->tp_alloc(type, 0);
    if (L == NULL)
        return NULL;
    L->epfd = -1;
    L->live.next = L->live.prev = &L->live;
    L->grave.next = L->grave.prev = &L->grave;
    L->queue.qnext = L->queue.qprev = &L->queue;
    return (PyObject *)L;
}

static void Lane_dealloc(Lane *L) {
    if (L->scratch != NULL)
        lane_shutdown(L);
    Py_CLEAR(L->lines); /* (closed: nothing queued is left to write) */
    Py_CLEAR(L->lines_add);
    grave_empty(L);
    Py_CLEAR(L->report);
    PyMem_Free(L->slots);
    PyMem_Free(L->idle);
    PyMem_Free(L->scratch);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static PyMethodDef Lane_methods[] = {
    {"poll", (PyCFunction)Lane_poll, METH_O, "poll(timeout_ms) -> [(fd, events)]: wait, handle the lane's events, return the rest"},
    {"listen", (PyCFunction)Lane_listen, METH_VARARGS, "listen(fd, admit, failed, finished, family, backend_sockaddr, client_inline, book=None)"},
    {"unlisten", (PyCFunction)Lane_unlisten, METH_O, "unlisten(fd) -> bool: stop accepting on fd (not closed)"},
    {"start", (PyCFunction)Lane_start, METH_VARARGS, "start(client_fd, token, finished, family, backend_sockaddr, client_inline)"},
    {"relay", (PyCFunction)Lane_relay, METH_VARARGS, "relay(client_fd, backend_fd, token, finished, client_inline)"},
    {"abort", (PyCFunction)Lane_abort, METH_VARARGS, "abort(client_fd, reason) -> bool"},
    {"abort_book", (PyCFunction)Lane_abort_book, METH_VARARGS, "abort_book(book, reason): abort every connection of the book"},
    {"sweep", (PyCFunction)Lane_sweep, METH_VARARGS, "sweep(connect_timeout, idle_timeout)"},
    {"count", (PyCFunction)Lane_count, METH_NOARGS, "count() -> live connections"},
    {"pipes", (PyCFunction)Lane_pipes, METH_NOARGS, "pipes() -> (in use, idle)"},
    {"stats", (PyCFunction)Lane_stats, METH_O, "stats(client_fd) -> (up, down, splicing up, splicing down) | None"},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, "close(): reset every connection, no callbacks"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sockgate.proxy._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lane(epfd, report, splice=True, pipe_size=1<<20, keep=64, big=256, cc=b''): the per-connection path in C",
    .tp_methods = Lane_methods,
    .tp_init = (initproc)Lane_init,
    .tp_new = Lane_new,
};

static PyMethodDef Book_methods[] = {
    {"open", (PyCFunction)book_count, METH_NOARGS, "open() -> connections admitted from this book, not closed yet"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BookType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sockgate.proxy._lane.Book",
    .tp_basicsize = sizeof(Book),
    .tp_dealloc = (destructor)book_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Book(memo, conns, tasks, per_source, add, ending, max_connections, max_per_source): a service's "
              "remembered admissions, replayed by the lane",
    .tp_traverse = (traverseproc)book_traverse,
    .tp_clear = (inquiry)book_clear,
    .tp_methods = Book_methods,
    .tp_init = (initproc)book_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef lane_functions[] = {
    {"duration", (PyCFunction)lane_duration, METH_O, "duration(seconds) -> repr(round(seconds, 6)), as a close record says it"},
    {"same_host", (PyCFunction)lane_same_host, METH_VARARGS, "same_host(peer, local) -> bool: sockaddr bytes, pacing.same_host's decision"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lanemodule = {
    PyModuleDef_HEAD_INIT, "_lane",
    "The proxy's per-connection path (accept, connect, relay) in C: see the comment at the top of _lane.c.", -1,
    lane_functions, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&BookType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&lanemodule);
    if (m == NULL)
        return NULL;
    if (PyModule_AddType(m, &LaneType) < 0 || PyModule_AddType(m, &BookType) < 0) { /* (named after tp_name) */
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
