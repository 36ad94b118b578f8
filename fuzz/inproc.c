/* In-process broker for the fuzz harnesses (inproc.h). It replays what the
 * dispatcher loop (broker/worker.c) does for the parts under test, without
 * its io_uring wait: completions of the operations the sessions arm are
 * submitted and dropped, and the handlers are called directly. */
#include "inproc.h"

#include <liburing.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "batchbroker/protocol.h"
#include "batcher.h"
#include "broker.h"
#include "completion.h"
#include "config.h"
#include "control.h"
#include "intake.h"
#include "log.h"
#include "mailbox.h"
#include "model.h"
#include "session.h"
#include "util_internal.h"
#include "worker.h"

static struct bb__broker_config cfg;
static struct bb__broker broker;
static _Atomic int stop_flag;
static bool started;

#define DIE(...)                                                                           \
    do {                                                                                   \
        fprintf(stderr, "fuzz harness: " __VA_ARGS__);                                     \
        fputc('\n', stderr);                                                               \
        abort();                                                                           \
    } while (0)

void bbf_start(const char *const *overrides)
{
    if (started)
        return;
    bb__log_level = -1; /* quiet: a log line per input would drown the fuzzer */
    const char *ov[64];
    int n = 0;
    static char plugin_dir[300];
    snprintf(plugin_dir, sizeof plugin_dir, "broker.plugin_dir=%s", BB_PLUGIN_DIR);
    ov[n++] = plugin_dir;
    ov[n++] = "broker.workers=1";
    for (int i = 0; overrides && overrides[i] && n < 63; i++)
        ov[n++] = overrides[i];
    char err[1024];
    if (bb__config_build(&cfg, NULL, ov, n, err, sizeof err) < 0)
        DIE("configuration: %s", err);
    if (bb__broker_init(&broker, &cfg, &stop_flag, false) != 0)
        DIE("the broker did not start");
    started = true;
}

static struct bb__worker *worker(void)
{
    return &broker.workers[0];
}

/* With one worker (the fuzz configurations ask for one) every session lives
 * in workers[0]'s table. */
static struct bb__client *client_of(const struct bbf_session *s)
{
    struct bb__worker *w = worker();
    struct bb__client *c = s->idx < cfg.max_clients ? w->clients[s->idx] : NULL;
    return c && c->gen == s->gen ? c : NULL;
}

bool bbf_session_open(struct bbf_session *s)
{
    memset(s, 0, sizeof *s);
    s->peer = -1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        DIE("socketpair");
    bb__control_accept(worker(), sv[0]); /* takes sv[0], or closes it */
    for (uint32_t i = 0; i < cfg.max_clients; i++) {
        struct bb__client *c = worker()->clients[i];
        if (c && !c->dead && c->sock == sv[0]) {
            s->peer = sv[1];
            s->idx = c->idx;
            s->gen = c->gen;
            return true;
        }
    }
    close(sv[1]);
    return false;
}

bool bbf_session_alive(const struct bbf_session *s)
{
    const struct bb__client *c = client_of(s);
    return c && !c->dead;
}

/* Read every reply; keep the first descriptor passed (a HELLO's memfd). */
static int drain_replies(struct bbf_session *s)
{
    int memfd = -1;
    for (;;) {
        char buf[1024];
        char cbuf[CMSG_SPACE(4 * sizeof(int))];
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                            .msg_controllen = sizeof cbuf};
        ssize_t n = recvmsg(s->peer, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n <= 0)
            return memfd;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            int fds[4];
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds, CMSG_DATA(cm), (k > 4 ? 4 : k) * sizeof(int));
            for (size_t i = 0; i < k && i < 4; i++) {
                if (i == 0 && memfd < 0)
                    memfd = fds[0];
                else
                    close(fds[i]);
            }
        }
    }
}

void bbf_session_feed(struct bbf_session *s)
{
    struct bb__client *c = client_of(s);
    if (c && !c->dead)
        bb__control_readable(worker(), c);
    int fd = drain_replies(s);
    if (fd >= 0)
        close(fd);
}

bool bbf_attach(struct bbf_session *s, uint32_t nslots)
{
    struct bb_msg_hello hello = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = BB_SHM_VERSION, .segment_bytes = 1,
                                 .max_inflight = nslots, .cpu = -1};
    if (send(s->peer, &hello, sizeof hello, MSG_NOSIGNAL) != (ssize_t)sizeof hello)
        return false;
    struct bb__client *c = client_of(s);
    if (!c || c->dead)
        return false;
    bb__control_readable(worker(), c);
    int memfd = drain_replies(s);
    if (memfd < 0)
        return false;
    c = client_of(s);
    if (!c || c->dead || !c->base) {
        close(memfd);
        return false;
    }
    s->seg_size = c->size;
    void *p = mmap(NULL, s->seg_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    close(memfd);
    if (p == MAP_FAILED)
        DIE("mmap of a client segment");
    s->seg = p;
    return true;
}

void bbf_model_open(struct bbf_session *s, const char *name)
{
    struct bb_msg_model_open req = {.h = {.type = BB_MSG_MODEL_OPEN}};
    snprintf(req.name, sizeof req.name, "%s", name);
    if (send(s->peer, &req, sizeof req, MSG_NOSIGNAL) == (ssize_t)sizeof req)
        bbf_session_feed(s);
}

/* What bb__worker_run does in a pass, minus waiting and signals. */
void bbf_pass(void)
{
    struct bb__worker *w = worker();
    if (io_uring_sq_ready(&w->ring))
        io_uring_submit(&w->ring);
    struct io_uring_cqe *cqes[64];
    unsigned n;
    while ((n = io_uring_peek_batch_cqe(&w->ring, cqes, 64)) > 0)
        io_uring_cq_advance(&w->ring, n);
    uint64_t now = bb__now_ns();
    for (uint32_t i = 0; i < w->nlive;) {
        struct bb__client *c = w->live[i];
        bb__intake_drain(w, c, now);
        if (i < w->nlive && w->live[i] == c)
            i++; /* else c died and the last live client moved into place i */
    }
    uint64_t next = now + 1000000000ull;
    for (uint32_t i = 0; i < broker.nmodels; i++)
        bb__batcher_poll(&broker.models[i], now, &next);
    bb__completion_flush(w);
    bb__mailbox_flush(w, broker.workers);
    if (w->need_sweep)
        bb__session_sweep(w);
}

void bbf_session_close(struct bbf_session *s)
{
    /* The peer goes first: a session ended with replies unread on its
     * socket lingers until they are read or the peer closes (session.c),
     * which the heartbeat's look (bb__control_expire) then sees. */
    if (s->peer >= 0)
        close(s->peer);
    s->peer = -1;
    struct bb__client *c = client_of(s);
    if (c && !c->dead)
        bb__session_kill(worker(), c, "fuzz input done");
    if (c && c->lingering)
        bb__control_expire(worker(), bb__now_ns());
    for (int i = 0; i < 100 && client_of(s); i++)
        bbf_pass();
    if (client_of(s))
        DIE("a killed session was never swept (references left: %u)", client_of(s)->refs);
    if (s->seg)
        munmap(s->seg, s->seg_size);
    memset(s, 0, sizeof *s);
    s->peer = -1;
}

void bbf_check_idle(void)
{
    bbf_pass();
    if (atomic_load(&broker.nclients) != 0)
        DIE("%u sessions left", atomic_load(&broker.nclients));
    if (broker.adm.sessions != 0 || broker.adm.nents != 0)
        DIE("admission still charges %u sessions (%u entries)", broker.adm.sessions,
            broker.adm.nents);
    for (uint32_t i = 0; i < broker.nmodels; i++) {
        const struct bb__model *m = &broker.models[i];
        if (m->q.queued || m->q.grouped || m->bytes || m->running || m->q.deadlines.n)
            DIE("model %s not idle: queued %u grouped %u bytes %llu running %u deadlines %u",
                m->cfg.name, m->q.queued, m->q.grouped, (unsigned long long)m->bytes,
                m->running, m->q.deadlines.n);
    }
}
