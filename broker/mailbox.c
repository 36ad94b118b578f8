/* Mailboxes between dispatcher workers: see mailbox.h. */
#include "mailbox.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "worker.h"

/* Messages carry references (a session's, a request's): one cannot be
 * dropped, so running out of memory for a few more bytes of buffer is fatal. */
static void reserve(struct bb__msgbuf *b, uint32_t more)
{
    if (b->n + more <= b->cap)
        return;
    uint32_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more)
        cap *= 2;
    struct bb__msg *v = realloc(b->v, (size_t)cap * sizeof *v);
    bb_assert(v, "a mailbox can always grow (out of memory)");
    b->v = v;
    b->cap = cap;
}

int bb__mailbox_init(struct bb__mailbox *mb, uint32_t nworkers)
{
    memset(mb, 0, sizeof *mb);
    pthread_mutex_init(&mb->mu, NULL);
    mb->out = calloc(nworkers, sizeof *mb->out);
    mb->out_dirty = calloc(nworkers, sizeof *mb->out_dirty);
    return mb->out && mb->out_dirty ? 0 : -1;
}

void bb__mailbox_fini(struct bb__mailbox *mb, uint32_t nworkers)
{
    for (uint32_t i = 0; mb->out && i < nworkers; i++)
        free(mb->out[i].v);
    free(mb->out);
    free(mb->out_dirty);
    free(mb->in.v);
    free(mb->spare.v);
    pthread_mutex_destroy(&mb->mu);
}

void bb__mailbox_post(struct bb__worker *from, struct bb__worker *to, uint16_t kind, void *p,
                      uint32_t aux, uint16_t flags)
{
    struct bb__mailbox *mb = &from->mb;
    struct bb__msgbuf *b = &mb->out[to->id];
    if (b->n == 0)
        mb->out_dirty[mb->nout_dirty++] = to->id;
    reserve(b, 1);
    b->v[b->n++] = (struct bb__msg){.p = p, .aux = aux, .kind = kind, .flags = flags};
}

void bb__mailbox_flush(struct bb__worker *from, struct bb__worker *workers)
{
    struct bb__mailbox *mb = &from->mb;
    for (uint32_t i = 0; i < mb->nout_dirty; i++) {
        struct bb__worker *to = &workers[mb->out_dirty[i]];
        struct bb__msgbuf *b = &mb->out[to->id];
        struct bb__mailbox *dst = &to->mb;
        pthread_mutex_lock(&dst->mu);
        reserve(&dst->in, b->n);
        memcpy(dst->in.v + dst->in.n, b->v, (size_t)b->n * sizeof *b->v);
        dst->in.n += b->n;
        atomic_store_explicit(&dst->pending, 1, memory_order_relaxed);
        pthread_mutex_unlock(&dst->mu);
        b->n = 0;
        /* Publish, fence, wake a sleeper (its side: worker.c work_pending). */
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&to->sleeping, memory_order_relaxed))
            bb__worker_wake(to);
    }
    mb->nout_dirty = 0;
}

const struct bb__msgbuf *bb__mailbox_take(struct bb__worker *w)
{
    struct bb__mailbox *mb = &w->mb;
    if (!atomic_load_explicit(&mb->pending, memory_order_relaxed))
        return NULL;
    mb->spare.n = 0;
    pthread_mutex_lock(&mb->mu);
    struct bb__msgbuf t = mb->in;
    mb->in = mb->spare;
    mb->spare = t;
    atomic_store_explicit(&mb->pending, 0, memory_order_relaxed);
    pthread_mutex_unlock(&mb->mu);
    return &mb->spare;
}
