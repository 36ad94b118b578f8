/* ThreadSanitizer: the statistics' threading contract (broker/metrics.h).
 * One thread writes a model's figures the way a dispatcher does (batches,
 * failures, and a window copy every few ms of a fake clock, far more often
 * than the broker's 5 s), while two others read them the way the metrics
 * endpoint and a STATS served on another worker would: the Prometheus
 * fields, bb__metrics_fill with its windowed percentiles, and dumps. A plain
 * executable (TSan cannot run under Criterion); a race TSan reports fails
 * it (exitcode 66), and so does a reading that is not possible. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

#define BATCHES 200000
#define BATCH 4

static struct bb__metrics M;
static atomic_int done, bad;

static void *writer(void *arg)
{
    (void)arg;
    struct bb__entry ents[BATCH];
    struct bb_outbuf outs[BATCH];
    memset(ents, 0, sizeof ents);
    memset(outs, 0, sizeof outs);
    struct bb__batch b = {.n = BATCH, .ents = ents, .outputs = outs};
    uint64_t now = 1000000000ull;
    for (int k = 0; k < BATCHES; k++) {
        now += 10000; /* 10 µs a batch: a window copy every 500 batches */
        for (int i = 0; i < BATCH; i++) {
            ents[i].submit_ns = now - 3000;
            ents[i].prio = (uint8_t)(1 + (k + i) % 4);
        }
        b.profile = bb__metrics_time_batch(&M, now, true, 0);
        b.ts = (struct bb__stamps){now - 1000, now - 800, now - 300, now};
        bb__metrics_batch(&M, &b);
        if (k % 97 == 0)
            bb__metrics_failed(&M, BB_ECANCELED, 2);
        bb__metrics_depth(&M, (uint32_t)(k % 7), (uint32_t)(k % 2));
        if (M.win_due_ns > now + 5000000) /* rotate every 5 ms of the fake clock */
            M.win_due_ns = now + 5000000;
        bb__metrics_tick(&M, now);
    }
    atomic_store(&done, 1);
    return NULL;
}

static void *reader(void *arg)
{
    int dumper = arg != NULL;
    static _Thread_local struct bb_wire_dump d;
    uint64_t last = 0;
    while (!atomic_load(&done)) {
        struct bb_wire_stats s;
        memset(&s, 0, sizeof s);
        bb__metrics_fill(&M, 1000000000ull + 10000ull * BATCHES, &s);
        /* Every request took 3 µs; an empty window reads 0. */
        double p = s.latency_p50_us;
        if (!(p == 0 || (p > 2.9 && p < 3.1)) || s.phase_sum_ns[0] > s.timed_latency_sum_ns ||
            s.completed < last) {
            fprintf(stderr, "tsan_metrics: impossible reading p50 %.3f completed %llu\n", p,
                    (unsigned long long)s.completed);
            atomic_fetch_add(&bad, 1);
        }
        last = s.completed;
        if (dumper) {
            bb__metrics_dump(&M, 0, &d);
            uint64_t c = 0;
            for (int k = 0; k < (int)BB_BATCH_SIZE_BUCKETS; k++)
                c += bb__ctr_get(&M.batch_size[k]);
            (void)c;
        }
    }
    return NULL;
}

int main(void)
{
    bb__metrics_init(&M, "m", 16, 1000000000ull);
    pthread_t w, r1, r2;
    pthread_create(&r1, NULL, reader, NULL);
    pthread_create(&r2, NULL, reader, (void *)1);
    pthread_create(&w, NULL, writer, NULL);
    pthread_join(w, NULL);
    pthread_join(r1, NULL);
    pthread_join(r2, NULL);
    struct bb_wire_stats s;
    memset(&s, 0, sizeof s);
    bb__metrics_fill(&M, 1000000000ull + 10000ull * BATCHES, &s);
    int ok = s.completed == (uint64_t)BATCHES * BATCH && s.batches == BATCHES &&
             s.cancelled == (BATCHES + 96) / 97 && s.phase_count == s.completed &&
             s.timed_latency_sum_ns == s.latency_sum_ns && !atomic_load(&bad);
    printf("tsan_metrics: %llu completed in %llu batches, %llu cancelled; %s\n",
           (unsigned long long)s.completed, (unsigned long long)s.batches,
           (unsigned long long)s.cancelled, ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
