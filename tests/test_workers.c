/* Dispatcher workers (broker/broker.c, mailbox.c, topology.c) and which
 * thread runs a batch (broker/executor.c).
 *
 * Every other suite also runs with two workers on a fake two-node topology
 * (the *_2workers ctest variants). This one checks what only several workers
 * have: clients on different nodes are served by different workers, and one
 * model's batches still hold requests of clients of both. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client_internal.h"
#include "harness.h"
#include "test_util.h"
#include "util_internal.h"

static struct bbt_broker B;
static char rec_log[108], tid_log[108];

static void cleanup(void)
{
    bbt_cleanup_all();
    if (rec_log[0])
        unlink(rec_log);
    if (tid_log[0])
        unlink(tid_log);
}

TestSuite(workers, .fini = cleanup, .timeout = 60);

#define PER_CLIENT 4

struct shared {
    _Atomic int ready, go, done, failed;
    _Atomic int worker_id[2];
};

/* The first two CPUs this process may run on, for clients on two fake
 * nodes; skips the test where there are fewer. */
static void two_cpus(int cpus[2])
{
    cpu_set_t allowed;
    cr_assert_eq(sched_getaffinity(0, sizeof allowed, &allowed), 0);
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < 2; cpu++)
        if (CPU_ISSET(cpu, &allowed))
            cpus[n++] = cpu;
    if (n < 2)
        cr_skip_test("two CPUs are needed for a fake two-node topology");
}

/* In client process k: pin to cpu, connect, open model and note which
 * worker serves the session. Exits the process on failure. */
static void pinned_client(int k, int cpu, const char *model, struct shared *sh, bb_client **c,
                          bb_model **m)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        _exit(2);
    if (bb_connect(B.sock, NULL, c) < 0 || bb_model_open(*c, model, m) < 0)
        _exit(3);
    atomic_store(&sh->worker_id[k], (int)(*c)->wpage->worker_id);
}

/* Shared results and two client processes, client k running main(k, cpus[k]). */
static struct shared *fork_two(const int cpus[2], void (*main_fn)(int, int, struct shared *),
                               pid_t pids[2])
{
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                             -1, 0);
    cr_assert_neq(sh, MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    for (int k = 0; k < 2; k++) {
        fflush(NULL);
        pids[k] = fork();
        cr_assert_geq(pids[k], 0);
        if (pids[k] == 0)
            main_fn(k, cpus[k], sh);
    }
    return sh;
}

/* The names of the threads of pid (/proc/PID/task/TID/comm); returns how
 * many (at most max). */
static int thread_names(pid_t pid, char names[][16], int max)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while (n < max && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[384];
        snprintf(p, sizeof p, "%s/%s/comm", path, e->d_name);
        FILE *f = fopen(p, "r");
        if (!f)
            continue; /* the thread ended */
        if (!fgets(names[n], 16, f))
            names[n][0] = 0;
        names[n][strcspn(names[n], "\n")] = 0;
        fclose(f);
        n++;
    }
    closedir(d);
    return n;
}

/* Client process k, pinned to CPU k: the broker serves it from the worker of
 * that CPU's (fake) node. Its requests carry ids (k + 1) << 8 | i. */
static void client_main(int k, int cpu, struct shared *sh)
{
    bb_client *c;
    bb_model *m;
    pinned_client(k, cpu, "rec", sh, &c, &m);
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load(&sh->go))
        usleep(1000);
    bb_request *r[PER_CLIENT];
    for (int i = 0; i < PER_CLIENT; i++) {
        uint64_t id = (uint64_t)(k + 1) << 8 | (uint64_t)i;
        if (bb_request_new(m, 64, 64, &r[i]) < 0)
            _exit(4);
        bbt_fill(bb_request_input(r[i]), 64, id);
        if (bb_submit(r[i], NULL) < 0)
            _exit(5);
    }
    for (int i = 0; i < PER_CLIENT; i++) {
        uint64_t id = (uint64_t)(k + 1) << 8 | (uint64_t)i;
        size_t len;
        const void *out;
        if (bb_wait(r[i], 10000000000ll) < 0 || bb_request_status(r[i]) != 0 ||
            !(out = bb_request_output(r[i], &len)) || len != 64 || !bbt_check(out, 64, id))
            atomic_fetch_add(&sh->failed, 1);
    }
    atomic_fetch_add(&sh->done, 1);
    bb_disconnect(c);
    _exit(0);
}

/* A recorder log line: which clients' requests the batch held (bit k for
 * client k; a request of nobody's fails the test), counted into *total. */
static unsigned batch_clients(const char *line, int *total)
{
    unsigned nb = 0, who = 0;
    int off = 0;
    cr_assert_eq(sscanf(line, "n=%u bytes=%*u%n", &nb, &off), 1, "recorder line: %s", line);
    const char *p = line + off;
    for (unsigned i = 0; i < nb; i++) {
        unsigned long long id;
        unsigned prio;
        int used = 0;
        cr_assert_eq(sscanf(p, " %llx:%u%n", &id, &prio, &used), 2, "recorder line: %s", line);
        p += used;
        cr_assert((id >> 8) == 1 || (id >> 8) == 2, "a request that no client sent: %s", line);
        who |= 1u << ((id >> 8) - 1);
        (*total)++;
    }
    return who;
}

/* Start the broker with cfg, pin model "rec"'s batch target to `pin` (0:
 * none) from a session of this process, run client_main on two clients
 * pinned to cpus (served by different workers) until both have their
 * answers, all right. */
static void two_clients_on_two_workers(const char *cfg, const int cpus[2], uint32_t pin)
{
    cr_assert_eq(bbt_broker_start(&B, cfg, NULL), 0, "broker did not start");
    if (pin) {
        bb_client *c = bbt_connect_ok(&B, NULL);
        cr_assert_eq(bb_model_pin(bbt_open_ok(c, "rec"), pin), 0);
        bb_disconnect(c);
    }

    pid_t pids[2];
    struct shared *sh = fork_two(cpus, client_main, pids);
    for (int i = 0; i < 1000 && atomic_load(&sh->ready) < 2; i++)
        bbt_msleep(10);
    cr_assert_eq(atomic_load(&sh->ready), 2, "the clients did not connect");
    cr_assert_neq(atomic_load(&sh->worker_id[0]), atomic_load(&sh->worker_id[1]),
                  "clients on CPUs %d and %d were both served by worker %d", cpus[0], cpus[1],
                  atomic_load(&sh->worker_id[0]));
    atomic_store(&sh->go, 1);
    for (int k = 0; k < 2; k++)
        cr_assert_eq(bbt_waitpid_bounded(pids[k], 20000), 0, "client %d failed", k);
    cr_assert_eq(atomic_load(&sh->failed), 0, "wrong answers");
    munmap(sh, sizeof *sh);
}

Test(workers, batches_span_the_clients_of_every_worker)
{
    int cpus[2];
    two_cpus(cpus);

    bbt_unique_path(rec_log, sizeof rec_log, ".rec");
    char cfg[1024];
    /* A long max_wait and static batching (adaptive sizing would not hold
     * one client's requests for the other's): the first batch waits until
     * both clients' requests are in, then runs them together. */
    snprintf(cfg, sizeof cfg,
             "[broker]\nworkers = 2\nnuma_fake_nodes = 2\n"
             "[model.rec]\nbackend = %s\nparam.file = %s\nparam.batch_us = 1000\n"
             "instances = 1\nmax_batch_size = 16\nmax_wait_us = 300000\nadaptive = off\n"
             "fairness = on\n",
             BB_SCHED_RECORDER, rec_log);
    two_clients_on_two_workers(cfg, cpus, 0);

    /* One batch must hold requests of both clients. */
    FILE *f = fopen(rec_log, "r");
    cr_assert_not_null(f, "the backend ran no batch");
    char line[4096];
    bool mixed = false;
    int total = 0;
    while (fgets(line, sizeof line, f))
        mixed = mixed || batch_clients(line, &total) == 3;
    fclose(f);
    cr_assert_eq(total, 2 * PER_CLIENT, "%d requests ran, %d submitted", total, 2 * PER_CLIENT);
    cr_assert(mixed, "no batch held requests of the clients of both workers");
}

/* A config of `before`, then model "rec": the recorder logging its batches
 * to a new rec_log and their threads to a new tid_log, then `after`. */
static void recorder_config(char *cfg, size_t cap, const char *before, const char *after)
{
    bbt_unique_path(rec_log, sizeof rec_log, ".rec");
    bbt_unique_path(tid_log, sizeof tid_log, ".tid");
    snprintf(cfg, cap, "%s[model.rec]\nbackend = %s\nparam.file = %s\nparam.threads = %s\n%s",
             before, BB_SCHED_RECORDER, rec_log, tid_log, after);
}

/* A broker of one worker (whatever $BBT_BROKER_OVERRIDES says: a test's own
 * overrides win) serving the recorder model with these lines, a client of
 * it in *c, and the model opened. */
static bb_model *one_worker_recorder(const char *lines, bb_client **c)
{
    char cfg[1024];
    recorder_config(cfg, sizeof cfg, "", lines);
    const char *ov[] = {"broker.workers=1", NULL};
    cr_assert_eq(bbt_broker_start(&B, cfg, ov), 0, "broker did not start");
    cr_assert_eq(bbt_connect(&B, c), 0);
    return bbt_open_ok(*c, "rec");
}

/* formation = per_worker: each worker forms the batches of its own clients
 * with an executor of its own, so no batch mixes the two clients, their
 * batches run on different threads, and STATS counts both replicas. (Each
 * client's closed loop would run on its worker's thread by the quiet rule,
 * another thread than its executor's: off.) */
Test(workers, per_worker_formation_batches_each_workers_clients_apart)
{
    int cpus[2];
    two_cpus(cpus);

    char cfg[1024];
    recorder_config(cfg, sizeof cfg, "[broker]\nworkers = 2\nnuma_fake_nodes = 2\n",
                    "formation = per_worker\ninstances = 1\nmax_batch_size = 16\n"
                    "max_wait_us = 200000\nadaptive = off\ninline_quiet_max_us = 0\n");
    two_clients_on_two_workers(cfg, cpus, 0);

    /* Batch by batch (the two logs line up): whose requests, which thread. */
    FILE *f = fopen(rec_log, "r"), *t = fopen(tid_log, "r");
    cr_assert(f && t, "the backend ran no batch");
    char line[4096], tl[64];
    long tid_of[2] = {0, 0};
    int total = 0, batches = 0;
    while (fgets(line, sizeof line, f)) {
        cr_assert_not_null(fgets(tl, sizeof tl, t), "a batch without its thread line");
        long tid = atol(tl);
        unsigned who = batch_clients(line, &total);
        cr_assert(who == 1 || who == 2, "a batch mixed the two workers' clients: %s", line);
        int client = who == 1 ? 0 : 1;
        cr_assert(tid_of[client] == 0 || tid_of[client] == tid,
                  "client %d's batches ran on two threads", client);
        tid_of[client] = tid;
        batches++;
    }
    fclose(f);
    fclose(t);
    cr_assert_eq(total, 2 * PER_CLIENT, "%d requests ran, %d submitted", total, 2 * PER_CLIENT);
    cr_assert(tid_of[0] && tid_of[1] && tid_of[0] != tid_of[1],
              "the two workers' batches ran on one executor");

    /* STATS, served on either worker, sums the replicas: once each has
     * reaped its last batch (its clients saw the answers before that). */
    bb_client *c;
    bb_model *m;
    cr_assert_eq(bb_connect(B.sock, NULL, &c), 0);
    cr_assert_eq(bb_model_open(c, "rec", &m), 0);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.completed, 2 * PER_CLIENT, "STATS: %llu completed",
                 (unsigned long long)st.completed);
    cr_assert_eq(st.batches, (uint64_t)batches, "STATS: %llu batches, the backend ran %d",
                 (unsigned long long)st.batches, batches);
    bb_disconnect(c);
}

/* An operator's pin holds for every replica of a per_worker model, whichever
 * worker served the session that pinned it (the pin is kept once, for all:
 * two pins from sessions on two workers cannot leave the replicas apart).
 * A pin is the dispatch threshold: pinned to each client's 4 requests, both
 * replicas cut them at once; a replica that missed it would hold them for
 * max_wait_us, 10 s, past their deadline (5 s), and its client's requests
 * would fail with BB_ETIMEDOUT. */
Test(workers, a_pin_holds_for_every_replica)
{
    int cpus[2];
    two_cpus(cpus);
    char cfg[1024];
    recorder_config(cfg, sizeof cfg, "[broker]\nworkers = 2\nnuma_fake_nodes = 2\n",
                    "formation = per_worker\ninstances = 1\nmax_batch_size = 16\n"
                    "max_wait_us = 10000000\ndefault_timeout_us = 5000000\nadaptive = off\n");
    two_clients_on_two_workers(cfg, cpus, PER_CLIENT);
}

/* Clients that connect at once to two workers of one node are shared out
 * evenly: the acceptor counts each placement as it makes it. */
Test(workers, a_burst_of_clients_is_shared_among_the_workers_of_a_node)
{
    enum { N = 8 };
    cr_assert_eq(bbt_broker_start(&B, "[broker]\nworkers = 2\n", NULL), 0,
                 "broker did not start");
    struct burst {
        _Atomic int ready, go, placed, done;
        _Atomic int on[2];
    } *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(sh, MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t pids[N];
    for (int k = 0; k < N; k++) {
        fflush(NULL);
        pids[k] = fork();
        cr_assert_geq(pids[k], 0);
        if (pids[k] == 0) {
            atomic_fetch_add(&sh->ready, 1);
            while (!atomic_load(&sh->go))
                ;
            bb_client *c;
            if (bb_connect(B.sock, NULL, &c) < 0)
                _exit(3);
            uint32_t id = c->wpage->worker_id;
            if (id > 1)
                _exit(4);
            atomic_fetch_add(&sh->on[id], 1);
            atomic_fetch_add(&sh->placed, 1);
            while (atomic_load(&sh->placed) < N && !atomic_load(&sh->done))
                usleep(1000); /* every session stays until all are placed */
            bb_disconnect(c);
            _exit(0);
        }
    }
    for (int i = 0; i < 1000 && atomic_load(&sh->ready) < N; i++)
        bbt_msleep(10);
    atomic_store(&sh->go, 1);
    for (int i = 0; i < 1000 && atomic_load(&sh->placed) < N; i++)
        bbt_msleep(10);
    atomic_store(&sh->done, 1);
    for (int k = 0; k < N; k++)
        cr_assert_eq(bbt_waitpid_bounded(pids[k], 20000), 0, "client %d failed", k);
    int a = atomic_load(&sh->on[0]), b = atomic_load(&sh->on[1]);
    cr_assert_eq(a + b, N);
    cr_assert(abs(a - b) <= 1, "%d clients on worker 0, %d on worker 1", a, b);
    munmap(sh, sizeof *sh);
}

/* Runs requests through a recorder model with one executor, batches of
 * one and these further model lines, in phases: phases[k] requests kept
 * `inflight[k]` at a time by one client. Fills on_main[i] with whether batch
 * i ran on the broker's main thread, its one dispatcher (worker 0 is the
 * main thread), and returns how many did. */
static int batches_on_the_dispatcher_by_phase(const char *lines, const int *phases,
                                              const int *inflight, int nphases, bool *on_main)
{
    char more[512];
    snprintf(more, sizeof more, "instances = 1\nmax_batch_size = 1\nmax_wait_us = 0\n%s", lines);
    bb_client *c;
    bb_model *m = one_worker_recorder(more, &c);
    bb_request *r[2];
    for (int k = 0; k < 2; k++)
        cr_assert_eq(bb_request_new(m, 64, 64, &r[k]), 0);
    uint64_t tag[2];
    int n = 0;
    for (int p = 0; p < nphases; p++) {
        cr_assert(inflight[p] >= 1 && inflight[p] <= 2);
        int sent = 0, done = 0;
        for (; sent < inflight[p] && sent < phases[p]; sent++) {
            tag[sent] = (uint64_t)(n + sent);
            bbt_fill(bb_request_input(r[sent]), 64, tag[sent]);
            cr_assert_eq(bb_submit(r[sent], NULL), 0);
        }
        /* Oldest first: the one waited for is the one resubmitted. */
        for (int k = 0; done < phases[p]; k = (k + 1) % inflight[p]) {
            cr_assert_eq(bb_wait(r[k], 10000000000ll), 0);
            size_t len = 0;
            const void *out = bb_request_output(r[k], &len);
            cr_assert(bb_request_status(r[k]) == 0 && len == 64 && bbt_check(out, 64, tag[k]),
                      "request %llu", (unsigned long long)tag[k]);
            done++;
            if (sent < phases[p]) {
                tag[k] = (uint64_t)(n + sent++);
                bbt_fill(bb_request_input(r[k]), 64, tag[k]);
                cr_assert_eq(bb_submit(r[k], NULL), 0);
            }
        }
        n += phases[p];
    }
    for (int k = 0; k < 2; k++)
        bb_request_free(r[k]);
    bb_disconnect(c);
    pid_t pid = B.pid;
    cr_assert_eq(bbt_broker_stop(&B), 0);
    FILE *f = fopen(tid_log, "r");
    cr_assert_not_null(f, "the backend ran no batch");
    long tid;
    int total = 0, here = 0;
    while (fscanf(f, "%ld", &tid) == 1) {
        cr_assert_lt(total, n, "more batches than requests");
        on_main[total] = tid == (long)pid;
        here += on_main[total++];
    }
    fclose(f);
    cr_assert_eq(total, n, "%d batches for %d requests", total, n);
    unlink(rec_log);
    unlink(tid_log);
    return here;
}

/* n requests one at a time. */
static int batches_on_the_dispatcher(const char *lines, int n)
{
    bool on_main[256];
    cr_assert_leq(n, 256);
    int inflight = 1;
    return batches_on_the_dispatcher_by_phase(lines, &n, &inflight, 1, on_main);
}

/* The recorder takes some tens of microseconds a batch (it opens and
 * appends to two files): under inline_max_us = 1000, once the model has
 * measured that, the dispatcher runs its batches itself while the executor
 * idles; the first batch has no measurement yet and goes to the executor. */
Test(workers, quick_batches_skip_the_hand_off)
{
    int n = 200, on_main = batches_on_the_dispatcher("inline_max_us = 1000\n", n);
    /* Not all: a batch preempted on a busy machine can take a millisecond,
     * and the model then hands a few over until its average comes back. */
    cr_assert_gt(on_main, n / 4, "only %d of %d quick batches ran on the dispatcher", on_main, n);
    cr_assert_lt(on_main, n, "the first batch, with nothing measured, ran on the dispatcher");
}

/* Requests one at a time are a closed loop that each batch holds whole:
 * nothing arrives while a batch runs. */
Test(workers, inline_max_us_0_and_inline_quiet_max_us_0_hand_every_batch_over)
{
    int on_main = batches_on_the_dispatcher("inline_max_us = 0\ninline_quiet_max_us = 0\n", 50);
    cr_assert_eq(on_main, 0, "%d batches ran on the dispatcher", on_main);
}

/* Beyond both bounds (the quiet one 1 ms by default). */
Test(workers, slow_batches_go_to_the_executor)
{
    int on_main = batches_on_the_dispatcher("param.batch_us = 3000\ninline_max_us = 1000\n", 20);
    cr_assert_eq(on_main, 0, "%d batches of 3 ms ran on the dispatcher", on_main);
}

/* The quiet rule: batches of 100 us, far above inline_max_us, one request
 * at a time. After eight batches on the executor with nothing arriving
 * meanwhile, the dispatcher runs them itself. */
Test(workers, a_closed_loop_that_each_batch_holds_skips_the_hand_off)
{
    int n = 40, on_main = batches_on_the_dispatcher("param.batch_us = 100\ninline_max_us = 0\n", n);
    cr_assert_leq(on_main, n - 8, "fewer than the first 8 batches went to the executor");
    /* Not all the rest: a batch preempted for a millisecond on a busy
     * machine raises the expected time above the bound for a while. */
    cr_assert_gt(on_main, (n - 8) / 2, "only %d of %d batches ran on the dispatcher", on_main, n);
}

/* Two requests in flight and batches of one: while a batch runs the other
 * request waits, queued or in the ring, so every batch goes to the executor
 * and the dispatcher takes in the next meanwhile. After a quiet phase
 * (batches on the dispatcher), the first batch with the other request
 * behind it hands the next ones over again. */
Test(workers, a_batch_that_work_waits_behind_goes_to_the_executor)
{
    /* 20 ms a batch: the client answers a completion with its next request
     * well within a batch, on a loaded machine too. */
    const int phases[] = {20, 16}, inflight[] = {1, 2};
    bool on_main[36];
    batches_on_the_dispatcher_by_phase(
        "param.batch_us = 20000\ninline_max_us = 0\ninline_quiet_max_us = 100000\n", phases,
        inflight, 2, on_main);
    int quiet = 0, busy = 0;
    for (int i = 0; i < 20; i++)
        quiet += on_main[i];
    for (int i = 20; i < 36; i++)
        busy += on_main[i];
    cr_assert_gt(quiet, 0, "no batch of the quiet phase ran on the dispatcher");
    /* The first may: its companion may have come only once it ran. */
    cr_assert_leq(busy, 1, "%d batches with another request waiting ran on the dispatcher", busy);
    cr_assert(!on_main[21], "the batch after one that a request waited behind ran on the dispatcher");
}

/* The thread id on the last line of tid_log, or 0. */
static long last_batch_thread(void)
{
    FILE *f = fopen(tid_log, "r");
    long tid, last = 0;
    while (f && fscanf(f, "%ld", &tid) == 1)
        last = tid;
    if (f)
        fclose(f);
    return last;
}

/* The quiet rule's expected time is for the batch at hand: after a quiet
 * closed loop of batches of one (300 us each, under the 1 ms bound), a
 * batch of 32 of them (about 10 ms: a client that joined with a burst, here
 * made whole by a pin) is no batch of that loop, and goes to the executor
 * rather than hold the dispatcher. */
/* A closed loop that fills its batches: four requests in flight, batches of
 * four that wait (10 s) until whole. Once the quiet rule holds, the batches
 * run on the dispatcher, which, while the next one fills from the loop's
 * returns, sleeps with its doorbell on instead of spinning: every batch
 * still holds all four, and the rounds go on (a fill seen only by a timer
 * would take 10 s a round). */
Test(workers, a_quiet_loop_that_fills_its_batches_keeps_them_whole)
{
    bb_client *c;
    bb_model *m = one_worker_recorder("param.batch_us = 100\ninstances = 1\nmax_batch_size = 4\n"
                                      "max_wait_us = 10000000\nadaptive = off\ninline_max_us = 0\n",
                                      &c);
    bb_request *r[4];
    for (int k = 0; k < 4; k++)
        cr_assert_eq(bb_request_new(m, 64, 64, &r[k]), 0);
    int rounds = 30;
    for (int i = 0; i < rounds; i++) {
        for (int k = 0; k < 4; k++) {
            bbt_fill(bb_request_input(r[k]), 64, (uint64_t)(4 * i + k));
            cr_assert_eq(bb_submit(r[k], NULL), 0);
        }
        for (int k = 0; k < 4; k++) {
            cr_assert_eq(bb_wait(r[k], 30000000000ll), 0, "round %d", i);
            size_t len = 0;
            const void *out = bb_request_output(r[k], &len);
            cr_assert(bb_request_status(r[k]) == 0 && len == 64 &&
                          bbt_check(out, 64, (uint64_t)(4 * i + k)),
                      "round %d, request %d", i, k);
        }
    }
    for (int k = 0; k < 4; k++)
        bb_request_free(r[k]);
    bb_disconnect(c);
    pid_t pid = B.pid;
    cr_assert_eq(bbt_broker_stop(&B), 0);
    FILE *f = fopen(rec_log, "r"), *t = fopen(tid_log, "r");
    cr_assert(f && t, "the backend ran no batch");
    char line[8192], tl[64];
    int batches = 0, here = 0;
    while (fgets(line, sizeof line, f)) {
        cr_assert(strncmp(line, "n=4 ", 4) == 0, "batch %d was not whole: %s", batches, line);
        cr_assert_not_null(fgets(tl, sizeof tl, t), "a batch without its thread line");
        here += atol(tl) == (long)pid;
        batches++;
    }
    fclose(f);
    fclose(t);
    cr_assert_eq(batches, rounds);
    cr_assert_gt(here, 0, "no batch ran on the dispatcher");
}

Test(workers, a_quiet_model_hands_a_batch_larger_than_its_loop_over)
{
    bb_client *c;
    bb_model *m = one_worker_recorder("param.item_us = 300\ninstances = 1\nmax_batch_size = 32\n"
                                      "max_wait_us = 10000000\nadaptive = off\ninline_max_us = 0\n",
                                      &c);
    cr_assert_eq(bb_model_pin(m, 1), 0);
    /* One at a time until the quiet rule holds: a batch on the dispatcher. */
    int i = 0;
    for (; i < 200 && last_batch_thread() != (long)B.pid; i++) {
        char in[64], out[64];
        size_t len = 0;
        bbt_fill(in, sizeof in, (uint64_t)i);
        cr_assert_eq(bb_infer(m, in, sizeof in, out, sizeof out, &len, NULL, 10000000000ll), 0);
    }
    cr_assert_eq(last_batch_thread(), (long)B.pid, "no batch of one ran on the dispatcher");
    cr_assert_eq(bb_model_pin(m, 32), 0);
    bb_request *r[32];
    for (int k = 0; k < 32; k++) {
        cr_assert_eq(bb_request_new(m, 64, 64, &r[k]), 0);
        bbt_fill(bb_request_input(r[k]), 64, (uint64_t)(i + k));
        cr_assert_eq(bb_submit(r[k], NULL), 0);
    }
    for (int k = 0; k < 32; k++) {
        cr_assert_eq(bb_wait(r[k], 10000000000ll), 0);
        cr_assert_eq(bb_request_status(r[k]), 0);
        bb_request_free(r[k]);
    }
    bb_disconnect(c);
    pid_t pid = B.pid;
    cr_assert_eq(bbt_broker_stop(&B), 0);
    FILE *f = fopen(rec_log, "r");
    cr_assert_not_null(f);
    char line[8192], last[8192] = "";
    while (fgets(line, sizeof line, f))
        memcpy(last, line, sizeof last);
    fclose(f);
    cr_assert(strncmp(last, "n=32 ", 5) == 0, "the burst did not run as one batch: %s", last);
    cr_assert_neq(last_batch_thread(), (long)pid, "the batch of 32 ran on the dispatcher");
}

/* A burst of 16 on a model of two idle executors, the recorder taking
 * item_us a request (max_batch_size 16, adaptive off: the burst is cut when
 * all of it is queued), with these further model lines. Returns how many of
 * `bursts` bursts, after the fit has seen batches of 1 and of 16, ran as one
 * batch of 16 (*whole) and as two of 8 (*halves). */
static void bursts_on_two_executors(unsigned item_us, const char *more, int bursts, int *whole,
                                    int *halves)
{
    bbt_unique_path(rec_log, sizeof rec_log, ".rec");
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "[model.rec]\nbackend = %s\nparam.file = %s\nparam.item_us = %u\n"
             "instances = 2\nmax_batch_size = 16\nmax_wait_us = 20000\nadaptive = off\n"
             "adaptation_interval_ms = 5\n%s\n",
             BB_SCHED_RECORDER, rec_log, item_us, more);
    cr_assert_eq(bbt_broker_start(&B, cfg, NULL), 0, "broker did not start");
    bb_client *c;
    cr_assert_eq(bbt_connect(&B, &c), 0);
    bb_model *m = bbt_open_ok(c, "rec");
    /* Lone requests (each cut at max_wait_us), then bursts: two sizes, and
     * a pause for the fit (at the model's first pass after an adaptation
     * interval). Each counted burst waits until the broker counts no batch
     * running: the last one's answers reach this client before the
     * dispatcher counts their executors idle again, and a burst that came
     * first would find one busy. */
    int warm = 10;
    for (int k = 0; k < warm + bursts; k++) {
        int n = k < 6 ? 1 : 16;
        if (k == warm)
            usleep(20000);
        for (int tries = 0; k >= warm && tries < 200; tries++) {
            struct bb_model_stats st;
            cr_assert_eq(bb_model_stats(m, &st), 0);
            if (st.running == 0)
                break;
            usleep(1000);
        }
        bb_request *r[16];
        for (int i = 0; i < n; i++) {
            cr_assert_eq(bb_request_new(m, 64, 64, &r[i]), 0);
            bbt_fill(bb_request_input(r[i]), 64, (uint64_t)(k * 16 + i));
            cr_assert_eq(bb_submit(r[i], NULL), 0);
        }
        for (int i = 0; i < n; i++) {
            size_t len;
            cr_assert_eq(bb_wait(r[i], 10000000000ll), 0);
            cr_assert_eq(bb_request_status(r[i]), 0);
            const void *out = bb_request_output(r[i], &len);
            cr_assert(len == 64 && bbt_check(out, 64, (uint64_t)(k * 16 + i)), "request %d.%d", k, i);
            bb_request_free(r[i]);
        }
    }
    bb_disconnect(c);
    cr_assert_eq(bbt_broker_stop(&B), 0);
    FILE *f = fopen(rec_log, "r");
    cr_assert_not_null(f, "the backend ran no batch");
    char line[8192];
    unsigned sizes[256];
    int nb = 0;
    while (nb < 256 && fgets(line, sizeof line, f))
        cr_assert_eq(sscanf(line, "n=%u", &sizes[nb++]), 1, "recorder line: %s", line);
    fclose(f);
    unlink(rec_log);
    /* The bursts' batches, from the last back to the first of the counted. */
    *whole = *halves = 0;
    int rows = 0;
    for (int i = nb - 1; i >= 0 && rows < 16 * bursts; i--) {
        rows += (int)sizes[i];
        *whole += sizes[i] == 16;
        *halves += sizes[i] == 8;
    }
    *halves /= 2;
}

/* A CPU backend's executors run on cores of their own: a cut that would
 * take every queued request while both idle is shared between them. */
Test(workers, a_burst_is_shared_among_idle_executors)
{
    int whole, halves;
    bursts_on_two_executors(300, "hardware = cpu", 10, &whole, &halves);
    /* Not always: a burst may reach the broker in two passes on a loaded
     * machine, the first with fewer than 16 queued. */
    cr_assert_geq(halves, 5, "%d of 10 bursts ran as two batches of 8, %d as one", halves, whole);
}

/* A GPU's instances share one device: nothing is gained by splitting. */
Test(workers, a_gpu_model_keeps_its_burst_whole)
{
    int whole, halves;
    bursts_on_two_executors(300, "hardware = gpu", 10, &whole, &halves);
    cr_assert_eq(halves, 0, "%d of 10 bursts were split", halves);
    cr_assert_geq(whole, 9, "%d of 10 bursts ran as one batch", whole);
}

/* Batches quick enough to run on the dispatcher (inline_max_us) would run
 * the shares one after the other there: not split. Most, not all: a burst
 * takes 480 us, and on a loaded machine a few slow runs make the model's
 * recent batch time exceed the bound (6 of 10 were split once under ctest
 * -j2 beside other builds); without the rule all 10 are. */
Test(workers, a_burst_that_runs_on_the_dispatcher_stays_whole)
{
    int whole, halves;
    bursts_on_two_executors(30, "hardware = cpu\ninline_max_us = 1000", 10, &whole, &halves);
    cr_assert_leq(halves, 3, "%d of 10 bursts were split", halves);
    cr_assert_geq(whole, 6, "%d of 10 bursts ran as one batch", whole);
}

/* Each thread of the broker carries a name that says what it does (top -H,
 * perf, /proc/PID/task/TID/comm): the main thread, worker 0, keeps the
 * program's; the others are bb-workerN, bb-registrar and bb-xI-MODEL (the
 * executors), cut to the kernel's 15 characters. */
Test(workers, threads_are_named_for_what_they_do)
{
    if (bb__ncpus() < 2)
        cr_skip_test("two CPUs are needed for a fake two-node topology");
    /* v1echo registers client memory: the broker starts its registrar. */
    const char *cfg = "[model.echo]\nbackend = echo\ninstances = 2\n"
                      "[model.a_model_with_a_long_name]\nbackend = echo\ninstances = 1\n"
                      "[model.v1]\nbackend = " BB_TEST_PLUGIN_DIR "/bb_backend_v1echo.so\n"
                      "instances = 1\n";
    const char *ov[] = {"broker.workers=2", "broker.numa_fake_nodes=2", NULL};
    cr_assert_eq(bbt_broker_start(&B, cfg, ov), 0, "broker did not start");
    /* The main thread keeps the program's name (its file name, cut to 15). */
    char prog[16];
    const char *bin = strrchr(bbt_broker_bin(), '/');
    snprintf(prog, sizeof prog, "%s", bin ? bin + 1 : bbt_broker_bin());
    const char *want[] = {prog, "bb-worker1", "bb-registrar", "bb-x0-echo", "bb-x1-echo",
                          "bb-x0-a_model_w", "bb-x0-v1"};
    enum { NWANT = sizeof want / sizeof want[0] };
    int found[NWANT] = {0}, others = 0;
    char threads[64][16], names[1024] = "";
    int nthreads = thread_names(B.pid, threads, 64);
    for (int t = 0; t < nthreads; t++) {
        const char *name = threads[t];
        size_t used = strlen(names);
        if (used + 1 + sizeof threads[t] <= sizeof names) {
            names[used] = ' ';
            strcpy(names + used + 1, name);
        }
        int k = 0;
        while (k < NWANT && strcmp(name, want[k]))
            k++;
        if (k < NWANT)
            found[k]++;
        else if (strncmp(name, "iou-", 4) && strncmp(name, "MHD-", 4))
            others++; /* not io_uring's workers, not a metrics endpoint's */
    }
    for (int k = 0; k < NWANT; k++)
        cr_expect_eq(found[k], 1, "%d threads named %s; the broker's:%s", found[k], want[k], names);
    cr_expect_eq(others, 0, "threads of other names; the broker's:%s", names);
    cr_assert_eq(bbt_broker_stop(&B), 0);
}

#define SLEEPER_TRIPS 2000

/* Client k of wakers_wake_their_clients: pinned to cpu, sleeps at once in
 * bb_wait (no spin), and checks SLEEPER_TRIPS echoed round trips. */
static void sleeper_main(int k, int cpu, struct shared *sh)
{
    bb_client *c;
    bb_model *m;
    pinned_client(k, cpu, "echo", sh, &c, &m);
    bb_client_set_spin_ns(c, 0);
    for (int i = 0; i < SLEEPER_TRIPS; i++) {
        char in[64], out[64];
        size_t len = 0;
        uint64_t id = (uint64_t)(k + 1) << 16 | (uint64_t)i;
        bbt_fill(in, sizeof in, id);
        if (bb_infer(m, in, sizeof in, out, sizeof out, &len, NULL, 10000000000ll) < 0 ||
            len != sizeof in || !bbt_check(out, sizeof out, id))
            atomic_fetch_add(&sh->failed, 1);
    }
    bb_disconnect(c);
    _exit(0);
}

/* wake_offload_ms (worker.c waker_flush): each worker gets the kernel thread
 * of an io_uring with SQPOLL, and the wake-ups of the clients it serves go
 * through it. Echo with instances = 0 runs every batch on the dispatcher,
 * so every completion's wake-up is the dispatcher's; two clients that sleep
 * at once, one on each (fake) node, get every answer right. Every other
 * suite runs with wake_offload_ms too (the *_waker ctest variants). */
Test(workers, wakers_wake_their_clients)
{
    int cpus[2];
    two_cpus(cpus);
    const char *ov[] = {"broker.workers=2", "broker.numa_fake_nodes=2",
                        "broker.wake_offload_ms=1", NULL};
    struct bbt_start o = {.config_text = "[model.echo]\nbackend = echo\ninstances = 0\n",
                          .overrides = ov,
                          .log = true};
    if (bbt_broker_start_ex(&B, &o) != 0) {
        if (bbt_log_count(&B, "wake_offload_ms") > 0)
            cr_skip_test("this kernel cannot run wake_offload_ms (the broker's log says why)");
        cr_assert_fail("broker did not start");
    }
    char threads[64][16];
    int nthreads = thread_names(B.pid, threads, 64), wakers = 0;
    for (int t = 0; t < nthreads; t++)
        wakers += strncmp(threads[t], "iou-sqp-", 8) == 0;
    cr_expect_eq(wakers, 2, "%d io_uring polling threads for 2 workers", wakers);

    pid_t pids[2];
    struct shared *sh = fork_two(cpus, sleeper_main, pids);
    for (int k = 0; k < 2; k++)
        cr_assert_eq(bbt_waitpid_bounded(pids[k], 30000), 0, "client %d failed", k);
    cr_assert_eq(atomic_load(&sh->failed), 0, "wrong or failed answers");
    cr_assert_neq(atomic_load(&sh->worker_id[0]), atomic_load(&sh->worker_id[1]),
                  "clients on CPUs %d and %d were both served by worker %d", cpus[0], cpus[1],
                  atomic_load(&sh->worker_id[0]));
    munmap(sh, sizeof *sh);
    cr_assert_eq(bbt_broker_stop(&B), 0);
}

/* The spin rule's guard against a busy host (util_internal.h
 * bb__spin_note, bb__spin_yield): a spinner's sched_yield that lets another
 * task run longer than the spin budget and BB__SPIN_LOST_NS is lost; two
 * lost within BB__SPIN_PAIR_NS mark the thread's CPU as contended until
 * BB__SPIN_CALM_NS later, and the dispatchers and executors sleep at once
 * until then instead of yielding a CPU-bound neighbour a time slice at
 * every turn (on two vCPUs with two CPU-bound processes beside it, the
 * synthetic row fell from 150,000 to 20,000 requests/s). The rule is fed
 * the yields' times here, so no scheduler decides the outcome. */
Test(workers, yields_that_let_a_neighbour_run_mark_the_cpu_contended)
{
    /* A real yield within its budget marks nothing. */
    struct bb__spin_guard g = {0};
    bb__spin_yield(UINT64_MAX - BB__SPIN_LOST_NS, &g, bb__now_ns());
    cr_assert(g.calm_after == 0 && g.last_lost == 0);
    cr_assert(bb__spin_calm(&g, bb__now_ns()));

    const uint64_t spin = 50000, lost = spin + BB__SPIN_LOST_NS + 1, t = 5000000000ull;
    /* Exactly the budget and BB__SPIN_LOST_NS: not lost. */
    bb__spin_note(&g, spin, t, t + spin + BB__SPIN_LOST_NS);
    cr_assert(g.calm_after == 0 && g.last_lost == 0);
    /* One lost yield: noted, the CPU not marked yet. */
    uint64_t back = bb__spin_note(&g, spin, t, t + lost);
    cr_assert(g.last_lost == back && g.calm_after == 0,
              "the first lost yield marked the CPU contended");
    /* A second one more than BB__SPIN_PAIR_NS later: still not. */
    uint64_t t2 = back + BB__SPIN_PAIR_NS;
    back = bb__spin_note(&g, spin, t2, t2 + lost);
    cr_assert(g.last_lost == back && g.calm_after == 0, "two lost yields far apart marked it");
    /* A third soon after: contended until BB__SPIN_CALM_NS after it. */
    back = bb__spin_note(&g, spin, back + 1000, back + 1000 + lost);
    cr_assert_neq(g.calm_after, 0, "two lost yields within BB__SPIN_PAIR_NS marked nothing");
    cr_assert_eq(g.calm_after, back + BB__SPIN_CALM_NS);
    cr_assert_eq(g.last_lost, back);
    cr_assert(!bb__spin_calm(&g, back + BB__SPIN_CALM_NS - 1));
    cr_assert(bb__spin_calm(&g, back + BB__SPIN_CALM_NS));
}

/* ---- A cancel that arrives after its request is gone ---- */

/* Publish n SQ entries at once (the last first, so that one drain takes
 * them all) and ring: what bb_submit and bb_cancel do, by hand, so that a
 * slot can be submitted with a generation the library would not use. */
static void push_entries(bb_client *c, const uint32_t *e, uint32_t n)
{
    uint32_t pos = atomic_fetch_add(&c->sq_reserve, n);
    for (uint32_t i = n; i-- > 0;)
        atomic_store_explicit(&c->sq_entries[(pos + i) & c->sq_mask],
                              e[i] | BB_SQE_LAP(pos + i, c->sq_lg), memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    bb__client_ring(c);
}

static void describe(bb_request *r, uint32_t model, uint32_t gen, uint32_t timeout_us)
{
    struct bb_shm_slot *s = r->slot;
    memset(s, 0, offsetof(struct bb_shm_slot, shm_done_gen));
    s->gen = gen;
    s->model_id = model;
    s->in_off = r->in_off;
    s->out_off = r->out_off;
    s->in_len = 8;
    s->out_cap = 8;
    s->timeout_us = timeout_us;
}

/* Wait (bounded, 20 s) until the slot shows generation gen done. */
static void await_done(bb_request *r, uint32_t gen)
{
    for (int i = 0; i < 20000; i++) {
        if (atomic_load_explicit(&r->slot->shm_done_gen, memory_order_acquire) == gen)
            return;
        bbt_msleep(1);
    }
    cr_assert_fail("slot %u: generation %u never completed", r->index, gen);
}

/* Models for the tests of a home that is busy: an echo that holds its
 * requests (max_wait_us 2 s), and a model whose one-request batches of us
 * microseconds run on its home's dispatcher (instances = 0). */
#define HOME_ECHO "backend = echo\nmax_batch_size = 64\nmax_wait_us = 2000000\nadaptive = off\n"
#define HOME_SLOW(us)                                                                       \
    "backend = synthetic\nparam.batch_us = " us "\nparam.mode = sleep\ninstances = 0\n"     \
    "max_batch_size = 1\nmax_wait_us = 0\nadaptive = off\n"

/* A client cancels slot S, queued for model A on the other worker (the
 * home), while the home runs a long batch on its own thread; S times out
 * there after that batch, and while the home runs the next one the client
 * submits S again, with the same generation, to model B on its own worker,
 * where it stays queued (max_wait_us 2 s). The cancel, taken from the home's
 * mailbox only after that, must leave the new submission alone: it belongs to
 * another model, which another thread owns (it used to cancel it, from the
 * wrong thread). The home polls its models in order: the slow one, then A,
 * then the second slow one. */
Test(workers, a_late_cancel_leaves_the_next_submission_alone)
{
    const char *echo = HOME_ECHO, *slow = HOME_SLOW("1000000");
    char cfg[1536];
    /* Model i lives on worker i mod 2. */
    snprintf(cfg, sizeof cfg,
             "[model.s0]\n%s[model.s1]\n%s[model.e2]\n%s[model.e3]\n%s[model.t4]\n%s"
             "[model.t5]\n%s",
             slow, slow, echo, echo, slow, slow);
    const char *ov[] = {"broker.workers=2", "broker.numa_fake_nodes=2", "broker.spin_us=0", NULL};
    cr_assert_eq(bbt_broker_start(&B, cfg, ov), 0, "broker did not start");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bool on0 = c->wpage->worker_id == 0; /* the home is the other worker */
    bb_model *a = bbt_open_ok(c, on0 ? "e3" : "e2"), *b = bbt_open_ok(c, on0 ? "e2" : "e3"),
             *first = bbt_open_ok(c, on0 ? "s1" : "s0"), *last = bbt_open_ok(c, on0 ? "t5" : "t4");
    bb_request *s, *y[3];
    cr_assert_eq(bb_request_new(a, 8, 8, &s), 0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(bb_request_new(i < 2 ? first : last, 8, 8, &y[i]), 0);
    cr_assert_eq(bb_submit(y[0], NULL), 0);
    bbt_msleep(50); /* y0 runs at the home */
    const uint32_t gen = 100;
    describe(s, a->id, gen, 50000); /* past its deadline once the home takes it */
    push_entries(c, &s->index, 1);
    cr_assert_eq(bb_submit(y[1], NULL), 0);
    cr_assert_eq(bb_submit(y[2], NULL), 0);
    cr_assert_eq(bb_wait(y[0], 20000000000ll), 0);
    bbt_msleep(100); /* the home queued S and runs y1 */
    uint32_t cancel = s->index | BB_SQE_CANCEL;
    push_entries(c, &cancel, 1);
    await_done(s, gen); /* after y1: the cancel waits in the home's mailbox */
    cr_assert_eq(s->slot->status, BB_ETIMEDOUT, "S should time out while the cancel waits: %s",
                 bb_errname(s->slot->status));
    cr_assert_eq(bb_request_status(y[2]), BB_EPENDING, "y2 ended before S was resubmitted");
    describe(s, b->id, gen, 0);
    atomic_store_explicit(&s->slot->shm_done_gen, 0, memory_order_relaxed);
    push_entries(c, &s->index, 1);
    await_done(s, gen);
    cr_assert_eq(s->slot->status, 0, "the new submission came back %s",
                 bb_errname(s->slot->status));
    for (int i = 1; i < 3; i++)
        cr_assert_eq(bb_wait(y[i], 20000000000ll), 0);
    cr_assert_eq(bbt_broker_stop(&B), 0);
}

/* A hostile client repeats the cancel of one request (bb_cancel sends one)
 * while the request's SUBMIT waits in the mailbox of its home, which runs a
 * 10 s batch on its own thread: every repeat used to be another mailbox
 * message (16 bytes), so the mailbox grew for as long as the home was busy,
 * about as fast as the client could write its ring. */
Test(workers, repeated_cancels_of_one_request_cost_the_mailbox_nothing)
{
    const char *echo = HOME_ECHO, *slow = HOME_SLOW("10000000");
    char cfg[1024];
    /* Model i lives on worker i mod 2. */
    snprintf(cfg, sizeof cfg, "[model.s0]\n%s[model.s1]\n%s[model.e2]\n%s[model.e3]\n%s", slow,
             slow, echo, echo);
    const char *ov[] = {"broker.workers=2", "broker.numa_fake_nodes=2", "broker.spin_us=0", NULL};
    cr_assert_eq(bbt_broker_start(&B, cfg, ov), 0, "broker did not start");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bool on0 = c->wpage->worker_id == 0; /* the home is the other worker */
    bb_model *a = bbt_open_ok(c, on0 ? "e3" : "e2"), *slow_m = bbt_open_ok(c, on0 ? "s1" : "s0");
    bb_request *s, *y;
    cr_assert_eq(bb_request_new(a, 8, 8, &s), 0);
    cr_assert_eq(bb_request_new(slow_m, 8, 8, &y), 0);
    cr_assert_eq(bb_submit(y, NULL), 0);
    bbt_msleep(50); /* y runs at the home, on its dispatcher */
    describe(s, a->id, 100, 0);
    push_entries(c, &s->index, 1);
    long before = bb__proc_status_kb(B.pid, "RssAnon");
    enum { N = 1 << 22, CHUNK = 256 };
    uint32_t cancels[CHUNK];
    for (int i = 0; i < CHUNK; i++)
        cancels[i] = s->index | BB_SQE_CANCEL;
    for (uint32_t sent = 0; sent < N; sent += CHUNK) {
        /* Room for the chunk (the ring holds far more than CHUNK). */
        while (atomic_load(&c->sq_reserve) + CHUNK -
                   atomic_load_explicit(&c->sq->shm_head, memory_order_acquire) >
               c->sq_mask + 1)
            sched_yield();
        push_entries(c, cancels, CHUNK);
    }
    while (atomic_load(&c->sq_reserve) != atomic_load(&c->sq->shm_head))
        sched_yield(); /* all taken */
    long after = bb__proc_status_kb(B.pid, "RssAnon");
    if (bb_request_status(y) != BB_EPENDING)
        cr_skip_test("the 10 s batch ended before the cancels were all sent (a slow machine)");
    cr_assert_lt(after - before, 16 * 1024,
                 "%d cancels of one request grew the broker by %ld KiB (a message each)", N,
                 after - before);
    bbt_broker_kill(&B, SIGKILL); /* not 10 s for the batch */
}

/* ---- Shutdown ---- */

/* A model whose batches take 20 ms, one request each. */
#define SLOW_20MS                                                                          \
    "backend = synthetic\nparam.batch_us = 20000\nparam.mode = sleep\ninstances = 1\n"    \
    "max_batch_size = 1\nmax_wait_us = 0\n"

/* A broker with two workers on two fake nodes, started with this process
 * on every CPU it may use (the broker inherits them). */
static void start_two_workers(const char *cfg, const cpu_set_t *all)
{
    const char *ov[] = {"broker.workers=2", "broker.numa_fake_nodes=2", "broker.spin_us=0", NULL};
    cr_assert_eq(sched_setaffinity(0, sizeof *all, all), 0);
    cr_assert_eq(bbt_broker_start(&B, cfg, ov), 0, "broker did not start");
}

/* SIGHUP during a shutdown. Worker 0 drains at once; worker 1 finishes its
 * client's last batch (20 ms) and leaves. A reload that worker 0 took up
 * just after worker 1 left waited for it to park, for ever. SIGHUP comes
 * around the end of that batch, a little later each round. */
Test(workers, a_reload_during_shutdown_does_not_hang_it)
{
    int cpus[2];
    two_cpus(cpus);
    cpu_set_t all, one;
    cr_assert_eq(sched_getaffinity(0, sizeof all, &all), 0);
    CPU_ZERO(&one);
    CPU_SET(cpus[1], &one);
    const char *cfg = "[model.e0]\nbackend = echo\n[model.s1]\n" SLOW_20MS;
    for (int round = 0; round < 30; round++) {
        start_two_workers(cfg, &all);
        cr_assert_eq(sched_setaffinity(0, sizeof one, &one), 0);
        bb_client *c = bbt_connect_ok(&B, NULL);
        cr_assert_eq(c->wpage->worker_id, 1, "a client on the second CPU is worker 1's");
        bb_model *m = bbt_open_ok(c, "s1");
        bb_request *r;
        cr_assert_eq(bb_request_new(m, 8, 8, &r), 0);
        cr_assert_eq(bb_submit(r, NULL), 0);
        bbt_msleep(5);
        cr_assert_eq(kill(B.pid, SIGTERM), 0);
        usleep(14700 + 30 * (useconds_t)round);
        kill(B.pid, SIGHUP);
        int st = bbt_broker_wait(&B, 10000);
        cr_assert(st != -1, "round %d: the broker did not exit within 10 s", round);
        bb_disconnect(c);
    }
}

struct late_submitter {
    bb_client *c;
    bb_request *r;
    uint32_t model;
    _Atomic int stop;
};

/* Submit r again and again by hand (the library would refuse once the
 * broker says SHUTDOWN), 0 to 200 µs apart, each after the last answer. */
static void *submit_late(void *p)
{
    struct late_submitter *ls = p;
    uint64_t seed = (uint64_t)bbt_now_ns();
    for (uint32_t gen = 1; !atomic_load(&ls->stop); gen++) {
        describe(ls->r, ls->model, gen, 0);
        push_entries(ls->c, &ls->r->index, 1);
        while (!atomic_load(&ls->stop) &&
               atomic_load_explicit(&ls->r->slot->shm_done_gen, memory_order_acquire) != gen)
            usleep(20);
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        usleep((useconds_t)((seed >> 33) % 200));
    }
    return NULL;
}

/* Every CPU this process may use, and the first two of them one each
 * (skips the test where there are fewer). */
static void cpu_sets(cpu_set_t *all, cpu_set_t on[2])
{
    int cpus[2];
    two_cpus(cpus);
    cr_assert_eq(sched_getaffinity(0, sizeof *all, all), 0);
    for (int k = 0; k < 2; k++) {
        CPU_ZERO(&on[k]);
        CPU_SET(cpus[k], &on[k]);
    }
}

/* A client of worker 0 and one of worker 1 (start_two_workers), each
 * connected from its worker's CPU. */
static void connect_one_per_worker(bb_client *c[2], const cpu_set_t *all, const cpu_set_t on[2])
{
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(sched_setaffinity(0, sizeof on[k], &on[k]), 0);
        c[k] = bbt_connect_ok(&B, NULL);
        cr_assert_eq(c[k]->wpage->worker_id, (uint32_t)k);
    }
    cr_assert_eq(sched_setaffinity(0, sizeof *all, all), 0);
}

/* A submission that reaches worker 0 after it drained, for a model of worker
 * 1, which had drained too and left: it used to travel to worker 1 and wait
 * there for ever, and so did the broker's exit. */
Test(workers, a_submission_during_shutdown_does_not_hang_it)
{
    cpu_set_t all, on[2];
    cpu_sets(&all, on);
    const char *cfg = "[model.e0]\nbackend = echo\n[model.e1]\nbackend = echo\n"
                      "[model.s2]\nbackend = echo\n[model.s3]\n" SLOW_20MS;
    for (int round = 0; round < 40; round++) {
        start_two_workers(cfg, &all);
        bb_client *c[2];
        connect_one_per_worker(c, &all, on);
        bb_model *e1 = bbt_open_ok(c[0], "e1"), *s3 = bbt_open_ok(c[1], "s3");
        struct late_submitter ls = {.c = c[0], .model = e1->id};
        bb_request *busy;
        cr_assert_eq(bb_request_new(e1, 8, 8, &ls.r), 0);
        cr_assert_eq(bb_request_new(s3, 8, 8, &busy), 0);
        cr_assert_eq(bb_submit(busy, NULL), 0); /* worker 1 is busy for 20 ms */
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, submit_late, &ls), 0);
        bbt_msleep(5);
        cr_assert_eq(kill(B.pid, SIGTERM), 0);
        int st = bbt_broker_wait(&B, 10000);
        atomic_store(&ls.stop, 1);
        pthread_join(t, NULL);
        cr_assert(st != -1, "round %d: the broker did not exit within 10 s", round);
        for (int k = 0; k < 2; k++)
            bb_disconnect(c[k]);
    }
}

/* ---- Deadlines of requests that travel to another worker ---- */

/* A deadline counts from when the broker reads the submission
 * (scheduling.md), on whichever worker reads it. A request for a model of
 * the other worker, read there while that worker runs a long inline batch,
 * is past its deadline by the time its home takes it from the mailbox: it
 * times out, as it would have in the queue, instead of running. */
Test(workers, a_deadline_counts_from_the_intake_not_the_homes_mail)
{
    const char *slow = "backend = synthetic\nparam.batch_us = 2000000\nparam.mode = sleep\n"
                       "instances = 0\nmax_batch_size = 1\nmax_wait_us = 0\nadaptive = off\n";
    char cfg[512];
    snprintf(cfg, sizeof cfg, "[model.s0]\n%s[model.s1]\n%s", slow, slow);
    const char *ov[] = {"broker.workers=2", "broker.numa_fake_nodes=2", NULL};
    cr_assert_eq(bbt_broker_start(&B, cfg, ov), 0, "broker did not start");
    bb_client *c = bbt_connect_ok(&B, NULL);
    /* Model i lives on worker i mod 2: the other worker's. */
    bb_model *m = bbt_open_ok(c, c->wpage->worker_id == 0 ? "s1" : "s0");
    bb_request *busy, *late;
    cr_assert_eq(bb_request_new(m, 8, 8, &busy), 0);
    cr_assert_eq(bb_request_new(m, 8, 8, &late), 0);
    cr_assert_eq(bb_submit(busy, NULL), 0); /* its home runs it for 2 s */
    bbt_msleep(200);
    struct bb_submit_opts o = {.timeout_us = 20000};
    cr_assert_eq(bb_submit(late, &o), 0);
    cr_assert_eq(bb_wait(late, 20000000000ll), 0);
    cr_assert_eq(bb_request_status(late), BB_ETIMEDOUT,
                 "read 20 ms before its deadline, 1.8 s before its home took it: %s",
                 bb_errname(bb_request_status(late)));
    cr_assert_eq(bb_wait(busy, 20000000000ll), 0);
    cr_assert_eq(bb_request_status(busy), 0);
    bb_disconnect(c);
}

/* A request read for the other worker's model goes there before this
 * worker runs a batch of its own on its thread: it waited in the outbox
 * until the end of that batch (2 s here), past its deadline, though its own
 * model was idle. The client submits it, then a request of the slow model
 * of its own worker, so that one pass reads both. */
Test(workers, a_request_for_the_other_worker_does_not_wait_behind_an_inline_batch)
{
    const char *slow = "backend = synthetic\nparam.batch_us = 2000000\nparam.mode = sleep\n"
                       "instances = 0\nmax_batch_size = 1\nmax_wait_us = 0\nadaptive = off\n"
                       "inline_max_us = 0\ninline_quiet_max_us = 0\n";
    char cfg[768];
    /* Homes: s0 and e0 on worker 0, s1 and e1 on worker 1. */
    snprintf(cfg, sizeof cfg,
             "[model.s0]\n%s[model.s1]\n%s[model.e0]\nbackend = echo\n[model.e1]\nbackend = echo\n",
             slow, slow);
    const char *ov[] = {"broker.workers=2", "broker.numa_fake_nodes=2", NULL};
    cr_assert_eq(bbt_broker_start(&B, cfg, ov), 0, "broker did not start");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bool on0 = c->wpage->worker_id == 0;
    bb_model *there = bbt_open_ok(c, on0 ? "e1" : "e0"), *here = bbt_open_ok(c, on0 ? "s0" : "s1");
    bb_request *x, *slow_one;
    cr_assert_eq(bb_request_new(there, 8, 8, &x), 0);
    cr_assert_eq(bb_request_new(here, 8, 8, &slow_one), 0);
    struct bb_submit_opts o = {.timeout_us = 500000};
    cr_assert_eq(bb_submit(x, &o), 0);
    cr_assert_eq(bb_submit(slow_one, NULL), 0);
    cr_assert_eq(bb_wait(x, 20000000000ll), 0);
    cr_assert_eq(bb_request_status(x), 0, "the other worker's request: %s",
                 bb_errname(bb_request_status(x)));
    cr_assert_eq(bb_request_status(slow_one), BB_EPENDING,
                 "answered only after this worker's 2 s batch");
    cr_assert_eq(bb_wait(slow_one, 20000000000ll), 0);
    cr_assert_eq(bb_request_status(slow_one), 0);
    bb_disconnect(c);
}

/* A reload parks every worker but the first while it applies; a worker
 * running batches on its own thread (instances = 0) parks after the batch
 * under way, not after every batch queued behind it. Worker 1 holds four
 * 300 ms requests queued behind a running one when SIGHUP comes; worker 0's
 * echo client must be served before the last of them ends. The worker used
 * to run its whole queue first, and worker 0, waiting for it to park, served
 * nobody meanwhile. */
Test(workers, a_reload_waits_for_one_inline_batch_not_a_queue_of_them)
{
    cpu_set_t all, on[2];
    cpu_sets(&all, on);
    start_two_workers("[model.e0]\nbackend = echo\n[model.s1]\nbackend = synthetic\n"
                      "param.batch_us = 300000\nparam.mode = sleep\ninstances = 0\n"
                      "max_batch_size = 1\nmax_wait_us = 0\n",
                      &all);
    bb_client *c[2];
    connect_one_per_worker(c, &all, on);
    bb_model *e0 = bbt_open_ok(c[0], "e0"), *s1 = bbt_open_ok(c[1], "s1");
    bb_request *r[5];
    for (int i = 0; i < 5; i++)
        cr_assert_eq(bb_request_new(s1, 8, 8, &r[i]), 0);
    cr_assert_eq(bb_submit(r[0], NULL), 0);
    bbt_msleep(50); /* r[0] runs on worker 1: the others wait in its ring */
    for (int i = 1; i < 5; i++)
        cr_assert_eq(bb_submit(r[i], NULL), 0);
    cr_assert_eq(bb_wait(r[0], 10000000000ll), 0);
    bbt_msleep(50); /* r[1] runs, three are queued */
    cr_assert_eq(kill(B.pid, SIGHUP), 0);
    bbt_msleep(20); /* worker 0 waits for worker 1 to park */
    char out[8];
    size_t len;
    cr_assert_eq(bb_infer(e0, "hi", 2, out, sizeof out, &len, NULL, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(r[4]), BB_EPENDING,
                 "worker 0 served nobody until worker 1 had run its whole queue");
    for (int i = 1; i < 5; i++) {
        cr_assert_eq(bb_wait(r[i], 10000000000ll), 0);
        cr_assert_eq(bb_request_status(r[i]), 0);
    }
    for (int k = 0; k < 2; k++)
        bb_disconnect(c[k]);
}
