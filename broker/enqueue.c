/* Enqueue: a request joins its model, on the model's home worker (the
 * intake ran on the worker that serves its client, maybe another one).
 *
 * Here live the checks that depend on the model's configuration and state:
 * size limits, shutdown, backpressure (max_queue, the level limits,
 * max_inflight_per_client, memory_limit_mb). A refused request is answered
 * at once and goes back to its client's worker. An accepted one gets its
 * priority, level and deadline, its fair-queueing tags, and joins a dedup
 * group or the queues. */
#include "enqueue.h"

#include "batchbroker/client.h"
#include "broker.h"
#include "completion.h"
#include "dedup.h"
#include "model.h"
#include "session.h"
#include "util_internal.h"
#include "worker.h"

static int check(const struct bb__model *m, const struct bb__client *c, const struct bb__req *r,
                 int level)
{
    uint64_t bytes = r->bytes;
    if (bytes > m->request_bytes_max) /* max_request_bytes, max_batch_bytes, memory_limit_mb */
        return BB_ETOOBIG;
    if (atomic_load_explicit(&m->w->b->stopping, memory_order_relaxed))
        return BB_ESHUTDOWN;
    /* Backpressure: refuse now rather than queue what cannot be served. */
    uint32_t level_max = m->cfg.priorities ? m->cfg.max_queue_level[level] : 0;
    if (m->q.queued + m->q.grouped >= m->cfg.max_queue ||
        (level_max && m->q.level_n[level] >= level_max) ||
        (m->cfg.max_inflight_per_client &&
         c->cm[m->id].inflight >= m->cfg.max_inflight_per_client) ||
        (m->memory_limit && m->bytes + bytes > m->memory_limit))
        return BB_EBUSY;
    return 0;
}

/* r now counts against its client's and the model's limits until it
 * completes (completion.c, dedup.c and executor.c let go). */
static void account(struct bb__model *m, struct bb__client_model *cm, const struct bb__req *r)
{
    cm->inflight++;
    m->bytes += r->bytes;
}

void bb__enqueue(struct bb__model *m, struct bb__req *r, uint64_t now)
{
    struct bb__client *c = r->cl;
    bb__metrics_submitted(&m->metrics);
    if (r->prio == 0)
        r->prio = (uint8_t)m->cfg.default_priority;
    int level = m->cfg.priorities ? r->prio - 1 : 0;
    int st = r->status ? r->status : check(m, c, r, level);
    if (st < 0) {
        bb__finish(m, r, st, 0, NULL, false); /* never queued: nothing to release */
        return;
    }
    bb__adaptive_arrival(&m->adapt, 1);
    if (r->submit_ns < m->first_arrival_ns)
        m->first_arrival_ns = r->submit_ns; /* the quiet rule (executor.c) */
    r->level = (uint8_t)level;
    uint64_t t_us = r->timeout_us ? r->timeout_us : m->cfg.default_timeout_us;
    /* From the intake's stamp, not now: a request of another worker's
     * client may have waited in this worker's mailbox (an inline batch). */
    r->deadline_ns = t_us ? r->enq_ns + t_us * 1000ull : UINT64_MAX;
    r->own_deadline = r->timeout_us != 0;
    r->group = NULL;
    /* Start-time fair queueing: a client's tags advance by 1/weight per
     * round, from the level's virtual time, so clients interleave. A round
     * holds up to fair_quantum requests, which then sit together in a batch
     * and cost the client one wake-up, not one each. A round the virtual
     * time has moved past is over: an idle client earns no credit. */
    struct bb__client_model *cm = &c->cm[m->id];
    int l = level;
    uint64_t vt = m->q.vtime[l];
    if (cm->round_left[l] && cm->round_start[l] >= vt) {
        cm->round_left[l]--;
    } else {
        cm->round_start[l] = vt > cm->last_ftag[l] ? vt : cm->last_ftag[l];
        cm->last_ftag[l] = cm->round_start[l] + cm->ftag_inc;
        cm->round_left[l] = m->cfg.fair_quantum - 1;
        cm->round_head[l] = NULL;
    }
    r->fstart = cm->round_start[l];
    r->ftag = cm->last_ftag[l];
    if ((m->cfg.dedup || (r->flags & BB_SUBMIT_DEDUP)) &&
        r->bytes <= m->cfg.dedup_max_request_bytes) {
        int rc = bb__dedup_submit(m, r, now);
        if (rc == 2)
            return; /* answered from the cache */
        if (rc < 0) {
            bb__finish(m, r, rc, 0, NULL, false);
            return;
        }
        if (rc == 1) { /* rides on an identical request */
            account(m, cm, r);
            return;
        }
    }
    account(m, cm, r);
    atomic_store_explicit(&r->state, BB__REQ_QUEUED, memory_order_release); /* batcher.c: cancel */
    if (bb__queue_push(&m->q, r, cm->round_head[l])) {
        cm->round_head[l] = r;
        r->round_ref = &cm->round_head[l]; /* queue.c keeps it true */
    }
    bb__deadline_push(&m->q, r);
    bb__adaptive_queued(&m->adapt, m->q.queued);
}
