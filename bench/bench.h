/* bb-bench internals: the options every part reads, the transport interface
 * the load generator drives (broker and baselines alike), and the results
 * region shared by the bench's processes. */
#ifndef BB_BENCH_H
#define BB_BENCH_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "batchbroker/backend.h"
#include "fmnist_internal.h"
#include "hist.h"

#define BENCH_MAX_CPUS 256
#define BENCH_MAX_BATCH 4096   /* batch-size histograms clamp here */
#define BENCH_FOREVER UINT64_MAX
#define BENCH_GUARD_NS 30000000000ull /* a request this late means a hang */
#define BENCH_MAX_BROKER_OPTS 16
#define BENCH_MAX_ROUNDS 64
#define BENCH_BROKER_BUCKETS 17 /* the broker's log2 batch-size buckets (protocol.h) */

enum bench_wait { BENCH_WAIT_SPIN, BENCH_WAIT_SLEEP };

struct bench_shared;

/* One phase of a phased open loop (scenarios): `rate` requests/s in total for
 * `seconds`. */
struct bench_phase {
    const char *name;
    double seconds;
    double rate;
};

/* One request sent inside the measured window, logged by a phased open loop. */
struct bench_req_rec {
    uint64_t sent;              /* intended send time, CLOCK_MONOTONIC ns */
    uint64_t done;              /* completion time; 0 = never completed */
    int32_t status;             /* request status; BENCH_BAD_OUTPUT if the echo was wrong */
    uint32_t pad;
};
#define BENCH_BAD_OUTPUT (-100000)

/* A client thread's request log, in a MAP_SHARED mapping made before the
 * clients fork; written by that thread only, read by the parent after
 * waitpid. */
struct bench_reqlog {
    struct bench_req_rec *rec;
    uint64_t cap;
    uint64_t n;                 /* records written */
    uint64_t dropped;           /* requests that did not fit */
};

/* What the model section of the broker config says; the baselines copy it so
 * that they run the same backend with the same batching policy. */
struct bench_model {
    char name[64];
    char backend[256];          /* built-in name or path to a .so */
    char plugin_dir[256];
    uint32_t max_batch_size;
    uint32_t max_wait_us;
    uint32_t instances;
    size_t nparams;
    struct { char key[64]; char value[256]; } params[32];
    char socket[108];           /* [broker] socket */
    long spin_us;               /* [broker] spin_us, -1 if absent */
};

struct bench_opts {
    const char *socket;         /* resolved: flag, config, $BATCHBROKER_SOCKET, default */
    const char *config;         /* model/broker config (also --spawn-broker) */
    int spawn;                  /* start the broker from config */
    const char *broker_bin;
    int no_broker;              /* baselines only */
    int verify;                 /* outputs must echo inputs (echo, synthetic), or with a
                                 * dataset be one class score per class */
    const struct bb__fmnist *dataset; /* --dataset: inputs are its images, in turn */
    uint32_t clients, threads, concurrency;
    int client_per_thread;      /* broker: a bb_client per thread, not one per process */
    uint32_t lanes;             /* broker: lanes of each process's client (bb_connect_lanes) */
    double rate;                /* total requests/s over all threads; 0 = closed loop */
    double duration_s, warmup_s;
    size_t pmin, pmax, out_cap;
    double prio_weight[4];      /* critical, high, normal, low; all 0 = default */
    enum bench_wait wait;
    int64_t spin_ns;            /* client spin budget in spin mode */
    int cpus[BENCH_MAX_CPUS];   /* client threads, round robin */
    int ncpus;
    int server_cpus[BENCH_MAX_CPUS]; /* broker / baseline server */
    int nserver_cpus;
    unsigned baselines;         /* 1 << BENCH_BASE_* */
    const char *json;
    const char *label;
    /* -o SECTION.KEY=VALUE for a spawned broker (--broker-opt, --variant). */
    const char *broker_opts[BENCH_MAX_BROKER_OPTS];
    int nbroker_opts;
    pid_t broker_pid;           /* --broker-pid, for CPU accounting */
    uint64_t seed;
    struct bench_model model;
    /* Scenarios only (all zero otherwise). Phased open loop: the warm-up runs
     * at phases[0].rate, then each phase in turn; duration_s must be the sum
     * of their lengths. */
    const struct bench_phase *phases;
    uint32_t nphases;
    struct bench_reqlog *reqlog;    /* [clients*threads]: log every request */
    /* Called in the parent every tick_ns from t0 until the clients exited. */
    void (*tick)(void *arg, const struct bench_shared *sh, uint64_t now);
    void *tick_arg;
    uint64_t tick_ns;
};

/* inproc: each client thread runs its own copy of the backend on its own
 * requests; inproc-all: all the clients' requests in flight in one thread of
 * one process, batched together (the whole batch in one process);
 * inproc-eager: inproc with max_wait_us 0 (each thread runs what it has as
 * soon as it waits: a client that does not wait for company it lacks). */
enum { BENCH_BASE_INPROC, BENCH_BASE_INPROC_ALL, BENCH_BASE_INPROC_EAGER, BENCH_BASE_SHM,
       BENCH_BASE_UDS, BENCH_NBASE };

/* One client thread's results, written by that thread only and read by the
 * parent after waitpid (which orders the accesses). */
struct bench_thread_result {
    struct bench_hist lat[5];   /* index = BB_PRIORITY_* given at submission */
    uint64_t completed, failed, bad_output, submitted;
    uint64_t correct;           /* with a dataset: completions that named the label */
    int32_t first_error;        /* first non-zero status seen, 0 if none */
    uint32_t pad;
    uint64_t batch_count[BENCH_MAX_BATCH + 1]; /* batches formed in this thread */
};

/* Shared by the parent, the client processes and a baseline server; created
 * MAP_SHARED|MAP_ANONYMOUS before the first fork. */
struct bench_shared {
    _Atomic uint32_t ready;     /* client threads connected and waiting */
    _Atomic uint32_t failed;    /* client threads that could not start */
    _Atomic uint64_t t0;        /* start of warm-up, CLOCK_MONOTONIC ns; 0 = not yet */
    uint64_t t_meas, t_end;     /* measured window [t_meas, t_end), set with t0 */
    char error[256];            /* first start-up failure, for the parent */
    _Atomic uint32_t error_claimed;
    uint32_t pad;
    uint64_t server_batch_count[BENCH_MAX_BATCH + 1]; /* baseline servers */
    double client_cpu_s[];      /* per client process, [clients] */
    /* followed by [threads] struct bench_thread_result, see bench_thread_res() */
};

struct bench_env {
    const struct bench_opts *o;
    struct bench_shared *sh;
    struct bench_thread_result *res; /* clients * threads */
    struct bench_run_result *run;
};

/* Broker-side figures at the start and the end of the measured window. */
struct bench_broker_stats {
    uint64_t submitted, completed, failed, timed_out, rejected, cancelled, batches;
    double avg_batch_size, latency_p50_us, latency_p99_us, avg_queue_wait_us;
    uint32_t batch_target;
    uint64_t batch_size_hist[BENCH_BROKER_BUCKETS]; /* [k]: sizes (2^(k-1), 2^k] */
};

/* What one run (the broker or a baseline) measured. */
/* CPU seconds of a server's threads in the measured window, summed by name
 * (two workers' io_uring threads share one): what is at 100%? */
#define BENCH_MAX_THREAD_ROWS 12
struct bench_thread_cpu {
    char name[16];                  /* /proc/PID/task/TID/comm */
    int threads;                    /* how many had the name */
    double cpu_s;
};

struct bench_run_result {
    const char *name;
    char name_buf[160];             /* a variant's name: "broker:KEY=VALUE,..." */
    int ok;
    char error[256];
    struct bench_hist lat;          /* all priorities */
    struct bench_hist lat_prio[5];
    uint64_t completed, failed, bad_output, submitted, correct;
    int first_error;
    double seconds;                 /* length of the measured window */
    uint64_t t_meas, t_end;         /* the measured window, CLOCK_MONOTONIC ns */
    double cpu_server, cpu_clients; /* CPU seconds in the window; < 0 unknown */
    struct bench_thread_cpu server_threads[BENCH_MAX_THREAD_ROWS]; /* most CPU first */
    int nserver_threads;            /* 0 unknown */
    uint64_t batch_count[BENCH_MAX_BATCH + 1];
    int has_batch_hist;             /* batch_count is a real distribution */
    int has_broker_stats;
    struct bench_broker_stats b0, b1;
    /* --rounds: the throughput of each round; the fields above are the rounds
     * merged (counts and histograms added, broker figures as b1 - b0 summed). */
    double round_tput[BENCH_MAX_ROUNDS];
    int nrounds;
};

/* A transport: how one client thread sends requests and gets replies. The load
 * generator owns `slots` slots per thread and never has a slot pending twice. */
struct bench_xport {
    const char *name;
    /* In the parent, before any client forks: start the server side (if any)
     * and return its pid in *server_pid (0 if none). */
    int (*server_start)(struct bench_env *env, pid_t *server_pid);
    void (*server_stop)(struct bench_env *env);
    /* In each client process. */
    int (*proc_open)(struct bench_env *env, int proc, void **proc_state);
    void (*proc_close)(void *proc_state);
    int (*thread_open)(void *proc_state, int thread, uint32_t slots, void **th);
    void (*thread_close)(void *th);
    void *(*input)(void *th, uint32_t slot);
    int (*submit)(void *th, uint32_t slot, size_t len, int prio);
    /* Wait until `slot` completes or CLOCK_MONOTONIC reaches deadline_ns
     * (0 polls; BENCH_FOREVER: the caller submits nothing until it completes).
     * Returns 1 and sets *status when complete, 0 when not yet, or -1 when
     * the transport broke (with a message on stderr). */
    int (*wait)(void *th, uint32_t slot, uint64_t deadline_ns, int *status);
    const void *(*output)(void *th, uint32_t slot, size_t *len);
    /* In the parent, optional: phase 0 after the clients forked, 1 at the
     * start and 2 at the end of the measured window (e.g. broker stats). */
    void (*window)(struct bench_env *env, int phase);
};

/* inproc-all is bench_xport_inproc run by main.c with the load folded into
 * one thread; inproc-eager, with max_wait_us 0. */
extern const struct bench_xport bench_xport_broker, bench_xport_inproc, bench_xport_shm,
    bench_xport_uds;

static inline uint64_t bench_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static inline void bench_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline size_t bench_res_offset(uint32_t clients)
{
    return (sizeof(struct bench_shared) + clients * sizeof(double) + 63) & ~(size_t)63;
}

static inline struct bench_thread_result *bench_thread_res(struct bench_shared *sh, uint32_t clients,
                                                           uint32_t idx)
{
    return (struct bench_thread_result *)((char *)sh + bench_res_offset(clients)) + idx;
}

size_t bench_shared_size(uint32_t clients, uint32_t threads);

/* Record a start-up failure for the parent (first one wins). */
void bench_fail(struct bench_shared *sh, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sleep (or spin, in spin mode) until CLOCK_MONOTONIC reaches t. */
void bench_wait_until(uint64_t t, enum bench_wait mode);

/* Count one batch of n requests if it ran inside the measured window. */
static inline void bench_count_batch(const struct bench_shared *sh, uint64_t *counts, uint32_t n)
{
    uint64_t now = bench_now_ns();
    if (atomic_load_explicit(&sh->t0, memory_order_acquire) && now >= sh->t_meas &&
        now < sh->t_end)
        counts[n < BENCH_MAX_BATCH ? n : BENCH_MAX_BATCH]++;
}

/* config.c: read the [broker] and [model.NAME] sections of a broker config. */
int bench_model_load(const char *path, const char *model, struct bench_model *m, char *err,
                     size_t errlen);

/* backend.c: load a backend plugin the way the broker does and make states. */
struct bench_backend {
    void *dl;
    const struct bb_backend_ops *ops;
    struct bb_param params[32];
    size_t nparams;
    uint32_t max_batch_size;    /* for init2: the model's */
    bool v2;                    /* ABI 2 table: init2 may be read */
};
int bench_backend_load(const struct bench_model *m, struct bench_backend *b, char *err,
                       size_t errlen);
int bench_backend_state(const struct bench_backend *b, void **state, char *err, size_t errlen);
/* Run one batch; on a batch-level failure every output gets status `rc`. */
void bench_backend_run(const struct bench_backend *b, void *state, struct bb_batch *batch);

/* runner.c: run one transport with the configured load; 0 or -1 (r->error). */
int bench_run(const struct bench_opts *o, const struct bench_xport *x, struct bench_run_result *r);
/* Add one round's result to the rounds so far (acc starts zeroed). */
void bench_result_add(struct bench_run_result *acc, const struct bench_run_result *one);

/* spawn.c: start/stop the broker; find a running broker's pid. */
int bench_spawn_broker(const struct bench_opts *o, const char *socket, pid_t *pid);
void bench_stop_process(pid_t pid);
pid_t bench_socket_peer(const char *socket);

/* load.c: one client thread's load loop. */
void bench_load_thread(const struct bench_env *env, const struct bench_xport *x, void *th,
                       uint32_t thread, struct bench_thread_result *res);

/* cpu.c: CPU seconds (user + system) of a process, or -1. */
double bench_proc_cpu_s(pid_t pid);
/* Every thread of pid now: its id, name and CPU seconds. Returns how many
 * (at most max), or -1. */
struct bench_task_cpu {
    int tid;
    char name[16];
    double cpu_s;
};
int bench_proc_tasks(pid_t pid, struct bench_task_cpu *out, int max);
/* Two snapshots of bench_proc_tasks to the rows of r->server_threads: a
 * thread's CPU between them (all of it for one born in between; one that
 * ended in between is missing), summed by name, most first. */
void bench_thread_rows(const struct bench_task_cpu *a, int na, const struct bench_task_cpu *b,
                       int nb, struct bench_run_result *r);
/* Add one round's rows to the merged ones, by name. */
void bench_thread_rows_add(struct bench_run_result *acc, const struct bench_run_result *one);
double bench_self_cpu_s(void);
int bench_pin_self(const int *cpus, int n, uint32_t idx);
int bench_parse_cpus(const char *s, int *cpus, int max);

#endif
