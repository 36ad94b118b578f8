/* A dispatcher worker: one thread, one io_uring, the sessions assigned to it,
 * and the models it is home to (worker.c). */
#ifndef BB_BROKER_WORKER_H
#define BB_BROKER_WORKER_H

#include <liburing.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include "metrics.h"

struct bb__broker;
struct bb__batch;
struct bb__client;

struct bb__worker {
    struct bb__broker *b;
    uint32_t id;
    int node;                      /* NUMA node, -1: none */
    struct io_uring ring;
    int wake_fd;                   /* executors and signals ring it */
    uint64_t wake_buf;
    _Atomic int sleeping;
    _Atomic(struct bb__batch *) done; /* stack of finished batches */

    uint64_t *db_bufs;             /* per table index: doorbell read targets */
    struct bb__client **live;      /* attached, alive clients with a segment: the hot loops */
    uint32_t nlive;
    struct bb__client **dirty;     /* clients with unpublished completion entries */
    uint32_t ndirty;
    bool need_sweep;               /* a dead client may have dropped to 0 refs */
    bool accept_paused;            /* accept failed (EMFILE?): re-armed at the next heartbeat */

    uint64_t spin_ns;
    uint64_t last_heartbeat_ns;
    bool profile;                  /* [broker] profile: time the phases of batches */
    uint32_t profile_max_rate;     /* [broker] profile_max_rate */
    struct bb__worker_metrics metrics; /* written by this worker, read by scrapes */
};

/* Returns 0, or -1 on a system failure (logged). */
int bb__worker_init(struct bb__worker *w, struct bb__broker *b, uint32_t id, int node);
/* The loop, until shutdown completes. */
int bb__worker_run(struct bb__worker *w);
void bb__worker_fini(struct bb__worker *w);

/* Wake the worker from its io_uring wait (any thread, async-signal-safe). */
static inline void bb__worker_wake(struct bb__worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->wake_fd, &one, sizeof one);
    (void)n;
}

#endif
