/* A model's queues, dispatcher-only.
 *
 * Per priority level, a binary heap in dispatch order. With fairness on, by
 * fair-queueing tag (round-robin across clients, weighted), and within one
 * tag (a client's round) requests that carry their own timeout first,
 * earliest deadline first (with priorities on): a deadline reorders its
 * client's own requests, never another client's round, so no timeout a
 * client picks pushes the others back. With fairness off, own deadlines
 * first (priorities on), then arrival. Arrival breaks ties. The heap holds rounds:
 * the requests of one client's fair-queueing round share their tags, so only
 * the first (the head) is a heap entry and the others wait behind it in
 * arrival order; taking a head promotes the next into its place with the
 * same key. A batch that takes 64 requests from a deep queue then does a
 * heap operation per round, not per request (at 64 clients the per-request
 * heap pops were a quarter of the dispatcher's instructions). Per level, an
 * intrusive list in arrival order finds the oldest request (max_wait,
 * starvation). One more heap orders every request that has a deadline, so
 * expiry looks only at its top. */
#include <stdlib.h>

#include "queue.h"

#include "log.h"

/* The heaps are generic over `which`; each operation dispatches once to a
 * copy specialised for its order, so the comparisons inline. */
#define BB__INLINE static inline __attribute__((always_inline))

/* which: BB__ORDER_* (queue.h). */
BB__INLINE bool before(int which, const struct bb__req *a, const struct bb__req *b)
{
    if (which == BB__ORDER_DEADLINE)
        return a->deadline_ns != b->deadline_ns ? a->deadline_ns < b->deadline_ns : a->seq < b->seq;
    if (which == BB__ORDER_FAIR_FIRST) {
        if (a->ftag != b->ftag)
            return a->ftag < b->ftag;
        return a->okey != b->okey ? a->okey < b->okey : a->rseq < b->rseq;
    }
    if (a->okey != b->okey)
        return a->okey < b->okey;
    return a->ftag != b->ftag ? a->ftag < b->ftag : a->rseq < b->rseq;
}

#define POS_NONE UINT32_MAX
#define POS_CHAINED (UINT32_MAX - 1) /* behind a round's head, not in the heap */

BB__INLINE void place(int which, struct bb__heap *h, uint32_t i, struct bb__req *r)
{
    h->v[i] = r;
    *(which == BB__ORDER_DEADLINE ? &r->dl_pos : &r->pos) = i;
}

BB__INLINE void sift_up(int which, struct bb__heap *h, uint32_t i)
{
    struct bb__req *r = h->v[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!before(which, r, h->v[p]))
            break;
        place(which, h, i, h->v[p]);
        i = p;
    }
    place(which, h, i, r);
}

BB__INLINE void sift_down(int which, struct bb__heap *h, uint32_t i)
{
    struct bb__req *r = h->v[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && before(which, h->v[c + 1], h->v[c]))
            c++;
        if (!before(which, h->v[c], r))
            break;
        place(which, h, i, h->v[c]);
        i = c;
    }
    place(which, h, i, r);
}

BB__INLINE void push_w(int which, struct bb__heap *h, struct bb__req *r)
{
    bb_assert(h->n < h->cap, "a heap holds at most max_queue requests");
    h->v[h->n] = r;
    *(which == BB__ORDER_DEADLINE ? &r->dl_pos : &r->pos) = h->n++;
    sift_up(which, h, h->n - 1);
}

/* Removing the top, the common case: walk the hole down to a leaf along the
 * smaller children (one comparison a level), drop the last element in and
 * sift it up; it rarely moves, so this does about half the comparisons of a
 * plain sift-down. */
BB__INLINE void pop_w(int which, struct bb__heap *h)
{
    struct bb__req *last = h->v[--h->n];
    uint32_t n = h->n;
    if (n == 0)
        return;
    uint32_t i = 0;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(which, h->v[c + 1], h->v[c]))
            c++;
        place(which, h, i, h->v[c]);
        i = c;
    }
    place(which, h, i, last);
    sift_up(which, h, i);
}

BB__INLINE void remove_w(int which, struct bb__heap *h, struct bb__req *r)
{
    uint32_t *pos = which == BB__ORDER_DEADLINE ? &r->dl_pos : &r->pos;
    uint32_t i = *pos;
    bb_assert(i < h->n && h->v[i] == r, "a request sits in its heap where its index says");
    if (i == 0) {
        pop_w(which, h);
    } else {
        struct bb__req *last = h->v[--h->n];
        if (last != r) {
            place(which, h, i, last);
            if (before(which, last, h->v[(i - 1) / 2]))
                sift_up(which, h, i);
            else
                sift_down(which, h, i);
        }
    }
    *pos = POS_NONE;
}

static void heap_push(struct bb__heap *h, struct bb__req *r)
{
    if (h->which == BB__ORDER_DEADLINE)
        push_w(BB__ORDER_DEADLINE, h, r);
    else if (h->which == BB__ORDER_FAIR_FIRST)
        push_w(BB__ORDER_FAIR_FIRST, h, r);
    else
        push_w(BB__ORDER_LEVEL, h, r);
}

static void heap_remove(struct bb__heap *h, struct bb__req *r)
{
    if (h->which == BB__ORDER_DEADLINE)
        remove_w(BB__ORDER_DEADLINE, h, r);
    else if (h->which == BB__ORDER_FAIR_FIRST)
        remove_w(BB__ORDER_FAIR_FIRST, h, r);
    else
        remove_w(BB__ORDER_LEVEL, h, r);
}

static void heap_pop(struct bb__heap *h)
{
    if (h->which == BB__ORDER_FAIR_FIRST)
        pop_w(BB__ORDER_FAIR_FIRST, h);
    else
        pop_w(BB__ORDER_LEVEL, h);
}

static int heap_init(struct bb__heap *h, uint32_t cap, int which, bool edf)
{
    h->v = calloc(cap ? cap : 1, sizeof *h->v);
    h->n = 0;
    h->cap = cap;
    h->which = which;
    h->edf = edf;
    return h->v ? 0 : -1;
}

/* Grow (never shrink) a heap's capacity, e.g. when a reload raises max_queue. */
static int heap_reserve(struct bb__heap *h, uint32_t cap)
{
    if (cap <= h->cap)
        return 0;
    struct bb__req **v = realloc(h->v, (size_t)cap * sizeof *v);
    if (!v)
        return -1;
    h->v = v;
    h->cap = cap;
    return 0;
}

int bb__queues_init(struct bb__queues *q, uint32_t cap, bool edf, bool fairness, bool tags_first)
{
    q->fairness = fairness;
    int rc = heap_init(&q->deadlines, cap, BB__ORDER_DEADLINE, false);
    for (int l = 0; l < 4; l++)
        rc |= heap_init(&q->levels[l], cap,
                        edf && fairness && tags_first ? BB__ORDER_FAIR_FIRST : BB__ORDER_LEVEL,
                        edf);
    return rc;
}

int bb__queues_reserve(struct bb__queues *q, uint32_t cap, uint32_t *have)
{
    int rc = heap_reserve(&q->deadlines, cap);
    uint32_t min = q->deadlines.cap;
    for (int l = 0; l < 4; l++) {
        rc |= heap_reserve(&q->levels[l], cap);
        if (q->levels[l].cap < min)
            min = q->levels[l].cap;
    }
    *have = min;
    return rc;
}

void bb__queues_fini(struct bb__queues *q)
{
    free(q->deadlines.v);
    q->deadlines.v = NULL;
    for (int l = 0; l < 4; l++) {
        free(q->levels[l].v);
        q->levels[l].v = NULL;
    }
}

bool bb__queue_push(struct bb__queues *q, struct bb__req *r, struct bb__req *join)
{
    int l = r->level;
    struct bb__heap *h = &q->levels[l];
    r->seq = q->seq++;
    r->round_ref = NULL;
    if (!q->fairness)
        r->ftag = r->fstart = r->seq;
    r->okey = h->edf && r->own_deadline ? r->deadline_ns : UINT64_MAX;
    q->level_bytes[l] += r->bytes;
    q->level_n[l]++;
    r->fifo_next = NULL;
    r->fifo_prev = q->fifo_tail[l];
    if (q->fifo_tail[l])
        q->fifo_tail[l]->fifo_next = r;
    else
        q->fifo_head[l] = r;
    q->fifo_tail[l] = r;
    q->queued++;
    r->rnext = NULL;
    /* join may be stale (taken, or its record reused): it counts only if it
     * is a head of this very heap with r's key. */
    if (join && join->pos < h->n && h->v[join->pos] == join && join->okey == r->okey &&
        join->ftag == r->ftag) {
        r->rhead = join;
        r->rseq = join->rseq;
        r->pos = POS_CHAINED;
        join->rtail->rnext = r;
        join->rtail = r;
        return false;
    }
    r->rhead = r->rtail = r;
    r->rseq = r->seq;
    heap_push(h, r);
    return true;
}

struct bb__req *bb__queue_top(struct bb__queues *q, int level)
{
    struct bb__heap *h = &q->levels[level];
    return h->n ? h->v[0] : NULL;
}

struct bb__req *bb__level_oldest(struct bb__queues *q, int level)
{
    return q->fifo_head[level];
}

/* next, the first member left of a round whose head went, takes the head's
 * place pos in the level heap (it has the same key); tail ends the round. */
/* head leaves its heap place: the client's record of its round follows to
 * next, the member that takes the place, or is cleared. Nothing reads a
 * record after it left: its slot may be submitted again at once, to another
 * model on another worker, which then writes it (enqueue.c passes the
 * record as the round to join). */
static void round_handover(struct bb__req *head, struct bb__req *next)
{
    struct bb__req **ref = head->round_ref;
    head->round_ref = NULL;
    if (ref && *ref == head) {
        *ref = next;
        if (next)
            next->round_ref = ref;
    }
}

static void round_promote(struct bb__heap *h, uint32_t pos, struct bb__req *next,
                          struct bb__req *tail)
{
    next->rtail = tail;
    for (struct bb__req *m = next; m; m = m->rnext)
        m->rhead = next;
    place(BB__ORDER_LEVEL, h, pos, next); /* a level heap: pos, whatever its order */
}

/* Take r out of its round: a member leaves the chain; a head hands its heap
 * place to the next member, or leaves the heap. */
static void round_remove(struct bb__heap *h, struct bb__req *r)
{
    if (r->pos == POS_CHAINED) {
        struct bb__req *head = r->rhead, *p = head;
        while (p->rnext != r)
            p = p->rnext;
        p->rnext = r->rnext;
        if (head->rtail == r)
            head->rtail = p;
    } else if (r->rnext) {
        round_handover(r, r->rnext);
        round_promote(h, r->pos, r->rnext, r->rtail);
    } else {
        round_handover(r, NULL);
        heap_remove(h, r);
    }
    r->pos = POS_NONE;
    r->rnext = r->rhead = r->rtail = NULL;
}

/* r leaves its level's arrival list. */
static inline void fifo_unlink(struct bb__queues *q, int l, struct bb__req *r)
{
    if (r->fifo_prev)
        r->fifo_prev->fifo_next = r->fifo_next;
    else
        q->fifo_head[l] = r->fifo_next;
    if (r->fifo_next)
        r->fifo_next->fifo_prev = r->fifo_prev;
    else
        q->fifo_tail[l] = r->fifo_prev;
    r->fifo_prev = r->fifo_next = NULL;
}

void bb__queue_remove(struct bb__queues *q, struct bb__req *r)
{
    int l = r->level;
    round_remove(&q->levels[l], r);
    fifo_unlink(q, l, r);
    q->level_bytes[l] -= r->bytes;
    q->level_n[l]--;
    q->queued--;
}

uint32_t bb__queue_take_top(struct bb__queues *q, int level, uint32_t room, uint64_t *bytes_left,
                            bool any_first, struct bb__req **out)
{
    struct bb__heap *h = &q->levels[level];
    uint32_t n = 0;
    uint64_t bytes = 0;
    while (n < room && h->n) {
        /* The top round's members, from its head, as long as they fit. The
         * next round may be anyone's: back to the heap for it. */
        struct bb__req *head = h->v[0], *tail = head->rtail, *r = head;
        while (r && n < room && (r->bytes <= *bytes_left || (any_first && n == 0))) {
            struct bb__req *next = r->rnext;
            *bytes_left = r->bytes < *bytes_left ? *bytes_left - r->bytes : 0;
            bytes += r->bytes;
            fifo_unlink(q, level, r);
            r->pos = POS_NONE;
            r->rnext = r->rhead = r->rtail = NULL;
            out[n++] = r;
            r = next;
        }
        if (r == head)
            break; /* its head does not fit */
        if (r) {
            round_handover(head, r);
            round_promote(h, 0, r, tail); /* the rest of the round */
            break;
        }
        round_handover(head, NULL);
        heap_pop(h);
    }
    q->level_bytes[level] -= bytes;
    q->level_n[level] -= n;
    q->queued -= n;
    return n;
}

void bb__deadline_push(struct bb__queues *q, struct bb__req *r)
{
    if (r->deadline_ns != UINT64_MAX)
        heap_push(&q->deadlines, r);
    else
        r->dl_pos = UINT32_MAX;
}

void bb__deadline_remove(struct bb__queues *q, struct bb__req *r)
{
    if (r->dl_pos != UINT32_MAX)
        heap_remove(&q->deadlines, r);
}

uint32_t bb__queue_take_level(struct bb__queues *q, int level, struct bb__req **out)
{
    struct bb__heap *h = &q->levels[level];
    uint32_t n = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        round_handover(h->v[i], NULL);
        for (struct bb__req *r = h->v[i], *next; r; r = next) {
            next = r->rnext;
            r->pos = POS_NONE;
            r->fifo_prev = r->fifo_next = NULL;
            r->rnext = r->rhead = r->rtail = NULL;
            out[n++] = r;
        }
    }
    h->n = 0;
    q->fifo_head[level] = q->fifo_tail[level] = NULL;
    q->level_bytes[level] = 0;
    q->level_n[level] = 0;
    q->queued -= n;
    return n;
}

struct bb__req *bb__deadline_top(struct bb__queues *q)
{
    return q->deadlines.n ? q->deadlines.v[0] : NULL;
}
