/*
 * batchbroker wire protocol: the control-socket messages and the layout of a
 * client's shared-memory segment. Client library and broker must agree on
 * every byte here; tests/test_layout.c pins the offsets.
 *
 * Segment (one per client, a sealed memfd created by the broker):
 *
 *   0                 struct bb_shm_header   (BB_SHM_HEADER_SIZE bytes)
 *   sq_off            submission ring: struct bb_shm_ring + sq_entries u32
 *   cq_off            completion ring: struct bb_shm_ring + cq_entries u32
 *   slots_off         nslots x struct bb_shm_slot
 *   heap_off          heap_size bytes of input/output buffers (client-managed)
 *
 * Who writes what, and in which order:
 *
 *   Header: the broker writes every field before passing the fd, the version
 *   word `shm_version` last with release; the client checks it with acquire
 *   before reading anything else. Afterwards the broker alone writes
 *   shm_heartbeat_ns, shm_broker_state, shm_need_wake, shm_cq_overflow and
 *   shm_wake_seq; the client alone writes shm_notify and shm_sleepers.
 *
 *   Submission ring (client produces, broker consumes): the client writes
 *   entries[tail & mask] and then shm_tail with release; the broker's acquire
 *   load of shm_tail pairs with it. The broker stores shm_head with release
 *   after it copied the entries; the client's acquire load of shm_head pairs
 *   with it before the client reuses those entries. An entry is a slot index,
 *   with BB_SQE_CANCEL set for a cancel of that slot's pending submission.
 *
 *   Slot: the client writes the descriptor (first cache line) before it
 *   publishes the slot on the submission ring, so the ring's release covers
 *   it. The broker copies the descriptor out and validates the copy, never
 *   the shared original. On completion the broker writes status and out_len,
 *   then shm_done_gen = gen with release; the client's acquire load of
 *   shm_done_gen pairs with it before it reads status, out_len and the output.
 *
 *   Completion ring (broker produces, client consumes): same discipline as the
 *   submission ring with the roles swapped. It is a notification channel for
 *   bb_client_poll; shm_done_gen stays authoritative, and when the ring is full
 *   the broker drops the entry and counts it in shm_cq_overflow.
 *
 * Wake-up handshakes (as io_uring's SQ_NEED_WAKEUP):
 *
 *   Broker sleeping: the broker stores shm_need_wake = 1 in every client's
 *   header, issues a seq_cst fence, re-checks every submission ring and only
 *   then sleeps in io_uring_enter. A client publishes shm_tail, issues a
 *   seq_cst fence, loads shm_need_wake, and if set writes the doorbell
 *   eventfd. One of the two fences is ordered before the other, so either the
 *   broker sees the new tail or the client sees the flag.
 *
 *   Client sleeping: one futex word per client, not per request, so that a
 *   batch costs the broker one wake-up per client rather than per request. A
 *   waiter reads shm_wake_seq, increments shm_sleepers (seq_cst), re-checks
 *   its slot's shm_done_gen, and sleeps with FUTEX_WAIT (shared, not private)
 *   on shm_wake_seq with the value it read; it decrements shm_sleepers when
 *   it wakes. The broker publishes the completions of a batch, issues a
 *   seq_cst fence, and only if shm_sleepers is non-zero increments
 *   shm_wake_seq and calls FUTEX_WAKE on it for all waiters, who re-check.
 */
#ifndef BATCHBROKER_PROTOCOL_H
#define BATCHBROKER_PROTOCOL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define BB_SHM_MAGIC 0x4b524242u /* "BBRK" little-endian */
#define BB_ABI_MAJOR 1u
#define BB_ABI_MINOR 1u
#define BB_SHM_VERSION ((BB_ABI_MAJOR << 16) | BB_ABI_MINOR)

#define BB_SHM_HEADER_SIZE 4096u
#define BB_SHM_RING_HDR_SIZE 256u
#define BB_SHM_SLOT_SIZE 128u
#define BB_SQE_CANCEL 0x80000000u
#define BB_SQE_SLOT_MASK 0x7fffffffu

#define BB_MAX_SLOTS (1u << 20)
#define BB_MAX_MODEL_NAME 64u

enum bb_broker_state {
    BB_BROKER_RUNNING = 1,
    BB_BROKER_SHUTDOWN = 2, /* no new submissions; pending ones are being failed */
};

struct bb_shm_header {
    /* Written once by the broker before the fd is passed. */
    uint32_t magic;             /* BB_SHM_MAGIC */
    _Atomic uint32_t shm_version; /* BB_SHM_VERSION; written last, release */
    uint32_t header_size;       /* BB_SHM_HEADER_SIZE */
    uint32_t slot_size;         /* BB_SHM_SLOT_SIZE */
    uint64_t segment_size;
    uint32_t nslots;            /* power of two */
    uint32_t sq_entries;        /* 4 * nslots: bounds stale cancels, see protocol.md */
    uint32_t cq_entries;        /* nslots */
    uint32_t client_id;
    uint64_t sq_off, cq_off, slots_off, heap_off, heap_size;
    uint32_t broker_pid;
    uint32_t max_input_bytes;   /* per request, broker-wide limit */
    uint8_t pad0[128 - 88];

    /* Broker-written after attach; one cache line pair of their own. */
    _Atomic uint64_t shm_heartbeat_ns; /* CLOCK_MONOTONIC of the broker's last pass */
    _Atomic uint32_t shm_broker_state; /* enum bb_broker_state */
    _Atomic uint32_t shm_need_wake;    /* 1: broker sleeps, ring the doorbell */
    _Atomic uint32_t shm_cq_overflow;  /* completions dropped from a full CQ */
    _Atomic uint32_t shm_wake_seq;     /* futex word of sleeping waiters; bumped to wake */
    uint8_t pad1[128 - 24];

    /* Client-written. */
    _Atomic uint32_t shm_notify;       /* 1: signal the notify eventfd on completions */
    _Atomic uint32_t shm_sleepers;     /* threads asleep (or about to be) on shm_wake_seq */
    uint8_t pad2[BB_SHM_HEADER_SIZE - 264];
};

/* Ring header; the u32 entries follow at BB_SHM_RING_HDR_SIZE. The producer
 * writes shm_tail, the consumer shm_head: 128 bytes apart, no false sharing. */
struct bb_shm_ring {
    _Atomic uint32_t shm_tail;
    uint8_t pad0[124];
    _Atomic uint32_t shm_head;
    uint8_t pad1[124];
};

struct bb_shm_slot {
    /* Descriptor: client-written before the slot is published on the SQ. */
    uint32_t gen;          /* submission generation, != shm_done_gen while pending */
    uint32_t model_id;
    uint64_t in_off;       /* offsets from the segment's start */
    uint64_t out_off;
    uint32_t in_len;
    uint32_t out_cap;
    uint64_t tag;
    uint64_t submit_ns;    /* client CLOCK_MONOTONIC at submit */
    uint32_t timeout_us;
    uint32_t flags;        /* BB_SUBMIT_* */
    uint8_t priority;      /* BB_PRIORITY_* */
    uint8_t pad0[7];

    /* Completion: broker-written, shm_done_gen last with release. */
    _Atomic uint32_t shm_done_gen;
    int32_t status;         /* 0 or BB_E* */
    uint32_t out_len;
    uint32_t reserved;     /* 0 */
    uint8_t pad1[48];
};

_Static_assert(sizeof(struct bb_shm_header) == BB_SHM_HEADER_SIZE, "header size");
_Static_assert(offsetof(struct bb_shm_header, shm_version) == 4, "version word");
_Static_assert(offsetof(struct bb_shm_header, sq_off) == 40, "sq_off");
_Static_assert(offsetof(struct bb_shm_header, broker_pid) == 80, "broker_pid");
_Static_assert(offsetof(struct bb_shm_header, shm_heartbeat_ns) == 128, "heartbeat");
_Static_assert(offsetof(struct bb_shm_header, shm_need_wake) == 140, "need_wake");
_Static_assert(offsetof(struct bb_shm_header, shm_notify) == 256, "notify");
_Static_assert(sizeof(struct bb_shm_ring) == BB_SHM_RING_HDR_SIZE, "ring header");
_Static_assert(offsetof(struct bb_shm_ring, shm_head) == 128, "ring head");
_Static_assert(sizeof(struct bb_shm_slot) == BB_SHM_SLOT_SIZE, "slot size");
_Static_assert(offsetof(struct bb_shm_slot, submit_ns) == 40, "submit_ns");
_Static_assert(offsetof(struct bb_shm_slot, priority) == 56, "priority");
_Static_assert(offsetof(struct bb_shm_slot, shm_done_gen) == 64, "done_gen");
_Static_assert(offsetof(struct bb_shm_header, shm_wake_seq) == 148, "wake_seq");
_Static_assert(offsetof(struct bb_shm_header, shm_sleepers) == 260, "sleepers");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2, "lock-free atomics");

/* ---- Control socket (SOCK_SEQPACKET, one message per datagram) ---- */

enum bb_msg_type {
    BB_MSG_HELLO = 1,       /* client -> broker, first message */
    BB_MSG_HELLO_REPLY,     /* broker -> client, with SCM_RIGHTS {memfd, doorbell, notify} */
    BB_MSG_MODEL_OPEN,
    BB_MSG_MODEL_OPEN_REPLY,
    BB_MSG_STATS,
    BB_MSG_STATS_REPLY,
    BB_MSG_PIN,             /* pin (target > 0) or release (0) a model's batch target */
    BB_MSG_PIN_REPLY,
};

/* bb_msg_hello.flags */
#define BB_HELLO_OPERATOR 1u /* tools such as bbctl: statistics only, no segment */
/* The client refuses this broker (its uid is not one the client trusts) and
 * says so before it hangs up, so that the broker can log why; no reply.
 * Since ABI 1.1; an older broker ignores it. */
#define BB_HELLO_DISTRUST 2u

struct bb_msg_hdr {
    uint32_t type;
    int32_t status;         /* replies: 0 or BB_E* */
};

struct bb_msg_hello {
    struct bb_msg_hdr h;
    uint32_t magic;
    uint32_t version;       /* BB_SHM_VERSION */
    uint64_t segment_bytes; /* requested; 0 = broker default */
    uint32_t max_inflight;  /* requested slots; 0 = broker default */
    uint32_t flags;         /* BB_HELLO_* */
};

struct bb_msg_hello_reply {
    struct bb_msg_hdr h;
    uint32_t version;
    uint32_t client_id;
    uint64_t segment_size;
};

struct bb_msg_model_open {
    struct bb_msg_hdr h;
    char name[BB_MAX_MODEL_NAME];
};

struct bb_msg_model_open_reply {
    struct bb_msg_hdr h;
    uint32_t model_id;
    uint32_t max_batch_size;
    uint64_t max_request_bytes; /* largest input+output one request may have; 0 = none */
};

struct bb_msg_stats {
    struct bb_msg_hdr h;
    uint32_t model_id;
    uint32_t pad;
};

struct bb_wire_stats {
    uint64_t submitted, completed, failed, timed_out, rejected, deduplicated, batches;
    uint64_t completed_by_priority[5];
    double avg_batch_size, avg_queue_wait_us, throughput_rps;
    double latency_p50_us, latency_p95_us, latency_p99_us;
    uint32_t queued, batch_target;
    uint32_t max_batch_size, instances;
    /* Adaptive sizing (docs/adaptive.md). */
    uint32_t adaptive, pinned, wait_us, changes;
    double fit_a_us, fit_b_us, fit_r2, best_size, arrival_rps, score;
    uint64_t slo_violations;
};

struct bb_msg_stats_reply {
    struct bb_msg_hdr h;
    char name[BB_MAX_MODEL_NAME]; /* the model's name: tools walk ids 0.. until BB_ENOMODEL */
    struct bb_wire_stats s;
};

struct bb_msg_pin {
    struct bb_msg_hdr h;
    char name[BB_MAX_MODEL_NAME];
    uint32_t target;        /* 0 releases the pin */
    uint32_t pad;
};

#endif
