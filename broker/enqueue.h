/* Enqueue (enqueue.c): a request the intake handed over joins its model, on
 * the model's home worker. */
#ifndef BB_BROKER_ENQUEUE_H
#define BB_BROKER_ENQUEUE_H

#include <stdint.h>

struct bb__model;
struct bb__req;

/* The model's own checks (size limits, shutdown, backpressure), then fair-
 * queueing tags, deduplication and the queues; a request it refuses, or that
 * the intake refused, is answered with its status. */
void bb__enqueue(struct bb__model *m, struct bb__req *r, uint64_t now);

#endif
