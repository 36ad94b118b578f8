/* Per-model statistics, kept by the dispatcher thread alone. Latency
 * percentiles come from log-linear histograms over a sliding window made of
 * two rotating halves. */
#ifndef BB_BROKER_METRICS_H
#define BB_BROKER_METRICS_H

#include <stdint.h>

#include "batchbroker/protocol.h"

#define BB_HIST_SUB_BITS 5 /* 32 buckets per power of two: <= 3.2% error */
#define BB_HIST_BUCKETS ((64 - BB_HIST_SUB_BITS) << BB_HIST_SUB_BITS)
#define BB_METRICS_HALF_NS 5000000000ull /* window = two 5 s halves */

struct bb__hist {
    uint64_t count;
    uint32_t b[BB_HIST_BUCKETS];
};

void bb__hist_add(struct bb__hist *h, uint64_t v);
/* Value at quantile q (0..1) of the union of n histograms; 0 if empty. */
uint64_t bb__hist_quantile(const struct bb__hist *const *hs, int n, double q);

struct bb__metrics {
    uint64_t submitted, completed, failed, timed_out, rejected, deduplicated, batches;
    uint64_t completed_by_priority[5];
    uint64_t batched_items, queue_wait_ns, queue_waits;
    struct bb__hist lat[2];         /* [cur], [cur^1] */
    uint64_t done_half[2];
    int cur;
    uint64_t half_start_ns;
    uint64_t window_start_ns; /* start of the data in the window */
};

void bb__metrics_init(struct bb__metrics *m, uint64_t now);
/* Record one finished request: status, priority level 1..4, latency. */
void bb__metrics_done(struct bb__metrics *m, uint64_t now, int status, int prio, uint64_t lat_ns);
void bb__metrics_batch(struct bb__metrics *m, uint32_t n, uint64_t queue_wait_ns_sum);
void bb__metrics_fill(struct bb__metrics *m, uint64_t now, struct bb_wire_stats *out);

#endif
