/*
 * batchbroker client API.
 *
 * A process links libbatchbroker, connects to the broker's Unix socket and gets
 * its own shared-memory segment. Requests live in that segment: the caller writes
 * its input straight into it (bb_request_input), submits, waits, and reads the
 * output in place (bb_request_output). Nothing is copied and, while the broker
 * is awake, the submit/wait/read/resubmit cycle makes no system call and no
 * allocation.
 *
 * Every function that returns int returns 0 (or a count) on success and a
 * negative BB_E* code on failure; errno is never the error channel.
 *
 * Thread safety: one bb_client (and its models) may be shared by any number of
 * threads. One bb_request must be used by one thread at a time, except that any
 * thread may bb_wait on it.
 *
 * fork(): a client belongs to the process that connected it. In a child made
 * by fork() every call that would reach the broker or the shared segment
 * returns BB_EFORKED and changes nothing the parent uses; bb_request_free and
 * bb_disconnect there release the child's copy only. Connect again in the
 * child. Do not unmap or close the client's descriptors behind its back.
 */
#ifndef BATCHBROKER_CLIENT_H
#define BATCHBROKER_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
/* bb_model_stats() and bb_model_tuning() share their names with the structs
 * they fill, as stat() does in C; in C++ that is legal but g++ -Wshadow says
 * the function hides the struct's constructor. Write `struct bb_model_stats`
 * in C++ as in C. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#endif
#endif

#if defined(__GNUC__)
#define BB_API __attribute__((visibility("default")))
#else
#define BB_API
#endif

/* Error codes: one list generates the enum, bb_strerror and bb_errname. The
 * values cross the process boundary (request status, control replies): they
 * never change, new codes take the next free number. */
#define BB_ERRNO_MAP(X)                                                         \
    X(EINVAL, -1, "invalid argument")                                           \
    X(ENOMEM, -2, "out of memory (segment space or request slots exhausted)")   \
    X(EBUSY, -3, "model queue full: request rejected")                          \
    X(ETIMEDOUT, -4, "timed out")                                               \
    X(EPENDING, -5, "request still pending")                                    \
    X(EBACKEND, -6, "backend failed to process the batch")                      \
    X(ENOMODEL, -7, "no such model")                                            \
    X(EDISCONNECTED, -8, "broker disconnected")                                 \
    X(ECANCELED, -9, "request canceled")                                        \
    X(ESHUTDOWN, -10, "broker is shutting down")                                \
    X(ETOOBIG, -11, "request too large")                                        \
    X(EPROTO, -12, "protocol or ABI version mismatch")                          \
    X(EPERM, -13, "refused by the broker: credentials not allowed (connect: its "  \
                  "allowed_uids/allowed_gids; pin: root or the broker's own user)")    \
    X(ESYS, -14, "system call failed")                                          \
    X(ESTATE, -15, "request is in the wrong state for this call")               \
    X(ENOBROKER, -16, "no broker listening on the socket")                      \
    X(EMAXCLIENTS, -17, "broker refused the connection: max_clients reached "   \
                        "(or this uid's or process's share of it)")             \
    X(EUNTRUSTED, -18, "the broker runs as a uid this client does not trust "   \
                       "(trusted: root, its own uid, $BATCHBROKER_TRUSTED_UIDS)")  \
    X(EFORKED, -19, "the client was connected before fork(): connect again in "  \
                    "this process")

enum bb_error {
#define BB__ERR_ENUM(name, code, msg) BB_##name = (code),
    BB_ERRNO_MAP(BB__ERR_ENUM)
#undef BB__ERR_ENUM
};

/* Priority levels. DEFAULT means the model's configured default_priority. */
enum { BB_PRIORITY_DEFAULT = 0, BB_PRIORITY_CRITICAL = 1, BB_PRIORITY_HIGH = 2,
       BB_PRIORITY_NORMAL = 3, BB_PRIORITY_LOW = 4 };
#define BB_PRIORITY_LEVELS 5

/* Submit flags. */
enum { BB_SUBMIT_DEDUP = 1u << 0 };


typedef struct bb_client bb_client;
typedef struct bb_model bb_model;
typedef struct bb_request bb_request;

/* 0 in any field (or opts NULL) means a default: the broker's
 * default_segment_mb and default_max_inflight (64 MiB and 1024 unless
 * configured otherwise), and for timeout_ms $BATCHBROKER_TIMEOUT_MS, else
 * 5000. timeout_ms bounds bb_connect and every control round trip
 * (bb_model_open, bb_model_stats, bb_model_tuning, bb_model_pin) against a
 * broker that does not answer (stopped, hung, its listen backlog full). */
struct bb_client_opts {
    size_t segment_bytes;
    uint32_t max_inflight;
    uint32_t timeout_ms;
};

/* priority: BB_PRIORITY_*; timeout_us: 0 = the model's default; flags: BB_SUBMIT_*;
 * tag: returned untouched, for the caller's bookkeeping. */
struct bb_submit_opts {
    int priority;
    uint32_t timeout_us;
    uint32_t flags;
    uint64_t tag;
};

/* Broker-side figures for one model. Extensible: later versions add fields
 * only by taking `reserved` space, so sizeof never changes and a program
 * built against an older header keeps working; `version` says which fields
 * the library filled (fields it does not know stay 0).
 *
 * Since start: the counters, avg_batch_size, avg_queue_wait_us,
 * batch_size_hist, the *_sum_ns figures. Over the window (the last 5 to 10 s,
 * window_s): throughput_rps and every percentile. Latency runs from the
 * client's submit to the publication of the completion (to the end of the
 * backend call for batches the profiler does not time). The phases
 * (docs/operations.md, "Phases") are taken while the broker's `profile` key
 * is on, for every batch or one in profile_stride; for each timed request
 * they add up to its latency (phase_sum_ns adds up to timed_latency_sum_ns). */
#define BB_MODEL_STATS_VERSION 2u
#define BB_STATS_BATCH_BUCKETS 17 /* = BB_BATCH_SIZE_BUCKETS */
enum { BB_STATS_PHASE_QUEUE = 0, BB_STATS_PHASE_FORMATION = 1, BB_STATS_PHASE_BACKEND = 2,
       BB_STATS_PHASE_DELIVERY = 3, BB_STATS_PHASES = 4 };

struct bb_model_stats {
    uint32_t size;                     /* sizeof(struct bb_model_stats) */
    uint32_t version;                  /* BB_MODEL_STATS_VERSION of the library */
    uint64_t submitted, completed, failed, timed_out, rejected, deduplicated, batches;
    uint64_t completed_by_priority[5]; /* index = BB_PRIORITY_* */
    double avg_batch_size, avg_queue_wait_us, throughput_rps;
    double latency_p50_us, latency_p95_us, latency_p99_us; /* submit -> completion */
    uint32_t queued, batch_target;
    /* Version 2. */
    uint64_t cancelled;                /* BB_ECANCELED; no longer part of failed */
    uint32_t profile_stride;           /* 0: profiler off; N: it times one batch in N */
    uint32_t running;                  /* batches on executors now */
    double window_s;                   /* span of the windowed figures */
    /* Batches by size: [k] counts sizes in (2^(k-1), 2^k]; [0] size 1. */
    uint64_t batch_size_hist[BB_STATS_BATCH_BUCKETS];
    uint64_t latency_sum_ns;           /* of the completed requests */
    uint64_t phase_count;              /* completed requests the profiler timed */
    uint64_t timed_latency_sum_ns;     /* their latency: the phase sums add up to it */
    uint64_t phase_sum_ns[BB_STATS_PHASES];        /* index = BB_STATS_PHASE_* */
    double phase_p50_us[BB_STATS_PHASES], phase_p99_us[BB_STATS_PHASES];
    double latency_p50_by_priority_us[5], latency_p99_by_priority_us[5]; /* [BB_PRIORITY_*] */
    uint64_t reserved[31];             /* 0; room for later versions */
};

/* Connect to the broker at socket_path (NULL: bb_default_socket) and map
 * this client's segment. opts may be NULL. Blocks until the broker answers
 * (at most the client's timeout_ms), which with a backend that pins client
 * memory (a GPU's) is once the segment is registered: milliseconds.
 * Returns 0, BB_EINVAL, BB_ENOMEM (also: the broker's per-uid slot or
 * segment limit, max_uid_slots / max_uid_segment_mb), BB_ENOBROKER (nothing
 * listens there), BB_EDISCONNECTED (the broker closed the connection without
 * an answer), BB_ETIMEDOUT (no answer within the client's timeout_ms),
 * BB_EPERM (the broker refused our credentials: its allowed_uids /
 * allowed_gids), BB_EUNTRUSTED (we refused the broker's uid: see
 * $BATCHBROKER_TRUSTED_UIDS; the broker is told and logs it),
 * BB_EMAXCLIENTS (no place: the broker has max_clients clients, or our uid
 * or process holds its share, max_clients_per_uid / max_clients_per_pid;
 * the broker's log names the key), BB_ESHUTDOWN (it is stopping), BB_EPROTO
 * (ABI mismatch), BB_ESYS. */
BB_API int bb_connect(const char *socket_path, const struct bb_client_opts *opts,
                      bb_client **out);

/* bb_connect with `lanes` sessions behind one client (1 .. BB_MAX_LANES; 1 is
 * bb_connect): each lane has a segment, slots and rings of its own, sized by
 * opts, and the broker serves each from the worker of the connecting CPU's
 * NUMA node with the fewest sessions placed on it, so that, where that node
 * has several workers (`workers = N`), the threads of one process that share
 * a client are served by several dispatchers. A thread's requests come from its own lane (the threads of a
 * process are numbered in the order they first make a request, and take
 * lanes in turn; a full lane lends its neighbours'); bb_model_open opens the
 * model on every lane; bb_client_poll and bb_client_fd cover every lane.
 * Meant for many submitting threads at rates one dispatcher cannot serve,
 * with several workers (`workers = N`) and, for one model's batches to form
 * in parallel too, `formation = per_worker`. Each lane is a session of its
 * own: it counts against the broker's max_clients and its per-uid and
 * per-process shares, and it has its own fair-queueing turn and its own
 * max_inflight_per_client.
 * The client ends as one: a lane whose session ends (the broker's exit, or
 * the broker dropping that session) ends every lane, and the calls of every
 * thread return BB_EDISCONNECTED from then on. Returns what bb_connect
 * returns. */
#define BB_MAX_LANES 64
BB_API int bb_connect_lanes(const char *socket_path, const struct bb_client_opts *opts,
                            unsigned lanes, bb_client **out);

/* The socket bb_connect(NULL, ...) uses: $BATCHBROKER_SOCKET if set, else
 * $XDG_RUNTIME_DIR/batchbroker.sock if XDG_RUNTIME_DIR is set, else for root
 * /run/batchbroker/batchbroker.sock, else /tmp/batchbroker-UID/batchbroker.sock
 * for the caller's effective uid, or /run/batchbroker/batchbroker.sock when
 * that one does not exist and this one does (a broker run by root). These
 * are the broker's own defaults (docs/operations.md). Writes the path to
 * buf; returns its length, or BB_EINVAL if it does not fit in len bytes. */
BB_API int bb_default_socket(char *buf, size_t len);

/* Close the connection, free every request and model. Accepts NULL. Requests
 * still pending are abandoned (the broker reclaims them). */
BB_API void bb_disconnect(bb_client *c);

/* Look a model up by name. The handle lives until bb_disconnect.
 * Returns 0, BB_EINVAL, BB_ENOMODEL, BB_EDISCONNECTED, BB_ETIMEDOUT (the
 * broker did not answer within the client's timeout_ms), BB_ENOMEM. */
BB_API int bb_model_open(bb_client *c, const char *name, bb_model **out);

/* Allocate a request slot with an input buffer of input_bytes and an output
 * buffer of output_capacity bytes, both inside the shared segment.
 * Returns 0, BB_EINVAL, BB_ENOMEM (segment or slots exhausted), BB_ETOOBIG
 * (over the model's limits), BB_EDISCONNECTED. */
BB_API int bb_request_new(bb_model *m, size_t input_bytes, size_t output_capacity,
                          bb_request **out);

/* Where to write the input. Valid until bb_request_free; do not write to it
 * while the request is pending. */
BB_API void *bb_request_input(bb_request *r);

/* Capacity of the input buffer (the input_bytes given to bb_request_new). */
BB_API size_t bb_request_input_capacity(const bb_request *r);

/* Set how many bytes of the input buffer the next submission sends (default:
 * the whole buffer). Returns 0, BB_EINVAL (larger than the buffer), BB_ESTATE. */
BB_API int bb_request_set_input_len(bb_request *r, size_t len);

/* Submit (or resubmit, once complete) the request. opts may be NULL.
 * Returns 0, BB_EINVAL, BB_ESTATE (already pending), BB_EDISCONNECTED,
 * BB_ESHUTDOWN. A full model queue is reported as the request's status
 * BB_EBUSY, at once, without running it. */
BB_API int bb_submit(bb_request *r, const struct bb_submit_opts *opts);

/* Wait for completion: timeout_ns 0 polls, < 0 waits forever. Spins for the
 * client's spin budget (bb_client_set_spin_ns, default 50 us), then sleeps;
 * for a second after two of its spin's yields showed a CPU-bound task
 * holding this thread's CPU for 0.5 ms past the budget, it sleeps at once.
 * Returns 0 once complete (read the outcome with bb_request_status),
 * BB_ETIMEDOUT, BB_EDISCONNECTED (the broker is gone: at once when that is
 * known, and in place of BB_ETIMEDOUT, however short the wait),
 * BB_ESTATE (never submitted). */
BB_API int bb_wait(bb_request *r, int64_t timeout_ns);

/* Cancel a pending request: if the broker has not dispatched it yet it
 * completes with BB_ECANCELED; if it is running it finishes normally.
 * Returns 0 (cancel sent), BB_ESTATE (not pending), BB_EDISCONNECTED. */
BB_API int bb_cancel(bb_request *r);

/* BB_EPENDING while pending, else the outcome: 0 or a negative BB_E* code. */
BB_API int bb_request_status(const bb_request *r);

/* Zero-copy view of the output; *len (may be NULL) gets its length. Valid until
 * the request is submitted again or freed. NULL unless complete and 0. */
BB_API const void *bb_request_output(const bb_request *r, size_t *len);

/* The tag given at submission. */
BB_API uint64_t bb_request_tag(const bb_request *r);

/* Free the request. A pending request is canceled first; its memory is reused
 * only after the broker lets go of it. Accepts NULL. */
BB_API void bb_request_free(bb_request *r);

/* One-shot helper: copies in, submits, waits, copies the output out.
 * Returns 0 with *out_len set (may be NULL), or the request's error code,
 * BB_ETOOBIG if the output does not fit out_cap, BB_ETIMEDOUT (the request is
 * canceled), or any code of bb_request_new/bb_submit/bb_wait. */
BB_API int bb_infer(bb_model *m, const void *in, size_t in_len, void *out, size_t out_cap,
                    size_t *out_len, const struct bb_submit_opts *opts, int64_t timeout_ns);

/* A descriptor (for poll, epoll or an event loop) that becomes readable when
 * any request of this client completes, and when the broker goes away; then
 * call bb_client_poll. Level-triggered: once the broker is gone it stays
 * readable, so stop watching it when bb_client_poll says BB_EDISCONNECTED.
 * Made on the first call; valid until bb_disconnect. Completions ring it from
 * the first call on: one that came before does not, so call bb_client_poll
 * once after taking the descriptor (or take it before submitting). Returns
 * the descriptor, BB_EINVAL, or BB_ESYS. */
BB_API int bb_client_fd(const bb_client *c);

/* Collect up to max requests that completed since the last call (in completion
 * order) and clear the readiness of bb_client_fd. Each completion is reported
 * once; requests completed while nobody polls may be coalesced away only if
 * the completion ring overflowed (it holds one entry per slot: a request
 * resubmitted before its completion was collected can make it overflow), so
 * callers that do that should bb_wait(r, 0) the requests they track.
 * Returns the count, or BB_EDISCONNECTED once the broker is gone and nothing
 * is left to collect: every request still pending then reads
 * BB_EDISCONNECTED from bb_request_status. BB_EINVAL for bad arguments. */
BB_API int bb_client_poll(bb_client *c, bb_request **out, int max);

/* Broker-side statistics of the model. Returns 0, BB_EDISCONNECTED,
 * BB_ETIMEDOUT. */
BB_API int bb_model_stats(bb_model *m, struct bb_model_stats *out);

/* The adaptive batch sizing state of a model (docs/adaptive.md). */
struct bb_model_tuning {
    int adaptive;                 /* adaptive = on */
    uint32_t pinned;              /* operator pin, 0 = none */
    uint32_t batch_target, wait_us, max_batch_size;
    double fit_a_us, fit_b_us;    /* batch service time = a + b * size */
    double fit_r2;
    double best_size;             /* the controller's unclamped optimum */
    double arrival_rps, throughput_rps, latency_p99_us;
    double score;                 /* served share x SLO attainment, 0..1 */
    uint64_t slo_violations;
    uint32_t changes;             /* backend speed changes detected */
};

/* Read the adaptive state. Returns 0, BB_EINVAL, BB_EDISCONNECTED, BB_ETIMEDOUT. */
BB_API int bb_model_tuning(bb_model *m, struct bb_model_tuning *out);

/* Pin the model's batch target (1..max_batch_size) for every client, or
 * release the pin with 0. Only a process of root or of the broker's own user
 * may. Returns 0, BB_EINVAL, BB_ENOMODEL, BB_EPERM, BB_EDISCONNECTED,
 * BB_ETIMEDOUT. */
BB_API int bb_model_pin(bb_model *m, uint32_t target);

/* How long bb_wait spins before sleeping (default 50000 ns; 0 = sleep at once). */
BB_API void bb_client_set_spin_ns(bb_client *c, int64_t spin_ns);

/* Text for a code; never NULL. */
BB_API const char *bb_strerror(int code);

/* "BB_EINVAL"-style name for a code; never NULL. */
BB_API const char *bb_errname(int code);

/* The library's version as "MAJOR.MINOR.PATCH" (static storage); the
 * numbers go to the pointers that are not NULL. Compare with
 * BB_VERSION_STRING of <batchbroker/version.h>, the headers' version. */
BB_API const char *bb_version(int *major, int *minor, int *patch);

#ifdef __cplusplus
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}
#endif
#endif
