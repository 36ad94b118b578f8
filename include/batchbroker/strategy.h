/*
 * batchbroker batching-strategy ABI.
 *
 * A strategy decides when a model's dispatcher cuts a batch and which queued
 * requests go in. The built-in strategies (throughput, latency, deadline) are
 * tables of this same shape; a custom one is a shared object named by
 * `strategy = /path/to/x.so` that exports BB_STRATEGY_ENTRY_SYMBOL, a function
 * returning a pointer to a static struct bb_strategy_ops. Loading follows the
 * backend rules: abi_version must equal BB_STRATEGY_ABI_VERSION, struct_size
 * be at least the broker's, reserved fields zero.
 *
 * Both callbacks run on the dispatcher thread and must be quick: they sit on
 * every request's path.
 *
 * Before select() is called the broker has already removed expired requests
 * and put into the batch, oldest first, requests that waited longer than
 * max_starvation_us while a higher level was not empty (served as if
 * critical, but never ahead of an older critical request); select() fills
 * the rest.
 */
#ifndef BATCHBROKER_STRATEGY_H
#define BATCHBROKER_STRATEGY_H

#include <stddef.h>
#include <stdint.h>

#include "batchbroker/backend.h" /* struct bb_param */

#ifdef __cplusplus
extern "C" {
#endif

#define BB_STRATEGY_ABI_VERSION 1u
#define BB_STRATEGY_ENTRY_SYMBOL "bb_strategy_entry"

/* Levels are indexed 0..3 = CRITICAL, HIGH, NORMAL, LOW. */
struct bb_queue_state {
    uint64_t now_ns;              /* CLOCK_MONOTONIC */
    uint32_t counts[4];           /* queued requests per level */
    uint32_t queued;              /* sum of counts */
    uint32_t batch_target;        /* preferred batch size (adaptive, else max_batch_size) */
    uint32_t max_batch_size;
    uint32_t max_wait_us;
    uint64_t oldest_wait_ns;      /* how long the oldest queued request has waited */
    uint64_t earliest_deadline_ns;/* absolute; UINT64_MAX when no request has one */
    uint64_t expected_batch_ns;   /* expected service time of a batch of batch_target */
    uint32_t running;             /* batches running now */
    uint32_t instances;           /* executors; a batch can start only when one is free */
    int backend_idle;             /* no batch running at all */
    uint32_t reserved[7];
};

/* The head of one level, in that level's order: round-robin across clients
 * (their rounds), requests with their own deadline first within a round,
 * then arrival; with fairness off, or for strategy = deadline, own
 * deadlines first (earliest first), then round-robin / arrival. */
struct bb_candidate {
    uint64_t deadline_ns;         /* absolute; UINT64_MAX = none */
    uint64_t enq_ns;
    uint32_t in_len, out_cap;
    uint32_t client_id;
    uint32_t level;               /* 0..3 */
};

/* Handed to select(): look at the head of a level, move it into the batch. */
struct bb_queue_ops {
    void *q;
    /* Head of a level, or NULL when the level is empty or its head would not
     * fit the batch (max_batch_bytes). Valid until the next take(). */
    const struct bb_candidate *(*peek)(void *q, int level);
    /* Move the head of a level into the batch. Returns 0, or -1 when the
     * batch is full or the level empty. */
    int (*take)(void *q, int level);
    /* Move up to max requests of a level into the batch, as that many take()
     * calls would (the order inside the batch may differ), but cheaper when
     * the whole level fits. Returns how many. */
    uint32_t (*take_many)(void *q, int level, uint32_t max);
};

struct bb_strategy_ops {
    uint32_t abi_version;         /* BB_STRATEGY_ABI_VERSION */
    uint32_t struct_size;         /* sizeof(struct bb_strategy_ops) */
    const char *name;
    uint32_t reserved0;           /* must be 0 */
    uint32_t reserved1;           /* must be 0 */

    /* Optional: params are the model's `strategy.*` keys (prefix removed).
     * Return 0 or a negative BB_E* code with a message in err. */
    int (*init)(const struct bb_param *params, size_t nparams, void **state, char *err,
                size_t errlen);

    /* Called when an executor is free and requests are queued. Return 1 to
     * cut a batch now, 0 to wait; when waiting, *recheck_ns (absolute, preset
     * to "never") may be lowered to be asked again then even if nothing
     * arrives. Required. */
    int (*should_dispatch)(void *state, const struct bb_queue_state *qs, uint64_t *recheck_ns);

    /* Fill the batch with up to max more requests through qo. Returns how
     * many were taken; a batch left empty is not run, and the broker logs a
     * warning (rate-limited): after should_dispatch said 1, taking nothing
     * leaves the queue waiting for the next answer. Required. */
    uint32_t (*select)(void *state, const struct bb_queue_state *qs, const struct bb_queue_ops *qo,
                       uint32_t max);

    /* Optional. */
    void (*fini)(void *state);

    void *reserved[4];            /* must be NULL */
};

typedef const struct bb_strategy_ops *(*bb_strategy_entry_fn)(void);

#ifdef __cplusplus
}
#endif
#endif
