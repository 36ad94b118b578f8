/* Log-linear latency histogram (HdrHistogram's layout with 128 linear
 * sub-buckets per power of two): every recorded value is within 1/256 of the
 * value reported for its bucket (the bucket's midpoint), well under the 1%
 * the bench promises. Fixed size, no pointers: it can live in shared memory,
 * and histograms merge by adding their counts. */
#ifndef BB_BENCH_HIST_H
#define BB_BENCH_HIST_H

#include <stdint.h>

#define BENCH_HIST_SUB_BITS 7u                       /* 128 sub-buckets */
#define BENCH_HIST_SUB (1u << BENCH_HIST_SUB_BITS)
#define BENCH_HIST_MAX_BITS 42u                      /* values up to 2^42 ns, ~73 min */
#define BENCH_HIST_BINS ((BENCH_HIST_MAX_BITS - BENCH_HIST_SUB_BITS + 1u) * BENCH_HIST_SUB)

struct bench_hist {
    uint64_t count;
    uint64_t min, max;      /* exact; min is UINT64_MAX while empty */
    double sum;
    uint64_t bins[BENCH_HIST_BINS];
};

void bench_hist_init(struct bench_hist *h);
void bench_hist_record(struct bench_hist *h, uint64_t v);
void bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src);
/* The value at quantile q in [0,1] (bucket midpoint, clamped to min/max);
 * 0 for an empty histogram. */
uint64_t bench_hist_quantile(const struct bench_hist *h, double q);
double bench_hist_mean(const struct bench_hist *h);

/* Bucket arithmetic, exposed for the histogram's own test. */
uint32_t bench_hist_index(uint64_t v);
uint64_t bench_hist_lower(uint32_t idx);
uint64_t bench_hist_upper(uint32_t idx); /* inclusive */

#endif
