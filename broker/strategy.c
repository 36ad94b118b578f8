/* Batching strategies: the three built-ins, and the loader for custom ones.
 * The built-ins are plain bb_strategy_ops tables, the same ABI a plugin uses. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "strategy.h"

#include "batchbroker/client.h"
#include "log.h"
#include "model.h"

/* Cut when the batch target is reached, when the oldest request has waited
 * max_wait_us, or when the earliest deadline cannot wait any longer. */
static int throughput_should(void *st, const struct bb_queue_state *qs, uint64_t *recheck)
{
    (void)st;
    if (qs->queued >= qs->batch_target)
        return 1;
    uint64_t max_wait = (uint64_t)qs->max_wait_us * 1000;
    if (qs->oldest_wait_ns >= max_wait)
        return 1;
    uint64_t cut_at = qs->now_ns + (max_wait - qs->oldest_wait_ns);
    if (qs->earliest_deadline_ns != UINT64_MAX) {
        uint64_t latest_start = qs->earliest_deadline_ns > qs->expected_batch_ns
                                    ? qs->earliest_deadline_ns - qs->expected_batch_ns
                                    : 0;
        if (latest_start <= qs->now_ns)
            return 1;
        if (latest_start < cut_at)
            cut_at = latest_start;
    }
    *recheck = cut_at;
    return 0;
}

/* Highest level first; each level in its own order. */
static uint32_t by_level(void *st, const struct bb_queue_state *qs, const struct bb_queue_ops *qo,
                         uint32_t max)
{
    (void)st;
    (void)qs;
    uint32_t n = 0;
    for (int l = 0; l < 4 && n < max; l++)
        n += qo->take_many(qo->q, l, max - n);
    return n;
}

/* Dispatch as soon as the backend can take a batch: the broker asks only
 * when an executor is free, so that is now. */
static int latency_should(void *st, const struct bb_queue_state *qs, uint64_t *recheck)
{
    (void)st;
    (void)qs;
    (void)recheck;
    return 1;
}

/* Earliest deadline across levels; requests without one follow, by level. */
static uint32_t by_deadline(void *st, const struct bb_queue_state *qs,
                            const struct bb_queue_ops *qo, uint32_t max)
{
    (void)st;
    (void)qs;
    uint32_t n = 0;
    while (n < max) {
        int best = -1;
        uint64_t best_dl = UINT64_MAX;
        for (int l = 0; l < 4; l++) {
            const struct bb_candidate *c = qo->peek(qo->q, l);
            if (c && (best < 0 || c->deadline_ns < best_dl)) {
                best = l;
                best_dl = c->deadline_ns;
            }
        }
        if (best < 0 || qo->take(qo->q, best) != 0)
            break;
        n++;
    }
    return n;
}

static const struct bb_strategy_ops builtins[] = {
    {.abi_version = BB_STRATEGY_ABI_VERSION, .struct_size = sizeof(struct bb_strategy_ops),
     .name = "throughput", .should_dispatch = throughput_should, .select = by_level},
    {.abi_version = BB_STRATEGY_ABI_VERSION, .struct_size = sizeof(struct bb_strategy_ops),
     .name = "latency", .should_dispatch = latency_should, .select = by_level},
    {.abi_version = BB_STRATEGY_ABI_VERSION, .struct_size = sizeof(struct bb_strategy_ops),
     .name = "deadline", .should_dispatch = throughput_should, .select = by_deadline},
};

static int check_table(const struct bb_strategy_ops *o, const char *path, char *err, size_t errlen)
{
    if (!o) {
        snprintf(err, errlen, "%s: strategy entry returned NULL", path);
        return -1;
    }
    if (o->abi_version != BB_STRATEGY_ABI_VERSION) {
        snprintf(err, errlen, "%s: strategy ABI version %u, this broker speaks %u", path,
                 o->abi_version, BB_STRATEGY_ABI_VERSION);
        return -1;
    }
    if (o->struct_size < sizeof *o) {
        snprintf(err, errlen, "%s: strategy table of %u bytes, this broker needs %zu", path,
                 o->struct_size, sizeof *o);
        return -1;
    }
    bool reserved = o->reserved0 || o->reserved1;
    for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++)
        reserved |= o->reserved[i] != NULL;
    if (reserved) {
        snprintf(err, errlen, "%s: reserved fields of the strategy table are not zero", path);
        return -1;
    }
    if (!o->name || !o->should_dispatch || !o->select) {
        snprintf(err, errlen, "%s: strategy table lacks name, should_dispatch or select", path);
        return -1;
    }
    return 0;
}

int bb__strategy_load(struct bb__model *m, char *err, size_t errlen)
{
    const char *name = m->cfg.strategy;
    if (!strchr(name, '/')) {
        for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++)
            if (strcmp(builtins[i].name, name) == 0) {
                m->strategy = &builtins[i];
                return 0;
            }
        snprintf(err, errlen, "model %s: unknown strategy '%s' (throughput, latency, deadline, "
                 "or a path to a .so)", m->cfg.name, name);
        return -1;
    }
    void *dl = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(err, errlen, "model %s: cannot load strategy: %s", m->cfg.name, dlerror());
        return -1;
    }
    void *sym = dlsym(dl, BB_STRATEGY_ENTRY_SYMBOL);
    bb_strategy_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    if (!sym) {
        snprintf(err, errlen, "%s: no entry symbol %s", name, BB_STRATEGY_ENTRY_SYMBOL);
        dlclose(dl);
        return -1;
    }
    const struct bb_strategy_ops *o = entry();
    if (check_table(o, name, err, errlen) < 0) {
        dlclose(dl);
        return -1;
    }
    m->strategy_dl = dl;
    m->strategy = o;
    if (o->init) {
        struct bb_param params[8];
        for (size_t i = 0; i < m->cfg.nsparams; i++)
            params[i] = (struct bb_param){m->cfg.sparams[i].key, m->cfg.sparams[i].value};
        char serr[256] = "";
        int rc = o->init(params, m->cfg.nsparams, &m->strategy_state, serr, sizeof serr);
        serr[sizeof serr - 1] = '\0'; /* a strategy that filled it, strncpy's way */
        if (rc < 0) {
            snprintf(err, errlen, "model %s: strategy %s refused its parameters: %s", m->cfg.name,
                     o->name, serr[0] ? serr : bb_strerror(rc));
            m->strategy = NULL;
            m->strategy_dl = NULL;
            dlclose(dl);
            return -1;
        }
    }
    bb_info("model %s: strategy %s from %s", m->cfg.name, o->name, name);
    return 0;
}

void bb__strategy_unload(struct bb__model *m)
{
    if (m->strategy && m->strategy->fini)
        m->strategy->fini(m->strategy_state);
    if (m->strategy_dl)
        dlclose(m->strategy_dl);
    m->strategy = NULL;
    m->strategy_dl = NULL;
}
