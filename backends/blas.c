/* blas backend: a dense network (a .bbdense file, docs/backends/model-format.md)
 * on OpenBLAS, one GEMM per layer per batch. docs/backends/blas.md.
 *
 * Params:
 *   weights     path of the .bbdense file (required)
 *   threads     threads of this instance, 1..64 (default 1): the batch's rows
 *               are split between them, each running the whole network on its
 *               rows with single-threaded OpenBLAS calls
 *   gemv_below  auto (default), or N: calls (a batch, a thread's share or a
 *               piece of gemm_rows) of fewer than N requests run one GEMV per
 *               request and layer instead of one GEMM per layer
 *   gemm_rows   auto (default), or N: a call takes at most N rows, a larger
 *               share runs as calls of N rows and the rest (0: one call,
 *               whatever its size)
 *   With both auto, init times the network on this CPU at 1 to 16 rows both
 *   ways and as one GEMM at 24, 32, 48 and 64, and runs each share in the
 *   pieces that cost least by those times: OpenBLAS 0.3.21 packs the weights
 *   on every GEMM but skips that at a few small sizes, so on some CPUs a
 *   batch of 32 runs faster as eight GEMMs of 4 than as one
 *   (docs/backends/blas.md). With a fixed gemv_below, gemm_rows auto is 0.
 *
 * Backend ABI 2: init2 allocates every buffer a batch of up to max_batch_size
 * requests needs (at most 1024; larger batches grow them once) and logs the
 * plan it measured to the broker's log.
 *
 * Threads: OpenBLAS 0.3.21 keeps one thread count for the whole process
 * (openblas_set_num_threads; libblas.so.3 of Debian's openblas-pthread is an
 * interface over the same libopenblas.so.0, so libtorch shares it). A count
 * set by one instance would apply to every other instance and model, and two
 * executors each fanning a GEMM out over the same pool oversubscribe the
 * CPUs. So the backend sets OpenBLAS to one thread and does its own
 * splitting: an instance uses exactly `threads` CPUs, whatever else the
 * process runs.
 *
 * Client memory: inputs are views into untrusted shared memory that a client
 * may rewrite while we read it. Only [ptr, ptr+len) of each view is ever read,
 * and len is checked to be exactly one input row first. When the rows of a
 * batch (or of a thread's share) lie at equal distances, as the requests of
 * one client allocated in a row do, the GEMM reads them in place with that
 * distance as its leading dimension; otherwise they are gathered once into a
 * private matrix (a few microseconds for 64 rows of 3 KiB, next to a GEMM of
 * hundreds). A row that changes under the GEMM only garbles its own output.
 * Outputs go from a private matrix into each client's buffer with one copy of
 * out_dim floats. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"
#include "bbdense.h"

/* In libopenblas.so.0, not in the cblas.h of every BLAS. */
extern void openblas_set_num_threads(int num_threads);

#define BLAS_MAX_THREADS 64u
#define CALIBRATE_MAX 16u /* both ways at 1..16 rows; GEMV won at no larger size */
#define PLAN_MAX 64u      /* the plan covers shares of up to this many rows */

/* One thread's share of a batch and its private matrices. */
struct part {
    struct blas_state *st;
    uint32_t first, count;     /* rows of the batch's valid list */
    float *x;                  /* gathered inputs [cap][in_dim] */
    float *a, *b;              /* activations, ping-pong [cap][max_dim] */
    uint32_t cap;              /* rows the matrices hold */
    int rc;                    /* BB_ENOMEM if the matrices could not grow */
    pthread_t thread;
};

struct blas_state {
    struct bbd_net net;
    uint32_t threads;
    uint64_t gemv_sizes;       /* bit n-1: n rows run as n GEMVs (n <= 64) */
    uint32_t gemv_below;       /* a fixed gemv_below, for calls above 64 rows; 0: auto */
    /* rows: a fixed gemm_rows (UINT32_MAX for 0: every share in one call),
     * or 0 for the measured plan: a share of n <= PLAN_MAX rows runs its
     * first piece[n] rows in one call, the rest by the plan of what is left;
     * a larger share runs as blocks of PLAN_MAX by the plan, or whole where
     * piece[PLAN_MAX] is PLAN_MAX. */
    uint32_t rows;
    uint8_t piece[PLAN_MAX + 1];
    struct part *parts;        /* [threads] */
    /* The batch being run (valid requests only). */
    const struct bb_view **in;
    struct bb_outbuf **out;
    uint32_t cap_valid;
    /* Helper threads: wait for a new generation, run their part, count down. */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t gen;
    uint32_t pending;
    bool stop;
};

static int grow(struct part *p, uint32_t rows)
{
    if (rows <= p->cap) return 0;
    const struct bbd_net *net = &p->st->net;
    uint32_t cap = p->cap ? p->cap : 16;
    while (cap < rows) cap *= 2;
    float *x = NULL, *a = NULL, *b = NULL;
    if (posix_memalign((void **)&x, 64, (size_t)cap * net->in_dim * sizeof *x) ||
        posix_memalign((void **)&a, 64, (size_t)cap * net->max_dim * sizeof *a) ||
        posix_memalign((void **)&b, 64, (size_t)cap * net->max_dim * sizeof *b)) {
        free(x);
        free(a);
        return BB_ENOMEM;
    }
    free(p->x);
    free(p->a);
    free(p->b);
    p->x = x;
    p->a = a;
    p->b = b;
    p->cap = cap;
    return 0;
}

/* Rows [first, first + count) of the batch as one matrix: in place when
 * they are equally spaced (stride in floats returned in *ld), else gathered
 * into p->x. */
static const float *input_matrix(struct part *p, uint32_t first, uint32_t count, size_t *ld)
{
    const struct bb_view **in = p->st->in + first;
    size_t row = (size_t)p->st->net.in_dim * sizeof(float);
    uintptr_t base = (uintptr_t)in[0]->ptr;
    bool inplace = base % sizeof(float) == 0;
    size_t stride = row;
    if (inplace && count > 1) {
        uintptr_t next = (uintptr_t)in[1]->ptr;
        /* The distance becomes the GEMM's int leading dimension. */
        inplace = next > base && (next - base) % sizeof(float) == 0 && next - base >= row &&
                  (next - base) / sizeof(float) <= INT_MAX;
        stride = inplace ? next - base : row;
        for (uint32_t i = 2; inplace && i < count; i++)
            inplace = (uintptr_t)in[i]->ptr == base + i * stride;
    }
    if (inplace) {
        *ld = stride / sizeof(float);
        return (const float *)in[0]->ptr;
    }
    for (uint32_t i = 0; i < count; i++)
        memcpy(p->x + (size_t)i * p->st->net.in_dim, in[i]->ptr, row);
    *ld = p->st->net.in_dim;
    return p->x;
}

/* y[r][j] = act(sum_k x[r][k] w[j][k] + b[j]) for every layer, on rows
 * [first, first + count) in one call per layer (one GEMM, or one GEMV per
 * row); the last layer's rows are copied out to the clients. */
static void run_rows(struct part *p, uint32_t first, uint32_t count)
{
    const struct bbd_net *net = &p->st->net;
    size_t ldx;
    const float *x = input_matrix(p, first, count, &ldx);
    float *y = p->a, *spare = p->b;
    bool gemv = count <= 64 ? (p->st->gemv_sizes >> (count - 1) & 1) != 0
                            : count < p->st->gemv_below;
    for (uint32_t l = 0; l < net->nlayers; l++) {
        const struct bbd_layer *L = &net->layers[l];
        for (uint32_t r = 0; r < count; r++)
            memcpy(y + (size_t)r * L->out, L->b, L->out * sizeof(float));
        if (gemv) {
            for (uint32_t r = 0; r < count; r++)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)L->out, (int)L->in, 1.0f, L->w,
                            (int)L->in, x + r * ldx, 1, 1.0f, y + (size_t)r * L->out, 1);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)count, (int)L->out,
                        (int)L->in, 1.0f, x, (int)ldx, L->w, (int)L->in, 1.0f, y, (int)L->out);
        }
        bbd_activate(L->act, y, count, L->out, L->out);
        x = y;
        ldx = L->out;
        y = spare;
        spare = (float *)x;
    }
    size_t bytes = (size_t)net->out_dim * sizeof(float);
    for (uint32_t r = 0; r < count; r++) {
        struct bb_outbuf *o = p->st->out[first + r];
        memcpy(o->ptr, x + (size_t)r * net->out_dim, bytes);
        o->len = bytes;
    }
}

/* This thread's share, in the pieces of the plan. */
static void run_part(struct part *p)
{
    p->rc = 0;
    if (!p->count) return;
    if (grow(p, p->count) < 0) {
        p->rc = BB_ENOMEM;
        return;
    }
    const uint8_t *piece = p->st->piece;
    uint32_t at = p->first, left = p->count, rows = p->st->rows;
    if (rows) { /* fixed: pieces of `rows`, the last smaller */
        while (left) {
            uint32_t k = rows < left ? rows : left;
            run_rows(p, at, k);
            at += k;
            left -= k;
        }
        return;
    }
    if (left > PLAN_MAX && piece[PLAN_MAX] == PLAN_MAX) {
        run_rows(p, at, left); /* one GEMM already beats pieces at PLAN_MAX */
        return;
    }
    while (left) {
        uint32_t block = left < PLAN_MAX ? left : PLAN_MAX;
        left -= block;
        while (block) {
            uint32_t k = piece[block];
            run_rows(p, at, k);
            at += k;
            block -= k;
        }
    }
}

static void *helper_main(void *arg)
{
    struct part *p = arg;
    struct blas_state *st = p->st;
    uint64_t seen = 0;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (!st->stop && st->gen == seen) pthread_cond_wait(&st->go, &st->mu);
        if (st->stop) break;
        seen = st->gen;
        pthread_mutex_unlock(&st->mu);
        run_part(p);
        pthread_mutex_lock(&st->mu);
        if (--st->pending == 0) pthread_cond_signal(&st->done);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

static void blas_fini(void *state)
{
    struct blas_state *st = state;
    if (!st) return;
    if (st->parts) {
        pthread_mutex_lock(&st->mu);
        st->stop = true;
        pthread_cond_broadcast(&st->go);
        pthread_mutex_unlock(&st->mu);
        for (uint32_t t = 1; t < st->threads; t++)
            if (st->parts[t].thread) pthread_join(st->parts[t].thread, NULL);
        for (uint32_t t = 0; t < st->threads; t++) {
            free(st->parts[t].x);
            free(st->parts[t].a);
            free(st->parts[t].b);
        }
    }
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->go);
    pthread_cond_destroy(&st->done);
    free(st->parts);
    free(st->in);
    free(st->out);
    bbd_free(&st->net);
    free(st);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Seconds one call of n rows takes (the part's own zeroed rows, in place),
 * the best of three after a warm-up. */
static double time_rows(struct part *p, uint32_t n)
{
    double best = 1e9;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now_s();
        run_rows(p, 0, n);
        double t = now_s() - t0;
        if (rep > 0 && t < best) best = t;
    }
    return best;
}

/* The plan for a fixed gemm_rows: calls of at most `rows` (0: any). */
static void plan_fixed(struct blas_state *st, uint32_t rows)
{
    st->rows = rows ? rows : UINT32_MAX;
    for (uint32_t n = 1; n <= PLAN_MAX; n++) /* for the log */
        st->piece[n] = (uint8_t)(rows && rows < n ? rows : n);
}

/* Measure and plan (init, a few milliseconds; a busy CPU may misjudge a
 * size, which costs speed, never results). GEMV against one GEMM at 1 to
 * CALIBRATE_MAX rows; with `pieces`, also one GEMM at 24, 32, 48 and 64
 * rows, the sizes between estimated on the line between those GEMM times,
 * and every share of n rows planned as the pieces of least total time (a
 * piece being a measured size, or the whole share): cost[n] = min over
 * first pieces c of one(c) + cost[n - c]. The whole share is the first
 * candidate and larger first pieces come before smaller ones; a candidate
 * must beat the best so far by 5%, so noise does not split a batch for
 * nothing. */
static int calibrate(struct blas_state *st, bool pieces)
{
    static const uint32_t large[] = {24, 32, 48, PLAN_MAX};
    struct part *p = &st->parts[0];
    if (grow(p, PLAN_MAX) < 0) return BB_ENOMEM;
    memset(p->x, 0, (size_t)PLAN_MAX * st->net.in_dim * sizeof(float));
    struct bb_view views[PLAN_MAX];
    const struct bb_view *in[PLAN_MAX];
    struct bb_outbuf outs[PLAN_MAX], *out[PLAN_MAX];
    float *sink = malloc((size_t)PLAN_MAX * st->net.out_dim * sizeof(float));
    if (!sink) return BB_ENOMEM;
    for (uint32_t i = 0; i < PLAN_MAX; i++) {
        /* Rows of the part's own matrix: equally spaced, used in place. */
        views[i] = (struct bb_view){p->x + (size_t)i * st->net.in_dim, st->net.in_dim * 4u};
        in[i] = &views[i];
        outs[i] = (struct bb_outbuf){.ptr = sink + (size_t)i * st->net.out_dim};
        out[i] = &outs[i];
    }
    st->in = in;
    st->out = out;
    double one[PLAN_MAX + 1] = {0}; /* one call of n rows; 0: not measured */
    double gemm[PLAN_MAX + 1] = {0}; /* the same as one GEMM, for the line */
    uint64_t found = 0;
    for (uint32_t n = 1; n <= CALIBRATE_MAX; n++) {
        st->gemv_sizes = 0;
        gemm[n] = time_rows(p, n);
        st->gemv_sizes = UINT64_MAX;
        double gemv = time_rows(p, n);
        if (gemv < gemm[n]) found |= 1ull << (n - 1);
        one[n] = gemv < gemm[n] ? gemv : gemm[n];
    }
    st->gemv_sizes = 0;
    if (pieces)
        for (size_t i = 0; i < sizeof large / sizeof large[0]; i++)
            one[large[i]] = gemm[large[i]] = time_rows(p, large[i]);
    st->gemv_sizes = found;
    st->in = NULL;
    st->out = NULL;
    free(sink);
    if (!pieces)
        return 0; /* the caller's plan_fixed stands */
    st->rows = 0;
    double cost[PLAN_MAX + 1] = {0};
    for (uint32_t n = 1, lo = 1; n <= PLAN_MAX; n++) {
        double whole = one[n];
        if (whole > 0)
            lo = n;
        else { /* one GEMM: on the line from the last measured size to the next */
            uint32_t hi = n + 1;
            while (one[hi] <= 0) hi++;
            whole = gemm[lo] + (gemm[hi] - gemm[lo]) * (n - lo) / (hi - lo);
        }
        cost[n] = whole;
        st->piece[n] = (uint8_t)n;
        for (uint32_t c = n - 1; c >= 1; c--) {
            if (one[c] <= 0) continue;
            double t = one[c] + cost[n - c];
            if (t < cost[n] * 0.95) {
                cost[n] = t;
                st->piece[n] = (uint8_t)c;
            }
        }
    }
    return 0;
}

static int parse_uint(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    char *end;
    if (!s[0] || strspn(s, "0123456789") != strlen(s)) return -1;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* The sizes that run as GEMVs, for the log: "1-7", "1-3, 5" or "none". */
static void describe_gemv(uint64_t sizes, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = 0;
    for (uint32_t n = 1; n <= 64 && at < len; n++) {
        if (!(sizes >> (n - 1) & 1)) continue;
        uint32_t last = n;
        while (last < 64 && (sizes >> last & 1)) last++;
        int w = last > n ? snprintf(buf + at, len - at, "%s%u-%u", at ? ", " : "", n, last)
                         : snprintf(buf + at, len - at, "%s%u", at ? ", " : "", n);
        at += w > 0 ? (size_t)w : 0;
        n = last;
    }
    if (!buf[0]) snprintf(buf, len, "none");
}

/* The calls of a share of n rows, for the log: "64", "4x8", "32+4x2+3". */
static void describe_pieces(const struct blas_state *st, uint32_t n, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = 0;
    while (n && at < len) {
        uint32_t k = st->piece[n], times = 0;
        while (n >= k && st->piece[n] == k) {
            n -= k;
            times++;
        }
        int w = times > 1 ? snprintf(buf + at, len - at, "%s%ux%u", at ? "+" : "", k, times)
                          : snprintf(buf + at, len - at, "%s%u", at ? "+" : "", k);
        at += w > 0 ? (size_t)w : 0;
    }
}

/* Room for a batch of `rows` requests now, so that batches up to that size
 * allocate nothing: the request lists and each thread's matrices (its share,
 * as blas_process splits). */
static int preallocate(struct blas_state *st, uint32_t rows)
{
    const struct bb_view **in = realloc(st->in, rows * sizeof *in);
    if (in) st->in = in;
    struct bb_outbuf **out = realloc(st->out, rows * sizeof *out);
    if (out) st->out = out;
    if (!in || !out) return BB_ENOMEM;
    st->cap_valid = rows;
    uint32_t share = (rows + st->threads - 1) / st->threads;
    for (uint32_t t = 0; t < st->threads; t++)
        if (grow(&st->parts[t], share) < 0) return BB_ENOMEM;
    return 0;
}

/* Batches larger than this allocate their matrices when they first come. */
#define PREALLOCATE_MAX 1024u

static int blas_init2(const struct bb_init_args *a, void **state, char *err, size_t errlen)
{
    const char *weights = NULL;
    uint32_t threads = 1, gemv_below = 0, gemm_rows = 0;
    bool gemv_auto = true, rows_auto = true;
    for (size_t i = 0; i < a->nparams; i++) {
        const char *k = a->params[i].key, *v = a->params[i].value;
        if (!strcmp(k, "weights")) {
            weights = v;
        } else if (!strcmp(k, "threads")) {
            if (parse_uint(v, 1, BLAS_MAX_THREADS, &threads) < 0) {
                snprintf(err, errlen, "blas: threads = \"%s\": expected 1 to %u", v,
                         BLAS_MAX_THREADS);
                return BB_EINVAL;
            }
        } else if (!strcmp(k, "gemv_below")) {
            gemv_auto = !strcmp(v, "auto");
            if (!gemv_auto && parse_uint(v, 0, 65536, &gemv_below) < 0) {
                snprintf(err, errlen, "blas: gemv_below = \"%s\": expected auto or 0 to 65536", v);
                return BB_EINVAL;
            }
        } else if (!strcmp(k, "gemm_rows")) {
            rows_auto = !strcmp(v, "auto");
            if (!rows_auto && parse_uint(v, 0, 65536, &gemm_rows) < 0) {
                snprintf(err, errlen, "blas: gemm_rows = \"%s\": expected auto or 0 to 65536", v);
                return BB_EINVAL;
            }
        } else {
            snprintf(err, errlen,
                     "blas: unknown param \"%s\" (known: weights, threads, gemv_below, gemm_rows)",
                     k);
            return BB_EINVAL;
        }
    }
    if (!weights || !weights[0]) {
        snprintf(err, errlen, "blas: param.weights (a .bbdense file) is required");
        return BB_EINVAL;
    }
    struct blas_state *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errlen, "blas: out of memory");
        return BB_ENOMEM;
    }
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->go, NULL);
    pthread_cond_init(&st->done, NULL);
    char why[256];
    int rc = bbd_load(weights, &st->net, why, sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "blas: %s", why);
        blas_fini(st);
        return rc;
    }
    openblas_set_num_threads(1);
    st->threads = threads;
    st->gemv_sizes = gemv_below > 64 ? UINT64_MAX
                     : gemv_below ? (1ull << (gemv_below - 1)) - 1 : 0;
    st->gemv_below = gemv_auto ? 0 : gemv_below;
    st->parts = calloc(threads, sizeof *st->parts);
    if (!st->parts) goto nomem;
    for (uint32_t t = 0; t < threads; t++) st->parts[t].st = st;
    for (uint32_t t = 1; t < threads; t++) {
        rc = pthread_create(&st->parts[t].thread, NULL, helper_main, &st->parts[t]);
        if (rc) {
            st->parts[t].thread = 0;
            snprintf(err, errlen, "blas: cannot start thread %u: %s", t, strerror(rc));
            blas_fini(st);
            return BB_ENOMEM;
        }
    }
    plan_fixed(st, gemm_rows);
    if (gemv_auto && calibrate(st, rows_auto) < 0) goto nomem;
    if (preallocate(st, a->max_batch_size < PREALLOCATE_MAX ? a->max_batch_size : PREALLOCATE_MAX) < 0)
        goto nomem;
    char sizes[160], calls[4][48], msg[512];
    describe_gemv(st->gemv_sizes, sizes, sizeof sizes);
    for (uint32_t i = 0; i < 4; i++) describe_pieces(st, 8u << i, calls[i], sizeof calls[i]);
    snprintf(msg, sizeof msg,
             "blas: %u layer(s), %u inputs, %u outputs, %u thread(s); GEMV at batch sizes %s; "
             "calls at 8, 16, 32, 64 rows: %s, %s, %s, %s (%s)",
             st->net.nlayers, st->net.in_dim, st->net.out_dim, threads, sizes, calls[0], calls[1],
             calls[2], calls[3],
             gemv_auto && rows_auto ? "measured"
             : gemv_auto            ? "GEMV sizes measured, gemm_rows fixed"
                                    : "params");
    a->log(a->log_ctx, BB_BACKEND_LOG_INFO, msg);
    *state = st;
    return 0;
nomem:
    snprintf(err, errlen, "blas: out of memory");
    blas_fini(st);
    return BB_ENOMEM;
}

static int fail_batch(struct bb_batch *batch, int rc, const char *msg)
{
    if (batch->errmsg && batch->errmsg_cap) snprintf(batch->errmsg, batch->errmsg_cap, "%s", msg);
    return rc;
}

static int blas_process(void *state, struct bb_batch *batch)
{
    struct blas_state *st = state;
    uint32_t n = batch->n;
    if (n > st->cap_valid) {
        const struct bb_view **in = realloc(st->in, n * sizeof *in);
        if (in) st->in = in;
        struct bb_outbuf **out = realloc(st->out, n * sizeof *out);
        if (out) st->out = out;
        if (!in || !out) return fail_batch(batch, BB_ENOMEM, "blas: out of memory");
        st->cap_valid = n;
    }
    /* A request of the wrong size fails alone; the rest run. */
    size_t in_bytes = (size_t)st->net.in_dim * sizeof(float);
    size_t out_bytes = (size_t)st->net.out_dim * sizeof(float);
    uint32_t valid = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct bb_outbuf *o = &batch->outputs[i];
        o->len = 0;
        if (batch->inputs[i].len != in_bytes) {
            o->status = BB_EINVAL;
        } else if (o->cap < out_bytes) {
            o->status = BB_ETOOBIG;
        } else {
            st->in[valid] = &batch->inputs[i];
            st->out[valid++] = o;
        }
    }
    if (!valid) return 0;
    /* Equal shares; a thread gets no rows rather than fewer than 4, where a
     * GEMM's fixed cost outweighs the split. */
    uint32_t used = st->threads;
    while (used > 1 && valid / used < 4) used--;
    for (uint32_t t = 0, first = 0; t < st->threads; t++) {
        uint32_t count = t < used ? valid / used + (t < valid % used) : 0;
        st->parts[t].first = first;
        st->parts[t].count = count;
        first += count;
    }
    if (st->threads > 1) {
        pthread_mutex_lock(&st->mu);
        st->pending = st->threads - 1;
        st->gen++;
        pthread_cond_broadcast(&st->go);
        pthread_mutex_unlock(&st->mu);
    }
    run_part(&st->parts[0]);
    if (st->threads > 1) {
        pthread_mutex_lock(&st->mu);
        while (st->pending) pthread_cond_wait(&st->done, &st->mu);
        pthread_mutex_unlock(&st->mu);
    }
    for (uint32_t t = 0; t < st->threads; t++)
        if (st->parts[t].rc < 0) {
            for (uint32_t i = 0; i < valid; i++) st->out[i]->len = 0;
            return fail_batch(batch, BB_ENOMEM, "blas: out of memory for the batch's matrices");
        }
    return 0;
}

static const struct bb_backend_ops blas_ops = {
    .abi_version = BB_BACKEND_ABI_VERSION,
    .struct_size = sizeof(struct bb_backend_ops),
    .name = "blas",
    .hardware = BB_BACKEND_HW_CPU,
    .init2 = blas_init2,
    .process = blas_process,
    .fini = blas_fini,
};

BB_BACKEND_EXPORT const struct bb_backend_ops *bb_backend_entry(void)
{
    return &blas_ops;
}
