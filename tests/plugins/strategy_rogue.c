/* A misbehaving strategy for tests/test_sched_strategy.c. strategy.mode:
 *
 *   greedy: always cut; select peeks and takes at levels that do not exist,
 *           asks take_many for UINT32_MAX, keeps calling take() after the
 *           batch is full, and returns a count it did not take;
 *   never:  never cut, and ask to be rechecked in the past;
 *   errfill: init refuses, filling all of err with 'X' and no NUL (strncpy's
 *           way).
 *
 * The broker must contain it: batches within max_batch_size, every request
 * answered exactly once, deadlines still firing, and read no further than
 * the err buffer it gave. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchbroker/client.h"
#include "batchbroker/strategy.h"

enum mode { GREEDY, NEVER };
static const enum mode modes[] = {GREEDY, NEVER};

static int rogue_init(const struct bb_param *params, size_t nparams, void **state, char *err,
                      size_t errlen)
{
    for (size_t i = 0; i < nparams; i++) {
        if (strcmp(params[i].key, "mode") == 0 && strcmp(params[i].value, "greedy") == 0)
            *state = (void *)&modes[GREEDY];
        else if (strcmp(params[i].key, "mode") == 0 && strcmp(params[i].value, "never") == 0)
            *state = (void *)&modes[NEVER];
        else if (strcmp(params[i].key, "mode") == 0 && strcmp(params[i].value, "errfill") == 0) {
            memset(err, 'X', errlen);
            return BB_EINVAL;
        } else {
            snprintf(err, errlen, "rogue: strategy.%s = %s?", params[i].key, params[i].value);
            return BB_EINVAL;
        }
    }
    return *state ? 0 : BB_EINVAL;
}

static int rogue_should(void *state, const struct bb_queue_state *qs, uint64_t *recheck_ns)
{
    (void)qs;
    if (*(const enum mode *)state == GREEDY)
        return 7; /* not 1, still "yes" */
    *recheck_ns = 1; /* long past */
    return 0;
}

static uint32_t rogue_select(void *state, const struct bb_queue_state *qs,
                             const struct bb_queue_ops *qo, uint32_t max)
{
    (void)state, (void)qs, (void)max;
    static const int bad[] = {-1, 4, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        (void)qo->peek(qo->q, bad[i]);
        (void)qo->take(qo->q, bad[i]);
        (void)qo->take_many(qo->q, bad[i], UINT32_MAX);
    }
    for (int l = 3; l >= 0; l--)
        (void)qo->take_many(qo->q, l, UINT32_MAX);
    for (int k = 0; k < 100; k++)
        for (int l = 0; l < 4; l++)
            (void)qo->take(qo->q, l);
    return UINT32_MAX;
}

static const struct bb_strategy_ops rogue_ops = {
    .abi_version = BB_STRATEGY_ABI_VERSION,
    .struct_size = sizeof(struct bb_strategy_ops),
    .name = "rogue",
    .init = rogue_init,
    .should_dispatch = rogue_should,
    .select = rogue_select,
};

__attribute__((visibility("default"))) const struct bb_strategy_ops *bb_strategy_entry(void)
{
    return &rogue_ops;
}
