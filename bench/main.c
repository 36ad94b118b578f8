/* bb-bench: load generator for batchbroker, with its baselines in the same
 * run so that results on a shared or noisy machine come as ratios. See
 * docs/performance.md for what it measures and how. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchbroker/client.h"
#include "batchbroker/version.h"
#include "bench.h"
#include "install_dir.h"
#include "report.h"
#include "scenario.h"

#ifndef BB_BROKER_BIN
#define BB_BROKER_BIN "batchbroker"
#endif
#ifndef BB_BROKER_BIN_REL
#define BB_BROKER_BIN_REL "batchbroker"
#endif

static void usage(FILE *f)
{
    fprintf(f,
"usage: bb-bench [options]\n"
"broker:\n"
"  --socket PATH          broker socket (default: [broker] socket of the config,\n"
"                         $BATCHBROKER_SOCKET, else bb_default_socket())\n"
"  --model NAME           model to load (default echo)\n"
"  --spawn-broker CONFIG  start `batchbroker --config CONFIG` for the run, stop it after\n"
"  --config CONFIG        read the model's backend and batching from CONFIG (the broker\n"
"                         is already running); implied by --spawn-broker\n"
"  --broker-bin PATH      broker binary (default: the batchbroker installed with\n"
"                         bb-bench, or the build tree's when run from there)\n"
"  --broker-pid PID       broker pid for CPU accounting (default: SO_PEERCRED)\n"
"  --no-broker            run only the baselines\n"
"  --broker-opt SECTION.KEY=VALUE  with --spawn-broker: pass -o SECTION.KEY=VALUE to the\n"
"                         broker (repeatable), e.g. broker.profile=off\n"
"  --variant SECTION.KEY=VALUE[,...]  with --spawn-broker: one more broker run with these\n"
"                         -o settings on top, reported as \"broker:SETTINGS\" with its ratio\n"
"                         to the broker (repeatable, at most 4)\n"
"  --rounds N             run the broker, each variant and each baseline N times in turn\n"
"                         (default 1) and report them merged, with each round's ratios:\n"
"                         on a busy machine, alternation spreads the noise over every run\n"
"load:\n"
"  --clients N            client processes (default 1)\n"
"  --threads T            threads per process (default 1)\n"
"  --lanes N              each process's client has N lanes (bb_connect_lanes: N sessions\n"
"                         behind the one bb_client its threads share; default 1; needs\n"
"                         --threads 2 or more)\n"
"  --client-per-thread    each thread connects a bb_client (a broker session) of its own\n"
"                         instead of sharing its process's: several workers can serve\n"
"                         one process's threads (broker only; baselines unchanged)\n"
"  --concurrency C        requests in flight per thread (closed loop), or the most\n"
"                         in flight per thread (open loop; default 1, 256 with --rate)\n"
"  --rate RPS             open loop: Poisson arrivals, RPS in total over all threads;\n"
"                         latency counts from the intended send time\n"
"  --duration S           measured seconds (default 5)\n"
"  --warmup S             seconds before measuring (default 1)\n"
"  --payload B | MIN-MAX  request size in bytes, uniform in MIN-MAX (default 64)\n"
"  --out-bytes B          output capacity per request (default: the largest payload)\n"
"  --priority-mix C:H:N:L weights of critical:high:normal:low (default: all at the\n"
"                         model's default priority)\n"
"  --wait spin|sleep      how clients (and the shm/uds servers) wait (default spin)\n"
"  --spin-ns NS           client spin budget in spin mode (default 1000000000)\n"
"  --cpus LIST            pin client threads round robin to LIST, e.g. 1 or 0-3,6\n"
"  --server-cpus LIST     pin the spawned broker and the baseline servers to LIST\n"
"  --seed N               random seed (default 1)\n"
"  --no-verify            do not check that outputs echo inputs\n"
"  --dataset fmnist       inputs are the Fashion-MNIST test images ($BB_FMNIST_DIR, else\n"
"                         the build's directory), 784 float32 each, in turn; the\n"
"                         outputs must be 10 class scores, and the accuracy is\n"
"                         reported (for --model with the demo model, docs/backends/)\n"
"baselines (same workload, same backend and batching policy):\n"
"  --baseline LIST        comma-separated: inproc, inproc-all, inproc-eager, shm, uds,\n"
"                         all, none (default none); inproc: each client thread runs\n"
"                         its own copy of the backend on its own requests;\n"
"                         inproc-all: the requests of all clients in one thread of\n"
"                         one process; inproc-eager: inproc with max_wait_us 0 (each\n"
"                         thread runs what it has without waiting for company)\n"
"  --backend NAME|PATH    backend for the baselines when there is no config (default:\n"
"                         the model name); --param KEY=VALUE (repeatable),\n"
"  --max-batch N, --max-wait-us US   batching policy when there is no config\n"
"                         (default: the broker's, 32 and 1000); they override the config\n"
"output:\n"
"  --json FILE            write the results as JSON\n"
"  --label TEXT           label stored in the JSON\n"
"scenarios (several runs, each with its own spawned broker; docs/performance.md):\n"
"  --scenario adaptive    the adaptive broker against a grid of static batching\n"
"                         policies on one three-phase trace (low, burst, sustained);\n"
"                         honours --broker-bin, --json, --seed, --warmup and\n"
"                         --duration (seconds per phase, default 5)\n"
"  --trace FILE           with --scenario adaptive: the adaptive run's time series\n"
"                         (TSV, every 100 ms) for bench/plot_adaptive.gp\n"
"  --optimize throughput|latency  with --scenario adaptive: the adaptive run's goal\n"
"                         (default throughput)\n"
"  --slo-us US            with --scenario adaptive: the p99 objective (default 20000)\n"
"other:\n"
"  -h, --help             this text\n"
"  --version              bb-bench's version\n");
}

static int parse_u32(const char *s, uint32_t min, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v < min || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Seconds and rates: at most 1e9, so that seconds still fit the uint64
 * nanoseconds of the run's clock (inf made a run that measured nothing and
 * an open loop that never ended). */
static int parse_pos(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= 0 && v <= 1e9)) return -1;
    *out = v;
    return 0;
}

static int parse_payload(const char *s, size_t *lo, size_t *hi)
{
    char *end;
    unsigned long long a = strtoull(s, &end, 10), b = a;
    if (end == s) return -1;
    if (*end == '-') {
        const char *s2 = end + 1;
        b = strtoull(s2, &end, 10);
        if (end == s2) return -1;
    }
    if (*end || b < a || b > (1ull << 30)) return -1;
    *lo = (size_t)a;
    *hi = (size_t)b;
    return 0;
}

static int parse_baselines(const char *s, unsigned *out)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    *out = 0;
    for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "inproc")) *out |= 1u << BENCH_BASE_INPROC;
        else if (!strcmp(t, "inproc-all")) *out |= 1u << BENCH_BASE_INPROC_ALL;
        else if (!strcmp(t, "inproc-eager")) *out |= 1u << BENCH_BASE_INPROC_EAGER;
        else if (!strcmp(t, "shm")) *out |= 1u << BENCH_BASE_SHM;
        else if (!strcmp(t, "uds")) *out |= 1u << BENCH_BASE_UDS;
        else if (!strcmp(t, "all")) *out = (1u << BENCH_NBASE) - 1;
        else if (strcmp(t, "none")) return -1;
    }
    return 0;
}

static int is_echo_like(const char *backend)
{
    const char *b = strrchr(backend, '/');
    b = b ? b + 1 : backend;
    return !strcmp(b, "echo") || !strcmp(b, "synthetic") || !strcmp(b, "bb_backend_echo.so") ||
           !strcmp(b, "bb_backend_synthetic.so");
}

enum {
    OPT_SOCKET = 256, OPT_MODEL, OPT_SPAWN, OPT_CONFIG, OPT_BROKER_BIN, OPT_BROKER_PID,
    OPT_NO_BROKER, OPT_CLIENTS, OPT_THREADS, OPT_CONC, OPT_RATE, OPT_DURATION, OPT_WARMUP,
    OPT_PAYLOAD, OPT_OUT, OPT_PRIO, OPT_WAIT, OPT_SPIN, OPT_CPUS, OPT_SCPUS, OPT_SEED,
    OPT_NO_VERIFY, OPT_BASELINE, OPT_BACKEND, OPT_PARAM, OPT_MAX_BATCH, OPT_MAX_WAIT, OPT_JSON,
    OPT_LABEL, OPT_SCENARIO, OPT_TRACE, OPT_OPTIMIZE, OPT_SLO, OPT_DATASET, OPT_HELP,
    OPT_VERSION, OPT_BROKER_OPT, OPT_VARIANT, OPT_ROUNDS, OPT_CLIENT_PER_THREAD, OPT_LANES,
};

static const struct option long_opts[] = {
    {"socket", 1, 0, OPT_SOCKET}, {"model", 1, 0, OPT_MODEL}, {"spawn-broker", 1, 0, OPT_SPAWN},
    {"config", 1, 0, OPT_CONFIG}, {"broker-bin", 1, 0, OPT_BROKER_BIN},
    {"broker-pid", 1, 0, OPT_BROKER_PID}, {"no-broker", 0, 0, OPT_NO_BROKER},
    {"clients", 1, 0, OPT_CLIENTS}, {"threads", 1, 0, OPT_THREADS},
    {"client-per-thread", 0, 0, OPT_CLIENT_PER_THREAD}, {"lanes", 1, 0, OPT_LANES},
    {"concurrency", 1, 0, OPT_CONC}, {"rate", 1, 0, OPT_RATE}, {"duration", 1, 0, OPT_DURATION},
    {"warmup", 1, 0, OPT_WARMUP}, {"payload", 1, 0, OPT_PAYLOAD}, {"out-bytes", 1, 0, OPT_OUT},
    {"priority-mix", 1, 0, OPT_PRIO}, {"wait", 1, 0, OPT_WAIT}, {"spin-ns", 1, 0, OPT_SPIN},
    {"cpus", 1, 0, OPT_CPUS}, {"server-cpus", 1, 0, OPT_SCPUS}, {"seed", 1, 0, OPT_SEED},
    {"no-verify", 0, 0, OPT_NO_VERIFY}, {"baseline", 1, 0, OPT_BASELINE},
    {"backend", 1, 0, OPT_BACKEND}, {"param", 1, 0, OPT_PARAM},
    {"max-batch", 1, 0, OPT_MAX_BATCH}, {"max-wait-us", 1, 0, OPT_MAX_WAIT},
    {"json", 1, 0, OPT_JSON}, {"label", 1, 0, OPT_LABEL}, {"scenario", 1, 0, OPT_SCENARIO},
    {"trace", 1, 0, OPT_TRACE}, {"optimize", 1, 0, OPT_OPTIMIZE},
    {"slo-us", 1, 0, OPT_SLO}, {"dataset", 1, 0, OPT_DATASET}, {"help", 0, 0, OPT_HELP},
    {"version", 0, 0, OPT_VERSION}, {"broker-opt", 1, 0, OPT_BROKER_OPT},
    {"variant", 1, 0, OPT_VARIANT}, {"rounds", 1, 0, OPT_ROUNDS},
    {0, 0, 0, 0},
};

/* Overrides given on the command line, applied over the config. */
struct model_flags {
    const char *backend;
    const char *params[32];
    size_t nparams;
    uint32_t max_batch, max_wait_us;
    int has_max_batch, has_max_wait;
    const char *scenario, *trace, *optimize;
    int has_duration;
    uint32_t slo_us;
    const char *dataset;
    int has_payload, has_out;
    const char *variants[4];
    int nvariants;
    uint32_t rounds;
};

static int bad(const char *opt, const char *arg)
{
    fprintf(stderr, "bb-bench: --%s %s: invalid value (see --help)\n", opt, arg);
    return 2;
}

static int parse_args(int argc, char **argv, struct bench_opts *o, struct model_flags *mf)
{
    const char *model = "echo";
    int conc_given = 0, c, idx, used;
    unsigned long long ull;
    char *end;
    while ((c = getopt_long(argc, argv, "h", long_opts, &idx)) != -1) {
        const char *name = c >= 256 ? long_opts[idx].name : "";
        switch (c) {
        case OPT_SOCKET: o->socket = optarg; break;
        case OPT_MODEL: model = optarg; break;
        case OPT_SPAWN: o->config = optarg; o->spawn = 1; break;
        case OPT_CONFIG: o->config = optarg; break;
        case OPT_BROKER_BIN: o->broker_bin = optarg; break;
        case OPT_BROKER_PID:
            ull = strtoull(optarg, &end, 10);
            if (*end || optarg[0] == '-' || !ull || ull > INT_MAX) return bad(name, optarg);
            o->broker_pid = (pid_t)ull;
            break;
        case OPT_NO_BROKER: o->no_broker = 1; break;
        case OPT_CLIENTS: if (parse_u32(optarg, 1, &o->clients)) return bad(name, optarg); break;
        case OPT_THREADS: if (parse_u32(optarg, 1, &o->threads)) return bad(name, optarg); break;
        case OPT_CONC:
            if (parse_u32(optarg, 1, &o->concurrency)) return bad(name, optarg);
            conc_given = 1;
            break;
        case OPT_RATE: if (parse_pos(optarg, &o->rate)) return bad(name, optarg); break;
        case OPT_DURATION:
            if (parse_pos(optarg, &o->duration_s) || o->duration_s <= 0) return bad(name, optarg);
            mf->has_duration = 1;
            break;
        case OPT_WARMUP: if (parse_pos(optarg, &o->warmup_s)) return bad(name, optarg); break;
        case OPT_PAYLOAD:
            if (parse_payload(optarg, &o->pmin, &o->pmax)) return bad(name, optarg);
            mf->has_payload = 1;
            break;
        case OPT_DATASET:
            if (strcmp(optarg, "fmnist")) return bad(name, optarg);
            mf->dataset = optarg;
            break;
        case OPT_OUT:
            mf->has_out = 1;
            /* The payload's bound: buffers are slots x capacity. */
            ull = strtoull(optarg, &end, 10);
            if (*end || end == optarg || optarg[0] == '-' || ull > (1ull << 30))
                return bad(name, optarg);
            o->out_cap = (size_t)ull;
            break;
        case OPT_PRIO:
            used = 0;
            if (sscanf(optarg, "%lf:%lf:%lf:%lf%n", &o->prio_weight[0], &o->prio_weight[1],
                       &o->prio_weight[2], &o->prio_weight[3], &used) != 4 || optarg[used])
                return bad(name, optarg);
            for (int i = 0; i < 4; i++)
                if (!(o->prio_weight[i] >= 0)) return bad(name, optarg);
            break;
        case OPT_WAIT:
            if (!strcmp(optarg, "spin")) o->wait = BENCH_WAIT_SPIN;
            else if (!strcmp(optarg, "sleep")) o->wait = BENCH_WAIT_SLEEP;
            else return bad(name, optarg);
            break;
        case OPT_SPIN:
            o->spin_ns = strtoll(optarg, &end, 10);
            if (*end || end == optarg || o->spin_ns < 0) return bad(name, optarg);
            break;
        case OPT_CPUS:
            if ((o->ncpus = bench_parse_cpus(optarg, o->cpus, BENCH_MAX_CPUS)) <= 0)
                return bad(name, optarg);
            break;
        case OPT_SCPUS:
            if ((o->nserver_cpus = bench_parse_cpus(optarg, o->server_cpus, BENCH_MAX_CPUS)) <= 0)
                return bad(name, optarg);
            break;
        case OPT_SEED:
            errno = 0;
            o->seed = strtoull(optarg, &end, 0);
            if (errno || *end || end == optarg || optarg[0] == '-') return bad(name, optarg);
            break;
        case OPT_NO_VERIFY: o->verify = 0; break;
        case OPT_CLIENT_PER_THREAD: o->client_per_thread = 1; break;
        case OPT_LANES: if (parse_u32(optarg, 1, &o->lanes) || o->lanes > BB_MAX_LANES) return bad(name, optarg); break;
        case OPT_BASELINE: if (parse_baselines(optarg, &o->baselines)) return bad(name, optarg); break;
        case OPT_BACKEND: mf->backend = optarg; break;
        case OPT_PARAM:
            if (!strchr(optarg, '=') || mf->nparams == 32) return bad(name, optarg);
            mf->params[mf->nparams++] = optarg;
            break;
        case OPT_MAX_BATCH:
            if (parse_u32(optarg, 1, &mf->max_batch)) return bad(name, optarg);
            mf->has_max_batch = 1;
            break;
        case OPT_MAX_WAIT:
            if (parse_u32(optarg, 0, &mf->max_wait_us)) return bad(name, optarg);
            mf->has_max_wait = 1;
            break;
        case OPT_JSON: o->json = optarg; break;
        case OPT_LABEL: o->label = optarg; break;
        case OPT_SCENARIO: mf->scenario = optarg; break;
        case OPT_TRACE: mf->trace = optarg; break;
        case OPT_SLO: if (parse_u32(optarg, 1, &mf->slo_us)) return bad(name, optarg); break;
        case OPT_OPTIMIZE:
            if (strcmp(optarg, "throughput") && strcmp(optarg, "latency")) return bad(name, optarg);
            mf->optimize = optarg;
            break;
        case OPT_BROKER_OPT:
            if (!strchr(optarg, '=') || o->nbroker_opts == BENCH_MAX_BROKER_OPTS)
                return bad(name, optarg);
            o->broker_opts[o->nbroker_opts++] = optarg;
            break;
        case OPT_VARIANT:
            if (!strchr(optarg, '=') || mf->nvariants == 4) return bad(name, optarg);
            mf->variants[mf->nvariants++] = optarg;
            break;
        case OPT_ROUNDS:
            if (parse_u32(optarg, 1, &mf->rounds) || mf->rounds > BENCH_MAX_ROUNDS)
                return bad(name, optarg);
            break;
        case 'h':
        case OPT_HELP: usage(stdout); exit(0);
        case OPT_VERSION:
            printf("bb-bench %s (library %s)\n", BB_VERSION_STRING, bb_version(NULL, NULL, NULL));
            exit(0);
        default: /* getopt has said what is wrong */
            fprintf(stderr, "Try 'bb-bench --help' for the options.\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bb-bench: unexpected argument %s\n", argv[optind]);
        return 2;
    }
    snprintf(o->model.name, sizeof o->model.name, "%s", model);
    if (mf->dataset) {
        if (mf->has_payload) {
            fprintf(stderr, "bb-bench: --dataset sets the payload (784 float32), drop --payload\n");
            return 2;
        }
        o->pmin = o->pmax = BB_FMNIST_DIM * sizeof(float);
        if (!mf->has_out) o->out_cap = 64;
    }
    if (o->lanes > 1 && (o->client_per_thread || o->threads < 2)) {
        fprintf(stderr, "bb-bench: --lanes spreads a client shared by several threads: it needs "
                        "--threads 2 or more, and no --client-per-thread\n");
        return 2;
    }
    if (!conc_given && o->rate > 0) o->concurrency = 256;
    /* inproc-all keeps every request of the run in flight in one thread: the
     * product must fit its uint32 count (it wrapped to 0: a run of nothing). */
    if ((uint64_t)o->clients * o->threads * o->concurrency > UINT32_MAX) {
        fprintf(stderr, "bb-bench: --clients x --threads x --concurrency is more than %u requests "
                        "in flight\n", UINT32_MAX);
        return 2;
    }
    if (!o->pmax && !o->pmin && o->out_cap == 0) o->out_cap = 1;
    if (!o->out_cap) o->out_cap = o->pmax;
    return 0;
}

static int resolve_model(struct bench_opts *o, const struct model_flags *mf)
{
    struct bench_model *m = &o->model;
    /* The broker's defaults (broker/config.c), for keys the config leaves out. */
    m->max_batch_size = 32;
    m->max_wait_us = 1000;
    m->instances = 1;
    m->spin_us = 50;
    if (o->config) {
        char err[512];
        if (bench_model_load(o->config, m->name, m, err, sizeof err) < 0) {
            fprintf(stderr, "bb-bench: %s\n", err);
            return -1;
        }
    }
    if (mf->backend) snprintf(m->backend, sizeof m->backend, "%s", mf->backend);
    if (!m->backend[0]) snprintf(m->backend, sizeof m->backend, "%s", m->name);
    if (mf->nparams) m->nparams = 0;
    for (size_t i = 0; i < mf->nparams; i++) {
        const char *eq = strchr(mf->params[i], '=');
        snprintf(m->params[i].key, sizeof m->params[i].key, "%.*s", (int)(eq - mf->params[i]),
                 mf->params[i]);
        snprintf(m->params[i].value, sizeof m->params[i].value, "%s", eq + 1);
        m->nparams++;
    }
    if (mf->has_max_batch) m->max_batch_size = mf->max_batch;
    if (mf->has_max_wait) m->max_wait_us = mf->max_wait_us;
    if (o->verify < 0) o->verify = o->dataset || is_echo_like(m->backend);
    if (!o->socket) {
        static char def[108];
        const char *env = getenv("BATCHBROKER_SOCKET");
        o->socket = m->socket[0] ? m->socket : env && env[0] ? env
                  : bb_default_socket(def, sizeof def) >= 0 ? def : "";
    }
    return 0;
}

int main(int argc, char **argv)
{
    static char broker_bin[4096];
    static struct bench_opts o = {
        .broker_bin = broker_bin, .clients = 1, .threads = 1, .concurrency = 1,
        .duration_s = 5, .warmup_s = 1, .pmin = 64, .pmax = 64, .wait = BENCH_WAIT_SPIN,
        .spin_ns = 1000000000, .verify = -1, .seed = 1,
    };
    struct model_flags mf = {0};
    bb__beside_exe(broker_bin, sizeof broker_bin, BB_BROKER_BIN, BB_BROKER_BIN_REL);
    int rc = parse_args(argc, argv, &o, &mf);
    if (rc) return rc;
    signal(SIGPIPE, SIG_IGN);
    if (mf.scenario) {
        if (strcmp(mf.scenario, "adaptive")) {
            fprintf(stderr, "bb-bench: --scenario %s: unknown (known: adaptive)\n", mf.scenario);
            return 2;
        }
        struct bench_scenario_args sa = {.json = o.json, .trace = mf.trace, .optimize = mf.optimize,
                                         .slo_us = mf.slo_us,
                                         .phase_s = mf.has_duration ? o.duration_s : 0};
        return bench_scenario_adaptive(&o, &sa);
    }
    if (mf.trace || mf.optimize || mf.slo_us) {
        fprintf(stderr, "bb-bench: --trace, --optimize and --slo-us need --scenario adaptive\n");
        return 2;
    }
    static struct bb__fmnist data;
    if (mf.dataset) {
        char err[512];
        if (bb__fmnist_load(NULL, "t10k", &data, err, sizeof err) < 0) {
            fprintf(stderr, "bb-bench: --dataset fmnist: %s\n", err);
            return 2;
        }
        o.dataset = &data;
    }
    if (resolve_model(&o, &mf) < 0) return 2;
    if ((o.nbroker_opts || mf.nvariants) && (!o.spawn || o.no_broker)) {
        fprintf(stderr, "bb-bench: --broker-opt and --variant need --spawn-broker\n");
        return 2;
    }

    /* The broker, its variants (each its own copy of the options, with the
     * variant's settings after --broker-opt's), then the baselines. */
    enum { MAXRUNS = 1 + 4 + BENCH_NBASE };
    const struct bench_xport *plan[MAXRUNS];
    const struct bench_opts *plan_opts[MAXRUNS];
    static struct bench_opts vopts[4], all, eager;
    static char vbuf[4][256];
    const char *vname[MAXRUNS] = {0};
    const struct bench_xport *base[BENCH_NBASE] = {&bench_xport_inproc, &bench_xport_inproc,
                                                   &bench_xport_inproc, &bench_xport_shm,
                                                   &bench_xport_uds};
    int n = 0;
    if (!o.no_broker) {
        plan_opts[n] = &o;
        plan[n++] = &bench_xport_broker;
    }
    for (int v = 0; v < mf.nvariants; v++) {
        vopts[v] = o;
        snprintf(vbuf[v], sizeof vbuf[v], "%s", mf.variants[v]);
        for (char *save, *t = strtok_r(vbuf[v], ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (vopts[v].nbroker_opts == BENCH_MAX_BROKER_OPTS || !strchr(t, '='))
                return bad("variant", mf.variants[v]);
            vopts[v].broker_opts[vopts[v].nbroker_opts++] = t;
        }
        vname[n] = mf.variants[v];
        plan_opts[n] = &vopts[v];
        plan[n++] = &bench_xport_broker;
    }
    /* inproc-all: every client's requests in flight in one thread, the
     * batches a single process would form with the whole load. */
    all = o;
    all.concurrency = o.clients * o.threads * o.concurrency;
    all.clients = all.threads = 1;
    /* inproc-eager: the clients as they would batch without a broker and
     * without waiting for company that only other processes could bring. */
    eager = o;
    eager.model.max_wait_us = 0;
    for (int b = 0; b < BENCH_NBASE; b++)
        if (o.baselines & (1u << b)) {
            plan_opts[n] = b == BENCH_BASE_INPROC_ALL     ? &all
                           : b == BENCH_BASE_INPROC_EAGER ? &eager
                                                          : &o;
            plan[n++] = base[b];
        }
    if (!n) {
        fprintf(stderr, "bb-bench: nothing to run (--no-broker without --baseline)\n");
        return 2;
    }
    struct bench_run_result *runs[MAXRUNS], *one = calloc(1, sizeof *one);
    int failures = 0;
    for (int i = 0; i < n; i++) {
        runs[i] = calloc(1, sizeof *runs[i]);
        if (!runs[i] || !one) {
            fprintf(stderr, "bb-bench: out of memory\n");
            return 1;
        }
    }
    uint32_t rounds = mf.rounds ? mf.rounds : 1;
    for (uint32_t r = 0; r < rounds; r++)
        for (int i = 0; i < n; i++) {
            memset(one, 0, sizeof *one);
            const char *name = plan_opts[i] == &all     ? "inproc-all"
                               : plan_opts[i] == &eager ? "inproc-eager"
                                                        : plan[i]->name;
            if (vname[i])
                snprintf(one->name_buf, sizeof one->name_buf, "broker:%s", vname[i]);
            fprintf(stderr, "bb-bench: running %s", vname[i] ? one->name_buf : name);
            if (rounds > 1) fprintf(stderr, " (round %u of %u)", r + 1, rounds);
            fprintf(stderr, " ...\n");
            if (bench_run(plan_opts[i], plan[i], one) < 0) failures++;
            one->name = vname[i] ? one->name_buf : name;
            bench_result_add(runs[i], one);
        }
    free(one);
    bench_print_table(stdout, &o, runs, n);
    if (o.json && bench_write_json(o.json, &o, runs, n) < 0) {
        fprintf(stderr, "bb-bench: cannot write %s\n", o.json);
        failures++;
    }
    for (int i = 0; i < n; i++) free(runs[i]);
    return failures ? 1 : 0;
}
