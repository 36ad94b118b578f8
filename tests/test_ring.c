/* SPSC ring helpers (common/ring_internal.h): empty, full, wrap-around of the
 * free-running u32 counters past 2^32, the cached peer counter, and the
 * plausibility check that lets the broker detect a corrupt peer (-1). */
#include <criterion/criterion.h>

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "ring_internal.h"

#define CAP 16u

struct test_ring {
    _Alignas(128) struct bb_shm_ring hdr;
    uint32_t entries[1024];
};

_Static_assert(offsetof(struct test_ring, entries) == BB_SHM_RING_HDR_SIZE,
               "entries follow the ring header, as in the segment");

static struct test_ring *new_ring(uint32_t start_tail, uint32_t start_head)
{
    struct test_ring *r = aligned_alloc(128, sizeof *r);
    cr_assert(r);
    memset(r, 0, sizeof *r);
    atomic_store(&r->hdr.shm_tail, start_tail);
    atomic_store(&r->hdr.shm_head, start_head);
    return r;
}

static void attach_pair(struct test_ring *t, uint32_t cap, struct bb__ring *prod,
                        struct bb__ring *cons)
{
    bb__ring_attach(prod, t, cap, 1);
    bb__ring_attach(cons, t, cap, 0);
}

Test(ring, empty)
{
    struct test_ring *t = new_ring(0, 0);
    struct bb__ring p, c;
    attach_pair(t, CAP, &p, &c);
    cr_assert_eq(bb__ring_available(&c), 0);
    cr_assert_eq(bb__ring_space(&p), CAP);
    /* Written but not published: still empty for the consumer. */
    bb__ring_put(&p, 0, 42);
    cr_assert_eq(bb__ring_available(&c), 0);
    bb__ring_publish(&p, 1);
    cr_assert_eq(bb__ring_available(&c), 1);
    cr_assert_eq(bb__ring_peek(&c, 0), 42);
    bb__ring_consume(&c, 1);
    cr_assert_eq(bb__ring_available(&c), 0);
    cr_assert_eq(atomic_load(&t->hdr.shm_head), 1);
    cr_assert_eq(atomic_load(&t->hdr.shm_tail), 1);
    free(t);
}

Test(ring, full)
{
    struct test_ring *t = new_ring(0, 0);
    struct bb__ring p, c;
    attach_pair(t, CAP, &p, &c);
    for (uint32_t i = 0; i < CAP; i++) {
        cr_assert_eq(bb__ring_space(&p), CAP - i);
        bb__ring_put(&p, 0, 1000 + i);
        bb__ring_publish(&p, 1);
    }
    cr_assert_eq(bb__ring_space(&p), 0, "a ring with cap entries published is full");
    cr_assert_eq(bb__ring_available(&c), CAP);
    for (uint32_t i = 0; i < CAP; i++)
        cr_assert_eq(bb__ring_peek(&c, i), 1000 + i);
    /* Consuming one frees exactly one; the producer sees it after a reload. */
    bb__ring_consume(&c, 1);
    cr_assert_eq(bb__ring_space(&p), 1);
    bb__ring_put(&p, 0, 2000);
    bb__ring_publish(&p, 1);
    cr_assert_eq(bb__ring_space(&p), 0);
    /* The consumer's cached tail is a lower bound (reloaded only when it says
     * empty): it still reports the 15 it knew of, then the new one. */
    cr_assert_eq(bb__ring_available(&c), CAP - 1);
    for (uint32_t i = 0; i < CAP - 1; i++)
        cr_assert_eq(bb__ring_peek(&c, i), 1001 + i);
    bb__ring_consume(&c, CAP - 1);
    cr_assert_eq(bb__ring_available(&c), 1);
    cr_assert_eq(bb__ring_peek(&c, 0), 2000);
    free(t);
}

/* Start near UINT32_MAX so that the counters wrap to 0 in the middle. */
Test(ring, wraparound_past_2_pow_32)
{
    const uint32_t start = UINT32_MAX - 5;
    struct test_ring *t = new_ring(start, start);
    struct bb__ring p, c;
    attach_pair(t, CAP, &p, &c);
    cr_assert_eq(bb__ring_available(&c), 0);
    cr_assert_eq(bb__ring_space(&p), CAP);
    uint32_t next_put = 0, next_get = 0;
    /* Uneven chunks so that the wrap lands at every offset within a batch. */
    for (int round = 0; round < 200; round++) {
        int64_t space = bb__ring_space(&p);
        cr_assert(space >= 0 && space <= CAP, "space %lld", (long long)space);
        uint32_t n = (uint32_t)(round % 7) + 1;
        if (n > space)
            n = (uint32_t)space;
        for (uint32_t i = 0; i < n; i++)
            bb__ring_put(&p, i, next_put++);
        bb__ring_publish(&p, n);
        int64_t avail = bb__ring_available(&c);
        cr_assert(avail >= 0 && avail <= CAP, "avail %lld", (long long)avail);
        uint32_t take = (uint32_t)(round % 5) + 1;
        if (take > avail)
            take = (uint32_t)avail;
        for (uint32_t i = 0; i < take; i++)
            cr_assert_eq(bb__ring_peek(&c, i), next_get + i, "entry order across the wrap");
        next_get += take;
        bb__ring_consume(&c, take);
    }
    /* Drain the rest. */
    int64_t avail = bb__ring_available(&c);
    for (uint32_t i = 0; i < (uint32_t)avail; i++)
        cr_assert_eq(bb__ring_peek(&c, i), next_get + i);
    next_get += (uint32_t)avail;
    bb__ring_consume(&c, (uint32_t)avail);
    cr_assert_eq(next_get, next_put);
    uint32_t tail = atomic_load(&t->hdr.shm_tail);
    cr_assert_eq(tail, start + next_put, "counter wrapped modulo 2^32");
    cr_assert(tail < start, "the counter did wrap past 0 (tail %u)", tail);
    cr_assert_eq(bb__ring_available(&c), 0);
    cr_assert_eq(bb__ring_space(&p), CAP);
    free(t);
}

/* Full and empty exactly at the wrap: tail = 2^32 - 1 + ... */
Test(ring, full_and_empty_across_the_wrap)
{
    const uint32_t start = UINT32_MAX - CAP / 2;
    struct test_ring *t = new_ring(start, start);
    struct bb__ring p, c;
    attach_pair(t, CAP, &p, &c);
    for (uint32_t i = 0; i < CAP; i++)
        bb__ring_put(&p, i, i);
    bb__ring_publish(&p, CAP);
    cr_assert_eq(bb__ring_space(&p), 0);
    cr_assert_eq(bb__ring_available(&c), CAP);
    cr_assert_eq(atomic_load(&t->hdr.shm_tail), start + CAP);
    bb__ring_consume(&c, CAP);
    cr_assert_eq(bb__ring_available(&c), 0);
    cr_assert_eq(bb__ring_space(&p), CAP);
    free(t);
}

/* Attaching to a ring that already holds entries sees them (a reconnect, or
 * the broker attaching to a fresh client's ring). */
Test(ring, attach_to_nonempty)
{
    struct test_ring *t = new_ring(7, 3);
    for (uint32_t i = 3; i < 7; i++)
        t->entries[i & (CAP - 1)] = 100 + i;
    struct bb__ring p, c;
    attach_pair(t, CAP, &p, &c);
    cr_assert_eq(bb__ring_available(&c), 4);
    cr_assert_eq(bb__ring_peek(&c, 0), 103);
    cr_assert_eq(bb__ring_space(&p), CAP - 4);
    free(t);
}

/* A producer that adds several entries before publishing asks for the room
 * it needs: a cached head that shows too little is reloaded, not taken for
 * a full ring. */
Test(ring, space_for_reloads_a_stale_head)
{
    struct test_ring *t = new_ring(0, 0);
    struct bb__ring p, c;
    attach_pair(t, CAP, &p, &c);
    for (uint32_t i = 0; i < CAP - 2; i++)
        bb__ring_put(&p, i, i);
    bb__ring_publish(&p, CAP - 2);
    cr_assert_eq(bb__ring_space(&p), 2);
    cr_assert_eq(bb__ring_available(&c), CAP - 2);
    bb__ring_consume(&c, CAP - 2); /* the consumer caught up */
    cr_assert_eq(bb__ring_space(&p), 2, "bb__ring_space trusts its cache until it shows full");
    cr_assert_eq(bb__ring_space_for(&p, 2), 2, "enough room cached: no reload needed");
    cr_assert_eq(bb__ring_space_for(&p, 3), CAP, "too little cached: reloaded");
    free(t);
}

/* The consumer distrusts the producer: a tail more than cap ahead is corrupt. */
Test(ring, implausible_tail_detected)
{
    struct test_ring *t = new_ring(0, 0);
    struct bb__ring p, c;
    attach_pair(t, CAP, &p, &c);
    cr_assert_eq(bb__ring_available(&c), 0);
    atomic_store(&t->hdr.shm_tail, CAP + 1);
    cr_assert_eq(bb__ring_available(&c), -1, "tail cap+1 ahead of head");
    atomic_store(&t->hdr.shm_tail, CAP);
    struct bb__ring c2;
    bb__ring_attach(&c2, t, CAP, 0);
    cr_assert_eq(bb__ring_available(&c2), CAP, "exactly cap is plausible");
    /* Tail behind head (the producer "took back" entries): u32 difference huge. */
    struct test_ring *t2 = new_ring(UINT32_MAX - 2, UINT32_MAX - 2);
    struct bb__ring c3;
    bb__ring_attach(&c3, t2, CAP, 0);
    cr_assert_eq(bb__ring_available(&c3), 0);
    atomic_store(&t2->hdr.shm_tail, UINT32_MAX - 3);
    cr_assert_eq(bb__ring_available(&c3), -1, "tail behind head");
    /* Random garbage in the tail is almost always implausible. */
    uint32_t bad = 0;
    for (uint32_t v = 17; v < 1000000; v += 7919) {
        struct bb__ring c4;
        atomic_store(&t->hdr.shm_tail, 0);
        bb__ring_attach(&c4, t, CAP, 0);
        atomic_store(&t->hdr.shm_tail, v * 2654435761u);
        int64_t a = bb__ring_available(&c4);
        cr_assert(a >= -1 && a <= CAP, "available %lld out of range", (long long)a);
        bad += a == -1;
    }
    cr_assert(bad > 0);
    free(t);
    free(t2);
}

/* The producer distrusts the consumer too: a head ahead of the tail, or more
 * than cap behind it, is corrupt. */
Test(ring, implausible_head_detected)
{
    struct test_ring *t = new_ring(0, 0);
    struct bb__ring p;
    bb__ring_attach(&p, t, CAP, 1);
    for (uint32_t i = 0; i < CAP; i++)
        bb__ring_put(&p, i, i);
    bb__ring_publish(&p, CAP);
    /* Full; the head is reloaded and found ahead of our tail. */
    atomic_store(&t->hdr.shm_head, CAP + 5);
    cr_assert_eq(bb__ring_space(&p), -1, "head ahead of tail");
    /* A consumer head that runs past the producer's tail while the producer's
     * cached copy says "not full": detected at the latest on the next reload. */
    struct test_ring *t2 = new_ring(UINT32_MAX, UINT32_MAX);
    struct bb__ring p2;
    bb__ring_attach(&p2, t2, CAP, 1);
    atomic_store(&t2->hdr.shm_head, 100);
    int64_t s = bb__ring_space(&p2);
    /* Without a reload the cached head still says empty; fill and look again. */
    if (s >= 0) {
        cr_assert_eq(s, CAP);
        for (uint32_t i = 0; i < CAP; i++)
            bb__ring_put(&p2, i, i);
        bb__ring_publish(&p2, CAP);
        cr_assert_eq(bb__ring_space(&p2), -1, "reloaded head found implausible");
    }
    free(t);
    free(t2);
}

/* Every entry crosses exactly once, in order, between two threads; the
 * counters start just below 2^32 so that they wrap during the run. */
#define STRESS_N 2000000u
struct stress_arg {
    struct test_ring *t;
    uint32_t cap;
    uint32_t errors;
};

static void *stress_producer(void *a_)
{
    struct stress_arg *a = a_;
    struct bb__ring p;
    bb__ring_attach(&p, a->t, a->cap, 1);
    uint32_t v = 0;
    while (v < STRESS_N) {
        int64_t space = bb__ring_space(&p);
        if (space < 0) {
            a->errors++;
            return NULL;
        }
        if (space == 0) {
            sched_yield();
            continue;
        }
        uint32_t n = (uint32_t)space;
        if (n > STRESS_N - v)
            n = STRESS_N - v;
        for (uint32_t i = 0; i < n; i++)
            bb__ring_put(&p, i, v + i);
        bb__ring_publish(&p, n);
        v += n;
    }
    return NULL;
}

Test(ring, spsc_threads_in_order, .timeout = 60)
{
    struct test_ring *t = new_ring(UINT32_MAX - 1000, UINT32_MAX - 1000);
    struct stress_arg a = {.t = t, .cap = 64};
    struct bb__ring c;
    bb__ring_attach(&c, t, 64, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, stress_producer, &a), 0);
    uint32_t expect = 0;
    uint32_t wrong = 0;
    while (expect < STRESS_N) {
        int64_t avail = bb__ring_available(&c);
        cr_assert(avail >= 0 && avail <= 64, "available %lld", (long long)avail);
        if (avail == 0) {
            sched_yield();
            continue;
        }
        for (uint32_t i = 0; i < (uint32_t)avail; i++)
            wrong += bb__ring_peek(&c, i) != expect + i;
        expect += (uint32_t)avail;
        bb__ring_consume(&c, (uint32_t)avail);
    }
    pthread_join(th, NULL);
    cr_assert_eq(a.errors, 0);
    cr_assert_eq(wrong, 0, "%u entries out of order", wrong);
    cr_assert_eq(expect, STRESS_N);
    free(t);
}

/* ---- The submission ring (bb__sq): entries carry their lap ---- */

static void sq_put(struct test_ring *t, uint32_t pos, uint32_t lg, uint32_t slot)
{
    atomic_store((_Atomic uint32_t *)&t->entries[pos & ((1u << lg) - 1)],
                 slot | BB_SQE_LAP(pos, lg));
}

Test(ring, sq_ready_in_order_only)
{
    struct test_ring *t = new_ring(0, 0);
    struct bb__sq q;
    bb__sq_attach(&q, t, CAP);
    cr_assert_eq(bb__sq_ready(&q, CAP), 0, "a zeroed ring holds nothing");
    /* Positions 0 and 2 written, 1 not yet (a producer thread preempted). */
    sq_put(t, 0, 4, 7);
    sq_put(t, 2, 4, 9);
    cr_assert_eq(bb__sq_ready(&q, CAP), 1);
    cr_assert_eq(bb__sq_peek(&q, 0) & BB_SQE_SLOT_MASK, 7);
    sq_put(t, 1, 4, 8);
    cr_assert_eq(bb__sq_ready(&q, CAP), 3);
    cr_assert_eq(bb__sq_ready(&q, 2), 2, "at most max");
    bb__sq_consume(&q, 3);
    cr_assert_eq(atomic_load(&t->hdr.shm_head), 3);
    cr_assert_eq(bb__sq_ready(&q, CAP), 0);
    free(t);
}

/* An entry left from the previous lap is not ready, whatever the position,
 * including where the free-running counter wraps past 2^32. */
Test(ring, sq_stale_lap_is_not_ready)
{
    uint32_t starts[] = {0, CAP * 5, UINT32_MAX - 2, UINT32_MAX - CAP + 1};
    for (size_t k = 0; k < sizeof starts / sizeof starts[0]; k++) {
        struct test_ring *t = new_ring(0, starts[k]);
        struct bb__sq q;
        bb__sq_attach(&q, t, CAP);
        for (uint32_t i = 0; i < CAP; i++)
            sq_put(t, starts[k] + i - CAP, 4, i); /* the lap before */
        cr_assert_eq(bb__sq_ready(&q, CAP), 0, "start %u: a stale lap looked ready", starts[k]);
        for (uint32_t i = 0; i < 3 * CAP; i++) {
            sq_put(t, starts[k] + i, 4, i % CAP);
            cr_assert_eq(bb__sq_ready(&q, CAP), 1, "start %u, entry %u", starts[k], i);
            cr_assert_eq(bb__sq_peek(&q, 0) & BB_SQE_SLOT_MASK, i % CAP);
            bb__sq_consume(&q, 1);
        }
        free(t);
    }
}

/* Several producer threads publishing in any order; the consumer sees every
 * entry exactly once, in position order. */
struct sq_prod {
    struct test_ring *t;
    _Atomic uint32_t *reserve;
    uint32_t n;
};

static void *sq_producer(void *arg)
{
    struct sq_prod *p = arg;
    for (uint32_t i = 0; i < p->n; i++) {
        uint32_t pos = atomic_fetch_add(p->reserve, 1);
        while (pos - atomic_load(&p->t->hdr.shm_head) >= CAP)
            sched_yield();
        sq_put(p->t, pos, 4, pos & BB_SQE_SLOT_MASK);
    }
    return NULL;
}

Test(ring, sq_many_producers)
{
    struct test_ring *t = new_ring(0, 0);
    struct bb__sq q;
    bb__sq_attach(&q, t, CAP);
    _Atomic uint32_t reserve = 0;
    enum { THREADS = 4, EACH = 20000 };
    struct sq_prod p = {.t = t, .reserve = &reserve, .n = EACH};
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, sq_producer, &p);
    uint32_t got = 0;
    while (got < THREADS * EACH) {
        uint32_t n = bb__sq_ready(&q, CAP);
        for (uint32_t i = 0; i < n; i++)
            cr_assert_eq(bb__sq_peek(&q, i) & BB_SQE_SLOT_MASK, (got + i) & BB_SQE_SLOT_MASK);
        bb__sq_consume(&q, n);
        got += n;
        if (!n)
            sched_yield();
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    free(t);
}
