/* The broker: the topology, the models and the workers, from start to exit.
 *
 * One worker per NUMA node by default (`workers = auto`): each serves the
 * clients of its node, on that node's CPUs, with their segments placed in
 * that node's memory. A model lives on one worker, its home (model i on
 * worker i mod N), and its executors run on the home's node; requests of
 * clients served elsewhere reach it through the mailboxes (mailbox.h), so
 * every batch is still formed from all the clients of every worker. */
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
                    _Atomic int *stop_flag, bool listen)
{
    memset(b, 0, sizeof *b);
    b->cfg = cfg;
    b->stop_flag = stop_flag;
    b->listen_fd = -1;
    pthread_mutex_init(&b->qmu, NULL);
    pthread_cond_init(&b->qcv, NULL);
    char err[1024];
    if (bb__topo_init(&b->topo, cfg->numa_fake_nodes, err, sizeof err) < 0) {
        bb_error("%s", err);
        return -2;
    }
    uint32_t n = cfg->workers ? cfg->workers : (uint32_t)b->topo.nnodes;
    b->models = calloc(cfg->nmodels ? cfg->nmodels : 1, sizeof *b->models);
    b->workers = calloc(n, sizeof *b->workers);
    if (!b->models || !b->workers || bb__admission_init(&b->adm, cfg->max_clients) < 0) {
        bb_error("out of memory");
        return -1;
    }
    b->nworkers = n;
    b->nmodels = (uint32_t)cfg->nmodels;
    for (uint32_t i = 0; i < n; i++) {
        int node = (int)(i % (uint32_t)b->topo.nnodes);
        if (bb__worker_init(&b->workers[i], b, i, node) < 0)
            return -1;
    }
    if (n > 1 || b->topo.nnodes > 1)
        bb_info("%u worker(s) on %d %sNUMA node(s)", n, b->topo.nnodes,
                b->topo.fake ? "fake " : "");
    uint32_t nrep = 0;
    for (uint32_t i = 0; i < b->nmodels; i++)
        if (cfg->models[i].formation == BB__FORMATION_PER_WORKER)
            nrep += n - 1;
    if (nrep && !(b->replicas = calloc(nrep, sizeof *b->replicas))) {
        bb_error("out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < b->nmodels; i++) {
        /* The home first (b->models[i]), then, per_worker, a replica on each
         * worker after it. */
        bool per_worker = cfg->models[i].formation == BB__FORMATION_PER_WORKER;
        struct bb__model **link = NULL;
        for (uint32_t k = 0; k < (per_worker ? n : 1); k++) {
            struct bb__model *m = k ? &b->replicas[b->nreplicas++] : &b->models[i];
            struct bb__worker *w = &b->workers[(i + k) % n];
            m->id = i;
            m->cfg = cfg->models[i];
            m->replica = k;
            if (link)
                *link = m;
            if (bb__model_start(m, w, cfg->plugin_dir, err, sizeof err) < 0) {
                bb_error("%s", err);
                return -2; /* a model the configuration describes cannot start */
            }
            link = &m->sibling;
            w->route[i] = m;
            b->registers = b->registers || bb__model_registers(m);
        }
        for (struct bb__model *m = &b->models[i]; m->sibling; m = m->sibling)
            m->metrics.next = &m->sibling->metrics;
        for (uint32_t k = 0; k < n; k++)
            if (!b->workers[k].route[i])
                b->workers[k].route[i] = &b->models[i];
        struct bb__model *m = &b->models[i];
        if (per_worker && n > 1 && !m->parallel)
            bb_warn("model %s: formation = per_worker with a GPU or asynchronous backend: each "
                    "of the %u workers forms batches of its own clients only, smaller than one "
                    "shared queue's; formation = shared keeps them whole", m->cfg.name, n);
        bb_info("model %s: backend %s, max_batch_size %u, max_wait_us %u, instances %u, %s %u%s",
                m->cfg.name, m->plugin.ops->name, m->cfg.max_batch_size, m->cfg.max_wait_us,
                m->cfg.instances, per_worker ? "formation per_worker on" : "worker",
                per_worker ? n : m->w->id, per_worker ? " worker(s)" : "");
    }
    if (b->registers && bb__registrar_start(&b->reg, b, err, sizeof err) < 0) {
        bb_error("%s", err);
        return -1;
    }
    if (!listen)
        return 0;
    b->listen_fd = bb__control_listen(cfg->socket_path, &b->sockfile);
    if (b->listen_fd < 0)
        return -1;
    return bb__http_start(b, &b->http);
}

static void *worker_main(void *arg)
{
    bb__worker_run(arg);
    return NULL;
}

int bb__broker_run(struct bb__broker *b)
{
    bool failed = false;
    for (uint32_t i = 1; i < b->nworkers; i++) {
        int rc = pthread_create(&b->workers[i].thread, NULL, worker_main, &b->workers[i]);
        if (rc) {
            bb_error("cannot start worker %u: %s", i, strerror(rc));
            failed = true; /* the exit status says so: a service manager restarts it */
            atomic_store(&b->stopping, true);
            /* Those that never ran have nothing to drain: the shutdown waits
             * for every worker to count itself drained. */
            atomic_fetch_add(&b->drained, b->nworkers - i);
            break;
        }
        b->workers[i].started = true;
        bb__thread_name(b->workers[i].thread, "bb-worker%u", i); /* 0 is the main thread */
    }
    int rc = bb__worker_run(&b->workers[0]);
    for (uint32_t i = 1; i < b->nworkers; i++)
        if (b->workers[i].started)
            pthread_join(b->workers[i].thread, NULL);
    return failed ? -1 : rc;
}

void bb__broker_fini(struct bb__broker *b)
{
    /* The metrics server first (it reads the models and workers), then the
     * sessions (the registration thread unregisters and unmaps their
     * segments: it finishes what it has first, and every release after),
     * then the models (executors stop), then the workers whose wake eventfds
     * they used. */
    bb__http_stop(b->http);
    b->http = NULL;
    bb__registrar_quiesce(&b->reg);
    for (uint32_t k = 0; b->workers && k < b->nworkers; k++) {
        struct bb__worker *w = &b->workers[k];
        w->exiting = true;
        for (uint32_t i = 0; w->clients && i < b->cfg->max_clients; i++) {
            struct bb__client *c = w->clients[i];
            if (c) {
                bb__session_kill(w, c, "broker exit");
                c->refs = 0;
                bb__session_destroy(w, c);
            }
        }
    }
    bb__registrar_stop(&b->reg);
    for (uint32_t i = 0; b->models && i < b->nmodels; i++)
        bb__model_stop(&b->models[i]);
    for (uint32_t i = 0; i < b->nreplicas; i++)
        bb__model_stop(&b->replicas[i]);
    for (uint32_t i = 0; b->workers && i < b->nworkers; i++)
        if (b->workers[i].b)
            bb__worker_fini(&b->workers[i]);
    if (b->listen_fd >= 0) {
        close(b->listen_fd);
        bb__sockpath_remove(b->cfg->socket_path, &b->sockfile);
    }
    free(b->workers);
    free(b->models);
    free(b->replicas);
    bb__admission_fini(&b->adm);
}
