/* Backend tables the loader must refuse, one per build of this file
 * (-DBAD_<what>, tests/plugin_test.cmake): everything else about each is
 * valid, so the refusal is for that one defect. */
#include <stddef.h>

#include "batchbroker/backend.h"

/* Each build uses some of these. */
#define MAYBE_UNUSED __attribute__((unused))

MAYBE_UNUSED static int t_init(const struct bb_param *params, size_t nparams, void **state, char *err,
                  size_t errlen)
{
    (void)params, (void)nparams, (void)err, (void)errlen;
    *state = NULL;
    return 0;
}

MAYBE_UNUSED static int t_init2(const struct bb_init_args *a, void **state, char *err, size_t errlen)
{
    (void)a, (void)err, (void)errlen;
    *state = NULL;
    return 0;
}

MAYBE_UNUSED static int t_process(void *state, struct bb_batch *batch)
{
    (void)state, (void)batch;
    return 0;
}

MAYBE_UNUSED static int t_submit(void *state, struct bb_batch *batch)
{
    (void)state;
    batch->complete(batch, 0);
    return 0;
}

MAYBE_UNUSED static int t_register(void *state, void *base, size_t len)
{
    (void)state, (void)base, (void)len;
    return 0;
}

MAYBE_UNUSED static int t_register_segment(void *state, const struct bb_segment *seg)
{
    (void)state, (void)seg;
    return 0;
}

MAYBE_UNUSED static void t_fini(void *state)
{
    (void)state;
}

static const struct bb_backend_ops ops = {
#if defined(BAD_V1_SIZE)
    /* Claims version 1 with the version-2 size. */
    .abi_version = 1,
    .struct_size = sizeof(struct bb_backend_ops),
#elif defined(BAD_V2_SIZE)
    /* Claims version 2 with the version-1 size. */
    .abi_version = 2,
    .struct_size = BB_BACKEND_OPS_V1_SIZE,
#else
    .abi_version = BB_BACKEND_ABI_VERSION,
    .struct_size = sizeof(struct bb_backend_ops),
#endif
    .name = "badtable",
    .fini = t_fini,
#if defined(BAD_TWO_INITS)
    .init = t_init,
    .init2 = t_init2,
#else
    .init = t_init,
#endif
#if defined(BAD_NO_RUN)
    /* neither process nor submit */
#elif defined(BAD_NO_INFLIGHT)
    .submit = t_submit, /* max_inflight left 0 */
#else
    .process = t_process,
#endif
#if defined(BAD_V1_REGISTER)
    .register_memory = t_register, /* version 1's, in a version-2 table */
#elif defined(BAD_HALF_REGISTER)
    .register_segment = t_register_segment, /* without unregister_segment */
#endif
};

BB_BACKEND_EXPORT const struct bb_backend_ops *bb_backend_entry(void)
{
    return &ops;
}
