/* Log-linear histogram; the layout is explained in hist.h. */
#include "hist.h"

#include <string.h>

void bench_hist_init(struct bench_hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

uint32_t bench_hist_index(uint64_t v)
{
    if (v >> BENCH_HIST_MAX_BITS) v = (1ull << BENCH_HIST_MAX_BITS) - 1; /* saturate */
    if (v < 2 * BENCH_HIST_SUB) return (uint32_t)v;                      /* exact */
    uint32_t e = 63u - (uint32_t)__builtin_clzll(v); /* v in [2^e, 2^(e+1)) */
    uint32_t shift = e - BENCH_HIST_SUB_BITS;
    uint32_t sub = (uint32_t)(v >> shift) - BENCH_HIST_SUB;
    return (shift + 1) * BENCH_HIST_SUB + sub;
}

uint64_t bench_hist_lower(uint32_t idx)
{
    uint32_t k = idx / BENCH_HIST_SUB, sub = idx % BENCH_HIST_SUB;
    if (k == 0) return idx;
    return (uint64_t)(BENCH_HIST_SUB + sub) << (k - 1);
}

uint64_t bench_hist_upper(uint32_t idx)
{
    uint32_t k = idx / BENCH_HIST_SUB;
    return k == 0 ? idx : bench_hist_lower(idx) + (1ull << (k - 1)) - 1;
}

void bench_hist_record(struct bench_hist *h, uint64_t v)
{
    h->bins[bench_hist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v < h->min) h->min = v;
    if (v > h->max) h->max = v;
}

void bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src)
{
    if (!src->count) return;
    for (uint32_t i = 0; i < BENCH_HIST_BINS; i++) dst->bins[i] += src->bins[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min) dst->min = src->min;
    if (src->max > dst->max) dst->max = src->max;
}

uint64_t bench_hist_quantile(const struct bench_hist *h, double q)
{
    if (!h->count) return 0;
    if (q <= 0) return h->min;
    if (q >= 1) return h->max;
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if ((double)rank < q * (double)h->count) rank++; /* ceil: the rank-th smallest */
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < BENCH_HIST_BINS; i++) {
        seen += h->bins[i];
        if (seen >= rank) {
            uint64_t lo = bench_hist_lower(i), hi = bench_hist_upper(i);
            uint64_t mid = lo + (hi - lo) / 2;
            if (mid < h->min) mid = h->min;
            if (mid > h->max) mid = h->max;
            return mid;
        }
    }
    return h->max;
}

double bench_hist_mean(const struct bench_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
