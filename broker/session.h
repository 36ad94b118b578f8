/* A client session: one connection on the control socket and, once it said
 * HELLO, its segment, rings and request records. Owned by one worker. */
#ifndef BB_BROKER_SESSION_H
#define BB_BROKER_SESSION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "batchbroker/protocol.h"
#include "log.h"
#include "request.h"
#include "ring_internal.h"
#include "worker.h"

struct bb__client_model {
    uint32_t inflight;             /* queued + running on the model */
    uint32_t ftag_inc;             /* fair-queueing tag step: BB__FAIR_SCALE / weight */
    /* Per level, the client's current fair-queueing round: its start and
     * finish tags and how many more requests may join it (fair_quantum). */
    uint64_t round_start[4], last_ftag[4];
    uint32_t round_left[4];
    struct bb__req *round_head[4]; /* its heap entry, if still queued (queue.c checks) */
};
#define BB__FAIR_SCALE 1000u

/* The broker's per-slot records come in chunks allocated when a slot of the
 * chunk is first used: a HELLO asking for many slots costs a pointer per
 * chunk, not a record per slot, until the client really uses them. */
#define BB__REQ_CHUNK_SHIFT 6
#define BB__REQ_CHUNK (1u << BB__REQ_CHUNK_SHIFT)

struct bb__client {
    uint32_t idx, gen;             /* table position; generation tags CQEs */
    uint32_t id;
    int sock, pidfd, doorbell, notify;
    pid_t pid;
    uid_t uid;
    gid_t gid;                     /* as SO_PEERCRED gave them at connect */
    bool attached, dead;
    bool placed;                   /* counted in its worker's `placed` (control.c worker_for) */
    bool said_hello;               /* anything more before the reply kills it */
    bool ctl_backlog;              /* messages left on its socket (control.c) */
    uint64_t ctl_pass;             /* the worker's pass that ctl_spent counts */
    uint32_t ctl_spent;            /* of its control budget in that pass */
    bool pid_gone;                 /* its process exited, another holds the socket */
    pid_t adm_pid;                 /* the process admission charged it to; 0 once that exited */
    bool lingering;                /* ended with replies unread: socket and a reference kept */
    bool is_operator;              /* attached without a segment (bbctl) */
    struct bb_msg_hello hello;     /* a HELLO that arrived before the session moved */
    uint64_t accepted_ns;          /* a peer that sends no HELLO is dropped */
    uint64_t sq_empty_ns;          /* the last pass that found its submission ring empty */
    uint64_t last_msg_ns;          /* an idle operator session is dropped */
    uint64_t models_open;          /* bit per model id */
    uint32_t adm_slots;            /* what admission charged its uid (admission.h) */
    uint64_t adm_bytes;

    char *base;
    size_t size;
    struct bb_shm_header *hdr;
    struct bb_shm_slot *slots;
    uint32_t nslots;
    uint64_t heap_lo, heap_hi;     /* valid buffer range, private copy */
    struct bb__sq sq;
    struct bb__ring cq;
    uint32_t cq_unpublished;
    uint32_t cq_dropped, cq_dropped_told; /* dropped CQ entries; told at the heartbeat */
    bool notify_busy;              /* a write of the notify eventfd is on the io_uring */
    struct bb__req **req_chunks;   /* nslots / BB__REQ_CHUNK pointers, NULL until used */
    uint32_t refs;                 /* 1 while connected + 1 per queued/running request */
    struct bb__client_model *cm;   /* per model: fairness and in-flight counts */
    struct bb__worker *w;
    uint32_t live_idx;             /* position in w->live while attached and alive */
    bool dirty;                    /* has completion-ring entries or a wake-up to send */
    bool wake_due;                 /* the dispatcher published completions this pass */

    /* Segment registration (registrar.c): between the HELLO and its answer
     * the registration thread has the session (`registering`, holding a
     * reference); the memfd waits in `memfd` to be sent. A registered
     * segment (`registered`) is unregistered and unmapped by that thread
     * when the session is destroyed. `reg_cancel`: the session ended while
     * its registration waited in the queue; the thread skips it then and
     * clears `registered` before handing it back. */
    int memfd;
    bool registering, registered;
    atomic_bool reg_cancel;        /* the worker's store, the thread's load: a hint */
    struct bb_segment seg;         /* written before the thread sees it, then read only */
    int reg_job;
    struct bb__client *reg_next;   /* the thread's queue, then the worker's stack */
};

/* Add a connection that passed admission to the table. NULL when the table is
 * full or memory is short (the caller closes fd). */
struct bb__client *bb__session_add(struct bb__worker *w, int fd, const struct ucred *cr);

/* Hand a session that has not attached yet to worker `to`: its io_uring
 * operations here are cancelled and it leaves w's table. */
void bb__session_move(struct bb__worker *w, struct bb__client *c, struct bb__worker *to);
/* Take over a session another worker moved here. */
void bb__session_adopt(struct bb__worker *w, struct bb__client *c);

/* Arm the io_uring operation `type` (BB__UD_SOCK, _DOORBELL, _PIDFD). */
void bb__session_arm(struct bb__worker *w, struct bb__client *c, int type);

/* Map a HELLO's segment: rings, slots, the table of request records,
 * fairness steps. */
int bb__session_map(struct bb__worker *w, struct bb__client *c, char *base, size_t size);

/* Hand the mapped segment to the registration thread (registrar.c) with
 * memfd, the descriptor the HELLO answer carries once it is done. */
void bb__session_register(struct bb__worker *w, struct bb__client *c, int memfd);

/* The session has its segment and answered HELLO: serve its rings. */
void bb__session_go_live(struct bb__worker *w, struct bb__client *c);

/* End a session: close its descriptors, drop its queued requests. Running
 * requests keep it (and its segment) until they complete; replies its peer
 * has not read keep it counted too (`lingering`, see bb__session_unlinger).
 * Idempotent. */
void bb__session_kill(struct bb__worker *w, struct bb__client *c, const char *why);

/* Bytes of replies sent on sock that its peer has not read yet (SIOCOUTQ);
 * -1 if the kernel does not say. */
int bb__session_unread(int sock);

/* A lingering session whose peer has read its replies or closed the socket
 * lets go: its socket closes with it. Called at the heartbeat. */
void bb__session_unlinger(struct bb__client *c);

/* Destroy the dead sessions nothing references any more. */
void bb__session_sweep(struct bb__worker *w);

/* Destroy a session at once (broker exit). */
void bb__session_destroy(struct bb__worker *w, struct bb__client *c);

/* The record of a slot that has been used, else NULL (any thread that holds
 * a request of the slot: the chunk was published before the request was). */
static inline struct bb__req *bb__session_req(const struct bb__client *c, uint32_t slot)
{
    struct bb__req *chunk = c->req_chunks[slot >> BB__REQ_CHUNK_SHIFT];
    return chunk ? &chunk[slot & (BB__REQ_CHUNK - 1)] : NULL;
}

/* The record of slot, its chunk allocated on first use; NULL when memory is
 * short. Session owner only. */
struct bb__req *bb__session_req_alloc(struct bb__client *c, uint32_t slot); /* the first use */
static inline struct bb__req *bb__session_req_get(struct bb__client *c, uint32_t slot)
{
    struct bb__req *r = bb__session_req(c, slot);
    return r ? r : bb__session_req_alloc(c, slot);
}

/* A queued or running request lets go of its session. */
static inline void bb__session_put(struct bb__client *c)
{
    bb_assert(c->refs > 0, "client references never go negative");
    if (--c->refs == 0)
        c->w->need_sweep = true;
}

#endif
