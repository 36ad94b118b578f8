/* Scheduling against a real broker: the starvation guard (max_starvation_us):
 * a low request under a flood of critical ones still runs, the control
 * without the guard, and promoted requests never overtake older critical
 * ones.
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <sys/mman.h>

#include "sched_util.h"

TestSuite(sched_starvation, .fini = sch_fini, .timeout = 120);

/* A flood of critical requests from another process keeps the critical level
 * non-empty for 1.5 s (64 in flight: a backlog of ~300 ms, so a flood
 * process that is descheduled for a while still leaves it stocked); one LOW request is submitted into it. Returns when the
 * LOW request completed, and the time the flood stopped resubmitting. */
static void low_under_critical_flood(uint64_t *low_done_ns, uint64_t *flood_end_ns)
{
    struct flood_shared *sh = sch_shared_page(sizeof *sh);
    struct flood_arg fa = {.sh = sh, .model = "s", .prio = BB_PRIORITY_CRITICAL, .depth = 64,
                           .run_ns = 1500000000ull};
    pid_t pid = sch_spawn(sch_flood_main, &fa);
    sch_wait_flag(&sh->ready, 1, "the flood");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "s");
    sch_wait_queued(m, 8); /* the critical level is well stocked */
    bb_request *low = sch_req_new(m, 64, 64, 7);
    sch_submit(low, BB_PRIORITY_LOW, 0, 0, 7);
    cr_assert_eq(sch_finish(low, 30000), 0, "low request: %s", bb_strerror(bb_request_status(low)));
    *low_done_ns = bbt_now_ns();
    cr_assert(sch_echo_ok(low, 7));
    sch_reap_ok(pid, "flood");
    *flood_end_ns = atomic_load(&sh->end_ns);
    cr_assert(atomic_load(&sh->done) > 50, "the flood hardly ran (%llu completions)",
              (unsigned long long)atomic_load(&sh->done));
    bb_disconnect(c);
    munmap(sh, sizeof *sh);
}

Test(sched_starvation, low_request_runs_within_max_starvation)
{
    sch_start_cfg(SLOW_ONE("s", 5000, "max_starvation_us = 20000\n"));
    uint64_t low_done, flood_end;
    low_under_critical_flood(&low_done, &flood_end);
    cr_assert_lt(low_done, flood_end,
                 "the low request finished only %.1f ms after the critical flood stopped",
                 (double)(low_done - flood_end) / 1e6);
}

/* Control: without the guard the same flood starves it, so the test above
 * measures the guard and not a gap in the flood. */
Test(sched_starvation, without_starvation_guard_low_waits_for_the_flood)
{
    sch_start_cfg(SLOW_ONE("s", 5000, "max_starvation_us = 0\n"));
    uint64_t low_done, flood_end;
    low_under_critical_flood(&low_done, &flood_end);
    cr_assert_gt(low_done, flood_end, "the low request ran while critical requests waited");
}

/* The guard must not turn into an inversion: requests promoted for having
 * waited max_starvation_us are served "as if critical", so they must not
 * overtake a critical request that has waited longer than they have. A flood
 * of LOW requests whose backlog (64 x 5 ms) is far older than
 * max_starvation_us keeps the LOW head permanently "starved"; one CRITICAL
 * request must still run while the flood goes on. */
Test(sched_starvation, starved_requests_do_not_overtake_older_critical_ones)
{
    sch_start_cfg(SLOW_ONE("s", 5000, "max_starvation_us = 20000\n"));
    struct flood_shared *sh = sch_shared_page(sizeof *sh);
    struct flood_arg fa = {.sh = sh, .model = "s", .prio = BB_PRIORITY_LOW, .depth = 64,
                           .run_ns = 1500000000ull};
    pid_t pid = sch_spawn(sch_flood_main, &fa);
    sch_wait_flag(&sh->ready, 1, "the flood");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "s");
    sch_wait_queued(m, 32);
    bbt_msleep(30); /* the LOW head is now past max_starvation_us */
    bb_request *crit = sch_req_new(m, 64, 64, 7);
    sch_submit(crit, BB_PRIORITY_CRITICAL, 0, 0, 7);
    cr_assert_eq(sch_finish(crit, 30000), 0);
    uint64_t done = bbt_now_ns();
    cr_assert(sch_echo_ok(crit, 7));
    sch_reap_ok(pid, "flood");
    uint64_t flood_end = atomic_load(&sh->end_ns);
    cr_assert_lt(done, flood_end,
                 "the critical request waited until the LOW flood stopped: requests promoted by "
                 "max_starvation_us overtook it although they arrived after it");
    bb_disconnect(c);
    munmap(sh, sizeof *sh);
}
