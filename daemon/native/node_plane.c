/* pyctdbd's native node plane: the node-to-node TCP connections' bytes, moved by a thread that
 * never takes Python's GIL.
 *
 * Why: in the one-node cell of the contended-opens benchmark the lab VM is CPU-bound and each
 * packet that wakes the Python loop costs it tens of microseconds before any work is done
 * (docs/native-hot-path.md). This file is the first part of the native path described there:
 * the thread reads every connection handed to it, cuts the stream into frames with the same
 * rules as protocol/packets.py's PacketReader in node mode (length >= 32 and a multiple of 8,
 * at most max_packet, magic "CTDB", version 1), and queues them for the loop, which it wakes
 * through an eventfd only when the queue was empty: one wake-up for a burst. Frames the loop
 * sends are written at once when the connection's queue is empty and queued otherwise; the
 * thread writes the rest when the socket takes more. One mutex guards all shared state; the
 * thread alone closes descriptors and frees connections (so a descriptor number is never
 * reused under a call that still uses it). Handling some frames here without the loop comes
 * later; the plane decides nothing today.
 *
 * Events for the loop, each: u32 kind, i32 connection id, u32 length, then length bytes
 * (the frame, or a reason in UTF-8), padded to 8 bytes. */

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define NP_ABI 1
#define HEADER_SIZE 32
#define ALIGNMENT 8
#define CTDB_MAGIC 0x43544442u
#define CTDB_VERSION 1u
#define READ_CHUNK 65536

enum { NP_FRAME = 1, NP_CLOSED = 2 };
enum { NP_RECEIVE = 1, NP_SEND = 2 };     /* what a connection is for */

struct np_conn {
    int32_t id;
    int fd;
    int kind;
    int closing;                /* asked to close (by the loop or by an error): no more events */
    int writing;                /* EPOLLOUT armed */
    unsigned char *rbuf;        /* receive: bytes of an incomplete frame (thread only) */
    size_t rlen, rcap;
    unsigned char *wbuf;        /* send: bytes not yet written, from whead */
    size_t whead, wlen, wcap;
    uint64_t frames_in, frames_out, bytes_in, bytes_out;
    struct np_conn *next;
};

struct np_plane {
    pthread_mutex_t mu;
    pthread_t thread;
    int started;
    int stopping;
    int epfd;
    int ctl_fd;                 /* eventfd: wakes the thread (a close, a stop) */
    int wake_fd;                /* eventfd the loop watches (the loop's own descriptor) */
    uint32_t max_packet;
    int32_t next_id;
    struct np_conn *conns;
    unsigned char *ev;          /* queued events */
    size_t evlen, evcap;
    uint64_t wakes;
};

int np_abi(void) { return NP_ABI; }

static struct np_conn *find(struct np_plane *p, int32_t id)
{
    for (struct np_conn *c = p->conns; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

static int grow(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 4096;
    while (cap2 < need)
        cap2 *= 2;
    unsigned char *b = realloc(*buf, cap2);
    if (b == NULL)
        return -1;
    *buf = b;
    *cap = cap2;
    return 0;
}

/* Queue one event (mutex held); wakes the loop when the queue was empty. */
static int push_event(struct np_plane *p, uint32_t kind, int32_t id, const void *data, uint32_t len)
{
    size_t size = 12 + (size_t)len;
    size_t padded = (size + 7) & ~(size_t)7;
    if (grow(&p->ev, &p->evcap, p->evlen + padded) != 0)
        return -1;
    int was_empty = p->evlen == 0;
    unsigned char *e = p->ev + p->evlen;
    memcpy(e, &kind, 4);
    memcpy(e + 4, &id, 4);
    memcpy(e + 8, &len, 4);
    if (len)
        memcpy(e + 12, data, len);
    memset(e + size, 0, padded - size);
    p->evlen += padded;
    if (was_empty) {
        uint64_t one = 1;
        if (write(p->wake_fd, &one, sizeof one) == sizeof one)
            p->wakes++;
    }
    return 0;
}

/* Stop a connection's events and have the thread close it (mutex held). */
static void mark_closed(struct np_plane *p, struct np_conn *c, const char *reason)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (reason != NULL)
        push_event(p, NP_CLOSED, c->id, reason, (uint32_t)strlen(reason));
    uint64_t one = 1;
    (void)!write(p->ctl_fd, &one, sizeof one);
}

static void closed_with_errno(struct np_plane *p, struct np_conn *c, const char *what, int err)
{
    char reason[160];
    snprintf(reason, sizeof reason, "%s: %s", what, strerror(err));
    mark_closed(p, c, reason);
}

/* Why the header at h (avail bytes of it arrived) is malformed, written into reason (nonzero);
 * 0 while what has arrived of it is well-formed. */
static int header_problem(const struct np_plane *p, const unsigned char *h, size_t avail,
                          char *reason, size_t size)
{
    uint32_t length, magic, version;
    memcpy(&length, h, 4);
    if (length < HEADER_SIZE)
        return snprintf(reason, size, "malformed data: stream: packet length %u is shorter than "
                        "the %d-byte header", length, HEADER_SIZE);
    if (length > p->max_packet)
        return snprintf(reason, size, "malformed data: stream: packet length %u exceeds the "
                        "limit of %u", length, p->max_packet);
    if (length % ALIGNMENT)
        return snprintf(reason, size, "malformed data: stream: node packet length %u is not a "
                        "multiple of %d", length, ALIGNMENT);
    if (avail >= 8) {
        memcpy(&magic, h + 4, 4);
        if (magic != CTDB_MAGIC)
            return snprintf(reason, size, "malformed data: stream: bad magic 0x%08x "
                            "(expected 0x%08x)", magic, CTDB_MAGIC);
    }
    if (avail >= 12) {
        memcpy(&version, h + 8, 4);
        if (version != CTDB_VERSION)
            return snprintf(reason, size, "malformed data: stream: unsupported protocol "
                            "version %u", version);
    }
    return 0;
}

/* Cut whole frames off the receive buffer (mutex held); a malformed header closes. */
static void cut_frames(struct np_plane *p, struct np_conn *c)
{
    size_t pos = 0;
    char reason[160];
    while (!c->closing && c->rlen - pos >= 4) {
        const unsigned char *h = c->rbuf + pos;
        size_t avail = c->rlen - pos;
        if (header_problem(p, h, avail, reason, sizeof reason)) {
            mark_closed(p, c, reason);
            break;
        }
        uint32_t length;
        memcpy(&length, h, 4);
        if (avail < length)
            break;
        if (push_event(p, NP_FRAME, c->id, h, length) != 0) {
            mark_closed(p, c, "out of memory queueing a frame");
            break;
        }
        c->frames_in++;
        pos += length;
    }
    if (pos) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
}

static void arm(struct np_plane *p, struct np_conn *c, int writing)
{
    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP | (writing ? EPOLLOUT : 0),
                            .data.u32 = (uint32_t)c->id};
    epoll_ctl(p->epfd, EPOLL_CTL_MOD, c->fd, &e);
    c->writing = writing;
}

/* Write what is queued (mutex held); 0 done or waiting for room, -1 the connection failed. */
static int flush(struct np_plane *p, struct np_conn *c)
{
    while (c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->whead, c->wlen, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->writing)
                    arm(p, c, 1);
                return 0;
            }
            closed_with_errno(p, c, "write failed", errno);
            return -1;
        }
        c->whead += (size_t)n;
        c->wlen -= (size_t)n;
        c->bytes_out += (uint64_t)n;
    }
    c->whead = 0;
    if (c->writing)
        arm(p, c, 0);
    return 0;
}

/* The thread: read what arrives, write what waits, close what was asked to close. */
static void reap(struct np_plane *p)
{
    struct np_conn **link = &p->conns;
    while (*link) {
        struct np_conn *c = *link;
        if (!c->closing) {
            link = &c->next;
            continue;
        }
        *link = c->next;
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        free(c->rbuf);
        free(c->wbuf);
        free(c);
    }
}

static void on_readable(struct np_plane *p, struct np_conn *c, unsigned char *chunk)
{
    /* recv outside the mutex: only this thread closes c->fd or frees c */
    ssize_t n = recv(c->fd, chunk, READ_CHUNK, MSG_DONTWAIT);
    int err = errno;
    pthread_mutex_lock(&p->mu);
    if (c->closing) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    if (n == 0) {
        mark_closed(p, c, "closed by the peer");
    } else if (n < 0) {
        if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)
            closed_with_errno(p, c, "read failed", err);
    } else if (c->kind == NP_SEND) {
        char reason[96];
        snprintf(reason, sizeof reason, "sent %zd bytes on a send-only connection", n);
        mark_closed(p, c, reason);
    } else {
        c->bytes_in += (uint64_t)n;
        if (grow(&c->rbuf, &c->rcap, c->rlen + (size_t)n) != 0) {
            mark_closed(p, c, "out of memory reading");
        } else {
            memcpy(c->rbuf + c->rlen, chunk, (size_t)n);
            c->rlen += (size_t)n;
            cut_frames(p, c);
        }
    }
    pthread_mutex_unlock(&p->mu);
}

static void *run(void *arg)
{
    struct np_plane *p = arg;
    unsigned char *chunk = malloc(READ_CHUNK);
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(p->epfd, events, 64, -1);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            uint32_t id = events[i].data.u32;
            if (id == UINT32_MAX) {            /* the control eventfd */
                uint64_t v;
                (void)!read(p->ctl_fd, &v, sizeof v);
                continue;
            }
            pthread_mutex_lock(&p->mu);
            struct np_conn *c = find(p, (int32_t)id);
            if (c == NULL || c->closing) {
                pthread_mutex_unlock(&p->mu);
                continue;
            }
            if (events[i].events & EPOLLOUT)
                flush(p, c);
            int readable = !c->closing
                && (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR));
            pthread_mutex_unlock(&p->mu);
            if (readable && chunk != NULL)
                on_readable(p, c, chunk);
        }
        pthread_mutex_lock(&p->mu);
        reap(p);
        int stopping = p->stopping;
        pthread_mutex_unlock(&p->mu);
        if (stopping)
            break;
    }
    free(chunk);
    return NULL;
}

void *np_create(int wake_fd, uint32_t max_packet)
{
    if (max_packet < HEADER_SIZE)
        return NULL;
    struct np_plane *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->wake_fd = wake_fd;
    p->max_packet = max_packet;
    p->next_id = 1;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->epfd < 0 || p->ctl_fd < 0 || pthread_mutex_init(&p->mu, NULL) != 0) {
        if (p->epfd >= 0) close(p->epfd);
        if (p->ctl_fd >= 0) close(p->ctl_fd);
        free(p);
        return NULL;
    }
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->ctl_fd, &e);
    return p;
}

int np_start(struct np_plane *p)
{
    if (p->started)
        return 0;
    int rc = pthread_create(&p->thread, NULL, run, p);
    if (rc == 0)
        p->started = 1;
    return rc == 0 ? 0 : -rc;
}

/* Hand a connected, non-blocking socket to the plane (it closes it from now on); returns the
 * connection's id, or -errno. */
int32_t np_add(struct np_plane *p, int fd, int kind)
{
    if (kind != NP_RECEIVE && kind != NP_SEND)
        return -EINVAL;
    struct np_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&p->mu);
    c->id = p->next_id++;
    if (p->next_id == INT32_MAX)
        p->next_id = 1;
    c->fd = fd;
    c->kind = kind;
    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)c->id};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &e) != 0) {
        int err = errno;
        pthread_mutex_unlock(&p->mu);
        free(c);
        return -err;
    }
    c->next = p->conns;
    p->conns = c;
    int32_t id = c->id;
    pthread_mutex_unlock(&p->mu);
    return id;
}

/* Send a frame: written now when nothing waits, queued otherwise. Returns the bytes still
 * queued on the connection (0: all written), or -1 when the connection is gone. */
int64_t np_send(struct np_plane *p, int32_t id, const unsigned char *data, uint32_t len)
{
    pthread_mutex_lock(&p->mu);
    struct np_conn *c = find(p, id);
    if (c == NULL || c->closing) {
        pthread_mutex_unlock(&p->mu);
        return -1;
    }
    if (grow(&c->wbuf, &c->wcap, c->whead + c->wlen + len) != 0) {
        if (c->whead) {             /* room at the front: compact first */
            memmove(c->wbuf, c->wbuf + c->whead, c->wlen);
            c->whead = 0;
        }
        if (grow(&c->wbuf, &c->wcap, c->wlen + len) != 0) {
            mark_closed(p, c, "out of memory queueing a frame to send");
            pthread_mutex_unlock(&p->mu);
            return -1;
        }
    }
    memcpy(c->wbuf + c->whead + c->wlen, data, len);
    c->wlen += len;
    c->frames_out++;
    int64_t left = flush(p, c) == 0 ? (int64_t)c->wlen : -1;
    pthread_mutex_unlock(&p->mu);
    return left;
}

/* Close a connection: no events for it from now on (ones already taken stay taken). */
void np_close(struct np_plane *p, int32_t id)
{
    pthread_mutex_lock(&p->mu);
    struct np_conn *c = find(p, id);
    if (c != NULL)
        mark_closed(p, c, NULL);
    pthread_mutex_unlock(&p->mu);
}

/* Move queued events into buf: whole events only. Returns bytes copied; -(size needed) when
 * the first event does not fit. */
int64_t np_take(struct np_plane *p, unsigned char *buf, uint64_t cap)
{
    pthread_mutex_lock(&p->mu);
    size_t pos = 0;
    while (pos < p->evlen) {
        uint32_t len;
        memcpy(&len, p->ev + pos + 8, 4);
        size_t padded = (12 + (size_t)len + 7) & ~(size_t)7;
        if (pos + padded > cap)
            break;
        pos += padded;
    }
    if (pos == 0 && p->evlen) {
        uint32_t len;
        memcpy(&len, p->ev + 8, 4);
        pthread_mutex_unlock(&p->mu);
        return -(int64_t)((12 + (size_t)len + 7) & ~(size_t)7);
    }
    memcpy(buf, p->ev, pos);
    memmove(p->ev, p->ev + pos, p->evlen - pos);
    p->evlen -= pos;
    pthread_mutex_unlock(&p->mu);
    return (int64_t)pos;
}

/* frames in, frames out, bytes in, bytes out, bytes queued to send; 0, or -1 if unknown. */
int np_counters(struct np_plane *p, int32_t id, uint64_t *out)
{
    pthread_mutex_lock(&p->mu);
    struct np_conn *c = find(p, id);
    if (c != NULL) {
        out[0] = c->frames_in;
        out[1] = c->frames_out;
        out[2] = c->bytes_in;
        out[3] = c->bytes_out;
        out[4] = c->wlen;
    }
    pthread_mutex_unlock(&p->mu);
    return c != NULL ? 0 : -1;
}

uint64_t np_wakes(struct np_plane *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t w = p->wakes;
    pthread_mutex_unlock(&p->mu);
    return w;
}

/* Stop the thread and close every connection the plane still holds. */
void np_destroy(struct np_plane *p)
{
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    for (struct np_conn *c = p->conns; c; c = c->next)
        c->closing = 1;
    uint64_t one = 1;
    (void)!write(p->ctl_fd, &one, sizeof one);
    pthread_mutex_unlock(&p->mu);
    if (p->started)
        pthread_join(p->thread, NULL);
    reap(p);
    close(p->epfd);
    close(p->ctl_fd);
    free(p->ev);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
