/* Scheduling against a real broker: bb_cancel before dispatch (BB_ECANCELED
 * at once) and after (the request finishes normally).
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>

#include "sched_util.h"

TestSuite(sched_cancel, .fini = sch_fini, .timeout = 120);

Test(sched_cancel, cancel_before_and_after_dispatch)
{
    sch_start_cfg(SLOW_ONE("k", 200000, ""));
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("k", 64, &c, &m);
    /* Queued behind the running batch: canceled. */
    bb_request *q = sch_req_new(m, 64, 64, 2);
    sch_submit(q, 0, 0, 0, 2);
    sch_wait_queued(m, 1);
    cr_assert_eq(bb_cancel(q), 0);
    cr_assert_eq(sch_finish(q, 5000), BB_ECANCELED);
    cr_assert_eq(bb_request_status(blocker), BB_EPENDING, "canceled at once, not at the next cut");
    /* Running: bb_cancel is accepted, the request finishes normally. */
    cr_assert_eq(bb_cancel(blocker), 0);
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    cr_assert(sch_echo_ok(blocker, 1));
    /* A canceled request can be submitted again and runs. */
    sch_submit(q, 0, 0, 0, 2);
    bbt_wait_dispatched(m, 3);
    cr_assert_eq(bb_cancel(q), 0);
    cr_assert_eq(sch_finish(q, 5000), 0);
    cr_assert(sch_echo_ok(q, 2));
    cr_assert_eq(bb_cancel(q), BB_ESTATE, "not pending any more");
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.completed, 2);
    cr_assert_eq(st.batches, 2);
    bb_disconnect(c);
}
