/* A request as the broker tracks it, and a batch of them. */
#ifndef BB_BROKER_REQUEST_H
#define BB_BROKER_REQUEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "batchbroker/backend.h"

struct bb__client;
struct bb__model;
struct bb__group;
struct bb__instance;

/* Broker-side record of one request slot. Indexed by slot, so the broker
 * allocates nothing per request. Who owns it follows `state`: IDLE, the
 * worker that serves the client (its intake fills it in); SUBMITTED, on its
 * way to the model's home (mailbox.h); QUEUED, GROUPED (a deduplicated
 * request riding on another's computation, dedup.c) and RUNNING, the home.
 * The home, or an executor, stores IDLE with release before it publishes the
 * completion, so that the client's next submission finds it idle, and does
 * not touch the record after that. */
enum { BB__REQ_IDLE = 0, BB__REQ_SUBMITTED, BB__REQ_QUEUED, BB__REQ_RUNNING, BB__REQ_GROUPED };

struct bb__req {
    struct bb__client *cl;
    _Atomic uint8_t state;
    uint8_t prio;             /* 1..4, as reported */
    uint8_t level;            /* queue level 0..3 */
    uint8_t own_deadline;     /* the client gave timeout_us: orders by deadline */
    uint32_t slot, gen, model;
    /* Submissions of this record so far, written by its client's worker only
     * (intake.c): a cancel names the submission it is for by this, never by
     * the client's gen, which the client may use again. */
    _Atomic uint32_t sub;
    /* The submission a cancel was last sent home for (intake.c), by the same
     * worker: the home needs one, and each repeat was a mailbox message. */
    uint32_t cancel_sub;
    /* As the client asked, for the model's home to interpret (enqueue.c). */
    uint32_t timeout_us, flags;
    int32_t status;           /* < 0: the intake refused it, the home answers */
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
    /* A fair-queueing round (queue.c): the requests of one client that share
     * their tags sit behind one heap entry, its head, in arrival order. */
    struct bb__req *rhead, *rtail, *rnext;
    /* While r heads a round: its client's record of that round
     * (round_head in enqueue.c), which queue.c moves on or clears when r
     * leaves its heap place, so that it never names a record that left. */
    struct bb__req **round_ref;
    uint64_t rseq;            /* the head's arrival sequence: the round's heap key */
    struct bb__req *fifo_prev, *fifo_next; /* arrival order within the level */
    struct bb__group *group;  /* dedup group, or NULL */
    struct bb__req *group_next;
};

/* One request of a running batch: a copy of what completion needs, because
 * the slot may be resubmitted the moment its completion is visible. */
struct bb__entry {
    struct bb__client *cl;
    struct bb__req *req;      /* its record, for the store that frees it: nothing else */
    uint32_t slot, gen;
    uint8_t prio;
    uint32_t out_cap;         /* outputs[i].cap as given: the backend may write that one */
    uint64_t submit_ns, bytes;
    struct bb__group *group;  /* completed by the dispatcher for every member */
};

/* A batch's timestamps (CLOCK_MONOTONIC ns), the bounds of the profiler's
 * phases (docs/operations.md, "Phases"). cut: the dispatcher's clock reading
 * that cut the batch (its pass's, or the end of the inline batch before it);
 * start: the backend is called; end: it returned; done: every completion is
 * published and its client woken. Without the profiler only cut and end are
 * read, start = cut and done = end. */
struct bb__stamps {
    uint64_t cut, start, end, done;
};

struct bb__batch {
    struct bb__model *model;
    uint32_t n;
    int rc;
    bool profile;             /* take start and done (two clock reads a batch) */
    bool overlapped;          /* work waited while it ran (executor.c, the quiet rule) */
    uint32_t seq;             /* its model's hand-off count when it was handed out */
    struct bb__stamps ts;
    struct bb__entry *ents;
    struct bb_view *inputs;
    struct bb_outbuf *outputs;
    uint8_t *prios;
    uint32_t *segs;           /* segment id per request, 0 = broker memory (backend.h) */
    char errmsg[256];
    /* Rows whose answer broke backend.h's contract (executor.c, publish),
     * for one line at the reap: how many, and what the first one gave. */
    uint32_t nbreach;
    int breach_status;
    size_t breach_len, breach_cap;
    /* What the backend gets: the arrays above; an asynchronous backend keeps
     * it until it calls api.complete (executor.c). */
    struct bb_batch api;
    /* Asynchronous backends: odd while the backend holds the batch. The
     * submit makes it odd, the one completion that counts even (executor.c):
     * a second call finds it even and is refused. */
    _Atomic uint32_t life;
    struct bb__instance *inst; /* the instance it runs on */
    struct bb__batch *next;   /* free list, executor queue, done stack */
};

#endif
