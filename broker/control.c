/* The control socket: admission (SO_PEERCRED), the HELLO that gives a
 * client its segment (passed with SCM_RIGHTS), and the small request/reply
 * messages of include/batchbroker/protocol.h. Messages are handled inline by the
 * dispatcher; they are rare and never block (the sockets are non-blocking),
 * and a session that floods its socket is read a few at a time. */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"

#include "admission.h"
#include "sockpath.h"

#include "batchbroker/client.h"
#include "broker.h"
#include "expo.h"
#include "model.h"
#include "segment.h"
#include "session.h"
#include "socket_path.h"
#include "topology.h"
#include "uring.h"
#include "util_internal.h"
#include "worker.h"

/* The default socket's directory (socket_path.h): create it if missing,
 * and refuse one that another user owns or may write to, since whoever can
 * write there can take the path first. */
static int prepare_default_dir(const char *path)
{
    char dir[108];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    bool ours = strcmp(dir, BB__ROOT_SOCKET_DIR) == 0 || strncmp(dir, "/tmp/batchbroker-", 17) == 0;
    if (ours && mkdir(dir, 0755) == 0) {
        /* 0755 whatever the umask: the clients of other users that the
         * broker admits search it. Made just now, in /run (root's) or /tmp
         * (sticky): nobody else can have put something in its place. */
        chmod(dir, 0755);
    } else if (ours && errno != EEXIST) {
        bb_error("cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (lstat(dir, &st) < 0) {
        bb_error("%s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
        bb_error("%s is not a directory of uid %u that only it can write (owner %u, mode %04o): "
                 "another user could take the socket path; remove it or set [broker] socket",
                 dir, (unsigned)geteuid(), (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

/* Claim the path, bind, listen and publish the socket file. */
static int take_path(int fd, const char *path, const struct sockaddr_un *sa,
                     struct bb__sockfile *f)
{
    /* A stale socket file from a dead broker is replaced; a live socket (a
     * broker's or another program's), or anything that is not a socket, is
     * left alone. */
    if (bb__sockpath_claim(path) < 0)
        return -1;
    /* A short backlog: behind a peer that connects in a loop, a new client
     * waits for every connection queued ahead of it to be refused, so a long
     * queue only lengthens that wait (4096 entries: up to 0.5 s measured,
     * 128: a few ms). Waiters in connect() take free places in turn. */
    if (bind(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 || listen(fd, 128) < 0) {
        bb_error("cannot listen on %s: %s", path, strerror(errno));
        return -1;
    }
    return bb__sockpath_publish(path, f);
}

int bb__control_listen(const char *path, struct bb__sockfile *f)
{
    char def[108];
    if (bb__default_socket_path(geteuid(), def, sizeof def) >= 0 && strcmp(path, def) == 0 &&
        prepare_default_dir(path) < 0)
        return -1;
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
    int lock = bb__sockpath_lock(path);
    int rc = lock < 0 ? -1 : take_path(fd, path, &sa, f);
    if (lock >= 0)
        bb__sockpath_unlock(path, lock);
    if (rc < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_status(int fd, uint32_t type, int status)
{
    struct bb_msg_hello_reply rep = {.h = {.type = type, .status = status}};
    size_t len = type == BB_MSG_HELLO_REPLY ? sizeof rep : sizeof rep.h;
    ssize_t n = send(fd, &rep, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
}

/* A session that outlives its process counts against its uid, not against
 * a pid that the next process to get it would find taken. */
static void forget_pid(struct bb__broker *b, struct bb__client *c)
{
    if (c->adm_pid > 0) {
        bb__admission_forget_pid(&b->adm, c->adm_pid);
        c->adm_pid = 0;
    }
}

void bb__control_accept(struct bb__worker *w, int fd)
{
    struct bb__broker *b = w->b;
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0) {
        close(fd);
        return;
    }
    if (!bb__admitted(b->cfg, &cr)) { /* logs the refusal */
        send_status(fd, BB_MSG_HELLO_REPLY, BB_EPERM);
        close(fd);
        return;
    }
    const char *why = "shutting down";
    int rc = atomic_load(&b->stopping) ? BB_ESHUTDOWN
                                       : bb__admission_connect(&b->adm, b->cfg, cr.uid, cr.pid, &why);
    struct bb__client *c = rc == 0 ? bb__session_add(w, fd, &cr) : NULL;
    if (!c) {
        if (rc == 0) { /* counted, but the table is full or memory short */
            bb__admission_release(&b->adm, cr.uid, cr.pid, 0, 0);
            rc = BB_EMAXCLIENTS;
            why = "max_clients reached";
        }
        bb_warn_limited("refused client pid %d uid %u: %s", (int)cr.pid, (unsigned)cr.uid, why);
        send_status(fd, BB_MSG_HELLO_REPLY, rc);
        close(fd);
        return;
    }
    bb__session_arm(w, c, BB__UD_SOCK);
    /* pidfd: a forked child may keep the socket open after the client dies. */
    c->pidfd = (int)syscall(SYS_pidfd_open, cr.pid, 0);
    if (c->pidfd >= 0) {
        bb__session_arm(w, c, BB__UD_PIDFD);
    } else if (errno == ESRCH) { /* gone already: its pid is free */
        forget_pid(b, c);
    }
    bb_debug_limited("client %u (pid %d uid %u) connected", c->id, (int)cr.pid, (unsigned)cr.uid);
}

/* Descriptors in flight to a peer that never reads them are charged to the
 * broker's uid (RLIMIT_NOFILE: at the limit every HELLO reply fails) and keep
 * their memory, even after the broker closed its end. METRICS is the one
 * request a session may repeat that is answered with a descriptor: a session
 * that asks again with this many bytes of replies unread (the kernel counts
 * each small message at its buffer size: 768 bytes on Linux 6.18, so about
 * five) ends instead. A client that reads its round trips never does: a
 * timed-out one leaves one. */
#define UNREAD_MAX 4096

/* What one session's control messages may cost a worker a pass
 * (bb__control_readable): 16 small ones, or 2 METRICS (a render each). */
#define CTL_PER_PASS 16
#define CTL_METRICS_COST 8

/* A process that forks, lets the child keep the socket and exits before
 * reading its HELLO reply would otherwise leave that reply's descriptors
 * (and the segment's pages) referenced from a socket the broker no longer
 * counts: in a loop, unbounded memory, and descriptors in flight charged to
 * the broker's uid until the kernel refuses every HELLO reply
 * (ETOOMANYREFS). Kept, the session counts against max_clients_per_uid. */
static bool held_elsewhere(const struct bb__client *c)
{
    return bb__session_unread(c->sock) > 0;
}

void bb__control_pid_exited(struct bb__worker *w, struct bb__client *c)
{
    if (!held_elsewhere(c)) {
        bb__session_kill(w, c, "process exited");
        return;
    }
    bb_info_limited("client %u (pid %d) exited with replies unread on a socket another "
                    "process holds: kept until they are read or the socket closes",
                    c->id, (int)c->pid);
    c->pid_gone = true; /* the heartbeat looks again (bb__control_expire) */
    forget_pid(w->b, c);
}

/* One message with descriptors attached (SCM_RIGHTS). */
static bool send_fds(int sock, const void *msg, size_t len, const int *fds, int nfds)
{
    char cbuf[CMSG_SPACE(4 * sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int))};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, (size_t)nfds * sizeof(int));
    return sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len;
}

/* The segment a HELLO asks for, within the broker's limits, charged to the
 * client's uid before it is made (admission.c). */
static int make_segment(struct bb__broker *b, struct bb__client *c, const struct bb_msg_hello *h,
                        char **base, struct bb__layout *lay, int *memfd)
{
    const struct bb__broker_config *cfg = b->cfg;
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
    bb__layout_compute(n, seg, lay);
    const char *why;
    if (bb__admission_attach(&b->adm, cfg, c->uid, lay->nslots, lay->size, &why) < 0) {
        bb_warn_limited("client %u (pid %d uid %u): no segment of %u slots, %llu MiB: %s reached",
                c->id, (int)c->pid, (unsigned)c->uid, lay->nslots,
                (unsigned long long)(lay->size >> 20), why);
        return BB_ENOMEM;
    }
    c->adm_slots = lay->nslots;
    c->adm_bytes = lay->size;
    return bb__segment_create(c->id, n, seg, base, lay, memfd);
}

/* The worker that serves client c: the one of the NUMA node its process ran
 * on when it said HELLO (the client's hint; a lie only misplaces it), the one
 * with the fewest clients placed on it if several serve that node. Counted
 * here, at the choice (only the acceptor chooses), not when the session
 * arrives there: a burst of HELLOs would otherwise all see the same counts
 * (and the acceptor's table, which holds every connection still in its
 * handshake, look the busiest) and go to one worker. */
static struct bb__worker *worker_for(struct bb__broker *b, struct bb__client *c, int32_t cpu)
{
    int node = bb__topo_node_of_cpu(&b->topo, cpu);
    struct bb__worker *best = NULL;
    for (uint32_t i = 0; i < b->nworkers; i++) {
        struct bb__worker *x = &b->workers[i];
        if (x->node == node &&
            (!best || atomic_load_explicit(&x->placed, memory_order_relaxed) <
                          atomic_load_explicit(&best->placed, memory_order_relaxed)))
            best = x;
    }
    if (!best)
        best = &b->workers[0];
    atomic_fetch_add_explicit(&best->placed, 1, memory_order_relaxed);
    c->placed = true;
    return best;
}

/* The HELLO's answer: the segment's memfd (closed here), the worker page and
 * the eventfds; then the session is served. */
static void answer_hello(struct bb__worker *w, struct bb__client *c, int memfd)
{
    struct bb_msg_hello_reply rep = {.h = {.type = BB_MSG_HELLO_REPLY},
                                     .version = BB_SHM_VERSION, .client_id = c->id};
    rep.segment_size = c->size;
    /* The segment, the worker page, the notify eventfd, and without the
     * futex doorbell the client's doorbell eventfd (protocol.h). */
    int fds[4] = {memfd, w->page_fd, c->notify, c->doorbell};
    bool sent = send_fds(c->sock, &rep, sizeof rep, fds, w->futex_bell ? 3 : 4);
    close(memfd);
    if (!sent) {
        bb__session_kill(w, c, "hello reply failed");
        return;
    }
    bb__session_go_live(w, c);
    bb_info_limited("client %u (pid %d) attached: %u slots, %zu MiB segment", c->id, (int)c->pid,
            c->nslots, c->size >> 20);
}

void bb__control_hello(struct bb__worker *w, struct bb__client *c)
{
    /* A reload may have dropped its uid while the session travelled here
     * from the acceptor: neither worker's revocation saw it then. */
    struct ucred cr = {.pid = c->pid, .uid = c->uid, .gid = c->gid};
    if (!bb__allowed(w->b->cfg, &cr)) {
        send_status(c->sock, BB_MSG_HELLO_REPLY, BB_EPERM);
        bb__session_kill(w, c, "no longer allowed");
        return;
    }
    const struct bb_msg_hello *h = &c->hello;
    int memfd = -1;
    char *base = NULL;
    struct bb__layout lay;
    int rc = make_segment(w->b, c, h, &base, &lay, &memfd);
    if (rc == 0)
        bb__topo_bind(&w->b->topo, base, lay.size, w->node);
    if (rc == 0)
        rc = bb__session_map(w, c, base, lay.size);
    if (rc == 0) {
        c->notify = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        /* Without the futex doorbell, an eventfd of its own. Blocking:
         * io_uring reads it; a non-blocking read would not wait. */
        if (!w->futex_bell)
            c->doorbell = eventfd(0, EFD_CLOEXEC);
        if (c->notify < 0 || (!w->futex_bell && c->doorbell < 0))
            rc = BB_ESYS;
    }
    if (rc < 0) {
        if (memfd >= 0)
            close(memfd);
        bb_warn_limited("client %u: cannot create its segment: %s", c->id, bb_strerror(rc));
        send_status(c->sock, BB_MSG_HELLO_REPLY, rc);
        bb__session_kill(w, c, "no segment");
        return;
    }
    if (w->b->registers) {
        /* A backend pins segments: that may take milliseconds, so the
         * registration thread does it and the answer waits for it. */
        bb__session_register(w, c, memfd);
        return;
    }
    answer_hello(w, c, memfd);
}

void bb__control_registered(struct bb__worker *w, struct bb__client *c)
{
    c->registering = false;
    if (!c->dead) {
        int memfd = c->memfd;
        c->memfd = -1;
        answer_hello(w, c, memfd);
    }
    bb__session_put(c); /* the registration's reference */
}

static void reply(struct bb__worker *w, struct bb__client *c, const void *msg, size_t len)
{
    ssize_t n = send(c->sock, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n != (ssize_t)len)
        bb__session_kill(w, c, "control reply failed");
}

/* A document in a sealed memfd (protocol.h, BB_MSG_METRICS): 0 or BB_ESYS. */
static int memfd_of(const void *data, size_t len, int *out)
{
    int fd = memfd_create("batchbroker-metrics", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return BB_ESYS;
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, (const char *)data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return BB_ESYS;
        }
        done += (size_t)n;
    }
    /* The reader may trust that length and content stay as they are. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
        close(fd);
        return BB_ESYS;
    }
    *out = fd;
    return 0;
}

/* METRICS: the Prometheus page, or one model's dump, rendered here (a few
 * tens of µs of the dispatcher for an operator's command) and passed as a
 * memfd, so that a reader that takes its time costs the dispatcher nothing. */
static void handle_metrics(struct bb__worker *w, struct bb__client *c, const struct bb_msg_metrics *req)
{
    int unread = bb__session_unread(c->sock);
    if (unread < 0 || unread > UNREAD_MAX) {
        bb__session_kill(w, c, "replies left unread");
        return;
    }
    struct bb_msg_metrics_reply rep = {.h = {.type = BB_MSG_METRICS_REPLY}};
    void *doc = NULL;
    size_t len = 0;
    if (req->format == BB_METRICS_TEXT) {
        doc = bb__expo_page(w->b, &len);
        rep.h.status = doc ? 0 : BB_ENOMEM;
    } else if (req->format == BB_METRICS_DUMP) {
        if (req->model_id >= w->b->nmodels) {
            rep.h.status = BB_ENOMODEL;
        } else if ((doc = malloc(sizeof(struct bb_wire_dump)))) {
            bb__metrics_dump(&w->b->models[req->model_id].metrics, bb__now_ns(), doc);
            len = sizeof(struct bb_wire_dump);
        } else {
            rep.h.status = BB_ENOMEM;
        }
    } else {
        rep.h.status = BB_EINVAL;
    }
    int fd = -1;
    if (rep.h.status == 0)
        rep.h.status = memfd_of(doc, len, &fd);
    free(doc);
    if (rep.h.status < 0) {
        reply(w, c, &rep, sizeof rep);
        return;
    }
    rep.length = len;
    bool sent = send_fds(c->sock, &rep, sizeof rep, &fd, 1);
    close(fd);
    if (!sent)
        bb__session_kill(w, c, "control reply failed");
}

static void handle_message(struct bb__worker *w, struct bb__client *c, const void *buf, size_t len)
{
    const struct bb_msg_hdr *h = buf;
    if (len < sizeof *h) {
        bb__session_kill(w, c, "short control message");
        return;
    }
    if (!c->attached) {
        /* Until the HELLO is answered (the segment may be with the
         * registration thread, the session on its way to another worker)
         * the client has nothing to say. */
        if (c->said_hello) {
            bb__session_kill(w, c, "message before the HELLO reply");
            return;
        }
        if (h->type != BB_MSG_HELLO) {
            bb__session_kill(w, c, "first message is not HELLO");
            return;
        }
        const struct bb_msg_hello *hello = buf;
        if (len == sizeof *hello && (hello->flags & BB_HELLO_DISTRUST)) {
            bb__admission_log_distrust(c->pid, c->uid);
            bb__session_kill(w, c, "it does not trust this broker's uid");
            return;
        }
        if (len != sizeof *hello || hello->magic != BB_SHM_MAGIC ||
            (hello->version >> 16) != BB_ABI_MAJOR) {
            bb_warn_limited("client %u (pid %d): protocol version mismatch", c->id, (int)c->pid);
            send_status(c->sock, BB_MSG_HELLO_REPLY, BB_EPROTO);
            bb__session_kill(w, c, "bad hello");
            return;
        }
        if ((hello->flags & ~BB_HELLO_OPERATOR) || hello->reserved) {
            /* An unknown flag or reserved word asks for something this
             * broker does not do. */
            send_status(c->sock, BB_MSG_HELLO_REPLY, BB_EPROTO);
            bb__session_kill(w, c, "unknown HELLO flags");
            return;
        }
        c->hello = *hello;
        c->said_hello = true;
        if (hello->flags & BB_HELLO_OPERATOR) {
            /* Tools stay with the acceptor: they have no segment to place. */
            struct bb_msg_hello_reply rep = {.h = {.type = BB_MSG_HELLO_REPLY},
                                             .version = BB_SHM_VERSION, .client_id = c->id};
            c->attached = true;
            c->is_operator = true;
            ssize_t n = send(c->sock, &rep, sizeof rep, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n;
            return;
        }
        struct bb__worker *to = worker_for(w->b, c, hello->cpu);
        if (to == w)
            bb__control_hello(w, c);
        else
            bb__session_move(w, c, to); /* it answers the HELLO there */
        return;
    }
    switch (h->type) {
    case BB_MSG_MODEL_OPEN: {
        struct bb_msg_model_open req;
        struct bb_msg_model_open_reply rep = {.h = {.type = BB_MSG_MODEL_OPEN_REPLY,
                                                    .status = BB_ENOMODEL}};
        if (len != sizeof req) {
            bb__session_kill(w, c, "bad MODEL_OPEN");
            return;
        }
        memcpy(&req, buf, sizeof req);
        req.name[sizeof req.name - 1] = 0;
        struct bb__model *m = bb__model_find(w->b->models, w->b->nmodels, req.name);
        if (m) {
            rep.h.status = 0;
            rep.model_id = m->id;
            rep.max_batch_size = m->cfg.max_batch_size;
            rep.max_request_bytes = m->cfg.max_request_bytes;
            c->models_open |= 1ull << m->id;
        }
        reply(w, c, &rep, sizeof rep);
        return;
    }
    case BB_MSG_STATS: {
        struct bb_msg_stats req;
        struct bb_msg_stats_reply rep = {.h = {.type = BB_MSG_STATS_REPLY}};
        if (len != sizeof req) {
            bb__session_kill(w, c, "bad STATS");
            return;
        }
        memcpy(&req, buf, sizeof req);
        if (req.model_id >= w->b->nmodels) {
            rep.h.status = BB_ENOMODEL;
            reply(w, c, &rep, sizeof rep.h);
            return;
        }
        struct bb__model *m = w->route[req.model_id];
        snprintf(rep.name, sizeof rep.name, "%s", m->cfg.name);
        bb__model_stats(m, w, bb__now_ns(), &rep.s);
        reply(w, c, &rep, sizeof rep);
        return;
    }
    case BB_MSG_PIN: {
        struct bb_msg_pin req;
        struct bb_msg_hdr rep = {.type = BB_MSG_PIN_REPLY, .status = BB_ENOMODEL};
        if (len != sizeof req) {
            bb__session_kill(w, c, "bad PIN");
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
        struct bb__model *m = bb__model_find(w->b->models, w->b->nmodels, req.name);
        if (m && req.target > m->cfg.max_batch_size) {
            rep.status = BB_EINVAL;
        } else if (m) {
            /* m is the first replica, which holds the pin for every one. */
            uint32_t was = atomic_exchange_explicit(&m->pinned, req.target, memory_order_relaxed);
            bb_info_limited("model %s: batch target %s%u by client %u (pid %d)", m->cfg.name,
                    req.target ? "pinned to " : "released, was ", req.target ? req.target : was,
                    c->id, (int)c->pid);
            rep.status = 0;
        }
        reply(w, c, &rep, sizeof rep);
        return;
    }
    case BB_MSG_METRICS: {
        struct bb_msg_metrics req;
        if (len != sizeof req) {
            bb__session_kill(w, c, "bad METRICS");
            return;
        }
        memcpy(&req, buf, sizeof req);
        handle_metrics(w, c, &req);
        return;
    }
    default:
        bb__session_kill(w, c, "unknown control message");
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
        struct bb_msg_metrics metrics;
        char raw[512];
    } buf;
    /* A session that moves to another worker stops reading here. One that
     * keeps its socket full (a METRICS reply costs the dispatcher far more
     * than the request costs the client) gets CTL_PER_PASS a pass, however
     * many times its socket polls readable in it, so that the worker's
     * clients and rings are served in between: the rest waits on the
     * worker's backlog (bb__control_backlog). */
    if (c->ctl_pass != w->passes) {
        c->ctl_pass = w->passes;
        c->ctl_spent = 0;
    }
    while (!c->dead && c->w == w) {
        if (c->ctl_spent >= CTL_PER_PASS) {
            c->ctl_backlog = true;
            w->ctl_backlog = true;
            return;
        }
        ssize_t n = recv(c->sock, &buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            bb__session_kill(w, c, "disconnected");
            return;
        }
        c->last_msg_ns = bb__now_ns();
        c->ctl_spent += (size_t)n >= sizeof buf.metrics.h && buf.metrics.h.type == BB_MSG_METRICS
                            ? CTL_METRICS_COST
                            : 1;
        handle_message(w, c, &buf, (size_t)n);
    }
}

int bb__control_backlog(struct bb__worker *w)
{
    if (!w->ctl_backlog)
        return 0;
    w->ctl_backlog = false;
    int served = 0;
    for (uint32_t i = 0; i < w->b->cfg->max_clients; i++) {
        struct bb__client *c = w->clients[i];
        if (!c || !c->ctl_backlog)
            continue;
        c->ctl_backlog = false;
        if (!c->dead && c->w == w) {
            bb__control_readable(w, c);
            served++;
        }
    }
    return served;
}

/* Whether the process of pidfd has exited (-1: unknown, taken as not). */
static bool exited(int pidfd)
{
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    return pidfd >= 0 && poll(&p, 1, 0) == 1;
}

void bb__control_expire(struct bb__worker *w, uint64_t now)
{
    struct bb__broker *b = w->b;
    uint64_t hello_ns = (uint64_t)b->cfg->hello_timeout_ms * 1000000ull;
    uint64_t idle_ns = (uint64_t)b->cfg->operator_idle_timeout_ms * 1000000ull;
    for (uint32_t i = 0; i < b->cfg->max_clients; i++) {
        struct bb__client *c = w->clients[i];
        if (c && c->lingering && bb__session_unread(c->sock) <= 0)
            bb__session_unlinger(c);
        if (c && c->lingering && c->adm_pid > 0 && exited(c->pidfd))
            forget_pid(b, c);
        if (!c || c->dead)
            continue;
        /* Neither a connection that never says HELLO nor a silent operator
         * may hold a place for ever; an attached client may stay idle (its
         * place and memory are bounded by admission instead). One whose
         * segment the registration thread has said HELLO: it waits for us. */
        if (!c->attached && !c->registering && now - c->accepted_ns > hello_ns)
            bb__session_kill(w, c, "no HELLO within hello_timeout_ms");
        else if (c->is_operator && idle_ns && now - c->last_msg_ns > idle_ns)
            bb__session_kill(w, c, "operator session idle for operator_idle_timeout_ms");
        else if (c->pid_gone && !held_elsewhere(c))
            bb__session_kill(w, c, "process exited");
    }
}

void bb__control_revoke(struct bb__worker *w)
{
    struct bb__broker *b = w->b;
    for (uint32_t i = 0; i < b->cfg->max_clients; i++) {
        struct bb__client *c = w->clients[i];
        if (!c || c->dead)
            continue;
        struct ucred cr = {.pid = c->pid, .uid = c->uid, .gid = c->gid};
        if (bb__allowed(b->cfg, &cr))
            continue;
        bb_warn_limited("client %u (pid %d uid %u gid %u) no longer allowed after reload: disconnected",
                c->id, (int)c->pid, (unsigned)c->uid, (unsigned)c->gid);
        bb__session_kill(w, c, "no longer allowed");
    }
}
