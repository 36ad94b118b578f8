/*
 * batchbroker backend plugin ABI, version 2 (docs/backends/abi.md).
 *
 * A backend is a shared object loaded with dlopen(RTLD_NOW|RTLD_LOCAL). It
 * exports one symbol, BB_BACKEND_ENTRY_SYMBOL, a function returning a pointer
 * to a static struct bb_backend_ops.
 *
 * Versions and compatibility. The broker loads tables of ABI 1 and 2:
 *   - abi_version 1 with struct_size BB_BACKEND_OPS_V1_SIZE (the table ends
 *     at reserved[]): a plugin built against the version-1 header. It is
 *     served exactly as before: init(params), a synchronous process(), and
 *     register_memory/unregister_memory called under the instance's lock,
 *     never concurrently with its process().
 *   - abi_version 2 with struct_size sizeof(struct bb_backend_ops): this
 *     header. Version 2 only appends to version 1's table, so a version-1
 *     table is a prefix of it.
 * Any other abi_version, a struct_size that is not the one of its version,
 * or a reserved field that is not zero is refused at load time with a
 * message that names the header to rebuild against. A version-3 broker will
 * keep loading version-2 tables the same way.
 *
 * Instances. Each executor instance of a model gets its own state from init
 * (or init2), so process() and submit() are never called concurrently on one
 * state. process()/submit() get views: inputs[i].ptr points into the
 * submitting client's shared segment and outputs[i].ptr into the same
 * segment, nothing copied. Client memory is untrusted: an input may change
 * while the backend reads it; a backend must never read past inputs[i].len
 * nor write past outputs[i].cap.
 *
 * Version 2 adds, each optional:
 *   - init2: init with context (instance, node, max_batch_size, a logger);
 *   - register_segment / unregister_segment: the broker's registration
 *     thread hands over each client segment once, off the dispatcher and
 *     concurrently with batches (see the functions);
 *   - submit: asynchronous batches; the backend calls batch->complete later,
 *     from any thread, and up to max_inflight batches of one state may be in
 *     flight at once.
 *
 * Overlap: the broker guarantees that one request's input and output do not
 * overlap (it fails such a request with BB_EINVAL before any backend sees
 * it), so memcpy from inputs[i] to outputs[i] is safe. It guarantees nothing
 * across requests, in one batch or in batches in flight together: two
 * requests of one client may name overlapping outputs, or one request's
 * output may overlap another's input (a client's own segment; ruling that
 * out would cost a search per request, and only that client's answers can
 * suffer). So never assume buffers of different requests are disjoint: no
 * `restrict` across requests, no memcpy between two requests' buffers, and
 * writes to outputs[i] may change what inputs[j] reads, as any change of
 * client memory during a batch may.
 */
#ifndef BATCHBROKER_BACKEND_H
#define BATCHBROKER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BB_BACKEND_ABI_VERSION 2u
#define BB_BACKEND_ENTRY_SYMBOL "bb_backend_entry"

/* One config key of the model's section with its "param." prefix removed. */
struct bb_param {
    const char *key;
    const char *value;
};

/* Read-only view of one request's input (zero copy). */
struct bb_view {
    const void *ptr;
    size_t len;
};

/* One request's output buffer. The backend writes at most cap bytes at ptr,
 * sets len, and may set status to fail that request alone: BB_EINVAL (not an
 * input the model takes), BB_ETOOBIG (the output does not fit cap),
 * BB_ENOMEM or BB_EBACKEND. Both start at 0. Any other status (BB_EPENDING,
 * a code of the broker's or the client's own, a value outside the BB_E*
 * list), or a len over cap with status 0 (the cap the broker gave: writing
 * cap changes nothing), breaks the contract: the broker
 * answers that request BB_EBACKEND and logs the backend's name and what it
 * gave. */
struct bb_outbuf {
    void *ptr;
    size_t cap;
    size_t len;
    int status;
    uint32_t reserved;
};

struct bb_batch {
    uint32_t n;                     /* requests in the batch, >= 1 */
    int numa_node;                  /* node of the dispatcher that formed it */
    const struct bb_view *inputs;   /* n views */
    struct bb_outbuf *outputs;      /* n buffers */
    const uint8_t *priorities;      /* n levels, BB_PRIORITY_CRITICAL..LOW */
    char *errmsg;                   /* the backend may write a NUL-terminated */
    size_t errmsg_cap;              /* message here when it fails the batch */

    /* ---- ABI 2 (a version-1 plugin never reads past errmsg_cap) ---- */

    /* n segment ids (struct bb_segment.id): inputs[i] and outputs[i] both lie
     * in segment segments[i], or segments[i] is 0 and they lie in the
     * broker's own memory (a deduplicated request runs on a private copy),
     * which is never registered. NULL from callers that are not the broker
     * (an in-process benchmark): treat every row as unregistered. */
    const uint32_t *segments;
    /* Asynchronous backends (submit): call once, from any thread, when the
     * batch is done, with 0 or a negative BB_E* code that fails every request
     * of the batch (with errmsg). The batch, its arrays and the memory its
     * views point to stay valid until then, and must not be touched after:
     * the call hands every output to its client. It does not block (a few
     * stores and wake-ups per request). NULL for process(). A call for a
     * batch the backend does not hold (a second one, or one for a batch
     * whose submit then returned an error) is refused and logged, and the
     * first completion stands; but once the broker has handed the batch out
     * again, such a call cannot be told from the new submission's own, and
     * a call for a struct the broker never handed out, or after fini, is
     * undefined. */
    void (*complete)(struct bb_batch *batch, int rc);
};

/* Backend hints for hardware = auto. */
enum { BB_BACKEND_HW_CPU = 1, BB_BACKEND_HW_GPU = 2 };

/* Levels of bb_init_args.log, as the broker's log_level names them. */
enum {
    BB_BACKEND_LOG_ERROR = 0,
    BB_BACKEND_LOG_WARN = 1,
    BB_BACKEND_LOG_INFO = 2,
    BB_BACKEND_LOG_DEBUG = 3
};

/* What init2 is told about the instance it creates. Valid only during the
 * call, except log and log_ctx, which stay valid until fini returns. */
struct bb_init_args {
    uint32_t size;                  /* sizeof(struct bb_init_args) of the broker */
    uint32_t instance;              /* 0 .. instances-1 */
    uint32_t instances;             /* of this model, over all its replicas (at least 1) */
    int32_t numa_node;              /* node its executor is pinned to; -1 unknown */
    uint32_t max_batch_size;        /* no batch holds more requests */
    uint32_t reserved0;             /* 0 */
    const char *model;              /* the model's name, for messages */
    const struct bb_param *params;  /* the model's param.* keys */
    size_t nparams;
    /* The broker's log (level BB_BACKEND_LOG_*, one line, prefixed with the
     * model's name); any thread, until fini returns. Never NULL. */
    void (*log)(void *log_ctx, int level, const char *msg);
    void *log_ctx;
};

/* A client segment as register_segment sees it. */
struct bb_segment {
    uint32_t size;                  /* sizeof(struct bb_segment) of the broker */
    uint32_t id;                    /* non-zero, unique for the broker's life */
    void *base;                     /* mapped at [base, base + len) */
    size_t len;
    int32_t numa_node;              /* node its memory prefers; -1 unknown */
    uint32_t reserved0;             /* 0 */
};

struct bb_backend_ops {
    uint32_t abi_version;           /* BB_BACKEND_ABI_VERSION */
    uint32_t struct_size;           /* sizeof(struct bb_backend_ops) */
    const char *name;
    uint32_t hardware;              /* BB_BACKEND_HW_* or 0 if unknown */
    uint32_t reserved0;             /* must be 0 */

    /* Create one instance. params are the model's param.* keys (valid only
     * during the call). On failure return a negative BB_E* code and write a
     * message to err (the broker reads at most errlen - 1 bytes of it, NUL
     * or not). Version 1: required. Version 2: exactly one of init
     * and init2. */
    int (*init)(const struct bb_param *params, size_t nparams, void **state,
                char *err, size_t errlen);

    /* Run one batch. Return 0, or a negative BB_E* code to fail every request
     * of the batch with BB_EBACKEND and batch->errmsg. Version 1: required.
     * Version 2: process or submit, or both (the broker then uses submit;
     * process serves in-process callers such as benchmarks). */
    int (*process)(void *state, struct bb_batch *batch);

    /* Destroy an instance. Required. Never called while a batch of the state
     * is in flight or a segment is registered with it. */
    void (*fini)(void *state);

    /* Version 1 only (NULL in version 2, which has register_segment): a
     * client segment was mapped at [base, base+len) (e.g. to pin it for DMA),
     * or is about to be unmapped. Called under the instance's lock, before
     * the client's first batch and after its last. May be NULL. */
    int (*register_memory)(void *state, void *base, size_t len);
    void (*unregister_memory)(void *state, void *base, size_t len);

    void *reserved[4];              /* must be NULL */

    /* ---- ABI 2 ---- */

    /* Create one instance, knowing its context (struct bb_init_args). Return
     * as init does. */
    int (*init2)(const struct bb_init_args *args, void **state, char *err, size_t errlen);

    /* A client segment for this state, once per segment and state, from the
     * broker's registration thread: concurrently with process(), submit()
     * and completions of the same state (the backend locks what they share),
     * never concurrently with each other. The client attaches once every
     * register_segment of its segment returned, so no batch holds a row of a
     * segment before its registration ended; a negative return is logged
     * (rate-limited), and the segment's rows still come (the backend must
     * cope, e.g. by copying them). unregister_segment comes for every segment that was
     * registered (whatever its return), after every batch holding one of its
     * rows completed, and before the memory is unmapped. Both may take
     * milliseconds: no batch waits for them. May be NULL (both or neither). */
    int (*register_segment)(void *state, const struct bb_segment *seg);
    void (*unregister_segment)(void *state, const struct bb_segment *seg);

    /* Start one batch and return at once: 0 when the backend took it (it then
     * calls batch->complete exactly once, possibly before submit returns), or
     * a negative BB_E* code when it did not (complete is then never called,
     * and the broker fails the batch with errmsg; where complete was called
     * all the same, that completion stands and the error is logged). At most max_inflight
     * batches of one state are in flight; submit is never called concurrently
     * on one state. NULL: synchronous (process). */
    int (*submit)(void *state, struct bb_batch *batch);
    uint32_t max_inflight;          /* with submit: 1..64; else 0 */
    uint32_t reserved1;             /* must be 0 */

    void *reserved2[4];             /* must be NULL */
};

/* The size of a version-1 table: everything up to init2. */
#define BB_BACKEND_OPS_V1_SIZE offsetof(struct bb_backend_ops, init2)
#define BB_BACKEND_MAX_INFLIGHT 64u

typedef const struct bb_backend_ops *(*bb_backend_entry_fn)(void);

#if defined(__GNUC__)
#define BB_BACKEND_EXPORT __attribute__((visibility("default")))
#else
#define BB_BACKEND_EXPORT
#endif

#ifdef __cplusplus
}
#endif
#endif
