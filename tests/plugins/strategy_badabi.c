/* A strategy from a future ABI: otherwise valid, so the broker must refuse it
 * for the version alone. */
#include <stddef.h>

#include "batchbroker/strategy.h"

static int never(void *state, const struct bb_queue_state *qs, uint64_t *recheck_ns)
{
    (void)state, (void)qs, (void)recheck_ns;
    return 0;
}

static uint32_t none(void *state, const struct bb_queue_state *qs, const struct bb_queue_ops *qo,
                     uint32_t max)
{
    (void)state, (void)qs, (void)qo, (void)max;
    return 0;
}

static const struct bb_strategy_ops bad_ops = {
    .abi_version = BB_STRATEGY_ABI_VERSION + 98,
    .struct_size = sizeof(struct bb_strategy_ops),
    .name = "badabi",
    .should_dispatch = never,
    .select = none,
};

__attribute__((visibility("default"))) const struct bb_strategy_ops *bb_strategy_entry(void)
{
    return &bad_ops;
}
