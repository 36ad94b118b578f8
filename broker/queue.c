/* A model's queues, dispatcher-only.
 *
 * Per priority level, a binary heap in dispatch order: with priorities on,
 * requests that carry their own timeout first, earliest deadline first; then
 * by fair-queueing tag (round-robin across clients, weighted; the arrival
 * sequence when fairness is off); arrival breaks ties. Per level, an
 * intrusive list in arrival order finds the oldest request (max_wait,
 * starvation). One more heap orders every request that has a deadline, so
 * expiry looks only at its top. */
#include <stdlib.h>

#include "broker_internal.h"

static inline bool before(const struct bb__heap *h, const struct bb__req *a, const struct bb__req *b)
{
    if (h->which == 1)
        return a->deadline_ns != b->deadline_ns ? a->deadline_ns < b->deadline_ns : a->seq < b->seq;
    if (h->edf) {
        uint64_t da = a->own_deadline ? a->deadline_ns : UINT64_MAX;
        uint64_t db = b->own_deadline ? b->deadline_ns : UINT64_MAX;
        if (da != db)
            return da < db;
    }
    return a->ftag != b->ftag ? a->ftag < b->ftag : a->seq < b->seq;
}

static inline uint32_t *posp(const struct bb__heap *h, struct bb__req *r)
{
    return h->which ? &r->dl_pos : &r->pos;
}

int bb__heap_init(struct bb__heap *h, uint32_t cap, int which, bool edf)
{
    h->v = calloc(cap ? cap : 1, sizeof *h->v);
    h->n = 0;
    h->cap = cap;
    h->which = which;
    h->edf = edf;
    return h->v ? 0 : -1;
}

void bb__heap_fini(struct bb__heap *h)
{
    free(h->v);
    h->v = NULL;
}

static void place(struct bb__heap *h, uint32_t i, struct bb__req *r)
{
    h->v[i] = r;
    *posp(h, r) = i;
}

static void sift_up(struct bb__heap *h, uint32_t i)
{
    struct bb__req *r = h->v[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!before(h, r, h->v[p]))
            break;
        place(h, i, h->v[p]);
        i = p;
    }
    place(h, i, r);
}

static void sift_down(struct bb__heap *h, uint32_t i)
{
    struct bb__req *r = h->v[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && before(h, h->v[c + 1], h->v[c]))
            c++;
        if (!before(h, h->v[c], r))
            break;
        place(h, i, h->v[c]);
        i = c;
    }
    place(h, i, r);
}

static void heap_push(struct bb__heap *h, struct bb__req *r)
{
    bb_assert(h->n < h->cap, "a heap holds at most max_queue requests");
    h->v[h->n] = r;
    *posp(h, r) = h->n++;
    sift_up(h, h->n - 1);
}

static void heap_remove(struct bb__heap *h, struct bb__req *r)
{
    uint32_t i = *posp(h, r);
    bb_assert(i < h->n && h->v[i] == r, "a request sits in its heap where its index says");
    struct bb__req *last = h->v[--h->n];
    if (last != r) {
        place(h, i, last);
        if (i > 0 && before(h, last, h->v[(i - 1) / 2]))
            sift_up(h, i);
        else
            sift_down(h, i);
    }
    *posp(h, r) = UINT32_MAX;
}

void bb__queue_push(struct bb__model *m, struct bb__req *r)
{
    int l = r->level;
    r->seq = m->seq++;
    if (!m->cfg.fairness)
        r->ftag = r->fstart = r->seq;
    heap_push(&m->levels[l], r);
    r->fifo_next = NULL;
    r->fifo_prev = m->fifo_tail[l];
    if (m->fifo_tail[l])
        m->fifo_tail[l]->fifo_next = r;
    else
        m->fifo_head[l] = r;
    m->fifo_tail[l] = r;
    m->queued++;
}

struct bb__req *bb__queue_top(struct bb__model *m, int level)
{
    struct bb__heap *h = &m->levels[level];
    return h->n ? h->v[0] : NULL;
}

struct bb__req *bb__level_oldest(struct bb__model *m, int level)
{
    return m->fifo_head[level];
}

void bb__queue_remove(struct bb__model *m, struct bb__req *r)
{
    int l = r->level;
    heap_remove(&m->levels[l], r);
    if (r->fifo_prev)
        r->fifo_prev->fifo_next = r->fifo_next;
    else
        m->fifo_head[l] = r->fifo_next;
    if (r->fifo_next)
        r->fifo_next->fifo_prev = r->fifo_prev;
    else
        m->fifo_tail[l] = r->fifo_prev;
    r->fifo_prev = r->fifo_next = NULL;
    m->queued--;
}

void bb__deadline_push(struct bb__model *m, struct bb__req *r)
{
    if (r->deadline_ns != UINT64_MAX)
        heap_push(&m->deadlines, r);
    else
        r->dl_pos = UINT32_MAX;
}

void bb__deadline_remove(struct bb__model *m, struct bb__req *r)
{
    if (r->dl_pos != UINT32_MAX)
        heap_remove(&m->deadlines, r);
}

struct bb__req *bb__deadline_top(struct bb__model *m)
{
    return m->deadlines.n ? m->deadlines.v[0] : NULL;
}
