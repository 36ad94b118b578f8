/* The backend ABI as the broker serves it (include/batchbroker/backend.h,
 * docs/backends/abi.md), with two test plugins that count every breach of
 * the ABI's promises and report them in a stats file at fini:
 *   - tests/plugins/v1echo.c, built against the version-1 header: loaded
 *     and served as before, register_memory before a client's first batch,
 *     never at the same time as process();
 *   - tests/plugins/asyncecho.c, version 2: asynchronous batches completed
 *     from its own thread, two in flight per instance, segments registered
 *     off the dispatcher and unregistered only after their last batch.
 * Like every broker suite it also runs with two workers and with the
 * eventfd doorbell (tests/CMakeLists.txt). */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "batchbroker/protocol.h"
#include "harness.h"
#include "test_util.h"

static char stats_path[108], hold_path[108];

static void cleanup(void)
{
    bbt_cleanup_all();
    if (stats_path[0])
        unlink(stats_path);
    if (hold_path[0])
        unlink(hold_path);
}

TestSuite(abi, .fini = cleanup, .timeout = 120);

#define WAIT_NS 30000000000ll

/* `rounds` rounds of `inflight` requests of `len` bytes on model m, each
 * checked against its own input. Returns the number of wrong answers;
 * *backend_failed counts BB_EBACKEND answers (when not NULL, they are not
 * wrong). */
static int round_trips(bb_model *m, int rounds, int inflight, size_t len, uint64_t seed,
                       int *backend_failed)
{
    bb_request *r[64];
    int bad = 0;
    cr_assert(inflight <= 64);
    for (int i = 0; i < inflight; i++)
        if (bb_request_new(m, len, len, &r[i]) < 0)
            return inflight * rounds;
    for (int k = 0; k < rounds; k++) {
        for (int i = 0; i < inflight; i++) {
            uint64_t id = seed << 32 | (uint64_t)k << 8 | (uint64_t)i;
            bbt_fill(bb_request_input(r[i]), len, id);
            if (bb_submit(r[i], NULL) < 0)
                bad++;
        }
        for (int i = 0; i < inflight; i++) {
            uint64_t id = seed << 32 | (uint64_t)k << 8 | (uint64_t)i;
            size_t n;
            const void *out;
            if (bb_wait(r[i], WAIT_NS) < 0) {
                bad++;
                continue;
            }
            int st = bb_request_status(r[i]);
            if (st == BB_EBACKEND && backend_failed) {
                (*backend_failed)++;
                continue;
            }
            if (st != 0 || !(out = bb_request_output(r[i], &n)) || n != len ||
                !bbt_check(out, len, id))
                bad++;
        }
    }
    for (int i = 0; i < inflight; i++)
        bb_request_free(r[i]);
    return bad;
}

/* Fork n client processes that each run round_trips on model `name`; fails
 * the test unless every one exits 0. */
static void clients(const struct bbt_broker *b, const char *name, int n, int rounds, int inflight)
{
    pid_t pids[8];
    cr_assert(n <= 8);
    for (int k = 0; k < n; k++) {
        fflush(NULL);
        pids[k] = fork();
        cr_assert_geq(pids[k], 0);
        if (pids[k] == 0) {
            bb_client *c;
            bb_model *m;
            if (bb_connect(b->sock, NULL, &c) < 0 || bb_model_open(c, name, &m) < 0)
                _exit(3);
            int bad = round_trips(m, rounds, inflight, 96, (uint64_t)k + 1, NULL);
            bb_disconnect(c);
            _exit(bad ? 4 : 0);
        }
    }
    for (int k = 0; k < n; k++) {
        int st = bbt_waitpid_bounded(pids[k], 60000);
        cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "client %d: status %#x (3 = no connection, 4 = wrong answers)", k, st);
    }
}

/* The stats lines the plugin's instances appended at fini: the sum (or the
 * largest value, max = true) of key over them, and how many lines. */
static unsigned long stat_of(const char *key, bool max, int *lines)
{
    FILE *f = fopen(stats_path, "r");
    cr_assert_not_null(f, "no stats file %s: the backend was not finalised", stats_path);
    char line[1024], pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    unsigned long v = 0;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char padded[1100];
        snprintf(padded, sizeof padded, " %s", line);
        const char *p = strstr(padded, pat);
        cr_assert_not_null(p, "no %s in \"%s\"", key, line);
        unsigned long x = strtoul(p + strlen(pat), NULL, 10);
        v = max ? (x > v ? x : v) : v + x;
        n++;
    }
    fclose(f);
    if (lines)
        *lines = n;
    return v;
}

#define SUM(k) stat_of(k, false, NULL)

/* Stop the broker cleanly (fini writes the stats). */
static void stop(struct bbt_broker *b)
{
    int st = bbt_broker_stop(b);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "broker exit status %#x", st);
}

/* extra2: one more -o, or NULL. */
static void start_async2(struct bbt_broker *b, const char *instances, const char *extra,
                         const char *extra2)
{
    if (stats_path[0])
        unlink(stats_path); /* a second broker of the test: cleanup() sees the last path only */
    bbt_unique_path(stats_path, sizeof stats_path, ".stats");
    char inst[64], stats[160], more[200];
    snprintf(inst, sizeof inst, "model.a.instances=%s", instances);
    snprintf(stats, sizeof stats, "model.a.param.stats=%s", stats_path);
    snprintf(more, sizeof more, "%s", extra ? extra : "model.a.param.delay_us=0");
    BBT_START_OK(b, "model.a.backend=" BB_TEST_PLUGIN_DIR "/bb_backend_asyncecho.so", "model.a.max_batch_size=8",
                 "model.a.max_wait_us=200", "model.a.adaptive=off", inst, stats, more, extra2);
}

static void start_async(struct bbt_broker *b, const char *instances, const char *extra)
{
    start_async2(b, instances, extra, NULL);
}

/* What every asynchronous run must show: nothing breached, everything
 * registered was unregistered before fini. */
static void assert_clean(void)
{
    cr_assert_eq(SUM("bad_rows"), 0, "a row outside its registered segment");
    cr_assert_eq(SUM("over"), 0, "more than max_inflight batches in flight");
    cr_assert_eq(SUM("early_unregisters"), 0, "a segment unregistered under a running batch");
    cr_assert_eq(SUM("fini_busy"), 0, "fini with batches in flight or segments registered");
    cr_assert_eq(SUM("registers"), SUM("unregisters"));
    cr_assert_eq(SUM("submits"), SUM("completes") + SUM("refused"));
}

Test(abi, version_1_plugin_is_served_as_before)
{
    struct bbt_broker b;
    bbt_unique_path(stats_path, sizeof stats_path, ".stats");
    char stats[160];
    snprintf(stats, sizeof stats, "model.v1.param.stats=%s", stats_path);
    BBT_START_OK(&b, "model.v1.backend=" BB_TEST_PLUGIN_DIR "/bb_backend_v1echo.so", "model.v1.instances=2",
                 "model.v1.max_batch_size=16", stats);
    clients(&b, "v1", 3, 50, 8);
    stop(&b);
    int lines;
    stat_of("registers", false, &lines);
    cr_assert_eq(lines, 2, "one line per instance");
    /* The harness's probe connection and the three clients, on each of the
     * two instances. */
    cr_assert_geq(SUM("registers"), 2 * 3);
    cr_assert_eq(SUM("registers"), SUM("unregisters"));
    cr_assert_eq(SUM("still"), 0);
    cr_assert_eq(SUM("outside"), 0, "a row of a segment not registered yet (or any more)");
    cr_assert_eq(SUM("overlaps"), 0, "register_memory while process() ran");
    cr_assert_geq(SUM("rows"), 3 * 50 * 8);
}

/* One client with 64 in flight against batches of 8 on `instances` (1: an
 * executor submits; 0: the dispatcher does): two batches in flight on the
 * instance, which the plugin (pair = on) waits for. */
static void two_in_flight(const char *instances, uint64_t seed)
{
    struct bbt_broker b;
    start_async(&b, instances, "model.a.param.pair=on");
    bb_client *c = bbt_connect_ok(&b, NULL);
    bb_model *m = bbt_open_ok(c, "a");
    cr_assert_eq(round_trips(m, 30, 64, 200, seed, NULL), 0);
    bb_disconnect(c);
    stop(&b);
    assert_clean();
    cr_assert_eq(stat_of("max_seen", true, NULL), 2, "two batches in flight on one instance");
    cr_assert_eq(stat_of("instances", true, NULL), 1);
    cr_assert_eq(stat_of("max_batch_size", true, NULL), 8);
    cr_assert_geq(SUM("rows"), 30 * 64);
}

Test(abi, async_keeps_two_batches_in_flight)
{
    two_in_flight("1", 1);
}

Test(abi, async_inline_in_the_dispatcher)
{
    two_in_flight("0", 2);
}

Test(abi, async_instances_and_clients)
{
    struct bbt_broker b;
    start_async(&b, "2", "model.a.param.delay_us=100");
    clients(&b, "a", 4, 40, 16);
    stop(&b);
    assert_clean();
    int lines;
    stat_of("instance", false, &lines);
    cr_assert_eq(lines, 2);
    cr_assert_eq(SUM("instance"), 0 + 1, "instances 0 and 1");
    cr_assert_eq(stat_of("instances", true, NULL), 2);
    cr_assert_geq(SUM("registers"), 2 * 4);
}

/* formation = per_worker on two workers: each worker's replica has its two
 * instances, numbered over the model (0 to 3 of 4), so that a backend that
 * spreads instances over devices spreads the replicas' too. */
Test(abi, per_worker_replicas_number_their_instances_apart)
{
    struct bbt_broker b;
    start_async2(&b, "2", "model.a.formation=per_worker", "broker.workers=2");
    clients(&b, "a", 4, 20, 16);
    stop(&b);
    assert_clean();
    int lines;
    stat_of("instance", false, &lines);
    cr_assert_eq(lines, 4, "two replicas of two instances");
    cr_assert_eq(SUM("instance"), 0 + 1 + 2 + 3, "instances 0 to 3");
    cr_assert_eq(SUM("instances"), 4 * 4, "each of 4");
}

/* A refused submit (fail_submit) or a failed completion (fail_complete) fails
 * its batch's requests with BB_EBACKEND; the others, and later batches, are
 * served. */
static void some_batches_fail(const char *param, uint64_t seed)
{
    struct bbt_broker b;
    start_async(&b, "1", param);
    bb_client *c = bbt_connect_ok(&b, NULL);
    bb_model *m = bbt_open_ok(c, "a");
    int failed = 0;
    cr_assert_eq(round_trips(m, 40, 16, 64, seed, &failed), 0);
    cr_assert_gt(failed, 0, "%s: no batch failed", param);
    cr_assert_lt(failed, 40 * 16, "%s: every batch failed", param);
    bb_disconnect(c);
    stop(&b);
    assert_clean();
}

Test(abi, async_failures_fail_their_batch_only)
{
    some_batches_fail("model.a.param.fail_submit=3", 3);
    some_batches_fail("model.a.param.fail_complete=4", 4);
}

/* Deduplicated requests run on the broker's private copy: segment 0. */
Test(abi, async_dedup_rows_are_broker_memory)
{
    struct bbt_broker b;
    start_async(&b, "1", "model.a.dedup=on");
    bb_client *c = bbt_connect_ok(&b, NULL);
    bb_model *m = bbt_open_ok(c, "a");
    bb_request *r[16];
    for (int k = 0; k < 20; k++) {
        for (int i = 0; i < 16; i++) {
            cr_assert_eq(bb_request_new(m, 64, 64, &r[i]), 0);
            bbt_fill(bb_request_input(r[i]), 64, (uint64_t)(i % 4)); /* 4 distinct inputs */
            cr_assert_eq(bb_submit(r[i], NULL), 0);
        }
        for (int i = 0; i < 16; i++) {
            size_t n;
            cr_assert_eq(bb_wait(r[i], WAIT_NS), 0);
            cr_assert_eq(bb_request_status(r[i]), 0);
            const void *out = bb_request_output(r[i], &n);
            cr_assert(n == 64 && bbt_check(out, 64, (uint64_t)(i % 4)));
            bb_request_free(r[i]);
        }
    }
    bb_disconnect(c);
    stop(&b);
    assert_clean();
}

/* A registration that takes as long as the test wants (the plugin waits
 * while hold_path exists): the client that attaches waits for it, and
 * nothing else does. */
Test(abi, registration_blocks_only_its_own_client)
{
    struct bbt_broker b;
    bbt_unique_path(hold_path, sizeof hold_path, ".hold");
    char hold[200];
    snprintf(hold, sizeof hold, "model.a.param.hold=%s", hold_path);
    start_async(&b, "1", hold);
    bb_client *a = bbt_connect_ok(&b, NULL);
    bb_model *m = bbt_open_ok(a, "a");
    int fd = open(hold_path, O_CREAT | O_WRONLY, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        bb_client *c;
        bb_model *cm;
        if (bb_connect(b.sock, NULL, &c) < 0 || bb_model_open(c, "a", &cm) < 0)
            _exit(3);
        if (write(p[1], "c", 1) != 1)
            _exit(5);
        int bad = round_trips(cm, 10, 8, 96, 9, NULL);
        bb_disconnect(c);
        _exit(bad ? 4 : 0);
    }
    close(p[1]);
    /* The other client is attaching (its registration waits): this one's
     * batches, on the same model and instance, run all the while. */
    bbt_msleep(50);
    cr_assert_eq(round_trips(m, 100, 8, 96, 5, NULL), 0);
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    cr_assert_eq(poll(&pf, 1, 0), 0, "the second client attached before its registration ended");
    unlink(hold_path);
    int st = bbt_waitpid_bounded(pid, 60000);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "second client: status %#x", st);
    char ch;
    cr_assert_eq(read(p[0], &ch, 1), 1);
    close(p[0]);
    cr_assert_eq(round_trips(m, 10, 8, 96, 6, NULL), 0);
    bb_disconnect(a);
    stop(&b);
    assert_clean();
}

/* A client that dies with a batch in flight: its segment stays registered
 * (and mapped) until the batch completed, and is unregistered after. */
Test(abi, unregistration_waits_for_running_batches)
{
    struct bbt_broker b;
    start_async(&b, "1", "model.a.param.delay_us=300000");
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        bb_client *c;
        bb_model *m;
        bb_request *r[8];
        if (bb_connect(b.sock, NULL, &c) < 0 || bb_model_open(c, "a", &m) < 0)
            _exit(3);
        for (int i = 0; i < 8; i++) {
            if (bb_request_new(m, 64, 64, &r[i]) < 0)
                _exit(4);
            bbt_fill(bb_request_input(r[i]), 64, (uint64_t)i);
            if (bb_submit(r[i], NULL) < 0)
                _exit(5);
        }
        bbt_msleep(50); /* dispatched: the batch is in the plugin's hands */
        _exit(0);       /* gone, batch in flight */
    }
    int st = bbt_waitpid_bounded(pid, 30000);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "client: status %#x", st);
    /* Service goes on meanwhile and after. */
    bb_client *c = bbt_connect_ok(&b, NULL);
    bb_model *m = bbt_open_ok(c, "a");
    cr_assert_eq(round_trips(m, 3, 8, 64, 7, NULL), 0);
    bb_disconnect(c);
    stop(&b);
    assert_clean();
    cr_assert_geq(SUM("registers"), 3);
}

/* A broker with the asynchronous plugin whose stderr is kept (b->log);
 * extra, extra2: one more -o each, or NULL. */
static void start_async_logged_on(struct bbt_broker *b, const char *instances, const char *extra,
                                  const char *extra2)
{
    if (stats_path[0])
        unlink(stats_path);
    bbt_unique_path(stats_path, sizeof stats_path, ".stats");
    char stats[160];
    snprintf(stats, sizeof stats, "model.a.param.stats=%s", stats_path);
    char inst[64];
    snprintf(inst, sizeof inst, "model.a.instances=%s", instances);
    const char *ov[] = {"model.a.backend=" BB_TEST_PLUGIN_DIR "/bb_backend_asyncecho.so",
                        "model.a.max_batch_size=8", "model.a.max_wait_us=200",
                        "model.a.adaptive=off", inst, stats, extra, extra2, NULL};
    struct bbt_start so = {.log = true, .overrides = ov};
    cr_assert_eq(bbt_broker_start_ex(b, &so), 0, "broker did not start (status %#x)",
                 b->exit_status);
}

static void start_async_logged(struct bbt_broker *b, const char *extra)
{
    start_async_logged_on(b, "1", extra, NULL);
}

/* 8 rounds of 8 requests; every one must end (bb_wait) with status `want`. */
static void every_answer_is(bb_model *m, int want, const char *what)
{
    for (int k = 0; k < 8; k++) {
        bb_request *r[8];
        for (int i = 0; i < 8; i++) {
            cr_assert_eq(bb_request_new(m, 32, 32, &r[i]), 0);
            bbt_fill(bb_request_input(r[i]), 32, (uint64_t)(k * 8 + i));
            cr_assert_eq(bb_submit(r[i], NULL), 0);
        }
        for (int i = 0; i < 8; i++) {
            int rc = bb_wait(r[i], 5000000000ll);
            cr_assert_eq(rc, 0, "%s: request %d of round %d unanswered: %s", what, i, k,
                         bb_strerror(rc));
            int st = bb_request_status(r[i]);
            cr_assert_eq(st, want, "%s: status %d (%s), want %d", what, st, bb_strerror(st),
                         want);
            bb_request_free(r[i]);
        }
    }
}

/* A row status that is neither 0 nor one of the per-request codes backend.h
 * allows (BB_EPENDING reads as "still pending" to a client that waited for
 * it; a code outside the BB_E* list has no meaning at all; BB_EDISCONNECTED
 * says the broker is gone) reaches the client as BB_EBACKEND, and the log
 * names the backend and what it gave. An allowed code reaches it as it is. */
Test(abi, a_row_status_outside_the_contract_becomes_backend_failure)
{
    static const struct {
        int given, want;
    } cases[] = {{BB_EPENDING, BB_EBACKEND},
                 {-1000, BB_EBACKEND},
                 {BB_EDISCONNECTED, BB_EBACKEND},
                 {BB_ETOOBIG, BB_ETOOBIG},
                 {BB_EINVAL, BB_EINVAL}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        struct bbt_broker b;
        char param[64], needle[96];
        snprintf(param, sizeof param, "model.a.param.row_status=%d", cases[k].given);
        start_async_logged(&b, param);
        bb_client *c = bbt_connect_ok(&b, NULL);
        bb_model *m = bbt_open_ok(c, "a");
        every_answer_is(m, cases[k].want, param);
        bbt_settled_stats(m); /* every batch reaped: its line is out */
        snprintf(needle, sizeof needle, "backend asyncecho gave status %d", cases[k].given);
        if (cases[k].want == BB_EBACKEND)
            cr_assert_gt(bbt_log_count(&b, needle), 0, "%s: no \"%s\" in the log", param, needle);
        else
            cr_assert_eq(bbt_log_count(&b, "backend asyncecho gave"), 0, "%s: logged", param);
        bb_disconnect(c);
        stop(&b);
        assert_clean();
    }
}

/* A row's len over its buffer is answered BB_EBACKEND and logged, also
 * where the backend wrote the len into the row's cap too (the broker checks
 * against the cap it gave, which the backend cannot change): a client that
 * trusts the slot's out_len would read past its buffer. */
Test(abi, an_output_length_over_the_buffer_becomes_backend_failure)
{
    struct bbt_broker b;
    start_async_logged(&b, "model.a.param.grow_len=100"); /* buffers of 32 */
    bb_client *c = bbt_connect_ok(&b, NULL);
    bb_model *m = bbt_open_ok(c, "a");
    every_answer_is(m, BB_EBACKEND, "grow_len=100");
    bbt_settled_stats(m);
    cr_assert_gt(bbt_log_count(&b, "backend asyncecho gave output length 100 for a buffer of 32"),
                 0);
    bb_disconnect(c);
    stop(&b);
    assert_clean();
}

/* A backend that completes a batch it no longer holds: each batch twice
 * (complete_twice), or one that it then refuses (refuse_completed: submit
 * returns an error after complete). The call that does not count is refused
 * and logged, every request is answered once and rightly, and the broker
 * goes on serving and stops cleanly; on an executor (instances = 1) and on
 * the dispatcher (0). */
static void completes_a_batch_it_no_longer_holds(const char *instances, const char *param,
                                                 const char *logged)
{
    struct bbt_broker b;
    start_async_logged_on(&b, instances, param, NULL);
    bb_client *c = bbt_connect_ok(&b, NULL);
    bb_model *m = bbt_open_ok(c, "a");
    every_answer_is(m, 0, param);
    cr_assert_eq(round_trips(m, 20, 16, 64, 11, NULL), 0, "%s", param);
    struct bb_model_stats s = bbt_settled_stats(m);
    cr_assert_eq(s.completed, 8 * 8 + 20 * 16, "%s: each request counted once", param);
    cr_assert_gt(bbt_log_count(&b, logged), 0, "%s: no \"%s\" in the log", param, logged);
    bb_disconnect(c);
    stop(&b);
    assert_clean();
}

Test(abi, a_completion_of_a_batch_not_in_flight_is_refused)
{
    static const char twice[] = "completed a batch that was not in flight";
    static const char refused[] = "that it had completed: its completion stands";
    completes_a_batch_it_no_longer_holds("1", "model.a.param.complete_twice=on", twice);
    completes_a_batch_it_no_longer_holds("0", "model.a.param.complete_twice=on", twice);
    completes_a_batch_it_no_longer_holds("1", "model.a.param.refuse_completed=on", refused);
    completes_a_batch_it_no_longer_holds("0", "model.a.param.refuse_completed=on", refused);
}

/* An init2 that fails and fills err to errlen without a NUL (as strncpy
 * does with a long message): the broker's line ends with what fits of it,
 * 255 bytes of the 256, and nothing read past the buffer. */
Test(abi, an_init_message_without_a_nul_is_cut_at_its_buffer)
{
    struct bbt_broker b;
    const char *ov[] = {"model.a.backend=" BB_TEST_PLUGIN_DIR "/bb_backend_asyncecho.so",
                        "model.a.param.init_err_fill=on", NULL};
    struct bbt_start so = {.log = true, .overrides = ov};
    cr_assert_eq(bbt_broker_start_ex(&b, &so), -1, "the broker started");
    FILE *f = fopen(b.log, "r");
    cr_assert_not_null(f);
    char line[2048];
    const char *msg = NULL;
    while (!msg && fgets(line, sizeof line, f))
        if ((msg = strstr(line, "refused its parameters: ")))
            msg += strlen("refused its parameters: ");
    fclose(f);
    cr_assert_not_null(msg, "no \"refused its parameters\" line");
    size_t xs = strspn(msg, "x");
    cr_assert(xs == 255 && msg[xs] == '\n', "%zu bytes of the message, then byte %#x", xs,
              (unsigned)(unsigned char)msg[xs]);
}

/* A backend whose register_segment always fails: one line a client is
 * logged, rate-limited as the broker's other per-client lines are (at most
 * 10 per 5 s window), not one line per client that connects; and so is the
 * line the backend itself logs for each (the cuda backend does). */
Test(abi, failed_registrations_are_logged_at_a_bounded_rate)
{
    struct bbt_broker b;
    start_async_logged(&b, "model.a.param.fail_register=on");
    static const char what[] = "could not register the segment";
    uint64_t t0 = bbt_now_ns();
    for (int i = 0; i < 100; i++)
        bb_disconnect(bbt_connect_ok(&b, NULL)); /* answered once registered */
    uint64_t windows = (bbt_now_ns() - t0) / 5000000000ull + 2; /* and the probe's */
    int lines = bbt_log_count(&b, what);
    cr_assert_geq(lines, 1, "the failures were not logged at all");
    cr_assert_leq((uint64_t)lines, 10 * windows, "%d lines for 100 failed registrations in %llu "
                  "window(s)", lines, (unsigned long long)windows);
    int own = bbt_log_count(&b, "not registered: its rows are staged");
    cr_assert_geq(own, 1, "the backend's own lines were not logged at all");
    cr_assert_leq((uint64_t)own, 10 * windows, "%d lines of the backend's for 100 failed "
                  "registrations in %llu window(s)", own, (unsigned long long)windows);
    stop(&b);
    assert_clean();
}

/* A HELLO on a bare connection, its answer left unread. */
static int hello_unanswered(const char *sock)
{
    int fd = bbt_raw_connect(sock);
    cr_assert_geq(fd, 0);
    struct bb_msg_hello hello = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = BB_SHM_VERSION, .cpu = -1};
    cr_assert_eq(send(fd, &hello, sizeof hello, MSG_NOSIGNAL), (ssize_t)sizeof hello);
    return fd;
}

/* Create hold_path: the test plugins' registrations wait while it exists. */
static void hold_registrations(void)
{
    int fd = open(hold_path, O_CREAT | O_WRONLY, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
}

/* Wait (bounded) until a registration waits on hold_path (it writes a line). */
static void held_registration_began(void)
{
    struct stat hs = {0};
    for (int i = 0; i < 30000 && hs.st_size == 0; i++) {
        bbt_msleep(1);
        cr_assert_eq(stat(hold_path, &hs), 0);
    }
    cr_assert_gt(hs.st_size, 0, "no registration began");
}

/* Clients that hang up while their registration waits behind a slow one (a
 * client that connects and disconnects in a loop): their segments are never
 * registered, so they cost the clients queued behind them no registration
 * (milliseconds each with a GPU) and no unregistration. */
Test(abi, a_session_gone_before_its_registration_is_not_registered)
{
    struct bbt_broker b;
    bbt_unique_path(hold_path, sizeof hold_path, ".hold");
    char hold[200];
    snprintf(hold, sizeof hold, "model.a.param.hold=%s", hold_path);
    start_async_logged_on(&b, "1", hold, "broker.log_level=debug");
    hold_registrations();
    int held = hello_unanswered(b.sock);
    held_registration_began();
    enum { GONE = 5 };
    for (int i = 0; i < GONE; i++)
        close(hello_unanswered(b.sock));
    cr_assert_eq(bbt_log_wait(&b, ") dropped: ", GONE, 30000), GONE,
                 "the broker did not see the clients hang up");
    unlink(hold_path);
    bb_client *c = bbt_connect_ok(&b, NULL); /* registered after those queued before it */
    bb_model *m = bbt_open_ok(c, "a");
    cr_assert_eq(round_trips(m, 3, 8, 64, 12, NULL), 0);
    bb_disconnect(c);
    close(held);
    stop(&b);
    assert_clean();
    /* The harness's probe, the held client and the last one. */
    cr_assert_eq(SUM("registers"), 3, "%lu segments registered, %d of clients already gone",
                 SUM("registers"), (int)SUM("registers") - 3);
}

/* An ABI 1 backend with register_memory and instances = 0: its batches run
 * on the dispatcher, and its registrations on the registration thread under
 * the instance's lock (never at the same time as process(), as version 1
 * promised). While one client's registration holds that lock, the model's
 * batches wait for it, and the dispatcher serves everything else meanwhile
 * (here: the harness's echo model, on the same worker). */
Test(abi, a_version_1_registration_does_not_stall_the_dispatcher)
{
    struct bbt_broker b;
    bbt_unique_path(stats_path, sizeof stats_path, ".stats");
    bbt_unique_path(hold_path, sizeof hold_path, ".hold");
    char stats[160], hold[200];
    snprintf(stats, sizeof stats, "model.v1.param.stats=%s", stats_path);
    snprintf(hold, sizeof hold, "model.v1.param.hold=%s", hold_path);
    BBT_START_OK(&b, "model.v1.backend=" BB_TEST_PLUGIN_DIR "/bb_backend_v1echo.so",
                 "model.v1.instances=0", "model.v1.max_batch_size=8", "model.v1.max_wait_us=0",
                 stats, hold);
    bb_client *c = bbt_connect_ok(&b, NULL);
    bb_model *v1 = bbt_open_ok(c, "v1"), *echo = bbt_open_ok(c, "echo");
    hold_registrations();
    int held = hello_unanswered(b.sock);
    held_registration_began();
    bb_request *r[2];
    bb_model *ms[2] = {v1, echo};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(bb_request_new(ms[i], 64, 64, &r[i]), 0);
        bbt_fill(bb_request_input(r[i]), 64, (uint64_t)i);
        cr_assert_eq(bb_submit(r[i], NULL), 0);
        if (i == 0) /* its batch cut (max_wait_us = 0) and waiting for the lock: */
            bbt_msleep(100); /* less time only lets this test pass where it should not */
    }
    /* The hold lasts up to 60 s: an answer within 20 s came during it. */
    int rc = bb_wait(r[1], 20000000000ll);
    int v1_status = bb_request_status(r[0]);
    unlink(hold_path);
    cr_assert_eq(rc, 0, "echo: no answer while another client's registration ran: %s",
                 bb_strerror(rc));
    cr_assert_eq(v1_status, BB_EPENDING, "v1: answered while register_memory ran");
    cr_assert_eq(bb_wait(r[0], WAIT_NS), 0);
    cr_assert_eq(bb_request_status(r[0]), 0);
    for (int i = 0; i < 2; i++)
        bb_request_free(r[i]);
    cr_assert_eq(round_trips(v1, 5, 8, 64, 13, NULL), 0);
    bb_disconnect(c);
    close(held);
    stop(&b);
    cr_assert_eq(SUM("overlaps"), 0, "register_memory while process() ran");
    cr_assert_eq(SUM("outside"), 0, "a row of a segment not registered yet (or any more)");
    cr_assert_eq(SUM("registers"), SUM("unregisters"));
}
