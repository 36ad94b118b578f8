/* A broken strategy for tests/test_sched_strategy.c: it always asks for a
 * batch and then takes nothing, so its model never serves anything. The
 * broker must say so rather than leave the requests waiting silently. */
#include <stddef.h>

#include "batchbroker/strategy.h"

static int always(void *state, const struct bb_queue_state *qs, uint64_t *recheck_ns)
{
    (void)state, (void)qs, (void)recheck_ns;
    return 1;
}

static uint32_t none(void *state, const struct bb_queue_state *qs, const struct bb_queue_ops *qo,
                     uint32_t max)
{
    (void)state, (void)qs, (void)qo, (void)max;
    return 0;
}

static const struct bb_strategy_ops takenone_ops = {
    .abi_version = BB_STRATEGY_ABI_VERSION,
    .struct_size = sizeof(struct bb_strategy_ops),
    .name = "takenone",
    .should_dispatch = always,
    .select = none,
};

__attribute__((visibility("default"))) const struct bb_strategy_ops *bb_strategy_entry(void)
{
    return &takenone_ops;
}
