/* An echo backend built against the version-1 ABI (backend_v1.h, the header
 * as it shipped), as a third-party plugin compiled before version 2 was: the
 * broker must still load it and keep version 1's promises, which it checks
 * and counts:
 *   - register_memory comes before any batch holds a row of that memory, and
 *     unregister_memory after the last: a row outside every registered
 *     range counts as `outside` (and fails with BB_EINVAL);
 *   - neither is ever called while process() runs on the same state
 *     (`overlaps`).
 * Params:
 *   stats = PATH: at fini, append one line of counters to PATH;
 *   hold = PATH: register_memory appends a line to this file where it exists
 *   and waits while it exists (at most 60 s): a registration as long as a
 *   test wants, which the test sees begin. */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend_v1.h"
#include "batchbroker/client.h"

#define MAX_RANGES 256

struct v1_state {
    char stats[512], hold[512];
    atomic_int busy; /* process() or a registration runs */
    struct {
        const char *base;
        size_t len;
    } ranges[MAX_RANGES];
    unsigned nranges;
    unsigned long registers, unregisters, batches, rows, outside, overlaps;
};

static void enter(struct v1_state *st)
{
    if (atomic_exchange(&st->busy, 1))
        st->overlaps++;
}

static void leave(struct v1_state *st)
{
    atomic_store(&st->busy, 0);
}

static int v1_init(const struct bb_param *params, size_t nparams, void **state, char *err,
                   size_t errlen)
{
    struct v1_state *st = calloc(1, sizeof *st);
    if (!st) return BB_ENOMEM;
    for (size_t i = 0; i < nparams; i++) {
        if (strcmp(params[i].key, "stats") == 0) {
            snprintf(st->stats, sizeof st->stats, "%s", params[i].value);
        } else if (strcmp(params[i].key, "hold") == 0) {
            snprintf(st->hold, sizeof st->hold, "%s", params[i].value);
        } else {
            snprintf(err, errlen, "v1echo: unknown param \"%s\"", params[i].key);
            free(st);
            return BB_EINVAL;
        }
    }
    *state = st;
    return 0;
}

static int inside(const struct v1_state *st, const void *p, size_t len)
{
    for (unsigned k = 0; k < st->nranges; k++) {
        const char *b = st->ranges[k].base;
        if ((const char *)p >= b && (size_t)((const char *)p - b) <= st->ranges[k].len &&
            len <= st->ranges[k].len - (size_t)((const char *)p - b))
            return 1;
    }
    return 0;
}

static int v1_process(void *state, struct bb_batch *batch)
{
    struct v1_state *st = state;
    enter(st);
    st->batches++;
    for (uint32_t i = 0; i < batch->n; i++) {
        const struct bb_view *in = &batch->inputs[i];
        struct bb_outbuf *out = &batch->outputs[i];
        st->rows++;
        /* (The tests run it without dedup: a deduplicated request would run
         * on the broker's private copy, outside every segment.) */
        if (!inside(st, in->ptr, in->len) || !inside(st, out->ptr, out->cap)) {
            st->outside++;
            out->status = BB_EINVAL;
            continue;
        }
        size_t len = in->len <= out->cap ? in->len : out->cap;
        if (len) memcpy(out->ptr, in->ptr, len);
        out->len = len;
        if (in->len > out->cap) out->status = BB_ETOOBIG;
    }
    leave(st);
    return 0;
}

static void hold(const struct v1_state *st)
{
    int fd = st->hold[0] ? open(st->hold, O_WRONLY | O_APPEND) : -1;
    if (fd < 0) return;
    dprintf(fd, "held\n");
    close(fd);
    struct timespec ms = {.tv_nsec = 1000000};
    for (int waited = 0; access(st->hold, F_OK) == 0 && waited < 60000; waited++)
        nanosleep(&ms, NULL);
}

static int v1_register(void *state, void *base, size_t len)
{
    struct v1_state *st = state;
    enter(st);
    hold(st);
    int rc = 0;
    if (st->nranges < MAX_RANGES) {
        st->ranges[st->nranges].base = base;
        st->ranges[st->nranges].len = len;
        st->nranges++;
        st->registers++;
    } else {
        rc = BB_ENOMEM;
    }
    leave(st);
    return rc;
}

static void v1_unregister(void *state, void *base, size_t len)
{
    struct v1_state *st = state;
    enter(st);
    for (unsigned k = 0; k < st->nranges; k++)
        if (st->ranges[k].base == base && st->ranges[k].len == len) {
            st->ranges[k] = st->ranges[--st->nranges];
            st->unregisters++;
            break;
        }
    leave(st);
}

static void v1_fini(void *state)
{
    struct v1_state *st = state;
    if (st->stats[0]) {
        int fd = open(st->stats, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dprintf(fd, "registers=%lu unregisters=%lu still=%u batches=%lu rows=%lu outside=%lu "
                        "overlaps=%lu\n",
                    st->registers, st->unregisters, st->nranges, st->batches, st->rows,
                    st->outside, st->overlaps);
            close(fd);
        }
    }
    free(st);
}

static const struct bb_backend_ops v1_ops = {
    .abi_version = BB_BACKEND_ABI_VERSION, /* 1: this is the version-1 header */
    .struct_size = sizeof(struct bb_backend_ops),
    .name = "v1echo",
    .hardware = BB_BACKEND_HW_CPU,
    .init = v1_init,
    .process = v1_process,
    .fini = v1_fini,
    .register_memory = v1_register,
    .unregister_memory = v1_unregister,
};

BB_BACKEND_EXPORT const struct bb_backend_ops *bb_backend_entry(void)
{
    return &v1_ops;
}
