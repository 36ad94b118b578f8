/* synthetic backend: echo plus a configurable cost, so that benchmarks and
 * tests can model a backend whose time per batch is `batch_us + n * item_us`
 * without any real model. Params (all optional):
 *
 *   batch_us    fixed cost per batch, microseconds (decimal, e.g. 2.5), default 0
 *   item_us     cost per request, microseconds (decimal), default 0
 *   mode        spin (default): burn a CPU, like a CPU backend;
 *               sleep: give the CPU away, like a GPU backend waiting on a kernel
 *   fail_every  N > 0: every Nth batch fails with BB_EBACKEND (default 0 = never)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"

/* Ten seconds per batch or per item is already absurd; the cap keeps the
 * nanosecond arithmetic far from overflow. */
#define SYN_MAX_US 10000000.0

enum syn_mode { SYN_SPIN, SYN_SLEEP };

struct syn_state {
    uint64_t batch_ns, item_ns;
    enum syn_mode mode;
    uint64_t fail_every;
    uint64_t batches; /* process() calls so far; one thread per state */
};

/* Plain decimal only: strtod alone would also take " 1", "-1", "inf", "0x10". */
static int parse_us(const char *s, uint64_t *ns)
{
    size_t len = strlen(s);
    if (len == 0 || strspn(s, "0123456789.") != len || strspn(s, ".") == len) return -1;
    char *end;
    errno = 0;
    double us = strtod(s, &end);
    if (errno || *end || us > SYN_MAX_US) return -1;
    *ns = (uint64_t)(us * 1000.0 + 0.5);
    return 0;
}

static int parse_count(const char *s, uint64_t *n)
{
    size_t len = strlen(s);
    if (len == 0 || strspn(s, "0123456789") != len) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *n = v;
    return 0;
}

static int syn_init(const struct bb_param *params, size_t nparams, void **state, char *err,
                    size_t errlen)
{
    struct syn_state st = {.mode = SYN_SPIN};
    for (size_t i = 0; i < nparams; i++) {
        const char *k = params[i].key, *v = params[i].value;
        int bad;
        if (!strcmp(k, "batch_us")) {
            bad = parse_us(v, &st.batch_ns);
        } else if (!strcmp(k, "item_us")) {
            bad = parse_us(v, &st.item_ns);
        } else if (!strcmp(k, "fail_every")) {
            bad = parse_count(v, &st.fail_every);
        } else if (!strcmp(k, "mode")) {
            bad = 0;
            if (!strcmp(v, "spin")) {
                st.mode = SYN_SPIN;
            } else if (!strcmp(v, "sleep")) {
                st.mode = SYN_SLEEP;
            } else {
                snprintf(err, errlen, "synthetic: mode = \"%s\": expected spin or sleep", v);
                return BB_EINVAL;
            }
        } else {
            snprintf(err, errlen,
                     "synthetic: unknown param \"%s\" (known: batch_us, item_us, mode, "
                     "fail_every)",
                     k);
            return BB_EINVAL;
        }
        if (bad) {
            snprintf(err, errlen, "synthetic: %s = \"%s\": expected %s", k, v,
                     strcmp(k, "fail_every") ? "a decimal number of microseconds, 0 to 10000000"
                                             : "a non-negative integer");
            return BB_EINVAL;
        }
    }
    struct syn_state *p = malloc(sizeof *p);
    if (!p) {
        snprintf(err, errlen, "synthetic: out of memory");
        return BB_ENOMEM;
    }
    *p = st;
    *state = p;
    return 0;
}

static void add_ns(struct timespec *t, uint64_t ns)
{
    t->tv_sec += (time_t)(ns / 1000000000u);
    t->tv_nsec += (long)(ns % 1000000000u);
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

static int before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Both modes wait for an absolute deadline, so time spent being preempted or
 * interrupted counts towards the cost instead of adding to it. */
static void burn(const struct syn_state *st, uint32_t n)
{
    uint64_t ns = st->batch_ns;
    if (st->item_ns && n > (UINT64_MAX - ns) / st->item_ns)
        ns = UINT64_MAX; /* ~584 years: saturate rather than wrap */
    else
        ns += (uint64_t)n * st->item_ns;
    if (ns == 0) return;
    struct timespec deadline, now;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    add_ns(&deadline, ns);
    if (st->mode == SYN_SLEEP) {
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR) {
        }
        return;
    }
    do {
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (before(&now, &deadline));
}

static int syn_process(void *state, struct bb_batch *batch)
{
    struct syn_state *st = state;
    burn(st, batch->n);
    /* A failing batch still cost its time, as a real backend's would. */
    st->batches++;
    if (st->fail_every && st->batches % st->fail_every == 0) {
        if (batch->errmsg && batch->errmsg_cap)
            snprintf(batch->errmsg, batch->errmsg_cap, "synthetic failure (fail_every=%llu)",
                     (unsigned long long)st->fail_every);
        return BB_EBACKEND;
    }
    for (uint32_t i = 0; i < batch->n; i++) {
        const struct bb_view *in = &batch->inputs[i];
        struct bb_outbuf *out = &batch->outputs[i];
        size_t len = in->len <= out->cap ? in->len : out->cap;
        if (len) memcpy(out->ptr, in->ptr, len);
        out->len = len;
        if (in->len > out->cap) out->status = BB_ETOOBIG;
    }
    return 0;
}

static void syn_fini(void *state)
{
    free(state);
}

static const struct bb_backend_ops syn_ops = {
    .abi_version = BB_BACKEND_ABI_VERSION,
    .struct_size = sizeof(struct bb_backend_ops),
    .name = "synthetic",
    .hardware = BB_BACKEND_HW_CPU,
    .init = syn_init,
    .process = syn_process,
    .fini = syn_fini,
};

BB_BACKEND_EXPORT const struct bb_backend_ops *bb_backend_entry(void)
{
    return &syn_ops;
}
