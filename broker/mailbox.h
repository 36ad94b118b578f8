/* Mailboxes between dispatcher workers (mailbox.c).
 *
 * A session is served by one worker and a model by one (its home); when they
 * differ, a request travels to the model's home and its completion comes
 * back as a message. Each worker has one inbox; a worker posts into a private
 * staging buffer per destination during a pass, and at the end of the pass
 * appends each buffer to its destination's inbox under the inbox's lock (one
 * lock per destination per pass, not per message) and wakes the destination
 * if it sleeps (publish, seq_cst fence, check its `sleeping`: the handshake
 * of protocol.h). The destination swaps the inbox for an empty buffer at the
 * start of its pass and handles the messages outside the lock, in order. A
 * message is 16 bytes: a handoff costs O(1) per request. */
#ifndef BB_BROKER_MAILBOX_H
#define BB_BROKER_MAILBOX_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

struct bb__worker;

enum {
    BB__MSG_SUBMIT = 1, /* p: request; to its model's home: enqueue it */
    BB__MSG_CANCEL,     /* p: request, aux: its submission (r->sub), flags: its model;
                         * to the home: cancel if that submission is queued there */
    BB__MSG_DROP,       /* p: session; to a home: its client died, drop what it queued there */
    BB__MSG_RET,        /* p: session, aux: slot; back to the session's worker: flags */
    BB__MSG_SESSION,    /* p: session; to the worker that will serve it (after HELLO) */
};

/* BB__MSG_RET flags: what the session's worker does for one completion. */
enum { BB__RET_CQ = 1, BB__RET_WAKE = 2, BB__RET_PUT = 4 };

struct bb__msg {
    void *p;
    uint32_t aux;
    uint16_t kind;
    uint16_t flags;
};

struct bb__msgbuf {
    struct bb__msg *v;
    uint32_t n, cap;
};

struct bb__mailbox {
    pthread_mutex_t mu;
    struct bb__msgbuf in;          /* appended by other workers under mu */
    _Atomic uint32_t pending;      /* in.n != 0: readable without the lock */
    struct bb__msgbuf spare;       /* the owner's: what it handles this pass */
    struct bb__msgbuf *out;        /* the owner's staging, one per destination worker */
    uint32_t *out_dirty, nout_dirty;
};

int bb__mailbox_init(struct bb__mailbox *mb, uint32_t nworkers);
void bb__mailbox_fini(struct bb__mailbox *mb, uint32_t nworkers);

/* Stage a message from worker `from` to worker `to` (from != to). */
void bb__mailbox_post(struct bb__worker *from, struct bb__worker *to, uint16_t kind, void *p,
                      uint32_t aux, uint16_t flags);
/* End of `from`'s pass: deliver its staged messages and wake their
 * destinations. `workers` is the broker's array. */
void bb__mailbox_flush(struct bb__worker *from, struct bb__worker *workers);
/* Start of w's pass: the messages other workers delivered, in order (NULL if
 * none); valid until the next call. */
const struct bb__msgbuf *bb__mailbox_take(struct bb__worker *w);

#endif
