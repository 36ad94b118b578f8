/* A dispatcher worker: one thread, one io_uring, the sessions assigned to it,
 * and the models it is home to (worker.c). */
#ifndef BB_BROKER_WORKER_H
#define BB_BROKER_WORKER_H

#include <liburing.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include "config.h"
#include "mailbox.h"
#include "metrics.h"
#include "util_internal.h"

struct bb__broker;
struct bb_shm_worker;
struct bb__batch;
struct bb__client;

struct bb__worker {
    struct bb__broker *b;
    uint32_t id;
    int node;                      /* index into the broker's topology */
    pthread_t thread;              /* workers other than the first */
    bool started;
    struct io_uring ring;
    struct io_uring waker;         /* wake_offload_ms: its kernel thread wakes clients */
    bool waker_on;
    int wake_fd;                   /* executors and signals ring it */
    struct bb_shm_worker *page;    /* the worker page its clients map read-only */
    int page_fd;
    bool futex_bell;               /* clients ring page->shm_doorbell, else their eventfds */
    uint64_t wake_buf;
    _Atomic int sleeping;
    _Atomic(struct bb__batch *) done; /* stack of finished batches */
    _Atomic(struct bb__client *) registered; /* sessions back from the registration thread */

    struct bb__mailbox mb;         /* messages from the other workers (mailbox.h) */
    /* Per model id, the model this worker files its clients' requests with:
     * b->models[id] (formation = shared: at its home, maybe another worker),
     * or its own replica (per_worker). Every model whose home is this worker
     * is here once. Set before the workers start, read-only after. */
    struct bb__model *route[BB_MAX_MODELS];

    /* Its session table: index and generation tag io_uring completions. */
    struct bb__client **clients;
    uint32_t *client_gen;
    _Atomic uint32_t nclients;     /* in the table, connections in their handshake included */
    _Atomic uint32_t placed;       /* sessions placed here at HELLO and not yet destroyed */
    bool exiting;                  /* past its loop: the other workers may be gone */
    uint64_t *db_bufs;             /* per table index: doorbell read targets */
    struct bb__client **live;      /* attached, alive clients with a segment: the hot loops */
    uint32_t nlive;
    struct bb__client **dirty;     /* clients with unpublished completion entries */
    uint32_t ndirty;
    bool need_sweep;               /* a dead client may have dropped to 0 refs */
    bool accept_paused;            /* accept failed (EMFILE?): re-armed at the next heartbeat */
    bool ctl_backlog;              /* a session's socket was left with messages (control.c) */

    uint64_t spin_ns;
    struct bb__spin_guard spin_guard; /* its spins on a busy host (bb__spin_yield) */
    bool futex_ops;                /* the kernel's io_uring has futex wait and wake */
    uint64_t last_heartbeat_ns;
    uint64_t passes;               /* of its loop: per-pass budgets (control.c) */
    bool stopping;                 /* this worker has begun the shutdown */
    bool drained;                  /* and has nothing left of its own */
    bool profile;                  /* [broker] profile: time the phases of batches */
    uint32_t profile_max_rate;     /* [broker] profile_max_rate */
    struct bb__worker_metrics metrics; /* written by this worker, read by scrapes */
};

/* The spin rule of dispatchers and executors: spinning pays only where the
 * work it waits for comes within spin_us. A wait (spin and sleep together)
 * that a spin would have caught restores the credit; one that it would not
 * have spends one; with none left the thread sleeps at once. */
#define BB__SPIN_TRIES 3
static inline uint8_t bb__spin_credit(uint8_t credit, uint64_t waited_ns, uint64_t spin_ns)
{
    return waited_ns <= spin_ns ? BB__SPIN_TRIES : (uint8_t)(credit - (credit > 0));
}

/* Returns 0, or -1 on a system failure (logged). Runs on the thread that
 * creates the broker; the worker pins itself to node when it starts. */
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
