/* The backend ABI as version 1 shipped it (include/batchbroker/backend.h before
 * version 2), kept byte for byte apart from this comment and the include
 * guard: tests/plugins/v1echo.c is built against it, as a third-party plugin
 * built before version 2 was, to prove the broker still serves it. Never
 * include it with the current header. */
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
 */
#ifndef BATCHBROKER_BACKEND_V1_H
#define BATCHBROKER_BACKEND_V1_H

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
