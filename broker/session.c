/* Sessions: the table of connections, their io_uring operations, the
 * mapping of a client's segment, references, and the end of a session.
 *
 * A session is served by one worker: the acceptor takes the connection, and
 * at HELLO moves it to the worker of the client's NUMA node (move/adopt).
 * It holds one reference while connected and one per request it submitted
 * that has not come back (mailbox.h: requests to models homed elsewhere come
 * back as messages). Killing it closes its descriptors and drops its queued
 * requests at once; running ones finish into its segment, which stays mapped
 * until the last reference goes and the sweep destroys the session. */
#include "session.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/sockios.h>

#include "batchbroker/client.h"
#include "admission.h"
#include "batcher.h"
#include "broker.h"
#include "completion.h"
#include "mailbox.h"
#include "model.h"
#include "registrar.h"
#include "uring.h"
#include "util_internal.h"
#include "worker.h"

/* A free place in w's table for c; the new index's generation tags c's
 * io_uring operations. */
static void table_insert(struct bb__worker *w, struct bb__client *c)
{
    uint32_t idx = 0;
    while (w->clients[idx])
        idx++;
    c->idx = idx;
    c->gen = w->client_gen[idx];
    c->w = w;
    w->clients[idx] = c;
    atomic_store_explicit(&w->nclients, w->nclients + 1, memory_order_relaxed);
}

/* The index's generation moves on: completions still in flight for c on
 * w's io_uring find the place empty or reused and are dropped. */
static void table_remove(struct bb__worker *w, struct bb__client *c)
{
    w->clients[c->idx] = NULL;
    w->client_gen[c->idx]++;
    atomic_store_explicit(&w->nclients, w->nclients - 1, memory_order_relaxed);
}

struct bb__client *bb__session_add(struct bb__worker *w, int fd, const struct ucred *cr)
{
    struct bb__broker *b = w->b;
    /* Only the acceptor adds, and the others only remove: a load and an
     * increment cannot let two sessions past max_clients. */
    if (atomic_load(&b->nclients) >= b->cfg->max_clients)
        return NULL;
    struct bb__client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    atomic_fetch_add(&b->nclients, 1);
    c->id = atomic_fetch_add_explicit(&b->next_client_id, 1, memory_order_relaxed) + 1;
    c->sock = fd;
    c->pidfd = c->doorbell = c->notify = c->memfd = -1;
    c->pid = cr->pid;
    c->uid = cr->uid;
    c->gid = cr->gid;
    c->adm_pid = cr->pid;
    c->refs = 1;
    c->accepted_ns = c->last_msg_ns = c->sq_empty_ns = bb__now_ns();
    table_insert(w, c);
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    return c;
}

void bb__session_move(struct bb__worker *w, struct bb__client *c, struct bb__worker *to)
{
    bb__uring_cancel(&w->ring, bb__ud_make(BB__UD_SOCK, c->idx, c->gen));
    if (c->pidfd >= 0)
        bb__uring_cancel(&w->ring, bb__ud_make(BB__UD_PIDFD, c->idx, c->gen));
    table_remove(w, c);
    c->w = NULL;
    bb__mailbox_post(w, to, BB__MSG_SESSION, c, 0, 0);
}

void bb__session_adopt(struct bb__worker *w, struct bb__client *c)
{
    table_insert(w, c);
    bb__session_arm(w, c, BB__UD_SOCK);
    if (c->pidfd >= 0)
        bb__session_arm(w, c, BB__UD_PIDFD);
}

void bb__session_arm(struct bb__worker *w, struct bb__client *c, int type)
{
    uint64_t ud = bb__ud_make(type, c->idx, c->gen);
    switch (type) {
    case BB__UD_SOCK:
        bb__uring_poll(&w->ring, c->sock, POLLIN | POLLRDHUP, 1, ud);
        break;
    case BB__UD_DOORBELL:
        bb__uring_read(&w->ring, c->doorbell, &w->db_bufs[c->idx], sizeof(uint64_t), ud);
        break;
    case BB__UD_PIDFD:
        bb__uring_poll(&w->ring, c->pidfd, POLLIN, 0, ud);
        break;
    }
}

int bb__session_map(struct bb__worker *w, struct bb__client *c, char *base, size_t size)
{
    struct bb__broker *b = w->b;
    struct bb_shm_header *h = (struct bb_shm_header *)base;
    c->base = base;
    c->size = size;
    c->hdr = h;
    c->nslots = h->nslots;
    c->slots = (struct bb_shm_slot *)(base + h->slots_off);
    c->heap_lo = h->heap_off;
    c->heap_hi = size;
    c->cm = calloc(b->nmodels ? b->nmodels : 1, sizeof *c->cm);
    c->req_chunks = calloc((c->nslots + BB__REQ_CHUNK - 1) / BB__REQ_CHUNK, sizeof *c->req_chunks);
    if (!c->cm || !c->req_chunks)
        return BB_ENOMEM;
    bb__sq_attach(&c->sq, base + h->sq_off, h->sq_entries);
    bb__ring_attach(&c->cq, base + h->cq_off, h->cq_entries, 1);
    for (uint32_t i = 0; i < b->nmodels; i++)
        c->cm[i].ftag_inc = BB__FAIR_SCALE / bb__model_weight(&b->models[i], c->uid);
    return 0;
}

struct bb__req *bb__session_req_alloc(struct bb__client *c, uint32_t slot)
{
    struct bb__req *rs = calloc(BB__REQ_CHUNK, sizeof *rs);
    if (!rs)
        return NULL;
    uint32_t first = slot & ~(BB__REQ_CHUNK - 1);
    for (uint32_t i = 0; i < BB__REQ_CHUNK; i++) {
        rs[i].cl = c;
        rs[i].slot = first + i;
    }
    c->req_chunks[slot >> BB__REQ_CHUNK_SHIFT] = rs;
    return &rs[slot & (BB__REQ_CHUNK - 1)];
}

void bb__session_register(struct bb__worker *w, struct bb__client *c, int memfd)
{
    struct bb__broker *b = w->b;
    c->memfd = memfd;
    c->registering = c->registered = true;
    c->seg = (struct bb_segment){.size = sizeof c->seg, .id = c->id, .base = c->base,
                                 .len = c->size, .numa_node = b->topo.node_id[w->node]};
    c->refs++; /* the registration's, dropped when the worker gets it back */
    bb__registrar_register(&b->reg, c);
}

void bb__session_go_live(struct bb__worker *w, struct bb__client *c)
{
    c->attached = true;
    if (c->doorbell >= 0)
        bb__session_arm(w, c, BB__UD_DOORBELL);
    c->live_idx = w->nlive;
    w->live[w->nlive++] = c;
    bb__gauge_add(&w->metrics.clients, 1);
    bb__gauge_add(&w->metrics.segment_bytes, (int64_t)c->size);
}

void bb__session_kill(struct bb__worker *w, struct bb__client *c, const char *why)
{
    if (c->dead)
        return;
    c->dead = true;
    if (c->registering)
        atomic_store_explicit(&c->reg_cancel, true, memory_order_relaxed);
    if (c->live_idx < w->nlive && w->live[c->live_idx] == c) {
        struct bb__client *last = w->live[--w->nlive];
        w->live[c->live_idx] = last;
        last->live_idx = c->live_idx;
    }
    if (c->attached && c->base) {
        bb_info_limited("client %u (pid %d) gone: %s", c->id, (int)c->pid, why);
        bb__gauge_add(&w->metrics.clients, -1);
    } else {
        bb_debug_limited("client %u (pid %d) dropped: %s", c->id, (int)c->pid, why);
    }
    bb__uring_cancel(&w->ring, bb__ud_make(BB__UD_SOCK, c->idx, c->gen));
    if (c->doorbell >= 0)
        bb__uring_cancel(&w->ring, bb__ud_make(BB__UD_DOORBELL, c->idx, c->gen));
    if (c->pidfd >= 0)
        bb__uring_cancel(&w->ring, bb__ud_make(BB__UD_PIDFD, c->idx, c->gen));
    if (c->notify_busy) /* a write its client keeps from completing */
        bb__uring_cancel(&w->ring, bb__ud_make(BB__UD_NOTIFY, c->idx, c->gen));
    /* Replies the peer has not read (a HELLO reply: the segment, the worker
     * page and eventfds) stay in its socket after ours closes, their
     * descriptors charged to the broker's uid (RLIMIT_NOFILE) and their
     * memory referenced: the session keeps its place, segment and charge
     * to its uid until the peer reads them or closes (the heartbeat looks,
     * bb__session_unlinger). Dropped at once, a loop of peers that say
     * HELLO, then something the broker ends them for, pinned descriptors
     * and memory that no limit counted. The peer sees the end of the
     * session after those replies all the same (shutdown). What it sent
     * and we did not read goes: a message there may carry the peer's own
     * socket, which would otherwise outlive the peer's close, and the
     * replies on it with it, for as long as the broker runs. Read until
     * EAGAIN first (an empty message reads as 0, and so does a peer that
     * shut its end: hence the bound), then once shut, until 0. */
    if (!w->exiting && c->sock >= 0 && bb__session_unread(c->sock) > 0) {
        char discard[64];
        for (int i = 0; i < 1024 && recv(c->sock, discard, sizeof discard, MSG_DONTWAIT) >= 0; i++)
            ;
        shutdown(c->sock, SHUT_RDWR);
        while (recv(c->sock, discard, sizeof discard, MSG_DONTWAIT) > 0)
            ;
        c->lingering = true;
        c->refs++;
    }
    /* io_uring holds its own file references until the cancels land. A
     * lingering session keeps its pidfd too: the heartbeat sees its
     * process exit (bb__control_expire). */
    int *fds[] = {&c->doorbell, &c->notify, &c->memfd, &c->sock, &c->pidfd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0] - (c->lingering ? 2 : 0); i++)
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    /* Its queued requests go, here and at the homes of the other models
     * (after whatever it sent them before: the mailbox keeps the order);
     * running ones finish and hold the segment. */
    if (c->req_chunks) {
        bb__batcher_drop_client(w, c);
        /* Each DROP holds a reference until its worker is done with c. */
        for (uint32_t i = 0; i < w->b->nworkers && !w->exiting; i++)
            if (&w->b->workers[i] != w) {
                c->refs++;
                bb__mailbox_post(w, &w->b->workers[i], BB__MSG_DROP, c, 0, 0);
            }
    }
    bb__session_put(c);
}

int bb__session_unread(int sock)
{
    int unread = 0;
    return ioctl(sock, SIOCOUTQ, &unread) < 0 ? -1 : unread;
}

void bb__session_unlinger(struct bb__client *c)
{
    c->lingering = false;
    bb__session_put(c); /* the socket closes with the session */
}

void bb__session_destroy(struct bb__worker *w, struct bb__client *c)
{
    struct bb__broker *b = w->b;
    if (c->sock >= 0) { /* a lingering session's (or at broker exit) */
        close(c->sock);
        c->sock = -1;
    }
    if (c->pidfd >= 0) {
        close(c->pidfd);
        c->pidfd = -1;
    }
    for (uint32_t i = 0; c->req_chunks && i < (c->nslots + BB__REQ_CHUNK - 1) / BB__REQ_CHUNK; i++)
        free(c->req_chunks[i]);
    free(c->req_chunks);
    free(c->cm);
    bb__admission_release(&b->adm, c->uid, c->adm_pid, c->adm_slots, c->adm_bytes);
    table_remove(w, c);
    if (c->placed) /* sessions move only at HELLO: w is where it was placed */
        atomic_fetch_sub_explicit(&w->placed, 1, memory_order_relaxed);
    atomic_fetch_sub(&b->nclients, 1);
    if (c->attached && c->base)
        bb__gauge_add(&w->metrics.segment_bytes, -(int64_t)c->size);
    if (c->registered) {
        /* Unregistering may take milliseconds: the registration thread does
         * it, then unmaps the segment and frees c. */
        bb__registrar_release(&b->reg, c);
        return;
    }
    if (c->base)
        munmap(c->base, c->size);
    free(c);
}

void bb__session_sweep(struct bb__worker *w)
{
    w->need_sweep = false;
    for (uint32_t i = 0; i < w->b->cfg->max_clients; i++) {
        struct bb__client *c = w->clients[i];
        if (c && c->dead && c->refs == 0)
            bb__session_destroy(w, c);
    }
}
