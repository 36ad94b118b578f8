#include "metrics.h"

#include <string.h>

#include "batchbroker/client.h"

static unsigned bucket_of(uint64_t v)
{
    if (v < (1u << BB_HIST_SUB_BITS))
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - BB_HIST_SUB_BITS;
    unsigned sub = (unsigned)(v >> shift) & ((1u << BB_HIST_SUB_BITS) - 1);
    return ((shift + 1) << BB_HIST_SUB_BITS) + sub;
}

/* Midpoint of a bucket: halves the worst-case error of the lower bound. */
static uint64_t bucket_value(unsigned b)
{
    if (b < (1u << BB_HIST_SUB_BITS))
        return b;
    unsigned shift = (b >> BB_HIST_SUB_BITS) - 1;
    uint64_t sub = b & ((1u << BB_HIST_SUB_BITS) - 1);
    uint64_t lo = ((1ull << BB_HIST_SUB_BITS) | sub) << shift;
    return lo + (shift ? (1ull << (shift - 1)) : 0);
}

void bb__hist_add(struct bb__hist *h, uint64_t v)
{
    unsigned b = bucket_of(v);
    if (b >= BB_HIST_BUCKETS)
        b = BB_HIST_BUCKETS - 1;
    h->b[b]++;
    h->count++;
}

uint64_t bb__hist_quantile(const struct bb__hist *const *hs, int n, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += hs[i]->count;
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank >= total)
        rank = total - 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < BB_HIST_BUCKETS; b++) {
        for (int i = 0; i < n; i++)
            seen += hs[i]->b[b];
        if (seen > rank)
            return bucket_value(b);
    }
    return bucket_value(BB_HIST_BUCKETS - 1);
}

void bb__metrics_init(struct bb__metrics *m, uint64_t now)
{
    memset(m, 0, sizeof *m);
    m->half_start_ns = m->window_start_ns = now;
}

static void rotate(struct bb__metrics *m, uint64_t now)
{
    while (now - m->half_start_ns >= BB_METRICS_HALF_NS) {
        m->cur ^= 1;
        memset(&m->lat[m->cur], 0, sizeof m->lat[m->cur]);
        m->done_half[m->cur] = 0;
        m->half_start_ns += BB_METRICS_HALF_NS;
        if (now - m->half_start_ns >= 2 * BB_METRICS_HALF_NS) {
            /* Idle for a whole window: start afresh. */
            memset(m->lat, 0, sizeof m->lat);
            m->done_half[0] = m->done_half[1] = 0;
            m->half_start_ns = m->window_start_ns = now;
        }
    }
}

void bb__metrics_done(struct bb__metrics *m, uint64_t now, int status, int prio, uint64_t lat_ns)
{
    if (now - m->half_start_ns >= BB_METRICS_HALF_NS)
        rotate(m, now);
    switch (status) {
    case 0:
        m->completed++;
        if (prio >= 0 && prio < 5)
            m->completed_by_priority[prio]++;
        bb__hist_add(&m->lat[m->cur], lat_ns);
        m->done_half[m->cur]++;
        break;
    case BB_ETIMEDOUT:
        m->timed_out++;
        break;
    case BB_EBUSY:
        m->rejected++;
        break;
    default:
        m->failed++;
        break;
    }
}

void bb__metrics_batch(struct bb__metrics *m, uint32_t n, uint64_t queue_wait_ns_sum)
{
    m->batches++;
    m->batched_items += n;
    m->queue_wait_ns += queue_wait_ns_sum;
    m->queue_waits += n;
}

void bb__metrics_fill(struct bb__metrics *m, uint64_t now, struct bb_wire_stats *o)
{
    rotate(m, now);
    o->submitted = m->submitted;
    o->completed = m->completed;
    o->failed = m->failed;
    o->timed_out = m->timed_out;
    o->rejected = m->rejected;
    o->deduplicated = m->deduplicated;
    o->batches = m->batches;
    memcpy(o->completed_by_priority, m->completed_by_priority, sizeof o->completed_by_priority);
    o->avg_batch_size = m->batches ? (double)m->batched_items / (double)m->batches : 0;
    o->avg_queue_wait_us = m->queue_waits ? (double)m->queue_wait_ns / (double)m->queue_waits / 1e3 : 0;
    /* Window: the previous half (complete) plus the current one so far. */
    double span = (double)(now - m->half_start_ns) + (double)BB_METRICS_HALF_NS;
    if (span > (double)(now - m->window_start_ns))
        span = (double)(now - m->window_start_ns);
    if (span < 1e6)
        span = 1e6;
    o->throughput_rps = (double)(m->done_half[0] + m->done_half[1]) / (span / 1e9);
    const struct bb__hist *hs[2] = {&m->lat[0], &m->lat[1]};
    o->latency_p50_us = (double)bb__hist_quantile(hs, 2, 0.50) / 1e3;
    o->latency_p95_us = (double)bb__hist_quantile(hs, 2, 0.95) / 1e3;
    o->latency_p99_us = (double)bb__hist_quantile(hs, 2, 0.99) / 1e3;
}
