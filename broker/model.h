/* A model: its configuration, backend, queues, strategy, adaptive state,
 * executors and statistics. Broker-wide; its queues and batches are the
 * business of one dispatcher, its home worker (`w`). */
#ifndef BB_BROKER_MODEL_H
#define BB_BROKER_MODEL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "batchbroker/protocol.h"
#include "batchbroker/strategy.h"
#include "adaptive.h"
#include "config.h"
#include "metrics.h"
#include "plugin.h"
#include "queue.h"
#include "request.h"
#include "util_internal.h"

struct bb__worker;
struct bb__client;
struct bb__dedup;

struct bb__instance {
    pthread_t thread;
    /* ABI 1 backends with register_memory only: held around process() and
     * (un)register_memory, which version 1 promises never run at once. */
    pthread_mutex_t mu;
    void *state;
    struct bb__model *model;
    uint32_t index;
    bool started;
    /* Asynchronous backends (submit): batches submitted and not completed.
     * The executor waits on slot_cv for a free one (at most max_inflight),
     * and for none before it ends; completions come from any thread. */
    pthread_mutex_t slot_mu;
    pthread_cond_t slot_cv;
    uint32_t inflight;
    /* Its executor's: spin for the next batch while this is not 0 and the
     * guard allows (take_batch, bb__spin_yield). */
    uint8_t spin_credit;
    struct bb__spin_guard spin_guard;
};

struct bb__model {
    uint32_t id;
    struct bb__model_config cfg;
    /* The name, for threads other than the home (the registration thread,
     * a backend's log): a reload rewrites cfg, never this copy. */
    char name[64];
    struct bb__plugin plugin;
    struct bb__worker *w;          /* home worker: queues, batches, statistics */
    /* formation = per_worker: the next worker's replica of this model (the
     * same id and configuration; queues, backend instances and statistics of
     * its own, on that worker), NULL-terminated from b->models[id]. Set
     * before the workers start; each worker finds its own in w->route. */
    struct bb__model *sibling;
    uint32_t replica;              /* this one's place among them (0: b->models[id]) */

    struct bb__queues q;           /* queue.c, home worker only */
    uint64_t bytes;                /* input + output bytes queued and running */
    struct bb__req **scratch;      /* max_batch_size entries, for take_many */
    uint64_t memory_limit;         /* bytes, 0 = none */
    uint64_t request_bytes_max;    /* the least of the three size limits (UINT64_MAX: none) */
    uint32_t nweights;
    struct bb__weight weights[BB_MAX_WEIGHTS];

    /* Strategy (strategy.c). */
    const struct bb_strategy_ops *strategy;
    void *strategy_state;
    void *strategy_dl;
    /* EWMAs of a batch's time, from the backend's start to its end
     * (inline_max_us, the adaptive fit) and from its cut to that start (the
     * hand-off); their sum, bb__model_batch_ns, from cut to end. */
    uint64_t run_ns, handoff_ns;
    /* The size of those batches (same average), in 1/256ths of a request:
     * the quiet rule's expected time is for the batch at hand. */
    uint64_t run_n;
    /* The quiet rule (executor.c): the earliest submit stamp of a request
     * queued since the last hand-off, the hand-offs so far, and how many
     * batches in a row ran with nothing arriving meanwhile. */
    uint64_t first_arrival_ns;
    uint32_t handoffs;
    uint8_t quiet;
    bool ran_quiet;                /* its last batch ran on the dispatcher by that rule */
    struct bb__adaptive adapt;     /* adaptive.c: always fed, obeyed if cfg.adaptive */
    _Atomic uint32_t pinned;       /* operator pin of the batch target; 0 = none (any worker sets
                                    * it; the first replica's holds for every replica) */
    bool filling;                  /* last pass: requests wait for the batch to fill */
    uint32_t fill_wait_us;         /* the wait the strategy was given then */
    /* How long any worker may sleep without its doorbell for this model's
     * sake (worker.c coalesce_window); published by the home each pass. */
    _Atomic uint64_t coalesce_ns;

    struct bb__dedup *dedup;       /* dedup.c */

    /* Executors (executor.c). */
    uint32_t ninstances;           /* threads; 0 = inline in the dispatcher */
    struct bb__instance *inst;     /* ninst = max(1, ninstances) */
    uint32_t ninst;
    uint32_t running;              /* batches handed out and not yet reaped */
    /* Batches that may be out at once: ninstances (synchronous backend),
     * ninst x max_inflight (asynchronous), 0 (synchronous and inline: a
     * batch runs and is reaped before the dispatcher goes on). */
    uint32_t max_running;
    bool lock_process;             /* ABI 1 with register_memory: take inst->mu */
    bool parallel;                 /* executors on CPUs of their own: batcher.c share_parts */
    struct bb__batch *free_batches;
    /* The executors' queue: the home worker appends under q_mu, executors
     * take under it. An idle executor spins (spin_us) on q_len before it
     * sleeps on the futex word q_seq, announced in q_sleepers, so a batch
     * handed to a spinning executor costs no system call. */
    pthread_mutex_t q_mu;
    struct bb__batch *q_head, *q_tail;
    _Atomic uint32_t q_len, q_seq, q_sleepers;
    _Atomic bool q_stop;
    _Atomic uint64_t exec_spin_ns;  /* the broker's spin_us; reload changes it */
    unsigned exec_yield_mask;      /* spinning executors yield every mask+1 rounds */

    struct bb__metrics metrics;
    /* The adaptive state as STATS served on another worker sees it: copied
     * by the home once an adaptation interval (bb__model_publish). */
    struct {
        _Atomic uint32_t changes;
        _Atomic double fit_a_us, fit_b_us, fit_r2, best_size, arrival_rps, score;
        _Atomic uint64_t slo_violations;
    } pub;
};

/* The number of m's instance `index` over every replica of the model (the
 * backend's init2, its log lines, the executor's thread name). */
static inline uint32_t bb__instance_number(const struct bb__model *m, uint32_t index)
{
    return m->replica * m->ninst + index;
}

/* Expected time of a batch from its cut to its end (drop_late, strategies). */
static inline uint64_t bb__model_batch_ns(const struct bb__model *m)
{
    return m->run_ns + m->handoff_ns;
}

/* Load the backend and strategy, build the queues and start the executors of
 * model m (whose id and cfg are set), served by home worker w. On failure
 * returns -1 with a message naming the model in err; bb__model_stop cleans
 * up what was started. */
int bb__model_start(struct bb__model *m, struct bb__worker *w, const char *plugin_dir, char *err,
                    size_t errlen);
void bb__model_stop(struct bb__model *m);

/* Derive the running state from cfg: memory limit, adaptive settings, queue
 * capacity. The one place for a start and a reload (SIGHUP). */
void bb__model_apply(struct bb__model *m, const struct bb__model_config *cfg);

/* The fair-queueing weight of uid (client_weights), 1 if not listed. */
uint32_t bb__model_weight(const struct bb__model *m, uint32_t uid);

/* Whether the model's backend wants client segments registered. */
bool bb__model_registers(const struct bb__model *m);
/* The registration thread (registrar.c): hand a client segment to every
 * backend instance (register_segment, or ABI 1's register_memory under the
 * instance's lock), or take it back. Never on a dispatcher. */
void bb__model_register(struct bb__model *m, const struct bb_segment *seg);
void bb__model_unregister(struct bb__model *m, const struct bb_segment *seg);

/* The batch target and wait the model is working with now. */
uint32_t bb__model_target(const struct bb__model *m, uint32_t *wait_us);
/* The same for a pin value already read (0: none); with a pin it reads only
 * the configuration, so any worker may call it. */
uint32_t bb__model_target_pinned(const struct bb__model *m, uint32_t pinned, uint32_t *wait_us);

/* The model called name among n, or NULL. */
struct bb__model *bb__model_find(struct bb__model *models, uint32_t n, const char *name);

/* Home: copy what other threads read of the adaptive state (m->pub). */
void bb__model_publish(struct bb__model *m);

/* Statistics for the STATS message on worker w, for m = w->route[id]: the
 * figures of every replica summed; the batch target and adaptive state of m,
 * read directly where w is its home, else what the home published. */
void bb__model_stats(struct bb__model *m, const struct bb__worker *w, uint64_t now,
                     struct bb_wire_stats *out);

#endif
