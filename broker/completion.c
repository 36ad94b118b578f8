/* Completions to clients.
 *
 * Who does what: the model's home worker (or an executor) publishes the
 * slot; the worker that serves the client adds the completion-ring entry,
 * wakes its waiters and lets go of the reference (bb__completion_returned),
 * directly when it is the same worker, else after a BB__MSG_RET.
 *
 * A completion is the slot's status and output length, then shm_done_gen
 * with release (protocol.h). The completion-ring entry and the wake-up of a
 * sleeping waiter are collected per client during a pass and sent once at its
 * end (bb__completion_flush): one release store and at most one futex wake
 * and one eventfd write per client per pass, however many of its requests
 * completed. */
#include "completion.h"

#include <stdatomic.h>

#include "mailbox.h"
#include "model.h"
#include "session.h"
#include "uring.h"
#include "util_internal.h"
#include "worker.h"

/* A completion into the client's slot (no wake-up, no ring entry). */
static void publish(struct bb__client *cl, uint32_t slot, uint32_t gen, int status,
                    uint32_t out_len)
{
    struct bb_shm_slot *s = &cl->slots[slot];
    s->status = status;
    s->out_len = out_len;
    /* Pairs with the client's acquire load of shm_done_gen. */
    atomic_store_explicit(&s->shm_done_gen, gen, memory_order_release);
}

/* The io_uring this thread queues its futex wake-ups on, or NULL: a system
 * call each (executors, a backend's threads). A dispatcher's ring: the
 * wake-ups of a pass go out in one io_uring_enter at its end, and the clients
 * they wake preempt it once, not once per system call (64 sleeping clients
 * on the 2-vCPU VM: 1.6-1.8 M requests/s without, 2.0-2.1 M with). An
 * executor's own ring gained nothing measurable (synthetic_8clients). */
static _Thread_local struct io_uring *wake_ring;

void bb__wake_ring_use(struct io_uring *ring)
{
    wake_ring = ring;
}

void bb__wake_ring_flush(void)
{
    if (wake_ring && io_uring_sq_ready(wake_ring))
        io_uring_submit(wake_ring);
}

void bb__wake_client(struct bb__client *cl)
{
    /* Orders the publishes before the sleeper check (protocol.h). */
    atomic_thread_fence(memory_order_seq_cst);
    bb__wake_client_fenced(cl);
}

void bb__wake_client_fenced(struct bb__client *cl)
{
    struct bb_shm_header *h = cl->hdr;
    if (atomic_load_explicit(&h->shm_sleepers, memory_order_relaxed) == 0)
        return;
    atomic_fetch_add_explicit(&h->shm_wake_seq, 1, memory_order_release);
    if (wake_ring)
        bb__uring_futex_wake(wake_ring, &h->shm_wake_seq);
    else
        bb__futex_wake(&h->shm_wake_seq);
}

static void mark_dirty(struct bb__client *c)
{
    if (!c->dirty) {
        c->dirty = true;
        c->w->dirty[c->w->ndirty++] = c;
    }
}

/* Queue a completion-ring entry (the slot was published already). */
static void cq_add(struct bb__client *c, uint32_t slot)
{
    if (c->dead)
        return;
    int64_t space = bb__ring_space_for(&c->cq, c->cq_unpublished + 1);
    if (space < 0 || (uint32_t)space <= c->cq_unpublished) {
        /* Counted here, stored by bb__completion_tell_drops: a client that
         * never reads its CQ (bb_wait alone) drops every entry, and a locked
         * add on its header's line per request cost more than the entry. */
        c->cq_dropped++;
        return;
    }
    bb__ring_put(&c->cq, c->cq_unpublished++, slot);
    mark_dirty(c);
}

void bb__completion_tell_drops(struct bb__client *c)
{
    /* The broker alone writes it: a store of the running count, no add. */
    if (c->cq_dropped != c->cq_dropped_told) {
        c->cq_dropped_told = c->cq_dropped;
        atomic_store_explicit(&c->hdr->shm_cq_overflow, c->cq_dropped, memory_order_relaxed);
    }
}

void bb__answer(struct bb__client *c, uint32_t slot, uint32_t gen, int status, uint32_t out_len)
{
    publish(c, slot, gen, status, out_len);
    if (c->dead)
        return;
    c->wake_due = true;
    mark_dirty(c);
    cq_add(c, slot);
}

static void flush_client(struct bb__client *c)
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
    if (atomic_load_explicit(&c->hdr->shm_notify, memory_order_relaxed) && !c->notify_busy) {
        /* Never write(): the client holds this open file description too
         * and may clear its O_NONBLOCK and fill the counter, and a write()
         * would then block the dispatcher, every client of this worker with
         * it. io_uring writes at once where there is room (the pass's
         * submit, after the tail above) and otherwise waits for it off this
         * thread. One write in flight a client: the descriptor is readable
         * until it completes anyway. */
        static const uint64_t one = 1;
        c->notify_busy = true;
        bb__uring_write(&c->w->ring, c->notify, &one, sizeof one,
                        bb__ud_make(BB__UD_NOTIFY, c->idx, c->gen));
    }
}

void bb__completion_flush(struct bb__worker *w)
{
    for (uint32_t i = 0; i < w->ndirty; i++)
        flush_client(w->dirty[i]);
    w->ndirty = 0;
}

void bb__completion_returned(struct bb__client *c, uint32_t slot, unsigned flags)
{
    if (flags & BB__RET_CQ)
        cq_add(c, slot);
    if ((flags & BB__RET_WAKE) && !c->dead) {
        c->wake_due = true;
        mark_dirty(c);
    }
    if (flags & BB__RET_PUT)
        bb__session_put(c);
}

void bb__completion_return(struct bb__worker *home, struct bb__client *c, uint32_t slot,
                           unsigned flags)
{
    if (c->w == home)
        bb__completion_returned(c, slot, flags);
    else
        bb__mailbox_post(home, c->w, BB__MSG_RET, c, slot, (uint16_t)flags);
}

/* bb__completion_return with RET_CQ | RET_PUT for each of a batch's
 * requests, written out: through the general call (its flag tests, the wake
 * branch) it was 18 instructions a request more (callgrind, scale_sleep.ini,
 * 64 x 8). */
void bb__completion_return_batch(struct bb__worker *home, const struct bb__entry *ents,
                                 uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        const struct bb__entry *e = &ents[i];
        struct bb__client *c = e->cl;
        if (e->group)
            continue;
        if (c->w != home) {
            bb__mailbox_post(home, c->w, BB__MSG_RET, c, e->slot, BB__RET_CQ | BB__RET_PUT);
            continue;
        }
        cq_add(c, e->slot);
        bb__session_put(c);
    }
}

void bb__finish(struct bb__model *m, struct bb__req *r, int status, uint32_t out_len,
                const struct bb__stamps *t, bool profile)
{
    /* Everything of r first: once the completion is published the client
     * may resubmit the slot, and its worker rewrite r, at once. */
    struct bb__client *c = r->cl;
    uint32_t slot = r->slot, gen = r->gen;
    if (status == 0)
        bb__metrics_answered(&m->metrics, r->prio, r->submit_ns, t, profile);
    else
        bb__metrics_failed(&m->metrics, status, r->prio);
    /* Idle before done: the resubmission must find the record free (this
     * release pairs with the intake's acquire). */
    atomic_store_explicit(&r->state, BB__REQ_IDLE, memory_order_release);
    publish(c, slot, gen, status, out_len);
    bb__completion_return(m->w, c, slot, BB__RET_CQ | BB__RET_WAKE | BB__RET_PUT);
}

/* A queued request leaves its model's accounting (home side). */
static void unaccount(struct bb__model *m, struct bb__req *r)
{
    r->cl->cm[m->id].inflight--;
    m->bytes -= r->bytes;
}

void bb__complete_one(struct bb__model *m, struct bb__req *r, int status)
{
    unaccount(m, r);
    bb__finish(m, r, status, 0, NULL, false);
}

void bb__complete_dropped(struct bb__model *m, struct bb__req *r)
{
    bb__metrics_failed(&m->metrics, BB_EDISCONNECTED, r->prio);
    unaccount(m, r);
    struct bb__client *c = r->cl;
    uint32_t slot = r->slot;
    atomic_store_explicit(&r->state, BB__REQ_IDLE, memory_order_relaxed);
    bb__completion_return(m->w, c, slot, BB__RET_PUT);
}
