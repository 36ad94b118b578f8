/*
 * A dispatcher worker: one thread, one io_uring, the clients assigned to it.
 *
 * The ring is its only blocking point. Completions arrive for: the listening
 * socket (multishot accept), each client's control socket (multishot poll:
 * messages and hang-ups), each client's doorbell eventfd (a read that
 * completes when the client rings), each client's pidfd (process exit), the
 * worker's own wake eventfd (executors, signals), and the wait timeout (the
 * next batch cut or request deadline).
 *
 * Each pass: reap io_uring completions (peek, no system call), reap batches
 * the executors finished, drain every submission ring, expire and dispatch,
 * publish completion rings. A pass that did something is followed by another;
 * after spin_us without progress the worker announces it sleeps
 * (shm_need_wake), re-checks, and waits in io_uring_submit_and_wait_timeout.
 * While every model is busy or waiting for a batch to fill, it sleeps for a
 * short window without announcing it (coalesce_window), so that a burst of
 * arrivals costs one wake-up rather than one per request.
 */
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "broker_internal.h"
#include "util_internal.h"

#define RING_ENTRIES 1024
#define DRAIN_BUDGET 1024           /* entries per client per pass: fairness */
#define HEARTBEAT_NS 100000000ull
#define IDLE_WAIT_NS 1000000000ull
#define COALESCE_MAX_NS 1000000ull
#define HELLO_TIMEOUT_NS 5000000000ull
#define COALESCE_MIN_NS 20000ull
#define SUBMIT_CLOCK_SKEW_NS 60000000000ull

static inline uint64_t ud_make(int type, uint32_t idx, uint32_t gen)
{
    return ((uint64_t)type << 56) | ((uint64_t)gen << 24) | idx;
}

static struct io_uring_sqe *get_sqe(struct bb__worker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (!sqe) {
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    bb_assert(sqe, "the submission queue has room after a submit");
    return sqe;
}

void bb__worker_wake(struct bb__worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->wake_fd, &one, sizeof one);
    (void)n;
}

void bb__worker_arm(struct bb__worker *w, struct bb__client *c, int type)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    switch (type) {
    case BB__UD_SOCK:
        io_uring_prep_poll_multishot(sqe, c->sock, POLLIN | POLLRDHUP);
        break;
    case BB__UD_DOORBELL:
        io_uring_prep_read(sqe, c->doorbell, &w->db_bufs[c->idx], sizeof(uint64_t), 0);
        break;
    case BB__UD_PIDFD:
        io_uring_prep_poll_add(sqe, c->pidfd, POLLIN);
        break;
    }
    io_uring_sqe_set_data64(sqe, ud_make(type, c->idx, c->gen));
}

static void arm_global(struct bb__worker *w, int type)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    if (type == BB__UD_ACCEPT)
        io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    else
        io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof w->wake_buf, 0);
    io_uring_sqe_set_data64(sqe, ud_make(type, 0, 0));
}

static void cancel(struct bb__worker *w, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_cancel64(sqe, ud, 0);
    io_uring_sqe_set_data64(sqe, ud_make(BB__UD_CANCEL, 0, 0));
}

void bb__client_put(struct bb__worker *w, struct bb__client *c)
{
    bb_assert(c->refs > 0, "client references never go negative");
    if (--c->refs == 0)
        w->need_sweep = true;
}

void bb__client_live(struct bb__worker *w, struct bb__client *c)
{
    c->live_idx = w->nlive;
    w->live[w->nlive++] = c;
}

void bb__client_kill(struct bb__worker *w, struct bb__client *c, const char *why)
{
    if (c->dead)
        return;
    c->dead = true;
    if (c->live_idx < w->nlive && w->live[c->live_idx] == c) {
        struct bb__client *last = w->live[--w->nlive];
        w->live[c->live_idx] = last;
        last->live_idx = c->live_idx;
    }
    if (c->attached && c->base)
        bb_info("client %u (pid %d) gone: %s", c->id, (int)c->pid, why);
    else
        bb_debug("client %u (pid %d) dropped: %s", c->id, (int)c->pid, why);
    cancel(w, ud_make(BB__UD_SOCK, c->idx, c->gen));
    if (c->doorbell >= 0)
        cancel(w, ud_make(BB__UD_DOORBELL, c->idx, c->gen));
    if (c->pidfd >= 0)
        cancel(w, ud_make(BB__UD_PIDFD, c->idx, c->gen));
    /* io_uring holds its own file references until the cancels land. */
    int *fds[] = {&c->sock, &c->doorbell, &c->notify, &c->pidfd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    /* Its queued requests go; running ones finish and hold the segment. */
    for (uint32_t i = 0; c->reqs && i < c->nslots; i++) {
        struct bb__req *r = &c->reqs[i];
        int st = atomic_load_explicit(&r->state, memory_order_relaxed);
        if (st == BB__REQ_QUEUED || st == BB__REQ_GROUPED) {
            struct bb__model *m = &w->models[r->model];
            bb__request_unlink(w, r);
            atomic_store_explicit(&r->state, BB__REQ_IDLE, memory_order_relaxed);
            m->metrics.failed++; /* nobody is left to answer */
            c->cm[m->id].inflight--;
            m->bytes -= r->bytes;
            bb__client_put(w, c);
        }
    }
    bb__client_put(w, c);
}

static void sweep(struct bb__worker *w)
{
    w->need_sweep = false;
    for (uint32_t i = 0; i < w->max_clients; i++) {
        struct bb__client *c = w->clients[i];
        if (c && c->dead && c->refs == 0)
            bb__client_destroy(w, c);
    }
}

/* ---- Completions to clients ---- */

void bb__cq_add(struct bb__client *c, uint32_t slot)
{
    if (c->dead)
        return;
    int64_t space = bb__ring_space_for(&c->cq, c->cq_unpublished + 1);
    if (space < 0 || (uint32_t)space <= c->cq_unpublished) {
        atomic_fetch_add_explicit(&c->hdr->shm_cq_overflow, 1, memory_order_relaxed);
        return;
    }
    bb__ring_put(&c->cq, c->cq_unpublished++, slot);
    if (!c->dirty) {
        c->dirty = true;
        c->w->dirty[c->w->ndirty++] = c;
    }
}

void bb__answer(struct bb__client *c, uint32_t slot, uint32_t gen, int status, uint32_t out_len)
{
    bb__publish(c, slot, gen, status, out_len);
    if (c->dead)
        return;
    c->wake_due = true;
    if (!c->dirty) {
        c->dirty = true;
        c->w->dirty[c->w->ndirty++] = c;
    }
    bb__cq_add(c, slot);
}

/* One release store and at most one eventfd write per client per pass. */
void bb__flush_client(struct bb__client *c)
{
    c->dirty = false;
    if (c->dead)
        return;
    if (c->wake_due) {
        c->wake_due = false;
        bb__wake_client(c);
    }
    if (c->cq_unpublished == 0)
        return;
    bb__ring_publish(&c->cq, c->cq_unpublished);
    c->cq_unpublished = 0;
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&c->hdr->shm_notify, memory_order_relaxed)) {
        uint64_t one = 1;
        ssize_t n = write(c->notify, &one, sizeof one);
        (void)n;
    }
}

/* r has been unlinked from every queue (bb__request_unlink). */
void bb__complete_one(struct bb__worker *w, struct bb__req *r, int status)
{
    struct bb__client *c = r->cl;
    struct bb__model *m = &w->models[r->model];
    uint64_t now = bb__now_ns();
    atomic_store_explicit(&r->state, BB__REQ_IDLE, memory_order_relaxed);
    bb__answer(c, r->slot, r->gen, status, 0);
    bb__metrics_done(&m->metrics, now, status, r->prio, now > r->submit_ns ? now - r->submit_ns : 0);
    c->cm[m->id].inflight--;
    m->bytes -= r->bytes;
    bb__client_put(w, c);
}

/* ---- Submission rings ---- */

static int validate(struct bb__worker *w, struct bb__client *c, const struct bb_shm_slot *d,
                    struct bb__model **mp)
{
    if (d->model_id >= w->nmodels || !(c->models_open & (1ull << d->model_id)))
        return BB_ENOMODEL;
    struct bb__model *m = &w->models[d->model_id];
    *mp = m;
    if (d->priority > BB_PRIORITY_LOW || (d->flags & ~(uint32_t)BB_SUBMIT_DEDUP))
        return BB_EINVAL;
    /* Both buffers inside the heap; no overflow in off + len. */
    if (d->in_off < c->heap_lo || d->in_off > c->heap_hi || d->in_len > c->heap_hi - d->in_off ||
        d->out_off < c->heap_lo || d->out_off > c->heap_hi ||
        d->out_cap > c->heap_hi - d->out_off)
        return BB_EINVAL;
    uint64_t bytes = (uint64_t)d->in_len + d->out_cap;
    if ((m->cfg.max_request_bytes && bytes > m->cfg.max_request_bytes) ||
        (m->cfg.max_batch_bytes && bytes > m->cfg.max_batch_bytes) ||
        (m->memory_limit && bytes > m->memory_limit))
        return BB_ETOOBIG;
    if (w->stopping)
        return BB_ESHUTDOWN;
    /* Backpressure: refuse now rather than queue what cannot be served. */
    int prio = d->priority ? d->priority : (int)m->cfg.default_priority;
    int level = m->cfg.priorities ? prio - 1 : 0;
    uint32_t level_max = m->cfg.priorities ? m->cfg.max_queue_level[level] : 0;
    if (m->queued + m->grouped >= m->cfg.max_queue ||
        (level_max && m->levels[level].n >= level_max) ||
        (m->cfg.max_inflight_per_client &&
         c->cm[m->id].inflight >= m->cfg.max_inflight_per_client) ||
        (m->memory_limit && m->bytes + bytes > m->memory_limit))
        return BB_EBUSY;
    return 0;
}

static void submit(struct bb__worker *w, struct bb__client *c, uint32_t slot, uint64_t now)
{
    struct bb__req *r = &c->reqs[slot];
    /* Acquire pairs with the executor's release when it completed the slot. */
    if (atomic_load_explicit(&r->state, memory_order_acquire) != BB__REQ_IDLE) {
        bb__client_kill(w, c, "resubmitted a slot that is still pending");
        return;
    }
    /* Copy the descriptor out first: the client may rewrite it at any time,
     * so only the copy is validated and used. */
    struct bb_shm_slot d;
    memcpy(&d, &c->slots[slot], offsetof(struct bb_shm_slot, shm_done_gen));
    atomic_signal_fence(memory_order_acq_rel);
    struct bb__model *m = NULL;
    int st = validate(w, c, &d, &m);
    if (m)
        m->metrics.submitted++;
    if (st < 0) {
        bb__answer(c, slot, d.gen, st, 0);
        if (m)
            bb__metrics_done(&m->metrics, now, st, d.priority, 0);
        return;
    }
    bb__adaptive_arrival(&m->adapt, 1);
    r->gen = d.gen;
    r->model = m->id;
    r->prio = d.priority ? d.priority : (uint8_t)m->cfg.default_priority;
    r->level = m->cfg.priorities ? (uint8_t)(r->prio - 1) : 0;
    r->in = c->base + d.in_off;
    r->in_len = d.in_len;
    r->out = r->cl_out = c->base + d.out_off;
    r->out_cap = r->cl_out_cap = d.out_cap;
    r->bytes = (uint64_t)d.in_len + d.out_cap;
    /* The client's clock stamp serves latency figures only, and only if sane. */
    r->submit_ns = (d.submit_ns <= now && now - d.submit_ns < SUBMIT_CLOCK_SKEW_NS) ? d.submit_ns : now;
    r->enq_ns = now;
    uint64_t t_us = d.timeout_us ? d.timeout_us : m->cfg.default_timeout_us;
    r->deadline_ns = t_us ? now + t_us * 1000ull : UINT64_MAX;
    r->own_deadline = d.timeout_us != 0;
    r->group = NULL;
    /* Start-time fair queueing: a client's tags advance by 1/weight per
     * request, from the level's virtual time, so clients interleave. */
    struct bb__client_model *cm = &c->cm[m->id];
    uint64_t start = m->vtime[r->level] > cm->last_ftag[r->level] ? m->vtime[r->level]
                                                                   : cm->last_ftag[r->level];
    r->fstart = start;
    r->ftag = cm->last_ftag[r->level] = start + cm->ftag_inc;
    if ((m->cfg.dedup || (d.flags & BB_SUBMIT_DEDUP)) &&
        r->bytes <= m->cfg.dedup_max_request_bytes) {
        int rc = bb__dedup_submit(w, m, r, now);
        if (rc == 2)
            return; /* answered from the cache */
        if (rc < 0) {
            bb__answer(c, slot, d.gen, rc, 0);
            bb__metrics_done(&m->metrics, now, rc, r->prio, 0);
            return;
        }
        if (rc == 1) { /* rides on an identical request */
            c->refs++;
            cm->inflight++;
            m->bytes += r->bytes;
            return;
        }
    }
    atomic_store_explicit(&r->state, BB__REQ_QUEUED, memory_order_relaxed);
    c->refs++;
    cm->inflight++;
    m->bytes += r->bytes;
    bb__queue_push(m, r);
    bb__deadline_push(m, r);
}

static void cancel_req(struct bb__worker *w, struct bb__client *c, uint32_t slot)
{
    struct bb__req *r = &c->reqs[slot];
    int st = atomic_load_explicit(&r->state, memory_order_relaxed);
    if (st != BB__REQ_QUEUED && st != BB__REQ_GROUPED)
        return; /* running (finishes normally) or already complete */
    bb__request_unlink(w, r);
    bb__complete_one(w, r, BB_ECANCELED);
}

static int drain(struct bb__worker *w, struct bb__client *c, uint64_t now)
{
    int64_t avail = bb__ring_available(&c->sq);
    if (avail <= 0) {
        if (avail < 0)
            bb__client_kill(w, c, "corrupt submission ring tail");
        return 0;
    }
    uint32_t n = avail > DRAIN_BUDGET ? DRAIN_BUDGET : (uint32_t)avail;
    /* The descriptors were just written on the client's core: start all the
     * cache-line transfers at once instead of one miss per request. */
    for (uint32_t i = 0; i < n && i < 32; i++) {
        uint32_t slot = bb__ring_peek(&c->sq, i) & BB_SQE_SLOT_MASK;
        if (slot < c->nslots)
            __builtin_prefetch(&c->slots[slot]);
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t e = bb__ring_peek(&c->sq, i);
        uint32_t slot = e & BB_SQE_SLOT_MASK;
        if (slot >= c->nslots) {
            bb__client_kill(w, c, "submission ring entry out of range");
            return (int)i;
        }
        if (e & BB_SQE_CANCEL)
            cancel_req(w, c, slot);
        else
            submit(w, c, slot, now);
        if (c->dead)
            return (int)i;
    }
    bb__ring_consume(&c->sq, n);
    return (int)n;
}

/* ---- io_uring completions ---- */

static void on_client_cqe(struct bb__worker *w, int type, uint32_t idx, uint32_t gen,
                          const struct io_uring_cqe *cqe)
{
    struct bb__client *c = idx < w->max_clients ? w->clients[idx] : NULL;
    if (!c || c->gen != gen || c->dead)
        return; /* completion of a client already gone */
    bool more = cqe->flags & IORING_CQE_F_MORE;
    switch (type) {
    case BB__UD_SOCK:
        if (cqe->res < 0) {
            bb__client_kill(w, c, "control socket error");
            return;
        }
        if (cqe->res & POLLIN)
            bb__control_readable(w, c);
        if (!c->dead && (cqe->res & (POLLHUP | POLLRDHUP | POLLERR)))
            bb__client_kill(w, c, "hung up");
        if (!c->dead && !more)
            bb__worker_arm(w, c, BB__UD_SOCK);
        return;
    case BB__UD_DOORBELL:
        /* The rings are drained every pass anyway; just re-arm. */
        if (cqe->res < 0 && cqe->res != -EINTR && cqe->res != -EAGAIN) {
            bb__client_kill(w, c, "doorbell error");
            return;
        }
        bb__worker_arm(w, c, BB__UD_DOORBELL);
        return;
    case BB__UD_PIDFD:
        bb__client_kill(w, c, "process exited");
        return;
    }
}

static int reap_cqes(struct bb__worker *w)
{
    struct io_uring_cqe *cqes[64];
    int total = 0;
    for (;;) {
        unsigned n = io_uring_peek_batch_cqe(&w->ring, cqes, 64);
        if (n == 0)
            return total;
        for (unsigned i = 0; i < n; i++) {
            struct io_uring_cqe *cqe = cqes[i];
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int type = (int)(ud >> 56);
            uint32_t gen = (uint32_t)(ud >> 24);
            uint32_t idx = (uint32_t)(ud & 0xffffff);
            switch (type) {
            case BB__UD_ACCEPT:
                if (cqe->res >= 0) {
                    bb__control_accept(w, cqe->res);
                } else if (cqe->res != -ECANCELED && !w->accept_paused) {
                    /* Out of descriptors, say: retry at the next heartbeat
                     * rather than spin on the failing accept. */
                    bb_warn("accept: %s; retrying in 100 ms", strerror(-cqe->res));
                    w->accept_paused = true;
                }
                if (!(cqe->flags & IORING_CQE_F_MORE) && !w->stopping && w->listen_fd >= 0 &&
                    !w->accept_paused)
                    arm_global(w, BB__UD_ACCEPT);
                break;
            case BB__UD_WAKE:
                if (!w->stopping || w->wake_fd >= 0)
                    arm_global(w, BB__UD_WAKE);
                break;
            case BB__UD_SOCK:
            case BB__UD_DOORBELL:
            case BB__UD_PIDFD:
                on_client_cqe(w, type, idx, gen, cqe);
                break;
            default:
                break;
            }
        }
        io_uring_cq_advance(&w->ring, n);
        total += (int)n;
    }
}

static int reap_done(struct bb__worker *w)
{
    if (!atomic_load_explicit(&w->done, memory_order_relaxed))
        return 0;
    /* Acquire pairs with the executor's release push. */
    struct bb__batch *b = atomic_exchange_explicit(&w->done, NULL, memory_order_acquire);
    int n = 0;
    while (b) {
        struct bb__batch *next = b->next;
        n += (int)b->n;
        bb__batch_reap(w, b);
        b = next;
    }
    return n;
}

/* ---- Lifecycle ---- */

int bb__worker_init(struct bb__worker *w, struct bb__broker_config *cfg, int node,
                    volatile sig_atomic_t *stop_flag, bool listen)
{
    memset(w, 0, sizeof *w);
    w->cfg = cfg;
    w->node = node;
    w->stop_flag = stop_flag;
    w->listen_fd = w->wake_fd = -1;
    w->spin_ns = (uint64_t)cfg->spin_us * 1000;
    w->max_clients = cfg->max_clients;
    w->clients = calloc(w->max_clients, sizeof *w->clients);
    w->client_gen = calloc(w->max_clients, sizeof *w->client_gen);
    w->db_bufs = calloc(w->max_clients, sizeof *w->db_bufs);
    w->live = calloc(w->max_clients, sizeof *w->live);
    w->dirty = calloc(w->max_clients, sizeof *w->dirty);
    w->models = calloc(cfg->nmodels ? cfg->nmodels : 1, sizeof *w->models);
    if (!w->clients || !w->client_gen || !w->db_bufs || !w->live || !w->dirty || !w->models) {
        bb_error("out of memory");
        return -1;
    }
    int rc = io_uring_queue_init(RING_ENTRIES, &w->ring, 0);
    if (rc < 0) {
        bb_error("io_uring_queue_init: %s", strerror(-rc));
        return -1;
    }
    if (!(w->ring.features & IORING_FEAT_EXT_ARG))
        bb_warn("kernel lacks IORING_FEAT_EXT_ARG: timed waits cost an extra SQE");
    w->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (w->wake_fd < 0) {
        bb_error("eventfd: %s", strerror(errno));
        return -1;
    }
    /* Pin before the executors start: they inherit the node's CPUs (and
     * libnuma's lazily built tables are not safe to build from many threads). */
    if (numa_available() >= 0 && node >= 0 && numa_run_on_node(node) < 0)
        bb_warn("cannot pin the dispatcher to NUMA node %d", node);
    for (size_t i = 0; i < cfg->nmodels; i++) {
        struct bb__model *m = &w->models[i];
        m->id = (uint32_t)i;
        m->cfg = cfg->models[i];
        char err[512];
        if (bb__model_start(w, m, err, sizeof err) < 0) {
            bb_error("%s", err);
            w->nmodels = (uint32_t)i + 1;
            return -2; /* a model the configuration describes cannot start */
        }
        w->nmodels = (uint32_t)i + 1;
        bb_info("model %s: backend %s, max_batch_size %u, max_wait_us %u, instances %u",
                m->cfg.name, m->plugin.ops->name, m->cfg.max_batch_size, m->cfg.max_wait_us,
                m->cfg.instances);
    }
    if (!listen)
        return 0;
    w->listen_fd = bb__control_listen(cfg->socket_path);
    if (w->listen_fd < 0)
        return -1;
    return 0;
}

static bool work_pending(struct bb__worker *w)
{
    if (atomic_load_explicit(&w->done, memory_order_relaxed) || (*w->stop_flag && !w->stopping) ||
        (w->reload_flag && *w->reload_flag))
        return true;
    for (uint32_t i = 0; i < w->nlive; i++)
        if (bb__ring_available(&w->live[i]->sq) != 0)
            return true;
    return false;
}

static void set_need_wake(struct bb__worker *w, uint32_t v)
{
    for (uint32_t i = 0; i < w->nlive; i++)
        atomic_store_explicit(&w->live[i]->hdr->shm_need_wake, v, memory_order_relaxed);
}

static void heartbeat(struct bb__worker *w, uint64_t now)
{
    w->last_heartbeat_ns = now;
    if (w->accept_paused && !w->stopping && w->listen_fd >= 0) {
        w->accept_paused = false;
        arm_global(w, BB__UD_ACCEPT);
    }
    for (uint32_t i = 0; i < w->nlive; i++)
        atomic_store_explicit(&w->live[i]->hdr->shm_heartbeat_ns, now, memory_order_relaxed);
    /* A connection that never says HELLO must not hold a max_clients place. */
    if (w->nclients == w->nlive)
        return;
    for (uint32_t i = 0; i < w->max_clients; i++) {
        struct bb__client *c = w->clients[i];
        if (c && !c->attached && !c->dead && now - c->accepted_ns > HELLO_TIMEOUT_NS)
            bb__client_kill(w, c, "no HELLO within 5 s");
    }
}

/* How long the dispatcher may sleep without being rung, or 0. While every
 * model either has all its executors busy (a finishing batch wakes us) with
 * requests already waiting, or is waiting for a batch to fill, a doorbell per
 * arrival buys nothing: the arrivals are collected a little later in one pass
 * instead. The window is an eighth of the fill wait and at most
 * COALESCE_MAX_NS, so a new deadline is still seen within a millisecond. A
 * busy model with an empty queue keeps the doorbell: in a closed loop nobody
 * rings while its batch runs, and the first arrival of an open loop does. */
static uint64_t coalesce_window(struct bb__worker *w)
{
    uint64_t win = COALESCE_MAX_NS;
    for (uint32_t i = 0; i < w->nmodels; i++) {
        struct bb__model *m = &w->models[i];
        if (m->ninstances && m->running >= m->ninstances) {
            if (m->queued == 0 && m->grouped == 0)
                return 0;
            continue;
        }
        if (!m->filling)
            return 0;
        uint64_t eighth = (uint64_t)m->fill_wait_us * 1000 / 8;
        if (eighth < win)
            win = eighth;
    }
    return win >= COALESCE_MIN_NS ? win : 0;
}

static int drain_all(struct bb__worker *w, uint64_t now)
{
    int progress = 0;
    for (uint32_t i = 0; i < w->nlive;) {
        struct bb__client *c = w->live[i];
        progress += drain(w, c, now);
        if (i < w->nlive && w->live[i] == c)
            i++; /* else c died and the last client moved into place i */
    }
    return progress;
}

static void flush_dirty(struct bb__worker *w)
{
    for (uint32_t i = 0; i < w->ndirty; i++)
        bb__flush_client(w->dirty[i]);
    w->ndirty = 0;
}

/* SIGHUP: read the configuration again and apply the keys marked reloadable
 * (--help says which). A file that no longer parses changes nothing. */
static void reload(struct bb__worker *w)
{
    static struct bb__broker_config next; /* large; only the dispatcher uses it */
    char err[1024], skipped[1024], changed_keys[2048];
    if (bb__config_build(&next, w->config_path, w->overrides, w->noverrides, err, sizeof err) < 0) {
        bb_error("reload refused, configuration unchanged: %s", err);
        return;
    }
    int changed = bb__config_reload(w->cfg, &next, changed_keys, sizeof changed_keys, skipped,
                                    sizeof skipped);
    bb__log_level = w->cfg->log_level;
    w->spin_ns = (uint64_t)w->cfg->spin_us * 1000;
    for (uint32_t i = 0; i < w->nmodels; i++) {
        struct bb__model *m = &w->models[i];
        m->cfg = w->cfg->models[i];
        m->memory_limit = (uint64_t)m->cfg.memory_limit_mb << 20;
        bool grown = bb__heap_reserve(&m->deadlines, m->cfg.max_queue) == 0;
        uint32_t cap = m->deadlines.cap;
        for (int l = 0; l < 4; l++) {
            grown = bb__heap_reserve(&m->levels[l], m->cfg.max_queue) == 0 && grown;
            if (m->levels[l].cap < cap)
                cap = m->levels[l].cap;
        }
        if (!grown) {
            bb_error("model %s: out of memory growing the queues; max_queue stays %u",
                     m->cfg.name, cap);
            m->cfg.max_queue = w->cfg->models[i].max_queue = cap;
        }
        struct bb__adaptive_cfg *a = &m->adapt.cfg;
        a->max_wait_us = m->cfg.max_wait_us;
        a->optimize = m->cfg.optimize;
        a->slo_us = m->cfg.latency_slo_us;
        a->interval_ns = (uint64_t)m->cfg.adaptation_interval_ms * 1000000ull;
    }
    bb_info("configuration reloaded: %s", changed ? changed_keys : "no reloadable key changed");
    if (skipped[0])
        bb_warn("reload: these changes need a restart and were not applied: %s", skipped);
}

/* Stop intake; what is queued fails with BB_ESHUTDOWN, what runs finishes. */
static void begin_shutdown(struct bb__worker *w)
{
    bb_info("shutting down: failing queued requests, finishing running batches");
    w->stopping = true;
    if (w->listen_fd >= 0) {
        cancel(w, ud_make(BB__UD_ACCEPT, 0, 0));
        close(w->listen_fd);
        w->listen_fd = -1;
        unlink(w->cfg->socket_path);
    }
    for (uint32_t i = 0; i < w->nlive; i++)
        atomic_store_explicit(&w->live[i]->hdr->shm_broker_state, BB_BROKER_SHUTDOWN,
                              memory_order_release);
    for (uint32_t i = 0; i < w->nmodels; i++) {
        struct bb__model *m = &w->models[i];
        struct bb__req *r;
        for (int l = 0; l < 4; l++)
            while ((r = bb__queue_top(m, l))) {
                bb__request_unlink(w, r);
                bb__complete_one(w, r, BB_ESHUTDOWN);
            }
        while ((r = bb__deadline_top(m))) { /* dedup members left without a representative */
            bb__request_unlink(w, r);
            bb__complete_one(w, r, BB_ESHUTDOWN);
        }
    }
}

static bool all_idle(struct bb__worker *w)
{
    for (uint32_t i = 0; i < w->nmodels; i++)
        if (w->models[i].running || w->models[i].queued || w->models[i].grouped)
            return false;
    return true;
}

int bb__worker_run(struct bb__worker *w)
{
    arm_global(w, BB__UD_ACCEPT);
    arm_global(w, BB__UD_WAKE);
    uint64_t idle_since = bb__now_ns();
    unsigned spins = 0;
    for (;;) {
        if (*w->stop_flag && !w->stopping)
            begin_shutdown(w);
        if (w->reload_flag && *w->reload_flag) {
            *w->reload_flag = 0;
            reload(w);
        }
        int progress = reap_cqes(w);
        progress += reap_done(w);
        /* One clock read a pass: a spinning dispatcher makes many passes,
         * and the clock was a quarter of its time (perf, echo_spin #2). */
        uint64_t now = bb__now_ns();
        progress += drain_all(w, now);
        uint64_t next = now + IDLE_WAIT_NS;
        for (uint32_t i = 0; i < w->nmodels; i++)
            progress += bb__batcher_poll(w, &w->models[i], now, &next);
        flush_dirty(w);
        if (w->need_sweep)
            sweep(w);
        if (io_uring_sq_ready(&w->ring))
            io_uring_submit(&w->ring);
        if (w->stopping && all_idle(w))
            break;
        if (now - w->last_heartbeat_ns >= HEARTBEAT_NS)
            heartbeat(w, now);
        if (progress) {
            idle_since = now;
            continue;
        }
        if (now - idle_since < w->spin_ns) {
            /* Yield now and then: a client sharing this core needs it to
             * make the progress we spin for. */
            if ((++spins & 31) == 0)
                sched_yield();
            else
                bb__cpu_relax();
            continue;
        }
        now = bb__now_ns();
        uint64_t window = coalesce_window(w);
        if (!window)
            set_need_wake(w, 1);
        atomic_store_explicit(&w->sleeping, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        if (!work_pending(w)) {
            if (window && now + window < next)
                next = now + window;
            uint64_t wait = next > now ? next - now : 0;
            struct __kernel_timespec ts = {.tv_sec = (long long)(wait / 1000000000ull),
                                           .tv_nsec = (long long)(wait % 1000000000ull)};
            struct io_uring_cqe *cqe;
            int rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
            if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
                bb_warn("io_uring wait: %s", strerror(-rc));
        }
        atomic_store_explicit(&w->sleeping, 0, memory_order_relaxed);
        if (!window)
            set_need_wake(w, 0);
        idle_since = bb__now_ns();
    }
    /* Submissions that raced with the shutdown get BB_ESHUTDOWN; then every
     * client is disconnected, which its library reports as BB_EDISCONNECTED. */
    drain_all(w, bb__now_ns());
    flush_dirty(w);
    for (uint32_t i = 0; i < w->max_clients; i++)
        if (w->clients[i])
            bb__client_kill(w, w->clients[i], "broker shutdown");
    sweep(w);
    io_uring_submit(&w->ring);
    return 0;
}

void bb__worker_fini(struct bb__worker *w)
{
    for (uint32_t i = 0; w->clients && i < w->max_clients; i++)
        if (w->clients[i]) {
            bb__client_kill(w, w->clients[i], "broker exit");
            w->clients[i]->refs = 0;
            bb__client_destroy(w, w->clients[i]);
        }
    for (uint32_t i = 0; i < w->nmodels; i++)
        bb__model_stop(&w->models[i]);
    if (w->ring.ring_fd > 0)
        io_uring_queue_exit(&w->ring);
    if (w->listen_fd >= 0) {
        close(w->listen_fd);
        unlink(w->cfg->socket_path);
    }
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    free(w->clients);
    free(w->client_gen);
    free(w->db_bufs);
    free(w->live);
    free(w->dirty);
    free(w->models);
}
