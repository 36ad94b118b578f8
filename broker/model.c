/* Models: start and stop, and the running state derived from a model's
 * configuration, applied the same way at start and at a reload. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchbroker/client.h"
#include "broker.h"
#include "dedup.h"
#include "executor.h"
#include "log.h"
#include "strategy.h"
#include "util_internal.h"
#include "worker.h"

static int parse_weights(struct bb__model *m, char *err, size_t errlen)
{
    char msg[256];
    if (bb__config_weights(m->cfg.client_weights, m->weights, &m->nweights, msg, sizeof msg) < 0) {
        snprintf(err, errlen, "model %s: %s", m->cfg.name, msg);
        return -1;
    }
    return 0;
}

uint32_t bb__model_weight(const struct bb__model *m, uint32_t uid)
{
    for (uint32_t k = 0; k < m->nweights; k++)
        if (m->weights[k].uid == uid)
            return m->weights[k].weight;
    return 1;
}

void bb__model_apply(struct bb__model *m, const struct bb__model_config *cfg)
{
    m->cfg = *cfg;
    m->memory_limit = (uint64_t)cfg->memory_limit_mb << 20;
    /* What one request may hold: each of these limits, where set. */
    const uint64_t limits[] = {cfg->max_request_bytes, cfg->max_batch_bytes, m->memory_limit};
    m->request_bytes_max = UINT64_MAX;
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
        if (limits[i] && limits[i] < m->request_bytes_max)
            m->request_bytes_max = limits[i];
    uint32_t have;
    if (bb__queues_reserve(&m->q, cfg->max_queue, &have) < 0) {
        bb_error("model %s: out of memory growing the queues; max_queue stays %u", cfg->name, have);
        m->cfg.max_queue = have;
    }
    struct bb__adaptive_cfg *a = &m->adapt.cfg;
    a->max_wait_us = cfg->max_wait_us;
    a->optimize = cfg->optimize;
    a->slo_us = cfg->latency_slo_us;
    a->interval_ns = (uint64_t)cfg->adaptation_interval_ms * 1000000ull;
    /* The controller takes a lowered max_wait_us at its next decision, and
     * makes none before the model's first batch: bound its wait now. */
    if (m->adapt.wait_us > cfg->max_wait_us)
        m->adapt.wait_us = cfg->max_wait_us;
}

int bb__model_start(struct bb__model *m, struct bb__worker *w, const char *plugin_dir, char *err,
                    size_t errlen)
{
    m->w = w;
    snprintf(m->name, sizeof m->name, "%s", m->cfg.name);
    bb__metrics_init(&m->metrics, m->cfg.name, m->cfg.max_batch_size, bb__now_ns());
    if (parse_weights(m, err, errlen) < 0)
        return -1;
    if (bb__strategy_load(m, err, errlen) < 0)
        return -1;
    if (bb__plugin_load_model(&m->cfg, plugin_dir, &m->plugin, err, errlen) < 0)
        return -1;
    /* Adaptive starting point: the hardware the config or the backend names. */
    uint32_t hw = m->cfg.hardware ? m->cfg.hardware : m->plugin.ops->hardware;
    m->parallel = hw != BB_BACKEND_HW_GPU && !m->plugin.ops->submit;
    struct bb__adaptive_cfg acfg = {
        .max_batch_size = m->cfg.max_batch_size,
        .max_wait_us = m->cfg.max_wait_us,
        .instances = m->cfg.instances ? m->cfg.instances : 1,
        .optimize = m->cfg.optimize,
        .slo_us = m->cfg.latency_slo_us,
        .start_target = hw == BB_BACKEND_HW_GPU ? 128 : 32,
        .interval_ns = (uint64_t)m->cfg.adaptation_interval_ms * 1000000ull,
        .tune_ns = m->cfg.auto_tune ? (uint64_t)m->cfg.tune_duration_s * 1000000000ull : 0,
    };
    bb__adaptive_init(&m->adapt, &acfg);
    /* strategy = deadline asks for the earliest deadline across clients:
     * its levels keep own deadlines ahead of the fair-queueing order. */
    bool tags_first = m->cfg.fairness && strcmp(m->cfg.strategy, "deadline") != 0;
    if (bb__queues_init(&m->q, m->cfg.max_queue, m->cfg.priorities, m->cfg.fairness,
                        tags_first) < 0 ||
        bb__dedup_init(m) < 0 || !(m->scratch = calloc(m->cfg.max_batch_size, sizeof *m->scratch))) {
        snprintf(err, errlen, "model %s: out of memory", m->cfg.name);
        return -1;
    }
    bb__model_apply(m, &m->cfg);
    atomic_store_explicit(&m->exec_spin_ns, w->spin_ns, memory_order_relaxed);
    /* With few CPUs an idle executor shares its core with the dispatcher or
     * a client, which it would only delay: it yields at every round. */
    m->exec_yield_mask = bb__ncpus() <= 2 ? 0 : 4095;
    return bb__executor_start(m, err, errlen);
}

void bb__model_stop(struct bb__model *m)
{
    if (!m->w)
        return;
    bb__executor_stop(m);
    bb__queues_fini(&m->q);
    free(m->scratch);
    bb__dedup_fini(m);
    bb__strategy_unload(m);
    bb__plugin_unload(&m->plugin);
    m->w = NULL;
}

bool bb__model_registers(const struct bb__model *m)
{
    return m->plugin.ops->register_segment || m->plugin.ops->register_memory;
}

void bb__model_register(struct bb__model *m, const struct bb_segment *seg)
{
    const struct bb_backend_ops *ops = m->plugin.ops;
    for (uint32_t k = 0; k < m->ninst; k++) {
        struct bb__instance *in = &m->inst[k];
        int r = 0;
        if (ops->register_segment) {
            r = ops->register_segment(in->state, seg);
        } else if (ops->register_memory) {
            pthread_mutex_lock(&in->mu);
            r = ops->register_memory(in->state, seg->base, seg->len);
            pthread_mutex_unlock(&in->mu);
        }
        if (r < 0) /* one a client: limited, as the broker's other per-client lines */
            bb_warn_limited("model %s: backend %s could not register the segment of client %u: "
                            "%s", m->name, ops->name, seg->id, bb_strerror(r));
    }
}

void bb__model_unregister(struct bb__model *m, const struct bb_segment *seg)
{
    const struct bb_backend_ops *ops = m->plugin.ops;
    for (uint32_t k = 0; k < m->ninst; k++) {
        struct bb__instance *in = &m->inst[k];
        if (ops->unregister_segment) {
            ops->unregister_segment(in->state, seg);
        } else if (ops->unregister_memory) {
            pthread_mutex_lock(&in->mu);
            ops->unregister_memory(in->state, seg->base, seg->len);
            pthread_mutex_unlock(&in->mu);
        }
    }
}

/* The operator's pin, kept on the first replica for all of them: two pins
 * from sessions on different workers could otherwise leave the replicas
 * each with another. */
static uint32_t pin_of(const struct bb__model *m)
{
    return atomic_load_explicit(&m->w->b->models[m->id].pinned, memory_order_relaxed);
}

uint32_t bb__model_target(const struct bb__model *m, uint32_t *wait_us)
{
    return bb__model_target_pinned(m, pin_of(m), wait_us);
}

uint32_t bb__model_target_pinned(const struct bb__model *m, uint32_t pinned, uint32_t *wait_us)
{
    uint32_t max = m->cfg.max_batch_size;
    *wait_us = m->cfg.max_wait_us;
    if (pinned)
        return pinned < max ? pinned : max;
    if (m->cfg.adaptive) {
        *wait_us = m->adapt.wait_us;
        return bb__adaptive_target(&m->adapt);
    }
    return max;
}

void bb__model_publish(struct bb__model *m)
{
    const struct bb__adaptive *a = &m->adapt;
    atomic_store_explicit(&m->pub.changes, a->changes, memory_order_relaxed);
    atomic_store_explicit(&m->pub.fit_a_us, a->fit.a_ns / 1e3, memory_order_relaxed);
    atomic_store_explicit(&m->pub.fit_b_us, a->fit.b_ns / 1e3, memory_order_relaxed);
    atomic_store_explicit(&m->pub.fit_r2, a->fit.r2, memory_order_relaxed);
    atomic_store_explicit(&m->pub.best_size, a->best_size, memory_order_relaxed);
    atomic_store_explicit(&m->pub.arrival_rps, a->rate_rps, memory_order_relaxed);
    atomic_store_explicit(&m->pub.score, a->score, memory_order_relaxed);
    atomic_store_explicit(&m->pub.slo_violations, a->slo_violations, memory_order_relaxed);
}

void bb__model_stats(struct bb__model *m, const struct bb__worker *w, uint64_t now,
                     struct bb_wire_stats *s)
{
    const struct bb__metrics *all = &w->b->models[m->id].metrics;
    bb__metrics_fill(all, now, s); /* every replica's figures */
    s->max_batch_size = m->cfg.max_batch_size; /* configuration: a reload parks every worker */
    s->instances = m->cfg.instances;
    s->adaptive = m->cfg.adaptive;
    s->pinned = pin_of(m);
    if (m->w == w) { /* the home: its own state, fresh; the other replicas' depth */
        const struct bb__adaptive *a = &m->adapt;
        s->queued = m->q.queued + m->q.grouped;
        for (const struct bb__metrics *x = all; x; x = x->next)
            if (x != &m->metrics)
                s->queued += (uint32_t)bb__ctr_get(&x->queued);
        s->batch_target = bb__model_target(m, &s->wait_us);
        s->changes = a->changes;
        s->fit_a_us = a->fit.a_ns / 1e3;
        s->fit_b_us = a->fit.b_ns / 1e3;
        s->fit_r2 = a->fit.r2;
        s->best_size = a->best_size;
        s->arrival_rps = a->rate_rps;
        s->score = a->score;
        s->slo_violations = a->slo_violations;
        return;
    }
    s->queued = (uint32_t)bb__metrics_total(all, &all->queued);
    s->batch_target = (uint32_t)bb__ctr_get(&m->metrics.batch_target);
    s->wait_us = (uint32_t)bb__ctr_get(&m->metrics.wait_us);
    if (s->pinned) /* a pin shows at once: the pin read above and the configuration only
                    * (not the home's adaptive state, were an unpin to land meanwhile) */
        s->batch_target = bb__model_target_pinned(m, s->pinned, &s->wait_us);
    s->changes = atomic_load_explicit(&m->pub.changes, memory_order_relaxed);
    s->fit_a_us = atomic_load_explicit(&m->pub.fit_a_us, memory_order_relaxed);
    s->fit_b_us = atomic_load_explicit(&m->pub.fit_b_us, memory_order_relaxed);
    s->fit_r2 = atomic_load_explicit(&m->pub.fit_r2, memory_order_relaxed);
    s->best_size = atomic_load_explicit(&m->pub.best_size, memory_order_relaxed);
    s->arrival_rps = atomic_load_explicit(&m->pub.arrival_rps, memory_order_relaxed);
    s->score = atomic_load_explicit(&m->pub.score, memory_order_relaxed);
    s->slo_violations = atomic_load_explicit(&m->pub.slo_violations, memory_order_relaxed);
}

struct bb__model *bb__model_find(struct bb__model *models, uint32_t n, const char *name)
{
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(models[i].cfg.name, name) == 0)
            return &models[i];
    return NULL;
}
