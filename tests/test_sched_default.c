/* Scheduling against a real broker: the default batching (adaptive sizing),
 * which never holds a lone request, and its control, static batching, which
 * does. Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>

#include "sched_util.h"

TestSuite(sched_default, .fini = sch_fini, .timeout = 120);

/* With the default adaptive sizing a request that is alone at the broker is
 * never held for company: a client that waits for each answer before it
 * asks again gets every one at once, however long max_wait_us is (10 s
 * here; each round trip gets 5 s, a bound about the behaviour, not a
 * timing). The controller never gets to decide here (its first decision
 * would come after a minute): its plan is the starting one, batches of 32
 * with max_wait_us of wait, and only the cap (the most requests queued at
 * once: one) keeps the request from waiting. The dispatcher spins, so that
 * it often reads the client's next request before it has reaped the batch
 * that answered the last: counting that batch's request as well would let
 * the target grow to 2 and hold the request. */
Test(sched_default, a_lone_request_is_not_held_by_default)
{
    sch_start_cfg("[broker]\nspin_us = 1000000\n"
                  "[model.l]\nbackend = echo\nmax_batch_size = 64\nmax_wait_us = 10000000\n"
                  "adaptation_interval_ms = 60000\n");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "l");
    bb_request *r = sch_req_new(m, 64, 64, 0);
    uint64_t end = bbt_now_ns() + 1000000000ull;
    int rounds = 0;
    while (bbt_now_ns() < end || rounds < 100) {
        bbt_fill(bb_request_input(r), 64, (uint64_t)rounds);
        sch_submit(r, 0, 0, 0, (uint64_t)rounds);
        cr_assert_eq(sch_finish(r, 5000), 0);
        cr_assert(sch_echo_ok(r, (uint64_t)rounds));
        rounds++;
    }
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.batches, st.completed, "every batch held one request");
    cr_assert_eq(st.batch_target, 1, "the target follows the one request queued");
    struct bb_model_tuning t;
    cr_assert_eq(bb_model_tuning(m, &t), 0);
    cr_assert_eq(t.wait_us, 10000000, "the plan was to wait (%u us)", t.wait_us);
    bb_disconnect(c);
}

/* The control: with adaptive = off the same lone request waits for the
 * batch to fill (or max_wait_us), so the test above measures the default. */
Test(sched_default, static_batching_holds_a_lone_request)
{
    sch_start_cfg("[model.l]\nbackend = echo\nmax_batch_size = 4\nmax_wait_us = 10000000\n"
                  "adaptive = off\n");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "l");
    bb_request *r[4];
    r[0] = sch_req_new(m, 64, 64, 0);
    sch_submit(r[0], 0, 0, 0, 0);
    cr_assert_eq(bb_wait(r[0], 300000000ll), BB_ETIMEDOUT, "a lone request ran at once");
    for (int i = 1; i < 4; i++) {
        r[i] = sch_req_new(m, 64, 64, (uint64_t)i);
        sch_submit(r[i], 0, 0, 0, (uint64_t)i);
    }
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(sch_finish(r[i], 5000), 0);
        cr_assert(sch_echo_ok(r[i], (uint64_t)i));
    }
    cr_assert_eq(bbt_settled_stats(m).batches, 1, "the four ran as one batch");
    bb_disconnect(c);
}
