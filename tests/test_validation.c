/* Descriptor validation against a real broker (broker/intake.c): what a
 * hostile client may write into its own slots and still be refused at once,
 * and the shared-model defaults that keep one client from starving others.
 *
 * The hostile descriptors are written through the client library's
 * internals (client_internal.h), as a client that bypasses the library would
 * write them. Each test starts its own broker (harness.h). */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client_internal.h"
#include "harness.h"
#include "test_util.h"

static struct bbt_broker B;

TestSuite(validation, .fini = bbt_cleanup_all, .timeout = 120);

/* Submit r and wait for its outcome (bounded); returns the status. */
static int outcome(bb_request *r)
{
    cr_assert_eq(bb_submit(r, NULL), 0);
    int rc = bb_wait(r, 10000000000ll);
    cr_assert_eq(rc, 0, "bb_wait: %s", bb_strerror(rc));
    return bb_request_status(r);
}

/* An honest round trip on echo: the broker still serves this client. */
static void still_serves(bb_model *m, uint64_t id)
{
    unsigned char in[200], out[200];
    bbt_fill(in, sizeof in, id);
    size_t n = 0;
    int rc = bb_infer(m, in, sizeof in, out, sizeof out, &n, NULL, 10000000000ll);
    cr_assert_eq(rc, 0, "honest request: %s", bb_strerror(rc));
    cr_assert(n == sizeof in && bbt_check(out, n, id), "honest request: wrong answer");
}

/* Overlapping input and output would make a backend memcpy overlapping
 * memory (undefined behaviour; an ASan build of the broker aborts on it):
 * such a request fails with BB_EINVAL before any backend sees it. Ranges
 * that only touch, or an empty input at the output, are fine. */
Test(validation, overlapping_input_and_output_is_refused)
{
    BBT_START_OK(&B, "model.echo.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    bb_request *pad, *r;
    /* Not at the start of the heap: an output below the input stays in it. */
    cr_assert_eq(bb_request_new(m, 1024, 1024, &pad), 0);
    cr_assert_eq(bb_request_new(m, 256, 512, &r), 0);
    cr_assert_geq(r->in_off, c->hdr->heap_off + 1024);
    bbt_fill(bb_request_input(r), 256, 7);
    const uint64_t in_off = r->in_off, out_off = r->out_off;
    static const int64_t shifts[] = {64, 1, 255, -100, -511, 0};
    for (size_t i = 0; i < sizeof shifts / sizeof shifts[0]; i++) {
        r->out_off = in_off + (uint64_t)shifts[i];
        r->out_cap = 512;
        int st = outcome(r);
        cr_assert_eq(st, BB_EINVAL, "output at input%+lld: %s", (long long)shifts[i],
                     bb_errname(st));
    }
    /* Touching, not overlapping: the output starts where the input ends. */
    r->out_off = in_off + 256;
    r->out_cap = 256;
    cr_assert_eq(outcome(r), 0);
    size_t n;
    const void *out = bb_request_output(r, &n);
    cr_assert(out && n == 256 && bbt_check(out, 256, 7));
    /* An empty input inside the output range overlaps nothing. */
    cr_assert_eq(bb_request_set_input_len(r, 0), 0);
    r->out_off = in_off;
    r->out_cap = 512;
    cr_assert_eq(outcome(r), 0);
    r->out_off = out_off;
    bb_request_free(r);
    bb_request_free(pad);
    still_serves(m, 8);
    bb_disconnect(c);
}

/* The descriptor's reserved bytes must be zero, as io_uring requires of its
 * SQEs: a later version may give them a meaning this one would ignore. */
Test(validation, reserved_descriptor_bytes_must_be_zero)
{
    BBT_START_OK(&B, "model.echo.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 64, 64, &r), 0);
    bbt_fill(bb_request_input(r), 64, 3);
    for (size_t i = 0; i < sizeof r->slot->pad0; i++) {
        r->slot->pad0[i] = 0x80;
        int st = outcome(r);
        cr_assert_eq(st, BB_EINVAL, "reserved byte %zu set: %s", i, bb_errname(st));
        r->slot->pad0[i] = 0;
    }
    /* Unknown submit flags are refused the same way. */
    struct bb_submit_opts o = {.flags = 1u << 7};
    cr_assert_eq(bb_submit(r, &o), 0);
    cr_assert_eq(bb_wait(r, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(r), BB_EINVAL);
    cr_assert_eq(outcome(r), 0, "all zero again: accepted");
    bb_request_free(r);
    still_serves(m, 9);
    bb_disconnect(c);
}

/* The default max_request_bytes (16 MiB) bounds how long one request can
 * hold a shared model; the broker enforces it even for a client that skips
 * the library's own check. */
Test(validation, default_max_request_bytes)
{
    BBT_START_OK(&B, "model.echo.max_wait_us=0");
    struct bb_client_opts big = {.segment_bytes = 128u << 20};
    bb_client *c = bbt_connect_ok(&B, &big);
    bb_model *m = bbt_open_ok(c, "echo");
    cr_assert_eq(m->max_request_bytes, 16u << 20, "MODEL_OPEN reports %llu",
                 (unsigned long long)m->max_request_bytes);
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 9u << 20, 8u << 20, &r), BB_ETOOBIG);
    m->max_request_bytes = 0; /* a client that does not check */
    cr_assert_eq(bb_request_new(m, 9u << 20, 8u << 20, &r), 0);
    cr_assert_eq(outcome(r), BB_ETOOBIG);
    bb_request_free(r);
    m->max_request_bytes = 16u << 20;
    cr_assert_eq(bb_request_new(m, 8u << 20, 8u << 20, &r), 0, "exactly the limit fits");
    bbt_fill(bb_request_input(r), 8u << 20, 11);
    cr_assert_eq(outcome(r), 0);
    size_t n;
    const void *out = bb_request_output(r, &n);
    cr_assert(out && n == (8u << 20) && bbt_check(out, n, 11));
    bb_request_free(r);
    bb_disconnect(c);
}

/* ---- One client floods a shared model ---- */

struct flood {
    _Atomic int submitted;    /* every request is in the ring */
    _Atomic int stop;
    _Atomic int busy, ok, other;
};

#define FLOOD_N 4200          /* more than the default max_queue (4096) */

static int flood_main(struct flood *f)
{
    struct bb_client_opts o = {.max_inflight = 8192};
    bb_client *c;
    bb_model *m;
    if (bb_connect(B.sock, &o, &c) != 0 || bb_model_open(c, "slow", &m) != 0)
        return 11;
    static bb_request *rs[FLOOD_N];
    for (int i = 0; i < FLOOD_N; i++) {
        if (bb_request_new(m, 64, 64, &rs[i]) != 0)
            return 12;
        bbt_fill(bb_request_input(rs[i]), 64, (uint64_t)i);
        if (bb_submit(rs[i], NULL) != 0)
            return 13;
    }
    /* The rejections come back at once; count them. */
    for (int i = 0; i < FLOOD_N; i++) {
        if (bb_wait(rs[i], 0) != 0)
            continue;
        int st = bb_request_status(rs[i]);
        atomic_fetch_add(st == BB_EBUSY ? &f->busy : st == 0 ? &f->ok : &f->other, 1);
    }
    atomic_store(&f->submitted, 1);
    for (int i = 0; i < 30000 && !atomic_load(&f->stop); i++)
        bbt_msleep(1);
    return 0; /* exits with its requests still queued: the broker drops them */
}

/* With the defaults (max_queue 4096, max_inflight_per_client 1024) one
 * client that submits 4,200 requests to a slow shared model gets at most
 * 1,024 accepted, and another client's requests still find room. With no
 * per-client limit the flood filled the queue and the other client got
 * BB_EBUSY. */
Test(validation, default_per_client_limit_leaves_room_for_others)
{
    BBT_START_OK(&B, "model.slow.backend=synthetic", "model.slow.param.batch_us=100000",
                 "model.slow.param.mode=sleep", "model.slow.instances=1",
                 "model.slow.max_batch_size=32", "model.slow.max_wait_us=0");
    struct flood *f = mmap(NULL, sizeof *f, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                           -1, 0);
    cr_assert_neq(f, MAP_FAILED);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion here must not leave it */
        _exit(flood_main(f));
    }
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    for (int i = 0; i < 20000 && !atomic_load(&f->submitted); i++) {
        int st;
        cr_assert_eq(waitpid(pid, &st, WNOHANG), 0, "the flood ended early (status %#x)", st);
        bbt_msleep(1);
    }
    cr_assert(atomic_load(&f->submitted), "the flood never submitted");
    /* Every flood submission has been seen once the model counts them all. */
    struct bb_model_stats st = bbt_stats_of(m);
    for (int i = 0; i < 2000 && st.submitted < FLOOD_N; i++) {
        bbt_msleep(2);
        st = bbt_stats_of(m);
    }
    cr_assert_geq(st.submitted, FLOOD_N);
    cr_assert_leq(st.queued, 1024, "one client holds %u queued requests", st.queued);
    cr_assert_geq(st.rejected, FLOOD_N - 1024);
    bb_request *mine[8];
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(bb_request_new(m, 64, 64, &mine[i]), 0);
        bbt_fill(bb_request_input(mine[i]), 64, 100 + (uint64_t)i);
        cr_assert_eq(bb_submit(mine[i], NULL), 0);
    }
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(bb_wait(mine[i], 30000000000ll), 0);
        int s = bb_request_status(mine[i]);
        cr_assert_eq(s, 0, "the other client's request %d: %s", i, bb_errname(s));
        size_t n;
        const void *out = bb_request_output(mine[i], &n);
        cr_assert(out && n == 64 && bbt_check(out, 64, 100 + (uint64_t)i));
    }
    atomic_store(&f->stop, 1);
    int ws = bbt_waitpid_bounded(pid, 10000);
    cr_assert(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "flood status %#x", ws);
    bb_disconnect(c);
    munmap(f, sizeof *f);
}
