/* One client thread's load loop, the same for the broker and every baseline.
 *
 * Closed loop: `concurrency` requests in flight; each completion is recorded
 * and the slot resubmitted at once.
 * Open loop: arrivals follow a Poisson process of rate/(clients*threads) per
 * thread. A request's latency runs from its *intended* send time, so a
 * transport that falls behind (all slots busy, or a slow submit) is charged
 * for the queueing it causes instead of hiding it (coordinated omission).
 *
 * Completions are awaited oldest first. With a priority mix, newer requests
 * can overtake older ones, so after each completion the pending list is also
 * polled, and every request is timed when it completes, not when it reaches
 * the head. Only completions inside [t_meas, t_end) count. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "bench.h"

#define NIL UINT32_MAX

struct slot_info {
    uint64_t sent;      /* intended send time */
    uint64_t seq;       /* stamped into the payload, checked in the echo */
    uint32_t label;     /* with a dataset: the image's class */
    uint32_t len;
    uint32_t prio;
    uint32_t prev, next;/* pending list, oldest first */
};

struct loop {
    const struct bench_env *env;
    const struct bench_opts *o;
    const struct bench_xport *x;
    void *th;
    struct bench_thread_result *res;
    struct slot_info *s;
    uint32_t head, tail;            /* pending list */
    uint32_t *free_stack, nfree;
    uint64_t rng, seq, t_meas, t_end;
    double prio_cum[4], prio_total;
    unsigned char *pattern;         /* the payload template */
    int broken;
    struct bench_reqlog *log;       /* phased runs only */
    uint64_t t0;                    /* start of the warm-up */
    uint64_t first_image;           /* with a dataset */
};

static uint64_t rnd(struct loop *l)
{
    /* splitmix64 */
    uint64_t z = (l->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rnd_unit(struct loop *l) /* (0, 1] */
{
    return ((double)(rnd(l) >> 11) + 1.0) / 9007199254740992.0;
}

static uint32_t pick_len(struct loop *l)
{
    size_t span = l->o->pmax - l->o->pmin;
    return (uint32_t)(l->o->pmin + (span ? rnd(l) % (span + 1) : 0));
}

static uint32_t pick_prio(struct loop *l)
{
    if (l->prio_total <= 0) return BB_PRIORITY_DEFAULT;
    double u = rnd_unit(l) * l->prio_total;
    for (uint32_t i = 0; i < 4; i++)
        if (u <= l->prio_cum[i]) return BB_PRIORITY_CRITICAL + i;
    return BB_PRIORITY_LOW;
}

static void list_push(struct loop *l, uint32_t i)
{
    l->s[i].next = NIL;
    l->s[i].prev = l->tail;
    if (l->tail != NIL) l->s[l->tail].next = i;
    else l->head = i;
    l->tail = i;
}

static void list_remove(struct loop *l, uint32_t i)
{
    struct slot_info *e = &l->s[i];
    if (e->prev != NIL) l->s[e->prev].next = e->next;
    else l->head = e->next;
    if (e->next != NIL) l->s[e->next].prev = e->prev;
    else l->tail = e->prev;
}

static int submit_one(struct loop *l, uint32_t i, uint64_t intended)
{
    struct slot_info *e = &l->s[i];
    e->sent = intended;
    e->len = pick_len(l);
    e->prio = pick_prio(l);
    e->seq = ++l->seq;
    unsigned char *in = l->x->input(l->th, i);
    const struct bb__fmnist *d = l->o->dataset;
    if (d) {
        /* Each thread walks the test set from its own starting image. */
        uint32_t img = (uint32_t)((e->seq + l->first_image) % d->n);
        e->len = BB_FMNIST_DIM * sizeof(float);
        e->label = d->y[img];
        memcpy(in, d->x + (size_t)img * BB_FMNIST_DIM, e->len);
    } else {
        memcpy(in, l->pattern, e->len); /* the caller writes its input, as a real one would */
        memcpy(in, &e->seq, e->len < 8 ? e->len : 8);
    }
    int rc = l->x->submit(l->th, i, e->len, (int)e->prio);
    if (rc < 0) {
        if (!l->res->first_error) l->res->first_error = rc;
        l->broken = 1;
        return rc;
    }
    l->res->submitted++;
    list_push(l, i);
    return 0;
}

static int output_ok(struct loop *l, uint32_t i)
{
    struct slot_info *e = &l->s[i];
    size_t olen = 0;
    const void *out = l->x->output(l->th, i, &olen);
    if (l->o->dataset) return out && olen == BB_FMNIST_CLASSES * sizeof(float);
    return out && olen == e->len && !memcmp(out, &e->seq, e->len < 8 ? e->len : 8);
}

/* Phased runs: every request sent in the measured window, whenever it ends. */
static void log_request(struct loop *l, uint32_t i, uint64_t t, int status)
{
    struct bench_reqlog *g = l->log;
    if (l->s[i].sent < l->t_meas) return;
    if (g->n == g->cap) {
        g->dropped++;
        return;
    }
    if (status == 0 && l->o->verify && !output_ok(l, i)) status = BENCH_BAD_OUTPUT;
    g->rec[g->n++] = (struct bench_req_rec){.sent = l->s[i].sent, .done = t, .status = status};
}

static void record(struct loop *l, uint32_t i, uint64_t t, int status)
{
    struct slot_info *e = &l->s[i];
    if (l->log) log_request(l, i, t, status);
    if (t < l->t_meas || t >= l->t_end) return;
    if (status != 0) {
        l->res->failed++;
        if (!l->res->first_error) l->res->first_error = status;
        return;
    }
    if (l->o->verify && !output_ok(l, i)) {
        l->res->bad_output++;
        return;
    }
    l->res->completed++;
    if (l->o->dataset) {
        size_t olen;
        const float *out = l->x->output(l->th, i, &olen);
        float v[BB_FMNIST_CLASSES];
        if (out && olen == sizeof v) {
            memcpy(v, out, sizeof v); /* output buffers need not be float-aligned */
            l->res->correct += bb__argmax(v, BB_FMNIST_CLASSES) == e->label;
        }
    }
    bench_hist_record(&l->res->lat[e->prio], t - e->sent);
}

/* Wait for the oldest pending request until `deadline`. On completion also
 * harvest whatever else completed (with a priority mix only). Returns the
 * number of slots freed (pushed on free_stack), or -1. */
static int reap(struct loop *l, uint64_t deadline)
{
    uint32_t i = l->head;
    int status = 0, freed = 0;
    int r = l->x->wait(l->th, i, deadline, &status);
    if (r < 0) {
        l->broken = 1;
        return -1;
    }
    if (r == 0) return 0;
    uint64_t t = bench_now_ns();
    list_remove(l, i);
    record(l, i, t, status);
    l->free_stack[l->nfree++] = i;
    freed++;
    if (l->prio_total > 0) {
        for (uint32_t j = l->head, nx; j != NIL; j = nx) {
            nx = l->s[j].next;
            r = l->x->wait(l->th, j, 0, &status);
            if (r < 0) {
                l->broken = 1;
                return -1;
            }
            if (r == 0) continue;
            list_remove(l, j);
            record(l, j, bench_now_ns(), status);
            l->free_stack[l->nfree++] = j;
            freed++;
        }
    }
    return freed;
}

static void closed_loop(struct loop *l)
{
    uint64_t now = bench_now_ns();
    while (l->nfree && !l->broken) submit_one(l, l->free_stack[--l->nfree], now);
    while (l->head != NIL && !l->broken) {
        if (reap(l, BENCH_FOREVER) <= 0) continue;
        now = bench_now_ns();
        while (now < l->t_end && l->nfree && !l->broken)
            submit_one(l, l->free_stack[--l->nfree], now);
    }
}

/* Phased open loop: the next arrival after t of a Poisson process whose rate
 * is piecewise constant (the warm-up at phases[0].rate, then each phase), by
 * time rescaling: a unit-rate exponential is spent across the segments.
 * UINT64_MAX when it falls after the last phase. The same seed gives the
 * same trace whatever the transport does. */
static uint64_t next_phased(struct loop *l, uint64_t t)
{
    const struct bench_opts *o = l->o;
    double per_thread = 1.0 / (double)(o->clients * o->threads);
    double x = -log(rnd_unit(l));
    uint64_t seg_start = l->t0, seg_end = l->t_meas;
    double rate = o->phases[0].rate * per_thread;
    for (uint32_t p = 0;;) {
        if (t < seg_end) {
            double room = (double)(seg_end - t) / 1e9 * rate; /* expected arrivals left */
            if (rate > 0 && x < room) return t + (uint64_t)(x / rate * 1e9) + 1;
            if (rate > 0) x -= room;
            t = seg_end;
        }
        if (p == o->nphases) return UINT64_MAX;
        seg_start = seg_end;
        seg_end = p + 1 == o->nphases ? l->t_end
                                      : seg_start + (uint64_t)(o->phases[p].seconds * 1e9);
        rate = o->phases[p].rate * per_thread;
        p++;
    }
}

static void open_loop(struct loop *l, uint64_t t0, double gap_ns)
{
    int phased = l->o->nphases > 0;
    uint64_t next = phased ? next_phased(l, t0) : t0 + (uint64_t)(-log(rnd_unit(l)) * gap_ns);
    while (!l->broken) {
        uint64_t now = bench_now_ns();
        int arriving = next < l->t_end;
        if (arriving && next <= now && l->nfree) {
            submit_one(l, l->free_stack[--l->nfree], next);
            next = phased ? next_phased(l, next) : next + (uint64_t)(-log(rnd_unit(l)) * gap_ns) + 1;
            continue;
        }
        if (l->head != NIL) {
            reap(l, arriving && l->nfree ? next : BENCH_FOREVER);
            continue;
        }
        if (!arriving) break;
        bench_wait_until(next, l->o->wait);
    }
}

void bench_load_thread(const struct bench_env *env, const struct bench_xport *x, void *th,
                       uint32_t thread, struct bench_thread_result *res)
{
    const struct bench_opts *o = env->o;
    struct loop l = {.env = env, .o = o, .x = x, .th = th, .res = res, .head = NIL, .tail = NIL};
    uint32_t n = o->concurrency;
    l.s = calloc(n, sizeof *l.s);
    l.free_stack = calloc(n, sizeof *l.free_stack);
    l.pattern = malloc(o->pmax ? o->pmax : 1);
    if (!l.s || !l.free_stack || !l.pattern) {
        fprintf(stderr, "bb-bench: out of memory\n");
        res->first_error = BB_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < o->pmax; i++) l.pattern[i] = (unsigned char)(i * 131u + 7u);
    for (uint32_t i = 0; i < n; i++) l.free_stack[l.nfree++] = n - 1 - i;
    l.rng = o->seed ^ ((uint64_t)(thread + 1) * 0xd1b54a32d192ed03ull);
    l.first_image = (uint64_t)thread * 997u;
    for (uint32_t i = 0; i < 4; i++) {
        l.prio_total += o->prio_weight[i];
        l.prio_cum[i] = l.prio_total;
    }

    uint64_t t0;
    while (!(t0 = atomic_load_explicit(&env->sh->t0, memory_order_acquire))) usleep(100);
    l.t0 = t0;
    l.t_meas = env->sh->t_meas;
    l.t_end = env->sh->t_end;
    if (o->reqlog) l.log = &o->reqlog[thread];
    bench_wait_until(t0, o->wait);
    if (o->rate > 0)
        open_loop(&l, t0, 1e9 * (double)(o->clients * o->threads) / o->rate);
    else
        closed_loop(&l);
    /* After a failure, still let the transport finish what is in flight. */
    while (l.head != NIL) {
        int status;
        if (x->wait(th, l.head, BENCH_FOREVER, &status) != 1) break;
        list_remove(&l, l.head);
    }
out:
    free(l.s);
    free(l.free_stack);
    free(l.pattern);
}
