/* Baseline "shm": the transport floor. Client threads and one server process
 * share a MAP_SHARED region (created before fork); each client thread has a
 * channel: a submission ring of slot indices and per-slot descriptors and
 * buffers. The server sweeps the channels round robin and hands whatever it
 * found (up to max_batch_size, never waiting for more) to the same backend in
 * one call. No queues, priorities, validation, deadlines or batching policy:
 * the broker's data path minus its logic.
 *
 * Who writes what:
 *   sq[], sq_tail, slot descriptors (len, prio, gen): the client; the server's
 *     acquire load of sq_tail pairs with the client's release store.
 *   slot done_gen, status, out_len, output: the server, done_gen last with
 *     release; the client's acquire load of done_gen pairs with it.
 *   cq_seq: the server bumps it after each batch (the futex clients sleep on).
 *   waiting: the client, while it sleeps; server_sleeping: the server.
 * Wait modes: spin (both sides poll) or sleep (futex at once). Sleeping uses
 * the publish / seq_cst fence / check-the-flag handshake on both sides. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

struct shm_ctl {
    _Atomic uint32_t doorbell;          /* futex word; clients bump it */
    _Atomic uint32_t server_sleeping;
    _Atomic uint32_t stop;
    uint32_t nchan;
};

struct shm_chan {
    _Atomic uint32_t sq_tail;           /* client writes */
    char pad0[124];
    _Atomic uint32_t cq_seq;            /* server writes */
    char pad1[124];
    _Atomic uint32_t waiting;           /* client writes */
    char pad2[124];
};

struct shm_slot {
    _Atomic uint32_t done_gen;          /* server writes, release */
    int32_t status;                     /* server */
    uint32_t out_len;                   /* server */
    uint32_t gen, len, prio;            /* client, before publishing */
    char pad[40];
};
_Static_assert(sizeof(struct shm_slot) == 64, "one cache line per slot");
_Static_assert(sizeof(struct shm_chan) == 384, "hot words 128 bytes apart");

static struct {
    char *base;
    size_t size, chan_size, in_cap, out_cap;
    uint32_t nchan, nslots, mask;
    pid_t server;
} R; /* set in the parent before fork, read-only afterwards */

struct sthread {
    struct shm_chan *ch;
    uint32_t *sq;
    struct shm_slot *slot;
    unsigned char *data;
    uint32_t tail;                      /* private copy of sq_tail */
    enum bench_wait mode;
};

static long futex(_Atomic uint32_t *w, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, w, op, val, ts, NULL, 0);
}

static struct shm_ctl *ctl(void)
{
    return (struct shm_ctl *)R.base;
}

static struct sthread chan_view(uint32_t c)
{
    char *p = R.base + 64 + (size_t)c * R.chan_size;
    struct sthread v = {.ch = (struct shm_chan *)p};
    v.sq = (uint32_t *)(p + sizeof(struct shm_chan));
    v.slot = (struct shm_slot *)(p + sizeof(struct shm_chan) + ((R.mask + 1) * 4 + 63) / 64 * 64);
    v.data = (unsigned char *)(v.slot + R.nslots);
    return v;
}

static unsigned char *slot_in(const struct sthread *v, uint32_t s)
{
    return v->data + (size_t)s * (R.in_cap + R.out_cap);
}

static unsigned char *slot_out(const struct sthread *v, uint32_t s)
{
    return slot_in(v, s) + R.in_cap;
}

/* ---- server ---- */

static void serve(const struct bench_opts *o, struct bench_shared *sh)
{
    struct bench_backend be;
    char err[512];
    void *state;
    if (bench_backend_load(&o->model, &be, err, sizeof err) < 0 ||
        bench_backend_state(&be, &state, err, sizeof err) < 0) {
        fprintf(stderr, "bb-bench: shm server: %s\n", err);
        _exit(1);
    }
    uint32_t max_batch = o->model.max_batch_size ? o->model.max_batch_size : 1;
    struct bb_view *views = calloc(max_batch, sizeof *views);
    struct bb_outbuf *outs = calloc(max_batch, sizeof *outs);
    uint8_t *prios = calloc(max_batch, 1);
    uint32_t *head = calloc(R.nchan, sizeof *head);
    uint32_t *bchan = calloc(max_batch, sizeof *bchan), *bslot = calloc(max_batch, sizeof *bslot);
    uint32_t *touched = calloc(R.nchan, sizeof *touched), *tlist = calloc(R.nchan, sizeof *tlist);
    struct sthread *chans = calloc(R.nchan, sizeof *chans);
    if (!views || !outs || !prios || !head || !bchan || !bslot || !touched || !tlist || !chans)
        _exit(1);
    for (uint32_t c = 0; c < R.nchan; c++) chans[c] = chan_view(c);
    int sleep_mode = o->wait == BENCH_WAIT_SLEEP;
    uint64_t idle = 0;
    uint32_t rr = 0;
    char errmsg[128];

    while (!atomic_load_explicit(&ctl()->stop, memory_order_relaxed)) {
        uint32_t k = 0, nt = 0;
        for (uint32_t n = 0; n < R.nchan && k < max_batch; n++) {
            uint32_t c = (rr + n) % R.nchan;
            struct sthread *v = &chans[c];
            uint32_t tail = atomic_load_explicit(&v->ch->sq_tail, memory_order_acquire);
            for (; head[c] != tail && k < max_batch; head[c]++, k++) {
                uint32_t s = v->sq[head[c] & R.mask] % R.nslots;
                struct shm_slot *d = &v->slot[s];
                bchan[k] = c;
                bslot[k] = s;
                views[k] = (struct bb_view){slot_in(v, s), d->len < R.in_cap ? d->len : R.in_cap};
                outs[k] = (struct bb_outbuf){.ptr = slot_out(v, s), .cap = R.out_cap};
                prios[k] = (uint8_t)d->prio;
            }
        }
        rr = R.nchan > 1 ? (rr + 1) % R.nchan : 0;
        if (k) {
            struct bb_batch b = {.n = k, .inputs = views, .outputs = outs, .priorities = prios,
                                 .errmsg = errmsg, .errmsg_cap = sizeof errmsg};
            bench_backend_run(&be, state, &b);
            for (uint32_t i = 0; i < k; i++) {
                struct shm_slot *d = &chans[bchan[i]].slot[bslot[i]];
                d->status = outs[i].status;
                d->out_len = (uint32_t)outs[i].len;
                atomic_store_explicit(&d->done_gen, d->gen, memory_order_release);
                if (!touched[bchan[i]]++) tlist[nt++] = bchan[i];
            }
            bench_count_batch(sh, sh->server_batch_count, k);
            for (uint32_t i = 0; i < nt; i++) {
                struct shm_chan *ch = chans[tlist[i]].ch;
                touched[tlist[i]] = 0;
                if (!sleep_mode) continue;
                atomic_fetch_add_explicit(&ch->cq_seq, 1, memory_order_release);
                atomic_thread_fence(memory_order_seq_cst);
                if (atomic_load_explicit(&ch->waiting, memory_order_relaxed))
                    futex(&ch->cq_seq, FUTEX_WAKE, INT_MAX, NULL);
            }
            idle = 0;
            continue;
        }
        if (!sleep_mode) {
            /* Spinning: yield now and then, in case a client shares this core. */
            if (++idle % 4096 == 0) sched_yield();
            else bench_cpu_relax();
            continue;
        }
        uint32_t bell = atomic_load_explicit(&ctl()->doorbell, memory_order_acquire);
        atomic_store_explicit(&ctl()->server_sleeping, 1, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        int pending = atomic_load(&ctl()->stop) != 0;
        for (uint32_t c = 0; c < R.nchan && !pending; c++)
            pending = atomic_load_explicit(&chans[c].ch->sq_tail, memory_order_acquire) != head[c];
        if (!pending) futex(&ctl()->doorbell, FUTEX_WAIT, bell, NULL);
        atomic_store_explicit(&ctl()->server_sleeping, 0, memory_order_relaxed);
    }
    be.ops->fini(state);
    _exit(0);
}

static int s_server_start(struct bench_env *env, pid_t *server_pid)
{
    const struct bench_opts *o = env->o;
    R.nchan = o->clients * o->threads;
    R.nslots = o->concurrency;
    R.mask = 1;
    while (R.mask + 1 < R.nslots) R.mask = R.mask * 2 + 1;
    R.in_cap = (o->pmax + 63) & ~(size_t)63;
    R.out_cap = (o->out_cap + 63) & ~(size_t)63;
    R.chan_size = sizeof(struct shm_chan) + ((R.mask + 1) * 4 + 63) / 64 * 64 +
                  (size_t)R.nslots * (sizeof(struct shm_slot) + R.in_cap + R.out_cap);
    R.size = 64 + (size_t)R.nchan * R.chan_size;
    R.base = mmap(NULL, R.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (R.base == MAP_FAILED) {
        bench_fail(env->sh, "shm: cannot map %zu bytes", R.size);
        return -1;
    }
    ctl()->nchan = R.nchan;
    fflush(NULL);
    R.server = fork();
    if (R.server < 0) {
        bench_fail(env->sh, "shm: fork: %s", strerror(errno));
        munmap(R.base, R.size);
        return -1;
    }
    if (R.server == 0) {
        if (o->nserver_cpus > 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            for (int i = 0; i < o->nserver_cpus; i++) CPU_SET(o->server_cpus[i], &set);
            sched_setaffinity(0, sizeof set, &set);
        }
        serve(o, env->sh);
    }
    env->run->has_batch_hist = 1;
    *server_pid = R.server;
    return 0;
}

static void s_server_stop(struct bench_env *env)
{
    int st;
    atomic_store(&ctl()->stop, 1);
    atomic_fetch_add(&ctl()->doorbell, 1);
    futex(&ctl()->doorbell, FUTEX_WAKE, INT_MAX, NULL);
    if (waitpid(R.server, &st, 0) == R.server && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        bench_fail(env->sh, "shm: the server failed");
    munmap(R.base, R.size);
}

/* ---- client ---- */

static int s_proc_open(struct bench_env *env, int proc, void **out)
{
    (void)proc;
    *out = env;
    return 0;
}

static void s_proc_close(void *ps)
{
    (void)ps;
}

static int s_thread_open(void *ps, int thread, uint32_t slots, void **out)
{
    struct bench_env *env = ps;
    struct sthread *t = malloc(sizeof *t);
    if (!t || slots != R.nslots) {
        free(t);
        return -1;
    }
    *t = chan_view((uint32_t)thread);
    t->tail = atomic_load(&t->ch->sq_tail);
    t->mode = env->o->wait;
    *out = t;
    return 0;
}

static void s_thread_close(void *th)
{
    free(th);
}

static void *s_input(void *th, uint32_t slot)
{
    return slot_in(th, slot);
}

static int s_submit(void *th, uint32_t slot, size_t len, int prio)
{
    struct sthread *t = th;
    struct shm_slot *d = &t->slot[slot];
    d->len = (uint32_t)len;
    d->prio = (uint32_t)prio;
    d->gen++;
    t->sq[t->tail & R.mask] = slot;
    atomic_store_explicit(&t->ch->sq_tail, ++t->tail, memory_order_release);
    if (t->mode == BENCH_WAIT_SLEEP) {
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&ctl()->server_sleeping, memory_order_relaxed)) {
            atomic_fetch_add(&ctl()->doorbell, 1);
            futex(&ctl()->doorbell, FUTEX_WAKE, 1, NULL);
        }
    }
    return 0;
}

static int s_wait(void *th, uint32_t slot, uint64_t deadline, int *status)
{
    struct sthread *t = th;
    struct shm_slot *d = &t->slot[slot];
    uint64_t limit = deadline == BENCH_FOREVER ? bench_now_ns() + BENCH_GUARD_NS : deadline;
    for (uint32_t spins = 0;; spins++) {
        if (atomic_load_explicit(&d->done_gen, memory_order_acquire) == d->gen) {
            *status = d->status;
            return 1;
        }
        if (t->mode == BENCH_WAIT_SPIN) {
            if ((spins & 63) == 0 && bench_now_ns() >= limit) break;
            bench_cpu_relax();
            continue;
        }
        uint64_t now = bench_now_ns();
        if (now >= limit) break;
        uint32_t seq = atomic_load_explicit(&t->ch->cq_seq, memory_order_acquire);
        atomic_store_explicit(&t->ch->waiting, 1, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&d->done_gen, memory_order_acquire) != d->gen) {
            struct timespec ts = {.tv_sec = (time_t)((limit - now) / 1000000000u),
                                  .tv_nsec = (long)((limit - now) % 1000000000u)};
            futex(&t->ch->cq_seq, FUTEX_WAIT, seq, &ts);
        }
        atomic_store_explicit(&t->ch->waiting, 0, memory_order_relaxed);
    }
    if (deadline != BENCH_FOREVER) return 0;
    fprintf(stderr, "bb-bench: shm: no reply in %llu s\n",
            (unsigned long long)(BENCH_GUARD_NS / 1000000000u));
    return -1;
}

static const void *s_output(void *th, uint32_t slot, size_t *len)
{
    struct sthread *t = th;
    *len = t->slot[slot].out_len;
    return slot_out(t, slot);
}

const struct bench_xport bench_xport_shm = {
    .name = "shm",
    .server_start = s_server_start,
    .server_stop = s_server_stop,
    .proc_open = s_proc_open,
    .proc_close = s_proc_close,
    .thread_open = s_thread_open,
    .thread_close = s_thread_close,
    .input = s_input,
    .submit = s_submit,
    .wait = s_wait,
    .output = s_output,
};
