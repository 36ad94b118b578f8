/* When to cut a batch and what goes in it.
 *
 * Every pass: requests whose deadline has passed (or, with drop_late, cannot
 * be met given the expected batch time) leave first, from the top of the
 * deadline heap. Then, while an executor is free, the model's strategy is
 * asked whether to cut a batch; if so, requests that waited longer than
 * max_starvation_us go in first (oldest first, as if critical), and the
 * strategy's select() fills the rest through peek/take on the levels. */
#include "batcher.h"

#include "batchbroker/client.h"
#include "broker.h"
#include "completion.h"
#include "dedup.h"
#include "executor.h"
#include "model.h"
#include "session.h"
#include "util_internal.h"
#include "worker.h"

void bb__request_unlink(struct bb__model *m, struct bb__req *r)
{
    int st = atomic_load_explicit(&r->state, memory_order_relaxed);
    bb__deadline_remove(&m->q, r);
    if (st == BB__REQ_QUEUED)
        bb__queue_remove(&m->q, r);
    if (r->group)
        bb__dedup_leave(m, r);
}

void bb__batcher_cancel(struct bb__model *m, struct bb__req *r, uint32_t sub)
{
    /* A cancel from another worker may come after its request finished here
     * and the client submitted the slot again, to this model or another, on
     * this worker or another. Only a request queued here is ours to touch,
     * and only the submission the cancel names: a newer one has a newer
     * `sub`, which every store of a newer state publishes (release, paired
     * with this acquire), so reading its state means reading its `sub`. */
    int st = atomic_load_explicit(&r->state, memory_order_acquire);
    if ((st != BB__REQ_QUEUED && st != BB__REQ_GROUPED) ||
        atomic_load_explicit(&r->sub, memory_order_relaxed) != sub)
        return; /* running (finishes normally), complete, or resubmitted since */
    bb__request_unlink(m, r);
    bb__complete_one(m, r, BB_ECANCELED);
}

void bb__batcher_drop_client(struct bb__worker *w, struct bb__client *c)
{
    for (uint32_t i = 0; i < c->nslots; i++) {
        struct bb__req *r = bb__session_req(c, i);
        if (!r) {
            i |= BB__REQ_CHUNK - 1; /* a chunk never used: nothing queued in it */
            continue;
        }
        int st = atomic_load_explicit(&r->state, memory_order_relaxed);
        if (st != BB__REQ_QUEUED && st != BB__REQ_GROUPED)
            continue;
        /* The model its own worker filed it with (a per_worker model's
         * replica there, not this worker's). */
        struct bb__model *m = c->w->route[r->model];
        if (m->w != w)
            continue; /* queued at another home: its DROP message finds it */
        bb__request_unlink(m, r);
        bb__complete_dropped(m, r);
    }
}

void bb__batcher_fail_all(struct bb__model *m, int status)
{
    struct bb__req *r;
    for (int l = 0; l < 4; l++)
        while ((r = bb__queue_top(&m->q, l))) {
            bb__request_unlink(m, r);
            bb__complete_one(m, r, status);
        }
    while ((r = bb__deadline_top(&m->q))) { /* dedup members left without a representative */
        bb__request_unlink(m, r);
        bb__complete_one(m, r, status);
    }
}

static uint32_t expire(struct bb__model *m, uint64_t now)
{
    uint64_t horizon = now + (m->cfg.drop_late ? bb__model_batch_ns(m) : 0);
    uint32_t n = 0;
    struct bb__req *r;
    while ((r = bb__deadline_top(&m->q)) && r->deadline_ns <= horizon) {
        bb__request_unlink(m, r);
        bb__complete_one(m, r, BB_ETIMEDOUT);
        n++;
    }
    return n;
}

/* The batch being filled, behind the strategy's peek/take. */
struct cut {
    struct bb__model *m;
    struct bb__batch *b;
    uint32_t max;
    uint64_t bytes_left;
    struct bb_candidate cand;
};

static bool fits(struct cut *c, const struct bb__req *r)
{
    /* A request larger than max_batch_bytes (possible after a reload lowered
     * it) runs alone rather than never. */
    return c->b->n < c->max && (r->bytes <= c->bytes_left || c->b->n == 0);
}

/* r has left its level (one way or another) and its bytes are off
 * bytes_left: put it in the batch. */
static void add_taken(struct cut *c, struct bb__req *r)
{
    struct bb__model *m = c->m;
    struct bb__batch *b = c->b;
    bb__deadline_remove(&m->q, r);
    if (r->fstart > m->q.vtime[r->level])
        m->q.vtime[r->level] = r->fstart;
    uint64_t bytes = r->bytes; /* what level_bytes and the limits count */
    atomic_store_explicit(&r->state, BB__REQ_RUNNING, memory_order_relaxed);
    uint32_t i = b->n++;
    b->ents[i] = (struct bb__entry){.cl = r->cl, .req = r, .slot = r->slot, .gen = r->gen,
                                    .prio = r->prio, .out_cap = r->out_cap,
                                    .submit_ns = r->submit_ns, .bytes = bytes, .group = r->group};
    b->inputs[i] = (struct bb_view){.ptr = r->in, .len = r->in_len};
    b->outputs[i] = (struct bb_outbuf){.ptr = r->out, .cap = r->out_cap};
    b->prios[i] = r->prio;
    b->segs[i] = r->group ? 0 : r->cl->id; /* a group runs on the broker's private copy */
    if (r->group)
        bb__dedup_dispatched(m, r->group);
}

static void add(struct cut *c, struct bb__req *r)
{
    bb__queue_remove(&c->m->q, r);
    c->bytes_left = r->bytes < c->bytes_left ? c->bytes_left - r->bytes : 0;
    add_taken(c, r);
}

static const struct bb_candidate *peek(void *q, int level)
{
    struct cut *c = q;
    if (level < 0 || level > 3)
        return NULL;
    struct bb__req *r = bb__queue_top(&c->m->q, level);
    if (!r || !fits(c, r))
        return NULL;
    c->cand = (struct bb_candidate){.deadline_ns = r->deadline_ns, .enq_ns = r->enq_ns,
                                    .in_len = r->in_len, .out_cap = r->out_cap,
                                    .client_id = r->cl->id, .level = (uint32_t)level};
    return &c->cand;
}

static int take(void *q, int level)
{
    struct cut *c = q;
    if (level < 0 || level > 3)
        return -1;
    struct bb__req *r = bb__queue_top(&c->m->q, level);
    if (!r || !fits(c, r))
        return -1;
    add(c, r);
    return 0;
}

static uint32_t take_many(void *q, int level, uint32_t max)
{
    struct cut *c = q;
    if (level < 0 || level > 3)
        return 0;
    struct bb__model *m = c->m;
    uint32_t room = c->max - c->b->n;
    if (max > room)
        max = room;
    uint32_t n = m->q.level_n[level];
    if (n && n <= max && m->q.level_bytes[level] <= c->bytes_left) {
        /* The whole level goes: no need to keep its heap in order. */
        c->bytes_left -= m->q.level_bytes[level];
        uint32_t taken = bb__queue_take_level(&m->q, level, m->scratch);
        bb_assert(taken == n, "a level holds level_n requests");
    } else {
        n = bb__queue_take_top(&m->q, level, max, &c->bytes_left, c->b->n == 0, m->scratch);
    }
    for (uint32_t i = 0; i < n; i++)
        add_taken(c, m->scratch[i]);
    return n;
}

/* Requests that waited past max_starvation_us behind higher levels. */
static void take_starved(struct cut *c, uint64_t now)
{
    uint64_t starve = (uint64_t)c->m->cfg.max_starvation_us * 1000;
    if (!starve || !c->m->cfg.priorities)
        return;
    for (;;) {
        struct bb__req *oldest = NULL;
        bool higher = c->m->q.level_n[0] > 0;
        for (int l = 1; l < 4; l++) {
            struct bb__req *r = bb__level_oldest(&c->m->q, l);
            if (higher && r && now - r->enq_ns >= starve && (!oldest || r->enq_ns < oldest->enq_ns))
                oldest = r;
            higher = higher || c->m->q.level_n[l] > 0;
        }
        if (!oldest)
            return;
        struct bb__req *crit = bb__level_oldest(&c->m->q, 0);
        if (crit && crit->enq_ns < oldest->enq_ns)
            oldest = crit;
        if (!fits(c, oldest))
            return;
        add(c, oldest);
    }
}

static void queue_state(struct bb__model *m, uint64_t now, struct bb_queue_state *qs)
{
    uint32_t wait;
    uint32_t target = bb__model_target(m, &wait);
    uint64_t expected = bb__model_batch_ns(m);
    if (m->adapt.fit.valid) /* the fit is the backend's time: add the hand-off */
        expected = (uint64_t)(m->adapt.fit.a_ns + m->adapt.fit.b_ns * target) + m->handoff_ns;
    *qs = (struct bb_queue_state){.now_ns = now, .queued = m->q.queued,
                                  .batch_target = target,
                                  .max_batch_size = m->cfg.max_batch_size,
                                  .max_wait_us = wait,
                                  .earliest_deadline_ns = UINT64_MAX,
                                  .expected_batch_ns = expected,
                                  .running = m->running,
                                  .instances = m->ninstances,
                                  .backend_idle = m->running == 0};
    uint64_t oldest = UINT64_MAX;
    for (int l = 0; l < 4; l++) {
        qs->counts[l] = m->q.level_n[l];
        struct bb__req *r = bb__level_oldest(&m->q, l);
        if (r && r->enq_ns < oldest)
            oldest = r->enq_ns;
    }
    qs->oldest_wait_ns = oldest == UINT64_MAX ? 0 : now - oldest;
    struct bb__req *d = bb__deadline_top(&m->q);
    if (d)
        qs->earliest_deadline_ns = d->deadline_ns;
}

#define COALESCE_MAX_NS 1000000ull
/* How soon a queue whose backend a registration holds (bb__executor_inline_lock)
 * is looked at again: a registration takes milliseconds. */
#define INLINE_LOCK_RETRY_NS 100000ull

/* The sleep this model lets workers take without their doorbells. All
 * executors busy (the finishing batch wakes the home) with requests already
 * waiting, or a batch filling: arrivals can be collected a little later in
 * one pass. An eighth of the fill wait, at most a millisecond, so that a new
 * deadline is still seen in time. A busy model with an empty queue keeps the
 * doorbell: in a closed loop nobody rings while its batch runs, and the first
 * arrival of an open loop does. */
static void publish_coalesce(struct bb__model *m)
{
    uint64_t win = 0;
    if (m->max_running && m->running >= m->max_running)
        win = m->q.queued || m->q.grouped ? COALESCE_MAX_NS : 0;
    else if (m->filling)
        win = (uint64_t)m->fill_wait_us * 1000 / 8;
    if (win > COALESCE_MAX_NS)
        win = COALESCE_MAX_NS;
    atomic_store_explicit(&m->coalesce_ns, win, memory_order_relaxed);
}

/* How many batches a cut makes: the queued requests shared among idle
 * executors, or 1. A CPU backend's executors run on cores of their own, so
 * a batch that would take every queued request while other executors idle
 * finishes sooner in parallel shares (a closed loop of N requests in flight
 * with k executors: batches of N / k keep them all busy, where one batch of
 * N leaves k - 1 idle and the clients waiting on it). Only while each share
 * still carries the per-batch cost, by the adaptive fit: b * share >= a; a
 * fit with no per-request cost (one batch size seen), or none, never
 * splits. A GPU's or an asynchronous backend's instances share one device:
 * never; nor batches quick enough to run on the dispatcher (inline_max_us),
 * which would run the shares one after the other. */
static uint32_t share_parts(const struct bb__model *m)
{
    if (!m->parallel || m->running + 1 >= m->max_running || m->q.queued < 2 ||
        bb__executor_runs_here(m))
        return 1;
    const struct bb__fit *f = &m->adapt.fit;
    if (!f->valid || f->b_ns <= 0)
        return 1;
    uint32_t idle = m->max_running - m->running;
    double min_share = f->a_ns / f->b_ns;
    double parts = min_share > 1 ? (double)m->q.queued / min_share : (double)m->q.queued;
    return parts >= idle ? idle : parts >= 2 ? (uint32_t)parts : 1;
}

static int poll_model(struct bb__model *m, uint64_t now, uint64_t *next_ns);

int bb__batcher_poll(struct bb__model *m, uint64_t now, uint64_t *next_ns)
{
    int progress = poll_model(m, now, next_ns);
    publish_coalesce(m);
    return progress;
}

static int poll_model(struct bb__model *m, uint64_t now, uint64_t *next_ns)
{
    int progress = 0;
    bb__metrics_tick(&m->metrics, now);
    if (now - m->adapt.interval_start_ns >= m->adapt.cfg.interval_ns) {
        bb__adaptive_tick(&m->adapt, now, bb__metrics_window_p99_us(&m->metrics), false);
        if (m->dedup)
            bb__dedup_expire_cache(m, now);
        /* Target and wait for readers on other threads: they move at this
         * pace (a reload or an unpin shows within an interval, a pin at once). */
        uint32_t wait;
        uint32_t target = bb__model_target(m, &wait);
        bb__metrics_gauges(&m->metrics, target, wait, m->w->profile);
        bb__model_publish(m);
    }
    m->filling = false;
    if (m->q.queued == 0 && m->q.grouped == 0) {
        bb__metrics_depth(&m->metrics, 0, m->running);
        return 0;
    }
    progress += (int)expire(m, now);
    uint32_t parts = 0; /* batches still to cut of a shared queue */
    bool locked = bb__executor_inline_lock(m);
    if (!locked && now + INLINE_LOCK_RETRY_NS < *next_ns)
        *next_ns = now + INLINE_LOCK_RETRY_NS;
    while (locked && m->q.queued > 0) {
        bool free_exec = m->max_running == 0 || m->running < m->max_running;
        if (!free_exec)
            break;
        struct bb_queue_state qs;
        queue_state(m, now, &qs);
        uint64_t recheck = UINT64_MAX;
        if (!parts && !m->strategy->should_dispatch(m->strategy_state, &qs, &recheck)) {
            m->filling = true;
            m->fill_wait_us = qs.max_wait_us;
            if (recheck < *next_ns)
                *next_ns = recheck > now ? recheck : now + 1000;
            break;
        }
        struct bb__batch *b = bb__batch_get(m);
        b->ts.cut = now;
        b->profile = bb__metrics_time_batch(&m->metrics, now, m->w->profile,
                                            m->w->profile_max_rate);
        if (!parts)
            parts = share_parts(m);
        uint32_t share = (m->q.queued + parts - 1) / parts;
        parts--;
        struct cut c = {.m = m, .b = b,
                        .max = share < m->cfg.max_batch_size ? share : m->cfg.max_batch_size,
                        .bytes_left = m->cfg.max_batch_bytes ? m->cfg.max_batch_bytes : UINT64_MAX};
        take_starved(&c, now);
        if (b->n < c.max) {
            struct bb_queue_ops qo = {.q = &c, .peek = peek, .take = take, .take_many = take_many};
            m->strategy->select(m->strategy_state, &qs, &qo, c.max - b->n);
        }
        if (b->n == 0) {
            /* The strategy asked for a batch and then took nothing (no
             * built-in does). The queue waits for its next answer: a custom
             * strategy that always does this serves nothing, so say so. */
            bb_warn_limited("model %s: strategy %s asked for a batch and took none of %u queued "
                            "requests; they wait for its next answer",
                            m->cfg.name, m->strategy->name, m->q.queued);
            bb__batch_put(m, b);
            break;
        }
        if (b->n < c.max)
            parts = 0; /* it held requests back: the rest waits for should_dispatch */
        progress += (int)b->n;
        if (bb__executor_submit(m, b)) {
            now = b->ts.done; /* it ran inline: a fresh clock, and a read saved */
            /* Deadlines passed while it ran: those fail, not run next. */
            progress += (int)expire(m, now);
            /* A shutdown or a reload that came meanwhile goes first, at the
             * top of the next pass: a shutdown fails what is queued (only
             * running batches finish), and a reload's first worker, every
             * client of it, waits until this one parks. */
            struct bb__broker *br = m->w->b;
            if (atomic_load(br->stop_flag) || atomic_load(&br->stopping) ||
                atomic_load(&br->quiesce))
                break;
        }
    }
    if (locked)
        bb__executor_inline_unlock(m);
    bb__metrics_depth(&m->metrics, m->q.queued + m->q.grouped, m->running);
    struct bb__req *d = bb__deadline_top(&m->q);
    if (d) {
        uint64_t at = d->deadline_ns - (m->cfg.drop_late ? bb__model_batch_ns(m) : 0);
        if (at < *next_ns)
            *next_ns = at;
    }
    return progress;
}
