/* When to cut a batch and what goes in it (batcher.c). */
#ifndef BB_BROKER_BATCHER_H
#define BB_BROKER_BATCHER_H

#include <stdint.h>

struct bb__model;
struct bb__req;

/* One pass over model m: expire, then cut batches while an executor is free
 * and the strategy says so. Lowers *next_ns to when it wants to look again.
 * Returns the requests it moved (progress). */
int bb__batcher_poll(struct bb__model *m, uint64_t now, uint64_t *next_ns);

/* Remove a queued or grouped request from everything that holds it (queue,
 * deadline heap, dedup group) without completing it. */
void bb__request_unlink(struct bb__model *m, struct bb__req *r);

/* Shutdown: every queued or grouped request completes with BB_ESHUTDOWN. */
void bb__batcher_fail_all(struct bb__model *m, int status);

#endif
