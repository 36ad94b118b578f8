/* Runs one transport under the configured load: forks the client processes
 * (each with its threads), starts them together, measures the window and
 * merges what every thread recorded.
 *
 * Start-up protocol (all through struct bench_shared): each client thread
 * opens its transport and increments `ready` (or `failed`); the parent waits
 * for all of them, stores t_meas and t_end, then t0 with release; the threads'
 * acquire load of t0 pairs with it. Results are read after waitpid. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "bench.h"

#define READY_TIMEOUT_NS 60000000000ull

size_t bench_shared_size(uint32_t clients, uint32_t threads)
{
    return bench_res_offset(clients) + (size_t)clients * threads * sizeof(struct bench_thread_result);
}

void bench_fail(struct bench_shared *sh, const char *fmt, ...)
{
    char msg[sizeof sh->error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "bb-bench: %s\n", msg);
    if (!atomic_exchange(&sh->error_claimed, 1)) memcpy(sh->error, msg, sizeof msg);
}

void bench_wait_until(uint64_t t, enum bench_wait mode)
{
    if (mode == BENCH_WAIT_SPIN) {
        while (bench_now_ns() < t) bench_cpu_relax();
        return;
    }
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000u), .tv_nsec = (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

struct client_thread {
    struct bench_env *env;
    const struct bench_xport *x;
    void *proc;
    uint32_t idx;
    pthread_t tid;
};

static void *client_thread_main(void *arg)
{
    struct client_thread *ct = arg;
    const struct bench_opts *o = ct->env->o;
    void *th = NULL;
    if (bench_pin_self(o->cpus, o->ncpus, ct->idx) < 0) {
        bench_fail(ct->env->sh, "cannot pin client thread %u", ct->idx);
        atomic_fetch_add(&ct->env->sh->failed, 1);
        return NULL;
    }
    if (ct->x->thread_open(ct->proc, (int)ct->idx, o->concurrency, &th) < 0) {
        atomic_fetch_add(&ct->env->sh->failed, 1);
        return NULL;
    }
    atomic_fetch_add(&ct->env->sh->ready, 1);
    bench_load_thread(ct->env, ct->x, th, ct->idx, &ct->env->res[ct->idx]);
    ct->x->thread_close(th);
    return NULL;
}

static int client_main(struct bench_env *env, const struct bench_xport *x, uint32_t proc)
{
    const struct bench_opts *o = env->o;
    struct bench_shared *sh = env->sh;
    void *ps = NULL;
    if (x->proc_open(env, (int)proc, &ps) < 0) {
        atomic_fetch_add(&sh->failed, o->threads);
        return 1;
    }
    struct client_thread *ct = calloc(o->threads, sizeof *ct);
    uint32_t started = 0;
    for (uint32_t t = 0; ct && t < o->threads; t++) {
        ct[t] = (struct client_thread){env, x, ps, proc * o->threads + t, 0};
        if (pthread_create(&ct[t].tid, NULL, client_thread_main, &ct[t]) != 0) break;
        started++;
    }
    if (started < o->threads) {
        bench_fail(sh, "cannot start client threads");
        atomic_fetch_add(&sh->failed, o->threads - started);
    }
    uint64_t t0;
    while (!(t0 = atomic_load_explicit(&sh->t0, memory_order_acquire))) usleep(200);
    if (t0 != UINT64_MAX) {
        bench_wait_until(sh->t_meas, BENCH_WAIT_SLEEP);
        double c0 = bench_self_cpu_s();
        bench_wait_until(sh->t_end, BENCH_WAIT_SLEEP);
        sh->client_cpu_s[proc] = bench_self_cpu_s() - c0;
    }
    for (uint32_t t = 0; t < started; t++) pthread_join(ct[t].tid, NULL);
    free(ct);
    x->proc_close(ps);
    return 0;
}

/* Wait until t; with a tick hook, call it on its cadence meanwhile. */
static void park_until(const struct bench_opts *o, const struct bench_shared *sh, uint64_t t,
                       uint64_t *next_tick)
{
    while (o->tick && *next_tick < t) {
        bench_wait_until(*next_tick, BENCH_WAIT_SLEEP);
        o->tick(o->tick_arg, sh, bench_now_ns());
        *next_tick += o->tick_ns;
    }
    bench_wait_until(t, BENCH_WAIT_SLEEP);
}

/* With a tick hook: keep ticking until every client process has exited
 * (without reaping them; the caller does). */
static void tick_until_exit(const struct bench_opts *o, const struct bench_shared *sh,
                            const pid_t *pids, uint64_t *next_tick)
{
    for (uint32_t p = 0; o->tick && p < o->clients;) {
        siginfo_t si = {0};
        if (pids[p] <= 0 || waitid(P_PID, (id_t)pids[p], &si, WEXITED | WNOHANG | WNOWAIT) < 0 ||
            si.si_pid == pids[p]) {
            p++;
            continue;
        }
        bench_wait_until(*next_tick, BENCH_WAIT_SLEEP);
        o->tick(o->tick_arg, sh, bench_now_ns());
        *next_tick += o->tick_ns;
    }
}

static void kill_all(pid_t *pids, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (pids[i] > 0) kill(pids[i], SIGKILL);
}

/* Wait until every client thread is ready. -1 if one failed or died. */
static int await_ready(struct bench_shared *sh, pid_t *pids, uint32_t nproc, uint32_t nthreads)
{
    uint64_t give_up = bench_now_ns() + READY_TIMEOUT_NS;
    for (;;) {
        uint32_t ready = atomic_load(&sh->ready), failed = atomic_load(&sh->failed);
        if (failed) return -1;
        if (ready == nthreads) return 0;
        for (uint32_t i = 0; i < nproc; i++) {
            int st;
            if (pids[i] > 0 && waitpid(pids[i], &st, WNOHANG) == pids[i]) {
                pids[i] = 0;
                if (!sh->error[0]) bench_fail(sh, "client process %u exited early", i);
                return -1;
            }
        }
        if (bench_now_ns() > give_up) {
            bench_fail(sh, "client threads not ready after %llu s",
                       (unsigned long long)(READY_TIMEOUT_NS / 1000000000u));
            return -1;
        }
        usleep(1000);
    }
}

static void merge(const struct bench_opts *o, struct bench_env *env, struct bench_run_result *r)
{
    struct bench_shared *sh = env->sh;
    uint32_t n = o->clients * o->threads;
    for (int p = 0; p < 5; p++) bench_hist_init(&r->lat_prio[p]);
    bench_hist_init(&r->lat);
    for (uint32_t i = 0; i < n; i++) {
        const struct bench_thread_result *t = &env->res[i];
        for (int p = 0; p < 5; p++) {
            bench_hist_merge(&r->lat_prio[p], &t->lat[p]);
            bench_hist_merge(&r->lat, &t->lat[p]);
        }
        r->completed += t->completed;
        r->failed += t->failed;
        r->bad_output += t->bad_output;
        r->correct += t->correct;
        r->submitted += t->submitted;
        if (!r->first_error) r->first_error = t->first_error;
        for (uint32_t b = 0; b <= BENCH_MAX_BATCH; b++)
            r->batch_count[b] += t->batch_count[b] + (i == 0 ? sh->server_batch_count[b] : 0);
    }
    r->cpu_clients = 0;
    for (uint32_t p = 0; p < o->clients; p++) r->cpu_clients += sh->client_cpu_s[p];
    r->seconds = (double)(sh->t_end - sh->t_meas) / 1e9;
    r->t_meas = sh->t_meas;
    r->t_end = sh->t_end;
}

int bench_run(const struct bench_opts *o, const struct bench_xport *x, struct bench_run_result *r)
{
    uint32_t nthreads = o->clients * o->threads;
    size_t size = bench_shared_size(o->clients, o->threads);
    struct bench_shared *sh =
        mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pid_t *pids = calloc(o->clients, sizeof *pids);
    if (sh == MAP_FAILED || !pids) {
        snprintf(r->error, sizeof r->error, "cannot map %zu bytes of results", size);
        free(pids);
        return -1;
    }
    struct bench_env env = {o, sh, bench_thread_res(sh, o->clients, 0), r};
    for (uint32_t i = 0; i < nthreads; i++)
        for (int p = 0; p < 5; p++) bench_hist_init(&env.res[i].lat[p]);
    r->name = x->name;
    r->cpu_server = -1;

    pid_t server = 0;
    int rc = -1;
    if (x->server_start && x->server_start(&env, &server) < 0) goto out;
    fflush(NULL);
    for (uint32_t p = 0; p < o->clients; p++) {
        pids[p] = fork();
        if (pids[p] == 0) _exit(client_main(&env, x, p));
        if (pids[p] < 0) {
            bench_fail(sh, "fork: %s", strerror(errno));
            kill_all(pids, p);
            goto reap;
        }
    }
    if (x->window) x->window(&env, 0);
    if (await_ready(sh, pids, o->clients, nthreads) < 0) {
        kill_all(pids, o->clients);
        goto reap;
    }
    uint64_t t0 = bench_now_ns() + 20000000u;
    sh->t_meas = t0 + (uint64_t)(o->warmup_s * 1e9);
    sh->t_end = sh->t_meas + (uint64_t)(o->duration_s * 1e9);
    atomic_store_explicit(&sh->t0, t0, memory_order_release);

    uint64_t next_tick = t0;
    park_until(o, sh, sh->t_meas, &next_tick);
    /* The server's threads before and after: a few hundred bytes of /proc
     * each, read while the clients run (and counted in nobody's CPU). */
    static struct bench_task_cpu t0s[256], t1s[256];
    int nt0 = server > 0 ? bench_proc_tasks(server, t0s, 256) : -1;
    double s0 = server > 0 ? bench_proc_cpu_s(server) : -1;
    if (x->window) x->window(&env, 1);
    park_until(o, sh, sh->t_end, &next_tick);
    double s1 = server > 0 ? bench_proc_cpu_s(server) : -1;
    int nt1 = server > 0 ? bench_proc_tasks(server, t1s, 256) : -1;
    if (x->window) x->window(&env, 2);
    if (s0 >= 0 && s1 >= 0) r->cpu_server = s1 - s0;
    if (nt0 >= 0 && nt1 > 0) bench_thread_rows(t0s, nt0, t1s, nt1, r);
    tick_until_exit(o, sh, pids, &next_tick);
    rc = 0;
reap:
    for (uint32_t p = 0; p < o->clients; p++) {
        int st;
        if (pids[p] > 0 && waitpid(pids[p], &st, 0) == pids[p] &&
            !(WIFEXITED(st) && WEXITSTATUS(st) == 0) && rc == 0) {
            bench_fail(sh, "client process %u failed (%s %d)", p,
                       WIFSIGNALED(st) ? "signal" : "exit",
                       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
            rc = -1;
        }
    }
    if (x->server_stop) x->server_stop(&env);
    if (rc == 0) merge(o, &env, r);
    if (rc == 0 && r->completed == 0) {
        /* Every request failed (or none was answered in the window): a row
         * of zeros and an exit status of 0 would pass for a measurement. */
        bench_fail(sh, "no request completed in the measured window (%llu failed%s%s)",
                   (unsigned long long)r->failed, r->first_error ? ", the first with " : "",
                   r->first_error ? bb_errname(r->first_error) : "");
        rc = -1;
    }
out:
    if (rc < 0) snprintf(r->error, sizeof r->error, "%s", sh->error[0] ? sh->error : "failed");
    r->ok = rc == 0;
    free(pids);
    munmap(sh, size);
    return rc;
}

static void stats_delta(struct bench_broker_stats *acc, const struct bench_run_result *one)
{
    const struct bench_broker_stats *a = &one->b0, *b = &one->b1;
    acc->submitted += b->submitted - a->submitted;
    acc->completed += b->completed - a->completed;
    acc->failed += b->failed - a->failed;
    acc->timed_out += b->timed_out - a->timed_out;
    acc->rejected += b->rejected - a->rejected;
    acc->cancelled += b->cancelled - a->cancelled;
    acc->batches += b->batches - a->batches;
    for (int k = 0; k < BENCH_BROKER_BUCKETS; k++)
        acc->batch_size_hist[k] += b->batch_size_hist[k] - a->batch_size_hist[k];
    /* Figures that are not counts: the last round's. */
    acc->avg_batch_size = b->avg_batch_size;
    acc->latency_p50_us = b->latency_p50_us;
    acc->latency_p99_us = b->latency_p99_us;
    acc->avg_queue_wait_us = b->avg_queue_wait_us;
    acc->batch_target = b->batch_target;
}

void bench_result_add(struct bench_run_result *acc, const struct bench_run_result *one)
{
    int k = acc->nrounds;
    double tput = one->ok && one->seconds > 0 ? (double)one->completed / one->seconds : 0;
    if (k == 0) {
        *acc = *one;
        if (one->name == one->name_buf)
            acc->name = acc->name_buf;
        /* b0 = 0 and b1 = the deltas: what bench_summarize subtracts. */
        memset(&acc->b0, 0, sizeof acc->b0);
        memset(&acc->b1, 0, sizeof acc->b1);
        stats_delta(&acc->b1, one);
    } else {
        if (!one->ok && acc->ok) {
            acc->ok = 0;
            memcpy(acc->error, one->error, sizeof acc->error);
        }
        bench_hist_merge(&acc->lat, &one->lat);
        for (int p = 0; p < 5; p++) bench_hist_merge(&acc->lat_prio[p], &one->lat_prio[p]);
        acc->completed += one->completed;
        acc->failed += one->failed;
        acc->bad_output += one->bad_output;
        acc->correct += one->correct;
        acc->submitted += one->submitted;
        if (!acc->first_error) acc->first_error = one->first_error;
        acc->seconds += one->seconds;
        acc->cpu_server = acc->cpu_server >= 0 && one->cpu_server >= 0
                              ? acc->cpu_server + one->cpu_server : -1;
        acc->cpu_clients += one->cpu_clients;
        bench_thread_rows_add(acc, one);
        for (uint32_t b = 0; b <= BENCH_MAX_BATCH; b++) acc->batch_count[b] += one->batch_count[b];
        acc->has_broker_stats = acc->has_broker_stats && one->has_broker_stats;
        stats_delta(&acc->b1, one);
    }
    if (k < BENCH_MAX_ROUNDS) {
        acc->round_tput[k] = tput;
        acc->nrounds = k + 1;
    }
}
