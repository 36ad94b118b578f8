/* A plugin from a future ABI: everything else is valid, so the loader must
 * refuse it for the version alone. */
#include <stddef.h>

#include "batchbroker/backend.h"

static int bad_init(const struct bb_param *params, size_t nparams, void **state, char *err,
                    size_t errlen)
{
    (void)params, (void)nparams, (void)err, (void)errlen;
    *state = NULL;
    return 0;
}

static int bad_process(void *state, struct bb_batch *batch)
{
    (void)state, (void)batch;
    return 0;
}

static void bad_fini(void *state)
{
    (void)state;
}

static const struct bb_backend_ops bad_ops = {
    .abi_version = 999,
    .struct_size = sizeof(struct bb_backend_ops),
    .name = "badabi",
    .init = bad_init,
    .process = bad_process,
    .fini = bad_fini,
};

BB_BACKEND_EXPORT const struct bb_backend_ops *bb_backend_entry(void)
{
    return &bad_ops;
}
