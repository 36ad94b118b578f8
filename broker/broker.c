/* The broker: the session table, the models and the workers, from start to
 * exit. */
#include "broker.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control.h"
#include "http.h"
#include "log.h"
#include "model.h"
#include "session.h"
#include "worker.h"

int bb__broker_init(struct bb__broker *b, struct bb__broker_config *cfg,
                    volatile sig_atomic_t *stop_flag, bool listen)
{
    memset(b, 0, sizeof *b);
    b->cfg = cfg;
    b->stop_flag = stop_flag;
    b->listen_fd = -1;
    b->max_clients = cfg->max_clients;
    b->clients = calloc(b->max_clients, sizeof *b->clients);
    b->client_gen = calloc(b->max_clients, sizeof *b->client_gen);
    b->models = calloc(cfg->nmodels ? cfg->nmodels : 1, sizeof *b->models);
    b->workers = calloc(1, sizeof *b->workers);
    if (!b->clients || !b->client_gen || !b->models || !b->workers) {
        bb_error("out of memory");
        return -1;
    }
    b->nworkers = 1;
    if (bb__worker_init(&b->workers[0], b, 0, 0) < 0)
        return -1;
    for (size_t i = 0; i < cfg->nmodels; i++) {
        struct bb__model *m = &b->models[i];
        m->id = (uint32_t)i;
        m->cfg = cfg->models[i];
        b->nmodels = (uint32_t)i + 1;
        char err[512];
        if (bb__model_start(m, &b->workers[0], cfg->plugin_dir, err, sizeof err) < 0) {
            bb_error("%s", err);
            return -2; /* a model the configuration describes cannot start */
        }
        bb_info("model %s: backend %s, max_batch_size %u, max_wait_us %u, instances %u",
                m->cfg.name, m->plugin.ops->name, m->cfg.max_batch_size, m->cfg.max_wait_us,
                m->cfg.instances);
    }
    if (!listen)
        return 0;
    b->listen_fd = bb__control_listen(cfg->socket_path);
    if (b->listen_fd < 0)
        return -1;
    return bb__http_start(b, &b->http);
}

int bb__broker_run(struct bb__broker *b)
{
    return bb__worker_run(&b->workers[0]);
}

void bb__broker_fini(struct bb__broker *b)
{
    /* The metrics server first (it reads the models and workers), then the
     * sessions (backends unregister their segments), then the models
     * (executors stop), then the workers whose wake eventfds they used. */
    bb__http_stop(b->http);
    b->http = NULL;
    for (uint32_t i = 0; b->clients && i < b->max_clients; i++) {
        struct bb__client *c = b->clients[i];
        if (c) {
            bb__session_kill(c->w, c, "broker exit");
            c->refs = 0;
            bb__session_destroy(c->w, c);
        }
    }
    for (uint32_t i = 0; i < b->nmodels; i++)
        bb__model_stop(&b->models[i]);
    for (uint32_t i = 0; b->workers && i < b->nworkers; i++)
        bb__worker_fini(&b->workers[i]);
    if (b->listen_fd >= 0) {
        close(b->listen_fd);
        unlink(b->cfg->socket_path);
    }
    free(b->workers);
    free(b->models);
    free(b->clients);
    free(b->client_gen);
}
