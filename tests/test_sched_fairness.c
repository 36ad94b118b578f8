/* Scheduling against a real broker: fairness within a level: a light client
 * served through a flooding one's backlog (and the FIFO control), and the
 * starvation guard not undoing it.
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <sys/mman.h>

#include "sched_util.h"

TestSuite(sched_fairness, .fini = sch_fini, .timeout = 120);

/* A flooding process keeps 128 requests queued; the light client (this
 * process) sends 20 requests one at a time. For each, count how many flood
 * requests completed while it waited: with fair queueing it overtakes the
 * flood's backlog (a batch or two), in FIFO it waits for all of it. The
 * flood's requests carry their own timeout of flood_timeout_us (0: none).
 * Returns the median. */
static uint64_t flood_completions_per_light_request(uint32_t flood_timeout_us)
{
    struct flood_shared *sh = sch_shared_page(sizeof *sh);
    struct flood_arg fa = {.sh = sh, .model = "f", .prio = BB_PRIORITY_NORMAL, .depth = 128,
                           .run_ns = 60000000000ull, .timeout_us = flood_timeout_us};
    pid_t pid = sch_spawn(sch_flood_main, &fa);
    sch_wait_flag(&sh->ready, 1, "the flood");
    for (int i = 0; i < 5000 && atomic_load(&sh->done) < 200; i++)
        bbt_msleep(2); /* steady state: the flood's backlog is there */
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "f");
    bb_request *r = sch_req_new(m, 64, 64, 77);
    uint64_t d[20];
    for (int i = 0; i < 20; i++) {
        uint64_t before = atomic_load(&sh->done);
        sch_submit(r, BB_PRIORITY_NORMAL, 0, 0, 77);
        cr_assert_eq(sch_finish(r, 30000), 0);
        cr_assert(sch_echo_ok(r, 77));
        d[i] = atomic_load(&sh->done) - before;
    }
    atomic_store(&sh->stop, 1);
    sch_reap_ok(pid, "flood");
    bb_disconnect(c);
    munmap(sh, sizeof *sh);
    for (int i = 0; i < 20; i++) /* insertion sort */
        for (int j = i; j > 0 && d[j] < d[j - 1]; j--) {
            uint64_t t = d[j];
            d[j] = d[j - 1];
            d[j - 1] = t;
        }
    return d[10];
}

#define FAIR_MODEL(onoff, starve_us)                                                       \
    "[model.f]\nbackend = synthetic\nparam.batch_us = 4000\nparam.mode = sleep\n"          \
    "instances = 1\nmax_batch_size = 4\nmax_wait_us = 0\nfairness = " onoff "\n"          \
    "max_starvation_us = " #starve_us "\n"

Test(sched_fairness, light_client_is_served_through_a_flood)
{
    sch_start_cfg(FAIR_MODEL("on", 0));
    uint64_t median = flood_completions_per_light_request(0);
    cr_assert_leq(median, 32, "the light client waited for %llu flood requests (backlog 128)",
                  (unsigned long long)median);
}

/* Deadlines order a client's own round, not others': a flood whose every
 * request carries a far timeout (an hour) still gets one round in turn, and
 * the light client without one is served through it (it used to wait for
 * the whole backlog: every own deadline went before every request without). */
Test(sched_fairness, a_flood_with_far_deadlines_gets_no_precedence)
{
    sch_start_cfg(FAIR_MODEL("on", 0));
    uint64_t median = flood_completions_per_light_request(UINT32_MAX);
    cr_assert_leq(median, 32, "the light client waited for %llu flood requests (backlog 128)",
                  (unsigned long long)median);
}

/* Control: with fairness off the same light client queues behind the flood. */
Test(sched_fairness, without_fairness_light_client_waits_for_the_backlog)
{
    sch_start_cfg(FAIR_MODEL("off", 0));
    uint64_t median = flood_completions_per_light_request(0);
    cr_assert_geq(median, 64, "FIFO, yet the light client overtook the flood (%llu)",
                  (unsigned long long)median);
}

/* The starvation guard is about waiting behind *higher* levels. Here there is
 * one level only, and the flood's backlog (~128 ms) is older than
 * max_starvation_us: the guard must not take the flood's oldest requests
 * first and so turn fair queueing back into FIFO. */
Test(sched_fairness, starvation_guard_does_not_undo_fairness_within_a_level)
{
    sch_start_cfg(FAIR_MODEL("on", 20000));
    uint64_t median = flood_completions_per_light_request(0);
    cr_assert_leq(median, 32,
                  "the light client waited for %llu flood requests (backlog 128): requests "
                  "of its own level older than max_starvation_us were served first, in FIFO",
                  (unsigned long long)median);
}
