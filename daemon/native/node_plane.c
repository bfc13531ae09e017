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
 * reused under a call that still uses it).
 *
 * The lmaster's grant (step 2, with np_grant_setup): a peer's REQ_CALL for a record this
 * node is lmaster and dmaster of, or that nobody holds, is answered here with the REPLY_DMASTER,
 * exactly as core/db/migration.py decides it, without waking the loop. The rules that keep that
 * safe (docs/native-hot-path.md):
 *  - the loop holds the "rest" mutex except while it sleeps in epoll (np_rest_release /
 *    np_rest_take around its wait), and the thread grants only holding it: it uses the loop's
 *    TDB contexts while the loop is in no libtdb call and its state is at rest;
 *  - the loop publishes what the grant must respect (np_grant_publish: generation, lmasters,
 *    databases open to grants with their contexts, the keys it has state for, which connection
 *    is whose) before it sleeps; after any loop run that state is stale and nothing is granted
 *    until the next publish;
 *  - only when no frame waits for the loop (nothing overtakes a frame it has not taken);
 *  - what a grant must leave behind (statistics, the hand-off log, the vacuum's queue) is logged
 *    for the loop, which takes it (np_grant_take) as soon as it wakes, before anything else.
 * Anything else — another packet, a busy key, a contended chain lock, a record held elsewhere,
 * a failed store — goes to the loop as a frame, unchanged.
 *
 * Local clients (step 3, NP_CLIENT): smbd's and the ctdb tool's connections, framed as
 * net/local.py frames them (no 8-byte rule: smbd sends unpadded packets), with its bound on the
 * incomplete packets all clients hold together; the loop gets their frames and writes to them
 * through the plane like to the node connections.
 *
 * smbd's calls (step 3, with np_calls_setup), under the grant's rules: a client's REQ_CALL for a
 * key no published state names is answered from the record held here or sent on to the
 * believed dmaster (client_call_record); the REPLY_DMASTER for such a call, when it comes before
 * the loop wakes, is landed and the client answered (land_record); smbd's SCHEDULE_FOR_DELETION
 * is logged for the vacuum's queue. The calls still under way when the loop wakes, and all the
 * rest, are in a call log the loop takes first (np_calls_take, server/native_calls.py): from
 * then on they are the core's own.
 *
 * Events for the loop, each: u32 kind (1 a frame, 2 closed, 3 closed for what the peer sent,
 * 4 a client closed for its stalled incomplete packet),
 * i32 connection id, u32 length, then length bytes (the frame, or a reason in UTF-8), padded
 * to 8 bytes. */

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NP_ABI 7
#define HEADER_SIZE 32
#define ALIGNMENT 8
#define CTDB_MAGIC 0x43544442u
#define CTDB_VERSION 1u
#define READ_CHUNK 65536

enum { NP_FRAME = 1, NP_CLOSED = 2, NP_CLOSED_BAD = 3,  /* BAD: for what the peer sent */
       NP_CLOSED_STALLED = 4 };           /* a client evicted for its stalled incomplete packet */
enum { NP_RECEIVE = 1, NP_SEND = 2,       /* what a connection is for */
       NP_CLIENT = 3 };                   /* a local client: framed without the 8-byte rule, written to */

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
    int32_t peer_pnn;           /* receive: the node whose current inbound connection this is (-1) */
    size_t held;                /* client: bytes of an incomplete packet counted in client_partial */
    uint64_t progress_ns;       /* client: when that packet last grew (CLOCK_MONOTONIC) */
    struct np_conn *next;
};

/* ---- the lmaster's grant: its state ---- */

typedef struct { unsigned char *dptr; size_t dsize; } np_tdb_data;

struct np_tdb_log {             /* struct tdb_logging_context */
    void (*log_fn)(void *, int, const char *, ...);
    void *log_private;
};

struct np_tdb_fns {             /* libtdb's functions, passed in by the loader (the library
                                   is not linked against libtdb: Python loaded it already) */
    np_tdb_data (*fetch)(void *, np_tdb_data);
    int (*store)(void *, np_tdb_data, np_tdb_data, int);
    int (*chainlock_nonblock)(void *, np_tdb_data);
    int (*chainunlock)(void *, np_tdb_data);
    unsigned int (*hash)(np_tdb_data *);
    int (*error)(void *);
    void (*set_logging)(void *, const struct np_tdb_log *);
    void *(*logging_private)(void *);
    /* the log function every file of the daemon was opened with (store/libtdb.py): put back
     * after a grant, with the file's own log_private */
    void (*loop_log_fn)(void *, int, const char *, ...);
    int (*delete)(void *, np_tdb_data);             /* the vacuum's triage (np_vacuum_triage) */
};

#define MAX_CFLIGHTS 256            /* more calls under way in one sleep: the loop takes the rest */
#define MAX_LANDED 1024

struct np_cflight {             /* a client's call the thread sent on (step 3b) */
    uint32_t reqid, db_id, keylen, hash, callid, client_reqid, client_src;
    int32_t conn;               /* the client's */
    void *ctx;
    uint64_t started_ns;
    unsigned char key[];
};

struct np_landed { uint32_t db_id, keylen, hash; unsigned char *key; };

struct np_busy {                /* a key the loop has state for */
    uint32_t db_id, keylen, hash;
    const unsigned char *key;   /* into np_grants.busy_blob */
};

struct np_grants {
    int enabled;
    struct np_tdb_fns fn;
    uint32_t max_key;
    /* published by the loop (np_grant_publish) */
    int published;
    uint64_t published_run;     /* the loop run it describes; stale once loop_runs moved on */
    int open;                   /* not banned, not in recovery, a vnnmap */
    uint32_t pnn, generation;
    uint32_t *lmasters, nlmasters;
    uint32_t *db_ids, ndbs;
    void **ctxs;
    int32_t *send_conn;         /* by pnn: the connection replies to that node go on (-1) */
    uint32_t nsend;
    struct np_busy *busy;       /* open addressing, nbusy_slots a power of two */
    uint32_t nbusy_slots;
    unsigned char *busy_blob;
    volatile int wanted;        /* a peer asked for a key this node is lmaster of (0 -> 1 once) */
    volatile int asked;         /* a grant met a stale state or an awake loop: publish again */
    /* for the loop: one entry per grant, taken by np_grant_take */
    unsigned char *log;
    size_t loglen, logcap;
    unsigned char *out;         /* the reply being built */
    size_t outcap;
    uint64_t granted, declined_stale, declined_busy, declined_order, declined_other;
    /* smbd's calls (step 3b, np_calls_setup): taken, like grants, only while the loop sleeps */
    int calls_enabled;
    uint64_t calls_run;         /* the loop run np_calls_publish described */
    uint32_t next_reqid;        /* published: the core's next reqid; the thread's flights use it on */
    struct np_cflight **cflights;   /* flights the thread started since the loop last woke */
    uint32_t ncflights;
    struct np_landed *landed;   /* keys landed since the loop last woke: pinned, not granted */
    uint32_t nlanded;
    unsigned char *clog;        /* the call log, taken by np_calls_take */
    size_t cloglen, clogcap;
    uint64_t calls_answered, calls_sent, calls_landed, calls_left;
};

struct np_plane {
    pthread_mutex_t mu;
    pthread_t thread;
    int started;
    int policy, priority;       /* the thread's scheduling, set by np_start */
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
    pthread_mutex_t rest;       /* held by the loop except while it sleeps */
    int rest_held;              /* by the loop (its thread only reads and writes this) */
    uint64_t loop_runs;         /* times the loop woke and took rest again */
    uint64_t client_partial;    /* bytes of incomplete packets all clients hold together */
    uint64_t max_partial;       /* ... at most (np_set_max_partial; net/local.py's rule) */
    struct np_grants g;
};

int np_abi(void) { return NP_ABI; }

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

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

/* Stop a connection's events and have the thread close it (mutex held); the loop gets an
 * event of `kind` with the reason, if there is one. */
static void mark_closed_as(struct np_plane *p, struct np_conn *c, const char *reason, uint32_t kind)
{
    if (c->closing)
        return;
    c->closing = 1;
    p->client_partial -= c->held;               /* what it sent of a packet is dropped now */
    c->held = 0;
    if (reason != NULL)
        push_event(p, kind, c->id, reason, (uint32_t)strlen(reason));
    uint64_t one = 1;
    (void)!write(p->ctl_fd, &one, sizeof one);
}

static void mark_closed(struct np_plane *p, struct np_conn *c, const char *reason)
{
    mark_closed_as(p, c, reason, NP_CLOSED);
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
                          int node, char *reason, size_t size)
{
    uint32_t length, magic, version;
    memcpy(&length, h, 4);
    if (length < HEADER_SIZE)
        return snprintf(reason, size, "malformed data: stream: packet length %u is shorter than "
                        "the %d-byte header", length, HEADER_SIZE);
    if (length > p->max_packet)
        return snprintf(reason, size, "malformed data: stream: packet length %u exceeds the "
                        "limit of %u", length, p->max_packet);
    if (node && length % ALIGNMENT)             /* clients may send unpadded packets (smbd does) */
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

/* ---- the lmaster's grant ---- */

#define OP_REQ_CALL 0u
#define OP_REPLY_DMASTER 3u
#define REQ_CALL_HEAD 56            /* header + flags, db_id, callid, hopcount, keylen, calldatalen */
#define LTDB_HEADER 24
#define TDB_REPLACE 1
#define TDB_ERR_NOEXIST 8
#define RF_MIGRATED_WITH_DATA 0x00010000u
#define RF_VACUUM_MIGRATED 0x00020000u
#define RF_AUTOMATIC 0x00040000u
#define RF_RO_FLAGS 0x0f000000u
#define GRANT_MAX_QUEUED (1u << 20) /* a peer this far behind gets its replies from the loop */
#define GRANT_LOG_MAX (1u << 20)    /* the loop has not taken this much yet: let it catch up */
#define DMASTER_REPLY_HEAD 24       /* REPLY_DMASTER body: db_id, pad, rsn, keylen, datalen */
#define GRANT_ENTRY_HEAD 40         /* a grant log entry before its key (np_grant_take) */

static size_t grant_entry_size(uint32_t keylen)
{
    return (GRANT_ENTRY_HEAD + (size_t)keylen + 7) & ~(size_t)7;
}

static int flush(struct np_plane *p, struct np_conn *c);

/* Queue a frame on a connection and write what the socket takes (mutex held). 0; -1 when it
 * could not be queued (out of memory: the connection is closed); -2 when it was queued and the
 * write failed (flush closed the connection). */
static int queue_frame(struct np_plane *p, struct np_conn *c, const unsigned char *data, size_t len)
{
    if (grow(&c->wbuf, &c->wcap, c->whead + c->wlen + len) != 0) {
        if (c->whead) {             /* room at the front: compact first */
            memmove(c->wbuf, c->wbuf + c->whead, c->wlen);
            c->whead = 0;
        }
        if (grow(&c->wbuf, &c->wcap, c->wlen + len) != 0) {
            mark_closed(p, c, "out of memory queueing a frame to send");
            return -1;
        }
    }
    memcpy(c->wbuf + c->whead + c->wlen, data, len);
    c->wlen += len;
    c->frames_out++;
    return flush(p, c) == 0 ? 0 : -2;
}

static uint32_t rd32(const unsigned char *b) { uint32_t v; memcpy(&v, b, 4); return v; }
static uint64_t rd64(const unsigned char *b) { uint64_t v; memcpy(&v, b, 8); return v; }
static void wr32(unsigned char *b, uint32_t v) { memcpy(b, &v, 4); }
static void wr64(unsigned char *b, uint64_t v) { memcpy(b, &v, 8); }

struct ltdb_header { uint64_t rsn; uint32_t dmaster, reserved1, flags; };

static void pack_header(unsigned char *b, const struct ltdb_header *h)
{
    wr64(b, h->rsn);
    wr32(b + 8, h->dmaster);
    wr32(b + 12, h->reserved1);
    wr32(b + 16, h->flags);
    memset(b + 20, 0, 4);
}

static struct ltdb_header unpack_header(const unsigned char *b)
{
    return (struct ltdb_header){rd64(b), rd32(b + 8), rd32(b + 12), rd32(b + 16)};
}

/* A packet's 32-byte header (length: the padded length, as the packet is sent). */
static void put_packet_header(unsigned char *o, size_t length, uint32_t generation, uint32_t op,
                              uint32_t destnode, uint32_t srcnode, uint32_t reqid)
{
    wr32(o, (uint32_t)length);
    wr32(o + 4, CTDB_MAGIC);
    wr32(o + 8, CTDB_VERSION);
    wr32(o + 12, generation);
    wr32(o + 16, op);
    wr32(o + 20, destnode);
    wr32(o + 24, srcnode);
    wr32(o + 28, reqid);
}

/* ctdb_ltdb_store_server's rules for a volatile database (core/db/ltdbrules.py `store`, with a
 * vnnmap): changes *h to what is stored; returns whether the record is kept, and in *schedule
 * whether it goes on the vacuum's queue. */
static int store_rules(struct ltdb_header *h, size_t datalen, uint32_t pnn, uint32_t lmaster,
                       int *schedule)
{
    uint32_t flags = h->flags;
    int keep = 0, sched = 0;
    if (datalen)
        keep = 1;
    else if (flags & RF_RO_FLAGS)
        keep = 1;
    else if (flags & RF_AUTOMATIC)
        keep = sched = 1;
    else if (flags & RF_MIGRATED_WITH_DATA)
        keep = 1;
    else if (pnn == lmaster) {
        if ((flags & RF_VACUUM_MIGRATED) && pnn == h->dmaster)
            keep = sched = 1;
        if (!(flags & RF_VACUUM_MIGRATED))
            keep = 1;
        else if (pnn != h->dmaster)
            keep = 1;
    } else if (pnn == h->dmaster)
        keep = 1;
    if (keep && pnn == h->dmaster && !(flags & RF_RO_FLAGS)) {
        h->rsn += 1;
        if (!datalen)
            sched = 1;
    }
    h->flags = flags & ~(RF_VACUUM_MIGRATED | RF_AUTOMATIC);
    *schedule = sched && keep;
    return keep;
}

static int store_record(const struct np_tdb_fns *fn, void *ctx, np_tdb_data key,
                        const struct ltdb_header *h, const unsigned char *data, size_t datalen)
{
    unsigned char small[512];
    size_t total = LTDB_HEADER + datalen;
    unsigned char *val = total <= sizeof small ? small : malloc(total);
    if (val == NULL)
        return -1;
    pack_header(val, h);
    if (datalen)
        memcpy(val + LTDB_HEADER, data, datalen);
    np_tdb_data v = {val, total};
    int rc = fn->store(ctx, key, v, TDB_REPLACE);
    if (val != small)
        free(val);
    return rc;
}

/* libtdb's log during a grant. tdb_fetch of a corrupt chain fails with CORRUPT or IO, which
 * the grant leaves to the loop; libtdb's other lookups answer NOEXIST there and only their log
 * says why (store/tdbfile.py), so as a second guard a grant that made libtdb complain (FATAL or
 * ERROR, as the loop counts them) also leaves the packet to the loop, which reads the record
 * again with the file's own log function back in place and reports it. */
static void *(*grant_logging_private)(void *);     /* libtdb's, set by np_grant_setup/_record */

static void grant_log(void *tdb, int level, const char *fmt, ...)
{
    (void)fmt;
    unsigned *complaints = grant_logging_private(tdb);
    if (level <= 1 && complaints != NULL)
        (*complaints)++;
}

/* A record's chain locked by the thread's decisions: tried without blocking, with libtdb's
 * complaints counted meanwhile (grant_log) and the file's own log function put back when it is
 * unlocked. The record as read under it, and whether the loop must read it instead (libtdb
 * complained, an error other than "missing", a record shorter than its header). */
struct held_chain {
    void *ctx;
    np_tdb_data key;
    unsigned complaints;
    struct np_tdb_log theirs;
    np_tdb_data rec;
};

/* 0 with the chain locked and the record read into hc->rec (NULL when missing); -1 when smbd or
 * a helper holds the chain (nothing changed). */
static int lock_chain(const struct np_tdb_fns *fn, void *ctx, np_tdb_data key, struct held_chain *hc)
{
    *hc = (struct held_chain){ctx, key, 0, {fn->loop_log_fn, fn->logging_private(ctx)}, {NULL, 0}};
    struct np_tdb_log ours = {grant_log, &hc->complaints};      /* libtdb copies it */
    fn->set_logging(ctx, &ours);
    if (fn->chainlock_nonblock(ctx, key) != 0) {
        fn->set_logging(ctx, &hc->theirs);
        return -1;
    }
    hc->rec = fn->fetch(ctx, key);
    return 0;
}

static int unreadable(const struct np_tdb_fns *fn, const struct held_chain *hc)
{
    return hc->complaints || (hc->rec.dptr == NULL ? fn->error(hc->ctx) != TDB_ERR_NOEXIST
                                                   : hc->rec.dsize < LTDB_HEADER);
}

static void unlock_chain(const struct np_tdb_fns *fn, struct held_chain *hc)
{
    fn->chainunlock(hc->ctx, hc->key);
    fn->set_logging(hc->ctx, &hc->theirs);
    free(hc->rec.dptr);
}

/* What a grant did besides the reply. */
struct grant_info {
    uint32_t stores;            /* records written */
    uint32_t scheduled;         /* the initial store put the record on the vacuum's queue */
    struct ltdb_header sched;   /* with this header */
};

/* The lmaster's grant of the REQ_CALL `f` (checked by the caller: a whole REQ_CALL, this node
 * the key's lmaster) on the database `ctx`, as core/db/migration.py's `_req_call` for a record
 * this node holds (or nobody holds) and no state of the core names the key: the initial store
 * of a missing record, the store naming the new dmaster, the REPLY_DMASTER. Returns the reply's
 * length (in *out), 0 when the loop must handle the packet and nothing was written, -1 when it
 * must and the initial store was made (info says so). */
static int64_t grant_record(const struct np_tdb_fns *fn, void *ctx, uint32_t pnn,
                            const unsigned char *f, unsigned char **out, size_t *outcap,
                            struct grant_info *info)
{
    uint32_t src = rd32(f + 24), keylen = rd32(f + 48);
    np_tdb_data key = {(unsigned char *)f + REQ_CALL_HEAD, keylen};
    memset(info, 0, sizeof *info);
    struct held_chain hc;
    if (lock_chain(fn, ctx, key, &hc) != 0)
        return 0;                                   /* smbd (or a helper) holds the chain */
    int64_t result = 0;
    struct ltdb_header h;
    const unsigned char *data = NULL;
    size_t datalen = 0;
    if (unreadable(fn, &hc))
        goto unlock;                                /* corrupt or short: the loop reports it */
    if (hc.rec.dptr == NULL) {
        /* ltdb_initial_header with this node as lmaster, stored at once */
        struct ltdb_header initial = {0, pnn, 0, RF_AUTOMATIC};
        int sched;
        store_rules(&initial, 0, pnn, pnn, &sched);
        if (store_record(fn, ctx, key, &initial, NULL, 0) != 0)
            goto unlock;
        info->stores = 1;
        info->scheduled = sched;
        info->sched = initial;
        h = initial;
    } else {
        h = unpack_header(hc.rec.dptr);
        if (h.dmaster != pnn)
            goto unlock;                            /* held elsewhere: the loop redirects */
        data = hc.rec.dptr + LTDB_HEADER;
        datalen = hc.rec.dsize - LTDB_HEADER;
    }
    /* ctdb_call_send_dmaster, then ctdb_send_dmaster_reply on the lmaster */
    struct ltdb_header given = h;
    if (datalen)
        given.flags |= RF_MIGRATED_WITH_DATA;
    given.dmaster = src;
    int sched = 0;
    int keep = store_rules(&given, datalen, pnn, pnn, &sched);
    if (!keep || sched)
        goto declined;                              /* not a plain grant: the loop decides */
    size_t length = HEADER_SIZE + DMASTER_REPLY_HEAD + (size_t)keylen + datalen + 4;
    size_t padded = (length + 7) & ~(size_t)7;
    if (grow(out, outcap, padded) != 0)
        goto declined;
    if (store_record(fn, ctx, key, &given, data, datalen) != 0)
        goto declined;
    info->stores++;
    unsigned char *o = *out;
    put_packet_header(o, padded, rd32(f + 12), OP_REPLY_DMASTER, src, pnn, rd32(f + 28));
    o += HEADER_SIZE;
    wr32(o, rd32(f + 36));                          /* db_id */
    memset(o + 4, 0, 4);
    wr64(o + 8, given.rsn);
    wr32(o + 16, keylen);
    wr32(o + 20, (uint32_t)datalen);
    o += DMASTER_REPLY_HEAD;
    memcpy(o, f + REQ_CALL_HEAD, keylen);
    o += keylen;
    if (datalen)
        memcpy(o, data, datalen);
    o += datalen;
    wr32(o, given.flags);
    memset(o + 4, 0, padded - length);
    result = (int64_t)padded;
    goto unlock;
declined:
    result = info->stores ? -1 : 0;
unlock:
    unlock_chain(fn, &hc);
    return result;
}

/* For tests: grant_record on a context of the caller's (who holds no lock of it). */
int64_t np_grant_record(const struct np_tdb_fns *fn, void *ctx, uint32_t pnn,
                        const unsigned char *frame, uint32_t len, unsigned char *out, uint64_t cap,
                        uint64_t *info)
{
    if (len < REQ_CALL_HEAD || (uint64_t)REQ_CALL_HEAD + rd32(frame + 48) + rd32(frame + 52) > len)
        return 0;
    unsigned char *buf = NULL;
    size_t bufcap = 0;
    struct grant_info gi;
    grant_logging_private = fn->logging_private;
    int64_t n = grant_record(fn, ctx, pnn, frame, &buf, &bufcap, &gi);
    if (n > 0 && (uint64_t)n > cap)
        n = -2;                                     /* the caller's buffer is too small */
    else if (n > 0)
        memcpy(out, buf, (size_t)n);
    free(buf);
    info[0] = gi.stores;
    info[1] = gi.scheduled;
    info[2] = gi.sched.rsn;
    info[3] = gi.sched.dmaster;
    info[4] = gi.sched.reserved1;
    info[5] = gi.sched.flags;
    return n;
}

/* ---- smbd's calls (step 3b): the decisions, on one TDB context ---- */

#define OP_REPLY_CALL 1u
#define REPLY_CALL_HEAD 40          /* header + status, datalen */
#define DMASTER_REPLY_MIN (HEADER_SIZE + DMASTER_REPLY_HEAD)
#define CALL_NULL 0xFF000001u
#define CALL_FETCH 0xFF000002u
#define CALL_FETCH_WITH_HEADER 0xFF000003u
#define CALLFLAG_VACUUM_MIGRATION 0x2u
#define CALLFLAG_WANT_READONLY 0x4u

enum { CC_LEAVE = 0, CC_ANSWERED = 1, CC_SENT = 2 };
enum { ST_SCHEDULE = 1, ST_UNSCHEDULE = 2 };    /* a store's effect on the vacuum's queue */

/* What a client call or a landing wrote (in order), and where a sent REQ_CALL went. */
struct call_info {
    uint32_t nstores;
    struct { uint32_t effect; struct ltdb_header h; } stores[2];
    uint32_t dest;
};

/* The stores a decision makes: each header after the rules, kept (checked by the caller). */
struct planned { int n; struct ltdb_header h[2]; int sched[2]; const unsigned char *data[2]; size_t len[2]; };

static int plan_store(struct planned *pl, struct ltdb_header h, const unsigned char *data, size_t len,
                      uint32_t pnn, uint32_t lmaster)
{
    int sched;
    if (!store_rules(&h, len, pnn, lmaster, &sched))
        return -1;                  /* a delete: not a case the native path takes */
    pl->h[pl->n] = h;
    pl->sched[pl->n] = sched;
    pl->data[pl->n] = data;
    pl->len[pl->n] = len;
    pl->n++;
    return 0;
}

static int write_planned(const struct np_tdb_fns *fn, void *ctx, np_tdb_data key,
                         const struct planned *pl, struct call_info *info)
{
    for (int i = 0; i < pl->n; i++) {
        if (store_record(fn, ctx, key, &pl->h[i], pl->data[i], pl->len[i]) != 0)
            return -1;
        info->stores[info->nstores].effect = pl->sched[i] ? ST_SCHEDULE : ST_UNSCHEDULE;
        info->stores[info->nstores].h = pl->h[i];
        info->nstores++;
    }
    return 0;
}

/* The reply of a call function (ltdbrules.call_function) into a REPLY_CALL for the client;
 * its length, or 0 for an unknown call id (the loop answers that one and logs it). */
static size_t reply_call(unsigned char **out, size_t *outcap, uint32_t callid, uint32_t reqid,
                         uint32_t destnode, uint32_t pnn, const struct ltdb_header *before,
                         const unsigned char *data, size_t datalen)
{
    size_t replylen;
    if (callid == CALL_NULL)
        replylen = 0;
    else if (callid == CALL_FETCH)
        replylen = datalen;
    else if (callid == CALL_FETCH_WITH_HEADER)
        replylen = LTDB_HEADER + datalen;
    else
        return 0;
    size_t length = REPLY_CALL_HEAD + replylen, padded = (length + 7) & ~(size_t)7;
    if (grow(out, outcap, padded) != 0)
        return 0;
    unsigned char *o = *out;
    put_packet_header(o, padded, 0, OP_REPLY_CALL, destnode, pnn, reqid);  /* generation 0 to clients */
    wr32(o + 32, 0);                                /* status */
    wr32(o + 36, (uint32_t)replylen);
    o += REPLY_CALL_HEAD;
    if (callid == CALL_FETCH_WITH_HEADER) {
        pack_header(o, before);
        o += LTDB_HEADER;
    }
    if (callid != CALL_NULL && datalen)
        memcpy(o, data, datalen);
    memset(*out + length, 0, padded - length);
    return padded;
}

/* A client's REQ_CALL `f` (whole, checked by the caller) on the database `ctx`, for a key no
 * state of the core names, as core/db/migration.py's `_local_call` decides it with no flight:
 * CC_ANSWERED with the REPLY_CALL in *out when this node holds the record (or, as its lmaster,
 * nobody does: the initial store first); CC_SENT with the REQ_CALL for the believed dmaster
 * in *out (reqid `reqid`, generation `generation`) when it is held elsewhere; CC_LEAVE, nothing
 * written, for the rest (a chain smbd holds, a short or unreadable record, an unknown call
 * id, a store the rules would make a delete, a failed store: the loop meets and reports it). */
static int client_call_record(const struct np_tdb_fns *fn, void *ctx, uint32_t pnn,
                              const uint32_t *lmasters, uint32_t nlmasters, const unsigned char *f,
                              uint32_t reqid, uint32_t generation, unsigned char **out,
                              size_t *outcap, size_t *outlen, struct call_info *info)
{
    uint32_t flags = rd32(f + 32) & ~CALLFLAG_WANT_READONLY, db_id = rd32(f + 36);
    uint32_t callid = rd32(f + 40), keylen = rd32(f + 48), calldatalen = rd32(f + 52);
    np_tdb_data key = {(unsigned char *)f + REQ_CALL_HEAD, keylen};
    memset(info, 0, sizeof *info);
    *outlen = 0;
    if (nlmasters == 0)
        return CC_LEAVE;
    uint32_t lmaster = lmasters[fn->hash(&key) % nlmasters];
    struct held_chain hc;
    if (lock_chain(fn, ctx, key, &hc) != 0)
        return CC_LEAVE;
    int result = CC_LEAVE;
    struct planned pl = {0};
    struct ltdb_header h;
    const unsigned char *data = NULL;
    size_t datalen = 0;
    if (unreadable(fn, &hc))
        goto unlock;
    if (hc.rec.dptr == NULL) {
        h = (struct ltdb_header){0, lmaster, 0, RF_AUTOMATIC};      /* ltdb_initial_header */
        if (lmaster == pnn) {                       /* ctdb_ltdb_fetch stores it at once */
            if (plan_store(&pl, h, NULL, 0, pnn, lmaster) != 0)
                goto unlock;
            h = pl.h[0];
        }
    } else {
        h = unpack_header(hc.rec.dptr);
        data = hc.rec.dptr + LTDB_HEADER;
        datalen = hc.rec.dsize - LTDB_HEADER;
    }
    if (h.dmaster == pnn) {
        /* ctdb_call_local: the call function on the record as read, then the store */
        if (plan_store(&pl, h, data, datalen, pnn, lmaster) != 0)
            goto unlock;
        size_t n = reply_call(out, outcap, callid, rd32(f + 28), rd32(f + 24), pnn, &h, data, datalen);
        if (n == 0)
            goto unlock;
        if (write_planned(fn, ctx, key, &pl, info) != 0) {
            result = info->nstores ? -1 : CC_LEAVE;     /* -1: the loop must know of a store */
            goto unlock;
        }
        *outlen = n;
        result = CC_ANSWERED;
        goto unlock;
    }
    if (pl.n)
        goto unlock;                                /* cannot happen: lmaster here means dmaster here */
    /* a REQ_CALL (hopcount 0) to the believed dmaster */
    size_t length = REQ_CALL_HEAD + (size_t)keylen + calldatalen, padded = (length + 7) & ~(size_t)7;
    if (grow(out, outcap, padded) != 0)
        goto unlock;
    unsigned char *o = *out;
    put_packet_header(o, padded, generation, OP_REQ_CALL, h.dmaster, pnn, reqid);
    wr32(o + 32, flags);
    wr32(o + 36, db_id);
    wr32(o + 40, callid);
    wr32(o + 44, 0);                                /* hopcount */
    wr32(o + 48, keylen);
    wr32(o + 52, calldatalen);
    memcpy(o + REQ_CALL_HEAD, f + REQ_CALL_HEAD, (size_t)keylen + calldatalen);
    memset(o + length, 0, padded - length);
    info->dest = h.dmaster;
    *outlen = padded;
    result = CC_SENT;
unlock:
    unlock_chain(fn, &hc);
    return result;
}

/* The landing of the REPLY_DMASTER `f` (whole, checked by the caller: this node its new
 * dmaster, a call of ours waits for it with `callid`, one client) on `ctx`, as `_land` then
 * `_complete_here` decide it: the record stored as ours, the call function run on it and the
 * record stored again, the REPLY_CALL for the client (reqid `client_reqid`, to `client_src`)
 * in *out. 1 landed; 0 left to the loop with nothing written (as client_call_record). */
static int land_record(const struct np_tdb_fns *fn, void *ctx, uint32_t pnn, const uint32_t *lmasters,
                       uint32_t nlmasters, const unsigned char *f, uint32_t len, uint32_t callid,
                       uint32_t client_reqid, uint32_t client_src, unsigned char **out, size_t *outcap,
                       size_t *outlen, struct call_info *info)
{
    uint32_t keylen = rd32(f + HEADER_SIZE + 16), datalen = rd32(f + HEADER_SIZE + 20);
    const unsigned char *k = f + DMASTER_REPLY_MIN, *data = k + keylen;
    np_tdb_data key = {(unsigned char *)k, keylen};
    memset(info, 0, sizeof *info);
    *outlen = 0;
    if (nlmasters == 0)
        return 0;
    size_t used = DMASTER_REPLY_MIN + (size_t)keylen + datalen;
    uint32_t rflags = len - used >= 4 ? rd32(data + datalen) : 0;
    uint32_t lmaster = lmasters[fn->hash(&key) % nlmasters];
    struct ltdb_header h = {rd64(f + HEADER_SIZE + 8), pnn, 0, rflags};
    struct planned pl = {0};
    if (plan_store(&pl, h, data, datalen, pnn, lmaster) != 0)
        return 0;
    struct ltdb_header landed = pl.h[0];
    if (plan_store(&pl, landed, data, datalen, pnn, lmaster) != 0)
        return 0;
    size_t n = reply_call(out, outcap, callid, client_reqid, client_src, pnn, &landed, data, datalen);
    if (n == 0)
        return 0;
    struct held_chain hc;
    if (lock_chain(fn, ctx, key, &hc) != 0)
        return 0;
    /* the loop reads the record under the lock before it steps a landing (and a corrupt or
     * short one fails the event): so does this, and leaves such a record to the loop */
    int result = 0;
    if (!unreadable(fn, &hc)) {
        if (write_planned(fn, ctx, key, &pl, info) == 0 && !hc.complaints) {
            *outlen = n;
            result = 1;
        } else if (info->nstores) {
            result = -1;                            /* the loop must know: it forces a recovery */
        }
    }
    unlock_chain(fn, &hc);
    return result;
}

/* For tests: client_call_record / land_record on a context of the caller's. `in` is the
 * REQ_CALL (kind 0) or the REPLY_DMASTER (kind 1, `arg` = {callid, client reqid, client
 * srcnode}); returns the decision (CC_*, or 1/0/-1 landed), the frame in out (out_len bytes),
 * and in info {nstores, dest, then per store effect, rsn, dmaster, reserved1, flags}. */
int64_t np_call_decide(const struct np_tdb_fns *fn, void *ctx, uint32_t pnn, const uint32_t *lmasters,
                       uint32_t nlmasters, int kind, const unsigned char *in, uint32_t len,
                       const uint32_t *arg, unsigned char *out, uint64_t cap, uint64_t *out_len,
                       uint64_t *info)
{
    if (kind == 0 && (len < REQ_CALL_HEAD
                      || (uint64_t)REQ_CALL_HEAD + rd32(in + 48) + rd32(in + 52) > len))
        return -2;
    if (kind == 1 && (len < DMASTER_REPLY_MIN || (uint64_t)DMASTER_REPLY_MIN
                      + rd32(in + HEADER_SIZE + 16) + rd32(in + HEADER_SIZE + 20) > len))
        return -2;
    grant_logging_private = fn->logging_private;
    unsigned char *buf = NULL;
    size_t bufcap = 0, n = 0;
    struct call_info ci;
    int r = kind == 0
        ? client_call_record(fn, ctx, pnn, lmasters, nlmasters, in, arg[0], arg[1], &buf, &bufcap, &n, &ci)
        : land_record(fn, ctx, pnn, lmasters, nlmasters, in, len, arg[0], arg[1], arg[2], &buf, &bufcap,
                      &n, &ci);
    if (n > cap)
        r = -3;
    else if (n)
        memcpy(out, buf, n);
    free(buf);
    *out_len = n;
    info[0] = ci.nstores;
    info[1] = ci.dest;
    for (uint32_t i = 0; i < 2; i++) {
        info[2 + 5 * i] = ci.stores[i].effect;
        info[3 + 5 * i] = ci.stores[i].h.rsn;
        info[4 + 5 * i] = ci.stores[i].h.dmaster;
        info[5 + 5 * i] = ci.stores[i].h.reserved1;
        info[6 + 5 * i] = ci.stores[i].h.flags;
    }
    return r;
}

/* ---- the vacuum's triage (called by the loop, which holds the rest: no grant runs) ---- */

enum { VT_SKIP, VT_DELETED, VT_DELETE_LIST, VT_TO_LMASTER, VT_BUSY, VT_LOOP };

/* Steps 1-3 of a fast vacuum run (core/db/vacuum.py `triage`, server/vacuum_triage.py `one`)
 * for n queued records of the database `ctx`, as the loop would do them one by one: each read
 * under its chain lock, tried without blocking (busy: VT_BUSY); a record no longer as queued
 * (missing, not empty, another dmaster, another rsn, read-only flags): VT_SKIP; this node not
 * its lmaster: VT_TO_LMASTER; lmaster and migrated with data: VT_DELETE_LIST; otherwise deleted
 * here (VT_DELETED). Anything libtdb complains about, a short record or a failed delete is
 * VT_LOOP: the loop does that record again itself and reports it.
 * `in`: n entries {u64 rsn, u32 flags (as queued), u32 keylen, key padded to 8}. out[i] gets
 * the verdict; returns the number of chain locks taken for records not left to the loop,
 * or -1 for a malformed `in`. */
int64_t np_vacuum_triage(const struct np_tdb_fns *fn, void *ctx, uint32_t pnn,
                         const uint32_t *lmasters, uint32_t nlmasters,
                         const unsigned char *in, uint64_t len, uint32_t n, uint8_t *out)
{
    if (fn == NULL || !fn->delete || !fn->fetch || !fn->chainlock_nonblock || !fn->hash)
        return -1;
    grant_logging_private = fn->logging_private;
    void *loop_private = fn->logging_private(ctx);
    unsigned complaints = 0;
    struct np_tdb_log ours = {grant_log, &complaints}, theirs = {fn->loop_log_fn, loop_private};
    int64_t locked = 0;
    uint64_t pos = 0;
    fn->set_logging(ctx, &ours);
    for (uint32_t i = 0; i < n; i++) {
        if (len - pos < 16 || len - pos - 16 < rd32(in + pos + 12)) {
            locked = -1;
            break;
        }
        uint64_t rsn = rd64(in + pos);
        uint32_t queued_flags = rd32(in + pos + 8), keylen = rd32(in + pos + 12);
        np_tdb_data key = {(unsigned char *)in + pos + 16, keylen};
        pos += (16 + (uint64_t)keylen + 7) & ~(uint64_t)7;
        if (nlmasters == 0) {
            out[i] = VT_SKIP;
            continue;
        }
        uint32_t lmaster = lmasters[fn->hash(&key) % nlmasters];
        if (fn->chainlock_nonblock(ctx, key) != 0) {
            out[i] = complaints ? VT_LOOP : VT_BUSY;
            complaints = 0;
            continue;
        }
        locked++;
        np_tdb_data rec = fn->fetch(ctx, key);
        uint8_t verdict;
        if (complaints || (rec.dptr == NULL && fn->error(ctx) != TDB_ERR_NOEXIST)
            || (rec.dptr != NULL && rec.dsize < LTDB_HEADER))
            verdict = VT_LOOP;
        else if (rec.dptr == NULL || rec.dsize != LTDB_HEADER || rd32(rec.dptr + 8) != pnn
                 || rd64(rec.dptr) != rsn || (rd32(rec.dptr + 16) & RF_RO_FLAGS))
            verdict = VT_SKIP;                      /* still_deletable: no */
        else if (lmaster != pnn)
            verdict = VT_TO_LMASTER;
        else if (queued_flags & RF_MIGRATED_WITH_DATA)
            verdict = VT_DELETE_LIST;
        else
            verdict = fn->delete(ctx, key) == 0 && !complaints ? VT_DELETED : VT_LOOP;
        free(rec.dptr);
        fn->chainunlock(ctx, key);
        complaints = 0;
        if (verdict == VT_LOOP)
            locked--;                               /* the loop locks it again, and counts that */
        out[i] = verdict;
    }
    fn->set_logging(ctx, &theirs);
    return locked;
}

static uint32_t busy_hash(uint32_t db_id, uint32_t key_hash)
{
    return key_hash ^ (db_id * 0x9e3779b9u);
}

static int is_busy(const struct np_grants *g, uint32_t db_id, const unsigned char *key,
                   uint32_t keylen, uint32_t key_hash)
{
    if (g->nbusy_slots == 0)
        return 0;
    uint32_t mask = g->nbusy_slots - 1;
    for (uint32_t i = busy_hash(db_id, key_hash) & mask;; i = (i + 1) & mask) {
        const struct np_busy *b = &g->busy[i];
        if (b->key == NULL)
            return 0;
        if (b->db_id == db_id && b->keylen == keylen && b->hash == key_hash
            && memcmp(b->key, key, keylen) == 0)
            return 1;
    }
}

static int32_t send_conn_of(const struct np_grants *g, uint32_t pnn)
{
    return pnn < g->nsend ? g->send_conn[pnn] : -1;
}

/* Log a grant (or an initial store the loop must know of) for the loop (mutex held). */
static int log_grant(struct np_grants *g, const unsigned char *f, int granted,   /* bits: 1 granted, 4 reply lost */
                     const struct grant_info *info)
{
    uint32_t keylen = rd32(f + 48);
    size_t size = GRANT_ENTRY_HEAD + (size_t)keylen;
    size_t padded = grant_entry_size(keylen);
    if (grow(&g->log, &g->logcap, g->loglen + padded) != 0)
        return -1;
    unsigned char *e = g->log + g->loglen;
    wr32(e, rd32(f + 36));                          /* db_id */
    wr32(e + 4, rd32(f + 24));                      /* srcnode */
    wr32(e + 8, rd32(f + 44));                      /* hopcount */
    wr32(e + 12, (uint32_t)granted | (info->scheduled ? 2u : 0u));
    wr32(e + 16, info->stores);
    wr32(e + 20, keylen);
    wr64(e + 24, info->sched.rsn);
    wr32(e + 32, info->sched.dmaster);
    wr32(e + 36, info->sched.flags);
    memcpy(e + GRANT_ENTRY_HEAD, f + REQ_CALL_HEAD, keylen);
    memset(e + size, 0, padded - size);
    g->loglen += padded;
    return 0;
}

static int thread_busy(const struct np_grants *g, uint32_t db_id, const unsigned char *key,
                       uint32_t keylen, uint32_t hash);

/* A frame from receive connection c (mutex held): granted here (1) or for the loop (0). */
static int try_grant(struct np_plane *p, struct np_conn *c, const unsigned char *f, uint32_t len)
{
    struct np_grants *g = &p->g;
    if (!g->enabled || !g->published || len < REQ_CALL_HEAD || rd32(f + 16) != OP_REQ_CALL)
        return 0;
    uint32_t keylen = rd32(f + 48);
    if ((uint64_t)REQ_CALL_HEAD + keylen + rd32(f + 52) > len || keylen == 0 || keylen > g->max_key) {
        g->declined_other++;
        return 0;
    }
    np_tdb_data key = {(unsigned char *)f + REQ_CALL_HEAD, keylen};
    uint32_t key_hash = g->fn.hash(&key);
    if (g->nlmasters == 0 || g->lmasters[key_hash % g->nlmasters] != g->pnn)
        return 0;                                   /* not ours to grant: the loop routes it */
    g->wanted = 1;
    g->asked = 1;           /* any packet left to the loop asks for a fresh state; cleared below */
    if (g->published_run != p->loop_runs) {
        g->declined_stale++;
        return 0;
    }
    if (p->evlen) {
        g->declined_order++;
        return 0;
    }
    uint32_t src = rd32(f + 24), db_id = rd32(f + 36);
    void *ctx = NULL;
    for (uint32_t i = 0; i < g->ndbs; i++)
        if (g->db_ids[i] == db_id)
            ctx = g->ctxs[i];
    int32_t out_id = send_conn_of(g, src);
    struct np_conn *out = out_id > 0 ? find(p, out_id) : NULL;
    if (!g->open || rd32(f + 12) != g->generation || src == g->pnn || c->peer_pnn != (int32_t)src
        || ctx == NULL || out == NULL || out->closing || out->wlen > GRANT_MAX_QUEUED
        || g->loglen > GRANT_LOG_MAX) {
        g->declined_other++;
        return 0;
    }
    if (is_busy(g, db_id, key.dptr, keylen, key_hash) || thread_busy(g, db_id, key.dptr, keylen, key_hash)) {
        g->declined_busy++;
        return 0;
    }
    if (pthread_mutex_trylock(&p->rest) != 0) {
        g->declined_other++;                        /* the loop is awake, or kept its rest */
        return 0;
    }
    struct grant_info info;
    int64_t n = grant_record(&g->fn, ctx, g->pnn, f, &g->out, &g->outcap, &info);
    pthread_mutex_unlock(&p->rest);
    if (n <= 0) {
        if (n < 0)
            log_grant(g, f, 0, &info);              /* the loop must know of the initial store */
        g->declined_other++;
        return 0;
    }
    /* a reply that cannot even be queued (out of memory) leaves the record given and nobody
     * told: the loop forces a recovery (log flag 4). A write error after queueing is the
     * connection's loss, which the loop learns from its close. */
    int lost = queue_frame(p, out, g->out, (size_t)n) == -1;
    log_grant(g, f, lost ? 5 : 1, &info);
    g->asked = 0;           /* granted: the state it had is still good */
    c->frames_in++;
    g->granted++;
    return 1;
}

/* ---- smbd's calls in the thread (step 3b): like the grant, only while the loop sleeps ---- */

#define CALL_ENTRY_HEAD 120         /* a call log entry before its key and calldata */
enum { CL_ANSWERED = 1, CL_FLIGHT = 2, CL_LANDED = 3, CL_STORE_FAILED = 4, CL_SCHEDULED = 5 };
#define OP_REQ_CONTROL 7u
#define REQ_CONTROL_HEAD 60         /* header + opcode, pad, srvid, client_id, flags, datalen */
#define CONTROL_SCHEDULE_FOR_DELETION 128u
#define CONTROL_FLAG_NOREPLY 1u
#define CURRENT_NODE 0xF0000001u
#define KEY_DATA_HEAD 36            /* ctdb_key_data: db_id, pad, ltdb_header, keylen */


static int same_key(uint32_t db_id, uint32_t keylen, uint32_t hash, const unsigned char *key,
                    uint32_t db2, uint32_t keylen2, uint32_t hash2, const unsigned char *key2)
{
    return db_id == db2 && keylen == keylen2 && hash == hash2 && memcmp(key, key2, keylen) == 0;
}

/* A key the thread made state for since the loop last woke: a call it sent on, a record that
 * landed (pinned as the core pins it: the loop learns of the pin when it takes the log). */
static int thread_busy(const struct np_grants *g, uint32_t db_id, const unsigned char *key,
                       uint32_t keylen, uint32_t hash)
{
    for (uint32_t i = 0; i < g->ncflights; i++) {
        const struct np_cflight *f = g->cflights[i];
        if (same_key(db_id, keylen, hash, key, f->db_id, f->keylen, f->hash, f->key))
            return 1;
    }
    for (uint32_t i = 0; i < g->nlanded; i++) {
        const struct np_landed *l = &g->landed[i];
        if (same_key(db_id, keylen, hash, key, l->db_id, l->keylen, l->hash, l->key))
            return 1;
    }
    return 0;
}

static void forget_thread_state(struct np_grants *g)
{
    for (uint32_t i = 0; i < g->ncflights; i++)
        free(g->cflights[i]);
    for (uint32_t i = 0; i < g->nlanded; i++)
        free(g->landed[i].key);
    g->ncflights = g->nlanded = 0;
}

struct call_entry {
    uint32_t type, db_id, conn, client_reqid, client_src, callid, flags, reqid, generation, peer;
    uint64_t t_ns, started_ns;
    uint32_t reply_lost;
    const unsigned char *key, *calldata;
    uint32_t keylen, calldatalen;
};

static int log_call(struct np_grants *g, const struct call_entry *e, const struct call_info *info)
{
    size_t size = CALL_ENTRY_HEAD + (size_t)e->keylen + e->calldatalen;
    size_t padded = (size + 7) & ~(size_t)7;
    if (grow(&g->clog, &g->clogcap, g->cloglen + padded) != 0)
        return -1;
    unsigned char *o = g->clog + g->cloglen;
    memset(o, 0, padded);
    uint32_t head[12] = {e->type, e->db_id, e->keylen, (uint32_t)e->conn, e->client_reqid, e->client_src,
                         e->callid, e->flags, e->reqid, e->generation, e->peer, e->calldatalen};
    memcpy(o, head, sizeof head);
    wr64(o + 48, e->t_ns);
    wr64(o + 56, e->started_ns);
    wr32(o + 64, info->nstores);
    wr32(o + 68, e->reply_lost);
    for (uint32_t i = 0; i < info->nstores; i++) {
        unsigned char *st = o + 72 + 24 * i;
        wr32(st, info->stores[i].effect);
        wr32(st + 4, info->stores[i].h.flags);
        wr64(st + 8, info->stores[i].h.rsn);
        wr32(st + 16, info->stores[i].h.dmaster);
        wr32(st + 20, info->stores[i].h.reserved1);
    }
    memcpy(o + CALL_ENTRY_HEAD, e->key, e->keylen);
    if (e->calldatalen)
        memcpy(o + CALL_ENTRY_HEAD + e->keylen, e->calldata, e->calldatalen);
    g->cloglen += padded;
    return 0;
}

static void *published_ctx(const struct np_grants *g, uint32_t db_id)
{
    for (uint32_t i = 0; i < g->ndbs; i++)
        if (g->db_ids[i] == db_id)
            return g->ctxs[i];
    return NULL;
}

/* smbd's SCHEDULE_FOR_DELETION (sent NOREPLY after it deleted a record), while the loop sleeps:
 * logged for the vacuum's queue, as controls/vacuum.py queues it (mutex held). 1 taken, 0 for
 * the loop (a malformed one, a control for another node: the loop answers or forwards it). */
static int try_schedule(struct np_plane *p, struct np_conn *c, const unsigned char *f, uint32_t len)
{
    struct np_grants *g = &p->g;
    if (len < REQ_CONTROL_HEAD + KEY_DATA_HEAD || rd32(f + 32) != CONTROL_SCHEDULE_FOR_DELETION
        || !(rd32(f + 52) & CONTROL_FLAG_NOREPLY)
        || (rd32(f + 20) != CURRENT_NODE && rd32(f + 20) != g->pnn) || !g->published)
        return 0;
    uint32_t datalen = rd32(f + 56);
    const unsigned char *d = f + REQ_CONTROL_HEAD;
    if ((uint64_t)REQ_CONTROL_HEAD + datalen > len || datalen < KEY_DATA_HEAD
        || (uint64_t)KEY_DATA_HEAD + rd32(d + 32) > datalen || p->evlen || g->cloglen > GRANT_LOG_MAX
        || pthread_mutex_trylock(&p->rest) != 0)
        return 0;
    pthread_mutex_unlock(&p->rest);     /* asleep: what is logged now comes before its next run */
    struct call_info info = {1, {{ST_SCHEDULE, {rd64(d + 8), rd32(d + 16), rd32(d + 20), rd32(d + 24)}}}, 0};
    struct call_entry e = {CL_SCHEDULED, rd32(d), c->id, 0, 0, 0, 0, 0, 0, 0, now_ns(), 0, 0,
                           d + KEY_DATA_HEAD, NULL, rd32(d + 32), 0};
    return log_call(g, &e, &info) == 0;
}

/* A client's frame (mutex held): a REQ_CALL taken here (1), or for the loop (0). */
static int try_client(struct np_plane *p, struct np_conn *c, const unsigned char *f, uint32_t len)
{
    struct np_grants *g = &p->g;
    if (!g->calls_enabled || len < HEADER_SIZE)
        return 0;
    if (rd32(f + 16) == OP_REQ_CONTROL) {
        if (!try_schedule(p, c, f, len))
            return 0;
        c->frames_in++;
        return 1;
    }
    if (len < REQ_CALL_HEAD || rd32(f + 16) != OP_REQ_CALL)
        return 0;
    uint32_t keylen = rd32(f + 48), calldatalen = rd32(f + 52);
    if ((uint64_t)REQ_CALL_HEAD + keylen + calldatalen > len || keylen == 0 || keylen > g->max_key)
        return 0;
    g->wanted = 1;
    g->asked = 1;               /* a call left to the loop asks for a fresh state; cleared below */
    if (!g->published || g->published_run != p->loop_runs || g->calls_run != p->loop_runs) {
        g->calls_left++;
        return 0;
    }
    uint32_t db_id = rd32(f + 36);
    void *ctx = published_ctx(g, db_id);
    np_tdb_data key = {(unsigned char *)f + REQ_CALL_HEAD, keylen};
    if (p->evlen || !g->open || ctx == NULL || (rd32(f + 32) & CALLFLAG_VACUUM_MIGRATION)
        || g->ncflights >= MAX_CFLIGHTS || g->cloglen > GRANT_LOG_MAX) {
        g->calls_left++;
        return 0;
    }
    uint32_t hash = g->fn.hash(&key);
    if (is_busy(g, db_id, key.dptr, keylen, hash) || thread_busy(g, db_id, key.dptr, keylen, hash)
        || pthread_mutex_trylock(&p->rest) != 0) {
        g->calls_left++;
        return 0;
    }
    size_t n = 0;
    struct call_info info;
    int r = client_call_record(&g->fn, ctx, g->pnn, g->lmasters, g->nlmasters, f, g->next_reqid,
                               g->generation, &g->out, &g->outcap, &n, &info);
    pthread_mutex_unlock(&p->rest);
    struct call_entry e = {0, db_id, c->id, rd32(f + 28), rd32(f + 24), rd32(f + 40),
                           rd32(f + 32) & ~CALLFLAG_WANT_READONLY, 0, g->generation, 0, now_ns(), 0, 0,
                           key.dptr, NULL, keylen, 0};
    if (r == CC_ANSWERED) {
        e.type = CL_ANSWERED;
        e.reply_lost = queue_frame(p, c, g->out, n) == -1;
        log_call(g, &e, &info);
        g->calls_answered++;
    } else if (r == CC_SENT) {
        int32_t out_id = send_conn_of(g, info.dest);
        struct np_conn *out = out_id > 0 ? find(p, out_id) : NULL;
        struct np_cflight *fl = out == NULL || out->closing || out->wlen > GRANT_MAX_QUEUED ? NULL
            : malloc(sizeof *fl + keylen);
        if (fl == NULL) {
            g->calls_left++;
            return 0;                               /* nothing written: the loop sends it */
        }
        fl->reqid = g->next_reqid;
        fl->db_id = db_id;
        fl->keylen = keylen;
        fl->hash = hash;
        fl->callid = e.callid;
        fl->client_reqid = e.client_reqid;
        fl->client_src = e.client_src;
        fl->conn = c->id;
        fl->ctx = ctx;
        fl->started_ns = e.t_ns;
        memcpy(fl->key, key.dptr, keylen);
        g->cflights[g->ncflights++] = fl;
        e.type = CL_FLIGHT;
        e.reqid = g->next_reqid;
        e.peer = info.dest;
        e.calldata = f + REQ_CALL_HEAD + keylen;
        e.calldatalen = calldatalen;
        g->next_reqid = g->next_reqid % 0xFFFFFFFFu + 1;
        /* a REQ_CALL that cannot even be queued is the core's "dropped: not connected": the call
         * waits for the recovery that follows the connection's loss, or its collapse timeout */
        e.reply_lost = queue_frame(p, out, g->out, n) == -1;
        log_call(g, &e, &info);
        g->calls_sent++;
    } else {
        if (r < 0) {                                /* a store was made, then one failed */
            e.type = CL_STORE_FAILED;
            log_call(g, &e, &info);
        }
        g->calls_left++;
        return 0;
    }
    g->asked = 0;
    c->frames_in++;
    return 1;
}

/* A peer's frame (mutex held): a REPLY_DMASTER for a call the thread sent, landed here (1), or
 * for the loop (0), which learns of the call from the log first. */
static int try_land(struct np_plane *p, struct np_conn *c, const unsigned char *f, uint32_t len)
{
    struct np_grants *g = &p->g;
    if (g->ncflights == 0 || len < DMASTER_REPLY_MIN || rd32(f + 16) != OP_REPLY_DMASTER)
        return 0;
    uint32_t reqid = rd32(f + 28), db_id = rd32(f + HEADER_SIZE);
    uint32_t keylen = rd32(f + HEADER_SIZE + 16), datalen = rd32(f + HEADER_SIZE + 20);
    if ((uint64_t)DMASTER_REPLY_MIN + keylen + datalen > len)
        return 0;
    uint32_t i;
    for (i = 0; i < g->ncflights && g->cflights[i]->reqid != reqid; i++)
        ;
    if (i == g->ncflights)
        return 0;
    struct np_cflight *fl = g->cflights[i];
    const unsigned char *key = f + DMASTER_REPLY_MIN;
    struct np_conn *client = find(p, fl->conn);
    uint32_t src = rd32(f + 24);
    if (fl->db_id != db_id || fl->keylen != keylen || memcmp(fl->key, key, keylen) != 0
        || g->published_run != p->loop_runs || p->evlen || !g->open
        || rd32(f + 12) != g->generation || c->peer_pnn != (int32_t)src || client == NULL
        || client->closing || g->cloglen > GRANT_LOG_MAX || g->nlanded >= MAX_LANDED
        || pthread_mutex_trylock(&p->rest) != 0) {
        g->calls_left++;
        return 0;
    }
    size_t n = 0;
    struct call_info info;
    int r = land_record(&g->fn, fl->ctx, g->pnn, g->lmasters, g->nlmasters, f, len, fl->callid,
                        fl->client_reqid, fl->client_src, &g->out, &g->outcap, &n, &info);
    pthread_mutex_unlock(&p->rest);
    struct call_entry e = {r == 1 ? CL_LANDED : CL_STORE_FAILED, db_id, fl->conn, fl->client_reqid,
                           fl->client_src, fl->callid, 0, reqid, g->generation, src, now_ns(),
                           fl->started_ns, 0, fl->key, NULL, keylen, 0};
    if (r != 1) {
        if (r < 0)
            log_call(g, &e, &info);                 /* the loop forces a recovery */
        g->calls_left++;
        return 0;
    }
    unsigned char *kept = malloc(keylen);
    if (kept != NULL) {
        memcpy(kept, key, keylen);
        g->landed[g->nlanded++] = (struct np_landed){db_id, keylen, fl->hash, kept};
    }
    e.reply_lost = queue_frame(p, client, g->out, n) == -1;
    log_call(g, &e, &info);
    if (kept == NULL)                               /* not pinned here: nothing more this sleep */
        g->published_run = UINT64_MAX;
    free(fl);
    g->cflights[i] = g->cflights[--g->ncflights];
    g->calls_landed++;
    c->frames_in++;
    return 1;
}

/* Cut whole frames off the receive buffer (mutex held); a malformed header closes. */
static void cut_frames(struct np_plane *p, struct np_conn *c)
{
    size_t pos = 0;
    char reason[160];
    while (!c->closing && c->rlen - pos >= 4) {
        const unsigned char *h = c->rbuf + pos;
        size_t avail = c->rlen - pos;
        if (header_problem(p, h, avail, c->kind != NP_CLIENT, reason, sizeof reason)) {
            mark_closed_as(p, c, reason, NP_CLOSED_BAD);
            break;
        }
        uint32_t length;
        memcpy(&length, h, 4);
        if (avail < length)
            break;
        if (c->kind == NP_RECEIVE ? try_land(p, c, h, length) || try_grant(p, c, h, length)
                                  : c->kind == NP_CLIENT && try_client(p, c, h, length)) {
            pos += length;
            continue;
        }
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

/* net/local.py's bound on incomplete packets (mutex held): while all clients together hold more
 * than max_partial bytes of them, the client whose packet has made no progress for the longest
 * time is disconnected, until the total fits or one holder is left (a single client may always
 * send one packet of the largest size). */
static void enforce_partial_limit(struct np_plane *p)
{
    while (p->client_partial > p->max_partial) {
        struct np_conn *stalled = NULL;
        int holders = 0;
        for (struct np_conn *c = p->conns; c; c = c->next) {
            if (c->kind != NP_CLIENT || c->closing || c->held == 0)
                continue;
            holders++;
            if (stalled == NULL || c->progress_ns < stalled->progress_ns)
                stalled = c;
        }
        if (holders <= 1)
            return;
        char reason[240];
        snprintf(reason, sizeof reason, "has sent %zu bytes of a packet and nothing for %.1f s "
                 "while clients hold %llu bytes of incomplete packets (limit %llu); disconnecting it",
                 stalled->held, (double)(now_ns() - stalled->progress_ns) / 1e9,
                 (unsigned long long)p->client_partial, (unsigned long long)p->max_partial);
        mark_closed_as(p, stalled, reason, NP_CLOSED_STALLED);
    }
}

/* A client's incomplete packet after its frames were cut (mutex held). */
static void account_partial(struct np_plane *p, struct np_conn *c)
{
    if (c->kind != NP_CLIENT || c->closing)
        return;
    size_t held = c->rlen;
    int grew = held > c->held;
    p->client_partial = p->client_partial - c->held + held;
    c->held = held;
    if (grew) {
        c->progress_ns = now_ns();
        enforce_partial_limit(p);
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
        mark_closed_as(p, c, reason, NP_CLOSED_BAD);
    } else {
        c->bytes_in += (uint64_t)n;
        if (grow(&c->rbuf, &c->rcap, c->rlen + (size_t)n) != 0) {
            mark_closed(p, c, "out of memory reading");
        } else {
            memcpy(c->rbuf + c->rlen, chunk, (size_t)n);
            c->rlen += (size_t)n;
            cut_frames(p, c);
            account_partial(p, c);
        }
    }
    pthread_mutex_unlock(&p->mu);
}

static void *run(void *arg)
{
    struct np_plane *p = arg;
    if (p->policy >= 0) {
        struct sched_param param = {.sched_priority = p->priority};
        sched_setscheduler(0, p->policy, &param);   /* this thread only (Linux) */
    }
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
    p->max_partial = UINT64_MAX;                /* until np_set_max_partial */
    p->next_id = 1;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->epfd < 0 || p->ctl_fd < 0 || pthread_mutex_init(&p->mu, NULL) != 0
        || pthread_mutex_init(&p->rest, NULL) != 0) {
        if (p->epfd >= 0) close(p->epfd);
        if (p->ctl_fd >= 0) close(p->ctl_fd);
        free(p);
        return NULL;
    }
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->ctl_fd, &e);
    return p;
}

/* Start the thread with the scheduling policy and priority given (the loop's: a thread a
 * real-time thread makes starts SCHED_OTHER, and an RT loop blocked on a mutex the plane's
 * thread holds would wait for it behind every ordinary process; -1: leave it). */
int np_start(struct np_plane *p, int policy, int priority)
{
    if (p->started)
        return 0;
    p->policy = policy;
    p->priority = priority;
    int rc = pthread_create(&p->thread, NULL, run, p);
    if (rc == 0)
        p->started = 1;
    return rc == 0 ? 0 : -rc;
}

/* Hand a connected, non-blocking socket to the plane (it closes it from now on); returns the
 * connection's id, or -errno. */
int32_t np_add(struct np_plane *p, int fd, int kind)
{
    if (kind != NP_RECEIVE && kind != NP_SEND && kind != NP_CLIENT)
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
    c->peer_pnn = -1;
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
    int64_t left = queue_frame(p, c, data, len) == 0 ? (int64_t)c->wlen : -1;
    pthread_mutex_unlock(&p->mu);
    return left;
}

/* The bound on incomplete packets all client connections may hold together. */
void np_set_max_partial(struct np_plane *p, uint64_t max_partial)
{
    pthread_mutex_lock(&p->mu);
    p->max_partial = max_partial;
    pthread_mutex_unlock(&p->mu);
}

/* Bytes of incomplete packets the client connections hold now. */
uint64_t np_client_partial(struct np_plane *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t held = p->client_partial;
    pthread_mutex_unlock(&p->mu);
    return held;
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

/* Move whole entries of a log (the grants', the calls') into buf, under the mutex: bytes
 * copied; -(size needed) when the first entry does not fit. The log's buffer is read through
 * `log` after the lock is taken (the thread may have grown it). */
static int64_t take_entries(struct np_plane *p, unsigned char *const *log, size_t *loglen,
                            size_t (*entry_size)(const unsigned char *), unsigned char *buf, uint64_t cap)
{
    pthread_mutex_lock(&p->mu);
    size_t pos = 0;
    while (pos < *loglen) {
        size_t padded = entry_size(*log + pos);
        if (pos + padded > cap)
            break;
        pos += padded;
    }
    if (pos == 0 && *loglen) {
        int64_t need = (int64_t)entry_size(*log);
        pthread_mutex_unlock(&p->mu);
        return -need;
    }
    memcpy(buf, *log, pos);
    memmove(*log, *log + pos, *loglen - pos);
    *loglen -= pos;
    pthread_mutex_unlock(&p->mu);
    return (int64_t)pos;
}

/* ---- the lmaster's grant: the loop's side ---- */

/* Turn grants on: libtdb's functions, the largest key accepted (the loop's limit). The loop
 * holds rest from now on, except between np_rest_release and np_rest_take. */
int np_grant_setup(struct np_plane *p, const struct np_tdb_fns *fn, uint32_t max_key)
{
    if (fn == NULL || !fn->fetch || !fn->store || !fn->chainlock_nonblock || !fn->chainunlock
        || !fn->hash || !fn->error || !fn->set_logging || !fn->logging_private || !fn->loop_log_fn)
        return -EINVAL;
    if (!p->rest_held) {
        pthread_mutex_lock(&p->rest);
        p->rest_held = 1;
    }
    pthread_mutex_lock(&p->mu);
    p->g.fn = *fn;
    grant_logging_private = fn->logging_private;
    p->g.max_key = max_key;
    p->g.enabled = 1;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* Let the thread take smbd's calls (after np_grant_setup; the clients' connections are the
 * plane's). 0, or -errno. */
int np_calls_setup(struct np_plane *p)
{
    pthread_mutex_lock(&p->mu);
    int rc = 0;
    if (!p->g.enabled)
        rc = -EINVAL;
    else if (p->g.cflights == NULL) {
        p->g.cflights = calloc(MAX_CFLIGHTS, sizeof *p->g.cflights);
        p->g.landed = calloc(MAX_LANDED, sizeof *p->g.landed);
        if (p->g.cflights == NULL || p->g.landed == NULL) {
            free(p->g.cflights);
            free(p->g.landed);
            p->g.cflights = NULL;
            p->g.landed = NULL;
            rc = -ENOMEM;
        }
    }
    if (rc == 0)
        p->g.calls_enabled = 1;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* No more clients' calls in the thread. */
void np_calls_disable(struct np_plane *p)
{
    pthread_mutex_lock(&p->mu);
    p->g.calls_enabled = 0;
    pthread_mutex_unlock(&p->mu);
}

/* With np_grant_publish, for the same loop run: the core's next reqid. */
void np_calls_publish(struct np_plane *p, uint32_t next_reqid)
{
    pthread_mutex_lock(&p->mu);
    p->g.next_reqid = next_reqid ? next_reqid : 1;
    p->g.calls_run = p->loop_runs;
    pthread_mutex_unlock(&p->mu);
}

/* The reqid the core goes on from after the thread's calls. */
uint32_t np_calls_next_reqid(struct np_plane *p)
{
    pthread_mutex_lock(&p->mu);
    uint32_t r = p->g.next_reqid;
    pthread_mutex_unlock(&p->mu);
    return r;
}

static size_t call_entry_size(const unsigned char *e)
{
    return (CALL_ENTRY_HEAD + (size_t)rd32(e + 8) + rd32(e + 44) + 7) & ~(size_t)7;
}

/* Move the call log into buf (whole entries); bytes copied, -(size needed) when the first entry
 * does not fit. */
int64_t np_calls_take(struct np_plane *p, unsigned char *buf, uint64_t cap)
{
    return take_entries(p, &p->g.clog, &p->g.cloglen, call_entry_size, buf, cap);
}

/* answered here, sent on, landed, left to the loop */
void np_calls_counters(struct np_plane *p, uint64_t *out)
{
    pthread_mutex_lock(&p->mu);
    out[0] = p->g.calls_answered;
    out[1] = p->g.calls_sent;
    out[2] = p->g.calls_landed;
    out[3] = p->g.calls_left;
    pthread_mutex_unlock(&p->mu);
}

/* The loop goes to sleep: the thread may grant (with what was published for this run). */
void np_rest_release(struct np_plane *p)
{
    if (p->rest_held) {
        p->rest_held = 0;
        pthread_mutex_unlock(&p->rest);
    }
}

/* The loop woke up: no grant from now until it sleeps again. Returns 1 when grants wait to be
 * taken (np_grant_take), else 0. */
int np_rest_take(struct np_plane *p)
{
    if (!p->rest_held) {
        pthread_mutex_lock(&p->rest);
        p->rest_held = 1;
    }
    pthread_mutex_lock(&p->mu);
    p->loop_runs++;
    int flags = (p->g.loglen ? 1 : 0) | (p->g.cloglen ? 2 : 0);
    forget_thread_state(&p->g);     /* the loop takes its calls and pins from the log now */
    pthread_mutex_unlock(&p->mu);
    return flags;
}

static void free_published(struct np_grants *g)
{
    free(g->lmasters);
    free(g->db_ids);
    free(g->ctxs);
    free(g->send_conn);
    free(g->busy);
    free(g->busy_blob);
}

static int grant_pub_read(const unsigned char **at, const unsigned char *end, void *to, size_t n)
{
    if ((size_t)(end - *at) < n)
        return -1;
    memcpy(to, *at, n);
    *at += n;
    return 0;
}

/* Publish what grants must respect, for the loop run under way (blob NULL: nothing changed
 * since the last publish). Blob, little-endian: u32 open, pnn, generation, nlmasters, ndbs,
 * nlinks, nbusy; u32 lmasters[nlmasters]; {u32 db_id, u32 0, u64 context} x ndbs; {i32 conn,
 * i32 pnn, u32 role (1: pnn's current inbound connection, 2: the one to send to pnn on)} x
 * nlinks; {u32 db_id, u32 keylen, key} x nbusy (at most 1 << 20). 0, or -EINVAL (nothing
 * changed). */
int np_grant_publish(struct np_plane *p, const unsigned char *blob, uint64_t len)
{
    struct np_grants *g = &p->g;
    pthread_mutex_lock(&p->mu);
    if (blob == NULL) {
        int rc = g->published ? 0 : -EINVAL;
        if (rc == 0)
            g->published_run = p->loop_runs;
        pthread_mutex_unlock(&p->mu);
        return rc;
    }
    const unsigned char *at = blob, *end = blob + len;
    uint32_t head[7];
    int rc = -EINVAL;
    uint32_t *lm = NULL, *db_ids = NULL, nsend = 0;
    void **ctxs = NULL;
    int32_t *send = NULL;
    struct np_busy *busy = NULL;
    unsigned char *busy_blob = NULL;
    uint32_t slots = 0;
    if (grant_pub_read(&at, end, head, sizeof head) != 0 || head[3] > 65536 || head[4] > 65536
        || head[5] > 65536 || head[6] > (1u << 20))
        goto out;
    lm = calloc(head[3] + 1, sizeof *lm);
    db_ids = calloc(head[4] + 1, sizeof *db_ids);
    ctxs = calloc(head[4] + 1, sizeof *ctxs);
    if (!lm || !db_ids || !ctxs || grant_pub_read(&at, end, lm, head[3] * sizeof *lm) != 0)
        goto out;
    for (uint32_t i = 0; i < head[4]; i++) {
        uint32_t pair[2];
        uint64_t ctx;
        if (grant_pub_read(&at, end, pair, 8) != 0 || grant_pub_read(&at, end, &ctx, 8) != 0)
            goto out;
        db_ids[i] = pair[0];
        ctxs[i] = (void *)(uintptr_t)ctx;
    }
    const unsigned char *links = at;
    for (uint32_t i = 0; i < head[5]; i++) {
        int32_t link[3];
        if (grant_pub_read(&at, end, link, 12) != 0)
            goto out;
        if (link[2] == 2 && link[1] >= 0 && (uint32_t)link[1] + 1 > nsend)
            nsend = (uint32_t)link[1] + 1;
    }
    send = malloc((nsend + 1) * sizeof *send);
    if (send == NULL)
        goto out;
    for (uint32_t i = 0; i <= nsend; i++)
        send[i] = -1;
    size_t busy_bytes = (size_t)(end - at);
    busy_blob = malloc(busy_bytes + 1);
    for (slots = 8; slots < 2 * head[6] + 2; slots *= 2)
        ;
    busy = calloc(slots, sizeof *busy);
    if (busy_blob == NULL || busy == NULL)
        goto out;
    memcpy(busy_blob, at, busy_bytes);
    const unsigned char *b = busy_blob, *bend = busy_blob + busy_bytes;
    for (uint32_t i = 0; i < head[6]; i++) {
        uint32_t pair[2];
        if (grant_pub_read(&b, bend, pair, 8) != 0 || pair[1] > (size_t)(bend - b))
            goto out;
        np_tdb_data key = {(unsigned char *)b, pair[1]};
        uint32_t kh = g->fn.hash ? g->fn.hash(&key) : 0;
        for (uint32_t j = busy_hash(pair[0], kh) & (slots - 1);; j = (j + 1) & (slots - 1)) {
            if (busy[j].key == NULL) {
                busy[j] = (struct np_busy){pair[0], pair[1], kh, b};
                break;
            }
        }
        b += pair[1];
    }
    if (b != bend)
        goto out;
    /* all read: install it */
    for (struct np_conn *c = p->conns; c; c = c->next)
        c->peer_pnn = -1;
    for (uint32_t i = 0; i < head[5]; i++) {
        int32_t link[3];
        memcpy(link, links + 12 * i, 12);
        if (link[2] == 2 && link[1] >= 0)
            send[link[1]] = link[0];
        struct np_conn *c = link[2] == 1 ? find(p, link[0]) : NULL;
        if (c != NULL && c->kind == NP_RECEIVE)
            c->peer_pnn = link[1];
    }
    free_published(g);
    g->open = head[0] != 0;
    g->pnn = head[1];
    g->generation = head[2];
    g->lmasters = lm;
    g->nlmasters = head[3];
    g->db_ids = db_ids;
    g->ctxs = ctxs;
    g->ndbs = head[4];
    g->send_conn = send;
    g->nsend = nsend;
    g->busy = busy;
    g->nbusy_slots = slots;
    g->busy_blob = busy_blob;
    g->published = 1;
    g->published_run = p->loop_runs;
    lm = db_ids = NULL;
    ctxs = NULL;
    send = NULL;
    busy = NULL;
    busy_blob = NULL;
    rc = 0;
out:
    pthread_mutex_unlock(&p->mu);
    free(lm);
    free(db_ids);
    free(ctxs);
    free(send);
    free(busy);
    free(busy_blob);
    return rc;
}

static size_t grant_entry_at(const unsigned char *e)
{
    return grant_entry_size(rd32(e + 20));
}

/* Move the grants logged since the last take into buf (whole entries). Entry: u32 db_id,
 * srcnode, hopcount, what (1 granted, 2 the initial store scheduled the record for deletion,
 * 4 the reply could not be queued), stores, keylen; u64 rsn, u32 dmaster, u32 flags of the
 * scheduled header; the key; padded to 8. Returns bytes copied; -(size needed) when the first
 * entry does not fit. */
int64_t np_grant_take(struct np_plane *p, unsigned char *buf, uint64_t cap)
{
    return take_entries(p, &p->g.log, &p->g.loglen, grant_entry_at, buf, cap);
}

/* Where the thread notes that peers have asked this node as their lmaster (the loop hands over
 * its rest only then). The loop reads it without the mutex before each sleep: an int that goes
 * from 0 to 1 once, and a late read costs one packet handled by the loop. */
const volatile int *np_grant_wanted_flag(struct np_plane *p)
{
    return &p->g.wanted;
}

/* Where the thread asks for a fresh state (it met a stale one, or the loop kept its rest); the
 * loop reads and clears it without the mutex: a lost request costs one more packet for the
 * loop, which asks again. */
volatile int *np_grant_asked_flag(struct np_plane *p)
{
    return &p->g.asked;
}

/* granted, declined because the published state was stale, because the key was busy, because
 * a frame waited for the loop, for another reason. */
void np_grant_counters(struct np_plane *p, uint64_t *out)
{
    pthread_mutex_lock(&p->mu);
    out[0] = p->g.granted;
    out[1] = p->g.declined_stale;
    out[2] = p->g.declined_busy;
    out[3] = p->g.declined_order;
    out[4] = p->g.declined_other;
    pthread_mutex_unlock(&p->mu);
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
    free_published(&p->g);
    free(p->g.log);
    free(p->g.out);
    forget_thread_state(&p->g);
    free(p->g.cflights);
    free(p->g.landed);
    free(p->g.clog);
    np_rest_release(p);
    pthread_mutex_destroy(&p->rest);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
