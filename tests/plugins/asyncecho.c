/* An asynchronous echo backend of ABI version 2, for the broker's tests: what
 * a GPU backend does with streams, done by a CPU thread. submit() queues the
 * batch and returns; the instance's completion thread echoes it after
 * `delay_us` and calls batch->complete. It keeps the broker to the ABI's
 * promises and counts every breach (stats file, below):
 *   - at most max_inflight (2) batches of a state in flight (`over`);
 *   - every row of a client segment lies in a segment registered with this
 *     state under the id the batch names (`bad_rows`; such a row fails with
 *     BB_EINVAL);
 *   - a segment is unregistered only when no batch in flight holds a row of
 *     it (`early_unregisters`);
 *   - fini comes with nothing in flight and nothing registered (`fini_busy`).
 *
 * Params (all optional):
 *   delay_us        time a batch takes, default 0
 *   pair            on: until two batches were in flight at once, hold a batch
 *                   until a second one arrives (at most 5 s), so that a test
 *                   sees two in flight for certain
 *   hold            PATH: register_segment appends a line to this file (the
 *                   segment's id) where it exists and waits while it exists
 *                   (at most 60 s): a registration that takes as long as a
 *                   test wants, and that the test sees begin
 *   register_us     time each register_segment takes, default 0
 *   fail_submit     N > 0: every Nth submit is refused (returns BB_EBACKEND)
 *   fail_complete   N > 0: every Nth batch completes with BB_EBACKEND
 *   row_status      N (may be negative): every row of every batch is answered
 *                   with status N, whatever it is (a backend that breaks the
 *                   status contract)
 *   grow_len        N > 0: every row's len is set to N, and its cap with it
 *                   (a backend that writes what it should only read)
 *   complete_twice  on: submit echoes the batch and completes it twice (a
 *                   backend that breaks "exactly once")
 *   refuse_completed on: submit echoes the batch and completes it, then
 *                   returns BB_EBACKEND as if it had not taken it
 *   fail_register   on: every register_segment fails (BB_ESYS) and says so in
 *                   the broker's log, as the cuda backend does
 *   init_err_fill   on: init2 fails, filling err to errlen without a NUL
 *   stats           PATH: at fini, append one line of counters
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"

#define MAX_INFLIGHT 2u
#define MAX_SEGS 1024u
#define QCAP 16u

struct seg {
    uint32_t id;
    const char *base;
    size_t len;
    uint32_t busy; /* rows of batches in flight */
};

struct ae_state {
    /* Params. */
    uint64_t delay_us, register_us, fail_submit, fail_complete, grow_len;
    int row_status;
    bool pair, complete_twice, refuse_completed, init_err_fill, fail_register;
    char hold[512], stats[512];
    /* From init2. */
    uint32_t instance, instances, max_batch_size;
    int32_t node;
    void (*log)(void *, int, const char *);
    void *log_ctx;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool stop;
    struct bb_batch *q[QCAP];
    uint32_t qhead, qlen, inflight;
    struct seg segs[MAX_SEGS];
    uint32_t nsegs;
    unsigned long submits, refused, completes, rows, bad_rows, over, max_seen, registers, unregisters,
        early_unregisters, fini_busy;
};

static void sleep_us(uint64_t us)
{
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000), .tv_nsec = (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static struct seg *find(struct ae_state *st, uint32_t id)
{
    for (uint32_t k = 0; k < st->nsegs; k++)
        if (st->segs[k].id == id) return &st->segs[k];
    return NULL;
}

static bool within(const struct seg *s, const void *p, size_t len)
{
    const char *c = p;
    return c >= s->base && (size_t)(c - s->base) <= s->len && len <= s->len - (size_t)(c - s->base);
}

/* Count the batch's rows on their segments (+1 at submit, -1 at completion). */
static void hold_rows(struct ae_state *st, const struct bb_batch *b, int dir)
{
    if (!b->segments) return;
    for (uint32_t i = 0; i < b->n; i++) {
        struct seg *s = b->segments[i] ? find(st, b->segments[i]) : NULL;
        if (s) s->busy += (uint32_t)dir;
    }
}

static void echo(const struct ae_state *st, struct bb_batch *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        const struct bb_view *in = &b->inputs[i];
        struct bb_outbuf *out = &b->outputs[i];
        if (out->status) continue; /* failed at submit */
        size_t len = in->len <= out->cap ? in->len : out->cap;
        if (len) memcpy(out->ptr, in->ptr, len);
        out->len = len;
        if (in->len > out->cap) out->status = BB_ETOOBIG;
        if (st->row_status) out->status = st->row_status;
        if (st->grow_len) out->len = out->cap = st->grow_len;
    }
}

static void *completer(void *arg)
{
    struct ae_state *st = arg;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (!st->qlen && !st->stop) pthread_cond_wait(&st->cv, &st->mu);
        if (!st->qlen) break;
        if (st->pair && st->max_seen < MAX_INFLIGHT) {
            /* Until two batches were in flight once, wait (bounded) for a
             * second batch to join this one. */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 5;
            while (st->inflight < MAX_INFLIGHT && !st->stop &&
                   pthread_cond_timedwait(&st->cv, &st->mu, &until) == 0) {
            }
        }
        struct bb_batch *b = st->q[st->qhead];
        st->qhead = (st->qhead + 1) % QCAP;
        st->qlen--;
        pthread_mutex_unlock(&st->mu);

        if (st->delay_us) sleep_us(st->delay_us);
        echo(st, b);

        pthread_mutex_lock(&st->mu);
        st->completes++;
        int rc = st->fail_complete && st->completes % st->fail_complete == 0 ? BB_EBACKEND : 0;
        hold_rows(st, b, -1);
        st->inflight--;
        pthread_mutex_unlock(&st->mu);
        if (rc) snprintf(b->errmsg, b->errmsg_cap, "asyncecho: batch %lu failed", st->completes);
        b->complete(b, rc); /* b is the broker's again */
        pthread_mutex_lock(&st->mu);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

static int parse_u64(const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || errno) return -1;
    *out = x;
    return 0;
}

static int parse_int(const char *v, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < INT_MIN || x > INT_MAX) return -1;
    *out = (int)x;
    return 0;
}

static int ae_init2(const struct bb_init_args *a, void **state, char *err, size_t errlen)
{
    struct ae_state *st = calloc(1, sizeof *st);
    if (!st) return BB_ENOMEM;
    for (size_t i = 0; i < a->nparams; i++) {
        const char *k = a->params[i].key, *v = a->params[i].value;
        int bad = 0;
        if (!strcmp(k, "delay_us")) bad = parse_u64(v, &st->delay_us);
        else if (!strcmp(k, "register_us")) bad = parse_u64(v, &st->register_us);
        else if (!strcmp(k, "fail_submit")) bad = parse_u64(v, &st->fail_submit);
        else if (!strcmp(k, "fail_complete")) bad = parse_u64(v, &st->fail_complete);
        else if (!strcmp(k, "grow_len")) bad = parse_u64(v, &st->grow_len);
        else if (!strcmp(k, "row_status")) bad = parse_int(v, &st->row_status);
        else if (!strcmp(k, "pair")) st->pair = !strcmp(v, "on");
        else if (!strcmp(k, "complete_twice")) st->complete_twice = !strcmp(v, "on");
        else if (!strcmp(k, "refuse_completed")) st->refuse_completed = !strcmp(v, "on");
        else if (!strcmp(k, "init_err_fill")) st->init_err_fill = !strcmp(v, "on");
        else if (!strcmp(k, "fail_register")) st->fail_register = !strcmp(v, "on");
        else if (!strcmp(k, "hold")) snprintf(st->hold, sizeof st->hold, "%s", v);
        else if (!strcmp(k, "stats")) snprintf(st->stats, sizeof st->stats, "%s", v);
        else bad = 1;
        if (bad) {
            snprintf(err, errlen, "asyncecho: bad param %s = \"%s\"", k, v);
            free(st);
            return BB_EINVAL;
        }
    }
    if (st->init_err_fill) {
        memset(err, 'x', errlen); /* strncpy's way: no NUL where it does not fit */
        free(st);
        return BB_EINVAL;
    }
    st->instance = a->instance;
    st->instances = a->instances;
    st->max_batch_size = a->max_batch_size;
    st->node = a->numa_node;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    if (pthread_create(&st->thread, NULL, completer, st) != 0) {
        snprintf(err, errlen, "asyncecho: cannot start its thread");
        free(st);
        return BB_ESYS;
    }
    char msg[128];
    snprintf(msg, sizeof msg, "asyncecho: instance %u of %u, max_batch_size %u, node %d",
             a->instance, a->instances, a->max_batch_size, (int)a->numa_node);
    a->log(a->log_ctx, BB_BACKEND_LOG_INFO, msg);
    st->log = a->log;
    st->log_ctx = a->log_ctx;
    *state = st;
    return 0;
}

static int ae_submit(void *state, struct bb_batch *b)
{
    struct ae_state *st = state;
    pthread_mutex_lock(&st->mu);
    st->submits++;
    if (st->fail_submit && st->submits % st->fail_submit == 0) {
        st->refused++;
        pthread_mutex_unlock(&st->mu);
        snprintf(b->errmsg, b->errmsg_cap, "asyncecho: refused batch %lu", st->submits);
        return BB_EBACKEND;
    }
    if (st->complete_twice || st->refuse_completed) {
        /* Answered within submit, where no batch can be handed out again
         * before it returns (the tests run one executor, or the dispatcher,
         * which is this thread): the call that breaks the contract always
         * finds this batch answered, never a new submission. */
        st->completes++;
        echo(st, b);
        b->complete(b, 0);
        if (st->complete_twice)
            b->complete(b, 0);
        pthread_mutex_unlock(&st->mu);
        return st->complete_twice ? 0 : BB_EBACKEND;
    }
    if (++st->inflight > MAX_INFLIGHT || st->qlen == QCAP) st->over++;
    if (st->inflight > st->max_seen) st->max_seen = st->inflight;
    for (uint32_t i = 0; i < b->n; i++) {
        st->rows++;
        uint32_t id = b->segments ? b->segments[i] : 0;
        if (!id) continue; /* the broker's own memory */
        struct seg *s = find(st, id);
        if (!s || !within(s, b->inputs[i].ptr, b->inputs[i].len) ||
            !within(s, b->outputs[i].ptr, b->outputs[i].cap)) {
            st->bad_rows++;
            b->outputs[i].status = BB_EINVAL;
        }
    }
    hold_rows(st, b, +1);
    if (st->qlen < QCAP) {
        st->q[(st->qhead + st->qlen) % QCAP] = b;
        st->qlen++;
    }
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    return 0;
}

static int ae_register(void *state, const struct bb_segment *seg)
{
    struct ae_state *st = state;
    int fd = st->hold[0] ? open(st->hold, O_WRONLY | O_APPEND) : -1;
    if (fd >= 0) {
        dprintf(fd, "%u\n", seg->id);
        close(fd);
    }
    for (int waited = 0; st->hold[0] && access(st->hold, F_OK) == 0 && waited < 60000; waited++)
        sleep_us(1000);
    if (st->register_us) sleep_us(st->register_us);
    if (st->fail_register) { /* rows of it come all the same */
        char msg[96];
        snprintf(msg, sizeof msg, "asyncecho: segment %u not registered: its rows are staged",
                 seg->id);
        st->log(st->log_ctx, BB_BACKEND_LOG_WARN, msg);
        return BB_ESYS;
    }
    pthread_mutex_lock(&st->mu);
    int rc = 0;
    if (seg->size < sizeof *seg || seg->id == 0 || find(st, seg->id)) {
        st->bad_rows++; /* not a segment as the ABI describes it */
        rc = BB_EINVAL;
    } else if (st->nsegs == MAX_SEGS) {
        rc = BB_ENOMEM;
    } else {
        st->segs[st->nsegs++] = (struct seg){.id = seg->id, .base = seg->base, .len = seg->len};
        st->registers++;
    }
    pthread_mutex_unlock(&st->mu);
    return rc;
}

static void ae_unregister(void *state, const struct bb_segment *seg)
{
    struct ae_state *st = state;
    pthread_mutex_lock(&st->mu);
    struct seg *s = find(st, seg->id);
    if (s) {
        if (s->busy) st->early_unregisters++;
        *s = st->segs[--st->nsegs];
        st->unregisters++;
    }
    pthread_mutex_unlock(&st->mu);
}

static void ae_fini(void *state)
{
    struct ae_state *st = state;
    pthread_mutex_lock(&st->mu);
    if (st->inflight || st->qlen || st->nsegs) st->fini_busy++;
    st->stop = true;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    pthread_join(st->thread, NULL);
    if (st->stats[0]) {
        int fd = open(st->stats, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dprintf(fd,
                    "instance=%u instances=%u max_batch_size=%u submits=%lu refused=%lu completes=%lu "
                    "rows=%lu bad_rows=%lu over=%lu max_seen=%lu registers=%lu unregisters=%lu "
                    "early_unregisters=%lu fini_busy=%lu\n",
                    st->instance, st->instances, st->max_batch_size, st->submits, st->refused, st->completes,
                    st->rows, st->bad_rows, st->over, st->max_seen, st->registers,
                    st->unregisters, st->early_unregisters, st->fini_busy);
            close(fd);
        }
    }
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st);
}

static const struct bb_backend_ops ae_ops = {
    .abi_version = BB_BACKEND_ABI_VERSION,
    .struct_size = sizeof(struct bb_backend_ops),
    .name = "asyncecho",
    .hardware = BB_BACKEND_HW_GPU,
    .fini = ae_fini,
    .init2 = ae_init2,
    .register_segment = ae_register,
    .unregister_segment = ae_unregister,
    .submit = ae_submit,
    .max_inflight = MAX_INFLIGHT,
};

BB_BACKEND_EXPORT const struct bb_backend_ops *bb_backend_entry(void)
{
    return &ae_ops;
}
