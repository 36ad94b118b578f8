/* Client library against a real broker: bb_infer, request reuse, bb_wait
 * timeouts, cancel (by bb_cancel and by bb_request_free), fork(), bb_client_fd and
 * bb_client_poll, the count of completions an unread ring dropped,
 * backpressure (BB_EBUSY), and many processes x threads with
 * distinct payloads, each of which must get exactly its own answer.
 *
 * Each test starts its own broker on a socket of its own (harness.h). */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client_internal.h"
#include "harness.h"
#include "test_util.h"

static struct bbt_broker B;

TestSuite(client, .fini = bbt_cleanup_all, .timeout = 180);

#define START(...) BBT_START_OK(&B, __VA_ARGS__)

/* A slow model: one request per batch, `us` per batch, sleeping. */
#define SLOW_MODEL(us)                                                                    \
    "model.slow.backend=synthetic", "model.slow.param.batch_us=" #us,                     \
        "model.slow.param.mode=sleep", "model.slow.instances=1", "model.slow.max_batch_size=1", \
        "model.slow.max_wait_us=0"

/* ---- bb_infer ---- */

Test(client, infer_roundtrip)
{
    START("model.echo.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    for (uint64_t id = 1; id <= 64; id++) {
        unsigned char in[700], out[700];
        size_t len = (size_t)(id * 37 % 700);
        bbt_fill(in, len, id);
        size_t out_len = 12345;
        int rc = bb_infer(m, in, len, out, sizeof out, &out_len, NULL, 5000000000ll);
        cr_assert_eq(rc, 0, "bb_infer %llu: %s", (unsigned long long)id, bb_strerror(rc));
        cr_assert_eq(out_len, len);
        cr_assert(bbt_check(out, len, id), "output %llu differs from its input", (unsigned long long)id);
    }
    /* Output larger than out_cap: BB_ETOOBIG, not a truncated copy. */
    unsigned char in[64] = {1, 2, 3}, out[16];
    int rc = bb_infer(m, in, sizeof in, out, sizeof out, NULL, NULL, 5000000000ll);
    cr_assert(rc == BB_ETOOBIG, "small out_cap: got %s", bb_errname(rc));
    /* Bad arguments and unknown models. */
    bb_model *nope = NULL;
    cr_assert_eq(bb_model_open(c, "no-such-model", &nope), BB_ENOMODEL);
    struct bb_submit_opts bad = {.priority = 9};
    cr_assert_eq(bb_infer(m, in, 8, out, sizeof out, NULL, &bad, 1000000000ll), BB_EINVAL);
    /* Still serving after the errors. */
    size_t n = 0;
    cr_assert_eq(bb_infer(m, "abc", 3, out, sizeof out, &n, NULL, 5000000000ll), 0);
    cr_assert_eq(n, 3);
    cr_assert(memcmp(out, "abc", 3) == 0);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* bb_infer with a timeout on a slow model: BB_ETIMEDOUT, the request is
 * canceled, and the client and the broker carry on. */
Test(client, infer_timeout)
{
    START(SLOW_MODEL(300000));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *slow = bbt_open_ok(c, "slow");
    bb_model *echo = bbt_open_ok(c, "echo");
    char out[16];
    int rc = bb_infer(slow, "x", 1, out, sizeof out, NULL, NULL, 1000000ll);
    cr_assert_eq(rc, BB_ETIMEDOUT, "got %s", bb_errname(rc));
    size_t n = 0;
    rc = bb_infer(echo, "ok", 2, out, sizeof out, &n, NULL, 5000000000ll);
    cr_assert_eq(rc, 0, "%s", bb_strerror(rc));
    cr_assert_eq(n, 2);
    rc = bb_infer(slow, "yz", 2, out, sizeof out, &n, NULL, 10000000000ll);
    cr_assert_eq(rc, 0, "%s", bb_strerror(rc));
    cr_assert(n == 2 && memcmp(out, "yz", 2) == 0);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* ---- Request reuse ---- */

Test(client, request_reuse)
{
    START("model.echo.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    bb_request *r = NULL;
    cr_assert_eq(bb_request_new(m, 1024, 1024, &r), 0);
    void *in = bb_request_input(r);
    cr_assert(in);
    cr_assert_eq(bb_request_input_capacity(r), 1024);
    cr_assert_eq(bb_request_status(r), BB_ESTATE, "never submitted");
    cr_assert_eq(bb_wait(r, 0), BB_ESTATE);
    for (uint64_t i = 1; i <= 300; i++) {
        size_t len = (size_t)(i * 131 % 1025);
        cr_assert_eq(bb_request_input(r), in, "the input buffer stays where it is");
        bbt_fill(in, len, 1000 + i);
        cr_assert_eq(bb_request_set_input_len(r, len), 0);
        struct bb_submit_opts o = {.tag = i};
        cr_assert_eq(bb_submit(r, &o), 0);
        cr_assert_eq(bb_wait(r, 5000000000ll), 0, "submission %llu", (unsigned long long)i);
        cr_assert_eq(bb_request_status(r), 0);
        cr_assert_eq(bb_request_tag(r), i);
        size_t out_len = 0;
        const void *out = bb_request_output(r, &out_len);
        cr_assert(out);
        cr_assert_eq(out_len, len, "submission %llu: length", (unsigned long long)i);
        cr_assert(bbt_check(out, len, 1000 + i), "submission %llu: stale or wrong output",
                  (unsigned long long)i);
    }
    cr_assert_eq(bb_request_set_input_len(r, 1025), BB_EINVAL);
    bb_request_free(r);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* A freed request's slot comes back from bb_request_new: the new request has
 * not been submitted and must not show the old one's outcome. */
Test(client, request_new_forgets_previous_outcome)
{
    START("model.echo.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    bb_request *r = NULL;
    cr_assert_eq(bb_request_new(m, 16, 16, &r), 0);
    bbt_fill(bb_request_input(r), 16, 77);
    cr_assert_eq(bb_submit(r, NULL), 0);
    cr_assert_eq(bb_wait(r, 5000000000ll), 0);
    cr_assert_eq(bb_request_status(r), 0);
    bb_request_free(r);
    bb_request *again = NULL;
    cr_assert_eq(bb_request_new(m, 16, 16, &again), 0);
    cr_assert_eq(again, r, "the slot is reused (free list)");
    cr_assert_eq(bb_wait(again, 0), BB_ESTATE);
    cr_assert_eq(bb_request_status(again), BB_ESTATE);
    cr_assert_null(bb_request_output(again, NULL));
    bbt_fill(bb_request_input(again), 16, 78);
    cr_assert_eq(bb_submit(again, NULL), 0);
    cr_assert_eq(bb_wait(again, 5000000000ll), 0);
    size_t n;
    const void *out = bb_request_output(again, &n);
    cr_assert(out && n == 16 && bbt_check(out, 16, 78));
    bb_request_free(again);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* ---- bb_wait timeout ---- */

Test(client, wait_timeout_then_completes)
{
    START(SLOW_MODEL(300000));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 100, 100, &r), 0);
    bbt_fill(bb_request_input(r), 100, 7);
    cr_assert_eq(bb_submit(r, NULL), 0);
    cr_assert_eq(bb_submit(r, NULL), BB_ESTATE, "resubmitting a pending request");
    cr_assert_eq(bb_wait(r, 0), BB_ETIMEDOUT, "poll");
    cr_assert_eq(bb_wait(r, 1000000ll), BB_ETIMEDOUT, "1 ms wait on a 300 ms batch");
    cr_assert_eq(bb_request_status(r), BB_EPENDING);
    cr_assert_null(bb_request_output(r, NULL));
    cr_assert_eq(bb_wait(r, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(r), 0);
    size_t n;
    const void *out = bb_request_output(r, &n);
    cr_assert(out && n == 100 && bbt_check(out, 100, 7));
    bb_request_free(r);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* ---- Cancel ---- */

/* instances=1 and one request per batch: A occupies the executor, B waits in
 * the queue. Canceling B completes it with BB_ECANCELED without running. */
Test(client, cancel_before_dispatch)
{
    START(SLOW_MODEL(400000));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    bb_request *a, *b;
    cr_assert_eq(bb_request_new(m, 32, 32, &a), 0);
    cr_assert_eq(bb_request_new(m, 32, 32, &b), 0);
    bbt_fill(bb_request_input(a), 32, 1);
    bbt_fill(bb_request_input(b), 32, 2);
    cr_assert_eq(bb_submit(a, NULL), 0);
    bbt_wait_dispatched(m, 1);
    cr_assert_eq(bb_submit(b, NULL), 0);
    /* B is queued behind A's 400 ms batch. */
    for (int i = 0; i < 200 && bbt_stats_of(m).queued != 1; i++)
        bbt_msleep(2);
    cr_assert_eq(bbt_stats_of(m).queued, 1, "B waits in the queue");
    cr_assert_eq(bb_cancel(b), 0);
    cr_assert_eq(bb_cancel(b), BB_ESTATE, "a second cancel of the same submission");
    cr_assert_eq(bb_wait(b, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(b), BB_ECANCELED);
    cr_assert_null(bb_request_output(b, NULL));
    /* A was not affected. */
    cr_assert_eq(bb_wait(a, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(a), 0);
    size_t n;
    const void *out = bb_request_output(a, &n);
    cr_assert(out && n == 32 && bbt_check(out, 32, 1));
    cr_assert_eq(bb_cancel(a), BB_ESTATE, "cancel of a completed request");
    /* B can be submitted again after a cancel. */
    cr_assert_eq(bb_submit(b, NULL), 0);
    cr_assert_eq(bb_wait(b, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(b), 0);
    out = bb_request_output(b, &n);
    cr_assert(out && n == 32 && bbt_check(out, 32, 2));
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* A request already running finishes normally when canceled. */
Test(client, cancel_after_dispatch)
{
    START(SLOW_MODEL(300000));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    bb_request *a;
    cr_assert_eq(bb_request_new(m, 64, 64, &a), 0);
    bbt_fill(bb_request_input(a), 64, 11);
    cr_assert_eq(bb_submit(a, NULL), 0);
    bbt_wait_dispatched(m, 1);
    cr_assert_eq(bb_request_status(a), BB_EPENDING, "still running");
    cr_assert_eq(bb_cancel(a), 0);
    cr_assert_eq(bb_wait(a, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(a), 0, "a running request finishes normally, got %s",
                 bb_errname(bb_request_status(a)));
    size_t n;
    const void *out = bb_request_output(a, &n);
    cr_assert(out && n == 64 && bbt_check(out, 64, 11));
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* bb_request_free on pending requests: their slots and buffers come back only
 * once the broker is done with them, so later requests never share memory
 * with a batch still running, and nothing leaks. */
Test(client, cancel_by_free)
{
    START("model.slow.backend=synthetic", "model.slow.param.batch_us=200000",
          "model.slow.param.mode=sleep", "model.slow.instances=1", "model.slow.max_batch_size=4",
          "model.slow.max_wait_us=0", "model.echo.max_wait_us=0");
    struct bb_client_opts opts = {.max_inflight = 16};
    bb_client *c = bbt_connect_ok(&B, &opts);
    cr_assert_eq(c->nslots, 16, "max_inflight 16 gives 16 slots");
    bb_model *slow = bbt_open_ok(c, "slow");
    bb_model *echo = bbt_open_ok(c, "echo");
    enum { SZ = 4096 };

    /* 8 slow requests: 4 run at once, 4 wait; free them all while pending. */
    bb_request *orphans[8];
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(bb_request_new(slow, SZ, SZ, &orphans[i]), 0);
        bbt_fill(bb_request_input(orphans[i]), SZ, 100 + i);
        cr_assert_eq(bb_submit(orphans[i], NULL), 0);
    }
    for (int i = 0; i < 200 && bbt_stats_of(slow).batches == 0 && bbt_stats_of(slow).queued < 4; i++)
        bbt_msleep(2);
    for (int i = 0; i < 8; i++)
        bb_request_free(orphans[i]);

    /* The 8 free slots serve new requests at once, while the orphans run. */
    bb_request *fresh[16];
    for (int i = 0; i < 8; i++) {
        int rc = bb_request_new(echo, SZ, SZ, &fresh[i]);
        cr_assert_eq(rc, 0, "slot %d: %s", i, bb_strerror(rc));
        bbt_fill(bb_request_input(fresh[i]), SZ, 200 + i);
        cr_assert_eq(bb_submit(fresh[i], NULL), 0);
    }
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(bb_wait(fresh[i], 10000000000ll), 0);
        cr_assert_eq(bb_request_status(fresh[i]), 0);
    }
    /* 8 more need the orphans' slots: BB_ENOMEM until the broker lets go. */
    for (int i = 8; i < 16; i++) {
        int rc = BB_ENOMEM;
        for (int t = 0; t < 1000 && rc == BB_ENOMEM; t++) {
            rc = bb_request_new(echo, SZ, SZ, &fresh[i]);
            if (rc == BB_ENOMEM)
                bbt_msleep(5);
        }
        cr_assert_eq(rc, 0, "slot %d never came back: %s", i, bb_strerror(rc));
        bbt_fill(bb_request_input(fresh[i]), SZ, 200 + i);
        cr_assert_eq(bb_submit(fresh[i], NULL), 0);
    }
    for (int i = 8; i < 16; i++) {
        cr_assert_eq(bb_wait(fresh[i], 10000000000ll), 0);
        cr_assert_eq(bb_request_status(fresh[i]), 0);
    }
    /* Once every orphan has been answered (the broker's figures settle), look
     * again: nothing it wrote for an orphan may have landed in a fresh
     * request's buffers. */
    struct bb_model_stats done = bbt_settled_stats(slow);
    cr_assert_eq(done.queued, 0);
    cr_assert_geq(done.completed + done.failed + done.cancelled, done.submitted,
                  "orphans still running");
    for (int i = 0; i < 16; i++) {
        size_t n;
        const void *out = bb_request_output(fresh[i], &n);
        cr_assert(out && n == SZ, "request %d: output length %zu", i, n);
        cr_assert(bbt_check(out, SZ, 200 + (uint64_t)i), "request %d: output clobbered", i);
        cr_assert(bbt_check(bb_request_input(fresh[i]), SZ, 200 + (uint64_t)i),
                  "request %d: input clobbered", i);
    }
    for (int i = 0; i < 16; i++)
        bb_request_free(fresh[i]);

    /* Churn: many allocations, some freed while pending; no leak, no mix-up. */
    uint64_t s = 42;
    for (uint64_t k = 0; k < 2000; k++) {
        size_t len = 1 + bbt_rand(&s) % 8000;
        bb_request *r;
        int rc = BB_ENOMEM;
        for (int t = 0; t < 1000 && rc == BB_ENOMEM; t++) {
            rc = bb_request_new(echo, len, len, &r);
            if (rc == BB_ENOMEM)
                bbt_msleep(1);
        }
        cr_assert_eq(rc, 0, "allocation %llu: %s", (unsigned long long)k, bb_strerror(rc));
        bbt_fill(bb_request_input(r), len, 5000 + k);
        cr_assert_eq(bb_submit(r, NULL), 0);
        if (k % 3 == 0) {
            bb_request_free(r); /* pending, or already done: either way fine */
            continue;
        }
        cr_assert_eq(bb_wait(r, 10000000000ll), 0);
        size_t n;
        const void *out = bb_request_output(r, &n);
        cr_assert(out && n == len && bbt_check(out, len, 5000 + k), "allocation %llu: wrong output",
                  (unsigned long long)k);
        bb_request_free(r);
    }
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* ---- fork() ---- */

/* In a child made by fork(), every call that would reach the broker or the
 * shared segment says BB_EFORKED, and freeing the inherited requests and
 * client there touches nothing of the parent's: its pending request is not
 * canceled, its submission ring is not written, and it goes on being served.
 * (Before BB_EFORKED the child's submit went into the parent's ring and its
 * free canceled the parent's pending request.) */
#define CHILD_EXPECT(cond)                                                                \
    do {                                                                                  \
        if (!(cond))                                                                      \
            _exit(__LINE__ % 200 + 1); /* the line, for the parent's message */           \
    } while (0)

Test(client, a_fork_child_is_refused_and_leaves_the_parent_alone)
{
    START(SLOW_MODEL(300000), "model.echo.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *slow = bbt_open_ok(c, "slow");
    bb_model *echo = bbt_open_ok(c, "echo");
    bb_request *pending, *done;
    cr_assert_eq(bb_request_new(slow, 64, 64, &pending), 0);
    cr_assert_eq(bb_submit(pending, NULL), 0);
    cr_assert_eq(bb_request_new(echo, 64, 64, &done), 0);
    bbt_fill(bb_request_input(done), 64, 7);
    cr_assert_eq(bb_submit(done, NULL), 0);
    cr_assert_eq(bb_wait(done, 5000000000ll), 0);

    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        bb_request *r = (bb_request *)1;
        bb_model *m = NULL;
        struct bb_model_stats st;
        bb_request *got[4];
        char out[64];
        CHILD_EXPECT(bb_submit(done, NULL) == BB_EFORKED);
        CHILD_EXPECT(bb_request_new(echo, 64, 64, &r) == BB_EFORKED && r == NULL);
        CHILD_EXPECT(bb_infer(echo, "x", 1, out, sizeof out, NULL, NULL, 1000000000ll) ==
                     BB_EFORKED);
        CHILD_EXPECT(bb_wait(pending, 0) == BB_EFORKED);
        CHILD_EXPECT(bb_wait(done, -1) == BB_EFORKED);
        CHILD_EXPECT(bb_cancel(pending) == BB_EFORKED);
        CHILD_EXPECT(bb_model_open(c, "echo", &m) == BB_EFORKED && m == NULL);
        CHILD_EXPECT(bb_model_stats(echo, &st) == BB_EFORKED);
        CHILD_EXPECT(bb_client_fd(c) == BB_EFORKED);
        CHILD_EXPECT(bb_client_poll(c, got, 4) == BB_EFORKED);
        /* Nor does it read the parent's outcomes (the slot's status, an
         * output the parent may be overwriting with its next submission). */
        size_t len = 1;
        CHILD_EXPECT(bb_request_status(done) == BB_EFORKED);
        CHILD_EXPECT(bb_request_status(pending) == BB_EFORKED);
        CHILD_EXPECT(bb_request_output(done, &len) == NULL && len == 0);
        /* The inherited copies go; the parent's request stays pending. */
        bb_request_free(pending);
        bb_request_free(done);
        bb_disconnect(c);
        /* A client of its own serves the child. */
        bb_client *own;
        CHILD_EXPECT(bb_connect(B.sock, NULL, &own) == 0);
        CHILD_EXPECT(bb_model_open(own, "echo", &m) == 0);
        size_t n = 0;
        CHILD_EXPECT(bb_infer(m, "child", 5, out, sizeof out, &n, NULL, 5000000000ll) == 0);
        CHILD_EXPECT(n == 5 && memcmp(out, "child", 5) == 0);
        bb_disconnect(own);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the child's check at line %d (mod 200) failed", WEXITSTATUS(status) - 1);

    /* The parent's pending request completes, not canceled, and the parent
     * is served as before. */
    cr_assert_eq(bb_wait(pending, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(pending), 0, "the child's free canceled it: %s",
                 bb_errname(bb_request_status(pending)));
    for (uint64_t id = 1; id <= 100; id++) {
        bbt_fill(bb_request_input(done), 64, id);
        cr_assert_eq(bb_submit(done, NULL), 0);
        cr_assert_eq(bb_wait(done, 5000000000ll), 0);
        cr_assert_eq(bb_request_status(done), 0);
        size_t len;
        const void *o = bb_request_output(done, &len);
        cr_assert(len == 64 && bbt_check(o, 64, id), "request %llu: another's answer",
                  (unsigned long long)id);
    }
    cr_assert_eq(bbt_stats_of(echo).failed, 0);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* ---- Event-loop integration ---- */

Test(client, client_fd_and_poll)
{
    START("model.echo.max_wait_us=100");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    int fd = bb_client_fd(c);
    cr_assert(fd >= 0);
    enum { N = 40 };
    bb_request *reqs[N];
    int seen[N] = {0};
    for (int i = 0; i < N; i++) {
        cr_assert_eq(bb_request_new(m, 48, 48, &reqs[i]), 0);
        bbt_fill(bb_request_input(reqs[i]), 48, 300 + i);
    }
    for (int round = 0; round < 2; round++) {
        memset(seen, 0, sizeof seen);
        for (int i = 0; i < N; i++)
            cr_assert_eq(bb_submit(reqs[i], NULL), 0);
        int got = 0;
        uint64_t end = bbt_now_ns() + 10000000000ull;
        while (got < N && bbt_now_ns() < end) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            int pr = poll(&p, 1, 1000);
            if (pr <= 0)
                continue;
            cr_assert(p.revents & POLLIN);
            bb_request *done[7];
            int k;
            /* Small batches: bb_client_poll must keep the fd readable while
             * completions are left. */
            k = bb_client_poll(c, done, 7);
            cr_assert(k >= 0 && k <= 7, "bb_client_poll: %d", k);
            for (int j = 0; j < k; j++) {
                int idx = -1;
                for (int i = 0; i < N; i++)
                    if (reqs[i] == done[j])
                        idx = i;
                cr_assert(idx >= 0, "bb_client_poll returned a request that is not ours");
                cr_assert_eq(seen[idx], 0, "request %d reported twice", idx);
                seen[idx] = 1;
                got++;
                cr_assert_eq(bb_request_status(done[j]), 0);
                size_t n;
                const void *out = bb_request_output(done[j], &n);
                cr_assert(out && n == 48 && bbt_check(out, 48, 300 + (uint64_t)idx));
            }
        }
        cr_assert_eq(got, N, "round %d: %d of %d completions reported through the fd", round, got,
                     N);
        bb_request *extra[4];
        cr_assert_eq(bb_client_poll(c, extra, 4), 0, "nothing left to report");
    }
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* ---- lanes (bb_connect_lanes) ---- */

#define LANE_THREADS 4
#define LANE_REQS 8

struct lane_thread {
    bb_model *m;
    int k;
    bb_request *r[LANE_REQS];
    bb_client *lane;
    int failed;
};

/* A thread of the lanes test: its requests, rounds of round trips with
 * payloads of its own, the lane they came from. */
static void *lane_main(void *arg)
{
    struct lane_thread *t = arg;
    for (int i = 0; i < LANE_REQS; i++)
        if (bb_request_new(t->m, 64, 64, &t->r[i]) < 0) {
            t->failed++;
            return NULL;
        }
    t->lane = t->r[0]->c;
    for (int i = 1; i < LANE_REQS; i++)
        t->failed += t->r[i]->c != t->lane; /* all from its own lane */
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < LANE_REQS; i++) {
            bbt_fill(bb_request_input(t->r[i]), 64, (uint64_t)t->k << 32 | (uint64_t)round << 8 | (uint64_t)i);
            t->failed += bb_submit(t->r[i], NULL) != 0;
        }
        for (int i = 0; i < LANE_REQS; i++) {
            size_t n;
            const void *out;
            if (bb_wait(t->r[i], 10000000000ll) != 0 || bb_request_status(t->r[i]) != 0 ||
                !(out = bb_request_output(t->r[i], &n)) || n != 64 ||
                !bbt_check(out, 64, (uint64_t)t->k << 32 | (uint64_t)round << 8 | (uint64_t)i))
                t->failed++;
        }
    }
    return NULL;
}

/* One client of two lanes shared by four threads: the threads' requests come
 * from both lanes, whose sessions two different workers serve; every answer
 * is the thread's own; bb_client_fd and bb_client_poll report the
 * completions of both lanes, each once. */
Test(client, lanes_serve_one_clients_threads_from_two_workers)
{
    /* Two workers of one node (whatever topology the suite's variant
     * fakes): the lanes, connected from one CPU, go to both. */
    START("broker.workers=2", "broker.numa_fake_nodes=0", "model.echo.max_wait_us=100");
    bb_client *c;
    cr_assert_eq(bb_connect_lanes(B.sock, NULL, 0, &c), BB_EINVAL);
    cr_assert_eq(bb_connect_lanes(B.sock, NULL, BB_MAX_LANES + 1, &c), BB_EINVAL);
    cr_assert_eq(bb_connect_lanes(B.sock, NULL, 2, &c), 0);
    bb_model *m = bbt_open_ok(c, "echo");
    struct lane_thread t[LANE_THREADS] = {{0}};
    pthread_t th[LANE_THREADS];
    for (int k = 0; k < LANE_THREADS; k++) {
        t[k] = (struct lane_thread){.m = m, .k = k + 1};
        cr_assert_eq(pthread_create(&th[k], NULL, lane_main, &t[k]), 0);
    }
    for (int k = 0; k < LANE_THREADS; k++)
        pthread_join(th[k], NULL);
    bb_client *lanes[2] = {NULL, NULL};
    for (int k = 0; k < LANE_THREADS; k++) {
        cr_assert_eq(t[k].failed, 0, "thread %d: %d failures", k, t[k].failed);
        if (!lanes[0] || lanes[0] == t[k].lane)
            lanes[0] = t[k].lane;
        else
            lanes[1] = t[k].lane;
    }
    cr_assert(lanes[1], "every thread's requests came from one lane");
    cr_assert_neq(lanes[0]->wpage->worker_id, lanes[1]->wpage->worker_id,
                  "both lanes are served by worker %u", lanes[0]->wpage->worker_id);

    /* Completions of both lanes through the one descriptor, each once. */
    int fd = bb_client_fd(c);
    cr_assert(fd >= 0);
    enum { N = LANE_THREADS * LANE_REQS };
    bb_request *all[N];
    int seen[N] = {0};
    for (int i = 0; i < N; i++) {
        all[i] = t[i / LANE_REQS].r[i % LANE_REQS];
        cr_assert_eq(bb_submit(all[i], NULL), 0);
    }
    int got = 0;
    uint64_t end = bbt_now_ns() + 10000000000ull;
    while (got < N && bbt_now_ns() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        bb_request *done[5];
        int k = bb_client_poll(c, done, 5);
        cr_assert(k >= 0 && k <= 5, "bb_client_poll: %d", k);
        for (int j = 0; j < k; j++) {
            int idx = -1;
            for (int i = 0; i < N; i++)
                if (all[i] == done[j])
                    idx = i;
            cr_assert(idx >= 0 && !seen[idx], "request %d reported twice or not ours", idx);
            seen[idx] = 1;
            got++;
        }
    }
    cr_assert_eq(got, N, "%d of %d completions reported through the fd", got, N);
    bb_request *extra[4];
    cr_assert_eq(bb_client_poll(c, extra, 4), 0, "nothing left to report");
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* One lane's session ending (here: its socket shut, as the broker ends a
 * session for its own faults) ends the whole client: every lane is marked
 * gone and closed, and every call says BB_EDISCONNECTED, not only those of
 * the threads on that lane. */
Test(client, a_lane_gone_ends_the_whole_client)
{
    START("broker.workers=2", "broker.numa_fake_nodes=0", "model.echo.max_wait_us=0");
    bb_client *c;
    cr_assert_eq(bb_connect_lanes(B.sock, NULL, 3, &c), 0);
    bb_model *m = bbt_open_ok(c, "echo");
    int fd = bb_client_fd(c); /* from now on completions ring it */
    cr_assert(fd >= 0);
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 16, 16, &r), 0);
    cr_assert_eq(bb_submit(r, NULL), 0);
    cr_assert_eq(bb_wait(r, 10000000000ll), 0);
    /* Its completion-ring entry may come a little after bb_wait returns: the
     * client's descriptor says when. */
    bb_request *done[4];
    int reported = 0;
    while (!reported) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 30000), 1, "the completion was never reported");
        reported = bb_client_poll(c, done, 4);
    }
    cr_assert_eq(reported, 1);
    shutdown(c->more[0]->sock, SHUT_RDWR);
    cr_assert_eq(bb_client_poll(c, done, 4), BB_EDISCONNECTED);
    cr_assert(atomic_load(&c->dead) && atomic_load(&c->more[0]->dead) &&
                  atomic_load(&c->more[1]->dead),
              "every lane is gone");
    bb_request *r2;
    cr_assert_eq(bb_request_new(m, 16, 16, &r2), BB_EDISCONNECTED);
    cr_assert_eq(bb_client_poll(c, done, 4), BB_EDISCONNECTED);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 0), 1, "the client's descriptor shows the end");
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* A thread that only waits on its own lane learns that another lane's
 * session ended: its wait says BB_EDISCONNECTED, not BB_ETIMEDOUT for ever
 * (only the lane that ended used to look at its own socket; its request, on
 * a lane still served, would run on as if nothing had happened). */
Test(client, a_wait_on_one_lane_sees_another_lane_gone)
{
    START(SLOW_MODEL(5000000));
    bb_client *c;
    cr_assert_eq(bb_connect_lanes(B.sock, NULL, 2, &c), 0);
    bb_model *m = bbt_open_ok(c, "slow");
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 8, 8, &r), 0);
    cr_assert_eq(bb_submit(r, NULL), 0);
    bb_client *other = r->c == c ? c->more[0] : c;
    shutdown(other->sock, SHUT_RDWR);
    int rc = BB_ETIMEDOUT;
    for (int i = 0; i < 20 && rc == BB_ETIMEDOUT; i++)
        rc = bb_wait(r, 200000000);
    cr_assert_eq(rc, BB_EDISCONNECTED, "20 waits of 200 ms: %s", bb_errname(rc));
    cr_assert_eq(bb_request_status(r), BB_EDISCONNECTED);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* A thread whose lane is full takes a slot of another lane; when every lane
 * is full, BB_ENOMEM. */
Test(client, a_full_lane_lends_the_others)
{
    START("model.echo.max_wait_us=0");
    struct bb_client_opts o = {.max_inflight = 4};
    bb_client *c;
    cr_assert_eq(bb_connect_lanes(B.sock, &o, 2, &c), 0);
    bb_model *m = bbt_open_ok(c, "echo");
    bb_request *r[9];
    int from_first = 0;
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(bb_request_new(m, 16, 16, &r[i]), 0, "request %d", i);
        from_first += r[i]->c == r[0]->c;
    }
    cr_assert_eq(from_first, 4, "%d of 8 from the thread's own lane", from_first);
    cr_assert_eq(bb_request_new(m, 16, 16, &r[8]), BB_ENOMEM);
    for (int i = 0; i < 8; i++) {
        bbt_fill(bb_request_input(r[i]), 16, 900 + (uint64_t)i);
        cr_assert_eq(bb_submit(r[i], NULL), 0);
        cr_assert_eq(bb_wait(r[i], 10000000000ll), 0);
        size_t n;
        const void *p = bb_request_output(r[i], &n);
        cr_assert(p && n == 16 && bbt_check(p, 16, 900 + (uint64_t)i));
    }
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* An event loop that resubmits each request as soon as it is reported keeps
 * the completion ring partly full all the time: the broker must reload the
 * client's head before it calls the ring full, or it drops completions
 * that nothing will ever report again (a hung await in the Python client). */
Test(client, poll_loop_resubmitting_loses_no_completion)
{
    /* Batches of 24 against a ring of 64: the stale copy runs out mid-batch. */
    START("model.echo.max_wait_us=2000", "model.echo.max_batch_size=24");
    struct bb_client_opts opts = {.max_inflight = 64};
    bb_client *c = bbt_connect_ok(&B, &opts);
    bb_model *m = bbt_open_ok(c, "echo");
    int fd = bb_client_fd(c);
    cr_assert(fd >= 0);
    enum { N = 64, ROUNDS = 300 };
    bb_request *reqs[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(bb_request_new(m, 16, 16, &reqs[i]), 0);
        cr_assert_eq(bb_submit(reqs[i], NULL), 0);
    }
    long done_total = 0, want = (long)N * ROUNDS;
    int resubmits[N] = {0};
    uint64_t end = bbt_now_ns() + 30000000000ull;
    while (done_total < want && bbt_now_ns() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        bb_request *done[13];
        int k = bb_client_poll(c, done, 13);
        cr_assert(k >= 0, "bb_client_poll: %s", bb_errname(k));
        for (int j = 0; j < k; j++) {
            done_total++;
            int idx = 0;
            while (reqs[idx] != done[j])
                idx++;
            if (++resubmits[idx] < ROUNDS)
                cr_assert_eq(bb_submit(done[j], NULL), 0);
        }
    }
    cr_assert_eq(done_total, want, "%ld of %ld completions reported", done_total, want);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* A client that waits with bb_wait alone never reads its completion ring:
 * once the ring is full the broker drops each further entry and counts it in
 * shm_cq_overflow (stored at its worker's heartbeat). A client that then polls
 * empties the ring, and the next completions are entries again. */
Test(client, unread_completion_ring_counts_what_it_drops)
{
    START("model.echo.max_wait_us=0");
    struct bb_client_opts opts = {.max_inflight = 8};
    bb_client *c = bbt_connect_ok(&B, &opts);
    bb_model *m = bbt_open_ok(c, "echo");
    uint32_t cap = c->hdr->cq_entries;
    enum { N = 100 };
    cr_assert_lt(cap, N, "a ring of %u would not fill", cap);
    char out[8];
    for (int i = 0; i < N; i++)
        cr_assert_eq(bb_infer(m, "abc", 3, out, sizeof out, NULL, NULL, 5000000000ll), 0);
    struct bb_shm_ring *cq = c->cq.shm;
    uint64_t end = bbt_now_ns() + 10000000000ull;
    while (atomic_load(&c->hdr->shm_cq_overflow) != N - cap && bbt_now_ns() < end)
        usleep(1000);
    cr_assert_eq(atomic_load(&c->hdr->shm_cq_overflow), N - cap, "%u dropped, want %u",
                 atomic_load(&c->hdr->shm_cq_overflow), N - cap);
    cr_assert_eq(atomic_load(&cq->shm_tail) - atomic_load(&cq->shm_head), cap);
    /* Poll: the stale entries go, and three completions later the ring
     * holds three. */
    bb_request *done[64];
    cr_assert_geq(bb_client_poll(c, done, 64), 0);
    cr_assert_eq(atomic_load(&cq->shm_tail), atomic_load(&cq->shm_head));
    for (int i = 0; i < 3; i++)
        cr_assert_eq(bb_infer(m, "abc", 3, out, sizeof out, NULL, NULL, 5000000000ll), 0);
    end = bbt_now_ns() + 10000000000ull;
    while (atomic_load(&cq->shm_tail) - atomic_load(&cq->shm_head) != 3 && bbt_now_ns() < end)
        usleep(1000);
    cr_assert_eq(atomic_load(&cq->shm_tail) - atomic_load(&cq->shm_head), 3);
    cr_assert_eq(atomic_load(&c->hdr->shm_cq_overflow), N - cap);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* The descriptor also wakes a loop whose broker died: bb_client_poll then
 * says BB_EDISCONNECTED and the pending requests read it too. */
Test(client, client_fd_reports_broker_death)
{
    START("model.slow.backend=synthetic", "model.slow.param.batch_us=5000000",
          "model.slow.param.mode=sleep", "model.slow.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    int fd = bb_client_fd(c);
    cr_assert(fd >= 0);
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 8, 8, &r), 0);
    cr_assert_eq(bb_submit(r, NULL), 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 100), 0, "readable with nothing complete");
    bbt_broker_kill(&B, SIGKILL);
    cr_assert_eq(poll(&p, 1, 10000), 1, "the broker's death did not wake the loop");
    bb_request *done[4];
    cr_assert_eq(bb_client_poll(c, done, 4), BB_EDISCONNECTED);
    cr_assert_eq(bb_request_status(r), BB_EDISCONNECTED);
    bb_disconnect(c);
}

/* A request pending on a slow model whose broker is then killed; the
 * client is *out. */
static bb_request *pending_on_a_dead_broker(bb_client **out)
{
    START("model.slow.backend=synthetic", "model.slow.param.batch_us=5000000",
          "model.slow.param.mode=sleep", "model.slow.max_wait_us=0");
    *out = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(*out, "slow");
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 8, 8, &r), 0);
    cr_assert_eq(bb_submit(r, NULL), 0);
    bbt_broker_kill(&B, SIGKILL);
    return r;
}

/* A caller that waits in slices shorter than the library's liveness check
 * (100 ms) still learns of the broker's death: every slice used to end in
 * BB_ETIMEDOUT for ever (Python's wait() loops on such slices). */
Test(client, short_waits_report_broker_death)
{
    bb_client *c;
    bb_request *r = pending_on_a_dead_broker(&c);
    int rc = BB_ETIMEDOUT;
    for (int i = 0; i < 200 && rc == BB_ETIMEDOUT; i++)
        rc = bb_wait(r, 50000000);
    cr_assert_eq(rc, BB_EDISCONNECTED, "200 waits of 50 ms: %s", bb_errname(rc));
    cr_assert_eq(bb_wait(r, 1000000), BB_EDISCONNECTED, "known dead: at once, at every wait");
    cr_assert_eq(bb_request_status(r), BB_EDISCONNECTED);
    bb_disconnect(c);
}

/* The same for a caller that polls with bb_wait(r, 0) between other work
 * (what bb_client_poll's comment tells callers to do): each poll used to
 * say BB_ETIMEDOUT for ever once the broker had died. */
Test(client, zero_waits_report_broker_death)
{
    bb_client *c;
    bb_request *r = pending_on_a_dead_broker(&c);
    int rc = BB_ETIMEDOUT;
    for (int i = 0; i < 200 && rc == BB_ETIMEDOUT; i++) {
        rc = bb_wait(r, 0);
        bbt_msleep(10);
    }
    cr_assert_eq(rc, BB_EDISCONNECTED, "200 polls 10 ms apart: %s", bb_errname(rc));
    cr_assert_eq(bb_request_status(r), BB_EDISCONNECTED);
    bb_disconnect(c);
}

/* ---- Backpressure ---- */

/* max_queue 4 and a slow backend: a burst is partly rejected with BB_EBUSY at
 * once (before the first batch even ends); every request gets exactly one
 * outcome, every accepted one its right answer. */
Test(client, full_queue_rejects_with_ebusy)
{
    START("model.slow.backend=synthetic", "model.slow.param.batch_us=500000",
          "model.slow.param.mode=sleep", "model.slow.instances=1", "model.slow.max_batch_size=4",
          "model.slow.max_wait_us=0", "model.slow.max_queue=4");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    enum { N = 48 };
    bb_request *r[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(bb_request_new(m, 256, 256, &r[i]), 0);
        bbt_fill(bb_request_input(r[i]), 256, 900 + i);
    }
    /* The first one occupies the executor for 500 ms. */
    cr_assert_eq(bb_submit(r[0], NULL), 0);
    bbt_wait_dispatched(m, 1);
    for (int i = 1; i < N; i++)
        cr_assert_eq(bb_submit(r[i], NULL), 0, "bb_submit never fails for a full queue");
    /* Rejections arrive while the first batch still runs. */
    int early_busy = 0;
    for (int i = 1; i < N; i++)
        if (bb_wait(r[i], 0) == 0 && bb_request_status(r[i]) == BB_EBUSY)
            early_busy++;
    for (int i = N - 1; i >= 1 && !early_busy; i--)
        if (bb_wait(r[i], 200000000ll) == 0 && bb_request_status(r[i]) == BB_EBUSY)
            early_busy++;
    cr_assert(early_busy > 0, "no BB_EBUSY while the executor was busy");
    cr_assert_eq(bb_request_status(r[0]), BB_EPENDING,
                 "the rejections came before the running batch ended");
    int ok = 0, busy = 0;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(bb_wait(r[i], 20000000000ll), 0, "request %d has no outcome", i);
        int st = bb_request_status(r[i]);
        if (st == BB_EBUSY) {
            busy++;
            cr_assert_null(bb_request_output(r[i], NULL));
            continue;
        }
        cr_assert_eq(st, 0, "request %d: unexpected status %s", i, bb_errname(st));
        ok++;
        size_t n;
        const void *out = bb_request_output(r[i], &n);
        cr_assert(out && n == 256 && bbt_check(out, 256, 900 + (uint64_t)i), "request %d: wrong output",
                  i);
    }
    cr_assert_eq(ok + busy, N);
    cr_assert(busy > 0 && ok >= 5, "ok %d busy %d", ok, busy);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.submitted, (uint64_t)N);
    cr_assert_eq(st.rejected, (uint64_t)busy, "rejected %llu, saw %d",
                 (unsigned long long)st.rejected, busy);
    cr_assert_eq(st.completed, (uint64_t)ok, "completed %llu, saw %d",
                 (unsigned long long)st.completed, ok);
    cr_assert_eq(st.queued, 0);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* ---- Many processes x threads ---- */

#define MP_PROCS 8
#define MP_THREADS 4
#define MP_REQS 5000
#define MP_DEPTH 8
#define MP_MAXLEN 512

struct mp_thread {
    bb_model *m;
    int proc, thr;
    int bad;
    char msg[256];
};

static uint64_t mp_id(int proc, int thr, uint32_t seq)
{
    return ((uint64_t)(proc + 1) << 40) | ((uint64_t)(thr + 1) << 32) | seq;
}

static size_t mp_len(uint64_t id)
{
    uint64_t s = id ^ 0xabcdef;
    return 1 + bbt_rand(&s) % MP_MAXLEN;
}

static void *mp_worker(void *arg)
{
    struct mp_thread *t = arg;
    bb_request *r[MP_DEPTH];
    uint32_t seq[MP_DEPTH];
    uint32_t next = 0, done = 0;
    for (int i = 0; i < MP_DEPTH; i++) {
        int rc = bb_request_new(t->m, MP_MAXLEN, MP_MAXLEN, &r[i]);
        if (rc < 0) {
            snprintf(t->msg, sizeof t->msg, "bb_request_new: %s", bb_strerror(rc));
            t->bad++;
            return NULL;
        }
    }
    for (int i = 0; i < MP_DEPTH; i++) {
        seq[i] = next++;
        uint64_t id = mp_id(t->proc, t->thr, seq[i]);
        size_t len = mp_len(id);
        bbt_fill(bb_request_input(r[i]), len, id);
        bb_request_set_input_len(r[i], len);
        int rc = bb_submit(r[i], NULL);
        if (rc < 0) {
            snprintf(t->msg, sizeof t->msg, "bb_submit: %s", bb_strerror(rc));
            t->bad++;
            return NULL;
        }
    }
    while (done < MP_REQS) {
        for (int i = 0; i < MP_DEPTH && done < MP_REQS; i++) {
            if (seq[i] == UINT32_MAX)
                continue;
            int rc = bb_wait(r[i], 30000000000ll);
            if (rc < 0) {
                snprintf(t->msg, sizeof t->msg, "bb_wait seq %u: %s", seq[i], bb_strerror(rc));
                t->bad++;
                return NULL;
            }
            uint64_t id = mp_id(t->proc, t->thr, seq[i]);
            size_t want = mp_len(id), n = 0;
            int st = bb_request_status(r[i]);
            const void *out = bb_request_output(r[i], &n);
            if (st != 0 || !out || n != want || !bbt_check(out, n, id)) {
                if (!t->bad)
                    snprintf(t->msg, sizeof t->msg,
                             "p%d t%d seq %u: status %s, len %zu (want %zu), content %s", t->proc,
                             t->thr, seq[i], bb_errname(st), n, want,
                             out && n == want ? "WRONG" : "-");
                t->bad++;
            }
            done++;
            if (next < MP_REQS) {
                seq[i] = next++;
                id = mp_id(t->proc, t->thr, seq[i]);
                size_t len = mp_len(id);
                bbt_fill(bb_request_input(r[i]), len, id);
                bb_request_set_input_len(r[i], len);
                rc = bb_submit(r[i], NULL);
                if (rc < 0) {
                    snprintf(t->msg, sizeof t->msg, "bb_submit: %s", bb_strerror(rc));
                    t->bad++;
                    return NULL;
                }
            } else {
                seq[i] = UINT32_MAX;
            }
        }
    }
    for (int i = 0; i < MP_DEPTH; i++)
        bb_request_free(r[i]);
    return NULL;
}

/* One client process: its own connection (never inherited across fork). */
static int mp_process(const char *sock, int proc)
{
    bb_client *c;
    int rc = bb_connect(sock, NULL, &c);
    if (rc < 0) {
        fprintf(stderr, "proc %d: bb_connect: %s\n", proc, bb_strerror(rc));
        return 2;
    }
    bb_model *m;
    rc = bb_model_open(c, "echo", &m);
    if (rc < 0) {
        fprintf(stderr, "proc %d: bb_model_open: %s\n", proc, bb_strerror(rc));
        return 3;
    }
    pthread_t th[MP_THREADS];
    struct mp_thread t[MP_THREADS];
    for (int i = 0; i < MP_THREADS; i++) {
        t[i] = (struct mp_thread){.m = m, .proc = proc, .thr = i};
        pthread_create(&th[i], NULL, mp_worker, &t[i]);
    }
    int bad = 0;
    for (int i = 0; i < MP_THREADS; i++) {
        pthread_join(th[i], NULL);
        if (t[i].bad) {
            fprintf(stderr, "proc %d thread %d: %d bad answers; first: %s\n", proc, i, t[i].bad,
                    t[i].msg);
            bad = 1;
        }
    }
    bb_disconnect(c);
    return bad ? 1 : 0;
}

Test(client, many_processes_threads_distinct_payloads, .timeout = 240)
{
    START("model.echo.max_batch_size=32", "model.echo.max_wait_us=200");
    pid_t pids[MP_PROCS];
    for (int p = 0; p < MP_PROCS; p++) {
        fflush(NULL);
        pids[p] = fork();
        cr_assert(pids[p] >= 0, "fork");
        if (pids[p] == 0)
            _exit(mp_process(B.sock, p));
    }
    int failed = 0;
    for (int p = 0; p < MP_PROCS; p++) {
        int st = bbt_waitpid_bounded(pids[p], 200000);
        if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "client process %d: status %#x\n", p, st);
            failed++;
        }
    }
    cr_assert_eq(failed, 0, "%d client processes saw wrong or missing answers", failed);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    struct bb_model_stats st = bbt_settled_stats(m);
    const uint64_t total = (uint64_t)MP_PROCS * MP_THREADS * MP_REQS;
    cr_assert_eq(st.completed, total, "completed %llu of %llu", (unsigned long long)st.completed,
                 (unsigned long long)total);
    cr_assert_eq(st.failed + st.rejected + st.timed_out, 0);
    cr_assert(st.batches > 0 && st.batches < total, "batches %llu", (unsigned long long)st.batches);
    cr_assert(st.avg_batch_size > 1.0, "avg_batch_size %.2f: no batching across requests",
              st.avg_batch_size);
    fprintf(stderr, "many_processes: %llu requests in %llu batches, avg batch %.2f\n",
            (unsigned long long)st.completed, (unsigned long long)st.batches, st.avg_batch_size);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* ---- Timeouts ---- */

/* Open non-blocking connections until the broker's listen backlog is full. */
static int fill_backlog(int *fds, int max)
{
    int n = 0;
    while (n < max) {
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        cr_assert_geq(fd, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", B.sock);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            cr_assert_eq(errno, EAGAIN, "connect: %s", strerror(errno));
            close(fd);
            return n;
        }
        fds[n++] = fd;
    }
    cr_assert_fail("the backlog took %d connections", max);
    return n;
}

/* Wait until every thread of pid is stopped (state T): kill() returns
 * before a running thread has taken the signal. */
static void wait_stopped(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    for (int tries = 0; tries < 5000; tries++) {
        DIR *d = opendir(path);
        cr_assert_not_null(d);
        int running = 0;
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.')
                continue;
            char stat[384], buf[256];
            snprintf(stat, sizeof stat, "%s/%s/stat", path, e->d_name);
            FILE *f = fopen(stat, "r");
            if (!f)
                continue;
            char *close_paren = fgets(buf, sizeof buf, f) ? strrchr(buf, ')') : NULL;
            fclose(f);
            running += !close_paren || (close_paren[2] != 'T' && close_paren[2] != 't');
        }
        closedir(d);
        if (!running)
            return;
        bbt_msleep(1);
    }
    cr_assert_fail("the broker never stopped");
}

/* The quick client's calls outside the stopped window: a loaded machine may
 * take longer than its 300 ms to answer, which is not what is tested there;
 * a reply that comes late is skipped by the next call (tested below). */
static bb_model *open_patiently(bb_client *c, const char *name)
{
    bb_model *m = NULL;
    int rc = BB_ETIMEDOUT;
    for (int i = 0; i < 30 && rc == BB_ETIMEDOUT; i++)
        rc = bb_model_open(c, name, &m);
    cr_assert_eq(rc, 0, "bb_model_open(%s): %s", name, bb_strerror(rc));
    return m;
}

static struct bb_model_stats stats_patiently(bb_model *m)
{
    struct bb_model_stats st;
    int rc = BB_ETIMEDOUT;
    for (int i = 0; i < 30 && rc == BB_ETIMEDOUT; i++)
        rc = bb_model_stats(m, &st);
    cr_assert_eq(rc, 0, "bb_model_stats: %s", bb_strerror(rc));
    return st;
}

/* bb_connect to the stopped broker B: its HELLO, then (with the backlog
 * filled) its connect, time out. */
static void connects_time_out(const struct bb_client_opts *o)
{
    bb_client *x = NULL;
    int rc = bb_connect(B.sock, o, &x);
    cr_assert_eq(rc, BB_ETIMEDOUT, "HELLO to a stopped broker: %s", bb_errname(rc));
    static int fds[4096];
    int nfds = fill_backlog(fds, 4096);
    rc = bb_connect(B.sock, o, &x);
    cr_assert_eq(rc, BB_ETIMEDOUT, "connect to a full backlog: %s", bb_errname(rc));
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
}

/* A stopped broker (SIGSTOP), or one whose listen backlog is full, must not
 * hang bb_connect or a control call: each returns BB_ETIMEDOUT after the
 * client's timeout_ms (or $BATCHBROKER_TIMEOUT_MS). Once the broker runs
 * again, the late reply of the round trip that timed out is not mistaken
 * for the next one's. A call that hangs is killed by the alarm. */
Test(client, connect_and_control_calls_time_out)
{
    START("model.echo.max_wait_us=0");
    struct bb_client_opts quick = {.timeout_ms = 300};
    bb_client *c = bbt_connect_ok(&B, &quick);
    bb_model *m = open_patiently(c, "echo");
    cr_assert_eq(kill(B.pid, SIGSTOP), 0);
    wait_stopped(B.pid);
    alarm(60);
    struct bb_model_stats st;
    int rc = bb_model_stats(m, &st);
    cr_assert_eq(rc, BB_ETIMEDOUT, "stats from a stopped broker: %s", bb_errname(rc));
    cr_assert_eq(bb_model_stats(m, &st), BB_ETIMEDOUT, "again, while the first reply is owed");
    connects_time_out(&quick);
    setenv("BATCHBROKER_TIMEOUT_MS", "200", 1);
    bb_client *x = NULL;
    rc = bb_connect(B.sock, NULL, &x);
    cr_assert_eq(rc, BB_ETIMEDOUT, "with $BATCHBROKER_TIMEOUT_MS: %s", bb_errname(rc));
    unsetenv("BATCHBROKER_TIMEOUT_MS");
    cr_assert_eq(kill(B.pid, SIGCONT), 0);
    alarm(0);
    /* The broker answers the stale STATS; the client skips them. */
    bb_model *m2 = open_patiently(c, "echo");
    cr_assert_eq(m2->id, m->id);
    st = stats_patiently(m);
    cr_assert_geq(st.submitted, 0);
    char out[8];
    size_t n;
    cr_assert_eq(bb_infer(m, "again", 5, out, sizeof out, &n, NULL, 10000000000ll), 0);
    cr_assert(n == 5 && memcmp(out, "again", 5) == 0);
    bb_disconnect(c);
}

/* The same timeouts in a process that takes a signal more often than the
 * timeout (a profiler's timer, a periodic SIGALRM): a socket call with
 * SO_RCVTIMEO/SO_SNDTIMEO fails with EINTR on every signal, SA_RESTART or
 * not, and retrying it with the full timeout again never timed out: each
 * call hung for as long as the broker stayed stopped. A hang ends in the
 * test's timeout. */
static void on_tick(int sig)
{
    (void)sig;
}

Test(client, control_calls_time_out_under_a_periodic_signal, .timeout = 60)
{
    START("model.echo.max_wait_us=0");
    struct bb_client_opts quick = {.timeout_ms = 300};
    bb_client *c = bbt_connect_ok(&B, &quick);
    bb_model *m = open_patiently(c, "echo");
    struct sigaction sa = {.sa_handler = on_tick, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
    struct itimerval every_10ms = {.it_interval = {.tv_usec = 10000}, .it_value = {.tv_usec = 10000}};
    cr_assert_eq(setitimer(ITIMER_REAL, &every_10ms, NULL), 0);
    cr_assert_eq(kill(B.pid, SIGSTOP), 0);
    wait_stopped(B.pid);
    struct bb_model_stats st;
    int rc = bb_model_stats(m, &st);
    cr_assert_eq(rc, BB_ETIMEDOUT, "stats from a stopped broker: %s", bb_errname(rc));
    rc = bb_model_stats(m, &st);
    cr_assert_eq(rc, BB_ETIMEDOUT, "again, while the first reply is owed: %s", bb_errname(rc));
    connects_time_out(&quick);
    struct itimerval off = {0};
    setitimer(ITIMER_REAL, &off, NULL);
    cr_assert_eq(kill(B.pid, SIGCONT), 0);
    st = stats_patiently(m);
    cr_assert_geq(st.submitted, 0);
    bb_disconnect(c);
}

/* ---- Sizes ---- */

/* Large payloads cross intact; the output may be shorter than its capacity. */
Test(client, large_payloads)
{
    /* 8 MiB in and out is over the default max_request_bytes (16 MiB). */
    START("model.echo.max_wait_us=0", "model.echo.max_request_bytes=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    static const size_t sizes[] = {0, 1, 63, 64, 65, 4095, 65536, 1u << 20, 8u << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t len = sizes[k];
        bb_request *r;
        int rc = bb_request_new(m, len, len + 100, &r);
        cr_assert_eq(rc, 0, "%zu bytes: %s", len, bb_strerror(rc));
        unsigned char *in = bb_request_input(r);
        for (size_t i = 0; i < len; i++)
            in[i] = (unsigned char)(i * 31 + k);
        cr_assert_eq(bb_submit(r, NULL), 0);
        cr_assert_eq(bb_wait(r, 10000000000ll), 0);
        cr_assert_eq(bb_request_status(r), 0, "%zu bytes: %s", len,
                     bb_errname(bb_request_status(r)));
        size_t n = 12345;
        const unsigned char *out = bb_request_output(r, &n);
        cr_assert(out, "%zu bytes: no output", len);
        cr_assert_eq(n, len);
        size_t bad = 0;
        for (size_t i = 0; i < len; i++)
            bad += out[i] != (unsigned char)(i * 31 + k);
        cr_assert_eq(bad, 0, "%zu bytes: %zu differ", len, bad);
        bb_request_free(r);
    }
    /* More than the segment holds: BB_ENOMEM, not a crash. */
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 200u << 20, 16, &r), BB_ENOMEM);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

/* max_request_bytes: the client refuses at bb_request_new with BB_ETOOBIG. */
Test(client, request_too_big)
{
    START("model.echo.max_request_bytes=1K");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 600, 600, &r), BB_ETOOBIG);
    cr_assert_eq(bb_request_new(m, 500, 524, &r), 0, "exactly the limit is allowed");
    memset(bb_request_input(r), 'q', 500);
    cr_assert_eq(bb_submit(r, NULL), 0);
    cr_assert_eq(bb_wait(r, 5000000000ll), 0);
    cr_assert_eq(bb_request_status(r), 0);
    bb_request_free(r);
    bb_disconnect(c);
}

/* ---- Deadlines and backend failures ---- */

/* A request whose deadline passes while it waits in the queue completes with
 * BB_ETIMEDOUT without running; the one running is unaffected. */
Test(client, queued_request_deadline_expires)
{
    START(SLOW_MODEL(400000));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    bb_request *a, *b;
    cr_assert_eq(bb_request_new(m, 16, 16, &a), 0);
    cr_assert_eq(bb_request_new(m, 16, 16, &b), 0);
    bbt_fill(bb_request_input(a), 16, 1);
    bbt_fill(bb_request_input(b), 16, 2);
    cr_assert_eq(bb_submit(a, NULL), 0);
    bbt_wait_dispatched(m, 1);
    struct bb_submit_opts o = {.timeout_us = 20000};
    cr_assert_eq(bb_submit(b, &o), 0);
    cr_assert_eq(bb_wait(b, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(b), BB_ETIMEDOUT, "got %s", bb_errname(bb_request_status(b)));
    cr_assert_eq(bb_request_status(a), BB_EPENDING, "expired before the running batch ended");
    cr_assert_eq(bb_wait(a, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(a), 0);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.timed_out, 1);
    bb_disconnect(c);
}

/* fail_every=2: every second batch fails with BB_EBACKEND; the broker keeps
 * serving and the other batches are right. */
Test(client, backend_failure_fails_only_its_batch)
{
    START("model.flaky.backend=synthetic", "model.flaky.param.fail_every=2",
          "model.flaky.max_batch_size=1", "model.flaky.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "flaky");
    int ok = 0, failed = 0;
    for (uint64_t i = 0; i < 20; i++) {
        unsigned char in[40], out[40];
        bbt_fill(in, sizeof in, 50 + i);
        size_t n = 0;
        int rc = bb_infer(m, in, sizeof in, out, sizeof out, &n, NULL, 5000000000ll);
        if (rc == BB_EBACKEND) {
            failed++;
            continue;
        }
        cr_assert_eq(rc, 0, "request %llu: %s", (unsigned long long)i, bb_errname(rc));
        cr_assert(n == sizeof in && bbt_check(out, n, 50 + i));
        ok++;
    }
    cr_assert_eq(ok, 10, "ok %d failed %d", ok, failed);
    cr_assert_eq(failed, 10);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.failed, 10);
    cr_assert_eq(st.completed, 10);
    bb_disconnect(c);
}
