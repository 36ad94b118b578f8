/*
 * batchbroker backend plugin ABI.
 *
 * A backend is a shared object loaded with dlopen(RTLD_NOW|RTLD_LOCAL). It
 * exports one symbol, BB_BACKEND_ENTRY_SYMBOL, a function returning a pointer
 * to a static struct bb_backend_ops. The broker refuses a table whose
 * abi_version differs from BB_BACKEND_ABI_VERSION, whose struct_size is
 * smaller than the broker's, or whose reserved fields are not zero.
 *
 * Each executor instance of a model calls init once and gets its own state, so
 * process() is never called concurrently on one state. process() gets views:
 * inputs[i].ptr points into the submitting client's shared segment and
 * outputs[i].ptr into the same segment, nothing copied. Client memory is
 * untrusted: an input may change while process() reads it; a backend must
 * never read past inputs[i].len nor write past outputs[i].cap.
 *
 * Overlap: the broker guarantees that one request's input and output do not
 * overlap (it fails such a request with BB_EINVAL before any backend sees
 * it), so memcpy from inputs[i] to outputs[i] is safe. It guarantees nothing
 * across requests: two requests of one client may name overlapping outputs,
 * or one request's output may overlap another's input (a client's own
 * segment; ruling that out would cost a search per request, and only that
 * client's answers can suffer). So never assume buffers of different
 * requests are disjoint: no `restrict` across requests, no memcpy between
 * two requests' buffers, and writes to outputs[i] may change what inputs[j]
 * reads, as any change of client memory during process() may.
 */
#ifndef BATCHBROKER_BACKEND_H
#define BATCHBROKER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BB_BACKEND_ABI_VERSION 1u
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
 * sets len, and may set status to a negative BB_E* code (e.g. BB_ETOOBIG) to
 * fail that request alone. Both start at 0. */
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
    char *errmsg;                   /* process() may write a NUL-terminated */
    size_t errmsg_cap;              /* message here when it fails the batch */
};

/* Backend hints for hardware = auto. */
enum { BB_BACKEND_HW_CPU = 1, BB_BACKEND_HW_GPU = 2 };

struct bb_backend_ops {
    uint32_t abi_version;           /* BB_BACKEND_ABI_VERSION */
    uint32_t struct_size;           /* sizeof(struct bb_backend_ops) */
    const char *name;
    uint32_t hardware;              /* BB_BACKEND_HW_* or 0 if unknown */
    uint32_t reserved0;             /* must be 0 */

    /* Create one instance. params are the model's param.* keys (valid only
     * during the call). On failure return a negative BB_E* code and write a
     * message to err. Required. */
    int (*init)(const struct bb_param *params, size_t nparams, void **state,
                char *err, size_t errlen);

    /* Run one batch. Return 0, or a negative BB_E* code to fail every request
     * of the batch with BB_EBACKEND and batch->errmsg. Required. */
    int (*process)(void *state, struct bb_batch *batch);

    /* Destroy an instance. Required. */
    void (*fini)(void *state);

    /* Optional: a client segment was mapped at [base, base+len) (e.g. to pin
     * it for DMA), or is about to be unmapped. May be NULL. */
    int (*register_memory)(void *state, void *base, size_t len);
    void (*unregister_memory)(void *state, void *base, size_t len);

    void *reserved[4];              /* must be NULL */
};

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
