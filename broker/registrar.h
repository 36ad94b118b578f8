/* The registration thread (registrar.c): client segments go to the backends
 * that register memory (a GPU pinning it, say: milliseconds per segment) on
 * a thread of their own, never on a dispatcher. */
#ifndef BB_BROKER_REGISTRAR_H
#define BB_BROKER_REGISTRAR_H

#include <pthread.h>
#include <stdbool.h>

struct bb__broker;
struct bb__client;

struct bb__registrar {
    struct bb__broker *b;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;             /* a job arrived, or stop */
    pthread_cond_t idle_cv;        /* the queue ran empty */
    struct bb__client *head, *tail; /* jobs, through bb__client.reg_next */
    bool busy, stop;
};

/* Start the thread. -1 with a message in err. */
int bb__registrar_start(struct bb__registrar *r, struct bb__broker *b, char *err, size_t errlen);

/* Worker side: register c's segment (c->seg) with every model that
 * registers. c holds a reference for the job; when every backend returned,
 * c goes on its worker's `registered` stack and the worker is woken, which
 * answers its HELLO (control.c). */
void bb__registrar_register(struct bb__registrar *r, struct bb__client *c);

/* Worker side: c is destroyed (nothing references it, its batches have all
 * completed): unregister its segment everywhere, unmap it and free c. */
void bb__registrar_release(struct bb__registrar *r, struct bb__client *c);

/* Wait until every job queued so far is done. */
void bb__registrar_quiesce(struct bb__registrar *r);
/* Finish the queue and end the thread. Idempotent; accepts one never started. */
void bb__registrar_stop(struct bb__registrar *r);

#endif
