/* Scheduling against a real broker: deduplication: one computation for
 * identical inputs in flight, byte comparison under forced hash collisions,
 * the TTL cache, the per-request flag, the bounds on its private memory,
 * computing on a private copy, cancel and priority of group members, output
 * capacity, and the per-uid scope.
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sched_util.h"

TestSuite(sched_dedup, .fini = sch_fini, .timeout = 120);

struct dedup_child {
    struct flood_shared *sh;
    uint64_t id;
};

static int identical_main(void *p)
{
    struct dedup_child *a = p;
    bb_client *c;
    bb_model *m;
    bb_request *r;
    if (bbt_connect(&B, &c) != 0 || bb_model_open(c, "u", &m) != 0)
        return 10;
    if (bb_request_new(m, 256, 256, &r) != 0)
        return 11;
    bbt_fill(bb_request_input(r), 256, a->id);
    atomic_fetch_add(&a->sh->connected, 1);
    for (int i = 0; i < 5000 && !atomic_load(&a->sh->go); i++)
        bbt_msleep(2);
    if (bb_submit(r, NULL) != 0)
        return 12;
    if (bb_wait(r, 20000000000ll) != 0)
        return 13;
    if (!sch_echo_ok(r, a->id))
        return 14;
    bb_disconnect(c);
    return 0;
}

Test(sched_dedup, ten_identical_requests_reach_the_backend_once)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("u", 300000, "max_batch_size = 16\ndedup = on\ndedup_cache_entries = 0\n"),
              log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("u", 256, &c, &m);
    struct flood_shared *sh = sch_shared_page(sizeof *sh);
    struct dedup_child a = {.sh = sh, .id = 0x42};
    pid_t pids[10];
    for (int i = 0; i < 10; i++)
        pids[i] = sch_spawn(identical_main, &a);
    sch_wait_flag(&sh->connected, 10, "ten connected clients");
    atomic_store(&sh->go, 1);
    for (int i = 0; i < 10; i++)
        sch_reap_ok(pids[i], "identical-input client");
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    cr_assert_eq(sch_rec_count(nb, 0x42), 1, "the shared input reached the backend %d times",
                 sch_rec_count(nb, 0x42));
    cr_assert_eq(nb, 2, "%d batches ran (blocker + one)", nb);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.deduplicated, 9);
    cr_assert_eq(st.completed, 11);
    cr_assert_eq(st.batches, 2);
    munmap(sh, sizeof *sh);
    bb_disconnect(c);
}

/* With every hash colliding, only the byte comparison tells inputs apart:
 * different inputs are never merged, identical ones still are. */
Test(sched_dedup, forced_hash_collision_never_merges_different_inputs)
{
    const char *log = sch_rec_path();
    setenv("BATCHBROKER_TEST_DEDUP_COLLIDE", "1", 1); /* the broker inherits it */
    sch_start_cfg(REC_MODEL("u", 200000, "max_batch_size = 32\ndedup = on\n"), log);
    unsetenv("BATCHBROKER_TEST_DEDUP_COLLIDE");
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("u", 256, &c, &m);
    /* 8 distinct inputs of one length, and a second copy of the first 4. */
    bb_request *rs[12];
    uint64_t ids[12];
    for (int i = 0; i < 12; i++) {
        ids[i] = 0x100 + (uint64_t)(i < 8 ? i : i - 8);
        rs[i] = sch_req_new(m, 256, 256, ids[i]);
        sch_submit(rs[i], 0, 0, 0, ids[i]);
    }
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(sch_finish(rs[i], 10000), 0);
        cr_assert(sch_echo_ok(rs[i], ids[i]), "request %d got another input's output", i);
    }
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(sch_rec_count(nb, 0x100 + (uint64_t)i), 1, "input %#x computed %d times",
                     0x100 + i, sch_rec_count(nb, 0x100 + (uint64_t)i));
    cr_assert_eq(bbt_settled_stats(m).deduplicated, 4);
    bb_disconnect(c);
}

Test(sched_dedup, dedup_cache_serves_then_expires)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("u", 0, "dedup = on\ndedup_cache_entries = 16\ndedup_ttl_ms = 1000\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *x = sch_req_new(m, 256, 256, 0xA);
    bb_request *y = sch_req_new(m, 256, 256, 0xB);
    sch_submit(x, 0, 0, 0, 0);
    cr_assert_eq(sch_finish(x, 5000), 0);
    cr_assert(sch_echo_ok(x, 0xA));
    bbt_settled_stats(m);
    sch_submit(x, 0, 0, 0, 0); /* well within the TTL */
    cr_assert_eq(sch_finish(x, 5000), 0);
    cr_assert(sch_echo_ok(x, 0xA));
    sch_submit(y, 0, 0, 0, 0); /* another input is not served from the cache */
    cr_assert_eq(sch_finish(y, 5000), 0);
    cr_assert(sch_echo_ok(y, 0xB));
    int nb = sch_rec_read(log);
    cr_assert_eq(sch_rec_count(nb, 0xA), 1, "cached result recomputed");
    cr_assert_eq(sch_rec_count(nb, 0xB), 1);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.deduplicated, 1);
    cr_assert_eq(st.batches, 2);
    bbt_msleep(1500); /* past dedup_ttl_ms */
    sch_submit(x, 0, 0, 0, 0);
    cr_assert_eq(sch_finish(x, 5000), 0);
    cr_assert(sch_echo_ok(x, 0xA));
    nb = sch_rec_read(log);
    cr_assert_eq(sch_rec_count(nb, 0xA), 2, "expired entry still served");
    st = bbt_settled_stats(m);
    cr_assert_eq(st.deduplicated, 1);
    cr_assert_eq(st.batches, 3);
    bb_disconnect(c);
}

/* A child of uid 65534 submits input `id` once and checks its answer. */
static int other_uid_main(void *p)
{
    const uint64_t *id = p;
    if (setgid(65534) < 0 || setuid(65534) < 0)
        return 100;
    bb_client *c;
    bb_model *m;
    bb_request *r;
    if (bb_connect(B.sock, NULL, &c) != 0 || bb_model_open(c, "u", &m) != 0 ||
        bb_request_new(m, 256, 256, &r) != 0)
        return 10;
    bbt_fill(bb_request_input(r), 256, *id);
    if (bb_submit(r, NULL) != 0 || bb_wait(r, 20000000000ll) != 0)
        return 11;
    int ok = sch_echo_ok(r, *id);
    bb_disconnect(c);
    return ok ? 0 : 12;
}

/* Root computes X and Y; then another user submits X while X is cached and
 * Y while an identical Y is still running. With dedup_scope = uid (the
 * default) the other user shares neither: a faster answer would tell it what
 * root submitted. With dedup_scope = global both are shared. */
static int computations_of_x_and_y(const char *scope)
{
    const char *log = sch_rec_path();
    sch_start_cfg("[broker]\nallowed_uids = 0, 65534\n"
              REC_MODEL("u", 300000, "dedup = on\ndedup_cache_entries = 16\n"
                                     "dedup_ttl_ms = 600000\n%s"), log, scope);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *x = sch_req_new(m, 256, 256, 0x5a), *y = sch_req_new(m, 256, 256, 0x5b);
    sch_submit(x, 0, 0, 0, 1);
    cr_assert_eq(sch_finish(x, 10000), 0);
    cr_assert(sch_echo_ok(x, 0x5a));
    sch_submit(y, 0, 0, 0, 2);
    bbt_wait_dispatched(m, 2);
    static const uint64_t ids[2] = {0x5a, 0x5b};
    for (int i = 0; i < 2; i++)
        sch_reap_ok(sch_spawn(other_uid_main, (void *)&ids[i]), "uid 65534");
    cr_assert_eq(sch_finish(y, 10000), 0);
    cr_assert(sch_echo_ok(y, 0x5b));
    int nb = sch_rec_read(log);
    bb_disconnect(c);
    return sch_rec_count(nb, 0x5a) + sch_rec_count(nb, 0x5b);
}

Test(sched_dedup, dedup_is_scoped_per_uid_by_default)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to another uid");
    int n = computations_of_x_and_y("");
    cr_assert_eq(n, 4, "another user's X and Y were computed %d times in all, not 4: it shared "
                 "root's cached X or running Y", n);
}

Test(sched_dedup, dedup_scope_global_shares_across_uids)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to another uid");
    int n = computations_of_x_and_y("dedup_scope = global\n");
    cr_assert_eq(n, 2, "X and Y were computed %d times in all, not once each", n);
}

/* dedup = off: only requests flagged BB_SUBMIT_DEDUP are merged. */
Test(sched_dedup, per_request_dedup_flag)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = off\n"), log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("u", 256, &c, &m);
    bb_request *rs[5];
    for (int i = 0; i < 5; i++) {
        rs[i] = sch_req_new(m, 256, 256, 0x55);
        sch_submit(rs[i], 0, 0, i < 3 ? BB_SUBMIT_DEDUP : 0, (uint64_t)i);
    }
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(sch_finish(rs[i], 10000), 0);
        cr_assert(sch_echo_ok(rs[i], 0x55));
    }
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    cr_assert_eq(sch_rec_count(nb, 0x55), 3, "3 flagged -> 1 computation, 2 unflagged -> 2 (got %d)",
                 sch_rec_count(nb, 0x55));
    cr_assert_eq(bbt_settled_stats(m).deduplicated, 2);
    bb_disconnect(c);
}

/* Deduplication copies inputs into broker memory, so it is bounded: requests
 * over dedup_max_request_bytes, or that would take the private copies past
 * dedup_memory_mb, run as usual (each computed, nothing merged). */
Test(sched_dedup, dedup_is_bounded)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = on\n"
                                     "dedup_max_request_bytes = 4096\ndedup_memory_mb = 1\n"),
              log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("u", 256, &c, &m);
    /* Over dedup_max_request_bytes: 3 identical requests, 3 computations. */
    bb_request *big[3];
    for (int i = 0; i < 3; i++) {
        big[i] = sch_req_new(m, 4096, 4096, 0x66);
        sch_submit(big[i], 0, 0, 0, (uint64_t)i);
    }
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(sch_finish(big[i], 10000), 0);
        cr_assert(sch_echo_ok(big[i], 0x66));
    }
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    cr_assert_eq(sch_rec_count(nb, 0x66), 3, "got %d computations", sch_rec_count(nb, 0x66));
    cr_assert_eq(bbt_settled_stats(m).deduplicated, 0);
    bb_disconnect(c);
}

Test(sched_dedup, dedup_memory_is_bounded)
{
    const char *log = sch_rec_path();
    /* 300 KiB + 300 KiB per group: the second distinct group would pass 1 MiB. */
    sch_start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = on\n"
                                     "dedup_max_request_bytes = 1M\ndedup_memory_mb = 1\n"
                                     "dedup_cache_entries = 0\n"),
              log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("u", 256, &c, &m);
    enum { SZ = 300 << 10 };
    bb_request *a[2], *b[2];
    for (int i = 0; i < 2; i++) {
        a[i] = sch_req_new(m, SZ, SZ, 0xa1);
        sch_submit(a[i], 0, 0, 0, 10 + (uint64_t)i);
    }
    for (int i = 0; i < 2; i++) {
        b[i] = sch_req_new(m, SZ, SZ, 0xb1);
        sch_submit(b[i], 0, 0, 0, 20 + (uint64_t)i);
    }
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(sch_finish(a[i], 10000), 0);
        cr_assert(sch_echo_ok(a[i], 0xa1));
        cr_assert_eq(sch_finish(b[i], 10000), 0);
        cr_assert(sch_echo_ok(b[i], 0xb1));
    }
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    cr_assert_eq(sch_rec_count(nb, 0xa1), 1, "the first pair shares one computation");
    cr_assert_eq(sch_rec_count(nb, 0xb1), 2, "the second pair does not fit the budget");
    cr_assert_eq(bbt_settled_stats(m).deduplicated, 1);
    bb_disconnect(c);
}

/* The shared computation reads the broker's private copy: a client that
 * scribbles on its input after submitting (which the API forbids) changes
 * nothing for the others that share the result. */
Test(sched_dedup, dedup_computes_on_a_private_copy)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = on\n"), log);
    bb_client *ca = bbt_connect_ok(&B, NULL), *cb = bbt_connect_ok(&B, NULL);
    bb_model *ma = bbt_open_ok(ca, "u"), *mb = bbt_open_ok(cb, "u");
    bb_request *blocker = sch_req_new(ma, 256, 256, 1);
    sch_submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(ma, 1);
    bb_request *a = sch_req_new(ma, 256, 256, 0x61);
    sch_submit(a, 0, 0, 0, 0);
    sch_wait_queued(ma, 1);
    bbt_fill(bb_request_input(a), 256, 0x77); /* behind the broker's back */
    bb_request *b = sch_req_new(mb, 256, 256, 0x61);
    sch_submit(b, 0, 0, 0, 0);
    cr_assert_eq(sch_finish(b, 10000), 0);
    cr_assert(sch_echo_ok(b, 0x61), "the other client's scribble reached this client's result");
    cr_assert_eq(sch_finish(a, 10000), 0);
    size_t len;
    const void *out = bb_request_output(a, &len);
    cr_assert(out && len == 256 && bbt_check(out, 256, 0x61));
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    cr_assert_eq(sch_rec_count(nb, 0x61), 1);
    cr_assert_eq(sch_rec_count(nb, 0x77), 0, "the backend read the client's live buffer");
    bb_disconnect(ca);
    bb_disconnect(cb);
}

/* Canceling the group's representative promotes a member, which still gets
 * the result. */
Test(sched_dedup, cancel_dedup_representative_keeps_the_member)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = on\n"), log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("u", 256, &c, &m);
    bb_request *a = sch_req_new(m, 256, 256, 0x62), *b = sch_req_new(m, 256, 256, 0x62);
    sch_submit(a, 0, 0, 0, 0);
    sch_submit(b, 0, 0, 0, 0);
    sch_wait_queued(m, 1);
    cr_assert_eq(bb_cancel(a), 0);
    cr_assert_eq(sch_finish(a, 5000), BB_ECANCELED);
    cr_assert_eq(sch_finish(b, 10000), 0);
    cr_assert(sch_echo_ok(b, 0x62));
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    cr_assert_eq(sch_rec_count(nb, 0x62), 1);
    bb_disconnect(c);
}

/* A critical request that joins an identical LOW request's group must not be
 * served at LOW: the shared computation runs before queued NORMAL work. */
Test(sched_dedup, dedup_member_lends_its_priority_to_the_group)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("u", 20000, "max_batch_size = 1\ndedup = on\nmax_starvation_us = 0\n"),
              log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("u", 64, &c, &m);
    bb_request *lowx = sch_req_new(m, 64, 64, 0x70);
    sch_submit(lowx, BB_PRIORITY_LOW, 0, 0, 0x70);
    bb_request *ns[3];
    for (int i = 0; i < 3; i++) {
        ns[i] = sch_req_new(m, 64, 64, 0x80 + (uint64_t)i);
        sch_submit(ns[i], BB_PRIORITY_NORMAL, 0, 0, 0x80 + (uint64_t)i);
    }
    bb_request *critx = sch_req_new(m, 64, 64, 0x70);
    sch_submit(critx, BB_PRIORITY_CRITICAL, 0, 0, 0x70);
    cr_assert_eq(sch_finish(critx, 10000), 0);
    cr_assert_eq(sch_finish(lowx, 10000), 0);
    cr_assert(sch_echo_ok(critx, 0x70) && sch_echo_ok(lowx, 0x70));
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(sch_finish(ns[i], 10000), 0);
        cr_assert(sch_echo_ok(ns[i], 0x80 + (uint64_t)i));
    }
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    cr_assert_eq(nb, 5, "%d batches", nb);
    cr_assert_eq(sch_rec_count(nb, 0x70), 1, "computed once");
    cr_assert_eq(sch_recs[1].ids[0], 0x70,
                 "the batch after the blocker ran %#llx, not the group a CRITICAL request "
                 "waits for (it ran as batch: LOW, behind the NORMAL ones)",
                 (unsigned long long)sch_recs[1].ids[0]);
    bb_disconnect(c);
}

/* The representative leaves (canceled): the most urgent member takes over,
 * not the latest joiner. Group X: H (high) first, then C (critical, becomes
 * the representative), then N (normal). C is canceled: of the members left
 * H is the most urgent, so X runs at high, before a later high request Y. */
Test(sched_dedup, dedup_promotes_the_most_urgent_member)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("v", 20000, "max_batch_size = 1\ndedup = on\nmax_starvation_us = 0\n"),
              log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("v", 64, &c, &m);
    bb_request *hx = sch_req_new(m, 64, 64, 0x90);   /* X at high */
    sch_submit(hx, BB_PRIORITY_HIGH, 0, 0, 0x90);
    bb_request *cx = sch_req_new(m, 64, 64, 0x90);   /* X at critical: represents */
    sch_submit(cx, BB_PRIORITY_CRITICAL, 0, 0, 0x90);
    bb_request *nx = sch_req_new(m, 64, 64, 0x90);   /* X at normal: latest joiner */
    sch_submit(nx, BB_PRIORITY_NORMAL, 0, 0, 0x90);
    cr_assert_eq(bb_cancel(cx), 0);
    cr_assert_eq(sch_finish(cx, 10000), BB_ECANCELED);
    bb_request *y = sch_req_new(m, 64, 64, 0xa0);    /* a later HIGH request */
    sch_submit(y, BB_PRIORITY_HIGH, 0, 0, 0xa0);
    cr_assert_eq(sch_finish(hx, 10000), 0);
    cr_assert_eq(sch_finish(nx, 10000), 0);
    cr_assert_eq(sch_finish(y, 10000), 0);
    cr_assert(sch_echo_ok(hx, 0x90) && sch_echo_ok(nx, 0x90) && sch_echo_ok(y, 0xa0));
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    cr_assert_eq(nb, 3, "%d batches", nb);
    cr_assert_eq(sch_recs[1].ids[0], 0x90, "X runs at high, before the later high request");
    cr_assert_eq(sch_recs[2].ids[0], 0xa0);
    bb_disconnect(c);
}

/* Dedup merges only requests of the same output capacity: one outcome
 * (ETOOBIG included) must be right for every member, and the batch byte
 * limit counts what the backend is given. */
Test(sched_dedup, dedup_respects_output_capacity_and_batch_bytes)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("w", 20000, "max_batch_size = 8\ndedup = on\nmax_batch_bytes = 1000\n"
                                    "max_starvation_us = 0\n"),
              log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("w", 64, &c, &m);
    bb_request *a = sch_req_new(m, 10, 10, 0xb0);     /* A: 10 in / 10 out */
    sch_submit(a, 0, 0, 0, 0xb0);
    bb_request *a2 = sch_req_new(m, 10, 900, 0xb0);   /* same input, 900 out: not merged */
    sch_submit(a2, 0, 0, 0, 0xb0);
    bb_request *b = sch_req_new(m, 10, 500, 0xc0);
    sch_submit(b, 0, 0, 0, 0xc0);
    cr_assert_eq(sch_finish(a, 10000), 0);
    cr_assert_eq(sch_finish(a2, 10000), 0);
    cr_assert_eq(sch_finish(b, 10000), 0);
    cr_assert(sch_echo_ok(a, 0xb0) && sch_echo_ok(a2, 0xb0) && sch_echo_ok(b, 0xc0));
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    unsigned items = 0;
    for (int i = 0; i < nb; i++) {
        cr_assert_leq(sch_recs[i].bytes, 1000, "batch %d held %zu bytes", i, sch_recs[i].bytes);
        items += sch_recs[i].n;
    }
    cr_assert_eq(items, 4, "A and its different-capacity twin are computed apart");
    bb_disconnect(c);
}

/* The adaptive controller's SLO feedback and score count completions
 * (bb_model_tuning's slo_violations: "completed requests slower than
 * latency_slo_us"). A deduplicated request completes through its group,
 * not as a batch entry of its own: every one of them must be counted, or
 * a model with dedup = on reports no violations whatever its latency, its
 * score says nothing was served, and its budget never shrinks. Each batch
 * here sleeps 3 ms against an SLO of 1 ms, so every request is late. */
Test(sched_dedup, deduplicated_requests_count_in_the_adaptive_slo)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("s", 3000, "dedup = on\ndedup_cache_entries = 0\n"
                                       "latency_slo_us = 1000\nadaptation_interval_ms = 10\n"),
                  log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "s");
    for (uint64_t id = 1; id <= 4; id++) {
        bb_request *r = sch_req_new(m, 64, 64, id);
        sch_submit(r, 0, 0, 0, id);
        cr_assert_eq(sch_finish(r, 10000), 0);
        cr_assert(sch_echo_ok(r, id));
        bb_request_free(r);
    }
    /* Read on another worker, the figures are the home's as published at
     * its next interval, which an idle home reaches within its longest
     * sleep (1 s): a bounded wait, not a timing. */
    struct bb_model_tuning t;
    for (int i = 0; i < 500; i++) {
        cr_assert_eq(bb_model_tuning(m, &t), 0);
        if (t.slo_violations >= 4)
            break;
        bbt_msleep(10);
    }
    cr_assert_eq(t.slo_violations, 4, "%llu of 4 late requests counted late",
                 (unsigned long long)t.slo_violations);
    bb_disconnect(c);
}
