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
 *   shm_cq_overflow and shm_wake_seq; the client alone writes shm_notify and
 *   shm_sleepers.
 *
 *   Worker page (struct bb_shm_worker, one per dispatcher worker, shared by
 *   all the clients it serves): written by the broker only, and mapped
 *   read-only by clients (the memfd carries F_SEAL_FUTURE_WRITE). It holds
 *   what concerns the worker rather than one client, so that announcing a
 *   sleep or a heartbeat costs one store however many clients there are:
 *   shm_need_wake, shm_heartbeat_ns, shm_broker_state, and the doorbell futex
 *   word shm_doorbell.
 *
 *   Submission ring (the client's threads produce, the broker consumes):
 *   each entry carries the lap it was written in (BB_SQE_LAP), so that the
 *   client's threads publish independently, without waiting for one another
 *   in order (ABI 1 had one tail the threads published in reservation order,
 *   and a preempted thread stalled the others). A thread reserves a position
 *   with an atomic increment of a counter private to the client, waits while
 *   the ring is full (pos - shm_head >= sq_entries), and writes
 *   slot | flags | BB_SQE_LAP(pos) with one release store. The broker takes
 *   the entries at its head, in order, while their lap is the one expected
 *   there (acquire, pairing with that store); shm_tail is unused. The broker
 *   stores shm_head with release after it copied the entries; the client's
 *   acquire load of shm_head pairs with it before the client reuses them. An
 *   entry names a slot, with BB_SQE_CANCEL set for a cancel of that slot's
 *   pending submission.
 *
 *   Slot: the client writes the descriptor (first cache line) before it
 *   publishes the slot on the submission ring, so the ring's release covers
 *   it. The broker copies the descriptor out and validates the copy, never
 *   the shared original: both buffers inside the heap, input and output not
 *   overlapping, reserved bytes and unknown flags zero (else the request
 *   fails with BB_EINVAL). On completion the broker writes status and out_len,
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
 *   Broker sleeping: the broker stores shm_need_wake = 1 in its worker page,
 *   issues a seq_cst fence, re-checks every submission ring and only then
 *   sleeps in io_uring_enter. A client publishes shm_tail, issues a seq_cst
 *   fence, loads shm_need_wake, and if set rings the doorbell. One of the two
 *   fences is ordered before the other, so either the broker sees the new
 *   tail or the client sees the flag. The doorbell is FUTEX_WAKE on the
 *   worker page's shm_doorbell (flags & BB_WORKER_FUTEX_DOORBELL): the
 *   dispatcher keeps an io_uring FUTEX_WAIT on that word (whose value never
 *   changes) pending at all times, re-armed in the pass that consumed it, so
 *   a wake that finds no waiter happened during a pass, before the re-check
 *   (the futex bucket lock orders it). On kernels without io_uring futex
 *   operations it is a write to the client's doorbell eventfd, which the
 *   dispatcher reads.
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
#define BB_ABI_MAJOR 2u
#define BB_ABI_MINOR 0u /* 2.0: worker page, lap-tagged submission ring, HELLO cpu and
                               DISTRUST, METRICS */
#define BB_SHM_VERSION ((BB_ABI_MAJOR << 16) | BB_ABI_MINOR)

#define BB_SHM_HEADER_SIZE 4096u
#define BB_SHM_RING_HDR_SIZE 256u
#define BB_SHM_SLOT_SIZE 128u
/* A submission-ring entry: slot index, lap tag, cancel flag. */
#define BB_SQE_SLOT_MASK 0x000fffffu
#define BB_SQE_LAP_SHIFT 20
#define BB_SQE_LAP_MASK 0x7ff00000u
#define BB_SQE_CANCEL 0x80000000u
/* The lap tag of the entry at free-running position pos of a ring of
 * 2^lg entries: (pos / 2^lg + 1) mod 2^11, never the tag of the entry one lap
 * earlier at the same place (and never 0 in the first lap, so a zeroed ring
 * holds nothing). */
#define BB_SQE_LAP(pos, lg) ((((uint32_t)(pos) >> (lg)) + 1u) << BB_SQE_LAP_SHIFT & BB_SQE_LAP_MASK)

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

    /* Broker-written after attach; a cache line of their own. */
    uint32_t reserved1[4];             /* 0 (ABI 1 had worker state here: see bb_shm_worker) */
    _Atomic uint32_t shm_cq_overflow;  /* completions dropped from a full CQ */
    _Atomic uint32_t shm_wake_seq;     /* futex word of sleeping waiters; bumped to wake */
    uint8_t pad1[128 - 24];

    /* Client-written. */
    _Atomic uint32_t shm_notify;       /* 1: signal the notify eventfd on completions */
    _Atomic uint32_t shm_sleepers;     /* threads asleep (or about to be) on shm_wake_seq */
    uint8_t pad2[BB_SHM_HEADER_SIZE - 264];
};

#define BB_SHM_WORKER_MAGIC 0x574b5242u /* "BRKW" little-endian */
#define BB_SHM_WORKER_SIZE 4096u

/* bb_shm_worker.flags */
#define BB_WORKER_FUTEX_DOORBELL 1u /* ring with FUTEX_WAKE on shm_doorbell, else write
                                       the doorbell eventfd (the HELLO reply's 4th fd) */

/* The worker page: one per dispatcher worker, read-only for its clients. */
struct bb_shm_worker {
    /* Written once before any client sees the page. */
    uint32_t magic;                    /* BB_SHM_WORKER_MAGIC */
    _Atomic uint32_t shm_version;      /* BB_SHM_VERSION; written last, release */
    uint32_t size;                     /* BB_SHM_WORKER_SIZE */
    uint32_t flags;                    /* BB_WORKER_* */
    uint32_t worker_id;
    int32_t numa_node;                 /* -1: none */
    uint8_t pad0[128 - 24];

    /* Read by clients on every submission: a line of its own. */
    _Atomic uint32_t shm_need_wake;    /* 1: the worker sleeps, ring the doorbell */
    _Atomic uint32_t shm_doorbell;     /* futex word the worker waits on; always 0 */
    uint8_t pad1[128 - 8];

    _Atomic uint64_t shm_heartbeat_ns; /* CLOCK_MONOTONIC of a recent pass */
    _Atomic uint32_t shm_broker_state; /* enum bb_broker_state */
    uint8_t pad2[BB_SHM_WORKER_SIZE - 256 - 12];
};

_Static_assert(sizeof(struct bb_shm_worker) == BB_SHM_WORKER_SIZE, "worker page size");
_Static_assert(offsetof(struct bb_shm_worker, shm_need_wake) == 128, "worker need_wake");
_Static_assert(offsetof(struct bb_shm_worker, shm_doorbell) == 132, "worker doorbell");
_Static_assert(offsetof(struct bb_shm_worker, shm_heartbeat_ns) == 256, "worker heartbeat");
_Static_assert(offsetof(struct bb_shm_worker, shm_broker_state) == 264, "worker state");

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
    uint8_t pad0[7];       /* reserved: must be 0, else the submission fails with BB_EINVAL */

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
_Static_assert(offsetof(struct bb_shm_header, shm_cq_overflow) == 144, "cq_overflow");
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
    BB_MSG_HELLO_REPLY,     /* broker -> client, with SCM_RIGHTS {segment memfd, worker page
                               memfd (read-only), notify eventfd[, doorbell eventfd]} */
    BB_MSG_MODEL_OPEN,
    BB_MSG_MODEL_OPEN_REPLY,
    BB_MSG_STATS,
    BB_MSG_STATS_REPLY,
    BB_MSG_PIN,             /* pin (target > 0) or release (0) a model's batch target */
    BB_MSG_PIN_REPLY,
    BB_MSG_METRICS,         /* the Prometheus page, or one model's histograms */
    BB_MSG_METRICS_REPLY,   /* with SCM_RIGHTS {memfd holding the answer} */
};

/* bb_msg_hello.flags */
#define BB_HELLO_OPERATOR 1u /* tools such as bbctl: statistics only, no segment */
/* The client refuses this broker (its uid is not one the client trusts) and
 * says so before it hangs up, so that the broker can log why; no reply.
 * Since ABI 2.0. */
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
    int32_t cpu;            /* the CPU the client ran on (placement hint), -1: unknown */
    uint32_t reserved;      /* 0 */
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

/* Batch sizes are counted in log2 buckets: bucket k holds the batches of
 * (2^(k-1), 2^k] requests (bucket 0: size 1), up to 2^16 = 65536. */
#define BB_BATCH_SIZE_BUCKETS 17u

/* The profiler's phases of a request (docs/operations.md, "Phases"). */
enum bb_phase {
    BB_PHASE_QUEUE = 0,     /* submit -> the dispatcher's clock reading that cut its batch */
    BB_PHASE_FORMATION,     /* that reading -> the backend starts the batch */
    BB_PHASE_BACKEND,       /* the backend's process() */
    BB_PHASE_DELIVERY,      /* process() returned -> completions published, clients woken */
    BB_PHASES
};

/* How a request ended, as the broker counts it. */
enum bb_outcome {
    BB_OUTCOME_COMPLETED = 0,   /* status 0 */
    BB_OUTCOME_FAILED,          /* any other error, and queued requests of clients that died */
    BB_OUTCOME_TIMED_OUT,       /* BB_ETIMEDOUT */
    BB_OUTCOME_REJECTED,        /* BB_EBUSY */
    BB_OUTCOME_CANCELLED,       /* BB_ECANCELED */
    BB_OUTCOMES
};

/* Append only: a client of an older build reads a prefix of it. */
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
    /* Observability (ABI 1.1). */
    uint64_t cancelled;         /* no longer counted in failed */
    uint32_t profile_stride;    /* 0: [broker] profile off; N: one batch in N is timed */
    uint32_t running;           /* batches handed to executors and not reaped */
    double window_s;            /* span of the windowed figures (p50 ... throughput) */
    uint64_t batch_size_hist[BB_BATCH_SIZE_BUCKETS]; /* since start */
    uint64_t latency_sum_ns;    /* completed requests, since start */
    uint64_t phase_count;       /* completed requests the profiler timed, since start */
    uint64_t phase_sum_ns[BB_PHASES];
    double phase_p50_us[BB_PHASES], phase_p99_us[BB_PHASES];        /* window */
    double latency_p50_by_priority_us[5], latency_p99_by_priority_us[5]; /* window */
    uint64_t timed_latency_sum_ns; /* the phase_count requests' latency: the phases' sum */
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

/* METRICS asks for a document too large for one datagram (a Prometheus page
 * is tens of KiB, a dump about 75 KiB a model). The broker writes it into a
 * sealed memfd and passes the descriptor with the reply: the dispatcher
 * never waits for a slow reader, and the reader takes it at its own pace. */
enum bb_metrics_format {
    BB_METRICS_TEXT = 1,    /* the page /metrics serves, every model (text/plain) */
    BB_METRICS_DUMP = 2,    /* struct bb_wire_dump of model_id */
};

struct bb_msg_metrics {
    struct bb_msg_hdr h;
    uint32_t format;        /* enum bb_metrics_format */
    uint32_t model_id;      /* BB_METRICS_DUMP only */
};

/* status 0: SCM_RIGHTS carries one memfd (sealed) of `length` bytes. Else
 * (BB_EINVAL, BB_ENOMODEL, BB_ENOMEM, BB_ESYS) no descriptor. */
struct bb_msg_metrics_reply {
    struct bb_msg_hdr h;
    uint64_t length;
};

/* Log-linear histograms of nanoseconds (common/hist_internal.h has the
 * arithmetic): values below 32 have a bucket each, every power of two above
 * is split into 32 buckets (at most 3.2% wide), values from 2^40 ns (18 min)
 * on share the last bucket. */
#define BB_HIST_SUB_BITS 5u
#define BB_HIST_MAX_BITS 40u
#define BB_HIST_BUCKETS ((BB_HIST_MAX_BITS - BB_HIST_SUB_BITS + 1u) << BB_HIST_SUB_BITS)

#define BB_DUMP_VERSION 1u

/* One model's cumulative figures (since the broker started), for tools that
 * take the difference of two dumps (bbctl profile). Priorities are indexed
 * 0..3 = critical..low. */
struct bb_wire_dump {
    uint32_t size;              /* sizeof(struct bb_wire_dump) */
    uint32_t version;           /* BB_DUMP_VERSION */
    uint64_t now_ns;            /* the broker's CLOCK_MONOTONIC when it was taken */
    char name[BB_MAX_MODEL_NAME];
    uint32_t hist_sub_bits, hist_buckets; /* BB_HIST_SUB_BITS, BB_HIST_BUCKETS */
    uint32_t max_batch_size, batch_target, wait_us, queued, running, profile_stride;
    uint64_t submitted, deduplicated, batches, batched;
    uint64_t requests[4][BB_OUTCOMES]; /* [priority][enum bb_outcome] */
    uint64_t batch_size[BB_BATCH_SIZE_BUCKETS];
    uint64_t latency_sum_ns[4]; /* completed requests, per priority */
    uint64_t phase_count, timed_latency_sum_ns;
    uint64_t phase_sum_ns[BB_PHASES];
    uint64_t latency[4][BB_HIST_BUCKETS]; /* completed requests, per priority */
    uint64_t phase[BB_PHASES][BB_HIST_BUCKETS];
};

#endif
