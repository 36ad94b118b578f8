/* Scheduling (issue 4) against a real broker: priority levels and their order,
 * the starvation guard, deadlines that expire while a long batch runs,
 * drop_late, backpressure per model / per level / per client / by memory,
 * fairness between a flooding and a light client, deduplication (in flight,
 * forced hash collisions, the TTL cache, the private copy), max_batch_bytes,
 * a custom strategy plugin, bb_cancel before and after dispatch, and the
 * default batching, which never holds a lone request.
 *
 * What reached the backend is observed with tests/plugins/sched_recorder.c,
 * which logs every batch (size, bytes, each input's id and priority); the
 * order in which requests completed with bb_client_poll. Where several
 * clients matter they are forked processes that connect after the fork.
 *
 * No test asserts a timing except the generous bound on a deadline
 * (< 50 ms for a 5 ms timeout while a 200 ms batch runs). Orders are compared
 * as orders: "finished before the flood stopped", "how many flood requests
 * completed while the light request waited".
 *
 * Each test starts its own broker on a socket of its own (harness.h). */
#include <criterion/criterion.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "test_util.h"

#ifndef BB_SCHED_RECORDER
#error "BB_SCHED_RECORDER must name the recording backend plugin"
#endif

static struct bbt_broker B;

/* Files a test created (recorder logs), removed by the suite's fini. */
static char tmpfiles[8][108];
static int ntmpfiles;

static void sched_fini(void)
{
    bbt_cleanup_all();
    for (int i = 0; i < ntmpfiles; i++)
        unlink(tmpfiles[i]);
    ntmpfiles = 0;
}

TestSuite(sched, .fini = sched_fini, .timeout = 120);

/* ---- helpers ---- */

/* Start a broker from INI text built like printf. */
__attribute__((format(printf, 1, 2))) static void start_cfg(const char *fmt, ...)
{
    char text[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    cr_assert(n > 0 && (size_t)n < sizeof text, "config text too long");
    int rc = bbt_broker_start(&B, text, NULL);
    cr_assert_eq(rc, 0, "broker did not start (status %#x) with:\n%s", B.exit_status, text);
}

/* A fresh log path for the recorder; removed at the end of the test. */
static const char *rec_path(void)
{
    cr_assert(ntmpfiles < 8);
    char *p = tmpfiles[ntmpfiles++];
    bbt_unique_path(p, sizeof tmpfiles[0], ".rec");
    unlink(p);
    return p;
}

/* The request completed with 0 and its output is the echo of input `id`. */
static bool echo_ok(const bb_request *r, uint64_t id)
{
    size_t len = 0;
    const void *out = bb_request_output(r, &len);
    return bb_request_status(r) == 0 && out && len == bb_request_input_capacity(r) &&
           bbt_check(out, len, id);
}

static bb_request *req_new(bb_model *m, size_t in_len, size_t out_cap, uint64_t id)
{
    bb_request *r = NULL;
    int rc = bb_request_new(m, in_len, out_cap, &r);
    cr_assert_eq(rc, 0, "bb_request_new(%zu, %zu): %s", in_len, out_cap, bb_strerror(rc));
    bbt_fill(bb_request_input(r), in_len, id);
    return r;
}

static void submit(bb_request *r, int prio, uint32_t timeout_us, uint32_t flags, uint64_t tag)
{
    struct bb_submit_opts o = {.priority = prio, .timeout_us = timeout_us, .flags = flags,
                               .tag = tag};
    int rc = bb_submit(r, &o);
    cr_assert_eq(rc, 0, "bb_submit: %s", bb_strerror(rc));
}

/* Wait (bounded) for completion; returns the request's status. */
static int finish(bb_request *r, int timeout_ms)
{
    int rc = bb_wait(r, (int64_t)timeout_ms * 1000000);
    cr_assert_eq(rc, 0, "bb_wait: %s (tag %llu)", bb_strerror(rc),
                 (unsigned long long)bb_request_tag(r));
    return bb_request_status(r);
}

/* Wait until the model has rejected `n` requests. */
static void wait_rejected(bb_model *m, uint64_t n)
{
    for (int i = 0; i < 1000; i++) {
        if (bbt_stats_of(m).rejected >= n)
            return;
        bbt_msleep(2);
    }
    cr_assert_fail("the model never rejected %llu requests", (unsigned long long)n);
}

/* Wait until `queued` requests sit in the model's queues. */
static void wait_queued(bb_model *m, uint32_t queued)
{
    for (int i = 0; i < 1000; i++) {
        if (bbt_stats_of(m).queued >= queued)
            return;
        bbt_msleep(2);
    }
    cr_assert_fail("the model never had %u requests queued", queued);
}

/* Tags of the next n completions of client c, in completion order. */
static int collect(bb_client *c, int n, uint64_t *tags, int timeout_ms)
{
    int got = 0;
    uint64_t end = bbt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (got < n && bbt_now_ns() < end) {
        bb_request *out[64];
        int k = bb_client_poll(c, out, 64);
        cr_assert_geq(k, 0, "bb_client_poll: %s", bb_strerror(k));
        for (int i = 0; i < k && got < n; i++)
            tags[got++] = bb_request_tag(out[i]);
        if (k == 0)
            bbt_msleep(1);
    }
    return got;
}

static void *shared_page(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(p, MAP_FAILED, "mmap");
    return p;
}

/* Fork a client process; it must connect by itself (never fork a live
 * client) and reports through its exit status: 0 = all good. */
static pid_t spawn(int (*fn)(void *), void *arg)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork");
    if (pid == 0)
        _exit(fn(arg));
    return pid;
}

static void reap_ok(pid_t pid, const char *what)
{
    int st = bbt_waitpid_bounded(pid, 60000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "%s process failed (wait status %#x; exit code = failing step)", what, st);
}

/* ---- the recorder's log ---- */

#define REC_MAX_BATCHES 512
#define REC_MAX_ITEMS 64

struct rec_batch {
    unsigned n;
    size_t bytes;
    uint64_t ids[REC_MAX_ITEMS];
    unsigned prios[REC_MAX_ITEMS];
};

static struct rec_batch recs[REC_MAX_BATCHES];

/* Parse the log into recs; returns the number of batches. */
static int rec_read(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0; /* no batch ran yet */
    char line[8192];
    int nb = 0;
    while (nb < REC_MAX_BATCHES && fgets(line, sizeof line, f)) {
        struct rec_batch *b = &recs[nb];
        memset(b, 0, sizeof *b);
        int off = 0;
        cr_assert_eq(sscanf(line, "n=%u bytes=%zu%n", &b->n, &b->bytes, &off), 2,
                     "recorder line: %s", line);
        char *p = line + off;
        for (unsigned i = 0; i < b->n && i < REC_MAX_ITEMS; i++) {
            unsigned long long id;
            unsigned prio;
            int used = 0;
            cr_assert_eq(sscanf(p, " %llx:%u%n", &id, &prio, &used), 2, "recorder line: %s",
                         line);
            b->ids[i] = id;
            b->prios[i] = prio;
            p += used;
        }
        nb++;
    }
    fclose(f);
    return nb;
}

/* How many times input `id` reached the backend. */
static int rec_count(int nb, uint64_t id)
{
    int k = 0;
    for (int b = 0; b < nb; b++)
        for (unsigned i = 0; i < recs[b].n && i < REC_MAX_ITEMS; i++)
            k += recs[b].ids[i] == id;
    return k;
}

/* ---- flooding clients (child processes) ---- */

struct flood_shared {
    _Atomic int ready;        /* the flood's requests are all submitted */
    _Atomic int stop;         /* parent: stop resubmitting */
    _Atomic uint64_t done;    /* flood completions seen so far */
    _Atomic uint64_t end_ns;  /* when the flood stopped resubmitting */
    _Atomic int go;           /* barrier for the dedup children */
    _Atomic int connected;
};

struct flood_arg {
    struct flood_shared *sh;
    const char *model;
    int prio;
    int depth;                /* requests kept in flight */
    uint64_t run_ns;          /* stop after this long even without `stop` */
};

/* Keep `depth` requests of one priority in flight, resubmitting each as it
 * completes, and check every answer. Exit code: 0, or the failing step. */
static int flood_main(void *p)
{
    struct flood_arg *a = p;
    bb_client *c;
    bb_model *m;
    if (bbt_connect(&B, &c) != 0)
        return 10;
    if (bb_model_open(c, a->model, &m) != 0)
        return 11;
    bb_request *rs[256];
    struct bb_submit_opts o = {.priority = a->prio};
    for (int i = 0; i < a->depth; i++) {
        if (bb_request_new(m, 64, 64, &rs[i]) != 0)
            return 12;
        bbt_fill(bb_request_input(rs[i]), 64, 0xF10000 + (uint64_t)i);
        if (bb_submit(rs[i], &o) != 0)
            return 13;
    }
    atomic_store(&a->sh->ready, 1);
    uint64_t start = bbt_now_ns();
    int errors = 0;
    /* One client, one level: its own requests complete in submission order,
     * so waiting round-robin follows them. */
    for (int i = 0; !atomic_load(&a->sh->stop) && bbt_now_ns() - start < a->run_ns;
         i = (i + 1) % a->depth) {
        if (bb_wait(rs[i], 20000000000ll) != 0)
            return 14;
        errors += !echo_ok(rs[i], 0xF10000 + (uint64_t)i);
        atomic_fetch_add(&a->sh->done, 1);
        if (bb_submit(rs[i], &o) != 0)
            return 15;
    }
    atomic_store(&a->sh->end_ns, bbt_now_ns());
    for (int i = 0; i < a->depth; i++) {
        if (bb_wait(rs[i], 20000000000ll) != 0)
            return 16;
        errors += !echo_ok(rs[i], 0xF10000 + (uint64_t)i);
    }
    bb_disconnect(c);
    return errors ? 17 : 0;
}

static void wait_flag(_Atomic int *flag, int want, const char *what)
{
    for (int i = 0; i < 5000 && atomic_load(flag) < want; i++)
        bbt_msleep(2);
    cr_assert_geq(atomic_load(flag), want, "%s never happened", what);
}

/* ==== 1. Priority levels ==== */

/* Collect the n requests of `want` plus the blocker (tag 1) that ran ahead
 * of them, and check they completed in exactly that order. */
static void expect_order(bb_client *c, const uint64_t *want, int n)
{
    uint64_t order[64];
    cr_assert_leq(n + 1, 64);
    cr_assert_eq(collect(c, n + 1, order, 20000), n + 1, "not every request completed");
    int j = 0;
    for (int i = 0; i <= n; i++) {
        if (order[i] == 1)
            continue; /* the blocker */
        cr_assert_eq(order[i], want[j], "completion %d: tag %llu, expected %llu", j,
                     (unsigned long long)order[i], (unsigned long long)want[j]);
        j++;
    }
}

/* A slow single-request-per-batch model: what is queued while a batch runs
 * is served in the order of the levels, one per batch. */
#define SLOW_ONE(name, us, extra)                                                          \
    "[model." name "]\nbackend = synthetic\nparam.batch_us = " #us "\nparam.mode = sleep\n" \
    "instances = 1\nmax_batch_size = 1\nmax_wait_us = 0\n" extra

Test(sched, levels_are_served_highest_first)
{
    start_cfg(SLOW_ONE("p", 20000, "max_starvation_us = 0\ndefault_priority = high\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "p");
    /* Queue in the worst order behind a running batch: LOW, NORMAL, DEFAULT
     * (= high here), HIGH, CRITICAL, three each. */
    static const int prios[] = {BB_PRIORITY_LOW, BB_PRIORITY_NORMAL, BB_PRIORITY_DEFAULT,
                                BB_PRIORITY_HIGH, BB_PRIORITY_CRITICAL};
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, BB_PRIORITY_NORMAL, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *rs[15];
    for (int g = 0; g < 5; g++)
        for (int k = 0; k < 3; k++) {
            uint64_t tag = 100 * (uint64_t)(g + 1) + (uint64_t)k;
            rs[g * 3 + k] = req_new(m, 64, 64, tag);
            submit(rs[g * 3 + k], prios[g], 0, 0, tag);
        }
    /* CRITICAL, then HIGH (DEFAULT ones first: they came first), NORMAL, LOW;
     * arrival order within each level. */
    static const uint64_t want[15] = {500, 501, 502, 300, 301, 302, 400, 401, 402,
                                      200, 201, 202, 100, 101, 102};
    expect_order(c, want, 15);
    for (int i = 0; i < 15; i++)
        cr_assert(echo_ok(rs[i], bb_request_tag(rs[i])), "wrong output for tag %llu",
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

Test(sched, priorities_off_is_one_fifo)
{
    start_cfg(SLOW_ONE("q", 20000, "priorities = off\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "q");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    static const int prios[] = {BB_PRIORITY_LOW, BB_PRIORITY_CRITICAL, BB_PRIORITY_NORMAL,
                                BB_PRIORITY_HIGH, BB_PRIORITY_LOW, BB_PRIORITY_CRITICAL};
    bb_request *rs[6];
    for (int i = 0; i < 6; i++) {
        rs[i] = req_new(m, 64, 64, 10 + (uint64_t)i);
        submit(rs[i], prios[i], 0, 0, 10 + (uint64_t)i);
    }
    static const uint64_t fifo[6] = {10, 11, 12, 13, 14, 15};
    expect_order(c, fifo, 6);
    for (int i = 0; i < 6; i++)
        cr_assert(echo_ok(rs[i], 10 + (uint64_t)i));
    bb_disconnect(c);
}

/* Within a level: requests with their own timeout first, earliest deadline
 * first; then the rest in arrival (fair) order. */
Test(sched, earliest_deadline_first_within_a_level)
{
    start_cfg(SLOW_ONE("e", 20000, "max_starvation_us = 0\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "e");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    static const uint32_t timeouts[] = {0, 60000000, 30000000, 0, 45000000};
    bb_request *rs[5];
    for (int i = 0; i < 5; i++) {
        rs[i] = req_new(m, 64, 64, 10 + (uint64_t)i);
        submit(rs[i], BB_PRIORITY_NORMAL, timeouts[i], 0, 10 + (uint64_t)i);
    }
    static const uint64_t want[5] = {12, 14, 11, 10, 13};
    expect_order(c, want, 5);
    for (int i = 0; i < 5; i++)
        cr_assert(echo_ok(rs[i], 10 + (uint64_t)i));
    bb_disconnect(c);
}

/* strategy = deadline: the earliest deadline goes first across levels. */
Test(sched, deadline_strategy_orders_across_levels)
{
    start_cfg(SLOW_ONE("d", 20000, "max_starvation_us = 0\nstrategy = deadline\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "d");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *crit = req_new(m, 64, 64, 10);
    bb_request *low = req_new(m, 64, 64, 11);
    bb_request *norm = req_new(m, 64, 64, 12);
    submit(crit, BB_PRIORITY_CRITICAL, 0, 0, 10);
    submit(low, BB_PRIORITY_LOW, 30000000, 0, 11);
    submit(norm, BB_PRIORITY_NORMAL, 20000000, 0, 12);
    static const uint64_t want[3] = {12, 11, 10};
    expect_order(c, want, 3);
    cr_assert(echo_ok(crit, 10) && echo_ok(low, 11) && echo_ok(norm, 12));
    bb_disconnect(c);
}

/* ==== 2. Starvation guard ==== */

/* A flood of critical requests from another process keeps the critical level
 * non-empty for 1.5 s (64 in flight: a backlog of ~300 ms, so a flood
 * process that is descheduled for a while still leaves it stocked); one LOW request is submitted into it. Returns when the
 * LOW request completed, and the time the flood stopped resubmitting. */
static void low_under_critical_flood(uint64_t *low_done_ns, uint64_t *flood_end_ns)
{
    struct flood_shared *sh = shared_page(sizeof *sh);
    struct flood_arg fa = {.sh = sh, .model = "s", .prio = BB_PRIORITY_CRITICAL, .depth = 64,
                           .run_ns = 1500000000ull};
    pid_t pid = spawn(flood_main, &fa);
    wait_flag(&sh->ready, 1, "the flood");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "s");
    wait_queued(m, 8); /* the critical level is well stocked */
    bb_request *low = req_new(m, 64, 64, 7);
    submit(low, BB_PRIORITY_LOW, 0, 0, 7);
    cr_assert_eq(finish(low, 30000), 0, "low request: %s", bb_strerror(bb_request_status(low)));
    *low_done_ns = bbt_now_ns();
    cr_assert(echo_ok(low, 7));
    reap_ok(pid, "flood");
    *flood_end_ns = atomic_load(&sh->end_ns);
    cr_assert(atomic_load(&sh->done) > 50, "the flood hardly ran (%llu completions)",
              (unsigned long long)atomic_load(&sh->done));
    bb_disconnect(c);
    munmap(sh, sizeof *sh);
}

Test(sched, low_request_runs_within_max_starvation)
{
    start_cfg(SLOW_ONE("s", 5000, "max_starvation_us = 20000\n"));
    uint64_t low_done, flood_end;
    low_under_critical_flood(&low_done, &flood_end);
    cr_assert_lt(low_done, flood_end,
                 "the low request finished only %.1f ms after the critical flood stopped",
                 (double)(low_done - flood_end) / 1e6);
}

/* Control: without the guard the same flood starves it, so the test above
 * measures the guard and not a gap in the flood. */
Test(sched, without_starvation_guard_low_waits_for_the_flood)
{
    start_cfg(SLOW_ONE("s", 5000, "max_starvation_us = 0\n"));
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
Test(sched, starved_requests_do_not_overtake_older_critical_ones)
{
    start_cfg(SLOW_ONE("s", 5000, "max_starvation_us = 20000\n"));
    struct flood_shared *sh = shared_page(sizeof *sh);
    struct flood_arg fa = {.sh = sh, .model = "s", .prio = BB_PRIORITY_LOW, .depth = 64,
                           .run_ns = 1500000000ull};
    pid_t pid = spawn(flood_main, &fa);
    wait_flag(&sh->ready, 1, "the flood");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "s");
    wait_queued(m, 32);
    bbt_msleep(30); /* the LOW head is now past max_starvation_us */
    bb_request *crit = req_new(m, 64, 64, 7);
    submit(crit, BB_PRIORITY_CRITICAL, 0, 0, 7);
    cr_assert_eq(finish(crit, 30000), 0);
    uint64_t done = bbt_now_ns();
    cr_assert(echo_ok(crit, 7));
    reap_ok(pid, "flood");
    uint64_t flood_end = atomic_load(&sh->end_ns);
    cr_assert_lt(done, flood_end,
                 "the critical request waited until the LOW flood stopped: requests promoted by "
                 "max_starvation_us overtook it although they arrived after it");
    bb_disconnect(c);
    munmap(sh, sizeof *sh);
}

/* ==== 3. Deadlines ==== */

Test(sched, timeout_fires_while_a_long_batch_runs)
{
    start_cfg(SLOW_ONE("d", 200000, "") SLOW_ONE("dd", 200000, "default_timeout_us = 5000\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "d");
    bb_model *md = bbt_open_ok(c, "dd");
    bb_request *blocker = req_new(m, 64, 64, 1);
    bb_request *blocker_d = req_new(md, 64, 64, 2);
    submit(blocker, 0, 0, 0, 1);
    submit(blocker_d, 0, 0, 0, 2); /* gets the 5 ms default, but runs at once */
    bbt_wait_dispatched(m, 1);
    bbt_wait_dispatched(md, 1);

    bb_request *r = req_new(m, 64, 64, 3);   /* its own 5 ms timeout */
    bb_request *rd = req_new(md, 64, 64, 4); /* the model's 5 ms default */
    uint64_t t0 = bbt_now_ns();
    submit(r, 0, 5000, 0, 3);
    submit(rd, 0, 0, 0, 4);
    cr_assert_eq(finish(r, 1000), BB_ETIMEDOUT);
    uint64_t t1 = bbt_now_ns();
    cr_assert_eq(finish(rd, 1000), BB_ETIMEDOUT);
    uint64_t t2 = bbt_now_ns();
    cr_assert_lt(t1 - t0, 50000000ull, "timeout_us=5000 fired after %.1f ms",
                 (double)(t1 - t0) / 1e6);
    cr_assert_lt(t2 - t0, 50000000ull, "default_timeout_us=5000 fired after %.1f ms",
                 (double)(t2 - t0) / 1e6);
    cr_assert_eq(bb_request_status(blocker), BB_EPENDING, "it fired during the batch");
    /* Running requests are never expired: both blockers finish normally. */
    cr_assert_eq(finish(blocker, 5000), 0);
    cr_assert_eq(finish(blocker_d, 5000), 0);
    cr_assert(echo_ok(blocker, 1) && echo_ok(blocker_d, 2));
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.timed_out, 1);
    cr_assert_eq(st.completed, 1);
    cr_assert_eq(bbt_settled_stats(md).timed_out, 1);
    bb_disconnect(c);
}

/* drop_late: once the broker knows a batch takes ~100 ms, a request with a
 * 50 ms deadline fails at once even though the backend is idle; without
 * drop_late the same request runs (and, running, finishes normally). */
Test(sched, drop_late_fails_hopeless_requests_early)
{
    start_cfg(SLOW_ONE("late", 100000, "drop_late = on\n") SLOW_ONE("keep", 100000, ""));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *late = bbt_open_ok(c, "late");
    bb_model *keep = bbt_open_ok(c, "keep");
    bb_request *w1 = req_new(late, 64, 64, 1), *w2 = req_new(keep, 64, 64, 2);
    submit(w1, 0, 0, 0, 1); /* teaches the broker the batch time */
    submit(w2, 0, 0, 0, 2);
    cr_assert_eq(finish(w1, 5000), 0);
    cr_assert_eq(finish(w2, 5000), 0);
    bbt_settled_stats(late);
    bbt_settled_stats(keep);

    bb_request *r1 = req_new(late, 64, 64, 3), *r2 = req_new(keep, 64, 64, 4);
    submit(r1, 0, 50000, 0, 3);
    submit(r2, 0, 50000, 0, 4);
    cr_assert_eq(finish(r1, 5000), BB_ETIMEDOUT, "drop_late kept a request it cannot serve: %s",
                 bb_strerror(bb_request_status(r1)));
    cr_assert_eq(finish(r2, 5000), 0, "without drop_late the request runs: %s",
                 bb_strerror(bb_request_status(r2)));
    cr_assert(echo_ok(r2, 4));
    /* A deadline the backend can meet is kept. */
    bb_request *r3 = req_new(late, 64, 64, 5);
    submit(r3, 0, 2000000, 0, 5);
    cr_assert_eq(finish(r3, 5000), 0);
    cr_assert(echo_ok(r3, 5));
    cr_assert_eq(bbt_settled_stats(late).timed_out, 1);
    bb_disconnect(c);
}

/* ==== 4. Backpressure ==== */

/* Submit n requests, return how many completed with 0 (outputs checked) and
 * how many with BB_EBUSY; nothing else is allowed. */
static void submit_batch_count(bb_model *m, bb_request **rs, int n, int prio, uint64_t id0)
{
    for (int i = 0; i < n; i++) {
        rs[i] = req_new(m, 64, 64, id0 + (uint64_t)i);
        submit(rs[i], prio, 0, 0, id0 + (uint64_t)i);
    }
}

static void count_outcomes(bb_request **rs, int n, uint64_t id0, int *ok, int *busy)
{
    *ok = *busy = 0;
    for (int i = 0; i < n; i++) {
        int st = finish(rs[i], 20000);
        if (st == 0) {
            cr_assert(echo_ok(rs[i], id0 + (uint64_t)i), "accepted request %d: wrong output", i);
            (*ok)++;
        } else {
            cr_assert_eq(st, BB_EBUSY, "request %d: %s", i, bb_strerror(st));
            (*busy)++;
        }
    }
}

Test(sched, ebusy_at_the_model_limit)
{
    start_cfg(SLOW_ONE("b", 100000, "max_queue = 4\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "b");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *rs[10];
    submit_batch_count(m, rs, 10, 0, 100);
    /* The rejections come at once, while the blocker still runs. */
    int early = 0;
    for (int i = 0; i < 10; i++)
        if (bb_wait(rs[i], 30000000) == 0)
            early++;
    int blocker_pending = bb_request_status(blocker) == BB_EPENDING;
    int ok, busy;
    count_outcomes(rs, 10, 100, &ok, &busy);
    cr_assert_eq(ok, 4, "max_queue = 4 accepted %d", ok);
    cr_assert_eq(busy, 6);
    if (blocker_pending)
        cr_assert_eq(early, 6, "BB_EBUSY must come at once");
    cr_assert_eq(finish(blocker, 5000), 0);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.rejected, 6);
    cr_assert_eq(st.completed, 5);
    bb_disconnect(c);
}

Test(sched, ebusy_at_the_level_limit)
{
    start_cfg(SLOW_ONE("b", 50000, "max_queue = 100\nmax_queue_low = 2\nmax_queue_critical = 1\n"
                                   "max_starvation_us = 0\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "b");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
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
    cr_assert_eq(finish(blocker, 5000), 0);
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
        if (bb_wait(rs[i], 20000000000ll) != 0 || !echo_ok(rs[i], 900 + (uint64_t)i))
            return 20 + i;
    bb_disconnect(c);
    return 0;
}

/* max_inflight_per_client counts queued + running per client: one client is
 * held at the limit, another process is not. */
Test(sched, ebusy_at_the_per_client_limit)
{
    start_cfg(SLOW_ONE("b", 50000, "max_inflight_per_client = 3\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "b");
    bb_request *rs[5];
    submit_batch_count(m, rs, 5, 0, 100);
    wait_rejected(m, 2); /* all five seen before the other client comes */
    pid_t pid = spawn(three_accepted_main, NULL);
    int ok, busy;
    count_outcomes(rs, 5, 100, &ok, &busy);
    cr_assert(ok == 3 && busy == 2, "per-client limit 3: %d accepted, %d busy", ok, busy);
    reap_ok(pid, "second client");
    /* Once its requests finished the client may submit again. */
    bb_request *again = req_new(m, 64, 64, 42);
    submit(again, 0, 0, 0, 42);
    cr_assert_eq(finish(again, 5000), 0);
    cr_assert(echo_ok(again, 42));
    bb_disconnect(c);
}

/* memory_limit_mb counts input + output of everything queued and running. */
Test(sched, memory_limit_rejects_and_too_big_fails)
{
    start_cfg(SLOW_ONE("b", 100000, "memory_limit_mb = 1\n"));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "b");
    const size_t half = 153600; /* in = out = 150 KiB: 300 KiB a request */
    bb_request *blocker = req_new(m, half, half, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *rs[4];
    for (int i = 0; i < 4; i++) {
        rs[i] = req_new(m, half, half, 100 + (uint64_t)i);
        submit(rs[i], 0, 0, 0, 100 + (uint64_t)i);
    }
    /* 300 KiB running + 2 x 300 KiB queued fit 1 MiB; a fourth would not. */
    int ok, busy;
    count_outcomes(rs, 4, 100, &ok, &busy);
    cr_assert(ok == 2 && busy == 2, "memory_limit_mb = 1: %d accepted, %d busy", ok, busy);
    bb_request *big = req_new(m, 600000, 600000, 5);
    submit(big, 0, 0, 0, 5);
    cr_assert_eq(finish(big, 5000), BB_ETOOBIG, "a request larger than the limit: %s",
                 bb_strerror(bb_request_status(big)));
    cr_assert_eq(finish(blocker, 5000), 0);
    cr_assert(echo_ok(blocker, 1));
    bb_disconnect(c);
}

/* ==== 5. Fairness ==== */

/* A flooding process keeps 128 requests queued; the light client (this
 * process) sends 20 requests one at a time. For each, count how many flood
 * requests completed while it waited: with fair queueing it overtakes the
 * flood's backlog (a batch or two), in FIFO it waits for all of it. Returns
 * the median. */
static uint64_t flood_completions_per_light_request(void)
{
    struct flood_shared *sh = shared_page(sizeof *sh);
    struct flood_arg fa = {.sh = sh, .model = "f", .prio = BB_PRIORITY_NORMAL, .depth = 128,
                           .run_ns = 60000000000ull};
    pid_t pid = spawn(flood_main, &fa);
    wait_flag(&sh->ready, 1, "the flood");
    for (int i = 0; i < 5000 && atomic_load(&sh->done) < 200; i++)
        bbt_msleep(2); /* steady state: the flood's backlog is there */
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "f");
    bb_request *r = req_new(m, 64, 64, 77);
    uint64_t d[20];
    for (int i = 0; i < 20; i++) {
        uint64_t before = atomic_load(&sh->done);
        submit(r, BB_PRIORITY_NORMAL, 0, 0, 77);
        cr_assert_eq(finish(r, 30000), 0);
        cr_assert(echo_ok(r, 77));
        d[i] = atomic_load(&sh->done) - before;
    }
    atomic_store(&sh->stop, 1);
    reap_ok(pid, "flood");
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

Test(sched, light_client_is_served_through_a_flood)
{
    start_cfg(FAIR_MODEL("on", 0));
    uint64_t median = flood_completions_per_light_request();
    cr_assert_leq(median, 32, "the light client waited for %llu flood requests (backlog 128)",
                  (unsigned long long)median);
}

/* Control: with fairness off the same light client queues behind the flood. */
Test(sched, without_fairness_light_client_waits_for_the_backlog)
{
    start_cfg(FAIR_MODEL("off", 0));
    uint64_t median = flood_completions_per_light_request();
    cr_assert_geq(median, 64, "FIFO, yet the light client overtook the flood (%llu)",
                  (unsigned long long)median);
}

/* The starvation guard is about waiting behind *higher* levels. Here there is
 * one level only, and the flood's backlog (~128 ms) is older than
 * max_starvation_us: the guard must not take the flood's oldest requests
 * first and so turn fair queueing back into FIFO. */
Test(sched, starvation_guard_does_not_undo_fairness_within_a_level)
{
    start_cfg(FAIR_MODEL("on", 20000));
    uint64_t median = flood_completions_per_light_request();
    cr_assert_leq(median, 32,
                  "the light client waited for %llu flood requests (backlog 128): requests "
                  "of its own level older than max_starvation_us were served first, in FIFO",
                  (unsigned long long)median);
}

/* ==== 6. Deduplication ==== */

#define REC_MODEL(name, batch_us, extra)                                                   \
    "[model." name "]\nbackend = " BB_SCHED_RECORDER "\nparam.batch_us = " #batch_us       \
    "\nparam.file = %s\ninstances = 1\nmax_wait_us = 0\n" extra

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
    if (!echo_ok(r, a->id))
        return 14;
    bb_disconnect(c);
    return 0;
}

Test(sched, ten_identical_requests_reach_the_backend_once)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("u", 300000, "max_batch_size = 16\ndedup = on\ndedup_cache_entries = 0\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *blocker = req_new(m, 256, 256, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    struct flood_shared *sh = shared_page(sizeof *sh);
    struct dedup_child a = {.sh = sh, .id = 0x42};
    pid_t pids[10];
    for (int i = 0; i < 10; i++)
        pids[i] = spawn(identical_main, &a);
    wait_flag(&sh->connected, 10, "ten connected clients");
    atomic_store(&sh->go, 1);
    for (int i = 0; i < 10; i++)
        reap_ok(pids[i], "identical-input client");
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    cr_assert_eq(rec_count(nb, 0x42), 1, "the shared input reached the backend %d times",
                 rec_count(nb, 0x42));
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
Test(sched, forced_hash_collision_never_merges_different_inputs)
{
    const char *log = rec_path();
    setenv("BATCHBROKER_TEST_DEDUP_COLLIDE", "1", 1); /* the broker inherits it */
    start_cfg(REC_MODEL("u", 200000, "max_batch_size = 32\ndedup = on\n"), log);
    unsetenv("BATCHBROKER_TEST_DEDUP_COLLIDE");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *blocker = req_new(m, 256, 256, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    /* 8 distinct inputs of one length, and a second copy of the first 4. */
    bb_request *rs[12];
    uint64_t ids[12];
    for (int i = 0; i < 12; i++) {
        ids[i] = 0x100 + (uint64_t)(i < 8 ? i : i - 8);
        rs[i] = req_new(m, 256, 256, ids[i]);
        submit(rs[i], 0, 0, 0, ids[i]);
    }
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(finish(rs[i], 10000), 0);
        cr_assert(echo_ok(rs[i], ids[i]), "request %d got another input's output", i);
    }
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(rec_count(nb, 0x100 + (uint64_t)i), 1, "input %#x computed %d times",
                     0x100 + i, rec_count(nb, 0x100 + (uint64_t)i));
    cr_assert_eq(bbt_settled_stats(m).deduplicated, 4);
    bb_disconnect(c);
}

Test(sched, dedup_cache_serves_then_expires)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("u", 0, "dedup = on\ndedup_cache_entries = 16\ndedup_ttl_ms = 1000\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *x = req_new(m, 256, 256, 0xA);
    bb_request *y = req_new(m, 256, 256, 0xB);
    submit(x, 0, 0, 0, 0);
    cr_assert_eq(finish(x, 5000), 0);
    cr_assert(echo_ok(x, 0xA));
    bbt_settled_stats(m);
    submit(x, 0, 0, 0, 0); /* well within the TTL */
    cr_assert_eq(finish(x, 5000), 0);
    cr_assert(echo_ok(x, 0xA));
    submit(y, 0, 0, 0, 0); /* another input is not served from the cache */
    cr_assert_eq(finish(y, 5000), 0);
    cr_assert(echo_ok(y, 0xB));
    int nb = rec_read(log);
    cr_assert_eq(rec_count(nb, 0xA), 1, "cached result recomputed");
    cr_assert_eq(rec_count(nb, 0xB), 1);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.deduplicated, 1);
    cr_assert_eq(st.batches, 2);
    bbt_msleep(1500); /* past dedup_ttl_ms */
    submit(x, 0, 0, 0, 0);
    cr_assert_eq(finish(x, 5000), 0);
    cr_assert(echo_ok(x, 0xA));
    nb = rec_read(log);
    cr_assert_eq(rec_count(nb, 0xA), 2, "expired entry still served");
    st = bbt_settled_stats(m);
    cr_assert_eq(st.deduplicated, 1);
    cr_assert_eq(st.batches, 3);
    bb_disconnect(c);
}

/* dedup = off: only requests flagged BB_SUBMIT_DEDUP are merged. */
Test(sched, per_request_dedup_flag)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = off\n"), log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *blocker = req_new(m, 256, 256, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *rs[5];
    for (int i = 0; i < 5; i++) {
        rs[i] = req_new(m, 256, 256, 0x55);
        submit(rs[i], 0, 0, i < 3 ? BB_SUBMIT_DEDUP : 0, (uint64_t)i);
    }
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(finish(rs[i], 10000), 0);
        cr_assert(echo_ok(rs[i], 0x55));
    }
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    cr_assert_eq(rec_count(nb, 0x55), 3, "3 flagged -> 1 computation, 2 unflagged -> 2 (got %d)",
                 rec_count(nb, 0x55));
    cr_assert_eq(bbt_settled_stats(m).deduplicated, 2);
    bb_disconnect(c);
}

/* Deduplication copies inputs into broker memory, so it is bounded: requests
 * over dedup_max_request_bytes, or that would take the private copies past
 * dedup_memory_mb, run as usual (each computed, nothing merged). */
Test(sched, dedup_is_bounded)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = on\n"
                                     "dedup_max_request_bytes = 4096\ndedup_memory_mb = 1\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *blocker = req_new(m, 256, 256, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    /* Over dedup_max_request_bytes: 3 identical requests, 3 computations. */
    bb_request *big[3];
    for (int i = 0; i < 3; i++) {
        big[i] = req_new(m, 4096, 4096, 0x66);
        submit(big[i], 0, 0, 0, (uint64_t)i);
    }
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(finish(big[i], 10000), 0);
        cr_assert(echo_ok(big[i], 0x66));
    }
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    cr_assert_eq(rec_count(nb, 0x66), 3, "got %d computations", rec_count(nb, 0x66));
    cr_assert_eq(bbt_settled_stats(m).deduplicated, 0);
    bb_disconnect(c);
}

Test(sched, dedup_memory_is_bounded)
{
    const char *log = rec_path();
    /* 300 KiB + 300 KiB per group: the second distinct group would pass 1 MiB. */
    start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = on\n"
                                     "dedup_max_request_bytes = 1M\ndedup_memory_mb = 1\n"
                                     "dedup_cache_entries = 0\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *blocker = req_new(m, 256, 256, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    enum { SZ = 300 << 10 };
    bb_request *a[2], *b[2];
    for (int i = 0; i < 2; i++) {
        a[i] = req_new(m, SZ, SZ, 0xa1);
        submit(a[i], 0, 0, 0, 10 + (uint64_t)i);
    }
    for (int i = 0; i < 2; i++) {
        b[i] = req_new(m, SZ, SZ, 0xb1);
        submit(b[i], 0, 0, 0, 20 + (uint64_t)i);
    }
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(finish(a[i], 10000), 0);
        cr_assert(echo_ok(a[i], 0xa1));
        cr_assert_eq(finish(b[i], 10000), 0);
        cr_assert(echo_ok(b[i], 0xb1));
    }
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    cr_assert_eq(rec_count(nb, 0xa1), 1, "the first pair shares one computation");
    cr_assert_eq(rec_count(nb, 0xb1), 2, "the second pair does not fit the budget");
    cr_assert_eq(bbt_settled_stats(m).deduplicated, 1);
    bb_disconnect(c);
}

/* The shared computation reads the broker's private copy: a client that
 * scribbles on its input after submitting (which the API forbids) changes
 * nothing for the others that share the result. */
Test(sched, dedup_computes_on_a_private_copy)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = on\n"), log);
    bb_client *ca = bbt_connect_ok(&B, NULL), *cb = bbt_connect_ok(&B, NULL);
    bb_model *ma = bbt_open_ok(ca, "u"), *mb = bbt_open_ok(cb, "u");
    bb_request *blocker = req_new(ma, 256, 256, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(ma, 1);
    bb_request *a = req_new(ma, 256, 256, 0x61);
    submit(a, 0, 0, 0, 0);
    wait_queued(ma, 1);
    bbt_fill(bb_request_input(a), 256, 0x77); /* behind the broker's back */
    bb_request *b = req_new(mb, 256, 256, 0x61);
    submit(b, 0, 0, 0, 0);
    cr_assert_eq(finish(b, 10000), 0);
    cr_assert(echo_ok(b, 0x61), "the other client's scribble reached this client's result");
    cr_assert_eq(finish(a, 10000), 0);
    size_t len;
    const void *out = bb_request_output(a, &len);
    cr_assert(out && len == 256 && bbt_check(out, 256, 0x61));
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    cr_assert_eq(rec_count(nb, 0x61), 1);
    cr_assert_eq(rec_count(nb, 0x77), 0, "the backend read the client's live buffer");
    bb_disconnect(ca);
    bb_disconnect(cb);
}

/* Canceling the group's representative promotes a member, which still gets
 * the result. */
Test(sched, cancel_dedup_representative_keeps_the_member)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("u", 200000, "max_batch_size = 16\ndedup = on\n"), log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *blocker = req_new(m, 256, 256, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *a = req_new(m, 256, 256, 0x62), *b = req_new(m, 256, 256, 0x62);
    submit(a, 0, 0, 0, 0);
    submit(b, 0, 0, 0, 0);
    wait_queued(m, 1);
    cr_assert_eq(bb_cancel(a), 0);
    cr_assert_eq(finish(a, 5000), BB_ECANCELED);
    cr_assert_eq(finish(b, 10000), 0);
    cr_assert(echo_ok(b, 0x62));
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    cr_assert_eq(rec_count(nb, 0x62), 1);
    bb_disconnect(c);
}

/* A critical request that joins an identical LOW request's group must not be
 * served at LOW: the shared computation runs before queued NORMAL work. */
Test(sched, dedup_member_lends_its_priority_to_the_group)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("u", 20000, "max_batch_size = 1\ndedup = on\nmax_starvation_us = 0\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "u");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *lowx = req_new(m, 64, 64, 0x70);
    submit(lowx, BB_PRIORITY_LOW, 0, 0, 0x70);
    bb_request *ns[3];
    for (int i = 0; i < 3; i++) {
        ns[i] = req_new(m, 64, 64, 0x80 + (uint64_t)i);
        submit(ns[i], BB_PRIORITY_NORMAL, 0, 0, 0x80 + (uint64_t)i);
    }
    bb_request *critx = req_new(m, 64, 64, 0x70);
    submit(critx, BB_PRIORITY_CRITICAL, 0, 0, 0x70);
    cr_assert_eq(finish(critx, 10000), 0);
    cr_assert_eq(finish(lowx, 10000), 0);
    cr_assert(echo_ok(critx, 0x70) && echo_ok(lowx, 0x70));
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(finish(ns[i], 10000), 0);
        cr_assert(echo_ok(ns[i], 0x80 + (uint64_t)i));
    }
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    cr_assert_eq(nb, 5, "%d batches", nb);
    cr_assert_eq(rec_count(nb, 0x70), 1, "computed once");
    cr_assert_eq(recs[1].ids[0], 0x70,
                 "the batch after the blocker ran %#llx, not the group a CRITICAL request "
                 "waits for (it ran as batch: LOW, behind the NORMAL ones)",
                 (unsigned long long)recs[1].ids[0]);
    bb_disconnect(c);
}

/* The representative leaves (canceled): the most urgent member takes over,
 * not the latest joiner. Group X: H (high) first, then C (critical, becomes
 * the representative), then N (normal). C is canceled: of the members left
 * H is the most urgent, so X runs at high, before a later high request Y. */
Test(sched, dedup_promotes_the_most_urgent_member)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("v", 20000, "max_batch_size = 1\ndedup = on\nmax_starvation_us = 0\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "v");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *hx = req_new(m, 64, 64, 0x90);   /* X at high */
    submit(hx, BB_PRIORITY_HIGH, 0, 0, 0x90);
    bb_request *cx = req_new(m, 64, 64, 0x90);   /* X at critical: represents */
    submit(cx, BB_PRIORITY_CRITICAL, 0, 0, 0x90);
    bb_request *nx = req_new(m, 64, 64, 0x90);   /* X at normal: latest joiner */
    submit(nx, BB_PRIORITY_NORMAL, 0, 0, 0x90);
    cr_assert_eq(bb_cancel(cx), 0);
    cr_assert_eq(finish(cx, 10000), BB_ECANCELED);
    bb_request *y = req_new(m, 64, 64, 0xa0);    /* a later HIGH request */
    submit(y, BB_PRIORITY_HIGH, 0, 0, 0xa0);
    cr_assert_eq(finish(hx, 10000), 0);
    cr_assert_eq(finish(nx, 10000), 0);
    cr_assert_eq(finish(y, 10000), 0);
    cr_assert(echo_ok(hx, 0x90) && echo_ok(nx, 0x90) && echo_ok(y, 0xa0));
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    cr_assert_eq(nb, 3, "%d batches", nb);
    cr_assert_eq(recs[1].ids[0], 0x90, "X runs at high, before the later high request");
    cr_assert_eq(recs[2].ids[0], 0xa0);
    bb_disconnect(c);
}

/* Dedup merges only requests of the same output capacity: one outcome
 * (ETOOBIG included) must be right for every member, and the batch byte
 * limit counts what the backend is given. */
Test(sched, dedup_respects_output_capacity_and_batch_bytes)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("w", 20000, "max_batch_size = 8\ndedup = on\nmax_batch_bytes = 1000\n"
                                    "max_starvation_us = 0\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "w");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    bb_request *a = req_new(m, 10, 10, 0xb0);     /* A: 10 in / 10 out */
    submit(a, 0, 0, 0, 0xb0);
    bb_request *a2 = req_new(m, 10, 900, 0xb0);   /* same input, 900 out: not merged */
    submit(a2, 0, 0, 0, 0xb0);
    bb_request *b = req_new(m, 10, 500, 0xc0);
    submit(b, 0, 0, 0, 0xc0);
    cr_assert_eq(finish(a, 10000), 0);
    cr_assert_eq(finish(a2, 10000), 0);
    cr_assert_eq(finish(b, 10000), 0);
    cr_assert(echo_ok(a, 0xb0) && echo_ok(a2, 0xb0) && echo_ok(b, 0xc0));
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    unsigned items = 0;
    for (int i = 0; i < nb; i++) {
        cr_assert_leq(recs[i].bytes, 1000, "batch %d held %zu bytes", i, recs[i].bytes);
        items += recs[i].n;
    }
    cr_assert_eq(items, 4, "A and its different-capacity twin are computed apart");
    bb_disconnect(c);
}

/* ==== 7. Memory limits per batch ==== */

Test(sched, batches_never_exceed_max_batch_bytes)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("mb", 30000, "max_batch_size = 64\nmax_batch_bytes = 4096\n"
                                     "max_request_bytes = 8192\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "mb");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    static const size_t sizes[] = {100, 300, 700, 1000, 1500, 2048};
    bb_request *rs[30];
    for (int i = 0; i < 30; i++) {
        size_t s = sizes[i % 6];
        rs[i] = req_new(m, s, s, 100 + (uint64_t)i);
        submit(rs[i], 0, 0, 0, 100 + (uint64_t)i);
    }
    for (int i = 0; i < 30; i++) {
        cr_assert_eq(finish(rs[i], 20000), 0, "request %d: %s", i,
                     bb_strerror(bb_request_status(rs[i])));
        cr_assert(echo_ok(rs[i], 100 + (uint64_t)i));
    }
    cr_assert_eq(finish(blocker, 5000), 0);
    int nb = rec_read(log);
    unsigned items = 0, multi = 0;
    for (int b = 0; b < nb; b++) {
        cr_assert_leq(recs[b].bytes, 4096, "batch %d held %zu bytes", b, recs[b].bytes);
        items += recs[b].n;
        multi += recs[b].n > 1;
    }
    cr_assert_eq(items, 31);
    cr_assert_gt(multi, 0, "no batch held more than one request: the limit was never tested");
    /* One request over max_batch_bytes: BB_ETOOBIG, at submission. */
    bb_request *big = req_new(m, 3000, 1100, 2);
    submit(big, 0, 0, 0, 2);
    cr_assert_eq(finish(big, 5000), BB_ETOOBIG, "%s", bb_strerror(bb_request_status(big)));
    /* Over max_request_bytes the client refuses it already. */
    bb_request *huge = NULL;
    cr_assert_eq(bb_request_new(m, 8000, 1000, &huge), BB_ETOOBIG);
    bb_disconnect(c);
}

/* ==== 8. Custom strategy ==== */

Test(sched, custom_strategy_plugin_is_obeyed)
{
    const char *log = rec_path();
    start_cfg(REC_MODEL("cs", 0, "max_batch_size = 2\nmax_starvation_us = 0\n"
                                 "strategy = " BB_STRATEGY_LOWFIRST "\nstrategy.min_queued = 3\n"),
              log);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "cs");
    bb_request *crit = req_new(m, 64, 64, 1), *high = req_new(m, 64, 64, 2);
    submit(crit, BB_PRIORITY_CRITICAL, 0, 0, 1);
    submit(high, BB_PRIORITY_HIGH, 0, 0, 2);
    /* Two queued, the strategy wants three: nothing runs, though the
     * backend is idle (any built-in would have dispatched at once). */
    cr_assert_eq(bb_wait(crit, 200000000), BB_ETIMEDOUT, "dispatched with 2 queued");
    cr_assert_eq(bb_request_status(high), BB_EPENDING);
    /* A third: batch of 2 filled from LOW up, so the critical one stays. */
    bb_request *low = req_new(m, 64, 64, 3);
    submit(low, BB_PRIORITY_LOW, 0, 0, 3);
    cr_assert_eq(finish(low, 5000), 0);
    cr_assert_eq(finish(high, 5000), 0);
    cr_assert(echo_ok(low, 3) && echo_ok(high, 2));
    cr_assert_eq(bb_wait(crit, 200000000), BB_ETIMEDOUT, "one queued: must wait");
    /* Two NORMAL: three queued again; the NORMAL ones go before CRITICAL. */
    bb_request *n1 = req_new(m, 64, 64, 4), *n2 = req_new(m, 64, 64, 5);
    submit(n1, BB_PRIORITY_NORMAL, 0, 0, 4);
    submit(n2, BB_PRIORITY_NORMAL, 0, 0, 5);
    cr_assert_eq(finish(n1, 5000), 0);
    cr_assert_eq(finish(n2, 5000), 0);
    cr_assert_eq(bb_wait(crit, 200000000), BB_ETIMEDOUT);
    /* Two more CRITICAL: the first two critical ones run, one is left. */
    bb_request *c2 = req_new(m, 64, 64, 6), *c3 = req_new(m, 64, 64, 7);
    submit(c2, BB_PRIORITY_CRITICAL, 0, 0, 6);
    submit(c3, BB_PRIORITY_CRITICAL, 0, 0, 7);
    cr_assert_eq(finish(crit, 5000), 0);
    cr_assert_eq(finish(c2, 5000), 0);
    cr_assert(echo_ok(crit, 1) && echo_ok(c2, 6));
    cr_assert_eq(bb_wait(c3, 200000000), BB_ETIMEDOUT);
    cr_assert_eq(bb_cancel(c3), 0);
    cr_assert_eq(finish(c3, 5000), BB_ECANCELED);

    int nb = rec_read(log);
    cr_assert_eq(nb, 3, "%d batches", nb);
    static const uint64_t want_ids[3][2] = {{3, 2}, {4, 5}, {1, 6}};
    static const unsigned want_prios[3][2] = {{4, 2}, {3, 3}, {1, 1}};
    for (int b = 0; b < 3; b++) {
        cr_assert_eq(recs[b].n, 2, "batch %d has %u requests", b, recs[b].n);
        for (int i = 0; i < 2; i++) {
            cr_assert_eq(recs[b].ids[i], want_ids[b][i], "batch %d item %d: id %llu", b, i,
                         (unsigned long long)recs[b].ids[i]);
            cr_assert_eq(recs[b].prios[i], want_prios[b][i]);
        }
    }
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

Test(sched, bad_strategies_are_refused)
{
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = " BB_STRATEGY_BADABI "\n");
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = " BB_STRATEGY_LOWFIRST "\n");
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = " BB_STRATEGY_LOWFIRST
                    "\nstrategy.min_queued = 0\n");
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = latency\n"
                    "strategy.min_queued = 3\n");
    start_must_fail("[model.x]\nbackend = synthetic\nstrategy = /nonexistent/strategy.so\n");
}

/* ==== 9. Cancel ==== */

Test(sched, cancel_before_and_after_dispatch)
{
    start_cfg(SLOW_ONE("k", 200000, ""));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "k");
    bb_request *blocker = req_new(m, 64, 64, 1);
    submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(m, 1);
    /* Queued behind the running batch: canceled. */
    bb_request *q = req_new(m, 64, 64, 2);
    submit(q, 0, 0, 0, 2);
    wait_queued(m, 1);
    cr_assert_eq(bb_cancel(q), 0);
    cr_assert_eq(finish(q, 5000), BB_ECANCELED);
    cr_assert_eq(bb_request_status(blocker), BB_EPENDING, "canceled at once, not at the next cut");
    /* Running: bb_cancel is accepted, the request finishes normally. */
    cr_assert_eq(bb_cancel(blocker), 0);
    cr_assert_eq(finish(blocker, 5000), 0);
    cr_assert(echo_ok(blocker, 1));
    /* A canceled request can be submitted again and runs. */
    submit(q, 0, 0, 0, 2);
    bbt_wait_dispatched(m, 3);
    cr_assert_eq(bb_cancel(q), 0);
    cr_assert_eq(finish(q, 5000), 0);
    cr_assert(echo_ok(q, 2));
    cr_assert_eq(bb_cancel(q), BB_ESTATE, "not pending any more");
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.completed, 2);
    cr_assert_eq(st.batches, 2);
    bb_disconnect(c);
}

/* ==== 10. Default batching ==== */

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
Test(sched, a_lone_request_is_not_held_by_default)
{
    start_cfg("[broker]\nspin_us = 1000000\n"
              "[model.l]\nbackend = echo\nmax_batch_size = 64\nmax_wait_us = 10000000\n"
              "adaptation_interval_ms = 60000\n");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "l");
    bb_request *r = req_new(m, 64, 64, 0);
    uint64_t end = bbt_now_ns() + 1000000000ull;
    int rounds = 0;
    while (bbt_now_ns() < end || rounds < 100) {
        bbt_fill(bb_request_input(r), 64, (uint64_t)rounds);
        submit(r, 0, 0, 0, (uint64_t)rounds);
        cr_assert_eq(finish(r, 5000), 0);
        cr_assert(echo_ok(r, (uint64_t)rounds));
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
Test(sched, static_batching_holds_a_lone_request)
{
    start_cfg("[model.l]\nbackend = echo\nmax_batch_size = 4\nmax_wait_us = 10000000\n"
              "adaptive = off\n");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "l");
    bb_request *r[4];
    r[0] = req_new(m, 64, 64, 0);
    submit(r[0], 0, 0, 0, 0);
    cr_assert_eq(bb_wait(r[0], 300000000ll), BB_ETIMEDOUT, "a lone request ran at once");
    for (int i = 1; i < 4; i++) {
        r[i] = req_new(m, 64, 64, (uint64_t)i);
        submit(r[i], 0, 0, 0, (uint64_t)i);
    }
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(finish(r[i], 5000), 0);
        cr_assert(echo_ok(r[i], (uint64_t)i));
    }
    cr_assert_eq(bbt_settled_stats(m).batches, 1, "the four ran as one batch");
    bb_disconnect(c);
}
