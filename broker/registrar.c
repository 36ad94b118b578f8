/* The registration thread.
 *
 * A backend that pins client memory for a device (register_segment, or ABI
 * 1's register_memory) may take milliseconds per segment: cudaHostRegister
 * of a 16 MiB memfd mapping measured 4 to 11 ms on an H100. Done on the
 * dispatcher, that would stall every client of the worker for as long. So
 * one thread of the broker does it, in the order the workers ask:
 *
 *   - register: at HELLO the worker maps the new segment and queues the
 *     session here (holding a reference) instead of answering. This thread
 *     hands the segment to every instance of every model that registers
 *     among those its worker files requests with (w->route),
 *     then puts the session on its worker's `registered` stack and wakes it;
 *     the worker answers the HELLO then (control.c), so the client's first
 *     request comes after its segment was registered everywhere. Batches of
 *     other clients run meanwhile: an ABI 2 register_segment runs
 *     concurrently with them, and only an ABI 1 register_memory takes its
 *     instance's lock (as version 1 promised its plugins).
 *   - release: when a registered session is destroyed (no reference left,
 *     so every batch that held one of its rows has completed and been
 *     reaped), the worker hands the record over; this thread unregisters the
 *     segment everywhere, unmaps it and frees the record.
 *
 * One thread, one FIFO: a release always follows its session's register,
 * and the backends never see two (un)registrations at once. */
#include "registrar.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "broker.h"
#include "log.h"
#include "model.h"
#include "session.h"
#include "topology.h"
#include "worker.h"

enum { JOB_REGISTER = 1, JOB_RELEASE = 2 };

/* Back to the session's worker: push, fence, wake it if it sleeps (the
 * handshake of the executors' done stack). */
static void hand_back(struct bb__client *c)
{
    struct bb__worker *w = c->w;
    struct bb__client *head = atomic_load_explicit(&w->registered, memory_order_relaxed);
    do
        c->reg_next = head;
    while (!atomic_compare_exchange_weak_explicit(&w->registered, &head, c, memory_order_release,
                                                  memory_order_relaxed));
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&w->sleeping, memory_order_relaxed))
        bb__worker_wake(w);
}

static void run_job(struct bb__registrar *r, struct bb__client *c)
{
    struct bb__broker *b = r->b;
    if (c->reg_job == JOB_REGISTER) {
        /* A session that ended while it waited here (a client that connects
         * and hangs up in a loop) is worth neither a registration nor its
         * unregistration, which the clients queued behind it would wait
         * for: the worker unmaps it as a segment never registered. */
        if (atomic_load_explicit(&c->reg_cancel, memory_order_relaxed))
            c->registered = false;
        for (uint32_t i = 0; c->registered && i < b->nmodels; i++) /* its worker's models */
            if (bb__model_registers(c->w->route[i]))
                bb__model_register(c->w->route[i], &c->seg);
        hand_back(c); /* c is the worker's again (with `registered`: the push releases it) */
        return;
    }
    for (uint32_t i = 0; i < b->nmodels; i++)
        if (bb__model_registers(c->w->route[i]))
            bb__model_unregister(c->w->route[i], &c->seg);
    munmap(c->seg.base, c->seg.len);
    free(c);
}

static void *registrar_main(void *arg)
{
    struct bb__registrar *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->head && !r->stop)
            pthread_cond_wait(&r->cv, &r->mu);
        struct bb__client *c = r->head;
        if (!c)
            break; /* stopping, and nothing left */
        r->head = c->reg_next;
        if (!r->head)
            r->tail = NULL;
        r->busy = true;
        pthread_mutex_unlock(&r->mu);
        run_job(r, c);
        pthread_mutex_lock(&r->mu);
        r->busy = false;
        if (!r->head)
            pthread_cond_broadcast(&r->idle_cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int bb__registrar_start(struct bb__registrar *r, struct bb__broker *b, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->b = b;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    pthread_cond_init(&r->idle_cv, NULL);
    int rc = pthread_create(&r->thread, NULL, registrar_main, r);
    if (rc) {
        snprintf(err, errlen, "cannot start the registration thread: %s", strerror(rc));
        return -1;
    }
    r->started = true;
    bb__thread_name(r->thread, "bb-registrar");
    return 0;
}

static void queue(struct bb__registrar *r, struct bb__client *c, int job)
{
    bb_assert(r->started, "segments are registered only when the registration thread runs");
    c->reg_job = job;
    c->reg_next = NULL;
    pthread_mutex_lock(&r->mu);
    if (r->tail)
        r->tail->reg_next = c;
    else
        r->head = c;
    r->tail = c;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void bb__registrar_register(struct bb__registrar *r, struct bb__client *c)
{
    queue(r, c, JOB_REGISTER);
}

void bb__registrar_release(struct bb__registrar *r, struct bb__client *c)
{
    queue(r, c, JOB_RELEASE);
}

void bb__registrar_quiesce(struct bb__registrar *r)
{
    if (!r->started)
        return;
    pthread_mutex_lock(&r->mu);
    while (r->head || r->busy)
        pthread_cond_wait(&r->idle_cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

void bb__registrar_stop(struct bb__registrar *r)
{
    if (!r->started)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    r->started = false;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    pthread_cond_destroy(&r->idle_cv);
}
