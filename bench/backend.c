/* Loads a backend plugin into the bench the way the broker does, for the
 * baselines that run the backend themselves (inproc, shm, uds). */
#include <dlfcn.h>
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
    if (!b->ops || b->ops->abi_version != BB_BACKEND_ABI_VERSION ||
        b->ops->struct_size < sizeof *b->ops || !b->ops->init || !b->ops->process ||
        !b->ops->fini) {
        snprintf(err, errlen, "%s: not a batchbroker backend of ABI %u", path,
                 BB_BACKEND_ABI_VERSION);
        dlclose(b->dl);
        b->dl = NULL;
        return -1;
    }
    for (size_t i = 0; i < m->nparams; i++)
        b->params[i] = (struct bb_param){m->params[i].key, m->params[i].value};
    b->nparams = m->nparams;
    return 0;
}

int bench_backend_state(const struct bench_backend *b, void **state, char *err, size_t errlen)
{
    char msg[256] = "";
    int rc = b->ops->init(b->params, b->nparams, state, msg, sizeof msg);
    if (rc < 0) snprintf(err, errlen, "backend %s: %s", b->ops->name, msg);
    return rc;
}

void bench_backend_run(const struct bench_backend *b, void *state, struct bb_batch *batch)
{
    int rc = b->ops->process(state, batch);
    if (rc < 0)
        for (uint32_t i = 0; i < batch->n; i++) batch->outputs[i].status = BB_EBACKEND;
}
