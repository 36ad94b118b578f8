/* Per-model statistics and the profiler's phases: see metrics.h for who
 * writes what and why every figure is a single-writer atomic. */
#include "metrics.h"

#include <stdio.h>
#include <string.h>

#include "util_internal.h"

#define WINDOW_HALF_NS 5000000000ull /* the window: the last 5 to 10 s */
#define WINDOW_READ_TRIES 4096 /* spins; a copy takes some 10 µs */

const uint64_t bb__prom_bound_ns[BB_PROM_BOUNDS] = {
    100,         250,         500,         1000,        2500,        5000,
    10000,       25000,       50000,       100000,      250000,      500000,
    1000000,     2500000,     5000000,     10000000,    25000000,    50000000,
    100000000,   250000000,   500000000,   1000000000,  2500000000,  5000000000,
    10000000000,
};
const char *const bb__prom_bound_text[BB_PROM_BOUNDS] = {
    "1e-07",  "2.5e-07", "5e-07",  "1e-06", "2.5e-06", "5e-06", "1e-05", "2.5e-05", "5e-05",
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025",  "0.005", "0.01",  "0.025",   "0.05",
    "0.1",    "0.25",    "0.5",    "1",     "2.5",     "5",     "10",
};

/* For fine bucket f, the first coarse bound >= its lowest value. A fine
 * bucket is at most 1/32 of its value wide and the bounds are 2x or more
 * apart, so at most one bound falls inside it: one comparison with that
 * bound places a value exactly (coarse_of). Filled once, before any thread
 * other than main exists. */
static uint8_t coarse_first[BB_HIST_BUCKETS];
/* The bounds again, with a last one no value passes. */
static uint64_t coarse_bound[BB_PROM_BOUNDS + 1];

static void coarse_table_init(void)
{
    static bool done;
    if (done)
        return;
    uint32_t c = 0;
    for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++) {
        while (c < BB_PROM_BOUNDS && bb__prom_bound_ns[c] < bb__hist_lower(f))
            c++;
        coarse_first[f] = (uint8_t)c;
    }
    memcpy(coarse_bound, bb__prom_bound_ns, sizeof bb__prom_bound_ns);
    coarse_bound[BB_PROM_BOUNDS] = UINT64_MAX;
    done = true;
}

static inline uint32_t coarse_of(uint32_t f, uint64_t v)
{
    uint32_t c = coarse_first[f];
    return c + (v > coarse_bound[c]);
}

/* n observations of v in the buckets, not the sum. */
static inline void dist_count(struct bb__dist *d, uint64_t v, uint64_t n)
{
    uint32_t f = bb__hist_index(v);
    bb__ctr_add(&d->fine[f], n);
    bb__ctr_add(&d->coarse[coarse_of(f, v)], n);
}

/* n observations of v. */
static inline void dist_add(struct bb__dist *d, uint64_t v, uint64_t n)
{
    dist_count(d, v, n);
    bb__ctr_add(&d->sum_ns, v * n);
}

/* Bucket k of a batch of n: (2^(k-1), 2^k]. */
static inline uint32_t size_bucket(uint32_t n)
{
    uint32_t k = n <= 1 ? 0 : 32u - (uint32_t)__builtin_clz(n - 1);
    return k < BB_BATCH_SIZE_BUCKETS ? k : BB_BATCH_SIZE_BUCKETS - 1;
}

static inline unsigned prio_idx(unsigned prio)
{
    return prio - 1u < BB__NPRIO ? prio - 1u : BB_PRIORITY_NORMAL - 1u;
}

void bb__metrics_init(struct bb__metrics *m, const char *name, uint32_t max_batch_size,
                      uint64_t now)
{
    coarse_table_init();
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->max_batch_size = max_batch_size;
    m->stride = 1;
    m->win_due_ns = now + WINDOW_HALF_NS;
    bb__ctr_set(&m->win[0].start_ns, now);
    bb__ctr_set(&m->win[1].start_ns, now);
}

void bb__metrics_failed(struct bb__metrics *m, int status, unsigned prio)
{
    int o = bb__outcome_of(status);
    if (o == BB_OUTCOME_COMPLETED)
        o = BB_OUTCOME_FAILED; /* a caller's mistake; never count it as a success */
    bb__ctr_add(&m->requests[prio_idx(prio)][o], 1);
}

void bb__metrics_answered(struct bb__metrics *m, unsigned prio, uint64_t submit_ns,
                          const struct bb__stamps *t, bool profile)
{
    unsigned p = prio_idx(prio);
    uint64_t s = submit_ns;
    bb__ctr_add(&m->requests[p][BB_OUTCOME_COMPLETED], 1);
    uint64_t lat = t->done > s ? t->done - s : 0;
    dist_add(&m->dist[BB__DIST_LATENCY(p)], lat, 1);
    if (!profile)
        return;
    bb__ctr_add(&m->timed_latency_ns, lat);
    /* Its own stretch of each phase: a member that joined its group while
     * the batch already ran waited in no queue. */
    const uint64_t at[5] = {s, t->cut, t->start, t->end, t->done};
    for (int k = 0; k < BB_PHASES; k++) {
        uint64_t from = at[k] > s ? at[k] : s;
        dist_add(&m->dist[BB__DIST_PHASE(k)], at[k + 1] > from ? at[k + 1] - from : 0, 1);
    }
    bb__ctr_add(&m->phase_count, 1);
}

static inline void add_completed(struct bb__metrics *m, unsigned p, uint64_t n, uint64_t lat_sum)
{
    bb__ctr_add(&m->requests[p][BB_OUTCOME_COMPLETED], n);
    bb__ctr_add(&m->dist[BB__DIST_LATENCY(p)].sum_ns, lat_sum);
}

/* Per request: a few loads, the queue wait and one histogram's buckets (two
 * when timed); the counters and sums once a batch. */
void bb__metrics_batch(struct bb__metrics *m, const struct bb__batch *b)
{
    const uint64_t cut = b->ts.cut, done = b->ts.done;
    const bool timed = b->profile;
    uint64_t wait_sum = 0, lat_sum = 0, ntimed = 0, qwait_sum = 0;
    /* Completions and latency sums in runs of one priority (a batch mostly
     * holds one): added to the counters where the priority changes. */
    unsigned run_p = 0;
    uint64_t run_n = 0, run_lat = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        const struct bb__entry *e = &b->ents[i];
        uint64_t s = e->submit_ns; /* <= the pass that took it in <= cut */
        uint64_t wait = cut > s ? cut - s : 0;
        wait_sum += wait;
        if (e->group)
            continue; /* dedup.c answers (and counts) the group */
        int st = b->outputs[i].status;
        if (st != 0) {
            bb__metrics_failed(m, st, e->prio);
            continue;
        }
        unsigned p = prio_idx(e->prio);
        uint64_t lat = done > s ? done - s : 0;
        if (p != run_p && run_n) {
            add_completed(m, run_p, run_n, run_lat);
            run_n = run_lat = 0;
        }
        run_p = p;
        run_n++;
        run_lat += lat;
        dist_count(&m->dist[BB__DIST_LATENCY(p)], lat, 1);
        if (timed) {
            dist_count(&m->dist[BB__DIST_PHASE(BB_PHASE_QUEUE)], wait, 1);
            qwait_sum += wait;
            lat_sum += lat;
            ntimed++;
        }
    }
    if (run_n)
        add_completed(m, run_p, run_n, run_lat);
    if (ntimed) {
        bb__ctr_add(&m->dist[BB__DIST_PHASE(BB_PHASE_QUEUE)].sum_ns, qwait_sum);
        /* The batch's phases are every one of its requests' phases. */
        dist_add(&m->dist[BB__DIST_PHASE(BB_PHASE_FORMATION)], b->ts.start - cut, ntimed);
        dist_add(&m->dist[BB__DIST_PHASE(BB_PHASE_BACKEND)], b->ts.end - b->ts.start, ntimed);
        dist_add(&m->dist[BB__DIST_PHASE(BB_PHASE_DELIVERY)], done - b->ts.end, ntimed);
        bb__ctr_add(&m->phase_count, ntimed);
        bb__ctr_add(&m->timed_latency_ns, lat_sum);
    }
    bb__ctr_add(&m->batched, b->n);
    bb__ctr_add(&m->batch_size[size_bucket(b->n)], 1);
    bb__ctr_add(&m->wait_sum_ns, wait_sum);
}

void bb__metrics_set_stride(struct bb__metrics *m, uint64_t now, uint32_t max_rate)
{
    uint64_t dt = now - m->stride_check_ns;
    uint64_t rate = dt ? 1024 * 1000000000ull / dt : UINT64_MAX;
    uint32_t stride = 1;
    while (max_rate && stride < 64 && rate / stride > max_rate)
        stride <<= 1;
    m->stride = stride;
    m->stride_check_ns = now;
}

void bb__metrics_gauges(struct bb__metrics *m, uint32_t batch_target, uint32_t wait_us,
                        bool profile)
{
    bb__ctr_set(&m->batch_target, batch_target);
    bb__ctr_set(&m->wait_us, wait_us);
    bb__ctr_set(&m->profile_stride, profile ? m->stride : 0);
}

static uint64_t completed_total(const struct bb__metrics *m)
{
    uint64_t n = 0;
    for (int p = 0; p < BB__NPRIO; p++)
        n += bb__ctr_get(&m->requests[p][BB_OUTCOME_COMPLETED]);
    return n;
}

static void window_copy(struct bb__metrics *m, struct bb__metrics_window *w, uint64_t now)
{
    bb__ctr_set(&w->start_ns, now);
    bb__ctr_set(&w->completed, completed_total(m));
    for (int d = 0; d < BB__NDISTS; d++)
        for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++)
            bb__ctr_set(&w->fine[d][f], bb__ctr_get(&m->dist[d].fine[f]));
}

void bb__metrics_rotate(struct bb__metrics *m, uint64_t now)
{
    struct bb__metrics_window *older = &m->win[m->win_cur];
    struct bb__metrics_window *newer = &m->win[m->win_cur ^ 1];
    uint64_t last = bb__ctr_get(&newer->start_ns);
    m->win_due_ns = now + WINDOW_HALF_NS;
    /* A seqlock whose writer never waits: odd while the copies change. */
    uint32_t seq = atomic_load_explicit(&m->win_seq, memory_order_relaxed);
    atomic_store_explicit(&m->win_seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    window_copy(m, older, now);
    if (now - last >= 2 * WINDOW_HALF_NS)
        window_copy(m, newer, now); /* idle for a whole window: start afresh */
    m->win_cur ^= 1;
    atomic_store_explicit(&m->win_seq, seq + 2, memory_order_release);
}

/* The older copy: the start of the window. */
static const struct bb__metrics_window *window_start(const struct bb__metrics *m)
{
    const struct bb__metrics_window *a = &m->win[0], *b = &m->win[1];
    return bb__ctr_get(&a->start_ns) <= bb__ctr_get(&b->start_ns) ? a : b;
}

/* Reads under the sequence counter: body copies what it needs out of the
 * window's start (w_) and the cumulative figures, and runs again if the
 * writer copied meanwhile. The writer never waits for a reader; a reader
 * that keeps meeting copies (it cannot, short of a writer that copies all
 * the time) keeps its last reading, slightly mixed, rather than spin on. */
#define WINDOW_READ(m, body)                                                                   \
    do {                                                                                       \
        for (int try_ = 0;; try_++) {                                                          \
            uint32_t s1_ = atomic_load_explicit(&(m)->win_seq, memory_order_acquire);           \
            if ((s1_ & 1) && try_ < WINDOW_READ_TRIES) {                                       \
                bb__cpu_relax();                                                               \
                continue;                                                                      \
            }                                                                                  \
            const struct bb__metrics_window *w_ = window_start(m);                             \
            body;                                                                              \
            atomic_thread_fence(memory_order_acquire);                                         \
            if (atomic_load_explicit(&(m)->win_seq, memory_order_relaxed) == s1_ ||            \
                try_ >= WINDOW_READ_TRIES)                                                     \
                break;                                                                         \
        }                                                                                      \
    } while (0)

uint64_t bb__metrics_window_add(const struct bb__metrics *m, int dist, uint64_t *out)
{
    uint64_t delta[BB_HIST_BUCKETS];
    uint64_t start = 0;
    WINDOW_READ(m, {
        start = bb__ctr_get(&w_->start_ns);
        for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++) {
            uint64_t cur = bb__ctr_get(&m->dist[dist].fine[f]);
            uint64_t old = bb__ctr_get(&w_->fine[dist][f]);
            delta[f] = cur > old ? cur - old : 0;
        }
    });
    for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++)
        out[f] += delta[f];
    return start;
}

double bb__metrics_window_p99_us(const struct bb__metrics *m)
{
    uint64_t h[BB_HIST_BUCKETS] = {0};
    for (int p = 0; p < BB__NPRIO; p++)
        bb__metrics_window_add(m, BB__DIST_LATENCY(p), h);
    return (double)bb__hist_quantile(h, 0.99) / 1e3;
}

/* A figure of m summed over its replicas (bb__metrics_total). */
#define T(field) bb__metrics_total(m, &m->field)

void bb__metrics_fill(const struct bb__metrics *m, uint64_t now, struct bb_wire_stats *o)
{
    uint64_t by_outcome[BB_OUTCOMES] = {0}, lat_sum = 0;
    for (int p = 0; p < BB__NPRIO; p++) {
        for (int k = 0; k < BB_OUTCOMES; k++)
            by_outcome[k] += T(requests[p][k]);
        o->completed_by_priority[p + 1] = T(requests[p][BB_OUTCOME_COMPLETED]);
        lat_sum += T(dist[BB__DIST_LATENCY(p)].sum_ns);
    }
    o->completed_by_priority[0] = 0;
    o->completed = by_outcome[BB_OUTCOME_COMPLETED];
    o->failed = by_outcome[BB_OUTCOME_FAILED];
    o->timed_out = by_outcome[BB_OUTCOME_TIMED_OUT];
    o->rejected = by_outcome[BB_OUTCOME_REJECTED];
    o->cancelled = by_outcome[BB_OUTCOME_CANCELLED];
    o->latency_sum_ns = lat_sum;
    o->submitted = T(submitted);
    o->deduplicated = T(deduplicated);
    o->batches = 0;
    for (uint32_t k = 0; k < BB_BATCH_SIZE_BUCKETS; k++) {
        o->batch_size_hist[k] = T(batch_size[k]);
        o->batches += o->batch_size_hist[k];
    }
    uint64_t batched = T(batched);
    o->avg_batch_size = o->batches ? (double)batched / (double)o->batches : 0;
    o->avg_queue_wait_us = batched ? (double)T(wait_sum_ns) / (double)batched / 1e3 : 0;
    o->profile_stride = (uint32_t)bb__ctr_get(&m->profile_stride);
    o->running = (uint32_t)T(running);
    o->phase_count = T(phase_count);
    o->timed_latency_sum_ns = T(timed_latency_ns);
    for (int k = 0; k < BB_PHASES; k++)
        o->phase_sum_ns[k] = T(dist[BB__DIST_PHASE(k)].sum_ns);

    /* The window: percentiles, throughput; each replica's own window (they
     * rotate apart), the histograms merged and the rates added. */
    uint64_t all[BB_HIST_BUCKETS] = {0}, one[BB_HIST_BUCKETS];
    for (int p = 0; p < BB__NPRIO; p++) {
        memset(one, 0, sizeof one);
        for (const struct bb__metrics *x = m; x; x = x->next)
            bb__metrics_window_add(x, BB__DIST_LATENCY(p), one);
        o->latency_p50_by_priority_us[p + 1] = (double)bb__hist_quantile(one, 0.50) / 1e3;
        o->latency_p99_by_priority_us[p + 1] = (double)bb__hist_quantile(one, 0.99) / 1e3;
        for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++)
            all[f] += one[f];
    }
    o->latency_p50_us = (double)bb__hist_quantile(all, 0.50) / 1e3;
    o->latency_p95_us = (double)bb__hist_quantile(all, 0.95) / 1e3;
    o->latency_p99_us = (double)bb__hist_quantile(all, 0.99) / 1e3;
    for (int k = 0; k < BB_PHASES; k++) {
        memset(one, 0, sizeof one);
        for (const struct bb__metrics *x = m; x; x = x->next)
            bb__metrics_window_add(x, BB__DIST_PHASE(k), one);
        o->phase_p50_us[k] = (double)bb__hist_quantile(one, 0.50) / 1e3;
        o->phase_p99_us[k] = (double)bb__hist_quantile(one, 0.99) / 1e3;
    }
    o->throughput_rps = 0;
    for (const struct bb__metrics *x = m; x; x = x->next) {
        uint64_t start = now, done_then = 0, done = completed_total(x);
        WINDOW_READ(x, {
            start = bb__ctr_get(&w_->start_ns);
            done_then = bb__ctr_get(&w_->completed);
        });
        double span = now > start ? (double)(now - start) : 0;
        if (x == m)
            o->window_s = span / 1e9;
        if (span < 1e6)
            span = 1e6;
        o->throughput_rps += (double)(done > done_then ? done - done_then : 0) / (span / 1e9);
    }
}

void bb__metrics_dump(const struct bb__metrics *m, uint64_t now, struct bb_wire_dump *o)
{
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->version = BB_DUMP_VERSION;
    o->now_ns = now;
    memcpy(o->name, m->name, sizeof o->name);
    o->hist_sub_bits = BB_HIST_SUB_BITS;
    o->hist_buckets = BB_HIST_BUCKETS;
    o->max_batch_size = m->max_batch_size;
    o->batch_target = (uint32_t)bb__ctr_get(&m->batch_target);
    o->wait_us = (uint32_t)bb__ctr_get(&m->wait_us);
    o->queued = (uint32_t)T(queued);
    o->running = (uint32_t)T(running);
    o->profile_stride = (uint32_t)bb__ctr_get(&m->profile_stride);
    o->submitted = T(submitted);
    o->deduplicated = T(deduplicated);
    o->batched = T(batched);
    for (int p = 0; p < BB__NPRIO; p++) {
        for (int k = 0; k < BB_OUTCOMES; k++)
            o->requests[p][k] = T(requests[p][k]);
        o->latency_sum_ns[p] = T(dist[BB__DIST_LATENCY(p)].sum_ns);
        for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++)
            o->latency[p][f] = T(dist[BB__DIST_LATENCY(p)].fine[f]);
    }
    for (uint32_t k = 0; k < BB_BATCH_SIZE_BUCKETS; k++) {
        o->batch_size[k] = T(batch_size[k]);
        o->batches += o->batch_size[k];
    }
    o->phase_count = T(phase_count);
    o->timed_latency_sum_ns = T(timed_latency_ns);
    for (int k = 0; k < BB_PHASES; k++) {
        o->phase_sum_ns[k] = T(dist[BB__DIST_PHASE(k)].sum_ns);
        for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++)
            o->phase[k][f] = T(dist[BB__DIST_PHASE(k)].fine[f]);
    }
}

#undef T
