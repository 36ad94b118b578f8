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
#include "batchbroker/strategy.h"
#include "adaptive.h"
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
 * completion, so the client's next submission finds it IDLE). GROUPED: a
 * deduplicated request riding on another's computation (dedup.c). */
enum { BB__REQ_IDLE = 0, BB__REQ_QUEUED, BB__REQ_RUNNING, BB__REQ_GROUPED };

struct bb__group;

struct bb__req {
    struct bb__client *cl;
    _Atomic uint8_t state;
    uint8_t prio;             /* 1..4, as reported */
    uint8_t level;            /* queue level 0..3 */
    uint8_t own_deadline;     /* the client gave timeout_us: orders by deadline */
    uint32_t slot, gen, model;
    uint32_t in_len, out_cap;
    void *in, *out;           /* what the backend sees: the client's segment, or a dedup group's buffers */
    void *cl_out;             /* the client's own output buffer and capacity */
    uint32_t cl_out_cap;
    uint64_t bytes;           /* in_len + cl_out_cap: what the memory limits count */
    uint64_t deadline_ns;     /* UINT64_MAX: none */
    uint64_t enq_ns, submit_ns, seq;
    uint64_t ftag, fstart;    /* fair-queueing finish and start tags */
    uint64_t okey;            /* level order: own deadline, else UINT64_MAX */
    uint32_t pos, dl_pos;     /* indices in the level heap and the deadline heap */
    struct bb__req *fifo_prev, *fifo_next; /* arrival order within the level */
    struct bb__group *group;  /* dedup group, or NULL */
    struct bb__req *group_next;
};

/* One request of a running batch: a copy of what completion needs, because
 * the slot may be resubmitted the moment its completion is visible. */
struct bb__entry {
    struct bb__client *cl;
    uint32_t slot, gen;
    uint8_t prio;
    uint64_t submit_ns, enq_ns, bytes;
    struct bb__group *group;  /* completed by the dispatcher for every member */
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

/* A binary heap of requests; `which` selects the order and the index field
 * (0: a level's dispatch order, pos; 1: deadline order, dl_pos). */
struct bb__heap {
    struct bb__req **v;
    uint32_t n, cap;
    int which;
    bool edf;                 /* level order: own deadlines first */
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

    /* Queues: dispatcher-only (queue.c). */
    struct bb__heap levels[4];     /* CRITICAL..LOW */
    struct bb__heap deadlines;     /* every queued or grouped request with a deadline */
    struct bb__req *fifo_head[4], *fifo_tail[4];
    uint32_t queued;               /* in the level heaps */
    uint32_t grouped;              /* dedup members riding on a queued twin */
    uint64_t seq;
    uint64_t vtime[4];             /* fair-queueing virtual time per level */
    uint64_t bytes;                /* input + output bytes queued and running */
    uint64_t level_bytes[4];       /* input + output bytes queued per level */
    struct bb__req **scratch;      /* max_batch_size entries, for take_many */
    uint64_t memory_limit;         /* bytes, 0 = none */
    uint32_t nweights;
    struct { uint32_t uid, weight; } weights[32];

    /* Strategy (strategy.c). */
    const struct bb_strategy_ops *strategy;
    void *strategy_state;
    void *strategy_dl;
    uint64_t expected_batch_ns;    /* EWMA of batch service time */
    struct bb__adaptive adapt;     /* adaptive.c: always fed, obeyed if cfg.adaptive */
    uint32_t pinned;               /* operator pin of the batch target; 0 = none */
    bool filling;                  /* last pass: requests wait for the batch to fill */
    uint32_t fill_wait_us;         /* the wait the strategy was given then */

    struct bb__dedup *dedup;       /* dedup.c; NULL when never enabled */

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

struct bb__client_model {
    uint32_t inflight;             /* queued + running on the model */
    uint32_t ftag_inc;             /* fair-queueing tag step: BB__FAIR_SCALE / weight */
    uint64_t last_ftag[4];
};
#define BB__FAIR_SCALE 1000u

struct bb__client {
    uint32_t idx, gen;             /* table position; generation tags CQEs */
    uint32_t id;
    int sock, pidfd, doorbell, notify;
    pid_t pid;
    uid_t uid;
    bool attached, dead;
    uint64_t accepted_ns;          /* a peer that sends no HELLO is dropped */
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
    struct bb__client_model *cm;   /* per model: fairness and in-flight counts */
    struct bb__worker *w;
    uint32_t live_idx;             /* position in w->live while attached and alive */
    bool dirty;                    /* has completion-ring entries or a wake-up to send */
    bool wake_due;                 /* the dispatcher published completions this pass */
};

/* io_uring user_data: type, client table index and the index's generation,
 * so that a completion that outlives its client is recognised and dropped. */
enum { BB__UD_ACCEPT = 1, BB__UD_WAKE, BB__UD_SOCK, BB__UD_DOORBELL, BB__UD_PIDFD, BB__UD_CANCEL };

struct bb__worker {
    struct bb__broker_config *cfg;  /* the running configuration; reload updates it */
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
    struct bb__client **live;      /* attached, alive clients with a segment: the hot loops */
    uint32_t nlive;
    struct bb__client **dirty;     /* clients with unpublished completion entries */
    uint32_t ndirty;
    bool need_sweep;               /* a dead client may have dropped to 0 refs */
    bool accept_paused;            /* accept failed (EMFILE?): re-armed at the next heartbeat */

    uint64_t spin_ns;
    uint64_t last_heartbeat_ns;
    volatile sig_atomic_t *stop_flag;
    volatile sig_atomic_t *reload_flag;   /* SIGHUP: see reload() in worker.c */
    const char *config_path;
    const char *const *overrides;
    int noverrides;
    bool stopping;
};

/* worker.c */
/* Returns 0, -1 on a system failure, -2 when a configured model cannot start. */
int bb__worker_init(struct bb__worker *w, struct bb__broker_config *cfg, int node,
                    volatile sig_atomic_t *stop_flag, bool listen);
int bb__worker_run(struct bb__worker *w);
void bb__worker_fini(struct bb__worker *w);
void bb__worker_wake(struct bb__worker *w);
void bb__worker_arm(struct bb__worker *w, struct bb__client *cl, int type);
void bb__client_kill(struct bb__worker *w, struct bb__client *cl, const char *why);
void bb__client_put(struct bb__worker *w, struct bb__client *cl);
void bb__client_live(struct bb__worker *w, struct bb__client *cl);

/* control.c */
int bb__control_listen(const char *path);
void bb__control_accept(struct bb__worker *w, int fd);
void bb__control_readable(struct bb__worker *w, struct bb__client *cl);
void bb__client_destroy(struct bb__worker *w, struct bb__client *cl);

/* queue.c */
int bb__heap_init(struct bb__heap *h, uint32_t cap, int which, bool edf);
int bb__heap_reserve(struct bb__heap *h, uint32_t cap);
void bb__heap_fini(struct bb__heap *h);
void bb__queue_push(struct bb__model *m, struct bb__req *r);
struct bb__req *bb__queue_top(struct bb__model *m, int level);
void bb__queue_remove(struct bb__model *m, struct bb__req *r);
void bb__deadline_push(struct bb__model *m, struct bb__req *r);
void bb__deadline_remove(struct bb__model *m, struct bb__req *r);
struct bb__req *bb__deadline_top(struct bb__model *m);
struct bb__req *bb__level_oldest(struct bb__model *m, int level);
/* Empty a level at once (heap order, not sorted): out gets its requests,
 * still in the deadline heap. Returns how many. */
uint32_t bb__queue_take_level(struct bb__model *m, int level, struct bb__req **out);

/* batcher.c */
int bb__batcher_poll(struct bb__worker *w, struct bb__model *m, uint64_t now, uint64_t *next_ns);
/* Remove a queued or grouped request from everything that holds it (queue,
 * deadline heap, dedup group) without completing it. */
void bb__request_unlink(struct bb__worker *w, struct bb__req *r);

/* strategy.c */
int bb__strategy_load(struct bb__model *m, char *err, size_t errlen);
void bb__strategy_unload(struct bb__model *m);

/* dedup.c */
struct bb__dedup;
int bb__dedup_init(struct bb__model *m);
void bb__dedup_fini(struct bb__model *m);
/* Returns 2 when r was answered from the cache, 1 when it joined an
 * in-flight twin (nothing more to do), 0 when r goes on as a new group's
 * representative (its views now point at the group's private buffers), 3
 * when it goes on undeduplicated (dedup_memory_mb is used up), or a negative
 * BB_E* code. */
int bb__dedup_submit(struct bb__worker *w, struct bb__model *m, struct bb__req *r, uint64_t now);
/* Detach r from its group; promotes another member if r represented it. */
void bb__dedup_leave(struct bb__worker *w, struct bb__model *m, struct bb__req *r);
/* The group's batch finished: answer every member, fill the cache. */
void bb__dedup_complete(struct bb__worker *w, struct bb__model *m, struct bb__group *g, int status,
                        size_t out_len, uint64_t end_ns);
/* The group's representative was taken into a batch. */
void bb__dedup_dispatched(struct bb__model *m, struct bb__group *g);
void bb__dedup_expire_cache(struct bb__model *m, uint64_t now);

/* executor.c */
int bb__model_start(struct bb__worker *w, struct bb__model *m, char *err, size_t errlen);
void bb__model_stop(struct bb__model *m);
void bb__executor_submit(struct bb__model *m, struct bb__batch *b);
void bb__batch_run(struct bb__model *m, struct bb__instance *in, struct bb__batch *b);
void bb__batch_reap(struct bb__worker *w, struct bb__batch *b);

/* Complete one request outside a batch (rejected, expired, canceled, shut down). */
void bb__complete_one(struct bb__worker *w, struct bb__req *r, int status);
/* Publish a completion to the client's slot (no wake-up). */
void bb__publish(struct bb__client *cl, uint32_t slot, uint32_t gen, int status, uint32_t out_len);
/* Wake the client's sleeping waiters, if any, after publishing. */
void bb__wake_client(struct bb__client *cl);
/* Dispatcher: publish, queue a completion-ring entry and a wake-up; both go
 * out in bb__flush_client at the end of the pass. */
void bb__answer(struct bb__client *cl, uint32_t slot, uint32_t gen, int status, uint32_t out_len);
/* Queue a completion-ring entry (published by bb__flush_client). */
void bb__cq_add(struct bb__client *cl, uint32_t slot);
void bb__flush_client(struct bb__client *cl);

#endif
