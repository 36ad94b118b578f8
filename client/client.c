/*
 * libbatchbroker: the client side of the shared-memory protocol described in
 * include/batchbroker/protocol.h.
 *
 * Hot path (bb_submit, bb_wait, bb_request_output, resubmit): stores into the
 * segment, one release store of the submission tail, and acquire loads of
 * the slot's shm_done_gen. A system call happens only to wake a sleeping
 * broker (doorbell) or to sleep ourselves after the spin budget.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "client_internal.h"
#include "segment_layout.h"
#include "socket_path.h"
#include "util_internal.h"

#define DEFAULT_SPIN_NS 50000
#define DEFAULT_TIMEOUT_MS 5000
/* A sleeping waiter re-checks that the broker is alive this often. */
#define LIVENESS_SLICE_NS 100000000ll

/* ---- fork() ----
 *
 * A child made by fork() inherits the segment's mapping and the control
 * socket, which it shares with the parent, but its copies of the submission
 * counter, the slot table and the allocator go their own way: a submission,
 * a cancel or a control message from it would overwrite the parent's ring
 * entries or take the parent's replies. A fork handler counts the forks in
 * the child; a client made under another count refuses every call that
 * reaches the broker or the segment (BB_EFORKED), one relaxed load and a
 * compare on the hot path. */
static _Atomic uint32_t fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
}

static void watch_forks(void)
{
    /* Fails only for want of memory; then nothing is detected, as before. */
    (void)pthread_atfork(NULL, NULL, on_fork_child);
}

static inline bool forked(const bb_client *c)
{
    return c->fork_gen != atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

/* ---- Control socket ---- */

/* A client of several lanes ends as one: the first lane found gone (the
 * broker died, or ended that session) marks every lane gone and closes their
 * sessions, so that every call and every lane agree (BB_EDISCONNECTED) and
 * the broker reclaims the others. */
static void lanes_gone(bb_client *head)
{
    for (uint32_t k = 0; k <= head->nmore; k++) {
        bb_client *l = k ? head->more[k - 1] : head;
        atomic_store(&l->dead, 1);
        shutdown(l->sock, SHUT_RDWR);
    }
}

/* A socket call under SO_RCVTIMEO/SO_SNDTIMEO fails with EINTR on every
 * signal, SA_RESTART or not, and a retry starts the timeout afresh: retry
 * only while the client's timeout lasts since start_ns, or a process that
 * takes a signal more often than that (a profiler's timer) never times out.
 * Past it, errno becomes EAGAIN: the callers' timeout. */
static bool retry_eintr(uint64_t start_ns, int timeout_ms)
{
    if (errno != EINTR)
        return false;
    if (bb__now_ns() - start_ns < (uint64_t)timeout_ms * 1000000u)
        return true;
    errno = EAGAIN;
    return false;
}

/* The broker answers control messages one by one, in order. A round trip
 * that timed out leaves its reply to come later: the next one skips it
 * first, or times out again without sending while the broker stays stuck. */
static int ctl_roundtrip(bb_client *c, const void *req, size_t req_len, void *rep,
                         size_t rep_len, uint32_t want_type)
{
    if (forked(c))
        return BB_EFORKED;
    if (atomic_load_explicit(&c->dead, memory_order_relaxed))
        return BB_EDISCONNECTED;
    pthread_mutex_lock(&c->ctl_lock);
    int rc = 0;
    ssize_t n;
    uint64_t start;
    while (c->ctl_lost) {
        char stale[1024];
        start = bb__now_ns();
        do
            n = recv(c->sock, stale, sizeof stale, 0);
        while (n < 0 && retry_eintr(start, c->timeout_ms));
        if (n <= 0) {
            rc = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? BB_ETIMEDOUT
                                                                    : BB_EDISCONNECTED;
            goto out;
        }
        c->ctl_lost--;
    }
    start = bb__now_ns();
    do
        n = send(c->sock, req, req_len, MSG_NOSIGNAL);
    while (n < 0 && retry_eintr(start, c->timeout_ms));
    if (n != (ssize_t)req_len) {
        rc = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? BB_ETIMEDOUT : BB_EDISCONNECTED;
        goto out;
    }
    start = bb__now_ns();
    do
        n = recv(c->sock, rep, rep_len, 0);
    while (n < 0 && retry_eintr(start, c->timeout_ms));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c->ctl_lost++;
        rc = BB_ETIMEDOUT;
        goto out;
    }
    if (n <= 0) {
        rc = BB_EDISCONNECTED;
        goto out;
    }
    const struct bb_msg_hdr *h = rep;
    if ((size_t)n < sizeof *h || h->type != want_type)
        rc = BB_EPROTO;
    else if (h->status < 0)
        rc = h->status;
    else if ((size_t)n != rep_len)
        rc = BB_EPROTO;
out:
    if (rc == BB_EDISCONNECTED) {
        atomic_store(&c->dead, 1);
        if (c->head)
            lanes_gone(c->head);
    }
    pthread_mutex_unlock(&c->ctl_lock);
    return rc;
}

/* The broker is gone once its end of the control socket hangs up. A client
 * of several lanes looks at every lane's socket, in one poll(): a thread
 * that waits on one lane must learn that another lane's session ended, or
 * it would go on as if the client were whole. */
static bool broker_gone(bb_client *c)
{
    if (atomic_load_explicit(&c->dead, memory_order_relaxed))
        return true;
    bb_client *head = c->head ? c->head : c;
    struct pollfd p[BB_MAX_LANES];
    uint32_t n = head->nmore + 1;
    for (uint32_t k = 0; k < n; k++)
        p[k] = (struct pollfd){.fd = k ? head->more[k - 1]->sock : head->sock, .events = POLLRDHUP};
    if (poll(p, n, 0) <= 0)
        return false;
    for (uint32_t k = 0; k < n; k++)
        if (p[k].revents & (POLLHUP | POLLRDHUP | POLLERR)) {
            atomic_store(&c->dead, 1);
            if (c->head)
                lanes_gone(c->head);
            return true;
        }
    return false;
}

/* broker_gone at most once a liveness slice per client, for the waits that
 * time out: a caller that loops on short waits learns of a dead broker
 * within a slice, and makes no system call a wait otherwise. */
static bool broker_gone_now_and_then(bb_client *c, uint64_t now)
{
    if (atomic_load_explicit(&c->dead, memory_order_relaxed))
        return true;
    uint64_t last = atomic_load_explicit(&c->gone_checked_ns, memory_order_relaxed);
    if (now - last < (uint64_t)LIVENESS_SLICE_NS)
        return false;
    atomic_store_explicit(&c->gone_checked_ns, now, memory_order_relaxed);
    return broker_gone(c);
}

/* The HELLO reply and its descriptors: the segment, the worker page, the
 * notify eventfd, and (without the futex doorbell) the doorbell eventfd; fds
 * gets them with -1 for any not sent. */
static int recv_hello(int sock, int timeout_ms, struct bb_msg_hello_reply *rep, int fds[4])
{
    char cbuf[CMSG_SPACE(4 * sizeof(int))];
    struct iovec iov = {.iov_base = rep, .iov_len = sizeof *rep};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    ssize_t n;
    int resets = 0;
    uint64_t start = bb__now_ns();
    for (;;) {
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0 && retry_eintr(start, timeout_ms))
            continue;
        if (n < 0 && errno == ECONNRESET && resets++ == 0)
            continue; /* a refusal raced our HELLO: its reply is still queued */
        break;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return BB_ETIMEDOUT; /* SO_RCVTIMEO: a broker that does not answer */
    if (n <= 0)
        return BB_EDISCONNECTED;
    if ((size_t)n < sizeof(struct bb_msg_hdr) || rep->h.type != BB_MSG_HELLO_REPLY)
        return BB_EPROTO;
    int nfds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            nfds = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds, CMSG_DATA(cm), (size_t)(nfds > 4 ? 4 : nfds) * sizeof(int));
        }
    }
    if (rep->h.status < 0 || nfds < 3 || nfds > 4 || (mh.msg_flags & MSG_CTRUNC) ||
        (size_t)n != sizeof *rep) {
        for (int i = 0; i < nfds && i < 4; i++)
            close(fds[i]);
        fds[0] = fds[1] = fds[2] = fds[3] = -1;
        return rep->h.status < 0 ? rep->h.status : BB_EPROTO;
    }
    return 0;
}

/* The worker page: read-only, one page, the magic and our ABI major. */
static int map_worker_page(bb_client *c, int fd)
{
    void *p = mmap(NULL, BB_SHM_WORKER_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return BB_ESYS;
    c->wpage = p;
    uint32_t v = atomic_load_explicit(&c->wpage->shm_version, memory_order_acquire);
    if (c->wpage->magic != BB_SHM_WORKER_MAGIC || (v >> 16) != BB_ABI_MAJOR ||
        c->wpage->size != BB_SHM_WORKER_SIZE)
        return BB_EPROTO;
    /* The page says which doorbell: a futex needs no eventfd, an eventfd must be there. */
    if ((c->wpage->flags & BB_WORKER_FUTEX_DOORBELL) != (c->doorbell_fd < 0))
        return BB_EPROTO;
    return 0;
}

/* The broker wrote the header; we trust it, but a layout that does not fit
 * the mapping would crash us, so check it against the one layout both sides
 * compute (segment_layout.h). */
static int check_layout(const struct bb_shm_header *h, size_t size)
{
    if (h->magic != BB_SHM_MAGIC)
        return BB_EPROTO;
    uint32_t v = atomic_load_explicit(&((struct bb_shm_header *)h)->shm_version,
                                      memory_order_acquire);
    if ((v >> 16) != BB_ABI_MAJOR)
        return BB_EPROTO;
    if (h->header_size != BB_SHM_HEADER_SIZE || h->slot_size != BB_SHM_SLOT_SIZE ||
        !bb__layout_matches(h, size))
        return BB_EPROTO;
    return 0;
}

static bool trusted_broker(uid_t uid)
{
    if (uid == 0 || uid == getuid())
        return true;
    const char *list = getenv("BATCHBROKER_TRUSTED_UIDS");
    while (list && *list) {
        char *end;
        unsigned long v = strtoul(list, &end, 10);
        if (end == list)
            return false;
        if (v == uid)
            return true;
        list = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return false;
    }
    return false;
}

int bb_default_socket(char *buf, size_t len)
{
    const char *env = getenv("BATCHBROKER_SOCKET");
    int n;
    if (env && *env) {
        n = snprintf(buf, len, "%s", env);
        return n < 0 || (size_t)n >= len ? BB_EINVAL : n;
    }
    n = bb__default_socket_path(geteuid(), buf, len);
    if (n < 0)
        return BB_EINVAL;
    /* A broker run by root listens in /run whatever our own default is. */
    static const char root_sock[] = BB__ROOT_SOCKET_DIR "/" BB__SOCKET_NAME;
    struct stat st;
    if (stat(buf, &st) < 0 && errno == ENOENT && stat(root_sock, &st) == 0 &&
        sizeof root_sock <= len) {
        memcpy(buf, root_sock, sizeof root_sock);
        n = (int)sizeof root_sock - 1;
    }
    return n;
}

/* opts->timeout_ms, else $BATCHBROKER_TIMEOUT_MS, else 5 s. */
static int timeout_ms_of(const struct bb_client_opts *opts)
{
    if (opts && opts->timeout_ms)
        return opts->timeout_ms > INT32_MAX ? INT32_MAX : (int)opts->timeout_ms;
    const char *env = getenv("BATCHBROKER_TIMEOUT_MS");
    char *end;
    unsigned long v = env && *env ? strtoul(env, &end, 10) : 0;
    return v > 0 && v <= INT32_MAX && *end == '\0' ? (int)v : DEFAULT_TIMEOUT_MS;
}

int bb_connect(const char *socket_path, const struct bb_client_opts *opts, bb_client **out)
{
    if (!out)
        return BB_EINVAL;
    *out = NULL;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (socket_path) {
        if (strlen(socket_path) >= sizeof sa.sun_path)
            return BB_EINVAL;
        strcpy(sa.sun_path, socket_path);
    } else if (bb_default_socket(sa.sun_path, sizeof sa.sun_path) < 0) {
        return BB_EINVAL;
    }

    pthread_once(&fork_once, watch_forks);
    bb_client *c = calloc(1, sizeof *c);
    if (!c)
        return BB_ENOMEM;
    c->fork_gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
    c->sock = c->doorbell_fd = c->notify_fd = c->event_fd = -1;
    atomic_init(&c->spin_ns, DEFAULT_SPIN_NS);
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->cq_lock, NULL);
    pthread_mutex_init(&c->ctl_lock, NULL);
    int rc;

    c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c->sock < 0) {
        rc = BB_ESYS;
        goto fail;
    }
    /* Every blocking operation on the socket ends within the timeout: a
     * Unix connect waits for room in a full listen backlog for SO_SNDTIMEO,
     * sends for SO_SNDTIMEO, receives for SO_RCVTIMEO. */
    c->timeout_ms = timeout_ms_of(opts);
    struct timeval tv = {.tv_sec = c->timeout_ms / 1000, .tv_usec = (c->timeout_ms % 1000) * 1000};
    if (setsockopt(c->sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(c->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
        rc = BB_ESYS;
        goto fail;
    }
    uint64_t start = bb__now_ns();
    while ((rc = connect(c->sock, (struct sockaddr *)&sa, sizeof sa)) < 0 &&
           retry_eintr(start, c->timeout_ms))
        ; /* a Unix connect interrupted while it waits for the backlog: not connected */
    if (rc < 0) {
        /* No file, or a file nobody listens on (a broker that was killed);
         * EAGAIN: the backlog stayed full for SO_SNDTIMEO. */
        rc = (errno == ENOENT || errno == ECONNREFUSED) ? BB_ENOBROKER
             : (errno == EAGAIN || errno == EINPROGRESS) ? BB_ETIMEDOUT
                                                         : BB_ESYS;
        goto fail;
    }
    /* 0 asks for the broker's defaults (default_segment_mb, default_max_inflight). */
    struct bb_msg_hello hello = {
        .h = {.type = BB_MSG_HELLO},
        .magic = BB_SHM_MAGIC,
        .version = BB_SHM_VERSION,
        .segment_bytes = opts ? opts->segment_bytes : 0,
        .max_inflight = opts ? opts->max_inflight : 0,
        /* The broker serves us from the worker of this CPU's NUMA node. */
        .cpu = sched_getcpu(),
    };
    /* Only a broker we trust may get our data: one run by root, by our own
     * user, or by a uid listed in $BATCHBROKER_TRUSTED_UIDS. A refused broker
     * is told why (a HELLO that asks for nothing), so that its operator sees
     * it in the broker's log and not only we in a return code. */
    struct ucred cred;
    socklen_t cl = sizeof cred;
    if (getsockopt(c->sock, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
        rc = BB_ESYS;
        goto fail;
    }
    if (!trusted_broker(cred.uid)) {
        struct bb_msg_hello no = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                  .version = BB_SHM_VERSION, .flags = BB_HELLO_DISTRUST};
        ssize_t n = send(c->sock, &no, sizeof no, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        rc = BB_EUNTRUSTED;
        goto fail;
    }
    /* A broker that refuses us replies at once and closes, so the send may
     * fail: the reply, if any, is still waiting to be read. */
    ssize_t sent = send(c->sock, &hello, sizeof hello, MSG_NOSIGNAL);
    (void)sent;
    struct bb_msg_hello_reply rep;
    int fds[4] = {-1, -1, -1, -1};
    rc = recv_hello(c->sock, c->timeout_ms, &rep, fds);
    if (rc < 0)
        goto fail;
    int memfd = fds[0];
    c->notify_fd = fds[2];
    c->doorbell_fd = fds[3];
    rc = map_worker_page(c, fds[1]);
    close(fds[1]);
    if (rc < 0) {
        close(memfd);
        goto fail;
    }
    c->size = rep.segment_size;
    c->base = mmap(NULL, c->size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    close(memfd);
    if (c->base == MAP_FAILED) {
        c->base = NULL;
        rc = BB_ESYS;
        goto fail;
    }
    c->hdr = (struct bb_shm_header *)c->base;
    rc = check_layout(c->hdr, c->size);
    if (rc < 0)
        goto fail;

    struct bb_shm_header *h = c->hdr;
    c->nslots = h->nslots;
    c->slots = (struct bb_shm_slot *)(c->base + h->slots_off);
    c->sq = (struct bb_shm_ring *)(c->base + h->sq_off);
    c->sq_entries = (_Atomic uint32_t *)(c->base + h->sq_off + BB_SHM_RING_HDR_SIZE);
    c->sq_mask = h->sq_entries - 1;
    c->sq_lg = (uint32_t)__builtin_ctz(h->sq_entries);
    atomic_init(&c->sq_reserve, atomic_load(&c->sq->shm_head));
    bb__ring_attach(&c->cq, c->base + h->cq_off, h->cq_entries, 0);
    if (bb__buddy_init(&c->heap, c->base + h->heap_off, h->heap_size) < 0) {
        rc = BB_ENOMEM;
        goto fail;
    }
    c->reqs = calloc(c->nslots, sizeof *c->reqs);
    if (!c->reqs) {
        rc = BB_ENOMEM;
        goto fail;
    }
    for (uint32_t i = c->nslots; i-- > 0;) {
        struct bb_request *r = &c->reqs[i];
        r->c = c;
        r->index = i;
        r->slot = &c->slots[i];
        r->next_free = c->free_reqs;
        c->free_reqs = r;
    }
    *out = c;
    return 0;
fail:
    bb_disconnect(c);
    return rc;
}

int bb_connect_lanes(const char *socket_path, const struct bb_client_opts *opts,
                     unsigned lanes, bb_client **out)
{
    if (!out)
        return BB_EINVAL;
    *out = NULL;
    if (lanes < 1 || lanes > BB_MAX_LANES)
        return BB_EINVAL;
    bb_client *c;
    int rc = bb_connect(socket_path, opts, &c);
    if (rc < 0 || lanes == 1) {
        *out = rc < 0 ? NULL : c;
        return rc;
    }
    c->more = calloc(lanes - 1, sizeof *c->more);
    if (!c->more) {
        bb_disconnect(c);
        return BB_ENOMEM;
    }
    for (unsigned k = 1; k < lanes; k++) {
        rc = bb_connect(socket_path, opts, &c->more[k - 1]);
        if (rc < 0) {
            bb_disconnect(c);
            return rc;
        }
        c->nmore = k;
        c->more[k - 1]->head = c;
    }
    c->head = c;
    *out = c;
    return 0;
}

/* Lane k of c (0: c itself). */
static inline bb_client *lane_of(bb_client *c, uint32_t k)
{
    return k ? c->more[k - 1] : c;
}

void bb_disconnect(bb_client *c)
{
    if (!c)
        return;
    for (uint32_t k = 0; k < c->nmore; k++)
        bb_disconnect(c->more[k]); /* frees the lanes' models */
    free(c->more);
    for (bb_model *m = c->models, *next; m; m = next) {
        next = m->next;
        free(m->lane);
        free(m);
    }
    free(c->reqs);
    bb__buddy_fini(&c->heap);
    if (c->base)
        munmap(c->base, c->size);
    if (c->wpage)
        munmap(c->wpage, BB_SHM_WORKER_SIZE);
    if (c->sock >= 0)
        close(c->sock);
    if (c->doorbell_fd >= 0)
        close(c->doorbell_fd);
    if (c->notify_fd >= 0)
        close(c->notify_fd);
    if (c->event_fd >= 0)
        close(c->event_fd);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->cq_lock);
    pthread_mutex_destroy(&c->ctl_lock);
    free(c);
}

int bb_model_open(bb_client *c, const char *name, bb_model **out)
{
    if (!c || !name || !out || strlen(name) >= BB_MAX_MODEL_NAME || !*name)
        return BB_EINVAL;
    struct bb_msg_model_open req = {.h = {.type = BB_MSG_MODEL_OPEN}};
    strcpy(req.name, name);
    struct bb_msg_model_open_reply rep;
    int rc = ctl_roundtrip(c, &req, sizeof req, &rep, sizeof rep, BB_MSG_MODEL_OPEN_REPLY);
    if (rc < 0)
        return rc;
    bb_model *m = calloc(1, sizeof *m);
    if (!m)
        return BB_ENOMEM;
    m->c = c;
    m->id = rep.model_id;
    m->max_batch_size = rep.max_batch_size;
    m->max_request_bytes = rep.max_request_bytes;
    strcpy(m->name, name);
    if (c->nmore && !(m->lane = calloc(c->nmore + 1, sizeof *m->lane))) {
        free(m);
        return BB_ENOMEM;
    }
    pthread_mutex_lock(&c->lock);
    m->next = c->models;
    c->models = m;
    pthread_mutex_unlock(&c->lock);
    if (m->lane) {
        /* The same model on every lane. One that fails leaves this handle
         * (and the lanes' opened so far) to bb_disconnect. */
        m->lane[0] = m;
        for (uint32_t k = 1; k <= c->nmore; k++)
            if ((rc = bb_model_open(c->more[k - 1], name, &m->lane[k])) < 0)
                return rc;
    }
    *out = m;
    return 0;
}

_Static_assert(BB_STATS_BATCH_BUCKETS == BB_BATCH_SIZE_BUCKETS && BB_STATS_PHASES == (int)BB_PHASES &&
                   BB_STATS_PHASE_QUEUE == (int)BB_PHASE_QUEUE &&
                   BB_STATS_PHASE_DELIVERY == (int)BB_PHASE_DELIVERY,
               "the public statistics mirror the wire's");

static int stats_roundtrip(bb_model *m, struct bb_msg_stats_reply *rep)
{
    struct bb_msg_stats req = {.h = {.type = BB_MSG_STATS}, .model_id = m->id};
    return ctl_roundtrip(m->c, &req, sizeof req, rep, sizeof *rep, BB_MSG_STATS_REPLY);
}

int bb_model_stats(bb_model *m, struct bb_model_stats *out)
{
    if (!m || !out)
        return BB_EINVAL;
    struct bb_msg_stats_reply rep;
    int rc = stats_roundtrip(m, &rep);
    if (rc < 0)
        return rc;
    const struct bb_wire_stats *s = &rep.s;
    memset(out, 0, sizeof *out);
    out->size = sizeof *out;
    out->version = BB_MODEL_STATS_VERSION;
    out->submitted = s->submitted;
    out->completed = s->completed;
    out->failed = s->failed;
    out->timed_out = s->timed_out;
    out->rejected = s->rejected;
    out->deduplicated = s->deduplicated;
    out->batches = s->batches;
    memcpy(out->completed_by_priority, s->completed_by_priority, sizeof s->completed_by_priority);
    out->avg_batch_size = s->avg_batch_size;
    out->avg_queue_wait_us = s->avg_queue_wait_us;
    out->throughput_rps = s->throughput_rps;
    out->latency_p50_us = s->latency_p50_us;
    out->latency_p95_us = s->latency_p95_us;
    out->latency_p99_us = s->latency_p99_us;
    out->queued = s->queued;
    out->batch_target = s->batch_target;
    out->cancelled = s->cancelled;
    out->profile_stride = s->profile_stride;
    out->running = s->running;
    out->window_s = s->window_s;
    memcpy(out->batch_size_hist, s->batch_size_hist, sizeof out->batch_size_hist);
    out->latency_sum_ns = s->latency_sum_ns;
    out->phase_count = s->phase_count;
    out->timed_latency_sum_ns = s->timed_latency_sum_ns;
    memcpy(out->phase_sum_ns, s->phase_sum_ns, sizeof out->phase_sum_ns);
    memcpy(out->phase_p50_us, s->phase_p50_us, sizeof out->phase_p50_us);
    memcpy(out->phase_p99_us, s->phase_p99_us, sizeof out->phase_p99_us);
    memcpy(out->latency_p50_by_priority_us, s->latency_p50_by_priority_us,
           sizeof out->latency_p50_by_priority_us);
    memcpy(out->latency_p99_by_priority_us, s->latency_p99_by_priority_us,
           sizeof out->latency_p99_by_priority_us);
    return 0;
}

int bb_model_tuning(bb_model *m, struct bb_model_tuning *out)
{
    if (!m || !out)
        return BB_EINVAL;
    struct bb_msg_stats_reply rep;
    int rc = stats_roundtrip(m, &rep);
    if (rc < 0)
        return rc;
    const struct bb_wire_stats *s = &rep.s;
    *out = (struct bb_model_tuning){
        .adaptive = (int)s->adaptive, .pinned = s->pinned, .batch_target = s->batch_target,
        .wait_us = s->wait_us, .max_batch_size = s->max_batch_size, .fit_a_us = s->fit_a_us,
        .fit_b_us = s->fit_b_us, .fit_r2 = s->fit_r2, .best_size = s->best_size,
        .arrival_rps = s->arrival_rps, .throughput_rps = s->throughput_rps,
        .latency_p99_us = s->latency_p99_us, .score = s->score,
        .slo_violations = s->slo_violations, .changes = s->changes};
    return 0;
}

int bb_model_pin(bb_model *m, uint32_t target)
{
    if (!m)
        return BB_EINVAL;
    struct bb_msg_pin req = {.h = {.type = BB_MSG_PIN}, .target = target};
    strcpy(req.name, m->name);
    struct bb_msg_hdr rep;
    return ctl_roundtrip(m->c, &req, sizeof req, &rep, sizeof rep, BB_MSG_PIN_REPLY);
}

/* ---- Requests ---- */

static inline uint32_t done_gen(const bb_request *r)
{
    return atomic_load_explicit(&r->slot->shm_done_gen, memory_order_acquire);
}

static inline uint32_t gen_of(const bb_request *r)
{
    return atomic_load_explicit(&((bb_request *)r)->gen, memory_order_relaxed);
}

static inline int kind_of(const bb_request *r)
{
    return atomic_load_explicit(&((bb_request *)r)->kind, memory_order_relaxed);
}

/* Release: a reused slot's reset (bb_request_new) comes before the LIVE a
 * concurrent bb_client_poll reads with acquire. */
static inline void set_kind(bb_request *r, int kind)
{
    atomic_store_explicit(&r->kind, kind, memory_order_release);
}

static inline bool is_pending(const bb_request *r)
{
    uint32_t g = gen_of(r);
    return g != 0 && done_gen(r) != g;
}

static void release_locked(bb_client *c, bb_request *r)
{
    bb__buddy_free(&c->heap, r->off);
    set_kind(r, BB__REQ_FREE);
    r->m = NULL;
    r->next_free = c->free_reqs;
    c->free_reqs = r;
}

/* Requests freed while pending come back once the broker has completed them. */
static void reap_orphans_locked(bb_client *c)
{
    if (c->norphans == 0)
        return;
    for (uint32_t i = 0; i < c->nslots && c->norphans; i++) {
        bb_request *r = &c->reqs[i];
        /* Not while pending, even with the broker gone: a batch that was
         * running when the session ended still finishes and writes the
         * output, which would land on the allocator's links. */
        if (kind_of(r) == BB__REQ_ORPHAN && !is_pending(r)) {
            c->norphans--;
            release_locked(c, r);
        }
    }
}

static int request_new(bb_model *m, size_t input_bytes, size_t output_capacity,
                       bb_request **out)
{
    bb_client *c = m->c;
    if (atomic_load_explicit(&c->dead, memory_order_relaxed))
        return BB_EDISCONNECTED;
    if (m->max_request_bytes && input_bytes + output_capacity > m->max_request_bytes)
        return BB_ETOOBIG;
    /* Output starts on its own cache line, so a backend writing it does not
     * share a line with the input another core may still be reading. */
    size_t in_round = (input_bytes + 63) & ~(size_t)63;
    size_t total = in_round + output_capacity;
    if (total == 0)
        total = 1;
    pthread_mutex_lock(&c->lock);
    if (!c->free_reqs)
        reap_orphans_locked(c);
    bb_request *r = c->free_reqs;
    int64_t off = r ? bb__buddy_alloc(&c->heap, total) : -1;
    if (off < 0 && c->norphans) {
        reap_orphans_locked(c);
        r = c->free_reqs;
        off = r ? bb__buddy_alloc(&c->heap, total) : -1;
    }
    if (!r || off < 0) {
        pthread_mutex_unlock(&c->lock);
        return BB_ENOMEM;
    }
    c->free_reqs = r->next_free;
    /* A reused slot must not show its previous request's outcome, not even
     * to a bb_client_poll that finds it LIVE the moment it is. */
    atomic_store_explicit(&r->gen, 0, memory_order_relaxed);
    atomic_store_explicit(&r->polled_gen, 0, memory_order_relaxed);
    r->cancel_gen = 0;
    r->tag = 0;
    set_kind(r, BB__REQ_LIVE);
    pthread_mutex_unlock(&c->lock);

    r->m = m;
    r->off = (uint64_t)off;
    r->in_off = c->hdr->heap_off + (uint64_t)off;
    r->out_off = r->in_off + in_round;
    r->in_cap = r->in_len = (uint32_t)input_bytes;
    r->out_cap = (uint32_t)output_capacity;
    *out = r;
    return 0;
}

/* The lane of the calling thread among n: threads are numbered in the order
 * they first ask, and take the lanes in turn. */
static _Atomic unsigned lane_threads;
static _Thread_local unsigned thread_seq = UINT_MAX;

static unsigned thread_lane(unsigned n)
{
    if (thread_seq == UINT_MAX)
        thread_seq = atomic_fetch_add_explicit(&lane_threads, 1, memory_order_relaxed) % 65536u;
    return thread_seq % n;
}

int bb_request_new(bb_model *m, size_t input_bytes, size_t output_capacity, bb_request **out)
{
    if (!m || !out || input_bytes > UINT32_MAX || output_capacity > UINT32_MAX)
        return BB_EINVAL;
    *out = NULL;
    if (forked(m->c))
        return BB_EFORKED;
    if (!m->lane)
        return request_new(m, input_bytes, output_capacity, out);
    /* The thread's own lane; a full one lends the others'. */
    uint32_t n = m->c->nmore + 1, first = thread_lane(n);
    int rc = BB_ENOMEM;
    for (uint32_t k = 0; k < n && rc == BB_ENOMEM; k++)
        rc = request_new(m->lane[(first + k) % n], input_bytes, output_capacity, out);
    return rc;
}

void *bb_request_input(bb_request *r)
{
    return r ? r->c->base + r->in_off : NULL;
}

size_t bb_request_input_capacity(const bb_request *r)
{
    return r ? r->in_cap : 0;
}

int bb_request_set_input_len(bb_request *r, size_t len)
{
    if (!r || len > r->in_cap)
        return BB_EINVAL;
    if (is_pending(r))
        return BB_ESTATE;
    r->in_len = (uint32_t)len;
    return 0;
}

/* Multi-producer push of one entry, then the wake-up handshake of
 * protocol.h: publish, seq_cst fence, and ring only a sleeping broker. */
static void sq_push(bb_client *c, uint32_t entry)
{
    uint32_t pos = atomic_fetch_add_explicit(&c->sq_reserve, 1, memory_order_relaxed);
    /* The ring holds 4 entries per slot, more than can be outstanding (see
     * protocol.md), so it never overflows; wait anyway if a broker stalls. */
    while (pos - atomic_load_explicit(&c->sq->shm_head, memory_order_acquire) > c->sq_mask) {
        if (broker_gone(c))
            return;
        sched_yield();
    }
    /* One release store publishes the entry, with its lap: no waiting for
     * the threads that reserved before us (protocol.h). */
    atomic_store_explicit(&c->sq_entries[pos & c->sq_mask], entry | BB_SQE_LAP(pos, c->sq_lg),
                          memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&c->wpage->shm_need_wake, memory_order_relaxed))
        bb__client_ring(c);
}

void bb__client_ring(bb_client *c)
{
    if (c->doorbell_fd < 0) {
        /* The worker's futex word, through our read-only mapping: a wake
         * needs no write access (protocol.h). */
        bb__futex_wake(&c->wpage->shm_doorbell);
        return;
    }
    uint64_t one = 1;
    ssize_t n = write(c->doorbell_fd, &one, sizeof one);
    (void)n; /* blocking, but the broker reads the counter back to 0: never full */
}

int bb_submit(bb_request *r, const struct bb_submit_opts *opts)
{
    if (!r || kind_of(r) != BB__REQ_LIVE)
        return BB_EINVAL;
    bb_client *c = r->c;
    if (forked(c))
        return BB_EFORKED;
    if (opts && (opts->priority < 0 || opts->priority > BB_PRIORITY_LOW))
        return BB_EINVAL;
    if (is_pending(r))
        return BB_ESTATE;
    if (atomic_load_explicit(&c->dead, memory_order_relaxed))
        return BB_EDISCONNECTED;
    if (atomic_load_explicit(&c->wpage->shm_broker_state, memory_order_relaxed) != BB_BROKER_RUNNING)
        return BB_ESHUTDOWN;
    struct bb_shm_slot *s = r->slot;
    /* Never the value the broker last completed (stable: not pending), never 0. */
    uint32_t gen = done_gen(r) + 1;
    if (gen == 0)
        gen = 1;
    atomic_store_explicit(&r->gen, gen, memory_order_relaxed);
    r->tag = opts ? opts->tag : 0;
    s->gen = gen;
    s->model_id = r->m->id;
    s->in_off = r->in_off;
    s->out_off = r->out_off;
    s->in_len = r->in_len;
    s->out_cap = r->out_cap;
    s->tag = r->tag;
    s->submit_ns = bb__now_ns();
    s->timeout_us = opts ? opts->timeout_us : 0;
    s->flags = opts ? opts->flags : 0;
    s->priority = (uint8_t)(opts ? opts->priority : 0);
    sq_push(c, r->index);
    return 0;
}

int bb_cancel(bb_request *r)
{
    if (!r || kind_of(r) == BB__REQ_FREE)
        return BB_EINVAL;
    if (forked(r->c))
        return BB_EFORKED;
    if (!is_pending(r) || r->cancel_gen == gen_of(r))
        return BB_ESTATE;
    if (atomic_load_explicit(&r->c->dead, memory_order_relaxed))
        return BB_EDISCONNECTED;
    r->cancel_gen = gen_of(r);
    sq_push(r->c, r->index | BB_SQE_CANCEL);
    return 0;
}

int bb_wait(bb_request *r, int64_t timeout_ns)
{
    if (!r || kind_of(r) == BB__REQ_FREE)
        return BB_EINVAL;
    if (forked(r->c))
        return BB_EFORKED;
    if (gen_of(r) == 0)
        return BB_ESTATE;
    if (!is_pending(r))
        return 0;
    /* A broker already known dead answers nothing more: say so at once, as
     * every return on a timeout below does (a caller that waits in slices
     * shorter than the liveness check would otherwise never learn it). */
    bb_client *c = r->c;
    if (atomic_load_explicit(&c->dead, memory_order_relaxed))
        return BB_EDISCONNECTED;
    uint64_t start = bb__now_ns();
    /* A poll too: a caller that polls in a loop learns of a dead broker. */
    if (timeout_ns == 0)
        return broker_gone_now_and_then(c, start) ? BB_EDISCONNECTED : BB_ETIMEDOUT;
    uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : start + (uint64_t)timeout_ns;
    int64_t spin = atomic_load_explicit(&c->spin_ns, memory_order_relaxed);
    uint64_t spin_end = start + (uint64_t)(spin > 0 ? spin : 0);
    uint64_t next_check = start + LIVENESS_SLICE_NS;

    /* Spin: the broker answers in microseconds when it is awake. A budget
     * of 0 sleeps at once (not even the 63 rounds between clock reads), and
     * so does a thread whose yields show a CPU-bound neighbour on its CPU. */
    static _Thread_local struct bb__spin_guard guard;
    for (unsigned i = 1; spin > 0 && bb__spin_calm(&guard, start); i++) {
        if (!is_pending(r))
            return 0;
        if ((i & 63) == 0) {
            uint64_t now = bb__now_ns();
            if (now >= deadline)
                return broker_gone_now_and_then(c, now) ? BB_EDISCONNECTED : BB_ETIMEDOUT;
            if (now >= spin_end)
                break;
            if (now >= next_check) {
                if (broker_gone(c))
                    return BB_EDISCONNECTED;
                next_check = now + LIVENESS_SLICE_NS;
            }
        }
        /* Yield now and then: with more spinning threads than CPUs, the
         * broker thread we wait for may be the one that needs this CPU. */
        if ((i & 1023) == 0)
            bb__spin_yield((uint64_t)spin, &guard, bb__now_ns());
        else
            bb__cpu_relax();
    }
    /* Sleep on the client's futex word in slices, checking the broker is
     * alive; the handshake is in protocol.h. */
    struct bb_shm_header *h = c->hdr;
    for (;;) {
        uint32_t seq = atomic_load_explicit(&h->shm_wake_seq, memory_order_acquire);
        atomic_fetch_add_explicit(&h->shm_sleepers, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&r->slot->shm_done_gen, memory_order_seq_cst) == gen_of(r)) {
            atomic_fetch_sub_explicit(&h->shm_sleepers, 1, memory_order_relaxed);
            return 0;
        }
        uint64_t now = bb__now_ns();
        int rc = 0;
        if (now >= deadline) {
            rc = broker_gone_now_and_then(c, now) ? BB_EDISCONNECTED : BB_ETIMEDOUT;
        } else if (now >= next_check) {
            /* A poll() costs a system call: once a slice, not before every
             * sleep (sleeps are slices, so a dead broker is still seen). */
            next_check = now + LIVENESS_SLICE_NS;
            if (broker_gone(c))
                rc = BB_EDISCONNECTED;
        }
        if (rc == 0) {
            uint64_t slice = deadline - now;
            if (slice > LIVENESS_SLICE_NS)
                slice = LIVENESS_SLICE_NS;
            bb__futex_wait(&h->shm_wake_seq, seq, (int64_t)slice);
        }
        atomic_fetch_sub_explicit(&h->shm_sleepers, 1, memory_order_relaxed);
        if (rc < 0)
            return rc;
        if (!is_pending(r))
            return 0;
    }
}

int bb_request_status(const bb_request *r)
{
    if (!r || kind_of(r) == BB__REQ_FREE)
        return BB_EINVAL;
    if (forked(r->c))
        return BB_EFORKED; /* the slot is the parent's; so is its output */
    if (gen_of(r) == 0)
        return BB_ESTATE;
    if (is_pending(r))
        return atomic_load_explicit(&r->c->dead, memory_order_relaxed) ? BB_EDISCONNECTED
                                                                       : BB_EPENDING;
    int st = r->slot->status;
    return st > 0 ? BB_EPROTO : st;
}

const void *bb_request_output(const bb_request *r, size_t *len)
{
    if (len)
        *len = 0;
    if (bb_request_status(r) != 0)
        return NULL;
    uint32_t n = r->slot->out_len;
    if (n > r->out_cap)
        n = r->out_cap;
    if (len)
        *len = n;
    return r->c->base + r->out_off;
}

uint64_t bb_request_tag(const bb_request *r)
{
    return r ? r->tag : 0;
}

void bb_request_free(bb_request *r)
{
    if (!r || kind_of(r) != BB__REQ_LIVE)
        return;
    bb_client *c = r->c;
    /* A fork child's copy: no cancel into the parent's ring, and no lock
     * that a thread of the parent may have held at the fork. */
    if (forked(c))
        return;
    bool pending = is_pending(r);
    if (pending && !atomic_load(&c->dead) && r->cancel_gen != gen_of(r)) {
        r->cancel_gen = gen_of(r);
        sq_push(c, r->index | BB_SQE_CANCEL);
    }
    pthread_mutex_lock(&c->lock);
    if (pending) {
        set_kind(r, BB__REQ_ORPHAN);
        c->norphans++;
    } else {
        release_locked(c, r);
    }
    pthread_mutex_unlock(&c->lock);
}

int bb_infer(bb_model *m, const void *in, size_t in_len, void *out, size_t out_cap,
             size_t *out_len, const struct bb_submit_opts *opts, int64_t timeout_ns)
{
    if (!m || (!in && in_len) || (!out && out_cap))
        return BB_EINVAL;
    bb_request *r;
    int rc = bb_request_new(m, in_len, out_cap, &r);
    if (rc < 0)
        return rc;
    if (in_len)
        memcpy(bb_request_input(r), in, in_len);
    rc = bb_submit(r, opts);
    if (rc == 0)
        rc = bb_wait(r, timeout_ns);
    if (rc == 0)
        rc = bb_request_status(r);
    if (rc == 0) {
        size_t n;
        const void *p = bb_request_output(r, &n);
        if (n > out_cap)
            rc = BB_ETOOBIG;
        else {
            if (n)
                memcpy(out, p, n);
            if (out_len)
                *out_len = n;
        }
    }
    bb_request_free(r);
    return rc;
}

/* ---- Event-loop integration ---- */

/* The completion eventfd alone would never tell an event loop that the
 * broker died (its pending requests would wait forever), so the descriptor
 * handed out is an epoll set of that eventfd and the control socket's
 * hang-up. */
int bb_client_fd(const bb_client *cc)
{
    if (!cc)
        return BB_EINVAL;
    if (forked(cc))
        return BB_EFORKED;
    bb_client *c = (bb_client *)cc; /* made once, on first use: not const */
    /* The other lanes' own descriptors first (each an epoll set that is
     * readable while its lane has something), outside this lane's lock. */
    int inner[BB_MAX_LANES];
    for (uint32_t k = 0; k < c->nmore; k++)
        if ((inner[k] = bb_client_fd(c->more[k])) < 0)
            return inner[k];
    pthread_mutex_lock(&c->lock);
    int fd = c->event_fd;
    if (fd < 0) {
        fd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event done = {.events = EPOLLIN}, hup = {.events = EPOLLRDHUP};
        bool ok = fd >= 0 && epoll_ctl(fd, EPOLL_CTL_ADD, c->notify_fd, &done) == 0 &&
                  epoll_ctl(fd, EPOLL_CTL_ADD, c->sock, &hup) == 0;
        for (uint32_t k = 0; ok && k < c->nmore; k++) {
            struct epoll_event lane = {.events = EPOLLIN};
            ok = epoll_ctl(fd, EPOLL_CTL_ADD, inner[k], &lane) == 0;
        }
        if (!ok && fd >= 0) {
            close(fd);
            fd = -1;
        }
        c->event_fd = fd;
    }
    pthread_mutex_unlock(&c->lock);
    if (fd < 0)
        return BB_ESYS;
    atomic_store_explicit(&c->hdr->shm_notify, 1, memory_order_seq_cst);
    return fd;
}

static int poll_lane(bb_client *c, bb_request **out, int max);

int bb_client_poll(bb_client *c, bb_request **out, int max)
{
    if (!c || (!out && max > 0) || max < 0)
        return BB_EINVAL;
    if (forked(c))
        return BB_EFORKED;
    if (!c->nmore)
        return poll_lane(c, out, max);
    /* Every lane, from a different one each call so that a full `out` does
     * not always leave the same lanes for later. */
    uint32_t n = c->nmore + 1;
    uint32_t first = atomic_fetch_add_explicit(&c->poll_next, 1, memory_order_relaxed) % n;
    int got = 0;
    bool gone = false;
    for (uint32_t k = 0; k < n; k++) {
        int rc = poll_lane(lane_of(c, (first + k) % n), out ? out + got : NULL, max - got);
        if (rc == BB_EDISCONNECTED)
            gone = true;
        else
            got += rc;
    }
    return got == 0 && gone ? BB_EDISCONNECTED : got;
}

static int poll_lane(bb_client *c, bb_request **out, int max)
{
    /* Clear readiness before looking at the ring: a completion published
     * after this read rings the eventfd again. */
    uint64_t cnt;
    ssize_t rd = read(c->notify_fd, &cnt, sizeof cnt);
    (void)rd;
    pthread_mutex_lock(&c->cq_lock);
    int got = 0;
    bool more = false;
    for (;;) {
        /* Reloads the broker's tail once the entries already seen are used. */
        int64_t avail = bb__ring_available(&c->cq);
        if (avail <= 0)
            break;
        if (got == max) {
            more = true;
            break;
        }
        uint32_t used = 0;
        while (used < avail && got < max) {
            uint32_t idx = bb__ring_peek(&c->cq, used++);
            if (idx >= c->nslots)
                continue;
            bb_request *r = &c->reqs[idx];
            /* Once per completion: an entry left by an earlier submission of
             * the slot (an orphan's, say) must not report this one twice. */
            if (atomic_load_explicit(&r->kind, memory_order_acquire) != BB__REQ_LIVE)
                continue; /* acquire: then gen is this request's (set_kind) */
            uint32_t gen = gen_of(r);
            if (gen && !is_pending(r) &&
                atomic_exchange_explicit(&r->polled_gen, gen, memory_order_relaxed) != gen) {
                out[got++] = r;
            }
        }
        bb__ring_consume(&c->cq, used);
    }
    pthread_mutex_unlock(&c->cq_lock);
    if (more) {
        uint64_t one = 1; /* more to collect: stay readable */
        ssize_t wr = write(c->notify_fd, &one, sizeof one);
        (void)wr;
    }
    if (got == 0 && broker_gone(c))
        return BB_EDISCONNECTED;
    return got;
}

void bb_client_set_spin_ns(bb_client *c, int64_t spin_ns)
{
    if (!c)
        return;
    atomic_store(&c->spin_ns, spin_ns < 0 ? 0 : spin_ns);
    for (uint32_t k = 0; k < c->nmore; k++)
        bb_client_set_spin_ns(c->more[k], spin_ns);
}
