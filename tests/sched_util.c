/* Helpers shared by the scheduling suites: see sched_util.h. */
#include "sched_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct bbt_broker B;

/* Files a test created (recorder logs), removed by the suite's fini. */
static char tmpfiles[8][108];
static int ntmpfiles;

void sch_fini(void)
{
    bbt_cleanup_all();
    for (int i = 0; i < ntmpfiles; i++)
        unlink(tmpfiles[i]);
    ntmpfiles = 0;
}

/* Start a broker from INI text built like printf. */
void sch_start_cfg(const char *fmt, ...)
{
    char text[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    cr_assert(n > 0 && (size_t)n < sizeof text, "config text too long");
    int rc = bbt_broker_start(&B, text, NULL);
    cr_assert_eq(rc, 0, "broker did not start (status %#x) with:\n%s", B.exit_status, text);
}

/* A fresh log path for the recorder; removed at the end of the test. */
const char *sch_rec_path(void)
{
    cr_assert(ntmpfiles < 8);
    char *p = tmpfiles[ntmpfiles++];
    bbt_unique_path(p, sizeof tmpfiles[0], ".rec");
    unlink(p);
    return p;
}

/* The request completed with 0 and its output is the echo of input `id`. */
bool sch_echo_ok(const bb_request *r, uint64_t id)
{
    size_t len = 0;
    const void *out = bb_request_output(r, &len);
    return bb_request_status(r) == 0 && out && len == bb_request_input_capacity(r) &&
           bbt_check(out, len, id);
}

bb_request *sch_req_new(bb_model *m, size_t in_len, size_t out_cap, uint64_t id)
{
    bb_request *r = NULL;
    int rc = bb_request_new(m, in_len, out_cap, &r);
    cr_assert_eq(rc, 0, "bb_request_new(%zu, %zu): %s", in_len, out_cap, bb_strerror(rc));
    bbt_fill(bb_request_input(r), in_len, id);
    return r;
}

void sch_submit(bb_request *r, int prio, uint32_t timeout_us, uint32_t flags, uint64_t tag)
{
    struct bb_submit_opts o = {.priority = prio, .timeout_us = timeout_us, .flags = flags,
                               .tag = tag};
    int rc = bb_submit(r, &o);
    cr_assert_eq(rc, 0, "bb_submit: %s", bb_strerror(rc));
}

bb_request *sch_blocked(const char *name, size_t bytes, bb_client **c, bb_model **m)
{
    *c = bbt_connect_ok(&B, NULL);
    *m = bbt_open_ok(*c, name);
    bb_request *blocker = sch_req_new(*m, bytes, bytes, 1);
    sch_submit(blocker, 0, 0, 0, 1);
    bbt_wait_dispatched(*m, 1);
    return blocker;
}

/* Wait (bounded) for completion; returns the request's status. */
int sch_finish(bb_request *r, int timeout_ms)
{
    int rc = bb_wait(r, (int64_t)timeout_ms * 1000000);
    cr_assert_eq(rc, 0, "bb_wait: %s (tag %llu)", bb_strerror(rc),
                 (unsigned long long)bb_request_tag(r));
    return bb_request_status(r);
}

/* Wait until the model has rejected `n` requests. */
void sch_wait_rejected(bb_model *m, uint64_t n)
{
    for (int i = 0; i < 1000; i++) {
        if (bbt_stats_of(m).rejected >= n)
            return;
        bbt_msleep(2);
    }
    cr_assert_fail("the model never rejected %llu requests", (unsigned long long)n);
}

/* Wait until `queued` requests sit in the model's queues. */
void sch_wait_queued(bb_model *m, uint32_t queued)
{
    for (int i = 0; i < 1000; i++) {
        if (bbt_stats_of(m).queued >= queued)
            return;
        bbt_msleep(2);
    }
    cr_assert_fail("the model never had %u requests queued", queued);
}

/* Tags of the next n completions of client c, in completion order. */
int sch_collect(bb_client *c, int n, uint64_t *tags, int timeout_ms)
{
    int got = 0;
    uint64_t end = bbt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (got < n && bbt_now_ns() < end) {
        bb_request *out[64];
        int k = bb_client_poll(c, out, 64);
        cr_assert_geq(k, 0, "bb_client_poll: %s", bb_strerror(k));
        for (int i = 0; i < k && got < n; i++)
            tags[got++] = bb_request_tag(out[i]);
        if (k == 0)
            bbt_msleep(1);
    }
    return got;
}

void *sch_shared_page(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(p, MAP_FAILED, "mmap");
    return p;
}

/* Fork a client process; it must connect by itself (never fork a live
 * client) and reports through its exit status: 0 = all good. */
pid_t sch_spawn(int (*fn)(void *), void *arg)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork");
    if (pid == 0)
        _exit(fn(arg));
    return pid;
}

void sch_reap_ok(pid_t pid, const char *what)
{
    int st = bbt_waitpid_bounded(pid, 60000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "%s process failed (wait status %#x; exit code = failing step)", what, st);
}

/* ---- the recorder's log ---- */

struct rec_batch sch_recs[REC_MAX_BATCHES];

/* Parse the log into sch_recs; returns the number of batches. */
int sch_rec_read(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0; /* no batch ran yet */
    char line[8192];
    int nb = 0;
    while (nb < REC_MAX_BATCHES && fgets(line, sizeof line, f)) {
        struct rec_batch *b = &sch_recs[nb];
        memset(b, 0, sizeof *b);
        int off = 0;
        cr_assert_eq(sscanf(line, "n=%u bytes=%zu%n", &b->n, &b->bytes, &off), 2,
                     "recorder line: %s", line);
        char *p = line + off;
        for (unsigned i = 0; i < b->n && i < REC_MAX_ITEMS; i++) {
            unsigned long long id;
            unsigned prio;
            int used = 0;
            cr_assert_eq(sscanf(p, " %llx:%u%n", &id, &prio, &used), 2, "recorder line: %s",
                         line);
            b->ids[i] = id;
            b->prios[i] = prio;
            p += used;
        }
        nb++;
    }
    fclose(f);
    return nb;
}

/* How many times input `id` reached the backend. */
int sch_rec_count(int nb, uint64_t id)
{
    int k = 0;
    for (int b = 0; b < nb; b++)
        for (unsigned i = 0; i < sch_recs[b].n && i < REC_MAX_ITEMS; i++)
            k += sch_recs[b].ids[i] == id;
    return k;
}

/* ---- flooding clients (child processes) ---- */

/* Keep `depth` requests of one priority in flight, resubmitting each as it
 * completes, and check every answer. Exit code: 0, or the failing step. */
int sch_flood_main(void *p)
{
    struct flood_arg *a = p;
    bb_client *c;
    bb_model *m;
    if (bbt_connect(&B, &c) != 0)
        return 10;
    if (bb_model_open(c, a->model, &m) != 0)
        return 11;
    bb_request *rs[256];
    struct bb_submit_opts o = {.priority = a->prio, .timeout_us = a->timeout_us};
    for (int i = 0; i < a->depth; i++) {
        if (bb_request_new(m, 64, 64, &rs[i]) != 0)
            return 12;
        bbt_fill(bb_request_input(rs[i]), 64, 0xF10000 + (uint64_t)i);
        if (bb_submit(rs[i], &o) != 0)
            return 13;
    }
    atomic_store(&a->sh->ready, 1);
    uint64_t start = bbt_now_ns();
    int errors = 0;
    /* One client, one level: its own requests complete in submission order,
     * so waiting round-robin follows them. */
    for (int i = 0; !atomic_load(&a->sh->stop) && bbt_now_ns() - start < a->run_ns;
         i = (i + 1) % a->depth) {
        if (bb_wait(rs[i], 20000000000ll) != 0)
            return 14;
        errors += !sch_echo_ok(rs[i], 0xF10000 + (uint64_t)i);
        atomic_fetch_add(&a->sh->done, 1);
        if (bb_submit(rs[i], &o) != 0)
            return 15;
    }
    atomic_store(&a->sh->end_ns, bbt_now_ns());
    for (int i = 0; i < a->depth; i++) {
        if (bb_wait(rs[i], 20000000000ll) != 0)
            return 16;
        errors += !sch_echo_ok(rs[i], 0xF10000 + (uint64_t)i);
    }
    bb_disconnect(c);
    return errors ? 17 : 0;
}

void sch_wait_flag(_Atomic int *flag, int want, const char *what)
{
    for (int i = 0; i < 5000 && atomic_load(flag) < want; i++)
        bbt_msleep(2);
    cr_assert_geq(atomic_load(flag), want, "%s never happened", what);
}
