/* Executors: each model's backend runs on its own threads (`instances`), so
 * the dispatcher keeps draining rings and forming the next batch while a
 * batch runs. With instances = 0 the dispatcher runs the backend itself,
 * which saves a thread hand-off for backends that take microseconds.
 *
 * The executor publishes each request's completion to the client itself
 * (lowest latency), then hands the batch back to the model's home worker
 * through a lock-free stack for bookkeeping: statistics, completion-ring
 * entries and the release of client references.
 *
 * An asynchronous backend (ABI 2 submit) takes a batch and completes it
 * later from a thread of its own (a GPU stream's callback, say) through
 * bb_batch.complete: that thread publishes and hands the batch back, as an
 * executor does after process(). An executor keeps up to max_inflight
 * batches in flight on its instance and waits for a free one before it
 * takes the next; with instances = 0 the dispatcher submits. */
#include "executor.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "batchbroker/client.h"
#include "broker.h"
#include "completion.h"
#include "dedup.h"
#include "mailbox.h"
#include "model.h"
#include "session.h"
#include "topology.h"
#include "util_internal.h"
#include "worker.h"

#define WAKE_NOW_NS 20000u
/* The quiet rule (where_to_run): batches in a row with nothing arriving. */
#define QUIET_BATCHES 8

/* The batch as the backend sees it. */
static void prepare(struct bb__model *m, struct bb__instance *in, struct bb__batch *b)
{
    b->inst = in;
    b->api = (struct bb_batch){.n = b->n,
                               .numa_node = m->w->b->topo.node_id[m->w->node],
                               .inputs = b->inputs,
                               .outputs = b->outputs,
                               .priorities = b->prios,
                               .errmsg = b->errmsg,
                               .errmsg_cap = sizeof b->errmsg,
                               .segments = b->segs};
}

/* The per-request codes backend.h lets a backend give: what it can know of
 * a request. The others are the broker's or the client's own (BB_EPENDING
 * would read as "not answered yet", BB_EDISCONNECTED as "the broker is
 * gone"), and a code outside the list means nothing to a client. */
static bool backend_may_give(int st)
{
    return st == BB_EINVAL || st == BB_ENOMEM || st == BB_ETOOBIG || st == BB_EBACKEND;
}

/* A row's status as its client gets it: 0 with a length within the buffer
 * it was given (cap: the broker's copy, as the backend may write the row's),
 * or a code the backend may give; anything else fails the row with
 * BB_EBACKEND, and the batch keeps the first such row for the reap's log. */
static int row_status(struct bb__batch *b, const struct bb_outbuf *o, uint32_t cap)
{
    if (o->status == 0 ? o->len <= cap : backend_may_give(o->status))
        return o->status;
    if (b->nbreach++ == 0) {
        b->breach_status = o->status;
        b->breach_len = o->len;
        b->breach_cap = cap;
    }
    return BB_EBACKEND;
}

/* Every request's completion to its client, and one wake-up per client:
 * on the executor, or on an asynchronous backend's thread. Reads only the
 * batch; of a request record it writes only the state that frees it (the
 * slot may be resubmitted at once). */
static void publish(struct bb__batch *b, int rc)
{
    b->rc = rc;
    b->errmsg[sizeof b->errmsg - 1] = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        struct bb_outbuf *o = &b->outputs[i];
        struct bb__entry *e = &b->ents[i];
        int st = rc < 0 ? BB_EBACKEND : row_status(b, o, e->out_cap);
        o->status = st;
        size_t len = st == 0 ? o->len : 0;
        if (e->group)
            continue; /* shared result: the dispatcher answers every member */
        /* Result, then idle, then done: the slot is resubmittable the moment
         * the client sees shm_done_gen, so the dispatcher must already find
         * it idle (this release pairs with its acquire when it validates the
         * next submission), and nothing of this completion may be written
         * after that. */
        struct bb_shm_slot *s = &e->cl->slots[e->slot];
        s->status = st;
        s->out_len = (uint32_t)len;
        atomic_store_explicit(&e->req->state, BB__REQ_IDLE, memory_order_release);
        atomic_store_explicit(&s->shm_done_gen, e->gen, memory_order_release);
    }
    /* One wake-up per client of the batch, not one per request. A client's
     * requests mostly sit together (a fair-queueing round), so the list is
     * searched only where the client changes. One fence orders every
     * publish above before every client's sleeper check (protocol.h). */
    atomic_thread_fence(memory_order_seq_cst);
    struct bb__client *woken[64], *last = NULL;
    uint32_t nwoken = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        struct bb__client *cl = b->ents[i].cl;
        if (b->ents[i].group || cl == last)
            continue;
        last = cl;
        uint32_t k = 0;
        while (k < nwoken && woken[k] != cl)
            k++;
        if (k < nwoken)
            continue;
        if (nwoken < 64)
            woken[nwoken++] = cl;
        bb__wake_client_fenced(cl);
    }
    /* On a dispatcher the wake-ups wait for the end of its pass, where they
     * go out together; after a slow batch, not behind whatever the pass
     * does next (the next batch of an instances = 0 model, say). */
    if (b->ts.end - b->ts.start > WAKE_NOW_NS)
        bb__wake_ring_flush();
    b->ts.done = b->profile ? bb__now_ns() : b->ts.end;
}

/* process(), timed; the caller publishes. */
static int run(struct bb__model *m, struct bb__instance *in, struct bb__batch *b, bool clock_start)
{
    prepare(m, in, b);
    bool lock = m->lock_process && m->ninstances; /* instances = 0: the batcher holds it */
    if (lock)
        pthread_mutex_lock(&in->mu);
    b->ts.start = b->profile || clock_start ? bb__now_ns() : b->ts.cut;
    int rc = m->plugin.ops->process(in->state, &b->api);
    b->ts.end = bb__now_ns();
    if (lock)
        pthread_mutex_unlock(&in->mu);
    return rc;
}

/* instances = 0 with an ABI 1 backend that registers memory: the dispatcher
 * runs process() on instance 0 under its lock, which the registration thread
 * holds for as long as register_memory takes (milliseconds). Waiting for it
 * would stall every client and model of the worker: the batcher tries the
 * lock before it cuts, and leaves the queue for a later pass where it is
 * held. */
static bool inline_locks(const struct bb__model *m)
{
    return m->lock_process && m->ninstances == 0;
}

bool bb__executor_inline_lock(struct bb__model *m)
{
    return !inline_locks(m) || pthread_mutex_trylock(&m->inst[0].mu) == 0;
}

void bb__executor_inline_unlock(struct bb__model *m)
{
    if (inline_locks(m))
        pthread_mutex_unlock(&m->inst[0].mu);
}

void bb__batch_run(struct bb__model *m, struct bb__instance *in, struct bb__batch *b,
                   bool clock_start)
{
    publish(b, run(m, in, b, clock_start));
}

/* Back to the home worker: push, fence, wake it if it sleeps (the same
 * handshake as a client's doorbell). */
static void push_done(struct bb__worker *w, struct bb__batch *b)
{
    struct bb__batch *head = atomic_load_explicit(&w->done, memory_order_relaxed);
    do
        b->next = head;
    while (!atomic_compare_exchange_weak_explicit(&w->done, &head, b, memory_order_release,
                                                  memory_order_relaxed));
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&w->sleeping, memory_order_relaxed))
        bb__worker_wake(w);
}

/* An asynchronous batch's completion, once the caller has ended its life
 * (b->life): publish, free the instance's place (the executor may submit
 * the next batch at once), hand the batch to the home. Neither the batch
 * nor the instance is touched after that: the home reuses the one, and a
 * stopping model frees the other once its count reaches zero. */
static void finish_async(struct bb__batch *b, int rc)
{
    struct bb__model *m = b->model;
    struct bb__instance *in = b->inst;
    b->ts.end = bb__now_ns();
    publish(b, rc);
    pthread_mutex_lock(&in->slot_mu);
    in->inflight--;
    pthread_cond_broadcast(&in->slot_cv);
    pthread_mutex_unlock(&in->slot_mu);
    push_done(m->w, b);
}

/* End the batch's life `life` (odd: held by the backend); false if it has
 * ended already. Of two calls for one life, however they race, one wins. */
static bool end_life(struct bb__batch *b, uint32_t life)
{
    return (life & 1) && atomic_compare_exchange_strong_explicit(
                             &b->life, &life, life + 1, memory_order_acq_rel, memory_order_relaxed);
}

/* bb_batch.complete of an asynchronous backend, on whatever thread it
 * calls from. A call for a batch the backend does not hold (a second one,
 * or one after submit refused it) would answer requests twice and hand the
 * home a batch it may have reused: refused, and logged. A batch's memory
 * lives as long as its model, so reading b->life is safe even then; a
 * call that comes once the batch was handed out again is indistinguishable
 * from that submission's own (backend.h). */
static void on_complete(struct bb_batch *api, int rc)
{
    struct bb__batch *b = (struct bb__batch *)(void *)((char *)api - offsetof(struct bb__batch, api));
    if (!end_life(b, atomic_load_explicit(&b->life, memory_order_acquire))) {
        bb_warn_limited("model %s: backend %s completed a batch that was not in flight (a "
                        "second time, or after its submit refused it): ignored",
                        b->model->cfg.name, b->model->plugin.ops->name);
        return;
    }
    finish_async(b, rc);
}

/* Wait until the instance has fewer than `below` batches in flight. */
static void wait_inflight(struct bb__instance *in, uint32_t below)
{
    pthread_mutex_lock(&in->slot_mu);
    while (in->inflight >= below)
        pthread_cond_wait(&in->slot_cv, &in->slot_mu);
    pthread_mutex_unlock(&in->slot_mu);
}

/* Hand a batch to an asynchronous backend (a place is free). A batch the
 * backend refuses completes here, failed. */
static void submit_async(struct bb__model *m, struct bb__instance *in, struct bb__batch *b)
{
    prepare(m, in, b);
    b->api.complete = on_complete;
    pthread_mutex_lock(&in->slot_mu);
    in->inflight++;
    pthread_mutex_unlock(&in->slot_mu);
    b->ts.start = b->profile ? bb__now_ns() : b->ts.cut;
    /* The backend learns of the batch through submit, which orders this. */
    uint32_t life = atomic_load_explicit(&b->life, memory_order_relaxed) + 1;
    atomic_store_explicit(&b->life, life, memory_order_relaxed);
    int rc = m->plugin.ops->submit(in->state, &b->api);
    if (rc >= 0)
        return;
    if (!end_life(b, life)) {
        /* Completed already, and perhaps handed out again since: not ours. */
        bb_warn_limited("model %s: backend %s refused a batch (submit returned %d) that it "
                        "had completed: its completion stands", m->cfg.name,
                        m->plugin.ops->name, rc);
        return;
    }
    if (!b->errmsg[0])
        snprintf(b->errmsg, sizeof b->errmsg, "submit: %s", bb_strerror(rc));
    finish_async(b, rc);
}

/* What publish found of the contract broken (the first such row). */
static void log_breach(const struct bb__model *m, const struct bb__batch *b)
{
    if (b->breach_status)
        bb_warn_limited("model %s: backend %s gave status %d (%s), which is not a request's "
                        "status (0, BB_EINVAL, BB_ENOMEM, BB_ETOOBIG or BB_EBACKEND: backend.h); "
                        "%u requests of a batch of %u broke the contract and were answered "
                        "BB_EBACKEND", m->cfg.name, m->plugin.ops->name, b->breach_status,
                        bb_errname(b->breach_status), b->nbreach, b->n);
    else
        bb_warn_limited("model %s: backend %s gave output length %zu for a buffer of %zu; %u "
                        "requests of a batch of %u broke the contract and were answered "
                        "BB_EBACKEND", m->cfg.name, m->plugin.ops->name, b->breach_len,
                        b->breach_cap, b->nbreach, b->n);
}

void bb__batch_reap(struct bb__batch *b)
{
    struct bb__model *m = b->model;
    if (b->rc < 0)
        bb_warn_limited("model %s: backend failed a batch of %u: %s (%s)", m->cfg.name, b->n,
                b->errmsg[0] ? b->errmsg : "no message", bb_errname(b->rc));
    if (b->nbreach)
        log_breach(m, b);
    for (uint32_t i = 0; i < b->n; i++) {
        struct bb__entry *e = &b->ents[i];
        if (e->group) {
            bb__dedup_complete(m, e->group, b->outputs[i].status, b->outputs[i].len, &b->ts,
                               b->profile);
            continue;
        }
        bb__adaptive_done(&m->adapt, b->ts.done > e->submit_ns ? b->ts.done - e->submit_ns : 0);
        e->cl->cm[m->id].inflight--;
        m->bytes -= e->bytes;
    }
    bb__completion_return_batch(m->w, b->ents, b->n);
    bb__metrics_batch(&m->metrics, b); /* reads e->group as a flag only: the groups are gone */
    /* The quiet rule: a batch that nothing waited behind, that no other
     * batch of the model was handed out beside, and that no request arrived
     * during (stamped before its end: those woken by it come after). */
    bool overlapped = b->overlapped || b->seq != m->handoffs || m->first_arrival_ns < b->ts.end;
    m->quiet = overlapped ? 0 : m->quiet + (m->quiet < QUIET_BATCHES);
    /* The backend's own time, for inline_max_us and the adaptive fit: an
     * executor's batch is timed from its start, so no hand-off or wake-up
     * counts (an inline one from its cut unless profiled: formation is part
     * of it). The fit models what a batch costs the backend; the wait for a
     * CPU that an executor may meet on a crowded host is no part of that,
     * and it varied the samples enough to keep restarting the fit. The
     * hand-off apart, for the expected time from cut to end. */
    uint64_t ran = b->ts.end - b->ts.start, handoff = b->ts.start - b->ts.cut;
    bool first = m->run_ns == 0 && m->handoff_ns == 0;
    m->run_ns = first ? ran : (m->run_ns * 7 + ran) / 8;
    m->run_n = first ? (uint64_t)b->n << 8 : (m->run_n * 7 + ((uint64_t)b->n << 8)) / 8;
    m->handoff_ns = first ? handoff : (m->handoff_ns * 7 + handoff) / 8;
    if (bb__adaptive_batch(&m->adapt, b->n, ran))
        bb_info_limited("model %s: backend speed changed; adaptive model restarted", m->cfg.name);
    if (m->max_running)
        m->running--;
    bb__batch_put(m, b);
}

struct bb__batch *bb__batch_get(struct bb__model *m)
{
    struct bb__batch *b = m->free_batches;
    bb_assert(b, "a free batch exists whenever an executor is free");
    m->free_batches = b->next;
    b->next = NULL;
    b->n = 0;
    b->rc = 0;
    b->nbreach = 0;
    b->errmsg[0] = 0;
    return b;
}

void bb__batch_put(struct bb__model *m, struct bb__batch *b)
{
    b->next = m->free_batches;
    m->free_batches = b;
}

/* Whether another model of this worker has work queued or out. */
static bool others_busy(const struct bb__model *m)
{
    const struct bb__worker *w = m->w;
    for (uint32_t i = 0; i < w->b->nmodels; i++) {
        const struct bb__model *o = w->route[i];
        if (o != m && o->w == w && (o->q.queued || o->q.grouped || o->running))
            return true;
    }
    return false;
}

/* Whether a submission or a message for this worker came while it ran a
 * batch itself (the quiet rule). */
static bool arrivals_waiting(const struct bb__worker *w)
{
    if (atomic_load_explicit(&w->mb.pending, memory_order_relaxed))
        return true;
    for (uint32_t i = 0; i < w->nlive; i++)
        if (bb__sq_ready(&w->live[i]->sq, 1))
            return true;
    return false;
}

enum where { ON_EXECUTOR, HERE_QUICK, HERE_QUIET };

/* Where a synchronous batch just cut runs. On the dispatcher, with
 * instances = 0; else only where the model's executors are all idle (none
 * holds a batch, none is queued, so no state is in use), and never where
 * process() takes the instance's lock (ABI 1 register_memory: the
 * registration thread may hold it for milliseconds):
 *   - quick batches, expected (run_ns) to take at most inline_max_us:
 *     handing one over and back costs more, two context switches where the
 *     executor shares this CPU (docs/performance.md);
 *   - quiet ones (inline_quiet_max_us): the batch takes every queued
 *     request, no other model of this worker has work, the model's last
 *     QUIET_BATCHES batches ran with nothing arriving meanwhile, and its
 *     time per request (run_ns / run_n) times n is at most the bound: a
 *     batch larger than the loop's (a client that joined with a burst)
 *     would hold the dispatcher that many times longer. An executor
 *     lets the dispatcher take in and cut the next batch while one runs;
 *     where nothing comes until the batch's own clients are answered (a
 *     closed loop that one batch holds whole: a GPU's clients, say), the
 *     dispatcher would only sleep meanwhile, and the hand-off (a futex wake
 *     of the executor, its wake of this worker, each a sleep and a wake-up)
 *     is all it adds. One arrival during such a batch hands the next
 *     QUIET_BATCHES over again. */
static enum where where_to_run(const struct bb__model *m, uint32_t n)
{
    if (m->ninstances == 0)
        return HERE_QUICK;
    if (m->running || m->lock_process || !m->run_ns)
        return ON_EXECUTOR;
    if (m->run_ns <= (uint64_t)m->cfg.inline_max_us * 1000)
        return HERE_QUICK;
    uint64_t quiet_max = (uint64_t)m->cfg.inline_quiet_max_us * 1000;
    if (m->quiet >= QUIET_BATCHES && m->run_ns <= quiet_max &&
        m->run_ns * ((uint64_t)n << 8) <= quiet_max * m->run_n && !m->q.queued && !m->q.grouped &&
        !others_busy(m))
        return HERE_QUIET;
    return ON_EXECUTOR;
}

bool bb__executor_runs_here(const struct bb__model *m)
{
    return !m->plugin.ops->submit && where_to_run(m, m->q.queued) != ON_EXECUTOR;
}

bool bb__executor_submit(struct bb__model *m, struct bb__batch *b)
{
    enum where where = m->plugin.ops->submit ? ON_EXECUTOR : where_to_run(m, b->n);
    if (m->max_running)
        m->running++; /* reap counts it out the same way */
    /* The quiet rule, for the reap: requests left behind, and from now on
     * the arrivals, are work that this batch held up or overlapped. */
    b->overlapped = m->q.queued || m->q.grouped;
    b->seq = ++m->handoffs;
    m->first_arrival_ns = UINT64_MAX;
    m->ran_quiet = where == HERE_QUIET;
    if (m->ninstances == 0 && m->plugin.ops->submit) {
        /* The dispatcher submits; the completion comes back through the
         * done stack like an executor's. */
        submit_async(m, &m->inst[0], b);
        return false;
    }
    if (where != ON_EXECUTOR) {
        int rc = run(m, &m->inst[0], b, false);
        /* Nothing is taken in while it runs: what came shows in the rings. */
        if (where == HERE_QUIET && arrivals_waiting(m->w))
            b->overlapped = true;
        publish(b, rc);
        bb__batch_reap(b);
        return true;
    }
    pthread_mutex_lock(&m->q_mu);
    b->next = NULL;
    if (m->q_tail)
        m->q_tail->next = b;
    else
        m->q_head = b;
    m->q_tail = b;
    atomic_fetch_add_explicit(&m->q_len, 1, memory_order_relaxed);
    pthread_mutex_unlock(&m->q_mu);
    /* Publish, fence, wake only a sleeper (the executor's side is in
     * take_batch): a spinning executor needs no system call. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&m->q_sleepers, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&m->q_seq, 1, memory_order_relaxed);
        syscall(SYS_futex, &m->q_seq, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    } else if (m->exec_yield_mask == 0 && m->w->spin_ns) {
        /* Few CPUs: the spinning executor most likely waits on our core.
         * Where it then runs the batch there for longer than the spin
         * budget and 0.5 ms, the yield is lost as to a CPU-bound process:
         * spinning beside such batches takes their CPU. */
        uint64_t now = bb__now_ns();
        if (bb__spin_calm(&m->w->spin_guard, now))
            bb__spin_yield(m->w->spin_ns, &m->w->spin_guard, now);
    }
    return false;
}

static struct bb__batch *pop(struct bb__model *m)
{
    pthread_mutex_lock(&m->q_mu);
    struct bb__batch *b = m->q_head;
    if (b) {
        m->q_head = b->next;
        if (!m->q_head)
            m->q_tail = NULL;
        atomic_fetch_sub_explicit(&m->q_len, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&m->q_mu);
    return b;
}

/* The next batch, or NULL to stop: spin for the broker's spin_us, then sleep
 * on q_seq after announcing it in q_sleepers (seq_cst, then re-check).
 *
 * The spin rule (bb__spin_credit) over its waits: where the next batch keeps
 * coming later than spin_us (the dispatcher waits for clients that sleep
 * while a long batch runs: a GPU, the synthetic backend's sleep), the
 * executor sleeps at once. */
static struct bb__batch *take_batch(struct bb__model *m, struct bb__instance *in)
{
    uint64_t spin = atomic_load_explicit(&m->exec_spin_ns, memory_order_relaxed);
    uint64_t start = spin ? bb__now_ns() : 0;
    bool spun = false;
    for (;;) {
        bool spins = spin && in->spin_credit && !spun && bb__spin_calm(&in->spin_guard, start);
        uint64_t spin_end = spins ? start + spin : 0;
        for (unsigned i = 1;; i++) {
            if (atomic_load_explicit(&m->q_stop, memory_order_acquire))
                return NULL;
            if (atomic_load_explicit(&m->q_len, memory_order_relaxed)) {
                struct bb__batch *b = pop(m);
                if (b) {
                    if (spin) /* caught while spinning: no clock needed */
                        in->spin_credit = bb__spin_credit(
                            in->spin_credit, spin_end ? 0 : bb__now_ns() - start, spin);
                    return b;
                }
                /* else another executor took it */
            }
            if (!spin_end || ((i & 63) == 0 && bb__now_ns() >= spin_end))
                break;
            if ((i & m->exec_yield_mask) == 0) {
                /* A thread sharing this core may be what we wait for; a
                 * batch that came while it ran counts as caught. */
                if (bb__spin_yield(spin, &in->spin_guard, bb__now_ns()) >= spin_end &&
                    !atomic_load_explicit(&m->q_len, memory_order_relaxed))
                    break;
            } else {
                bb__cpu_relax();
            }
        }
        spun = true; /* one spin a wait; the rest of it asleep */
        uint32_t seq = atomic_load_explicit(&m->q_seq, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->q_sleepers, 1, memory_order_seq_cst);
        if (!atomic_load_explicit(&m->q_len, memory_order_seq_cst) &&
            !atomic_load_explicit(&m->q_stop, memory_order_seq_cst))
            syscall(SYS_futex, &m->q_seq, FUTEX_WAIT_PRIVATE, seq, NULL, NULL, 0);
        atomic_fetch_sub_explicit(&m->q_sleepers, 1, memory_order_relaxed);
    }
}

static void *executor_main(void *arg)
{
    struct bb__instance *in = arg;
    struct bb__model *m = in->model;
    bb__topo_pin(&m->w->b->topo, m->w->node); /* the home worker's node */
    struct bb__batch *b;
    if (m->plugin.ops->submit) {
        /* A place first, then a batch: a batch taken by an instance with no
         * room would wait while another instance idles. */
        uint32_t max = m->plugin.ops->max_inflight;
        for (;;) {
            wait_inflight(in, max);
            if (!(b = take_batch(m, in)))
                break;
            submit_async(m, in, b);
        }
        wait_inflight(in, 1); /* fini only once nothing is in flight */
        return NULL;
    }
    while ((b = take_batch(m, in))) {
        bb__batch_run(m, in, b, true);
        push_done(m->w, b);
    }
    return NULL;
}

static int alloc_batches(struct bb__model *m, uint32_t count)
{
    uint32_t max = m->cfg.max_batch_size;
    for (uint32_t i = 0; i < count; i++) {
        struct bb__batch *b = calloc(1, sizeof *b);
        if (!b)
            return -1;
        b->model = m;
        b->ents = calloc(max, sizeof *b->ents);
        b->inputs = calloc(max, sizeof *b->inputs);
        b->outputs = calloc(max, sizeof *b->outputs);
        b->prios = calloc(max, 1);
        b->segs = calloc(max, sizeof *b->segs);
        b->next = m->free_batches;
        m->free_batches = b;
        if (!b->ents || !b->inputs || !b->outputs || !b->prios || !b->segs)
            return -1;
    }
    return 0;
}

/* Set while this thread runs a backend's init (init_instance). */
static _Thread_local bool in_init;

/* bb_init_args.log: the backend's lines in the broker's log, named. What it
 * logs from init, once an instance at start, goes whole; any other line
 * (from a batch, a client's segment registration: the cuda backend logs
 * each that fails) a peer can make it repeat at will, so it is rate-limited
 * as the broker's own per-client lines are. */
static void backend_log(void *ctx, int level, const char *msg)
{
    const struct bb__instance *in = ctx;
    level = level < BB_LOG_ERROR ? BB_LOG_ERROR : level > BB_LOG_DEBUG ? BB_LOG_DEBUG : level;
    const char *name = in->model->name, *text = msg ? msg : "";
    uint32_t n = bb__instance_number(in->model, in->index);
    static struct bb__log_limit limits[BB_LOG_DEBUG + 1]; /* a site a level */
    if (in_init)
        bb_log(level, "model %s, instance %u: %s", name, n, text);
    else
        bb_log_limited_by(&limits[level], level, "model %s, instance %u: %s", name, n, text);
}

/* The model's instances over all its replicas (formation = per_worker: one
 * replica a worker). */
static uint32_t all_instances(const struct bb__model *m)
{
    return (m->cfg.formation == BB__FORMATION_PER_WORKER ? m->w->b->nworkers : 1) * m->ninst;
}

static int init_instance(struct bb__model *m, struct bb__instance *in,
                         const struct bb_param *params, char *err, size_t errlen)
{
    const struct bb_backend_ops *ops = m->plugin.ops;
    if (!ops->init2)
        return ops->init(params, m->cfg.nparams, &in->state, err, errlen);
    /* Numbered over every replica of the model (formation = per_worker):
     * a backend that spreads its instances over devices spreads them all. */
    struct bb_init_args a = {.size = sizeof a,
                             .instance = bb__instance_number(m, in->index),
                             .instances = all_instances(m),
                             .numa_node = m->w->b->topo.node_id[m->w->node],
                             .max_batch_size = m->cfg.max_batch_size,
                             .model = m->name,
                             .params = params,
                             .nparams = m->cfg.nparams,
                             .log = backend_log,
                             .log_ctx = in};
    in_init = true;
    int rc = ops->init2(&a, &in->state, err, errlen);
    in_init = false;
    return rc;
}

int bb__executor_start(struct bb__model *m, char *err, size_t errlen)
{
    const struct bb_backend_ops *ops = m->plugin.ops;
    pthread_mutex_init(&m->q_mu, NULL);
    m->first_arrival_ns = UINT64_MAX;
    m->ninstances = m->cfg.instances;
    m->ninst = m->ninstances ? m->ninstances : 1;
    uint32_t per = ops->submit ? ops->max_inflight : 1;
    m->max_running = ops->submit ? m->ninst * per : m->ninstances;
    m->lock_process = m->plugin.abi == 1 && ops->register_memory;
    m->inst = calloc(m->ninst, sizeof *m->inst);
    if (!m->inst || alloc_batches(m, m->ninst * per) < 0) {
        snprintf(err, errlen, "model %s: out of memory", m->cfg.name);
        return -1;
    }
    struct bb_param params[BB_MAX_PARAMS];
    for (size_t i = 0; i < m->cfg.nparams; i++)
        params[i] = (struct bb_param){m->cfg.params[i].key, m->cfg.params[i].value};
    for (uint32_t i = 0; i < m->ninst; i++) {
        struct bb__instance *in = &m->inst[i];
        in->model = m;
        in->index = i;
        in->spin_credit = BB__SPIN_TRIES;
        pthread_mutex_init(&in->mu, NULL);
        pthread_mutex_init(&in->slot_mu, NULL);
        pthread_cond_init(&in->slot_cv, NULL);
        char berr[256] = "";
        int rc = init_instance(m, in, params, berr, sizeof berr);
        berr[sizeof berr - 1] = 0; /* a backend that filled it, strncpy's way */
        if (rc < 0) {
            snprintf(err, errlen, "model %s: backend %s refused its parameters: %s", m->cfg.name,
                     ops->name, berr[0] ? berr : bb_strerror(rc));
            m->ninstances = 0;
            return -1;
        }
        in->started = true;
    }
    for (uint32_t i = 0; i < m->ninstances; i++) {
        int rc = pthread_create(&m->inst[i].thread, NULL, executor_main, &m->inst[i]);
        if (rc) {
            snprintf(err, errlen, "model %s: cannot start executor: %s", m->cfg.name, strerror(rc));
            m->ninstances = i;
            return -1;
        }
        bb__thread_name(m->inst[i].thread, "bb-x%u-%s", bb__instance_number(m, i), m->name);
    }
    return 0;
}

void bb__executor_stop(struct bb__model *m)
{
    if (!m->inst)
        return;
    atomic_store_explicit(&m->q_stop, true, memory_order_seq_cst);
    atomic_fetch_add_explicit(&m->q_seq, 1, memory_order_relaxed);
    syscall(SYS_futex, &m->q_seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    for (uint32_t i = 0; i < m->ninstances; i++)
        pthread_join(m->inst[i].thread, NULL);
    for (uint32_t i = 0; i < m->ninst; i++) {
        struct bb__instance *in = &m->inst[i];
        if (!in->model)
            continue; /* the start failed before it */
        /* Executors waited for their batches; the dispatcher's (instances
         * = 0) may still be completing on the backend's thread. */
        wait_inflight(in, 1);
        if (in->started)
            m->plugin.ops->fini(in->state);
        pthread_mutex_destroy(&in->mu);
        pthread_mutex_destroy(&in->slot_mu);
        pthread_cond_destroy(&in->slot_cv);
    }
    free(m->inst);
    m->inst = NULL;
    while (m->free_batches) {
        struct bb__batch *b = m->free_batches;
        m->free_batches = b->next;
        free(b->ents);
        free(b->inputs);
        free(b->outputs);
        free(b->prios);
        free(b->segs);
        free(b);
    }
}
