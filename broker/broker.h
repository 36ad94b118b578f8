/* Broker-wide state: the configuration, the topology, the models and the
 * workers (broker.c). What belongs to one dispatcher is in worker.h. */
#ifndef BB_BROKER_BROKER_H
#define BB_BROKER_BROKER_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "admission.h"
#include "config.h"
#include "registrar.h"
#include "sockpath.h"
#include "topology.h"

struct bb__model;
struct bb__worker;
struct bb__http;

struct bb__broker {
    struct bb__broker_config *cfg;  /* the running configuration; reload updates it */
    struct bb__topology topo;
    struct bb__model *models;       /* by id; a per_worker model's first replica */
    uint32_t nmodels;
    struct bb__model *replicas;     /* the other workers' replicas of per_worker models */
    uint32_t nreplicas;
    struct bb__worker *workers;     /* workers[0] accepts and handles reloads */
    uint32_t nworkers;
    int listen_fd;
    struct bb__sockfile sockfile;   /* listen_fd's file, removed at the stop */
    struct bb__http *http;         /* the metrics endpoint, or NULL */

    _Atomic uint32_t nclients;      /* sessions on every worker: max_clients */
    _Atomic uint32_t next_client_id;
    struct bb__admission adm;       /* sessions, slots and segment bytes per uid and pid */

    /* Segment registration off the dispatchers (registrar.c), started when
     * some model's backend registers memory. */
    struct bb__registrar reg;
    bool registers;

    _Atomic int *stop_flag;
    _Atomic int *reload_flag;       /* SIGHUP: see reload() in worker.c */
    const char *config_path;
    const char *const *overrides;
    int noverrides;
    _Atomic bool stopping;          /* intake stopped; draining */
    _Atomic uint32_t drained;       /* workers with nothing left to do after a stop */

    /* Stop-the-world for a reload: workers[0] raises `quiesce`, every other
     * worker parks (counted in `parked`) until it drops. */
    pthread_mutex_t qmu;
    pthread_cond_t qcv;
    _Atomic bool quiesce;
    uint32_t parked;
};

/* Start the models and the workers; take the socket and the metrics address
 * if listen. Returns 0, -1 on a system failure (a busy metrics port is one),
 * -2 when a configured model cannot start (logged). */
int bb__broker_init(struct bb__broker *b, struct bb__broker_config *cfg,
                    _Atomic int *stop_flag, bool listen);
/* Serve until a stop is requested and everything drained: workers[0] on the
 * calling thread, the others on threads of their own. Returns -1 where a
 * worker's thread could not start (the broker then stopped at once), else 0. */
int bb__broker_run(struct bb__broker *b);
void bb__broker_fini(struct bb__broker *b);

#endif
