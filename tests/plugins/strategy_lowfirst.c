/* A custom batching strategy for tests/test_sched_strategy.c, deliberately unlike
 * every built-in so that obeying it is observable:
 *
 *   should_dispatch: cut a batch only when at least `strategy.min_queued`
 *                    requests are queued (no timer: otherwise wait forever);
 *   select:          fill from LOW up to CRITICAL, the reverse of the
 *                    built-ins.
 *
 * init refuses a missing or out-of-range min_queued, which proves that the
 * model's strategy.* keys reach it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchbroker/client.h"
#include "batchbroker/strategy.h"

struct lowfirst {
    uint32_t min_queued;
};

static int lf_init(const struct bb_param *params, size_t nparams, void **state, char *err,
                   size_t errlen)
{
    long min = -1;
    for (size_t i = 0; i < nparams; i++) {
        if (strcmp(params[i].key, "min_queued") != 0) {
            snprintf(err, errlen, "lowfirst: unknown key strategy.%s", params[i].key);
            return BB_EINVAL;
        }
        char *end;
        errno = 0;
        min = strtol(params[i].value, &end, 10);
        if (errno || *end || end == params[i].value || min < 1 || min > 1000) {
            snprintf(err, errlen, "lowfirst: min_queued = \"%s\": expected 1..1000",
                     params[i].value);
            return BB_EINVAL;
        }
    }
    if (min < 0) {
        snprintf(err, errlen, "lowfirst: strategy.min_queued is required");
        return BB_EINVAL;
    }
    struct lowfirst *st = malloc(sizeof *st);
    if (!st)
        return BB_ENOMEM;
    st->min_queued = (uint32_t)min;
    *state = st;
    return 0;
}

static int lf_should(void *state, const struct bb_queue_state *qs, uint64_t *recheck_ns)
{
    const struct lowfirst *st = state;
    (void)recheck_ns; /* no timer: only an arrival can change the answer */
    return qs->queued >= st->min_queued;
}

static uint32_t lf_select(void *state, const struct bb_queue_state *qs,
                          const struct bb_queue_ops *qo, uint32_t max)
{
    (void)state;
    (void)qs;
    uint32_t n = 0;
    for (int l = 3; l >= 0 && n < max; l--)
        while (n < max && qo->peek(qo->q, l) && qo->take(qo->q, l) == 0)
            n++;
    return n;
}

static void lf_fini(void *state)
{
    free(state);
}

static const struct bb_strategy_ops lowfirst_ops = {
    .abi_version = BB_STRATEGY_ABI_VERSION,
    .struct_size = sizeof(struct bb_strategy_ops),
    .name = "lowfirst",
    .init = lf_init,
    .should_dispatch = lf_should,
    .select = lf_select,
    .fini = lf_fini,
};

__attribute__((visibility("default"))) const struct bb_strategy_ops *bb_strategy_entry(void)
{
    return &lowfirst_ops;
}
