/* A model's queues: one binary heap per priority level, earliest deadline
 * first and arrival order among equal deadlines (requests without a deadline
 * carry UINT64_MAX, so they stay FIFO), plus one intrusive list of every
 * queued request in arrival order for the max_wait cut. Dispatcher-only. */
#include <stdlib.h>

#include "broker_internal.h"

static inline bool before(const struct bb__req *a, const struct bb__req *b)
{
    return a->deadline_ns != b->deadline_ns ? a->deadline_ns < b->deadline_ns : a->seq < b->seq;
}

int bb__heap_init(struct bb__heap *h, uint32_t cap)
{
    h->v = calloc(cap ? cap : 1, sizeof *h->v);
    h->n = 0;
    h->cap = cap;
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
    r->heap_pos = i;
}

static void sift_up(struct bb__heap *h, uint32_t i)
{
    struct bb__req *r = h->v[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!before(r, h->v[p]))
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
        if (c + 1 < h->n && before(h->v[c + 1], h->v[c]))
            c++;
        if (!before(h->v[c], r))
            break;
        place(h, i, h->v[c]);
        i = c;
    }
    place(h, i, r);
}

void bb__queue_push(struct bb__model *m, struct bb__req *r)
{
    struct bb__heap *h = &m->levels[r->prio - 1];
    bb_assert(h->n < h->cap, "a level heap holds at most max_queue requests");
    r->seq = m->seq++;
    h->v[h->n] = r;
    r->heap_pos = h->n++;
    sift_up(h, r->heap_pos);
    r->fifo_next = NULL;
    r->fifo_prev = m->fifo_tail;
    if (m->fifo_tail)
        m->fifo_tail->fifo_next = r;
    else
        m->fifo_head = r;
    m->fifo_tail = r;
    m->queued++;
}

struct bb__req *bb__queue_top(struct bb__model *m, int level)
{
    struct bb__heap *h = &m->levels[level];
    return h->n ? h->v[0] : NULL;
}

void bb__queue_remove(struct bb__model *m, struct bb__req *r)
{
    struct bb__heap *h = &m->levels[r->prio - 1];
    uint32_t i = r->heap_pos;
    bb_assert(i < h->n && h->v[i] == r, "a queued request sits where heap_pos says");
    struct bb__req *last = h->v[--h->n];
    if (last != r) {
        place(h, i, last);
        if (i > 0 && before(last, h->v[(i - 1) / 2]))
            sift_up(h, i);
        else
            sift_down(h, i);
    }
    if (r->fifo_prev)
        r->fifo_prev->fifo_next = r->fifo_next;
    else
        m->fifo_head = r->fifo_next;
    if (r->fifo_next)
        r->fifo_next->fifo_prev = r->fifo_prev;
    else
        m->fifo_tail = r->fifo_prev;
    r->fifo_prev = r->fifo_next = NULL;
    m->queued--;
}

uint64_t bb__queue_earliest_deadline(struct bb__model *m)
{
    uint64_t d = UINT64_MAX;
    for (int l = 0; l < 4; l++) {
        struct bb__req *t = bb__queue_top(m, l);
        if (t && t->deadline_ns < d)
            d = t->deadline_ns;
    }
    return d;
}
