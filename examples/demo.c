/*
 * bb-demo: several client processes, each with several threads, each thread
 * keeping a few requests in flight against one model (echo by default) for a
 * few seconds. Every output is checked against the input it answers; the
 * parent merges the per-request latencies of all processes (sent back over a
 * pipe) and prints throughput, latency percentiles and the broker's average
 * batch size for the run.
 *
 *   bb-demo [-s SOCKET] [-m MODEL] [-p PROCS] [-t THREADS] [-k INFLIGHT]
 *           [-d SECONDS] [-b MAX_BYTES] [-S SPIN_NS]
 *
 * Exit status: 0 if every request completed with its own answer, 1 if any
 * failed or mismatched (or a process died), 2 on bad usage.
 *
 * The parent never holds a live client across fork(): it reads the broker's
 * statistics before forking, disconnects, and connects again at the end.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "batchbroker/client.h"

#define MIN_BYTES 16u
#define WAIT_TIMEOUT_NS (10ll * 1000000000ll) /* a stuck request is an error */
#define MAX_REPORTED_ERRORS 5

struct opts {
    const char *socket;
    const char *model;
    int procs, threads, inflight;
    double seconds;
    uint32_t max_bytes;
    int64_t spin_ns;
};

/* What one process sends back through its pipe, followed by nsamples u32
 * latencies in nanoseconds. */
struct proc_report {
    uint64_t requests, errors, mismatches, nsamples;
    uint64_t span_ns; /* longest thread run, first submit to last completion */
    int32_t failed;   /* setup failed (connect, model_open, request_new) */
    int32_t pad;
};

struct thread_ctx {
    const struct opts *o;
    bb_model *model;
    int proc, thread;
    uint64_t requests, errors, mismatches;
    uint64_t span_ns;
    uint32_t *lat;
    size_t nlat, cap;
    int failed;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Deterministic payload of request number `seq` of one thread: its length and
 * every byte follow from (proc, thread, seq), so no copy is kept to check the
 * answer against. */
static uint32_t payload_len(const struct thread_ctx *t, uint64_t seq)
{
    uint32_t span = t->o->max_bytes - MIN_BYTES + 1;
    return MIN_BYTES + (uint32_t)((seq * 2654435761u + (uint64_t)t->thread * 97u) % span);
}

static uint8_t payload_byte(const struct thread_ctx *t, uint64_t seq, uint32_t j)
{
    return (uint8_t)(seq * 131u + j * 7u + (uint32_t)t->proc * 31u + (uint32_t)t->thread * 17u);
}

static void fill(const struct thread_ctx *t, bb_request *r, uint64_t seq)
{
    uint32_t len = payload_len(t, seq);
    uint8_t *p = bb_request_input(r);
    for (uint32_t j = 0; j < len; j++)
        p[j] = payload_byte(t, seq, j);
    memcpy(p, &seq, sizeof seq); /* first 8 bytes: the sequence number itself */
    bb_request_set_input_len(r, len);
}

static int check(const struct thread_ctx *t, const bb_request *r, uint64_t seq)
{
    size_t len;
    const uint8_t *out = bb_request_output(r, &len);
    if (!out || len != payload_len(t, seq))
        return -1;
    uint64_t got;
    memcpy(&got, out, sizeof got);
    if (got != seq)
        return -1;
    for (uint32_t j = sizeof seq; j < len; j++)
        if (out[j] != payload_byte(t, seq, j))
            return -1;
    return 0;
}

static void record(struct thread_ctx *t, uint64_t ns)
{
    if (t->nlat == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 65536;
        uint32_t *p = realloc(t->lat, cap * sizeof *p);
        if (!p)
            return; /* keep counting, stop sampling */
        t->lat = p;
        t->cap = cap;
    }
    t->lat[t->nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void *thread_main(void *arg)
{
    struct thread_ctx *t = arg;
    const struct opts *o = t->o;
    int k = o->inflight;
    bb_request **reqs = calloc((size_t)k, sizeof *reqs);
    uint64_t *seqs = calloc((size_t)k, sizeof *seqs);
    uint64_t *sent = calloc((size_t)k, sizeof *sent);
    if (!reqs || !seqs || !sent) {
        t->failed = 1;
        goto out;
    }
    for (int i = 0; i < k; i++) {
        int rc = bb_request_new(t->model, o->max_bytes, o->max_bytes, &reqs[i]);
        if (rc < 0) {
            fprintf(stderr, "bb-demo[%d.%d]: bb_request_new: %s\n", t->proc, t->thread,
                    bb_strerror(rc));
            t->failed = 1;
            goto out;
        }
    }
    uint64_t next_seq = 0;
    uint64_t start = now_ns();
    uint64_t stop = start + (uint64_t)(o->seconds * 1e9);
    int live = 0;
    for (int i = 0; i < k; i++) {
        seqs[i] = next_seq++;
        fill(t, reqs[i], seqs[i]);
        sent[i] = now_ns();
        int rc = bb_submit(reqs[i], NULL);
        if (rc < 0) {
            fprintf(stderr, "bb-demo[%d.%d]: bb_submit: %s\n", t->proc, t->thread,
                    bb_strerror(rc));
            t->errors++;
            sent[i] = 0;
            continue;
        }
        live++;
    }
    /* Closed loop: wait for the oldest request, check it, resubmit it. */
    for (int i = 0; live > 0; i = (i + 1) % k) {
        if (!sent[i])
            continue;
        int rc = bb_wait(reqs[i], WAIT_TIMEOUT_NS);
        uint64_t done = now_ns();
        live--;
        if (rc < 0) {
            if (t->errors++ < MAX_REPORTED_ERRORS)
                fprintf(stderr, "bb-demo[%d.%d]: bb_wait: %s\n", t->proc, t->thread,
                        bb_strerror(rc));
            if (rc == BB_EDISCONNECTED || rc == BB_ETIMEDOUT)
                break; /* the request is still in the broker's hands */
            sent[i] = 0;
            continue;
        }
        t->requests++;
        record(t, done - sent[i]);
        int st = bb_request_status(reqs[i]);
        if (st != 0) {
            if (t->errors++ < MAX_REPORTED_ERRORS)
                fprintf(stderr, "bb-demo[%d.%d]: request failed: %s\n", t->proc, t->thread,
                        bb_strerror(st));
        } else if (check(t, reqs[i], seqs[i]) < 0) {
            if (t->mismatches++ < MAX_REPORTED_ERRORS)
                fprintf(stderr, "bb-demo[%d.%d]: request %llu got someone else's answer\n",
                        t->proc, t->thread, (unsigned long long)seqs[i]);
        }
        sent[i] = 0;
        if (done >= stop)
            continue; /* draining: do not resubmit */
        seqs[i] = next_seq++;
        fill(t, reqs[i], seqs[i]);
        sent[i] = now_ns();
        rc = bb_submit(reqs[i], NULL);
        if (rc < 0) {
            if (t->errors++ < MAX_REPORTED_ERRORS)
                fprintf(stderr, "bb-demo[%d.%d]: bb_submit: %s\n", t->proc, t->thread,
                        bb_strerror(rc));
            sent[i] = 0;
            continue;
        }
        live++;
    }
    t->span_ns = now_ns() - start;
out:
    for (int i = 0; reqs && i < k; i++)
        bb_request_free(reqs[i]);
    free(reqs);
    free(seqs);
    free(sent);
    return NULL;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One client process: connect, wait for the start signal, run the threads,
 * send the report and the latency samples to the parent. */
static int child_main(const struct opts *o, int proc, int ready_fd, int go_fd, int out_fd)
{
    struct proc_report rep = {0};
    bb_client *c = NULL;
    bb_model *m = NULL;
    int rc = bb_connect(o->socket, NULL, &c);
    if (rc == 0)
        rc = bb_model_open(c, o->model, &m);
    if (rc < 0) {
        fprintf(stderr, "bb-demo[%d]: %s: %s\n", proc, c ? "bb_model_open" : "bb_connect",
                bb_strerror(rc));
        rep.failed = 1;
    }
    if (c && o->spin_ns >= 0)
        bb_client_set_spin_ns(c, o->spin_ns);
    /* Closing our end after the byte lets the parent see EOF rather than
     * wait forever if a sibling died before it got here. */
    char b = 1, go;
    if (write_all(ready_fd, &b, 1) < 0)
        rep.failed = 1;
    close(ready_fd);
    if (read(go_fd, &go, 1) < 0)
        rep.failed = 1;
    close(go_fd);

    struct thread_ctx *ts = calloc((size_t)o->threads, sizeof *ts);
    pthread_t *tids = calloc((size_t)o->threads, sizeof *tids);
    if (!ts || !tids)
        rep.failed = 1;
    int started = 0;
    for (int i = 0; !rep.failed && i < o->threads; i++) {
        ts[i] = (struct thread_ctx){.o = o, .model = m, .proc = proc, .thread = i};
        if (pthread_create(&tids[i], NULL, thread_main, &ts[i]) != 0) {
            rep.failed = 1;
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) {
        pthread_join(tids[i], NULL);
        rep.requests += ts[i].requests;
        rep.errors += ts[i].errors;
        rep.mismatches += ts[i].mismatches;
        rep.nsamples += ts[i].nlat;
        if (ts[i].span_ns > rep.span_ns)
            rep.span_ns = ts[i].span_ns;
        if (ts[i].failed)
            rep.failed = 1;
    }
    bb_disconnect(c);
    int bad = write_all(out_fd, &rep, sizeof rep) < 0;
    for (int i = 0; i < started && !bad; i++)
        bad = write_all(out_fd, ts[i].lat, ts[i].nlat * sizeof *ts[i].lat) < 0;
    for (int i = 0; ts && i < started; i++)
        free(ts[i].lat);
    free(ts);
    free(tids);
    return bad || rep.failed || rep.errors || rep.mismatches ? 1 : 0;
}

/* Broker-side batch counters, read without keeping a client across fork(). */
static int broker_totals(const struct opts *o, double *items, double *batches)
{
    bb_client *c;
    bb_model *m;
    struct bb_model_stats s;
    /* Statistics only: ask for the smallest segment the broker gives. */
    struct bb_client_opts small = {.segment_bytes = 1u << 20, .max_inflight = 1};
    int rc = bb_connect(o->socket, &small, &c);
    if (rc < 0)
        return rc;
    rc = bb_model_open(c, o->model, &m);
    if (rc == 0)
        rc = bb_model_stats(m, &s);
    bb_disconnect(c);
    if (rc < 0)
        return rc;
    *batches = (double)s.batches;
    *items = s.avg_batch_size * (double)s.batches;
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(const uint32_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i] / 1e3;
}

static void usage(FILE *f)
{
    char def[108];
    fprintf(f,
            "usage: bb-demo [-s SOCKET] [-m MODEL] [-p PROCS] [-t THREADS] [-k INFLIGHT]\n"
            "               [-d SECONDS] [-b MAX_BYTES] [-S SPIN_NS]\n"
            "  -s SOCKET    broker socket (default: %s)\n"
            "  -m MODEL     model to call (default echo; must echo its input)\n"
            "  -p PROCS     client processes (default 4)\n"
            "  -t THREADS   threads per process (default 2)\n"
            "  -k INFLIGHT  requests each thread keeps in flight (default 8)\n"
            "  -d SECONDS   how long each thread submits (default 3)\n"
            "  -b MAX_BYTES largest payload; sizes vary from %u up (default 256)\n"
            "  -S SPIN_NS   bb_wait spin budget (default: the library's)\n",
            bb_default_socket(def, sizeof def) >= 0 ? def : "none", MIN_BYTES);
}

static int parse_int(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o = {.model = "echo", .procs = 4, .threads = 2, .inflight = 8, .seconds = 3,
                     .max_bytes = 256, .spin_ns = -1};
    int ch;
    long v;
    while ((ch = getopt(argc, argv, "s:m:p:t:k:d:b:S:h")) != -1) {
        int bad = 0;
        switch (ch) {
        case 's': o.socket = optarg; break;
        case 'm': o.model = optarg; break;
        case 'p': bad = parse_int(optarg, 1, 256, &v); o.procs = (int)v; break;
        case 't': bad = parse_int(optarg, 1, 256, &v); o.threads = (int)v; break;
        case 'k': bad = parse_int(optarg, 1, 4096, &v); o.inflight = (int)v; break;
        case 'b': bad = parse_int(optarg, MIN_BYTES, 1 << 20, &v); o.max_bytes = (uint32_t)v; break;
        case 'S': bad = parse_int(optarg, 0, 1000000000, &v); o.spin_ns = v; break;
        case 'd': {
            char *end;
            o.seconds = strtod(optarg, &end);
            bad = end == optarg || *end || !(o.seconds > 0 && o.seconds <= 3600);
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "bb-demo: bad value for -%c: %s\n", ch, optarg);
            return 2;
        }
    }
    if (optind < argc || (uint64_t)o.threads * (uint64_t)o.inflight > 1024) {
        fprintf(stderr, "bb-demo: %s\n", optind < argc ? "unexpected argument"
                                                       : "threads x inflight must be <= 1024 "
                                                         "(the default slots per client)");
        return 2;
    }

    double items0 = 0, batches0 = 0;
    int rc = broker_totals(&o, &items0, &batches0);
    if (rc < 0) {
        fprintf(stderr, "bb-demo: cannot reach model %s at %s: %s\n", o.model,
                o.socket ? o.socket : "the default socket", bb_strerror(rc));
        return 1;
    }

    int ready[2], go[2];
    if (pipe(ready) < 0 || pipe(go) < 0) {
        perror("bb-demo: pipe");
        return 1;
    }
    pid_t *pids = calloc((size_t)o.procs, sizeof *pids);
    int *outs = calloc((size_t)o.procs, sizeof *outs);
    if (!pids || !outs)
        return 1;
    fflush(NULL);
    for (int p = 0; p < o.procs; p++) {
        int out[2];
        if (pipe(out) < 0) {
            perror("bb-demo: pipe");
            return 1;
        }
        pids[p] = fork();
        if (pids[p] < 0) {
            perror("bb-demo: fork");
            return 1;
        }
        if (pids[p] == 0) {
            close(ready[0]);
            close(go[1]);
            close(out[0]);
            _exit(child_main(&o, p, ready[1], go[0], out[1]));
        }
        close(out[1]);
        outs[p] = out[0];
    }
    close(ready[1]);
    close(go[0]);
    /* Start everyone at once, after every process has connected. */
    for (int p = 0; p < o.procs; p++) {
        char b;
        if (read_all(ready[0], &b, 1) < 0)
            break;
    }
    close(go[1]);
    close(ready[0]);

    struct proc_report tot = {0};
    int failed = 0;
    uint32_t *lat = NULL;
    size_t nlat = 0;
    for (int p = 0; p < o.procs; p++) {
        struct proc_report r;
        if (read_all(outs[p], &r, sizeof r) < 0) {
            fprintf(stderr, "bb-demo: process %d sent no report\n", p);
            failed = 1;
        } else {
            uint32_t *grown = realloc(lat, (nlat + r.nsamples + 1) * sizeof *lat);
            if (!grown || read_all(outs[p], grown + nlat, r.nsamples * sizeof *lat) < 0) {
                fprintf(stderr, "bb-demo: process %d: latency samples lost\n", p);
                failed = 1;
                if (grown)
                    lat = grown;
            } else {
                lat = grown;
                nlat += r.nsamples;
            }
            tot.requests += r.requests;
            tot.errors += r.errors;
            tot.mismatches += r.mismatches;
            if (r.span_ns > tot.span_ns)
                tot.span_ns = r.span_ns;
            failed |= r.failed;
        }
        close(outs[p]);
    }
    for (int p = 0; p < o.procs; p++) {
        int st;
        while (waitpid(pids[p], &st, 0) < 0 && errno == EINTR)
            ;
        if (WIFSIGNALED(st)) {
            fprintf(stderr, "bb-demo: process %d killed by signal %d\n", p, WTERMSIG(st));
            failed = 1;
        }
    }
    qsort(lat, nlat, sizeof *lat, cmp_u32);

    double secs = tot.span_ns / 1e9;
    printf("bb-demo: %d processes x %d threads x %d in flight, %.1f s, model %s, %u..%u-byte "
           "payloads\n",
           o.procs, o.threads, o.inflight, o.seconds, o.model, MIN_BYTES, o.max_bytes);
    printf("requests:        %llu\n", (unsigned long long)tot.requests);
    printf("errors:          %llu (mismatched answers: %llu)\n",
           (unsigned long long)(tot.errors + tot.mismatches),
           (unsigned long long)tot.mismatches);
    printf("throughput:      %.0f req/s\n", secs > 0 ? (double)tot.requests / secs : 0.0);
    printf("latency (us):    p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", pct_us(lat, nlat, 0.50),
           pct_us(lat, nlat, 0.90), pct_us(lat, nlat, 0.99), nlat ? lat[nlat - 1] / 1e3 : 0.0);
    double items1 = 0, batches1 = 0;
    rc = broker_totals(&o, &items1, &batches1);
    if (rc < 0) {
        fprintf(stderr, "bb-demo: bb_model_stats: %s\n", bb_strerror(rc));
        failed = 1;
    } else {
        double nb = batches1 - batches0;
        printf("broker batches:  %.0f\n", nb);
        printf("avg_batch_size:  %.2f\n", nb > 0 ? (items1 - items0) / nb : 0.0);
    }
    free(lat);
    free(pids);
    free(outs);
    if (failed || tot.errors || tot.mismatches || tot.requests == 0) {
        fprintf(stderr, "bb-demo: FAILED\n");
        return 1;
    }
    return 0;
}
