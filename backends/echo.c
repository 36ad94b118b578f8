/* echo backend: each output is a copy of its input. The broker's default model,
 * and the backend tests and benchmarks use to measure the broker alone. */
#include <stdio.h>
#include <string.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"

static int echo_init(const struct bb_param *params, size_t nparams, void **state, char *err,
                     size_t errlen)
{
    /* Strict: a param meant for another backend is a config mistake worth
     * reporting rather than ignoring. */
    if (nparams > 0) {
        snprintf(err, errlen, "echo: unknown param \"%s\" (echo takes none)", params[0].key);
        return BB_EINVAL;
    }
    *state = NULL; /* stateless */
    return 0;
}

static int echo_process(void *state, struct bb_batch *batch)
{
    (void)state;
    for (uint32_t i = 0; i < batch->n; i++) {
        const struct bb_view *in = &batch->inputs[i];
        struct bb_outbuf *out = &batch->outputs[i];
        /* Never write past cap, however large the (client-controlled) input. */
        size_t len = in->len <= out->cap ? in->len : out->cap;
        if (len) memcpy(out->ptr, in->ptr, len);
        out->len = len;
        if (in->len > out->cap) out->status = BB_ETOOBIG;
    }
    return 0;
}

static void echo_fini(void *state)
{
    (void)state;
}

static const struct bb_backend_ops echo_ops = {
    .abi_version = BB_BACKEND_ABI_VERSION,
    .struct_size = sizeof(struct bb_backend_ops),
    .name = "echo",
    .hardware = BB_BACKEND_HW_CPU,
    .init = echo_init,
    .process = echo_process,
    .fini = echo_fini,
};

BB_BACKEND_EXPORT const struct bb_backend_ops *bb_backend_entry(void)
{
    return &echo_ops;
}
