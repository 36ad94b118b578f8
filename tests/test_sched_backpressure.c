/* Scheduling against a real broker: backpressure: BB_EBUSY at once at the
 * model's max_queue, a level's limit, a client's max_inflight_per_client, and
 * memory_limit_mb; a single request over the memory limit is BB_ETOOBIG.
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "sched_util.h"

TestSuite(sched_backpressure, .fini = sch_fini, .timeout = 120);

/* Submit n requests, return how many completed with 0 (outputs checked) and
 * how many with BB_EBUSY; nothing else is allowed. */
static void submit_batch_count(bb_model *m, bb_request **rs, int n, int prio, uint64_t id0)
{
    for (int i = 0; i < n; i++) {
        rs[i] = sch_req_new(m, 64, 64, id0 + (uint64_t)i);
        sch_submit(rs[i], prio, 0, 0, id0 + (uint64_t)i);
    }
}

static void count_outcomes(bb_request **rs, int n, uint64_t id0, int *ok, int *busy)
{
    *ok = *busy = 0;
    for (int i = 0; i < n; i++) {
        int st = sch_finish(rs[i], 20000);
        if (st == 0) {
            cr_assert(sch_echo_ok(rs[i], id0 + (uint64_t)i), "accepted request %d: wrong output", i);
            (*ok)++;
        } else {
            cr_assert_eq(st, BB_EBUSY, "request %d: %s", i, bb_strerror(st));
            (*busy)++;
        }
    }
}

Test(sched_backpressure, ebusy_at_the_model_limit)
{
    /* The blocker stays in the backend until the test opens the gate, so
     * "at once" needs no clock: the rejections must come while it is held. */
    const char *log = sch_rec_path(), *gate = sch_rec_path();
    sch_start_cfg(REC_MODEL("b", 0, "max_batch_size = 1\nmax_queue = 4\nparam.gate = %s\n"), log,
                  gate);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("b", 64, &c, &m);
    bb_request *rs[10];
    submit_batch_count(m, rs, 10, 0, 100);
    int answered = 0;
    for (int t = 0; t < 20000 && answered < 6; t++) {
        answered = 0;
        for (int i = 0; i < 10; i++)
            answered += bb_request_status(rs[i]) != BB_EPENDING;
        if (answered < 6)
            usleep(1000);
    }
    cr_assert_eq(answered, 6, "%d of the 10 answered while the blocker is held", answered);
    for (int i = 0; i < 10; i++) {
        int st = bb_request_status(rs[i]);
        cr_assert(st == BB_EPENDING || st == BB_EBUSY, "request %d: %s", i, bb_strerror(st));
    }
    cr_assert_eq(bb_request_status(blocker), BB_EPENDING);
    int fd = open(gate, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cr_assert(fd >= 0, "%s: %s", gate, strerror(errno));
    close(fd);
    int ok, busy;
    count_outcomes(rs, 10, 100, &ok, &busy);
    cr_assert_eq(ok, 4, "max_queue = 4 accepted %d", ok);
    cr_assert_eq(busy, 6);
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.rejected, 6);
    cr_assert_eq(st.completed, 5);
    bb_disconnect(c);
}

Test(sched_backpressure, ebusy_at_the_level_limit)
{
    sch_start_cfg(SLOW_ONE("b", 50000, "max_queue = 100\nmax_queue_low = 2\nmax_queue_critical = 1\n"
                                   "max_starvation_us = 0\n"));
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("b", 64, &c, &m);
    bb_request *low[4], *norm[3], *crit[2];
    submit_batch_count(m, low, 4, BB_PRIORITY_LOW, 100);
    submit_batch_count(m, norm, 3, BB_PRIORITY_NORMAL, 200);
    submit_batch_count(m, crit, 2, BB_PRIORITY_CRITICAL, 300);
    int ok, busy;
    count_outcomes(low, 4, 100, &ok, &busy);
    cr_assert(ok == 2 && busy == 2, "LOW limit 2: %d accepted, %d busy", ok, busy);
    count_outcomes(norm, 3, 200, &ok, &busy);
    cr_assert(ok == 3 && busy == 0, "NORMAL has no own limit: %d accepted, %d busy", ok, busy);
    count_outcomes(crit, 2, 300, &ok, &busy);
    cr_assert(ok == 1 && busy == 1, "CRITICAL limit 1: %d accepted, %d busy", ok, busy);
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    cr_assert_eq(bbt_settled_stats(m).rejected, 3);
    bb_disconnect(c);
}

static int three_accepted_main(void *p)
{
    (void)p;
    bb_client *c;
    bb_model *m;
    if (bbt_connect(&B, &c) != 0 || bb_model_open(c, "b", &m) != 0)
        return 10;
    bb_request *rs[3];
    for (int i = 0; i < 3; i++) {
        if (bb_request_new(m, 64, 64, &rs[i]) != 0)
            return 11;
        bbt_fill(bb_request_input(rs[i]), 64, 900 + (uint64_t)i);
        if (bb_submit(rs[i], NULL) != 0)
            return 12;
    }
    for (int i = 0; i < 3; i++)
        if (bb_wait(rs[i], 20000000000ll) != 0 || !sch_echo_ok(rs[i], 900 + (uint64_t)i))
            return 20 + i;
    bb_disconnect(c);
    return 0;
}

/* max_inflight_per_client counts queued + running per client: one client is
 * held at the limit, another process is not. */
Test(sched_backpressure, ebusy_at_the_per_client_limit)
{
    sch_start_cfg(SLOW_ONE("b", 50000, "max_inflight_per_client = 3\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "b");
    bb_request *rs[5];
    submit_batch_count(m, rs, 5, 0, 100);
    sch_wait_rejected(m, 2); /* all five seen before the other client comes */
    pid_t pid = sch_spawn(three_accepted_main, NULL);
    int ok, busy;
    count_outcomes(rs, 5, 100, &ok, &busy);
    cr_assert(ok == 3 && busy == 2, "per-client limit 3: %d accepted, %d busy", ok, busy);
    sch_reap_ok(pid, "second client");
    /* Once its requests finished the client may submit again. */
    bb_request *again = sch_req_new(m, 64, 64, 42);
    sch_submit(again, 0, 0, 0, 42);
    cr_assert_eq(sch_finish(again, 5000), 0);
    cr_assert(sch_echo_ok(again, 42));
    bb_disconnect(c);
}

/* memory_limit_mb counts input + output of everything queued and running. */
Test(sched_backpressure, memory_limit_rejects_and_too_big_fails)
{
    /* The blocker runs 1 s: the four submissions are all counted while it
     * runs even on a loaded machine (at 100 ms a busy CI host let it finish
     * first, and the third request found room). */
    sch_start_cfg(SLOW_ONE("b", 1000000, "memory_limit_mb = 1\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "b");
    const size_t half = 153600; /* in = out = 150 KiB: 300 KiB a request */
    bb_request *blocker = sch_req_new(m, half, half, 1);
    sch_submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *rs[4];
    for (int i = 0; i < 4; i++) {
        rs[i] = sch_req_new(m, half, half, 100 + (uint64_t)i);
        sch_submit(rs[i], 0, 0, 0, 100 + (uint64_t)i);
    }
    /* 300 KiB running + 2 x 300 KiB queued fit 1 MiB; a fourth would not. */
    int ok, busy;
    count_outcomes(rs, 4, 100, &ok, &busy);
    cr_assert(ok == 2 && busy == 2, "memory_limit_mb = 1: %d accepted, %d busy", ok, busy);
    bb_request *big = sch_req_new(m, 600000, 600000, 5);
    sch_submit(big, 0, 0, 0, 5);
    cr_assert_eq(sch_finish(big, 5000), BB_ETOOBIG, "a request larger than the limit: %s",
                 bb_strerror(bb_request_status(big)));
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    cr_assert(sch_echo_ok(blocker, 1));
    bb_disconnect(c);
}
