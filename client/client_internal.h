/* Client library internals shared by client.c and the tests. */
#ifndef BB_CLIENT_INTERNAL_H
#define BB_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "alloc.h"
#include "batchbroker/client.h"
#include "batchbroker/protocol.h"
#include "ring_internal.h"

struct bb_model {
    bb_client *c;
    uint32_t id;
    uint32_t max_batch_size;
    uint64_t max_request_bytes;
    char name[BB_MAX_MODEL_NAME];
    struct bb_model *next;
    /* bb_connect_lanes: the model as each lane opened it (lane[0] is this
     * one); NULL on a client of one lane. */
    struct bb_model **lane;
};

enum { BB__REQ_FREE = 0, BB__REQ_LIVE, BB__REQ_ORPHAN };

struct bb_request {
    bb_client *c;
    bb_model *m;
    struct bb_shm_slot *slot;
    uint32_t index;          /* slot index */
    /* gen and kind are read by other threads (bb_wait, bb_client_poll): the
     * owner writes them with relaxed atomics; ordering comes from the slot's
     * shm_done_gen (acquire) and c->lock. */
    _Atomic uint32_t gen;    /* generation of the last submission; 0 = never */
    uint32_t cancel_gen;     /* generation a cancel was sent for */
    _Atomic uint32_t polled_gen; /* generation bb_client_poll reported last */
    _Atomic int kind;        /* BB__REQ_*; changed under c->lock */
    uint64_t off;            /* heap block (offset into the heap) */
    uint64_t in_off, out_off;/* segment offsets */
    uint32_t in_cap, in_len, out_cap;
    uint64_t tag;
    struct bb_request *next_free;
};

struct bb_client {
    int sock;                /* control socket; hang-up = broker gone */
    int doorbell_fd;         /* eventfd the broker sleeps on; -1: the worker page's futex */
    int notify_fd;           /* eventfd the broker signals on completions */
    int event_fd;            /* bb_client_fd: epoll of notify_fd + sock hang-up; -1 until asked */
    char *base;              /* segment mapping */
    size_t size;
    struct bb_shm_header *hdr;
    struct bb_shm_worker *wpage; /* our broker worker's page, read-only */
    struct bb_shm_slot *slots;
    uint32_t nslots;

    /* Submission ring: threads reserve positions with an atomic increment of
     * sq_reserve and publish each entry with its lap (protocol.h), without
     * waiting for one another. */
    struct bb_shm_ring *sq;
    _Atomic uint32_t *sq_entries;
    uint32_t sq_mask, sq_lg;
    _Atomic uint32_t sq_reserve;

    pthread_mutex_t cq_lock; /* single consumer of the completion ring */
    struct bb__ring cq;

    pthread_mutex_t lock;    /* allocator, free slots, models */
    struct bb__buddy heap;
    struct bb_request *reqs; /* nslots, indexed by slot */
    struct bb_request *free_reqs;
    uint32_t norphans;
    struct bb_model *models;

    pthread_mutex_t ctl_lock;/* one control round trip at a time */
    uint32_t ctl_lost;       /* replies of timed-out round trips still to skip (ctl_lock) */
    int timeout_ms;          /* connect and control round trips */
    /* bb_connect_lanes: the sessions of lanes 1 .. nmore (this one is lane
     * 0), each a client of its own; a request belongs to one lane. */
    bb_client **more;
    uint32_t nmore;
    bb_client *head;         /* of a client of several lanes: lane 0; else NULL */
    _Atomic uint32_t poll_next; /* the lane bb_client_poll looks at first */
    uint32_t fork_gen;       /* bb__fork_gen at connect: another value means a fork() child */
    _Atomic int dead;        /* broker gone */
    _Atomic uint64_t gone_checked_ns; /* last look at the socket for a timed-out wait */
    _Atomic int64_t spin_ns;
};

/* Wake a sleeping broker worker (the doorbell of protocol.h). */
void bb__client_ring(bb_client *c);

#endif
