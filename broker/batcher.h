/* When to cut a batch and what goes in it (batcher.c). */
#ifndef BB_BROKER_BATCHER_H
#define BB_BROKER_BATCHER_H

#include <stdint.h>

struct bb__client;
struct bb__model;
struct bb__req;
struct bb__worker;

/* One pass over model m: expire, then cut batches while an executor is free
 * and the strategy says so. Lowers *next_ns to when it wants to look again.
 * Returns the requests it moved (progress). */
int bb__batcher_poll(struct bb__model *m, uint64_t now, uint64_t *next_ns);

/* Remove a queued or grouped request from everything that holds it (queue,
 * deadline heap, dedup group) without completing it. */
void bb__request_unlink(struct bb__model *m, struct bb__req *r);

/* Cancel r (BB_ECANCELED) if it is still queued in m as its submission
 * number `sub` (r->sub). */
void bb__batcher_cancel(struct bb__model *m, struct bb__req *r, uint32_t sub);

/* Client c is gone: drop its queued requests on the models homed at w. */
void bb__batcher_drop_client(struct bb__worker *w, struct bb__client *c);

/* Shutdown: every queued or grouped request completes with BB_ESHUTDOWN. */
void bb__batcher_fail_all(struct bb__model *m, int status);

#endif
