/*
 * A dispatcher worker: one thread, one io_uring, the clients assigned to it.
 *
 * The ring is its only blocking point. Completions arrive for: the listening
 * socket (multishot accept), each client's control socket (multishot poll:
 * messages and hang-ups), each client's doorbell eventfd (a read that
 * completes when the client rings), each client's pidfd (process exit), the
 * worker's own wake eventfd (executors, signals), and the wait timeout (the
 * next batch cut or request deadline). The loop only dispatches: the work is
 * in control.c, intake.c, batcher.c, executor.c and completion.c.
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
#include "worker.h"

#include <errno.h>
#include <numa.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "batchbroker/client.h"
#include "batcher.h"
#include "broker.h"
#include "completion.h"
#include "control.h"
#include "executor.h"
#include "intake.h"
#include "model.h"
#include "session.h"
#include "uring.h"
#include "util_internal.h"

#define RING_ENTRIES 1024
#define HEARTBEAT_NS 100000000ull
#define IDLE_WAIT_NS 1000000000ull
#define COALESCE_MAX_NS 1000000ull
#define HELLO_TIMEOUT_NS 5000000000ull
#define COALESCE_MIN_NS 20000ull

static void arm_accept(struct bb__worker *w)
{
    bb__uring_accept(&w->ring, w->b->listen_fd, bb__ud_make(BB__UD_ACCEPT, 0, 0));
}

static void arm_wake(struct bb__worker *w)
{
    bb__uring_read(&w->ring, w->wake_fd, &w->wake_buf, sizeof w->wake_buf,
                   bb__ud_make(BB__UD_WAKE, 0, 0));
}

/* ---- io_uring completions ---- */

static void on_client_cqe(struct bb__worker *w, int type, uint32_t idx, uint32_t gen,
                          const struct io_uring_cqe *cqe)
{
    struct bb__broker *b = w->b;
    struct bb__client *c = idx < b->max_clients ? b->clients[idx] : NULL;
    if (!c || c->gen != gen || c->dead)
        return; /* completion of a client already gone */
    bool more = cqe->flags & IORING_CQE_F_MORE;
    switch (type) {
    case BB__UD_SOCK:
        if (cqe->res < 0) {
            bb__session_kill(w, c, "control socket error");
            return;
        }
        if (cqe->res & POLLIN)
            bb__control_readable(w, c);
        if (!c->dead && (cqe->res & (POLLHUP | POLLRDHUP | POLLERR)))
            bb__session_kill(w, c, "hung up");
        if (!c->dead && !more)
            bb__session_arm(w, c, BB__UD_SOCK);
        return;
    case BB__UD_DOORBELL:
        /* The rings are drained every pass anyway; just re-arm. */
        if (cqe->res < 0 && cqe->res != -EINTR && cqe->res != -EAGAIN) {
            bb__session_kill(w, c, "doorbell error");
            return;
        }
        bb__session_arm(w, c, BB__UD_DOORBELL);
        return;
    case BB__UD_PIDFD:
        bb__session_kill(w, c, "process exited");
        return;
    }
}

static void on_accept(struct bb__worker *w, const struct io_uring_cqe *cqe)
{
    struct bb__broker *b = w->b;
    if (cqe->res >= 0) {
        bb__control_accept(w, cqe->res);
    } else if (cqe->res != -ECANCELED && !w->accept_paused) {
        /* Out of descriptors, say: retry at the next heartbeat rather than
         * spin on the failing accept. */
        bb_warn("accept: %s; retrying in 100 ms", strerror(-cqe->res));
        w->accept_paused = true;
    }
    if (!(cqe->flags & IORING_CQE_F_MORE) && !b->stopping && b->listen_fd >= 0 &&
        !w->accept_paused)
        arm_accept(w);
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
            int type = bb__ud_type(ud);
            switch (type) {
            case BB__UD_ACCEPT:
                on_accept(w, cqe);
                break;
            case BB__UD_WAKE:
                if (!w->b->stopping || w->wake_fd >= 0)
                    arm_wake(w);
                break;
            case BB__UD_SOCK:
            case BB__UD_DOORBELL:
            case BB__UD_PIDFD:
                on_client_cqe(w, type, bb__ud_idx(ud), bb__ud_gen(ud), cqe);
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
        bb__batch_reap(b);
        b = next;
    }
    return n;
}

/* ---- Lifecycle ---- */

int bb__worker_init(struct bb__worker *w, struct bb__broker *b, uint32_t id, int node)
{
    memset(w, 0, sizeof *w);
    w->b = b;
    w->id = id;
    w->node = node;
    w->wake_fd = -1;
    w->spin_ns = (uint64_t)b->cfg->spin_us * 1000;
    w->profile = b->cfg->profile;
    w->profile_max_rate = b->cfg->profile_max_rate;
    w->db_bufs = calloc(b->max_clients, sizeof *w->db_bufs);
    w->live = calloc(b->max_clients, sizeof *w->live);
    w->dirty = calloc(b->max_clients, sizeof *w->dirty);
    if (!w->db_bufs || !w->live || !w->dirty) {
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
    return 0;
}

static bool work_pending(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    if (atomic_load_explicit(&w->done, memory_order_relaxed) || (*b->stop_flag && !b->stopping) ||
        (b->reload_flag && *b->reload_flag))
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
    struct bb__broker *b = w->b;
    w->last_heartbeat_ns = now;
    if (w->accept_paused && !b->stopping && b->listen_fd >= 0) {
        w->accept_paused = false;
        arm_accept(w);
    }
    for (uint32_t i = 0; i < w->nlive; i++)
        atomic_store_explicit(&w->live[i]->hdr->shm_heartbeat_ns, now, memory_order_relaxed);
    /* A connection that never says HELLO must not hold a max_clients place. */
    if (b->nclients == w->nlive)
        return;
    for (uint32_t i = 0; i < b->max_clients; i++) {
        struct bb__client *c = b->clients[i];
        if (c && c->w == w && !c->attached && !c->dead && now - c->accepted_ns > HELLO_TIMEOUT_NS)
            bb__session_kill(w, c, "no HELLO within 5 s");
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
    struct bb__broker *b = w->b;
    for (uint32_t i = 0; i < b->nmodels; i++) {
        struct bb__model *m = &b->models[i];
        if (m->ninstances && m->running >= m->ninstances) {
            if (m->q.queued == 0 && m->q.grouped == 0)
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
        progress += bb__intake_drain(w, c, now);
        if (i < w->nlive && w->live[i] == c)
            i++; /* else c died and the last client moved into place i */
    }
    return progress;
}

/* SIGHUP: read the configuration again and apply the keys marked reloadable
 * (--help says which). A file that no longer parses changes nothing. */
static void reload(struct bb__worker *w)
{
    static struct bb__broker_config next; /* large; only the dispatcher uses it */
    struct bb__broker *b = w->b;
    char err[1024], skipped[1024];
    if (bb__config_build(&next, b->config_path, b->overrides, b->noverrides, err, sizeof err) < 0) {
        bb_error("reload refused, configuration unchanged: %s", err);
        return;
    }
    int changed = bb__config_reload(b->cfg, &next, skipped, sizeof skipped);
    bb__log_level = b->cfg->log_level;
    w->spin_ns = (uint64_t)b->cfg->spin_us * 1000;
    w->profile = b->cfg->profile;
    w->profile_max_rate = b->cfg->profile_max_rate;
    for (uint32_t i = 0; i < b->nmodels; i++) {
        struct bb__model *m = &b->models[i];
        bb__model_apply(m, &b->cfg->models[i]);
        b->cfg->models[i].max_queue = m->cfg.max_queue; /* what the queues could take */
    }
    bb_info("configuration reloaded: %d key(s) changed", changed);
    if (skipped[0])
        bb_warn("reload: these changes need a restart and were not applied: %s", skipped);
}

/* Stop intake; what is queued fails with BB_ESHUTDOWN, what runs finishes. */
static void begin_shutdown(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    bb_info("shutting down: failing queued requests, finishing running batches");
    b->stopping = true;
    if (b->listen_fd >= 0) {
        bb__uring_cancel(&w->ring, bb__ud_make(BB__UD_ACCEPT, 0, 0));
        close(b->listen_fd);
        b->listen_fd = -1;
        unlink(b->cfg->socket_path);
    }
    for (uint32_t i = 0; i < w->nlive; i++)
        atomic_store_explicit(&w->live[i]->hdr->shm_broker_state, BB_BROKER_SHUTDOWN,
                              memory_order_release);
    for (uint32_t i = 0; i < b->nmodels; i++)
        bb__batcher_fail_all(&b->models[i], BB_ESHUTDOWN);
}

static bool all_idle(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    for (uint32_t i = 0; i < b->nmodels; i++)
        if (b->models[i].running || b->models[i].q.queued || b->models[i].q.grouped)
            return false;
    return true;
}

int bb__worker_run(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    if (b->listen_fd >= 0)
        arm_accept(w);
    arm_wake(w);
    uint64_t idle_since = bb__now_ns();
    unsigned spins = 0;
    for (;;) {
        if (*b->stop_flag && !b->stopping)
            begin_shutdown(w);
        if (b->reload_flag && *b->reload_flag) {
            *b->reload_flag = 0;
            reload(w);
        }
        int progress = reap_cqes(w);
        progress += reap_done(w);
        /* One clock read a pass: a spinning dispatcher makes many passes,
         * and the clock was a quarter of its time (perf, echo_spin #2). */
        uint64_t now = bb__now_ns();
        progress += drain_all(w, now);
        uint64_t next = now + IDLE_WAIT_NS;
        for (uint32_t i = 0; i < b->nmodels; i++)
            progress += bb__batcher_poll(&b->models[i], now, &next);
        bb__completion_flush(w);
        if (w->need_sweep)
            bb__session_sweep(w);
        if (io_uring_sq_ready(&w->ring))
            io_uring_submit(&w->ring);
        if (b->stopping && all_idle(w))
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
    bb__completion_flush(w);
    for (uint32_t i = 0; i < b->max_clients; i++)
        if (b->clients[i] && b->clients[i]->w == w)
            bb__session_kill(w, b->clients[i], "broker shutdown");
    bb__session_sweep(w);
    io_uring_submit(&w->ring);
    return 0;
}

void bb__worker_fini(struct bb__worker *w)
{
    if (w->ring.ring_fd > 0)
        io_uring_queue_exit(&w->ring);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    free(w->db_bufs);
    free(w->live);
    free(w->dirty);
}
