/* Intake (intake.c): drain a client's submission ring, copy each descriptor
 * out of shared memory, validate the copy, and file the request with its
 * model (queues, deduplication) or answer it at once. */
#ifndef BB_BROKER_INTAKE_H
#define BB_BROKER_INTAKE_H

#include <stdint.h>

struct bb__client;
struct bb__worker;

/* Returns how many entries it consumed (a corrupt ring kills the client). */
int bb__intake_drain(struct bb__worker *w, struct bb__client *c, uint64_t now);

#endif
