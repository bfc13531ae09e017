/* pyctdbd's native heartbeat pacer: the same job as the Python pacer thread
 * (daemon/server/heartbeat_pacer.py), in a thread that never takes Python's GIL.
 *
 * Why native: a Python thread that wakes 50 times a second to send two datagrams and drain a
 * socket costs this lab VM 134-157 us of CPU per wake-up inside the daemon, a C thread 49-50 us
 * (docs/fast-profile-idle.md). The thread sleeps on the heartbeat grid (CLOCK_MONOTONIC, the
 * loop's clock), sends the prepared frames while the loop's liveness stamp is fresh, reads every
 * queued datagram (kernel receive time kept, anything that is not a CTDB keepalive from the node
 * its address belongs to counted and dropped), and writes to an eventfd when a watched peer has
 * been silent for the alarm silence (once per silence). The event loop takes the arrivals when
 * it looks. Every decision stays in the node core; this file only measures silence.
 *
 * Everything the loop hands over (timing, targets, peers, watched set) and everything the thread
 * produces (arrivals, counters) sits behind one mutex, held for one beat at most. */

#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HP_ABI 1
#define HEADER_SIZE 32
#define MAX_ARRIVALS 4096
#define MAX_DRAIN 4096

struct hp_target {
    struct sockaddr_storage to;
    socklen_t to_len;
    unsigned char *frame;
    size_t frame_len;
};

struct hp_peer {
    int family;                 /* AF_INET or AF_INET6 */
    unsigned char addr[16];     /* an IPv4 address in the first 4 bytes */
    int32_t pnn;
};

struct hp_pacer {
    int fd;                     /* the fast channel's UDP socket (the caller's own duplicate) */
    int wake_fd;                /* an eventfd the loop reads (owned by the loop) */
    uint32_t magic, version, op_keepalive;
    int32_t npnn;               /* pnns are 0 .. npnn-1 */

    pthread_mutex_t mu;
    pthread_t thread;
    int started;
    int stopping;               /* __atomic: set by the loop, read by the thread */
    int policy, priority;       /* the loop thread's scheduling, taken by the pacer thread */

    double interval, phase, alarm_silence, liveness_limit;
    double alive_at;

    struct hp_target *targets;
    int ntargets;
    struct hp_peer *peers;
    int npeers;

    unsigned char *watched;     /* per pnn */
    unsigned char *heard;       /* per pnn: an arrival since the pacer started or began watching */
    unsigned char *alarmed;     /* per pnn: alarm raised, no beat since */
    double *last;               /* per pnn: latest arrival, loop clock */

    int32_t arrival_pnn[MAX_ARRIVALS];
    double arrival_at[MAX_ARRIVALS];
    int narrivals;

    uint64_t beats, alarms, sent, received, bad;
};

static double clock_seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int hp_abi(void) { return HP_ABI; }

void *hp_create(int fd, int wake_fd, int32_t npnn, uint32_t magic, uint32_t version, uint32_t op_keepalive)
{
    if (npnn <= 0 || npnn > 65536)
        return NULL;
    struct hp_pacer *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->fd = fd;
    p->wake_fd = wake_fd;
    p->magic = magic;
    p->version = version;
    p->op_keepalive = op_keepalive;
    p->npnn = npnn;
    p->policy = -1;
    p->interval = 0.02;
    p->alarm_silence = INFINITY;
    p->liveness_limit = 0.0;
    p->watched = calloc((size_t)npnn, 1);
    p->heard = calloc((size_t)npnn, 1);
    p->alarmed = calloc((size_t)npnn, 1);
    p->last = calloc((size_t)npnn, sizeof(double));
    if (!p->watched || !p->heard || !p->alarmed || !p->last
        || pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p->watched); free(p->heard); free(p->alarmed); free(p->last); free(p);
        return NULL;
    }
    return p;
}

void hp_set_timing(struct hp_pacer *p, double interval, double phase, double alarm_silence,
                   double liveness_limit)
{
    if (!(interval > 0.0))
        return;
    pthread_mutex_lock(&p->mu);
    p->interval = interval;
    p->phase = phase;
    p->alarm_silence = alarm_silence;
    p->liveness_limit = liveness_limit;
    pthread_mutex_unlock(&p->mu);
}

void hp_loop_alive(struct hp_pacer *p, double now)
{
    pthread_mutex_lock(&p->mu);
    p->alive_at = now;
    pthread_mutex_unlock(&p->mu);
}

static void free_targets(struct hp_target *targets, int n)
{
    for (int i = 0; i < n; i++)
        free(targets[i].frame);
    free(targets);
}

/* n targets: sockaddrs packed one after the other (lengths in to_lens), frames likewise. */
int hp_set_targets(struct hp_pacer *p, int n, const unsigned char *tos, const int32_t *to_lens,
                   const unsigned char *frames, const int32_t *frame_lens)
{
    struct hp_target *targets = n > 0 ? calloc((size_t)n, sizeof *targets) : NULL;
    if (n > 0 && targets == NULL)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        if (to_lens[i] <= 0 || (size_t)to_lens[i] > sizeof targets[i].to || frame_lens[i] < 0) {
            free_targets(targets, i);
            return -EINVAL;
        }
        memcpy(&targets[i].to, tos, (size_t)to_lens[i]);
        targets[i].to_len = (socklen_t)to_lens[i];
        tos += to_lens[i];
        targets[i].frame = malloc((size_t)frame_lens[i] + 1);
        if (targets[i].frame == NULL) {
            free_targets(targets, i);
            return -ENOMEM;
        }
        memcpy(targets[i].frame, frames, (size_t)frame_lens[i]);
        targets[i].frame_len = (size_t)frame_lens[i];
        frames += frame_lens[i];
    }
    pthread_mutex_lock(&p->mu);
    struct hp_target *old = p->targets;
    int nold = p->ntargets;
    p->targets = targets;
    p->ntargets = n;
    pthread_mutex_unlock(&p->mu);
    free_targets(old, nold);
    return 0;
}

/* The nodes whose datagrams count: family, 16 address bytes and pnn each. */
int hp_set_peers(struct hp_pacer *p, int n, const int32_t *families, const unsigned char *addrs,
                 const int32_t *pnns)
{
    struct hp_peer *peers = n > 0 ? calloc((size_t)n, sizeof *peers) : NULL;
    if (n > 0 && peers == NULL)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        if (pnns[i] < 0 || pnns[i] >= p->npnn) {
            free(peers);
            return -EINVAL;
        }
        peers[i].family = families[i];
        memcpy(peers[i].addr, addrs + 16 * i, 16);
        peers[i].pnn = pnns[i];
    }
    pthread_mutex_lock(&p->mu);
    struct hp_peer *old = p->peers;
    p->peers = peers;
    p->npeers = n;
    pthread_mutex_unlock(&p->mu);
    free(old);
    return 0;
}

/* A newly watched peer's clock starts anew: it raises no alarm before it is heard again. */
int hp_set_watched(struct hp_pacer *p, int n, const int32_t *pnns)
{
    for (int i = 0; i < n; i++)
        if (pnns[i] < 0 || pnns[i] >= p->npnn)
            return -EINVAL;
    pthread_mutex_lock(&p->mu);
    unsigned char *was = p->watched;
    unsigned char *now = calloc((size_t)p->npnn, 1);
    if (now == NULL) {
        pthread_mutex_unlock(&p->mu);
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        int32_t pnn = pnns[i];
        if (!was[pnn]) {
            p->heard[pnn] = 0;
            p->alarmed[pnn] = 0;
        }
        now[pnn] = 1;
    }
    p->watched = now;
    pthread_mutex_unlock(&p->mu);
    free(was);
    return 0;
}

/* Moves up to cap arrivals, oldest first; returns how many. */
int hp_take(struct hp_pacer *p, int32_t *pnns, double *ats, int cap)
{
    pthread_mutex_lock(&p->mu);
    int n = p->narrivals < cap ? p->narrivals : cap;
    memcpy(pnns, p->arrival_pnn, (size_t)n * sizeof *pnns);
    memcpy(ats, p->arrival_at, (size_t)n * sizeof *ats);
    memmove(p->arrival_pnn, p->arrival_pnn + n, (size_t)(p->narrivals - n) * sizeof *pnns);
    memmove(p->arrival_at, p->arrival_at + n, (size_t)(p->narrivals - n) * sizeof *ats);
    p->narrivals -= n;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* beats, alarms, datagrams sent, heartbeats received, datagrams dropped: since creation. */
void hp_counters(struct hp_pacer *p, uint64_t *out)
{
    pthread_mutex_lock(&p->mu);
    out[0] = p->beats;
    out[1] = p->alarms;
    out[2] = p->sent;
    out[3] = p->received;
    out[4] = p->bad;
    pthread_mutex_unlock(&p->mu);
}

/* With the mutex held. A loop that has not taken arrivals for MAX_ARRIVALS of them (wedged for
 * many seconds) keeps each peer's latest: what the detector judges silence by. */
static void add_arrival(struct hp_pacer *p, int32_t pnn, double at)
{
    if (p->narrivals == MAX_ARRIVALS) {
        p->narrivals = 0;
        for (int32_t q = 0; q < p->npnn && p->narrivals < MAX_ARRIVALS; q++)
            if (p->heard[q]) {
                p->arrival_pnn[p->narrivals] = q;
                p->arrival_at[p->narrivals] = p->last[q];
                p->narrivals++;
            }
        if (p->narrivals == MAX_ARRIVALS)
            return;
    }
    p->arrival_pnn[p->narrivals] = pnn;
    p->arrival_at[p->narrivals] = at;
    p->narrivals++;
}

static int32_t source_pnn(const struct hp_pacer *p, const struct sockaddr_storage *from)
{
    int family;
    const unsigned char *addr;
    static const unsigned char v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (from->ss_family == AF_INET) {
        family = AF_INET;
        addr = (const unsigned char *)&((const struct sockaddr_in *)from)->sin_addr;
    } else if (from->ss_family == AF_INET6) {
        addr = (const unsigned char *)&((const struct sockaddr_in6 *)from)->sin6_addr;
        family = AF_INET6;
        if (memcmp(addr, v4_mapped, 12) == 0) {
            family = AF_INET;
            addr += 12;
        }
    } else {
        return -1;
    }
    for (int i = 0; i < p->npeers; i++)
        if (p->peers[i].family == family
            && memcmp(p->peers[i].addr, addr, family == AF_INET ? 4 : 16) == 0)
            return p->peers[i].pnn;
    return -1;
}

/* The sending node of a whole REQ_KEEPALIVE packet with a valid header, or -1. */
static int64_t keepalive_source(const struct hp_pacer *p, const unsigned char *data, ssize_t len)
{
    uint32_t h[8];
    if (len < HEADER_SIZE)
        return -1;
    memcpy(h, data, sizeof h);      /* little-endian hosts only, as CTDB's wire format */
    if (h[0] != (uint32_t)len || h[1] != p->magic || h[2] != p->version || h[4] != p->op_keepalive)
        return -1;
    return (int64_t)h[6];
}

static void drain(struct hp_pacer *p, double wall_to_loop)
{
    unsigned char data[256];
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec)) + 64];
        struct cmsghdr align;
    } control;
    for (int i = 0; i < MAX_DRAIN; i++) {
        struct sockaddr_storage from;
        struct iovec iov = {data, sizeof data};
        struct msghdr msg = {0};
        msg.msg_name = &from;
        msg.msg_namelen = sizeof from;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        ssize_t len = recvmsg(p->fd, &msg, MSG_DONTWAIT);
        if (len < 0)
            break;                  /* EAGAIN: drained; anything else: try again next beat */
        int32_t pnn = source_pnn(p, &from);
        if (pnn < 0 || (msg.msg_flags & MSG_TRUNC) || keepalive_source(p, data, len) != pnn) {
            p->bad++;
            continue;
        }
        double at = -1.0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS
                && c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                at = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + wall_to_loop;
            }
        if (at < 0.0)
            at = clock_seconds(CLOCK_REALTIME) + wall_to_loop;
        p->received++;
        add_arrival(p, pnn, at);
        if (!p->heard[pnn] || at > p->last[pnn]) {
            p->last[pnn] = at;
            p->heard[pnn] = 1;
            p->alarmed[pnn] = 0;
        }
    }
}

/* One grid point at loop-clock time `now`: send, read, raise the alarm if a watched peer has
 * been silent too long. Returns 1 when it raised the alarm. Called by the thread, and directly
 * by the unit tests (with their own clock). */
int hp_beat(struct hp_pacer *p, double now, double wall_to_loop)
{
    int alarm = 0;
    pthread_mutex_lock(&p->mu);
    p->beats++;
    if (now - p->alive_at <= p->liveness_limit)
        for (int i = 0; i < p->ntargets; i++) {
            struct hp_target *t = &p->targets[i];
            if (sendto(p->fd, t->frame, t->frame_len, MSG_DONTWAIT,
                       (const struct sockaddr *)&t->to, t->to_len) >= 0)
                p->sent++;          /* a full buffer or no route: a lost heartbeat, nothing more */
        }
    drain(p, wall_to_loop);
    for (int32_t pnn = 0; pnn < p->npnn; pnn++)
        /* A peer not heard since it became watched has no clock yet; one silent past the alarm
         * silence raises it once per silence. */
        if (p->watched[pnn] && p->heard[pnn] && !p->alarmed[pnn]
            && now - p->last[pnn] >= p->alarm_silence) {
            p->alarmed[pnn] = 1;
            alarm = 1;
        }
    if (alarm)
        p->alarms++;
    pthread_mutex_unlock(&p->mu);
    if (alarm) {
        uint64_t one = 1;
        if (write(p->wake_fd, &one, sizeof one) < 0) {
            /* the eventfd's counter is full: the loop has a wake-up pending anyway */
        }
    }
    return alarm;
}

static void *run(void *arg)
{
    struct hp_pacer *p = arg;
    if (p->policy >= 0) {
        struct sched_param param = {.sched_priority = p->priority};
        sched_setscheduler(0, p->policy, &param);   /* this thread only (Linux) */
    }
    while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&p->mu);
        double interval = p->interval, phase = p->phase;
        pthread_mutex_unlock(&p->mu);
        double now = clock_seconds(CLOCK_MONOTONIC);
        double next = phase + (floor((now - phase) / interval) + 1.0) * interval;
        struct timespec at;
        at.tv_sec = (time_t)next;
        at.tv_nsec = (long)((next - (double)at.tv_sec) * 1e9);
        if (at.tv_nsec >= 1000000000L) {
            at.tv_sec++;
            at.tv_nsec -= 1000000000L;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
            if (__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE))
                break;
        if (__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE))
            break;
        double mono = clock_seconds(CLOCK_MONOTONIC);
        hp_beat(p, mono, mono - clock_seconds(CLOCK_REALTIME));
    }
    return NULL;
}

/* policy < 0: keep the policy a new thread gets. Returns 0 or an errno. */
int hp_start(struct hp_pacer *p, int policy, int priority)
{
    if (p->started)
        return EBUSY;
    p->policy = policy;
    p->priority = priority;
    __atomic_store_n(&p->stopping, 0, __ATOMIC_RELEASE);
    int rc = pthread_create(&p->thread, NULL, run, p);
    if (rc == 0)
        p->started = 1;
    return rc;
}

int hp_running(struct hp_pacer *p)
{
    return p->started && !__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE);
}

/* Stops the thread (it finishes the beat it is in) and frees everything. */
void hp_destroy(struct hp_pacer *p)
{
    if (p == NULL)
        return;
    __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
    if (p->started)
        pthread_join(p->thread, NULL);
    free_targets(p->targets, p->ntargets);
    free(p->peers);
    free(p->watched);
    free(p->heard);
    free(p->alarmed);
    free(p->last);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
