/* bench/hist.c: bucket bounds, the 1% error promise, quantiles, merging. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "hist.h"

static struct bench_hist a, b;

Test(hist, buckets_tile_the_range)
{
    uint64_t expect = 0;
    for (uint32_t i = 0; i < BENCH_HIST_BINS; i++) {
        cr_assert_eq(bench_hist_lower(i), expect, "bucket %u starts at %llu", i,
                     (unsigned long long)bench_hist_lower(i));
        cr_assert_geq(bench_hist_upper(i), bench_hist_lower(i));
        expect = bench_hist_upper(i) + 1;
    }
    cr_assert_eq(expect, 1ull << BENCH_HIST_MAX_BITS);
}

Test(hist, every_value_lands_in_its_bucket_within_one_percent)
{
    srand(7);
    for (int k = 0; k < 200000; k++) {
        uint64_t v = ((uint64_t)rand() << 31 ^ (uint64_t)rand()) >> (rand() % 62);
        if (v >> BENCH_HIST_MAX_BITS) continue;
        uint32_t i = bench_hist_index(v);
        uint64_t lo = bench_hist_lower(i), hi = bench_hist_upper(i);
        cr_assert(lo <= v && v <= hi, "%llu outside [%llu, %llu]", (unsigned long long)v,
                  (unsigned long long)lo, (unsigned long long)hi);
        double mid = (double)(lo + (hi - lo) / 2);
        cr_assert_leq(fabs(mid - (double)v), 0.01 * (double)v + 0.5);
    }
}

Test(hist, quantiles_of_a_uniform_range)
{
    bench_hist_init(&a);
    for (uint64_t v = 1; v <= 100000; v++) bench_hist_record(&a, v * 10);
    cr_assert_eq(a.count, 100000);
    cr_assert_eq(bench_hist_quantile(&a, 0), 10);
    cr_assert_eq(bench_hist_quantile(&a, 1), 1000000);
    const double qs[] = {0.5, 0.9, 0.99, 0.999};
    for (int i = 0; i < 4; i++) {
        double want = qs[i] * 1000000, got = (double)bench_hist_quantile(&a, qs[i]);
        cr_assert_leq(fabs(got - want), 0.01 * want, "q%g: %g vs %g", qs[i], got, want);
    }
}

Test(hist, merge_equals_recording_into_one)
{
    bench_hist_init(&a);
    bench_hist_init(&b);
    static struct bench_hist all;
    bench_hist_init(&all);
    for (uint64_t v = 1; v < 50000; v += 3) {
        bench_hist_record(v % 2 ? &a : &b, v * v);
        bench_hist_record(&all, v * v);
    }
    bench_hist_merge(&a, &b);
    cr_assert_eq(a.count, all.count);
    cr_assert_eq(a.min, all.min);
    cr_assert_eq(a.max, all.max);
    for (uint32_t i = 0; i < BENCH_HIST_BINS; i++) cr_assert_eq(a.bins[i], all.bins[i]);
}

Test(hist, empty_and_saturated)
{
    bench_hist_init(&a);
    cr_assert_eq(bench_hist_quantile(&a, 0.5), 0);
    bench_hist_record(&a, UINT64_MAX);
    cr_assert_eq(bench_hist_index(UINT64_MAX), BENCH_HIST_BINS - 1);
    cr_assert_eq(a.max, UINT64_MAX);
}
