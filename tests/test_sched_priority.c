/* Scheduling against a real broker: priority levels and their order within
 * and across levels: highest level first, FIFO when priorities are off,
 * earliest deadline first within a level, and the deadline strategy across
 * levels. Completion order is read with bb_client_poll.
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>

#include "sched_util.h"

TestSuite(sched_priority, .fini = sch_fini, .timeout = 120);

/* Collect the n requests of `want` plus the blocker (tag 1) that ran ahead
 * of them, and check they completed in exactly that order. */
static void expect_order(bb_client *c, const uint64_t *want, int n)
{
    uint64_t order[64];
    cr_assert_leq(n + 1, 64);
    cr_assert_eq(sch_collect(c, n + 1, order, 20000), n + 1, "not every request completed");
    int j = 0;
    for (int i = 0; i <= n; i++) {
        if (order[i] == 1)
            continue; /* the blocker */
        cr_assert_eq(order[i], want[j], "completion %d: tag %llu, expected %llu", j,
                     (unsigned long long)order[i], (unsigned long long)want[j]);
        j++;
    }
}


Test(sched_priority, levels_are_served_highest_first)
{
    sch_start_cfg(SLOW_ONE("p", 20000, "max_starvation_us = 0\ndefault_priority = high\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "p");
    /* Queue in the worst order behind a running batch: LOW, NORMAL, DEFAULT
     * (= high here), HIGH, CRITICAL, three each. */
    static const int prios[] = {BB_PRIORITY_LOW, BB_PRIORITY_NORMAL, BB_PRIORITY_DEFAULT,
                                BB_PRIORITY_HIGH, BB_PRIORITY_CRITICAL};
    bb_request *blocker = sch_req_new(m, 64, 64, 1);
    sch_submit(blocker, BB_PRIORITY_NORMAL, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *rs[15];
    for (int g = 0; g < 5; g++)
        for (int k = 0; k < 3; k++) {
            uint64_t tag = 100 * (uint64_t)(g + 1) + (uint64_t)k;
            rs[g * 3 + k] = sch_req_new(m, 64, 64, tag);
            sch_submit(rs[g * 3 + k], prios[g], 0, 0, tag);
        }
    /* CRITICAL, then HIGH (DEFAULT ones first: they came first), NORMAL, LOW;
     * arrival order within each level. */
    static const uint64_t want[15] = {500, 501, 502, 300, 301, 302, 400, 401, 402,
                                      200, 201, 202, 100, 101, 102};
    expect_order(c, want, 15);
    for (int i = 0; i < 15; i++)
        cr_assert(sch_echo_ok(rs[i], bb_request_tag(rs[i])), "wrong output for tag %llu",
                  (unsigned long long)bb_request_tag(rs[i]));
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.completed, 16);
    cr_assert_eq(st.batches, 16);
    cr_assert_eq(st.completed_by_priority[BB_PRIORITY_CRITICAL], 3);
    cr_assert_eq(st.completed_by_priority[BB_PRIORITY_HIGH], 6, "DEFAULT counts as the model's "
                 "default_priority (high)");
    cr_assert_eq(st.completed_by_priority[BB_PRIORITY_NORMAL], 4);
    cr_assert_eq(st.completed_by_priority[BB_PRIORITY_LOW], 3);
    cr_assert(st.latency_p50_us > 0 && st.latency_p50_us <= st.latency_p95_us &&
                  st.latency_p95_us <= st.latency_p99_us,
              "percentiles p50 %.1f p95 %.1f p99 %.1f", st.latency_p50_us, st.latency_p95_us,
              st.latency_p99_us);
    cr_assert_gt(st.avg_queue_wait_us, 0);
    bb_disconnect(c);
}

Test(sched_priority, priorities_off_is_one_fifo)
{
    sch_start_cfg(SLOW_ONE("q", 20000, "priorities = off\n"));
    bb_client *c;
    bb_model *m;
    sch_blocked("q", 64, &c, &m);
    static const int prios[] = {BB_PRIORITY_LOW, BB_PRIORITY_CRITICAL, BB_PRIORITY_NORMAL,
                                BB_PRIORITY_HIGH, BB_PRIORITY_LOW, BB_PRIORITY_CRITICAL};
    bb_request *rs[6];
    for (int i = 0; i < 6; i++) {
        rs[i] = sch_req_new(m, 64, 64, 10 + (uint64_t)i);
        sch_submit(rs[i], prios[i], 0, 0, 10 + (uint64_t)i);
    }
    static const uint64_t fifo[6] = {10, 11, 12, 13, 14, 15};
    expect_order(c, fifo, 6);
    for (int i = 0; i < 6; i++)
        cr_assert(sch_echo_ok(rs[i], 10 + (uint64_t)i));
    bb_disconnect(c);
}

/* Within a level: requests with their own timeout first, earliest deadline
 * first; then the rest in arrival (fair) order. */
Test(sched_priority, earliest_deadline_first_within_a_level)
{
    sch_start_cfg(SLOW_ONE("e", 20000, "max_starvation_us = 0\n"));
    bb_client *c;
    bb_model *m;
    sch_blocked("e", 64, &c, &m);
    static const uint32_t timeouts[] = {0, 60000000, 30000000, 0, 45000000};
    bb_request *rs[5];
    for (int i = 0; i < 5; i++) {
        rs[i] = sch_req_new(m, 64, 64, 10 + (uint64_t)i);
        sch_submit(rs[i], BB_PRIORITY_NORMAL, timeouts[i], 0, 10 + (uint64_t)i);
    }
    static const uint64_t want[5] = {12, 14, 11, 10, 13};
    expect_order(c, want, 5);
    for (int i = 0; i < 5; i++)
        cr_assert(sch_echo_ok(rs[i], 10 + (uint64_t)i));
    bb_disconnect(c);
}

/* strategy = deadline: the earliest deadline goes first across levels. */
Test(sched_priority, deadline_strategy_orders_across_levels)
{
    sch_start_cfg(SLOW_ONE("d", 20000, "max_starvation_us = 0\nstrategy = deadline\n"));
    bb_client *c;
    bb_model *m;
    sch_blocked("d", 64, &c, &m);
    bb_request *crit = sch_req_new(m, 64, 64, 10);
    bb_request *low = sch_req_new(m, 64, 64, 11);
    bb_request *norm = sch_req_new(m, 64, 64, 12);
    sch_submit(crit, BB_PRIORITY_CRITICAL, 0, 0, 10);
    sch_submit(low, BB_PRIORITY_LOW, 30000000, 0, 11);
    sch_submit(norm, BB_PRIORITY_NORMAL, 20000000, 0, 12);
    static const uint64_t want[3] = {12, 11, 10};
    expect_order(c, want, 3);
    cr_assert(sch_echo_ok(crit, 10) && sch_echo_ok(low, 11) && sch_echo_ok(norm, 12));
    bb_disconnect(c);
}
