/* Adaptive batch sizing: an online model of batch service time against batch
 * size, and a controller that picks the batch target and the wait from it and
 * the arrival rate. Pure computation over the samples it is fed, so tests can
 * drive it with simulated traces and their own clock. See docs/adaptive.md. */
#ifndef BB_BROKER_ADAPTIVE_H
#define BB_BROKER_ADAPTIVE_H

#include <stdbool.h>
#include <stdint.h>

#define BB_ADAPT_WINDOW 128      /* batches in the fit's sliding window */
#define BB_ADAPT_RECENT 16       /* batches the change detector looks at */

enum { BB_OPTIMIZE_THROUGHPUT = 0, BB_OPTIMIZE_LATENCY = 1 };

struct bb__fit {
    double a_ns, b_ns;           /* service time = a + b * n */
    double r2;                   /* coefficient of determination */
    bool valid;
};

struct bb__adaptive_cfg {
    uint32_t max_batch_size;
    uint32_t max_wait_us;
    uint32_t instances;          /* executors (>= 1 for the model) */
    uint32_t optimize;           /* BB_OPTIMIZE_* */
    uint32_t slo_us;             /* p99 submit -> completion; 0 = none */
    uint32_t start_target;       /* from hardware = cpu|gpu|auto */
    uint64_t interval_ns;
    uint64_t tune_ns;            /* auto_tune exploration time; 0 = off */
};

struct bb__adaptive {
    struct bb__adaptive_cfg cfg;
    /* Sliding window of (batch size, service time) samples. */
    double xs[BB_ADAPT_WINDOW], ys[BB_ADAPT_WINDOW];
    uint32_t head, count;
    uint32_t changes;            /* change points detected so far */
    struct bb__fit fit;
    /* Arrivals and completions in the current interval. */
    uint64_t interval_start_ns, arrivals, completed, slo_violations, interval_violations;
    double budget;               /* share of the SLO the controller plans for */
    double rate_rps;             /* smoothed arrival rate */
    double throughput_rps;       /* completions per second, last interval */
    double p99_us;               /* fed by the caller each interval */
    /* The most requests queued at once (waiting for a batch), this interval
     * and the last. A batch never forms of more requests than come to wait
     * together, so the target is capped there (bb__adaptive_target): a
     * client that waits for each answer before it asks again has one queued
     * at a time and is never made to wait for company. */
    uint32_t peak, peak_prev;
    /* Output. */
    uint32_t target;             /* batch size the strategy aims for */
    uint32_t wait_us;            /* longest a request waits for company */
    double best_size;            /* the controller's unclamped optimum */
    double score;                /* see docs/adaptive.md */
    uint32_t pinned;             /* operator pin; 0 = none */
    /* auto_tune sweep. */
    uint64_t tune_start_ns;      /* 0 until the first traffic */
    bool tuning;
    uint32_t dither;
};

void bb__adaptive_init(struct bb__adaptive *a, const struct bb__adaptive_cfg *cfg);
/* One batch of n requests took service_ns. Returns true if it revealed a
 * change of the backend's speed (the window was restarted). */
bool bb__adaptive_batch(struct bb__adaptive *a, uint32_t n, uint64_t service_ns);
static inline void bb__adaptive_arrival(struct bb__adaptive *a, uint32_t n)
{
    a->arrivals += n;
}
/* n requests are queued now, counting one that just arrived. */
static inline void bb__adaptive_queued(struct bb__adaptive *a, uint32_t n)
{
    if (n > a->peak)
        a->peak = n;
}
/* The batch target the strategy gets: the controller's, capped by the
 * most requests recently queued at once (at least 1). */
uint32_t bb__adaptive_target(const struct bb__adaptive *a);
/* A request completed with latency lat_ns (submit -> completion). */
static inline void bb__adaptive_done(struct bb__adaptive *a, uint64_t lat_ns)
{
    a->completed++;
    if (a->cfg.slo_us && lat_ns > (uint64_t)a->cfg.slo_us * 1000) {
        a->slo_violations++;
        a->interval_violations++;
    }
}
/* Least squares over the window; invalid without two distinct sizes. */
struct bb__fit bb__adaptive_fit(const struct bb__adaptive *a);
/* Run the controller if an interval has passed (or force). p99_us is the
 * recent latency p99 the caller measured. Returns true when it ran. */
bool bb__adaptive_tick(struct bb__adaptive *a, uint64_t now, double p99_us, bool force);
/* The decision for given conditions (exposed for tests). */
void bb__adaptive_decide(const struct bb__adaptive_cfg *cfg, const struct bb__fit *fit,
                         double rate_rps, double budget, uint32_t *target, uint32_t *wait_us,
                         double *best);

#endif
