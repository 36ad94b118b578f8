/* Loads a backend plugin into the bench the way the broker does, for the
 * baselines that run the backend themselves (inproc, shm, uds). */
#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchbroker/client.h"
#include "bench.h"
#include "install_dir.h"

int bench_backend_load(const struct bench_model *m, struct bench_backend *b, char *err,
                       size_t errlen)
{
    char path[600];
    if (strchr(m->backend, '/')) {
        snprintf(path, sizeof path, "%s", m->backend);
    } else {
        /* The broker's precedence: plugin_dir, $BATCHBROKER_PLUGIN_DIR, built-in. */
        snprintf(path, sizeof path, "%s/bb_backend_%s.so", bb__plugin_dir(m->plugin_dir),
                 m->backend);
    }
    memset(b, 0, sizeof *b);
    b->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!b->dl) {
        snprintf(err, errlen, "%s", dlerror());
        return -1;
    }
    bb_backend_entry_fn entry = (bb_backend_entry_fn)dlsym(b->dl, BB_BACKEND_ENTRY_SYMBOL);
    b->ops = entry ? entry() : NULL;
    /* The baselines call process() themselves: a plugin of ABI 1 or 2 (read
     * no further than its version's size) with a synchronous process(). */
    const struct bb_backend_ops *o = b->ops;
    bool v1 = o && o->abi_version == 1 && o->struct_size == BB_BACKEND_OPS_V1_SIZE;
    bool v2 = o && o->abi_version == BB_BACKEND_ABI_VERSION && o->struct_size == sizeof *o;
    if (!(v1 || v2) || !o->process || !o->fini || !(o->init || (v2 && o->init2))) {
        snprintf(err, errlen, "%s: not a batchbroker backend of ABI 1 or 2 with process()", path);
        dlclose(b->dl);
        b->dl = NULL;
        return -1;
    }
    b->v2 = v2;
    for (size_t i = 0; i < m->nparams; i++)
        b->params[i] = (struct bb_param){m->params[i].key, m->params[i].value};
    b->nparams = m->nparams;
    b->max_batch_size = m->max_batch_size ? m->max_batch_size : 64;
    return 0;
}

static void log_line(void *ctx, int level, const char *msg)
{
    (void)ctx;
    if (level <= BB_BACKEND_LOG_WARN)
        fprintf(stderr, "bb-bench: backend: %s\n", msg);
}

int bench_backend_state(const struct bench_backend *b, void **state, char *err, size_t errlen)
{
    char msg[256] = "";
    int rc;
    if (b->v2 && b->ops->init2) {
        struct bb_init_args a = {.size = sizeof a, .instance = 0, .instances = 1,
                                 .numa_node = -1, .max_batch_size = b->max_batch_size,
                                 .model = "bb-bench", .params = b->params,
                                 .nparams = b->nparams, .log = log_line};
        rc = b->ops->init2(&a, state, msg, sizeof msg);
    } else {
        rc = b->ops->init(b->params, b->nparams, state, msg, sizeof msg);
    }
    if (rc < 0) snprintf(err, errlen, "backend %s: %s", b->ops->name, msg);
    return rc;
}

void bench_backend_run(const struct bench_backend *b, void *state, struct bb_batch *batch)
{
    int rc = b->ops->process(state, batch);
    if (rc < 0)
        for (uint32_t i = 0; i < batch->n; i++) batch->outputs[i].status = BB_EBACKEND;
}
