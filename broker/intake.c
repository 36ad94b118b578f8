/* Intake: a client's submission ring, drained by the dispatcher.
 *
 * Each descriptor is copied out of shared memory before it is validated,
 * because the client may rewrite it at any time; only the copy is used. A
 * valid request is filed with its model (deduplication, queues, deadline
 * heap); an invalid or refused one is answered at once. A ring that lies
 * about its tail, or names a slot out of range, kills its own client only. */
#include "intake.h"

#include <stddef.h>
#include <string.h>

#include "batchbroker/client.h"
#include "batcher.h"
#include "broker.h"
#include "completion.h"
#include "dedup.h"
#include "model.h"
#include "session.h"
#include "util_internal.h"
#include "worker.h"

#define DRAIN_BUDGET 1024           /* entries per client per pass: fairness */
#define SUBMIT_CLOCK_SKEW_NS 60000000000ull

static int validate(struct bb__broker *b, struct bb__client *c, const struct bb_shm_slot *d,
                    struct bb__model **mp)
{
    if (d->model_id >= b->nmodels || !(c->models_open & (1ull << d->model_id)))
        return BB_ENOMODEL;
    struct bb__model *m = &b->models[d->model_id];
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
    if (b->stopping)
        return BB_ESHUTDOWN;
    /* Backpressure: refuse now rather than queue what cannot be served. */
    int prio = d->priority ? d->priority : (int)m->cfg.default_priority;
    int level = m->cfg.priorities ? prio - 1 : 0;
    uint32_t level_max = m->cfg.priorities ? m->cfg.max_queue_level[level] : 0;
    if (m->q.queued + m->q.grouped >= m->cfg.max_queue ||
        (level_max && m->q.levels[level].n >= level_max) ||
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
        bb__session_kill(w, c, "resubmitted a slot that is still pending");
        return;
    }
    /* Copy the descriptor out first: the client may rewrite it at any time,
     * so only the copy is validated and used. */
    struct bb_shm_slot d;
    memcpy(&d, &c->slots[slot], offsetof(struct bb_shm_slot, shm_done_gen));
    atomic_signal_fence(memory_order_acq_rel);
    struct bb__model *m = NULL;
    int st = validate(w->b, c, &d, &m);
    if (m)
        bb__metrics_submitted(&m->metrics);
    if (st < 0) {
        bb__answer(c, slot, d.gen, st, 0);
        if (m)
            bb__metrics_failed(&m->metrics, st, d.priority ? d.priority : m->cfg.default_priority);
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
    uint64_t start = m->q.vtime[r->level] > cm->last_ftag[r->level] ? m->q.vtime[r->level]
                                                                   : cm->last_ftag[r->level];
    r->fstart = start;
    r->ftag = cm->last_ftag[r->level] = start + cm->ftag_inc;
    if ((m->cfg.dedup || (d.flags & BB_SUBMIT_DEDUP)) &&
        r->bytes <= m->cfg.dedup_max_request_bytes) {
        int rc = bb__dedup_submit(m, r, now);
        if (rc == 2)
            return; /* answered from the cache */
        if (rc < 0) {
            bb__answer(c, slot, d.gen, rc, 0);
            bb__metrics_failed(&m->metrics, rc, r->prio);
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
    bb__queue_push(&m->q, r);
    bb__deadline_push(&m->q, r);
}

static void cancel_req(struct bb__worker *w, struct bb__client *c, uint32_t slot)
{
    struct bb__req *r = &c->reqs[slot];
    int st = atomic_load_explicit(&r->state, memory_order_relaxed);
    if (st != BB__REQ_QUEUED && st != BB__REQ_GROUPED)
        return; /* running (finishes normally) or already complete */
    struct bb__model *m = &w->b->models[r->model];
    bb__request_unlink(m, r);
    bb__complete_one(m, r, BB_ECANCELED);
}

int bb__intake_drain(struct bb__worker *w, struct bb__client *c, uint64_t now)
{
    int64_t avail = bb__ring_available(&c->sq);
    if (avail <= 0) {
        if (avail < 0)
            bb__session_kill(w, c, "corrupt submission ring tail");
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
            bb__session_kill(w, c, "submission ring entry out of range");
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
