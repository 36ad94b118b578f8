/* Broker-wide state: the configuration, the models, the session table and
 * the workers (broker.c). What belongs to one dispatcher is in worker.h. */
#ifndef BB_BROKER_BROKER_H
#define BB_BROKER_BROKER_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct bb__model;
struct bb__client;
struct bb__worker;
struct bb__http;

struct bb__broker {
    struct bb__broker_config *cfg;  /* the running configuration; reload updates it */
    struct bb__model *models;
    uint32_t nmodels;
    struct bb__worker *workers;
    uint32_t nworkers;
    int listen_fd;
    struct bb__http *http;         /* the metrics endpoint, or NULL */

    /* Session table: index and generation tag io_uring completions. */
    struct bb__client **clients;
    uint32_t max_clients, nclients;
    uint32_t next_client_id;
    uint32_t *client_gen;

    volatile sig_atomic_t *stop_flag;
    volatile sig_atomic_t *reload_flag;   /* SIGHUP: see reload() in worker.c */
    const char *config_path;
    const char *const *overrides;
    int noverrides;
    bool stopping;                 /* intake stopped; draining */
};

/* Start the models and the worker; take the socket and the metrics address
 * if listen. Returns 0, -1 on a system failure (a busy metrics port is one),
 * -2 when a configured model cannot start (logged). */
int bb__broker_init(struct bb__broker *b, struct bb__broker_config *cfg,
                    volatile sig_atomic_t *stop_flag, bool listen);
/* Serve until a stop is requested and everything drained. */
int bb__broker_run(struct bb__broker *b);
void bb__broker_fini(struct bb__broker *b);

#endif
