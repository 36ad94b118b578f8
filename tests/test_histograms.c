/* broker/metrics.c and common/hist_internal.h on their own, with a fake
 * clock: the log-linear buckets' bounds, the exactness of the Prometheus
 * buckets next to them, percentiles, the window, and the profiler's stride. */
#include <criterion/criterion.h>

#include <string.h>

#include "hist_internal.h"
#include "metrics.h"

static struct bb__metrics M;

/* A completed request of latency v (priority normal), not timed. */
static void observe(uint64_t v)
{
    const struct bb__stamps t = {v, v, v, v};
    bb__metrics_answered(&M, BB_PRIORITY_NORMAL, 0, &t, false);
}

Test(histograms, bucket_bounds)
{
    uint64_t seed = 7;
    uint32_t last = 0;
    for (uint64_t i = 0; i < 300000; i++) {
        /* Every value up to 2^16, then random ones of every magnitude. */
        uint64_t v = i < 65536 ? i : (seed = seed * 6364136223846793005ull + 1) >> (i % 64);
        uint32_t b = bb__hist_index(v);
        cr_assert_lt(b, BB_HIST_BUCKETS);
        if (i < 65536) {
            cr_assert_geq(b, last, "buckets follow the values");
            last = b;
        }
        if (v >> BB_HIST_MAX_BITS) {
            cr_assert_eq(b, BB_HIST_BUCKETS - 1, "past 2^40 ns: the last bucket");
            continue;
        }
        uint64_t lo = bb__hist_lower(b), hi = bb__hist_upper(b);
        cr_assert(lo <= v && v <= hi, "%llu in [%llu, %llu]", (unsigned long long)v,
                  (unsigned long long)lo, (unsigned long long)hi);
        cr_assert_leq((hi - lo) * 32, lo, "a bucket is at most 1/32 of its value wide");
        if (b + 1 < BB_HIST_BUCKETS)
            cr_assert_eq(bb__hist_lower(b + 1), hi + 1, "no gap between buckets");
    }
}

/* Each `le` bucket counts exactly the values at or below its bound, even
 * where the bound falls inside a fine bucket. */
Test(histograms, prometheus_buckets_are_exact)
{
    bb__metrics_init(&M, "m", 8, 0);
    uint64_t expect[BB_PROM_BOUNDS + 1] = {0};
    for (int c = 0; c < BB_PROM_BOUNDS; c++) {
        uint64_t bnd = bb__prom_bound_ns[c];
        for (uint64_t v = bnd - 3; v <= bnd + 3; v++) {
            observe(v);
            int k = 0;
            while (k < BB_PROM_BOUNDS && v > bb__prom_bound_ns[k])
                k++;
            expect[k]++;
        }
    }
    observe(20000000000ull); /* 20 s: above the last bound */
    expect[BB_PROM_BOUNDS]++;
    const struct bb__dist *d = &M.dist[BB__DIST_LATENCY(BB_PRIORITY_NORMAL - 1)];
    for (int c = 0; c <= BB_PROM_BOUNDS; c++)
        cr_assert_eq(bb__ctr_get(&d->coarse[c]), expect[c], "bucket %d", c);
}

Test(histograms, quantiles)
{
    static uint64_t h[BB_HIST_BUCKETS];
    memset(h, 0, sizeof h);
    cr_assert_eq(bb__hist_quantile(h, 0.5), 0, "empty");
    for (uint64_t v = 1; v <= 1000; v++)
        h[bb__hist_index(v * 1000)]++; /* 1 µs .. 1 ms */
    /* The ceil(q n)-th value's bucket, reported at its midpoint. */
    uint64_t p50 = bb__hist_quantile(h, 0.50), p99 = bb__hist_quantile(h, 0.99);
    cr_assert_eq(bb__hist_index(p50), bb__hist_index(500000));
    cr_assert_eq(bb__hist_index(p99), bb__hist_index(990000));
    cr_assert_eq(bb__hist_quantile(h, 1.0), bb__hist_mid(bb__hist_index(1000000)));
    cr_assert_eq(bb__hist_quantile(h, 0.0), bb__hist_mid(bb__hist_index(1000)));
}

/* The window: what happened since the older of two copies 5 s apart, and
 * nothing after a whole window without a copy. */
Test(histograms, window)
{
    const uint64_t s = 1000000000ull;
    bb__metrics_init(&M, "m", 8, 1 * s);
    for (int i = 0; i < 100; i++)
        observe(1000);
    bb__metrics_tick(&M, 2 * s); /* not due */
    struct bb_wire_stats w;
    memset(&w, 0, sizeof w);
    bb__metrics_fill(&M, 2 * s, &w);
    cr_assert_eq(w.completed, 100);
    cr_assert(w.latency_p50_us > 0.99 && w.latency_p50_us < 1.01, "%f", w.latency_p50_us);
    cr_assert(w.throughput_rps > 99 && w.throughput_rps < 101, "%f", w.throughput_rps);
    bb__metrics_tick(&M, 6 * s); /* copy 1 at 6 s holds the 100 */
    for (int i = 0; i < 50; i++)
        observe(2000);
    bb__metrics_tick(&M, 11 * s); /* copy 2 at 11 s; the window starts at 6 s */
    memset(&w, 0, sizeof w);
    bb__metrics_fill(&M, 12 * s, &w);
    cr_assert_eq(w.completed, 150, "counters are cumulative");
    cr_assert(w.window_s > 5.99 && w.window_s < 6.01, "%f", w.window_s);
    cr_assert(w.latency_p50_us > 1.98 && w.latency_p50_us < 2.02, "only the 50 in the window: %f",
              w.latency_p50_us);
    bb__metrics_tick(&M, 30 * s); /* idle for more than a window */
    memset(&w, 0, sizeof w);
    bb__metrics_fill(&M, 30 * s, &w);
    cr_assert_eq(w.latency_p50_us, 0, "an empty window");
    cr_assert_eq(w.throughput_rps, 0);
    cr_assert_eq(w.completed, 150);
}

/* Every batch is timed below max_rate; above, one in a power of two. */
Test(histograms, profiler_stride)
{
    bb__metrics_init(&M, "m", 8, 0);
    uint64_t now = 1000000000ull, timed = 0;
    for (int i = 0; i < 4096; i++) { /* 1000 batches a second */
        now += 1000000;
        timed += bb__metrics_time_batch(&M, now, true, 100000);
    }
    cr_assert_eq(timed, 4096);
    cr_assert_eq(M.stride, 1);
    timed = 0;
    for (int i = 0; i < 4096; i++) { /* a million a second */
        now += 1000;
        timed += bb__metrics_time_batch(&M, now, true, 100000);
    }
    cr_assert_eq(M.stride, 16, "1e6 / 16 <= 1e5 < 1e6 / 8");
    cr_assert_lt(timed, 4096 / 8 + 1024);
    for (int i = 0; i < 4096; i++) {
        now += 1;
        bb__metrics_time_batch(&M, now, true, 100000);
    }
    cr_assert_eq(M.stride, 64, "the stride stops at 64");
    for (int i = 0; i < 4096; i++) {
        now += 1;
        bb__metrics_time_batch(&M, now, true, 0);
    }
    cr_assert_eq(M.stride, 1, "max_rate 0: every batch");
    cr_assert_not(bb__metrics_time_batch(&M, now, false, 0), "profile off");
}
