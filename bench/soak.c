/* bb-soak: a long run of mixed load against one broker, to show that nothing
 * accepted is lost and that the broker's memory and descriptors stay flat
 * (docs/operations.md, "Soak").
 *
 *   bb-soak [--duration S] [--out DIR] [--clients N] [--broker BIN] [--plugin-dir DIR]
 *
 * It starts a broker (two models: echo with dedup, and a synthetic backend
 * that fails one batch in fail_every and has a default deadline), then keeps
 * N client processes running: each connects, opens both models, submits
 * pipelined requests of random size, model, priority, dedup flag and
 * deadline, cancels some, checks every output byte for byte, and after a
 * random lifetime either disconnects (after every request it submitted has
 * its outcome) or is SIGKILLed by bb-soak with requests in flight. Every 10 s
 * the configuration file is rewritten (reloadable keys) and the broker gets
 * SIGHUP. Every second bb-soak samples the broker's RSS (VmRSS, RssAnon,
 * RssShmem) and open descriptors into DIR/soak.tsv; bench/plot_soak.gp plots
 * it. At the end the clients stop, and the broker must come back to the
 * descriptors it had before the first client and to the private memory it
 * had after warm-up, and exit 0 on SIGTERM.
 *
 * Output: DIR/soak.tsv, DIR/summary.txt (every request's outcome, counted by
 * status), DIR/broker.log. Exit status 0 if every check passed. Counting the
 * broker's descriptors needs root: the broker is not dumpable, so its
 * /proc/PID/fd belongs to root. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "procfs_internal.h"

#define MAX_CLIENTS 64
#define NCODES 32                 /* -status of BB_E* codes, 0 = ok */
#define WRONG NCODES              /* status 0 with a wrong output */
#define LOST (NCODES + 1)         /* no outcome within the bound */
#define NOUT (NCODES + 2)
#define DEPTH 8
#define MAXLEN 4096

/* Shared with every client process (MAP_SHARED before the forks). */
struct slot {
    _Atomic int state;            /* 0 free, 1 running, 2 exited */
    pid_t pid;
    _Atomic uint64_t submitted, answered;
};

struct shared {
    _Atomic uint64_t outcome[2][NOUT]; /* per model, per outcome */
    _Atomic uint64_t connect_failed;
    struct slot slots[MAX_CLIENTS];
};

static struct shared *sh;
static const char *sock_path;
static volatile sig_atomic_t interrupted;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Deterministic payload of request id; a dedup request reuses a few ids. */
static void fill(unsigned char *p, size_t len, uint64_t id)
{
    uint64_t s = id * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i++) {
        if ((i & 7) == 0)
            s = rnd(&s) | 1;
        p[i] = (unsigned char)(s >> ((i & 7) * 8));
    }
}

static bool check(const unsigned char *p, size_t len, uint64_t id)
{
    unsigned char buf[MAXLEN];
    fill(buf, len, id);
    return memcmp(p, buf, len) == 0;
}

/* ---- A client process ---- */

struct pending {
    bb_request *r;
    int model;
    uint64_t id;
    size_t len;
    bool busy;
};

static void record(struct slot *me, int model, int outcome)
{
    atomic_fetch_add(&sh->outcome[model][outcome], 1);
    atomic_fetch_add(&me->answered, 1);
}

/* Collect p's outcome (it completed). */
static void settle(struct slot *me, struct pending *p)
{
    int st = bb_request_status(p->r);
    int outcome = -st < NCODES && st <= 0 ? -st : NCODES - 1;
    if (st == 0) {
        size_t n;
        const unsigned char *out = bb_request_output(p->r, &n);
        if (!out || n != p->len || !check(out, n, p->id))
            outcome = WRONG;
    }
    record(me, p->model, outcome);
    p->busy = false;
}

static int client_main(int idx, uint64_t seed, uint64_t life_ns)
{
    struct slot *me = &sh->slots[idx];
    bb_client *c;
    bb_model *m[2];
    struct bb_client_opts o = {.max_inflight = 16, .segment_bytes = 4u << 20};
    if (bb_connect(sock_path, &o, &c) != 0) {
        atomic_fetch_add(&sh->connect_failed, 1);
        return 0;
    }
    if (bb_model_open(c, "echo", &m[0]) != 0 || bb_model_open(c, "syn", &m[1]) != 0)
        return 2;
    bb_client_set_spin_ns(c, 20000);
    uint64_t s = seed | 1;
    int depth = 1 + (int)(rnd(&s) % DEPTH);
    struct pending p[DEPTH] = {0};
    for (int i = 0; i < depth; i++) {
        p[i].model = (int)(rnd(&s) % 2);
        if (bb_request_new(m[p[i].model], MAXLEN, MAXLEN, &p[i].r) != 0)
            return 3;
    }
    uint64_t end = now_ns() + life_ns, next_id = seed << 20;
    while (now_ns() < end) {
        for (int i = 0; i < depth; i++) {
            struct pending *q = &p[i];
            if (q->busy) {
                int rc = bb_wait(q->r, 30000000000ll);
                if (rc == BB_EDISCONNECTED) {
                    record(me, q->model, -BB_EDISCONNECTED);
                    return 4; /* the broker died: that is a failure of the soak */
                }
                if (rc != 0) {
                    record(me, q->model, LOST);
                    return 5;
                }
                settle(me, q);
            }
            uint64_t r = rnd(&s);
            /* Dedup requests share a few inputs, so that groups and the cache form. */
            bool dedup = r % 8 == 0;
            q->id = dedup ? 1 + r % 5 : next_id++;
            q->len = 1 + (size_t)((r >> 8) % MAXLEN);
            fill(bb_request_input(q->r), q->len, q->id);
            bb_request_set_input_len(q->r, q->len);
            struct bb_submit_opts so = {.priority = (int)((r >> 24) % 5),
                                        .flags = dedup ? BB_SUBMIT_DEDUP : 0,
                                        .timeout_us = (r >> 32) % 16 == 0 ? 2000 : 0};
            if (bb_submit(q->r, &so) != 0)
                return 6;
            atomic_fetch_add(&me->submitted, 1);
            q->busy = true;
            if ((r >> 40) % 32 == 0)
                bb_cancel(q->r); /* queued: BB_ECANCELED; running: its normal outcome */
        }
    }
    /* A clean exit: every request it submitted gets its outcome first. */
    for (int i = 0; i < depth; i++) {
        if (!p[i].busy)
            continue;
        if (bb_wait(p[i].r, 30000000000ll) != 0) {
            record(me, p[i].model, LOST);
            continue;
        }
        settle(me, &p[i]);
    }
    bb_disconnect(c);
    return 0;
}

/* ---- The broker ---- */

static void write_config(const char *path, const char *sock, int round)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    /* Reloadable keys change every round; the models stay. */
    fprintf(f,
            "[broker]\nsocket = %s\nlog_level = info\nspin_us = %d\n\n"
            "[model.echo]\nbackend = echo\ninstances = 1\nmax_batch_size = 32\n"
            "max_wait_us = %d\ndedup_cache_entries = 64\ndedup_ttl_ms = %d\n\n"
            "[model.syn]\nbackend = synthetic\nparam.batch_us = 200\nparam.item_us = 5\n"
            "param.mode = sleep\nparam.fail_every = 50\ninstances = 2\nmax_batch_size = 16\n"
            "max_wait_us = %d\ndefault_timeout_us = %d\nmax_queue = %d\n",
            sock, round % 2 ? 0 : 20, round % 3 ? 200 : 500, round % 2 ? 500 : 2000,
            round % 2 ? 100 : 300, round % 2 ? 200000 : 100000, round % 2 ? 512 : 256);
    fclose(f);
}

static pid_t start_broker(const char *bin, const char *plugin_dir, const char *cfg,
                          const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        char plug[300];
        snprintf(plug, sizeof plug, "broker.plugin_dir=%s", plugin_dir);
        execl(bin, bin, "--config", cfg, "-o", plug, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void reap_clients(int *running, uint64_t *abandoned, int *failed)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_CLIENTS; i++) {
            struct slot *sl = &sh->slots[i];
            if (sl->pid != pid || atomic_load(&sl->state) != 1)
                continue;
            if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
                *abandoned += atomic_load(&sl->submitted) - atomic_load(&sl->answered);
            else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                (*failed)++;
            atomic_store(&sl->state, 0);
            (*running)--;
        }
    }
}

static void on_int(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bb-soak [--duration S] [--out DIR] [--clients N] [--broker BIN] "
               "[--plugin-dir DIR]\n"
               "  --duration S     seconds of load (default 600)\n"
               "  --out DIR        soak.tsv, summary.txt, broker.log (default soak-out)\n"
               "  --clients N      client processes at a time (default 6, at most %d)\n"
               "  --broker BIN     the broker (default the build's)\n"
               "  --plugin-dir DIR its backends (default the build's)\n",
            MAX_CLIENTS);
}

int main(int argc, char **argv)
{
    double duration = 600;
    const char *out = "soak-out", *broker_bin = BB_BROKER_BIN, *plugin_dir = BB_PLUGIN_DIR;
    int nclients = 6;
    static const struct option opts[] = {
        {"duration", 1, 0, 'd'}, {"out", 1, 0, 'o'},      {"clients", 1, 0, 'c'},
        {"broker", 1, 0, 'b'},   {"plugin-dir", 1, 0, 'p'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "d:o:c:b:p:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': duration = atof(optarg); break;
        case 'o': out = optarg; break;
        case 'c': nclients = atoi(optarg); break;
        case 'b': broker_bin = optarg; break;
        case 'p': plugin_dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (duration <= 0 || nclients < 1 || nclients > MAX_CLIENTS || optind < argc) {
        usage(stderr);
        return 2;
    }
    if (mkdir(out, 0755) < 0 && errno != EEXIST) {
        perror(out);
        return 2;
    }
    char cfg[512], log[512], tsv[512], sum[512], sock[108];
    snprintf(cfg, sizeof cfg, "%s/soak.ini", out);
    snprintf(log, sizeof log, "%s/broker.log", out);
    snprintf(tsv, sizeof tsv, "%s/soak.tsv", out);
    snprintf(sum, sizeof sum, "%s/summary.txt", out);
    snprintf(sock, sizeof sock, "/tmp/bb-soak-%d.sock", (int)getpid());
    sock_path = sock;
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 1;
    signal(SIGINT, on_int);
    signal(SIGPIPE, SIG_IGN);

    int round = 0;
    write_config(cfg, sock, round);
    pid_t broker = start_broker(broker_bin, plugin_dir, cfg, log);
    for (int i = 0; i < 1000; i++) {
        bb_client *c;
        int rc = bb_connect(sock, NULL, &c);
        if (rc == 0) {
            bb_disconnect(c);
            break;
        }
        usleep(10000);
    }
    usleep(200000); /* the probe's session ends */
    int fds_idle_start = bb__proc_count_fds(broker);
    long anon_start = bb__proc_status_kb(broker, "RssAnon");
    if (fds_idle_start < 0)
        fprintf(stderr, "bb-soak: cannot read /proc/%d/fd (run as root): descriptors not "
                        "counted\n", (int)broker);

    FILE *t = fopen(tsv, "w");
    if (!t) {
        perror(tsv);
        return 1;
    }
    fprintf(t, "# bb-soak: %.0f s, %d client processes at a time; broker pid %d\n"
               "# t_s\tvmrss_kib\trss_anon_kib\trss_shmem_kib\tfds\tclients\tanswered\tkills\t"
               "reloads\n", duration, nclients, (int)broker);

    uint64_t s = (uint64_t)getpid() * 2654435761u + 1;
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(duration * 1e9), next_sample = t0;
    uint64_t next_reload = t0 + 10000000000ull;
    int running = 0, failed = 0, kills = 0, reloads = 0, started = 0;
    uint64_t abandoned = 0;
    /* Warm: the private memory the broker settles at under this load, taken
     * after 60 s (or a quarter of a shorter run), is what the end is held to. */
    long anon_warm = -1;
    uint64_t warm_ns = (uint64_t)(duration * 1e9 / 4);
    if (warm_ns > 60000000000ull)
        warm_ns = 60000000000ull;
    bool broker_died = false;
    while (!interrupted) {
        uint64_t now = now_ns();
        reap_clients(&running, &abandoned, &failed);
        int st;
        if (waitpid(broker, &st, WNOHANG) == broker) {
            broker_died = true;
            fprintf(stderr, "bb-soak: the broker exited (status %#x)\n", st);
            break;
        }
        if (now >= end)
            break;
        /* Keep nclients running, each for 0.3-5 s. */
        while (running < nclients) {
            int idx = -1;
            for (int i = 0; i < MAX_CLIENTS && idx < 0; i++)
                if (atomic_load(&sh->slots[i].state) == 0)
                    idx = i;
            struct slot *sl = &sh->slots[idx];
            atomic_store(&sl->submitted, 0);
            atomic_store(&sl->answered, 0);
            atomic_store(&sl->state, 1);
            uint64_t seed = rnd(&s), life = 300000000ull + rnd(&s) % 4700000000ull;
            fflush(NULL);
            pid_t pid = fork();
            if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                _exit(client_main(idx, seed, life));
            }
            sl->pid = pid;
            running++;
            started++;
        }
        /* About every 2 s a running client dies with requests in flight. */
        if (rnd(&s) % 40 == 0) {
            int k = (int)(rnd(&s) % (uint64_t)running);
            for (int i = 0; i < MAX_CLIENTS; i++) {
                if (atomic_load(&sh->slots[i].state) != 1 || k-- > 0)
                    continue;
                kill(sh->slots[i].pid, SIGKILL);
                kills++;
                break;
            }
        }
        if (now >= next_reload) {
            write_config(cfg, sock, ++round);
            kill(broker, SIGHUP);
            reloads++;
            next_reload += 10000000000ull;
        }
        if (now >= next_sample) {
            uint64_t answered = 0;
            for (int m = 0; m < 2; m++)
                for (int k = 0; k < NOUT; k++)
                    answered += atomic_load(&sh->outcome[m][k]);
            long anon = bb__proc_status_kb(broker, "RssAnon");
            fprintf(t, "%.1f\t%ld\t%ld\t%ld\t%d\t%d\t%llu\t%d\t%d\n", (double)(now - t0) / 1e9,
                    bb__proc_status_kb(broker, "VmRSS"), anon, bb__proc_status_kb(broker, "RssShmem"),
                    bb__proc_count_fds(broker), running, (unsigned long long)answered, kills, reloads);
            fflush(t);
            if (anon_warm < 0 && now - t0 >= warm_ns)
                anon_warm = anon;
            next_sample += 1000000000ull;
        }
        usleep(50000);
    }
    /* The clients finish (the killed ones are already gone). */
    for (int i = 0; i < 600 && running > 0; i++) {
        reap_clients(&running, &abandoned, &failed);
        usleep(50000);
    }
    uint64_t t_end = now_ns();
    /* Back to idle: every session the broker held is gone. */
    int fds_idle_end = -1;
    for (int i = 0; i < 200; i++) {
        fds_idle_end = bb__proc_count_fds(broker);
        if (fds_idle_end <= fds_idle_start)
            break;
        usleep(50000);
    }
    long anon_end = bb__proc_status_kb(broker, "RssAnon");
    fprintf(t, "%.1f\t%ld\t%ld\t%ld\t%d\t%d\t%s\t%d\t%d\n", (double)(now_ns() - t0) / 1e9,
            bb__proc_status_kb(broker, "VmRSS"), anon_end, bb__proc_status_kb(broker, "RssShmem"), fds_idle_end, 0,
            "idle", kills, reloads);
    fclose(t);
    int bst = -1;
    if (!broker_died) {
        kill(broker, SIGTERM);
        waitpid(broker, &bst, 0);
    }

    static const char *const names[2] = {"echo", "syn"};
    FILE *out_f[2] = {stdout, fopen(sum, "w")};
    uint64_t total = 0, lost = 0, wrong = 0, disc = 0;
    for (int m = 0; m < 2; m++) {
        lost += atomic_load(&sh->outcome[m][LOST]);
        wrong += atomic_load(&sh->outcome[m][WRONG]);
        disc += atomic_load(&sh->outcome[m][-BB_EDISCONNECTED]);
        for (int k = 0; k < NOUT; k++)
            total += atomic_load(&sh->outcome[m][k]);
    }
    if (anon_warm < 0)
        anon_warm = anon_start;
    bool rss_flat = anon_end <= anon_warm + anon_warm / 10 + 4096;
    bool fds_flat = fds_idle_start < 0 || fds_idle_end == fds_idle_start;
    bool ok = !broker_died && !interrupted && failed == 0 && lost == 0 && wrong == 0 &&
              disc == 0 && rss_flat && fds_flat && bst >= 0 && WIFEXITED(bst) &&
              WEXITSTATUS(bst) == 0;
    for (int k = 0; k < 2; k++) {
        FILE *f = out_f[k];
        if (!f)
            continue;
        fprintf(f, "bb-soak: %.0f s of load, %d client processes at a time, %d started, %d "
                   "SIGKILLed, %d SIGHUP reloads\n",
                (double)(t_end - t0) / 1e9, nclients, started, kills, reloads);
        fprintf(f, "requests with an outcome: %llu (answered by the broker or counted lost)\n",
                (unsigned long long)total);
        fprintf(f, "%-16s %12s %12s\n", "outcome", names[0], names[1]);
        for (int o = 0; o < NOUT; o++) {
            uint64_t a = atomic_load(&sh->outcome[0][o]), b = atomic_load(&sh->outcome[1][o]);
            if (!a && !b)
                continue;
            const char *name = o == WRONG ? "wrong output" : o == LOST ? "lost" : o == 0 ? "ok"
                               : bb_errname(-o);
            fprintf(f, "%-16s %12llu %12llu\n", name, (unsigned long long)a,
                    (unsigned long long)b);
        }
        fprintf(f, "in flight in SIGKILLed clients (abandoned by design): %llu\n",
                (unsigned long long)abandoned);
        fprintf(f, "client processes that failed: %d; connects refused: %llu\n", failed,
                (unsigned long long)atomic_load(&sh->connect_failed));
        fprintf(f, "broker RssAnon: %ld KiB at start, %ld KiB after %.0f s (warm), %ld KiB at the "
                   "end (idle): %s\n", anon_start, anon_warm, (double)warm_ns / 1e9, anon_end,
                rss_flat ? "flat" : "GREW");
        fprintf(f, "broker descriptors: %d idle before, %d idle after: %s\n", fds_idle_start,
                fds_idle_end, fds_flat ? "flat" : "LEAKED");
        fprintf(f, "broker exit: %s (status %#x)\n",
                broker_died ? "died during the run" : "SIGTERM", bst);
        fprintf(f, "verdict: %s\n", ok ? "PASS" : "FAIL");
        if (k)
            fclose(f);
    }
    unlink(sock);
    return ok ? 0 : 1;
}
