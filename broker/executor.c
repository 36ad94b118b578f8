/* Executors: each model's backend runs on its own threads (`instances`), so
 * the dispatcher keeps draining rings and forming the next batch while a
 * batch runs. With instances = 0 the dispatcher runs the backend itself,
 * which saves a thread hand-off for backends that take microseconds.
 *
 * The executor publishes each request's completion to the client itself
 * (lowest latency), then hands the batch back to the dispatcher through a
 * lock-free stack for bookkeeping: statistics, completion-ring entries and
 * the release of client references. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <unistd.h>

#include "broker_internal.h"
#include "util_internal.h"

void bb__publish(struct bb__client *cl, uint32_t slot, uint32_t gen, int status, uint32_t out_len)
{
    struct bb_shm_slot *s = &cl->slots[slot];
    s->status = status;
    s->out_len = out_len;
    /* Pairs with the client's acquire load of shm_done_gen. */
    atomic_store_explicit(&s->shm_done_gen, gen, memory_order_release);
}

void bb__wake_client(struct bb__client *cl)
{
    /* Orders the publishes before the sleeper check (protocol.h). */
    atomic_thread_fence(memory_order_seq_cst);
    struct bb_shm_header *h = cl->hdr;
    if (atomic_load_explicit(&h->shm_sleepers, memory_order_relaxed) == 0)
        return;
    atomic_fetch_add_explicit(&h->shm_wake_seq, 1, memory_order_release);
    bb__futex_wake(&h->shm_wake_seq);
}

void bb__batch_run(struct bb__model *m, struct bb__instance *in, struct bb__batch *b)
{
    struct bb_batch bb = {.n = b->n,
                          .numa_node = m->w->node,
                          .inputs = b->inputs,
                          .outputs = b->outputs,
                          .priorities = b->prios,
                          .errmsg = b->errmsg,
                          .errmsg_cap = sizeof b->errmsg};
    pthread_mutex_lock(&in->mu);
    int rc = m->plugin.ops->process(in->state, &bb);
    pthread_mutex_unlock(&in->mu);
    b->rc = rc;
    b->end_ns = bb__now_ns();
    b->errmsg[sizeof b->errmsg - 1] = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        struct bb_outbuf *o = &b->outputs[i];
        int st = rc < 0 ? BB_EBACKEND : o->status;
        if (st > 0)
            st = BB_EBACKEND;
        if (st == 0 && o->len > o->cap)
            st = BB_EBACKEND; /* a backend that overran its buffer: do not trust len */
        o->status = st;
        size_t len = st == 0 ? o->len : 0;
        struct bb__entry *e = &b->ents[i];
        if (e->group)
            continue; /* shared result: the dispatcher answers every member */
        /* Result, then idle, then done: the slot is resubmittable the moment
         * the client sees shm_done_gen, so the dispatcher must already find
         * it idle (this release pairs with its acquire when it validates the
         * next submission), and nothing of this completion may be written
         * after that. */
        struct bb_shm_slot *s = &e->cl->slots[e->slot];
        s->status = st;
        s->out_len = (uint32_t)len;
        atomic_store_explicit(&e->cl->reqs[e->slot].state, BB__REQ_IDLE, memory_order_release);
        atomic_store_explicit(&s->shm_done_gen, e->gen, memory_order_release);
    }
    /* One wake-up per client of the batch, not one per request. */
    struct bb__client *woken[64];
    uint32_t nwoken = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        struct bb__client *cl = b->ents[i].cl;
        if (b->ents[i].group)
            continue;
        uint32_t k = 0;
        while (k < nwoken && woken[k] != cl)
            k++;
        if (k < nwoken)
            continue;
        if (nwoken < 64)
            woken[nwoken++] = cl;
        bb__wake_client(cl);
    }
}

/* Dispatcher side: account for a finished batch and let go of its clients. */
void bb__batch_reap(struct bb__worker *w, struct bb__batch *b)
{
    struct bb__model *m = b->model;
    uint64_t wait_sum = 0;
    if (b->rc < 0)
        bb_warn("model %s: backend failed a batch of %u: %s (%s)", m->cfg.name, b->n,
                b->errmsg[0] ? b->errmsg : "no message", bb_errname(b->rc));
    for (uint32_t i = 0; i < b->n; i++) {
        struct bb__entry *e = &b->ents[i];
        wait_sum += b->dispatch_ns - e->enq_ns;
        if (e->group) {
            bb__dedup_complete(w, m, e->group, b->outputs[i].status, b->outputs[i].len, b->end_ns);
            continue;
        }
        uint64_t lat = b->end_ns > e->submit_ns ? b->end_ns - e->submit_ns : 0;
        bb__metrics_done(&m->metrics, b->end_ns, b->outputs[i].status, e->prio, lat);
        bb__adaptive_done(&m->adapt, lat);
        bb__cq_add(e->cl, e->slot);
        e->cl->cm[m->id].inflight--;
        m->bytes -= e->bytes;
        bb__client_put(w, e->cl);
    }
    bb__metrics_batch(&m->metrics, b->n, wait_sum);
    /* Expected batch time for drop_late and the strategies: an EWMA. */
    uint64_t took = b->end_ns - b->dispatch_ns;
    m->expected_batch_ns = m->expected_batch_ns ? (m->expected_batch_ns * 7 + took) / 8 : took;
    if (bb__adaptive_batch(&m->adapt, b->n, took))
        bb_info("model %s: backend speed changed; adaptive model restarted", m->cfg.name);
    if (m->ninstances)
        m->running--;
    b->next = m->free_batches;
    m->free_batches = b;
}

void bb__executor_submit(struct bb__model *m, struct bb__batch *b)
{
    pthread_mutex_lock(&m->q_mu);
    b->next = NULL;
    if (m->q_tail)
        m->q_tail->next = b;
    else
        m->q_head = b;
    m->q_tail = b;
    pthread_cond_signal(&m->q_cv);
    pthread_mutex_unlock(&m->q_mu);
}

static void push_done(struct bb__worker *w, struct bb__batch *b)
{
    struct bb__batch *head = atomic_load_explicit(&w->done, memory_order_relaxed);
    do
        b->next = head;
    while (!atomic_compare_exchange_weak_explicit(&w->done, &head, b, memory_order_release,
                                                  memory_order_relaxed));
    /* Same handshake as a client's doorbell: push, fence, wake a sleeper. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&w->sleeping, memory_order_relaxed))
        bb__worker_wake(w);
}

static void *executor_main(void *arg)
{
    struct bb__instance *in = arg;
    struct bb__model *m = in->model;
    for (;;) {
        pthread_mutex_lock(&m->q_mu);
        while (!m->q_head && !m->q_stop)
            pthread_cond_wait(&m->q_cv, &m->q_mu);
        struct bb__batch *b = m->q_head;
        if (!b) {
            pthread_mutex_unlock(&m->q_mu);
            return NULL;
        }
        m->q_head = b->next;
        if (!m->q_head)
            m->q_tail = NULL;
        pthread_mutex_unlock(&m->q_mu);
        bb__batch_run(m, in, b);
        push_done(m->w, b);
    }
}

static int alloc_batches(struct bb__model *m, uint32_t count)
{
    uint32_t max = m->cfg.max_batch_size;
    for (uint32_t i = 0; i < count; i++) {
        struct bb__batch *b = calloc(1, sizeof *b);
        if (!b)
            return -1;
        b->model = m;
        b->ents = calloc(max, sizeof *b->ents);
        b->inputs = calloc(max, sizeof *b->inputs);
        b->outputs = calloc(max, sizeof *b->outputs);
        b->prios = calloc(max, 1);
        b->next = m->free_batches;
        m->free_batches = b;
        if (!b->ents || !b->inputs || !b->outputs || !b->prios)
            return -1;
    }
    return 0;
}

/* client_weights = "uid:weight,uid:weight" */
static int parse_weights(struct bb__model *m, char *err, size_t errlen)
{
    const char *p = m->cfg.client_weights;
    while (*p) {
        char *end;
        unsigned long uid = strtoul(p, &end, 10);
        unsigned long wt = 0;
        bool ok = end != p && *end == ':';
        if (ok) {
            const char *q = end + 1;
            wt = strtoul(q, &end, 10);
            ok = end != q && wt >= 1 && wt <= 1000 && (*end == ',' || *end == 0) &&
                 uid <= UINT32_MAX && m->nweights < 32;
        }
        if (!ok) {
            snprintf(err, errlen, "model %s: client_weights: expected uid:weight pairs (weight "
                     "1..1000, at most 32) near '%s'", m->cfg.name, p);
            return -1;
        }
        m->weights[m->nweights].uid = (uint32_t)uid;
        m->weights[m->nweights].weight = (uint32_t)wt;
        m->nweights++;
        p = *end ? end + 1 : end;
    }
    return 0;
}

int bb__model_start(struct bb__worker *w, struct bb__model *m, char *err, size_t errlen)
{
    m->w = w;
    pthread_mutex_init(&m->q_mu, NULL);
    pthread_cond_init(&m->q_cv, NULL);
    bb__metrics_init(&m->metrics, bb__now_ns());
    if (parse_weights(m, err, errlen) < 0)
        return -1;
    if (m->cfg.nsparams && !strchr(m->cfg.strategy, '/')) {
        snprintf(err, errlen, "model %s: strategy.* keys apply to a custom strategy only",
                 m->cfg.name);
        return -1;
    }
    if (bb__strategy_load(m, err, errlen) < 0)
        return -1;
    if (bb__plugin_load_model(&m->cfg, w->cfg->plugin_dir, &m->plugin, err, errlen) < 0)
        return -1;
    m->memory_limit = (uint64_t)m->cfg.memory_limit_mb << 20;
    /* Adaptive starting point: the hardware the config or the backend names. */
    uint32_t hw = m->cfg.hardware ? m->cfg.hardware : m->plugin.ops->hardware;
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
    for (int l = 0; l < 4; l++)
        if (bb__heap_init(&m->levels[l], m->cfg.max_queue, 0, m->cfg.priorities) < 0)
            goto nomem;
    if (bb__heap_init(&m->deadlines, m->cfg.max_queue, 1, false) < 0 || bb__dedup_init(m) < 0)
        goto nomem;
    m->scratch = calloc(m->cfg.max_batch_size, sizeof *m->scratch);
    if (!m->scratch)
        goto nomem;
    m->ninstances = m->cfg.instances;
    uint32_t ninst = m->ninstances ? m->ninstances : 1;
    m->inst = calloc(ninst, sizeof *m->inst);
    if (!m->inst || alloc_batches(m, ninst) < 0)
        goto nomem;
    struct bb_param params[BB_MAX_PARAMS];
    for (size_t i = 0; i < m->cfg.nparams; i++)
        params[i] = (struct bb_param){m->cfg.params[i].key, m->cfg.params[i].value};
    for (uint32_t i = 0; i < ninst; i++) {
        struct bb__instance *in = &m->inst[i];
        in->model = m;
        pthread_mutex_init(&in->mu, NULL);
        char berr[256] = "";
        int rc = m->plugin.ops->init(params, m->cfg.nparams, &in->state, berr, sizeof berr);
        if (rc < 0) {
            snprintf(err, errlen, "model %s: backend %s refused its parameters: %s", m->cfg.name,
                     m->plugin.ops->name, berr[0] ? berr : bb_strerror(rc));
            return -1;
        }
        in->started = true;
    }
    for (uint32_t i = 0; i < m->ninstances; i++) {
        int rc = pthread_create(&m->inst[i].thread, NULL, executor_main, &m->inst[i]);
        if (rc) {
            snprintf(err, errlen, "model %s: cannot start executor: %s", m->cfg.name, strerror(rc));
            m->ninstances = i;
            return -1;
        }
    }
    return 0;
nomem:
    snprintf(err, errlen, "model %s: out of memory", m->cfg.name);
    return -1;
}

void bb__model_stop(struct bb__model *m)
{
    if (!m->w)
        return;
    pthread_mutex_lock(&m->q_mu);
    m->q_stop = true;
    pthread_cond_broadcast(&m->q_cv);
    pthread_mutex_unlock(&m->q_mu);
    for (uint32_t i = 0; i < m->ninstances; i++)
        pthread_join(m->inst[i].thread, NULL);
    uint32_t ninst = m->cfg.instances ? m->cfg.instances : 1;
    for (uint32_t i = 0; m->inst && i < ninst; i++)
        if (m->inst[i].started)
            m->plugin.ops->fini(m->inst[i].state);
    free(m->inst);
    while (m->free_batches) {
        struct bb__batch *b = m->free_batches;
        m->free_batches = b->next;
        free(b->ents);
        free(b->inputs);
        free(b->outputs);
        free(b->prios);
        free(b);
    }
    for (int l = 0; l < 4; l++)
        bb__heap_fini(&m->levels[l]);
    bb__heap_fini(&m->deadlines);
    free(m->scratch);
    bb__dedup_fini(m);
    bb__strategy_unload(m);
    bb__plugin_unload(&m->plugin);
}
