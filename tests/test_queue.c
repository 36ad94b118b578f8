/* A model's queues (broker/queue.c, struct bb__queues) on their own: the
 * dispatch order of a level (fair-queueing tags, own deadlines first within
 * a tag, then arrival; own deadlines first when fairness is off), arrival order for the oldest request, the deadline
 * heap, removal from anywhere, taking a whole level, growing, a long random
 * sequence checked against a plain sorted reference, and taking off the top
 * in rounds checked against taking one request at a time. */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "queue.h"

TestSuite(queue, .timeout = 60);

static struct bb__req reqs[4096];

static struct bb__req *mk(int i, int level, uint64_t ftag, uint64_t deadline, bool own)
{
    struct bb__req *r = &reqs[i];
    memset(r, 0, sizeof *r);
    r->slot = (uint32_t)i;
    r->level = (uint8_t)level;
    r->ftag = r->fstart = ftag;
    r->deadline_ns = deadline;
    r->own_deadline = own;
    r->bytes = 100 + (uint64_t)i;
    return r;
}

/* Take level's top n times: the slots must come in the order of want. */
static void expect_order(struct bb__queues *q, int level, const int *want, int n)
{
    for (int k = 0; k < n; k++) {
        struct bb__req *r = bb__queue_top(q, level);
        cr_assert_not_null(r, "pop %d: the level is empty", k);
        cr_assert_eq(r->slot, (uint32_t)want[k], "pop %d: slot %u", k, r->slot);
        bb__queue_remove(q, r);
    }
}

Test(queue, fairness_tags_then_arrival_within_a_level)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 16, true, true, true), 0);
    /* Tags 5, 3, 3, 9: the two 3s in arrival order, then 5, then 9. */
    uint64_t tags[] = {5, 3, 3, 9};
    for (int i = 0; i < 4; i++)
        bb__queue_push(&q, mk(i, 2, tags[i], UINT64_MAX, false), NULL);
    cr_assert_eq(q.queued, 4);
    cr_assert_eq(q.level_bytes[2], 100 + 101 + 102 + 103);
    int want[] = {1, 2, 0, 3};
    expect_order(&q, 2, want, 4);
    cr_assert_null(bb__queue_top(&q, 2));
    cr_assert_eq(q.queued, 0);
    cr_assert_eq(q.level_bytes[2], 0);
    bb__queues_fini(&q);
}

Test(queue, fairness_off_is_arrival_order)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 16, true, false, true), 0);
    uint64_t tags[] = {5, 3, 9, 1};
    for (int i = 0; i < 4; i++)
        bb__queue_push(&q, mk(i, 0, tags[i], UINT64_MAX, false), NULL);
    expect_order(&q, 0, (const int[]){0, 1, 2, 3}, 4);
    bb__queues_fini(&q);
}

/* With EDF on and fairness off, requests carrying their own timeout go
 * first, earliest deadline first; a deadline from the model's default does
 * not count. */
Test(queue, own_deadlines_first_with_edf)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 16, true, false, true), 0);
    bb__queue_push(&q, mk(0, 1, 1, UINT64_MAX, false), NULL);
    bb__queue_push(&q, mk(1, 1, 2, 900, true), NULL);
    bb__queue_push(&q, mk(2, 1, 3, 100, false), NULL); /* a default deadline: fair order */
    bb__queue_push(&q, mk(3, 1, 4, 500, true), NULL);
    int want[] = {3, 1, 0, 2};
    expect_order(&q, 1, want, 4);
    bb__queues_fini(&q);
    /* Without EDF (priorities off) the own deadline does not reorder. */
    cr_assert_eq(bb__queues_init(&q, 16, false, true, true), 0);
    bb__queue_push(&q, mk(0, 0, 1, UINT64_MAX, false), NULL);
    bb__queue_push(&q, mk(1, 0, 2, 100, true), NULL);
    cr_assert_eq(bb__queue_top(&q, 0)->slot, 0);
    bb__queues_fini(&q);
}

/* With fairness on, the fair-queueing tag comes first: an own deadline
 * orders the requests of one tag (a client's round), never a later round
 * ahead of an earlier one, so no timeout a client picks pushes the others
 * back. */
Test(queue, own_deadlines_order_only_their_round_with_fairness)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 16, true, true, true), 0);
    bb__queue_push(&q, mk(0, 1, 1, UINT64_MAX, false), NULL);
    bb__queue_push(&q, mk(1, 1, 2, 900, true), NULL);
    bb__queue_push(&q, mk(2, 1, 1, 100, true), NULL); /* the first round: ahead of slot 0 */
    bb__queue_push(&q, mk(3, 1, 4, 50, true), NULL);  /* the earliest, in a later round */
    int want[] = {2, 0, 1, 3};
    expect_order(&q, 1, want, 4);
    bb__queues_fini(&q);
}

/* A client's fair-queueing round is one heap entry: requests that join its
 * head wait behind it in arrival order and take its place when it goes, with
 * the round's key, ahead of a later round of smaller tag from elsewhere. */
Test(queue, rounds_share_one_heap_entry)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 16, true, true, true), 0);
    struct bb__req *a = mk(0, 2, 5, UINT64_MAX, false);
    cr_assert(bb__queue_push(&q, a, NULL), "the first of a round is a head");
    cr_assert_not(bb__queue_push(&q, mk(1, 2, 5, UINT64_MAX, false), a), "joins a's round");
    cr_assert_not(bb__queue_push(&q, mk(2, 2, 5, UINT64_MAX, false), a));
    cr_assert(bb__queue_push(&q, mk(3, 2, 7, UINT64_MAX, false), a), "another tag: its own round");
    cr_assert(bb__queue_push(&q, mk(4, 2, 6, UINT64_MAX, false), NULL));
    cr_assert_eq(q.levels[2].n, 3, "three rounds in the heap");
    cr_assert_eq(q.level_n[2], 5);
    int want[] = {0, 1, 2, 4, 3};
    for (int k = 0; k < 5; k++) {
        struct bb__req *r = bb__queue_top(&q, 2);
        cr_assert_eq(r->slot, (uint32_t)want[k], "pop %d: slot %u", k, r->slot);
        bb__queue_remove(&q, r);
    }
    cr_assert_eq(q.queued, 0);
    /* A member leaves from the middle of its round; the round goes on. */
    a = mk(0, 2, 5, UINT64_MAX, false);
    bb__queue_push(&q, a, NULL);
    bb__queue_push(&q, mk(1, 2, 5, UINT64_MAX, false), a);
    bb__queue_push(&q, mk(2, 2, 5, UINT64_MAX, false), a);
    bb__queue_remove(&q, &reqs[1]);
    bb__queue_remove(&q, a);
    cr_assert_eq(bb__queue_top(&q, 2), &reqs[2]);
    struct bb__req *out[4];
    cr_assert_eq(bb__queue_take_level(&q, 2, out), 1);
    bb__queues_fini(&q);
}

Test(queue, oldest_is_arrival_order_across_removals)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 16, true, true, true), 0);
    for (int i = 0; i < 5; i++)
        bb__queue_push(&q, mk(i, 3, (uint64_t)(10 - i), UINT64_MAX, false), NULL);
    cr_assert_eq(bb__level_oldest(&q, 3)->slot, 0);
    bb__queue_remove(&q, &reqs[0]);
    bb__queue_remove(&q, &reqs[2]);
    cr_assert_eq(bb__level_oldest(&q, 3)->slot, 1);
    bb__queue_remove(&q, &reqs[1]);
    cr_assert_eq(bb__level_oldest(&q, 3)->slot, 3);
    cr_assert_eq(bb__queue_top(&q, 3)->slot, 4, "the smallest tag left");
    cr_assert_null(bb__level_oldest(&q, 0));
    bb__queues_fini(&q);
}

Test(queue, deadline_heap)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 16, true, true, true), 0);
    uint64_t dl[] = {700, UINT64_MAX, 300, 500, UINT64_MAX, 100};
    for (int i = 0; i < 6; i++)
        bb__deadline_push(&q, mk(i, 0, 0, dl[i], true));
    cr_assert_eq(q.deadlines.n, 4, "no deadline, not in the heap");
    cr_assert_eq(reqs[1].dl_pos, UINT32_MAX);
    cr_assert_eq(bb__deadline_top(&q)->slot, 5);
    bb__deadline_remove(&q, &reqs[3]); /* from the middle */
    bb__deadline_remove(&q, &reqs[1]); /* not in it: no effect */
    cr_assert_eq(q.deadlines.n, 3);
    int want[] = {5, 2, 0};
    for (int k = 0; k < 3; k++) {
        struct bb__req *r = bb__deadline_top(&q);
        cr_assert_eq(r->slot, (uint32_t)want[k]);
        bb__deadline_remove(&q, r);
        cr_assert_eq(r->dl_pos, UINT32_MAX);
    }
    cr_assert_null(bb__deadline_top(&q));
    bb__queues_fini(&q);
}

Test(queue, take_level_empties_it)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 16, true, true, true), 0);
    for (int i = 0; i < 6; i++)
        bb__queue_push(&q, mk(i, i % 2, (uint64_t)i, UINT64_MAX, false), NULL);
    struct bb__req *out[16];
    cr_assert_eq(bb__queue_take_level(&q, 1, out), 3);
    bool seen[6] = {0};
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(out[k]->level, 1);
        cr_assert_eq(out[k]->pos, UINT32_MAX);
        seen[out[k]->slot] = true;
    }
    cr_assert(seen[1] && seen[3] && seen[5]);
    cr_assert_null(bb__queue_top(&q, 1));
    cr_assert_null(bb__level_oldest(&q, 1));
    cr_assert_eq(q.level_bytes[1], 0);
    cr_assert_eq(q.queued, 3, "level 0 untouched");
    cr_assert_eq(bb__queue_top(&q, 0)->slot, 0);
    bb__queues_fini(&q);
}

Test(queue, reserve_grows_and_keeps_order)
{
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, 2, true, true, true), 0);
    bb__queue_push(&q, mk(0, 0, 9, UINT64_MAX, false), NULL);
    bb__queue_push(&q, mk(1, 0, 8, UINT64_MAX, false), NULL);
    uint32_t have = 0;
    cr_assert_eq(bb__queues_reserve(&q, 64, &have), 0);
    cr_assert_eq(have, 64);
    for (int i = 2; i < 64; i++)
        bb__queue_push(&q, mk(i, 0, (uint64_t)(100 + i), UINT64_MAX, false), NULL);
    cr_assert_eq(bb__queue_top(&q, 0)->slot, 1);
    cr_assert_eq(bb__queues_reserve(&q, 8, &have), 0, "never shrinks");
    cr_assert_eq(have, 64);
    bb__queues_fini(&q);
}

/* ---- Random operations against a reference ---- */

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* A random record of n whose in-queue flag is `queued` (one exists). */
static int pick(const bool *in_q, bool queued, int n, uint64_t *s)
{
    int i;
    do
        i = (int)(rnd(s) % (uint64_t)n);
    while (in_q[i] != queued);
    return i;
}

/* The level order of queue.c, written out plainly (EDF on). */
static bool ref_before(const struct bb__req *a, const struct bb__req *b, bool tags_first)
{
    uint64_t ka = a->own_deadline ? a->deadline_ns : UINT64_MAX;
    uint64_t kb = b->own_deadline ? b->deadline_ns : UINT64_MAX;
    if (tags_first && a->ftag != b->ftag)
        return a->ftag < b->ftag;
    if (ka != kb)
        return ka < kb;
    if (a->ftag != b->ftag)
        return a->ftag < b->ftag;
    return a->seq < b->seq;
}

/* fair: fairness on; tags_first: the fair-queueing tag before own deadlines. */
static void random_operations(bool fair, bool tags_first)
{
    enum { N = 4096, STEPS = 200000 };
    struct bb__queues q = {0};
    cr_assert_eq(bb__queues_init(&q, N, true, fair, tags_first), 0);
    static bool in_q[N];
    memset(in_q, 0, sizeof in_q);
    uint64_t s = 88172645463325252ull;
    uint32_t count = 0;
    for (int step = 0; step < STEPS; step++) {
        uint64_t op = rnd(&s) % 10;
        if (op < 5 && count < N) {
            int i = pick(in_q, false, N, &s);
            bool own = rnd(&s) % 3 == 0;
            uint64_t dl = rnd(&s) % 4 ? 1000 + rnd(&s) % 100000 : UINT64_MAX;
            struct bb__req *r = mk(i, (int)(rnd(&s) % 4), rnd(&s) % 64, dl, own && dl != UINT64_MAX);
            bb__queue_push(&q, r, NULL);
            bb__deadline_push(&q, r);
            in_q[i] = true;
            count++;
        } else if (op < 8 && count) {
            int i = pick(in_q, true, N, &s);
            bb__queue_remove(&q, &reqs[i]);
            bb__deadline_remove(&q, &reqs[i]);
            in_q[i] = false;
            count--;
        } else if (count) {
            int l = (int)(rnd(&s) % 4);
            struct bb__req *top = bb__queue_top(&q, l);
            if (!top)
                continue;
            bb__queue_remove(&q, top);
            bb__deadline_remove(&q, top);
            in_q[top->slot] = false;
            count--;
        }
        if (step % 97 != 0)
            continue;
        /* Every level's top is the reference minimum; oldest is the lowest seq;
         * the deadline top is the earliest deadline. */
        cr_assert_eq(q.queued, count);
        for (int l = 0; l < 4; l++) {
            struct bb__req *best = NULL, *oldest = NULL;
            for (int i = 0; i < N; i++) {
                if (!in_q[i] || reqs[i].level != l)
                    continue;
                if (!best || ref_before(&reqs[i], best, fair && tags_first))
                    best = &reqs[i];
                if (!oldest || reqs[i].seq < oldest->seq)
                    oldest = &reqs[i];
            }
            cr_assert_eq(bb__queue_top(&q, l), best, "step %d level %d", step, l);
            cr_assert_eq(bb__level_oldest(&q, l), oldest, "step %d level %d", step, l);
        }
        struct bb__req *dtop = bb__deadline_top(&q);
        for (int i = 0; i < N; i++)
            if (in_q[i] && reqs[i].deadline_ns != UINT64_MAX)
                cr_assert_geq(reqs[i].deadline_ns, dtop->deadline_ns, "step %d", step);
    }
    bb__queues_fini(&q);
}

Test(queue, random_operations_match_a_reference)
{
    random_operations(true, true);
    random_operations(true, false); /* strategy = deadline */
    random_operations(false, true);
}

/* bb__queue_take_top against what it replaces: top, check the fit, remove,
 * one request at a time. Two queues get the same pushes (in rounds, as
 * enqueue.c joins them, an eighth with a deadline of their own that EDF puts
 * first), removals and takes; every take must give the same requests in the
 * same order and leave the same bytes. */
static struct bb__req twin_a[1024], twin_b[1024];

static struct bb__req *mk_in(struct bb__req *arr, int i, int level, uint64_t ftag, uint64_t bytes,
                             uint64_t deadline)
{
    struct bb__req *r = &arr[i];
    memset(r, 0, sizeof *r);
    r->slot = (uint32_t)i;
    r->level = (uint8_t)level;
    r->ftag = r->fstart = ftag;
    r->deadline_ns = deadline;
    r->own_deadline = deadline != UINT64_MAX;
    r->bytes = bytes;
    return r;
}

Test(queue, take_top_matches_taking_one_at_a_time)
{
    enum { N = 1024, CLIENTS = 8, STEPS = 100000 };
    struct bb__queues qa = {0}, qb = {0};
    /* EDF on: a request with its own deadline goes before the rounds and
     * joins none (its key differs), as with priorities on. */
    cr_assert_eq(bb__queues_init(&qa, N, true, true, true), 0);
    cr_assert_eq(bb__queues_init(&qb, N, true, true, true), 0);
    static bool in_q[N];
    memset(in_q, 0, sizeof in_q);
    struct bb__req *head_a[CLIENTS][4] = {{0}}, *head_b[CLIENTS][4] = {{0}};
    uint32_t left[CLIENTS][4] = {{0}};
    uint64_t tag[CLIENTS][4] = {{0}};
    uint64_t s = 0x9e3779b97f4a7c15ull;
    uint32_t count = 0, partial_rounds = 0;
    struct bb__req *got[64];
    for (int step = 0; step < STEPS; step++) {
        uint64_t op = rnd(&s) % 10;
        if (op < 6 && count < N) {
            int i = pick(in_q, false, N, &s);
            int c = (int)(rnd(&s) % CLIENTS), l = (int)(rnd(&s) % 4);
            if (left[c][l] == 0) { /* a new round, with a later tag */
                tag[c][l] += 1 + rnd(&s) % 3;
                left[c][l] = 1 + (uint32_t)(rnd(&s) % 8);
                head_a[c][l] = head_b[c][l] = NULL;
            }
            left[c][l]--;
            uint64_t bytes = 1 + rnd(&s) % 100;
            uint64_t dl = rnd(&s) % 8 == 0 ? 1000 + rnd(&s) % 1000 : UINT64_MAX;
            struct bb__req *ra = mk_in(twin_a, i, l, tag[c][l], bytes, dl);
            struct bb__req *rb = mk_in(twin_b, i, l, tag[c][l], bytes, dl);
            if (bb__queue_push(&qa, ra, head_a[c][l]))
                head_a[c][l] = ra;
            if (bb__queue_push(&qb, rb, head_b[c][l]))
                head_b[c][l] = rb;
            in_q[i] = true;
            count++;
        } else if (op < 7 && count) {
            int i = pick(in_q, true, N, &s);
            bb__queue_remove(&qa, &twin_a[i]);
            bb__queue_remove(&qb, &twin_b[i]);
            in_q[i] = false;
            count--;
        } else if (count) {
            int l = (int)(rnd(&s) % 4);
            uint32_t room = 1 + (uint32_t)(rnd(&s) % 64);
            uint64_t budget = rnd(&s) % 2 ? UINT64_MAX : rnd(&s) % 3000;
            bool any_first = rnd(&s) % 2;
            uint64_t bytes_a = budget, bytes_b = budget;
            uint32_t n = bb__queue_take_top(&qa, l, room, &bytes_a, any_first, got);
            uint32_t k = 0;
            for (struct bb__req *r; k < room && (r = bb__queue_top(&qb, l)); k++) {
                if (r->bytes > bytes_b && !(any_first && k == 0))
                    break;
                bytes_b = r->bytes < bytes_b ? bytes_b - r->bytes : 0;
                bb__queue_remove(&qb, r);
                cr_assert_lt(k, n, "step %d: take_top stopped after %u, one at a time took more",
                             step, n);
                cr_assert_eq(got[k]->slot, r->slot, "step %d: request %u differs", step, k);
                in_q[r->slot] = false;
            }
            cr_assert_eq(n, k, "step %d: take_top took %u, one at a time %u", step, n, k);
            cr_assert_eq(bytes_a, bytes_b, "step %d", step);
            count -= n;
            struct bb__req *top = bb__queue_top(&qa, l);
            if (n && top && top->rseq == got[n - 1]->rseq) /* the rest of its round */
                partial_rounds++;
        }
        cr_assert_eq(qa.queued, count);
        for (int l = 0; l < 4; l++) {
            cr_assert_eq(qa.level_n[l], qb.level_n[l]);
            cr_assert_eq(qa.level_bytes[l], qb.level_bytes[l]);
            struct bb__req *ta = bb__queue_top(&qa, l), *tb = bb__queue_top(&qb, l);
            cr_assert_eq(ta ? ta->slot : UINT32_MAX, tb ? tb->slot : UINT32_MAX, "step %d", step);
            struct bb__req *oa = bb__level_oldest(&qa, l), *ob = bb__level_oldest(&qb, l);
            cr_assert_eq(oa ? oa->slot : UINT32_MAX, ob ? ob->slot : UINT32_MAX, "step %d", step);
        }
    }
    /* The sequence took rounds apart as well as whole. */
    cr_assert_gt(partial_rounds, 100, "only %u takes split a round", partial_rounds);
    bb__queues_fini(&qa);
    bb__queues_fini(&qb);
}
