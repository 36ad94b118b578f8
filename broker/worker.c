/*
 * A dispatcher worker: one thread, one io_uring, the clients assigned to it.
 *
 * The ring is its only blocking point. Completions arrive for: the listening
 * socket (one accept at a time, see uring.c), each client's control socket (multishot poll:
 * messages and hang-ups), each client's doorbell eventfd (a read that
 * completes when the client rings; or, with the futex doorbell, one futex
 * wait for all its clients), each client's pidfd (process exit), the
 * worker's own wake eventfd (executors, signals), and the wait timeout (the
 * next batch cut or request deadline). The loop only dispatches: the work is
 * in control.c, intake.c, batcher.c, executor.c and completion.c.
 *
 * Each pass: reap io_uring completions (peek, no system call), reap batches
 * the executors finished, drain every submission ring, expire and dispatch,
 * publish completion rings. A pass that did something is followed by another;
 * after spin_us without progress the worker announces it sleeps
 * (shm_need_wake in its worker page), re-checks, and waits in io_uring_submit_and_wait_timeout.
 * While every model is busy or waiting for a batch to fill, it sleeps for a
 * short window without announcing it (coalesce_window), so that a burst of
 * arrivals costs one wake-up rather than one per request.
 */
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include "batchbroker/client.h"
#include "batcher.h"
#include "broker.h"
#include "completion.h"
#include "control.h"
#include "enqueue.h"
#include "executor.h"
#include "intake.h"
#include "mailbox.h"
#include "model.h"
#include "segment.h"
#include "session.h"
#include "topology.h"
#include "uring.h"
#include "util_internal.h"

#define RING_ENTRIES 1024
#define WAKER_ENTRIES 256 /* a full ring waits for the waker's thread */
#define HEARTBEAT_NS 100000000ull
#define IDLE_WAIT_NS 1000000000ull
#define COALESCE_MAX_NS 1000000ull
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

/* The doorbell of every client of this worker: one futex wait, always
 * pending (protocol.h says why no ring is lost). */
static void arm_bell(struct bb__worker *w)
{
    bb__uring_futex_wait(&w->ring, &w->page->shm_doorbell, 0, bb__ud_make(BB__UD_BELL, 0, 0));
}

/* ---- io_uring completions ---- */

static void on_client_cqe(struct bb__worker *w, int type, uint32_t idx, uint32_t gen,
                          const struct io_uring_cqe *cqe)
{
    struct bb__client *c = idx < w->b->cfg->max_clients ? w->clients[idx] : NULL;
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
        if (c->w != w)
            return; /* moved to the worker of its node: hands off */
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
        if (cqe->res == -EAGAIN) {
            /* The client made its doorbell non-blocking (it shares the open
             * file description), and this kernel's io_uring then fails the
             * read at once instead of waiting (6.1 does; 6.18 waits): read
             * again only once it is readable, or the loop would spin on it.
             * The poll's mask comes back here like a read's count. */
            bb__uring_poll(&w->ring, c->doorbell, POLLIN, 0, bb__ud_make(BB__UD_DOORBELL, c->idx, c->gen));
            return;
        }
        bb__session_arm(w, c, BB__UD_DOORBELL);
        return;
    case BB__UD_NOTIFY:
        c->notify_busy = false; /* done, or failed: the next flush writes again */
        return;
    case BB__UD_PIDFD:
        bb__control_pid_exited(w, c);
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
                arm_wake(w);
                break;
            case BB__UD_BELL:
                if (cqe->res < 0 && cqe->res != -EAGAIN && cqe->res != -EINTR &&
                    cqe->res != -ECANCELED)
                    bb_warn("doorbell futex wait: %s", strerror(-cqe->res));
                arm_bell(w);
                break;
            case BB__UD_SOCK:
            case BB__UD_DOORBELL:
            case BB__UD_PIDFD:
            case BB__UD_NOTIFY:
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

/* Messages from the other workers (mailbox.h), in the order they were sent. */
static int handle_mail(struct bb__worker *w, uint64_t now)
{
    const struct bb__msgbuf *mb = bb__mailbox_take(w);
    if (!mb)
        return 0;
    for (uint32_t i = 0; i < mb->n; i++) {
        const struct bb__msg *msg = &mb->v[i];
        struct bb__req *r = msg->p;
        switch (msg->kind) {
        case BB__MSG_SUBMIT:
            /* The sender stamped it in its own pass, which may have begun
             * after this one: arrival is never later than this pass's now,
             * or waits and phases (now - enq_ns, cut - submit_ns) underflow. */
            if (r->enq_ns > now)
                r->enq_ns = now;
            if (r->submit_ns > now)
                r->submit_ns = now;
            bb__enqueue(w->route[r->model], r, now);
            break;
        case BB__MSG_CANCEL:
            bb__batcher_cancel(w->route[msg->flags], r, msg->aux);
            break;
        case BB__MSG_DROP:
            bb__batcher_drop_client(w, msg->p);
            bb__completion_return(w, msg->p, 0, BB__RET_PUT); /* the DROP's reference */
            break;
        case BB__MSG_RET:
            bb__completion_returned(msg->p, msg->aux, msg->flags);
            break;
        case BB__MSG_SESSION:
            bb__session_adopt(w, msg->p);
            bb__control_hello(w, msg->p);
            break;
        }
    }
    return (int)mb->n;
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

/* Sessions whose segment the registration thread registered: their HELLO
 * is answered now (control.c). */
static int reap_registered(struct bb__worker *w)
{
    if (!atomic_load_explicit(&w->registered, memory_order_relaxed))
        return 0;
    /* Acquire pairs with the registration thread's release push. */
    struct bb__client *c = atomic_exchange_explicit(&w->registered, NULL, memory_order_acquire);
    int n = 0;
    while (c) {
        struct bb__client *next = c->reg_next;
        bb__control_registered(w, c);
        c = next;
        n++;
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
    w->wake_fd = w->page_fd = -1;
    w->spin_ns = (uint64_t)b->cfg->spin_us * 1000;
    w->profile = b->cfg->profile;
    w->profile_max_rate = b->cfg->profile_max_rate;
    uint32_t max = b->cfg->max_clients;
    w->clients = calloc(max, sizeof *w->clients);
    w->client_gen = calloc(max, sizeof *w->client_gen);
    w->db_bufs = calloc(max, sizeof *w->db_bufs);
    w->live = calloc(max, sizeof *w->live);
    w->dirty = calloc(max, sizeof *w->dirty);
    if (!w->clients || !w->client_gen || !w->db_bufs || !w->live || !w->dirty ||
        bb__mailbox_init(&w->mb, b->nworkers) < 0) {
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
    bool has_futex = bb__uring_has_futex(&w->ring);
    w->futex_ops = has_futex;
    if (b->cfg->doorbell == 1 && !has_futex) {
        bb_error("doorbell = futex, but this kernel has no io_uring futex operations (Linux "
                 "6.7+); use doorbell = eventfd or auto");
        return -1;
    }
    w->futex_bell = b->cfg->doorbell == 1 || (b->cfg->doorbell == 0 && has_futex);
    if (b->cfg->wake_offload_ms) {
        if (!has_futex) {
            bb_error("wake_offload_ms = %u, but this kernel has no io_uring futex operations "
                     "(Linux 6.7+); use wake_offload_ms = 0",
                     b->cfg->wake_offload_ms);
            return -1;
        }
        /* The polling thread takes its creator's CPUs: those of the
         * worker's node, for as long as it takes to make it. */
        struct io_uring_params p = {.flags = IORING_SETUP_SQPOLL,
                                    .sq_thread_idle = b->cfg->wake_offload_ms};
        cpu_set_t mine;
        bool pinned = sched_getaffinity(0, sizeof mine, &mine) == 0;
        if (pinned)
            bb__topo_pin(&b->topo, node);
        rc = io_uring_queue_init_params(WAKER_ENTRIES, &w->waker, &p);
        if (pinned)
            sched_setaffinity(0, sizeof mine, &mine);
        if (rc < 0) {
            bb_error("wake_offload_ms: io_uring with a polling thread (SQPOLL): %s",
                     strerror(-rc));
            return -1;
        }
        w->waker_on = true;
    }
    rc = bb__worker_page_create(id, b->topo.node_id[node],
                                w->futex_bell ? BB_WORKER_FUTEX_DOORBELL : 0, &w->page,
                                &w->page_fd);
    if (rc < 0) {
        bb_error("cannot create the worker page: %s", bb_strerror(rc));
        return -1;
    }
    bb__topo_bind(&b->topo, w->page, BB_SHM_WORKER_SIZE, node);
    return 0;
}

static bool work_pending(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    if (atomic_load_explicit(&w->done, memory_order_relaxed) ||
        atomic_load_explicit(&w->registered, memory_order_relaxed) ||
        atomic_load_explicit(&w->mb.pending, memory_order_relaxed) ||
        (atomic_load(b->stop_flag) && !w->stopping) || atomic_load(&b->quiesce) ||
        (w->id == 0 && !w->stopping && b->reload_flag && atomic_load(b->reload_flag)))
        return true;
    for (uint32_t i = 0; i < w->nlive; i++)
        if (bb__sq_ready(&w->live[i]->sq, 1))
            return true;
    return false;
}

static void set_need_wake(struct bb__worker *w, uint32_t v)
{
    atomic_store_explicit(&w->page->shm_need_wake, v, memory_order_relaxed);
}

static void heartbeat(struct bb__worker *w, uint64_t now)
{
    struct bb__broker *b = w->b;
    w->last_heartbeat_ns = now;
    if (w->accept_paused && !b->stopping && b->listen_fd >= 0) {
        w->accept_paused = false;
        arm_accept(w);
    }
    atomic_store_explicit(&w->page->shm_heartbeat_ns, now, memory_order_relaxed);
    for (uint32_t i = 0; i < w->nlive; i++)
        bb__completion_tell_drops(w->live[i]);
    bb__log_limit_flush(now);
    /* Handshakes, operators, sessions that outlived their process or
     * linger with replies unread: a look at the table ten times a second
     * (attached sessions are among them: nclients == nlive says nothing). */
    bb__control_expire(w, now);
}

/* The spin rule (bb__spin_credit) over idle episodes, timed from the last
 * progress to the next, sleep included. Two kinds of episode, counted apart:
 * a batch of this worker's models running and none of them with a request
 * queued, where the next event is most likely the batch's end (a backend
 * slower than spin_us, a GPU, is not worth a spin, and its executor wakes
 * this worker); and the rest, where it is the next submission. */
static int awaiting_batch(const struct bb__worker *w)
{
    const struct bb__broker *b = w->b;
    int running = 0;
    for (uint32_t i = 0; i < b->nmodels; i++) {
        const struct bb__model *m = w->route[i];
        if (m->w != w)
            continue;
        if (m->q.queued || m->q.grouped)
            return 0;
        running |= m->running != 0;
    }
    return running;
}

/* Whether a model of this worker fills its next batch from the returns of a
 * closed loop whose last batch ran here by the quiet rule (executor.c): the
 * dispatcher then sleeps with its doorbell instead of spinning. No arrival
 * but the last that fills the batch makes progress worth a spin, and
 * spinning through the returns (tens of microseconds on two CPUs, where
 * the clients need the CPU it takes) cost more than the doorbells they
 * ring (performance.md). */
static bool quiet_loop_filling(const struct bb__worker *w)
{
    const struct bb__broker *b = w->b;
    for (uint32_t i = 0; i < b->nmodels; i++) {
        const struct bb__model *m = w->route[i];
        if (m->w == w && m->filling && m->ran_quiet)
            return true;
    }
    return false;
}

/* How long the dispatcher may sleep without being rung, or 0: the shortest
 * window any model allows (its home publishes it each pass, batcher.c). While
 * every model either has all its executors busy (a finishing batch wakes its
 * home) with requests already waiting, or is waiting for a batch to fill, a
 * doorbell per arrival buys nothing: the arrivals are collected a little
 * later in one pass instead. */
static uint64_t coalesce_window(struct bb__worker *w)
{
    uint64_t win = COALESCE_MAX_NS;
    struct bb__broker *b = w->b;
    for (uint32_t i = 0; i < b->nmodels; i++) {
        uint64_t hint = atomic_load_explicit(&w->route[i]->coalesce_ns, memory_order_relaxed);
        if (hint < win)
            win = hint;
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

/* Other workers: park while workers[0] applies a reload (stop the world:
 * the models' configuration is read everywhere and written only then). */
static void park(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    pthread_mutex_lock(&b->qmu);
    b->parked++;
    pthread_cond_broadcast(&b->qcv);
    while (atomic_load(&b->quiesce))
        pthread_cond_wait(&b->qcv, &b->qmu);
    b->parked--;
    pthread_mutex_unlock(&b->qmu);
    w->spin_ns = (uint64_t)b->cfg->spin_us * 1000;
    w->profile = b->cfg->profile;
    w->profile_max_rate = b->cfg->profile_max_rate;
    bb__control_revoke(w); /* each worker ends its own sessions a reload disallows */
}

/* SIGHUP, on workers[0]: read the configuration again and apply the keys
 * marked reloadable (--help says which), with every other worker parked. A
 * file that no longer parses changes nothing. */
static void reload(struct bb__worker *w)
{
    static struct bb__broker_config next; /* large; only workers[0] uses it */
    struct bb__broker *b = w->b;
    char err[1024], skipped[1024], changed_keys[2048];
    if (bb__config_build(&next, b->config_path, b->overrides, b->noverrides, err, sizeof err) < 0) {
        bb_error("reload refused, configuration unchanged: %s", err);
        return;
    }
    pthread_mutex_lock(&b->qmu);
    atomic_store(&b->quiesce, true);
    for (uint32_t i = 1; i < b->nworkers; i++)
        bb__worker_wake(&b->workers[i]);
    while (b->parked < b->nworkers - 1)
        pthread_cond_wait(&b->qcv, &b->qmu);
    int changed = bb__config_reload(b->cfg, &next, changed_keys, sizeof changed_keys, skipped,
                                    sizeof skipped);
    bb__log_level = b->cfg->log_level;
    w->spin_ns = (uint64_t)b->cfg->spin_us * 1000;
    w->profile = b->cfg->profile;
    w->profile_max_rate = b->cfg->profile_max_rate;
    for (uint32_t i = 0; i < b->nmodels; i++) {
        uint32_t took = b->cfg->models[i].max_queue;
        for (struct bb__model *m = &b->models[i]; m; m = m->sibling) {
            bb__model_apply(m, &b->cfg->models[i]);
            atomic_store_explicit(&m->exec_spin_ns, w->spin_ns, memory_order_relaxed);
            if (m->cfg.max_queue < took)
                took = m->cfg.max_queue;
        }
        b->cfg->models[i].max_queue = took; /* what the queues could take, all of them */
    }
    atomic_store(&b->quiesce, false);
    pthread_cond_broadcast(&b->qcv);
    pthread_mutex_unlock(&b->qmu);
    bb__control_revoke(w); /* allowed_uids/gids are reloadable; park() does the others' */
    bb_info_limited("configuration reloaded: %s",
                    changed ? changed_keys : "no reloadable key changed");
    if (skipped[0])
        bb_warn("reload: these changes need a restart and were not applied: %s", skipped);
}

/* Stop intake; what is queued fails with BB_ESHUTDOWN, what runs finishes. */
static void begin_shutdown(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    if (w->id == 0)
        bb_info("shutting down: failing queued requests, finishing running batches");
    w->stopping = true;
    atomic_store(&b->stopping, true);
    if (w->id == 0 && b->listen_fd >= 0) {
        bb__uring_cancel(&w->ring, bb__ud_make(BB__UD_ACCEPT, 0, 0));
        close(b->listen_fd);
        b->listen_fd = -1;
        bb__sockpath_remove(b->cfg->socket_path, &b->sockfile);
    }
    atomic_store_explicit(&w->page->shm_broker_state, BB_BROKER_SHUTDOWN, memory_order_release);
    for (uint32_t i = 0; i < b->nmodels; i++)
        if (w->route[i]->w == w)
            bb__batcher_fail_all(w->route[i], BB_ESHUTDOWN);
    /* The others may be asleep: each wakes and stops its own models. */
    for (uint32_t i = 0; i < b->nworkers; i++)
        if (&b->workers[i] != w)
            bb__worker_wake(&b->workers[i]);
}

/* Nothing of this worker's is left: its models are idle, no request of its
 * sessions is out at another home, and no message waits either way. */
static bool drained(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    for (uint32_t i = 0; i < b->nmodels; i++) {
        struct bb__model *m = w->route[i];
        if (m->w == w && (m->running || m->q.queued || m->q.grouped))
            return false;
    }
    for (uint32_t i = 0; i < w->nlive; i++)
        if (w->live[i]->refs > 1)
            return false;
    return w->mb.nout_dirty == 0 && !atomic_load_explicit(&w->mb.pending, memory_order_relaxed);
}

/* wake_offload_ms: the waker's kernel thread takes the pass's wake-ups from
 * its ring by itself; a submit makes a system call only to wake it where it
 * sleeps. A failed wake-up posts a completion, dropped here.
 *
 * Nothing waits for the thread: a wake-up it makes after its client's
 * segment was unmapped (a sweep, here or on the client's own worker after
 * this one sent its reference back) finds no mapping and fails (EFAULT), or
 * wakes once whatever waits on that address now. Every futex waiter, the
 * client library's, the broker's and pthreads', re-checks its condition
 * after a wake-up, so that costs a spurious wake-up at most. The worker has
 * already made the wake-up's one store (shm_wake_seq) itself. */
static void waker_flush(struct bb__worker *w)
{
    if (io_uring_sq_ready(&w->waker))
        io_uring_submit(&w->waker);
    io_uring_cq_advance(&w->waker, io_uring_cq_ready(&w->waker));
}

int bb__worker_run(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    bb__topo_pin(&b->topo, w->node);
    if (w->futex_ops) /* submitted at the end of each pass */
        bb__wake_ring_use(w->waker_on ? &w->waker : &w->ring);
    if (w->id == 0 && b->listen_fd >= 0)
        arm_accept(w);
    arm_wake(w);
    if (w->futex_bell)
        arm_bell(w);
    uint64_t idle_since = bb__now_ns(), episode = 0;
    unsigned spins = 0;
    int kind = -1; /* of the idle episode under way: 1 awaiting a batch's end */
    uint8_t credit[2] = {BB__SPIN_TRIES, BB__SPIN_TRIES};
    for (;;) {
        if ((atomic_load(b->stop_flag) || atomic_load(&b->stopping)) && !w->stopping)
            begin_shutdown(w);
        if (w->id != 0 && atomic_load(&b->quiesce))
            park(w);
        /* Not once stopping: a drained worker may have left, and would never
         * park for the reload. */
        if (w->id == 0 && !w->stopping && b->reload_flag && atomic_exchange(b->reload_flag, 0))
            reload(w);
        w->passes++;
        int progress = reap_cqes(w);
        progress += reap_done(w);
        progress += reap_registered(w);
        progress += bb__control_backlog(w);
        /* One clock read a pass: a spinning dispatcher makes many passes,
         * and the clock was a quarter of its time (perf, echo_spin #2). */
        uint64_t now = bb__now_ns();
        progress += handle_mail(w, now);
        progress += drain_all(w, now);
        /* What was read for other workers goes before this one runs a batch
         * on its own thread: its deadline counts already. */
        bb__mailbox_flush(w, b->workers);
        uint64_t next = now + IDLE_WAIT_NS;
        for (uint32_t i = 0; i < b->nmodels; i++)
            if (w->route[i]->w == w)
                progress += bb__batcher_poll(w->route[i], now, &next);
        bb__completion_flush(w);
        /* The pass's wake-ups out before a sweep may unmap a header (those
         * of a waker are not waited for: waker_flush). */
        if (io_uring_sq_ready(&w->ring))
            io_uring_submit(&w->ring);
        if (w->waker_on)
            waker_flush(w);
        bb__mailbox_flush(w, b->workers);
        if (w->need_sweep)
            bb__session_sweep(w);
        if (io_uring_sq_ready(&w->ring))
            io_uring_submit(&w->ring);
        if (w->stopping) {
            /* Every worker stays until all have drained: until then another
             * may still send this one the completions of its sessions. */
            bool d = drained(w);
            if (d != w->drained) {
                w->drained = d;
                atomic_fetch_add(&b->drained, d ? 1u : (uint32_t)-1);
                for (uint32_t i = 0; i < b->nworkers; i++)
                    if (&b->workers[i] != w)
                        bb__worker_wake(&b->workers[i]);
            }
            if (atomic_load(&b->drained) == b->nworkers)
                break;
        }
        if (now - w->last_heartbeat_ns >= HEARTBEAT_NS)
            heartbeat(w, now);
        if (progress) {
            if (kind >= 0)
                credit[kind] = bb__spin_credit(credit[kind], now - episode, w->spin_ns);
            kind = -1;
            idle_since = now;
            continue;
        }
        if (kind < 0) {
            kind = awaiting_batch(w);
            episode = idle_since;
        }
        bool bell = w->spin_ns && quiet_loop_filling(w);
        if (!bell && credit[kind] && now - idle_since < w->spin_ns &&
            bb__spin_calm(&w->spin_guard, now)) {
            /* Yield now and then: a client sharing this core needs it to
             * make the progress we spin for. Not too often: where more
             * threads spin than there are CPUs, a spinner that yields at
             * every turn gives its share away to those that do not. */
            if ((++spins & 255) == 0)
                bb__spin_yield(w->spin_ns, &w->spin_guard, now); /* a pass without progress ago */
            else
                bb__cpu_relax();
            continue;
        }
        now = bb__now_ns();
        uint64_t window = bell ? 0 : coalesce_window(w);
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
    /* Every client is disconnected, which its library reports as
     * BB_EDISCONNECTED. (A submission that raced with the shutdown found
     * BB_ESHUTDOWN at its model's home, while every worker still ran.) */
    w->exiting = true;
    for (uint32_t i = 0; i < b->cfg->max_clients; i++)
        if (w->clients[i])
            bb__session_kill(w, w->clients[i], "broker shutdown");
    bb__completion_flush(w);
    io_uring_submit(&w->ring);
    if (w->waker_on)
        waker_flush(w);
    bb__session_sweep(w);
    io_uring_submit(&w->ring);
    bb__wake_ring_use(NULL); /* the ring goes with bb__worker_fini */
    return 0;
}

void bb__worker_fini(struct bb__worker *w)
{
    if (w->waker_on)
        io_uring_queue_exit(&w->waker);
    if (w->ring.ring_fd > 0)
        io_uring_queue_exit(&w->ring);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    if (w->page)
        munmap(w->page, BB_SHM_WORKER_SIZE);
    bb__mailbox_fini(&w->mb, w->b ? w->b->nworkers : 0);
    free(w->clients);
    free(w->client_gen);
    if (w->page_fd >= 0)
        close(w->page_fd);
    free(w->db_bufs);
    free(w->live);
    free(w->dirty);
}
