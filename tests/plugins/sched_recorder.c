/* A test backend that writes down every batch it is given, so that the
 * scheduling tests can see what reached the backend: how many requests, the
 * bytes the batch held, and each request's identity and priority.
 *
 * Params:
 *   file      (required) the log; one line per batch, appended with one write
 *             so lines from several instances never interleave:
 *               n=<n> bytes=<sum of input len + output cap> <id>:<prio> ...
 *             where <id> is the input's first 8 bytes as a little-endian
 *             unsigned integer (0 for a shorter input), in hex.
 *   batch_us  time per batch, slept (default 0).
 *   item_us   time per request of the batch, slept too (default 0).
 *   threads   (optional) a second log: the id (gettid) of the thread that ran
 *             each batch, one line per batch.
 *   gate      (optional) a path: each batch first waits until that file
 *             exists (looked for every millisecond, for 60 s at most), so
 *             that a test holds a batch in the backend for as long as it
 *             needs, without guessing a time.
 *
 * Output: a copy of the input, like the synthetic backend. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"

struct rec_state {
    char file[256], threads[256], gate[256];
    unsigned long batch_us, item_us;
};

static int rec_init(const struct bb_param *params, size_t nparams, void **state, char *err,
                    size_t errlen)
{
    struct rec_state st = {.file = "", .threads = "", .gate = ""};
    for (size_t i = 0; i < nparams; i++) {
        const char *k = params[i].key, *v = params[i].value;
        if (!strcmp(k, "file")) {
            snprintf(st.file, sizeof st.file, "%s", v);
        } else if (!strcmp(k, "threads")) {
            snprintf(st.threads, sizeof st.threads, "%s", v);
        } else if (!strcmp(k, "gate")) {
            snprintf(st.gate, sizeof st.gate, "%s", v);
        } else if (!strcmp(k, "batch_us") || !strcmp(k, "item_us")) {
            char *end;
            errno = 0;
            unsigned long us = strtoul(v, &end, 10);
            if (errno || *end || end == v) {
                snprintf(err, errlen, "sched_recorder: %s = \"%s\": expected an integer", k, v);
                return BB_EINVAL;
            }
            *(k[0] == 'b' ? &st.batch_us : &st.item_us) = us;
        } else {
            snprintf(err, errlen, "sched_recorder: unknown param \"%s\"", k);
            return BB_EINVAL;
        }
    }
    if (!st.file[0]) {
        snprintf(err, errlen, "sched_recorder: param.file is required");
        return BB_EINVAL;
    }
    struct rec_state *p = malloc(sizeof *p);
    if (!p)
        return BB_ENOMEM;
    *p = st;
    *state = p;
    return 0;
}

static void append(const char *file, const char *line, size_t len)
{
    int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        ssize_t w = write(fd, line, len);
        (void)w;
        close(fd);
    }
}

static int rec_process(void *state, struct bb_batch *batch)
{
    struct rec_state *st = state;
    struct stat sb;
    for (int i = 0; st->gate[0] && i < 60000 && stat(st->gate, &sb) != 0; i++) {
        struct timespec ms = {.tv_nsec = 1000000L};
        nanosleep(&ms, NULL);
    }
    unsigned long us = st->batch_us + st->item_us * batch->n;
    if (us) {
        struct timespec ts = {.tv_sec = (time_t)(us / 1000000), .tv_nsec = (long)(us % 1000000) * 1000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    char line[8192];
    size_t bytes = 0;
    for (uint32_t i = 0; i < batch->n; i++)
        bytes += batch->inputs[i].len + batch->outputs[i].cap;
    int used = snprintf(line, sizeof line, "n=%u bytes=%zu", batch->n, bytes);
    for (uint32_t i = 0; i < batch->n; i++) {
        const struct bb_view *in = &batch->inputs[i];
        struct bb_outbuf *out = &batch->outputs[i];
        uint64_t id = 0;
        if (in->len >= 8)
            memcpy(&id, in->ptr, 8);
        if (used < (int)sizeof line - 40)
            used += snprintf(line + used, sizeof line - (size_t)used, " %llx:%u",
                             (unsigned long long)id, (unsigned)batch->priorities[i]);
        size_t len = in->len <= out->cap ? in->len : out->cap;
        if (len)
            memcpy(out->ptr, in->ptr, len);
        out->len = len;
        if (in->len > out->cap)
            out->status = BB_ETOOBIG;
    }
    line[used++] = '\n';
    append(st->file, line, (size_t)used);
    if (st->threads[0]) {
        used = snprintf(line, sizeof line, "%ld\n", (long)syscall(SYS_gettid));
        append(st->threads, line, (size_t)used);
    }
    return 0;
}

static void rec_fini(void *state)
{
    free(state);
}

static const struct bb_backend_ops rec_ops = {
    .abi_version = BB_BACKEND_ABI_VERSION,
    .struct_size = sizeof(struct bb_backend_ops),
    .name = "sched_recorder",
    .hardware = BB_BACKEND_HW_CPU,
    .init = rec_init,
    .process = rec_process,
    .fini = rec_fini,
};

BB_BACKEND_EXPORT const struct bb_backend_ops *bb_backend_entry(void)
{
    return &rec_ops;
}
