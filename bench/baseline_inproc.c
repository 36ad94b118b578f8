/* Baseline "inproc": the backend called directly in the client thread, with
 * the model's batching policy and nothing else: no broker, no shared memory,
 * no other thread. The floor for the broker's latency and CPU cost.
 *
 * Policy, per thread, the broker's own (broker/batcher.c): a batch is cut when
 * max_batch_size requests wait or when the oldest has waited max_wait_us, and
 * takes the oldest requests (FIFO: the broker also orders by priority). The
 * wait is kept even when the thread itself could add nothing to the batch, so
 * that the difference to the broker is the transport and the broker's work. */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

static struct bench_backend backend; /* loaded in the parent, inherited by fork */
static int backend_loaded;

struct ithread {
    void *state;
    uint32_t n, max_batch;
    uint64_t max_wait_ns;
    enum bench_wait mode;
    size_t in_cap, out_cap;
    unsigned char *in, *out;
    uint32_t *len, *prio, *done;
    size_t *out_len;
    int *status;
    uint64_t *t_sub;
    uint32_t *queue, qhead, qcount; /* pending slots, oldest first (ring of n) */
    struct bb_view *views;
    struct bb_outbuf *outs;
    uint8_t *prios;
    uint64_t *batch_count;
    struct bench_shared *sh;
};

static int i_server_start(struct bench_env *env, pid_t *server_pid)
{
    char err[512];
    *server_pid = 0;
    if (!backend_loaded && bench_backend_load(&env->o->model, &backend, err, sizeof err) < 0) {
        bench_fail(env->sh, "inproc: %s", err);
        return -1;
    }
    backend_loaded = 1;
    env->run->has_batch_hist = 1;
    return 0;
}

static int i_proc_open(struct bench_env *env, int proc, void **out)
{
    (void)proc;
    *out = env;
    return 0;
}

static void i_proc_close(void *ps)
{
    (void)ps;
}

static void i_thread_close(void *th)
{
    struct ithread *t = th;
    if (!t) return;
    if (t->state) backend.ops->fini(t->state);
    free(t->in);
    free(t->out);
    free(t->len);
    free(t->prio);
    free(t->done);
    free(t->out_len);
    free(t->status);
    free(t->t_sub);
    free(t->queue);
    free(t->views);
    free(t->outs);
    free(t->prios);
    free(t);
}

static int i_thread_open(void *ps, int thread, uint32_t slots, void **out)
{
    struct bench_env *env = ps;
    const struct bench_opts *o = env->o;
    struct ithread *t = calloc(1, sizeof *t);
    if (!t) return -1;
    t->n = slots;
    t->max_batch = o->model.max_batch_size ? o->model.max_batch_size : 1;
    t->max_wait_ns = (uint64_t)o->model.max_wait_us * 1000u;
    t->mode = o->wait;
    t->in_cap = o->pmax;
    t->out_cap = o->out_cap;
    t->in = malloc(slots * (o->pmax ? o->pmax : 1));
    t->out = malloc(slots * (o->out_cap ? o->out_cap : 1));
    t->len = calloc(slots, sizeof *t->len);
    t->prio = calloc(slots, sizeof *t->prio);
    t->done = calloc(slots, sizeof *t->done);
    t->out_len = calloc(slots, sizeof *t->out_len);
    t->status = calloc(slots, sizeof *t->status);
    t->t_sub = calloc(slots, sizeof *t->t_sub);
    t->queue = calloc(slots, sizeof *t->queue);
    t->views = calloc(t->max_batch, sizeof *t->views);
    t->outs = calloc(t->max_batch, sizeof *t->outs);
    t->prios = calloc(t->max_batch, sizeof *t->prios);
    t->batch_count = env->res[thread].batch_count;
    t->sh = env->sh;
    char err[512];
    if (!t->in || !t->out || !t->len || !t->prio || !t->done || !t->out_len || !t->status ||
        !t->t_sub || !t->queue || !t->views || !t->outs || !t->prios) {
        bench_fail(env->sh, "inproc: out of memory");
        i_thread_close(t);
        return -1;
    }
    if (bench_backend_state(&backend, &t->state, err, sizeof err) < 0) {
        bench_fail(env->sh, "inproc: %s", err);
        t->state = NULL;
        i_thread_close(t);
        return -1;
    }
    *out = t;
    return 0;
}

static void *i_input(void *th, uint32_t slot)
{
    struct ithread *t = th;
    return t->in + (size_t)slot * t->in_cap;
}

static int i_submit(void *th, uint32_t slot, size_t len, int prio)
{
    struct ithread *t = th;
    t->len[slot] = (uint32_t)len;
    t->prio[slot] = (uint32_t)prio;
    t->done[slot] = 0;
    t->t_sub[slot] = bench_now_ns();
    t->queue[(t->qhead + t->qcount++) % t->n] = slot;
    return 0;
}

static void run_batch(struct ithread *t)
{
    uint32_t k = t->qcount < t->max_batch ? t->qcount : t->max_batch;
    for (uint32_t i = 0; i < k; i++) {
        uint32_t s = t->queue[(t->qhead + i) % t->n];
        t->views[i] = (struct bb_view){t->in + (size_t)s * t->in_cap, t->len[s]};
        t->outs[i] = (struct bb_outbuf){.ptr = t->out + (size_t)s * t->out_cap, .cap = t->out_cap};
        t->prios[i] = (uint8_t)t->prio[s];
    }
    char errmsg[128];
    struct bb_batch b = {.n = k, .inputs = t->views, .outputs = t->outs, .priorities = t->prios,
                         .errmsg = errmsg, .errmsg_cap = sizeof errmsg};
    bench_backend_run(&backend, t->state, &b);
    for (uint32_t i = 0; i < k; i++) {
        uint32_t s = t->queue[(t->qhead + i) % t->n];
        t->status[s] = t->outs[i].status;
        t->out_len[s] = t->outs[i].len;
        t->done[s] = 1;
    }
    t->qhead = (t->qhead + k) % t->n;
    t->qcount -= k;
    bench_count_batch(t->sh, t->batch_count, k);
}

static int i_wait(void *th, uint32_t slot, uint64_t deadline, int *status)
{
    struct ithread *t = th;
    for (;;) {
        if (t->done[slot]) {
            *status = t->status[slot];
            return 1;
        }
        if (!t->qcount) {
            fprintf(stderr, "bb-bench: inproc: waiting on a request never submitted\n");
            return -1;
        }
        uint64_t now = bench_now_ns();
        uint64_t due = t->t_sub[t->queue[t->qhead]] + t->max_wait_ns;
        if (t->qcount >= t->max_batch || now >= due) {
            run_batch(t);
            continue;
        }
        if (deadline <= due) { /* the caller submits again before the batch is due */
            if (deadline > now) bench_wait_until(deadline, t->mode);
            return 0;
        }
        bench_wait_until(due, t->mode);
    }
}

static const void *i_output(void *th, uint32_t slot, size_t *len)
{
    struct ithread *t = th;
    *len = t->out_len[slot];
    return t->out + (size_t)slot * t->out_cap;
}

const struct bench_xport bench_xport_inproc = {
    .name = "inproc",
    .server_start = i_server_start,
    .proc_open = i_proc_open,
    .proc_close = i_proc_close,
    .thread_open = i_thread_open,
    .thread_close = i_thread_close,
    .input = i_input,
    .submit = i_submit,
    .wait = i_wait,
    .output = i_output,
};
