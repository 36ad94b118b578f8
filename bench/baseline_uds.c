/* Baseline "uds": what users build without batchbroker. A single-threaded
 * server process behind a Unix stream socket receives length-prefixed
 * requests, queues them, forms batches with the model's policy (dispatch at
 * max_batch_size requests or when the oldest has waited max_wait_us, FIFO),
 * runs the same backend and writes the replies back, one write per connection
 * and batch. Each client thread has its own connection. Wait mode spin polls
 * the sockets (MSG_DONTWAIT / epoll with timeout 0); sleep blocks. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "bench.h"

struct frame {          /* request: slot, len, prio; reply: slot, len, status */
    uint32_t slot, len;
    int32_t aux;
    uint32_t pad;
};

static struct {
    char path[108];
    pid_t server;
} U;

/* ---- server ---- */

struct conn {
    int fd;
    unsigned char *rbuf, *wbuf;
    size_t rlen, wlen, wcap;
    int want_out;
};

struct ureq {
    uint32_t conn, slot, len, prio;
    uint64_t t_arr;
    unsigned char *in, *out;
};

struct userver {
    const struct bench_opts *o;
    struct bench_shared *sh;
    struct bench_backend be;
    void *state;
    int ep, lfd;
    struct conn *conns;
    uint32_t nconns, maxconns;
    size_t rcap;
    struct ureq *q;           /* ring of pending requests, oldest at qhead */
    uint32_t qcap, qhead, qcount, max_batch;
    struct bb_view *views;
    struct bb_outbuf *outs;
    uint8_t *prios;
};

static void die(const char *what)
{
    fprintf(stderr, "bb-bench: uds server: %s: %s\n", what, strerror(errno));
    _exit(1);
}

static void flush_conn(struct userver *s, struct conn *c)
{
    while (c->wlen) {
        ssize_t n = write(c->fd, c->wbuf, c->wlen);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            c->wlen = 0; /* peer gone: drop its replies */
            break;
        }
        memmove(c->wbuf, c->wbuf + n, c->wlen - (size_t)n);
        c->wlen -= (size_t)n;
    }
    int want = c->wlen != 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0),
                                 .data.u32 = (uint32_t)(c - s->conns)};
        epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
}

static void reply(struct userver *s, struct ureq *r, int status, size_t len)
{
    struct conn *c = &s->conns[r->conn];
    if (c->fd < 0) return;
    size_t need = c->wlen + sizeof(struct frame) + len;
    if (need > c->wcap) {
        size_t cap = c->wcap * 2 > need ? c->wcap * 2 : need;
        unsigned char *p = realloc(c->wbuf, cap);
        if (!p) die("realloc");
        c->wbuf = p;
        c->wcap = cap;
    }
    struct frame f = {.slot = r->slot, .len = (uint32_t)len, .aux = status};
    memcpy(c->wbuf + c->wlen, &f, sizeof f);
    memcpy(c->wbuf + c->wlen + sizeof f, r->out, len);
    c->wlen = need;
}

static void run_batch(struct userver *s)
{
    uint32_t k = s->qcount < s->max_batch ? s->qcount : s->max_batch;
    for (uint32_t i = 0; i < k; i++) {
        struct ureq *r = &s->q[(s->qhead + i) % s->qcap];
        s->views[i] = (struct bb_view){r->in, r->len};
        s->outs[i] = (struct bb_outbuf){.ptr = r->out, .cap = s->o->out_cap};
        s->prios[i] = (uint8_t)r->prio;
    }
    char errmsg[128];
    struct bb_batch b = {.n = k, .inputs = s->views, .outputs = s->outs, .priorities = s->prios,
                         .errmsg = errmsg, .errmsg_cap = sizeof errmsg};
    bench_backend_run(&s->be, s->state, &b);
    for (uint32_t i = 0; i < k; i++)
        reply(s, &s->q[(s->qhead + i) % s->qcap], s->outs[i].status, s->outs[i].len);
    s->qhead = (s->qhead + k) % s->qcap;
    s->qcount -= k;
    bench_count_batch(s->sh, s->sh->server_batch_count, k);
    for (uint32_t i = 0; i < s->nconns; i++)
        if (s->conns[i].wlen && s->conns[i].fd >= 0) flush_conn(s, &s->conns[i]);
}

static void parse(struct userver *s, uint32_t ci)
{
    struct conn *c = &s->conns[ci];
    size_t off = 0;
    uint64_t now = bench_now_ns();
    while (c->rlen - off >= sizeof(struct frame)) {
        struct frame f;
        memcpy(&f, c->rbuf + off, sizeof f);
        if (f.len > s->o->pmax) {
            fprintf(stderr, "bb-bench: uds server: request of %u bytes\n", f.len);
            _exit(1);
        }
        if (c->rlen - off < sizeof f + f.len) break;
        if (s->qcount == s->qcap) {
            fprintf(stderr, "bb-bench: uds server: queue overflow\n");
            _exit(1);
        }
        struct ureq *r = &s->q[(s->qhead + s->qcount++) % s->qcap];
        r->conn = ci;
        r->slot = f.slot;
        r->len = f.len;
        r->prio = (uint32_t)f.aux;
        r->t_arr = now;
        memcpy(r->in, c->rbuf + off + sizeof f, f.len);
        off += sizeof f + f.len;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
}

static void on_readable(struct userver *s, uint32_t ci)
{
    struct conn *c = &s->conns[ci];
    for (;;) {
        ssize_t n = read(c->fd, c->rbuf + c->rlen, s->rcap - c->rlen);
        if (n > 0) {
            c->rlen += (size_t)n;
            parse(s, ci);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        close(c->fd); /* EOF or error: the client is done */
        c->fd = -1;
        return;
    }
}

static void on_accept(struct userver *s)
{
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        if (s->nconns == s->maxconns) die("too many connections");
        struct conn *c = &s->conns[s->nconns];
        *c = (struct conn){.fd = fd, .rbuf = malloc(s->rcap), .wbuf = malloc(s->rcap),
                           .wcap = s->rcap};
        if (!c->rbuf || !c->wbuf) die("malloc");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = s->nconns};
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
        s->nconns++;
    }
}

static void serve(const struct bench_opts *o, struct bench_shared *sh, int lfd)
{
    struct userver s = {.o = o, .sh = sh, .lfd = lfd};
    char err[512];
    if (bench_backend_load(&o->model, &s.be, err, sizeof err) < 0 ||
        bench_backend_state(&s.be, &s.state, err, sizeof err) < 0) {
        fprintf(stderr, "bb-bench: uds server: %s\n", err);
        _exit(1);
    }
    s.max_batch = o->model.max_batch_size ? o->model.max_batch_size : 1;
    s.maxconns = o->clients * o->threads;
    s.qcap = s.maxconns * o->concurrency;
    s.rcap = 65536 + 2 * (sizeof(struct frame) + (o->pmax > o->out_cap ? o->pmax : o->out_cap));
    s.conns = calloc(s.maxconns, sizeof *s.conns);
    s.q = calloc(s.qcap, sizeof *s.q);
    s.views = calloc(s.max_batch, sizeof *s.views);
    s.outs = calloc(s.max_batch, sizeof *s.outs);
    s.prios = calloc(s.max_batch, 1);
    if (!s.conns || !s.q || !s.views || !s.outs || !s.prios) die("calloc");
    for (uint32_t i = 0; i < s.qcap; i++) {
        s.q[i].in = malloc(o->pmax ? o->pmax : 1);
        s.q[i].out = malloc(o->out_cap ? o->out_cap : 1);
        if (!s.q[i].in || !s.q[i].out) die("malloc");
    }
    s.ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (s.ep < 0 || epoll_ctl(s.ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll");
    uint64_t max_wait = (uint64_t)o->model.max_wait_us * 1000u;
    int spin = o->wait == BENCH_WAIT_SPIN;
    struct epoll_event evs[64];

    for (;;) {
        uint64_t now = bench_now_ns();
        while (s.qcount >= s.max_batch || (s.qcount && now >= s.q[s.qhead].t_arr + max_wait)) {
            run_batch(&s);
            now = bench_now_ns();
        }
        struct timespec ts = {0}, *tsp = NULL;
        if (spin) {
            tsp = &ts;
        } else if (s.qcount) {
            uint64_t left = s.q[s.qhead].t_arr + max_wait - now;
            ts = (struct timespec){(time_t)(left / 1000000000u), (long)(left % 1000000000u)};
            tsp = &ts;
        }
        int n = epoll_pwait2(s.ep, evs, 64, tsp, NULL);
        if (n < 0 && errno != EINTR) die("epoll_pwait2");
        for (int i = 0; i < n; i++) {
            uint32_t ci = evs[i].data.u32;
            if (ci == UINT32_MAX) {
                on_accept(&s);
                continue;
            }
            if (s.conns[ci].fd < 0) continue;
            if (evs[i].events & EPOLLOUT) flush_conn(&s, &s.conns[ci]);
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(&s, ci);
        }
    }
}

static int u_server_start(struct bench_env *env, pid_t *server_pid)
{
    const struct bench_opts *o = env->o;
    snprintf(U.path, sizeof U.path, "/tmp/bb-bench-uds-%d.sock", (int)getpid());
    unlink(U.path);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, U.path);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 1024) < 0) {
        bench_fail(env->sh, "uds: %s: %s", U.path, strerror(errno));
        if (lfd >= 0) close(lfd);
        return -1;
    }
    fflush(NULL);
    U.server = fork();
    if (U.server < 0) {
        bench_fail(env->sh, "uds: fork: %s", strerror(errno));
        close(lfd);
        return -1;
    }
    if (U.server == 0) {
        if (o->nserver_cpus > 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            for (int i = 0; i < o->nserver_cpus; i++) CPU_SET(o->server_cpus[i], &set);
            sched_setaffinity(0, sizeof set, &set);
        }
        signal(SIGPIPE, SIG_IGN);
        serve(o, env->sh, lfd);
    }
    close(lfd);
    env->run->has_batch_hist = 1;
    *server_pid = U.server;
    return 0;
}

static void u_server_stop(struct bench_env *env)
{
    (void)env;
    bench_stop_process(U.server);
    unlink(U.path);
}

/* ---- client ---- */

struct uthread {
    int fd;
    enum bench_wait mode;
    size_t in_cap, out_cap, rcap, rlen;
    unsigned char *in, *out, *rbuf;
    uint32_t *done, *out_len;
    int *status;
};

static int u_proc_open(struct bench_env *env, int proc, void **out)
{
    (void)proc;
    *out = env;
    return 0;
}

static void u_proc_close(void *ps)
{
    (void)ps;
}

static void u_thread_close(void *th)
{
    struct uthread *t = th;
    if (!t) return;
    if (t->fd >= 0) close(t->fd);
    free(t->in);
    free(t->out);
    free(t->rbuf);
    free(t->done);
    free(t->out_len);
    free(t->status);
    free(t);
}

static int u_thread_open(void *ps, int thread, uint32_t slots, void **out)
{
    struct bench_env *env = ps;
    const struct bench_opts *o = env->o;
    struct uthread *t = calloc(1, sizeof *t);
    if (!t) return -1;
    t->mode = o->wait;
    t->in_cap = o->pmax ? o->pmax : 1;
    t->out_cap = o->out_cap ? o->out_cap : 1;
    t->rcap = 65536 + 2 * (sizeof(struct frame) + t->out_cap);
    t->in = malloc(slots * t->in_cap);
    t->out = malloc(slots * t->out_cap);
    t->rbuf = malloc(t->rcap);
    t->done = calloc(slots, sizeof *t->done);
    t->out_len = calloc(slots, sizeof *t->out_len);
    t->status = calloc(slots, sizeof *t->status);
    t->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, U.path);
    if (!t->in || !t->out || !t->rbuf || !t->done || !t->out_len || !t->status || t->fd < 0 ||
        connect(t->fd, (struct sockaddr *)&a, sizeof a) < 0) {
        bench_fail(env->sh, "uds: thread %d: connect %s: %s", thread, U.path, strerror(errno));
        u_thread_close(t);
        return -1;
    }
    *out = t;
    return 0;
}

static void *u_input(void *th, uint32_t slot)
{
    struct uthread *t = th;
    return t->in + (size_t)slot * t->in_cap;
}

static int u_submit(void *th, uint32_t slot, size_t len, int prio)
{
    struct uthread *t = th;
    struct frame f = {.slot = slot, .len = (uint32_t)len, .aux = prio};
    struct iovec iov[2] = {{&f, sizeof f}, {t->in + (size_t)slot * t->in_cap, len}};
    size_t left = sizeof f + len;
    t->done[slot] = 0;
    while (left) {
        ssize_t n = writev(t->fd, iov, 2);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "bb-bench: uds: write: %s\n", strerror(errno));
            return BB_ESYS;
        }
        left -= (size_t)n;
        for (int i = 0; i < 2; i++) {
            size_t used = (size_t)n < iov[i].iov_len ? (size_t)n : iov[i].iov_len;
            iov[i].iov_base = (char *)iov[i].iov_base + used;
            iov[i].iov_len -= used;
            n -= (ssize_t)used;
        }
    }
    return 0;
}

static void take_replies(struct uthread *t)
{
    size_t off = 0;
    while (t->rlen - off >= sizeof(struct frame)) {
        struct frame f;
        memcpy(&f, t->rbuf + off, sizeof f);
        if (t->rlen - off < sizeof f + f.len) break;
        size_t len = f.len < t->out_cap ? f.len : t->out_cap;
        memcpy(t->out + (size_t)f.slot * t->out_cap, t->rbuf + off + sizeof f, len);
        t->out_len[f.slot] = (uint32_t)len;
        t->status[f.slot] = f.aux;
        t->done[f.slot] = 1;
        off += sizeof f + f.len;
    }
    memmove(t->rbuf, t->rbuf + off, t->rlen - off);
    t->rlen -= off;
}

static int u_wait(void *th, uint32_t slot, uint64_t deadline, int *status)
{
    struct uthread *t = th;
    uint64_t limit = deadline == BENCH_FOREVER ? bench_now_ns() + BENCH_GUARD_NS : deadline;
    while (!t->done[slot]) {
        ssize_t n = recv(t->fd, t->rbuf + t->rlen, t->rcap - t->rlen, MSG_DONTWAIT);
        if (n > 0) {
            t->rlen += (size_t)n;
            take_replies(t);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            fprintf(stderr, "bb-bench: uds: the server hung up\n");
            return -1;
        }
        uint64_t now = bench_now_ns();
        if (now >= limit) {
            if (deadline != BENCH_FOREVER) return 0;
            fprintf(stderr, "bb-bench: uds: no reply in %llu s\n",
                    (unsigned long long)(BENCH_GUARD_NS / 1000000000u));
            return -1;
        }
        if (t->mode == BENCH_WAIT_SPIN) {
            bench_cpu_relax();
            continue;
        }
        struct pollfd p = {.fd = t->fd, .events = POLLIN};
        struct timespec ts = {(time_t)((limit - now) / 1000000000u), (long)((limit - now) % 1000000000u)};
        ppoll(&p, 1, &ts, NULL);
    }
    *status = t->status[slot];
    return 1;
}

static const void *u_output(void *th, uint32_t slot, size_t *len)
{
    struct uthread *t = th;
    *len = t->out_len[slot];
    return t->out + (size_t)slot * t->out_cap;
}

const struct bench_xport bench_xport_uds = {
    .name = "uds",
    .server_start = u_server_start,
    .server_stop = u_server_stop,
    .proc_open = u_proc_open,
    .proc_close = u_proc_close,
    .thread_open = u_thread_open,
    .thread_close = u_thread_close,
    .input = u_input,
    .submit = u_submit,
    .wait = u_wait,
    .output = u_output,
};
