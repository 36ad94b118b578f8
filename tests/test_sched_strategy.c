/* Scheduling against a real broker: custom strategy plugins: one that is
 * obeyed, and the ones the broker refuses.
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <sys/wait.h>

#include "sched_util.h"

TestSuite(sched_strategy, .fini = sch_fini, .timeout = 120);

Test(sched_strategy, custom_strategy_plugin_is_obeyed)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("cs", 0, "max_batch_size = 2\nmax_starvation_us = 0\n"
                                 "strategy = " BB_STRATEGY_LOWFIRST "\nstrategy.min_queued = 3\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "cs");
    bb_request *crit = sch_req_new(m, 64, 64, 1), *high = sch_req_new(m, 64, 64, 2);
    sch_submit(crit, BB_PRIORITY_CRITICAL, 0, 0, 1);
    sch_submit(high, BB_PRIORITY_HIGH, 0, 0, 2);
    /* Two queued, the strategy wants three: nothing runs, though the
     * backend is idle (any built-in would have dispatched at once). */
    cr_assert_eq(bb_wait(crit, 200000000), BB_ETIMEDOUT, "dispatched with 2 queued");
    cr_assert_eq(bb_request_status(high), BB_EPENDING);
    /* A third: batch of 2 filled from LOW up, so the critical one stays. */
    bb_request *low = sch_req_new(m, 64, 64, 3);
    sch_submit(low, BB_PRIORITY_LOW, 0, 0, 3);
    cr_assert_eq(sch_finish(low, 5000), 0);
    cr_assert_eq(sch_finish(high, 5000), 0);
    cr_assert(sch_echo_ok(low, 3) && sch_echo_ok(high, 2));
    cr_assert_eq(bb_wait(crit, 200000000), BB_ETIMEDOUT, "one queued: must wait");
    /* Two NORMAL: three queued again; the NORMAL ones go before CRITICAL. */
    bb_request *n1 = sch_req_new(m, 64, 64, 4), *n2 = sch_req_new(m, 64, 64, 5);
    sch_submit(n1, BB_PRIORITY_NORMAL, 0, 0, 4);
    sch_submit(n2, BB_PRIORITY_NORMAL, 0, 0, 5);
    cr_assert_eq(sch_finish(n1, 5000), 0);
    cr_assert_eq(sch_finish(n2, 5000), 0);
    cr_assert_eq(bb_wait(crit, 200000000), BB_ETIMEDOUT);
    /* Two more CRITICAL: the first two critical ones run, one is left. */
    bb_request *c2 = sch_req_new(m, 64, 64, 6), *c3 = sch_req_new(m, 64, 64, 7);
    sch_submit(c2, BB_PRIORITY_CRITICAL, 0, 0, 6);
    sch_submit(c3, BB_PRIORITY_CRITICAL, 0, 0, 7);
    cr_assert_eq(sch_finish(crit, 5000), 0);
    cr_assert_eq(sch_finish(c2, 5000), 0);
    cr_assert(sch_echo_ok(crit, 1) && sch_echo_ok(c2, 6));
    cr_assert_eq(bb_wait(c3, 200000000), BB_ETIMEDOUT);
    cr_assert_eq(bb_cancel(c3), 0);
    cr_assert_eq(sch_finish(c3, 5000), BB_ECANCELED);

    int nb = sch_rec_read(log);
    cr_assert_eq(nb, 3, "%d batches", nb);
    static const uint64_t want_ids[3][2] = {{3, 2}, {4, 5}, {1, 6}};
    static const unsigned want_prios[3][2] = {{4, 2}, {3, 3}, {1, 1}};
    for (int b = 0; b < 3; b++) {
        cr_assert_eq(sch_recs[b].n, 2, "batch %d has %u requests", b, sch_recs[b].n);
        for (int i = 0; i < 2; i++) {
            cr_assert_eq(sch_recs[b].ids[i], want_ids[b][i], "batch %d item %d: id %llu", b, i,
                         (unsigned long long)sch_recs[b].ids[i]);
            cr_assert_eq(sch_recs[b].prios[i], want_prios[b][i]);
        }
    }
    bb_disconnect(c);
}

/* The two orders of a level with fairness on. Nine requests of one client
 * queue behind its blocker, held in the backend (its gate), the last with
 * its own timeout: the blocker and seven fill the client's first round
 * (fair_quantum 8), the eighth and the ninth its second. The default
 * strategy keeps the rounds, a deadline ordering only its own: the ninth
 * runs eighth, ahead of its round's other request. strategy = deadline
 * takes the earliest deadline across everything: the ninth runs first. */
static int position_of_the_timed_request(const char *strategy)
{
    const char *log = sch_rec_path(), *gate = sch_rec_path();
    sch_start_cfg(REC_MODEL("d", 0, "max_batch_size = 1\nstrategy = %s\nparam.gate = %s\n"),
                  log, strategy, gate);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("d", 64, &c, &m);
    bb_request *rs[9];
    for (int i = 0; i < 9; i++) {
        rs[i] = sch_req_new(m, 64, 64, 10 + (uint64_t)i);
        sch_submit(rs[i], 0, i == 8 ? 60000000 : 0, 0, 10 + (uint64_t)i);
    }
    sch_wait_queued(m, 9);
    int fd = open(gate, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    for (int i = 0; i < 9; i++)
        cr_assert_eq(sch_finish(rs[i], 5000), 0);
    int nb = sch_rec_read(log), pos = -1;
    cr_assert_eq(nb, 10, "%d batches", nb);
    for (int b = 1; b < nb; b++)
        if (sch_recs[b].ids[0] == 18)
            pos = b - 1;
    bb_disconnect(c);
    sch_fini();
    return pos;
}

Test(sched_strategy, deadline_strategy_orders_across_rounds_the_default_does_not)
{
    int pos = position_of_the_timed_request("throughput");
    cr_assert_eq(pos, 7, "a deadline jumped rounds: position %d", pos);
    cr_assert_eq(position_of_the_timed_request("deadline"), 0,
                 "strategy = deadline did not take the earliest deadline first");
}

/* A strategy that asks for a batch and then takes nothing (no built-in
 * does) stalls its model: the broker says so in its log, naming the
 * strategy, instead of leaving the requests to wait without a word. */
Test(sched_strategy, a_strategy_that_takes_nothing_is_reported)
{
    struct bbt_start so = {.config_text = "[model.t]\nbackend = synthetic\nstrategy = "
                                          BB_STRATEGY_TAKENONE "\n",
                           .log = true};
    cr_assert_eq(bbt_broker_start_ex(&B, &so), 0);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "t");
    bb_request *r = sch_req_new(m, 64, 64, 1);
    sch_submit(r, 0, 0, 0, 1);
    cr_assert_geq(bbt_log_wait(&B, "strategy takenone asked for a batch and took none", 1, 10000),
                  1, "no word of the stalled strategy in %s", B.log);
    cr_assert_eq(bb_request_status(r), BB_EPENDING);
    cr_assert_eq(bb_cancel(r), 0);
    cr_assert_eq(sch_finish(r, 5000), BB_ECANCELED, "the request still waits, cancelable");
    bb_disconnect(c);
}

/* The broker refuses a strategy it cannot trust, and the plugin's own
 * refusal of its strategy.* keys, instead of serving with something else. */
static void start_must_fail(const char *text)
{
    int rc = bbt_broker_start(&B, text, NULL);
    cr_assert_eq(rc, -1, "the broker started with:\n%s", text);
    cr_assert(WIFEXITED(B.exit_status) && WEXITSTATUS(B.exit_status) != 0,
              "the broker did not exit with an error (status %#x)", B.exit_status);
}

Test(sched_strategy, bad_strategies_are_refused)
{
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = " BB_STRATEGY_BADABI "\n");
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = " BB_STRATEGY_LOWFIRST "\n");
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = " BB_STRATEGY_LOWFIRST
                    "\nstrategy.min_queued = 0\n");
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = latency\n"
                    "strategy.min_queued = 3\n");
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = /nonexistent/strategy.so\n");
}

/* A strategy that oversteps every bound of the ABI (levels that do not
 * exist, more than `max`, take() on a full batch, a count it did not take)
 * still gets batches within max_batch_size and max_batch_bytes, and every
 * request runs exactly once. */
static void greedy_is_contained(const char *limits, unsigned most)
{
    const char *log = sch_rec_path(), *gate = sch_rec_path();
    sch_start_cfg(REC_MODEL("g", 0, "%sparam.gate = %s\nstrategy = " BB_STRATEGY_ROGUE
                                    "\nstrategy.mode = greedy\n"),
                  log, limits, gate);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("g", 32, &c, &m);
    enum { N = 13 };
    bb_request *rs[N];
    for (int i = 0; i < N; i++) {
        rs[i] = sch_req_new(m, 32, 32, 10 + (uint64_t)i);
        sch_submit(rs[i], 1 + i % 4, 0, 0, 10 + (uint64_t)i);
    }
    sch_wait_queued(m, N);
    int fd = open(gate, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(sch_finish(rs[i], 5000), 0);
        cr_assert(sch_echo_ok(rs[i], 10 + (uint64_t)i));
    }
    int nb = sch_rec_read(log);
    for (int b = 0; b < nb; b++)
        cr_assert_leq(sch_recs[b].n, most, "batch %d of %u requests (%s)", b, sch_recs[b].n, limits);
    for (int i = 0; i < N; i++)
        cr_assert_eq(sch_rec_count(nb, 10 + (uint64_t)i), 1, "request %d ran %d times", i,
                     sch_rec_count(nb, 10 + (uint64_t)i));
    bb_disconnect(c);
    sch_fini();
}

Test(sched_strategy, a_greedy_strategy_is_held_to_the_limits)
{
    greedy_is_contained("max_batch_size = 4\n", 4);
    greedy_is_contained("max_batch_size = 16\nmax_batch_bytes = 200\n", 3);
}

/* A strategy that never cuts, asking to be rechecked in the past: deadlines
 * still fire, and what has none waits, cancelable. */
Test(sched_strategy, deadlines_fire_under_a_strategy_that_never_cuts)
{
    sch_start_cfg("[model.n]\nbackend = synthetic\nstrategy = " BB_STRATEGY_ROGUE
                  "\nstrategy.mode = never\n%s", "");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "n");
    bb_request *timed = sch_req_new(m, 64, 64, 1), *open_ended = sch_req_new(m, 64, 64, 2);
    sch_submit(timed, 0, 50000, 0, 1);
    sch_submit(open_ended, 0, 0, 0, 2);
    cr_assert_eq(sch_finish(timed, 5000), BB_ETIMEDOUT);
    cr_assert_eq(bb_request_status(open_ended), BB_EPENDING);
    cr_assert_eq(bb_cancel(open_ended), 0);
    cr_assert_eq(sch_finish(open_ended, 5000), BB_ECANCELED);
    bb_disconnect(c);
}

/* A strategy whose init fills err to the last byte without a NUL: the
 * broker's message stops at the buffer's end (255 bytes of it), instead of
 * reading on through the stack. */
Test(sched_strategy, an_unterminated_init_error_is_cut_at_its_buffer)
{
    struct bbt_start so = {.config_text = "[model.e]\nbackend = synthetic\nstrategy = "
                                          BB_STRATEGY_ROGUE "\nstrategy.mode = errfill\n",
                           .log = true};
    cr_assert_eq(bbt_broker_start_ex(&B, &so), -1, "the broker started");
    char x[257];
    memset(x, 'X', sizeof x - 1);
    x[sizeof x - 1] = '\0';
    cr_assert_eq(bbt_log_count(&B, x + 1), 1, "no message of 255 bytes of err in %s", B.log);
    cr_assert_eq(bbt_log_count(&B, x), 0, "the message read past err's 256 bytes (%s)", B.log);
}
