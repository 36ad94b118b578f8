/* Broker internals: the objects one dispatcher worker owns. */
#ifndef BB_BROKER_INTERNAL_H
#define BB_BROKER_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"
#include "batchbroker/protocol.h"
#include "config.h"
#include "metrics.h"
#include "plugin.h"
#include "log.h"
#include "ring_internal.h"

struct bb__client;
struct bb__model;
struct bb__worker;

/* Broker-side record of one request slot. Indexed by slot, so the broker
 * allocates nothing per request. `state` is written by the dispatcher, and by
 * an executor when it completes the request (before the client can see the
 * completion, so the client's next submission finds it IDLE). */
enum { BB__REQ_IDLE = 0, BB__REQ_QUEUED, BB__REQ_RUNNING };

struct bb__req {
    struct bb__client *cl;
    _Atomic uint8_t state;
    uint8_t prio;             /* 1..4 */
    uint8_t canceled;
    uint32_t slot, gen, model;
    uint32_t in_len, out_cap;
    void *in, *out;           /* views into the client's segment */
    uint64_t deadline_ns;     /* UINT64_MAX: none */
    uint64_t enq_ns, submit_ns, seq;
    uint32_t heap_pos;        /* index in its level's heap */
    struct bb__req *fifo_prev, *fifo_next; /* arrival order, for max_wait */
};

/* One request of a running batch: a copy of what completion needs, because
 * the slot may be resubmitted the moment its completion is visible. */
struct bb__entry {
    struct bb__client *cl;
    uint32_t slot, gen;
    uint8_t prio;
    uint64_t submit_ns, enq_ns;
};

struct bb__batch {
    struct bb__model *model;
    uint32_t n;
    int rc;
    uint64_t dispatch_ns, end_ns;
    struct bb__entry *ents;
    struct bb_view *inputs;
    struct bb_outbuf *outputs;
    uint8_t *prios;
    char errmsg[256];
    struct bb__batch *next;   /* free list, executor queue, done stack */
};

/* Requests of one priority level, earliest deadline first, then arrival. */
struct bb__heap {
    struct bb__req **v;
    uint32_t n, cap;
};

struct bb__instance {
    pthread_t thread;
    pthread_mutex_t mu;       /* held around process() and (un)register_memory */
    void *state;
    struct bb__model *model;
    bool started;
};

struct bb__model {
    uint32_t id;
    struct bb__model_config cfg;
    struct bb__plugin plugin;
    struct bb__worker *w;

    /* Queues: dispatcher-only. */
    struct bb__heap levels[4];     /* CRITICAL..LOW */
    struct bb__req *fifo_head, *fifo_tail;
    uint32_t queued;
    uint64_t seq;

    /* Executors. */
    uint32_t ninstances;           /* threads; 0 = inline in the dispatcher */
    struct bb__instance *inst;     /* max(1, ninstances) */
    uint32_t running;              /* batches handed out and not yet reaped */
    struct bb__batch *free_batches;
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    struct bb__batch *q_head, *q_tail;
    bool q_stop;

    struct bb__metrics metrics;
};

struct bb__client {
    uint32_t idx, gen;             /* table position; generation tags CQEs */
    uint32_t id;
    int sock, pidfd, doorbell, notify;
    pid_t pid;
    uid_t uid;
    bool attached, dead;
    uint64_t models_open;          /* bit per model id */

    char *base;
    size_t size;
    struct bb_shm_header *hdr;
    struct bb_shm_slot *slots;
    uint32_t nslots;
    uint64_t heap_lo, heap_hi;     /* valid buffer range, private copy */
    struct bb__ring sq, cq;
    uint32_t cq_unpublished;
    bool notify_due;
    struct bb__req *reqs;
    uint32_t refs;                 /* 1 while connected + 1 per queued/running request */
    struct bb__worker *w;
};

/* io_uring user_data: type, client table index and the index's generation,
 * so that a completion that outlives its client is recognised and dropped. */
enum { BB__UD_ACCEPT = 1, BB__UD_WAKE, BB__UD_SOCK, BB__UD_DOORBELL, BB__UD_PIDFD, BB__UD_CANCEL };

struct bb__worker {
    const struct bb__broker_config *cfg;
    int node;
    struct io_uring ring;
    int listen_fd;
    int wake_fd;                   /* executors and signals ring it */
    uint64_t wake_buf;
    _Atomic int sleeping;
    _Atomic(struct bb__batch *) done; /* stack of finished batches */

    struct bb__model *models;
    uint32_t nmodels;

    struct bb__client **clients;   /* table of max_clients */
    uint32_t max_clients, nclients;
    uint32_t next_client_id;
    uint32_t *client_gen;
    uint64_t *db_bufs;             /* per table index: doorbell read targets */
    bool need_sweep;               /* a dead client may have dropped to 0 refs */

    uint64_t spin_ns;
    uint64_t last_heartbeat_ns;
    volatile sig_atomic_t *stop_flag;
    bool stopping;
};

/* worker.c */
int bb__worker_init(struct bb__worker *w, const struct bb__broker_config *cfg, int node,
                    volatile sig_atomic_t *stop_flag);
int bb__worker_run(struct bb__worker *w);
void bb__worker_fini(struct bb__worker *w);
void bb__worker_wake(struct bb__worker *w);
void bb__worker_arm(struct bb__worker *w, struct bb__client *cl, int type);
void bb__client_kill(struct bb__worker *w, struct bb__client *cl, const char *why);
void bb__client_put(struct bb__worker *w, struct bb__client *cl);

/* control.c */
int bb__control_listen(const char *path);
void bb__control_accept(struct bb__worker *w, int fd);
void bb__control_readable(struct bb__worker *w, struct bb__client *cl);
void bb__client_destroy(struct bb__worker *w, struct bb__client *cl);

/* queue.c */
int bb__heap_init(struct bb__heap *h, uint32_t cap);
void bb__heap_fini(struct bb__heap *h);
void bb__queue_push(struct bb__model *m, struct bb__req *r);
struct bb__req *bb__queue_top(struct bb__model *m, int level);
void bb__queue_remove(struct bb__model *m, struct bb__req *r);
uint64_t bb__queue_earliest_deadline(struct bb__model *m);

/* batcher.c */
int bb__batcher_poll(struct bb__worker *w, struct bb__model *m, uint64_t now, uint64_t *next_ns);

/* executor.c */
int bb__model_start(struct bb__worker *w, struct bb__model *m, char *err, size_t errlen);
void bb__model_stop(struct bb__model *m);
void bb__executor_submit(struct bb__model *m, struct bb__batch *b);
void bb__batch_run(struct bb__model *m, struct bb__instance *in, struct bb__batch *b);
void bb__batch_reap(struct bb__worker *w, struct bb__batch *b);

/* Complete one request outside a batch (rejected, expired, canceled, shut down). */
void bb__complete_one(struct bb__worker *w, struct bb__req *r, int status);
/* Publish a completion to the client's slot and wake a sleeping waiter. */
void bb__publish(struct bb__client *cl, uint32_t slot, uint32_t gen, int status, uint32_t out_len);
/* Queue a completion-ring entry (published by bb__flush_client). */
void bb__cq_add(struct bb__client *cl, uint32_t slot);
void bb__flush_client(struct bb__client *cl);

#endif
