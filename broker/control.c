/* The control socket: admission (SO_PEERCRED), the per-client sealed memfd
 * segment passed with SCM_RIGHTS, and the small request/reply messages of
 * include/batchbroker/protocol.h. Messages are handled inline by the
 * dispatcher; they are rare and never block (the sockets are non-blocking). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "admission.h"
#include "broker_internal.h"
#include "sockpath.h"
#include "util_internal.h"

#define MIN_HEAP_BYTES (1u << 20)

int bb__control_listen(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        bb_error("socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        bb_error("socket: %s", strerror(errno));
        return -1;
    }
    /* A stale socket file from a dead broker is replaced; a live socket (a
     * broker's or another program's), or anything that is not a socket, is
     * left alone. */
    if (bb__sockpath_claim(path) < 0) {
        close(fd);
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 128) < 0) {
        bb_error("cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    /* Admission is decided by the uid/gid allow-lists, not file modes. */
    chmod(path, 0666);
    return fd;
}

static void send_status(int fd, uint32_t type, int status)
{
    struct bb_msg_hello_reply rep = {.h = {.type = type, .status = status}};
    size_t len = type == BB_MSG_HELLO_REPLY ? sizeof rep : sizeof rep.h;
    ssize_t n = send(fd, &rep, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
}

void bb__control_accept(struct bb__worker *w, int fd)
{
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0) {
        close(fd);
        return;
    }
    if (!bb__admitted(w->cfg, &cr)) { /* logs the refusal */
        send_status(fd, BB_MSG_HELLO_REPLY, BB_EPERM);
        close(fd);
        return;
    }
    if (w->stopping || w->nclients >= w->max_clients) {
        bb_warn("refused client pid %d: %s", (int)cr.pid,
                w->stopping ? "shutting down" : "max_clients reached");
        send_status(fd, BB_MSG_HELLO_REPLY, w->stopping ? BB_ESHUTDOWN : BB_EMAXCLIENTS);
        close(fd);
        return;
    }
    uint32_t idx = 0;
    while (w->clients[idx])
        idx++;
    struct bb__client *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->idx = idx;
    c->gen = w->client_gen[idx];
    c->id = ++w->next_client_id;
    c->sock = fd;
    c->pidfd = c->doorbell = c->notify = -1;
    c->pid = cr.pid;
    c->uid = cr.uid;
    c->refs = 1;
    c->w = w;
    c->accepted_ns = bb__now_ns();
    w->clients[idx] = c;
    w->nclients++;
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    bb__worker_arm(w, c, BB__UD_SOCK);
    /* pidfd: a forked child may keep the socket open after the client dies. */
    c->pidfd = (int)syscall(SYS_pidfd_open, cr.pid, 0);
    if (c->pidfd >= 0)
        bb__worker_arm(w, c, BB__UD_PIDFD);
    bb_debug("client %u (pid %d uid %u) connected", c->id, (int)cr.pid, (unsigned)cr.uid);
}

static int create_segment(struct bb__worker *w, struct bb__client *c, const struct bb_msg_hello *h,
                          int *memfd_out)
{
    const struct bb__broker_config *cfg = w->cfg;
    uint32_t want = h->max_inflight ? h->max_inflight : cfg->default_max_inflight;
    if (want > cfg->max_inflight)
        want = cfg->max_inflight;
    uint32_t n = 1;
    while (n < want)
        n <<= 1;
    uint64_t seg = h->segment_bytes ? h->segment_bytes : (uint64_t)cfg->default_segment_mb << 20;
    uint64_t maxseg = (uint64_t)cfg->max_segment_mb << 20;
    if (seg > maxseg)
        seg = maxseg;
    uint64_t sq_off = BB_SHM_HEADER_SIZE;
    uint64_t cq_off = (sq_off + BB_SHM_RING_HDR_SIZE + 16ull * n + 127) & ~127ull;
    uint64_t slots_off = (cq_off + BB_SHM_RING_HDR_SIZE + 4ull * n + 127) & ~127ull;
    uint64_t heap_off = (slots_off + (uint64_t)BB_SHM_SLOT_SIZE * n + 4095) & ~4095ull;
    if (seg < heap_off + MIN_HEAP_BYTES)
        seg = heap_off + MIN_HEAP_BYTES;
    seg = (seg + 4095) & ~4095ull;

    char name[32];
    snprintf(name, sizeof name, "batchbroker-client-%u", c->id);
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return BB_ESYS;
    /* Sealed: the client can neither shrink the segment under the broker's
     * mapping (SIGBUS) nor grow it, nor remove the seals. */
    if (ftruncate(fd, (off_t)seg) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        close(fd);
        return BB_ESYS;
    }
    void *base = mmap(NULL, seg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        close(fd);
        return BB_ENOMEM;
    }
    c->base = base;
    c->size = seg;
    c->nslots = n;
    c->hdr = base;
    c->slots = (struct bb_shm_slot *)(c->base + slots_off);
    c->heap_lo = heap_off;
    c->heap_hi = seg;
    c->reqs = calloc(n, sizeof *c->reqs);
    if (!c->reqs) {
        close(fd);
        return BB_ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        c->reqs[i].cl = c;
        c->reqs[i].slot = i;
    }
    struct bb_shm_header *hd = c->hdr;
    hd->magic = BB_SHM_MAGIC;
    hd->header_size = BB_SHM_HEADER_SIZE;
    hd->slot_size = BB_SHM_SLOT_SIZE;
    hd->segment_size = seg;
    hd->nslots = n;
    hd->sq_entries = 4 * n;
    hd->cq_entries = n;
    hd->client_id = c->id;
    hd->sq_off = sq_off;
    hd->cq_off = cq_off;
    hd->slots_off = slots_off;
    hd->heap_off = heap_off;
    hd->heap_size = seg - heap_off;
    hd->broker_pid = (uint32_t)getpid();
    hd->max_input_bytes = UINT32_MAX;
    atomic_store_explicit(&hd->shm_heartbeat_ns, bb__now_ns(), memory_order_relaxed);
    atomic_store_explicit(&hd->shm_broker_state, BB_BROKER_RUNNING, memory_order_relaxed);
    /* Written last: a client that sees the version sees everything above. */
    atomic_store_explicit(&hd->shm_version, BB_SHM_VERSION, memory_order_release);
    bb__ring_attach(&c->sq, c->base + sq_off, 4 * n, 0);
    bb__ring_attach(&c->cq, c->base + cq_off, n, 1);
    *memfd_out = fd;
    return 0;
}

static void handle_hello(struct bb__worker *w, struct bb__client *c, const struct bb_msg_hello *h,
                         size_t len)
{
    if (len == sizeof *h && (h->flags & BB_HELLO_DISTRUST)) {
        bb__admission_log_distrust(c->pid, c->uid);
        bb__client_kill(w, c, "it does not trust this broker's uid");
        return;
    }
    if (len != sizeof *h || h->magic != BB_SHM_MAGIC || (h->version >> 16) != BB_ABI_MAJOR) {
        bb_warn("client %u (pid %d): protocol version mismatch", c->id, (int)c->pid);
        send_status(c->sock, BB_MSG_HELLO_REPLY, BB_EPROTO);
        bb__client_kill(w, c, "bad hello");
        return;
    }
    struct bb_msg_hello_reply rep = {.h = {.type = BB_MSG_HELLO_REPLY},
                                     .version = BB_SHM_VERSION, .client_id = c->id};
    if (h->flags & BB_HELLO_OPERATOR) {
        c->attached = true;
        ssize_t n = send(c->sock, &rep, sizeof rep, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        return;
    }
    int memfd = -1;
    c->cm = calloc(w->nmodels, sizeof *c->cm);
    int rc = c->cm ? create_segment(w, c, h, &memfd) : BB_ENOMEM;
    if (rc == 0) {
        /* Blocking: io_uring reads it; a non-blocking read would not wait. */
        c->doorbell = eventfd(0, EFD_CLOEXEC);
        c->notify = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (c->doorbell < 0 || c->notify < 0)
            rc = BB_ESYS;
    }
    if (rc < 0) {
        if (memfd >= 0)
            close(memfd);
        bb_warn("client %u: cannot create its segment: %s", c->id, bb_strerror(rc));
        send_status(c->sock, BB_MSG_HELLO_REPLY, rc);
        bb__client_kill(w, c, "no segment");
        return;
    }
    rep.segment_size = c->size;
    int fds[3] = {memfd, c->doorbell, c->notify};
    char cbuf[CMSG_SPACE(sizeof fds)];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = &rep, .iov_len = sizeof rep};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cm), fds, sizeof fds);
    ssize_t n = sendmsg(c->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    close(memfd);
    if (n != (ssize_t)sizeof rep) {
        bb__client_kill(w, c, "hello reply failed");
        return;
    }
    c->attached = true;
    for (uint32_t i = 0; i < w->nmodels; i++) {
        struct bb__model *m = &w->models[i];
        uint32_t weight = 1;
        for (uint32_t k = 0; k < m->nweights; k++)
            if (m->weights[k].uid == c->uid)
                weight = m->weights[k].weight;
        c->cm[i].ftag_inc = BB__FAIR_SCALE / weight;
    }
    for (uint32_t i = 0; i < w->nmodels; i++) {
        struct bb__model *m = &w->models[i];
        if (!m->plugin.ops->register_memory)
            continue;
        uint32_t ninst = m->cfg.instances ? m->cfg.instances : 1;
        for (uint32_t k = 0; k < ninst; k++) {
            pthread_mutex_lock(&m->inst[k].mu);
            int r = m->plugin.ops->register_memory(m->inst[k].state, c->base, c->size);
            pthread_mutex_unlock(&m->inst[k].mu);
            if (r < 0)
                bb_warn("model %s: register_memory failed for client %u: %s", m->cfg.name,
                        c->id, bb_strerror(r));
        }
    }
    bb__worker_arm(w, c, BB__UD_DOORBELL);
    bb__client_live(w, c);
    bb_info("client %u (pid %d) attached: %u slots, %zu MiB segment", c->id, (int)c->pid,
            c->nslots, c->size >> 20);
}

static void reply(struct bb__worker *w, struct bb__client *c, const void *msg, size_t len)
{
    ssize_t n = send(c->sock, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n != (ssize_t)len)
        bb__client_kill(w, c, "control reply failed");
}

static void handle_message(struct bb__worker *w, struct bb__client *c, const void *buf, size_t len)
{
    const struct bb_msg_hdr *h = buf;
    if (len < sizeof *h) {
        bb__client_kill(w, c, "short control message");
        return;
    }
    if (!c->attached) {
        if (h->type != BB_MSG_HELLO) {
            bb__client_kill(w, c, "first message is not HELLO");
            return;
        }
        handle_hello(w, c, buf, len);
        return;
    }
    switch (h->type) {
    case BB_MSG_MODEL_OPEN: {
        struct bb_msg_model_open req;
        struct bb_msg_model_open_reply rep = {.h = {.type = BB_MSG_MODEL_OPEN_REPLY,
                                                    .status = BB_ENOMODEL}};
        if (len != sizeof req) {
            bb__client_kill(w, c, "bad MODEL_OPEN");
            return;
        }
        memcpy(&req, buf, sizeof req);
        req.name[sizeof req.name - 1] = 0;
        for (uint32_t i = 0; i < w->nmodels; i++) {
            struct bb__model *m = &w->models[i];
            if (strcmp(m->cfg.name, req.name) == 0) {
                rep.h.status = 0;
                rep.model_id = i;
                rep.max_batch_size = m->cfg.max_batch_size;
                rep.max_request_bytes = m->cfg.max_request_bytes;
                c->models_open |= 1ull << i;
                break;
            }
        }
        reply(w, c, &rep, sizeof rep);
        return;
    }
    case BB_MSG_STATS: {
        struct bb_msg_stats req;
        struct bb_msg_stats_reply rep = {.h = {.type = BB_MSG_STATS_REPLY}};
        if (len != sizeof req) {
            bb__client_kill(w, c, "bad STATS");
            return;
        }
        memcpy(&req, buf, sizeof req);
        if (req.model_id >= w->nmodels) {
            rep.h.status = BB_ENOMODEL;
            reply(w, c, &rep, sizeof rep.h);
            return;
        }
        struct bb__model *m = &w->models[req.model_id];
        snprintf(rep.name, sizeof rep.name, "%s", m->cfg.name);
        bb__metrics_fill(&m->metrics, bb__now_ns(), &rep.s);
        rep.s.queued = m->queued + m->grouped;
        const struct bb__adaptive *a = &m->adapt;
        rep.s.batch_target = m->pinned ? (m->pinned < m->cfg.max_batch_size ? m->pinned : m->cfg.max_batch_size)
                             : m->cfg.adaptive ? a->target : m->cfg.max_batch_size;
        rep.s.max_batch_size = m->cfg.max_batch_size;
        rep.s.instances = m->cfg.instances;
        rep.s.adaptive = m->cfg.adaptive;
        rep.s.pinned = m->pinned;
        rep.s.wait_us = m->cfg.adaptive && !m->pinned ? a->wait_us : m->cfg.max_wait_us;
        rep.s.changes = a->changes;
        rep.s.fit_a_us = a->fit.a_ns / 1e3;
        rep.s.fit_b_us = a->fit.b_ns / 1e3;
        rep.s.fit_r2 = a->fit.r2;
        rep.s.best_size = a->best_size;
        rep.s.arrival_rps = a->rate_rps;
        rep.s.score = a->score;
        rep.s.slo_violations = a->slo_violations;
        reply(w, c, &rep, sizeof rep);
        return;
    }
    case BB_MSG_PIN: {
        struct bb_msg_pin req;
        struct bb_msg_hdr rep = {.type = BB_MSG_PIN_REPLY, .status = BB_ENOMODEL};
        if (len != sizeof req) {
            bb__client_kill(w, c, "bad PIN");
            return;
        }
        memcpy(&req, buf, sizeof req);
        req.name[sizeof req.name - 1] = 0;
        /* A pin changes every client's batching: operators only (root or the
         * broker's own user), not any admitted client. */
        if (c->uid != 0 && c->uid != geteuid()) {
            rep.status = BB_EPERM;
            reply(w, c, &rep, sizeof rep);
            return;
        }
        for (uint32_t i = 0; i < w->nmodels; i++) {
            struct bb__model *m = &w->models[i];
            if (strcmp(m->cfg.name, req.name) != 0)
                continue;
            if (req.target > m->cfg.max_batch_size) {
                rep.status = BB_EINVAL;
                break;
            }
            bb_info("model %s: batch target %s%u by client %u (pid %d)", m->cfg.name,
                    req.target ? "pinned to " : "released, was ", req.target ? req.target : m->pinned,
                    c->id, (int)c->pid);
            m->pinned = req.target;
            rep.status = 0;
            break;
        }
        reply(w, c, &rep, sizeof rep);
        return;
    }
    default:
        bb__client_kill(w, c, "unknown control message");
        return;
    }
}

void bb__control_readable(struct bb__worker *w, struct bb__client *c)
{
    union {
        struct bb_msg_hello hello;
        struct bb_msg_model_open open;
        struct bb_msg_stats stats;
        struct bb_msg_pin pin;
        char raw[512];
    } buf;
    while (!c->dead) {
        ssize_t n = recv(c->sock, &buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            bb__client_kill(w, c, "disconnected");
            return;
        }
        handle_message(w, c, &buf, (size_t)n);
    }
}

void bb__client_destroy(struct bb__worker *w, struct bb__client *c)
{
    if (c->base) {
        for (uint32_t i = 0; i < w->nmodels; i++) {
            struct bb__model *m = &w->models[i];
            if (!c->attached || !m->plugin.ops->unregister_memory)
                continue;
            uint32_t ninst = m->cfg.instances ? m->cfg.instances : 1;
            for (uint32_t k = 0; k < ninst; k++) {
                pthread_mutex_lock(&m->inst[k].mu);
                m->plugin.ops->unregister_memory(m->inst[k].state, c->base, c->size);
                pthread_mutex_unlock(&m->inst[k].mu);
            }
        }
        munmap(c->base, c->size);
    }
    free(c->reqs);
    free(c->cm);
    w->clients[c->idx] = NULL;
    w->client_gen[c->idx]++;
    w->nclients--;
    free(c);
}
