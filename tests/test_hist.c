/* The latency histogram (broker/metrics.c, bb__hist_*): log-linear buckets,
 * exact below 32, within 1/32 of the value above; quantiles of one or the
 * union of several histograms; monotonic in q; the largest values clamp. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

TestSuite(hist, .timeout = 60);

static struct bb__hist *fresh(void)
{
    struct bb__hist *h = calloc(1, sizeof *h);
    cr_assert_not_null(h);
    return h;
}

static uint64_t q1(const struct bb__hist *h, double q)
{
    const struct bb__hist *hs[1] = {h};
    return bb__hist_quantile(hs, 1, q);
}

Test(hist, empty_is_zero)
{
    struct bb__hist *h = fresh();
    cr_assert_eq(q1(h, 0.5), 0);
    cr_assert_eq(q1(h, 0.99), 0);
    free(h);
}

Test(hist, small_values_are_exact)
{
    for (uint64_t v = 0; v < 32; v++) {
        struct bb__hist *h = fresh();
        bb__hist_add(h, v);
        cr_assert_eq(h->count, 1);
        cr_assert_eq(q1(h, 0.5), v);
        free(h);
    }
}

/* Any single value comes back within 1/32 (32 sub-buckets per power of two). */
Test(hist, relative_error_is_bounded)
{
    uint64_t s = 12345;
    struct bb__hist *h = fresh();
    for (int i = 0; i < 100000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        unsigned shift = (unsigned)(s >> 58); /* 0..63 */
        uint64_t v = (s >> 1) >> (63 - (shift < 50 ? shift : 50));
        memset(h, 0, sizeof *h);
        bb__hist_add(h, v);
        uint64_t got = q1(h, 0.5);
        double err = v ? fabs((double)got - (double)v) / (double)v : (double)got;
        cr_assert_leq(err, 1.0 / 32, "value %llu came back as %llu", (unsigned long long)v,
                      (unsigned long long)got);
    }
    free(h);
}

Test(hist, quantiles_of_a_known_distribution)
{
    struct bb__hist *h = fresh();
    for (uint64_t v = 1; v <= 10000; v++)
        bb__hist_add(h, v * 1000); /* 1 us .. 10 ms */
    static const double qs[] = {0.01, 0.25, 0.5, 0.9, 0.99, 0.999};
    uint64_t prev = 0;
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        uint64_t got = q1(h, qs[i]);
        double want = qs[i] * 10000 * 1000;
        cr_assert(fabs((double)got - want) <= want / 32 + 1000, "q%.3f: %llu, want ~%.0f", qs[i],
                  (unsigned long long)got, want);
        cr_assert_geq(got, prev, "quantiles are monotonic");
        prev = got;
    }
    cr_assert_geq(q1(h, 1.0), q1(h, 0.999), "q = 1 is the largest bucket");
    free(h);
}

/* The quantile of several histograms is that of their union. */
Test(hist, union_of_histograms)
{
    struct bb__hist *a = fresh(), *b = fresh(), *u = fresh();
    uint64_t s = 99;
    for (int i = 0; i < 5000; i++) {
        s = s * 6364136223846793005ull + 1;
        uint64_t v = (s >> 33) % 5000000;
        bb__hist_add(i % 3 ? a : b, v);
        bb__hist_add(u, v);
    }
    const struct bb__hist *ab[2] = {a, b};
    for (double q = 0.05; q < 1.0; q += 0.05)
        cr_assert_eq(bb__hist_quantile(ab, 2, q), q1(u, q), "q %.2f", q);
    free(a);
    free(b);
    free(u);
}

Test(hist, largest_values_clamp)
{
    struct bb__hist *h = fresh();
    bb__hist_add(h, UINT64_MAX);
    bb__hist_add(h, UINT64_MAX - 1);
    bb__hist_add(h, 1ull << 62);
    cr_assert_eq(h->count, 3);
    cr_assert_gt(q1(h, 0.99), 1ull << 61, "a huge value reads as huge");
    free(h);
}
