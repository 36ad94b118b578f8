/* Deduplication (broker/dedup.c) on its own, with fake clients whose
 * segments are plain memory: a group forms on identical inputs and output
 * capacities, members ride on the representative and all get its result,
 * the cache answers within the TTL and forgets after it, the per-uid scope,
 * the memory budget, forced hash collisions, and a representative that
 * leaves its group to the most urgent member. Completions are read from the
 * fake segments' slots, as the clients would. */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "batchbroker/client.h"
#include "completion.h"
#include "dedup.h"
#include "model.h"
#include "session.h"
#include "util_internal.h"
#include "worker.h"

TestSuite(dedup, .timeout = 60);

#define NSLOTS 16
#define BUF 256

/* A client with a segment of its own: header, completion ring, slots, and a
 * heap of NSLOTS input and output buffers. */
struct fake_client {
    struct bb__client c;
    char *seg;
    struct bb__req *chunk[1];
};

static struct bb__worker w;
static struct bb__client *dirty[4];
static struct bb__model m;
static struct fake_client fc[2];

enum { OFF_CQ = 4096, OFF_SLOTS = 8192, OFF_HEAP = 16384 };

static void client_init(struct fake_client *f, uint32_t uid)
{
    memset(f, 0, sizeof *f);
    f->seg = calloc(1, OFF_HEAP + 2 * NSLOTS * BUF);
    cr_assert_not_null(f->seg);
    struct bb__client *c = &f->c;
    c->w = &w;
    c->uid = uid;
    c->refs = 1;
    c->hdr = (struct bb_shm_header *)f->seg;
    c->slots = (struct bb_shm_slot *)(f->seg + OFF_SLOTS);
    c->nslots = NSLOTS;
    c->cm = calloc(1, sizeof *c->cm);
    bb__ring_attach(&c->cq, f->seg + OFF_CQ, NSLOTS, 1);
    f->chunk[0] = calloc(BB__REQ_CHUNK, sizeof(struct bb__req));
    c->req_chunks = f->chunk;
}

static void setup_with(void (*cfg)(struct bb__model_config *))
{
    memset(&w, 0, sizeof w);
    w.dirty = dirty;
    memset(&m, 0, sizeof m);
    m.cfg.dedup = 1;
    m.cfg.dedup_cache_entries = 8;
    m.cfg.dedup_ttl_ms = 1000;
    m.cfg.dedup_memory_mb = 64;
    m.cfg.dedup_max_request_bytes = 1 << 20;
    m.cfg.dedup_scope = 1;
    if (cfg)
        cfg(&m.cfg);
    m.w = &w;
    bb__metrics_init(&m.metrics, "dedup", 32, bb__now_ns());
    cr_assert_eq(bb__queues_init(&m.q, 64, true, true, true), 0);
    cr_assert_eq(bb__dedup_init(&m), 0);
    client_init(&fc[0], 1000);
    client_init(&fc[1], 2000);
}

static void setup(void)
{
    setup_with(NULL);
}

static void teardown(void)
{
    bb__dedup_fini(&m);
    bb__queues_fini(&m.q);
    for (int i = 0; i < 2; i++) {
        free(fc[i].seg);
        free(fc[i].c.cm);
        free(fc[i].chunk[0]);
    }
}

/* A request of client k in slot s, as intake.c would file it. */
static struct bb__req *req(int k, uint32_t s, char fill, uint32_t out_cap, int level)
{
    struct bb__client *c = &fc[k].c;
    struct bb__req *r = &fc[k].chunk[0][s];
    memset(r, 0, sizeof *r);
    r->cl = c;
    r->slot = s;
    r->gen = 7;
    r->level = (uint8_t)level;
    r->prio = (uint8_t)(level + 1);
    char *in = fc[k].seg + OFF_HEAP + 2 * s * BUF;
    memset(in, fill, BUF);
    r->in = in;
    r->in_len = BUF;
    r->out = r->cl_out = in + BUF;
    r->out_cap = r->cl_out_cap = out_cap;
    r->bytes = BUF + out_cap;
    r->deadline_ns = UINT64_MAX;
    r->enq_ns = r->submit_ns = bb__now_ns();
    return r;
}

/* File r at time now as the intake and bb__enqueue (enqueue.c) do around
 * dedup_submit: a reference for every submission, given back when it is
 * answered. */
static int file_at(struct bb__req *r, uint64_t now)
{
    r->cl->refs++;
    int rc = bb__dedup_submit(&m, r, now);
    if (rc == 1 || rc == 0 || rc == 3) {
        r->cl->cm[0].inflight++;
        m.bytes += r->bytes;
    }
    if (rc == 0 || rc == 3) {
        atomic_store(&r->state, BB__REQ_QUEUED);
        bb__queue_push(&m.q, r, NULL);
        bb__deadline_push(&m.q, r);
    }
    return rc;
}

static int file(struct bb__req *r)
{
    return file_at(r, bb__now_ns());
}

/* The representative runs: out gets the echo of in, the group completes. */
static void run_group(struct bb__req *rep)
{
    bb__queue_remove(&m.q, rep);
    bb__deadline_remove(&m.q, rep);
    struct bb__group *g = rep->group;
    bb__dedup_dispatched(&m, g);
    memcpy(rep->out, rep->in, rep->in_len < rep->out_cap ? rep->in_len : rep->out_cap);
    uint64_t now = bb__now_ns();
    struct bb__stamps ts = {.cut = now, .start = now, .end = now, .done = now};
    bb__dedup_complete(&m, g, 0, rep->in_len, &ts, false);
}

static void expect_answer(int k, uint32_t s, int status, char fill, uint32_t len)
{
    struct bb_shm_slot *sl = &fc[k].c.slots[s];
    cr_assert_eq(atomic_load(&sl->shm_done_gen), 7, "client %d slot %u not completed", k, s);
    cr_assert_eq(sl->status, status, "client %d slot %u: status %d", k, s, sl->status);
    if (status)
        return;
    cr_assert_eq(sl->out_len, len);
    const char *out = fc[k].seg + OFF_HEAP + 2 * s * BUF + BUF;
    for (uint32_t i = 0; i < len; i++)
        cr_assert_eq(out[i], fill, "client %d slot %u byte %u", k, s, i);
}

Test(dedup, identical_requests_share_one_computation, .init = setup, .fini = teardown)
{
    struct bb__req *a = req(0, 0, 'x', BUF, 2), *b = req(0, 1, 'x', BUF, 2);
    cr_assert_eq(file(a), 0, "the first becomes the representative");
    cr_assert_neq(a->in, fc[0].seg + OFF_HEAP, "the backend reads a private copy");
    cr_assert_eq(file(b), 1, "the twin joins");
    cr_assert_eq(atomic_load(&b->state), BB__REQ_GROUPED);
    cr_assert_eq(m.q.queued, 1);
    cr_assert_eq(m.q.grouped, 1);
    /* The client scribbles on the representative's input: nothing changes. */
    memset(fc[0].seg + OFF_HEAP, 'z', BUF);
    run_group(a);
    cr_assert_eq(bb__ctr_get(&m.metrics.deduplicated), 1);
    expect_answer(0, 0, 0, 'x', BUF);
    expect_answer(0, 1, 0, 'x', BUF);
    cr_assert_eq(m.q.grouped, 0);
    cr_assert_eq(m.bytes, 0);
    cr_assert_eq(fc[0].c.refs, 1, "both requests let go of the client");
}

Test(dedup, different_inputs_or_capacities_do_not_merge, .init = setup, .fini = teardown)
{
    cr_assert_eq(file(req(0, 0, 'x', BUF, 2)), 0);
    cr_assert_eq(file(req(0, 1, 'y', BUF, 2)), 0, "another input");
    cr_assert_eq(file(req(0, 2, 'x', BUF - 1, 2)), 0, "another output capacity");
    cr_assert_eq(m.q.queued, 3);
    cr_assert_eq(bb__ctr_get(&m.metrics.deduplicated), 0);
    while (m.q.queued)
        run_group(bb__queue_top(&m.q, 2));
}

Test(dedup, cache_serves_within_the_ttl, .init = setup, .fini = teardown)
{
    struct bb__req *a = req(0, 0, 'c', BUF, 2);
    cr_assert_eq(file(a), 0);
    run_group(a);
    struct bb__req *b = req(0, 1, 'c', BUF, 2);
    cr_assert_eq(file(b), 2, "answered from the cache");
    expect_answer(0, 1, 0, 'c', BUF);
    /* A cached result fits a smaller capacity only if it is long enough. */
    struct bb__req *small = req(0, 2, 'c', 16, 2);
    cr_assert_eq(file(small), 2);
    expect_answer(0, 2, BB_ETOOBIG, 0, 0);
    /* After the TTL it is gone. */
    bb__dedup_expire_cache(&m, bb__now_ns() + 2000000000ull);
    cr_assert_eq(file(req(0, 3, 'c', BUF, 2)), 0, "computed again");
    run_group(bb__queue_top(&m.q, 2));
}

/* dedup_ttl_ms is reloadable: after a reload shortens it, a result cached
 * since is served for the new TTL only, though results cached before it
 * (with the old, longer TTL) are still in the cache. */
Test(dedup, cache_honours_a_shortened_ttl, .init = setup, .fini = teardown)
{
    m.cfg.dedup_ttl_ms = 86400000; /* a day */
    struct bb__req *a = req(0, 0, 'l', BUF, 2);
    cr_assert_eq(file(a), 0);
    run_group(a);
    m.cfg.dedup_ttl_ms = 1; /* the reload */
    struct bb__req *b = req(0, 1, 's', BUF, 2);
    cr_assert_eq(file(b), 0);
    run_group(b);
    uint64_t later = bb__now_ns() + 1000000000ull; /* a second on: only 's' is stale */
    cr_assert_eq(file_at(req(0, 2, 's', BUF, 2), later), 0,
                 "a result past its TTL was served from the cache");
    run_group(bb__queue_top(&m.q, 2));
    cr_assert_eq(file_at(req(0, 3, 'l', BUF, 2), later), 2, "within its TTL: served");
}

/* dedup_scope = uid: another user neither joins a group nor hits the cache. */
Test(dedup, users_do_not_share_by_default, .init = setup, .fini = teardown)
{
    struct bb__req *a = req(0, 0, 'u', BUF, 2);
    cr_assert_eq(file(a), 0);
    cr_assert_eq(file(req(1, 0, 'u', BUF, 2)), 0, "another uid: a group of its own");
    cr_assert_eq(m.q.queued, 2);
    run_group(a);
    cr_assert_eq(file(req(1, 1, 'u', BUF, 2)), 1, "its own group, still queued");
    run_group(bb__queue_top(&m.q, 2));
    expect_answer(1, 0, 0, 'u', BUF);
    expect_answer(1, 1, 0, 'u', BUF);
    cr_assert_eq(file(req(1, 2, 'u', BUF, 2)), 2, "now its own cache entry serves it");
}

static void global_scope(struct bb__model_config *c)
{
    c->dedup_scope = 0;
}

Test(dedup, global_scope_shares_across_users, .init = setup, .fini = teardown)
{
    bb__dedup_fini(&m);
    teardown();
    setup_with(global_scope);
    struct bb__req *a = req(0, 0, 'g', BUF, 2);
    cr_assert_eq(file(a), 0);
    cr_assert_eq(file(req(1, 0, 'g', BUF, 2)), 1);
    run_group(a);
    expect_answer(1, 0, 0, 'g', BUF);
    cr_assert_eq(file(req(1, 1, 'g', BUF, 2)), 2);
}

static void tiny_budget(struct bb__model_config *c)
{
    c->dedup_memory_mb = 0;
}

Test(dedup, over_budget_runs_undeduplicated, .init = setup, .fini = teardown)
{
    teardown();
    setup_with(tiny_budget);
    struct bb__req *a = req(0, 0, 'b', BUF, 2);
    cr_assert_eq(file(a), 3, "no room for a private copy");
    cr_assert_null(a->group);
    cr_assert_eq(a->in, fc[0].seg + OFF_HEAP, "reads the client's own buffer");
    bb__queue_remove(&m.q, a);
}

/* The representative leaves (its client died, or it was canceled): the most
 * urgent member left takes its place, at its own level. */
Test(dedup, leaving_representative_promotes_the_most_urgent, .init = setup, .fini = teardown)
{
    struct bb__req *lo = req(0, 0, 'p', BUF, 3);
    struct bb__req *hi = req(0, 1, 'p', BUF, 1);
    struct bb__req *mid = req(0, 2, 'p', BUF, 2);
    cr_assert_eq(file(lo), 0);
    cr_assert_eq(file(hi), 1);
    cr_assert_eq(bb__queue_top(&m.q, 1), hi, "a more urgent member represents the group");
    cr_assert_eq(file(mid), 1);
    bb__deadline_remove(&m.q, hi);
    bb__queue_remove(&m.q, hi);
    bb__dedup_leave(&m, hi);
    cr_assert_eq(bb__queue_top(&m.q, 2), mid, "normal outranks low");
    cr_assert_eq(m.q.queued, 1);
    cr_assert_eq(m.q.grouped, 1);
    run_group(mid);
    expect_answer(0, 0, 0, 'p', BUF);
    expect_answer(0, 2, 0, 'p', BUF);
}

/* deduplicated counts the computations saved: members answered by another
 * member's computation, and cache hits. Not a member that left before the
 * batch (timed out, canceled), nor one promoted that computed by itself. */
Test(dedup, deduplicated_counts_only_answers_from_another_computation, .init = setup,
     .fini = teardown)
{
    struct bb__req *a = req(0, 0, 'd', BUF, 2), *b = req(0, 1, 'd', BUF, 2);
    struct bb__req *c = req(0, 2, 'd', BUF, 2);
    cr_assert_eq(file(a), 0);
    cr_assert_eq(file(b), 1);
    cr_assert_eq(file(c), 1);
    bb__deadline_remove(&m.q, b); /* b times out */
    bb__dedup_leave(&m, b);
    bb__complete_one(&m, b, BB_ETIMEDOUT);
    bb__deadline_remove(&m.q, a); /* a is canceled: c takes its place */
    bb__queue_remove(&m.q, a);
    bb__dedup_leave(&m, a);
    bb__complete_one(&m, a, BB_ECANCELED);
    run_group(c);
    expect_answer(0, 2, 0, 'd', BUF);
    cr_assert_eq(bb__ctr_get(&m.metrics.deduplicated), 0, "c computed its own result");
    struct bb__req *x = req(1, 0, 'e', BUF, 2), *y = req(1, 1, 'e', BUF, 2);
    cr_assert_eq(file(x), 0);
    cr_assert_eq(file(y), 1);
    run_group(x);
    cr_assert_eq(file(req(1, 2, 'e', BUF, 2)), 2, "a cache hit");
    cr_assert_eq(bb__ctr_get(&m.metrics.deduplicated), 2, "y rode on x, and the cache hit");
    cr_assert_eq(m.bytes, 0);
}

static void collide(struct bb__model_config *c)
{
    (void)c;
    setenv("BATCHBROKER_TEST_DEDUP_COLLIDE", "1", 1);
}

/* With every hash alike, only the byte comparison tells inputs apart. */
Test(dedup, forced_collisions_never_merge_different_inputs, .init = setup, .fini = teardown)
{
    teardown();
    setup_with(collide);
    unsetenv("BATCHBROKER_TEST_DEDUP_COLLIDE");
    for (uint32_t s = 0; s < 8; s++)
        cr_assert_eq(file(req(0, s, (char)('a' + s), BUF, 2)), 0, "input %u", s);
    cr_assert_eq(file(req(0, 8, 'c', BUF, 2)), 1, "an equal input still joins");
    while (m.q.queued)
        run_group(bb__queue_top(&m.q, 2));
    for (uint32_t s = 0; s < 8; s++)
        expect_answer(0, s, 0, (char)('a' + s), BUF);
    expect_answer(0, 8, 0, 'c', BUF);
}
