/* The system under test: requests through libbatchbroker to a broker, one
 * bb_client per client process shared by its threads (--client-per-thread:
 * one per thread). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchbroker/client.h"
#include "bench.h"

struct bproc {
    struct bench_env *env;
    bb_client *c;
    bb_model *m;
};

struct bthread {
    struct bproc *p;
    bb_request **r;
    uint32_t n;
    struct bproc *own; /* --client-per-thread: the thread's own client */
};

static pid_t broker_pid;    /* parent only */
static int broker_spawned;
static bb_client *stats_client; /* parent only, opened after the clients forked */
static bb_model *stats_model;

static int b_server_start(struct bench_env *env, pid_t *server_pid)
{
    const struct bench_opts *o = env->o;
    broker_spawned = 0;
    if (o->spawn) {
        if (bench_spawn_broker(o, o->socket, &broker_pid) < 0) {
            bench_fail(env->sh, "cannot start %s --config %s", o->broker_bin, o->config);
            return -1;
        }
        broker_spawned = 1;
    } else {
        broker_pid = o->broker_pid > 0 ? o->broker_pid : bench_socket_peer(o->socket);
        if (broker_pid <= 0) {
            bench_fail(env->sh, "no broker listens on %s", o->socket);
            return -1;
        }
    }
    *server_pid = broker_pid;
    return 0;
}

static void b_server_stop(struct bench_env *env)
{
    (void)env;
    if (broker_spawned) bench_stop_process(broker_pid);
    broker_spawned = 0;
}

/* A client for `threads` threads of process proc (all of them, or one). */
static int connect_client(struct bench_env *env, int proc, uint32_t threads, struct bproc **out)
{
    const struct bench_opts *o = env->o;
    struct bproc *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->env = env;
    uint64_t per_req = ((o->pmax + 63) & ~63ull) + ((o->out_cap + 63) & ~63ull);
    uint32_t lanes = o->lanes > 1 ? o->lanes : 1; /* main.c: only with several threads */
    uint32_t per_lane = (threads + lanes - 1) / lanes; /* threads on each lane, at most */
    uint64_t need = (uint64_t)per_lane * o->concurrency * per_req;
    struct bb_client_opts co = {0};
    if (2 * need > (64u << 20)) co.segment_bytes = (size_t)((2 * need + (1u << 20) - 1) & ~((1ull << 20) - 1));
    if ((uint64_t)per_lane * o->concurrency > 1024) co.max_inflight = per_lane * o->concurrency;
    int rc = bb_connect_lanes(o->socket, &co, lanes, &p->c);
    if (rc == 0) rc = bb_model_open(p->c, o->model.name, &p->m);
    if (rc < 0) {
        bench_fail(env->sh, "client %d: %s: %s", proc, o->socket, bb_strerror(rc));
        bb_disconnect(p->c);
        free(p);
        return -1;
    }
    bb_client_set_spin_ns(p->c, o->wait == BENCH_WAIT_SPIN ? o->spin_ns : 0);
    *out = p;
    return 0;
}

static int b_proc_open(struct bench_env *env, int proc, void **out)
{
    if (env->o->client_per_thread) { /* the threads connect */
        struct bproc *p = calloc(1, sizeof *p);
        if (!p) return -1;
        p->env = env;
        *out = p;
        return 0;
    }
    return connect_client(env, proc, env->o->threads, (struct bproc **)out);
}

static void b_proc_close(void *ps)
{
    struct bproc *p = ps;
    bb_disconnect(p->c);
    free(p);
}

static void b_thread_close(void *th)
{
    struct bthread *t = th;
    if (!t) return;
    for (uint32_t i = 0; i < t->n; i++) bb_request_free(t->r[i]);
    free(t->r);
    if (t->own) b_proc_close(t->own);
    free(t);
}

static int b_thread_open(void *ps, int thread, uint32_t slots, void **out)
{
    struct bproc *p = ps;
    const struct bench_opts *o = p->env->o;
    struct bthread *t = calloc(1, sizeof *t);
    if (!t || !(t->r = calloc(slots, sizeof *t->r))) {
        free(t);
        return -1;
    }
    t->p = p;
    if (o->client_per_thread && connect_client(p->env, thread, 1, &t->own) < 0) {
        b_thread_close(t);
        return -1;
    }
    bb_model *m = t->own ? t->own->m : p->m;
    for (; t->n < slots; t->n++) {
        int rc = bb_request_new(m, o->pmax, o->out_cap, &t->r[t->n]);
        if (rc < 0) {
            bench_fail(p->env->sh, "thread %d: bb_request_new(%zu, %zu) #%u: %s", thread, o->pmax,
                       o->out_cap, t->n, bb_strerror(rc));
            b_thread_close(t);
            return -1;
        }
    }
    *out = t;
    return 0;
}

static void *b_input(void *th, uint32_t slot)
{
    return bb_request_input(((struct bthread *)th)->r[slot]);
}

static int b_submit(void *th, uint32_t slot, size_t len, int prio)
{
    bb_request *r = ((struct bthread *)th)->r[slot];
    struct bb_submit_opts so = {.priority = prio};
    int rc = bb_request_set_input_len(r, len);
    if (rc == 0) rc = bb_submit(r, &so);
    if (rc < 0) fprintf(stderr, "bb-bench: bb_submit: %s\n", bb_strerror(rc));
    return rc;
}

static int b_wait(void *th, uint32_t slot, uint64_t deadline, int *status)
{
    bb_request *r = ((struct bthread *)th)->r[slot];
    int64_t rel = 0;
    if (deadline == BENCH_FOREVER) {
        rel = (int64_t)BENCH_GUARD_NS;
    } else if (deadline) {
        uint64_t now = bench_now_ns();
        rel = deadline > now ? (int64_t)(deadline - now) : 0;
    }
    int rc = bb_wait(r, rel);
    if (rc == 0) {
        *status = bb_request_status(r);
        return 1;
    }
    if (rc == BB_ETIMEDOUT && deadline != BENCH_FOREVER) return 0;
    fprintf(stderr, "bb-bench: bb_wait: %s\n", bb_strerror(rc));
    return -1;
}

static const void *b_output(void *th, uint32_t slot, size_t *len)
{
    return bb_request_output(((struct bthread *)th)->r[slot], len);
}

static void take_stats(struct bench_broker_stats *s)
{
    struct bb_model_stats ms;
    if (!stats_model || bb_model_stats(stats_model, &ms) < 0) return;
    *s = (struct bench_broker_stats){
        .submitted = ms.submitted, .completed = ms.completed, .failed = ms.failed,
        .timed_out = ms.timed_out, .rejected = ms.rejected, .cancelled = ms.cancelled,
        .batches = ms.batches, .avg_batch_size = ms.avg_batch_size,
        .latency_p50_us = ms.latency_p50_us, .latency_p99_us = ms.latency_p99_us,
        .avg_queue_wait_us = ms.avg_queue_wait_us, .batch_target = ms.batch_target};
    _Static_assert(BENCH_BROKER_BUCKETS == BB_STATS_BATCH_BUCKETS, "the broker's batch buckets");
    memcpy(s->batch_size_hist, ms.batch_size_hist, sizeof s->batch_size_hist);
}

static void b_window(struct bench_env *env, int phase)
{
    const struct bench_opts *o = env->o;
    if (phase == 0) {
        int rc = bb_connect(o->socket, NULL, &stats_client);
        if (rc == 0) rc = bb_model_open(stats_client, o->model.name, &stats_model);
        if (rc < 0) {
            fprintf(stderr, "bb-bench: stats: %s\n", bb_strerror(rc));
            bb_disconnect(stats_client);
            stats_client = NULL;
            stats_model = NULL;
        }
        return;
    }
    take_stats(phase == 1 ? &env->run->b0 : &env->run->b1);
    if (phase == 2) {
        env->run->has_broker_stats = stats_model != NULL;
        bb_disconnect(stats_client);
        stats_client = NULL;
        stats_model = NULL;
    }
}

const struct bench_xport bench_xport_broker = {
    .name = "broker",
    .server_start = b_server_start,
    .server_stop = b_server_stop,
    .proc_open = b_proc_open,
    .proc_close = b_proc_close,
    .thread_open = b_thread_open,
    .thread_close = b_thread_close,
    .input = b_input,
    .submit = b_submit,
    .wait = b_wait,
    .output = b_output,
    .window = b_window,
};
