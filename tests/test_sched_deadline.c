/* Scheduling against a real broker: deadlines: a request's own timeout and a
 * model's default fire while a long batch runs, and drop_late fails early
 * what cannot finish in time.
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>

#include "sched_util.h"

TestSuite(sched_deadline, .fini = sch_fini, .timeout = 120);

/* A queued request's deadline fires on time even while the model's only
 * executor is busy with a long batch: both the request's own 5 ms timeout and
 * the model's 200 ms default end with BB_ETIMEDOUT while the 1 s batches
 * ahead of them still run (an order, not a stopwatch). The default leaves
 * the blocker, which has it too, time to reach its executor: a deadline
 * counts from the intake, and with two workers the request first travels to
 * its model's home (5 ms did not always do on a loaded machine). */
Test(sched_deadline, timeout_fires_while_a_long_batch_runs)
{
    sch_start_cfg(SLOW_ONE("d", 1000000, "") SLOW_ONE("dd", 1000000, "default_timeout_us = 200000\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "d");
    bb_model *md = bbt_open_ok(c, "dd");
    bb_request *blocker = sch_req_new(m, 64, 64, 1);
    bb_request *blocker_d = sch_req_new(md, 64, 64, 2);
    sch_submit(blocker, 0, 0, 0, 1);
    sch_submit(blocker_d, 0, 0, 0, 2); /* gets the default, but runs at once */
    bbt_wait_dispatched(m, 1);
    bbt_wait_dispatched(md, 1);

    bb_request *r = sch_req_new(m, 64, 64, 3);   /* its own 5 ms timeout */
    bb_request *rd = sch_req_new(md, 64, 64, 4); /* the model's 200 ms default */
    sch_submit(r, 0, 5000, 0, 3);
    sch_submit(rd, 0, 0, 0, 4);
    cr_assert_eq(sch_finish(r, 5000), BB_ETIMEDOUT);
    cr_assert_eq(sch_finish(rd, 5000), BB_ETIMEDOUT);
    cr_assert_eq(bb_request_status(blocker), BB_EPENDING,
                 "timeout_us = 5000 fired only after the 1 s batch ahead of it");
    cr_assert_eq(bb_request_status(blocker_d), BB_EPENDING,
                 "default_timeout_us = 200000 fired only after the 1 s batch ahead of it");
    /* Running requests are never expired: both blockers finish normally. */
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    cr_assert_eq(sch_finish(blocker_d, 5000), 0);
    cr_assert(sch_echo_ok(blocker, 1) && sch_echo_ok(blocker_d, 2));
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.timed_out, 1);
    cr_assert_eq(st.completed, 1);
    cr_assert_eq(bbt_settled_stats(md).timed_out, 1);
    bb_disconnect(c);
}

/* drop_late: once the broker knows a batch takes ~400 ms, a request with a
 * 300 ms deadline fails at once even though the backend is idle; without
 * drop_late the same request runs (and, running, finishes normally). The
 * margins let a request travel to another worker first (two workers). */
Test(sched_deadline, drop_late_fails_hopeless_requests_early)
{
    sch_start_cfg(SLOW_ONE("late", 400000, "drop_late = on\n") SLOW_ONE("keep", 400000, ""));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *late = bbt_open_ok(c, "late");
    bb_model *keep = bbt_open_ok(c, "keep");
    bb_request *w1 = sch_req_new(late, 64, 64, 1), *w2 = sch_req_new(keep, 64, 64, 2);
    sch_submit(w1, 0, 0, 0, 1); /* teaches the broker the batch time */
    sch_submit(w2, 0, 0, 0, 2);
    cr_assert_eq(sch_finish(w1, 5000), 0);
    cr_assert_eq(sch_finish(w2, 5000), 0);
    bbt_settled_stats(late);
    bbt_settled_stats(keep);

    bb_request *r1 = sch_req_new(late, 64, 64, 3), *r2 = sch_req_new(keep, 64, 64, 4);
    sch_submit(r1, 0, 300000, 0, 3);
    sch_submit(r2, 0, 300000, 0, 4);
    cr_assert_eq(sch_finish(r1, 5000), BB_ETIMEDOUT, "drop_late kept a request it cannot serve: %s",
                 bb_strerror(bb_request_status(r1)));
    cr_assert_eq(sch_finish(r2, 5000), 0, "without drop_late the request runs: %s",
                 bb_strerror(bb_request_status(r2)));
    cr_assert(sch_echo_ok(r2, 4));
    /* A deadline the backend can meet is kept. */
    bb_request *r3 = sch_req_new(late, 64, 64, 5);
    sch_submit(r3, 0, 2000000, 0, 5);
    cr_assert_eq(sch_finish(r3, 5000), 0);
    cr_assert(sch_echo_ok(r3, 5));
    cr_assert_eq(bbt_settled_stats(late).timed_out, 1);
    bb_disconnect(c);
}

/* instances = 0: deadlines fire only once the dispatcher gets back to the
 * queue (scheduling.md), but then they must. r1 and r2 queue together while
 * a batch runs on the dispatcher; r1 (critical) runs next for 100 ms, during
 * which r2's 10 ms deadline passes: r2 then fails with BB_ETIMEDOUT, without
 * running. The dispatcher used to cut r2's batch right after r1's ran inline,
 * in the same pass, without looking at the deadlines again. */
Test(sched_deadline, a_deadline_that_passes_during_an_inline_batch_is_not_run)
{
    sch_start_cfg("[model.d]\nbackend = synthetic\nparam.batch_us = 100000\nparam.mode = sleep\n"
                  "instances = 0\nmax_batch_size = 1\nmax_wait_us = 0\n");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "d");
    bb_request *blocker = sch_req_new(m, 64, 64, 1);
    bb_request *r1 = sch_req_new(m, 64, 64, 2), *r2 = sch_req_new(m, 64, 64, 3);
    sch_submit(blocker, BB_PRIORITY_CRITICAL, 0, 0, 1);
    bbt_msleep(20); /* the blocker runs on the dispatcher; the next two queue together */
    sch_submit(r1, BB_PRIORITY_CRITICAL, 0, 0, 2);
    sch_submit(r2, BB_PRIORITY_LOW, 10000, 0, 3);
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    cr_assert_eq(sch_finish(r1, 5000), 0);
    cr_assert_eq(sch_finish(r2, 5000), BB_ETIMEDOUT,
                 "a request whose deadline passed while another batch ran inline ran: %s",
                 bb_errname(bb_request_status(r2)));
    cr_assert_eq(bbt_settled_stats(m).timed_out, 1);
    bb_disconnect(c);
}
