/* The Prometheus text exposition format (0.0.4) of the broker's metrics:
 * the page /metrics serves (http.c) and bbctl metrics prints (control.c).
 * Any thread may render it: it reads the single-writer atomics of metrics.h
 * and the broker's immutable shape (the models array, the workers), never a
 * model's configuration, queues or locks. Every metric is documented in
 * docs/operations.md; keep the two together. */
#include "expo.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "model.h"
#include "worker.h"

struct page {
    char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct page *pg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct page *pg, const char *fmt, ...)
{
    if (pg->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(pg->p + pg->len, pg->cap - pg->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            pg->oom = true;
            return;
        }
        if ((size_t)n < pg->cap - pg->len) {
            pg->len += (size_t)n;
            return;
        }
        size_t cap = pg->cap * 2 + (size_t)n;
        char *p = realloc(pg->p, cap);
        if (!p) {
            pg->oom = true;
            return;
        }
        pg->p = p;
        pg->cap = cap;
    }
}

static void family(struct page *pg, const char *name, const char *type, const char *help)
{
    put(pg, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value as the format wants it: backslash, quote and newline escaped.
 * (Model names are [A-Za-z0-9_.-] today; this keeps the page valid anyway.) */
static const char *label(const char *v, char *buf, size_t cap)
{
    size_t o = 0;
    for (; *v && o + 3 < cap; v++) {
        if (*v == '\\' || *v == '"') {
            buf[o++] = '\\';
            buf[o++] = *v;
        } else if (*v == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else {
            buf[o++] = *v;
        }
    }
    buf[o] = '\0';
    return buf;
}

static const char *const prio_names[BB__NPRIO] = {"critical", "high", "normal", "low"};
static const char *const outcome_names[BB_OUTCOMES] = {"completed", "failed", "timed_out",
                                                       "rejected", "cancelled"};
static const char *const phase_names[BB_PHASES] = {"queue_wait", "formation", "backend",
                                                   "delivery"};

/* One _seconds histogram series (distribution `dist` of m, summed over its
 * replicas): coarse buckets made cumulative, the count taken from them (so
 * it equals the +Inf bucket whatever the writers did meanwhile), the sum in
 * seconds. */
static void seconds_series(struct page *pg, const char *name, const char *labels,
                           const struct bb__metrics *m, int dist)
{
    const struct bb__dist *d = &m->dist[dist];
    uint64_t cum = 0;
    for (int c = 0; c < BB_PROM_BOUNDS; c++) {
        cum += bb__metrics_total(m, &d->coarse[c]);
        put(pg, "%s_bucket{%s,le=\"%s\"} %llu\n", name, labels, bb__prom_bound_text[c],
            (unsigned long long)cum);
    }
    cum += bb__metrics_total(m, &d->coarse[BB_PROM_BOUNDS]);
    put(pg, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
    put(pg, "%s_sum{%s} %.9f\n", name, labels, (double)bb__metrics_total(m, &d->sum_ns) / 1e9);
    put(pg, "%s_count{%s} %llu\n", name, labels, (unsigned long long)cum);
}

/* A _seconds histogram family: per model, one series per value of `key`
 * (values[i] is distribution first + i). */
static void seconds_family(struct page *pg, const struct bb__broker *b, const char *name,
                           const char *help, const char *key, const char *const *values, int n,
                           int first)
{
    char lv[2 * BB_MAX_MODEL_NAME], labels[4 * BB_MAX_MODEL_NAME];
    family(pg, name, "histogram", help);
    for (uint32_t i = 0; i < b->nmodels; i++) {
        const struct bb__metrics *m = &b->models[i].metrics;
        for (int k = 0; k < n; k++) {
            snprintf(labels, sizeof labels, "model=\"%s\",%s=\"%s\"",
                     label(m->name, lv, sizeof lv), key, values[k]);
            seconds_series(pg, name, labels, m, first + k);
        }
    }
}

typedef uint64_t (*gauge_fn)(const struct bb__metrics *m);

static void per_model(struct page *pg, const struct bb__broker *b, const char *name,
                      const char *type, const char *help, gauge_fn fn, double scale)
{
    char lv[2 * BB_MAX_MODEL_NAME];
    family(pg, name, type, help);
    for (uint32_t i = 0; i < b->nmodels; i++) {
        const struct bb__metrics *m = &b->models[i].metrics;
        uint64_t v = fn(m);
        if (scale == 1)
            put(pg, "%s{model=\"%s\"} %llu\n", name, label(m->name, lv, sizeof lv),
                (unsigned long long)v);
        else
            put(pg, "%s{model=\"%s\"} %.9g\n", name, label(m->name, lv, sizeof lv),
                (double)v * scale);
    }
}

/* Counts and depths are summed over a model's replicas; the batch target,
 * wait and stride are the first replica's (each replica adapts its own). */
static uint64_t g_submitted(const struct bb__metrics *m) { return bb__metrics_total(m, &m->submitted); }
static uint64_t g_dedup(const struct bb__metrics *m) { return bb__metrics_total(m, &m->deduplicated); }
static uint64_t g_queued(const struct bb__metrics *m) { return bb__metrics_total(m, &m->queued); }
static uint64_t g_running(const struct bb__metrics *m) { return bb__metrics_total(m, &m->running); }
static uint64_t g_target(const struct bb__metrics *m) { return bb__ctr_get(&m->batch_target); }
static uint64_t g_wait(const struct bb__metrics *m) { return bb__ctr_get(&m->wait_us); }
static uint64_t g_stride(const struct bb__metrics *m) { return bb__ctr_get(&m->profile_stride); }

char *bb__expo_page(const struct bb__broker *b, size_t *len)
{
    struct page pg = {.cap = 16384};
    pg.p = malloc(pg.cap);
    if (!pg.p)
        return NULL;
    pg.p[0] = '\0';
    char lv[2 * BB_MAX_MODEL_NAME];

    family(&pg, "batchbroker_requests_total", "counter",
           "Requests that ended, by model, priority and outcome (completed, failed, timed_out, "
           "rejected, cancelled); outcomes do not overlap.");
    for (uint32_t i = 0; i < b->nmodels; i++) {
        const struct bb__metrics *m = &b->models[i].metrics;
        for (int p = 0; p < BB__NPRIO; p++)
            for (int o = 0; o < BB_OUTCOMES; o++)
                put(&pg,
                    "batchbroker_requests_total{model=\"%s\",priority=\"%s\",outcome=\"%s\"} "
                    "%llu\n",
                    label(m->name, lv, sizeof lv), prio_names[p], outcome_names[o],
                    (unsigned long long)bb__metrics_total(m, &m->requests[p][o]));
    }
    per_model(&pg, b, "batchbroker_submissions_total", "counter",
              "Submissions the broker read for the model, accepted or not.", g_submitted, 1);
    per_model(&pg, b, "batchbroker_deduplicated_requests_total", "counter",
              "Requests answered with another request's result (an identical input in flight "
              "or cached); also counted in batchbroker_requests_total.",
              g_dedup, 1);

    family(&pg, "batchbroker_batch_size", "histogram",
           "Requests per batch the backend ran; the count is the number of batches.");
    for (uint32_t i = 0; i < b->nmodels; i++) {
        const struct bb__metrics *m = &b->models[i].metrics;
        label(m->name, lv, sizeof lv);
        uint64_t cum = 0;
        for (uint32_t k = 0; k < BB_BATCH_SIZE_BUCKETS; k++) {
            cum += bb__metrics_total(m, &m->batch_size[k]);
            if (k == 0 || (1u << (k - 1)) < m->max_batch_size) /* up to the first bound >= max */
                put(&pg, "batchbroker_batch_size_bucket{model=\"%s\",le=\"%u\"} %llu\n", lv,
                    1u << k, (unsigned long long)cum);
        }
        put(&pg, "batchbroker_batch_size_bucket{model=\"%s\",le=\"+Inf\"} %llu\n", lv,
            (unsigned long long)cum);
        put(&pg, "batchbroker_batch_size_sum{model=\"%s\"} %llu\n", lv,
            (unsigned long long)bb__metrics_total(m, &m->batched));
        put(&pg, "batchbroker_batch_size_count{model=\"%s\"} %llu\n", lv,
            (unsigned long long)cum);
    }

    seconds_family(&pg, b, "batchbroker_request_duration_seconds",
                   "Latency of completed requests, from the client's submit to the publication "
                   "of the completion.",
                   "priority", prio_names, BB__NPRIO, BB__DIST_LATENCY(0));
    seconds_family(&pg, b, "batchbroker_request_phase_seconds",
                   "Phases of completed requests while the profiler is on (queue_wait, "
                   "formation, backend, delivery); per request they add up to its latency.",
                   "phase", phase_names, BB_PHASES, BB__DIST_PHASE(0));

    per_model(&pg, b, "batchbroker_queued_requests", "gauge",
              "Requests waiting for a batch, deduplicated twins included.", g_queued, 1);
    per_model(&pg, b, "batchbroker_running_batches", "gauge",
              "Batches handed to executor threads and not yet finished.", g_running, 1);
    per_model(&pg, b, "batchbroker_batch_target", "gauge",
              "Batch size the batching aims for now: adaptive, pinned or max_batch_size.",
              g_target, 1);
    per_model(&pg, b, "batchbroker_batch_wait_seconds", "gauge",
              "Longest the oldest queued request waits for its batch to fill, as the batching "
              "uses it now (adaptive or max_wait_us).",
              g_wait, 1e-6);
    per_model(&pg, b, "batchbroker_profiler_stride", "gauge",
              "0 while the profiler is off ([broker] profile); else it times one batch in "
              "this many (1 = every batch; more only above profile_max_rate batches a second).",
              g_stride, 1);

    uint64_t clients = 0, seg = 0;
    for (uint32_t i = 0; i < b->nworkers; i++) {
        clients += bb__ctr_get(&b->workers[i].metrics.clients);
        seg += bb__ctr_get(&b->workers[i].metrics.segment_bytes);
    }
    family(&pg, "batchbroker_clients", "gauge", "Attached client sessions (with a segment).");
    put(&pg, "batchbroker_clients %llu\n", (unsigned long long)clients);
    family(&pg, "batchbroker_segment_memory_bytes", "gauge",
           "Shared memory mapped for client segments, including the segments of clients gone "
           "whose batches still run.");
    put(&pg, "batchbroker_segment_memory_bytes %llu\n", (unsigned long long)seg);

    if (pg.oom) {
        free(pg.p);
        return NULL;
    }
    *len = pg.len;
    return pg.p;
}
