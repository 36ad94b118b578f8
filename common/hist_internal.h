/* Log-linear histograms of nanoseconds: the bucket arithmetic of the layout
 * protocol.h describes (BB_HIST_*), shared by the broker (broker/metrics.c)
 * and the tools that read its dumps (bbctl profile). Values below 32 have a
 * bucket each; above, each power of two is split into 32 equal buckets, so a
 * bucket is at most 1/32 of its lower bound wide. */
#ifndef BB_HIST_INTERNAL_H
#define BB_HIST_INTERNAL_H

#include <stdint.h>

#include "batchbroker/protocol.h"

#define BB__HIST_SUB (1u << BB_HIST_SUB_BITS)

static inline uint32_t bb__hist_index(uint64_t v)
{
    if (v >> BB_HIST_MAX_BITS)
        v = (1ull << BB_HIST_MAX_BITS) - 1; /* the last bucket takes the rest */
    if (v < BB__HIST_SUB)
        return (uint32_t)v;
    uint32_t msb = 63u - (uint32_t)__builtin_clzll(v);
    uint32_t shift = msb - BB_HIST_SUB_BITS;
    return ((shift + 1) << BB_HIST_SUB_BITS) + ((uint32_t)(v >> shift) & (BB__HIST_SUB - 1));
}

/* Smallest value of bucket b. */
static inline uint64_t bb__hist_lower(uint32_t b)
{
    if (b < BB__HIST_SUB)
        return b;
    uint32_t shift = (b >> BB_HIST_SUB_BITS) - 1;
    return (uint64_t)(BB__HIST_SUB | (b & (BB__HIST_SUB - 1))) << shift;
}

/* Largest value of bucket b. */
static inline uint64_t bb__hist_upper(uint32_t b)
{
    if (b < BB__HIST_SUB)
        return b;
    return bb__hist_lower(b) + (1ull << ((b >> BB_HIST_SUB_BITS) - 1)) - 1;
}

/* The value reported for bucket b: its midpoint, which halves the error of
 * either bound. */
static inline uint64_t bb__hist_mid(uint32_t b)
{
    uint64_t lo = bb__hist_lower(b);
    return lo + (bb__hist_upper(b) - lo) / 2;
}

/* The value at quantile q (0..1) of h[BB_HIST_BUCKETS]: the midpoint of the
 * bucket holding the ceil(q x count)-th smallest value; 0 if h is empty. */
static inline uint64_t bb__hist_quantile(const uint64_t *h, double q)
{
    uint64_t total = 0;
    for (uint32_t b = 0; b < BB_HIST_BUCKETS; b++)
        total += h[b];
    if (total == 0)
        return 0;
    double r = q * (double)total;
    uint64_t rank = (uint64_t)r;
    if ((double)rank < r)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (uint32_t b = 0; b < BB_HIST_BUCKETS; b++) {
        seen += h[b];
        if (seen >= rank)
            return bb__hist_mid(b);
    }
    return bb__hist_mid(BB_HIST_BUCKETS - 1);
}

#endif
