/* Per-model statistics and the profiler's phase timings (metrics.c), and the
 * few per-worker gauges.
 *
 * Threads. A model's figures are written by one thread only, its home worker
 * (the dispatcher that reaps its batches and files its requests), and read by
 * others: the metrics HTTP thread, and STATS or METRICS messages served by
 * other workers. Every figure is therefore a single-writer atomic: the writer
 * does a relaxed load and a relaxed store (bb__ctr_add), never an atomic
 * read-modify-write or a lock; a reader does relaxed loads. On x86-64 and
 * arm64 these are plain moves, so the request path costs what plain counters
 * cost, and a reader can neither block the writer nor see a torn word. What a
 * reader may see is one figure a few updates ahead of another (a histogram's
 * buckets against its sum), so readers derive counts from the buckets they
 * read. A snapshot the writer publishes would have given readers a coherent
 * view, but at the price of a copy of every histogram (~75 KiB a model) on
 * the dispatcher each period and figures up to a period old; scrapes and
 * tools need neither.
 *
 * The windowed figures (percentiles and throughput over the last 5 to 10 s)
 * are differences between the cumulative histograms and a copy the writer
 * takes every 5 s. That copy is the one multi-word update: it is guarded by a
 * sequence counter that only readers wait on (they retry), never the writer.
 *
 * Phases (docs/operations.md, "Phases"): a completed request's latency runs
 * from its client's submit stamp to the publication of its completion and is
 * split at its batch's timestamps (struct bb__stamps): queue wait, formation,
 * backend, delivery. The four add up to the latency exactly, request by
 * request. They are taken per batch; the only per-request work is the queue
 * wait and the latency itself. */
#ifndef BB_BROKER_METRICS_H
#define BB_BROKER_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "batchbroker/client.h"
#include "batchbroker/protocol.h"
#include "hist_internal.h"
#include "request.h"

typedef _Atomic uint64_t bb__ctr;

/* Writer only. */
static inline void bb__ctr_add(bb__ctr *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void bb__ctr_set(bb__ctr *c, uint64_t v)
{
    atomic_store_explicit(c, v, memory_order_relaxed);
}

/* Writer only: a gauge that goes up and down. */
static inline void bb__gauge_add(bb__ctr *c, int64_t delta)
{
    bb__ctr_add(c, (uint64_t)delta);
}

/* Any thread. */
static inline uint64_t bb__ctr_get(const bb__ctr *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* The `le` bounds of the histograms /metrics exposes in seconds: 1, 2.5 and 5
 * per decade from 100 ns to 10 s, round numbers an operator can write a
 * query against. */
#define BB_PROM_BOUNDS 25
extern const uint64_t bb__prom_bound_ns[BB_PROM_BOUNDS];
extern const char *const bb__prom_bound_text[BB_PROM_BOUNDS];

#define BB__NPRIO 4 /* critical, high, normal, low */

/* A distribution of nanosecond values: the fine histogram for percentiles,
 * the coarse one /metrics exposes ([BB_PROM_BOUNDS]: above the last bound),
 * and their sum. Counts are the buckets' sums. */
struct bb__dist {
    bb__ctr fine[BB_HIST_BUCKETS];
    bb__ctr coarse[BB_PROM_BOUNDS + 1];
    bb__ctr sum_ns;
};

/* Which distribution of a model: the latency of a priority, or a phase. */
#define BB__DIST_LATENCY(prio) (prio)           /* 0..3 */
#define BB__DIST_PHASE(phase) (BB__NPRIO + (phase))
#define BB__NDISTS (BB__NPRIO + BB_PHASES)

struct bb__metrics_window {
    bb__ctr start_ns;
    bb__ctr completed;
    bb__ctr fine[BB__NDISTS][BB_HIST_BUCKETS];
};

struct bb__metrics {
    /* Set at start, read-only afterwards (readers must not read the model's
     * configuration, which a reload rewrites). */
    char name[BB_MAX_MODEL_NAME];
    uint32_t max_batch_size;
    /* formation = per_worker: the next replica's figures, each written by its
     * own worker; readers of the first (b->models[id]) report the sum. */
    const struct bb__metrics *next;

    bb__ctr submitted, deduplicated;
    bb__ctr batched;                 /* requests that ran in a batch */
    bb__ctr requests[BB__NPRIO][BB_OUTCOMES];
    bb__ctr batch_size[BB_BATCH_SIZE_BUCKETS]; /* their sum: the batches */
    bb__ctr wait_sum_ns;             /* cut - submit of every request that ran */
    bb__ctr phase_count;             /* completed requests the profiler timed */
    bb__ctr timed_latency_ns;        /* their latency, summed on its own */
    struct bb__dist dist[BB__NDISTS];

    /* Gauges the writer publishes (bb__metrics_gauges, bb__metrics_depth). */
    bb__ctr queued, running, batch_target, wait_us, profile_stride;

    /* Two copies of the cumulative figures, 5 s apart; the older one starts
     * the window. Writer only: cur, the copy to overwrite next; due, when. */
    _Atomic uint32_t win_seq;
    uint32_t win_cur;
    uint64_t win_due_ns;
    struct bb__metrics_window win[2];

    /* Writer only: the profiler's stride (bb__metrics_time_batch) and the
     * depth last published. */
    uint32_t stride, queued_seen, running_seen;
    uint64_t cuts, answers, stride_check_ns;
};

/* Per dispatcher worker; summed over workers by readers. */
struct bb__worker_metrics {
    bb__ctr clients;       /* attached clients with a segment */
    bb__ctr segment_bytes; /* mapped client segments, including those of
                              clients gone whose batches still run */
};

/* ---- writer (the model's home worker) ---- */

void bb__metrics_init(struct bb__metrics *m, const char *name, uint32_t max_batch_size,
                      uint64_t now);

static inline void bb__metrics_submitted(struct bb__metrics *m)
{
    bb__ctr_add(&m->submitted, 1);
}

/* n requests answered by another request's computation. */
static inline void bb__metrics_deduplicated(struct bb__metrics *m, uint64_t n)
{
    bb__ctr_add(&m->deduplicated, n);
}

/* A request that ended with a non-zero status (rejected, expired, canceled,
 * failed, or dropped with its client); prio 1..4. */
void bb__metrics_failed(struct bb__metrics *m, int status, unsigned prio);

/* A request completed with status 0 outside the batch loop: a deduplicated
 * member answered when its group's batch is reaped (t: that batch), or a
 * cached result answered at intake (t: all four stamps = now). Its phases are
 * its own [submit, t->done] cut at t's stamps. */
void bb__metrics_answered(struct bb__metrics *m, unsigned prio, uint64_t submit_ns,
                          const struct bb__stamps *t, bool profile);

/* A reaped batch: the outcome and latency of each request it answered
 * itself (deduplicated groups are answered by dedup.c), its size, and with
 * b->profile its phases. */
void bb__metrics_batch(struct bb__metrics *m, const struct bb__batch *b);

/* Whether the profiler times the batch being cut now (profile: [broker]
 * profile is on). Every batch, as long as the model cuts fewer than max_rate
 * a second (0: always); above, one in a power of two (up to 64), so that
 * what the profiler costs the dispatcher stays bounded however small and
 * frequent the batches are (an inline echo backend cuts millions). */
void bb__metrics_set_stride(struct bb__metrics *m, uint64_t now, uint32_t max_rate);
static inline bool bb__metrics_time_batch(struct bb__metrics *m, uint64_t now, bool profile,
                                          uint32_t max_rate)
{
    if (!profile)
        return false;
    uint64_t seq = m->cuts++;
    if ((seq & 1023) == 0) { /* every 1024 cuts: the rate they came at sets the stride */
        if (seq)
            bb__metrics_set_stride(m, now, max_rate);
        else /* the first starts the count: the time since start is no rate */
            m->stride_check_ns = now;
    }
    return (seq & (m->stride - 1)) == 0;
}

/* The same for a request answered without a batch (a cached result): one in
 * the stride, so that the phases stay a sample of one kind. */
static inline bool bb__metrics_time_answer(struct bb__metrics *m, bool profile)
{
    return profile && (m->answers++ & (m->stride - 1)) == 0;
}

/* The slow-moving gauges: batch target, wait, the profiler's stride (0 when
 * off). Once an adaptation interval, not every pass. */
void bb__metrics_gauges(struct bb__metrics *m, uint32_t batch_target, uint32_t wait_us,
                        bool profile);

/* Queue depth and running batches, every pass: stored only when changed. */
static inline void bb__metrics_depth(struct bb__metrics *m, uint32_t queued, uint32_t running)
{
    if (queued != m->queued_seen) {
        m->queued_seen = queued;
        bb__ctr_set(&m->queued, queued);
    }
    if (running != m->running_seen) {
        m->running_seen = running;
        bb__ctr_set(&m->running, running);
    }
}

/* Start a new window half if 5 s have passed; a comparison when not. */
void bb__metrics_rotate(struct bb__metrics *m, uint64_t now);
static inline void bb__metrics_tick(struct bb__metrics *m, uint64_t now)
{
    if (now >= m->win_due_ns)
        bb__metrics_rotate(m, now);
}

/* ---- readers (any thread) ---- */

/* A counter or gauge of m summed over m and its replicas (m->next): field is
 * the address of the figure in m itself. */
static inline uint64_t bb__metrics_total(const struct bb__metrics *m, const bb__ctr *field)
{
    size_t off = (size_t)((const char *)field - (const char *)m);
    uint64_t sum = 0;
    for (const struct bb__metrics *x = m; x; x = x->next)
        sum += bb__ctr_get((const bb__ctr *)(const void *)((const char *)x + off));
    return sum;
}

/* The window's histogram of distribution `dist` added into out[BB_HIST_BUCKETS].
 * Returns the window's start (CLOCK_MONOTONIC ns). */
uint64_t bb__metrics_window_add(const struct bb__metrics *m, int dist, uint64_t *out);

/* Latency p99 over the window, all priorities (the adaptive controller's
 * input), in µs. */
double bb__metrics_window_p99_us(const struct bb__metrics *m);

/* Everything STATS reports that the metrics hold (not the adaptive state). */
void bb__metrics_fill(const struct bb__metrics *m, uint64_t now, struct bb_wire_stats *out);

/* The cumulative figures, for METRICS / BB_METRICS_DUMP. */
void bb__metrics_dump(const struct bb__metrics *m, uint64_t now, struct bb_wire_dump *out);

/* enum bb_outcome of a status. */
static inline int bb__outcome_of(int status)
{
    switch (status) {
    case 0:
        return BB_OUTCOME_COMPLETED;
    case BB_ETIMEDOUT:
        return BB_OUTCOME_TIMED_OUT;
    case BB_EBUSY:
        return BB_OUTCOME_REJECTED;
    case BB_ECANCELED:
        return BB_OUTCOME_CANCELLED;
    default:
        return BB_OUTCOME_FAILED;
    }
}

#endif
