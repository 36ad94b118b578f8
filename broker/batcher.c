/* When to cut a batch and what goes in it.
 *
 * Expired requests leave first: within a level the heap is ordered by
 * deadline, so the expired ones are always at the top. Then, while an
 * executor is free, a batch is cut once max_batch_size requests wait or the
 * oldest has waited max_wait_us (or the broker is draining for shutdown),
 * and it is filled from the highest level down, earliest deadline first. */
#include "broker_internal.h"
#include "util_internal.h"

static uint32_t expire(struct bb__worker *w, struct bb__model *m, uint64_t now)
{
    uint32_t n = 0;
    for (int l = 0; l < 4; l++) {
        struct bb__req *r;
        while ((r = bb__queue_top(m, l)) && r->deadline_ns <= now) {
            bb__queue_remove(m, r);
            bb__complete_one(w, r, BB_ETIMEDOUT);
            n++;
        }
    }
    return n;
}

static struct bb__batch *cut(struct bb__model *m, uint64_t now)
{
    struct bb__batch *b = m->free_batches;
    bb_assert(b, "a free batch exists whenever an executor is free");
    m->free_batches = b->next;
    b->next = NULL;
    b->n = 0;
    b->rc = 0;
    b->errmsg[0] = 0;
    b->dispatch_ns = now;
    uint32_t max = m->cfg.max_batch_size;
    for (int l = 0; l < 4 && b->n < max; l++) {
        struct bb__req *r;
        while (b->n < max && (r = bb__queue_top(m, l))) {
            bb__queue_remove(m, r);
            atomic_store_explicit(&r->state, BB__REQ_RUNNING, memory_order_relaxed);
            uint32_t i = b->n++;
            b->ents[i] = (struct bb__entry){.cl = r->cl, .slot = r->slot, .gen = r->gen,
                                            .prio = r->prio, .submit_ns = r->submit_ns,
                                            .enq_ns = r->enq_ns};
            b->inputs[i] = (struct bb_view){.ptr = r->in, .len = r->in_len};
            b->outputs[i] = (struct bb_outbuf){.ptr = r->out, .cap = r->out_cap};
            b->prios[i] = r->prio;
        }
    }
    return b;
}

int bb__batcher_poll(struct bb__worker *w, struct bb__model *m, uint64_t now, uint64_t *next_ns)
{
    int progress = 0;
    if (m->queued == 0)
        return 0;
    progress += (int)expire(w, m, now);
    while (m->queued > 0) {
        bool free_exec = m->ninstances == 0 || m->running < m->ninstances;
        if (!free_exec)
            break;
        uint64_t cut_at = m->fifo_head->enq_ns + (uint64_t)m->cfg.max_wait_us * 1000;
        if (m->queued < m->cfg.max_batch_size && now < cut_at && !w->stopping) {
            if (cut_at < *next_ns)
                *next_ns = cut_at;
            break;
        }
        struct bb__batch *b = cut(m, now);
        progress += (int)b->n;
        if (m->ninstances == 0) {
            bb__batch_run(m, &m->inst[0], b);
            bb__batch_reap(w, b);
            now = bb__now_ns();
        } else {
            m->running++;
            bb__executor_submit(m, b);
        }
    }
    uint64_t d = bb__queue_earliest_deadline(m);
    if (d < *next_ns)
        *next_ns = d;
    return progress;
}
