/* Intake: a client's submission ring, drained by the worker that serves the
 * client.
 *
 * Each descriptor is copied out of shared memory before it is validated,
 * because the client may rewrite it at any time; only the copy is used. The
 * intake checks what concerns the client alone (the model is one it opened,
 * known flags and priority, buffers inside its heap) and hands the request to
 * its model's home worker (enqueue.c), directly when that is this worker,
 * else through the mailbox; a request it refuses goes there too, with its
 * status, so that the model's statistics count it. The ring's entries carry
 * their lap, so there is no tail to lie about; an entry that names a slot out
 * of range kills its own client only. */
#include "intake.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "batchbroker/client.h"
#include "batcher.h"
#include "broker.h"
#include "completion.h"
#include "enqueue.h"
#include "mailbox.h"
#include "model.h"
#include "session.h"
#include "util_internal.h"
#include "worker.h"

_Static_assert(offsetof(struct bb_shm_slot, pad0) == offsetof(struct bb_shm_slot, priority) + 1 &&
                   sizeof(((struct bb_shm_slot *)0)->pad0) == sizeof(uint64_t) - 1,
               "the priority and the reserved bytes are checked as one word");

#define DRAIN_BUDGET 1024           /* entries per client per pass: fairness */

static int check(const struct bb__client *c, const struct bb_shm_slot *d)
{
    if (d->priority > BB_PRIORITY_LOW || (d->flags & ~(uint32_t)BB_SUBMIT_DEDUP))
        return BB_EINVAL;
    /* Reserved bytes must be zero, as io_uring requires of its SQEs: a later
     * version may give them a meaning this one must not silently ignore. One
     * load of the priority and the 7 bytes after it, against the priority
     * alone (whatever the byte order), where a copy of the 7 was 19
     * instructions. */
    const char *p = (const char *)d + offsetof(struct bb_shm_slot, priority);
    uint64_t word, prio_only = 0;
    memcpy(&word, p, sizeof word);
    memcpy(&prio_only, p, 1);
    if (word != prio_only)
        return BB_EINVAL;
    /* Both buffers inside the heap; no overflow in off + len. */
    if (d->in_off < c->heap_lo || d->in_off > c->heap_hi || d->in_len > c->heap_hi - d->in_off ||
        d->out_off < c->heap_lo || d->out_off > c->heap_hi ||
        d->out_cap > c->heap_hi - d->out_off)
        return BB_EINVAL;
    /* Input and output never overlap (backend.h promises it): a backend may
     * memcpy one to the other, which on overlapping memory is undefined. No
     * overflow: both ranges lie inside the heap. */
    if (d->in_len && d->out_cap && d->in_off < d->out_off + d->out_cap &&
        d->out_off < d->in_off + d->in_len)
        return BB_EINVAL;
    return 0;
}

static void submit(struct bb__worker *w, struct bb__client *c, uint32_t slot, uint64_t now)
{
    struct bb__req *r = bb__session_req_get(c, slot);
    /* Acquire pairs with the release that made the slot idle (executor or
     * the model's home) before its completion was published. */
    if (r && atomic_load_explicit(&r->state, memory_order_acquire) != BB__REQ_IDLE) {
        bb__session_kill(w, c, "resubmitted a slot that is still pending");
        return;
    }
    /* Copy the descriptor out first: the client may rewrite it at any time,
     * so only the copy is validated and used. */
    struct bb_shm_slot d;
    memcpy(&d, &c->slots[slot], offsetof(struct bb_shm_slot, shm_done_gen));
    atomic_signal_fence(memory_order_acq_rel);
    if (!r) {
        bb__answer(c, slot, d.gen, BB_ENOMEM, 0); /* no memory for its record */
        return;
    }
    if (d.model_id >= w->b->nmodels || !(c->models_open & (1ull << d.model_id))) {
        bb__answer(c, slot, d.gen, BB_ENOMODEL, 0); /* no model to count it */
        return;
    }
    struct bb__model *m = w->route[d.model_id];
    if (m->w != w && w->stopping) {
        /* Another home may have left already: once every worker is
         * stopping (none leaves before), nothing crosses with a reference.
         * Its own home would refuse it the same way (enqueue.c). */
        bb__answer(c, slot, d.gen, BB_ESHUTDOWN, 0);
        return;
    }
    r->status = check(c, &d);
    r->gen = d.gen;
    r->model = d.model_id;
    r->prio = d.priority;
    r->timeout_us = d.timeout_us;
    r->flags = d.flags;
    /* Pointers only into the heap: a refused request keeps none (its home
     * only counts and answers it), and base + an unchecked offset would be
     * undefined even unused (found by fuzz/fuzz_ingest under UBSan). */
    bool ok = r->status == 0;
    r->in = ok ? c->base + d.in_off : NULL;
    r->in_len = d.in_len;
    r->out = r->cl_out = ok ? c->base + d.out_off : NULL;
    r->out_cap = r->cl_out_cap = d.out_cap;
    r->bytes = (uint64_t)d.in_len + d.out_cap;
    /* The client's clock stamp, for the latency figures and the adaptive
     * controller's SLO (every client's batches), within what the broker saw:
     * not before the last pass that found the ring without this entry (a
     * client that back-dated it 30 s made each request an SLO violation),
     * not after now. */
    r->submit_ns = d.submit_ns > now ? now : d.submit_ns < c->sq_empty_ns ? c->sq_empty_ns : d.submit_ns;
    r->enq_ns = now;
    atomic_store_explicit(&r->sub, atomic_load_explicit(&r->sub, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    /* Release: a home that reads this state, or a later one, reads this
     * submission's `sub` too (bb__batcher_cancel). */
    atomic_store_explicit(&r->state, BB__REQ_SUBMITTED, memory_order_release);
    c->refs++; /* until the home gives it back (bb__completion_returned) */
    if (m->w == w)
        bb__enqueue(m, r, now);
    else
        bb__mailbox_post(w, m->w, BB__MSG_SUBMIT, r, 0, 0);
}

static void cancel_req(struct bb__worker *w, struct bb__client *c, uint32_t slot)
{
    struct bb__req *r = bb__session_req(c, slot);
    int st = r ? atomic_load_explicit(&r->state, memory_order_relaxed) : BB__REQ_IDLE;
    if (st != BB__REQ_SUBMITTED && st != BB__REQ_QUEUED && st != BB__REQ_GROUPED)
        return; /* running (finishes normally) or already complete */
    struct bb__model *m = w->route[r->model];
    uint32_t sub = atomic_load_explicit(&r->sub, memory_order_relaxed);
    if (m->w == w) {
        bb__batcher_cancel(m, r, sub);
    } else if (r->cancel_sub != sub) {
        /* One message a submission: a client that repeats the cancel while
         * its home is busy (a batch on its dispatcher) grew that home's
         * mailbox by a message each, without bound. The model travels with
         * it: by the time it arrives r may be another's. */
        r->cancel_sub = sub;
        bb__mailbox_post(w, m->w, BB__MSG_CANCEL, r, sub, (uint16_t)m->id);
    }
}

int bb__intake_drain(struct bb__worker *w, struct bb__client *c, uint64_t now)
{
    uint32_t n = bb__sq_ready(&c->sq, DRAIN_BUDGET);
    if (n == 0) {
        c->sq_empty_ns = now;
        return 0;
    }
    /* The descriptors were just written on the client's core: start all the
     * cache-line transfers at once instead of one miss per request. */
    for (uint32_t i = 0; i < n && i < 32; i++) {
        uint32_t slot = bb__sq_peek(&c->sq, i) & BB_SQE_SLOT_MASK;
        if (slot < c->nslots)
            __builtin_prefetch(&c->slots[slot]);
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t e = bb__sq_peek(&c->sq, i);
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
    bb__sq_consume(&c->sq, n);
    if (n < DRAIN_BUDGET) /* else entries wait, maybe older than now */
        c->sq_empty_ns = now;
    return (int)n;
}
